//! The one error type of this crate.

/// Why the local cluster could not be set up, started, reached or stopped. Every message is
/// meant for the operator: it says what failed and, where there is one, what to do (install the
/// `postgresql` package, fix the data dir's permissions, or set `DATABASE_URL`).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClusterError {
    /// Finding the programs, preparing the data dir, choosing a port, or running
    /// `initdb`/`pg_ctl` failed.
    #[error("local PostgreSQL cluster: {0}")]
    Operation(String),
    /// The server was started but did not accept connections within 30 seconds.
    #[error("local PostgreSQL cluster: cannot connect: {0}")]
    Connect(#[source] tokio_postgres::Error),
    /// Checking for or creating the application database failed.
    #[error("local PostgreSQL cluster: cannot create the database: {0}")]
    Database(#[source] tokio_postgres::Error),
}
