//! Pipelines hardening through the real server: CEL conditions that would overflow a stack or
//! burn CPU, template fan-out, huge definitions, deep outputs, malformed run bodies, other
//! users' agents and crash loops.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use gathering_tests::loopback::{Answer, Loopback};
use gathering_tests::*;
use reqwest::StatusCode;
use serde_json::{Value, json};
use std::time::{Duration, Instant};

fn fields(body: &Value) -> Vec<String> {
    body["error"]["details"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["field"].as_str().unwrap().to_owned())
        .collect()
}

fn condition_pipeline(expr: &str) -> Value {
    json!({"name": "cond", "nodes": [
        {"id": "t", "type": "trigger"},
        {"id": "x", "type": "parallel"},
        {"id": "c", "type": "condition", "config": {"expression": expr}}
    ], "edges": [{"from": "t", "to": "x"}, {"from": "x", "to": "c"}]})
}

#[tokio::test]
async fn deeply_nested_cel_condition_is_refused_with_422_and_the_server_stays_up() {
    let app = spawn_app().await;
    let token = app.user_token().await;
    let parens = format!("{}true{}", "(".repeat(300), ")".repeat(300));
    let lists = format!("{}1{} == 1", "[".repeat(1000), "]".repeat(1000));
    let chain = format!("{} > 0", vec!["input.n"; 1000].join(" + "));
    for expr in [parens, lists, chain] {
        let r = app
            .post("/pipelines", &condition_pipeline(&expr), Some(&token))
            .await;
        let body = assert_error(r, StatusCode::UNPROCESSABLE_ENTITY, "validation_failed").await;
        assert_eq!(fields(&body), vec!["/nodes/2/config/expression"], "{body}");
    }
    let r = app.get("/health/live", None).await;
    assert_eq!(r.status(), StatusCode::OK);
    // A reasonable condition is still accepted.
    app.create_pipeline(
        &token,
        condition_pipeline(
            "(input.n > 1 && [1, 2].exists(v, v == input.n)) || nodes.x.status == 'succeeded'",
        ),
    )
    .await;
}

#[tokio::test]
async fn nested_comprehension_condition_is_refused_with_422() {
    let app = spawn_app().await;
    let token = app.user_token().await;
    let l = format!(
        "[{}]",
        (0..50).map(|i| i.to_string()).collect::<Vec<_>>().join(",")
    );
    let expr = format!("{l}.all(a, {l}.all(b, {l}.all(c, a + b + c >= 0)))");
    let r = app
        .post("/pipelines", &condition_pipeline(&expr), Some(&token))
        .await;
    let body = assert_error(r, StatusCode::UNPROCESSABLE_ENTITY, "validation_failed").await;
    assert_eq!(fields(&body), vec!["/nodes/2/config/expression"]);
    assert!(
        body["error"]["details"][0]["problem"]
            .as_str()
            .unwrap()
            .contains("comprehension"),
        "{body}"
    );
}

/// With nesting allowed by configuration, a CPU-heavy condition runs into its budget: the node
/// times out, and the server keeps answering meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_condition_over_its_budget_times_out_and_the_server_stays_ready() {
    let app = spawn_app_with(&[
        ("GATHERING__PIPELINE__CEL_MAX_COMPREHENSION_DEPTH", "2"),
        ("GATHERING__PIPELINE__CONDITION_BUDGET_MS", "200"),
    ])
    .await;
    let token = app.user_token().await;
    let p = app
        .create_pipeline(
            &token,
            condition_pipeline("input.l.all(a, input.l.all(b, a + b >= 0))"),
        )
        .await;
    let run = app
        .start_run(&token, &p, json!({"l": (0..1500).collect::<Vec<i64>>()}))
        .await;
    let r = app.get("/health/ready", None).await;
    assert_eq!(r.status(), StatusCode::OK);
    let r = app.run_finished(&token, &run).await;
    assert_eq!(r["status"], "timed_out", "{r}");
    assert_eq!(run_node(&r, "c")["error"]["code"], "timed_out", "{r}");
    let r = app.get("/health/ready", None).await;
    assert_eq!(r.status(), StatusCode::OK);
}

