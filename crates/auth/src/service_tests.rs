//! `AuthService` behaviour against the in-memory fakes and a manual clock.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::fakes::Fakes;
use crate::password::{PasswordParams, hash_blocking};
use crate::{AuthConfig, AuthError, AuthService, KeyRing, TokenPair};
use chrono::{TimeDelta, TimeZone, Utc};
use gathering_domain::auth::{
    AuditFilter, AuditKind, Email, NewUser, REVOCATION_CHANNEL, RequestMeta, RevokedToken, Role,
    USER_CHANGED_CHANNEL, UserRepository,
};
use gathering_domain::notify::ListenerEvent;
use gathering_domain::{ErrorCode, ErrorKind, ManualClock, PageRequest};
use std::sync::Arc;
use std::time::Duration;
use uuid::Uuid;

const FAST: PasswordParams = PasswordParams {
    m_cost_kib: 64,
    t_cost: 1,
    p_cost: 1,
};
const PW: &str = "correct horse battery staple";
const KEY: [u8; 32] = [42u8; 32];

struct H {
    svc: Arc<AuthService>,
    fakes: Fakes,
    clock: Arc<ManualClock>,
}

fn config() -> AuthConfig {
    AuthConfig {
        password_params: FAST,
        hash_concurrency: 2,
        ..AuthConfig::default()
    }
}

async fn harness_with(config: AuthConfig, keys: KeyRing) -> H {
    let fakes = Fakes::new();
    let clock = Arc::new(ManualClock::new(
        Utc.with_ymd_and_hms(2026, 3, 1, 9, 0, 0).unwrap(),
    ));
    let svc = AuthService::new(fakes.repos(), clock.clone(), keys, config)
        .await
        .unwrap();
    H {
        svc: Arc::new(svc),
        fakes,
        clock,
    }
}

async fn harness() -> H {
    harness_with(config(), KeyRing::new("k1", &KEY).unwrap()).await
}

fn meta() -> RequestMeta {
    RequestMeta {
        ip: Some("203.0.113.7".into()),
        user_agent: Some("test-agent/1.0".into()),
        request_id: Some("req-1".into()),
    }
}

impl H {
    async fn register(&self, email: &str) -> gathering_domain::auth::User {
        self.svc
            .register(email, PW.into(), "Ada".into(), &meta())
            .await
            .unwrap()
    }
    async fn login(&self, email: &str) -> TokenPair {
        self.svc.login(email, PW.into(), &meta()).await.unwrap()
    }
    async fn sync_cache(&self) {
        self.svc
            .handle_listener_event(&ListenerEvent::Connected)
            .await;
        assert!(self.svc.revocation_cache().is_authoritative());
    }
}

// ------------------------------------------------------------------------- register

#[tokio::test]
async fn register_reports_every_invalid_field_with_its_pointer() {
    let h = harness().await;
    let err = h
        .svc
        .register("not-an-email", "short".into(), "  ".into(), &meta())
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Validation);
    assert_eq!(err.code(), "validation_failed");
    let fields: Vec<String> = err.details().into_iter().map(|d| d.field).collect();
    assert_eq!(fields, ["/email", "/password", "/name"]);
    let long_name = "n".repeat(201);
    let err = h
        .svc
        .register("a@example.com", PW.into(), long_name, &meta())
        .await
        .unwrap_err();
    let fields: Vec<String> = err.details().into_iter().map(|d| d.field).collect();
    assert_eq!(fields, ["/name"]);
    assert!(h.fakes.users.is_empty());
    assert_eq!(
        h.svc.hasher().hashes(),
        0,
        "nothing hashed for invalid input"
    );
}

#[tokio::test]
async fn register_creates_a_user_with_a_phc_hash_and_audits() {
    let h = harness().await;
    let user = h.register("Ada@Example.com").await;
    assert_eq!(user.email.as_str(), "ada@example.com");
    assert_eq!(user.role, Role::User);
    let phc = h.fakes.users.password_hash_of("ada@example.com").unwrap();
    assert!(phc.starts_with("$argon2id$v=19$m=64,t=1,p=1$"), "{phc}");
    assert!(!phc.contains(PW));
    let ev = h.fakes.audit.of_kind(AuditKind::Register);
    assert_eq!(ev.len(), 1);
    assert_eq!(ev[0].user_id, Some(user.id));
    assert!(ev[0].success);
    assert_eq!(ev[0].ip.as_deref(), Some("203.0.113.7"));
    assert_eq!(ev[0].user_agent.as_deref(), Some("test-agent/1.0"));
    assert_eq!(ev[0].request_id.as_deref(), Some("req-1"));
}

#[tokio::test]
async fn duplicate_email_is_email_taken_after_hashing_like_a_new_one() {
    let h = harness().await;
    h.register("ada@example.com").await;
    let hashes_before = h.svc.hasher().hashes();
    let err = h
        .svc
        .register("ADA@example.com", PW.into(), "Other".into(), &meta())
        .await
        .unwrap_err();
    assert!(matches!(err, AuthError::EmailTaken));
    assert_eq!(err.code(), "email_taken");
    assert_eq!(err.kind(), ErrorKind::Conflict);
    assert_eq!(
        h.svc.hasher().hashes(),
        hashes_before + 1,
        "the duplicate path hashes too (same cost as a new email)"
    );
    assert_eq!(h.fakes.users.len(), 1);
}

// ------------------------------------------------------------------------- login

#[tokio::test]
async fn login_returns_a_bearer_pair_that_authenticates() {
    let h = harness().await;
    let user = h.register("ada@example.com").await;
    let pair = h.login("ADA@example.com").await;
    assert_eq!(pair.token_type, "Bearer");
    assert_eq!(pair.expires_in, 900);
    assert!(pair.access_token.starts_with("v4.local."));
    let claims = h
        .svc
        .authenticate(&pair.access_token, &meta())
        .await
        .unwrap();
    assert_eq!(claims.user_id, user.id);
    assert_eq!(claims.role, Role::User);
    let ok = h.fakes.audit.of_kind(AuditKind::LoginSuccess);
    assert_eq!(ok.len(), 1);
    assert_eq!(ok[0].user_id, Some(user.id));
    // Only the hash of the refresh token is stored.
    let recs = h.fakes.refresh_tokens.records();
    assert_eq!(recs.len(), 1);
    assert_ne!(recs[0].token_hash, pair.refresh_token.as_bytes());
    assert_eq!(
        recs[0].expires_at,
        h.clock_now() + TimeDelta::seconds(1_209_600)
    );
}

