//! Black-box: input hardening and per-user limits at the HTTP edge — NUL characters refused
//! with a JSON pointer on every body (and `%00` in paths and queries), the schedule minimum
//! interval and cron bounds, store-time checks of what a schedule references (private
//! `call_api` targets, other users' agents and pipelines), per-user count quotas, the
//! workspace-bytes quota and the WebSocket admission limits.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use gathering_tests::ws::{Frame, Ws};
use gathering_tests::{TestApp, assert_error, spawn_app, spawn_app_with};
use reqwest::StatusCode;
use serde_json::{Value, json};
use std::time::{Duration, Instant};

const NUL: &str = "a\u{0}b";

fn agent_body(name: &str) -> Value {
    json!({"name": name, "persona": "You help.", "provider": "openai", "model": "gpt-test"})
}

async fn created(r: reqwest::Response) -> Value {
    let status = r.status();
    let body: Value = r.json().await.unwrap();
    assert_eq!(status, StatusCode::CREATED, "{body}");
    body
}

async fn create_agent(app: &TestApp, token: &str, name: &str) -> String {
    let a = created(app.post("/agents", &agent_body(name), Some(token)).await).await;
    a["id"].as_str().unwrap().to_owned()
}

fn pipeline_body(name: &str) -> Value {
    json!({"name": name, "nodes": [{"id": "start", "type": "trigger"}], "edges": []})
}

async fn create_pipeline(app: &TestApp, token: &str, name: &str) -> String {
    let p = created(
        app.post("/pipelines", &pipeline_body(name), Some(token))
            .await,
    )
    .await;
    p["id"].as_str().unwrap().to_owned()
}

fn notify_schedule(name: &str, interval: i64) -> Value {
    json!({"name": name, "interval_secs": interval, "action_type": "send_notification",
           "action_config": {"title": "t", "message": "m"}})
}

/// Asserts a 422 `validation_failed` whose first detail names `field`.
async fn assert_refused_field(r: reqwest::Response, field: &str) -> Value {
    let body = assert_error(r, StatusCode::UNPROCESSABLE_ENTITY, "validation_failed").await;
    let fields: Vec<&str> = body["error"]["details"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|d| d["field"].as_str())
        .collect();
    assert!(fields.contains(&field), "{field} in {body}");
    body
}

#[tokio::test]
async fn a_nul_character_in_any_body_field_is_a_422_naming_the_field_never_a_500() {
    let app = spawn_app().await;
    let (token, _, email) = app.register_and_login().await;
    let agent = create_agent(&app, &token, "helper").await;
    let pipeline = create_pipeline(&app, &token, "p").await;

    // Agent create (name, persona, model) and patch.
    let mut body = agent_body("x");
    body["name"] = json!(NUL);
    assert_refused_field(app.post("/agents", &body, Some(&token)).await, "/name").await;
    let mut body = agent_body("x");
    body["persona"] = json!(NUL);
    assert_refused_field(app.post("/agents", &body, Some(&token)).await, "/persona").await;
    let mut body = agent_body("x");
    body["model"] = json!(NUL);
    assert_refused_field(app.post("/agents", &body, Some(&token)).await, "/model").await;
    assert_refused_field(
        app.patch(
            &format!("/agents/{agent}"),
            &json!({"persona": NUL}),
            Some(&token),
        )
        .await,
        "/persona",
    )
    .await;
    // Memory and chat message.
    assert_refused_field(
        app.post(
            &format!("/agents/{agent}/memories"),
            &json!({"content": NUL}),
            Some(&token),
        )
        .await,
        "/content",
    )
    .await;
    assert_refused_field(
        app.post(
            &format!("/agents/{agent}/chat"),
            &json!({"message": NUL}),
            Some(&token),
        )
        .await,
        "/message",
    )
    .await;

    // Pipeline create: name, node config (jsonb), and a run's input keys and values.
    let mut body = pipeline_body("x");
    body["name"] = json!(NUL);
    assert_refused_field(app.post("/pipelines", &body, Some(&token)).await, "/name").await;
    let mut body = pipeline_body("x");
    body["nodes"][0]["config"] = json!({"note": NUL});
    assert_refused_field(
        app.post("/pipelines", &body, Some(&token)).await,
        "/nodes/0/config/note",
    )
    .await;
    let runs = format!("/pipelines/{pipeline}/runs");
    assert_refused_field(
        app.post(&runs, &json!({"input": {"tag": NUL}}), Some(&token))
            .await,
        "/input/tag",
    )
    .await;
    assert_refused_field(
        app.post(&runs, &json!({"input": {"k\u{0}": 1}}), Some(&token))
            .await,
        "/input/k\u{0}",
    )
    .await;

    // Schedule name and action config (jsonb).
    let mut body = notify_schedule("x", 3600);
    body["name"] = json!(NUL);
    assert_refused_field(app.post("/schedules", &body, Some(&token)).await, "/name").await;
    let mut body = notify_schedule("x", 3600);
    body["action_config"]["message"] = json!(NUL);
    assert_refused_field(
        app.post("/schedules", &body, Some(&token)).await,
        "/action_config/message",
    )
    .await;

    // Circle name and circle task.
    let circle = json!({"name": NUL, "members": [{"agent_id": agent, "role": "lead"}]});
    assert_refused_field(app.post("/circles", &circle, Some(&token)).await, "/name").await;
    let c = created(
        app.post(
            "/circles",
            &json!({"name": "c", "members": [{"agent_id": agent, "role": "lead"}]}),
            Some(&token),
        )
        .await,
    )
    .await;
    assert_refused_field(
        app.post(
            &format!("/circles/{}/tasks", c["id"].as_str().unwrap()),
            &json!({"title": NUL}),
            Some(&token),
        )
        .await,
        "/title",
    )
    .await;

    // Settings base URL, and login.
    assert_refused_field(
        app.put(
            "/settings/providers/openai",
            &json!({"base_url": NUL}),
            Some(&token),
        )
        .await,
        "/base_url",
    )
    .await;
    assert_refused_field(
        app.post(
            "/auth/login",
            &json!({"email": format!("{email}\u{0}"), "password": "x"}),
            None,
        )
        .await,
        "/email",
    )
    .await;

    // Nothing was stored, and the service is fine.
    let db = app.db_client().await;
    let n: i64 = db
        .query_one("SELECT count(*) FROM agents.agents", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 1, "only the helper agent exists");
    assert_eq!(
        app.get("/agents", Some(&token)).await.status(),
        StatusCode::OK
    );
}

