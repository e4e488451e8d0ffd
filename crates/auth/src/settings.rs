//! The `[auth]` configuration section (`GATHERING__AUTH__*`): the one place its defaults live.
//! The binary composes this struct into its settings; the numbers come from
//! [`AuthConfig`](crate::AuthConfig)'s defaults, so a default is written once.

use crate::config::AuthConfig;
use secrecy::SecretString;
use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct AuthSettings {
    /// `GATHERING__AUTH__TOKEN_KEY`: 64 hex characters; generated once into the data dir when
    /// unset.
    pub token_key: Option<SecretString>,
    /// `GATHERING__AUTH__ADMIN_EMAIL`
    pub admin_email: Option<String>,
    /// `GATHERING__AUTH__ADMIN_PASSWORD`
    pub admin_password: Option<SecretString>,
    pub access_ttl_secs: u64,
    pub refresh_ttl_secs: u64,
    pub max_failed_logins: u32,
    pub lockout_window_secs: u64,
    /// Progressive per-account login delay after `max_failed_logins`: base and cap (seconds).
    pub lockout_base_delay_secs: u64,
    pub lockout_max_delay_secs: u64,
    /// Concurrent password hashes; 0 = number of cores (the server's workers).
    pub hash_concurrency: usize,
    pub revocation_cache_capacity: usize,
    /// Verified access tokens kept in memory; 0 disables.
    pub token_cache_capacity: usize,
    /// User rows kept in memory for `GET /auth/me`; 0 disables.
    pub user_cache_capacity: usize,
    pub user_cache_ttl_secs: u64,
}

impl Default for AuthSettings {
    fn default() -> Self {
        let d = AuthConfig::default();
        Self {
            token_key: None,
            admin_email: None,
            admin_password: None,
            access_ttl_secs: d.access_ttl.as_secs(),
            refresh_ttl_secs: d.refresh_ttl.as_secs(),
            max_failed_logins: d.max_failed_logins,
            lockout_window_secs: d.lockout_window.as_secs(),
            lockout_base_delay_secs: d.lockout_base_delay.as_secs(),
            lockout_max_delay_secs: d.lockout_max_delay.as_secs(),
            hash_concurrency: 0,
            revocation_cache_capacity: d.revocation_cache_capacity,
            token_cache_capacity: d.token_cache_capacity,
            user_cache_capacity: d.user_cache_capacity,
            user_cache_ttl_secs: d.user_cache_ttl.as_secs(),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_the_ones_the_server_has_always_run_with() {
        let s = AuthSettings::default();
        assert_eq!((s.access_ttl_secs, s.refresh_ttl_secs), (900, 1_209_600));
        assert_eq!((s.max_failed_logins, s.lockout_window_secs), (5, 900));
        assert_eq!(
            (s.lockout_base_delay_secs, s.lockout_max_delay_secs),
            (1, 300)
        );
        assert_eq!(s.hash_concurrency, 0);
        assert_eq!(
            (
                s.revocation_cache_capacity,
                s.token_cache_capacity,
                s.user_cache_capacity
            ),
            (100_000, 10_000, 10_000)
        );
        assert_eq!(s.user_cache_ttl_secs, 30);
        assert!(s.token_key.is_none() && s.admin_email.is_none() && s.admin_password.is_none());
    }

    #[test]
    fn a_missing_key_takes_its_default() {
        let one: AuthSettings = serde_json::from_str(r#"{"max_failed_logins": 3}"#).unwrap();
        assert_eq!(one.max_failed_logins, 3);
        assert_eq!(one.access_ttl_secs, AuthSettings::default().access_ttl_secs);
    }
}
