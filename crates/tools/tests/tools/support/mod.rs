//! A tiny HTTP/1.1 server on 127.0.0.1 for the built-in tools' tests, plus in-memory fakes.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use async_trait::async_trait;
use gathering_domain::auth::UserId;
use gathering_domain::events::{Event, EventPublisher};
use gathering_domain::notifications::InMemoryNotifications;
use gathering_domain::projects::{NewProject, Project, ProjectRepository};
use gathering_domain::tools::ToolContext;
use gathering_domain::{Page, PageRequest, RepoError};
use gathering_tools::{ToolRegistry, ToolsConfig};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use uuid::Uuid;

#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    pub path: String,
    pub headers: HashMap<String, String>,
    pub body: String,
}

#[derive(Clone)]
pub struct TestServer {
    pub addr: SocketAddr,
    pub requests: Arc<Mutex<Vec<Recorded>>>,
    redirects: Arc<Mutex<HashMap<String, String>>>,
}

impl TestServer {
    pub async fn start() -> TestServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let server = TestServer {
            addr: listener.local_addr().unwrap(),
            requests: Arc::default(),
            redirects: Arc::default(),
        };
        let s = server.clone();
        tokio::spawn(async move {
            while let Ok((conn, _)) = listener.accept().await {
                let s = s.clone();
                tokio::spawn(async move {
                    let _ = s.serve(conn).await;
                });
            }
        });
        server
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// `GET path` answers 302 to `location`.
    pub fn redirect(&self, path: &str, location: &str) {
        self.redirects
            .lock()
            .unwrap()
            .insert(path.to_owned(), location.to_owned());
    }

    pub fn recorded(&self) -> Vec<Recorded> {
        self.requests.lock().unwrap().clone()
    }

    async fn serve(&self, mut conn: TcpStream) -> std::io::Result<()> {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        let head_end = loop {
            let n = conn.read(&mut chunk).await?;
            if n == 0 {
                return Ok(());
            }
            buf.extend_from_slice(&chunk[..n]);
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
        let mut lines = head.split("\r\n");
        let mut first = lines.next().unwrap_or("").split(' ');
        let method = first.next().unwrap_or("").to_owned();
        let path = first.next().unwrap_or("").to_owned();
        let headers: HashMap<String, String> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
            .collect();
        let len: usize = headers
            .get("content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let mut body = buf[head_end..].to_vec();
        while body.len() < len {
            let n = conn.read(&mut chunk).await?;
            if n == 0 {
                break;
            }
            body.extend_from_slice(&chunk[..n]);
        }
        let body = String::from_utf8_lossy(&body).into_owned();
        self.requests.lock().unwrap().push(Recorded {
            method: method.clone(),
            path: path.clone(),
            headers: headers.clone(),
            body: body.clone(),
        });

        let redirect = self.redirects.lock().unwrap().get(&path).cloned();
        if let Some(location) = redirect {
            return write(&mut conn, "302 Found", &[("location", &location)], "", true).await;
        }
        match path.as_str() {
            "/json" => {
                write(
                    &mut conn,
                    "200 OK",
                    &[("content-type", "application/json"), ("x-test", "yes")],
                    r#"{"ok":true,"n":1}"#,
                    true,
                )
                .await
            }
            "/text" => {
                write(
                    &mut conn,
                    "200 OK",
                    &[("content-type", "text/plain")],
                    "hello",
                    true,
                )
                .await
            }
            "/echo" => {
                let echo = serde_json::json!({
                    "method": method,
                    "body": body,
                    "content_type": headers.get("content-type"),
                    "custom": headers.get("x-custom"),
                    "authorization": headers.get("authorization"),
                });
                write(
                    &mut conn,
                    "200 OK",
                    &[("content-type", "application/json")],
                    &echo.to_string(),
                    true,
                )
                .await
            }
            "/slow" => {
                tokio::time::sleep(Duration::from_secs(10)).await;
                write(&mut conn, "200 OK", &[], "late", true).await
            }
            "/big" => write(&mut conn, "200 OK", &[], &"x".repeat(4096), true).await,
            "/stream-big" => {
                // No Content-Length: the body ends when the connection closes.
                conn.write_all(b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\n")
                    .await?;
                for _ in 0..64 {
                    if conn.write_all(&[b'y'; 1024]).await.is_err() {
                        break;
                    }
                }
                conn.shutdown().await
            }
            "/webhook" => write(&mut conn, "200 OK", &[], "", true).await,
            p if p.starts_with("/status/") => {
                let code = &p["/status/".len()..];
                write(&mut conn, &format!("{code} X"), &[], "status body", true).await
            }
            _ => write(&mut conn, "404 Not Found", &[], "no route", true).await,
        }
    }
}

async fn write(
    conn: &mut TcpStream,
    status: &str,
    headers: &[(&str, &str)],
    body: &str,
    close: bool,
) -> std::io::Result<()> {
    let mut out = format!("HTTP/1.1 {status}\r\ncontent-length: {}\r\n", body.len());
    for (k, v) in headers {
        out.push_str(&format!("{k}: {v}\r\n"));
    }
    if close {
        out.push_str("connection: close\r\n");
    }
    out.push_str("\r\n");
    out.push_str(body);
    conn.write_all(out.as_bytes()).await?;
    conn.shutdown().await
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