#[tokio::test]
async fn a_nul_in_a_url_path_or_query_is_a_400_never_a_500() {
    let app = spawn_app().await;
    let token = app.user_token().await;
    assert_error(
        app.get("/agents?cursor=%00", Some(&token)).await,
        StatusCode::BAD_REQUEST,
        "invalid_query",
    )
    .await;
    assert_error(
        app.get("/agents?limit=5&cursor=a%00b", Some(&token)).await,
        StatusCode::BAD_REQUEST,
        "invalid_query",
    )
    .await;
    assert_error(
        app.put(
            "/settings/providers/open%00ai",
            &json!({"base_url": ""}),
            Some(&token),
        )
        .await,
        StatusCode::BAD_REQUEST,
        "invalid_path",
    )
    .await;
}

#[tokio::test]
async fn a_schedule_interval_under_the_minimum_is_refused_unless_the_operator_lowers_it() {
    let app = spawn_app().await;
    let token = app.user_token().await;
    let body = assert_refused_field(
        app.post("/schedules", &notify_schedule("fast", 1), Some(&token))
            .await,
        "/interval_secs",
    )
    .await;
    assert!(body.to_string().contains("at least 10 seconds"), "{body}");
    assert_refused_field(
        app.post("/schedules", &notify_schedule("fast", 9), Some(&token))
            .await,
        "/interval_secs",
    )
    .await;
    let s = created(
        app.post("/schedules", &notify_schedule("ok", 10), Some(&token))
            .await,
    )
    .await;
    // A PATCH cannot go under the minimum either.
    assert_refused_field(
        app.patch(
            &format!("/schedules/{}", s["id"].as_str().unwrap()),
            &json!({"interval_secs": 2}),
            Some(&token),
        )
        .await,
        "/interval_secs",
    )
    .await;

    // Seconds crons (6 fields) and overlong patterns are refused.
    let mut cron = notify_schedule("c", 0);
    cron.as_object_mut().unwrap().remove("interval_secs");
    cron["cron"] = json!("*/1 * * * * *");
    assert_refused_field(app.post("/schedules", &cron, Some(&token)).await, "/cron").await;
    cron["cron"] = json!(format!("{} * * * *", vec!["1"; 100].join(",")));
    let body =
        assert_refused_field(app.post("/schedules", &cron, Some(&token)).await, "/cron").await;
    assert!(
        body.to_string().contains("at most 128 characters"),
        "{body}"
    );
    cron["cron"] = json!("* * * * *");
    created(app.post("/schedules", &cron, Some(&token)).await).await;

    let low = spawn_app_with(&[("GATHERING__SCHEDULER__MIN_INTERVAL_SECS", "1")]).await;
    let token = low.user_token().await;
    created(
        low.post("/schedules", &notify_schedule("fast", 1), Some(&token))
            .await,
    )
    .await;
}

