//! The auth repositories against a real PostgreSQL (a fresh, migrated database per test).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use chrono::{DateTime, Duration, SubsecRound, Utc};
use futures::StreamExt;
use gathering_domain::auth::{
    AuditEvent, AuditFilter, AuditKind, AuditRepository, Email, NewRefreshToken, NewUser,
    REVOCATION_CHANNEL, RefreshTokenRepository, RevocationRepository, RevokedToken, Role,
    RotateOutcome, User, UserRepository,
};
use gathering_domain::{PageRequest, RepoError};
use gathering_store::audit::PgAuditRepository;
use gathering_store::revocations::PgRevocationRepository;
use gathering_store::test_support::TestDb;
use gathering_store::tokens::PgRefreshTokenRepository;
use gathering_store::users::PgUserRepository;
use std::time::Duration as StdDuration;
use uuid::Uuid;

const INJECTION: &str = "x'; DROP TABLE auth.users; --";

/// Database time has microsecond precision.
fn now() -> DateTime<Utc> {
    Utc::now().trunc_subsecs(6)
}

fn new_user(email: &str, role: Role) -> NewUser {
    NewUser {
        email: Email::parse(email).unwrap(),
        name: "Ada".to_owned(),
        role,
        password_hash: "$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA".to_owned(),
    }
}

async fn user(db: &TestDb, email: &str) -> User {
    PgUserRepository::new(db.pool.clone())
        .create(new_user(email, Role::User))
        .await
        .unwrap()
}

fn token(
    user_id: Uuid,
    family_id: Uuid,
    secret: &str,
    expires_at: DateTime<Utc>,
) -> NewRefreshToken {
    NewRefreshToken {
        id: Uuid::now_v7(),
        user_id,
        family_id,
        token_hash: secret.as_bytes().to_vec(),
        expires_at,
    }
}

async fn token_rows(db: &TestDb, family_id: Uuid) -> i64 {
    let c = db.pool.get().await.unwrap();
    c.query_one(
        "SELECT count(*) FROM auth.refresh_tokens WHERE family_id = $1",
        &[&family_id],
    )
    .await
    .unwrap()
    .get(0)
}

// ---------------------------------------------------------------- users

#[tokio::test]
async fn created_user_is_found_by_id_and_by_email_case_insensitively() {
    let db = TestDb::new().await.unwrap();
    let repo = PgUserRepository::new(db.pool.clone());
    let created = repo
        .create(new_user("Ada@Example.com", Role::User))
        .await
        .unwrap();
    assert_eq!(created.email.as_str(), "ada@example.com");
    assert_eq!(created.role, Role::User);
    assert!(!created.disabled);

    let by_id = repo.find_by_id(created.id).await.unwrap().unwrap();
    assert_eq!(by_id, created);

    let creds = repo
        .find_by_email(&Email::from_trusted("ADA@example.COM".to_owned()))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(creds.user, created);
    assert!(creds.password_hash.starts_with("$argon2id$"));

    assert!(repo.find_by_id(Uuid::now_v7()).await.unwrap().is_none());
    assert!(
        repo.find_by_email(&Email::parse("nobody@example.com").unwrap())
            .await
            .unwrap()
            .is_none()
    );
}

#[tokio::test]
async fn duplicate_email_in_other_case_is_an_email_conflict() {
    let db = TestDb::new().await.unwrap();
    let repo = PgUserRepository::new(db.pool.clone());
    repo.create(new_user("ada@example.com", Role::User))
        .await
        .unwrap();
    // Bypass the lower-casing of Email::parse to prove the index itself is case-insensitive.
    let mut dup = new_user("ada@example.com", Role::User);
    dup.email = Email::from_trusted("ADA@Example.com".to_owned());
    match repo.create(dup).await {
        Err(RepoError::Conflict(what)) => assert_eq!(what, "email"),
        other => panic!("expected Conflict(email), got {other:?}"),
    }
}

#[tokio::test]
async fn update_password_hash_replaces_the_hash_and_unknown_user_is_not_found() {
    let db = TestDb::new().await.unwrap();
    let repo = PgUserRepository::new(db.pool.clone());
    let u = user(&db, "ada@example.com").await;
    repo.update_password_hash(u.id, "$argon2id$new")
        .await
        .unwrap();
    let creds = repo.find_by_email(&u.email).await.unwrap().unwrap();
    assert_eq!(creds.password_hash, "$argon2id$new");
    assert!(matches!(
        repo.update_password_hash(Uuid::now_v7(), "h").await,
        Err(RepoError::NotFound)
    ));
}

