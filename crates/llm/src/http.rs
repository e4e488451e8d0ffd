//! Outbound HTTP to providers: timeouts, bounded retries on 429/5xx honouring `Retry-After`
//! (only for interactive calls: a transport built for a retrying caller makes one attempt), and
//! the circuit breaker of the (provider, base URL, credential) the call goes to.

use crate::error::LlmError;
use crate::settings::refused_message;
use gathering_resilience::{Backoff, Breakers, Outcome, Retry, keys};
use gathering_tools::net::{GuardedResolver, Refused};
use reqwest::header::{HeaderMap, RETRY_AFTER};
use serde_json::Value;
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug, Clone)]
pub struct RetryPolicy {
    /// Attempts, the first included (1 when the caller retries, see [`crate::Retries`]).
    pub max_attempts: u32,
    /// Wait before the second attempt when the provider gives no `Retry-After`; doubles after.
    pub base_backoff: Duration,
    /// A longer `Retry-After` is not waited for.
    pub max_wait: Duration,
    /// Whole-request bound of a non-streaming call.
    pub request_timeout: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 3,
            base_backoff: Duration::from_millis(500),
            max_wait: Duration::from_secs(30),
            request_timeout: Duration::from_secs(120),
        }
    }
}

impl RetryPolicy {
    /// The shared backoff policy with this transport's bounds.
    pub fn backoff(&self) -> Backoff {
        Backoff {
            initial: self.base_backoff,
            multiplier: 2.0,
            max: self.max_wait,
            jitter: true,
            max_hint: self.max_wait,
        }
    }
}

/// One provider endpoint, used with one credential, as seen by the HTTP layer.
#[derive(Clone)]
pub struct Transport {
    pub client: reqwest::Client,
    pub policy: RetryPolicy,
    /// The process-wide breaker registry.
    pub breakers: Arc<Breakers>,
    /// [`keys::provider`]: provider, base URL and credential fingerprint.
    pub breaker_key: String,
    /// For messages: `openai`, `anthropic`, ...
    pub provider: String,
}

impl std::fmt::Debug for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transport")
            .field("provider", &self.provider)
            .field("breaker_key", &self.breaker_key)
            .finish_non_exhaustive()
    }
}

/// The breaker key of a provider endpoint used with `api_key`.
pub fn breaker_key(provider: &str, base_url: &str, api_key: Option<&str>) -> String {
    keys::provider(provider, base_url, api_key)
}

/// Builds the shared client: rustls, connect and read timeouts.
pub fn build_client(
    connect_timeout: Duration,
    read_timeout: Duration,
) -> Result<reqwest::Client, LlmError> {
    reqwest::Client::builder()
        .connect_timeout(connect_timeout)
        .read_timeout(read_timeout)
        .user_agent(concat!("gathering/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| LlmError::Key(format!("cannot build the HTTP client: {e}")))
}

/// The client for users' own endpoints: every host name is resolved by the tools' guarded
/// resolver (a name with any loopback, private, link-local, CGNAT, ... address is refused and
/// the connection goes to exactly the checked addresses); no proxy (it would connect somewhere
/// unchecked) and no redirects (a hop to an IP literal would bypass the resolver). IP-literal
/// hosts are checked before the call ([`crate::settings::forbidden_literal`]).
pub fn build_guarded_client(
    connect_timeout: Duration,
    read_timeout: Duration,
) -> Result<reqwest::Client, LlmError> {
    reqwest::Client::builder()
        .connect_timeout(connect_timeout)
        .read_timeout(read_timeout)
        .user_agent(concat!("gathering/", env!("CARGO_PKG_VERSION")))
        .dns_resolver(Arc::new(GuardedResolver))
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(|e| LlmError::Key(format!("cannot build the HTTP client: {e}")))
}

/// The guarded resolver's refusal, if that is why the request failed.
fn refusal(e: &reqwest::Error) -> Option<&Refused> {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(s) = source {
        if let Some(r) = s.downcast_ref::<Refused>() {
            return Some(r);
        }
        source = s.source();
    }
    None
}

/// `Retry-After` in seconds (HTTP dates are treated as absent).
pub fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let v = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    v.parse::<f64>()
        .ok()
        .filter(|s| s.is_finite() && *s >= 0.0)
        .map(Duration::from_secs_f64)
}

/// The provider's own error message (`{"error": {"message": ...}}` in both formats), bounded.
pub fn error_message(body: &[u8]) -> String {
    let msg = serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| {
            v.pointer("/error/message")
                .and_then(Value::as_str)
                .or_else(|| v.get("error").and_then(Value::as_str))
                .or_else(|| v.get("message").and_then(Value::as_str))
                .map(str::to_owned)
        })
        .unwrap_or_else(|| String::from_utf8_lossy(body).trim().to_owned());
    let mut msg: String = msg.chars().take(500).collect();
    if msg.is_empty() {
        msg = "no details".to_owned();
    }
    msg
}

