//! Black-box hardening of the tools: deep and amplifying `json_query` queries, generic SSRF
//! refusals (and the newly refused ranges), FIFOs in a project, replayed notifications.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use gathering_tests::loopback::{Answer, Loopback};
use gathering_tests::*;
use reqwest::StatusCode;
use serde_json::{Value, json};
use std::time::Duration;

async fn invoke(app: &TestApp, token: &str, tool: &str, params: Value) -> reqwest::Response {
    tokio::time::timeout(
        Duration::from_secs(30),
        app.post(
            &format!("/tools/{tool}/invoke"),
            &json!({"params": params}),
            Some(token),
        ),
    )
    .await
    .expect("the server answered in time")
}

async fn still_alive(app: &TestApp) {
    let r = tokio::time::timeout(Duration::from_secs(10), app.get("/health/live", None))
        .await
        .expect("health answered in time");
    assert_eq!(r.status(), StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deeply_nested_json_query_is_refused_with_422_and_the_server_stays_up() {
    let app = spawn_app().await;
    let token = app.user_token().await;
    for query in [
        format!("{}@", "!".repeat(9990)),
        format!("{}@{}", "(".repeat(4990), ")".repeat(4990)),
        format!("{}@{}", "[".repeat(4990), "]".repeat(4990)),
        ["a"; 4900].join("."),
    ] {
        let r = invoke(
            &app,
            &token,
            "json_query",
            json!({"data": {"a": 1}, "query": query}),
        )
        .await;
        let body = assert_error(r, StatusCode::UNPROCESSABLE_ENTITY, "validation_failed").await;
        let details = body["error"]["details"].as_array().unwrap();
        assert_eq!(details[0]["field"], "/query", "{body}");
        assert!(
            details[0]["problem"]
                .as_str()
                .unwrap()
                .contains("deeper than 64"),
            "{body}"
        );
        still_alive(&app).await;
    }
    // An ordinary query still works.
    let r = invoke(
        &app,
        &token,
        "json_query",
        json!({"data": {"a": {"b": [1, 2, 3]}}, "query": "a.b[?@ > `1`] | length(@)"}),
    )
    .await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.json::<Value>().await.unwrap()["output"], 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amplifying_json_query_is_refused_with_a_small_output_too_large_answer() {
    let app = spawn_app().await;
    let token = app.user_token().await;
    // 18 doublings of a 1,000-character string: a 264 MB body before the bound.
    let query = ["[@,@]"; 18].join("|");
    let r = invoke(
        &app,
        &token,
        "json_query",
        json!({"data": "x".repeat(1000), "query": query}),
    )
    .await;
    assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let text = r.text().await.unwrap();
    assert!(text.len() < 4096, "small answer: {} bytes", text.len());
    let body: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(body["error"]["code"], "output_too_large", "{body}");

    // Flattening the shared tree (10^9 slots after nine stages) is refused before it is built.
    let query = ["[@,@,@,@,@,@,@,@,@,@][]"; 9].join("|");
    let r = invoke(
        &app,
        &token,
        "json_query",
        json!({"data": [1], "query": query}),
    )
    .await;
    let body = assert_error(r, StatusCode::UNPROCESSABLE_ENTITY, "output_too_large").await;
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("intermediate"),
        "{body}"
    );
    still_alive(&app).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_tools_output_is_bounded_by_the_configured_size() {
    let app = spawn_app_with(&[("GATHERING__TOOLS__MAX_OUTPUT_BYTES", "2000")]).await;
    let token = app.user_token().await;
    let r = invoke(
        &app,
        &token,
        "text_template",
        json!({"template": "{{v}}".repeat(300), "values": {"v": "0123456789"}}),
    )
    .await;
    assert_error(r, StatusCode::UNPROCESSABLE_ENTITY, "output_too_large").await;
    let r = invoke(
        &app,
        &token,
        "json_query",
        json!({"data": "y".repeat(1500), "query": "[@, @]"}),
    )
    .await;
    assert_error(r, StatusCode::UNPROCESSABLE_ENTITY, "output_too_large").await;
    let r = invoke(
        &app,
        &token,
        "text_template",
        json!({"template": "{{v}}", "values": {"v": "short"}}),
    )
    .await;
    assert_eq!(r.status(), StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ssrf_refusals_are_generic_and_cover_documentation_nat64_and_mapped_ranges() {
    let app = spawn_app().await;
    let token = app.user_token().await;
    for url in [
        // A name resolving to loopback: the answer must not say so.
        "http://localhost:9/",
        "http://127.0.0.1:9/",
        "http://192.0.2.10/",
        "http://198.51.100.10/",
        "http://203.0.113.10/",
        "http://[64:ff9b:1::a00:1]/",
        "http://[::ffff:203.0.113.5]/",
        "http://[::ffff:10.0.0.1]/",
        "http://[2001:db8::1]/",
    ] {
        let r = invoke(
            &app,
            &token,
            "http_request",
            json!({"method": "GET", "url": url}),
        )
        .await;
        let body = assert_error(r, StatusCode::FORBIDDEN, "forbidden").await;
        assert_eq!(
            body["error"]["message"], "the target address is not allowed",
            "{url}: {body}"
        );
        let text = body.to_string();
        assert!(
            !text.contains("resolves") && !text.contains("127.0.0.1") && !text.contains("::1"),
            "{url}: nothing about the resolution leaks: {text}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fifo_in_a_project_is_refused_promptly_by_the_files_endpoint_and_read_file() {
    let app = spawn_app().await;
    let admin = app.admin_token().await;
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    std::fs::create_dir_all(&root).unwrap();
    std::fs::write(root.join("ok.txt"), "fine").unwrap();
    let ok = std::process::Command::new("mkfifo")
        .arg(root.join("pipe"))
        .status()
        .unwrap()
        .success();
    assert!(ok, "mkfifo");
    let r = app
        .post(
            "/projects",
            &json!({"name": "fifo", "root_path": root, "members": []}),
            Some(&admin),
        )
        .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let id = r.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();

    let within = |f| tokio::time::timeout(Duration::from_secs(10), f);
    let files = format!("/projects/{id}/files?path=pipe");
    let r = within(app.get(&files, Some(&admin)))
        .await
        .expect("the files endpoint answered in time");
    assert_error(r, StatusCode::UNPROCESSABLE_ENTITY, "not_a_regular_file").await;

    let r = invoke(
        &app,
        &admin,
        "read_file",
        json!({"project_id": id, "path": "pipe"}),
    )
    .await;
    let body = assert_error(r, StatusCode::UNPROCESSABLE_ENTITY, "tool_failed").await;
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("not a regular file"),
        "{body}"
    );

    let tree = format!("/projects/{id}/tree?path=");
    let r = within(app.get(&tree, Some(&admin)))
        .await
        .expect("the tree endpoint answered in time");
    assert_eq!(r.status(), StatusCode::OK);
    let tree: Value = r.json().await.unwrap();
    let pipe = tree["entries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "pipe")
        .cloned()
        .unwrap();
    assert_eq!(pipe["kind"], "other");
    // Regular files still read, and the server is not stuck.
    let r = app
        .get(&format!("/projects/{id}/files?path=ok.txt"), Some(&admin))
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    still_alive(&app).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayed_send_notification_posts_the_webhook_once_with_its_idempotency_key() {
    let receiver = Loopback::serve(|_| Answer::text(200, "")).await;
    let hooks = format!("ops={}", receiver.url("/hook"));
    let app = spawn_app_with(&[
        ("GATHERING__TOOLS__HTTP_ALLOWED_HOSTS", "127.0.0.1"),
        ("GATHERING__TOOLS__WEBHOOKS", hooks.as_str()),
    ])
    .await;
    let token = app.user_token().await;
    let send = || async {
        let r = app
            .client
            .post(app.url("/tools/send_notification/invoke"))
            .bearer_auth(&token)
            .header("Idempotency-Key", "deploy-42")
            .json(&json!({"params": {"channel": "ops", "title": "deploy", "message": "done"}}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        r.json::<Value>().await.unwrap()["output"].clone()
    };
    let first = send().await;
    assert_eq!(first["webhook"]["status"], 200, "{first}");
    assert_eq!(first["replayed"], false);
    let second = send().await;
    let third = send().await;
    for again in [&second, &third] {
        assert_eq!(again["replayed"], true, "{again}");
        assert_eq!(again["notification"]["id"], first["notification"]["id"]);
        assert_eq!(again["webhook"], Value::Null);
    }
    // The first POST completed before its invocation answered; replays posted nothing.
    let posts = receiver.recorded();
    assert_eq!(posts.len(), 1, "one webhook POST: {posts:?}");
    let key = posts[0]
        .headers
        .get("idempotency-key")
        .unwrap_or_else(|| panic!("no Idempotency-Key header: {:?}", posts[0]));
    assert!(key.ends_with("deploy-42"), "{key}");
    let list: Value = app
        .get("/notifications", Some(&token))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(list["items"].as_array().unwrap().len(), 1);
}
