//! Pipelines through real HTTP: the real server (executor included) on a fresh database, with a
//! real HTTP server on loopback as the target of `http_request` action nodes.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use gathering_llm::test_support::{FakeProvider, Recorded, Reply};
use gathering_tests::gate::Gate;
use gathering_tests::loopback::{Answer, Loopback};
use gathering_tests::*;
use reqwest::StatusCode;
use serde_json::{Value, json};
use std::time::{Duration, Instant};

/// The tools' target, counting hits per path:
/// `/ok` 200, `/hit/<name>` 200, `/flaky/<n>` 503 for the first n calls then 200,
/// `/notfound` 404, `/always500` 500, `/slow` answers after 30 s, `/once-slow/<k>` hangs on
/// its first call and answers 200 afterwards.
struct Target;

impl Target {
    async fn start() -> Loopback {
        Loopback::start(|path, count| {
            if path == "/ok" || path.starts_with("/hit/") {
                Answer::json(200, json!({"ok": true, "n": 42, "path": path}))
            } else if let Some(n) = path.strip_prefix("/flaky/") {
                if count <= n.parse::<usize>().unwrap_or(0) {
                    Answer::json(503, json!({"error": "try later"}))
                } else {
                    Answer::json(200, json!({"ok": true, "after": count}))
                }
            } else if path.starts_with("/once-slow/") {
                // The first call hangs (its caller is killed meanwhile).
                let a = Answer::json(200, json!({"ok": true, "call": count}));
                if count == 1 {
                    a.after(Duration::from_secs(120))
                } else {
                    a
                }
            } else if path == "/notfound" {
                Answer::json(404, json!({"error": "nope"}))
            } else if path == "/always500" {
                Answer::json(500, json!({"error": "boom"}))
            } else if path == "/slow" {
                Answer::json(200, json!({"slow": true})).after(Duration::from_secs(30))
            } else {
                Answer::json(404, json!({}))
            }
        })
        .await
    }
}

async fn app_with(extra: &[(&str, &str)]) -> TestApp {
    let mut env = vec![("GATHERING__TOOLS__HTTP_ALLOWED_HOSTS", "127.0.0.1")];
    env.extend_from_slice(extra);
    spawn_app_with(&env).await
}