#[tokio::test]
async fn ensure_admin_creates_but_never_promotes_or_touches_the_password() {
    let db = TestDb::new().await.unwrap();
    let repo = PgUserRepository::new(db.pool.clone());

    // Creates.
    let mut first = new_user("root@example.com", Role::User);
    first.password_hash = "hash-1".to_owned();
    let admin = repo.ensure_admin(first).await.unwrap();
    assert_eq!(admin.role, Role::Admin);
    let creds = repo.find_by_email(&admin.email).await.unwrap().unwrap();
    assert_eq!(creds.password_hash, "hash-1");

    // Runs again (next start-up, another password in config): same user, password kept.
    let mut again = new_user("root@example.com", Role::User);
    again.password_hash = "hash-2".to_owned();
    let same = repo.ensure_admin(again).await.unwrap();
    assert_eq!(same.id, admin.id);
    let creds = repo.find_by_email(&admin.email).await.unwrap().unwrap();
    assert_eq!(creds.password_hash, "hash-1");

    // An existing plain user is returned as it is: not promoted, password kept.
    let plain = user(&db, "bob@example.com").await;
    let mut promote = new_user("BOB@example.com", Role::User);
    promote.email = Email::from_trusted("BOB@example.com".to_owned());
    promote.password_hash = "other".to_owned();
    let found = repo.ensure_admin(promote).await.unwrap();
    assert_eq!(found.id, plain.id);
    assert_eq!(found.role, Role::User);
    let creds = repo.find_by_email(&plain.email).await.unwrap().unwrap();
    assert_eq!(creds.user.role, Role::User);
    assert_ne!(creds.password_hash, "other");
}

#[tokio::test]
async fn injection_looking_strings_are_stored_and_read_back_verbatim() {
    let db = TestDb::new().await.unwrap();
    let users = PgUserRepository::new(db.pool.clone());
    let mut nu = new_user("o'brien'--@example.com", Role::User);
    nu.name = INJECTION.to_owned();
    nu.password_hash = INJECTION.to_owned();
    let u = users.create(nu).await.unwrap();
    let creds = users.find_by_email(&u.email).await.unwrap().unwrap();
    assert_eq!(creds.user.name, INJECTION);
    assert_eq!(creds.password_hash, INJECTION);
    assert_eq!(creds.user.email.as_str(), "o'brien'--@example.com");
    // The lookup with an injection string finds nothing and breaks nothing.
    assert!(
        users
            .find_by_email(&Email::from_trusted(INJECTION.to_owned()))
            .await
            .unwrap()
            .is_none()
    );

    let audit = PgAuditRepository::new(db.pool.clone());
    let ev = AuditEvent {
        id: Uuid::now_v7(),
        at: now(),
        event: AuditKind::LoginFailure,
        user_id: None,
        email: Some(INJECTION.to_owned()),
        ip: Some(INJECTION.to_owned()),
        user_agent: Some(INJECTION.to_owned()),
        success: false,
        reason: Some(INJECTION.to_owned()),
        request_id: Some(INJECTION.to_owned()),
    };
    audit.record(ev.clone()).await.unwrap();
    let page = audit
        .list(AuditFilter::default(), PageRequest::default())
        .await
        .unwrap();
    // Verbatim, except that audit emails are stored lower-cased.
    let expected = AuditEvent {
        email: Some(INJECTION.to_lowercase()),
        ..ev
    };
    assert_eq!(page.items, vec![expected]);

    // The table is still there.
    assert!(users.find_by_id(u.id).await.unwrap().is_some());
}

// ---------------------------------------------------------------- refresh tokens

