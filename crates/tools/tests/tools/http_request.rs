//! `http_request` against a real HTTP server on 127.0.0.1, and its SSRF guard.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::support;

use gathering_domain::tools::ToolError;
use gathering_tools::ToolsConfig;
use serde_json::{Value, json};
use std::time::Duration;
use support::{TestServer, closed_port, ctx, harness, loopback_config};
use uuid::Uuid;

async fn call(h: &support::Harness, params: Value) -> Result<Value, ToolError> {
    tokio::time::timeout(
        Duration::from_secs(20),
        h.registry
            .invoke(&ctx(Uuid::now_v7()), "http_request", params),
    )
    .await
    .expect("http_request hung")
}

#[tokio::test]
async fn json_response_comes_back_with_status_headers_and_parsed_body() {
    let srv = TestServer::start().await;
    let h = harness(loopback_config());
    let out = call(&h, json!({"method": "GET", "url": srv.url("/json")}))
        .await
        .unwrap();
    assert_eq!(out["status"], 200);
    assert_eq!(out["headers"]["x-test"], "yes");
    assert_eq!(out["body"], json!({"ok": true, "n": 1}));
}

#[tokio::test]
async fn text_response_body_is_a_string() {
    let srv = TestServer::start().await;
    let h = harness(loopback_config());
    let out = call(&h, json!({"method": "get", "url": srv.url("/text")}))
        .await
        .unwrap();
    assert_eq!(out["body"], "hello");
}

#[tokio::test]
async fn method_headers_and_json_body_are_sent() {
    let srv = TestServer::start().await;
    let h = harness(loopback_config());
    let out = call(
        &h,
        json!({
            "method": "POST",
            "url": srv.url("/echo"),
            "headers": {"X-Custom": "abc"},
            "body": {"k": [1, 2]}
        }),
    )
    .await
    .unwrap();
    assert_eq!(out["body"]["method"], "POST");
    assert_eq!(out["body"]["custom"], "abc");
    assert_eq!(out["body"]["content_type"], "application/json");
    assert_eq!(
        serde_json::from_str::<Value>(out["body"]["body"].as_str().unwrap()).unwrap(),
        json!({"k": [1, 2]})
    );
}

#[tokio::test]
async fn client_errors_are_fatal_and_carry_the_status() {
    let srv = TestServer::start().await;
    let h = harness(loopback_config());
    let err = call(&h, json!({"method": "GET", "url": srv.url("/status/404")}))
        .await
        .unwrap_err();
    assert!(matches!(
        err,
        ToolError::Failed {
            retryable: false,
            status: Some(404),
            ..
        }
    ));
    assert!(!err.retryable());
}

#[tokio::test]
async fn server_errors_and_429_are_retryable() {
    let srv = TestServer::start().await;
    let h = harness(loopback_config());
    for code in [500, 503, 429] {
        let err = call(
            &h,
            json!({"method": "GET", "url": srv.url(&format!("/status/{code}"))}),
        )
        .await
        .unwrap_err();
        assert!(
            matches!(err, ToolError::Failed { retryable: true, status: Some(s), .. } if s == code),
            "{code}: {err:?}"
        );
    }
}

#[tokio::test]
async fn accepted_status_is_returned_instead_of_failing() {
    let srv = TestServer::start().await;
    let h = harness(loopback_config());
    let out = call(
        &h,
        json!({"method": "GET", "url": srv.url("/status/404"), "accept_status": [404]}),
    )
    .await
    .unwrap();
    assert_eq!(out["status"], 404);
    assert_eq!(out["body"], "status body");
}

#[tokio::test]
async fn slow_server_times_out_as_a_retryable_failure() {
    let srv = TestServer::start().await;
    let h = harness(loopback_config());
    let err = call(
        &h,
        json!({"method": "GET", "url": srv.url("/slow"), "timeout_ms": 200}),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, ToolError::Timeout(200)), "{err:?}");
    assert!(err.retryable());
}

