//! Breaker keys: what fails together shares a key, nothing else does.
//!
//! - provider calls: `llm:<provider>:<base url>:<credential fingerprint>` — a user's own key
//!   that is rate limited or revoked only pauses calls made with that key;
//! - network tools: `net:<host>:<port>` of the remote endpoint (`http_request`'s `url`), or
//!   `webhook:<channel>` for `send_notification` (the URL is the server's configuration);
//! - every other tool has no breaker: its failures are the caller's.

use gathering_domain::tools::ToolError;
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::Outcome;

/// A short, non-reversible fingerprint of a credential: 12 hex chars of its SHA-256.
/// `None` (no key) is `-`.
pub fn credential_fingerprint(secret: Option<&str>) -> String {
    match secret {
        None => "-".to_owned(),
        Some(s) => {
            let d = Sha256::digest(s.as_bytes());
            hex::encode(&d[..6])
        }
    }
}

/// The breaker of a provider endpoint used with one credential.
pub fn provider(provider: &str, base_url: &str, credential: Option<&str>) -> String {
    format!(
        "llm:{provider}:{}:{}",
        base_url.trim_end_matches('/'),
        credential_fingerprint(credential)
    )
}

/// The remote endpoint of an absolute URL: `net:<host>:<port>`.
pub fn endpoint(url: &str) -> Option<String> {
    let u = url::Url::parse(url).ok()?;
    let host = u.host_str()?;
    Some(format!(
        "net:{}:{}",
        host.to_ascii_lowercase(),
        u.port_or_known_default().unwrap_or(0)
    ))
}

/// The breaker of a tool call, `None` for tools that reach no remote endpoint.
pub fn tool(name: &str, params: &Value) -> Option<String> {
    match name {
        "http_request" => params.get("url").and_then(Value::as_str).and_then(endpoint),
        "send_notification" => {
            let channel = params
                .get("channel")
                .and_then(Value::as_str)
                .unwrap_or("default");
            Some(format!("webhook:{channel}"))
        }
        _ => None,
    }
}

/// Whether the caller chose the tool's timeout budget itself (`timeout_ms` in its params).
pub fn caller_set_timeout(params: &Value) -> bool {
    params.get("timeout_ms").is_some_and(|t| !t.is_null())
}

/// How a tool call's result counts for the tool's breaker. A timeout counts only when it is
/// the tool's own default (`caller_timeout` false: see [`caller_set_timeout`]); 429 is the
/// caller's rate, not the endpoint's health; other refusals (4xx, invalid parameters, forbidden
/// paths) mean the endpoint answered or was never reached.
pub fn tool_outcome(caller_timeout: bool, result: Result<(), &ToolError>) -> Outcome {
    match result {
        Ok(()) => Outcome::Success,
        Err(ToolError::Timeout(_)) if caller_timeout => Outcome::Neutral,
        Err(ToolError::Timeout(_)) => Outcome::Failure,
        Err(ToolError::Failed {
            status: Some(429), ..
        }) => Outcome::Neutral,
        Err(ToolError::Failed {
            status: Some(s), ..
        }) if *s >= 500 => Outcome::Failure,
        Err(ToolError::Failed {
            status: Some(_), ..
        }) => Outcome::Success,
        Err(ToolError::Failed {
            status: None,
            retryable: true,
            ..
        }) => Outcome::Failure,
        Err(_) => Outcome::Neutral,
    }
}

/// How a provider's HTTP status counts for the (provider, URL, credential) breaker: 429, 408
/// and 5xx are failures; any other 4xx was caused by the request or the key, and shows the
/// endpoint is up.
pub fn provider_status_outcome(status: u16) -> Outcome {
    match status {
        200..=399 => Outcome::Success,
        408 | 429 => Outcome::Failure,
        s if s >= 500 => Outcome::Failure,
        _ => Outcome::Success,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use serde_json::json;

    #[test]
    fn provider_keys_differ_per_credential_and_never_contain_it() {
        let a = provider(
            "openai",
            "https://api.openai.com/v1/",
            Some("sk-user-a-secret"),
        );
        let b = provider(
            "openai",
            "https://api.openai.com/v1",
            Some("sk-user-b-secret"),
        );
        assert_ne!(a, b);
        assert!(!a.contains("secret"));
        assert!(a.starts_with("llm:openai:https://api.openai.com/v1:"));
        assert_eq!(
            a,
            provider(
                "openai",
                "https://api.openai.com/v1",
                Some("sk-user-a-secret")
            )
        );
        assert!(provider("ollama", "http://h", None).ends_with(":-"));
    }

    #[test]
    fn network_tools_are_keyed_by_endpoint_and_builtins_not_at_all() {
        assert_eq!(
            tool("http_request", &json!({"url": "https://Example.com/a?b"})).as_deref(),
            Some("net:example.com:443")
        );
        assert_eq!(
            tool("http_request", &json!({"url": "http://10.0.0.1:81/"})).as_deref(),
            Some("net:10.0.0.1:81")
        );
        assert_eq!(tool("http_request", &json!({"url": "nope"})), None);
        assert_eq!(
            tool("send_notification", &json!({"channel": "ops"})).as_deref(),
            Some("webhook:ops")
        );
        for t in [
            "calculator",
            "json_query",
            "text_template",
            "read_file",
            "x",
        ] {
            assert_eq!(tool(t, &json!({})), None, "{t}");
        }
    }

    #[test]
    fn caller_caused_tool_failures_do_not_count() {
        assert!(caller_set_timeout(&json!({"timeout_ms": 1})));
        assert!(!caller_set_timeout(&json!({"timeout_ms": null})));
        let own_budget = true;
        let none = false;
        assert_eq!(
            tool_outcome(own_budget, Err(&ToolError::Timeout(1))),
            Outcome::Neutral
        );
        assert_eq!(
            tool_outcome(none, Err(&ToolError::Timeout(30_000))),
            Outcome::Failure
        );
        let status = |s| ToolError::Failed {
            message: String::new(),
            retryable: s == 429 || s >= 500,
            status: Some(s),
        };
        assert_eq!(tool_outcome(none, Err(&status(503))), Outcome::Failure);
        assert_eq!(tool_outcome(none, Err(&status(429))), Outcome::Neutral);
        assert_eq!(tool_outcome(none, Err(&status(404))), Outcome::Success);
        assert_eq!(
            tool_outcome(none, Err(&ToolError::InvalidParams(vec![]))),
            Outcome::Neutral
        );
        assert_eq!(tool_outcome(none, Ok(())), Outcome::Success);
    }

    #[test]
    fn provider_statuses() {
        for s in [400, 401, 403, 404, 422] {
            assert_eq!(provider_status_outcome(s), Outcome::Success, "{s}");
        }
        for s in [408, 429, 500, 502, 503] {
            assert_eq!(provider_status_outcome(s), Outcome::Failure, "{s}");
        }
    }
}
