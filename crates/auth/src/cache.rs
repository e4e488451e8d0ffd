//! Two bounded caches on the authenticated hot path, so `GET /auth/me` (and every extractor)
//! costs no PASETO decryption and no database round trip when nothing changed.
//!
//! * [`VerifiedTokens`]: the outcome of a successful PASETO verification, keyed by the SHA-256
//!   of the exact token bytes. A hit still has its expiry checked against the clock on every
//!   use, and revocation is checked after it as for any token, so the cache can only save work,
//!   never accept a token that a full verification would refuse. Keys are loaded at start-up
//!   and never change at run time, so a verified token stays verified until it expires.
//! * [`UserCache`]: user rows by id for `GET /auth/me`. Trusted only while the LISTEN/NOTIFY
//!   listener is connected (a trigger on `auth.users` announces every change on
//!   [`USER_CHANGED_CHANNEL`](gathering_domain::auth::USER_CHANGED_CHANNEL)); emptied and
//!   bypassed while it is not; entries also expire after a TTL as a second line of defence. A
//!   row read before an invalidation is never stored after it (generation check).

use crate::tokens::AccessClaims;
use chrono::{DateTime, TimeDelta, Utc};
use gathering_domain::auth::{User, UserId};
use lru::LruCache;
use parking_lot::Mutex;
use sha2::{Digest, Sha256};
use std::num::NonZeroUsize;

/// Verified access tokens, bounded, least recently used evicted first.
#[derive(Debug)]
pub struct VerifiedTokens {
    inner: Option<Mutex<LruCache<TokenKey, AccessClaims>>>,
}

/// The cache key of a token: the SHA-256 of its exact bytes. Compute it once per request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TokenKey([u8; 32]);

impl TokenKey {
    pub fn of(token: &str) -> TokenKey {
        TokenKey(Sha256::digest(token.as_bytes()).into())
    }
}

impl VerifiedTokens {
    /// `capacity` 0 disables the cache.
    pub fn new(capacity: usize) -> Self {
        Self {
            inner: NonZeroUsize::new(capacity).map(|c| Mutex::new(LruCache::new(c))),
        }
    }

    /// Claims of a token verified before. `Err(())` when it was verified but has expired by
    /// `now`; `Ok(None)` when the cache does not know it.
    #[allow(clippy::result_unit_err)]
    pub fn get(&self, token: &str, now: DateTime<Utc>) -> Result<Option<AccessClaims>, ()> {
        self.get_key(&TokenKey::of(token), now)
    }

    /// [`Self::get`] by a key computed once.
    #[allow(clippy::result_unit_err)]
    pub fn get_key(&self, key: &TokenKey, now: DateTime<Utc>) -> Result<Option<AccessClaims>, ()> {
        let Some(inner) = &self.inner else {
            return Ok(None);
        };
        let mut map = inner.lock();
        match map.get(key) {
            Some(c) if now >= c.expires_at => {
                map.pop(key);
                Err(())
            }
            Some(c) => Ok(Some(*c)),
            None => Ok(None),
        }
    }

    /// Remembers a token that passed a full verification.
    pub fn insert(&self, token: &str, claims: &AccessClaims) {
        self.insert_key(TokenKey::of(token), claims);
    }

    /// [`Self::insert`] by a key computed once.
    pub fn insert_key(&self, key: TokenKey, claims: &AccessClaims) {
        if let Some(inner) = &self.inner {
            inner.lock().put(key, *claims);
        }
    }