#[tokio::test]
async fn oversized_bodies_are_refused_with_and_without_content_length() {
    let srv = TestServer::start().await;
    let h = harness(loopback_config());
    for path in ["/big", "/stream-big"] {
        let err = call(&h, json!({"method": "GET", "url": srv.url(path)}))
            .await
            .unwrap_err();
        assert!(
            matches!(&err, ToolError::Failed { retryable: false, message, .. } if message.contains("1024 bytes")),
            "{path}: {err:?}"
        );
    }
}

#[tokio::test]
async fn connection_refused_is_retryable() {
    let port = closed_port().await;
    let h = harness(loopback_config());
    let err = call(
        &h,
        json!({"method": "GET", "url": format!("http://127.0.0.1:{port}/")}),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(
            err,
            ToolError::Failed {
                retryable: true,
                ..
            }
        ),
        "{err:?}"
    );
}

#[tokio::test]
async fn same_origin_redirects_are_followed() {
    let srv = TestServer::start().await;
    srv.redirect("/old", "/json");
    let h = harness(loopback_config());
    let out = call(&h, json!({"method": "GET", "url": srv.url("/old")}))
        .await
        .unwrap();
    assert_eq!(out["body"]["ok"], true);
}

#[tokio::test]
async fn redirect_loops_stop_after_the_bound() {
    let srv = TestServer::start().await;
    srv.redirect("/a", "/b");
    srv.redirect("/b", "/a");
    let h = harness(loopback_config());
    let err = call(&h, json!({"method": "GET", "url": srv.url("/a")}))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, ToolError::Failed { message, .. } if message.contains("redirects")),
        "{err:?}"
    );
    assert_eq!(srv.recorded().len(), 6, "first request plus 5 redirects");
}

#[tokio::test]
async fn redirect_to_a_forbidden_address_is_refused() {
    let srv = TestServer::start().await;
    srv.redirect("/to-metadata", "http://169.254.169.254/latest/meta-data/");
    // `localhost` is not on the allow-list (only 127.0.0.1 is) and resolves to loopback.
    srv.redirect(
        "/to-localhost",
        &format!("http://localhost:{}/json", srv.addr.port()),
    );
    let h = harness(loopback_config());
    for path in ["/to-metadata", "/to-localhost"] {
        let err = call(&h, json!({"method": "GET", "url": srv.url(path)}))
            .await
            .unwrap_err();
        assert!(matches!(err, ToolError::Forbidden(_)), "{path}: {err:?}");
    }
    let hits: Vec<_> = srv.recorded().into_iter().map(|r| r.path).collect();
    assert!(
        !hits.contains(&"/json".to_owned()),
        "never reached: {hits:?}"
    );
}

#[tokio::test]
async fn credentials_are_not_forwarded_to_another_origin() {
    let a = TestServer::start().await;
    let b = TestServer::start().await;
    a.redirect("/hop", &b.url("/echo"));
    let h = harness(loopback_config());
    let out = call(
        &h,
        json!({"method": "GET", "url": a.url("/hop"), "headers": {"Authorization": "Bearer s3cret"}}),
    )
    .await
    .unwrap();
    assert_eq!(out["body"]["authorization"], Value::Null);
}

#[tokio::test]
async fn guard_refuses_loopback_private_link_local_and_metadata_targets() {
    let srv = TestServer::start().await;
    let port = srv.addr.port();
    let h = harness(ToolsConfig::default());
    for url in [
        format!("http://127.0.0.1:{port}/json"),
        "http://10.0.0.1/".to_owned(),
        "http://192.168.0.1/".to_owned(),
        "http://169.254.169.254/latest/meta-data/".to_owned(),
        format!("http://[::1]:{port}/json"),
        "http://[::ffff:127.0.0.1]/".to_owned(),
        "http://0.0.0.0/".to_owned(),
        format!("http://localhost:{port}/json"),
    ] {
        let err = call(&h, json!({"method": "GET", "url": url}))
            .await
            .unwrap_err();
        assert!(matches!(err, ToolError::Forbidden(_)), "{url}: {err:?}");
        assert!(!err.retryable());
    }
    assert!(srv.recorded().is_empty(), "nothing reached the server");
}