impl H {
    fn clock_now(&self) -> chrono::DateTime<Utc> {
        gathering_domain::Clock::now(self.clock.as_ref())
    }
}

#[tokio::test]
async fn every_login_failure_is_the_same_error_but_audited_with_its_reason() {
    let h = harness().await;
    let user = h.register("ada@example.com").await;
    h.register("bob@example.com").await;
    let bob = h
        .fakes
        .users
        .find_by_email(&Email::parse("bob@example.com").unwrap())
        .await
        .unwrap()
        .unwrap();
    h.fakes.users.set_disabled(bob.user.id, true);

    let wrong = h
        .svc
        .login("ada@example.com", "wrong password!!".into(), &meta())
        .await
        .unwrap_err();
    let unknown = h
        .svc
        .login("nobody@example.com", PW.into(), &meta())
        .await
        .unwrap_err();
    let disabled = h
        .svc
        .login("bob@example.com", PW.into(), &meta())
        .await
        .unwrap_err();
    let malformed = h.svc.login("nope", PW.into(), &meta()).await.unwrap_err();
    for e in [&wrong, &unknown, &disabled, &malformed] {
        assert!(matches!(e, AuthError::InvalidCredentials));
        assert_eq!(e.kind(), ErrorKind::Unauthorized);
        assert_eq!(e.code(), "invalid_credentials");
        assert_eq!(e.public_message(), wrong.public_message());
        assert!(e.details().is_empty());
    }
    let failures = h.fakes.audit.of_kind(AuditKind::LoginFailure);
    let reasons: Vec<_> = failures.iter().map(|e| e.reason.clone().unwrap()).collect();
    assert_eq!(
        reasons,
        [
            "wrong_password",
            "unknown_email",
            "disabled",
            "malformed_email"
        ]
    );
    assert_eq!(failures[0].user_id, Some(user.id));
    assert_eq!(failures[1].email.as_deref(), Some("nobody@example.com"));
    assert!(failures.iter().all(|e| !e.success));
}

#[tokio::test]
async fn unknown_email_still_verifies_the_dummy_hash() {
    let h = harness().await;
    let before = h.svc.hasher().verifications();
    let err = h
        .svc
        .login("ghost@example.com", PW.into(), &meta())
        .await
        .unwrap_err();
    assert!(matches!(err, AuthError::InvalidCredentials));
    assert_eq!(h.svc.hasher().verifications(), before + 1);
    // And a known email with a wrong password costs exactly one verification as well.
    h.register("ada@example.com").await;
    let before = h.svc.hasher().verifications();
    let _ = h
        .svc
        .login("ada@example.com", "nope nope nope".into(), &meta())
        .await;
    assert_eq!(h.svc.hasher().verifications(), before + 1);
}

#[tokio::test]
async fn failed_logins_beyond_the_free_ones_must_wait_a_doubling_capped_delay() {
    // Old rule (a flat 15-minute lock anyone could trigger) replaced: 5 free failures, then
    // each attempt must come 1 s, 2 s, 4 s, ... (capped) after the latest failure.
    let h = harness_with(
        AuthConfig {
            lockout_max_delay: Duration::from_secs(8),
            ..config()
        },
        KeyRing::new("k1", &KEY).unwrap(),
    )
    .await;
    h.register("ada@example.com").await;
    let bad = || async {
        h.svc
            .login("ada@example.com", "bad password 123".into(), &meta())
            .await
            .unwrap_err()
    };
    for _ in 0..5 {
        assert!(matches!(bad().await, AuthError::InvalidCredentials));
    }
    for delay in [1i64, 2, 4, 8, 8] {
        // Too early: refused without verifying anything, even with the right password.
        let before = h.svc.hasher().verifications();
        let e = h
            .svc
            .login("Ada@Example.com", PW.into(), &meta())
            .await
            .unwrap_err();
        let AuthError::LockedOut { retry_after } = e else {
            panic!("expected lockout, got {e:?}");
        };
        assert_eq!(retry_after, Duration::from_secs(delay as u64));
        assert_eq!(e.kind(), ErrorKind::RateLimited);
        assert_eq!(e.retry_after(), Some(retry_after));
        assert_eq!(h.svc.hasher().verifications(), before);
        // Just before the delay: still refused.
        h.clock
            .advance(TimeDelta::seconds(delay) - TimeDelta::milliseconds(10));
        assert!(matches!(bad().await, AuthError::LockedOut { .. }));
        // After it: one more guess is verified (and fails, doubling the delay).
        h.clock.advance(TimeDelta::milliseconds(10));
        assert!(matches!(bad().await, AuthError::InvalidCredentials));
    }
    let lockouts = h.fakes.audit.of_kind(AuditKind::Lockout);
    assert!(!lockouts.is_empty());
    assert_eq!(lockouts[0].email.as_deref(), Some("ada@example.com"));
    // The owner waits at most the cap, then logs in.
    h.clock.advance(TimeDelta::seconds(8));
    h.login("ada@example.com").await;
    // Failures leave the window: no delay at all any more.
    h.clock.advance(TimeDelta::minutes(15));
    for _ in 0..5 {
        assert!(matches!(bad().await, AuthError::InvalidCredentials));
    }
}

#[test]
fn progressive_delay_doubles_from_the_base_and_is_capped() {
    use crate::service::progressive_delay_for_tests as d;
    let s = Duration::from_secs;
    assert_eq!(d(4, 5, s(1), s(300)), None);
    assert_eq!(d(5, 5, s(1), s(300)), Some(s(1)));
    assert_eq!(d(6, 5, s(1), s(300)), Some(s(2)));
    assert_eq!(d(13, 5, s(1), s(300)), Some(s(256)));
    assert_eq!(d(14, 5, s(1), s(300)), Some(s(300)));
    assert_eq!(d(u64::MAX, 5, s(1), s(300)), Some(s(300)));
}