#[tokio::test]
async fn a_12000_node_pipeline_is_refused_with_422_quickly() {
    let app = spawn_app().await;
    let token = app.user_token().await;
    let nodes: Vec<Value> = (0..12_000)
        .map(|i| json!({"id": format!("n{i}"), "type": "parallel"}))
        .collect();
    let edges: Vec<Value> = (1..12_000)
        .map(|i| json!({"from": format!("n{}", i - 1), "to": format!("n{i}")}))
        .collect();
    // Edges make the body too big for the route: refused before parsing.
    let started = Instant::now();
    let r = app
        .post(
            "/pipelines",
            &json!({"name": "huge", "nodes": nodes, "edges": edges}),
            Some(&token),
        )
        .await;
    assert!(
        r.status() == StatusCode::UNPROCESSABLE_ENTITY || r.status() == StatusCode::BAD_REQUEST,
        "{}",
        r.status()
    );
    // Nodes only: parsed, refused on the count before any graph work.
    let r = app
        .post(
            "/pipelines",
            &json!({"name": "huge", "nodes": nodes}),
            Some(&token),
        )
        .await;
    let body = assert_error(r, StatusCode::UNPROCESSABLE_ENTITY, "validation_failed").await;
    assert_eq!(fields(&body), vec!["/nodes"]);
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn template_fan_out_is_refused_when_stored_and_fails_the_node_when_rendered() {
    let app = spawn_app().await;
    let token = app.user_token().await;
    let refs: Vec<Value> = (0..2000).map(|_| json!("{{input.x}}")).collect();
    let r = app
        .post(
            "/pipelines",
            &json!({"name": "fan", "nodes": [
                {"id": "q", "type": "action", "config": {"tool": "json_query",
                 "params": {"data": refs, "query": "@"}}}
            ]}),
            Some(&token),
        )
        .await;
    let body = assert_error(r, StatusCode::UNPROCESSABLE_ENTITY, "validation_failed").await;
    assert_eq!(fields(&body), vec!["/nodes/0/config/params"]);

    // Within the reference count, the rendered size is bounded at run time.
    let refs: Vec<Value> = (0..60).map(|_| json!("{{input.x}}")).collect();
    let p = app
        .create_pipeline(
            &token,
            json!({"name": "fan", "nodes": [
                {"id": "q", "type": "action", "config": {"tool": "json_query",
                 "params": {"data": refs, "query": "@"}}}
            ]}),
        )
        .await;
    let run = app
        .start_run(&token, &p, json!({"x": "y".repeat(200 * 1024)}))
        .await;
    let r = app.run_finished(&token, &run).await;
    assert_eq!(r["status"], "failed");
    assert_eq!(
        run_node(&r, "q")["error"]["code"],
        "params_too_large",
        "{r}"
    );
}

fn nest(mut v: Value, depth: usize) -> Value {
    for _ in 0..depth {
        v = json!([v]);
    }
    v
}

#[tokio::test]
async fn a_deep_node_output_fails_the_node_and_runs_stay_readable() {
    // The tool registry bounds tool outputs at depth 64 too (`output_too_large`); raise that
    // bound so this test reaches the pipeline's own bound on what it stores.
    let app = spawn_app_with(&[("GATHERING__TOOLS__MAX_OUTPUT_DEPTH", "512")]).await;
    let token = app.user_token().await;
    // 100 levels of params around a 60-level input: a 160-level output, deeper than serde_json
    // reads back.
    let p = app
        .create_pipeline(
            &token,
            json!({"name": "deep", "nodes": [
                {"id": "q", "type": "action", "config": {"tool": "json_query",
                 "params": {"data": nest(json!("{{input.d}}"), 100), "query": "@"}}}
            ]}),
        )
        .await;
    let run = app
        .start_run(&token, &p, json!({"d": nest(json!(1), 60)}))
        .await;
    let r = app.run_finished(&token, &run).await;
    assert_eq!(r["status"], "failed", "{r}");
    assert_eq!(run_node(&r, "q")["status"], "failed");
    assert_eq!(run_node(&r, "q")["error"]["code"], "output_too_deep", "{r}");
    let r = app.get(&format!("/pipelines/{p}/runs"), Some(&token)).await;
    assert_eq!(r.status(), StatusCode::OK);
}

/// Rows stored before outputs were bounded (deeper than serde_json reads) stay readable.
#[tokio::test]
async fn stored_outputs_deeper_than_serde_reads_do_not_break_run_endpoints() {
    let app = spawn_app().await;
    let token = app.user_token().await;
    let p = app
        .create_pipeline(
            &token,
            json!({"name": "old", "nodes": [{"id": "t", "type": "trigger"}]}),
        )
        .await;
    let run = app.start_run(&token, &p, json!({})).await;
    app.run_finished(&token, &run).await;
    let deep = serde_json::to_string(&nest(json!(1), 500)).unwrap();
    let db = app.db_client().await;
    let id = uuid::Uuid::parse_str(&run).unwrap();
    db.execute(
        "UPDATE pipeline.runs SET output = $2::text::jsonb WHERE id = $1",
        &[&id, &deep],
    )
    .await
    .unwrap();
    db.execute(
        "UPDATE pipeline.node_runs SET output = $2::text::jsonb WHERE run_id = $1",
        &[&id, &deep],
    )
    .await
    .unwrap();
    let r = app.get(&format!("/runs/{run}"), Some(&token)).await;
    assert_eq!(r.status(), StatusCode::OK);
    let r: Value = r.json().await.unwrap();
    assert_eq!(r["output"]["error"]["code"], "unreadable_value", "{r}");
    assert_eq!(
        run_node(&r, "t")["output"]["error"]["code"],
        "unreadable_value"
    );
    let r = app.get(&format!("/pipelines/{p}/runs"), Some(&token)).await;
    assert_eq!(r.status(), StatusCode::OK);
}

#[tokio::test]
async fn malformed_run_body_is_a_400_and_an_empty_body_is_empty_input() {
    let app = spawn_app().await;
    let token = app.user_token().await;
    let p = app
        .create_pipeline(
            &token,
            json!({"name": "b", "nodes": [{"id": "t", "type": "trigger"}]}),
        )
        .await;
    let url = app.url(&format!("/pipelines/{p}/runs"));
    let r = app
        .client
        .post(&url)
        .bearer_auth(&token)
        .header("content-type", "application/json")
        .body("{\"input\": {\"a\": ")
        .send()
        .await
        .unwrap();
    assert_error(r, StatusCode::BAD_REQUEST, "invalid_json").await;
    let r = app
        .client
        .post(&url)
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let run: Value = r.json().await.unwrap();
    assert_eq!(run["input"], json!({}));
    // Nothing was started by the malformed request.
    let r: Value = app
        .get(&format!("/pipelines/{p}/runs"), Some(&token))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(r["items"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn another_users_agent_in_a_node_is_refused_with_422() {
    let app = spawn_app().await;
    let alice = app.user_token().await;
    let bob = app.user_token().await;
    let r = app
        .post(
            "/agents",
            &json!({"name": "a", "persona": "You are a.", "provider": "openai",
                    "model": "gpt-test", "temperature": 0.3}),
            Some(&alice),
        )
        .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let agent: Value = r.json().await.unwrap();
    let agent_id = agent["id"].as_str().unwrap().to_owned();
    let def = |id: &str| {
        json!({"name": "ag", "nodes": [
            {"id": "t", "type": "trigger"},
            {"id": "a", "type": "agent", "config": {"agent_id": id, "prompt": "hi"}}
        ], "edges": [{"from": "t", "to": "a"}]})
    };
    // Bob names Alice's agent, or one that does not exist: the same answer.
    for id in [agent_id.clone(), uuid::Uuid::now_v7().to_string()] {
        let r = app.post("/pipelines", &def(&id), Some(&bob)).await;
        let body = assert_error(r, StatusCode::UNPROCESSABLE_ENTITY, "validation_failed").await;
        assert_eq!(fields(&body), vec!["/nodes/1/config/agent_id"]);
        assert_eq!(body["error"]["details"][0]["problem"], "no such agent");
    }
    // Alice may; Bob cannot patch his own pipeline to point at it either.
    app.create_pipeline(&alice, def(&agent_id)).await;
    let own = app
        .create_pipeline(
            &bob,
            json!({"name": "b", "nodes": [{"id": "t", "type": "trigger"}]}),
        )
        .await;
    let r = app
        .patch(
            &format!("/pipelines/{own}"),
            &json!({"nodes": def(&agent_id)["nodes"], "edges": def(&agent_id)["edges"]}),
            Some(&bob),
        )
        .await;
    let body = assert_error(r, StatusCode::UNPROCESSABLE_ENTITY, "validation_failed").await;
    assert_eq!(fields(&body), vec!["/nodes/1/config/agent_id"]);
}

/// The instance running a run dies again and again (simulated: its lease is taken over by a dead
/// owner and expired, as a killed process leaves it); the server's own rescuer counts every
/// rescue and fails the run as `crash_loop` past `MAX_RESCUES`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_whose_instance_keeps_dying_fails_as_crash_loop() {
    let target = Loopback::start(|_, _| {
        Answer::json(200, json!({"ok": true})).after(Duration::from_secs(120))
    })
    .await;
    let app = spawn_app_with(&[
        ("GATHERING__TOOLS__HTTP_ALLOWED_HOSTS", "127.0.0.1"),
        ("GATHERING__PIPELINE__LEASE_SECS", "2"),
        ("GATHERING__PIPELINE__RESCUE_INTERVAL_SECS", "1"),
        ("GATHERING__PIPELINE__POLL_INTERVAL_MS", "100"),
        ("GATHERING__PIPELINE__MAX_RESCUES", "2"),
    ])
    .await;
    let token = app.user_token().await;
    let p = app.create_pipeline(&token,
        json!({"name": "crashy", "nodes": [
            {"id": "h", "type": "action", "retry": {"max_attempts": 10},
             "config": {"tool": "http_request",
                        "params": {"method": "GET", "url": target.url("/hang"), "timeout_ms": 120000}}}
        ]}),
    )
    .await;
    let run = app.start_run(&token, &p, json!({})).await;
    let id = uuid::Uuid::parse_str(&run).unwrap();
    let dead = uuid::Uuid::now_v7();
    let db = app.db_client().await;
    for crash in 1..=3 {
        // Wait until a live instance holds the run with its node in flight...
        tokio::time::timeout(Duration::from_secs(30), async {
            loop {
                let row = db
                    .query_one(
                        "SELECT lease_owner, status FROM pipeline.runs WHERE id = $1",
                        &[&id],
                    )
                    .await
                    .unwrap();
                let owner: Option<uuid::Uuid> = row.get(0);
                if owner.is_some_and(|o| o != dead) && target.hits("/hang") >= crash {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
        .unwrap_or_else(|_| panic!("claimed again before crash {crash}"));
        // ...then it "dies": the lease belongs to a dead instance and has expired.
        db.execute(
            "UPDATE pipeline.runs SET lease_owner = $2, lease_expires_at = now() - interval '1 minute'
             WHERE id = $1",
            &[&id, &dead],
        )
        .await
        .unwrap();
    }
    let r = app.run_finished(&token, &run).await;
    assert_eq!(r["status"], "failed", "{r}");
    assert_eq!(r["error"]["code"], "crash_loop", "{r}");
    assert_eq!(
        target.hits("/hang"),
        3,
        "not run again after the third crash"
    );
}

/// A supervisor restarting the server gracefully while a node never finishes: the drain gives
/// up on the node and releases the run, and that interruption counts like a dead instance. Past
/// `MAX_RESCUES` the next instance fails the run as `crash_loop` without running the node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_restarts_that_abandon_a_node_end_in_crash_loop() {
    let target = Loopback::start(|_, _| {
        Answer::json(200, json!({"ok": true})).after(Duration::from_secs(120))
    })
    .await;
    let env = [
        ("GATHERING__TOOLS__HTTP_ALLOWED_HOSTS", "127.0.0.1"),
        ("GATHERING__PIPELINE__POLL_INTERVAL_MS", "100"),
        ("GATHERING__PIPELINE__MAX_RESCUES", "0"),
        ("GATHERING__SERVER__SHUTDOWN_TIMEOUT_SECS", "1"),
    ];
    let db = TestDatabase::new().await;
    let app = spawn_app_on(&db, &env).await;
    let token = app.user_token().await;
    let p = app.create_pipeline(&token,
        json!({"name": "hang", "nodes": [
            {"id": "h", "type": "action", "retry": {"max_attempts": 10},
             "config": {"tool": "http_request",
                        "params": {"method": "GET", "url": target.url("/hang"), "timeout_ms": 120000}}}
        ]}),
    )
    .await;
    let run = app.start_run(&token, &p, json!({})).await;
    target
        .wait_for(Some("/hang"), 1, Duration::from_secs(30))
        .await;
    let db_client = app.db_client().await;
    app.stop().await.unwrap();
    // The drain releases the run (counted) once it gives up on the node; the server's stop may
    // return before that last write lands, so wait for it.
    let id = uuid::Uuid::parse_str(&run).unwrap();
    tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            let row = db_client
                .query_one(
                    "SELECT rescue_count, lease_owner IS NULL, status FROM pipeline.runs WHERE id = $1",
                    &[&id],
                )
                .await
                .unwrap();
            if row.get::<_, i32>(0) == 1 {
                assert!(row.get::<_, bool>(1), "the lease was released");
                assert_eq!(row.get::<_, &str>(2), "running");
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the interrupted drain was counted");
    // The restarted instance does not run the node again.
    let app = spawn_app_on(&db, &env).await;
    let r = app.run_finished(&token, &run).await;
    assert_eq!(r["status"], "failed", "{r}");
    assert_eq!(r["error"]["code"], "crash_loop", "{r}");
    assert_eq!(target.hits("/hang"), 1);
}

#[tokio::test]
async fn a_pipeline_body_over_the_route_limit_is_refused_before_parsing() {
    let app = spawn_app_with(&[("GATHERING__PIPELINE__MAX_DEFINITION_BYTES", "4096")]).await;
    let token = app.user_token().await;
    let nodes: Vec<Value> = (0..200)
        .map(|i| json!({"id": format!("n{i}"), "type": "parallel"}))
        .collect();
    let r = app
        .post(
            "/pipelines",
            &json!({"name": "big", "nodes": nodes}),
            Some(&token),
        )
        .await;
    assert_error(r, StatusCode::BAD_REQUEST, "payload_too_large").await;
    // Small enough: accepted.
    app.create_pipeline(
        &token,
        json!({"name": "small", "nodes": [{"id": "t", "type": "trigger"}]}),
    )
    .await;
}
