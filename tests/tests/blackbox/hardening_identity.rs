//! Black-box: identity hardening — admin bootstrap, the data directory out of reach of projects,
//! user state checked on every request, logout and refresh reuse revoking whole families, live
//! WebSockets closed on revocation, token lifetime, email normalisation, the progressive login
//! delay and the audit of malformed logins.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use gathering_auth::{AccessTokens, KeyRing};
use gathering_domain::auth::Role;
use gathering_server::{Application, Settings};
use gathering_tests::ws::{Frame, Ws};
use gathering_tests::{
    ADMIN_PASSWORD, PASSWORD, TestApp, assert_error, base_env, spawn_app, spawn_app_with,
};
use reqwest::StatusCode;
use serde_json::{Value, json};
use std::future::Future;
use std::time::Duration;
use tokio::time::Instant;

/// Polls `check` until it holds, for at most 10 s.
async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if check().await {
            return;
        }
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

async fn me(app: &TestApp, token: &str) -> Value {
    let r = app.get("/auth/me", Some(token)).await;
    assert_eq!(r.status(), StatusCode::OK);
    r.json().await.unwrap()
}

async fn status_of(app: &TestApp, path: &str, token: &str) -> StatusCode {
    app.get(path, Some(token)).await.status()
}

fn access(pair: &Value) -> String {
    pair["access_token"].as_str().unwrap().to_owned()
}

fn refresh(pair: &Value) -> String {
    pair["refresh_token"].as_str().unwrap().to_owned()
}

async fn logout_raw(app: &TestApp, token: &str, body: Option<&str>) -> reqwest::Response {
    let mut r = app.client.post(app.url("/auth/logout")).bearer_auth(token);
    if let Some(b) = body {
        r = r
            .header("content-type", "application/json")
            .body(b.to_owned());
    }
    r.send().await.unwrap()
}

