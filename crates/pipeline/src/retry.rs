//! A node's retry backoff: its `retry` policy mapped onto the one backoff policy of
//! `gathering-resilience` (exponential with equal jitter, capped), and the injectable sleeper.

use gathering_domain::pipeline::RetryPolicy;
pub use gathering_resilience::{Backoff, Sleeper, TokioSleeper};
use std::time::Duration;

/// The backoff of a node's retry policy.
pub fn policy_backoff(policy: &RetryPolicy) -> Backoff {
    Backoff {
        initial: Duration::from_millis(policy.initial_backoff_ms),
        multiplier: policy.multiplier,
        max: Duration::from_millis(policy.max_backoff_ms),
        jitter: true,
        ..Backoff::default()
    }
}

/// The wait before attempt `failed_attempts + 1`: `initial * multiplier^(failed_attempts-1)`,
/// capped at `max_backoff_ms`, with "equal jitter" (uniform in [d/2, d]).
pub fn backoff(policy: &RetryPolicy, failed_attempts: u32) -> Duration {
    policy_backoff(policy).delay(failed_attempts)
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
