//! Retry backoff (exponential with jitter, capped) and the injectable sleeper.

use async_trait::async_trait;
use gathering_domain::pipeline::RetryPolicy;
use rand::Rng;
use std::time::Duration;

/// The wait before attempt `failed_attempts + 1`: `initial * multiplier^(failed_attempts-1)`,
/// capped at `max_backoff_ms`, with "equal jitter" (uniform in [d/2, d]).
pub fn backoff(policy: &RetryPolicy, failed_attempts: u32) -> Duration {
    let exp = failed_attempts.saturating_sub(1).min(64) as i32;
    let raw = policy.initial_backoff_ms as f64 * policy.multiplier.max(1.0).powi(exp);
    let capped = raw.min(policy.max_backoff_ms as f64).max(0.0) as u64;
    let half = capped / 2;
    let jitter = if capped > half {
        rand::rng().random_range(0..=capped - half)
    } else {
        0
    };
    Duration::from_millis(half + jitter)
}

/// Waits between retries; tests inject one that moves a manual clock instead of sleeping.
#[async_trait]
pub trait Sleeper: Send + Sync {
    async fn sleep(&self, d: Duration);
}

#[derive(Debug, Default, Clone, Copy)]
pub struct TokioSleeper;

#[async_trait]
impl Sleeper for TokioSleeper {
    async fn sleep(&self, d: Duration) {
        tokio::time::sleep(d).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_exponentially_with_jitter_and_is_capped() {
        let p = RetryPolicy {
            max_attempts: 10,
            initial_backoff_ms: 100,
            multiplier: 2.0,
            max_backoff_ms: 1000,
        };
        for _ in 0..50 {
            let b1 = backoff(&p, 1).as_millis();
            assert!((50..=100).contains(&b1), "{b1}");
            let b3 = backoff(&p, 3).as_millis();
            assert!((200..=400).contains(&b3), "{b3}");
            let b9 = backoff(&p, 9).as_millis();
            assert!((500..=1000).contains(&b9), "{b9}");
        }
    }
}
