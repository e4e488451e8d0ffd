//! The connection pool, with explicit size and timeouts.

use crate::error::{StoreError, pool_err};
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime, Timeouts};
use gathering_domain::RepoError;
use std::time::Duration;

pub type PgPool = Pool;

#[derive(Debug, Clone)]
pub struct PoolSettings {
    pub max_size: usize,
    pub wait_timeout: Duration,
    pub create_timeout: Duration,
    pub recycle_timeout: Duration,
}

impl Default for PoolSettings {
    fn default() -> Self {
        Self {
            max_size: 16,
            wait_timeout: Duration::from_secs(5),
            create_timeout: Duration::from_secs(5),
            recycle_timeout: Duration::from_secs(2),
        }
    }
}

/// Builds a pool for `url` (`postgres://user@host:port/db`). No connection is made yet:
/// the server starts even while the database is away, and reconnects when it returns.
pub fn connect(url: &str, settings: &PoolSettings) -> Result<PgPool, StoreError> {
    let pg: tokio_postgres::Config = url
        .parse()
        .map_err(|e: tokio_postgres::Error| StoreError::Config(e.to_string()))?;
    let mgr = Manager::from_config(
        pg,
        tokio_postgres::NoTls,
        ManagerConfig {
            // Verified recycling: a connection that died while the database was away is
            // replaced instead of handed out.
            recycling_method: RecyclingMethod::Verified,
        },
    );
    Pool::builder(mgr)
        .max_size(settings.max_size)
        .runtime(Runtime::Tokio1)
        .timeouts(Timeouts {
            wait: Some(settings.wait_timeout),
            create: Some(settings.create_timeout),
            recycle: Some(settings.recycle_timeout),
        })
        .build()
        .map_err(|e| StoreError::Config(e.to_string()))
}

/// Gets a connection, mapping failures to `RepoError::Unavailable`.
pub async fn conn(pool: &PgPool) -> Result<deadpool_postgres::Object, RepoError> {
    pool.get().await.map_err(pool_err)
}

/// `SELECT 1` — the readiness probe.
pub async fn ping(pool: &PgPool) -> Result<(), RepoError> {
    let c = conn(pool).await?;
    c.simple_query("SELECT 1")
        .await
        .map_err(crate::error::db_err)?;
    Ok(())
}
