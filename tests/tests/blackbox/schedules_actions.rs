//! Black-box: every schedule action type observed through its real effect — a pipeline run, a
//! stored notification, an agent's reply from a loopback fake provider, and HTTP calls counted by
//! a loopback server (retried on 5xx, not on 404), refused by the SSRF guard when loopback is
//! not allowed, and failed by its own `timeout_ms` against a server that never answers.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use gathering_llm::test_support::{FakeProvider, Recorded, Reply};
use gathering_tests::loopback::{Answer, Loopback};
use gathering_tests::{TestApp, spawn_app, spawn_app_with};
use reqwest::StatusCode;
use serde_json::{Value, json};
use std::time::{Duration, Instant};

const ALLOW_LOOPBACK: (&str, &str) = ("GATHERING__TOOLS__HTTP_ALLOWED_HOSTS", "127.0.0.1");

/// The action's target, counting hits per path (and TCP connections): `/ok` 200, `/flaky` 500
/// on its first call then 200, `/missing` 404.
struct Target;

impl Target {
    async fn start() -> Loopback {
        Loopback::start(|path, count| match path {
            "/ok" => Answer::json(200, json!({"ok": true})),
            "/flaky" if count == 1 => Answer::json(500, json!({"error": "boom"})),
            "/flaky" => Answer::json(200, json!({"ok": true, "call": count})),
            _ => Answer::json(404, json!({"error": "nope"})),
        })
        .await
    }
}

/// A server that reads each request, counts it, and answers only after a minute.
struct Silent;

impl Silent {
    async fn start() -> Loopback {
        Loopback::start(|_, _| Answer::json(200, json!({})).after(Duration::from_secs(60))).await
    }
}

/// Creates a schedule that never fires on its own (daily), so only run-now executes it.
async fn create_schedule(app: &TestApp, token: &str, action_type: &str, config: Value) -> String {
    let r = app
        .post(
            "/schedules",
            &json!({"name": action_type, "interval_secs": 86_400,
                    "action_type": action_type, "action_config": config}),
            Some(token),
        )
        .await;
    assert_eq!(
        r.status(),
        StatusCode::CREATED,
        "{}",
        r.text().await.unwrap()
    );
    let s: Value = r.json().await.unwrap();
    s["id"].as_str().unwrap().to_owned()
}

