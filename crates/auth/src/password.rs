//! Argon2id password hashing (PHC strings) on a bounded blocking pool.
//!
//! Every hash and verification runs on `tokio::task::spawn_blocking` behind a semaphore, so a
//! login flood queues here instead of starving the async workers, and the caller's tracing span
//! is carried into the blocking closure.

use crate::error::AuthError;
use argon2::password_hash::phc::PasswordHash;
use argon2::password_hash::{PasswordHasher as _, PasswordVerifier as _};
use argon2::{Algorithm, Argon2, Params, Version};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::Semaphore;
use zeroize::Zeroizing;

/// Argon2id cost parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PasswordParams {
    pub m_cost_kib: u32,
    pub t_cost: u32,
    pub p_cost: u32,
}

impl PasswordParams {
    /// OWASP Password Storage / ASVS 5.0 appendix C: m=19456 KiB, t=2, p=1.
    pub const OWASP: PasswordParams = PasswordParams {
        m_cost_kib: 19_456,
        t_cost: 2,
        p_cost: 1,
    };

    fn argon2(&self) -> Result<Argon2<'static>, AuthError> {
        let params = Params::new(self.m_cost_kib, self.t_cost, self.p_cost, None)
            .map_err(|e| AuthError::Internal(format!("argon2 parameters: {e}")))?;
        Ok(Argon2::new(Algorithm::Argon2id, Version::V0x13, params))
    }
}

impl Default for PasswordParams {
    fn default() -> Self {
        Self::OWASP
    }
}

/// Hashes `password` with fresh random salt into a PHC string. Blocking (CPU-bound).
pub fn hash_blocking(params: &PasswordParams, password: &[u8]) -> Result<String, AuthError> {
    let hash = params
        .argon2()?
        .hash_password(password)
        .map_err(|e| AuthError::Internal(format!("argon2 hash: {e}")))?;
    Ok(hash.to_string())
}

/// Verifies `password` against a PHC string using the parameters recorded in it. Blocking.
/// A malformed stored hash verifies as `false` (and is logged).
pub fn verify_blocking(password: &[u8], phc: &str) -> bool {
    let parsed = match PasswordHash::new(phc) {
        Ok(p) => p,
        Err(e) => {
            tracing::error!(error = %e, "stored password hash is not a valid PHC string");
            return false;
        }
    };
    // The parameters come from the PHC string, not from this instance.
    Argon2::default().verify_password(password, &parsed).is_ok()
}

/// True when `phc` was not made by argon2id v19 with at least `current`'s costs.
pub fn needs_rehash(phc: &str, current: &PasswordParams) -> bool {
    let Ok(parsed) = PasswordHash::new(phc) else {
        return true;
    };
    if parsed.algorithm.as_str() != Algorithm::Argon2id.ident().as_str()
        || parsed.version != Some(Version::V0x13.into())
    {
        return true;
    }
    let Ok(params) = Params::try_from(&parsed) else {
        return true;
    };
    params.m_cost() < current.m_cost_kib
        || params.t_cost() < current.t_cost
        || params.p_cost() < current.p_cost
}

/// The bounded hashing pool plus the dummy hash verified for unknown emails.
pub struct PasswordHasher {
    params: PasswordParams,
    permits: Arc<Semaphore>,
    wait_timeout: Duration,
    dummy_hash: String,
    verifications: AtomicU64,
    hashes: AtomicU64,
}

impl std::fmt::Debug for PasswordHasher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PasswordHasher")
            .field("params", &self.params)
            .field("available_permits", &self.permits.available_permits())
            .finish_non_exhaustive()
    }
}

impl PasswordHasher {
    /// Builds the pool and computes the dummy hash once (on the pool).
    pub async fn new(
        params: PasswordParams,
        concurrency: usize,
        wait_timeout: Duration,
    ) -> Result<Self, AuthError> {
        // Validate the parameters before anything else.
        params.argon2()?;
        let permits = Arc::new(Semaphore::new(concurrency.max(1)));
        let mut random = [0u8; 32];
        rand::RngCore::fill_bytes(&mut rand::rng(), &mut random);
        let secret = Zeroizing::new(random.to_vec());
        let dummy_hash = run_blocking(&permits, wait_timeout, move || {
            hash_blocking(&params, &secret)
        })
        .await??;
        Ok(Self {
            params,
            permits,
            wait_timeout,
            dummy_hash,
            verifications: AtomicU64::new(0),
            hashes: AtomicU64::new(0),
        })
    }

    pub fn params(&self) -> PasswordParams {
        self.params
    }

    /// Hashes with the current parameters.
    pub async fn hash(&self, password: String) -> Result<String, AuthError> {
        self.hashes.fetch_add(1, Ordering::Relaxed);
        let params = self.params;
        let password = Zeroizing::new(password);
        run_blocking(&self.permits, self.wait_timeout, move || {
            hash_blocking(&params, password.as_bytes())
        })
        .await?
    }

