//! Per-user quotas that need shared state (PostgreSQL): bytes written into workspaces.
//! Count quotas (schedules, pipelines, agents) are enforced by the store on insert.

use crate::auth::UserId;
use crate::error::RepoError;
use async_trait::async_trait;

#[async_trait]
pub trait WorkspaceQuota: Send + Sync {
    /// Adds `delta` bytes (negative: frees) to `user`'s workspace usage. A positive delta
    /// that would take the usage over the limit changes nothing and fails with
    /// `RepoError::QuotaExceeded` naming the limit; usage never goes below zero.
    async fn charge_workspace_bytes(&self, user: UserId, delta: i64) -> Result<(), RepoError>;
}
