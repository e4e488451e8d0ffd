//! The built-in tools other than `http_request`: listing, pure tools, project files and
//! notifications (with a webhook on a real loopback server).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::support;

use gathering_domain::PageRequest;
use gathering_domain::notifications::NotificationRepository;
use gathering_domain::projects::{NewProject, ProjectRepository};
use gathering_domain::tools::{ToolContext, ToolError, ToolInvoker};
use gathering_tools::ToolsConfig;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::os::unix::fs::symlink;
use std::time::Duration;
use support::{Harness, TestServer, ctx, harness, loopback_config};
use uuid::Uuid;

async fn call(h: &Harness, c: &ToolContext, name: &str, params: Value) -> Result<Value, ToolError> {
    tokio::time::timeout(Duration::from_secs(20), h.registry.invoke(c, name, params))
        .await
        .expect("tool hung")
}

#[test]
fn builtins_are_listed_with_their_schemas() {
    let h = harness(ToolsConfig::default());
    let names: Vec<_> = h.registry.list().iter().map(|s| s.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "calculator",
            "http_request",
            "json_query",
            "list_files",
            "read_file",
            "send_notification",
            "text_template",
            "write_file"
        ]
    );
    let http = h.registry.lookup("http_request").unwrap();
    assert!(http.is_async);
    assert_eq!(http.parameters["required"], json!(["method", "url"]));
    assert!(!h.registry.lookup("calculator").unwrap().is_async);
}

#[tokio::test]
async fn pure_tools_run_through_the_invoker_port() {
    let h = harness(ToolsConfig::default());
    let invoker: &dyn ToolInvoker = &h.registry;
    let c = ctx(Uuid::now_v7());
    assert_eq!(
        invoker
            .invoke(&c, "calculator", json!({"expression": "(2 + 3) * 4 ^ 2"}))
            .await
            .unwrap(),
        json!(80)
    );
    assert_eq!(
        invoker
            .invoke(
                &c,
                "json_query",
                json!({"data": {"a": [1, 2, 3]}, "query": "a[-1]"})
            )
            .await
            .unwrap(),
        json!(3)
    );
    assert_eq!(
        invoker
            .invoke(
                &c,
                "text_template",
                json!({"template": "Hello {{who}}!", "values": {"who": "world"}})
            )
            .await
            .unwrap(),
        json!("Hello world!")
    );
    let err = invoker
        .invoke(
            &c,
            "text_template",
            json!({"template": "{{x}}", "values": {}}),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, ToolError::InvalidParams(p) if p[0].field == "/values/x"));
}

struct Files {
    _dir: tempfile::TempDir,
    outside: std::path::PathBuf,
    project: Uuid,
    owner: Uuid,
    member: Uuid,
}

async fn project(h: &Harness) -> Files {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let outside = dir.path().join("outside");
    std::fs::create_dir_all(root.join("src")).unwrap();
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::write(root.join("src/lib.rs"), "pub fn x() {}\n").unwrap();
    std::fs::write(outside.join("secret"), "secret").unwrap();
    symlink(&outside, root.join("escape")).unwrap();
    let (owner, member) = (Uuid::now_v7(), Uuid::now_v7());
    let p = h
        .projects
        .create(NewProject {
            name: "p".into(),
            root_path: root.to_string_lossy().into_owned(),
            owner_id: owner,
            members: vec![member],
        })
        .await
        .unwrap();
    Files {
        _dir: dir,
        outside,
        project: p.id,
        owner,
        member,
    }
}

