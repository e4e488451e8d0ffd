//! Auth configuration with the project's defaults (API.md names in comments).

use crate::password::PasswordParams;
use std::time::Duration;

#[derive(Debug, Clone)]
pub struct AuthConfig {
    /// Access-token lifetime (`GATHERING__AUTH__ACCESS_TTL_SECS`, default 900 s).
    pub access_ttl: Duration,
    /// Refresh-token lifetime (`GATHERING__AUTH__REFRESH_TTL_SECS`, default 14 days).
    pub refresh_ttl: Duration,
    /// Failed logins per account within `lockout_window` that are free of any delay
    /// (`GATHERING__AUTH__MAX_FAILED_LOGINS`, default 5). From then on each further attempt must
    /// come at least `lockout_base_delay * 2^(failures - max_failed_logins)` (capped at
    /// `lockout_max_delay`) after the latest failure, or it is answered 429 with Retry-After
    /// without checking the password.
    pub max_failed_logins: u32,
    /// Window of the per-account failed-login counter (`GATHERING__AUTH__LOCKOUT_WINDOW_SECS`,
    /// default 15 min): failures older than this no longer count.
    pub lockout_window: Duration,
    /// First delay of the progressive per-account delay
    /// (`GATHERING__AUTH__LOCKOUT_BASE_DELAY_SECS`, default 1 s).
    pub lockout_base_delay: Duration,
    /// Longest per-account delay (`GATHERING__AUTH__LOCKOUT_MAX_DELAY_SECS`, default 300 s):
    /// under a sustained attack an account takes one password guess per this period, and its
    /// owner waits at most this long.
    pub lockout_max_delay: Duration,
    /// Concurrent argon2 computations (default: number of cores).
    pub hash_concurrency: usize,
    /// How long a request waits for a hashing slot before answering 503 (default 10 s).
    pub hash_wait_timeout: Duration,
    /// Argon2id parameters (default m=19456 KiB, t=2, p=1).
    pub password_params: PasswordParams,
    /// Bound of the in-memory revocation cache (default 100 000 jtis).
    pub revocation_cache_capacity: usize,
    /// Bound of the verified-access-token cache (default 10 000; 0 disables it).
    pub token_cache_capacity: usize,
    /// Bound of the user-row cache behind `GET /auth/me` (default 10 000; 0 disables it).
    pub user_cache_capacity: usize,
    /// Longest time a cached user row is served (default 30 s). Changes reach every instance
    /// through LISTEN/NOTIFY well before that; the TTL only bounds an unforeseen miss.
    pub user_cache_ttl: Duration,
    /// Allowance for clock differences between instances (default 60 s): revocations learnt
    /// from notifications are kept `access_ttl + clock_skew`; purges keep this margin too.
    pub clock_skew: Duration,
    /// At most this many `token_rejected` (and, separately, `lockout`) audit rows per second;
    /// more are dropped and counted (default 20).
    pub rejected_audit_per_sec: u32,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            access_ttl: Duration::from_secs(900),
            refresh_ttl: Duration::from_secs(1_209_600),
            max_failed_logins: 5,
            lockout_window: Duration::from_secs(15 * 60),
            lockout_base_delay: Duration::from_secs(1),
            lockout_max_delay: Duration::from_secs(300),
            hash_concurrency: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(2),
            hash_wait_timeout: Duration::from_secs(10),
            password_params: PasswordParams::default(),
            revocation_cache_capacity: 100_000,
            token_cache_capacity: 10_000,
            user_cache_capacity: 10_000,
            user_cache_ttl: Duration::from_secs(30),
            clock_skew: Duration::from_secs(60),
            rejected_audit_per_sec: 20,
        }
    }
}
