//! Numbered SQL migrations from `migrations/`, applied in order at start-up.
//!
//! Several instances may start at once: the whole run holds a session-level advisory lock, so
//! one instance migrates while the others wait and then find nothing to do. Each migration runs
//! in its own transaction together with its row in `public.schema_migrations`. A migration that
//! was edited after being applied (checksum differs) stops start-up with a clear message.

use crate::error::StoreError;
use crate::pool::PgPool;
use sha2::{Digest, Sha256};
use tracing::info;

pub struct Migration {
    pub version: i64,
    pub name: &'static str,
    pub sql: &'static str,
}

include!(concat!(env!("OUT_DIR"), "/migrations.rs"));

/// Advisory lock key of the migration run (an arbitrary constant: "GATHMIGR").
const MIGRATION_LOCK: i64 = 0x4741_5448_4d49_4752;

fn checksum(sql: &str) -> String {
    hex::encode(Sha256::digest(sql.as_bytes()))
}

/// Applies every pending migration; returns how many were applied.
pub async fn run(pool: &PgPool) -> Result<usize, StoreError> {
    let mut client = pool
        .get()
        .await
        .map_err(|e| StoreError::Connect(Box::new(e)))?;
    client
        .execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK])
        .await?;
    let result = apply_pending(&mut client).await;
    // Unlock even when a migration failed; if this fails too the session ends with the
    // connection and PostgreSQL drops the lock.
    let unlocked = client
        .execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK])
        .await;
    let applied = result?;
    unlocked?;
    Ok(applied)
}

async fn apply_pending(client: &mut deadpool_postgres::Object) -> Result<usize, StoreError> {
    client
        .batch_execute(
            "CREATE TABLE IF NOT EXISTS public.schema_migrations (
                 version    BIGINT PRIMARY KEY,
                 name       TEXT NOT NULL,
                 checksum   TEXT NOT NULL,
                 applied_at TIMESTAMPTZ NOT NULL DEFAULT now()
             )",
        )
        .await?;
    let rows = client
        .query(
            "SELECT version, name, checksum FROM public.schema_migrations ORDER BY version",
            &[],
        )
        .await?;
    let known = MIGRATIONS.last().map(|m| m.version).unwrap_or(0);
    let mut applied_versions = Vec::with_capacity(rows.len());
    for row in rows {
        let version: i64 = row.get(0);
        let name: String = row.get(1);
        let sum: String = row.get(2);
        match MIGRATIONS.iter().find(|m| m.version == version) {
            Some(m) if checksum(m.sql) != sum => {
                return Err(StoreError::MigrationChanged { version, name });
            }
            Some(_) => applied_versions.push(version),
            None if version > known => {
                return Err(StoreError::MigrationAhead { db: version, known });
            }
            None => applied_versions.push(version),
        }
    }
    let mut count = 0;
    for m in MIGRATIONS {
        if applied_versions.contains(&m.version) {
            continue;
        }
        let tx = client.transaction().await?;
        let wrap = |source| StoreError::Migration {
            version: m.version,
            name: m.name.to_owned(),
            source,
        };
        tx.batch_execute(m.sql).await.map_err(wrap)?;
        tx.execute(
            "INSERT INTO public.schema_migrations (version, name, checksum) VALUES ($1, $2, $3)",
            &[&m.version, &m.name, &checksum(m.sql)],
        )
        .await
        .map_err(wrap)?;
        tx.commit().await.map_err(wrap)?;
        info!(version = m.version, name = m.name, "applied migration");
        count += 1;
    }
    Ok(count)
}
