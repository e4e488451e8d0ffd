//! Black-box: schedules against the real server — they fire and the real effect is observed on a
//! loopback HTTP server; run-now; pause; validation; two instances on one database.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use gathering_tests::loopback::{Answer, Loopback};
use gathering_tests::{
    TestApp, TestDatabase, assert_error, spawn_app, spawn_app_on, spawn_app_with,
};
use reqwest::StatusCode;
use serde_json::{Value, json};
use std::collections::HashSet;
use std::time::Duration;

const ALLOW_LOOPBACK: (&str, &str) = ("GATHERING__TOOLS__HTTP_ALLOWED_HOSTS", "127.0.0.1");
/// These tests fire every second; the production minimum interval is 10 s.
const ONE_SECOND_SCHEDULES: (&str, &str) = ("GATHERING__SCHEDULER__MIN_INTERVAL_SECS", "1");

/// A loopback HTTP server answering 200 to `/hit`, counting requests.
async fn counter() -> Loopback {
    Loopback::start(|_, _| Answer::json(200, json!({"ok": true}))).await
}

fn call_api(url: &str, interval: i64) -> Value {
    json!({
        "name": "ping",
        "interval_secs": interval,
        "action_type": "call_api",
        "action_config": {"url": url, "method": "POST", "body": {"from": "schedule"}}
    })
}

