//! A tiny HTTP/1.1 server on 127.0.0.1 for the built-in tools' tests, plus in-memory fakes.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use async_trait::async_trait;
use gathering_domain::auth::UserId;
use gathering_domain::events::{Event, EventPublisher};
use gathering_domain::notifications::InMemoryNotifications;
use gathering_domain::projects::{NewProject, Project, ProjectRepository};
use gathering_domain::tools::ToolContext;
use gathering_domain::{Page, PageRequest, RepoError};
use gathering_store::test_support::loopback::{Answer, Loopback};
use gathering_tools::{ToolRegistry, ToolsConfig};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpListener;
use uuid::Uuid;

pub use gathering_store::test_support::loopback::Request as Recorded;

/// The shared loopback fake with the routes the built-in tools' tests call.
#[derive(Clone)]
pub struct TestServer {
    pub addr: SocketAddr,
    server: Loopback,
    redirects: Arc<Mutex<HashMap<String, String>>>,
}

impl TestServer {
    pub async fn start() -> TestServer {
        let redirects: Arc<Mutex<HashMap<String, String>>> = Arc::default();
        let routes = redirects.clone();
        let server = Loopback::serve(move |r| {
            if let Some(location) = routes.lock().unwrap().get(&r.path) {
                return Answer::text(302, "").header("location", location);
            }
            route(r)
        })
        .await;
        TestServer {
            addr: SocketAddr::from(([127, 0, 0, 1], server.port())),
            server,
            redirects,
        }
    }

    pub fn url(&self, path: &str) -> String {
        self.server.url(path)
    }

    /// `GET path` answers 302 to `location`.
    pub fn redirect(&self, path: &str, location: &str) {
        self.redirects
            .lock()
            .unwrap()
            .insert(path.to_owned(), location.to_owned());
    }

    pub fn recorded(&self) -> Vec<Recorded> {
        self.server.recorded()
    }
}

fn route(r: &Recorded) -> Answer {
    match r.path.as_str() {
        "/json" => Answer::text(200, r#"{"ok":true,"n":1}"#)
            .header("content-type", "application/json")
            .header("x-test", "yes"),
        "/text" => Answer::text(200, "hello").header("content-type", "text/plain"),
        "/echo" => Answer::json(
            200,
            serde_json::json!({
                "method": r.method,
                "body": r.body,
                "content_type": r.headers.get("content-type"),
                "custom": r.headers.get("x-custom"),
                "authorization": r.headers.get("authorization"),
            }),
        ),
        // A slow upstream: the delay is the behaviour under test (the tool's timeout).
        "/slow" => Answer::text(200, "late").after(Duration::from_secs(10)),
        "/big" => Answer::text(200, &"x".repeat(4096)),
        "/stream-big" => {
            // No Content-Length: the body ends when the connection closes.
            let mut raw = b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\n".to_vec();
            raw.extend(std::iter::repeat_n(b'y', 64 * 1024));
            Answer::raw(raw)
        }
        "/webhook" => Answer::text(200, ""),
        p if p.starts_with("/status/") => match p["/status/".len()..].parse() {
            Ok(code) => Answer::text(code, "status body"),
            Err(_) => Answer::text(400, "bad status"),
        },
        _ => Answer::text(404, "no route"),
    }
}

/// A closed port on 127.0.0.1 (bound, then released).
pub async fn closed_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    l.local_addr().unwrap().port()
}

#[derive(Default)]
pub struct RecordingPublisher(pub Mutex<Vec<Event>>);

impl EventPublisher for RecordingPublisher {
    fn publish(&self, event: Event) {
        self.0.lock().unwrap().push(event);
    }
}

#[derive(Default)]
pub struct MemProjects(pub Mutex<HashMap<Uuid, Project>>);

#[async_trait]
impl ProjectRepository for MemProjects {
    async fn create(&self, new: NewProject) -> Result<Project, RepoError> {
        let p = Project {
            id: Uuid::now_v7(),
            name: new.name,
            root_path: new.root_path,
            owner_id: new.owner_id,
            members: new.members,
            created_at: chrono::Utc::now(),
        };
        self.0.lock().unwrap().insert(p.id, p.clone());
        Ok(p)
    }
    async fn get(&self, id: Uuid) -> Result<Option<Project>, RepoError> {
        Ok(self.0.lock().unwrap().get(&id).cloned())
    }
    async fn list_for(
        &self,
        user: UserId,
        is_admin: bool,
        page: PageRequest,
    ) -> Result<Page<Project>, RepoError> {
        let mut rows: Vec<Project> = self
            .0
            .lock()
            .unwrap()
            .values()
            .filter(|p| p.may_use(user, is_admin))
            .cloned()
            .collect();
        rows.sort_by_key(|p| std::cmp::Reverse(p.id));
        rows.truncate(page.fetch_limit() as usize);
        Ok(Page::from_rows(rows, page, |p| p.id))
    }
}

pub struct Harness {
    pub registry: ToolRegistry,
    pub projects: Arc<MemProjects>,
    pub notifications: Arc<InMemoryNotifications>,
    pub events: Arc<RecordingPublisher>,
}

pub fn harness(config: ToolsConfig) -> Harness {
    let projects = Arc::new(MemProjects::default());
    let notifications = Arc::new(InMemoryNotifications::new(1000));
    let events = Arc::new(RecordingPublisher::default());
    let registry = ToolRegistry::with_builtins(
        &config,
        projects.clone(),
        notifications.clone(),
        events.clone(),
    )
    .unwrap();
    Harness {
        registry,
        projects,
        notifications,
        events,
    }
}

pub fn ctx(user: Uuid) -> ToolContext {
    ToolContext {
        user_id: user,
        is_admin: false,
        idempotency_key: None,
        request_id: None,
    }
}

/// Config allowing loopback `127.0.0.1` (any port), small response bound.
pub fn loopback_config() -> ToolsConfig {
    ToolsConfig {
        http_allowed_hosts: vec!["127.0.0.1".to_owned()],
        max_response_bytes: 1024,
        ..ToolsConfig::default()
    }
}
