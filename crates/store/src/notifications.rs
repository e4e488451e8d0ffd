//! [`NotificationRepository`] on PostgreSQL (`notify.notifications`).

use crate::error::{db_err, fk_conflict};
use crate::page::query_page;
use crate::pool::{PgPool, conn};
use async_trait::async_trait;
use gathering_domain::auth::UserId;
use gathering_domain::notifications::{NewNotification, Notification, NotificationRepository};
use gathering_domain::{Page, PageRequest, RepoError};
use tokio_postgres::Row;
use uuid::Uuid;

const COLUMNS: &str = "id, user_id, channel, title, message, created_at, read_at";

fn from_row(row: &Row) -> Result<Notification, RepoError> {
    Ok(Notification {
        id: row.try_get("id").map_err(db_err)?,
        user_id: row.try_get("user_id").map_err(db_err)?,
        channel: row.try_get("channel").map_err(db_err)?,
        title: row.try_get("title").map_err(db_err)?,
        message: row.try_get("message").map_err(db_err)?,
        created_at: row.try_get("created_at").map_err(db_err)?,
        read_at: row.try_get("read_at").map_err(db_err)?,
    })
}

#[derive(Clone)]
pub struct PgNotificationRepository {
    pool: PgPool,
}

impl PgNotificationRepository {
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }
}

#[async_trait]
impl NotificationRepository for PgNotificationRepository {
    async fn create(&self, new: NewNotification) -> Result<Notification, RepoError> {
        self.create_once(new).await.map(|(n, _)| n)
    }

    async fn create_once(&self, new: NewNotification) -> Result<(Notification, bool), RepoError> {
        let c = conn(&self.pool).await?;
        let insert = c
            .prepare_cached(&format!(
                "INSERT INTO notify.notifications \
                     (id, user_id, channel, title, message, idempotency_key) \
                 VALUES ($1, $2, $3, $4, $5, $6) \
                 ON CONFLICT (user_id, idempotency_key) WHERE idempotency_key IS NOT NULL \
                 DO NOTHING RETURNING {COLUMNS}"
            ))
            .await
            .map_err(db_err)?;
        let id = Uuid::now_v7();
        let row = c
            .query_opt(
                &insert,
                &[
                    &id,
                    &new.user_id,
                    &new.channel,
                    &new.title,
                    &new.message,
                    &new.idempotency_key,
                ],
            )
            .await
            .map_err(fk_conflict("user"))?;
        if let Some(row) = row {
            return from_row(&row).map(|n| (n, true));
        }
        // Already stored under this idempotency key: return the first one.
        let existing = c
            .prepare_cached(&format!(
                "SELECT {COLUMNS} FROM notify.notifications \
                 WHERE user_id = $1 AND idempotency_key = $2"
            ))
            .await
            .map_err(db_err)?;
        let row = c
            .query_one(&existing, &[&new.user_id, &new.idempotency_key])
            .await
            .map_err(db_err)?;
        from_row(&row).map(|n| (n, false))
    }

    async fn list_for_user(
        &self,
        user: UserId,
        page: PageRequest,
    ) -> Result<Page<Notification>, RepoError> {
        let c = conn(&self.pool).await?;
        query_page(
            &c,
            &format!(
                "SELECT {COLUMNS} FROM notify.notifications \
                 WHERE user_id = $1 AND ($2::uuid IS NULL OR id < $2) \
                 ORDER BY id DESC LIMIT $3"
            ),
            &[&user, &page.cursor, &page.fetch_limit()],
            page,
            from_row,
            |n| n.id,
        )
        .await
    }

    async fn mark_read(&self, user: UserId, id: Uuid) -> Result<(), RepoError> {
        let c = conn(&self.pool).await?;
        let stmt = c
            .prepare_cached(
                "UPDATE notify.notifications SET read_at = COALESCE(read_at, now()) \
                 WHERE id = $1 AND user_id = $2",
            )
            .await
            .map_err(db_err)?;
        match c.execute(&stmt, &[&id, &user]).await.map_err(db_err)? {
            0 => Err(RepoError::NotFound),
            _ => Ok(()),
        }
    }
}
