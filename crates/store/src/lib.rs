//! PostgreSQL adapters of the domain's repository traits (tokio-postgres + deadpool-postgres),
//! the migration runner, and LISTEN/NOTIFY. (The private local cluster of the default run is
//! the `gathering-pgcluster` crate.)

pub mod agents;
pub mod audit;
pub mod error;
pub mod listener;
pub mod migrate;
pub mod notifications;
pub mod page;
pub mod pipeline;
pub mod pool;
pub mod projects;
pub mod quotas;
pub mod revocations;
pub mod scheduler;
/// Only with the `test-support` feature (tests and benches), never in the server.
#[cfg(any(test, feature = "test-support"))]
pub mod test_support;
pub mod tokens;
pub mod users;

pub use error::StoreError;
pub use pool::{PgPool, PoolSettings, connect};
