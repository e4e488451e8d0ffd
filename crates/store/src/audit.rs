//! [`AuditRepository`] on PostgreSQL (`auth.audit_events`).

use crate::error::db_err;
use crate::error::invalid;
use crate::page::query_page;
use crate::pool::{PgPool, conn};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use gathering_domain::auth::{AuditEvent, AuditFilter, AuditKind, AuditRepository};
use gathering_domain::{Page, PageRequest, RepoError};
use tokio_postgres::Row;

fn event_from_row(row: &Row) -> Result<AuditEvent, RepoError> {
    let kind: &str = row.try_get("event").map_err(db_err)?;
    Ok(AuditEvent {
        id: row.try_get("id").map_err(db_err)?,
        at: row.try_get("at").map_err(db_err)?,
        event: AuditKind::parse(kind).ok_or_else(|| invalid("auth.audit_events.event", kind))?,
        user_id: row.try_get("user_id").map_err(db_err)?,
        email: row.try_get("email").map_err(db_err)?,
        ip: row.try_get("ip").map_err(db_err)?,
        user_agent: row.try_get("user_agent").map_err(db_err)?,
        success: row.try_get("success").map_err(db_err)?,
        reason: row.try_get("reason").map_err(db_err)?,
        request_id: row.try_get("request_id").map_err(db_err)?,
    })
}

#[derive(Clone)]
pub struct PgAuditRepository {
    pool: PgPool,
}

impl PgAuditRepository {
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }
}

#[async_trait]
impl AuditRepository for PgAuditRepository {
    /// Stores the event; the email is lower-cased (by the same `lower()` the counter uses).
    async fn record(&self, event: AuditEvent) -> Result<(), RepoError> {
        let c = conn(&self.pool).await?;
        let stmt = c
            .prepare_cached(
                "INSERT INTO auth.audit_events \
                     (id, at, event, user_id, email, ip, user_agent, success, reason, request_id) \
                 VALUES ($1, $2, $3, $4, lower($5), $6, $7, $8, $9, $10)",
            )
            .await
            .map_err(db_err)?;
        c.execute(
            &stmt,
            &[
                &event.id,
                &event.at,
                &event.event.as_str(),
                &event.user_id,
                &event.email,
                &event.ip,
                &event.user_agent,
                &event.success,
                &event.reason,
                &event.request_id,
            ],
        )
        .await
        .map_err(db_err)?;
        Ok(())
    }

    async fn list(
        &self,
        filter: AuditFilter,
        page: PageRequest,
    ) -> Result<Page<AuditEvent>, RepoError> {
        let c = conn(&self.pool).await?;
        let event = filter.event.map(AuditKind::as_str);
        query_page(
            &c,
            "SELECT id, at, event, user_id, email, ip, user_agent, success, reason, request_id \
                 FROM auth.audit_events \
                 WHERE ($1::text IS NULL OR event = $1) \
                   AND ($2::uuid IS NULL OR user_id = $2) \
                   AND ($3::uuid IS NULL OR id < $3) \
                 ORDER BY id DESC LIMIT $4",
            &[&event, &filter.user_id, &page.cursor, &page.fetch_limit()],
            page,
            event_from_row,
            |e| e.id,
        )
        .await
    }

    async fn count_login_failures(
        &self,
        email: &str,
        since: DateTime<Utc>,
    ) -> Result<u64, RepoError> {
        let c = conn(&self.pool).await?;
        let stmt = c
            .prepare_cached(
                "SELECT count(*) FROM auth.audit_events \
                 WHERE event = 'login_failure' AND email = lower($1) AND at >= $2",
            )
            .await
            .map_err(db_err)?;
        let row = c
            .query_one(&stmt, &[&email, &since])
            .await
            .map_err(db_err)?;
        let n: i64 = row.try_get(0).map_err(db_err)?;
        Ok(n.unsigned_abs())
    }
}