// ------------------------------------------------------------------------- 1. admin bootstrap

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_up_refuses_to_promote_an_account_registered_with_the_admin_email_first() {
    let app = spawn_app().await;
    // Someone registers the address the operator is about to configure.
    let squatter_password = "attacker-chosen-password";
    assert_eq!(
        app.register("boss@example.com", squatter_password, "Boss")
            .await
            .status(),
        StatusCode::CREATED
    );
    // The operator configures it (in another spelling): start-up stops with a clear reason.
    let dir = tempfile::tempdir().unwrap();
    let mut vars = base_env(&app.db, dir.path());
    vars.retain(|(k, _)| k != "GATHERING__AUTH__ADMIN_EMAIL");
    vars.push((
        "GATHERING__AUTH__ADMIN_EMAIL".to_owned(),
        "Boss@EXAMPLE.com".to_owned(),
    ));
    let settings = Settings::from_sources(&vars).unwrap();
    let err = match Application::build(settings).await {
        Ok(_) => panic!("a server promoting the squatted account must not start"),
        Err(e) => format!("{e:#}"),
    };
    assert!(err.contains("GATHERING__AUTH__ADMIN_EMAIL"), "{err}");
    assert!(err.contains("non-admin"), "{err}");
    // The squatter's password gives a plain user, never an admin.
    let pair = app.login_ok("boss@example.com", squatter_password).await;
    let token = access(&pair);
    assert_eq!(me(&app, &token).await["role"], "user");
    assert_eq!(
        status_of(&app, "/admin/audit", &token).await,
        StatusCode::FORBIDDEN
    );
    // The configured admin password does not open the squatted account either.
    assert_eq!(
        app.login("boss@example.com", ADMIN_PASSWORD).await.status(),
        StatusCode::UNAUTHORIZED
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_project_root_containing_equal_to_or_inside_the_data_dir_is_refused_with_422() {
    let app = spawn_app().await;
    let admin = app.admin_token().await;
    let data = app.data_dir.path().canonicalize().unwrap();
    let keys = data.join("keys");
    std::fs::create_dir_all(&keys).unwrap();
    let parent = data.parent().unwrap().to_path_buf();
    for root in [data.clone(), keys, parent, "/".into()] {
        let r = app
            .post(
                "/projects",
                &json!({"name": "steal", "root_path": root}),
                Some(&admin),
            )
            .await;
        let body = assert_error(r, StatusCode::UNPROCESSABLE_ENTITY, "validation_failed").await;
        assert_eq!(body["error"]["details"][0]["field"], "/root_path", "{body}");
    }
    // A path that only resolves into the data dir (through `..`) is compared canonically.
    let sneaky = data.join("keys").join("..");
    let r = app
        .post(
            "/projects",
            &json!({"name": "steal", "root_path": sneaky}),
            Some(&admin),
        )
        .await;
    assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
    // Elsewhere is fine.
    let elsewhere = tempfile::tempdir().unwrap();
    let r = app
        .post(
            "/projects",
            &json!({"name": "fine", "root_path": elsewhere.path()}),
            Some(&admin),
        )
        .await;
    assert_eq!(r.status(), StatusCode::CREATED);
}

// ------------------------------------------------------------------------- 2. user state

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_demoted_admin_loses_admin_and_a_disabled_user_gets_401_at_once() {
    let app = spawn_app().await;
    let (token, _, email) = app.register_and_login().await;
    let db = app.db_client().await;
    // Promoted by an operator: the live token is admin now.
    db.execute(
        "UPDATE auth.users SET role = 'admin' WHERE email = $1",
        &[&email],
    )
    .await
    .unwrap();
    eventually("the promotion applies", || async {
        status_of(&app, "/admin/audit", &token).await == StatusCode::OK
    })
    .await;
    // Demoted: admin is gone for the same token at once.
    db.execute(
        "UPDATE auth.users SET role = 'user' WHERE email = $1",
        &[&email],
    )
    .await
    .unwrap();
    eventually("the demotion applies", || async {
        status_of(&app, "/admin/audit", &token).await == StatusCode::FORBIDDEN
    })
    .await;
    // Disabled: every authenticated route answers 401, not only /auth/me.
    assert_eq!(status_of(&app, "/projects", &token).await, StatusCode::OK);
    db.execute(
        "UPDATE auth.users SET disabled = true WHERE email = $1",
        &[&email],
    )
    .await
    .unwrap();
    eventually("the disabled user is refused", || async {
        status_of(&app, "/projects", &token).await == StatusCode::UNAUTHORIZED
    })
    .await;
    assert_error(
        app.get("/notifications", Some(&token)).await,
        StatusCode::UNAUTHORIZED,
        "invalid_token",
    )
    .await;
}

// ------------------------------------------------------------------------- 3. logout

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logout_without_a_body_kills_the_refresh_token_and_a_malformed_body_is_400() {
    let app = spawn_app().await;
    let (token, refresh_token, _) = app.register_and_login().await;
    // Malformed: refused, nothing revoked.
    for bad in ["{", "garbage"] {
        let r = logout_raw(&app, &token, Some(bad)).await;
        assert_error(r, StatusCode::BAD_REQUEST, "invalid_json").await;
    }
    for wrong_shape in ["null", "{\"refresh_token\": 5}"] {
        let r = logout_raw(&app, &token, Some(wrong_shape)).await;
        assert_error(r, StatusCode::UNPROCESSABLE_ENTITY, "validation_failed").await;
    }
    assert_eq!(status_of(&app, "/auth/me", &token).await, StatusCode::OK);
    // No body at all: the session's refresh family dies with the access token.
    assert_eq!(
        logout_raw(&app, &token, None).await.status(),
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        status_of(&app, "/auth/me", &token).await,
        StatusCode::UNAUTHORIZED
    );
    let r = app
        .post(
            "/auth/refresh",
            &json!({"refresh_token": refresh_token}),
            None,
        )
        .await;
    assert_error(r, StatusCode::UNAUTHORIZED, "invalid_token").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logout_revokes_every_access_token_of_the_session_but_not_other_sessions() {
    let app = spawn_app().await;
    let (first, refresh_token, email) = app.register_and_login().await;
    let rotated: Value = app
        .post(
            "/auth/refresh",
            &json!({"refresh_token": refresh_token}),
            None,
        )
        .await
        .json()
        .await
        .unwrap();
    let other = access(&app.login_ok(&email, PASSWORD).await);
    assert_eq!(
        logout_raw(&app, &access(&rotated), None).await.status(),
        StatusCode::NO_CONTENT
    );
    for t in [&first, &access(&rotated)] {
        assert_eq!(
            status_of(&app, "/auth/me", t).await,
            StatusCode::UNAUTHORIZED
        );
    }
    assert_eq!(status_of(&app, "/auth/me", &other).await, StatusCode::OK);
}

// ------------------------------------------------------------------------- 4. reuse

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refresh_reuse_revokes_the_access_tokens_issued_from_the_family() {
    let app = spawn_app().await;
    let (a1, r1, email) = app.register_and_login().await;
    let other = access(&app.login_ok(&email, PASSWORD).await);
    let p2: Value = app
        .post("/auth/refresh", &json!({"refresh_token": r1}), None)
        .await
        .json()
        .await
        .unwrap();
    let a2 = access(&p2);
    assert_eq!(status_of(&app, "/auth/me", &a2).await, StatusCode::OK);
    // The first refresh token is replayed (stolen): the whole family dies.
    let r = app
        .post("/auth/refresh", &json!({"refresh_token": r1}), None)
        .await;
    assert_error(r, StatusCode::UNAUTHORIZED, "invalid_token").await;
    for t in [&a1, &a2] {
        assert_eq!(
            status_of(&app, "/auth/me", t).await,
            StatusCode::UNAUTHORIZED
        );
    }
    let r = app
        .post(
            "/auth/refresh",
            &json!({"refresh_token": refresh(&p2)}),
            None,
        )
        .await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(status_of(&app, "/auth/me", &other).await, StatusCode::OK);
}

// ------------------------------------------------------------------------- 5. WebSockets

async fn notify(app: &TestApp, token: &str, title: &str) {
    let r = app
        .post(
            "/tools/send_notification/invoke",
            &json!({"params": {"title": title, "message": "m"}}),
            Some(token),
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);
}

fn expect_policy_close(frame: Frame) {
    match frame {
        Frame::Close(code) => assert_eq!(code, Some(1008)),
        Frame::Text(v) => panic!("expected a 1008 close frame, got {v}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_websocket_is_closed_with_1008_when_its_token_is_revoked_by_logout() {
    let app = spawn_app().await;
    let ada = app.user_token().await;
    let bob = app.user_token().await;
    let mut ada_ws = Ws::connect(&app, &format!("?access_token={ada}"))
        .await
        .unwrap();
    let mut bob_ws = Ws::connect(&app, &format!("?access_token={bob}"))
        .await
        .unwrap();
    notify(&app, &ada, "before").await;
    assert_eq!(ada_ws.next_json().await["data"]["title"], "before");

    assert_eq!(
        logout_raw(&app, &ada, None).await.status(),
        StatusCode::NO_CONTENT
    );
    expect_policy_close(ada_ws.next().await);
    // Bob's socket is untouched.
    notify(&app, &bob, "still here").await;
    assert_eq!(bob_ws.next_json().await["data"]["title"], "still here");
    bob_ws.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_websocket_is_closed_with_1008_when_its_user_is_disabled() {
    let app = spawn_app().await;
    let (token, _, email) = app.register_and_login().await;
    let mut ws = Ws::connect(&app, &format!("?access_token={token}"))
        .await
        .unwrap();
    notify(&app, &token, "hello").await;
    assert_eq!(ws.next_json().await["data"]["title"], "hello");
    app.db_client()
        .await
        .execute(
            "UPDATE auth.users SET disabled = true WHERE email = $1",
            &[&email],
        )
        .await
        .unwrap();
    expect_policy_close(ws.next().await);
}

// ------------------------------------------------------------------------- 6. lifetime

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_living_longer_than_the_configured_lifetime_is_refused() {
    let app = spawn_app().await;
    let admin = app.admin_token().await;
    let admin_id: uuid::Uuid = me(&app, &admin).await["id"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let key = hex::decode(&app.db.token_key).unwrap();
    let mint = |ttl_secs: u64| {
        AccessTokens::new(
            KeyRing::from_key(&key).unwrap(),
            Duration::from_secs(ttl_secs),
        )
        .unwrap()
        .issue(admin_id, Role::Admin, chrono::Utc::now())
        .unwrap()
        .token
    };
    // The key is right: a token of the configured lifetime is accepted ...
    assert_eq!(
        status_of(&app, "/auth/me", &mint(900)).await,
        StatusCode::OK
    );
    // ... one living a year is not.
    let r = app.get("/auth/me", Some(&mint(365 * 86_400))).await;
    assert_error(r, StatusCode::UNAUTHORIZED, "invalid_token").await;
}

// ------------------------------------------------------------------------- 7. emails

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn look_alike_emails_are_one_account_at_register_and_login() {
    let app = spawn_app().await;
    assert_eq!(
        app.register("ada@example.com", PASSWORD, "Ada")
            .await
            .status(),
        StatusCode::CREATED
    );
    for twin in [
        "ＡＤＡ@ｅｘａｍｐｌｅ.com",
        "Ada@EXAMPLE.COM",
        "ada@Example.com",
    ] {
        let r = app.register(twin, PASSWORD, "Twin").await;
        assert_error(r, StatusCode::CONFLICT, "email_taken").await;
        app.login_ok(twin, PASSWORD).await;
    }
    // An internationalised domain is stored in its ASCII (punycode) form.
    let r = app.register("Zoë@Bücher.de", PASSWORD, "Zoë").await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let user: Value = r.json().await.unwrap();
    assert_eq!(user["email"], "zoë@xn--bcher-kva.de");
    let r = app.register("zoë@xn--bcher-kva.de", PASSWORD, "Zoë").await;
    assert_error(r, StatusCode::CONFLICT, "email_taken").await;
    app.login_ok("ZOË@BÜCHER.DE", PASSWORD).await;
}

// ------------------------------------------------------------------------- 8. lockout

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_logins_earn_a_short_progressive_delay_instead_of_a_long_lock() {
    let app = spawn_app_with(&[
        ("GATHERING__AUTH__MAX_FAILED_LOGINS", "2"),
        ("GATHERING__AUTH__LOCKOUT_BASE_DELAY_SECS", "2"),
        ("GATHERING__AUTH__LOCKOUT_MAX_DELAY_SECS", "3"),
    ])
    .await;
    let (_, _, email) = app.register_and_login().await;
    for _ in 0..2 {
        assert_eq!(
            app.login(&email, "wrong-password-xyz").await.status(),
            StatusCode::UNAUTHORIZED
        );
    }
    // Right after: even the right password waits, told how long.
    let r = app.login(&email, PASSWORD).await;
    assert_eq!(r.headers()["retry-after"], "2");
    assert_error(r, StatusCode::TOO_MANY_REQUESTS, "rate_limited").await;
    // Seconds later (not 15 minutes), the owner gets in.
    let started = Instant::now();
    eventually("the delay passes", || async {
        app.login(&email, PASSWORD).await.status() == StatusCode::OK
    })
    .await;
    assert!(started.elapsed() < Duration::from_secs(5));
    // Further failures double the delay, up to the cap.
    assert_eq!(
        app.login(&email, "wrong-password-xyz").await.status(),
        StatusCode::UNAUTHORIZED
    );
    let r = app.login(&email, PASSWORD).await;
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(r.headers()["retry-after"], "3");
    // Both kinds of event are audited.
    let admin = app.admin_token().await;
    for kind in ["login_failure", "lockout"] {
        let audit: Value = app
            .get(&format!("/admin/audit?event={kind}"), Some(&admin))
            .await
            .json()
            .await
            .unwrap();
        assert!(
            audit["items"]
                .as_array()
                .unwrap()
                .iter()
                .any(|e| e["email"] == email.as_str()),
            "{kind}: {audit}"
        );
    }
}

// ------------------------------------------------------------------------- 9. malformed logins

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_login_emails_are_audited_and_count_toward_the_address_limit() {
    let app = spawn_app_with(&[("GATHERING__RATE_LIMIT__AUTH_PER_MINUTE", "5")]).await;
    let admin = app.admin_token().await; // 1 of 5
    // 2..=5: refused inputs, never a 500.
    for email in [
        "bad\u{1}@example.com",
        "no-at-sign",
        "a@b@c",
        "x\0@example.com",
    ] {
        let s = app.login(email, "whatever-password").await.status();
        assert!(
            s == StatusCode::UNAUTHORIZED || s == StatusCode::UNPROCESSABLE_ENTITY,
            "{email:?}: {s}"
        );
    }
    // They counted: the address is out of attempts.
    let r = app.login("ada@example.com", PASSWORD).await;
    assert_error(r, StatusCode::TOO_MANY_REQUESTS, "rate_limited").await;
    // And they are in the audit trail.
    let audit: Value = app
        .get("/admin/audit?event=login_failure", Some(&admin))
        .await
        .json()
        .await
        .unwrap();
    let malformed = audit["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["reason"] == "malformed_email")
        .count();
    assert!(malformed >= 3, "{audit}");
}
