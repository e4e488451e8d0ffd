//! Auth through real HTTP against real PostgreSQL.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use gathering_tests::*;
use reqwest::StatusCode;
use serde_json::{Value, json};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn register_login_and_me_round_trip() {
    let app = spawn_app().await;
    let r = app.register("Ada@Example.com", PASSWORD, "Ada").await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let user: Value = r.json().await.unwrap();
    assert_eq!(user["email"], "ada@example.com");
    assert_eq!(user["name"], "Ada");
    assert_eq!(user["role"], "user");
    assert!(user["id"].as_str().is_some() && user["created_at"].as_str().is_some());
    assert!(user.get("password_hash").is_none());

    let tokens = app.login_ok("ADA@example.com", PASSWORD).await;
    assert_eq!(tokens["token_type"], "Bearer");
    let expires_in = tokens["expires_in"].as_u64().unwrap();
    assert!((895..=900).contains(&expires_in), "{expires_in}");
    let access = tokens["access_token"].as_str().unwrap();
    assert!(access.starts_with("v4.local."), "PASETO v4.local");

    let me: Value = app
        .get("/auth/me", Some(access))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(me["id"], user["id"]);
    assert_eq!(me["email"], "ada@example.com");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_email_is_409_case_insensitively() {
    let app = spawn_app().await;
    assert_eq!(
        app.register("bob@example.com", PASSWORD, "Bob")
            .await
            .status(),
        StatusCode::CREATED
    );
    let r = app.register("BOB@example.COM", PASSWORD, "Bob 2").await;
    assert_error(r, StatusCode::CONFLICT, "email_taken").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn register_validates_email_and_password_with_details() {
    let app = spawn_app().await;
    let r = app.register("not-an-email", "short", "X").await;
    let body = assert_error(r, StatusCode::UNPROCESSABLE_ENTITY, "validation_failed").await;
    let fields: Vec<String> = body["error"]["details"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["field"].as_str().unwrap().to_owned())
        .collect();
    assert!(fields.iter().any(|f| f.contains("email")), "{body}");
    assert!(fields.iter().any(|f| f.contains("password")), "{body}");

    // A missing field is a 422 too, a syntax error a 400; neither is a 500.
    let r = app
        .post("/auth/register", &json!({"email": "a@b.co"}), None)
        .await;
    assert_error(r, StatusCode::UNPROCESSABLE_ENTITY, "validation_failed").await;
    let r = app
        .client
        .post(app.url("/auth/register"))
        .header("content-type", "application/json")
        .body("{\"email\": ")
        .send()
        .await
        .unwrap();
    assert_error(r, StatusCode::BAD_REQUEST, "invalid_json").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_login_failure_has_the_same_body() {
    let app = spawn_app().await;
    let (_, _, email) = app.register_and_login().await;
    let wrong_password = app.login(&email, "wrong-password-xyz").await;
    let unknown = app.login("nobody@example.com", PASSWORD).await;
    let malformed = app.login("not an email", PASSWORD).await;
    let mut bodies = Vec::new();
    for r in [wrong_password, unknown, malformed] {
        let mut b = assert_error(r, StatusCode::UNAUTHORIZED, "invalid_credentials").await;
        b["error"]["request_id"] = Value::Null;
        bodies.push(b);
    }
    assert_eq!(bodies[0], bodies[1]);
    assert_eq!(bodies[1], bodies[2]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refresh_rotates_and_reuse_revokes_the_family() {
    let app = spawn_app().await;
    let (_, refresh1, _) = app.register_and_login().await;

    let r = app
        .post("/auth/refresh", &json!({"refresh_token": refresh1}), None)
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    let pair2: Value = r.json().await.unwrap();
    let refresh2 = pair2["refresh_token"].as_str().unwrap().to_owned();
    assert_ne!(refresh2, refresh1);
    let access2 = pair2["access_token"].as_str().unwrap().to_owned();
    assert_eq!(app.get("/auth/me", Some(&access2)).await.status(), 200);

    // The old token is dead; presenting it again is reuse: the whole family dies.
    let r = app
        .post("/auth/refresh", &json!({"refresh_token": refresh1}), None)
        .await;
    assert_error(r, StatusCode::UNAUTHORIZED, "invalid_token").await;
    let r = app
        .post("/auth/refresh", &json!({"refresh_token": refresh2}), None)
        .await;
    assert_error(r, StatusCode::UNAUTHORIZED, "invalid_token").await;

    let admin = app.admin_token().await;
    let audit: Value = app
        .get("/admin/audit?event=token_reuse_detected", Some(&admin))
        .await
        .json()
        .await
        .unwrap();
    assert!(!audit["items"].as_array().unwrap().is_empty(), "{audit}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logout_revokes_access_and_refresh_tokens() {
    let app = spawn_app().await;
    let (access, refresh, _) = app.register_and_login().await;
    let r = app
        .post(
            "/auth/logout",
            &json!({"refresh_token": refresh}),
            Some(&access),
        )
        .await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    assert_error(
        app.get("/auth/me", Some(&access)).await,
        StatusCode::UNAUTHORIZED,
        "invalid_token",
    )
    .await;
    let r = app
        .post("/auth/refresh", &json!({"refresh_token": refresh}), None)
        .await;
    assert_error(r, StatusCode::UNAUTHORIZED, "invalid_token").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_and_revocations_survive_a_restart() {
    let app = spawn_app().await;
    let db = app.db.clone();
    let (access_revoked, _, email) = app.register_and_login().await;
    let tokens = app.login_ok(&email, PASSWORD).await;
    let access_kept = tokens["access_token"].as_str().unwrap().to_owned();
    assert_eq!(
        app.post("/auth/logout", &json!({}), Some(&access_revoked))
            .await
            .status(),
        StatusCode::NO_CONTENT
    );
    app.stop().await.unwrap();

    let app2 = spawn_app_on(&db, &[]).await;
    assert_error(
        app2.get("/auth/me", Some(&access_revoked)).await,
        StatusCode::UNAUTHORIZED,
        "invalid_token",
    )
    .await;
    assert_eq!(app2.get("/auth/me", Some(&access_kept)).await.status(), 200);
    app2.login_ok(&email, PASSWORD).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_logout_on_one_instance_is_honoured_by_another_within_a_second() {
    let a = spawn_app().await;
    let b = spawn_app_on(&a.db, &[]).await;
    let (access, _, _) = a.register_and_login().await;
    // B has accepted the token (and may have cached that fact).
    for _ in 0..3 {
        assert_eq!(b.get("/auth/me", Some(&access)).await.status(), 200);
    }
    assert_eq!(
        a.post("/auth/logout", &json!({}), Some(&access))
            .await
            .status(),
        StatusCode::NO_CONTENT
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(1);
    loop {
        let status = b.get("/auth/me", Some(&access)).await.status();
        if status == StatusCode::UNAUTHORIZED {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "instance B still accepts a token revoked on A after 1 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Polls `GET /auth/me` on `app` until `done` holds for the response, for at most a second.
async fn me_until(
    app: &TestApp,
    access: &str,
    what: &str,
    done: impl Fn(StatusCode, &Value) -> bool,
) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(1);
    loop {
        let r = app.get("/auth/me", Some(access)).await;
        let status = r.status();
        let body: Value = r.json().await.unwrap_or(Value::Null);
        if done(status, &body) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: still {status} {body} after 1 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_changed_in_the_database_is_seen_by_every_instance_within_a_second() {
    let a = spawn_app().await;
    let b = spawn_app_on(&a.db, &[]).await;
    let (access, _, email) = a.register_and_login().await;
    // Both instances have served (and may have cached) the user row.
    for app in [&a, &b] {
        for _ in 0..3 {
            let me: Value = app
                .get("/auth/me", Some(&access))
                .await
                .json()
                .await
                .unwrap();
            assert_eq!(me["name"], "Test User");
        }
    }
    // An operator changes the row behind the service's back.
    let db = a.db_client().await;
    db.execute(
        "UPDATE auth.users SET name = 'Renamed' WHERE email = $1",
        &[&email],
    )
    .await
    .unwrap();
    for app in [&a, &b] {
        me_until(app, &access, "rename", |s, body| {
            s == StatusCode::OK && body["name"] == "Renamed"
        })
        .await;
    }
    db.execute(
        "UPDATE auth.users SET disabled = true WHERE email = $1",
        &[&email],
    )
    .await
    .unwrap();
    for app in [&a, &b] {
        me_until(app, &access, "disable", |s, _| {
            s == StatusCode::UNAUTHORIZED
        })
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_access_token_is_rejected() {
    let app = spawn_app_with(&[("GATHERING__AUTH__ACCESS_TTL_SECS", "3")]).await;
    let (access, _, _) = app.register_and_login().await;
    assert_eq!(app.get("/auth/me", Some(&access)).await.status(), 200);
    // The token's exp has one-second resolution: it is refused within TTL + 1 s of its issue,
    // so waiting (bounded by 5 s) for the refusal proves it expires on time.
    // (Expiry against a moved clock is unit-tested in crates/auth with a ManualClock.)
    wait_until(Duration::from_secs(5), || async {
        app.get("/auth/me", Some(&access)).await.status() == StatusCode::UNAUTHORIZED
    })
    .await;
    assert_error(
        app.get("/auth/me", Some(&access)).await,
        StatusCode::UNAUTHORIZED,
        "invalid_token",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tampered_and_garbage_tokens_are_401_and_audited() {
    let app = spawn_app().await;
    let (access, _, _) = app.register_and_login().await;
    let mut tampered = access.clone();
    let last = tampered.pop().unwrap();
    tampered.push(if last == 'A' { 'B' } else { 'A' });
    for t in [
        tampered.as_str(),
        "garbage",
        "v4.local.AAAA",
        "v4.public.x.y",
    ] {
        assert_error(
            app.get("/auth/me", Some(t)).await,
            StatusCode::UNAUTHORIZED,
            "invalid_token",
        )
        .await;
    }
    let r = app.client.get(app.url("/auth/me")).send().await.unwrap();
    assert_error(r, StatusCode::UNAUTHORIZED, "unauthorized").await;
    let admin = app.admin_token().await;
    let audit: Value = app
        .get("/admin/audit?event=token_rejected", Some(&admin))
        .await
        .json()
        .await
        .unwrap();
    assert!(!audit["items"].as_array().unwrap().is_empty(), "{audit}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_failures_lock_the_account_without_revealing_it_exists() {
    // Progressive delay (1 s, 2 s, ... after the free failures by default): a long first delay
    // keeps this test independent of how fast the machine is.
    let app = spawn_app_with(&[
        ("GATHERING__AUTH__MAX_FAILED_LOGINS", "3"),
        ("GATHERING__AUTH__LOCKOUT_BASE_DELAY_SECS", "60"),
    ])
    .await;
    let (_, _, email) = app.register_and_login().await;
    for _ in 0..3 {
        assert_eq!(app.login(&email, "wrong-password-xyz").await.status(), 401);
    }
    // Locked: even the right password is refused, with Retry-After.
    let r = app.login(&email, PASSWORD).await;
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(r.headers().get("retry-after").is_some());
    let locked = assert_error(r, StatusCode::TOO_MANY_REQUESTS, "rate_limited").await;

    // An unknown account behaves exactly the same.
    for _ in 0..3 {
        assert_eq!(
            app.login("ghost@example.com", "wrong-password-xyz")
                .await
                .status(),
            401
        );
    }
    let r = app.login("ghost@example.com", PASSWORD).await;
    let ghost = assert_error(r, StatusCode::TOO_MANY_REQUESTS, "rate_limited").await;
    assert_eq!(
        locked["error"]["message"], ghost["error"]["message"],
        "lockout must not reveal whether the account exists"
    );

    let admin = app.admin_token().await;
    let audit: Value = app
        .get("/admin/audit?event=lockout", Some(&admin))
        .await
        .json()
        .await
        .unwrap();
    assert!(audit["items"].as_array().unwrap().len() >= 2, "{audit}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_many_auth_requests_from_one_address_get_429() {
    let app = spawn_app_with(&[("GATHERING__RATE_LIMIT__AUTH_PER_MINUTE", "5")]).await;
    let mut limited = None;
    for i in 0..8 {
        let r = app
            .login(&format!("nobody{i}@example.com"), "wrong-password-xyz")
            .await;
        if r.status() == StatusCode::TOO_MANY_REQUESTS {
            limited = Some(r);
            break;
        }
    }
    let r = limited.expect("the sixth auth request is limited");
    assert!(r.headers().get("retry-after").is_some());
    assert_error(r, StatusCode::TOO_MANY_REQUESTS, "rate_limited").await;
    // Other endpoints are on other tiers.
    assert_eq!(app.get("/health/live", None).await.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_auth_event_lands_in_the_audit_table_with_request_metadata() {
    let app = spawn_app().await;
    let (access, refresh, email) = app.register_and_login().await;
    let _ = app.login(&email, "wrong-password-xyz").await;
    let pair: Value = app
        .post("/auth/refresh", &json!({"refresh_token": refresh}), None)
        .await
        .json()
        .await
        .unwrap();
    let access2 = pair["access_token"].as_str().unwrap();
    let r = app
        .client
        .post(app.url("/auth/logout"))
        .bearer_auth(access2)
        .header("x-request-id", "audit-req-1")
        .header("user-agent", "audit-agent/1.0")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let _ = access;

    let admin = app.admin_token().await;
    let audit: Value = app
        .get("/admin/audit?limit=200", Some(&admin))
        .await
        .json()
        .await
        .unwrap();
    let events: Vec<&str> = audit["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["email"] == email.as_str() || e["email"].is_null())
        .map(|e| e["event"].as_str().unwrap())
        .collect();
    for expected in [
        "register",
        "login_success",
        "login_failure",
        "token_refresh",
        "logout",
    ] {
        assert!(events.contains(&expected), "{expected} missing: {audit}");
    }
    let logout = audit["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["event"] == "logout")
        .unwrap();
    assert_eq!(logout["request_id"], "audit-req-1");
    assert_eq!(logout["user_agent"], "audit-agent/1.0");
    assert_eq!(logout["ip"], "127.0.0.1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_is_admin_only_and_paginated() {
    let app = spawn_app().await;
    let user = app.user_token().await;
    assert_error(
        app.get("/admin/audit", Some(&user)).await,
        StatusCode::FORBIDDEN,
        "forbidden",
    )
    .await;
    let admin = app.admin_token().await;
    for _ in 0..3 {
        app.register_and_login().await;
    }
    let page1: Value = app
        .get("/admin/audit?limit=2", Some(&admin))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(page1["items"].as_array().unwrap().len(), 2);
    let cursor = page1["next_cursor"].as_str().unwrap();
    let page2: Value = app
        .get(
            &format!("/admin/audit?limit=2&cursor={cursor}"),
            Some(&admin),
        )
        .await
        .json()
        .await
        .unwrap();
    assert_ne!(page1["items"][0]["id"], page2["items"][0]["id"]);
    assert_error(
        app.get("/admin/audit?event=bogus", Some(&admin)).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_failed",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_for_is_believed_only_from_trusted_proxies() {
    let untrusted = spawn_app().await;
    let r = untrusted
        .client
        .post(untrusted.url("/auth/login"))
        .header("x-forwarded-for", "203.0.113.7")
        .json(&json!({"email": "x@example.com", "password": "wrong-password-xyz"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let trusted = spawn_app_with(&[("GATHERING__SERVER__TRUSTED_PROXIES", "127.0.0.1")]).await;
    let r = trusted
        .client
        .post(trusted.url("/auth/login"))
        .header("x-forwarded-for", "198.51.100.9, 203.0.113.7")
        .json(&json!({"email": "x@example.com", "password": "wrong-password-xyz"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);

    for (app, ip) in [(&untrusted, "127.0.0.1"), (&trusted, "203.0.113.7")] {
        let admin = app.admin_token().await;
        let audit: Value = app
            .get("/admin/audit?event=login_failure", Some(&admin))
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(audit["items"][0]["ip"], ip, "{audit}");
    }
}