#[tokio::test]
async fn unknown_emails_lock_out_exactly_like_existing_ones() {
    let h = harness().await;
    h.register("ada@example.com").await;
    for email in ["ada@example.com", "ghost@example.com"] {
        for _ in 0..5 {
            let _ = h.svc.login(email, "bad password 123".into(), &meta()).await;
        }
    }
    let existing = h
        .svc
        .login("ada@example.com", PW.into(), &meta())
        .await
        .unwrap_err();
    let unknown = h
        .svc
        .login("ghost@example.com", PW.into(), &meta())
        .await
        .unwrap_err();
    assert_eq!(existing.code(), unknown.code());
    assert_eq!(existing.public_message(), unknown.public_message());
    assert_eq!(existing.retry_after(), unknown.retry_after());
    assert!(matches!(unknown, AuthError::LockedOut { .. }));
    // Another account is unaffected.
    h.register("bob@example.com").await;
    h.login("bob@example.com").await;
}

#[tokio::test]
async fn login_rehashes_a_password_stored_with_weaker_parameters() {
    let stronger = PasswordParams {
        m_cost_kib: 128,
        t_cost: 2,
        p_cost: 1,
    };
    let h = harness_with(
        AuthConfig {
            password_params: stronger,
            ..config()
        },
        KeyRing::new("k1", &KEY).unwrap(),
    )
    .await;
    let weak = hash_blocking(&FAST, PW.as_bytes()).unwrap();
    h.fakes
        .users
        .create(NewUser {
            email: Email::parse("old@example.com").unwrap(),
            name: "Old".into(),
            role: Role::User,
            password_hash: weak.clone(),
        })
        .await
        .unwrap();
    h.login("old@example.com").await;
    let now = h.fakes.users.password_hash_of("old@example.com").unwrap();
    assert_ne!(now, weak);
    assert!(now.starts_with("$argon2id$v=19$m=128,t=2,p=1$"), "{now}");
    // The new hash still accepts the password, and no further rehash happens.
    let hashes = h.svc.hasher().hashes();
    h.login("old@example.com").await;
    assert_eq!(h.svc.hasher().hashes(), hashes);
}

// ------------------------------------------------------------------------- access tokens

#[tokio::test]
async fn access_token_expires_by_the_injected_clock_and_is_audited() {
    let h = harness().await;
    h.register("ada@example.com").await;
    let pair = h.login("ada@example.com").await;
    h.clock.advance(TimeDelta::seconds(899));
    assert!(
        h.svc
            .authenticate(&pair.access_token, &meta())
            .await
            .is_ok()
    );
    h.clock.advance(TimeDelta::seconds(1));
    let e = h
        .svc
        .authenticate(&pair.access_token, &meta())
        .await
        .unwrap_err();
    assert!(matches!(e, AuthError::InvalidToken));
    assert_eq!(e.code(), "invalid_token");
    let rejected = h.fakes.audit.of_kind(AuditKind::TokenRejected);
    assert_eq!(rejected.len(), 1);
    assert_eq!(rejected[0].reason.as_deref(), Some("expired"));
}

#[tokio::test]
async fn tokens_of_another_key_or_tampered_are_rejected() {
    let h = harness().await;
    h.register("ada@example.com").await;
    let pair = h.login("ada@example.com").await;
    let other = harness_with(config(), KeyRing::new("k1", &[9u8; 32]).unwrap()).await;
    assert!(matches!(
        other.svc.authenticate(&pair.access_token, &meta()).await,
        Err(AuthError::InvalidToken)
    ));
    let unknown_kid = harness_with(config(), KeyRing::new("k2", &KEY).unwrap()).await;
    assert!(matches!(
        unknown_kid
            .svc
            .authenticate(&pair.access_token, &meta())
            .await,
        Err(AuthError::InvalidToken)
    ));
    let mut t = pair.access_token.clone().into_bytes();
    let i = t.len() / 2;
    t[i] = if t[i] == b'x' { b'y' } else { b'x' };
    let t = String::from_utf8(t).unwrap();
    assert!(matches!(
        h.svc.authenticate(&t, &meta()).await,
        Err(AuthError::InvalidToken)
    ));
    assert!(matches!(
        h.svc.authenticate("garbage", &meta()).await,
        Err(AuthError::InvalidToken)
    ));
    // The refresh token is not an access token.
    assert!(matches!(
        h.svc.authenticate(&pair.refresh_token, &meta()).await,
        Err(AuthError::InvalidToken)
    ));
}

#[tokio::test]
async fn tokens_of_the_previous_key_survive_a_rotation() {
    let old_key = [1u8; 32];
    let new_key = [2u8; 32];
    let h = harness_with(config(), KeyRing::from_key(&old_key).unwrap()).await;
    h.register("ada@example.com").await;
    let pair = h.login("ada@example.com").await;
    // A second instance already rotated: new current key, old one kept for verification.
    let ring = KeyRing::from_key(&new_key)
        .unwrap()
        .with_previous(KeyRing::derive_kid(&old_key).unwrap(), &old_key)
        .unwrap();
    let rotated = AuthService::new(h.fakes.repos(), h.clock.clone(), ring, config())
        .await
        .unwrap();
    let claims = rotated
        .authenticate(&pair.access_token, &meta())
        .await
        .unwrap();
    let fresh = rotated
        .login("ada@example.com", PW.into(), &meta())
        .await
        .unwrap();
    assert!(
        rotated
            .authenticate(&fresh.access_token, &meta())
            .await
            .is_ok()
    );
    // The old instance does not know the new key.
    assert!(
        h.svc
            .authenticate(&fresh.access_token, &meta())
            .await
            .is_err()
    );
    assert!(!claims.is_admin());
}

