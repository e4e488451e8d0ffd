//! The keyed circuit-breaker registry.
//!
//! Closed → after `failures` consecutive failures → open for `cooldown` (calls fail fast with
//! [`CircuitOpen`]) → half-open: a single probe call is let through; its success closes the
//! circuit, its failure opens it again for a full cooldown. A probe whose permit is dropped
//! unrecorded (the caller gave up) frees the probe slot; one that never reports expires after a
//! cooldown.
//!
//! The table is bounded by `max_keys`: a key is tracked only once it failed, a success forgets
//! it, and when the table is full the least recently used closed key is evicted; if every
//! tracked key is open, a new key stays untracked (always closed) rather than evicting an open
//! circuit.

use chrono::{DateTime, Utc};
use gathering_domain::Clock;
use lru::LruCache;
use parking_lot::Mutex;
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug, Clone)]
pub struct BreakerConfig {
    /// Consecutive failures that open a circuit (at least 1).
    pub failures: u32,
    /// How long an open circuit stays open before a probe.
    pub cooldown: Duration,
    /// Largest number of keys tracked.
    pub max_keys: usize,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        Self {
            failures: 5,
            cooldown: Duration::from_secs(30),
            max_keys: 1024,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    Closed {
        consecutive_failures: u32,
    },
    Open {
        until: DateTime<Utc>,
    },
    /// `probe_since`: a probe is in flight since then; `None`: the next call is the probe.
    HalfOpen {
        probe_since: Option<DateTime<Utc>>,
    },
}

/// How a finished call counts for its key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The target answered (also a 4xx caused by the request): resets the failure count and
    /// closes a half-open circuit.
    Success,
    /// The target failed (connection error, its own timeout, 5xx, 429 on this key's breaker).
    Failure,
    /// Says nothing about the target (the caller's own timeout budget, a refused request, a
    /// cancelled call): no change; a probe slot is given back.
    Neutral,
}

/// The circuit is open: retry after this long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CircuitOpen {
    pub retry_after: Duration,
}

/// A call that was let through. Report its outcome with [`BreakerPermit::record`]; dropped
/// without a record (the call was cancelled), it counts as [`Outcome::Neutral`].
#[derive(Debug)]
pub struct BreakerPermit {
    key: String,
    probe: bool,
    breakers: Arc<Breakers>,
    recorded: bool,
}

impl BreakerPermit {
    pub fn is_probe(&self) -> bool {
        self.probe
    }

    pub fn key(&self) -> &str {
        &self.key
    }

    pub fn record(mut self, outcome: Outcome) {
        self.recorded = true;
        self.breakers.record(&self.key, self.probe, outcome);
    }
}

impl Drop for BreakerPermit {
    fn drop(&mut self) {
        if !self.recorded {
            self.breakers
                .record(&self.key, self.probe, Outcome::Neutral);
        }
    }
}

/// The registry: one circuit per key. Share one `Arc` per process.
pub struct Breakers {
    cfg: BreakerConfig,
    clock: Arc<dyn Clock>,
    states: Mutex<LruCache<String, BreakerState>>,
}

impl std::fmt::Debug for Breakers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Breakers")
            .field("cfg", &self.cfg)
            .finish_non_exhaustive()
    }
}

fn chrono_dur(d: Duration) -> chrono::Duration {
    chrono::Duration::from_std(d).unwrap_or(chrono::Duration::seconds(30))
}

impl Breakers {
    pub fn new(mut cfg: BreakerConfig, clock: Arc<dyn Clock>) -> Arc<Self> {
        cfg.failures = cfg.failures.max(1);
        cfg.max_keys = cfg.max_keys.max(1);
        Arc::new(Self {
            cfg,
            clock,
            states: Mutex::new(LruCache::unbounded()),
        })
    }

    pub fn config(&self) -> &BreakerConfig {
        &self.cfg
    }

