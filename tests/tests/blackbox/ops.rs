//! Operability: health, the database going away and back, graceful shutdown of a real process,
//! migrations under concurrent start-up.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use gathering_tests::gate::Gate;
use gathering_tests::*;
use reqwest::StatusCode;
use serde_json::json;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_endpoints_answer() {
    let app = spawn_app().await;
    assert_eq!(app.get("/health/live", None).await.status(), 200);
    assert_eq!(app.get("/health/ready", None).await.status(), 200);
}

async fn set_connections_allowed(admin: &tokio_postgres::Client, db: &str, allowed: bool) {
    // Identifiers cannot be bind parameters; `db` is a generated test database name.
    admin
        .batch_execute(&format!(
            "ALTER DATABASE \"{db}\" WITH ALLOW_CONNECTIONS {allowed}"
        ))
        .await
        .unwrap();
    if !allowed {
        admin
            .execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                 WHERE datname = $1 AND pid <> pg_backend_pid()",
                &[&db],
            )
            .await
            .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_database_going_away_and_back_needs_no_restart() {
    let app = spawn_app().await;
    let (token, _, _) = app.register_and_login().await;
    assert_eq!(app.get("/auth/me", Some(&token)).await.status(), 200);

    let (admin, conn) = tokio_postgres::connect(
        &gathering_store::test_support::admin_url(),
        tokio_postgres::NoTls,
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    set_connections_allowed(&admin, &app.db.name, false).await;

    let r = app.get("/health/ready", None).await;
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    let r = app.get("/auth/me", Some(&token)).await;
    assert!(
        r.status() == StatusCode::SERVICE_UNAVAILABLE || r.status() == StatusCode::OK,
        "no 500 while the database is away: {}",
        r.status()
    );
    if r.status() == StatusCode::SERVICE_UNAVAILABLE {
        assert_error(r, StatusCode::SERVICE_UNAVAILABLE, "unavailable").await;
    }

    set_connections_allowed(&admin, &app.db.name, true).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        if app.get("/health/ready", None).await.status() == 200
            && app.get("/auth/me", Some(&token)).await.status() == 200
        {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "did not recover");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    app.register_and_login().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_starting_together_migrate_once() {
    let db = TestDatabase::new().await;
    let (a, b, c) = tokio::join!(
        spawn_app_on(&db, &[]),
        spawn_app_on(&db, &[]),
        spawn_app_on(&db, &[])
    );
    for app in [&a, &b, &c] {
        assert_eq!(app.get("/health/ready", None).await.status(), 200);
    }
    let client = a.db_client().await;
    let versions: Vec<i64> = client
        .query(
            "SELECT version FROM public.schema_migrations ORDER BY version",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let mut dedup = versions.clone();
    dedup.dedup();
    assert_eq!(versions, dedup);
    assert!(!versions.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_in_flight_requests_finish_then_exits_zero() {
    // Each in-flight request is a tool call to a gate that holds its answer: once the gate has
    // seen every call, the requests are provably in flight when the signal lands.
    let gate = Gate::start().await;
    let db = TestDatabase::new().await;
    let data = tempfile::tempdir().unwrap();
    let server = gathering_tests::spawn_server_process!(
        &db,
        data.path(),
        &[("GATHERING__TOOLS__HTTP_ALLOWED_HOSTS", "127.0.0.1")]
    );
    let base = server.api();
    let client = reqwest::Client::new();
    let r = client
        .post(format!("{base}/auth/register"))
        .json(&json!({"email": "s@example.com", "password": PASSWORD, "name": "S"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let tokens: serde_json::Value = client
        .post(format!("{base}/auth/login"))
        .json(&json!({"email": "s@example.com", "password": PASSWORD}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token = tokens["access_token"].as_str().unwrap().to_owned();

    const IN_FLIGHT: usize = 3;
    let mut inflight = Vec::new();
    for i in 0..IN_FLIGHT {
        let c = client.clone();
        let url = format!("{base}/tools/http_request/invoke");
        let body = json!({"params": {"method": "GET", "url": gate.url(&format!("/in-flight/{i}")),
                                     "timeout_ms": 60000}});
        let token = token.clone();
        inflight.push(tokio::spawn(async move {
            let r = c.post(url).bearer_auth(token).json(&body).send().await?;
            let status = r.status();
            r.json::<serde_json::Value>().await.map(|b| (status, b))
        }));
    }
    gate.wait_for_requests(IN_FLIGHT, Duration::from_secs(30))
        .await;
    server.signal("TERM");
    // The requests are still held at the gate: none finished before the signal.
    for t in &inflight {
        assert!(
            !t.is_finished(),
            "a request finished before it was released"
        );
    }
    gate.release();

    for t in inflight {
        let (status, body) = t.await.unwrap().expect("in-flight request completes");
        assert_eq!(status, StatusCode::OK, "{body}");
        assert!(
            body.to_string().contains("released"),
            "the upstream's answer came back: {body}"
        );
    }
    let root = server.root();
    let exit = server.wait().await;
    assert!(exit.success(), "exit status {exit:?}");
    assert!(
        client
            .get(format!("{root}/health/live"))
            .send()
            .await
            .is_err(),
        "the listener is closed after shutdown"
    );
}
