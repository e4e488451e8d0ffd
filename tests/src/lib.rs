//! Test support: `spawn_app()` starts the real server on a random port with a fresh database and
//! returns a [`TestApp`] that talks to it over HTTP.
#![allow(clippy::unwrap_used, clippy::expect_used)]

pub mod gate;
pub mod loopback;
pub mod process;
pub mod ws;

use gathering_server::{Application, Settings};
use rand::RngCore;
use reqwest::{Response, StatusCode};
use serde_json::{Value, json};
use std::sync::Once;
use std::time::Duration;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub const ADMIN_EMAIL: &str = "admin@gathering.test";
pub const ADMIN_PASSWORD: &str = "admin-password-0123";
pub const PASSWORD: &str = "correct-horse-battery";

static TELEMETRY: Once = Once::new();

fn init_telemetry() {
    TELEMETRY.call_once(|| {
        if std::env::var("TEST_LOG").is_ok() {
            let s = gathering_server::telemetry::get_subscriber("test", "info", std::io::stdout);
            gathering_server::telemetry::init_subscriber(s);
        } else {
            let s = gathering_server::telemetry::get_subscriber("test", "off", std::io::sink);
            gathering_server::telemetry::init_subscriber(s);
        }
    });
}

/// A database for one test (or for several instances in one test).
#[derive(Clone)]
pub struct TestDatabase {
    pub url: String,
    pub name: String,
    /// Shared by every instance on this database, as in production.
    pub token_key: String,
    pub settings_key: String,
}

impl TestDatabase {
    pub async fn new() -> TestDatabase {
        let db = gathering_store::test_support::TestDb::new()
            .await
            .expect("create a test database (is PostgreSQL running? set TEST_DATABASE_URL)");
        TestDatabase {
            url: db.url.clone(),
            name: db.name.clone(),
            token_key: random_key(),
            settings_key: random_key(),
        }
    }
}

fn random_key() -> String {
    let mut k = [0u8; 32];
    rand::rng().fill_bytes(&mut k);
    hex::encode(k)
}

pub struct TestApp {
    pub address: String,
    pub port: u16,
    pub client: reqwest::Client,
    pub db: TestDatabase,
    pub data_dir: tempfile::TempDir,
    stop: CancellationToken,
    task: Option<JoinHandle<anyhow::Result<()>>>,
}

