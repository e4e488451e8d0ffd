//! Black-box: kill -9 of every scheduler instance (real processes), a downtime long enough for
//! occurrences to count as missed, then a restart on the same database → the execution that was
//! running becomes `interrupted` and is not re-run, `skip` drops the missed window, `run_once`
//! runs exactly one catch-up, no occurrence appears twice, nothing is left `running`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use chrono::{DateTime, Utc};
use gathering_tests::loopback::{Answer, Loopback};
use gathering_tests::process::ServerProcess;
use gathering_tests::{PASSWORD, TestApp, TestDatabase, spawn_app_on};
use reqwest::StatusCode;
use serde_json::{Value, json};
use std::time::Duration;
use uuid::Uuid;

const ALLOW_LOOPBACK: (&str, &str) = ("GATHERING__TOOLS__HTTP_ALLOWED_HOSTS", "127.0.0.1");

/// Crash-recovery timings of the main crash test's instances (production defaults: 60 s grace,
/// 30 s stale, 5 s heartbeat), shortened through the configuration.
const GRACE_SECS: i64 = 3;
const FAST_RECOVERY: [(&str, &str); 4] = [
    // These schedules fire every second; the production minimum interval is 10 s.
    ("GATHERING__SCHEDULER__MIN_INTERVAL_SECS", "1"),
    ("GATHERING__SCHEDULER__MISFIRE_GRACE_SECS", "3"),
    ("GATHERING__SCHEDULER__STALE_AFTER_SECS", "4"),
    ("GATHERING__SCHEDULER__HEARTBEAT_SECS", "1"),
];

/// How long every instance stays dead. It exceeds the misfire grace, so the occurrences due
/// meanwhile count as missed, and the stale horizon, so the dead instances' executions are
/// recovered at start-up.
const DOWNTIME: Duration = Duration::from_secs(8);

/// The action's target, counting hits per path: `/slow` never answers before its caller is
/// gone (120 s), anything else answers 200 at once.
struct Target;

impl Target {
    async fn start() -> Loopback {
        Loopback::start(|path, _| {
            let ok = Answer::json(200, json!({"ok": true}));
            if path == "/slow" {
                ok.after(Duration::from_secs(120))
            } else {
                ok
            }
        })
        .await
    }
}

/// The server as a real process on `db`; returns it and its API base URL.
fn start_process(
    db: &TestDatabase,
    data: &std::path::Path,
    extra: &[(&str, &str)],
) -> (ServerProcess, String) {
    // These schedules fire every second; the production minimum interval is 10 s.
    let mut env = vec![
        ALLOW_LOOPBACK,
        ("GATHERING__SCHEDULER__MIN_INTERVAL_SECS", "1"),
    ];
    env.extend_from_slice(extra);
    let server = gathering_tests::spawn_server_process!(db, data, &env);
    let base = server.api();
    (server, base)
}

async fn kill_9(server: ServerProcess) {
    server.kill_9().await;
}

async fn create(client: &reqwest::Client, base: &str, token: &str, body: Value) -> Uuid {
    let r = client
        .post(format!("{base}/schedules"))
        .bearer_auth(token)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let s: Value = r.json().await.unwrap();
    s["id"].as_str().unwrap().parse().unwrap()
}

#[derive(Debug, Clone)]
struct Row {
    id: Uuid,
    scheduled_for: DateTime<Utc>,
    status: String,
    error: Option<String>,
    instance_id: Uuid,
}

async fn rows(db: &tokio_postgres::Client, schedule: Uuid) -> Vec<Row> {
    db.query(
        "SELECT id, scheduled_for, status, error, instance_id FROM scheduler.executions
         WHERE schedule_id = $1 ORDER BY scheduled_for LIMIT 1000",
        &[&schedule],
    )
    .await
    .unwrap()
    .iter()
    .map(|r| Row {
        id: r.get(0),
        scheduled_for: r.get(1),
        status: r.get(2),
        error: r.get(3),
        instance_id: r.get(4),
    })
    .collect()
}

