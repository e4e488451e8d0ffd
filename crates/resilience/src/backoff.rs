//! The one backoff policy: exponential, capped, with "equal jitter", and the retry decision.

use async_trait::async_trait;
use rand::Rng;
use std::time::Duration;

/// Wait before attempt `n + 1` after `n` failed attempts: `initial · multiplier^(n-1)`, capped
/// at `max`, then (with `jitter`) drawn uniformly from `[d/2, d]`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Backoff {
    pub initial: Duration,
    pub multiplier: f64,
    pub max: Duration,
    pub jitter: bool,
    /// A server's `Retry-After` longer than this is not waited for: give up instead.
    pub max_hint: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            initial: Duration::from_millis(500),
            multiplier: 2.0,
            max: Duration::from_secs(30),
            jitter: true,
            max_hint: Duration::from_secs(30),
        }
    }
}

/// What a retrying layer does after a failed attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    /// Wait this long, then try again.
    After(Duration),
    /// Do not try again (not retryable, budget spent, or the server asks for too long a wait).
    GiveUp,
}

impl Backoff {
    /// The wait after `failed_attempts` (≥ 1) failed attempts.
    pub fn delay(&self, failed_attempts: u32) -> Duration {
        let exp = failed_attempts.saturating_sub(1).min(64) as i32;
        let raw = self.initial.as_millis() as f64 * self.multiplier.max(1.0).powi(exp);
        let capped = raw.min(self.max.as_millis() as f64).max(0.0) as u64;
        if !self.jitter {
            return Duration::from_millis(capped);
        }
        let half = capped / 2;
        let jitter = if capped > half {
            rand::rng().random_range(0..=capped - half)
        } else {
            0
        };
        Duration::from_millis(half + jitter)
    }

    /// Retry after `failed_attempts` of at most `max_attempts` (the first included)? `hint` is
    /// the target's own `Retry-After`, waited for instead of the backoff when it is not longer
    /// than `max_hint`.
    pub fn decide(
        &self,
        failed_attempts: u32,
        max_attempts: u32,
        retryable: bool,
        hint: Option<Duration>,
    ) -> Retry {
        if !retryable || failed_attempts >= max_attempts.max(1) {
            return Retry::GiveUp;
        }
        match hint {
            Some(h) if h > self.max_hint => Retry::GiveUp,
            Some(h) => Retry::After(h),
            None => Retry::After(self.delay(failed_attempts)),
        }
    }
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

    fn policy(jitter: bool) -> Backoff {
        Backoff {
            initial: Duration::from_millis(100),
            multiplier: 2.0,
            max: Duration::from_millis(1000),
            jitter,
            max_hint: Duration::from_secs(5),
        }
    }

    #[test]
    fn backoff_grows_exponentially_with_jitter_and_is_capped() {
        let p = policy(true);
        for _ in 0..50 {
            let b1 = p.delay(1).as_millis();
            assert!((50..=100).contains(&b1), "{b1}");
            let b3 = p.delay(3).as_millis();
            assert!((200..=400).contains(&b3), "{b3}");
            let b9 = p.delay(9).as_millis();
            assert!((500..=1000).contains(&b9), "{b9}");
        }
    }

    #[test]
    fn without_jitter_the_delay_is_exact() {
        let p = policy(false);
        assert_eq!(p.delay(1), Duration::from_millis(100));
        assert_eq!(p.delay(2), Duration::from_millis(200));
        assert_eq!(p.delay(40), Duration::from_millis(1000));
        assert_eq!(p.delay(u32::MAX), Duration::from_millis(1000));
    }

    #[test]
    fn decide_gives_up_when_not_retryable_or_out_of_attempts() {
        let p = policy(false);
        assert_eq!(p.decide(1, 3, false, None), Retry::GiveUp);
        assert_eq!(p.decide(3, 3, true, None), Retry::GiveUp);
        assert_eq!(
            p.decide(1, 0, true, None),
            Retry::GiveUp,
            "0 means one attempt"
        );
        assert_eq!(
            p.decide(2, 3, true, None),
            Retry::After(Duration::from_millis(200))
        );
    }

    #[test]
    fn decide_honours_a_short_retry_after_and_refuses_a_long_one() {
        let p = policy(false);
        assert_eq!(
            p.decide(1, 3, true, Some(Duration::from_secs(2))),
            Retry::After(Duration::from_secs(2))
        );
        assert_eq!(
            p.decide(1, 3, true, Some(Duration::from_secs(6))),
            Retry::GiveUp
        );
    }
}