#[tokio::test]
async fn rejected_token_audits_are_rate_limited_per_second() {
    let h = harness_with(
        AuthConfig {
            rejected_audit_per_sec: 3,
            ..config()
        },
        KeyRing::new("k1", &KEY).unwrap(),
    )
    .await;
    for _ in 0..10 {
        let _ = h.svc.authenticate("v4.local.bogus", &meta()).await;
    }
    assert_eq!(h.fakes.audit.count(AuditKind::TokenRejected), 3);
    assert_eq!(h.svc.dropped_rejection_audits(), 7);
    h.clock.advance(TimeDelta::seconds(1));
    let _ = h.svc.authenticate("v4.local.bogus", &meta()).await;
    assert_eq!(h.fakes.audit.count(AuditKind::TokenRejected), 4);
}

// ------------------------------------------------------------------------- refresh

#[tokio::test]
async fn refresh_rotates_the_token_and_audits() {
    let h = harness().await;
    let user = h.register("ada@example.com").await;
    let first = h.login("ada@example.com").await;
    h.clock.advance(TimeDelta::seconds(30));
    let second = h.svc.refresh(&first.refresh_token, &meta()).await.unwrap();
    assert_ne!(second.refresh_token, first.refresh_token);
    assert_ne!(second.access_token, first.access_token);
    let claims = h
        .svc
        .authenticate(&second.access_token, &meta())
        .await
        .unwrap();
    assert_eq!(claims.user_id, user.id);
    let recs = h.fakes.refresh_tokens.records();
    assert_eq!(recs.len(), 2);
    assert_eq!(recs[0].family_id, recs[1].family_id);
    assert!(recs[0].used_at.is_some());
    assert_eq!(h.fakes.audit.count(AuditKind::TokenRefresh), 1);
    // The new one rotates again.
    assert!(h.svc.refresh(&second.refresh_token, &meta()).await.is_ok());
}

#[tokio::test]
async fn reusing_a_rotated_refresh_token_kills_the_whole_family() {
    let h = harness().await;
    let user = h.register("ada@example.com").await;
    let first = h.login("ada@example.com").await;
    let second = h.svc.refresh(&first.refresh_token, &meta()).await.unwrap();
    // Someone replays the first token.
    let e = h
        .svc
        .refresh(&first.refresh_token, &meta())
        .await
        .unwrap_err();
    assert!(matches!(e, AuthError::InvalidToken));
    assert_eq!(e.kind(), ErrorKind::Unauthorized);
    let reuse = h.fakes.audit.of_kind(AuditKind::TokenReuseDetected);
    assert_eq!(reuse.len(), 1);
    assert_eq!(reuse[0].user_id, Some(user.id));
    // The legitimate newest token of the family is dead too.
    assert!(matches!(
        h.svc.refresh(&second.refresh_token, &meta()).await,
        Err(AuthError::InvalidToken)
    ));
    let family = h.fakes.refresh_tokens.records()[0].family_id;
    assert_eq!(
        h.fakes.refresh_tokens.live_in_family(family, h.clock_now()),
        0
    );
    // Other sessions of the user are untouched.
    let other = h.login("ada@example.com").await;
    assert!(h.svc.refresh(&other.refresh_token, &meta()).await.is_ok());
}

#[tokio::test]
async fn expired_unknown_and_malformed_refresh_tokens_are_invalid_token() {
    let h = harness().await;
    h.register("ada@example.com").await;
    let pair = h.login("ada@example.com").await;
    let unknown = crate::RefreshSecret::generate().token;
    for t in [unknown.as_str(), "not-a-token", ""] {
        let e = h.svc.refresh(t, &meta()).await.unwrap_err();
        assert_eq!(e.code(), "invalid_token");
    }
    h.clock.advance(TimeDelta::days(15));
    assert!(matches!(
        h.svc.refresh(&pair.refresh_token, &meta()).await,
        Err(AuthError::InvalidToken)
    ));
}

#[tokio::test]
async fn refresh_for_a_disabled_user_fails_and_revokes_the_family() {
    let h = harness().await;
    let user = h.register("ada@example.com").await;
    let pair = h.login("ada@example.com").await;
    h.fakes.users.set_disabled(user.id, true);
    assert!(matches!(
        h.svc.refresh(&pair.refresh_token, &meta()).await,
        Err(AuthError::InvalidToken)
    ));
    let family = h.fakes.refresh_tokens.records()[0].family_id;
    assert_eq!(
        h.fakes.refresh_tokens.live_in_family(family, h.clock_now()),
        0
    );
}

// ------------------------------------------------------------------------- logout

#[tokio::test]
async fn logout_revokes_the_access_and_the_refresh_token() {
    let h = harness().await;
    let user = h.register("ada@example.com").await;
    let pair = h.login("ada@example.com").await;
    let claims = h
        .svc
        .authenticate(&pair.access_token, &meta())
        .await
        .unwrap();
    h.svc
        .logout(&claims, Some(pair.refresh_token.clone()), &meta())
        .await
        .unwrap();
    assert!(matches!(
        h.svc.authenticate(&pair.access_token, &meta()).await,
        Err(AuthError::InvalidToken)
    ));
    assert!(matches!(
        h.svc.refresh(&pair.refresh_token, &meta()).await,
        Err(AuthError::InvalidToken)
    ));
    // The jti and the refresh family.
    assert_eq!(h.fakes.revocations.len(), 2);
    let logout = h.fakes.audit.of_kind(AuditKind::Logout);
    assert_eq!(logout.len(), 1);
    assert_eq!(logout[0].user_id, Some(user.id));
    assert_eq!(logout[0].reason, None);
    // Persisted: a new instance on the same storage rejects it too.
    let restarted = AuthService::new(
        h.fakes.repos(),
        h.clock.clone(),
        KeyRing::new("k1", &KEY).unwrap(),
        config(),
    )
    .await
    .unwrap();
    assert!(
        restarted
            .authenticate(&pair.access_token, &meta())
            .await
            .is_err()
    );
    restarted
        .handle_listener_event(&ListenerEvent::Connected)
        .await;
    assert!(
        restarted
            .authenticate(&pair.access_token, &meta())
            .await
            .is_err()
    );
}

