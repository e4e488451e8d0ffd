//! A real HTTP server on 127.0.0.1 that answers like a provider, for tests of this crate and
//! black-box tests of the server. Each request is recorded; the answer comes from a handler.

use gathering_store::test_support::loopback::{Answer, Loopback, Request};
use parking_lot::Mutex;
use serde_json::Value;
use std::collections::HashMap;
use std::sync::Arc;

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

impl Reply {
    fn answer(&self) -> Answer {
        let mut a = Answer::bytes_body(self.status, self.body.clone());
        for (k, v) in &self.headers {
            a = a.header(k, v);
        }
        if let Some(size) = self.chunk {
            a = a.chunked(size);
        }
        if let Some(d) = self.delay {
            a = a.after(d);
        }
        a
    }
}

/// Built on the shared loopback fake ([`gathering_store::test_support::loopback`]).
pub struct FakeProvider {
    pub base_url: String,
    pub requests: Arc<Mutex<Vec<Recorded>>>,
}

impl FakeProvider {
    /// Answers the n-th request (0-based) with `handler(request, n)`.
    pub async fn start(
        handler: impl Fn(&Recorded, usize) -> Reply + Send + Sync + 'static,
    ) -> std::io::Result<FakeProvider> {
        let requests: Arc<Mutex<Vec<Recorded>>> = Arc::default();
        let reqs = requests.clone();
        let server = Loopback::serve(move |r: &Request| {
            let rec = Recorded {
                method: r.method.clone(),
                path: r.path.clone(),
                headers: r.headers.clone(),
                body: serde_json::from_str(&r.body).unwrap_or(Value::Null),
            };
            let n = {
                let mut all = reqs.lock();
                all.push(rec.clone());
                all.len() - 1
            };
            handler(&rec, n).answer()
        })
        .await;
        Ok(FakeProvider {
            base_url: server.url(""),
            requests,
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
