//! `http_request`: an outbound HTTP call through the guarded client.

use crate::net::{HttpClient, HttpError, HttpRequest, HttpResponse};
use crate::registry::{AsyncTool, ToolSpec, parse_params};
use async_trait::async_trait;
use bytes::Bytes;
use gathering_domain::FieldProblem;
use gathering_domain::tools::{ToolContext, ToolError};
use reqwest::Method;
use reqwest::header::{self, HeaderMap, HeaderName, HeaderValue};
use serde::Deserialize;
use serde_json::{Map, Value, json};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use url::Url;

pub const NAME: &str = "http_request";
/// Largest `timeout_ms` a caller may ask for.
pub const MAX_TIMEOUT_MS: u64 = 300_000;

const METHODS: [&str; 7] = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"];

pub fn spec() -> ToolSpec {
    let methods: Vec<String> = METHODS
        .iter()
        .flat_map(|m| [(*m).to_owned(), m.to_ascii_lowercase()])
        .collect();
    ToolSpec::new(
        NAME,
        "Sends an HTTP request and returns {status, headers, body}; body is JSON when the \
         response is JSON, text otherwise. Connection errors, timeouts, 429 and 5xx are \
         retryable failures; other 4xx fail unless listed in accept_status. Loopback, private \
         and link-local targets are refused unless allowed by configuration.",
        json!({
            "type": "object",
            "properties": {
                "method": {"type": "string", "enum": methods},
                "url": {"type": "string", "minLength": 1, "maxLength": 8192},
                "headers": {
                    "type": "object",
                    "additionalProperties": {"type": "string", "maxLength": 8192},
                    "maxProperties": 100
                },
                "body": {"description": "a string is sent as is; any other JSON value as JSON"},
                "timeout_ms": {"type": "integer", "minimum": 1, "maximum": MAX_TIMEOUT_MS},
                "accept_status": {
                    "type": "array",
                    "items": {"type": "integer", "minimum": 100, "maximum": 599},
                    "maxItems": 100
                }
            },
            "required": ["method", "url"],
            "additionalProperties": false
        }),
        // The outer bound; each call is limited by its own `timeout_ms` first.
        Duration::from_millis(MAX_TIMEOUT_MS + 5_000),
    )
}

#[derive(Deserialize)]
struct Params {
    method: String,
    url: String,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    #[serde(default)]
    body: Option<Value>,
    timeout_ms: Option<u64>,
    #[serde(default)]
    accept_status: Vec<u16>,
}

pub struct HttpRequestTool {
    client: Arc<HttpClient>,
    default_timeout: Duration,
}

impl HttpRequestTool {
    pub fn new(client: Arc<HttpClient>, default_timeout: Duration) -> Self {
        Self {
            client,
            default_timeout,
        }
    }
}

fn invalid(field: &str, problem: impl Into<String>) -> ToolError {
    ToolError::InvalidParams(vec![FieldProblem::new(field, problem)])
}

/// Maps a guarded-client failure onto the tool error vocabulary.
pub fn tool_error(e: HttpError, timeout: Duration) -> ToolError {
    match e {
        HttpError::Forbidden(m) => ToolError::Forbidden(m),
        HttpError::Invalid(m) => invalid("/url", m),
        HttpError::Timeout => ToolError::Timeout(u64::try_from(timeout.as_millis()).unwrap_or(0)),
        HttpError::Transport(m) => ToolError::Failed {
            message: m,
            retryable: true,
            status: None,
        },
        e @ (HttpError::TooLarge { .. } | HttpError::TooManyRedirects(_)) => {
            ToolError::failed(e.to_string())
        }
    }
}