#[tokio::test]
async fn a_cron_firing_more_often_than_a_raised_minimum_is_refused() {
    let app = spawn_app_with(&[("GATHERING__SCHEDULER__MIN_INTERVAL_SECS", "300")]).await;
    let token = app.user_token().await;
    let mut cron = notify_schedule("c", 0);
    cron.as_object_mut().unwrap().remove("interval_secs");
    for pattern in ["* * * * *", "*/2 * * * *", "0,1 9 * * *"] {
        cron["cron"] = json!(pattern);
        let body =
            assert_refused_field(app.post("/schedules", &cron, Some(&token)).await, "/cron").await;
        assert!(
            body.to_string().contains("300 seconds"),
            "{pattern}: {body}"
        );
    }
    cron["cron"] = json!("*/5 * * * *");
    created(app.post("/schedules", &cron, Some(&token)).await).await;
}

fn call_api(url: &str) -> Value {
    json!({"name": "call", "interval_secs": 3600, "action_type": "call_api",
           "action_config": {"url": url}})
}

#[tokio::test]
async fn a_call_api_schedule_to_a_literal_private_address_is_refused_when_stored() {
    let app = spawn_app().await;
    let token = app.user_token().await;
    for url in [
        "http://127.0.0.1:9/hit",
        "http://10.0.0.7/",
        "http://192.168.1.1/admin",
        "http://169.254.169.254/latest/meta-data/",
        "http://[::1]:8080/",
        "http://2130706433/",
    ] {
        assert_refused_field(
            app.post("/schedules", &call_api(url), Some(&token)).await,
            "/action_config/url",
        )
        .await;
    }
    let s = created(
        app.post(
            "/schedules",
            &call_api("https://example.com/hook"),
            Some(&token),
        )
        .await,
    )
    .await;
    // Switching an existing schedule to a private target is refused too.
    assert_refused_field(
        app.patch(
            &format!("/schedules/{}", s["id"].as_str().unwrap()),
            &json!({"action_config": {"url": "http://10.1.2.3/"}}),
            Some(&token),
        )
        .await,
        "/action_config/url",
    )
    .await;

    // A host on the operator's allow-list is accepted.
    let allowed = spawn_app_with(&[("GATHERING__TOOLS__HTTP_ALLOWED_HOSTS", "127.0.0.1")]).await;
    let token = allowed.user_token().await;
    created(
        allowed
            .post(
                "/schedules",
                &call_api("http://127.0.0.1:9/hit"),
                Some(&token),
            )
            .await,
    )
    .await;
}

#[tokio::test]
async fn a_schedule_naming_another_users_agent_or_pipeline_is_refused_without_an_existence_leak() {
    let app = spawn_app().await;
    let ada = app.user_token().await;
    let bob = app.user_token().await;
    let ada_agent = create_agent(&app, &ada, "ada-agent").await;
    let ada_pipeline = create_pipeline(&app, &ada, "ada-pipeline").await;
    let bob_agent = create_agent(&app, &bob, "bob-agent").await;
    let bob_pipeline = create_pipeline(&app, &bob, "bob-pipeline").await;

    let run_task = |agent: &str| {
        json!({"name": "r", "interval_secs": 3600, "action_type": "run_task",
               "action_config": {"agent_id": agent, "prompt": "hi"}})
    };
    let execute = |pipeline: &str| {
        json!({"name": "e", "interval_secs": 3600, "action_type": "execute_pipeline",
               "action_config": {"pipeline_id": pipeline}})
    };
    let foreign = assert_refused_field(
        app.post("/schedules", &run_task(&ada_agent), Some(&bob))
            .await,
        "/action_config/agent_id",
    )
    .await;
    let missing = assert_refused_field(
        app.post(
            "/schedules",
            &run_task(&uuid::Uuid::now_v7().to_string()),
            Some(&bob),
        )
        .await,
        "/action_config/agent_id",
    )
    .await;
    assert_eq!(
        foreign["error"]["details"], missing["error"]["details"],
        "another user's agent and a missing one look the same"
    );
    let foreign = assert_refused_field(
        app.post("/schedules", &execute(&ada_pipeline), Some(&bob))
            .await,
        "/action_config/pipeline_id",
    )
    .await;
    let missing = assert_refused_field(
        app.post(
            "/schedules",
            &execute(&uuid::Uuid::now_v7().to_string()),
            Some(&bob),
        )
        .await,
        "/action_config/pipeline_id",
    )
    .await;
    assert_eq!(foreign["error"]["details"], missing["error"]["details"]);

    // Their own are fine; switching one to another user's agent is refused.
    let s = created(
        app.post("/schedules", &run_task(&bob_agent), Some(&bob))
            .await,
    )
    .await;
    created(
        app.post("/schedules", &execute(&bob_pipeline), Some(&bob))
            .await,
    )
    .await;
    assert_refused_field(
        app.patch(
            &format!("/schedules/{}", s["id"].as_str().unwrap()),
            &json!({"action_config": {"agent_id": ada_agent, "prompt": "hi"}}),
            Some(&bob),
        )
        .await,
        "/action_config/agent_id",
    )
    .await;
}

