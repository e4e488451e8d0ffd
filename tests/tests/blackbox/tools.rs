//! Black-box: `GET /tools`, `POST /tools/{name}/invoke` against the real server.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use gathering_tests::loopback::{Answer, Loopback};
use gathering_tests::{assert_error, spawn_app, spawn_app_with};
use reqwest::StatusCode;
use serde_json::{Value, json};

/// A loopback HTTP server answering every request with `{"pong": true}`.
async fn pong_server() -> Loopback {
    Loopback::start(|_, _| Answer::json(200, json!({"pong": true}))).await
}

#[tokio::test]
async fn tools_are_listed_with_schemas_for_signed_in_users_only() {
    let app = spawn_app().await;
    assert_error(
        app.get("/tools", None).await,
        StatusCode::UNAUTHORIZED,
        "unauthorized",
    )
    .await;
    let token = app.user_token().await;
    let r = app.get("/tools", Some(&token)).await;
    assert_eq!(r.status(), StatusCode::OK);
    let tools: Vec<Value> = r.json().await.unwrap();
    let names: Vec<_> = tools.iter().map(|t| t["name"].as_str().unwrap()).collect();
    for expected in [
        "http_request",
        "json_query",
        "text_template",
        "calculator",
        "read_file",
        "write_file",
        "list_files",
        "send_notification",
    ] {
        assert!(
            names.contains(&expected),
            "{expected} missing from {names:?}"
        );
    }
    let calc = tools.iter().find(|t| t["name"] == "calculator").unwrap();
    assert_eq!(calc["parameters"]["required"], json!(["expression"]));
    assert!(calc["timeout_ms"].as_u64().unwrap() > 0);
    assert_eq!(calc["is_async"], false);
}

#[tokio::test]
async fn invoking_a_tool_returns_its_output() {
    let app = spawn_app().await;
    let token = app.user_token().await;
    let r = app
        .post(
            "/tools/calculator/invoke",
            &json!({"params": {"expression": "(1 + 2) * 4"}}),
            Some(&token),
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.json::<Value>().await.unwrap(), json!({"output": 12}));

    let r = app
        .post(
            "/tools/json_query/invoke",
            &json!({"params": {"data": {"a": {"b": [5, 6]}}, "query": "a.b[1]"}}),
            Some(&token),
        )
        .await;
    assert_eq!(r.json::<Value>().await.unwrap()["output"], 6);
}

#[tokio::test]
async fn unknown_tool_is_404() {
    let app = spawn_app().await;
    let token = app.user_token().await;
    let r = app
        .post(
            "/tools/no_such_tool/invoke",
            &json!({"params": {}}),
            Some(&token),
        )
        .await;
    assert_error(r, StatusCode::NOT_FOUND, "not_found").await;
}

#[tokio::test]
async fn invalid_params_are_422_with_one_detail_per_parameter_and_nothing_is_sent() {
    let pong = pong_server().await;
    let app = spawn_app_with(&[("GATHERING__TOOLS__HTTP_ALLOWED_HOSTS", "127.0.0.1")]).await;
    let token = app.user_token().await;
    let r = app
        .post(
            "/tools/http_request/invoke",
            &json!({"params": {"method": "FETCH", "url": pong.url("/x"), "timeout_ms": "soon"}}),
            Some(&token),
        )
        .await;
    let body = assert_error(r, StatusCode::UNPROCESSABLE_ENTITY, "validation_failed").await;
    let mut fields: Vec<_> = body["error"]["details"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["field"].as_str().unwrap().to_owned())
        .collect();
    fields.sort();
    assert_eq!(fields, ["/method", "/timeout_ms"]);
    assert_eq!(pong.requests(), 0, "the tool never ran");
}

#[tokio::test]
async fn http_request_reaches_an_allowed_loopback_server() {
    let pong = pong_server().await;
    let app = spawn_app_with(&[("GATHERING__TOOLS__HTTP_ALLOWED_HOSTS", "127.0.0.1")]).await;
    let token = app.user_token().await;
    let r = app
        .post(
            "/tools/http_request/invoke",
            &json!({"params": {"method": "GET", "url": pong.url("/ping")}}),
            Some(&token),
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    let out = r.json::<Value>().await.unwrap()["output"].clone();
    assert_eq!(out["status"], 200);
    assert_eq!(out["body"], json!({"pong": true}));
    assert_eq!((pong.requests(), pong.hits("/ping")), (1, 1));
}

#[tokio::test]
async fn http_request_to_loopback_metadata_or_private_targets_is_403_by_default() {
    let pong = pong_server().await;
    let app = spawn_app().await;
    let token = app.user_token().await;
    let port = pong.port();
    for url in [
        pong.url("/ping"),
        format!("http://localhost:{port}/ping"),
        "http://169.254.169.254/latest/meta-data/".to_owned(),
        "http://10.0.0.1/".to_owned(),
    ] {
        let r = app
            .post(
                "/tools/http_request/invoke",
                &json!({"params": {"method": "GET", "url": url}}),
                Some(&token),
            )
            .await;
        assert_error(r, StatusCode::FORBIDDEN, "forbidden").await;
    }
    assert_eq!(pong.requests(), 0);
}

#[tokio::test]
async fn file_tools_are_scoped_to_usable_projects_and_their_root() {
    let app = spawn_app().await;
    let admin = app.admin_token().await;
    let user = app.user_token().await;
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("proj");
    std::fs::create_dir_all(&root).unwrap();
    std::fs::write(dir.path().join("secret.txt"), "secret").unwrap();
    std::fs::write(root.join("hello.txt"), "hi").unwrap();
    let r = app
        .post(
            "/projects",
            &json!({"name": "p", "root_path": root.to_string_lossy()}),
            Some(&admin),
        )
        .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let pid = r.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();

    let r = app
        .post(
            "/tools/write_file/invoke",
            &json!({"params": {"project_id": pid, "path": "out/new.txt", "content": "written"}}),
            Some(&admin),
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    let r = app
        .post(
            "/tools/read_file/invoke",
            &json!({"params": {"project_id": pid, "path": "out/new.txt"}}),
            Some(&admin),
        )
        .await;
    assert_eq!(
        r.json::<Value>().await.unwrap()["output"]["content"],
        "written"
    );

    let r = app
        .post(
            "/tools/read_file/invoke",
            &json!({"params": {"project_id": pid, "path": "../secret.txt"}}),
            Some(&admin),
        )
        .await;
    assert_error(r, StatusCode::FORBIDDEN, "path_forbidden").await;

    // A user who is not a member does not get the project.
    let r = app
        .post(
            "/tools/read_file/invoke",
            &json!({"params": {"project_id": pid, "path": "hello.txt"}}),
            Some(&user),
        )
        .await;
    let body = assert_error(r, StatusCode::UNPROCESSABLE_ENTITY, "tool_failed").await;
    assert_eq!(body["error"]["message"], "project not found");
}