#[tokio::test]
async fn rotating_a_live_token_marks_it_used_and_stores_the_new_one_in_its_family() {
    let db = TestDb::new().await.unwrap();
    let repo = PgRefreshTokenRepository::new(db.pool.clone());
    let u = user(&db, "ada@example.com").await;
    let family = Uuid::now_v7();
    let t = now();
    let first = token(u.id, family, "first", t + Duration::days(7));
    let first_id = first.id;
    repo.insert(first).await.unwrap();

    // The caller does not know the family: the new token joins the presented token's family.
    let next = token(u.id, Uuid::nil(), "second", t + Duration::days(7));
    match repo.rotate(b"first", next, t).await.unwrap() {
        RotateOutcome::Rotated { old } => {
            assert_eq!(old.id, first_id);
            assert_eq!(old.family_id, family);
            assert_eq!(old.user_id, u.id);
            assert!(old.used_at.is_none());
        }
        other => panic!("expected Rotated, got {other:?}"),
    }
    assert_eq!(token_rows(&db, family).await, 2);

    // The new one is live and rotates in turn.
    let third = token(u.id, family, "third", t + Duration::days(7));
    assert!(matches!(
        repo.rotate(b"second", third, t).await.unwrap(),
        RotateOutcome::Rotated { .. }
    ));
    assert_eq!(token_rows(&db, family).await, 3);
}

#[tokio::test]
async fn presenting_a_used_token_again_is_reuse_and_stores_nothing() {
    let db = TestDb::new().await.unwrap();
    let repo = PgRefreshTokenRepository::new(db.pool.clone());
    let u = user(&db, "ada@example.com").await;
    let family = Uuid::now_v7();
    let t = now();
    repo.insert(token(u.id, family, "first", t + Duration::days(7)))
        .await
        .unwrap();
    repo.rotate(
        b"first",
        token(u.id, family, "second", t + Duration::days(7)),
        t,
    )
    .await
    .unwrap();

    match repo
        .rotate(b"first", token(u.id, family, "x", t + Duration::days(7)), t)
        .await
        .unwrap()
    {
        RotateOutcome::Reused { old } => {
            assert_eq!(old.family_id, family);
            assert_eq!(old.used_at, Some(t));
        }
        other => panic!("expected Reused, got {other:?}"),
    }
    assert_eq!(token_rows(&db, family).await, 2);
}

#[tokio::test]
async fn presenting_a_revoked_token_is_reuse() {
    let db = TestDb::new().await.unwrap();
    let repo = PgRefreshTokenRepository::new(db.pool.clone());
    let u = user(&db, "ada@example.com").await;
    let family = Uuid::now_v7();
    let t = now();
    repo.insert(token(u.id, family, "first", t + Duration::days(7)))
        .await
        .unwrap();
    assert!(repo.revoke(b"first", u.id, t).await.unwrap());
    assert!(matches!(
        repo.rotate(b"first", token(u.id, family, "x", t + Duration::days(7)), t)
            .await
            .unwrap(),
        RotateOutcome::Reused { .. }
    ));
    assert_eq!(token_rows(&db, family).await, 1);
}

