//! Contract test for [`NotificationRepository`], run against [`InMemoryNotifications`] (here)
//! and the PostgreSQL adapter (gathering-store's tests). Panics on a broken contract. Users are
//! passed in: PostgreSQL needs them to exist.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::error::RepoError;
use crate::notifications::{NewNotification, NotificationRepository};
use crate::page::PageRequest;
use uuid::Uuid;

fn new(user: Uuid, title: &str, key: Option<&str>) -> NewNotification {
    NewNotification {
        user_id: user,
        channel: "in_app".into(),
        title: title.into(),
        message: "m".into(),
        idempotency_key: key.map(str::to_owned),
    }
}

/// Created unread; an idempotency key returns the first one (per user); listed newest first with
/// cursor paging, only the user's own; `mark_read` is idempotent and owner-scoped.
pub async fn notifications_are_idempotent_scoped_and_paged<N: NotificationRepository>(
    repo: &N,
    user: Uuid,
    other: Uuid,
) {
    let (first, stored) = repo.create_once(new(user, "a", Some("k"))).await.unwrap();
    assert!(stored);
    assert!(first.read_at.is_none());
    assert_eq!(first.title, "a");
    let (again, stored) = repo.create_once(new(user, "b", Some("k"))).await.unwrap();
    assert!(!stored, "a replay");
    assert_eq!(again, first);
    let (theirs, stored) = repo.create_once(new(other, "c", Some("k"))).await.unwrap();
    assert!(stored, "keys are per user");
    let second = repo.create(new(user, "d", None)).await.unwrap();
    let third = repo.create(new(user, "e", None)).await.unwrap();

    let page1 = repo
        .list_for_user(user, PageRequest::new(Some(2), None))
        .await
        .unwrap();
    let ids: Vec<Uuid> = page1.items.iter().map(|n| n.id).collect();
    assert_eq!(ids, [third.id, second.id], "newest first");
    let cursor = page1.next_cursor.unwrap().parse::<Uuid>().unwrap();
    let page2 = repo
        .list_for_user(user, PageRequest::new(Some(2), Some(cursor)))
        .await
        .unwrap();
    let ids: Vec<Uuid> = page2.items.iter().map(|n| n.id).collect();
    assert_eq!(ids, [first.id]);
    assert!(page2.next_cursor.is_none());

    assert!(matches!(
        repo.mark_read(other, first.id).await,
        Err(RepoError::NotFound)
    ));
    assert!(matches!(
        repo.mark_read(user, Uuid::now_v7()).await,
        Err(RepoError::NotFound)
    ));
    repo.mark_read(user, first.id).await.unwrap();
    let read_at = |items: &[crate::notifications::Notification]| {
        items.iter().find(|n| n.id == first.id).unwrap().read_at
    };
    let page = repo
        .list_for_user(user, PageRequest::default())
        .await
        .unwrap();
    let at = read_at(&page.items).unwrap();
    repo.mark_read(user, first.id).await.unwrap();
    let page = repo
        .list_for_user(user, PageRequest::default())
        .await
        .unwrap();
    assert_eq!(
        read_at(&page.items),
        Some(at),
        "idempotent: the first read time stays"
    );
    let other_page = repo
        .list_for_user(other, PageRequest::default())
        .await
        .unwrap();
    assert_eq!(other_page.items.len(), 1);
    assert_eq!(other_page.items[0].id, theirs.id);
    assert!(other_page.items[0].read_at.is_none());
}

#[cfg(test)]
mod memory_fake {
    use super::*;
    use crate::notifications::InMemoryNotifications;

    #[tokio::test]
    async fn memory_notifications_are_idempotent_scoped_and_paged() {
        notifications_are_idempotent_scoped_and_paged(
            &InMemoryNotifications::new(100),
            Uuid::now_v7(),
            Uuid::now_v7(),
        )
        .await;
    }
}