#[tokio::test]
async fn logout_does_not_revoke_another_users_refresh_token() {
    let h = harness().await;
    h.register("ada@example.com").await;
    h.register("bob@example.com").await;
    let ada = h.login("ada@example.com").await;
    let bob = h.login("bob@example.com").await;
    let ada_claims = h
        .svc
        .authenticate(&ada.access_token, &meta())
        .await
        .unwrap();
    h.svc
        .logout(&ada_claims, Some(bob.refresh_token.clone()), &meta())
        .await
        .unwrap();
    assert!(h.svc.refresh(&bob.refresh_token, &meta()).await.is_ok());
    let logout = h.fakes.audit.of_kind(AuditKind::Logout);
    assert_eq!(
        logout[0].reason.as_deref(),
        Some("refresh_token_not_revoked")
    );
}

// ------------------------------------------------------------------------- revocation cache

#[tokio::test]
async fn synced_cache_answers_a_miss_without_asking_the_database() {
    let h = harness().await;
    h.register("ada@example.com").await;
    let pair = h.login("ada@example.com").await;
    h.sync_cache().await;
    for _ in 0..3 {
        h.svc
            .authenticate(&pair.access_token, &meta())
            .await
            .unwrap();
    }
    assert_eq!(h.fakes.revocations.is_revoked_calls(), 0);
}

#[tokio::test]
async fn unsynced_cache_asks_the_database_on_a_miss() {
    let h = harness().await;
    h.register("ada@example.com").await;
    let pair = h.login("ada@example.com").await;
    h.svc
        .authenticate(&pair.access_token, &meta())
        .await
        .unwrap();
    // The jti and the refresh family.
    assert_eq!(h.fakes.revocations.is_revoked_calls(), 2);
    // A revocation the cache never heard of is still honoured.
    let claims = h
        .svc
        .authenticate(&pair.access_token, &meta())
        .await
        .unwrap();
    h.fakes.revocations.insert_silently(
        RevokedToken {
            jti: claims.jti,
            expires_at: claims.expires_at,
        },
        claims.user_id,
    );
    assert!(
        h.svc
            .authenticate(&pair.access_token, &meta())
            .await
            .is_err()
    );
    // ... and now it is cached: no further database question.
    let calls = h.fakes.revocations.is_revoked_calls();
    assert!(
        h.svc
            .authenticate(&pair.access_token, &meta())
            .await
            .is_err()
    );
    assert_eq!(h.fakes.revocations.is_revoked_calls(), calls);
}

#[tokio::test]
async fn disconnect_makes_the_cache_ask_the_database_again() {
    let h = harness().await;
    h.register("ada@example.com").await;
    let pair = h.login("ada@example.com").await;
    h.sync_cache().await;
    h.svc
        .handle_listener_event(&ListenerEvent::Disconnected)
        .await;
    assert!(!h.svc.revocation_cache().is_synced());
    // Revoked while we were deaf: the notification is lost, the database knows.
    let claims = h
        .svc
        .authenticate(&pair.access_token, &meta())
        .await
        .unwrap();
    h.fakes.revocations.insert_silently(
        RevokedToken {
            jti: claims.jti,
            expires_at: claims.expires_at,
        },
        claims.user_id,
    );
    assert!(
        h.svc
            .authenticate(&pair.access_token, &meta())
            .await
            .is_err()
    );
    // Reconnect warms from the table.
    h.sync_cache().await;
    let calls = h.fakes.revocations.is_revoked_calls();
    assert!(
        h.svc
            .authenticate(&pair.access_token, &meta())
            .await
            .is_err()
    );
    assert_eq!(h.fakes.revocations.is_revoked_calls(), calls);
}

#[tokio::test]
async fn overflowed_cache_asks_the_database_on_a_miss() {
    let h = harness_with(
        AuthConfig {
            revocation_cache_capacity: 1,
            ..config()
        },
        KeyRing::new("k1", &KEY).unwrap(),
    )
    .await;
    h.register("ada@example.com").await;
    h.sync_cache().await;
    let a = h.login("ada@example.com").await;
    let b = h.login("ada@example.com").await;
    let live = h.login("ada@example.com").await;
    for p in [&a, &b] {
        let c = h.svc.authenticate(&p.access_token, &meta()).await.unwrap();
        h.svc.logout(&c, None, &meta()).await.unwrap();
    }
    assert!(h.svc.revocation_cache().is_overflowed());
    let calls = h.fakes.revocations.is_revoked_calls();
    // Both revoked tokens stay rejected, whichever one the cache dropped.
    assert!(h.svc.authenticate(&a.access_token, &meta()).await.is_err());
    assert!(h.svc.authenticate(&b.access_token, &meta()).await.is_err());
    assert!(
        h.svc
            .authenticate(&live.access_token, &meta())
            .await
            .is_ok()
    );
    assert!(h.fakes.revocations.is_revoked_calls() > calls);
}

#[tokio::test]
async fn notification_marks_a_token_revoked_on_another_instance() {
    let h = harness().await;
    h.register("ada@example.com").await;
    let pair = h.login("ada@example.com").await;
    // A second instance on the same storage, listening.
    let other = AuthService::new(
        h.fakes.repos(),
        h.clock.clone(),
        KeyRing::new("k1", &KEY).unwrap(),
        config(),
    )
    .await
    .unwrap();
    let mut rx = h.fakes.notifier.subscribe();
    other.handle_listener_event(&ListenerEvent::Connected).await;
    assert!(
        other
            .authenticate(&pair.access_token, &meta())
            .await
            .is_ok()
    );

    let claims = h
        .svc
        .authenticate(&pair.access_token, &meta())
        .await
        .unwrap();
    h.svc.logout(&claims, None, &meta()).await.unwrap();
    let ev = tokio::time::timeout(Duration::from_secs(5), rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        ev,
        ListenerEvent::Notification {
            channel: REVOCATION_CHANNEL.into(),
            payload: claims.jti.to_string(),
        }
    );
    other.handle_listener_event(&ev).await;
    let calls = h.fakes.revocations.is_revoked_calls();
    assert!(matches!(
        other.authenticate(&pair.access_token, &meta()).await,
        Err(AuthError::InvalidToken)
    ));
    assert_eq!(
        h.fakes.revocations.is_revoked_calls(),
        calls,
        "answered from the cache"
    );
}