#[tokio::test]
async fn file_tools_read_write_and_list_inside_the_project() {
    let h = harness(ToolsConfig::default());
    let f = project(&h).await;
    let pid = f.project.to_string();
    let read = call(
        &h,
        &ctx(f.member),
        "read_file",
        json!({"project_id": pid, "path": "src/lib.rs"}),
    )
    .await
    .unwrap();
    assert_eq!(
        read,
        json!({"path": "src/lib.rs", "size": 14, "content": "pub fn x() {}\n"})
    );

    let wrote = call(
        &h,
        &ctx(f.owner),
        "write_file",
        json!({"project_id": pid, "path": "notes/todo.md", "content": "- test"}),
    )
    .await
    .unwrap();
    assert_eq!(wrote["created"], true);
    let back = call(
        &h,
        &ctx(f.owner),
        "read_file",
        json!({"project_id": pid, "path": "notes/todo.md"}),
    )
    .await
    .unwrap();
    assert_eq!(back["content"], "- test");

    let list = call(&h, &ctx(f.owner), "list_files", json!({"project_id": pid}))
        .await
        .unwrap();
    let paths: Vec<_> = list["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["path"].as_str().unwrap().to_owned())
        .collect();
    assert!(paths.contains(&"src/lib.rs".to_owned()), "{paths:?}");
    assert!(paths.contains(&"notes/todo.md".to_owned()), "{paths:?}");
    assert!(!paths.iter().any(|p| p.contains("secret")), "{paths:?}");
}

#[tokio::test]
async fn file_tools_refuse_paths_leaving_the_root_and_write_nothing() {
    let h = harness(ToolsConfig::default());
    let f = project(&h).await;
    let pid = f.project.to_string();
    let c = ctx(f.owner);
    for (tool, path) in [
        ("read_file", "../outside/secret"),
        ("read_file", "escape/secret"),
        ("read_file", "%2e%2e%2foutside%2fsecret"),
        ("read_file", "/etc/passwd"),
        ("write_file", "escape/planted"),
        ("write_file", "../planted"),
        ("list_files", "escape"),
    ] {
        let err = call(
            &h,
            &c,
            tool,
            json!({"project_id": pid, "path": path, "content": "x"})
                .as_object()
                .map(|o| {
                    let mut o = o.clone();
                    if tool != "write_file" {
                        o.remove("content");
                    }
                    Value::Object(o)
                })
                .unwrap(),
        )
        .await
        .unwrap_err();
        assert!(
            matches!(err, ToolError::PathForbidden(_)),
            "{tool} {path}: {err:?}"
        );
    }
    assert!(!f.outside.join("planted").exists());
}

#[tokio::test]
async fn projects_of_others_are_not_found_unless_admin() {
    let h = harness(ToolsConfig::default());
    let f = project(&h).await;
    let params = json!({"project_id": f.project.to_string(), "path": "src/lib.rs"});
    let err = call(&h, &ctx(Uuid::now_v7()), "read_file", params.clone())
        .await
        .unwrap_err();
    assert!(
        matches!(&err, ToolError::Failed { message, .. } if message == "project not found"),
        "{err:?}"
    );
    let unknown = json!({"project_id": Uuid::now_v7().to_string(), "path": "a"});
    let err = call(&h, &ctx(f.owner), "read_file", unknown)
        .await
        .unwrap_err();
    assert!(matches!(&err, ToolError::Failed { message, .. } if message == "project not found"));
    let admin = ToolContext {
        is_admin: true,
        ..ctx(Uuid::now_v7())
    };
    assert!(call(&h, &admin, "read_file", params).await.is_ok());
}

#[tokio::test]
async fn send_notification_stores_publishes_and_posts_the_webhook() {
    let srv = TestServer::start().await;
    let h = harness(ToolsConfig {
        webhooks: HashMap::from([("ops".to_owned(), srv.url("/webhook"))]),
        ..loopback_config()
    });
    let user = Uuid::now_v7();
    let out = call(
        &h,
        &ctx(user),
        "send_notification",
        json!({"channel": "ops", "title": "Build", "message": "green"}),
    )
    .await
    .unwrap();
    assert_eq!(out["notification"]["title"], "Build");
    assert_eq!(out["webhook"]["status"], 200);

    let page = h
        .notifications
        .list_for_user(user, PageRequest::default())
        .await
        .unwrap();
    assert_eq!(page.items.len(), 1);
    assert_eq!(page.items[0].channel, "ops");
    assert_eq!(page.items[0].message, "green");

    let events = h.events.0.lock().unwrap().clone();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].kind, "notification.created");
    assert_eq!(events[0].user_id, user);

    let hooks = srv.recorded();
    assert_eq!(hooks.len(), 1);
    assert_eq!(hooks[0].method, "POST");
    let body: Value = serde_json::from_str(&hooks[0].body).unwrap();
    assert_eq!(body["notification"]["title"], "Build");
    assert_eq!(body["notification"]["id"], page.items[0].id.to_string());
}

#[tokio::test]
async fn send_notification_without_webhook_uses_the_default_channel() {
    let h = harness(ToolsConfig::default());
    let user = Uuid::now_v7();
    let out = call(
        &h,
        &ctx(user),
        "send_notification",
        json!({"title": "t", "message": "m"}),
    )
    .await
    .unwrap();
    assert_eq!(out["notification"]["channel"], "in_app");
    assert_eq!(out["webhook"], Value::Null);
}