#[tokio::test]
async fn allow_list_entries_can_name_host_and_port() {
    let srv = TestServer::start().await;
    let other = closed_port().await;
    let h = harness(ToolsConfig {
        http_allowed_hosts: vec![format!("localhost:{}", srv.addr.port())],
        ..ToolsConfig::default()
    });
    let out = call(
        &h,
        json!({"method": "GET", "url": format!("http://localhost:{}/json", srv.addr.port())}),
    )
    .await
    .unwrap();
    assert_eq!(out["status"], 200);
    let err = call(
        &h,
        json!({"method": "GET", "url": format!("http://localhost:{other}/json")}),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, ToolError::Forbidden(_)), "{err:?}");
}

#[tokio::test]
async fn only_http_and_https_schemes_are_accepted() {
    let h = harness(loopback_config());
    for url in [
        "file:///etc/passwd",
        "ftp://127.0.0.1/",
        "gopher://127.0.0.1/",
    ] {
        let err = call(&h, json!({"method": "GET", "url": url}))
            .await
            .unwrap_err();
        assert!(
            matches!(&err, ToolError::InvalidParams(p) if p[0].field == "/url"),
            "{url}: {err:?}"
        );
    }
}

#[tokio::test]
async fn invalid_parameters_are_all_listed_before_any_request() {
    let h = harness(loopback_config());
    let err = call(
        &h,
        json!({"method": "FETCH", "timeout_ms": 0, "headers": {"a": 1}}),
    )
    .await
    .unwrap_err();
    let ToolError::InvalidParams(problems) = err else {
        panic!("expected InvalidParams, got {err:?}");
    };
    let mut fields: Vec<_> = problems.iter().map(|p| p.field.as_str()).collect();
    fields.sort_unstable();
    assert_eq!(fields, ["/headers/a", "/method", "/timeout_ms", "/url"]);
}

async fn call_with_key(
    h: &support::Harness,
    key: Option<&str>,
    params: Value,
) -> Result<Value, ToolError> {
    let mut c = ctx(Uuid::now_v7());
    c.idempotency_key = key.map(str::to_owned);
    tokio::time::timeout(
        Duration::from_secs(20),
        h.registry.invoke(&c, "http_request", params),
    )
    .await
    .expect("http_request hung")
}

#[tokio::test]
async fn the_invocation_idempotency_key_is_sent_as_the_idempotency_key_header() {
    let srv = TestServer::start().await;
    let h = harness(loopback_config());
    let key = format!("{}:notify", Uuid::now_v7());
    call_with_key(
        &h,
        Some(&key),
        json!({"method": "POST", "url": srv.url("/webhook"), "body": {"a": 1}}),
    )
    .await
    .unwrap();
    let recorded = srv.recorded();
    assert_eq!(recorded.len(), 1);
    assert_eq!(
        recorded[0].headers.get("idempotency-key"),
        Some(&key),
        "{:?}",
        recorded[0].headers
    );
}

#[tokio::test]
async fn no_idempotency_key_header_is_sent_without_a_key() {
    let srv = TestServer::start().await;
    let h = harness(loopback_config());
    call_with_key(
        &h,
        None,
        json!({"method": "POST", "url": srv.url("/webhook"), "body": {"a": 1}}),
    )
    .await
    .unwrap();
    let recorded = srv.recorded();
    assert_eq!(recorded.len(), 1);
    assert!(
        !recorded[0].headers.contains_key("idempotency-key"),
        "{:?}",
        recorded[0].headers
    );
}

#[tokio::test]
async fn an_explicit_idempotency_key_header_wins_over_the_invocation_key() {
    let srv = TestServer::start().await;
    let h = harness(loopback_config());
    call_with_key(
        &h,
        Some("run:node"),
        json!({
            "method": "POST",
            "url": srv.url("/webhook"),
            "headers": {"idempotency-KEY": "caller-chosen"}
        }),
    )
    .await
    .unwrap();
    let recorded = srv.recorded();
    assert_eq!(recorded.len(), 1);
    assert_eq!(
        recorded[0]
            .headers
            .get("idempotency-key")
            .map(String::as_str),
        Some("caller-chosen")
    );
}