#[tokio::test]
async fn revocation_check_fails_closed_when_the_database_is_down() {
    let h = harness().await;
    h.register("ada@example.com").await;
    let pair = h.login("ada@example.com").await;
    h.fakes.revocations.set_down(true);
    let e = h
        .svc
        .authenticate(&pair.access_token, &meta())
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unavailable);
    assert_eq!(e.public_message(), "service temporarily unavailable");
    // Warm-up fails too: the cache stays unsynced rather than trusting misses.
    h.svc.handle_listener_event(&ListenerEvent::Connected).await;
    assert!(!h.svc.revocation_cache().is_synced());
}

#[tokio::test]
async fn malformed_or_foreign_notifications_are_ignored() {
    let h = harness().await;
    h.sync_cache().await;
    h.svc
        .handle_listener_event(&ListenerEvent::Notification {
            channel: REVOCATION_CHANNEL.into(),
            payload: "not-a-uuid".into(),
        })
        .await;
    h.svc
        .handle_listener_event(&ListenerEvent::Notification {
            channel: "other".into(),
            payload: Uuid::new_v4().to_string(),
        })
        .await;
    assert!(h.svc.revocation_cache().is_empty());
    assert!(h.svc.revocation_cache().is_authoritative());
}

#[tokio::test]
async fn me_serves_cached_rows_only_until_a_change_is_announced() {
    let h = harness().await;
    let user = h.register("ada@example.com").await;
    let pair = h.login("ada@example.com").await;
    let claims = h
        .svc
        .authenticate(&pair.access_token, &meta())
        .await
        .unwrap();
    // Not synced yet: nothing is cached, every call reads the repository.
    h.svc.me(&claims).await.unwrap();
    assert!(h.svc.user_cache().is_empty());
    h.sync_cache().await;
    h.svc.me(&claims).await.unwrap();
    assert_eq!(h.svc.user_cache().len(), 1);
    // A change nobody announced is not seen while the entry is fresh ...
    h.fakes.users.set_disabled(user.id, true);
    assert!(h.svc.me(&claims).await.is_ok());
    // ... and is seen as soon as the trigger's notification arrives.
    h.svc
        .handle_listener_event(&ListenerEvent::Notification {
            channel: USER_CHANGED_CHANNEL.into(),
            payload: user.id.to_string(),
        })
        .await;
    assert_eq!(
        h.svc.me(&claims).await.unwrap_err().kind(),
        ErrorKind::Unauthorized
    );
    // Losing the listener empties the cache and stops using it.
    h.fakes.users.set_disabled(user.id, false);
    h.svc.user_cache().invalidate(user.id);
    h.svc.me(&claims).await.unwrap();
    assert_eq!(h.svc.user_cache().len(), 1);
    h.svc
        .handle_listener_event(&ListenerEvent::Disconnected)
        .await;
    assert!(h.svc.user_cache().is_empty());
    h.fakes.users.set_disabled(user.id, true);
    assert!(h.svc.me(&claims).await.is_err());
}

#[tokio::test]
async fn a_cached_verification_still_expires_with_the_clock() {
    let h = harness().await;
    h.register("ada@example.com").await;
    let pair = h.login("ada@example.com").await;
    h.svc
        .authenticate(&pair.access_token, &meta())
        .await
        .unwrap();
    h.svc
        .authenticate(&pair.access_token, &meta())
        .await
        .unwrap();
    h.clock.advance(TimeDelta::seconds(901));
    assert_eq!(
        h.svc
            .authenticate(&pair.access_token, &meta())
            .await
            .unwrap_err()
            .kind(),
        ErrorKind::Unauthorized
    );
}

// ------------------------------------------------------------------------- admin, audit, purge

#[tokio::test]
async fn ensure_admin_creates_the_admin_but_never_promotes_an_existing_account() {
    let h = harness().await;
    let admin = h
        .svc
        .ensure_admin("root@example.com", PW.into())
        .await
        .unwrap();
    assert_eq!(admin.role, Role::Admin);
    let pair = h.login("root@example.com").await;
    assert!(
        h.svc
            .authenticate(&pair.access_token, &meta())
            .await
            .unwrap()
            .is_admin()
    );
    // Again (a restart): the admin is left as it is.
    let again = h
        .svc
        .ensure_admin("ROOT@example.com", "another long password".into())
        .await
        .unwrap();
    assert_eq!(again.id, admin.id);
    h.login("root@example.com").await;
    // Someone registered the admin email first (a look-alike spelling too): refused, not
    // promoted, and that account keeps being a plain user.
    let squatter = h.register("ada@example.com").await;
    let e = h
        .svc
        .ensure_admin("ＡＤＡ@example.com", "another long password".into())
        .await
        .unwrap_err();
    assert!(matches!(e, AuthError::AdminEmailTaken(ref m) if m == "ada@example.com"));
    assert!(e.to_string().contains("GATHERING__AUTH__ADMIN_EMAIL"));
    let pair = h.login("ada@example.com").await;
    let c = h
        .svc
        .authenticate(&pair.access_token, &meta())
        .await
        .unwrap();
    assert_eq!(c.user_id, squatter.id);
    assert!(!c.is_admin());
    assert!(matches!(
        h.svc.ensure_admin("root@example.com", "short".into()).await,
        Err(AuthError::Validation(_))
    ));
}

#[tokio::test]
async fn me_refuses_disabled_users() {
    let h = harness().await;
    let user = h.register("ada@example.com").await;
    let pair = h.login("ada@example.com").await;
    let claims = h
        .svc
        .authenticate(&pair.access_token, &meta())
        .await
        .unwrap();
    assert_eq!(h.svc.me(&claims).await.unwrap().id, user.id);
    h.fakes.users.set_disabled(user.id, true);
    assert!(matches!(
        h.svc.me(&claims).await,
        Err(AuthError::InvalidToken)
    ));
}

