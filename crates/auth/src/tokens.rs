//! PASETO v4.local access tokens with a key ring, and opaque refresh tokens.
//!
//! Access token payload: `{"sub", "role", "jti", "iat", "exp", "fam"}` (RFC 3339 times; `fam`
//! is the refresh family the token was issued from), footer `{"kid": "..."}`. The footer picks the key; the AEAD tag covers the footer, so a swapped kid
//! fails like any tampering. Expiry is checked against the caller's clock, never the system's.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, SecondsFormat, TimeDelta, Utc};
use gathering_domain::auth::{Role, UserId};
use pasetors::Local;
use pasetors::keys::SymmetricKey;
use pasetors::paserk::{FormatAsPaserk, Id};
use pasetors::token::UntrustedToken;
use pasetors::version4::{LocalToken, V4};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use uuid::Uuid;

/// Length of an access-token key in bytes.
pub const KEY_LEN: usize = 32;
/// Tokens longer than this are rejected before any parsing.
pub const MAX_TOKEN_LEN: usize = 2048;
const MAX_FOOTER_LEN: usize = 256;
const MAX_KID_LEN: usize = 128;
const MAX_PREVIOUS_KEYS: usize = 16;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("malformed token")]
    Malformed,
    #[error("unknown key id")]
    UnknownKey,
    #[error("token authentication failed")]
    BadSignature,
    #[error("token expired")]
    Expired,
    /// `exp - iat` is longer than the configured lifetime (or not positive): only a holder of
    /// the key can make such a token, so it is refused rather than trusted.
    #[error("token lifetime exceeds the configured one")]
    BadLifetime,
    #[error("invalid key: {0}")]
    InvalidKey(&'static str),
    #[error("token encoding failed")]
    Encoding,
}

impl TokenError {
    /// Short reason recorded in the audit trail.
    pub fn reason(&self) -> &'static str {
        match self {
            TokenError::Malformed => "malformed",
            TokenError::UnknownKey => "unknown_kid",
            TokenError::BadSignature => "bad_signature",
            TokenError::Expired => "expired",
            TokenError::BadLifetime => "bad_lifetime",
            TokenError::InvalidKey(_) => "invalid_key",
            TokenError::Encoding => "encoding",
        }
    }
}

/// The current signing key plus previous keys still accepted for verification.
pub struct KeyRing {
    current_kid: String,
    keys: HashMap<String, SymmetricKey<V4>>,
}

impl std::fmt::Debug for KeyRing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut kids: Vec<&String> = self.keys.keys().collect();
        kids.sort();
        f.debug_struct("KeyRing")
            .field("current_kid", &self.current_kid)
            .field("kids", &kids)
            .finish()
    }
}

fn symmetric_key(key: &[u8]) -> Result<SymmetricKey<V4>, TokenError> {
    if key.len() != KEY_LEN {
        return Err(TokenError::InvalidKey("access-token keys are 32 bytes"));
    }
    SymmetricKey::<V4>::from(key).map_err(|_| TokenError::InvalidKey("rejected by pasetors"))
}

fn check_kid(kid: &str) -> Result<(), TokenError> {
    if kid.is_empty() || kid.len() > MAX_KID_LEN || kid.chars().any(char::is_control) {
        return Err(TokenError::InvalidKey(
            "kid must be 1..=128 printable characters",
        ));
    }
    Ok(())
}

impl KeyRing {
    /// A ring whose current key has the given id.
    pub fn new(kid: impl Into<String>, key: &[u8]) -> Result<Self, TokenError> {
        let kid = kid.into();
        check_kid(&kid)?;
        let mut keys = HashMap::new();
        keys.insert(kid.clone(), symmetric_key(key)?);
        Ok(Self {
            current_kid: kid,
            keys,
        })
    }

    /// A ring whose kid is derived from the key (its PASERK `k4.lid.` identifier), so every
    /// instance configured with the same key agrees on the id without configuring one.
    pub fn from_key(key: &[u8]) -> Result<Self, TokenError> {
        let kid = Self::derive_kid(key)?;
        Self::new(kid, key)
    }

