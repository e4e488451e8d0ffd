//! Contract tests for the auth ports: async functions generic over the port, run against the
//! in-memory fakes ([`crate::fakes`], in this crate's tests) and against the PostgreSQL adapters
//! (gathering-store's tests), so the fakes the service tests rely on behave like the real store.
//! Each panics on a broken contract. Users are passed in: PostgreSQL needs them to exist.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use chrono::{DateTime, Duration, SubsecRound, Utc};
use gathering_domain::auth::{
    AuditEvent, AuditFilter, AuditKind, AuditRepository, Email, NewRefreshToken, NewUser,
    RefreshTokenRepository, RevocationRepository, RevokedToken, Role, RotateOutcome, UserId,
    UserRepository,
};
use gathering_domain::{PageRequest, RepoError};
use uuid::Uuid;

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

/// create, duplicate email (any case) is `Conflict("email")`, lookup by email and id, password
/// update, `ensure_admin` never promotes an existing user.
pub async fn users_create_conflict_and_lookup<U: UserRepository>(users: &U) {
    let ada = users
        .create(new_user("Ada@Example.com", Role::User))
        .await
        .unwrap();
    assert_eq!(ada.email.as_str(), "ada@example.com");
    assert_eq!(ada.role, Role::User);
    assert!(!ada.disabled);
    let err = users
        .create(new_user("ADA@example.COM", Role::Admin))
        .await
        .unwrap_err();
    assert!(
        matches!(err, RepoError::Conflict(ref f) if f == "email"),
        "{err:?}"
    );

    let creds = users
        .find_by_email(&Email::parse("ada@EXAMPLE.com").unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(creds.user.id, ada.id);
    assert_eq!(
        creds.password_hash,
        new_user("a@b.cd", Role::User).password_hash
    );
    assert!(
        users
            .find_by_email(&Email::parse("bob@example.com").unwrap())
            .await
            .unwrap()
            .is_none()
    );
    assert_eq!(
        users.find_by_id(ada.id).await.unwrap().unwrap().email,
        ada.email
    );
    assert!(users.find_by_id(Uuid::now_v7()).await.unwrap().is_none());

    users.update_password_hash(ada.id, "$new").await.unwrap();
    let creds = users.find_by_email(&ada.email).await.unwrap().unwrap();
    assert_eq!(creds.password_hash, "$new");
    assert!(matches!(
        users.update_password_hash(Uuid::now_v7(), "$x").await,
        Err(RepoError::NotFound)
    ));

    let same = users
        .ensure_admin(new_user("ada@example.com", Role::Admin))
        .await
        .unwrap();
    assert_eq!(same.id, ada.id);
    assert_eq!(same.role, Role::User, "never promoted");
    assert_eq!(
        users
            .find_by_email(&ada.email)
            .await
            .unwrap()
            .unwrap()
            .password_hash,
        "$new"
    );
    let root = users
        .ensure_admin(new_user("root@example.com", Role::User))
        .await
        .unwrap();
    assert_eq!(root.role, Role::Admin);
}

fn token(
    user_id: UserId,
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

/// Rotation marks the presented token used and stores the new one in its family (for its user,
/// whatever the new token claims); presenting a used or revoked token again is reuse; an expired
/// one is `Expired`; counts of revoked tokens are of LIVE tokens; purge drops the expired.
pub async fn refresh_rotation_detects_reuse<T: RefreshTokenRepository>(
    tokens: &T,
    user: UserId,
    other: UserId,
) {
    let t0 = now();
    let family = Uuid::now_v7();
    let first = token(user, family, "s1", t0 + Duration::hours(1));
    let first_id = first.id;
    tokens.insert(first).await.unwrap();
    let dup = tokens
        .insert(token(user, family, "s1", t0 + Duration::hours(1)))
        .await
        .unwrap_err();
    assert!(matches!(dup, RepoError::Conflict(_)), "{dup:?}");

    // The new token's family and user are taken from the presented one.
    let second = token(other, Uuid::now_v7(), "s2", t0 + Duration::hours(2));
    match tokens.rotate(b"s1", second, t0).await.unwrap() {
        RotateOutcome::Rotated { old } => {
            assert_eq!(old.id, first_id);
            assert_eq!(old.family_id, family);
            assert_eq!(old.user_id, user);
            assert!(old.used_at.is_none(), "the record as it was presented");
        }
        o => panic!("expected Rotated, got {o:?}"),
    }
    match tokens
        .rotate(
            b"s1",
            token(user, family, "s3", t0 + Duration::hours(1)),
            t0,
        )
        .await
        .unwrap()
    {
        RotateOutcome::Reused { old } => {
            assert_eq!(old.id, first_id);
            assert_eq!(old.used_at, Some(t0));
        }
        o => panic!("expected Reused, got {o:?}"),
    }
    assert!(matches!(
        tokens
            .rotate(b"nope", token(user, family, "s4", t0), t0)
            .await
            .unwrap(),
        RotateOutcome::NotFound
    ));
    // s3 was not stored by the refused rotation: presenting it is not found.
    assert!(matches!(
        tokens
            .rotate(b"s3", token(user, family, "s5", t0), t0)
            .await
            .unwrap(),
        RotateOutcome::NotFound
    ));
    match tokens
        .rotate(
            b"s2",
            token(user, family, "s6", t0),
            t0 + Duration::hours(3),
        )
        .await
        .unwrap()
    {
        RotateOutcome::Expired { old } => {
            assert_eq!(old.family_id, family, "s2 joined the presented family");
            assert_eq!(old.user_id, user, "s2 belongs to the presented user");
        }
        o => panic!("expected Expired, got {o:?}"),
    }

    // Revoking the family: s1 is used, s2 live -> one live token revoked.
    assert_eq!(tokens.revoke_family(family, t0).await.unwrap(), 1);
    assert_eq!(tokens.revoke_family(family, t0).await.unwrap(), 0);
    assert!(matches!(
        tokens
            .rotate(b"s2", token(user, family, "s7", t0), t0)
            .await
            .unwrap(),
        RotateOutcome::Reused { .. }
    ));

    // Single revoke is scoped to the user.
    let fam2 = Uuid::now_v7();
    tokens
        .insert(token(user, fam2, "u1", t0 + Duration::hours(1)))
        .await
        .unwrap();
    assert!(!tokens.revoke(b"u1", other, t0).await.unwrap());
    assert!(tokens.revoke(b"u1", user, t0).await.unwrap());
    assert!(
        !tokens.revoke(b"u1", user, t0).await.unwrap(),
        "already revoked"
    );

    // Revoke all: counts live tokens only (an expired one is revoked but not counted).
    let fam3 = Uuid::now_v7();
    tokens
        .insert(token(user, fam3, "a1", t0 + Duration::hours(1)))
        .await
        .unwrap();
    tokens
        .insert(token(user, fam3, "a2", t0 - Duration::minutes(1)))
        .await
        .unwrap();
    tokens
        .insert(token(other, fam3, "o1", t0 + Duration::hours(1)))
        .await
        .unwrap();
    assert_eq!(tokens.revoke_all_for_user(user, t0).await.unwrap(), 1);
    assert!(matches!(
        tokens
            .rotate(b"o1", token(other, fam3, "o2", t0 + Duration::hours(1)), t0)
            .await
            .unwrap(),
        RotateOutcome::Rotated { .. }
    ));

    // Purge: tokens expired strictly before the cut-off (s1 and s3.. never stored; a2 expired,
    // s2 expires at t0+2h).
    assert_eq!(tokens.purge_expired(t0).await.unwrap(), 1);
    assert_eq!(tokens.purge_expired(t0).await.unwrap(), 0);
    assert!(matches!(
        tokens
            .rotate(b"a2", token(user, fam3, "x", t0), t0)
            .await
            .unwrap(),
        RotateOutcome::NotFound
    ));
}

/// A revoked jti is revoked (idempotently); `list_active` lists the unexpired, latest expiry
/// first, at most `limit`; purge drops the expired.
pub async fn revocations_are_seen_and_listed<R: RevocationRepository>(repo: &R, user: UserId) {
    let t0 = now();
    let jti = Uuid::now_v7();
    assert!(!repo.is_revoked(jti).await.unwrap());
    let tok = RevokedToken {
        jti,
        expires_at: t0 + Duration::minutes(10),
    };
    repo.revoke(tok, user).await.unwrap();
    assert!(repo.is_revoked(jti).await.unwrap());
    repo.revoke(tok, user).await.unwrap();
    assert!(repo.is_revoked(jti).await.unwrap());
    assert!(!repo.is_revoked(Uuid::now_v7()).await.unwrap());

    let later = RevokedToken {
        jti: Uuid::now_v7(),
        expires_at: t0 + Duration::minutes(20),
    };
    let gone = RevokedToken {
        jti: Uuid::now_v7(),
        expires_at: t0 - Duration::minutes(1),
    };
    repo.revoke(later, user).await.unwrap();
    repo.revoke(gone, user).await.unwrap();
    assert!(repo.is_revoked(gone.jti).await.unwrap(), "until purged");
    assert_eq!(repo.list_active(t0, 10).await.unwrap(), vec![later, tok]);
    assert_eq!(repo.list_active(t0, 1).await.unwrap(), vec![later]);
    assert_eq!(repo.purge_expired(t0).await.unwrap(), 1);
    assert!(!repo.is_revoked(gone.jti).await.unwrap());
    assert!(repo.is_revoked(jti).await.unwrap());
}

fn event(kind: AuditKind, user_id: Option<UserId>, email: &str, at: DateTime<Utc>) -> AuditEvent {
    AuditEvent {
        id: Uuid::now_v7(),
        at,
        event: kind,
        user_id,
        email: Some(email.to_owned()),
        ip: Some("192.0.2.1".into()),
        user_agent: Some("ua".into()),
        success: kind != AuditKind::LoginFailure,
        reason: None,
        request_id: Some("r".into()),
    }
}

/// Events are appended and listed newest first with cursor paging and filters; the email is
/// stored lower-cased and failed logins are counted case-insensitively since a time.
pub async fn audit_appends_filters_and_counts<A: AuditRepository>(
    audit: &A,
    user: UserId,
    other: UserId,
) {
    let t0 = now();
    let e1 = event(AuditKind::Register, Some(user), "Ada@Example.com", t0);
    let e2 = event(AuditKind::LoginFailure, None, "Ada@Example.com", t0);
    let e3 = event(
        AuditKind::LoginFailure,
        None,
        "ada@example.com",
        t0 - Duration::hours(2),
    );
    let e4 = event(AuditKind::LoginSuccess, Some(user), "ada@example.com", t0);
    let e5 = event(AuditKind::LoginSuccess, Some(other), "bob@example.com", t0);
    for e in [&e1, &e2, &e3, &e4, &e5] {
        audit.record(e.clone()).await.unwrap();
    }

    let all = audit
        .list(AuditFilter::default(), PageRequest::default())
        .await
        .unwrap();
    let ids: Vec<Uuid> = all.items.iter().map(|e| e.id).collect();
    assert_eq!(ids, [e5.id, e4.id, e3.id, e2.id, e1.id], "newest first");
    assert!(all.next_cursor.is_none());
    let stored = all.items.iter().find(|e| e.id == e1.id).unwrap();
    assert_eq!(
        stored.email.as_deref(),
        Some("ada@example.com"),
        "lower-cased"
    );
    assert_eq!(stored.at, e1.at);
    assert_eq!(stored.ip, e1.ip);

    let page1 = audit
        .list(AuditFilter::default(), PageRequest::new(Some(2), None))
        .await
        .unwrap();
    assert_eq!(page1.items.len(), 2);
    let cursor = page1.next_cursor.unwrap().parse::<Uuid>().unwrap();
    assert_eq!(cursor, e4.id);
    let page2 = audit
        .list(
            AuditFilter::default(),
            PageRequest::new(Some(2), Some(cursor)),
        )
        .await
        .unwrap();
    assert_eq!(page2.items[0].id, e3.id);

    let failures = audit
        .list(
            AuditFilter {
                event: Some(AuditKind::LoginFailure),
                user_id: None,
            },
            PageRequest::default(),
        )
        .await
        .unwrap();
    assert_eq!(failures.items.len(), 2);
    let mine = audit
        .list(
            AuditFilter {
                event: Some(AuditKind::LoginSuccess),
                user_id: Some(user),
            },
            PageRequest::default(),
        )
        .await
        .unwrap();
    let ids: Vec<Uuid> = mine.items.iter().map(|e| e.id).collect();
    assert_eq!(ids, [e4.id]);

    let hour_ago = t0 - Duration::hours(1);
    assert_eq!(
        audit
            .count_login_failures("ADA@example.com", hour_ago)
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        audit
            .count_login_failures("ada@example.com", t0 - Duration::hours(3))
            .await
            .unwrap(),
        2
    );
    assert_eq!(
        audit
            .count_login_failures("bob@example.com", hour_ago)
            .await
            .unwrap(),
        0
    );
}

/// Every contract against the in-memory fakes.
#[cfg(test)]
mod fakes {
    use super::*;
    use crate::fakes::{InMemoryAudit, InMemoryRefreshTokens, InMemoryRevocations, InMemoryUsers};

    #[tokio::test]
    async fn fake_users_create_conflict_and_lookup() {
        users_create_conflict_and_lookup(&InMemoryUsers::new()).await;
    }

    #[tokio::test]
    async fn fake_refresh_rotation_detects_reuse() {
        refresh_rotation_detects_reuse(
            &InMemoryRefreshTokens::new(),
            Uuid::now_v7(),
            Uuid::now_v7(),
        )
        .await;
    }

    #[tokio::test]
    async fn fake_revocations_are_seen_and_listed() {
        revocations_are_seen_and_listed(&InMemoryRevocations::new(), Uuid::now_v7()).await;
    }

    #[tokio::test]
    async fn fake_audit_appends_filters_and_counts() {
        audit_appends_filters_and_counts(&InMemoryAudit::new(), Uuid::now_v7(), Uuid::now_v7())
            .await;
    }
}