#[tokio::test]
async fn per_user_counts_of_schedules_pipelines_and_agents_are_enforced_at_create() {
    let app = spawn_app_with(&[
        ("GATHERING__QUOTAS__SCHEDULES_PER_USER", "3"),
        ("GATHERING__QUOTAS__PIPELINES_PER_USER", "2"),
        ("GATHERING__QUOTAS__AGENTS_PER_USER", "2"),
    ])
    .await;
    let ada = app.user_token().await;
    let bob = app.user_token().await;

    // Concurrent creations cannot overshoot: exactly 3 of 8 succeed.
    let attempts = (0..8).map(|i| {
        let app = &app;
        let ada = &ada;
        async move {
            app.post(
                "/schedules",
                &notify_schedule(&format!("s{i}"), 3600),
                Some(ada),
            )
            .await
        }
    });
    let answers = futures::future::join_all(attempts).await;
    let mut ok = Vec::new();
    for r in answers {
        match r.status() {
            StatusCode::CREATED => ok.push(r.json::<Value>().await.unwrap()),
            _ => {
                let body =
                    assert_error(r, StatusCode::UNPROCESSABLE_ENTITY, "quota_exceeded").await;
                assert!(
                    body["error"]["message"]
                        .as_str()
                        .unwrap()
                        .contains("3 schedules"),
                    "{body}"
                );
            }
        }
    }
    assert_eq!(ok.len(), 3, "exactly the quota");
    // Another user has their own quota; deleting one frees a place.
    created(
        app.post("/schedules", &notify_schedule("b", 3600), Some(&bob))
            .await,
    )
    .await;
    let r = app
        .delete(
            &format!("/schedules/{}", ok[0]["id"].as_str().unwrap()),
            Some(&ada),
        )
        .await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    created(
        app.post("/schedules", &notify_schedule("again", 3600), Some(&ada))
            .await,
    )
    .await;

    create_pipeline(&app, &ada, "p1").await;
    create_pipeline(&app, &ada, "p2").await;
    assert_error(
        app.post("/pipelines", &pipeline_body("p3"), Some(&ada))
            .await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "quota_exceeded",
    )
    .await;

    create_agent(&app, &ada, "a1").await;
    create_agent(&app, &ada, "a2").await;
    assert_error(
        app.post("/agents", &agent_body("a3"), Some(&ada)).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "quota_exceeded",
    )
    .await;
    create_agent(&app, &bob, "b1").await;

    let db = app.db_client().await;
    let n: i64 = db
        .query_one("SELECT count(*) FROM scheduler.schedules", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 4, "3 of ada's (one replaced) and bob's");
}