/// The environment a test server runs with, before the test's own overrides.
pub fn base_env(db: &TestDatabase, data_dir: &std::path::Path) -> Vec<(String, String)> {
    [
        ("DATABASE_URL", db.url.as_str()),
        ("GATHERING__SERVER__PORT", "0"),
        ("GATHERING__SERVER__WORKERS", "2"),
        ("GATHERING__SERVER__SHUTDOWN_TIMEOUT_SECS", "10"),
        ("GATHERING__DATA_DIR", &data_dir.to_string_lossy()),
        ("GATHERING__AUTH__TOKEN_KEY", db.token_key.as_str()),
        ("GATHERING__LLM__SETTINGS_KEY", db.settings_key.as_str()),
        ("GATHERING__AUTH__ADMIN_EMAIL", ADMIN_EMAIL),
        ("GATHERING__AUTH__ADMIN_PASSWORD", ADMIN_PASSWORD),
        ("GATHERING__AUTH__HASH_CONCURRENCY", "2"),
        // Generous limits so tests are not throttled unless they ask to be.
        ("GATHERING__RATE_LIMIT__AUTH_PER_MINUTE", "10000"),
        ("GATHERING__RATE_LIMIT__WRITE_PER_MINUTE", "100000"),
        ("GATHERING__RATE_LIMIT__READ_PER_MINUTE", "100000"),
        ("GATHERING__AUTH__MAX_FAILED_LOGINS", "5"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect()
}

/// The real server with a fresh database.
pub async fn spawn_app() -> TestApp {
    spawn_app_with(&[]).await
}

/// The real server with a fresh database and extra environment (`GATHERING__...`).
pub async fn spawn_app_with(env: &[(&str, &str)]) -> TestApp {
    let db = TestDatabase::new().await;
    spawn_app_on(&db, env).await
}

/// Another server instance on an existing database (restart and multi-instance tests).
pub async fn spawn_app_on(db: &TestDatabase, env: &[(&str, &str)]) -> TestApp {
    init_telemetry();
    let data_dir = tempfile::tempdir().expect("temp data dir");
    let mut vars = base_env(db, data_dir.path());
    for (k, v) in env {
        vars.retain(|(key, _)| key != k);
        vars.push(((*k).to_owned(), (*v).to_owned()));
    }
    let settings = Settings::from_sources(&vars).expect("test settings");
    let app = Application::build(settings).await.expect("build the app");
    let port = app.port();
    let stop = app.stop_token();
    let task = tokio::spawn(app.run_until_stopped());
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(60))
        .build()
        .expect("client");
    TestApp {
        address: format!("http://127.0.0.1:{port}"),
        port,
        client,
        db: db.clone(),
        data_dir,
        stop,
        task: Some(task),
    }
}

impl TestApp {
    /// Waits (at most 20 s) until `n` instances hold their `LISTEN` connection on this
    /// database: the listener connects in the background after start-up, and a NOTIFY sent
    /// before that is not seen.
    pub async fn listeners_ready(&self, n: i64) {
        let db = self.db_client().await;
        let db = &db;
        wait_until(Duration::from_secs(20), || async move {
            let row = db
                .query_one(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 \
                     AND application_name = 'gathering-listener' AND state = 'idle' \
                     AND query LIKE 'LISTEN%'",
                    &[&self.db.name],
                )
                .await
                .unwrap();
            row.get::<_, i64>(0) >= n
        })
        .await;
    }
    /// `POST /pipelines` that must succeed; the new pipeline's id.
    pub async fn create_pipeline(&self, token: &str, body: Value) -> String {
        let r = self.post("/pipelines", &body, Some(token)).await;
        let status = r.status();
        let text = r.text().await.unwrap();
        assert_eq!(status, StatusCode::CREATED, "{text}");
        let p: Value = serde_json::from_str(&text).unwrap();
        p["id"].as_str().unwrap().to_owned()
    }

    /// `POST /pipelines/{id}/runs` that must be accepted as `queued`; the run's id.
    pub async fn start_run(&self, token: &str, pipeline: &str, input: Value) -> String {
        let r = self
            .post(
                &format!("/pipelines/{pipeline}/runs"),
                &json!({"input": input}),
                Some(token),
            )
            .await;
        assert_eq!(r.status(), StatusCode::ACCEPTED);
        let run: Value = r.json().await.unwrap();
        assert_eq!(run["status"], "queued");
        run["id"].as_str().unwrap().to_owned()
    }

    /// `GET /runs/{id}` that must answer 200.
    pub async fn run_json(&self, token: &str, run: &str) -> Value {
        let r = self.get(&format!("/runs/{run}"), Some(token)).await;
        assert_eq!(r.status(), StatusCode::OK);
        r.json().await.unwrap()
    }

    /// Polls `GET /runs/{id}` until the run is neither queued nor running (at most 60 s).
    pub async fn run_finished(&self, token: &str, run: &str) -> Value {
        wait_for(Duration::from_secs(60), || async {
            let r = self.run_json(token, run).await;
            (!matches!(r["status"].as_str(), Some("queued") | Some("running"))).then_some(r)
        })
        .await
    }
    pub fn url(&self, path: &str) -> String {
        if path.starts_with("/health") || path.starts_with("/docs") || path.starts_with("/api/") {
            format!("{}{}", self.address, path)
        } else {
            format!("{}/api/v1{}", self.address, path)
        }
    }

    /// Graceful stop, as SIGTERM does; waits until the server has stopped.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        self.stop.cancel();
        match self.task.take() {
            Some(t) => t.await?,
            None => Ok(()),
        }
    }

    pub fn stop_token(&self) -> CancellationToken {
        self.stop.clone()
    }

    pub async fn get(&self, path: &str, token: Option<&str>) -> Response {
        let mut r = self.client.get(self.url(path));
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        r.send().await.expect("GET")
    }

    pub async fn post(&self, path: &str, body: &Value, token: Option<&str>) -> Response {
        let mut r = self.client.post(self.url(path)).json(body);
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        r.send().await.expect("POST")
    }

    pub async fn patch(&self, path: &str, body: &Value, token: Option<&str>) -> Response {
        let mut r = self.client.patch(self.url(path)).json(body);
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        r.send().await.expect("PATCH")
    }

    pub async fn put(&self, path: &str, body: &Value, token: Option<&str>) -> Response {
        let mut r = self.client.put(self.url(path)).json(body);
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        r.send().await.expect("PUT")
    }

    pub async fn delete(&self, path: &str, token: Option<&str>) -> Response {
        let mut r = self.client.delete(self.url(path));
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        r.send().await.expect("DELETE")
    }

    pub async fn register(&self, email: &str, password: &str, name: &str) -> Response {
        self.post(
            "/auth/register",
            &json!({"email": email, "password": password, "name": name}),
            None,
        )
        .await
    }

    pub async fn login(&self, email: &str, password: &str) -> Response {
        self.post(
            "/auth/login",
            &json!({"email": email, "password": password}),
            None,
        )
        .await
    }

    /// Registers a fresh user and logs in; returns (access token, refresh token, email).
    pub async fn register_and_login(&self) -> (String, String, String) {
        let email = format!("user-{}@example.com", uuid::Uuid::new_v4().simple());
        let r = self.register(&email, PASSWORD, "Test User").await;
        assert_eq!(r.status(), StatusCode::CREATED, "register");
        let tokens = self.login_ok(&email, PASSWORD).await;
        (
            tokens["access_token"].as_str().unwrap().to_owned(),
            tokens["refresh_token"].as_str().unwrap().to_owned(),
            email,
        )
    }

    /// An access token of a fresh user.
    pub async fn user_token(&self) -> String {
        self.register_and_login().await.0
    }

    pub async fn login_ok(&self, email: &str, password: &str) -> Value {
        let r = self.login(email, password).await;
        assert_eq!(r.status(), StatusCode::OK, "login {email}");
        r.json().await.unwrap()
    }

    /// The access token of the configured admin.
    pub async fn admin_token(&self) -> String {
        self.login_ok(ADMIN_EMAIL, ADMIN_PASSWORD).await["access_token"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    /// A plain connection to this app's database, for assertions on stored rows.
    pub async fn db_client(&self) -> tokio_postgres::Client {
        let (client, conn) = tokio_postgres::connect(&self.db.url, tokio_postgres::NoTls)
            .await
            .expect("connect to the test database");
        tokio::spawn(conn);
        client
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Asserts the uniform error body and returns it.
pub async fn assert_error(r: Response, status: StatusCode, code: &str) -> Value {
    assert_eq!(r.status(), status, "status");
    let rid = r
        .headers()
        .get("x-request-id")
        .map(|v| v.to_str().unwrap().to_owned());
    let body: Value = r.json().await.expect("JSON error body");
    assert_eq!(body["error"]["code"], code, "{body}");
    assert!(body["error"]["message"].is_string(), "{body}");
    assert_eq!(
        body["error"]["request_id"].as_str().map(str::to_owned),
        rid,
        "request id in body matches header: {body}"
    );
    body
}

/// The kit's condition waits and direct user insert, shared with the crates' own tests.
pub use gathering_store::test_support::{insert_user, wait_for, wait_until};

/// The node `id` of a run detail (`GET /runs/{id}`).
pub fn run_node<'a>(run: &'a Value, id: &str) -> &'a Value {
    run["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["node_id"] == id)
        .unwrap_or_else(|| panic!("node {id} in {run}"))
}