/// `POST /schedules/{id}/run-now`, then polls (bounded) until that execution has finished.
async fn run_now_and_wait(app: &TestApp, token: &str, id: &str) -> Value {
    let r = app
        .post(&format!("/schedules/{id}/run-now"), &json!({}), Some(token))
        .await;
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let started: Value = r.json().await.unwrap();
    let exec_id = started["id"].as_str().unwrap().to_owned();
    tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            let r = app
                .get(&format!("/schedules/{id}/executions?limit=50"), Some(token))
                .await;
            assert_eq!(r.status(), StatusCode::OK);
            let v: Value = r.json().await.unwrap();
            if let Some(e) = v["items"]
                .as_array()
                .unwrap()
                .iter()
                .find(|e| e["id"] == exec_id.as_str())
                && e["status"] != "running"
            {
                return e.clone();
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .expect("the execution did not finish in time")
}

#[tokio::test]
async fn execute_pipeline_starts_a_real_run_linked_from_the_execution() {
    let app = spawn_app().await;
    let token = app.user_token().await;
    let r = app
        .post(
            "/pipelines",
            &json!({"name": "calc", "nodes": [
                {"id": "t", "type": "trigger", "config": {}},
                {"id": "calc", "type": "action",
                 "config": {"tool": "calculator", "params": {"expression": "{{input.expr}}"}}}
            ], "edges": [{"from": "t", "to": "calc"}]}),
            Some(&token),
        )
        .await;
    assert_eq!(
        r.status(),
        StatusCode::CREATED,
        "{}",
        r.text().await.unwrap()
    );
    let pipeline: Value = r.json().await.unwrap();
    let pipeline_id = pipeline["id"].as_str().unwrap();
    let id = create_schedule(
        &app,
        &token,
        "execute_pipeline",
        json!({"pipeline_id": pipeline_id, "input": {"expr": "6*7"}}),
    )
    .await;

    let e = run_now_and_wait(&app, &token, &id).await;
    assert_eq!(e["status"], "succeeded", "{e}");
    let run_id = e["result"]["run_id"]
        .as_str()
        .expect("run id in the result");
    assert_eq!(e["run_id"], run_id, "the execution links to the run: {e}");

    // The run is real: it finishes and computed 6*7 from the schedule's input.
    let run = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            let r = app.get(&format!("/runs/{run_id}"), Some(&token)).await;
            assert_eq!(r.status(), StatusCode::OK);
            let run: Value = r.json().await.unwrap();
            if !["queued", "running"].contains(&run["status"].as_str().unwrap()) {
                return run;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .expect("the pipeline run did not finish");
    assert_eq!(run["status"], "succeeded", "{run}");
    assert_eq!(run["pipeline_id"], pipeline_id);
    assert_eq!(run["input"], json!({"expr": "6*7"}));
    let calc = run["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["node_id"] == "calc")
        .expect("calc node");
    assert_eq!(calc["status"], "succeeded", "{run}");
    assert_eq!(calc["output"], json!(42), "{run}");
    app.stop().await.unwrap();
}

#[tokio::test]
async fn execute_pipeline_of_an_unknown_pipeline_fails_clearly() {
    let app = spawn_app().await;
    let token = app.user_token().await;
    // An unknown pipeline is refused when the schedule is stored (hardening_limits.rs); one
    // deleted after the schedule was stored fails the execution.
    let r = app
        .post(
            "/pipelines",
            &json!({"name": "gone", "nodes": [{"id": "start", "type": "trigger"}], "edges": []}),
            Some(&token),
        )
        .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let pipeline = r.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let id = create_schedule(
        &app,
        &token,
        "execute_pipeline",
        json!({ "pipeline_id": pipeline }),
    )
    .await;
    let r = app
        .delete(&format!("/pipelines/{pipeline}"), Some(&token))
        .await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let e = run_now_and_wait(&app, &token, &id).await;
    assert_eq!(e["status"], "failed", "{e}");
    assert!(
        e["error"].as_str().unwrap().contains("pipeline not found"),
        "{e}"
    );
    app.stop().await.unwrap();
}

#[tokio::test]
async fn send_notification_is_stored_and_listed_for_the_owner() {
    let app = spawn_app().await;
    let token = app.user_token().await;
    let other = app.user_token().await;
    let id = create_schedule(
        &app,
        &token,
        "send_notification",
        json!({"title": "Backup done", "message": "All 3 volumes saved."}),
    )
    .await;
    let e = run_now_and_wait(&app, &token, &id).await;
    assert_eq!(e["status"], "succeeded", "{e}");
    assert!(e["error"].is_null(), "{e}");

    let list: Value = app
        .get("/notifications", Some(&token))
        .await
        .json()
        .await
        .unwrap();
    let items = list["items"].as_array().unwrap();
    assert_eq!(items.len(), 1, "{list}");
    assert_eq!(items[0]["title"], "Backup done");
    assert_eq!(items[0]["message"], "All 3 volumes saved.");
    let theirs: Value = app
        .get("/notifications", Some(&other))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(theirs["items"], json!([]), "only the owner is notified");
    app.stop().await.unwrap();
}

fn agent_body() -> Value {
    json!({"name": "reporter", "persona": "You write short reports.", "provider": "openai",
           "model": "gpt-test", "temperature": 0.2})
}

#[tokio::test]
async fn run_task_runs_the_agent_and_records_its_reply() {
    let provider = FakeProvider::start(|req: &Recorded, _| {
        let last = req.body["messages"]
            .as_array()
            .and_then(|m| m.last())
            .and_then(|m| m["content"].as_str())
            .unwrap_or("")
            .to_owned();
        Reply::json(
            200,
            json!({"id": "c", "object": "chat.completion",
                   "choices": [{"index": 0, "message": {"role": "assistant",
                                "content": format!("report: {last}")},
                                "finish_reason": "stop"}],
                   "usage": {"prompt_tokens": 7, "completion_tokens": 3}}),
        )
    })
    .await
    .unwrap();
    let app = spawn_app_with(&[
        (
            "GATHERING__LLM__OPENAI__BASE_URL",
            provider.base_url.as_str(),
        ),
        ("GATHERING__LLM__OPENAI__API_KEY", "sk-env-000000"),
    ])
    .await;
    let token = app.user_token().await;
    let r = app.post("/agents", &agent_body(), Some(&token)).await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let agent: Value = r.json().await.unwrap();
    let id = create_schedule(
        &app,
        &token,
        "run_task",
        json!({"agent_id": agent["id"], "prompt": "summarise the night"}),
    )
    .await;

    let e = run_now_and_wait(&app, &token, &id).await;
    assert_eq!(e["status"], "succeeded", "{e}");
    assert_eq!(e["result"]["text"], "report: summarise the night", "{e}");
    let calls = provider.recorded();
    assert_eq!(calls.len(), 1, "one provider call");
    assert_eq!(calls[0].body["model"], "gpt-test");
    app.stop().await.unwrap();
}

#[tokio::test]
async fn run_task_without_a_provider_key_fails_and_never_fakes_success() {
    let app = spawn_app().await;
    let token = app.user_token().await;
    let r = app.post("/agents", &agent_body(), Some(&token)).await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let agent: Value = r.json().await.unwrap();
    let id = create_schedule(
        &app,
        &token,
        "run_task",
        json!({"agent_id": agent["id"], "prompt": "summarise the night"}),
    )
    .await;
    let e = run_now_and_wait(&app, &token, &id).await;
    assert_eq!(e["status"], "failed", "{e}");
    assert!(e["result"].is_null(), "no result on failure: {e}");
    let error = e["error"].as_str().unwrap();
    assert!(error.starts_with("run_task failed"), "{e}");
    assert!(
        error.contains("no API key for openai"),
        "the error says what is missing: {e}"
    );
    app.stop().await.unwrap();
}

#[tokio::test]
async fn call_api_retries_a_500_then_succeeds() {
    let app = spawn_app_with(&[ALLOW_LOOPBACK]).await;
    let token = app.user_token().await;
    let target = Target::start().await;
    let id = create_schedule(
        &app,
        &token,
        "call_api",
        json!({"url": target.url("/flaky"), "method": "POST", "body": {"n": 1}}),
    )
    .await;
    let e = run_now_and_wait(&app, &token, &id).await;
    assert_eq!(e["status"], "succeeded", "{e}");
    assert_eq!(e["result"]["attempts"], 2, "{e}");
    assert_eq!(e["result"]["response"]["status"], 200, "{e}");
    assert_eq!(target.hits("/flaky"), 2, "one failed call, one retry");
    app.stop().await.unwrap();
}

#[tokio::test]
async fn call_api_does_not_retry_a_404_and_fails() {
    let app = spawn_app_with(&[ALLOW_LOOPBACK]).await;
    let token = app.user_token().await;
    let target = Target::start().await;
    let id = create_schedule(
        &app,
        &token,
        "call_api",
        json!({"url": target.url("/missing"), "max_attempts": 5}),
    )
    .await;
    let e = run_now_and_wait(&app, &token, &id).await;
    assert_eq!(e["status"], "failed", "{e}");
    let error = e["error"].as_str().unwrap();
    assert!(
        error.contains("404") && error.contains("after 1 attempt"),
        "{e}"
    );
    assert_eq!(target.hits("/missing"), 1, "a 404 is not retried");
    // And a healthy endpoint really is called once.
    let ok = create_schedule(&app, &token, "call_api", json!({"url": target.url("/ok")})).await;
    let e = run_now_and_wait(&app, &token, &ok).await;
    assert_eq!(e["status"], "succeeded", "{e}");
    assert_eq!(target.hits("/ok"), 1);
    app.stop().await.unwrap();
}

#[tokio::test]
async fn call_api_to_a_loopback_address_is_refused_without_the_allow_list() {
    // No GATHERING__TOOLS__HTTP_ALLOWED_HOSTS: loopback is not a public address.
    let app = spawn_app().await;
    let token = app.user_token().await;
    let target = Target::start().await;

    // An IP literal is refused when the schedule is stored (hardening_limits.rs has more).
    let r = app
        .post(
            "/schedules",
            &json!({"name": "x", "interval_secs": 86_400, "action_type": "call_api",
                    "action_config": {"url": target.url("/ok"), "max_attempts": 3}}),
            Some(&token),
        )
        .await;
    assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let body: Value = r.json().await.unwrap();
    assert_eq!(
        body["error"]["details"][0]["field"], "/action_config/url",
        "{body}"
    );

    // A name that resolves to loopback is refused by the resolver just the same.
    let port = target.port();
    let by_name = create_schedule(
        &app,
        &token,
        "call_api",
        json!({"url": format!("http://localhost:{port}/ok")}),
    )
    .await;
    let e = run_now_and_wait(&app, &token, &by_name).await;
    assert_eq!(e["status"], "failed", "{e}");
    let error = e["error"].as_str().unwrap();
    assert!(
        error.contains("the target address is not allowed") && !error.contains("127.0.0.1"),
        "refused without saying what the name resolves to: {e}"
    );

    assert_eq!(target.hits("/ok"), 0, "the loopback server got no request");
    assert_eq!(target.connections(), 0, "nor even a connection");
    app.stop().await.unwrap();
}

#[tokio::test]
async fn call_api_that_exceeds_its_timeout_fails_the_execution() {
    let app = spawn_app_with(&[ALLOW_LOOPBACK]).await;
    let token = app.user_token().await;
    let silent = Silent::start().await;
    let id = create_schedule(
        &app,
        &token,
        "call_api",
        json!({"url": silent.url("/slow"), "timeout_ms": 300, "max_attempts": 2}),
    )
    .await;
    let started = Instant::now();
    let e = run_now_and_wait(&app, &token, &id).await;
    let elapsed = started.elapsed();
    assert_eq!(e["status"], "failed", "{e}");
    assert!(e["result"].is_null(), "no result on failure: {e}");
    let error = e["error"].as_str().unwrap();
    assert!(
        error.contains("timed out after 300 ms"),
        "the error names the timeout: {e}"
    );
    assert!(
        error.contains("after 2 attempt"),
        "a timeout is retryable, up to max_attempts: {e}"
    );
    assert_eq!(silent.requests(), 2, "each attempt reached the server");
    // Two 300 ms attempts plus one backoff — far below the server's 60 s silence.
    assert!(
        elapsed < Duration::from_secs(10),
        "the timeout bounded the call: took {elapsed:?}"
    );
    app.stop().await.unwrap();
}