#[tokio::test]
async fn expired_token_is_expired_and_unknown_token_is_not_found() {
    let db = TestDb::new().await.unwrap();
    let repo = PgRefreshTokenRepository::new(db.pool.clone());
    let u = user(&db, "ada@example.com").await;
    let family = Uuid::now_v7();
    let t = now();
    repo.insert(token(u.id, family, "old", t - Duration::seconds(1)))
        .await
        .unwrap();
    assert!(matches!(
        repo.rotate(b"old", token(u.id, family, "new", t + Duration::days(7)), t)
            .await
            .unwrap(),
        RotateOutcome::Expired { .. }
    ));
    assert_eq!(token_rows(&db, family).await, 1);
    assert!(matches!(
        repo.rotate(
            b"never-issued",
            token(u.id, family, "new2", t + Duration::days(7)),
            t
        )
        .await
        .unwrap(),
        RotateOutcome::NotFound
    ));
    assert_eq!(token_rows(&db, family).await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_concurrent_rotations_of_one_token_yield_exactly_one_rotated() {
    let db = TestDb::new().await.unwrap();
    let repo = PgRefreshTokenRepository::new(db.pool.clone());
    let u = user(&db, "ada@example.com").await;
    let family = Uuid::now_v7();
    let t = now();
    for round in 0..10 {
        let secret = format!("live-{round}");
        repo.insert(token(u.id, family, &secret, t + Duration::days(7)))
            .await
            .unwrap();
        let a = repo.clone();
        let b = repo.clone();
        let (sa, sb) = (secret.clone(), secret.clone());
        let na = token(u.id, family, &format!("a-{round}"), t + Duration::days(7));
        let nb = token(u.id, family, &format!("b-{round}"), t + Duration::days(7));
        let ha = tokio::spawn(async move { a.rotate(sa.as_bytes(), na, t).await });
        let hb = tokio::spawn(async move { b.rotate(sb.as_bytes(), nb, t).await });
        let (ra, rb) = tokio::time::timeout(StdDuration::from_secs(10), async {
            (ha.await.unwrap().unwrap(), hb.await.unwrap().unwrap())
        })
        .await
        .expect("rotations finish");
        let rotated = [&ra, &rb]
            .iter()
            .filter(|o| matches!(o, RotateOutcome::Rotated { .. }))
            .count();
        let reused = [&ra, &rb]
            .iter()
            .filter(|o| matches!(o, RotateOutcome::Reused { .. }))
            .count();
        assert_eq!((rotated, reused), (1, 1), "round {round}: {ra:?} / {rb:?}");
    }
    // Each round stored the presented token plus exactly one successor.
    assert_eq!(token_rows(&db, family).await, 20);
}

#[tokio::test]
async fn revoke_family_revokes_every_token_of_the_family_only() {
    let db = TestDb::new().await.unwrap();
    let repo = PgRefreshTokenRepository::new(db.pool.clone());
    let u = user(&db, "ada@example.com").await;
    let family = Uuid::now_v7();
    let other_family = Uuid::now_v7();
    let t = now();
    repo.insert(token(u.id, family, "f1", t + Duration::days(7)))
        .await
        .unwrap();
    repo.rotate(b"f1", token(u.id, family, "f2", t + Duration::days(7)), t)
        .await
        .unwrap();
    repo.insert(token(u.id, other_family, "o1", t + Duration::days(7)))
        .await
        .unwrap();

    // f1 is used, f2 is live: one live token revoked.
    assert_eq!(repo.revoke_family(family, t).await.unwrap(), 1);
    assert!(matches!(
        repo.rotate(b"f2", token(u.id, family, "f3", t + Duration::days(7)), t)
            .await
            .unwrap(),
        RotateOutcome::Reused { .. }
    ));
    // Again: nothing left to revoke.
    assert_eq!(repo.revoke_family(family, t).await.unwrap(), 0);
    // The other family is untouched.
    assert!(matches!(
        repo.rotate(
            b"o1",
            token(u.id, other_family, "o2", t + Duration::days(7)),
            t
        )
        .await
        .unwrap(),
        RotateOutcome::Rotated { .. }
    ));
}

#[tokio::test]
async fn revoking_another_users_token_does_nothing() {
    let db = TestDb::new().await.unwrap();
    let repo = PgRefreshTokenRepository::new(db.pool.clone());
    let ada = user(&db, "ada@example.com").await;
    let eve = user(&db, "eve@example.com").await;
    let family = Uuid::now_v7();
    let t = now();
    repo.insert(token(ada.id, family, "ada-token", t + Duration::days(7)))
        .await
        .unwrap();
    assert!(!repo.revoke(b"ada-token", eve.id, t).await.unwrap());
    assert!(matches!(
        repo.rotate(
            b"ada-token",
            token(ada.id, family, "n", t + Duration::days(7)),
            t
        )
        .await
        .unwrap(),
        RotateOutcome::Rotated { .. }
    ));
    // The owner can revoke her (now used) token once.
    assert!(repo.revoke(b"n", ada.id, t).await.unwrap());
    assert!(!repo.revoke(b"n", ada.id, t).await.unwrap());
}

#[tokio::test]
async fn revoke_all_for_user_revokes_only_that_users_live_tokens() {
    let db = TestDb::new().await.unwrap();
    let repo = PgRefreshTokenRepository::new(db.pool.clone());
    let ada = user(&db, "ada@example.com").await;
    let bob = user(&db, "bob@example.com").await;
    let t = now();
    repo.insert(token(ada.id, Uuid::now_v7(), "a1", t + Duration::days(7)))
        .await
        .unwrap();
    repo.insert(token(ada.id, Uuid::now_v7(), "a2", t + Duration::days(7)))
        .await
        .unwrap();
    repo.insert(token(
        ada.id,
        Uuid::now_v7(),
        "a-expired",
        t - Duration::days(1),
    ))
    .await
    .unwrap();
    let bob_family = Uuid::now_v7();
    repo.insert(token(bob.id, bob_family, "b1", t + Duration::days(7)))
        .await
        .unwrap();
    assert_eq!(repo.revoke_all_for_user(ada.id, t).await.unwrap(), 2);
    assert!(matches!(
        repo.rotate(
            b"a1",
            token(ada.id, Uuid::nil(), "x", t + Duration::days(7)),
            t
        )
        .await
        .unwrap(),
        RotateOutcome::Reused { .. }
    ));
    assert!(matches!(
        repo.rotate(
            b"b1",
            token(bob.id, bob_family, "b2", t + Duration::days(7)),
            t
        )
        .await
        .unwrap(),
        RotateOutcome::Rotated { .. }
    ));
}

#[tokio::test]
async fn purge_expired_deletes_only_refresh_tokens_expired_before_the_cutoff() {
    let db = TestDb::new().await.unwrap();
    let repo = PgRefreshTokenRepository::new(db.pool.clone());
    let u = user(&db, "ada@example.com").await;
    let family = Uuid::now_v7();
    let t = now();
    repo.insert(token(u.id, family, "gone", t - Duration::days(2)))
        .await
        .unwrap();
    repo.insert(token(u.id, family, "stays", t + Duration::days(2)))
        .await
        .unwrap();
    assert_eq!(repo.purge_expired(t).await.unwrap(), 1);
    assert_eq!(token_rows(&db, family).await, 1);
    assert!(matches!(
        repo.rotate(b"gone", token(u.id, family, "n", t + Duration::days(7)), t)
            .await
            .unwrap(),
        RotateOutcome::NotFound
    ));
    assert_eq!(repo.purge_expired(t).await.unwrap(), 0);
}

// ---------------------------------------------------------------- revocations

#[tokio::test]
async fn revocation_persists_and_is_seen_by_a_new_repository_on_the_same_database() {
    let db = TestDb::new().await.unwrap();
    let u = user(&db, "ada@example.com").await;
    let jti = Uuid::now_v7();
    let t = now();
    let repo = PgRevocationRepository::new(db.pool.clone());
    assert!(!repo.is_revoked(jti).await.unwrap());
    let revoked = RevokedToken {
        jti,
        expires_at: t + Duration::minutes(15),
    };
    repo.revoke(revoked, u.id).await.unwrap();
    // Revoking twice is fine.
    repo.revoke(revoked, u.id).await.unwrap();

    // A fresh pool, as after a restart.
    let pool =
        gathering_store::connect(&db.url, &gathering_store::PoolSettings::default()).unwrap();
    let fresh = PgRevocationRepository::new(pool);
    assert!(fresh.is_revoked(jti).await.unwrap());
    assert!(!fresh.is_revoked(Uuid::now_v7()).await.unwrap());
    assert_eq!(fresh.list_active(t, 10).await.unwrap(), vec![revoked]);
}

#[tokio::test]
async fn list_active_skips_expired_revocations_and_respects_the_limit() {
    let db = TestDb::new().await.unwrap();
    let u = user(&db, "ada@example.com").await;
    let repo = PgRevocationRepository::new(db.pool.clone());
    let t = now();
    let expired = RevokedToken {
        jti: Uuid::now_v7(),
        expires_at: t - Duration::minutes(1),
    };
    repo.revoke(expired, u.id).await.unwrap();
    let mut live = Vec::new();
    for i in 1..=3 {
        let r = RevokedToken {
            jti: Uuid::now_v7(),
            expires_at: t + Duration::minutes(i),
        };
        repo.revoke(r, u.id).await.unwrap();
        live.push(r);
    }
    let all = repo.list_active(t, 10).await.unwrap();
    assert_eq!(all.len(), 3);
    assert!(!all.contains(&expired));
    assert_eq!(repo.list_active(t, 2).await.unwrap().len(), 2);
}

#[tokio::test]
async fn purge_expired_deletes_only_revocations_expired_before_the_cutoff() {
    let db = TestDb::new().await.unwrap();
    let u = user(&db, "ada@example.com").await;
    let repo = PgRevocationRepository::new(db.pool.clone());
    let t = now();
    let old = RevokedToken {
        jti: Uuid::now_v7(),
        expires_at: t - Duration::hours(1),
    };
    let live = RevokedToken {
        jti: Uuid::now_v7(),
        expires_at: t + Duration::hours(1),
    };
    repo.revoke(old, u.id).await.unwrap();
    repo.revoke(live, u.id).await.unwrap();
    assert_eq!(repo.purge_expired(t).await.unwrap(), 1);
    assert!(!repo.is_revoked(old.jti).await.unwrap());
    assert!(repo.is_revoked(live.jti).await.unwrap());
    assert_eq!(repo.purge_expired(t).await.unwrap(), 0);
}

#[tokio::test]
async fn revoke_announces_the_jti_on_the_revocation_channel() {
    let db = TestDb::new().await.unwrap();
    let u = user(&db, "ada@example.com").await;

    // A separate connection LISTENs, as another instance would.
    let (client, mut connection) = tokio_postgres::connect(&db.url, tokio_postgres::NoTls)
        .await
        .unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let driver = tokio::spawn(async move {
        let mut messages = futures::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(msg) = messages.next().await {
            match msg {
                Ok(tokio_postgres::AsyncMessage::Notification(n)) => {
                    if tx
                        .send((n.channel().to_owned(), n.payload().to_owned()))
                        .is_err()
                    {
                        break;
                    }
                }
                Ok(_) => {}
                Err(_) => break,
            }
        }
    });
    client
        .batch_execute(&format!("LISTEN {REVOCATION_CHANNEL}"))
        .await
        .unwrap();

    let jti = Uuid::now_v7();
    PgRevocationRepository::new(db.pool.clone())
        .revoke(
            RevokedToken {
                jti,
                expires_at: now() + Duration::minutes(15),
            },
            u.id,
        )
        .await
        .unwrap();

    let (channel, payload) = tokio::time::timeout(StdDuration::from_secs(5), rx.recv())
        .await
        .expect("notification within 5 s")
        .expect("listener alive");
    assert_eq!(channel, REVOCATION_CHANNEL);
    assert_eq!(payload, jti.to_string());
    drop(client);
    driver.abort();
}

// ---------------------------------------------------------------- audit

fn event(
    kind: AuditKind,
    user_id: Option<Uuid>,
    email: Option<&str>,
    at: DateTime<Utc>,
) -> AuditEvent {
    AuditEvent {
        id: Uuid::now_v7(),
        at,
        event: kind,
        user_id,
        email: email.map(str::to_owned),
        ip: Some("127.0.0.1".to_owned()),
        user_agent: Some("test".to_owned()),
        success: kind != AuditKind::LoginFailure,
        reason: None,
        request_id: Some("req-1".to_owned()),
    }
}

#[tokio::test]
async fn audit_list_filters_by_event_and_user_newest_first() {
    let db = TestDb::new().await.unwrap();
    let repo = PgAuditRepository::new(db.pool.clone());
    let ada = user(&db, "ada@example.com").await;
    let bob = user(&db, "bob@example.com").await;
    let t = now();
    let e1 = event(
        AuditKind::Register,
        Some(ada.id),
        Some("ada@example.com"),
        t,
    );
    let e2 = event(
        AuditKind::LoginSuccess,
        Some(ada.id),
        Some("ada@example.com"),
        t,
    );
    let e3 = event(
        AuditKind::LoginSuccess,
        Some(bob.id),
        Some("bob@example.com"),
        t,
    );
    let e4 = event(AuditKind::LoginFailure, None, Some("eve@example.com"), t);
    for e in [&e1, &e2, &e3, &e4] {
        repo.record(e.clone()).await.unwrap();
    }

    let all = repo
        .list(AuditFilter::default(), PageRequest::default())
        .await
        .unwrap();
    assert_eq!(
        all.items,
        vec![e4.clone(), e3.clone(), e2.clone(), e1.clone()]
    );
    assert_eq!(all.next_cursor, None);

    let logins = repo
        .list(
            AuditFilter {
                event: Some(AuditKind::LoginSuccess),
                user_id: None,
            },
            PageRequest::default(),
        )
        .await
        .unwrap();
    assert_eq!(logins.items, vec![e3.clone(), e2.clone()]);

    let adas = repo
        .list(
            AuditFilter {
                event: None,
                user_id: Some(ada.id),
            },
            PageRequest::default(),
        )
        .await
        .unwrap();
    assert_eq!(adas.items, vec![e2.clone(), e1.clone()]);

    let ada_logins = repo
        .list(
            AuditFilter {
                event: Some(AuditKind::LoginSuccess),
                user_id: Some(ada.id),
            },
            PageRequest::default(),
        )
        .await
        .unwrap();
    assert_eq!(ada_logins.items, vec![e2]);
}

#[tokio::test]
async fn audit_record_lower_cases_the_email() {
    let db = TestDb::new().await.unwrap();
    let repo = PgAuditRepository::new(db.pool.clone());
    repo.record(event(
        AuditKind::LoginFailure,
        None,
        Some("Eve@Example.COM"),
        now(),
    ))
    .await
    .unwrap();
    let page = repo
        .list(AuditFilter::default(), PageRequest::default())
        .await
        .unwrap();
    assert_eq!(page.items[0].email.as_deref(), Some("eve@example.com"));
}

#[tokio::test]
async fn audit_list_pages_with_the_cursor_and_bounds_the_limit() {
    let db = TestDb::new().await.unwrap();
    let repo = PgAuditRepository::new(db.pool.clone());
    let t = now();
    let mut ids = Vec::new();
    for _ in 0..205 {
        let e = event(AuditKind::TokenRefresh, None, None, t);
        ids.push(e.id);
        repo.record(e).await.unwrap();
    }
    ids.reverse(); // newest first

    // Walk pages of 3 for the first 7 items: 3 + 3 + ...
    let p1 = repo
        .list(AuditFilter::default(), PageRequest::new(Some(3), None))
        .await
        .unwrap();
    assert_eq!(p1.items.iter().map(|e| e.id).collect::<Vec<_>>(), ids[0..3]);
    let c1: Uuid = p1.next_cursor.unwrap().parse().unwrap();
    let p2 = repo
        .list(AuditFilter::default(), PageRequest::new(Some(3), Some(c1)))
        .await
        .unwrap();
    assert_eq!(p2.items.iter().map(|e| e.id).collect::<Vec<_>>(), ids[3..6]);

    // An oversized limit is clamped to the maximum page.
    let big = repo
        .list(AuditFilter::default(), PageRequest::new(Some(10_000), None))
        .await
        .unwrap();
    assert_eq!(big.items.len(), gathering_domain::page::MAX_LIMIT as usize);
    let cursor: Uuid = big.next_cursor.unwrap().parse().unwrap();
    let rest = repo
        .list(
            AuditFilter::default(),
            PageRequest::new(Some(10_000), Some(cursor)),
        )
        .await
        .unwrap();
    assert_eq!(rest.items.len(), 5);
    assert_eq!(rest.next_cursor, None);
    assert_eq!(rest.items.last().unwrap().id, *ids.last().unwrap());
}

#[tokio::test]
async fn count_login_failures_counts_only_that_emails_failures_inside_the_window() {
    let db = TestDb::new().await.unwrap();
    let repo = PgAuditRepository::new(db.pool.clone());
    let t = now();
    let email = Some("Ada@Example.com");
    for at in [
        t - Duration::minutes(20),
        t - Duration::minutes(10),
        t - Duration::minutes(1),
    ] {
        repo.record(event(AuditKind::LoginFailure, None, email, at))
            .await
            .unwrap();
    }
    // Not counted: other email, other event.
    repo.record(event(
        AuditKind::LoginFailure,
        None,
        Some("bob@example.com"),
        t,
    ))
    .await
    .unwrap();
    repo.record(event(AuditKind::LoginSuccess, None, email, t))
        .await
        .unwrap();

    let since = t - Duration::minutes(15);
    assert_eq!(
        repo.count_login_failures("ada@example.com", since)
            .await
            .unwrap(),
        2
    );
    assert_eq!(
        repo.count_login_failures("ADA@EXAMPLE.COM", since)
            .await
            .unwrap(),
        2
    );
    assert_eq!(
        repo.count_login_failures("ada@example.com", t - Duration::hours(1))
            .await
            .unwrap(),
        3
    );
    assert_eq!(
        repo.count_login_failures("ada@example.com", t)
            .await
            .unwrap(),
        0
    );
    assert_eq!(
        repo.count_login_failures("nobody@example.com", since)
            .await
            .unwrap(),
        0
    );
}
