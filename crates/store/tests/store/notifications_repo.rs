//! The notification repository against a real PostgreSQL.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use gathering_domain::auth::{Email, NewUser, Role, User, UserRepository};
use gathering_domain::notifications::{NewNotification, NotificationRepository};
use gathering_domain::{PageRequest, RepoError};
use gathering_store::notifications::PgNotificationRepository;
use gathering_store::test_support::TestDb;
use gathering_store::users::PgUserRepository;
use uuid::Uuid;

async fn user(db: &TestDb, email: &str) -> User {
    PgUserRepository::new(db.pool.clone())
        .create(NewUser {
            email: Email::parse(email).unwrap(),
            name: email.to_owned(),
            role: Role::User,
            password_hash: "h".to_owned(),
        })
        .await
        .unwrap()
}

fn note(user: Uuid, title: &str, key: Option<&str>) -> NewNotification {
    NewNotification {
        user_id: user,
        channel: "in_app".to_owned(),
        title: title.to_owned(),
        message: format!("{title} message"),
        idempotency_key: key.map(str::to_owned),
    }
}

#[tokio::test]
async fn notifications_are_listed_newest_first_per_user_with_cursor_pages() {
    let db = TestDb::new().await.unwrap();
    let repo = PgNotificationRepository::new(db.pool.clone());
    let ada = user(&db, "ada@example.com").await;
    let bob = user(&db, "bob@example.com").await;
    for i in 0..3 {
        repo.create(note(ada.id, &format!("n{i}"), None))
            .await
            .unwrap();
    }
    repo.create(note(bob.id, "bob's", None)).await.unwrap();

    let first = repo
        .list_for_user(ada.id, PageRequest::new(Some(2), None))
        .await
        .unwrap();
    let titles: Vec<_> = first.items.iter().map(|n| n.title.as_str()).collect();
    assert_eq!(titles, ["n2", "n1"]);
    assert!(first.items.iter().all(|n| n.read_at.is_none()));
    let cursor = first.next_cursor.unwrap().parse().unwrap();
    let second = repo
        .list_for_user(ada.id, PageRequest::new(Some(2), Some(cursor)))
        .await
        .unwrap();
    assert_eq!(second.items.len(), 1);
    assert_eq!(second.items[0].title, "n0");
    assert_eq!(second.items[0].message, "n0 message");
    assert!(second.next_cursor.is_none());
}

#[tokio::test]
async fn same_idempotency_key_stores_one_notification() {
    let db = TestDb::new().await.unwrap();
    let repo = PgNotificationRepository::new(db.pool.clone());
    let ada = user(&db, "ada@example.com").await;
    let bob = user(&db, "bob@example.com").await;
    let a = repo.create(note(ada.id, "x", Some("run:1"))).await.unwrap();
    let b = repo.create(note(ada.id, "x", Some("run:1"))).await.unwrap();
    assert_eq!(a, b);
    // Keys are per user.
    let c = repo.create(note(bob.id, "x", Some("run:1"))).await.unwrap();
    assert_ne!(a.id, c.id);
    let page = repo
        .list_for_user(ada.id, PageRequest::default())
        .await
        .unwrap();
    assert_eq!(page.items.len(), 1);
}

#[tokio::test]
async fn mark_read_sets_read_at_once_and_others_get_not_found() {
    let db = TestDb::new().await.unwrap();
    let repo = PgNotificationRepository::new(db.pool.clone());
    let ada = user(&db, "ada@example.com").await;
    let bob = user(&db, "bob@example.com").await;
    let n = repo.create(note(ada.id, "x", None)).await.unwrap();

    assert!(matches!(
        repo.mark_read(bob.id, n.id).await,
        Err(RepoError::NotFound)
    ));
    assert!(matches!(
        repo.mark_read(ada.id, Uuid::now_v7()).await,
        Err(RepoError::NotFound)
    ));
    repo.mark_read(ada.id, n.id).await.unwrap();
    let read_at = repo
        .list_for_user(ada.id, PageRequest::default())
        .await
        .unwrap()
        .items[0]
        .read_at
        .unwrap();
    repo.mark_read(ada.id, n.id).await.unwrap();
    let again = repo
        .list_for_user(ada.id, PageRequest::default())
        .await
        .unwrap()
        .items[0]
        .read_at
        .unwrap();
    assert_eq!(read_at, again, "marking twice keeps the first time");
}

#[tokio::test]
async fn notification_for_unknown_user_is_a_conflict() {
    let db = TestDb::new().await.unwrap();
    let repo = PgNotificationRepository::new(db.pool.clone());
    let res = repo.create(note(Uuid::now_v7(), "x", None)).await;
    assert!(matches!(res, Err(RepoError::Conflict(_))));
}
