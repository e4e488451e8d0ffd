//! Per-user notifications: types and ports (owned by the tools work).

use crate::auth::UserId;
use crate::error::RepoError;
use crate::page::{Page, PageRequest};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::Serialize;
use uuid::Uuid;

/// The channel of a notification sent without one.
pub const DEFAULT_CHANNEL: &str = "in_app";

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Notification {
    pub id: Uuid,
    pub user_id: UserId,
    pub channel: String,
    pub title: String,
    pub message: String,
    pub created_at: DateTime<Utc>,
    pub read_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewNotification {
    pub user_id: UserId,
    pub channel: String,
    pub title: String,
    pub message: String,
    /// When set, creating again with the same key (for the same user) returns the first
    /// notification instead of storing a second one (retries, crash-resumes).
    pub idempotency_key: Option<String>,
}

#[async_trait]
pub trait NotificationRepository: Send + Sync {
    /// Stores the notification (or returns the one already stored under its idempotency key).
    async fn create(&self, new: NewNotification) -> Result<Notification, RepoError>;
    /// [`create`](Self::create), also telling whether this call stored it (`true`) or found it
    /// already stored under its idempotency key (`false`: a replay). The default cannot tell
    /// and says `true`.
    async fn create_once(&self, new: NewNotification) -> Result<(Notification, bool), RepoError> {
        self.create(new).await.map(|n| (n, true))
    }
    /// The user's notifications, newest first.
    async fn list_for_user(
        &self,
        user: UserId,
        page: PageRequest,
    ) -> Result<Page<Notification>, RepoError>;
    /// Marks one of the user's notifications read (idempotent); `NotFound` when the id is
    /// unknown or belongs to someone else.
    async fn mark_read(&self, user: UserId, id: Uuid) -> Result<(), RepoError>;
}

/// A bounded in-memory [`NotificationRepository`] for tests and single-process tools; the
/// oldest notification is dropped once `capacity` are held.
#[derive(Debug)]
pub struct InMemoryNotifications {
    capacity: usize,
    items: std::sync::Mutex<Vec<(Option<String>, Notification)>>,
}

impl InMemoryNotifications {
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity: capacity.max(1),
            items: std::sync::Mutex::new(Vec::new()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<(Option<String>, Notification)>> {
        self.items
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[async_trait]
impl NotificationRepository for InMemoryNotifications {
    async fn create(&self, new: NewNotification) -> Result<Notification, RepoError> {
        self.create_once(new).await.map(|(n, _)| n)
    }

    async fn create_once(&self, new: NewNotification) -> Result<(Notification, bool), RepoError> {
        let mut items = self.lock();
        if let Some(key) = &new.idempotency_key
            && let Some((_, n)) = items
                .iter()
                .find(|(k, n)| k.as_ref() == Some(key) && n.user_id == new.user_id)
        {
            return Ok((n.clone(), false));
        }
        let n = Notification {
            id: Uuid::now_v7(),
            user_id: new.user_id,
            channel: new.channel,
            title: new.title,
            message: new.message,
            created_at: Utc::now(),
            read_at: None,
        };
        if items.len() >= self.capacity {
            items.remove(0);
        }
        items.push((new.idempotency_key, n.clone()));
        Ok((n, true))
    }

    async fn list_for_user(
        &self,
        user: UserId,
        page: PageRequest,
    ) -> Result<Page<Notification>, RepoError> {
        let items = self.lock();
        let mut rows: Vec<Notification> = items
            .iter()
            .rev()
            .map(|(_, n)| n)
            .filter(|n| n.user_id == user && page.cursor.is_none_or(|c| n.id < c))
            .take(page.limit as usize + 1)
            .cloned()
            .collect();
        rows.sort_by_key(|n| std::cmp::Reverse(n.id));
        Ok(Page::from_rows(rows, page, |n| n.id))
    }

    async fn mark_read(&self, user: UserId, id: Uuid) -> Result<(), RepoError> {
        let mut items = self.lock();
        match items
            .iter_mut()
            .find(|(_, n)| n.id == id && n.user_id == user)
        {
            Some((_, n)) => {
                if n.read_at.is_none() {
                    n.read_at = Some(Utc::now());
                }
                Ok(())
            }
            None => Err(RepoError::NotFound),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use std::future::Future;
    use std::task::{Context, Poll, Waker};

    /// The in-memory repository never waits: its futures finish on the first poll.
    fn now<T>(fut: impl Future<Output = T>) -> T {
        let mut fut = std::pin::pin!(fut);
        match fut.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
            Poll::Ready(v) => v,
            Poll::Pending => panic!("in-memory repository future was pending"),
        }
    }

    fn new(user: UserId, title: &str, key: Option<&str>) -> NewNotification {
        NewNotification {
            user_id: user,
            channel: DEFAULT_CHANNEL.into(),
            title: title.into(),
            message: "m".into(),
            idempotency_key: key.map(str::to_owned),
        }
    }

    #[test]
    fn in_memory_lists_newest_first_per_user_and_pages() {
        let repo = InMemoryNotifications::new(100);
        let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
        for i in 0..3 {
            now(repo.create(new(a, &format!("a{i}"), None))).unwrap();
        }
        now(repo.create(new(b, "b", None))).unwrap();
        let p = now(repo.list_for_user(a, PageRequest::new(Some(2), None))).unwrap();
        let titles: Vec<_> = p.items.iter().map(|n| n.title.as_str()).collect();
        assert_eq!(titles, ["a2", "a1"]);
        let cursor = p.next_cursor.unwrap().parse().unwrap();
        let p = now(repo.list_for_user(a, PageRequest::new(Some(2), Some(cursor)))).unwrap();
        assert_eq!(p.items.len(), 1);
        assert_eq!(p.items[0].title, "a0");
        assert!(p.next_cursor.is_none());
    }

    #[test]
    fn in_memory_dedups_by_key_marks_read_and_hides_others() {
        let repo = InMemoryNotifications::new(2);
        let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
        let n1 = now(repo.create(new(a, "x", Some("k")))).unwrap();
        let n2 = now(repo.create(new(a, "x", Some("k")))).unwrap();
        assert_eq!(n1.id, n2.id);
        assert!(matches!(
            now(repo.mark_read(b, n1.id)),
            Err(RepoError::NotFound)
        ));
        now(repo.mark_read(a, n1.id)).unwrap();
        let p = now(repo.list_for_user(a, PageRequest::default())).unwrap();
        assert!(p.items[0].read_at.is_some());
        now(repo.create(new(a, "y", None))).unwrap();
        now(repo.create(new(a, "z", None))).unwrap();
        let p = now(repo.list_for_user(a, PageRequest::default())).unwrap();
        assert_eq!(p.items.len(), 2, "bounded by capacity");
    }
}