#[tokio::test]
async fn retried_send_with_the_same_idempotency_key_stores_one_notification() {
    let h = harness(ToolsConfig::default());
    let user = Uuid::now_v7();
    let c = ToolContext {
        idempotency_key: Some("run-1:notify".to_owned()),
        ..ctx(user)
    };
    let params = json!({"title": "t", "message": "m"});
    let a = call(&h, &c, "send_notification", params.clone())
        .await
        .unwrap();
    let b = call(&h, &c, "send_notification", params).await.unwrap();
    assert_eq!(a["notification"]["id"], b["notification"]["id"]);
    let page = h
        .notifications
        .list_for_user(user, PageRequest::default())
        .await
        .unwrap();
    assert_eq!(page.items.len(), 1);
}

#[tokio::test]
async fn replayed_send_notification_posts_the_webhook_once_with_the_idempotency_key() {
    let srv = TestServer::start().await;
    let h = harness(ToolsConfig {
        webhooks: HashMap::from([("ops".to_owned(), srv.url("/webhook"))]),
        ..loopback_config()
    });
    let user = Uuid::now_v7();
    let c = ToolContext {
        idempotency_key: Some("run-7:notify".to_owned()),
        ..ctx(user)
    };
    let params = json!({"channel": "ops", "title": "t", "message": "m"});
    let first = call(&h, &c, "send_notification", params.clone())
        .await
        .unwrap();
    assert_eq!(first["replayed"], false);
    assert_eq!(first["webhook"]["status"], 200);
    for _ in 0..3 {
        let again = call(&h, &c, "send_notification", params.clone())
            .await
            .unwrap();
        assert_eq!(again["replayed"], true);
        assert_eq!(again["notification"]["id"], first["notification"]["id"]);
        assert_eq!(again["webhook"], Value::Null);
    }
    let hooks: Vec<_> = srv
        .recorded()
        .into_iter()
        .filter(|r| r.path == "/webhook")
        .collect();
    assert_eq!(hooks.len(), 1, "one POST for one logical notification");
    assert_eq!(
        hooks[0].headers.get("idempotency-key").map(String::as_str),
        Some("run-7:notify")
    );
    assert_eq!(h.events.0.lock().unwrap().len(), 1, "published once");

    // Without a key every call is new; the notification id is the receiver's key.
    let out = call(&h, &ctx(user), "send_notification", params)
        .await
        .unwrap();
    let hooks = srv.recorded();
    let last = hooks.last().unwrap();
    assert_eq!(
        last.headers.get("idempotency-key").map(String::as_str),
        out["notification"]["id"].as_str()
    );
}

#[tokio::test]
async fn failing_webhook_is_a_retryable_failure_and_forbidden_webhooks_are_refused() {
    let srv = TestServer::start().await;
    let h = harness(ToolsConfig {
        webhooks: HashMap::from([("bad".to_owned(), srv.url("/status/503"))]),
        ..loopback_config()
    });
    let err = call(
        &h,
        &ctx(Uuid::now_v7()),
        "send_notification",
        json!({"channel": "bad", "title": "t", "message": "m"}),
    )
    .await
    .unwrap_err();
    assert!(err.retryable(), "{err:?}");

    // Same webhook, but loopback is not allowed: the guard applies to webhooks too.
    let h = harness(ToolsConfig {
        webhooks: HashMap::from([("ops".to_owned(), srv.url("/webhook"))]),
        ..ToolsConfig::default()
    });
    let err = call(
        &h,
        &ctx(Uuid::now_v7()),
        "send_notification",
        json!({"channel": "ops", "title": "t", "message": "m"}),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, ToolError::Forbidden(_)), "{err:?}");
    assert!(!srv.recorded().iter().any(|r| r.path == "/webhook"));
}

#[test]
fn webhook_urls_must_be_http() {
    let res = gathering_tools::ToolRegistry::with_builtins(
        &ToolsConfig {
            webhooks: HashMap::from([("x".to_owned(), "file:///tmp/x".to_owned())]),
            ..ToolsConfig::default()
        },
        std::sync::Arc::new(support::MemProjects::default()),
        std::sync::Arc::new(gathering_domain::notifications::InMemoryNotifications::new(
            1,
        )),
        std::sync::Arc::new(gathering_domain::events::NoopPublisher),
    );
    assert!(matches!(res, Err(gathering_tools::ToolsError::Config(_))));
}
