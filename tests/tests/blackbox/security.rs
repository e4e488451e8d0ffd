//! Security perimeter: traversal, injection, error bodies, headers, limits.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use gathering_tests::*;
use reqwest::StatusCode;
use serde_json::{Value, json};

struct Workspace {
    _dir: tempfile::TempDir,
    root: std::path::PathBuf,
}

/// A project root with a file, a nested file, a symlink leaving the root and one staying inside;
/// plus a secret file beside the root that nothing may read.
fn workspace() -> Workspace {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    std::fs::create_dir_all(root.join("src")).unwrap();
    std::fs::write(root.join("README.md"), "hello workspace").unwrap();
    std::fs::write(root.join("src/main.rs"), "fn main() {}").unwrap();
    std::fs::write(dir.path().join("secret.txt"), "TOP SECRET").unwrap();
    std::os::unix::fs::symlink(dir.path().join("secret.txt"), root.join("escape")).unwrap();
    std::os::unix::fs::symlink(dir.path(), root.join("escape_dir")).unwrap();
    std::os::unix::fs::symlink(root.join("README.md"), root.join("inside_link")).unwrap();
    Workspace { _dir: dir, root }
}

async fn project(app: &TestApp, admin: &str, root: &std::path::Path, members: &[&str]) -> String {
    let r = app
        .post(
            "/projects",
            &json!({"name": "ws", "root_path": root, "members": members}),
            Some(admin),
        )
        .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let p: Value = r.json().await.unwrap();
    p["id"].as_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workspace_files_resolve_under_the_project_root_only() {
    let app = spawn_app().await;
    let ws = workspace();
    let admin = app.admin_token().await;
    let id = project(&app, &admin, &ws.root, &[]).await;

    let r = app
        .get(
            &format!("/projects/{id}/files?path=src/main.rs"),
            Some(&admin),
        )
        .await;
    assert_eq!(r.status(), 200);
    let f: Value = r.json().await.unwrap();
    assert_eq!(f["content"], "fn main() {}");
    assert_eq!(f["size"], 12);
    let r = app
        .get(
            &format!("/projects/{id}/files?path=inside_link"),
            Some(&admin),
        )
        .await;
    assert_eq!(r.status(), 200, "a symlink that stays inside is fine");
    assert_error(
        app.get(&format!("/projects/{id}/files?path=nope.txt"), Some(&admin))
            .await,
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;

    // Each is a raw query-string value as a client would send it.
    let payloads = [
        "..%2Fsecret.txt",                  // ../secret.txt
        "src%2F..%2F..%2Fsecret.txt",       // src/../../secret.txt
        "..",                               // the parent itself
        "%2E%2E%2Fsecret.txt",              // percent-encoded dots and slash
        "%252e%252e%252fsecret.txt",        // double-encoded
        "..%255csecret.txt",                // double-encoded backslash
        "..%5Csecret.txt",                  // backslash
        "src%5C..%5C..%5Csecret.txt",       // backslashes
        "%2Fetc%2Fpasswd",                  // absolute
        "C:%5Cwindows%5Cwin.ini",           // drive-absolute
        "escape",                           // symlink to a file outside
        "escape_dir%2Fsecret.txt",          // through a symlinked directory outside
        "src%2F..%2F..%2Froot%2FREADME.md", // leaves and re-enters: still refused
    ];
    for p in payloads {
        let r = app
            .get(&format!("/projects/{id}/files?path={p}"), Some(&admin))
            .await;
        let body = assert_error(r, StatusCode::FORBIDDEN, "path_forbidden").await;
        assert!(!body.to_string().contains("TOP SECRET"), "{p}: {body}");
        let r = app
            .get(&format!("/projects/{id}/tree?path={p}"), Some(&admin))
            .await;
        assert!(
            r.status() == StatusCode::FORBIDDEN || r.status() == StatusCode::NOT_FOUND,
            "tree {p}: {}",
            r.status()
        );
    }

    // A NUL byte never reaches the resolver: every query string holding `%00` is refused at
    // the edge (hardening_limits.rs).
    for route in ["files", "tree"] {
        let r = app
            .get(
                &format!("/projects/{id}/{route}?path=README.md%00.txt"),
                Some(&admin),
            )
            .await;
        let body = assert_error(r, StatusCode::BAD_REQUEST, "invalid_query").await;
        assert!(!body.to_string().contains("TOP SECRET"), "{body}");
    }

    let tree: Value = app
        .get(&format!("/projects/{id}/tree?path="), Some(&admin))
        .await
        .json()
        .await
        .unwrap();
    let text = tree.to_string();
    assert!(
        text.contains("README.md") && text.contains("main.rs"),
        "{text}"
    );
    assert!(
        !text.contains("secret.txt"),
        "the tree must not follow links out: {text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn projects_are_admin_created_and_visible_only_to_members() {
    let app = spawn_app().await;
    let ws = workspace();
    let admin = app.admin_token().await;
    let (member, _, member_email) = app.register_and_login().await;
    let stranger = app.user_token().await;
    let me: Value = app
        .get("/auth/me", Some(&member))
        .await
        .json()
        .await
        .unwrap();
    let member_id = me["id"].as_str().unwrap();
    let _ = member_email;

    let r = app
        .post(
            "/projects",
            &json!({"name": "x", "root_path": ws.root}),
            Some(&member),
        )
        .await;
    assert_error(r, StatusCode::FORBIDDEN, "forbidden").await;
    let r = app
        .post(
            "/projects",
            &json!({"name": "x", "root_path": "relative/path"}),
            Some(&admin),
        )
        .await;
    assert_error(r, StatusCode::UNPROCESSABLE_ENTITY, "validation_failed").await;

    let id = project(&app, &admin, &ws.root, &[member_id]).await;
    assert_eq!(
        app.get(
            &format!("/projects/{id}/files?path=README.md"),
            Some(&member)
        )
        .await
        .status(),
        200
    );
    assert_error(
        app.get(
            &format!("/projects/{id}/files?path=README.md"),
            Some(&stranger),
        )
        .await,
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;
    let list: Value = app
        .get("/projects", Some(&stranger))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(list["items"].as_array().unwrap().len(), 0);
    let list: Value = app
        .get("/projects", Some(&member))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(list["items"].as_array().unwrap().len(), 1);
}

const INJECTIONS: [&str; 6] = [
    "x' OR '1'='1",
    "'; DROP TABLE auth.users; --",
    "\" OR \"\"=\"",
    "1; SELECT pg_sleep(5)",
    "$$; DELETE FROM auth.refresh_tokens; $$",
    "robert'); DROP TABLE workspace.projects;--",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sql_injection_payloads_are_inert_in_every_string_field() {
    let app = spawn_app().await;
    let admin = app.admin_token().await;
    let ws = workspace();
    for (i, payload) in INJECTIONS.iter().enumerate() {
        // As a name: stored and returned verbatim.
        let email = format!("inj{i}@example.com");
        let r = app.register(&email, PASSWORD, payload).await;
        assert_eq!(r.status(), StatusCode::CREATED, "{payload}");
        let u: Value = r.json().await.unwrap();
        assert_eq!(u["name"], *payload);
        // As an email: invalid or unknown, never a 500.
        let r = app.register(payload, PASSWORD, "n").await;
        assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY, "{payload}");
        let r = app.login(payload, payload).await;
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "{payload}");
        // As a password.
        let r = app.login(&email, payload).await;
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "{payload}");
        // As a refresh token and a bearer token.
        let r = app
            .post("/auth/refresh", &json!({"refresh_token": payload}), None)
            .await;
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "{payload}");
        let r = app.get("/auth/me", Some(payload)).await;
        assert!(r.status() == 401 || r.status() == 400, "{payload}");
        // As query parameters.
        let q = urlencode(payload);
        let r = app
            .get(&format!("/admin/audit?event={q}"), Some(&admin))
            .await;
        assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY, "{payload}");
        let r = app
            .get(&format!("/admin/audit?cursor={q}"), Some(&admin))
            .await;
        assert_eq!(r.status(), StatusCode::BAD_REQUEST, "{payload}");
        // As a project name and a file path.
        let r = app
            .post(
                "/projects",
                &json!({"name": payload, "root_path": ws.root}),
                Some(&admin),
            )
            .await;
        assert_eq!(r.status(), StatusCode::CREATED, "{payload}");
        let p: Value = r.json().await.unwrap();
        assert_eq!(p["name"], *payload);
        let id = p["id"].as_str().unwrap();
        let r = app
            .get(&format!("/projects/{id}/files?path={q}"), Some(&admin))
            .await;
        assert!(
            r.status() == 403 || r.status() == 404,
            "{payload}: {}",
            r.status()
        );
    }
    // Every table is intact and every user is still there.
    let client = app.db_client().await;
    let n: i64 = client
        .query_one("SELECT count(*) FROM auth.users", &[])
        .await
        .unwrap()
        .get(0);
    assert!(
        n > INJECTIONS.len() as i64,
        "every injected name plus the admin"
    );
    let n: i64 = client
        .query_one("SELECT count(*) FROM workspace.projects", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, INJECTIONS.len() as i64);
    app.login_ok("inj0@example.com", PASSWORD).await;
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_response_carries_security_headers_and_a_request_id() {
    let app = spawn_app().await;
    let r = app.get("/health/live", None).await;
    let h = r.headers();
    assert_eq!(h["x-content-type-options"], "nosniff");
    assert_eq!(h["x-frame-options"], "DENY");
    assert!(h.get("x-request-id").is_some());

    let r = app
        .client
        .get(app.url("/health/live"))
        .header("x-request-id", "client-chosen-42")
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["x-request-id"], "client-chosen-42");

    let r = app.login("a@example.com", "wrong-password-xyz").await;
    assert_eq!(r.headers()["cache-control"], "no-store");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_routes_methods_and_oversized_bodies_get_json_errors() {
    let app = spawn_app().await;
    assert_error(
        app.get("/no/such/route", None).await,
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;
    let token = app.user_token().await;
    assert_error(
        app.get("/projects/not-a-uuid", Some(&token)).await,
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;
    let huge = "x".repeat(2 * 1024 * 1024);
    let r = app
        .post(
            "/auth/register",
            &json!({"email": "a@b.co", "password": huge, "name": "n"}),
            None,
        )
        .await;
    assert_error(r, StatusCode::BAD_REQUEST, "payload_too_large").await;
    let r = app
        .client
        .post(app.url("/auth/login"))
        .body("email=a")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let body: Value = r.json().await.unwrap();
    assert!(body["error"]["code"].is_string());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openapi_document_lists_every_core_endpoint() {
    let app = spawn_app().await;
    let doc: Value = app
        .get("/api/v1/openapi.json", None)
        .await
        .json()
        .await
        .unwrap();
    let paths = doc["paths"].as_object().unwrap();
    for p in [
        "/health/live",
        "/health/ready",
        "/api/v1/auth/register",
        "/api/v1/auth/login",
        "/api/v1/auth/refresh",
        "/api/v1/auth/logout",
        "/api/v1/auth/me",
        "/api/v1/admin/audit",
        "/api/v1/projects",
        "/api/v1/projects/{id}/files",
        "/api/v1/projects/{id}/tree",
    ] {
        assert!(
            paths.contains_key(p),
            "{p} missing from the OpenAPI document"
        );
    }
    let r = app.get("/docs", None).await;
    assert_eq!(r.status(), 200);
    assert!(r.text().await.unwrap().contains("openapi"));
}
