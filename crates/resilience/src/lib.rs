//! gathering-resilience: the one circuit breaker and the one backoff policy of GatheRing.
//!
//! - [`Breakers`]: a keyed circuit-breaker registry (closed → open after `failures`
//!   consecutive failures → half-open after `cooldown`: one probe; its success closes, its
//!   failure reopens). Bounded: only keys with failures are tracked, closed ones are evicted
//!   least-recently-used first. Time comes from the injected [`gathering_domain::Clock`], so
//!   tests step a `ManualClock` instead of sleeping. One registry per process is shared by the
//!   pipeline executor, the LLM transport and the scheduler.
//! - [`keys`]: what a breaker is keyed by — what actually fails together. A provider call is
//!   keyed by provider, base URL and a fingerprint of the credential (never the key itself), so
//!   one user's rate-limited or revoked key cannot pause another user's calls; a network tool by
//!   its remote endpoint; pure built-in tools (calculator, templates, json_query, files) have no
//!   breaker at all: their failures are the caller's.
//! - [`Outcome`]: what a finished call counts as. Only failures of the target count; failures
//!   the caller caused (its own timeout budget, its own bad key or parameters) are
//!   [`Outcome::Neutral`] or, when the target answered, [`Outcome::Success`].
//! - [`Backoff`] and [`Retry`]: exponential backoff with equal jitter and a cap, and the
//!   retry-or-give-up decision every retrying layer uses. `backon` was considered: its retry
//!   loop wants to own the loop, but the pipeline must persist each attempt and sleep on an
//!   injected sleeper, so a 60-line policy struct is simpler.
//!
//! Which layer retries (exactly one per call): a pipeline node's `retry` policy for agent and
//! tool nodes; the scheduler's action retry for `call_api` and `run_task`; the LLM transport
//! only for interactive calls (chat, circles). Calls made through the agent-runner port (nodes,
//! schedules) make a single transport attempt. See docs/architecture.md, "Resilience".

pub mod backoff;
pub mod breaker;
pub mod keys;

pub use backoff::{Backoff, Retry, Sleeper, TokioSleeper};
pub use breaker::{BreakerConfig, BreakerPermit, BreakerState, Breakers, CircuitOpen, Outcome};
