//! Circuit breakers per target (tool name + host for `http_request`, or agent), shared by every
//! run of one executor instance.
//!
//! Closed → after `failures` consecutive failures → open for `cooldown` (calls fail fast with
//! `circuit_open`) → half-open: a single probe call is let through; its success closes the
//! circuit, its failure opens it again. The table is bounded (`max_targets`).

use chrono::{DateTime, Utc};
use gathering_domain::Clock;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug, Clone)]
pub struct BreakerConfig {
    /// Consecutive failures that open a circuit.
    pub failures: u32,
    /// How long an open circuit stays open before a probe.
    pub cooldown: Duration,
    /// Largest number of targets tracked; beyond it, new targets are not tracked (always closed).
    pub max_targets: usize,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        Self {
            failures: 5,
            cooldown: Duration::from_secs(30),
            max_targets: 1024,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    Closed { consecutive_failures: u32 },
    Open { until: DateTime<Utc> },
    HalfOpen { probing: bool },
}

/// A call that was let through. Report its outcome with [`Breakers::record`]; dropped without a
/// record (the call was cancelled), a probe slot is given back.
#[derive(Debug)]
pub struct BreakerPermit {
    target: String,
    probe: bool,
    breakers: Arc<Breakers>,
    recorded: bool,
}

impl BreakerPermit {
    pub fn is_probe(&self) -> bool {
        self.probe
    }
    /// Reports the call's outcome: `healthy` false counts as a failure of the target.
    pub fn record(mut self, healthy: bool) {
        self.recorded = true;
        self.breakers.record(&self.target, self.probe, healthy);
    }
}

impl Drop for BreakerPermit {
    fn drop(&mut self) {
        if !self.recorded && self.probe {
            let mut map = self.breakers.states.lock();
            if let Some(BreakerState::HalfOpen { probing }) = map.get_mut(&self.target) {
                *probing = false;
            }
        }
    }
}

/// The circuit is open: retry after this long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CircuitOpen {
    pub retry_after: Duration,
}

pub struct Breakers {
    cfg: BreakerConfig,
    clock: Arc<dyn Clock>,
    states: Mutex<HashMap<String, BreakerState>>,
}

impl std::fmt::Debug for Breakers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Breakers")
            .field("cfg", &self.cfg)
            .finish_non_exhaustive()
    }
}

impl Breakers {
    pub fn new(cfg: BreakerConfig, clock: Arc<dyn Clock>) -> Arc<Self> {
        Arc::new(Self {
            cfg,
            clock,
            states: Mutex::new(HashMap::new()),
        })
    }

    /// Lets a call to `target` through, or refuses it while the circuit is open.
    pub fn acquire(self: &Arc<Self>, target: &str) -> Result<BreakerPermit, CircuitOpen> {
        let now = self.clock.now();
        let mut map = self.states.lock();
        let permit = |probe| BreakerPermit {
            target: target.to_owned(),
            probe,
            breakers: Arc::clone(self),
            recorded: false,
        };
        let Some(state) = map.get_mut(target) else {
            return Ok(permit(false));
        };
        match *state {
            BreakerState::Closed { .. } => Ok(permit(false)),
            BreakerState::Open { until } if now < until => Err(CircuitOpen {
                retry_after: (until - now).to_std().unwrap_or_default(),
            }),
            BreakerState::Open { .. } | BreakerState::HalfOpen { probing: false } => {
                *state = BreakerState::HalfOpen { probing: true };
                Ok(permit(true))
            }
            BreakerState::HalfOpen { probing: true } => Err(CircuitOpen {
                retry_after: Duration::from_millis(100),
            }),
        }
    }

