//! A real HTTP server on 127.0.0.1 that answers like a provider, for tests of this crate and
//! black-box tests of the server. Each request is recorded; the answer comes from a handler.

use parking_lot::Mutex;
use serde_json::Value;
use std::collections::HashMap;
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// Largest request the fake server reads.
const MAX_REQUEST: usize = 8 * 1024 * 1024;

#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    pub path: String,
    /// Lower-cased names.
    pub headers: HashMap<String, String>,
    /// The JSON body (`Null` when not JSON).
    pub body: Value,
}

#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// Body sent in pieces of this size with a flush between (exercises stream parsing).
    pub chunk: Option<usize>,
    /// Wait this long before answering (a slow provider).
    pub delay: Option<std::time::Duration>,
}

impl Reply {
    pub fn json(status: u16, body: Value) -> Self {
        Self {
            status,
            headers: vec![("content-type".into(), "application/json".into())],
            body: body.to_string().into_bytes(),
            chunk: None,
            delay: None,
        }
    }
    pub fn raw(status: u16, content_type: &str, body: impl Into<Vec<u8>>) -> Self {
        Self {
            status,
            headers: vec![("content-type".into(), content_type.into())],
            body: body.into(),
            chunk: None,
            delay: None,
        }
    }
    /// Server-sent events: each `(event, data)` becomes `event: ..\ndata: ..\n\n`.
    pub fn sse(events: &[(Option<&str>, String)]) -> Self {
        let mut body = String::new();
        for (ev, data) in events {
            if let Some(e) = ev {
                body.push_str(&format!("event: {e}\n"));
            }
            body.push_str(&format!("data: {data}\n\n"));
        }
        let mut r = Self::raw(200, "text/event-stream", body);
        r.chunk = Some(7);
        r
    }
    /// Answers only after `d`.
    pub fn after(mut self, d: std::time::Duration) -> Self {
        self.delay = Some(d);
        self
    }
    pub fn header(mut self, k: &str, v: &str) -> Self {
        self.headers.push((k.to_owned(), v.to_owned()));
        self
    }
}

type Handler = dyn Fn(&Recorded, usize) -> Reply + Send + Sync;

pub struct FakeProvider {
    pub base_url: String,
    pub requests: Arc<Mutex<Vec<Recorded>>>,
    task: JoinHandle<()>,
}

impl Drop for FakeProvider {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FakeProvider {
    /// Answers the n-th request (0-based) with `handler(request, n)`.
    pub async fn start(
        handler: impl Fn(&Recorded, usize) -> Reply + Send + Sync + 'static,
    ) -> std::io::Result<FakeProvider> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let requests: Arc<Mutex<Vec<Recorded>>> = Arc::default();
        let handler: Arc<Handler> = Arc::new(handler);
        let reqs = requests.clone();
        let task = tokio::spawn(async move {
            while let Ok((mut sock, _)) = listener.accept().await {
                let reqs = reqs.clone();
                let handler = handler.clone();
                tokio::spawn(async move {
                    let Some(rec) = read_request(&mut sock).await else {
                        return;
                    };
                    let n = {
                        let mut r = reqs.lock();
                        r.push(rec.clone());
                        r.len() - 1
                    };
                    let reply = handler(&rec, n);
                    if let Some(d) = reply.delay {
                        tokio::time::sleep(d).await;
                    }
                    let _ = write_reply(&mut sock, &reply).await;
                });
            }
        });
        Ok(FakeProvider {
            base_url: format!("http://{addr}"),
            requests,
            task,
        })
    }

    /// Answers requests with `replies` in order; past the end, the last one again.
    pub async fn script(replies: Vec<Reply>) -> std::io::Result<FakeProvider> {
        Self::start(move |_, n| {
            replies
                .get(n)
                .or_else(|| replies.last())
                .cloned()
                .unwrap_or_else(|| Reply::raw(500, "text/plain", "no reply scripted"))
        })
        .await
    }

    pub fn recorded(&self) -> Vec<Recorded> {
        self.requests.lock().clone()
    }
}

async fn read_request(sock: &mut tokio::net::TcpStream) -> Option<Recorded> {
    let mut buf = Vec::new();
    let mut tmp = [0u8; 8192];
    let header_end = loop {
        let n = sock.read(&mut tmp).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&tmp[..n]);
        if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break p;
        }
        if buf.len() > MAX_REQUEST {
            return None;
        }
    };
    let head = String::from_utf8_lossy(&buf[..header_end]).to_string();
    let mut lines = head.split("\r\n");
    let mut first = lines.next()?.split_whitespace();
    let method = first.next()?.to_owned();
    let path = first.next()?.to_owned();
    let headers: HashMap<String, String> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let len: usize = headers
        .get("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
        .min(MAX_REQUEST);
    let mut body = buf[header_end + 4..].to_vec();
    while body.len() < len {
        let n = sock.read(&mut tmp).await.ok()?;
        if n == 0 {
            break;
        }
        body.extend_from_slice(&tmp[..n]);
    }
    Some(Recorded {
        method,
        path,
        headers,
        body: serde_json::from_slice(&body).unwrap_or(Value::Null),
    })
}

async fn write_reply(sock: &mut tokio::net::TcpStream, r: &Reply) -> std::io::Result<()> {
    let mut head = format!(
        "HTTP/1.1 {} X\r\ncontent-length: {}\r\nconnection: close\r\n",
        r.status,
        r.body.len()
    );
    for (k, v) in &r.headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    sock.write_all(head.as_bytes()).await?;
    match r.chunk {
        Some(size) if size > 0 => {
            for piece in r.body.chunks(size) {
                sock.write_all(piece).await?;
                sock.flush().await?;
            }
        }
        _ => sock.write_all(&r.body).await?,
    }
    sock.flush().await?;
    sock.shutdown().await
}
