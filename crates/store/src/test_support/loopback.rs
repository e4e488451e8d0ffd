//! The one loopback HTTP/1.1 fake for tests: a server on 127.0.0.1 whose handler decides each
//! answer; it records every request (method, path, lowercased headers, body), counts requests
//! per path and TCP connections, and can hold every answer until [`Loopback::release`]. Tools,
//! actions, webhooks and the server under test call it; a test proves what reached it (or that
//! nothing did).
//!
//! Test support: a failure to bind panics (fails the test).

use serde_json::Value;
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, watch};

/// Longest request head read.
const MAX_HEAD: usize = 65536;

/// One request as it reached the fake.
#[derive(Debug, Clone)]
pub struct Request {
    pub method: String,
    pub path: String,
    /// Header names lowercased.
    pub headers: HashMap<String, String>,
    pub body: String,
    /// 1 for the first request to this path, 2 for the second...
    pub n: usize,
}

/// What the fake answers to one request.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// Wait this long first (a slow or silent upstream: the delay is the behaviour under test).
    pub delay: Option<Duration>,
    /// Written as is instead of a built response (e.g. a body without Content-Length).
    pub raw: Option<Vec<u8>>,
    /// Body sent in pieces of this size with a flush between (exercises stream parsing).
    pub chunk: Option<usize>,
}

impl Answer {
    /// `status` with a JSON body.
    pub fn json(status: u16, body: Value) -> Answer {
        Answer::text(status, &body.to_string()).header("content-type", "application/json")
    }

    /// `status` with a body as is and no content type.
    pub fn text(status: u16, body: &str) -> Answer {
        Answer {
            status,
            headers: Vec::new(),
            body: body.as_bytes().to_vec(),
            delay: None,
            raw: None,
            chunk: None,
        }
    }

    /// `status` with these bytes as the body.
    pub fn bytes_body(status: u16, body: impl Into<Vec<u8>>) -> Answer {
        Answer {
            body: body.into(),
            ..Answer::text(status, "")
        }
    }

    /// These bytes as the whole response.
    pub fn raw(bytes: Vec<u8>) -> Answer {
        Answer {
            raw: Some(bytes),
            ..Answer::text(200, "")
        }
    }

    pub fn header(mut self, name: &str, value: &str) -> Answer {
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }

    /// Sends the body in pieces of `size` bytes, flushing between them.
    pub fn chunked(mut self, size: usize) -> Answer {
        self.chunk = Some(size);
        self
    }

    pub fn after(mut self, delay: Duration) -> Answer {
        self.delay = Some(delay);
        self
    }

    /// The response head and body.
    fn bytes(&self) -> (Vec<u8>, Vec<u8>) {
        if let Some(raw) = &self.raw {
            return (Vec::new(), raw.clone());
        }
        let reason = match self.status {
            200 => "OK",
            201 => "Created",
            302 => "Found",
            404 => "Not Found",
            500 => "Internal Server Error",
            503 => "Service Unavailable",
            _ => "Status",
        };
        let mut out = format!(
            "HTTP/1.1 {} {reason}\r\ncontent-length: {}\r\n",
            self.status,
            self.body.len()
        );
        for (k, v) in &self.headers {
            out.push_str(&format!("{k}: {v}\r\n"));
        }
        out.push_str("connection: close\r\n\r\n");
        (out.into_bytes(), self.body.clone())
    }

    async fn write_to(&self, sock: &mut TcpStream) -> std::io::Result<()> {
        let (head, body) = self.bytes();
        sock.write_all(&head).await?;
        match self.chunk {
            Some(size) if size > 0 => {
                for piece in body.chunks(size) {
                    sock.write_all(piece).await?;
                    sock.flush().await?;
                }
            }
            _ => sock.write_all(&body).await?,
        }
        sock.flush().await?;
        sock.shutdown().await
    }
}

type Handler = dyn Fn(&Request) -> Answer + Send + Sync;

