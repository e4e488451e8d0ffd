//! Operability: health, the database going away and back, graceful shutdown of a real process,
//! migrations under concurrent start-up.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use gathering_tests::*;
use reqwest::StatusCode;
use serde_json::json;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
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
    let db = TestDatabase::new().await;
    let data = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_gathering-test-server"));
    cmd.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    for (k, v) in base_env(&db, data.path()) {
        cmd.env(k, v);
    }
    // One hash at a time: the logins queue up and take a while.
    cmd.env("GATHERING__AUTH__HASH_CONCURRENCY", "1");
    let mut child = cmd.spawn().unwrap();
    let stdout = child.stdout.take().unwrap();
    let (port_tx, port_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut sent = false;
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if !sent && line.contains("\"msg\":\"listening\"") {
                let v: serde_json::Value = serde_json::from_str(&line).unwrap();
                port_tx.send(v["port"].as_u64().unwrap()).unwrap();
                sent = true;
            }
        }
    });
    let port = port_rx.recv_timeout(Duration::from_secs(60)).unwrap();
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::new();
    let r = client
        .post(format!("{base}/api/v1/auth/register"))
        .json(&json!({"email": "s@example.com", "password": PASSWORD, "name": "S"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);

    let mut inflight = Vec::new();
    for _ in 0..6 {
        let c = client.clone();
        let url = format!("{base}/api/v1/auth/login");
        inflight.push(tokio::spawn(async move {
            c.post(url)
                .json(&json!({"email": "s@example.com", "password": PASSWORD}))
                .send()
                .await
                .map(|r| r.status())
        }));
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());

    for t in inflight {
        let status = t.await.unwrap().expect("in-flight request completes");
        assert_eq!(status, StatusCode::OK);
    }
    let exit = tokio::task::spawn_blocking(move || child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(exit.success(), "exit status {exit:?}");
    assert!(
        client
            .get(format!("{base}/health/live"))
            .send()
            .await
            .is_err(),
        "the listener is closed after shutdown"
    );
}
