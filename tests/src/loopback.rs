//! A loopback HTTP/1.1 server for tools and actions to call: each request's path goes to a
//! handler that decides the answer; hits per path, all requests and TCP connections are
//! counted, so a test can prove what reached it (or that nothing did).

use serde_json::Value;
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::Notify;

/// What the server answers to one request.
pub struct Answer {
    pub status: u16,
    pub body: Value,
    /// Wait this long first (a slow or silent upstream).
    pub delay: Option<Duration>,
}

impl Answer {
    pub fn json(status: u16, body: Value) -> Answer {
        Answer {
            status,
            body,
            delay: None,
        }
    }

    pub fn after(mut self, delay: Duration) -> Answer {
        self.delay = Some(delay);
        self
    }
}

type Handler = dyn Fn(&str, usize) -> Answer + Send + Sync;

#[derive(Clone)]
pub struct Loopback {
    base: String,
    hits: Arc<Mutex<HashMap<String, usize>>>,
    connections: Arc<AtomicUsize>,
    arrived: Arc<Notify>,
}

impl Loopback {
    /// Answers each request with `handler(path, n)`, `n` counting the requests to that path
    /// (1 for the first).
    pub async fn start(
        handler: impl Fn(&str, usize) -> Answer + Send + Sync + 'static,
    ) -> Loopback {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let server = Loopback {
            base,
            hits: Arc::default(),
            connections: Arc::default(),
            arrived: Arc::default(),
        };
        let handler: Arc<Handler> = Arc::new(handler);
        let shared = server.clone();
        tokio::spawn(async move {
            while let Ok((mut sock, _)) = listener.accept().await {
                shared.connections.fetch_add(1, Ordering::SeqCst);
                let (shared, handler) = (shared.clone(), handler.clone());
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 4096];
                    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                        match sock.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                        if buf.len() > 65536 {
                            return;
                        }
                    }
                    let head = String::from_utf8_lossy(&buf).to_string();
                    let path = head.split_whitespace().nth(1).unwrap_or("/").to_owned();
                    let count = {
                        let mut m = shared.hits.lock().unwrap();
                        let c = m.entry(path.clone()).or_insert(0);
                        *c += 1;
                        *c
                    };
                    shared.arrived.notify_waiters();
                    let answer = handler(&path, count);
                    if let Some(d) = answer.delay {
                        tokio::time::sleep(d).await;
                    }
                    let body = answer.body.to_string();
                    let reason = match answer.status {
                        200 => "OK",
                        404 => "Not Found",
                        500 => "Internal Server Error",
                        503 => "Service Unavailable",
                        _ => "Status",
                    };
                    let resp = format!(
                        "HTTP/1.1 {} {reason}\r\ncontent-type: application/json\r\n\
                         content-length: {}\r\nconnection: close\r\n\r\n{body}",
                        answer.status,
                        body.len()
                    );
                    let _ = sock.write_all(resp.as_bytes()).await;
                    let _ = sock.shutdown().await;
                });
            }
        });
        server
    }

    /// `http://127.0.0.1:<port>{path}`.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// The port it listens on (127.0.0.1).
    pub fn port(&self) -> u16 {
        self.base
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .unwrap()
    }

    /// Requests to `path` so far.
    pub fn hits(&self, path: &str) -> usize {
        self.hits.lock().unwrap().get(path).copied().unwrap_or(0)
    }

    /// Requests to any path so far.
    pub fn requests(&self) -> usize {
        self.hits.lock().unwrap().values().sum()
    }

    /// TCP connections accepted so far (also those that never sent a request).
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    /// Waits (up to `within`) until `path` (any path when `None`) had at least `n` requests.
    pub async fn wait_for(&self, path: Option<&str>, n: usize, within: Duration) {
        let seen = || path.map_or_else(|| self.requests(), |p| self.hits(p));
        tokio::time::timeout(within, async {
            loop {
                let arrived = self.arrived.notified();
                if seen() >= n {
                    return;
                }
                arrived.await;
            }
        })
        .await
        .unwrap_or_else(|_| panic!("{path:?}: expected {n} requests, got {}", seen()));
    }
}