#[derive(Clone)]
pub struct Loopback {
    base: String,
    port: u16,
    recorded: Arc<Mutex<Vec<Request>>>,
    hits: Arc<Mutex<HashMap<String, usize>>>,
    connections: Arc<AtomicUsize>,
    arrived: Arc<Notify>,
    open: watch::Sender<bool>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Loopback {
    /// Answers each request with `handler(path, n)`, `n` counting the requests to that path
    /// (1 for the first).
    pub async fn start(
        handler: impl Fn(&str, usize) -> Answer + Send + Sync + 'static,
    ) -> Loopback {
        Loopback::serve(move |r: &Request| handler(&r.path, r.n)).await
    }

    /// Answers each request with `handler(request)`.
    pub async fn serve(handler: impl Fn(&Request) -> Answer + Send + Sync + 'static) -> Loopback {
        let listener = match TcpListener::bind("127.0.0.1:0").await {
            Ok(l) => l,
            Err(e) => panic!("cannot bind a loopback port: {e}"),
        };
        let port = match listener.local_addr() {
            Ok(a) => a.port(),
            Err(e) => panic!("loopback listener has no address: {e}"),
        };
        let (open, _) = watch::channel(true);
        let server = Loopback {
            base: format!("http://127.0.0.1:{port}"),
            port,
            recorded: Arc::default(),
            hits: Arc::default(),
            connections: Arc::default(),
            arrived: Arc::default(),
            open,
        };
        let handler: Arc<Handler> = Arc::new(handler);
        let shared = server.clone();
        tokio::spawn(async move {
            while let Ok((sock, _)) = listener.accept().await {
                shared.connections.fetch_add(1, Ordering::SeqCst);
                let (shared, handler) = (shared.clone(), handler.clone());
                tokio::spawn(async move { shared.answer(sock, &*handler).await });
            }
        });
        server
    }

    /// Every request waits (is recorded, then held) until [`Loopback::release`]: a test can
    /// keep the caller mid-request for as long as it needs.
    pub async fn held(handler: impl Fn(&Request) -> Answer + Send + Sync + 'static) -> Loopback {
        let server = Loopback::serve(handler).await;
        server.open.send_replace(false);
        server
    }

    async fn answer(&self, mut sock: TcpStream, handler: &Handler) {
        let Some(request) = read_request(&mut sock).await else {
            return;
        };
        let n = {
            let mut m = lock(&self.hits);
            let c = m.entry(request.path.clone()).or_insert(0);
            *c += 1;
            *c
        };
        let request = Request { n, ..request };
        lock(&self.recorded).push(request.clone());
        self.arrived.notify_waiters();
        let mut open = self.open.subscribe();
        let _ = open.wait_for(|open| *open).await;
        let answer = handler(&request);
        if let Some(d) = answer.delay {
            tokio::time::sleep(d).await;
        }
        let _ = answer.write_to(&mut sock).await;
    }

    /// Answers every held and future request.
    pub fn release(&self) {
        self.open.send_replace(true);
    }

    /// `http://127.0.0.1:<port>{path}`.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// The port it listens on (127.0.0.1).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Requests to `path` so far.
    pub fn hits(&self, path: &str) -> usize {
        lock(&self.hits).get(path).copied().unwrap_or(0)
    }

    /// Requests to any path so far.
    pub fn requests(&self) -> usize {
        lock(&self.recorded).len()
    }

    /// Every request so far, in arrival order.
    pub fn recorded(&self) -> Vec<Request> {
        lock(&self.recorded).clone()
    }

    /// Paths requested so far, in arrival order.
    pub fn paths(&self) -> Vec<String> {
        lock(&self.recorded)
            .iter()
            .map(|r| r.path.clone())
            .collect()
    }

    /// TCP connections accepted so far (also those that never sent a request).
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    /// Waits (up to `within`) until `path` (any path when `None`) had at least `n` requests;
    /// panics otherwise.
    pub async fn wait_for(&self, path: Option<&str>, n: usize, within: Duration) {
        let seen = || path.map_or_else(|| self.requests(), |p| self.hits(p));
        let waited = tokio::time::timeout(within, async {
            loop {
                let arrived = self.arrived.notified();
                if seen() >= n {
                    return;
                }
                arrived.await;
            }
        })
        .await;
        if waited.is_err() {
            panic!("{path:?}: expected {n} requests, got {}", seen());
        }
    }
}

/// Reads one request (head, then a body of Content-Length bytes); `None` if the peer went away
/// or the head is too large.
async fn read_request(sock: &mut TcpStream) -> Option<Request> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        if buf.len() > MAX_HEAD {
            return None;
        }
        match sock.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let mut first = lines.next().unwrap_or("").split(' ');
    let method = first.next().unwrap_or("").to_owned();
    let path = first.next().unwrap_or("/").to_owned();
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
        match sock.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) => body.extend_from_slice(&chunk[..n]),
        }
    }
    Some(Request {
        method,
        path,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
        n: 0,
    })
}