    /// Verifies against a stored PHC string.
    pub async fn verify(&self, password: String, phc: String) -> Result<bool, AuthError> {
        self.verifications.fetch_add(1, Ordering::Relaxed);
        let password = Zeroizing::new(password);
        run_blocking(&self.permits, self.wait_timeout, move || {
            verify_blocking(password.as_bytes(), &phc)
        })
        .await
    }

    /// Verifies against the dummy hash (always false), costing what a real verification costs.
    pub async fn verify_dummy(&self, password: String) -> Result<bool, AuthError> {
        self.verify(password, self.dummy_hash.clone()).await
    }

    pub fn needs_rehash(&self, phc: &str) -> bool {
        needs_rehash(phc, &self.params)
    }

    /// Verifications performed so far (real and dummy): a metric, and the way tests prove the
    /// dummy path ran.
    pub fn verifications(&self) -> u64 {
        self.verifications.load(Ordering::Relaxed)
    }

    /// Hashes computed so far (not counting the dummy hash made at start).
    pub fn hashes(&self) -> u64 {
        self.hashes.load(Ordering::Relaxed)
    }
}

/// Runs CPU-bound work on the blocking pool, at most `permits` at once, inside the caller's span.
async fn run_blocking<T, F>(
    permits: &Arc<Semaphore>,
    wait_timeout: Duration,
    work: F,
) -> Result<T, AuthError>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    let permit = tokio::time::timeout(wait_timeout, Arc::clone(permits).acquire_owned())
        .await
        .map_err(|_| AuthError::Overloaded)?
        .map_err(|_| AuthError::Internal("hashing pool closed".into()))?;
    let span = tracing::Span::current();
    tokio::task::spawn_blocking(move || {
        let _permit = permit;
        span.in_scope(work)
    })
    .await
    .map_err(|e| AuthError::Internal(format!("hashing task failed: {e}")))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    const WEAK: PasswordParams = PasswordParams {
        m_cost_kib: 64,
        t_cost: 1,
        p_cost: 1,
    };

    #[test]
    fn default_parameters_are_owasp_argon2id() {
        let phc = hash_blocking(&PasswordParams::default(), b"correct horse battery").unwrap();
        assert!(phc.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{phc}");
        assert!(verify_blocking(b"correct horse battery", &phc));
        assert!(!verify_blocking(b"correct horse batterx", &phc));
        assert!(!needs_rehash(&phc, &PasswordParams::default()));
    }

    #[test]
    fn weaker_or_foreign_hashes_need_rehash() {
        let weak = hash_blocking(&WEAK, b"pw").unwrap();
        assert!(needs_rehash(&weak, &PasswordParams::default()));
        assert!(!needs_rehash(&weak, &WEAK));
        let lower_t = PasswordParams {
            t_cost: 1,
            ..PasswordParams::default()
        };
        assert!(needs_rehash(&hash_blocking(&WEAK, b"x").unwrap(), &lower_t));
        assert!(needs_rehash("not a phc string", &WEAK));
        // argon2i is not argon2id.
        let argon2i = Argon2::new(
            Algorithm::Argon2i,
            Version::V0x13,
            Params::new(64, 1, 1, None).unwrap(),
        )
        .hash_password(b"pw")
        .unwrap()
        .to_string();
        assert!(needs_rehash(&argon2i, &WEAK));
        // Verification honours the stored parameters, whatever ours are.
        assert!(verify_blocking(b"pw", &argon2i));
    }

    #[test]
    fn malformed_stored_hash_never_verifies() {
        assert!(!verify_blocking(b"pw", "$argon2id$garbage"));
        assert!(!verify_blocking(b"pw", ""));
    }

    #[tokio::test]
    async fn pool_hashes_verifies_and_counts() {
        let h = PasswordHasher::new(WEAK, 1, Duration::from_secs(30))
            .await
            .unwrap();
        let phc = h.hash("secret password".into()).await.unwrap();
        assert!(
            h.verify("secret password".into(), phc.clone())
                .await
                .unwrap()
        );
        assert!(!h.verify("other".into(), phc).await.unwrap());
        assert!(!h.verify_dummy("anything".into()).await.unwrap());
        assert_eq!(h.verifications(), 3);
        assert_eq!(h.hashes(), 1);
    }

    #[tokio::test]
    async fn saturated_pool_answers_overloaded_instead_of_queueing_forever() {
        let h = PasswordHasher::new(WEAK, 1, Duration::from_millis(50))
            .await
            .unwrap();
        let held = Arc::clone(&h.permits).acquire_owned().await.unwrap();
        let err = h.hash("pw".into()).await.unwrap_err();
        assert!(matches!(err, AuthError::Overloaded));
        drop(held);
        assert!(h.hash("pw".into()).await.is_ok());
    }
}
