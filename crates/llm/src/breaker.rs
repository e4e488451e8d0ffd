//! A small circuit breaker: `failure_threshold` consecutive failures open it for `cooldown`;
//! then one probe call is let through (half-open); its success closes it, its failure reopens it.

use parking_lot::Mutex;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy)]
pub struct BreakerSettings {
    pub failure_threshold: u32,
    pub cooldown: Duration,
}

impl Default for BreakerSettings {
    fn default() -> Self {
        Self {
            failure_threshold: 5,
            cooldown: Duration::from_secs(30),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Closed {
        failures: u32,
    },
    Open {
        until: Instant,
    },
    /// A probe is in flight since `since`; a probe that never reports expires after the cooldown.
    HalfOpen {
        since: Instant,
    },
}

#[derive(Debug)]
pub struct CircuitBreaker {
    settings: BreakerSettings,
    state: Mutex<State>,
}

impl CircuitBreaker {
    pub fn new(settings: BreakerSettings) -> Self {
        Self {
            settings,
            state: Mutex::new(State::Closed { failures: 0 }),
        }
    }

    /// `Ok` when a call may go out now; `Err(wait)` while open.
    pub fn try_acquire(&self) -> Result<(), Duration> {
        self.try_acquire_at(Instant::now())
    }

    pub fn try_acquire_at(&self, now: Instant) -> Result<(), Duration> {
        let mut s = self.state.lock();
        match *s {
            State::Closed { .. } => Ok(()),
            State::Open { until } if now < until => Err(until - now),
            State::Open { .. } => {
                *s = State::HalfOpen { since: now };
                Ok(())
            }
            State::HalfOpen { since } if now.duration_since(since) < self.settings.cooldown => {
                Err(self.settings.cooldown - now.duration_since(since))
            }
            State::HalfOpen { .. } => {
                *s = State::HalfOpen { since: now };
                Ok(())
            }
        }
    }

    pub fn on_success(&self) {
        *self.state.lock() = State::Closed { failures: 0 };
    }

    pub fn on_failure(&self) {
        self.on_failure_at(Instant::now());
    }

    pub fn on_failure_at(&self, now: Instant) {
        let mut s = self.state.lock();
        let open = State::Open {
            until: now + self.settings.cooldown,
        };
        *s = match *s {
            State::Closed { failures } if failures + 1 >= self.settings.failure_threshold => open,
            State::Closed { failures } => State::Closed {
                failures: failures + 1,
            },
            State::HalfOpen { .. } | State::Open { .. } => open,
        };
    }

    pub fn is_open(&self) -> bool {
        matches!(*self.state.lock(), State::Open { .. })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn breaker() -> CircuitBreaker {
        CircuitBreaker::new(BreakerSettings {
            failure_threshold: 3,
            cooldown: Duration::from_secs(10),
        })
    }

    #[test]
    fn opens_after_consecutive_failures_only() {
        let b = breaker();
        let t = Instant::now();
        b.on_failure_at(t);
        b.on_failure_at(t);
        b.on_success();
        b.on_failure_at(t);
        b.on_failure_at(t);
        assert!(b.try_acquire_at(t).is_ok());
        b.on_failure_at(t);
        let wait = b.try_acquire_at(t + Duration::from_secs(4)).unwrap_err();
        assert_eq!(wait, Duration::from_secs(6));
    }

    #[test]
    fn half_open_lets_one_probe_through_and_closes_on_success() {
        let b = breaker();
        let t = Instant::now();
        for _ in 0..3 {
            b.on_failure_at(t);
        }
        let later = t + Duration::from_secs(11);
        assert!(b.try_acquire_at(later).is_ok(), "probe allowed");
        assert!(b.try_acquire_at(later).is_err(), "second caller waits");
        b.on_success();
        assert!(b.try_acquire_at(later).is_ok());
        assert!(b.try_acquire_at(later).is_ok());
    }

    #[test]
    fn failed_probe_reopens_for_a_full_cooldown() {
        let b = breaker();
        let t = Instant::now();
        for _ in 0..3 {
            b.on_failure_at(t);
        }
        let later = t + Duration::from_secs(11);
        b.try_acquire_at(later).unwrap();
        b.on_failure_at(later);
        assert_eq!(
            b.try_acquire_at(later).unwrap_err(),
            Duration::from_secs(10)
        );
    }
}