    /// Lets a call to `key` through, or refuses it while the circuit is open.
    pub fn acquire(self: &Arc<Self>, key: &str) -> Result<BreakerPermit, CircuitOpen> {
        let now = self.clock.now();
        let cooldown = chrono_dur(self.cfg.cooldown);
        let mut map = self.states.lock();
        let permit = |probe| BreakerPermit {
            key: key.to_owned(),
            probe,
            breakers: Arc::clone(self),
            recorded: false,
        };
        let Some(state) = map.get_mut(key) else {
            return Ok(permit(false));
        };
        match *state {
            BreakerState::Closed { .. } => Ok(permit(false)),
            BreakerState::Open { until } if now < until => Err(CircuitOpen {
                retry_after: (until - now).to_std().unwrap_or_default(),
            }),
            BreakerState::HalfOpen {
                probe_since: Some(since),
            } if now - since < cooldown => Err(CircuitOpen {
                retry_after: (since + cooldown - now)
                    .to_std()
                    .unwrap_or_default()
                    .min(Duration::from_secs(1)),
            }),
            // Open and due, no probe in flight, or a probe that never reported.
            _ => {
                *state = BreakerState::HalfOpen {
                    probe_since: Some(now),
                };
                Ok(permit(true))
            }
        }
    }

    fn record(&self, key: &str, probe: bool, outcome: Outcome) {
        let now = self.clock.now();
        let open = BreakerState::Open {
            until: now + chrono_dur(self.cfg.cooldown),
        };
        let mut map = self.states.lock();
        let Some(state) = map.peek_mut(key) else {
            if outcome == Outcome::Failure {
                self.track_first_failure(&mut map, key, open);
            }
            return;
        };
        let next = match (*state, outcome) {
            (BreakerState::HalfOpen { .. }, Outcome::Neutral) if probe => {
                Some(BreakerState::HalfOpen { probe_since: None })
            }
            (BreakerState::HalfOpen { .. }, Outcome::Success) if probe => None,
            (BreakerState::HalfOpen { .. }, Outcome::Failure) if probe => Some(open),
            (BreakerState::Closed { .. }, Outcome::Success) => None,
            (
                BreakerState::Closed {
                    consecutive_failures,
                },
                Outcome::Failure,
            ) => {
                let n = consecutive_failures.saturating_add(1);
                Some(if n >= self.cfg.failures {
                    open
                } else {
                    BreakerState::Closed {
                        consecutive_failures: n,
                    }
                })
            }
            // Neutral outcomes, and results of calls let through before the circuit opened.
            (other, _) => Some(other),
        };
        match next {
            Some(s) => *state = s,
            // Closed with no failures: nothing worth keeping.
            None => {
                map.pop(key);
            }
        }
    }

    fn track_first_failure(
        &self,
        map: &mut LruCache<String, BreakerState>,
        key: &str,
        open: BreakerState,
    ) {
        if map.len() >= self.cfg.max_keys {
            let victim = map
                .iter()
                .rev()
                .find(|(_, s)| matches!(s, BreakerState::Closed { .. }))
                .map(|(k, _)| k.clone());
            match victim {
                Some(k) => {
                    map.pop(&k);
                }
                // Every tracked key is open or probing: leave this one untracked.
                None => return,
            }
        }
        let state = if self.cfg.failures <= 1 {
            open
        } else {
            BreakerState::Closed {
                consecutive_failures: 1,
            }
        };
        map.put(key.to_owned(), state);
    }

    /// The current state of `key` (closed when untracked).
    pub fn state(&self, key: &str) -> BreakerState {
        self.states
            .lock()
            .peek(key)
            .copied()
            .unwrap_or(BreakerState::Closed {
                consecutive_failures: 0,
            })
    }