    /// The PASERK local id (`k4.lid....`) of a key: public, derived one-way from the key.
    pub fn derive_kid(key: &[u8]) -> Result<String, TokenError> {
        let sk = symmetric_key(key)?;
        let mut kid = String::new();
        Id::from(&sk)
            .fmt(&mut kid)
            .map_err(|_| TokenError::Encoding)?;
        Ok(kid)
    }

    /// Adds a previous key: tokens it made keep verifying, new tokens use the current key.
    pub fn with_previous(mut self, kid: impl Into<String>, key: &[u8]) -> Result<Self, TokenError> {
        let kid = kid.into();
        check_kid(&kid)?;
        if kid == self.current_kid {
            return Err(TokenError::InvalidKey(
                "previous kid equals the current kid",
            ));
        }
        if self.keys.len() > MAX_PREVIOUS_KEYS {
            return Err(TokenError::InvalidKey("too many previous keys"));
        }
        self.keys.insert(kid, symmetric_key(key)?);
        Ok(self)
    }

    /// Random 32-byte key from the OS-seeded CSPRNG.
    pub fn generate_key() -> [u8; KEY_LEN] {
        let mut key = [0u8; KEY_LEN];
        rand::RngCore::fill_bytes(&mut rand::rng(), &mut key);
        key
    }

    pub fn current_kid(&self) -> &str {
        &self.current_kid
    }

    fn current(&self) -> Result<&SymmetricKey<V4>, TokenError> {
        self.keys
            .get(&self.current_kid)
            .ok_or(TokenError::InvalidKey("current key missing"))
    }
}

/// What a verified access token says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AccessClaims {
    pub user_id: UserId,
    pub role: Role,
    pub jti: Uuid,
    pub issued_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    /// The refresh-token family this token was issued from (logout and reuse detection revoke
    /// the whole family). `None` only for tokens issued without one.
    pub family_id: Option<Uuid>,
}

impl AccessClaims {
    pub fn is_admin(&self) -> bool {
        self.role == Role::Admin
    }
}

#[derive(Debug, Clone)]
pub struct IssuedToken {
    pub token: String,
    pub claims: AccessClaims,
}

#[derive(Serialize, Deserialize)]
struct Payload {
    sub: Uuid,
    role: String,
    jti: Uuid,
    iat: String,
    exp: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    fam: Option<Uuid>,
}

#[derive(Serialize, Deserialize)]
struct FooterJson {
    kid: String,
}

fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

fn parse_time(s: &str) -> Result<DateTime<Utc>, TokenError> {
    DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|_| TokenError::Malformed)
}

/// Issues and verifies access tokens.
#[derive(Debug)]
pub struct AccessTokens {
    keys: KeyRing,
    ttl: TimeDelta,
}

impl AccessTokens {
    pub fn new(keys: KeyRing, ttl: std::time::Duration) -> Result<Self, TokenError> {
        let ttl = TimeDelta::from_std(ttl).map_err(|_| TokenError::InvalidKey("ttl too large"))?;
        if ttl <= TimeDelta::zero() {
            return Err(TokenError::InvalidKey("ttl must be positive"));
        }
        Ok(Self { keys, ttl })
    }

    pub fn ttl(&self) -> TimeDelta {
        self.ttl
    }

    pub fn keys(&self) -> &KeyRing {
        &self.keys
    }

    /// A fresh token (new jti) for `user_id` valid from `now` for the ttl, in no family.
    pub fn issue(
        &self,
        user_id: UserId,
        role: Role,
        now: DateTime<Utc>,
    ) -> Result<IssuedToken, TokenError> {
        self.issue_in(user_id, role, None, now)
    }

