//! Black-box: two server instances on one database. A user's WebSocket on instance B sees the
//! events of work done through (and executed by) instance A — fanned out through PostgreSQL
//! LISTEN/NOTIFY — and nobody else's socket does.
//!
//! To make sure the run really executes on A, instance B is started alone with
//! `MAX_CONCURRENT_RUNS=1` and kept busy with a run that hangs on a loopback HTTP "gate"; only
//! then is A started, so A's executor is the only one with room for the run under test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use gathering_tests::gate::Gate;
use gathering_tests::ws::{WAIT, Ws};
use gathering_tests::{TestApp, TestDatabase, spawn_app_on};
use reqwest::StatusCode;
use serde_json::{Value, json};
use std::time::Duration;
use tokio::time::timeout;

async fn notify(app: &TestApp, token: &str, title: &str) {
    let r = app
        .post(
            "/tools/send_notification/invoke",
            &json!({"params": {"title": title, "message": "from instance A"}}),
            Some(token),
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK, "{}", r.text().await.unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_socket_on_instance_b_sees_a_run_executed_on_instance_a_and_only_its_owner_does() {
    let db = TestDatabase::new().await;
    let gate = Gate::start().await;
    let gate_url = gate.url("/gate");

    // Instance B alone, room for one run at a time, which a hanging run takes.
    let app_b = spawn_app_on(
        &db,
        &[
            ("GATHERING__PIPELINE__MAX_CONCURRENT_RUNS", "1"),
            ("GATHERING__TOOLS__HTTP_ALLOWED_HOSTS", "127.0.0.1"),
        ],
    )
    .await;
    let carol = app_b.user_token().await;
    let blocker = app_b
        .create_pipeline(
            &carol,
            json!({"name": "blocker", "nodes": [
            {"id": "t", "type": "trigger"},
            {"id": "wait", "type": "action", "config": {"tool": "http_request",
             "params": {"method": "GET", "url": gate_url, "timeout_ms": 120000}}}
        ], "edges": [{"from": "t", "to": "wait"}]}),
        )
        .await;
    let blocker_run = app_b.start_run(&carol, &blocker, json!({})).await;
    gate.wait_for_requests(1, WAIT).await;

    // Instance A on the same database: the only executor with room now.
    let app_a = spawn_app_on(&db, &[]).await;
    let (ada, _, _) = app_a.register_and_login().await;
    let (bob, _, _) = app_a.register_and_login().await;
    app_a.listeners_ready(2).await;
    let mut ada_ws = Ws::connect(&app_b, &format!("?access_token={ada}"))
        .await
        .unwrap();
    let mut bob_ws = Ws::connect(&app_b, &format!("?access_token={bob}"))
        .await
        .unwrap();

    // A notification created through A reaches Ada's socket on B.
    notify(&app_a, &ada, "cross-instance hello").await;
    let m = ada_ws.next_json().await;
    assert_eq!(m["type"], "notification.created", "{m}");
    assert_eq!(m["data"]["title"], "cross-instance hello", "{m}");
    assert!(m["at"].is_string(), "{m}");

    // A run started through A's HTTP API.
    let pipeline = app_a
        .create_pipeline(
            &ada,
            json!({"name": "calc", "nodes": [
            {"id": "t", "type": "trigger"},
            {"id": "calc", "type": "action",
             "config": {"tool": "calculator", "params": {"expression": "{{input.expr}}"}}}
        ], "edges": [{"from": "t", "to": "calc"}]}),
        )
        .await;
    let run = app_a
        .start_run(&ada, &pipeline, json!({"expr": "6*7"}))
        .await;

    let mut kinds = Vec::new();
    loop {
        let m = ada_ws.next_json().await;
        let kind = m["type"].as_str().unwrap().to_owned();
        if kind.starts_with("run.") || kind.starts_with("node.") {
            assert_eq!(m["data"]["run_id"], run.as_str(), "{m}");
            assert_eq!(m["data"]["pipeline_id"], pipeline.as_str(), "{m}");
        }
        kinds.push(kind.clone());
        if kind == "run.finished" {
            assert_eq!(m["data"]["status"], "succeeded", "{m}");
            break;
        }
    }
    let pos = |k: &str| kinds.iter().position(|x| x == k);
    let started = pos("run.started").unwrap_or_else(|| panic!("run.started in {kinds:?}"));
    let succeeded = kinds.iter().filter(|k| *k == "node.succeeded").count();
    assert_eq!(succeeded, 2, "one node.succeeded per node: {kinds:?}");
    let first_node = kinds.iter().position(|k| k.starts_with("node.")).unwrap();
    assert!(started < first_node, "run.started comes first: {kinds:?}");
    assert_eq!(kinds.last().map(String::as_str), Some("run.finished"));

    // The run ran on A: B was full the whole time (its blocker still hangs at the gate).
    let r = app_a.run_json(&ada, &run).await;
    assert_eq!(r["status"], "succeeded", "{r}");
    assert_eq!(
        app_b.run_json(&carol, &blocker_run).await["status"],
        "running",
        "B had no room for another run"
    );

    // Bob, on the same instance, saw none of Ada's events: his first message is his own.
    notify(&app_a, &bob, "for bob").await;
    let m = bob_ws.next_json().await;
    assert_eq!(m["type"], "notification.created", "{m}");
    assert_eq!(m["data"]["title"], "for bob", "{m}");

    // Let the blocker finish; B reports it to Carol only, through its own bus.
    gate.release();
    let blocker_done = timeout(WAIT, async {
        loop {
            let r = app_b.run_json(&carol, &blocker_run).await;
            if r["status"] != "running" && r["status"] != "queued" {
                return r;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("the blocker finishes once released");
    assert_eq!(blocker_done["status"], "succeeded", "{blocker_done}");

    ada_ws.close().await;
    bob_ws.close().await;
    app_a.stop().await.unwrap();
    app_b.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_notification_created_through_instance_a_reaches_the_owners_socket_on_instance_b() {
    let app_a = spawn_app_on(&TestDatabase::new().await, &[]).await;
    let app_b = spawn_app_on(&app_a.db, &[]).await;
    let ada = app_a.user_token().await;
    let bob = app_a.user_token().await;
    app_a.listeners_ready(2).await;
    let mut ada_ws = Ws::connect(&app_b, &format!("?access_token={ada}"))
        .await
        .unwrap();
    let mut bob_ws = Ws::connect(&app_b, &format!("?access_token={bob}"))
        .await
        .unwrap();

    for i in 0..3 {
        notify(&app_a, &ada, &format!("for ada {i}")).await;
    }
    notify(&app_a, &bob, "for bob").await;
    for i in 0..3 {
        let m = ada_ws.next_json().await;
        assert_eq!(m["type"], "notification.created", "{m}");
        assert_eq!(m["data"]["title"], format!("for ada {i}"), "in order: {m}");
    }
    // Bob's first message is his own: none of Ada's three reached him.
    let m = bob_ws.next_json().await;
    assert_eq!(m["type"], "notification.created", "{m}");
    assert_eq!(m["data"]["title"], "for bob", "{m}");

    // Stored once, by A, visible through B (same database).
    let r = app_b.get("/notifications", Some(&ada)).await;
    assert_eq!(r.status(), StatusCode::OK);
    let list: Value = r.json().await.unwrap();
    assert_eq!(list["items"].as_array().unwrap().len(), 3, "{list}");

    ada_ws.close().await;
    bob_ws.close().await;
}
