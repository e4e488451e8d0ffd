//! Supervisor of a private PostgreSQL cluster: the default run of GatheRing.
//!
//! With no `DATABASE_URL`, the server does not need a database administrator: it creates, starts
//! and stops its own PostgreSQL cluster under its data dir, with the machine's
//! `initdb`/`pg_ctl`/`postgres` programs (from `PATH`, or the newest version under
//! `/usr/lib/postgresql/<version>/bin`). This crate is that supervisor and nothing else: it knows
//! nothing of GatheRing's schema or repositories (the `gathering-store` crate connects to the URL
//! it hands out and runs the migrations).
//!
//! # Usage
//!
//! ```no_run
//! # async fn run() -> Result<(), gathering_pgcluster::ClusterError> {
//! use gathering_pgcluster::LocalCluster;
//!
//! let cluster = LocalCluster::start(std::path::Path::new("/var/lib/gathering")).await?;
//! let url = cluster.url(); // postgres://postgres@127.0.0.1:PORT/gathering
//! // ... connect a pool to `url`, serve ...
//! cluster.stop().await?; // on shutdown; a no-op if the cluster was already running
//! # Ok(()) }
//! ```
//!
//! [`LocalCluster::start`] creates the cluster on first use (later runs reuse it: data persists),
//! starts it or reuses one that is already running (another instance on the same data dir, or
//! one left up by a crash), and creates the `gathering` database. Only the value that started
//! the server stops it. Blocking work (processes, files) runs on tokio's blocking pool, so it
//! needs a tokio runtime.
//!
//! # Layout under the data dir
//!
//! - `postgres/` — the cluster (created once by `initdb`, reused afterwards); its server log is
//!   `postgres/server.log` (moved aside at start past 10 MB) and its Unix socket lives in it too;
//! - `postgres.port` — the TCP port chosen once (a free one on 127.0.0.1), reused while free;
//! - `postgres.lock` — held while starting, so instances starting at once share one cluster.
//!
//! The server listens on 127.0.0.1 only, with trust authentication for the `postgres` superuser.
//!
//! # Running as root
//!
//! PostgreSQL refuses to run as root: when the process runs as root the cluster belongs to the
//! `postgres` system user and every PostgreSQL program runs as that user through
//! `runuser -u postgres --` (or `su`, when `runuser` is missing). The data dir's parents must then
//! be traversable by `postgres`; when they are not, start-up fails with a message that says so.
//!
//! # Errors
//!
//! Every failure is a [`ClusterError`] whose message is meant for the operator (what failed and
//! what to do, e.g. install the `postgresql` package or set `DATABASE_URL`).

mod cluster;
mod error;

pub use cluster::{
    DATABASE_NAME, DEFAULT_VERSIONED_ROOT, LocalCluster, PgBinaries, SUPERUSER, SYSTEM_USER,
    effective_uid, find_binaries, find_system_binaries,
};
pub use error::ClusterError;