async fn executions(app: &TestApp, token: &str, id: &str) -> Vec<Value> {
    let r = app
        .get(
            &format!("/schedules/{id}/executions?limit=200"),
            Some(token),
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    let v: Value = r.json().await.unwrap();
    v["items"].as_array().unwrap().clone()
}

/// Polls (bounded) until every listed execution has finished.
async fn settled(app: &TestApp, token: &str, id: &str, at_least: usize) -> Vec<Value> {
    tokio::time::timeout(Duration::from_secs(15), async {
        loop {
            let items = executions(app, token, id).await;
            if items.len() >= at_least && items.iter().all(|e| e["status"] != "running") {
                return items;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .expect("executions did not finish")
}

#[tokio::test]
async fn interval_schedule_fires_and_really_calls_the_api() {
    let app = spawn_app_with(&[ALLOW_LOOPBACK, ONE_SECOND_SCHEDULES]).await;
    let token = app.user_token().await;
    let server = counter().await;
    let r = app
        .post(
            "/schedules",
            &call_api(&server.url("/hit"), 1),
            Some(&token),
        )
        .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let s: Value = r.json().await.unwrap();
    assert!(s["next_run_at"].is_string(), "{s}");
    assert_eq!(s["enabled"], true);
    assert_eq!(s["missed_runs"], "skip");
    let id = s["id"].as_str().unwrap();

    server.wait_for(None, 2, Duration::from_secs(20)).await;
    let items = settled(&app, &token, id, 2).await;
    let ok: Vec<_> = items
        .iter()
        .filter(|e| e["status"] == "succeeded")
        .collect();
    assert!(ok.len() >= 2, "{items:?}");
    assert_eq!(ok[0]["result"]["response"]["status"], 200);
    assert!(ok[0]["finished_at"].is_string());
    let fetched: Value = app
        .get(&format!("/schedules/{id}"), Some(&token))
        .await
        .json()
        .await
        .unwrap();
    assert!(fetched["execution_count"].as_i64().unwrap() >= 2);
    app.stop().await.unwrap();
}

#[tokio::test]
async fn run_now_answers_202_and_performs_the_action() {
    let app = spawn_app_with(&[ALLOW_LOOPBACK, ONE_SECOND_SCHEDULES]).await;
    let token = app.user_token().await;
    let server = counter().await;
    let s: Value = app
        .post(
            "/schedules",
            &call_api(&server.url("/hit"), 86_400),
            Some(&token),
        )
        .await
        .json()
        .await
        .unwrap();
    let id = s["id"].as_str().unwrap();
    let r = app
        .post(
            &format!("/schedules/{id}/run-now"),
            &json!({}),
            Some(&token),
        )
        .await;
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let e: Value = r.json().await.unwrap();
    assert_eq!(e["status"], "running");
    server.wait_for(None, 1, Duration::from_secs(15)).await;
    let items = settled(&app, &token, id, 1).await;
    assert_eq!(items.len(), 1);
    assert_eq!(items[0]["id"], e["id"]);
    assert_eq!(items[0]["status"], "succeeded");
    assert_eq!(server.requests(), 1);
    app.stop().await.unwrap();
}

#[tokio::test]
async fn paused_schedule_stops_firing() {
    let app = spawn_app_with(&[ALLOW_LOOPBACK, ONE_SECOND_SCHEDULES]).await;
    let token = app.user_token().await;
    let server = counter().await;
    let s: Value = app
        .post(
            "/schedules",
            &call_api(&server.url("/hit"), 1),
            Some(&token),
        )
        .await
        .json()
        .await
        .unwrap();
    let id = s["id"].as_str().unwrap();
    server.wait_for(None, 1, Duration::from_secs(15)).await;
    let r = app
        .patch(
            &format!("/schedules/{id}"),
            &json!({"enabled": false}),
            Some(&token),
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    let paused: Value = r.json().await.unwrap();
    assert_eq!(paused["enabled"], false);
    assert!(paused["next_run_at"].is_null());
    let before = settled(&app, &token, id, 1).await.len();
    // Proving absence needs time: three would-be occurrences. This sleep stays: it is the window
    // in which nothing may happen, not a wait for something to happen.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(executions(&app, &token, id).await.len(), before);
    assert_eq!(server.requests(), before);
    app.stop().await.unwrap();
}

#[tokio::test]
async fn bad_cron_and_bad_config_are_422_with_details() {
    let app = spawn_app().await;
    let token = app.user_token().await;
    let body = json!({"name": "x", "cron": "61 * * * *", "action_type": "call_api",
                      "action_config": {"url": "http://example.com"}});
    let v = assert_error(
        app.post("/schedules", &body, Some(&token)).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_failed",
    )
    .await;
    assert!(v.to_string().contains("/cron"), "{v}");
    let body = json!({"name": "x", "cron": "* * * *", "action_type": "call_api",
                      "action_config": {"url": "http://example.com"}});
    assert_error(
        app.post("/schedules", &body, Some(&token)).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_failed",
    )
    .await;
    let body = json!({"name": "x", "cron": "* * * * *", "interval_secs": 5,
                      "timezone": "Nowhere/City", "action_type": "send_notification",
                      "action_config": {"title": "t"}});
    let v = assert_error(
        app.post("/schedules", &body, Some(&token)).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_failed",
    )
    .await;
    let text = v.to_string();
    assert!(
        text.contains("/timezone") && text.contains("/action_config/message"),
        "{v}"
    );
    let list: Value = app
        .get("/schedules", Some(&token))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(list["items"].as_array().unwrap().len(), 0);
    app.stop().await.unwrap();
}

#[tokio::test]
async fn schedules_are_private_to_their_owner() {
    let app = spawn_app().await;
    let alice = app.user_token().await;
    let bob = app.user_token().await;
    let body = json!({"name": "daily", "cron": "0 9 * * *", "timezone": "Europe/Paris",
                      "action_type": "send_notification",
                      "action_config": {"title": "t", "message": "m"}});
    let s: Value = app
        .post("/schedules", &body, Some(&alice))
        .await
        .json()
        .await
        .unwrap();
    let id = s["id"].as_str().unwrap();
    for r in [
        app.get(&format!("/schedules/{id}"), Some(&bob)).await,
        app.patch(
            &format!("/schedules/{id}"),
            &json!({"enabled": false}),
            Some(&bob),
        )
        .await,
        app.post(&format!("/schedules/{id}/run-now"), &json!({}), Some(&bob))
            .await,
        app.get(&format!("/schedules/{id}/executions"), Some(&bob))
            .await,
        app.delete(&format!("/schedules/{id}"), Some(&bob)).await,
    ] {
        assert_error(r, StatusCode::NOT_FOUND, "not_found").await;
    }
    assert_eq!(
        app.delete(&format!("/schedules/{id}"), Some(&alice))
            .await
            .status(),
        StatusCode::NO_CONTENT
    );
    app.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_server_instances_execute_each_occurrence_once() {
    let db = TestDatabase::new().await;
    // Ten occurrences due each second, calls that take 100 ms, and at most two calls at once
    // per instance: one instance cannot take them all, so both get a share.
    const TWO_AT_ONCE: (&str, &str) = ("GATHERING__SCHEDULER__MAX_CONCURRENT", "2");
    let a = spawn_app_on(&db, &[ALLOW_LOOPBACK, TWO_AT_ONCE, ONE_SECOND_SCHEDULES]).await;
    let b = spawn_app_on(&db, &[ALLOW_LOOPBACK, TWO_AT_ONCE, ONE_SECOND_SCHEDULES]).await;
    let token = a.user_token().await;
    let server = Loopback::start(|_, _| {
        Answer::json(200, json!({"ok": true})).after(Duration::from_millis(100))
    })
    .await;
    let mut ids = Vec::new();
    for _ in 0..10 {
        let s: Value = a
            .post(
                "/schedules",
                &call_api(&server.url("/hit"), 1),
                Some(&token),
            )
            .await
            .json()
            .await
            .unwrap();
        ids.push(s["id"].as_str().unwrap().to_owned());
    }
    server.wait_for(None, 40, Duration::from_secs(30)).await;
    for id in &ids {
        b.patch(
            &format!("/schedules/{id}"),
            &json!({"enabled": false}),
            Some(&token),
        )
        .await;
    }
    let mut total = 0;
    for id in &ids {
        let items = settled(&b, &token, id, 1).await;
        let occurrences: HashSet<&str> = items
            .iter()
            .map(|e| e["scheduled_for"].as_str().unwrap())
            .collect();
        assert_eq!(occurrences.len(), items.len(), "an occurrence ran twice");
        assert!(
            items.iter().all(|e| e["status"] == "succeeded"),
            "{items:?}"
        );
        total += items.len();
    }
    assert_eq!(server.requests(), total, "calls and executions differ");
    // Both instances executed occurrences (so each-once above is not one instance alone).
    let instances: i64 = a
        .db_client()
        .await
        .query_one(
            "SELECT count(DISTINCT instance_id) FROM scheduler.executions",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(instances, 2, "both instances took part");
    a.stop().await.unwrap();
    b.stop().await.unwrap();
}