#[tokio::test]
async fn audit_events_are_listed_newest_first_with_filters() {
    let h = harness().await;
    let user = h.register("ada@example.com").await;
    h.login("ada@example.com").await;
    let _ = h
        .svc
        .login("ada@example.com", "wrong wrong wrong".into(), &meta())
        .await;
    let all = h
        .svc
        .audit_events(AuditFilter::default(), PageRequest::new(Some(2), None))
        .await
        .unwrap();
    assert_eq!(all.items.len(), 2);
    assert_eq!(all.items[0].event, AuditKind::LoginFailure);
    assert!(all.next_cursor.is_some());
    let failures = h
        .svc
        .audit_events(
            AuditFilter {
                event: Some(AuditKind::LoginFailure),
                user_id: Some(user.id),
            },
            PageRequest::default(),
        )
        .await
        .unwrap();
    assert_eq!(failures.items.len(), 1);
}

#[tokio::test]
async fn purge_removes_expired_revocations_and_refresh_tokens() {
    let h = harness().await;
    h.register("ada@example.com").await;
    let pair = h.login("ada@example.com").await;
    let claims = h
        .svc
        .authenticate(&pair.access_token, &meta())
        .await
        .unwrap();
    h.svc.logout(&claims, None, &meta()).await.unwrap();
    let report = h.svc.purge_expired().await.unwrap();
    assert_eq!(report.revocations, 0);
    h.clock.advance(TimeDelta::days(15));
    let report = h.svc.purge_expired().await.unwrap();
    // The token's jti and its refresh family.
    assert_eq!(report.revocations, 2);
    assert_eq!(report.refresh_tokens, 1);
    assert_eq!(report.cache_evicted, 2);
    assert!(h.fakes.revocations.is_empty());
}

#[tokio::test]
async fn every_auth_event_kind_lands_in_the_audit_trail() {
    let h = harness_with(
        AuthConfig {
            max_failed_logins: 1,
            ..config()
        },
        KeyRing::new("k1", &KEY).unwrap(),
    )
    .await;
    h.register("ada@example.com").await;
    let p1 = h.login("ada@example.com").await;
    let p2 = h.svc.refresh(&p1.refresh_token, &meta()).await.unwrap();
    let _ = h.svc.authenticate("v4.local.nope", &meta()).await;
    let c = h.svc.authenticate(&p2.access_token, &meta()).await.unwrap();
    h.svc.logout(&c, None, &meta()).await.unwrap();
    let _ = h.svc.refresh(&p1.refresh_token, &meta()).await;
    let _ = h
        .svc
        .login("ada@example.com", "bad bad bad bad".into(), &meta())
        .await;
    let _ = h.svc.login("ada@example.com", PW.into(), &meta()).await;
    for kind in AuditKind::ALL {
        let rows = h.fakes.audit.of_kind(kind);
        assert!(!rows.is_empty(), "no {} row", kind.as_str());
        assert!(
            rows.iter()
                .all(|r| r.request_id.as_deref() == Some("req-1"))
        );
    }
}

#[tokio::test]
async fn purge_resyncs_an_overflowed_cache_once_it_fits_again() {
    let h = harness_with(
        AuthConfig {
            // Each logout revokes two ids (jti and family).
            revocation_cache_capacity: 2,
            ..config()
        },
        KeyRing::new("k1", &KEY).unwrap(),
    )
    .await;
    h.register("ada@example.com").await;
    h.sync_cache().await;
    for _ in 0..2 {
        let p = h.login("ada@example.com").await;
        let c = h.svc.authenticate(&p.access_token, &meta()).await.unwrap();
        h.svc.logout(&c, None, &meta()).await.unwrap();
    }
    assert!(h.svc.revocation_cache().is_overflowed());
    // Still four active revocations: a resync cannot hold them, trust stays off.
    h.svc.purge_expired().await.unwrap();
    assert!(!h.svc.revocation_cache().is_authoritative());
    // All expire (family entries after ttl + skew); a fresh token gets revoked; the purge
    // resyncs and it fits.
    h.clock.advance(TimeDelta::seconds(961));
    let p = h.login("ada@example.com").await;
    let c = h.svc.authenticate(&p.access_token, &meta()).await.unwrap();
    h.svc.logout(&c, None, &meta()).await.unwrap();
    h.svc.purge_expired().await.unwrap();
    assert!(h.svc.revocation_cache().is_authoritative());
    assert!(h.svc.authenticate(&p.access_token, &meta()).await.is_err());
}

#[tokio::test]
async fn lockout_audits_are_bounded_per_second() {
    let h = harness_with(
        AuthConfig {
            max_failed_logins: 1,
            rejected_audit_per_sec: 2,
            ..config()
        },
        KeyRing::new("k1", &KEY).unwrap(),
    )
    .await;
    let _ = h.svc.login("ghost@example.com", PW.into(), &meta()).await;
    for _ in 0..10 {
        let e = h
            .svc
            .login("ghost@example.com", PW.into(), &meta())
            .await
            .unwrap_err();
        assert!(matches!(e, AuthError::LockedOut { .. }));
    }
    assert_eq!(h.fakes.audit.count(AuditKind::Lockout), 2);
}

// ------------------------------------------------------------------------- hardening

fn find_by_id_calls(h: &H) -> u64 {
    h.fakes
        .users
        .find_by_id_calls
        .load(std::sync::atomic::Ordering::Relaxed)
}

