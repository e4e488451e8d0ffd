//! Per-user quotas on PostgreSQL (migration V11): the count limits the insert triggers
//! enforce (`quotas.limits`), and the workspace bytes each user has written
//! (`quotas.usage.workspace_bytes`).

use crate::error::db_err;
use crate::pool::{PgPool, conn};
use async_trait::async_trait;
use gathering_domain::RepoError;
use gathering_domain::auth::UserId;
use gathering_domain::quotas::WorkspaceQuota;

/// The per-user limits; 0 disables a limit. Also the `[quotas]` configuration section
/// (`GATHERING__QUOTAS__*`): the one place its defaults live; the binary composes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(default)]
pub struct QuotaLimits {
    pub schedules_per_user: u64,
    pub pipelines_per_user: u64,
    pub agents_per_user: u64,
    pub workspace_bytes_per_user: u64,
}

impl Default for QuotaLimits {
    fn default() -> Self {
        Self {
            schedules_per_user: 1_000,
            pipelines_per_user: 1_000,
            agents_per_user: 200,
            workspace_bytes_per_user: 100 * 1024 * 1024,
        }
    }
}

fn as_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// Writes the count limits the insert triggers enforce (every instance writes the same
/// configuration at start-up; a limit of 0 removes the row: unlimited).
pub async fn apply_count_limits(pool: &PgPool, limits: &QuotaLimits) -> Result<(), RepoError> {
    let mut c = conn(pool).await?;
    let tx = c.transaction().await.map_err(db_err)?;
    for (resource, max) in [
        ("schedules", limits.schedules_per_user),
        ("pipelines", limits.pipelines_per_user),
        ("agents", limits.agents_per_user),
    ] {
        if max == 0 {
            tx.execute(
                "DELETE FROM quotas.limits WHERE resource = $1",
                &[&resource],
            )
            .await
            .map_err(db_err)?;
        } else {
            tx.execute(
                "INSERT INTO quotas.limits (resource, max_per_user) VALUES ($1, $2) \
                 ON CONFLICT (resource) DO UPDATE SET max_per_user = EXCLUDED.max_per_user",
                &[&resource, &as_i64(max)],
            )
            .await
            .map_err(db_err)?;
        }
    }
    tx.commit().await.map_err(db_err)
}

/// The workspace-bytes quota.
#[derive(Clone)]
pub struct PgQuotas {
    pool: PgPool,
    workspace_bytes_per_user: u64,
}

impl PgQuotas {
    pub fn new(pool: PgPool, limits: &QuotaLimits) -> Self {
        Self {
            pool,
            workspace_bytes_per_user: limits.workspace_bytes_per_user,
        }
    }

    /// The bytes `user` has written into workspaces so far.
    pub async fn workspace_bytes(&self, user: UserId) -> Result<u64, RepoError> {
        let c = conn(&self.pool).await?;
        let row = c
            .query_opt(
                "SELECT workspace_bytes FROM quotas.usage WHERE user_id = $1",
                &[&user],
            )
            .await
            .map_err(db_err)?;
        let n: i64 = match row {
            Some(r) => r.try_get(0).map_err(db_err)?,
            None => 0,
        };
        Ok(u64::try_from(n).unwrap_or(0))
    }
}

fn over_quota(limit: u64) -> RepoError {
    RepoError::QuotaExceeded(format!(
        "workspace quota exceeded: at most {limit} bytes written per user"
    ))
}

#[async_trait]
impl WorkspaceQuota for PgQuotas {
    async fn charge_workspace_bytes(&self, user: UserId, delta: i64) -> Result<(), RepoError> {
        let limit = self.workspace_bytes_per_user;
        if limit == 0 || delta == 0 {
            return Ok(());
        }
        if delta > 0 && u64::try_from(delta).unwrap_or(u64::MAX) > limit {
            return Err(over_quota(limit));
        }
        let c = conn(&self.pool).await?;
        // One statement: the check and the update are atomic under the row lock.
        let row = c
            .query_opt(
                "INSERT INTO quotas.usage AS u (user_id, workspace_bytes) \
                 VALUES ($1, GREATEST($2::bigint, 0)) \
                 ON CONFLICT (user_id) DO UPDATE \
                    SET workspace_bytes = GREATEST(u.workspace_bytes + $2::bigint, 0) \
                  WHERE $2::bigint <= 0 OR u.workspace_bytes + $2::bigint <= $3::bigint \
                 RETURNING u.workspace_bytes",
                &[&user, &delta, &as_i64(limit)],
            )
            .await
            .map_err(db_err)?;
        match row {
            Some(_) => Ok(()),
            None => Err(over_quota(limit)),
        }
    }
}
