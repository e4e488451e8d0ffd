//! [`RefreshTokenRepository`] on PostgreSQL (`auth.refresh_tokens`).

use crate::error::db_err;
use crate::pool::{PgPool, conn};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use gathering_domain::RepoError;
use gathering_domain::auth::{
    NewRefreshToken, RefreshTokenRecord, RefreshTokenRepository, RotateOutcome, UserId,
};
use tokio_postgres::Row;
use uuid::Uuid;

const TOKEN_COLUMNS: &str =
    "id, user_id, family_id, token_hash, created_at, expires_at, used_at, revoked_at";

fn record_from_row(row: &Row) -> Result<RefreshTokenRecord, RepoError> {
    Ok(RefreshTokenRecord {
        id: row.try_get("id").map_err(db_err)?,
        user_id: row.try_get("user_id").map_err(db_err)?,
        family_id: row.try_get("family_id").map_err(db_err)?,
        token_hash: row.try_get("token_hash").map_err(db_err)?,
        created_at: row.try_get("created_at").map_err(db_err)?,
        expires_at: row.try_get("expires_at").map_err(db_err)?,
        used_at: row.try_get("used_at").map_err(db_err)?,
        revoked_at: row.try_get("revoked_at").map_err(db_err)?,
    })
}

#[derive(Clone)]
pub struct PgRefreshTokenRepository {
    pool: PgPool,
}

impl PgRefreshTokenRepository {
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }
}

#[async_trait]
impl RefreshTokenRepository for PgRefreshTokenRepository {
    async fn insert(&self, token: NewRefreshToken) -> Result<(), RepoError> {
        let c = conn(&self.pool).await?;
        let stmt = c
            .prepare_cached(
                "INSERT INTO auth.refresh_tokens (id, user_id, family_id, token_hash, expires_at) \
                 VALUES ($1, $2, $3, $4, $5)",
            )
            .await
            .map_err(db_err)?;
        c.execute(
            &stmt,
            &[
                &token.id,
                &token.user_id,
                &token.family_id,
                &token.token_hash,
                &token.expires_at,
            ],
        )
        .await
        .map_err(db_err)?;
        Ok(())
    }

    /// The new token is stored in the family and for the user of the presented token (the
    /// caller only knows the secret's hash); `new.family_id` / `new.user_id` are not trusted.
    async fn rotate(
        &self,
        old_hash: &[u8],
        new: NewRefreshToken,
        now: DateTime<Utc>,
    ) -> Result<RotateOutcome, RepoError> {
        let mut c = conn(&self.pool).await?;
        let tx = c.transaction().await.map_err(db_err)?;
        let select = tx
            .prepare_cached(&format!(
                "SELECT {TOKEN_COLUMNS} FROM auth.refresh_tokens WHERE token_hash = $1 FOR UPDATE"
            ))
            .await
            .map_err(db_err)?;
        let Some(row) = tx.query_opt(&select, &[&old_hash]).await.map_err(db_err)? else {
            return Ok(RotateOutcome::NotFound);
        };
        let old = record_from_row(&row)?;
        if old.used_at.is_some() || old.revoked_at.is_some() {
            return Ok(RotateOutcome::Reused { old });
        }
        if old.expires_at <= now {
            return Ok(RotateOutcome::Expired { old });
        }
        let mark = tx
            .prepare_cached("UPDATE auth.refresh_tokens SET used_at = $2 WHERE id = $1")
            .await
            .map_err(db_err)?;
        tx.execute(&mark, &[&old.id, &now]).await.map_err(db_err)?;
        let insert = tx
            .prepare_cached(
                "INSERT INTO auth.refresh_tokens \
                     (id, user_id, family_id, token_hash, created_at, expires_at) \
                 VALUES ($1, $2, $3, $4, $5, $6)",
            )
            .await
            .map_err(db_err)?;
        tx.execute(
            &insert,
            &[
                &new.id,
                &old.user_id,
                &old.family_id,
                &new.token_hash,
                &now,
                &new.expires_at,
            ],
        )
        .await
        .map_err(db_err)?;
        tx.commit().await.map_err(db_err)?;
        Ok(RotateOutcome::Rotated { old })
    }

    async fn revoke_family(&self, family_id: Uuid, now: DateTime<Utc>) -> Result<u64, RepoError> {
        let c = conn(&self.pool).await?;
        let stmt = c
            .prepare_cached(
                "WITH r AS ( \
                     UPDATE auth.refresh_tokens SET revoked_at = $2 \
                     WHERE family_id = $1 AND revoked_at IS NULL \
                     RETURNING used_at, expires_at) \
                 SELECT count(*) FILTER (WHERE used_at IS NULL AND expires_at > $2) FROM r",
            )
            .await
            .map_err(db_err)?;
        let row = c
            .query_one(&stmt, &[&family_id, &now])
            .await
            .map_err(db_err)?;
        let n: i64 = row.try_get(0).map_err(db_err)?;
        Ok(n.unsigned_abs())
    }

    async fn revoke(
        &self,
        token_hash: &[u8],
        user_id: UserId,
        now: DateTime<Utc>,
    ) -> Result<bool, RepoError> {
        let c = conn(&self.pool).await?;
        let stmt = c
            .prepare_cached(
                "UPDATE auth.refresh_tokens SET revoked_at = $3 \
                 WHERE token_hash = $1 AND user_id = $2 AND revoked_at IS NULL",
            )
            .await
            .map_err(db_err)?;
        let n = c
            .execute(&stmt, &[&token_hash, &user_id, &now])
            .await
            .map_err(db_err)?;
        Ok(n > 0)
    }

    async fn revoke_all_for_user(
        &self,
        user_id: UserId,
        now: DateTime<Utc>,
    ) -> Result<u64, RepoError> {
        let c = conn(&self.pool).await?;
        let stmt = c
            .prepare_cached(
                "WITH r AS ( \
                     UPDATE auth.refresh_tokens SET revoked_at = $2 \
                     WHERE user_id = $1 AND revoked_at IS NULL \
                     RETURNING used_at, expires_at) \
                 SELECT count(*) FILTER (WHERE used_at IS NULL AND expires_at > $2) FROM r",
            )
            .await
            .map_err(db_err)?;
        let row = c
            .query_one(&stmt, &[&user_id, &now])
            .await
            .map_err(db_err)?;
        let n: i64 = row.try_get(0).map_err(db_err)?;
        Ok(n.unsigned_abs())
    }

    async fn purge_expired(&self, before: DateTime<Utc>) -> Result<u64, RepoError> {
        let c = conn(&self.pool).await?;
        let stmt = c
            .prepare_cached("DELETE FROM auth.refresh_tokens WHERE expires_at < $1")
            .await
            .map_err(db_err)?;
        c.execute(&stmt, &[&before]).await.map_err(db_err)
    }
}
