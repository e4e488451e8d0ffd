//! Provider keys at rest: XChaCha20-Poly1305 with a 32-byte server key and a random 24-byte
//! nonce per value, stored as `nonce || ciphertext`. Users only ever see a hint (`…3456`).

use crate::error::LlmError;
use chacha20poly1305::aead::{Aead, KeyInit};
use chacha20poly1305::{Key, XChaCha20Poly1305, XNonce};
use rand::RngCore;
use zeroize::Zeroize;

const NONCE_LEN: usize = 24;

#[derive(Clone)]
pub struct SecretKey([u8; 32]);

impl std::fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretKey(<redacted>)")
    }
}

impl Drop for SecretKey {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

impl SecretKey {
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// 64 hex characters (e.g. from configuration).
    pub fn from_hex(s: &str) -> Result<Self, LlmError> {
        let mut bytes = hex::decode(s.trim())
            .map_err(|_| LlmError::Key("the key must be 64 hex characters".into()))?;
        let arr: [u8; 32] = bytes
            .as_slice()
            .try_into()
            .map_err(|_| LlmError::Key("the key must be 64 hex characters".into()))?;
        bytes.zeroize();
        Ok(Self(arr))
    }

    pub fn generate() -> Self {
        let mut b = [0u8; 32];
        rand::rng().fill_bytes(&mut b);
        Self(b)
    }

    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    fn cipher(&self) -> XChaCha20Poly1305 {
        XChaCha20Poly1305::new(Key::from_slice(&self.0))
    }

    pub fn encrypt(&self, plaintext: &str) -> Result<Vec<u8>, LlmError> {
        let mut nonce = [0u8; NONCE_LEN];
        rand::rng().fill_bytes(&mut nonce);
        let ct = self
            .cipher()
            .encrypt(XNonce::from_slice(&nonce), plaintext.as_bytes())
            .map_err(|_| LlmError::Key("encryption failed".into()))?;
        let mut out = Vec::with_capacity(NONCE_LEN + ct.len());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&ct);
        Ok(out)
    }

    pub fn decrypt(&self, blob: &[u8]) -> Result<String, LlmError> {
        if blob.len() < NONCE_LEN + 16 {
            return Err(LlmError::Key("stored key is truncated".into()));
        }
        let (nonce, ct) = blob.split_at(NONCE_LEN);
        let pt = self
            .cipher()
            .decrypt(XNonce::from_slice(nonce), ct)
            .map_err(|_| {
                LlmError::Key("stored key cannot be decrypted (wrong server key?)".into())
            })?;
        String::from_utf8(pt).map_err(|_| LlmError::Key("stored key is not UTF-8".into()))
    }
}

/// What users see of a stored key: `…` and its last four characters (none for short keys).
pub fn key_hint(key: &str) -> String {
    let chars: Vec<char> = key.chars().collect();
    if chars.len() < 12 {
        return "…".to_owned();
    }
    let tail: String = chars[chars.len() - 4..].iter().collect();
    format!("…{tail}")
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn encrypt_round_trips_with_a_fresh_nonce_each_time() {
        let k = SecretKey::generate();
        let a = k.encrypt("sk-test-123456").unwrap();
        let b = k.encrypt("sk-test-123456").unwrap();
        assert_ne!(a, b);
        assert!(!a.windows(6).any(|w| w == b"123456"));
        assert_eq!(k.decrypt(&a).unwrap(), "sk-test-123456");
    }

    #[test]
    fn tampered_or_foreign_ciphertext_is_refused() {
        let k = SecretKey::generate();
        let mut a = k.encrypt("secret").unwrap();
        let last = a.len() - 1;
        a[last] ^= 1;
        assert!(k.decrypt(&a).is_err());
        let b = k.encrypt("secret").unwrap();
        assert!(SecretKey::generate().decrypt(&b).is_err());
        assert!(k.decrypt(&[1, 2, 3]).is_err());
    }

    #[test]
    fn hint_shows_only_the_last_four_characters() {
        assert_eq!(key_hint("sk-abcdefgh3456"), "…3456");
        assert_eq!(key_hint("short"), "…");
    }
}