/// `{status, headers, body}`: body parsed as JSON when the response says it is JSON.
pub fn response_json(resp: &HttpResponse) -> Value {
    let mut headers = Map::new();
    for name in resp.headers.keys() {
        let joined = resp
            .headers
            .get_all(name)
            .iter()
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .collect::<Vec<_>>()
            .join(", ");
        headers.insert(name.as_str().to_owned(), Value::String(joined));
    }
    let is_json = resp
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|ct| {
            let mime = ct
                .split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase();
            mime == "application/json" || mime.ends_with("+json")
        })
        .unwrap_or(false);
    let body = if is_json {
        serde_json::from_slice(&resp.body)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&resp.body).into_owned()))
    } else {
        Value::String(String::from_utf8_lossy(&resp.body).into_owned())
    };
    json!({"status": resp.status.as_u16(), "headers": headers, "body": body})
}

/// A status the caller did not accept: 429 and 5xx are retryable, other 4xx are not.
pub fn status_error(resp: &HttpResponse) -> ToolError {
    let status = resp.status;
    let snippet: String = String::from_utf8_lossy(&resp.body)
        .chars()
        .take(200)
        .collect();
    let host = resp.url.host_str().unwrap_or("");
    ToolError::Failed {
        message: format!("HTTP {status} from {host}: {snippet}"),
        retryable: status == reqwest::StatusCode::TOO_MANY_REQUESTS || status.is_server_error(),
        status: Some(status.as_u16()),
    }
}

/// The `Idempotency-Key` request header.
pub const IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");

/// Sends the invocation's idempotency key (pipeline nodes pass `run_id:node_id`, stable
/// across retries and crash-resumes) as `Idempotency-Key`, so a server that honours it can
/// drop a repeated call. A header the caller set explicitly (any case) wins; a key that is
/// not a valid header value is not sent.
fn add_idempotency_key(headers: &mut HeaderMap, ctx: &ToolContext) {
    if headers.contains_key(&IDEMPOTENCY_KEY) {
        return;
    }
    let Some(key) = ctx.idempotency_key.as_deref() else {
        return;
    };
    match HeaderValue::from_str(key) {
        Ok(value) => {
            headers.insert(IDEMPOTENCY_KEY, value);
        }
        Err(_) => tracing::debug!("idempotency key is not a valid header value; not sent"),
    }
}

#[async_trait]
impl AsyncTool for HttpRequestTool {
    async fn call(&self, ctx: &ToolContext, params: Value) -> Result<Value, ToolError> {
        let p: Params = parse_params(params)?;
        let method = Method::from_bytes(p.method.to_ascii_uppercase().as_bytes())
            .map_err(|_| invalid("/method", "unknown method"))?;
        let url = Url::parse(&p.url).map_err(|e| invalid("/url", format!("not a URL: {e}")))?;
        let mut headers = HeaderMap::new();
        let mut problems = Vec::new();
        for (k, v) in &p.headers {
            let field = format!("/headers/{}", k.replace('~', "~0").replace('/', "~1"));
            match (
                HeaderName::from_bytes(k.as_bytes()),
                HeaderValue::from_str(v),
            ) {
                (Ok(name), Ok(value)) => {
                    headers.append(name, value);
                }
                (Err(_), _) => problems.push(FieldProblem::new(field, "invalid header name")),
                (_, Err(_)) => problems.push(FieldProblem::new(field, "invalid header value")),
            }
        }
        if !problems.is_empty() {
            return Err(ToolError::InvalidParams(problems));
        }
        add_idempotency_key(&mut headers, ctx);
        let body = match p.body {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(Bytes::from(s)),
            Some(other) => {
                if !headers.contains_key(header::CONTENT_TYPE) {
                    headers.insert(
                        header::CONTENT_TYPE,
                        HeaderValue::from_static("application/json"),
                    );
                }
                Some(Bytes::from(other.to_string()))
            }
        };
        let timeout = p
            .timeout_ms
            .map(Duration::from_millis)
            .unwrap_or(self.default_timeout);
        let resp = self
            .client
            .send(HttpRequest {
                method,
                url,
                headers,
                body,
                timeout,
            })
            .await
            .map_err(|e| tool_error(e, timeout))?;
        let status = resp.status;
        let accepted = p.accept_status.contains(&status.as_u16());
        if !accepted && (status.is_client_error() || status.is_server_error()) {
            return Err(status_error(&resp));
        }
        Ok(response_json(&resp))
    }
}