    fn record(&self, target: &str, probe: bool, healthy: bool) {
        let now = self.clock.now();
        let open_until = now
            + chrono::Duration::from_std(self.cfg.cooldown)
                .unwrap_or(chrono::Duration::seconds(30));
        let mut map = self.states.lock();
        if !map.contains_key(target) {
            if healthy {
                return;
            }
            if map.len() >= self.cfg.max_targets {
                // Evict healthy entries first; if none, leave this target untracked.
                map.retain(|_, s| !matches!(s, BreakerState::Closed { .. }));
                if map.len() >= self.cfg.max_targets {
                    return;
                }
            }
            map.insert(
                target.to_owned(),
                BreakerState::Closed {
                    consecutive_failures: 0,
                },
            );
        }
        let Some(state) = map.get_mut(target) else {
            return;
        };
        *state = match (*state, healthy) {
            (_, true) if probe => BreakerState::Closed {
                consecutive_failures: 0,
            },
            (_, false) if probe => BreakerState::Open { until: open_until },
            (BreakerState::Closed { .. }, true) => BreakerState::Closed {
                consecutive_failures: 0,
            },
            (
                BreakerState::Closed {
                    consecutive_failures,
                },
                false,
            ) => {
                let n = consecutive_failures + 1;
                if n >= self.cfg.failures {
                    BreakerState::Open { until: open_until }
                } else {
                    BreakerState::Closed {
                        consecutive_failures: n,
                    }
                }
            }
            // Results of calls let through before the circuit opened do not change it.
            (other, _) => other,
        };
    }

    /// The current state of `target` (closed when untracked).
    pub fn state(&self, target: &str) -> BreakerState {
        self.states
            .lock()
            .get(target)
            .copied()
            .unwrap_or(BreakerState::Closed {
                consecutive_failures: 0,
            })
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
                max_targets: 8,
            },
            clock.clone(),
        );
        (clock, b)
    }

    #[test]
    fn opens_after_consecutive_failures_and_fails_fast() {
        let (_clock, b) = setup();
        for _ in 0..2 {
            b.acquire("t").unwrap().record(false);
        }
        assert!(matches!(
            b.state("t"),
            BreakerState::Closed {
                consecutive_failures: 2
            }
        ));
        b.acquire("t").unwrap().record(false);
        assert!(matches!(b.state("t"), BreakerState::Open { .. }));
        let err = b.acquire("t").unwrap_err();
        assert!(err.retry_after <= Duration::from_secs(30));
        // Other targets are unaffected.
        assert!(b.acquire("other").is_ok());
    }

    #[test]
    fn a_success_resets_the_failure_count() {
        let (_clock, b) = setup();
        b.acquire("t").unwrap().record(false);
        b.acquire("t").unwrap().record(false);
        b.acquire("t").unwrap().record(true);
        b.acquire("t").unwrap().record(false);
        assert!(matches!(
            b.state("t"),
            BreakerState::Closed {
                consecutive_failures: 1
            }
        ));
    }

    #[test]
    fn half_open_lets_one_probe_through_and_its_success_closes() {
        let (clock, b) = setup();
        for _ in 0..3 {
            b.acquire("t").unwrap().record(false);
        }
        clock.advance(chrono::Duration::seconds(31));
        let probe = b.acquire("t").unwrap();
        assert!(probe.is_probe());
        assert!(b.acquire("t").is_err(), "only one probe at a time");
        probe.record(true);
        assert!(matches!(
            b.state("t"),
            BreakerState::Closed {
                consecutive_failures: 0
            }
        ));
        assert!(b.acquire("t").is_ok());
    }

    #[test]
    fn failed_probe_reopens_for_a_full_cooldown() {
        let (clock, b) = setup();
        for _ in 0..3 {
            b.acquire("t").unwrap().record(false);
        }
        clock.advance(chrono::Duration::seconds(31));
        b.acquire("t").unwrap().record(false);
        assert!(matches!(b.state("t"), BreakerState::Open { .. }));
        clock.advance(chrono::Duration::seconds(29));
        assert!(b.acquire("t").is_err());
    }

    #[test]
    fn a_dropped_probe_frees_the_probe_slot() {
        let (clock, b) = setup();
        for _ in 0..3 {
            b.acquire("t").unwrap().record(false);
        }
        clock.advance(chrono::Duration::seconds(31));
        drop(b.acquire("t").unwrap());
        assert!(b.acquire("t").unwrap().is_probe());
    }

    #[test]
    fn the_table_is_bounded() {
        let (_clock, b) = setup();
        for i in 0..20 {
            for _ in 0..3 {
                b.acquire(&format!("t{i}")).unwrap().record(false);
            }
        }
        assert!(b.states.lock().len() <= 8);
    }
}