fn get_node(id: &str, url: String) -> Value {
    json!({"id": id, "type": "action", "config": {"tool": "http_request", "params": {"method": "GET", "url": url}}})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn linear_pipeline_calls_the_target_in_order_and_passes_outputs() {
    let target = Target::start().await;
    let app = app_with(&[]).await;
    let token = app.user_token().await;
    let p = app
        .create_pipeline(
            &token,
            json!({"name": "linear", "nodes": [
            {"id": "start", "type": "trigger"},
            get_node("fetch", target.url("/ok")),
            get_node("next", target.url("/hit/{{nodes.fetch.output.status}}-{{input.tag}}"))
        ], "edges": [{"from": "start", "to": "fetch"}, {"from": "fetch", "to": "next"}]}),
        )
        .await;
    let run = app.start_run(&token, &p, json!({"tag": "x"})).await;
    let r = app.run_finished(&token, &run).await;
    assert_eq!(r["status"], "succeeded", "{r}");
    assert_eq!(target.hits("/ok"), 1);
    assert_eq!(
        target.hits("/hit/200-x"),
        1,
        "the templated URL used fetch's output"
    );
    assert_eq!(run_node(&r, "fetch")["output"]["status"], 200);
    assert_eq!(run_node(&r, "next")["attempts"], 1);
    assert!(r["finished_at"].is_string());
    let history: Value = app
        .get(&format!("/pipelines/{p}/runs"), Some(&token))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(history["items"][0]["id"], run.as_str());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn condition_takes_one_branch_and_skips_the_other() {
    let target = Target::start().await;
    let app = app_with(&[]).await;
    let token = app.user_token().await;
    let p = app
        .create_pipeline(
            &token,
            json!({"name": "cond", "nodes": [
                {"id": "start", "type": "trigger"},
                {"id": "check", "type": "condition", "config": {"expression": "input.n > 5"}},
                get_node("yes", target.url("/hit/yes")),
                get_node("no", target.url("/hit/no")),
                get_node("after_no", target.url("/hit/after_no"))
            ], "edges": [
                {"from": "start", "to": "check"},
                {"from": "check", "to": "yes", "when": true},
                {"from": "check", "to": "no", "when": false},
                {"from": "no", "to": "after_no"}
            ]}),
        )
        .await;
    let r = app
        .run_finished(&token, &app.start_run(&token, &p, json!({"n": 9})).await)
        .await;
    assert_eq!(r["status"], "succeeded", "{r}");
    assert_eq!(run_node(&r, "check")["output"], true);
    assert_eq!(run_node(&r, "no")["status"], "skipped");
    assert_eq!(run_node(&r, "after_no")["status"], "skipped");
    assert_eq!(
        (
            target.hits("/hit/yes"),
            target.hits("/hit/no"),
            target.hits("/hit/after_no")
        ),
        (1, 0, 0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parallel_branches_all_run_and_join() {
    let target = Target::start().await;
    let app = app_with(&[]).await;
    let token = app.user_token().await;
    let p = app.create_pipeline(&token,
        json!({"name": "fan", "nodes": [
            {"id": "fan", "type": "parallel"},
            get_node("a", target.url("/hit/a")), get_node("b", target.url("/hit/b")), get_node("c", target.url("/hit/c")),
            get_node("join", target.url("/hit/join"))
        ], "edges": [
            {"from": "fan", "to": "a"}, {"from": "fan", "to": "b"}, {"from": "fan", "to": "c"},
            {"from": "a", "to": "join"}, {"from": "b", "to": "join"}, {"from": "c", "to": "join"}
        ]}),
    )
    .await;
    let r = app
        .run_finished(&token, &app.start_run(&token, &p, json!({})).await)
        .await;
    assert_eq!(r["status"], "succeeded", "{r}");
    for path in ["/hit/a", "/hit/b", "/hit/c", "/hit/join"] {
        assert_eq!(target.hits(path), 1, "{path}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retryable_failures_are_retried_until_success_and_4xx_is_not_retried() {
    let target = Target::start().await;
    let app = app_with(&[]).await;
    let token = app.user_token().await;
    let retry = json!({"max_attempts": 4, "initial_backoff_ms": 10, "multiplier": 2.0, "max_backoff_ms": 100});
    let mut flaky = get_node("flaky", target.url("/flaky/2"));
    flaky["retry"] = retry.clone();
    let p = app
        .create_pipeline(
            &token,
            json!({"name": "retry", "nodes": [flaky], "edges": []}),
        )
        .await;
    let r = app
        .run_finished(&token, &app.start_run(&token, &p, json!({})).await)
        .await;
    assert_eq!(r["status"], "succeeded", "{r}");
    assert_eq!(run_node(&r, "flaky")["attempts"], 3);
    assert_eq!(target.hits("/flaky/2"), 3);

    let mut missing = get_node("missing", target.url("/notfound"));
    missing["retry"] = retry;
    let p = app
        .create_pipeline(
            &token,
            json!({"name": "4xx", "nodes": [missing], "edges": []}),
        )
        .await;
    let r = app
        .run_finished(&token, &app.start_run(&token, &p, json!({})).await)
        .await;
    assert_eq!(r["status"], "failed", "{r}");
    assert_eq!(run_node(&r, "missing")["attempts"], 1);
    assert_eq!(run_node(&r, "missing")["status"], "failed");
    assert_eq!(target.hits("/notfound"), 1, "a 4xx is not retried");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_circuit_opens_after_consecutive_failures_and_later_calls_fail_fast() {
    let target = Target::start().await;
    let app = app_with(&[("GATHERING__PIPELINE__BREAKER_FAILURES", "2")]).await;
    let token = app.user_token().await;
    let mut down = get_node("down", target.url("/always500"));
    down["retry"] = json!({"max_attempts": 2, "initial_backoff_ms": 10});
    let p = app
        .create_pipeline(
            &token,
            json!({"name": "breaker", "nodes": [down], "edges": []}),
        )
        .await;
    let first = app
        .run_finished(&token, &app.start_run(&token, &p, json!({})).await)
        .await;
    assert_eq!(first["status"], "failed");
    assert_eq!(target.hits("/always500"), 2);
    let second = app
        .run_finished(&token, &app.start_run(&token, &p, json!({})).await)
        .await;
    assert_eq!(second["status"], "failed");
    assert_eq!(
        run_node(&second, "down")["error"]["code"],
        "circuit_open",
        "{second}"
    );
    assert_eq!(
        target.hits("/always500"),
        2,
        "an open circuit sends nothing"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_and_run_timeouts_end_the_run_timed_out() {
    let target = Target::start().await;
    let app = app_with(&[]).await;
    let token = app.user_token().await;
    let mut slow = get_node("slow", target.url("/slow"));
    slow["timeout_ms"] = json!(300);
    let p = app
        .create_pipeline(
            &token,
            json!({"name": "node-timeout", "nodes": [slow], "edges": []}),
        )
        .await;
    let r = app
        .run_finished(&token, &app.start_run(&token, &p, json!({})).await)
        .await;
    assert_eq!(r["status"], "timed_out", "{r}");
    assert_eq!(run_node(&r, "slow")["status"], "failed");
    assert_eq!(run_node(&r, "slow")["error"]["code"], "timed_out");

    let p = app.create_pipeline(&token,
        json!({"name": "run-timeout", "timeout_ms": 400,
               "nodes": [get_node("slow", target.url("/slow")), get_node("after", target.url("/hit/after-timeout"))],
               "edges": [{"from": "slow", "to": "after"}]}),
    )
    .await;
    let r = app
        .run_finished(&token, &app.start_run(&token, &p, json!({})).await)
        .await;
    assert_eq!(r["status"], "timed_out", "{r}");
    assert_eq!(r["error"]["code"], "timed_out");
    assert_eq!(run_node(&r, "slow")["status"], "cancelled");
    assert_eq!(target.hits("/hit/after-timeout"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_stops_the_run_and_nothing_runs_afterwards() {
    let target = Target::start().await;
    let app = app_with(&[]).await;
    let token = app.user_token().await;
    let p = app.create_pipeline(&token,
        json!({"name": "cancel", "nodes": [get_node("slow", target.url("/slow")), get_node("after", target.url("/hit/after-cancel"))],
               "edges": [{"from": "slow", "to": "after"}]}),
    )
    .await;
    let run = app.start_run(&token, &p, json!({})).await;
    tokio::time::timeout(Duration::from_secs(20), async {
        while target.hits("/slow") == 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the slow node started");
    let r = app
        .post(&format!("/runs/{run}/cancel"), &json!({}), Some(&token))
        .await;
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let r = app.run_finished(&token, &run).await;
    assert_eq!(r["status"], "cancelled", "{r}");
    assert_eq!(run_node(&r, "slow")["status"], "cancelled");
    assert_eq!(run_node(&r, "after")["status"], "cancelled");
    // Nothing of the cancelled run executes later. This sleep stays: it is the window in which
    // nothing may happen, not a wait for something to happen.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(target.hits("/hit/after-cancel"), 0);
    assert_eq!(app.run_json(&token, &run).await["status"], "cancelled");
    let again = app
        .post(&format!("/runs/{run}/cancel"), &json!({}), Some(&token))
        .await;
    assert_error(again, StatusCode::CONFLICT, "run_finished").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_definitions_answer_422_and_store_nothing() {
    let app = app_with(&[]).await;
    let token = app.user_token().await;
    let r = app
        .post(
            "/pipelines",
            &json!({"name": "bad", "nodes": [{"id": "a", "type": "teleport", "config": {}},
                                              {"id": "a", "type": "delay", "config": {"ms": "soon"}},
                                              {"id": "c", "type": "action", "config": {"tool": "teleport"}}],
                    "edges": [{"from": "a", "to": "ghost"}]}),
            Some(&token),
        )
        .await;
    let body = assert_error(r, StatusCode::UNPROCESSABLE_ENTITY, "validation_failed").await;
    let fields: Vec<&str> = body["error"]["details"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["field"].as_str().unwrap())
        .collect();
    for f in [
        "/nodes/0/type",
        "/nodes/1/id",
        "/nodes/1/config/ms",
        "/nodes/2/config/tool",
        "/edges/0/to",
    ] {
        assert!(fields.contains(&f), "{f} in {fields:?}");
    }
    let r = app
        .post(
            "/pipelines",
            &json!({"name": "loop", "nodes": [{"id": "x", "type": "parallel"}, {"id": "y", "type": "parallel"}],
                    "edges": [{"from": "x", "to": "y"}, {"from": "y", "to": "x"}]}),
            Some(&token),
        )
        .await;
    let body = assert_error(r, StatusCode::UNPROCESSABLE_ENTITY, "cycle_detected").await;
    assert!(
        body["error"]["message"].as_str().unwrap().contains("x, y"),
        "{body}"
    );
    let list: Value = app
        .get("/pipelines", Some(&token))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(list["items"], json!([]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crud_versions_and_other_users_get_404() {
    let target = Target::start().await;
    let app = app_with(&[]).await;
    let alice = app.user_token().await;
    let bob = app.user_token().await;
    let p = app
        .create_pipeline(
            &alice,
            json!({"name": "mine", "nodes": [get_node("a", target.url("/ok"))], "edges": []}),
        )
        .await;
    let patched: Value = app
        .patch(
            &format!("/pipelines/{p}"),
            &json!({"name": "renamed", "timeout_ms": 60000}),
            Some(&alice),
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        (patched["name"].as_str(), patched["version"].as_i64()),
        (Some("renamed"), Some(2))
    );
    let run = app.start_run(&alice, &p, json!({})).await;
    assert_eq!(app.run_finished(&alice, &run).await["pipeline_version"], 2);

    for r in [
        app.get(&format!("/pipelines/{p}"), Some(&bob)).await,
        app.patch(
            &format!("/pipelines/{p}"),
            &json!({"name": "x"}),
            Some(&bob),
        )
        .await,
        app.post(&format!("/pipelines/{p}/runs"), &json!({}), Some(&bob))
            .await,
        app.get(&format!("/pipelines/{p}/runs"), Some(&bob)).await,
        app.get(&format!("/runs/{run}"), Some(&bob)).await,
        app.post(&format!("/runs/{run}/cancel"), &json!({}), Some(&bob))
            .await,
        app.delete(&format!("/pipelines/{p}"), Some(&bob)).await,
    ] {
        assert_error(r, StatusCode::NOT_FOUND, "not_found").await;
    }
    let list: Value = app
        .get("/pipelines", Some(&bob))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(list["items"], json!([]));
    assert_eq!(
        app.delete(&format!("/pipelines/{p}"), Some(&alice))
            .await
            .status(),
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        app.get(&format!("/pipelines/{p}"), Some(&alice))
            .await
            .status(),
        StatusCode::NOT_FOUND
    );
}

/// Short leases so a killed instance's runs are rescued quickly.
const FAST_RESCUE: [(&str, &str); 4] = [
    ("GATHERING__PIPELINE__LEASE_SECS", "2"),
    ("GATHERING__PIPELINE__RESCUE_INTERVAL_SECS", "1"),
    ("GATHERING__PIPELINE__POLL_INTERVAL_MS", "100"),
    ("GATHERING__TOOLS__HTTP_ALLOWED_HOSTS", "127.0.0.1"),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_run_then_restart_resumes_without_rerunning_completed_nodes() {
    let target = Target::start().await;
    let db = TestDatabase::new().await;
    let data = tempfile::tempdir().unwrap();
    let child = gathering_tests::spawn_server_process!(&db, data.path(), &FAST_RESCUE);
    let base = child.api();
    let client = reqwest::Client::new();
    let r = client
        .post(format!("{base}/auth/register"))
        .json(&json!({"email": "k@example.com", "password": PASSWORD, "name": "K"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let tokens: Value = client
        .post(format!("{base}/auth/login"))
        .json(&json!({"email": "k@example.com", "password": PASSWORD}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token = tokens["access_token"].as_str().unwrap().to_owned();
    let p: Value = client
        .post(format!("{base}/pipelines"))
        .bearer_auth(&token)
        .json(&json!({"name": "resume", "nodes": [
            get_node("a", target.url("/hit/resume-a")),
            get_node("b", target.url("/once-slow/resume-b")),
            get_node("c", target.url("/hit/resume-c"))
        ], "edges": [{"from": "a", "to": "b"}, {"from": "b", "to": "c"}]}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let run: Value = client
        .post(format!(
            "{base}/pipelines/{}/runs",
            p["id"].as_str().unwrap()
        ))
        .bearer_auth(&token)
        .json(&json!({}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let run_id = run["id"].as_str().unwrap().to_owned();
    tokio::time::timeout(Duration::from_secs(30), async {
        while target.hits("/once-slow/resume-b") == 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("node b is in flight");
    child.kill_9().await;

    // A new instance on the same database rescues the run once its lease expires and resumes it.
    let app = spawn_app_on(&db, &FAST_RESCUE).await;
    let r = app.run_finished(&token, &run_id).await;
    assert_eq!(r["status"], "succeeded", "{r}");
    assert_eq!(
        target.hits("/hit/resume-a"),
        1,
        "the completed node did not run again"
    );
    assert_eq!(
        target.hits("/once-slow/resume-b"),
        2,
        "the mid-flight node ran again"
    );
    assert_eq!(target.hits("/hit/resume-c"), 1);
    assert_eq!(run_node(&r, "b")["attempts"], 2);
}

/// The run is driven by instance A (the only instance when it was claimed); the cancel goes
/// through instance B. A's lease heartbeat — the other way a cancel flag is noticed — is set to
/// 100 s, so only the NOTIFY from B to A can stop the run within the bound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_sent_to_another_instance_stops_the_run_within_two_seconds() {
    const SLOW_HEARTBEAT: [(&str, &str); 3] = [
        ("GATHERING__TOOLS__HTTP_ALLOWED_HOSTS", "127.0.0.1"),
        ("GATHERING__PIPELINE__LEASE_SECS", "300"),
        ("GATHERING__PIPELINE__HEARTBEAT_SECS", "100"),
    ];
    let gate = Gate::start().await;
    let app_a = spawn_app_with(&SLOW_HEARTBEAT).await;
    let token = app_a.user_token().await;
    let p = app_a
        .create_pipeline(
            &token,
            json!({"name": "cross-cancel", "nodes": [
            {"id": "t", "type": "trigger"},
            {"id": "wait", "type": "action", "config": {"tool": "http_request",
             "params": {"method": "GET", "url": gate.url("/gate/wait"), "timeout_ms": 120000}}},
            get_node("after", gate.url("/gate/after"))
        ], "edges": [{"from": "t", "to": "wait"}, {"from": "wait", "to": "after"}]}),
        )
        .await;
    let run = app_a.start_run(&token, &p, json!({})).await;
    // A is the only instance: the run hanging at the gate is A's.
    tokio::time::timeout(Duration::from_secs(20), async {
        while gate.paths().is_empty() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("A's executor reaches the gate");
    assert_eq!(gate.paths(), ["/gate/wait"]);

    let app_b = spawn_app_on(&app_a.db, &SLOW_HEARTBEAT).await;
    app_a.listeners_ready(2).await;
    assert_eq!(app_b.run_json(&token, &run).await["status"], "running");

    let r = app_b
        .post(&format!("/runs/{run}/cancel"), &json!({}), Some(&token))
        .await;
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let asked = Instant::now();
    let cancelled = tokio::time::timeout(Duration::from_secs(2), async {
        loop {
            let r = app_b.run_json(&token, &run).await;
            if r["status"] != "running" && r["status"] != "queued" {
                return r;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    })
    .await
    .unwrap_or_else(|_| {
        panic!(
            "the run on A was still running {:?} after the cancel sent to B",
            asked.elapsed()
        )
    });
    assert_eq!(cancelled["status"], "cancelled", "{cancelled}");
    assert_eq!(
        run_node(&cancelled, "wait")["status"],
        "cancelled",
        "{cancelled}"
    );
    let after = run_node(&cancelled, "after");
    assert_eq!(after["status"], "cancelled", "{cancelled}");
    assert!(after["started_at"].is_null(), "never started: {cancelled}");
    assert_eq!(after["attempts"], 0, "{cancelled}");

    // Letting the gate answer now does not revive the run: nothing else reaches the gate. This
    // sleep stays: it is the window in which nothing may happen.
    gate.release();
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(gate.paths(), ["/gate/wait"], "no request after the cancel");
    let r = app_a.run_json(&token, &run).await;
    assert_eq!(r["status"], "cancelled", "{r}");
    assert_eq!(run_node(&r, "after")["status"], "cancelled", "{r}");
    app_b.stop().await.unwrap();
    app_a.stop().await.unwrap();
}

/// An `agent` node goes through the server's real agent runner to the (fake, loopback) provider;
/// its reply is what the next node templates.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_node_calls_the_real_agent_runner_and_passes_its_reply_downstream() {
    let provider = FakeProvider::start(|req: &Recorded, _| {
        let prompt = req.body["messages"]
            .as_array()
            .and_then(|m| m.last())
            .and_then(|m| m["content"].as_str())
            .unwrap_or("")
            .to_owned();
        Reply::json(
            200,
            json!({"id": "c1", "object": "chat.completion", "model": "gpt-test",
                   "choices": [{"index": 0, "message": {"role": "assistant",
                                "content": format!("All quiet ({} chars asked)", prompt.len())},
                                "finish_reason": "stop"}],
                   "usage": {"prompt_tokens": 11, "completion_tokens": 5, "total_tokens": 16}}),
        )
    })
    .await
    .unwrap();
    let app = spawn_app_with(&[
        (
            "GATHERING__LLM__OPENAI__BASE_URL",
            provider.base_url.as_str(),
        ),
        ("GATHERING__LLM__OPENAI__API_KEY", "sk-env-pipeline-0000"),
    ])
    .await;
    let token = app.user_token().await;
    let persona = "You are the night watch. Answer in one line.";
    let r = app
        .post(
            "/agents",
            &json!({"name": "watch", "persona": persona, "provider": "openai",
                    "model": "gpt-test", "temperature": 0.1}),
            Some(&token),
        )
        .await;
    assert_eq!(
        r.status(),
        StatusCode::CREATED,
        "{}",
        r.text().await.unwrap()
    );
    let agent: Value = r.json().await.unwrap();
    let p = app
        .create_pipeline(
            &token,
            json!({"name": "agent-then-template", "nodes": [
            {"id": "t", "type": "trigger"},
            {"id": "think", "type": "agent", "config": {"agent_id": agent["id"],
             "prompt": "Report on {{input.place}} for {{input.night}} nights."}},
            {"id": "format", "type": "action", "config": {"tool": "text_template",
             "params": {"template": "[{{input.place}}] {{nodes.think.output.text}}", "values": {}}}}
        ], "edges": [{"from": "t", "to": "think"}, {"from": "think", "to": "format"}]}),
        )
        .await;
    let run = app
        .start_run(&token, &p, json!({"place": "the north gate", "night": 3}))
        .await;
    let r = app.run_finished(&token, &run).await;
    assert_eq!(r["status"], "succeeded", "{r}");

    let prompt = "Report on the north gate for 3 nights.";
    let reply = format!("All quiet ({} chars asked)", prompt.len());
    let calls = provider.recorded();
    assert_eq!(calls.len(), 1, "one provider call: {calls:?}");
    let call = &calls[0];
    assert!(call.path.ends_with("/chat/completions"), "{}", call.path);
    assert_eq!(
        call.headers.get("authorization").map(String::as_str),
        Some("Bearer sk-env-pipeline-0000")
    );
    assert_eq!(call.body["model"], "gpt-test", "{}", call.body);
    let messages = call.body["messages"].as_array().unwrap();
    assert_eq!(messages[0]["role"], "system", "{}", call.body);
    assert_eq!(messages[0]["content"], persona, "{}", call.body);
    let last = messages.last().unwrap();
    assert_eq!(last["role"], "user", "{}", call.body);
    assert_eq!(
        last["content"], prompt,
        "the templated prompt: {}",
        call.body
    );

    let think = run_node(&r, "think");
    assert_eq!(think["status"], "succeeded", "{r}");
    assert_eq!(think["output"]["text"], reply.as_str(), "{r}");
    assert_eq!(think["output"]["usage"]["prompt_tokens"], 11, "{r}");
    let format = run_node(&r, "format");
    assert_eq!(format["status"], "succeeded", "{r}");
    assert_eq!(
        format["output"],
        json!(format!("[the north gate] {reply}")),
        "the downstream node used the agent's reply: {r}"
    );
    app.stop().await.unwrap();
}