fn is_retryable_status(status: u16) -> bool {
    status == 429 || status == 408 || status >= 500
}

impl Transport {
    /// POSTs `body` as JSON; returns the successful response (status 2xx), body unread.
    /// `stream`: no whole-request timeout (the read timeout still bounds silences).
    pub async fn post_json(
        &self,
        url: &str,
        headers: &[(&'static str, String)],
        body: &Value,
        stream: bool,
    ) -> Result<reqwest::Response, LlmError> {
        let attempts = self.policy.max_attempts.max(1);
        let backoff = self.policy.backoff();
        let mut attempt = 0;
        loop {
            attempt += 1;
            // Dropped unrecorded (the caller's own deadline cancelled the call), the permit
            // counts as neutral: the caller's budget is not the provider's failure.
            let permit = match self.breakers.acquire(&self.breaker_key) {
                Ok(p) => p,
                Err(open) => {
                    return Err(LlmError::CircuitOpen {
                        provider: self.provider.clone(),
                        retry_after: open.retry_after,
                    });
                }
            };
            let mut req = self.client.post(url).json(body);
            if !stream {
                req = req.timeout(self.policy.request_timeout);
            }
            for (k, v) in headers {
                req = req.header(*k, v);
            }
            let (err, wait) = match req.send().await {
                Err(e) => {
                    if let Some(r) = refusal(&e) {
                        // Nothing was sent: not the provider's failure, not worth retrying.
                        permit.record(Outcome::Neutral);
                        return Err(LlmError::UrlRefused(refused_message(format_args!(
                            "`{}` resolves to {}",
                            r.host, r.addr
                        ))));
                    }
                    permit.record(Outcome::Failure);
                    let err = if e.is_timeout() {
                        LlmError::Timeout {
                            provider: self.provider.clone(),
                        }
                    } else {
                        LlmError::Connect {
                            provider: self.provider.clone(),
                            message: e.to_string(),
                        }
                    };
                    (err, None)
                }
                Ok(resp) if resp.status().is_success() => {
                    permit.record(Outcome::Success);
                    return Ok(resp);
                }
                Ok(resp) => {
                    let status = resp.status().as_u16();
                    // 4xx caused by the request or the key: the provider is up (not a failure);
                    // 429 counts against this credential's breaker only; 408 and 5xx count.
                    permit.record(keys::provider_status_outcome(status));
                    let after = retry_after(resp.headers());
                    let bytes = resp.bytes().await.unwrap_or_default();
                    let message = error_message(&bytes);
                    if !is_retryable_status(status) {
                        return Err(match status {
                            401 | 403 => LlmError::Unauthorized {
                                provider: self.provider.clone(),
                                message,
                            },
                            _ => LlmError::Status {
                                provider: self.provider.clone(),
                                status,
                                message,
                            },
                        });
                    }
                    let err = if status == 429 {
                        LlmError::RateLimited {
                            provider: self.provider.clone(),
                            retry_after: after,
                        }
                    } else {
                        LlmError::Status {
                            provider: self.provider.clone(),
                            status,
                            message,
                        }
                    };
                    (err, after)
                }
            };
            let Retry::After(wait) = backoff.decide(attempt, attempts, true, wait) else {
                return Err(err);
            };
            tracing::warn!(provider = %self.provider, attempt, wait_ms = wait.as_millis() as u64,
                error = %err, "provider call failed; retrying");
            tokio::time::sleep(wait).await;
        }
    }

    /// Reads and parses a JSON body; a malformed one is a clear error.
    pub async fn json_body<T: serde::de::DeserializeOwned>(
        &self,
        resp: reqwest::Response,
    ) -> Result<T, LlmError> {
        let bytes = resp.bytes().await.map_err(|e| {
            if e.is_timeout() {
                LlmError::Timeout {
                    provider: self.provider.clone(),
                }
            } else {
                LlmError::Connect {
                    provider: self.provider.clone(),
                    message: format!("reading the response: {e}"),
                }
            }
        })?;
        serde_json::from_slice(&bytes).map_err(|e| {
            LlmError::malformed(self.provider.clone(), format!("invalid JSON body: {e}"))
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_reads_seconds() {
        let mut h = HeaderMap::new();
        h.insert(RETRY_AFTER, "3".parse().unwrap());
        assert_eq!(retry_after(&h), Some(Duration::from_secs(3)));
        h.insert(
            RETRY_AFTER,
            "Wed, 21 Oct 2015 07:28:00 GMT".parse().unwrap(),
        );
        assert_eq!(retry_after(&h), None);
    }

    #[test]
    fn error_message_prefers_the_providers_text() {
        assert_eq!(
            error_message(br#"{"error":{"message":"bad key","type":"x"}}"#),
            "bad key"
        );
        assert_eq!(
            error_message(
                br#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#
            ),
            "Overloaded"
        );
        assert_eq!(error_message(b"plain"), "plain");
        assert_eq!(error_message(b""), "no details");
    }
}
