//! The project repository against a real PostgreSQL.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use gathering_domain::auth::{Email, NewUser, Role, User, UserRepository};
use gathering_domain::projects::{NewProject, ProjectRepository};
use gathering_domain::{PageRequest, RepoError};
use gathering_store::projects::PgProjectRepository;
use gathering_store::test_support::TestDb;
use gathering_store::users::PgUserRepository;
use uuid::Uuid;

async fn user(db: &TestDb, email: &str, role: Role) -> User {
    PgUserRepository::new(db.pool.clone())
        .create(NewUser {
            email: Email::parse(email).unwrap(),
            name: email.to_owned(),
            role,
            password_hash: "h".to_owned(),
        })
        .await
        .unwrap()
}

fn project(name: &str, owner: Uuid, members: Vec<Uuid>) -> NewProject {
    NewProject {
        name: name.to_owned(),
        root_path: format!("/srv/{name}"),
        owner_id: owner,
        members,
    }
}

#[tokio::test]
async fn created_project_is_read_back_with_its_members() {
    let db = TestDb::new().await.unwrap();
    let repo = PgProjectRepository::new(db.pool.clone());
    let admin = user(&db, "admin@example.com", Role::Admin).await;
    let ada = user(&db, "ada@example.com", Role::User).await;
    let bob = user(&db, "bob@example.com", Role::User).await;

    let created = repo
        .create(project("alpha", admin.id, vec![ada.id, bob.id, ada.id]))
        .await
        .unwrap();
    assert_eq!(created.name, "alpha");
    assert_eq!(created.root_path, "/srv/alpha");
    assert_eq!(created.members.len(), 2);

    let got = repo.get(created.id).await.unwrap().unwrap();
    assert_eq!(got, created);
    assert!(got.may_use(ada.id, false));
    assert!(repo.get(Uuid::now_v7()).await.unwrap().is_none());
}

#[tokio::test]
async fn unknown_member_fails_and_stores_nothing() {
    let db = TestDb::new().await.unwrap();
    let repo = PgProjectRepository::new(db.pool.clone());
    let admin = user(&db, "admin@example.com", Role::Admin).await;
    let res = repo
        .create(project("alpha", admin.id, vec![Uuid::now_v7()]))
        .await;
    assert!(
        matches!(res, Err(RepoError::Conflict(ref w)) if w == "user"),
        "{res:?}"
    );
    let page = repo
        .list_for(admin.id, true, PageRequest::default())
        .await
        .unwrap();
    assert!(page.items.is_empty());
}

#[tokio::test]
async fn list_for_shows_admins_everything_members_theirs_and_strangers_nothing() {
    let db = TestDb::new().await.unwrap();
    let repo = PgProjectRepository::new(db.pool.clone());
    let admin = user(&db, "admin@example.com", Role::Admin).await;
    let ada = user(&db, "ada@example.com", Role::User).await;
    let bob = user(&db, "bob@example.com", Role::User).await;
    let eve = user(&db, "eve@example.com", Role::User).await;

    let a = repo
        .create(project("a", admin.id, vec![ada.id]))
        .await
        .unwrap();
    let b = repo
        .create(project("b", admin.id, vec![ada.id, bob.id]))
        .await
        .unwrap();
    let c = repo.create(project("c", bob.id, vec![])).await.unwrap();

    let all = repo
        .list_for(admin.id, true, PageRequest::default())
        .await
        .unwrap();
    assert_eq!(all.items, vec![c.clone(), b.clone(), a.clone()]);

    let adas = repo
        .list_for(ada.id, false, PageRequest::default())
        .await
        .unwrap();
    assert_eq!(adas.items, vec![b.clone(), a.clone()]);

    // Bob owns c and is a member of b.
    let bobs = repo
        .list_for(bob.id, false, PageRequest::default())
        .await
        .unwrap();
    assert_eq!(bobs.items, vec![c.clone(), b.clone()]);

    let eves = repo
        .list_for(eve.id, false, PageRequest::default())
        .await
        .unwrap();
    assert!(eves.items.is_empty());
    assert_eq!(eves.next_cursor, None);
}

#[tokio::test]
async fn list_for_pages_with_the_cursor() {
    let db = TestDb::new().await.unwrap();
    let repo = PgProjectRepository::new(db.pool.clone());
    let admin = user(&db, "admin@example.com", Role::Admin).await;
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(
            repo.create(project(&format!("p{i}"), admin.id, vec![]))
                .await
                .unwrap()
                .id,
        );
    }
    ids.reverse();
    let p1 = repo
        .list_for(admin.id, true, PageRequest::new(Some(2), None))
        .await
        .unwrap();
    assert_eq!(p1.items.iter().map(|p| p.id).collect::<Vec<_>>(), ids[0..2]);
    let cursor = p1.next_cursor.unwrap().parse().unwrap();
    let p2 = repo
        .list_for(admin.id, true, PageRequest::new(Some(2), Some(cursor)))
        .await
        .unwrap();
    assert_eq!(p2.items.iter().map(|p| p.id).collect::<Vec<_>>(), ids[2..4]);
    let cursor = p2.next_cursor.unwrap().parse().unwrap();
    let p3 = repo
        .list_for(admin.id, true, PageRequest::new(Some(2), Some(cursor)))
        .await
        .unwrap();
    assert_eq!(p3.items.iter().map(|p| p.id).collect::<Vec<_>>(), ids[4..5]);
    assert_eq!(p3.next_cursor, None);
}

#[tokio::test]
async fn injection_looking_project_fields_are_stored_verbatim() {
    let db = TestDb::new().await.unwrap();
    let repo = PgProjectRepository::new(db.pool.clone());
    let admin = user(&db, "admin@example.com", Role::Admin).await;
    let evil = "x'; DROP TABLE workspace.projects; --";
    let created = repo
        .create(NewProject {
            name: evil.to_owned(),
            root_path: evil.to_owned(),
            owner_id: admin.id,
            members: vec![],
        })
        .await
        .unwrap();
    let got = repo.get(created.id).await.unwrap().unwrap();
    assert_eq!(got.name, evil);
    assert_eq!(got.root_path, evil);
}
