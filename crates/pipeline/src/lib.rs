//! The pipeline engine: definition validation (petgraph), templates and CEL conditions, the
//! durable executor (claims runs under a lease, runs ready nodes concurrently, retries with
//! backoff, the shared endpoint circuit breakers of `gathering-resilience`, timeouts,
//! cancellation, durable delay timers) and the
//! [`service::PipelineService`] used by the HTTP layer and the scheduler.

pub mod condition;
#[cfg(any(test, feature = "test-support"))]
pub mod contract;
pub mod error;
pub mod template;
pub mod validate;

pub use error::PipelineError;
/// The breaker registry now lives in `gathering-resilience` (one for the whole process).
pub use gathering_resilience as breaker;
pub mod executor;
pub mod limits;
pub mod memory;
pub mod pool;
pub mod retry;
pub mod service;

pub mod settings;
#[cfg(test)]
mod tests;
