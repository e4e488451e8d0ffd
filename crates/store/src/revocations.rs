//! [`RevocationRepository`] on PostgreSQL (`auth.revoked_tokens`), announcing each revocation
//! to every instance with `NOTIFY` on [`REVOCATION_CHANNEL`].

use crate::error::db_err;
use crate::pool::{PgPool, conn};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use gathering_domain::RepoError;
use gathering_domain::auth::{REVOCATION_CHANNEL, RevocationRepository, RevokedToken, UserId};
use uuid::Uuid;

#[derive(Clone)]
pub struct PgRevocationRepository {
    pool: PgPool,
}

impl PgRevocationRepository {
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }
}

#[async_trait]
impl RevocationRepository for PgRevocationRepository {
    async fn revoke(&self, token: RevokedToken, user_id: UserId) -> Result<(), RepoError> {
        let mut c = conn(&self.pool).await?;
        let tx = c.transaction().await.map_err(db_err)?;
        let insert = tx
            .prepare_cached(
                "INSERT INTO auth.revoked_tokens (jti, user_id, expires_at) VALUES ($1, $2, $3) \
                 ON CONFLICT (jti) DO NOTHING",
            )
            .await
            .map_err(db_err)?;
        tx.execute(&insert, &[&token.jti, &user_id, &token.expires_at])
            .await
            .map_err(db_err)?;
        // Delivered to listeners only when (and if) the transaction commits.
        let notify = tx
            .prepare_cached("SELECT pg_notify($1, $2)")
            .await
            .map_err(db_err)?;
        tx.execute(&notify, &[&REVOCATION_CHANNEL, &token.jti.to_string()])
            .await
            .map_err(db_err)?;
        tx.commit().await.map_err(db_err)
    }

    async fn is_revoked(&self, jti: Uuid) -> Result<bool, RepoError> {
        let c = conn(&self.pool).await?;
        let stmt = c
            .prepare_cached("SELECT EXISTS (SELECT 1 FROM auth.revoked_tokens WHERE jti = $1)")
            .await
            .map_err(db_err)?;
        let row = c.query_one(&stmt, &[&jti]).await.map_err(db_err)?;
        row.try_get(0).map_err(db_err)
    }

    async fn list_active(
        &self,
        now: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<RevokedToken>, RepoError> {
        let c = conn(&self.pool).await?;
        // Latest expiry first: if the limit cuts the list, the ones kept stay relevant longest.
        let stmt = c
            .prepare_cached(
                "SELECT jti, expires_at FROM auth.revoked_tokens WHERE expires_at > $1 \
                 ORDER BY expires_at DESC LIMIT $2",
            )
            .await
            .map_err(db_err)?;
        let rows = c
            .query(&stmt, &[&now, &i64::from(limit)])
            .await
            .map_err(db_err)?;
        rows.iter()
            .map(|r| {
                Ok(RevokedToken {
                    jti: r.try_get(0).map_err(db_err)?,
                    expires_at: r.try_get(1).map_err(db_err)?,
                })
            })
            .collect()
    }

    async fn purge_expired(&self, before: DateTime<Utc>) -> Result<u64, RepoError> {
        let c = conn(&self.pool).await?;
        let stmt = c
            .prepare_cached("DELETE FROM auth.revoked_tokens WHERE expires_at < $1")
            .await
            .map_err(db_err)?;
        c.execute(&stmt, &[&before]).await.map_err(db_err)
    }
}
