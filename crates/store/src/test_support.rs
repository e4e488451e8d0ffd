//! Fresh, migrated databases for tests against the real PostgreSQL.
//!
//! `TEST_DATABASE_URL` points at a server (default `postgres://postgres@127.0.0.1:5432/postgres`);
//! each [`TestDb`] creates a database named by a fresh UUID there and migrates it. Databases are
//! left behind for inspection; `.ci/run` drops every `gathering_test_*` database when it starts.

use crate::error::StoreError;
use crate::pool::{PgPool, PoolSettings, connect};
use uuid::Uuid;

pub fn admin_url() -> String {
    std::env::var("TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

/// Replaces the database name at the end of a URL (`.../postgres` → `.../<name>`).
pub fn with_database(url: &str, name: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let base = match base.rfind('/') {
        Some(i) if i > base.find("//").map(|j| j + 1).unwrap_or(0) => &base[..i],
        _ => base,
    };
    match query {
        Some(q) => format!("{base}/{name}?{q}"),
        None => format!("{base}/{name}"),
    }
}

pub struct TestDb {
    pub name: String,
    pub url: String,
    pub pool: PgPool,
}

impl TestDb {
    /// Creates and migrates a fresh database.
    pub async fn new() -> Result<TestDb, StoreError> {
        let name = format!("gathering_test_{}", Uuid::new_v4().simple());
        let (client, connection) = tokio_postgres::connect(&admin_url(), tokio_postgres::NoTls)
            .await
            .map_err(|e| StoreError::Connect(Box::new(e)))?;
        tokio::spawn(connection);
        // The name is generated above from a UUID, never from input: identifiers cannot be
        // bind parameters.
        client
            .batch_execute(&format!("CREATE DATABASE \"{name}\""))
            .await?;
        let url = with_database(&admin_url(), &name);
        let pool = connect(&url, &PoolSettings::default())?;
        crate::migrate::run(&pool).await?;
        Ok(TestDb { name, url, pool })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn with_database_replaces_only_the_path() {
        assert_eq!(
            with_database("postgres://postgres@127.0.0.1:5432/postgres", "x"),
            "postgres://postgres@127.0.0.1:5432/x"
        );
        assert_eq!(
            with_database("postgres://u@h/db?sslmode=disable", "y"),
            "postgres://u@h/y?sslmode=disable"
        );
        assert_eq!(with_database("postgres://u@h", "z"), "postgres://u@h/z");
    }
}