/// Polls (bounded) until `done` holds for the schedule's executions.
async fn until(
    db: &tokio_postgres::Client,
    schedule: Uuid,
    what: &str,
    done: impl Fn(&[Row]) -> bool,
) -> Vec<Row> {
    // Generous: covers recovery of a dead instance's running execution (stale after 30 s).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(45);
    loop {
        let r = rows(db, schedule).await;
        if done(&r) {
            return r;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what} did not happen: {r:#?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn pause(app: &TestApp, token: &str, id: Uuid) {
    let r = app
        .patch(
            &format!("/schedules/{id}"),
            &json!({"enabled": false}),
            Some(token),
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_of_every_instance_then_restart_honours_missed_run_policies_without_duplicates() {
    let target = Target::start().await;
    let db = TestDatabase::new().await;
    let (data_a, data_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (a, base_a) = start_process(&db, data_a.path(), &FAST_RECOVERY);
    let (b, base_b) = start_process(&db, data_b.path(), &FAST_RECOVERY);
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let r = client
        .post(format!("{base_a}/auth/register"))
        .json(&json!({"email": "crash@example.com", "password": PASSWORD, "name": "C"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let tokens: Value = client
        .post(format!("{base_a}/auth/login"))
        .json(&json!({"email": "crash@example.com", "password": PASSWORD}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token = tokens["access_token"].as_str().unwrap().to_owned();

    let every_second = |path: &str, missed: &str| {
        json!({"name": path, "interval_secs": 1, "missed_runs": missed,
               "action_type": "call_api",
               "action_config": {"url": target.url(path), "method": "POST"}})
    };
    let skip = create(&client, &base_a, &token, every_second("/skip", "skip")).await;
    let once = create(&client, &base_b, &token, every_second("/once", "run_once")).await;
    let slow = create(
        &client,
        &base_a,
        &token,
        json!({"name": "slow", "interval_secs": 86_400, "action_type": "call_api",
               "action_config": {"url": target.url("/slow"), "timeout_ms": 200_000,
                                 "max_attempts": 1}}),
    )
    .await;
    let r = client
        .post(format!("{base_b}/schedules/{slow}/run-now"))
        .bearer_auth(&token)
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let slow_exec: Value = r.json().await.unwrap();

    // Both every-second schedules fire a few times; the slow call is in flight.
    target
        .wait_for(Some("/skip"), 2, Duration::from_secs(30))
        .await;
    target
        .wait_for(Some("/once"), 2, Duration::from_secs(30))
        .await;
    target
        .wait_for(Some("/slow"), 1, Duration::from_secs(30))
        .await;

    kill_9(a).await;
    kill_9(b).await;
    let checker = {
        let (c, conn) = tokio_postgres::connect(&db.url, tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(conn);
        c
    };
    let before_skip = rows(&checker, skip).await;
    let before_once = rows(&checker, once).await;
    let slow_rows = rows(&checker, slow).await;
    assert_eq!(slow_rows.len(), 1);
    assert_eq!(
        slow_rows[0].status, "running",
        "the slow call was in flight"
    );
    assert_eq!(
        slow_rows[0].id.to_string(),
        slow_exec["id"].as_str().unwrap()
    );
    let old_instances: Vec<Uuid> = before_skip
        .iter()
        .chain(&before_once)
        .chain(&slow_rows)
        .map(|r| r.instance_id)
        .collect();
    let last_skip = before_skip.last().unwrap().scheduled_for;
    let last_once = before_once.last().unwrap().scheduled_for;

    // Every instance is down; occurrences come due and pass their grace. This sleep stays: the
    // downtime on the wall clock is the scenario (real processes cannot be given a manual clock).
    tokio::time::sleep(DOWNTIME).await;
    // Counted after the downtime: a call the dead instances sent just before dying has landed.
    let once_calls_before = target.hits("/once");
    let skip_calls_before = target.hits("/skip");
    let restart_at = Utc::now();
    let mut env = vec![ALLOW_LOOPBACK];
    env.extend(FAST_RECOVERY);
    let app = spawn_app_on(&db, &env).await;

    // The slow execution becomes `interrupted` and is not re-run.
    let slow_rows = until(&checker, slow, "recovery of the slow execution", |r| {
        r.len() == 1 && r[0].status != "running"
    })
    .await;
    assert_eq!(slow_rows[0].status, "interrupted", "{slow_rows:?}");
    assert!(
        slow_rows[0]
            .error
            .as_deref()
            .unwrap_or("")
            .contains("interrupted"),
        "{slow_rows:?}"
    );

    // Both schedules are back on time (a post-restart occurrence has finished).
    let on_time = |r: &[Row]| {
        r.iter()
            .any(|e| e.scheduled_for > restart_at && e.status == "succeeded")
    };
    until(&checker, skip, "the skip schedule firing again", on_time).await;
    until(
        &checker,
        once,
        "the run_once schedule firing again",
        on_time,
    )
    .await;
    pause(&app, &token, skip).await;
    pause(&app, &token, once).await;

    // Nothing is left running once the paused schedules' last actions finished.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let running: i64 = checker
            .query_one(
                "SELECT count(*) FROM scheduler.executions WHERE status = 'running'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        if running == 0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{running} executions left running"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let after_skip = rows(&checker, skip).await;
    let after_once = rows(&checker, once).await;
    let in_window = |r: &[Row], last: DateTime<Utc>| -> Vec<Row> {
        r.iter()
            .filter(|e| e.scheduled_for > last && e.scheduled_for < restart_at)
            .cloned()
            .collect()
    };
    let skip_catch_up = in_window(&after_skip, last_skip);
    assert!(
        skip_catch_up.is_empty(),
        "`skip` ran occurrences of the missed window: {skip_catch_up:#?}"
    );
    let once_catch_up = in_window(&after_once, last_once);
    assert_eq!(
        once_catch_up.len(),
        1,
        "`run_once` runs exactly one catch-up: {after_once:#?}"
    );
    assert_eq!(once_catch_up[0].status, "succeeded", "{once_catch_up:?}");
    assert!(!old_instances.contains(&once_catch_up[0].instance_id));
    // The missed window was longer than the grace: its first occurrence is the one caught up.
    assert!(
        once_catch_up[0].scheduled_for < restart_at - chrono::Duration::seconds(GRACE_SECS),
        "{once_catch_up:?}"
    );

    // Every post-restart execution made exactly one call; the dead instances' rows were not re-run.
    for (rows_before, rows_after, calls_before, path) in [
        (&before_skip, &after_skip, skip_calls_before, "/skip"),
        (&before_once, &after_once, once_calls_before, "/once"),
    ] {
        let new: Vec<&Row> = rows_after
            .iter()
            .filter(|e| !rows_before.iter().any(|b| b.id == e.id))
            .collect();
        // `skipped`: an occurrence due while the previous one still ran (overlap policy).
        assert!(
            new.iter()
                .all(|e| e.status == "succeeded" || e.status == "skipped"),
            "{path}: {new:#?}"
        );
        let ran = new.iter().filter(|e| e.status == "succeeded").count();
        assert_eq!(
            target.hits(path) - calls_before,
            ran,
            "{path}: calls after the restart vs executions after the restart"
        );
        for old in rows_before.iter() {
            let now = rows_after.iter().find(|e| e.id == old.id).unwrap();
            assert_ne!(now.status, "running", "{now:?}");
        }
    }
    assert_eq!(
        target.hits("/slow"),
        1,
        "the interrupted call was not re-run"
    );

    let dupes: i64 = checker
        .query_one(
            "SELECT count(*) FROM (SELECT schedule_id, scheduled_for FROM scheduler.executions
             GROUP BY schedule_id, scheduled_for HAVING count(*) > 1) d",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(dupes, 0, "an occurrence was executed twice");
    app.stop().await.unwrap();
}

/// Registers a user on a process and returns an access token.
async fn token_on(client: &reqwest::Client, base: &str) -> String {
    let email = format!("u-{}@example.com", Uuid::now_v7().simple());
    let r = client
        .post(format!("{base}/auth/register"))
        .json(&json!({"email": email, "password": PASSWORD, "name": "U"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let tokens: Value = client
        .post(format!("{base}/auth/login"))
        .json(&json!({"email": email, "password": PASSWORD}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    tokens["access_token"].as_str().unwrap().to_owned()
}

/// A downtime shorter than the misfire grace: the overdue occurrence runs late, once, and the
/// backlog of the seconds the instance was dead is not replayed (whatever the policy).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn short_crash_does_not_replay_the_backlog() {
    let target = Target::start().await;
    let db = TestDatabase::new().await;
    let data = tempfile::tempdir().unwrap();
    let (a, base) = start_process(&db, data.path(), &[]);
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let token = token_on(&client, &base).await;
    let mut ids = Vec::new();
    for (path, missed) in [("/short-skip", "skip"), ("/short-once", "run_once")] {
        let body = json!({"name": path, "interval_secs": 1, "missed_runs": missed,
                          "action_type": "call_api",
                          "action_config": {"url": target.url(path)}});
        ids.push((path, create(&client, &base, &token, body).await));
    }
    target
        .wait_for(Some("/short-skip"), 2, Duration::from_secs(30))
        .await;
    target
        .wait_for(Some("/short-once"), 2, Duration::from_secs(30))
        .await;
    let checker = {
        let (c, conn) = tokio_postgres::connect(&db.url, tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(conn);
        c
    };
    // Killed between two occurrences: an execution left running would block its schedule
    // (overlap `skip`) until recovery declares the dead instance stale (30 s).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let running: i64 = checker
            .query_one(
                "SELECT count(*) FROM scheduler.executions WHERE status = 'running'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        if running == 0 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "never quiescent");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    kill_9(a).await;
    let mut before = Vec::new();
    for (_, id) in &ids {
        before.push(rows(&checker, *id).await);
    }
    // Five occurrences per schedule come due while nothing runs. This sleep stays: the downtime
    // on the wall clock is the scenario.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let calls_before: Vec<usize> = ids.iter().map(|(p, _)| target.hits(p)).collect();
    let restart_at = Utc::now();
    let mut env = vec![ALLOW_LOOPBACK];
    env.extend(FAST_RECOVERY);
    let app = spawn_app_on(&db, &env).await;
    for (_, id) in &ids {
        until(&checker, *id, "firing after the restart", |r| {
            r.iter()
                .any(|e| e.scheduled_for > restart_at && e.status == "succeeded")
        })
        .await;
        pause(&app, &token, *id).await;
    }
    for (i, (path, id)) in ids.iter().enumerate() {
        let last = before[i].last().unwrap().scheduled_for;
        // Settled: every row started after the restart has finished.
        let after = until(&checker, *id, "post-restart executions finishing", |r| {
            r.iter()
                .filter(|e| !before[i].iter().any(|b| b.id == e.id))
                .all(|e| e.status != "running")
        })
        .await;
        let window: Vec<&Row> = after
            .iter()
            .filter(|e| e.scheduled_for > last && e.scheduled_for < restart_at)
            .collect();
        assert!(
            window.len() <= 1,
            "{path}: the backlog of the downtime was replayed: {window:#?}"
        );
        let new: Vec<&Row> = after
            .iter()
            .filter(|e| !before[i].iter().any(|b| b.id == e.id))
            .collect();
        assert!(
            new.iter()
                .all(|e| e.status == "succeeded" || e.status == "skipped"),
            "{path}: {new:#?}"
        );
        let ran = new.iter().filter(|e| e.status == "succeeded").count();
        assert_eq!(
            target.hits(path) - calls_before[i],
            ran,
            "{path}: one call per post-restart execution"
        );
    }
    let dupes: i64 = checker
        .query_one(
            "SELECT count(*) FROM (SELECT schedule_id, scheduled_for FROM scheduler.executions
             GROUP BY schedule_id, scheduled_for HAVING count(*) > 1) d",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(dupes, 0, "an occurrence was executed twice");
    app.stop().await.unwrap();
}
