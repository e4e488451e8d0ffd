//! One resilience layer through the real server: circuit breakers keyed by what fails together,
//! so one user's failures (their own tiny timeout budget, their own rate-limited or revoked
//! provider key) never block another user.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use gathering_llm::test_support::{FakeProvider, Recorded, Reply};
use gathering_tests::loopback::{Answer, Loopback};
use gathering_tests::*;
use reqwest::StatusCode;
use serde_json::{Value, json};
use std::time::Duration;

fn oa(text: &str) -> Reply {
    Reply::json(
        200,
        json!({"id": "c", "object": "chat.completion",
               "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                            "finish_reason": "stop"}],
               "usage": {"prompt_tokens": 9, "completion_tokens": 4}}),
    )
}

fn bearer(r: &Recorded) -> String {
    r.headers.get("authorization").cloned().unwrap_or_default()
}

/// Starts a run of `pipeline` and waits (bounded) until it has finished.
async fn run_to_end(app: &TestApp, token: &str, pipeline: &str) -> Value {
    let r = app
        .post(
            &format!("/pipelines/{pipeline}/runs"),
            &json!({"input": {}}),
            Some(token),
        )
        .await;
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let run: Value = r.json().await.unwrap();
    let id = run["id"].as_str().unwrap().to_owned();
    tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            let r: Value = app
                .get(&format!("/runs/{id}"), Some(token))
                .await
                .json()
                .await
                .unwrap();
            if !matches!(r["status"].as_str(), Some("queued") | Some("running")) {
                return r;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("the run finishes")
}

fn node_error(run: &Value, id: &str) -> String {
    run["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["node_id"] == id)
        .and_then(|n| n["error"]["code"].as_str())
        .unwrap_or("")
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_users_node_timeouts_on_an_endpoint_never_block_another_user_there() {
    let target = Loopback::start(|path, _| {
        let a = Answer::json(200, json!({"ok": true}));
        if path == "/slow" {
            a.after(Duration::from_secs(30))
        } else {
            a
        }
    })
    .await;
    let app = spawn_app_with(&[
        ("GATHERING__TOOLS__HTTP_ALLOWED_HOSTS", "127.0.0.1"),
        ("GATHERING__PIPELINE__BREAKER_FAILURES", "2"),
    ])
    .await;
    let alice = app.user_token().await;
    let bob = app.user_token().await;

    // Alice: a 1 ms budget on the endpoint, three attempts per run, run after run.
    let slow = app.create_pipeline(&alice,
        json!({"name": "impatient", "nodes": [
            {"id": "get", "type": "action", "timeout_ms": 1,
             "retry": {"max_attempts": 3, "initial_backoff_ms": 1},
             "config": {"tool": "http_request", "params": {"method": "GET", "url": target.url("/slow")}}}
        ], "edges": []}),
    )
    .await;
    // ... and on a pure built-in tool (which may or may not beat 1 ms).
    let calc = app
        .create_pipeline(
            &alice,
            json!({"name": "hasty", "nodes": [
            {"id": "calc", "type": "action", "timeout_ms": 1,
             "config": {"tool": "calculator", "params": {"expression": "1+1"}}}
        ], "edges": []}),
        )
        .await;
    for _ in 0..3 {
        let run = run_to_end(&app, &alice, &slow).await;
        assert_eq!(run["status"], "timed_out", "{run}");
        assert_eq!(node_error(&run, "get"), "timed_out", "{run}");
        let run = run_to_end(&app, &alice, &calc).await;
        assert!(
            matches!(run["status"].as_str(), Some("succeeded" | "timed_out")),
            "{run}"
        );
    }

    // Bob: the same endpoint and the same built-in tool still work for him.
    let ok = app.create_pipeline(&bob,
        json!({"name": "patient", "nodes": [
            {"id": "get", "type": "action",
             "config": {"tool": "http_request", "params": {"method": "GET", "url": target.url("/ok")}}},
            {"id": "calc", "type": "action",
             "config": {"tool": "calculator", "params": {"expression": "1+1"}}}
        ], "edges": []}),
    )
    .await;
    let run = run_to_end(&app, &bob, &ok).await;
    assert_eq!(run["status"], "succeeded", "{run}");
    assert_eq!(target.hits("/ok"), 1, "Bob's call reached the endpoint");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_users_rate_limited_or_revoked_provider_key_never_blocks_another_users_key() {
    let provider = FakeProvider::start(|r: &Recorded, _| match bearer(r).as_str() {
        "Bearer sk-alice-limited" => {
            Reply::json(429, json!({"error": {"message": "Rate limit reached"}}))
                .header("retry-after", "0")
        }
        "Bearer sk-carol-revoked" => Reply::json(
            401,
            json!({"error": {"message": "Incorrect API key provided"}}),
        ),
        _ => oa("bob is served"),
    })
    .await
    .unwrap();
    let app = spawn_app_with(&[
        (
            "GATHERING__LLM__OPENAI__BASE_URL",
            provider.base_url.as_str(),
        ),
        ("GATHERING__PIPELINE__BREAKER_FAILURES", "3"),
    ])
    .await;
    let mut users = Vec::new();
    for key in ["sk-alice-limited", "sk-bob-good", "sk-carol-revoked"] {
        let token = app.user_token().await;
        let r = app
            .put(
                "/settings/providers/openai",
                &json!({"api_key": key}),
                Some(&token),
            )
            .await;
        assert_eq!(r.status(), StatusCode::NO_CONTENT);
        let r = app
            .post(
                "/agents",
                &json!({"name": "a", "provider": "openai", "model": "gpt-test"}),
                Some(&token),
            )
            .await;
        assert_eq!(r.status(), StatusCode::CREATED);
        let agent: Value = r.json().await.unwrap();
        users.push((token, agent["id"].as_str().unwrap().to_owned()));
    }
    let chat = |i: usize| {
        let (token, agent) = users[i].clone();
        let app = &app;
        async move {
            app.post(
                &format!("/agents/{agent}/chat"),
                &json!({"message": "hello"}),
                Some(&token),
            )
            .await
        }
    };
    let calls_with = |key: &str| {
        provider
            .recorded()
            .iter()
            .filter(|r| bearer(r) == format!("Bearer {key}"))
            .count()
    };

    // Alice's key is rate limited: her interactive chat retries, then her key's circuit opens.
    assert_error(
        chat(0).await,
        StatusCode::TOO_MANY_REQUESTS,
        "provider_rate_limited",
    )
    .await;
    assert_eq!(calls_with("sk-alice-limited"), 3);
    assert_error(
        chat(0).await,
        StatusCode::SERVICE_UNAVAILABLE,
        "provider_circuit_open",
    )
    .await;
    assert_eq!(calls_with("sk-alice-limited"), 3, "no call while open");

    // Carol's key is revoked: every call is refused by the provider, nothing opens.
    for _ in 0..5 {
        assert_error(
            chat(2).await,
            StatusCode::UNPROCESSABLE_ENTITY,
            "provider_unauthorized",
        )
        .await;
    }
    assert_eq!(calls_with("sk-carol-revoked"), 5);

    // Bob's key on the same provider and endpoint is served, by chat and by an agent node.
    let r = chat(1).await;
    assert_eq!(r.status(), StatusCode::OK);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["reply"], "bob is served");
    let (bob, agent) = users[1].clone();
    let p = app
        .create_pipeline(
            &bob,
            json!({"name": "ask", "nodes": [
            {"id": "ask", "type": "agent", "config": {"agent_id": agent, "prompt": "hi"}}
        ], "edges": []}),
        )
        .await;
    let run = run_to_end(&app, &bob, &p).await;
    assert_eq!(run["status"], "succeeded", "{run}");
    assert_eq!(calls_with("sk-bob-good"), 2);
}