    /// A fresh token bound to the refresh family `family_id` (the `fam` claim).
    pub fn issue_in(
        &self,
        user_id: UserId,
        role: Role,
        family_id: Option<Uuid>,
        now: DateTime<Utc>,
    ) -> Result<IssuedToken, TokenError> {
        // Whole seconds, so the claims round-trip exactly through RFC 3339.
        let iat = DateTime::from_timestamp(now.timestamp(), 0).ok_or(TokenError::Encoding)?;
        let exp = iat + self.ttl;
        let jti = Uuid::new_v4();
        let payload = serde_json::to_vec(&Payload {
            sub: user_id,
            role: role.as_str().to_owned(),
            jti,
            iat: rfc3339(iat),
            exp: rfc3339(exp),
            fam: family_id,
        })
        .map_err(|_| TokenError::Encoding)?;
        let footer = serde_json::to_vec(&FooterJson {
            kid: self.keys.current_kid.clone(),
        })
        .map_err(|_| TokenError::Encoding)?;
        let token = LocalToken::encrypt(self.keys.current()?, &payload, Some(&footer), None)
            .map_err(|_| TokenError::Encoding)?;
        Ok(IssuedToken {
            token,
            claims: AccessClaims {
                user_id,
                role,
                jti,
                issued_at: iat,
                expires_at: exp,
                family_id,
            },
        })
    }

    /// Checks format, kid, authenticity, lifetime (`0 < exp - iat <= ttl`) and expiry (against
    /// `now`). Not revocation.
    pub fn verify(&self, token: &str, now: DateTime<Utc>) -> Result<AccessClaims, TokenError> {
        if token.is_empty() || token.len() > MAX_TOKEN_LEN {
            return Err(TokenError::Malformed);
        }
        let untrusted =
            UntrustedToken::<Local, V4>::try_from(token).map_err(|_| TokenError::Malformed)?;
        let footer = untrusted.untrusted_footer();
        if footer.is_empty() || footer.len() > MAX_FOOTER_LEN {
            return Err(TokenError::Malformed);
        }
        let footer: FooterJson =
            serde_json::from_slice(footer).map_err(|_| TokenError::Malformed)?;
        let key = self
            .keys
            .keys
            .get(&footer.kid)
            .ok_or(TokenError::UnknownKey)?;
        let trusted = LocalToken::decrypt(key, &untrusted, None, None)
            .map_err(|_| TokenError::BadSignature)?;
        let payload: Payload =
            serde_json::from_str(trusted.payload()).map_err(|_| TokenError::Malformed)?;
        let role = Role::parse(&payload.role).ok_or(TokenError::Malformed)?;
        let issued_at = parse_time(&payload.iat)?;
        let expires_at = parse_time(&payload.exp)?;
        let lifetime = expires_at - issued_at;
        if lifetime <= TimeDelta::zero() || lifetime > self.ttl {
            return Err(TokenError::BadLifetime);
        }
        if now >= expires_at {
            return Err(TokenError::Expired);
        }
        Ok(AccessClaims {
            user_id: payload.sub,
            role,
            jti: payload.jti,
            issued_at,
            expires_at,
            family_id: payload.fam,
        })
    }
}

/// A new refresh token: the secret goes to the client, only the hash is stored.
pub struct RefreshSecret {
    pub token: String,
    pub hash: Vec<u8>,
}

impl std::fmt::Debug for RefreshSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RefreshSecret(***)")
    }
}

impl RefreshSecret {
    /// 32 random bytes (256 bits) from the OS-seeded CSPRNG, base64url without padding.
    pub fn generate() -> Self {
        let mut raw = zeroize::Zeroizing::new([0u8; 32]);
        rand::RngCore::fill_bytes(&mut rand::rng(), raw.as_mut());
        Self {
            token: URL_SAFE_NO_PAD.encode(raw.as_ref()),
            hash: Sha256::digest(raw.as_ref()).to_vec(),
        }
    }