    pub fn len(&self) -> usize {
        self.inner.as_ref().map_or(0, |m| m.lock().len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[derive(Debug)]
struct UserInner {
    map: LruCache<UserId, (User, DateTime<Utc>)>,
    /// Whether change notifications are being received.
    synced: bool,
    /// Bumped on every invalidation and listener state change.
    generation: u64,
}

/// User rows by id, trusted only while change notifications flow. See the module docs.
#[derive(Debug)]
pub struct UserCache {
    ttl: TimeDelta,
    inner: Option<Mutex<UserInner>>,
}

impl UserCache {
    /// `capacity` 0 or a zero `ttl` disables the cache.
    pub fn new(capacity: usize, ttl: TimeDelta) -> Self {
        let inner = match NonZeroUsize::new(capacity) {
            Some(c) if ttl > TimeDelta::zero() => Some(Mutex::new(UserInner {
                map: LruCache::new(c),
                synced: false,
                generation: 0,
            })),
            _ => None,
        };
        Self { ttl, inner }
    }

    /// A fresh cached row, only while synced.
    pub fn get(&self, id: UserId, now: DateTime<Utc>) -> Option<User> {
        let mut inner = self.inner.as_ref()?.lock();
        if !inner.synced {
            return None;
        }
        match inner.map.get(&id) {
            Some((u, at)) if now < *at + self.ttl && now >= *at => Some(u.clone()),
            Some(_) => {
                inner.map.pop(&id);
                None
            }
            None => None,
        }
    }

    /// Take before reading the row from the database; pass to [`Self::insert`].
    pub fn generation(&self) -> u64 {
        self.inner.as_ref().map_or(0, |m| m.lock().generation)
    }

    /// Stores a row read from the database after [`Self::generation`] returned `generation`;
    /// ignored when anything was invalidated since, or while not synced.
    pub fn insert(&self, generation: u64, user: &User, now: DateTime<Utc>) {
        if let Some(m) = &self.inner {
            let mut inner = m.lock();
            if inner.synced && inner.generation == generation {
                inner.map.put(user.id, (user.clone(), now));
            }
        }
    }

    /// The row changed (or may have): drop it.
    pub fn invalidate(&self, id: UserId) {
        if let Some(m) = &self.inner {
            let mut inner = m.lock();
            inner.generation += 1;
            inner.map.pop(&id);
        }
    }

    /// The listener (re)connected and is listening: start trusting from an empty cache.
    pub fn connected(&self) {
        self.reset(true);
    }

    /// The listener is gone: changes may be missed, so hold and trust nothing.
    pub fn disconnected(&self) {
        self.reset(false);
    }

    fn reset(&self, synced: bool) {
        if let Some(m) = &self.inner {
            let mut inner = m.lock();
            inner.generation += 1;
            inner.map.clear();
            inner.synced = synced;
        }
    }

    pub fn len(&self) -> usize {
        self.inner.as_ref().map_or(0, |m| m.lock().map.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use gathering_domain::auth::{Email, Role};
    use uuid::Uuid;

    fn t0() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 1, 1, 12, 0, 0).unwrap()
    }

    fn claims(exp_secs: i64) -> AccessClaims {
        AccessClaims {
            user_id: Uuid::new_v4(),
            role: Role::User,
            jti: Uuid::new_v4(),
            issued_at: t0(),
            expires_at: t0() + TimeDelta::seconds(exp_secs),
            family_id: None,
        }
    }

    fn user(name: &str) -> User {
        User {
            id: Uuid::new_v4(),
            email: Email::parse("a@example.com").unwrap(),
            name: name.into(),
            role: Role::User,
            created_at: t0(),
            disabled: false,
        }
    }

    #[test]
    fn verified_token_hits_only_for_the_exact_token_and_until_expiry() {
        let c = VerifiedTokens::new(10);
        let cl = claims(60);
        c.insert("v4.local.abc", &cl);
        assert_eq!(c.get("v4.local.abc", t0()).unwrap().unwrap().jti, cl.jti);
        assert!(c.get("v4.local.abd", t0()).unwrap().is_none());
        assert!(
            c.get("v4.local.abc", t0() + TimeDelta::seconds(60))
                .is_err()
        );
        // Expired entries are dropped.
        assert!(c.get("v4.local.abc", t0()).unwrap().is_none());
    }

    #[test]
    fn verified_tokens_are_bounded_and_can_be_disabled() {
        let c = VerifiedTokens::new(2);
        for t in ["a", "b", "c"] {
            c.insert(t, &claims(60));
        }
        assert_eq!(c.len(), 2);
        assert!(c.get("a", t0()).unwrap().is_none());
        let off = VerifiedTokens::new(0);
        off.insert("a", &claims(60));
        assert!(off.get("a", t0()).unwrap().is_none());
    }

    #[test]
    fn user_cache_trusts_nothing_until_the_listener_is_connected() {
        let c = UserCache::new(10, TimeDelta::seconds(30));
        let u = user("a");
        c.insert(c.generation(), &u, t0());
        assert!(c.get(u.id, t0()).is_none());
        c.connected();
        c.insert(c.generation(), &u, t0());
        assert_eq!(c.get(u.id, t0()).unwrap(), u);
        c.disconnected();
        assert!(c.get(u.id, t0()).is_none());
        assert!(c.is_empty());
    }

    #[test]
    fn user_cache_entries_expire_and_invalidate() {
        let c = UserCache::new(10, TimeDelta::seconds(30));
        c.connected();
        let u = user("a");
        c.insert(c.generation(), &u, t0());
        assert!(c.get(u.id, t0() + TimeDelta::seconds(29)).is_some());
        assert!(c.get(u.id, t0() + TimeDelta::seconds(30)).is_none());
        c.insert(c.generation(), &u, t0());
        c.invalidate(u.id);
        assert!(c.get(u.id, t0()).is_none());
    }

    #[test]
    fn a_row_read_before_an_invalidation_is_not_stored_after_it() {
        let c = UserCache::new(10, TimeDelta::seconds(30));
        c.connected();
        let u = user("old");
        let generation = c.generation();
        // Another instance changes the user while our read is in flight.
        c.invalidate(u.id);
        c.insert(generation, &u, t0());
        assert!(c.get(u.id, t0()).is_none());
        // A reconnect in between also voids the read.
        let generation = c.generation();
        c.disconnected();
        c.connected();
        c.insert(generation, &u, t0());
        assert!(c.get(u.id, t0()).is_none());
    }

    #[test]
    fn user_cache_disabled_by_zero_capacity_or_ttl() {
        for c in [
            UserCache::new(0, TimeDelta::seconds(30)),
            UserCache::new(10, TimeDelta::zero()),
        ] {
            c.connected();
            let u = user("a");
            c.insert(c.generation(), &u, t0());
            assert!(c.get(u.id, t0()).is_none());
        }
    }
}