#[tokio::test]
async fn workspace_writes_are_charged_to_a_per_user_byte_quota_before_writing() {
    let app = spawn_app_with(&[("GATHERING__QUOTAS__WORKSPACE_BYTES_PER_USER", "1000")]).await;
    let admin = app.admin_token().await;
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("proj");
    std::fs::create_dir_all(&root).unwrap();
    let p = created(
        app.post(
            "/projects",
            &json!({"name": "p", "root_path": root.to_string_lossy()}),
            Some(&admin),
        )
        .await,
    )
    .await;
    let pid = p["id"].as_str().unwrap().to_owned();
    let write = |path: &str, n: usize| json!({"params": {"project_id": pid, "path": path, "content": "x".repeat(n)}});

    let r = app
        .post(
            "/tools/write_file/invoke",
            &write("a.txt", 600),
            Some(&admin),
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK, "{}", r.text().await.unwrap());
    let r = app
        .post(
            "/tools/write_file/invoke",
            &write("b.txt", 600),
            Some(&admin),
        )
        .await;
    let body = assert_error(r, StatusCode::UNPROCESSABLE_ENTITY, "validation_failed").await;
    assert!(
        body.to_string().contains("workspace quota exceeded"),
        "{body}"
    );
    assert!(
        !root.join("b.txt").exists(),
        "nothing written over the quota"
    );

    // Overwriting with a smaller file gives bytes back (600 → 100).
    let r = app
        .post(
            "/tools/write_file/invoke",
            &write("a.txt", 100),
            Some(&admin),
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    let r = app
        .post(
            "/tools/write_file/invoke",
            &write("b.txt", 600),
            Some(&admin),
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK, "{}", r.text().await.unwrap());
    assert_eq!(
        std::fs::read_to_string(root.join("b.txt")).unwrap().len(),
        600
    );

    let db = app.db_client().await;
    let used: i64 = db
        .query_one("SELECT sum(workspace_bytes)::bigint FROM quotas.usage", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(used, 700);
}

/// Retries `connect` until it is accepted (a released slot is given back when the server's
/// connection task ends), with a deadline.
async fn connect_eventually(app: &TestApp, query: &str) -> Ws {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match Ws::connect(app, query).await {
            Ok(ws) => return ws,
            Err(refused) if Instant::now() < deadline => {
                assert_eq!(refused.status, 429, "{:?}", refused.body);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(refused) => panic!("still refused: {refused:?}"),
        }
    }
}

#[tokio::test]
async fn websocket_connections_per_user_are_bounded_with_429() {
    let app = spawn_app_with(&[("GATHERING__EVENTS__WS_MAX_CONNECTIONS_PER_USER", "2")]).await;
    let ada = app.user_token().await;
    let bob = app.user_token().await;
    let q = format!("?access_token={ada}");
    let first = Ws::connect(&app, &q).await.unwrap();
    let _second = Ws::connect(&app, &q).await.unwrap();
    let refused = Ws::connect(&app, &q)
        .await
        .err()
        .expect("a third is refused");
    assert_eq!(refused.status, 429);
    assert_eq!(
        refused.body["error"]["code"], "quota_exceeded",
        "{:?}",
        refused.body
    );
    // Another user is not affected.
    let _bob = Ws::connect(&app, &format!("?access_token={bob}"))
        .await
        .unwrap();

    // A token sent as the first message counts the same: closed with 1008.
    let mut late = Ws::connect(&app, "").await.unwrap();
    late.send_text(&json!({ "access_token": ada }).to_string())
        .await;
    match late.next().await {
        Frame::Close(code) => assert_eq!(code, Some(1008)),
        Frame::Text(m) => panic!("expected a close, got {m}"),
    }

    // Closing one gives its place back.
    first.close().await;
    let _again = connect_eventually(&app, &q).await;
}

#[tokio::test]
async fn unauthenticated_websocket_upgrades_in_flight_are_bounded() {
    let app = spawn_app_with(&[("GATHERING__EVENTS__WS_MAX_UNAUTHENTICATED", "2")]).await;
    let token = app.user_token().await;
    let mut a = Ws::connect(&app, "").await.unwrap();
    let _b = Ws::connect(&app, "").await.unwrap();
    let refused = Ws::connect(&app, "")
        .await
        .err()
        .expect("a third waits no more");
    assert_eq!(refused.status, 429);
    assert_eq!(
        refused.body["error"]["code"], "quota_exceeded",
        "{:?}",
        refused.body
    );
    // A connection with a token is not held back by the bound.
    let _with_token = Ws::connect(&app, &format!("?access_token={token}"))
        .await
        .unwrap();

    // Once one authenticates, it no longer counts as waiting.
    a.send_text(&json!({ "access_token": token }).to_string())
        .await;
    assert_eq!(a.next_json().await["type"], "authenticated");
    let _c = connect_eventually(&app, "").await;
}

#[tokio::test]
async fn oversized_schedule_action_configs_are_refused() {
    let app = spawn_app().await;
    let token = app.user_token().await;
    let headers: serde_json::Map<String, Value> =
        (0..65).map(|i| (format!("x-h{i}"), json!("v"))).collect();
    let mut body = call_api("https://example.com/hook");
    body["action_config"]["headers"] = Value::Object(headers);
    assert_refused_field(
        app.post("/schedules", &body, Some(&token)).await,
        "/action_config/headers",
    )
    .await;
    let mut body = call_api("https://example.com/hook");
    body["action_config"]["body"] = json!("x".repeat(300 * 1024));
    assert_refused_field(
        app.post("/schedules", &body, Some(&token)).await,
        "/action_config",
    )
    .await;
}