    /// The stored hash of a presented token, or `None` when it cannot be one of ours.
    pub fn hash_of(token: &str) -> Option<Vec<u8>> {
        if token.len() != 43 {
            return None;
        }
        let raw = zeroize::Zeroizing::new(URL_SAFE_NO_PAD.decode(token).ok()?);
        (raw.len() == 32).then(|| Sha256::digest(raw.as_slice()).to_vec())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn t0() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 1, 1, 12, 0, 0).unwrap()
    }

    fn tokens(ring: KeyRing) -> AccessTokens {
        AccessTokens::new(ring, std::time::Duration::from_secs(900)).unwrap()
    }

    #[test]
    fn issued_token_verifies_with_its_claims_and_kid_footer() {
        let ring = KeyRing::new("k1", &[7u8; 32]).unwrap();
        let t = tokens(ring);
        let user = Uuid::now_v7();
        let issued = t.issue(user, Role::Admin, t0()).unwrap();
        assert!(issued.token.starts_with("v4.local."));
        let footer = issued.token.rsplit('.').next().unwrap();
        let footer = URL_SAFE_NO_PAD.decode(footer).unwrap();
        assert_eq!(footer, br#"{"kid":"k1"}"#);
        let claims = t.verify(&issued.token, t0()).unwrap();
        assert_eq!(claims, issued.claims);
        assert_eq!(claims.user_id, user);
        assert_eq!(claims.role, Role::Admin);
        assert_eq!(
            claims.expires_at - claims.issued_at,
            TimeDelta::seconds(900)
        );
        assert_eq!(claims.jti.get_version_num(), 4);
    }

    #[test]
    fn token_expires_by_the_given_clock() {
        let t = tokens(KeyRing::new("k1", &[7u8; 32]).unwrap());
        let issued = t.issue(Uuid::now_v7(), Role::User, t0()).unwrap();
        assert!(
            t.verify(&issued.token, t0() + TimeDelta::seconds(899))
                .is_ok()
        );
        assert_eq!(
            t.verify(&issued.token, t0() + TimeDelta::seconds(900)),
            Err(TokenError::Expired)
        );
    }

    #[test]
    fn wrong_key_unknown_kid_and_tampering_are_rejected() {
        let issuer = tokens(KeyRing::new("k1", &[7u8; 32]).unwrap());
        let issued = issuer.issue(Uuid::now_v7(), Role::User, t0()).unwrap();
        // Same kid, different key.
        let other = tokens(KeyRing::new("k1", &[8u8; 32]).unwrap());
        assert_eq!(
            other.verify(&issued.token, t0()),
            Err(TokenError::BadSignature)
        );
        // Unknown kid.
        let other = tokens(KeyRing::new("k2", &[7u8; 32]).unwrap());
        assert_eq!(
            other.verify(&issued.token, t0()),
            Err(TokenError::UnknownKey)
        );
        // Footer swapped to another kid the verifier knows: the tag covers the footer.
        let ring = KeyRing::new("k1", &[7u8; 32])
            .unwrap()
            .with_previous("k0", &[7u8; 32])
            .unwrap();
        let verifier = tokens(ring);
        let body = issued.token.rsplit_once('.').unwrap().0;
        let swapped = format!("{body}.{}", URL_SAFE_NO_PAD.encode(br#"{"kid":"k0"}"#));
        assert_eq!(
            verifier.verify(&swapped, t0()),
            Err(TokenError::BadSignature)
        );
        // A flipped payload character.
        let mut bytes = issued.token.clone().into_bytes();
        let i = "v4.local.".len() + 40;
        bytes[i] = if bytes[i] == b'A' { b'B' } else { b'A' };
        let tampered = String::from_utf8(bytes).unwrap();
        assert!(issuer.verify(&tampered, t0()).is_err());
        // Garbage and no footer.
        assert_eq!(
            issuer.verify("v4.local.abc", t0()),
            Err(TokenError::Malformed)
        );
        assert_eq!(issuer.verify("", t0()), Err(TokenError::Malformed));
        assert_eq!(issuer.verify(body, t0()), Err(TokenError::Malformed));
        assert_eq!(
            issuer.verify(&"a".repeat(MAX_TOKEN_LEN + 1), t0()),
            Err(TokenError::Malformed)
        );
    }

    #[test]
    fn rotated_ring_still_verifies_tokens_of_the_previous_key() {
        let old_key = [1u8; 32];
        let new_key = [2u8; 32];
        let old = tokens(KeyRing::from_key(&old_key).unwrap());
        let old_token = old.issue(Uuid::now_v7(), Role::User, t0()).unwrap();
        let old_kid = KeyRing::derive_kid(&old_key).unwrap();
        assert!(old_kid.starts_with("k4.lid."));

        let rotated = tokens(
            KeyRing::from_key(&new_key)
                .unwrap()
                .with_previous(old_kid, &old_key)
                .unwrap(),
        );
        assert!(rotated.verify(&old_token.token, t0()).is_ok());
        let new_token = rotated.issue(Uuid::now_v7(), Role::User, t0()).unwrap();
        assert!(rotated.verify(&new_token.token, t0()).is_ok());
        // The old ring does not know the new key.
        assert_eq!(
            old.verify(&new_token.token, t0()),
            Err(TokenError::UnknownKey)
        );
        // Once the old key leaves the ring, its tokens die.
        let only_new = tokens(KeyRing::from_key(&new_key).unwrap());
        assert_eq!(
            only_new.verify(&old_token.token, t0()),
            Err(TokenError::UnknownKey)
        );
    }

    #[test]
    fn a_token_living_longer_than_the_configured_ttl_is_refused() {
        // Same key, but a ttl of one day: a token only a key holder could make.
        let long = AccessTokens::new(
            KeyRing::new("k1", &[7u8; 32]).unwrap(),
            std::time::Duration::from_secs(86_400),
        )
        .unwrap();
        let forged = long.issue(Uuid::now_v7(), Role::Admin, t0()).unwrap();
        let t = tokens(KeyRing::new("k1", &[7u8; 32]).unwrap());
        assert_eq!(t.verify(&forged.token, t0()), Err(TokenError::BadLifetime));
        assert_eq!(TokenError::BadLifetime.reason(), "bad_lifetime");
        // Exactly the ttl is fine.
        let ok = t.issue(Uuid::now_v7(), Role::User, t0()).unwrap();
        assert!(t.verify(&ok.token, t0()).is_ok());
    }

    #[test]
    fn the_family_claim_round_trips_and_is_optional() {
        let t = tokens(KeyRing::new("k1", &[7u8; 32]).unwrap());
        let fam = Uuid::now_v7();
        let issued = t
            .issue_in(Uuid::now_v7(), Role::User, Some(fam), t0())
            .unwrap();
        assert_eq!(t.verify(&issued.token, t0()).unwrap().family_id, Some(fam));
        let none = t.issue(Uuid::now_v7(), Role::User, t0()).unwrap();
        assert_eq!(t.verify(&none.token, t0()).unwrap().family_id, None);
    }

    #[test]
    fn keys_must_be_32_bytes() {
        assert!(KeyRing::new("k", &[0u8; 16]).is_err());
        assert!(KeyRing::new("", &[0u8; 32]).is_err());
        assert_ne!(KeyRing::generate_key(), KeyRing::generate_key());
    }

    #[test]
    fn refresh_secret_is_256_bits_and_only_its_hash_is_kept() {
        let a = RefreshSecret::generate();
        let b = RefreshSecret::generate();
        assert_ne!(a.token, b.token);
        assert_eq!(URL_SAFE_NO_PAD.decode(&a.token).unwrap().len(), 32);
        assert_eq!(a.hash.len(), 32);
        assert_eq!(RefreshSecret::hash_of(&a.token), Some(a.hash.clone()));
        assert_eq!(RefreshSecret::hash_of("short"), None);
        assert_eq!(RefreshSecret::hash_of(&"*".repeat(43)), None);
        assert!(!format!("{a:?}").contains(&a.token));
    }
}