    /// Keys tracked (for tests and metrics).
    pub fn tracked(&self) -> usize {
        self.states.lock().len()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use gathering_domain::ManualClock;

    fn setup() -> (Arc<ManualClock>, Arc<Breakers>) {
        let clock = Arc::new(ManualClock::new(Utc::now()));
        let b = Breakers::new(
            BreakerConfig {
                failures: 3,
                cooldown: Duration::from_secs(30),
                max_keys: 8,
            },
            clock.clone(),
        );
        (clock, b)
    }

    fn fail(b: &Arc<Breakers>, key: &str, n: usize) {
        for _ in 0..n {
            b.acquire(key).unwrap().record(Outcome::Failure);
        }
    }

    #[test]
    fn opens_after_consecutive_failures_and_fails_fast() {
        let (_clock, b) = setup();
        fail(&b, "t", 2);
        assert_eq!(
            b.state("t"),
            BreakerState::Closed {
                consecutive_failures: 2
            }
        );
        fail(&b, "t", 1);
        assert!(matches!(b.state("t"), BreakerState::Open { .. }));
        let err = b.acquire("t").unwrap_err();
        assert_eq!(err.retry_after, Duration::from_secs(30));
        assert!(b.acquire("other").is_ok(), "other keys are unaffected");
    }

    #[test]
    fn a_success_resets_the_failure_count_and_forgets_the_key() {
        let (_clock, b) = setup();
        fail(&b, "t", 2);
        b.acquire("t").unwrap().record(Outcome::Success);
        assert_eq!(b.tracked(), 0);
        fail(&b, "t", 1);
        assert_eq!(
            b.state("t"),
            BreakerState::Closed {
                consecutive_failures: 1
            }
        );
    }

    #[test]
    fn neutral_outcomes_never_open_a_circuit() {
        let (_clock, b) = setup();
        for _ in 0..100 {
            b.acquire("t").unwrap().record(Outcome::Neutral);
            drop(b.acquire("t").unwrap());
        }
        assert_eq!(b.tracked(), 0);
        fail(&b, "t", 2);
        b.acquire("t").unwrap().record(Outcome::Neutral);
        assert_eq!(
            b.state("t"),
            BreakerState::Closed {
                consecutive_failures: 2
            },
            "neutral neither counts nor resets"
        );
    }

    #[test]
    fn half_open_lets_one_probe_through_and_its_success_closes() {
        let (clock, b) = setup();
        fail(&b, "t", 3);
        clock.advance(chrono::Duration::seconds(29));
        assert!(b.acquire("t").is_err());
        clock.advance(chrono::Duration::seconds(2));
        let probe = b.acquire("t").unwrap();
        assert!(probe.is_probe());
        assert!(b.acquire("t").is_err(), "only one probe at a time");
        probe.record(Outcome::Success);
        assert_eq!(
            b.state("t"),
            BreakerState::Closed {
                consecutive_failures: 0
            }
        );
        assert!(!b.acquire("t").unwrap().is_probe());
    }

    #[test]
    fn failed_probe_reopens_for_a_full_cooldown() {
        let (clock, b) = setup();
        fail(&b, "t", 3);
        clock.advance(chrono::Duration::seconds(31));
        b.acquire("t").unwrap().record(Outcome::Failure);
        assert!(matches!(b.state("t"), BreakerState::Open { .. }));
        clock.advance(chrono::Duration::seconds(29));
        assert_eq!(
            b.acquire("t").unwrap_err().retry_after,
            Duration::from_secs(1)
        );
    }

    #[test]
    fn a_dropped_probe_frees_the_probe_slot() {
        let (clock, b) = setup();
        fail(&b, "t", 3);
        clock.advance(chrono::Duration::seconds(31));
        drop(b.acquire("t").unwrap());
        assert!(b.acquire("t").unwrap().is_probe());
    }

    #[test]
    fn a_probe_that_never_reports_expires_after_a_cooldown() {
        let (clock, b) = setup();
        fail(&b, "t", 3);
        clock.advance(chrono::Duration::seconds(31));
        let stuck = b.acquire("t").unwrap();
        std::mem::forget(stuck);
        assert!(b.acquire("t").is_err());
        clock.advance(chrono::Duration::seconds(31));
        assert!(b.acquire("t").unwrap().is_probe());
    }

    #[test]
    fn the_table_is_bounded_and_evicts_closed_keys_first() {
        let (_clock, b) = setup();
        // 7 open circuits, then many keys with a single failure each.
        for i in 0..7 {
            fail(&b, &format!("open{i}"), 3);
        }
        for i in 0..100 {
            fail(&b, &format!("k{i}"), 1);
        }
        assert_eq!(b.tracked(), 8);
        for i in 0..7 {
            assert!(
                b.acquire(&format!("open{i}")).is_err(),
                "open circuits are never evicted by closed ones"
            );
        }
        assert_eq!(
            b.state("k99"),
            BreakerState::Closed {
                consecutive_failures: 1
            }
        );
        // A full table of open circuits leaves new keys untracked (closed).
        fail(&b, "k99", 2);
        fail(&b, "new", 3);
        assert!(b.acquire("new").is_ok());
        assert_eq!(b.tracked(), 8);
    }
}