#[tokio::test]
async fn a_disabled_user_or_a_demoted_admin_is_seen_on_the_next_request() {
    let h = harness().await;
    h.sync_cache().await;
    let admin = h
        .svc
        .ensure_admin("root@example.com", PW.into())
        .await
        .unwrap();
    let pair = h.login("root@example.com").await;
    assert!(
        h.svc
            .authenticate(&pair.access_token, &meta())
            .await
            .unwrap()
            .is_admin()
    );
    // A cache hit costs no user read.
    let reads = find_by_id_calls(&h);
    for _ in 0..3 {
        h.svc
            .authenticate(&pair.access_token, &meta())
            .await
            .unwrap();
    }
    assert_eq!(find_by_id_calls(&h), reads);
    // Demoted (the trigger announces the change): the live token loses admin at once.
    h.fakes.users.set_role(admin.id, Role::User);
    h.svc
        .handle_listener_event(&ListenerEvent::Notification {
            channel: USER_CHANGED_CHANNEL.into(),
            payload: admin.id.to_string(),
        })
        .await;
    let c = h
        .svc
        .authenticate(&pair.access_token, &meta())
        .await
        .unwrap();
    assert_eq!(c.role, Role::User);
    // Disabled: 401 at once.
    h.fakes.users.set_disabled(admin.id, true);
    h.svc
        .handle_listener_event(&ListenerEvent::Notification {
            channel: USER_CHANGED_CHANNEL.into(),
            payload: admin.id.to_string(),
        })
        .await;
    assert!(matches!(
        h.svc.authenticate(&pair.access_token, &meta()).await,
        Err(AuthError::InvalidToken)
    ));
    assert!(
        h.fakes
            .audit
            .of_kind(AuditKind::TokenRejected)
            .iter()
            .any(|e| e.reason.as_deref() == Some("user_inactive"))
    );
}

#[tokio::test]
async fn while_the_listener_is_down_the_user_row_is_read_every_time() {
    let h = harness().await;
    h.register("ada@example.com").await;
    let pair = h.login("ada@example.com").await;
    let reads = find_by_id_calls(&h);
    for _ in 0..2 {
        h.svc
            .authenticate(&pair.access_token, &meta())
            .await
            .unwrap();
    }
    assert_eq!(find_by_id_calls(&h), reads + 2);
}

#[tokio::test]
async fn logout_without_a_refresh_token_still_kills_the_refresh_family() {
    let h = harness().await;
    h.register("ada@example.com").await;
    let pair = h.login("ada@example.com").await;
    // A second access token of the same family (after a refresh) and another session.
    let p2 = h.svc.refresh(&pair.refresh_token, &meta()).await.unwrap();
    let other = h.login("ada@example.com").await;
    let c = h.svc.authenticate(&p2.access_token, &meta()).await.unwrap();
    assert!(c.family_id.is_some());
    let mut rx = h.svc.subscribe_revocations();
    h.svc.logout(&c, None, &meta()).await.unwrap();
    assert!(matches!(
        h.svc.refresh(&p2.refresh_token, &meta()).await,
        Err(AuthError::InvalidToken)
    ));
    for t in [&pair.access_token, &p2.access_token] {
        assert!(h.svc.authenticate(t, &meta()).await.is_err());
    }
    // The other session is untouched.
    h.svc
        .authenticate(&other.access_token, &meta())
        .await
        .unwrap();
    h.svc.refresh(&other.refresh_token, &meta()).await.unwrap();
    // Live sessions hear of the jti and the family.
    let mut heard = Vec::new();
    while let Ok(id) = rx.try_recv() {
        heard.push(id);
    }
    assert!(heard.contains(&c.jti));
    assert!(heard.contains(&c.family_id.unwrap()));
}

#[tokio::test]
async fn refresh_reuse_revokes_the_access_tokens_of_the_family_on_every_instance() {
    let h = harness().await;
    h.register("ada@example.com").await;
    let p1 = h.login("ada@example.com").await;
    let p2 = h.svc.refresh(&p1.refresh_token, &meta()).await.unwrap();
    // Another instance on the same storage, listening.
    let other = Arc::new(
        AuthService::new(
            h.fakes.repos(),
            h.clock.clone(),
            KeyRing::new("k1", &KEY).unwrap(),
            config(),
        )
        .await
        .unwrap(),
    );
    other.handle_listener_event(&ListenerEvent::Connected).await;
    other.authenticate(&p2.access_token, &meta()).await.unwrap();
    let mut notes = h.fakes.notifier.subscribe();
    // The stolen first refresh token is replayed.
    assert!(h.svc.refresh(&p1.refresh_token, &meta()).await.is_err());
    assert!(h.svc.authenticate(&p2.access_token, &meta()).await.is_err());
    while let Ok(ev) = notes.try_recv() {
        other.handle_listener_event(&ev).await;
    }
    let calls = h.fakes.revocations.is_revoked_calls();
    assert!(other.authenticate(&p2.access_token, &meta()).await.is_err());
    assert!(other.authenticate(&p1.access_token, &meta()).await.is_err());
    assert_eq!(
        h.fakes.revocations.is_revoked_calls(),
        calls,
        "known from the notification"
    );
}

#[tokio::test]
async fn a_token_issued_in_the_future_is_refused() {
    let h = harness().await;
    h.register("ada@example.com").await;
    h.clock.advance(TimeDelta::minutes(10));
    let pair = h.login("ada@example.com").await;
    h.clock.advance(TimeDelta::minutes(-10));
    assert!(matches!(
        h.svc.authenticate(&pair.access_token, &meta()).await,
        Err(AuthError::InvalidToken)
    ));
}

#[tokio::test]
async fn look_alike_emails_are_one_account_at_register_and_login() {
    let h = harness().await;
    h.register("ada@bücher.de").await;
    for twin in ["ADA@BÜCHER.DE", "ａｄａ@bücher.de", "ada@xn--bcher-kva.de"] {
        assert!(matches!(
            h.svc
                .register(twin, PW.into(), "Twin".into(), &meta())
                .await,
            Err(AuthError::EmailTaken)
        ));
        h.login(twin).await;
    }
    assert_eq!(h.fakes.users.len(), 1);
}

#[tokio::test]
async fn a_malformed_login_email_is_audited_and_counted() {
    let h = harness().await;
    let nul = "ada\0@example.com";
    for _ in 0..5 {
        assert!(matches!(
            h.svc.login(nul, "bad password 123".into(), &meta()).await,
            Err(AuthError::InvalidCredentials)
        ));
    }
    let failures = h.fakes.audit.of_kind(AuditKind::LoginFailure);
    assert_eq!(failures.len(), 5);
    assert!(failures.iter().all(|e| {
        e.reason.as_deref() == Some("malformed_email")
            && e.email.as_deref().is_some_and(|m| !m.contains('\0'))
    }));
    assert!(matches!(
        h.svc.login(nul, "bad password 123".into(), &meta()).await,
        Err(AuthError::LockedOut { .. })
    ));
}
