//! Actions: the shape of each `action_config`, and how each action really runs.
//!
//! - `call_api` → the `http_request` tool (its SSRF guard and timeouts), behind the shared
//!   circuit breaker of the remote endpoint, retried on retryable failures with bounded
//!   attempts and the shared backoff policy (`gathering_resilience::Backoff`).
//! - `send_notification` → the `send_notification` tool (stored, event, webhook).
//! - `run_task` → the [`AgentRunner`] (one provider attempt per call), retried here on
//!   retryable provider failures with the same policy; without a runner it fails clearly.
//!
//! The scheduler is the one layer that retries a scheduled action: the tool never retries and
//! the agent runner's transport makes a single attempt.
//! - `execute_pipeline` → the [`PipelineLauncher`]; the execution records the run id.

use gathering_domain::FieldProblem;
use gathering_domain::agents::{AgentRequest, AgentRunner};
use gathering_domain::scheduler::{ActionType, Execution, PipelineLauncher, Schedule};
use gathering_domain::tools::{ToolContext, ToolInvoker};
use gathering_resilience::{Backoff, Breakers, Retry, keys};
use gathering_tools::net::{AllowList, ip_is_forbidden};
use serde_json::{Map, Value, json};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;
use uuid::Uuid;

pub const HTTP_METHODS: [&str; 7] = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"];
/// Upper bound of `call_api.max_attempts`.
pub const MAX_ATTEMPTS_LIMIT: u64 = 10;
const HTTP_MAX_TIMEOUT_MS: u64 = 300_000;
/// Largest `action_config`, serialized (an `execute_pipeline` input or a `call_api` body
/// included; a pipeline run's input is bounded to the same 256 KiB).
pub const MAX_ACTION_CONFIG_BYTES: usize = 256 * 1024;
/// Most `call_api` headers, and the longest header name and value.
pub const MAX_HEADERS: usize = 64;
const MAX_HEADER_NAME_CHARS: usize = 256;
const MAX_HEADER_VALUE_CHARS: usize = 8192;

fn check_keys(obj: &Map<String, Value>, allowed: &[&str], out: &mut Vec<FieldProblem>) {
    for k in obj.keys() {
        if !allowed.contains(&k.as_str()) {
            out.push(FieldProblem::new(
                format!("/action_config/{k}"),
                format!("unknown field; allowed: {}", allowed.join(", ")),
            ));
        }
    }
}

fn required_str(
    obj: &Map<String, Value>,
    key: &str,
    max: usize,
    out: &mut Vec<FieldProblem>,
) -> Option<String> {
    match obj.get(key) {
        Some(Value::String(s)) if !s.trim().is_empty() && s.chars().count() <= max => {
            Some(s.clone())
        }
        Some(Value::String(_)) => {
            out.push(FieldProblem::new(
                format!("/action_config/{key}"),
                format!("must be a non-empty string of at most {max} characters"),
            ));
            None
        }
        Some(_) => {
            out.push(FieldProblem::new(
                format!("/action_config/{key}"),
                "must be a string",
            ));
            None
        }
        None => {
            out.push(FieldProblem::new(
                format!("/action_config/{key}"),
                "is required",
            ));
            None
        }
    }
}

fn uuid_field(
    obj: &Map<String, Value>,
    key: &str,
    required: bool,
    out: &mut Vec<FieldProblem>,
) -> Option<Uuid> {
    match obj.get(key) {
        None | Some(Value::Null) if !required => None,
        Some(Value::String(s)) => match Uuid::parse_str(s) {
            Ok(u) => Some(u),
            Err(_) => {
                out.push(FieldProblem::new(
                    format!("/action_config/{key}"),
                    "must be a UUID",
                ));
                None
            }
        },
        None => {
            out.push(FieldProblem::new(
                format!("/action_config/{key}"),
                "is required",
            ));
            None
        }
        Some(_) => {
            out.push(FieldProblem::new(
                format!("/action_config/{key}"),
                "must be a UUID string",
            ));
            None
        }
    }
}

/// Checks `action_config` against the action type's shape; empty when valid.
pub fn validate(action: ActionType, config: &Value) -> Vec<FieldProblem> {
    let mut out = Vec::new();
    let Some(obj) = config.as_object() else {
        out.push(FieldProblem::new("/action_config", "must be an object"));
        return out;
    };
    let size = serde_json::to_vec(config).map_or(usize::MAX, |v| v.len());
    if size > MAX_ACTION_CONFIG_BYTES {
        out.push(FieldProblem::new(
            "/action_config",
            format!("must be at most {MAX_ACTION_CONFIG_BYTES} bytes as JSON"),
        ));
        return out;
    }
    match action {
        ActionType::CallApi => {
            check_keys(
                obj,
                &[
                    "url",
                    "method",
                    "headers",
                    "body",
                    "timeout_ms",
                    "accept_status",
                    "max_attempts",
                ],
                &mut out,
            );
            if let Some(url) = required_str(obj, "url", 8192, &mut out) {
                let lower = url.to_ascii_lowercase();
                if !(lower.starts_with("http://") || lower.starts_with("https://")) {
                    out.push(FieldProblem::new(
                        "/action_config/url",
                        "must be an http:// or https:// URL",
                    ));
                }
            }
            match obj.get("method") {
                None => {}
                Some(Value::String(m))
                    if HTTP_METHODS.contains(&m.to_ascii_uppercase().as_str()) => {}
                Some(_) => out.push(FieldProblem::new(
                    "/action_config/method",
                    format!("must be one of {}", HTTP_METHODS.join(", ")),
                )),
            }
            match obj.get("headers") {
                None => {}
                Some(Value::Object(h)) if h.values().all(Value::is_string) => {
                    let too_long = h.iter().any(|(k, v)| {
                        k.chars().count() > MAX_HEADER_NAME_CHARS
                            || v.as_str().map_or(0, |v| v.chars().count()) > MAX_HEADER_VALUE_CHARS
                    });
                    if h.len() > MAX_HEADERS || too_long {
                        out.push(FieldProblem::new(
                            "/action_config/headers",
                            format!(
                                "at most {MAX_HEADERS} headers, names of at most \
                                 {MAX_HEADER_NAME_CHARS} and values of at most \
                                 {MAX_HEADER_VALUE_CHARS} characters"
                            ),
                        ));
                    }
                }
                Some(_) => out.push(FieldProblem::new(
                    "/action_config/headers",
                    "must be an object of string values",
                )),
            }
            match obj.get("timeout_ms") {
                None => {}
                Some(v)
                    if v.as_u64()
                        .is_some_and(|t| (1..=HTTP_MAX_TIMEOUT_MS).contains(&t)) => {}
                Some(_) => out.push(FieldProblem::new(
                    "/action_config/timeout_ms",
                    format!("must be an integer from 1 to {HTTP_MAX_TIMEOUT_MS}"),
                )),
            }
            match obj.get("accept_status") {
                None => {}
                Some(Value::Array(a))
                    if a.iter()
                        .all(|v| v.as_u64().is_some_and(|s| (100..=599).contains(&s))) => {}
                Some(_) => out.push(FieldProblem::new(
                    "/action_config/accept_status",
                    "must be an array of HTTP status codes",
                )),
            }
            match obj.get("max_attempts") {
                None => {}
                Some(v)
                    if v.as_u64()
                        .is_some_and(|n| (1..=MAX_ATTEMPTS_LIMIT).contains(&n)) => {}
                Some(_) => out.push(FieldProblem::new(
                    "/action_config/max_attempts",
                    format!("must be an integer from 1 to {MAX_ATTEMPTS_LIMIT}"),
                )),
            }
        }
        ActionType::SendNotification => {
            check_keys(obj, &["title", "message", "channel"], &mut out);
            required_str(obj, "title", 200, &mut out);
            required_str(obj, "message", 10_000, &mut out);
            if obj.contains_key("channel") {
                required_str(obj, "channel", 64, &mut out);
            }
        }
        ActionType::RunTask => {
            check_keys(obj, &["agent_id", "prompt", "session_id"], &mut out);
            uuid_field(obj, "agent_id", true, &mut out);
            required_str(obj, "prompt", 100_000, &mut out);
            uuid_field(obj, "session_id", false, &mut out);
        }
        ActionType::ExecutePipeline => {
            check_keys(obj, &["pipeline_id", "input"], &mut out);
            uuid_field(obj, "pipeline_id", true, &mut out);
        }
    }
    out
}

/// At store time: a `call_api` URL whose host is a literal loopback, private, link-local or
/// otherwise non-public address (the SSRF guard's own classification) is refused
/// unless the host is on the allow-list (`GATHERING__TOOLS__HTTP_ALLOWED_HOSTS`). Names are
/// not resolved here: the guard checks every resolved address again when the action runs.
pub fn check_call_api_target(config: &Value, allow: &AllowList) -> Option<FieldProblem> {
    let raw = config.get("url")?.as_str()?;
    let problem = |p: &str| Some(FieldProblem::new("/action_config/url", p));
    let Ok(url) = url::Url::parse(raw.trim()) else {
        return problem("must be a valid http:// or https:// URL");
    };
    if allow.allows(&url) {
        return None;
    }
    let refused = match url.host() {
        None => return problem("must name a host"),
        Some(url::Host::Ipv4(ip)) => ip_is_forbidden(IpAddr::V4(ip)),
        Some(url::Host::Ipv6(ip)) => ip_is_forbidden(IpAddr::V6(ip)),
        // Names are resolved (and every address checked) when the action runs.
        Some(url::Host::Domain(_)) => false,
    };
    if refused {
        return problem(
            "targets a loopback, private or otherwise non-public address; only hosts on the \
             server's allow-list may be reached",
        );
    }
    None
}

/// Retries of `call_api` on retryable tool failures (connection errors, timeouts, 429, 5xx)
/// and of `run_task` on retryable provider failures.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    /// Attempts when the schedule does not set `max_attempts`.
    pub default_attempts: u32,
    pub base_backoff: Duration,
    pub max_backoff: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            default_attempts: 3,
            base_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(30),
        }
    }
}

impl RetryPolicy {
    /// The shared backoff policy with these bounds: base · 2^(n-1), capped, equal jitter.
    pub fn policy(&self) -> Backoff {
        Backoff {
            initial: self.base_backoff,
            multiplier: 2.0,
            max: self.max_backoff,
            jitter: true,
            ..Backoff::default()
        }
    }

    /// Wait before attempt `n + 1` after `n` failed attempts (n ≥ 1).
    pub fn backoff(&self, failed_attempts: u32) -> Duration {
        self.policy().delay(failed_attempts)
    }
}

/// The ports actions run through.
#[derive(Clone)]
pub struct ActionPorts {
    pub tools: Arc<dyn ToolInvoker>,
    pub agents: Option<Arc<dyn AgentRunner>>,
    pub pipelines: Option<Arc<dyn PipelineLauncher>>,
    pub retry: RetryPolicy,
    /// The process-wide circuit-breaker registry (`call_api` endpoints).
    pub breakers: Arc<Breakers>,
}

/// What a successful action produced.
#[derive(Debug, Clone, PartialEq)]
pub struct ActionOutcome {
    pub result: Value,
    pub run_id: Option<Uuid>,
}

fn str_of(config: &Value, key: &str) -> Option<String> {
    config.get(key).and_then(Value::as_str).map(str::to_owned)
}

fn uuid_of(config: &Value, key: &str) -> Result<Option<Uuid>, String> {
    match config.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_str()
            .and_then(|s| Uuid::parse_str(s).ok())
            .map(Some)
            .ok_or_else(|| format!("action_config.{key} is not a UUID")),
    }
}

impl ActionPorts {
    /// Runs the schedule's action for this execution. The error text is stored on the execution.
    pub async fn perform(
        &self,
        schedule: &Schedule,
        execution: &Execution,
    ) -> Result<ActionOutcome, String> {
        let config = &schedule.action_config;
        let key = format!("schedule:{}:{}", schedule.id, execution.id);
        let ctx = ToolContext {
            user_id: schedule.owner_id,
            is_admin: false,
            idempotency_key: Some(key.clone()),
            request_id: None,
        };
        match schedule.action_type {
            ActionType::CallApi => self.call_api(&ctx, config).await,
            ActionType::SendNotification => {
                let mut params = Map::new();
                for k in ["title", "message", "channel"] {
                    if let Some(v) = config.get(k) {
                        params.insert(k.to_owned(), v.clone());
                    }
                }
                self.tools
                    .invoke(&ctx, "send_notification", Value::Object(params))
                    .await
                    .map(|result| ActionOutcome {
                        result,
                        run_id: None,
                    })
                    .map_err(|e| format!("send_notification failed: {e}"))
            }
            ActionType::RunTask => {
                let Some(runner) = &self.agents else {
                    return Err("run_task failed: no agent runner configured".to_owned());
                };
                let agent_id = uuid_of(config, "agent_id")?
                    .ok_or_else(|| "action_config.agent_id is required".to_owned())?;
                let prompt = str_of(config, "prompt")
                    .ok_or_else(|| "action_config.prompt is required".to_owned())?;
                let request = AgentRequest {
                    owner_id: schedule.owner_id,
                    agent_id,
                    prompt,
                    session_id: uuid_of(config, "session_id")?,
                    idempotency_key: Some(key),
                };
                // The runner's transport makes one attempt; this is the layer that retries (the
                // idempotency key makes a retry after a stored answer return that answer).
                let attempts = self.retry.default_attempts.max(1);
                let mut attempt = 1u32;
                let out = loop {
                    match runner.run(request.clone()).await {
                        Ok(out) => break out,
                        Err(e) => {
                            match self
                                .retry
                                .policy()
                                .decide(attempt, attempts, e.retryable(), None)
                            {
                                Retry::After(wait) => {
                                    tracing::info!(attempt, error = %e, "run_task failed; retrying");
                                    tokio::time::sleep(wait).await;
                                    attempt += 1;
                                }
                                Retry::GiveUp => return Err(format!("run_task failed: {e}")),
                            }
                        }
                    }
                };
                Ok(ActionOutcome {
                    result: json!({
                        "text": out.text,
                        "session_id": out.session_id,
                        "usage": out.usage,
                    }),
                    run_id: None,
                })
            }
            ActionType::ExecutePipeline => {
                let Some(launcher) = &self.pipelines else {
                    return Err(
                        "execute_pipeline failed: no pipeline service configured".to_owned()
                    );
                };
                let pipeline_id = uuid_of(config, "pipeline_id")?
                    .ok_or_else(|| "action_config.pipeline_id is required".to_owned())?;
                let input = config.get("input").cloned().unwrap_or_else(|| json!({}));
                let run_id = launcher
                    .launch(schedule.owner_id, pipeline_id, input)
                    .await
                    .map_err(|e| format!("execute_pipeline failed: {e}"))?;
                Ok(ActionOutcome {
                    result: json!({ "run_id": run_id }),
                    run_id: Some(run_id),
                })
            }
        }
    }

    async fn call_api(&self, ctx: &ToolContext, config: &Value) -> Result<ActionOutcome, String> {
        let mut params = Map::new();
        for k in ["url", "headers", "body", "timeout_ms", "accept_status"] {
            if let Some(v) = config.get(k) {
                params.insert(k.to_owned(), v.clone());
            }
        }
        let method = str_of(config, "method")
            .unwrap_or_else(|| "GET".to_owned())
            .to_ascii_uppercase();
        params.insert("method".to_owned(), Value::String(method));
        let params = Value::Object(params);
        let attempts = config
            .get("max_attempts")
            .and_then(Value::as_u64)
            .map(|n| n.clamp(1, MAX_ATTEMPTS_LIMIT) as u32)
            .unwrap_or(self.retry.default_attempts.max(1));
        let target = keys::tool("http_request", &params);
        let mut attempt = 1u32;
        loop {
            let permit = match target.as_deref().map(|t| (t, self.breakers.acquire(t))) {
                None => None,
                Some((_, Ok(p))) => Some(p),
                Some((t, Err(open))) => {
                    return Err(format!(
                        "call_api failed after {attempt} attempt(s): circuit for {t} is open \
                         after repeated failures; retry in {} s",
                        open.retry_after.as_secs().max(1)
                    ));
                }
            };
            let result = self.tools.invoke(ctx, "http_request", params.clone()).await;
            if let Some(p) = permit {
                p.record(keys::tool_outcome(
                    keys::caller_set_timeout(&params),
                    result.as_ref().map(|_| ()),
                ));
            }
            match result {
                Ok(result) => {
                    return Ok(ActionOutcome {
                        result: json!({ "response": result, "attempts": attempt }),
                        run_id: None,
                    });
                }
                Err(e) => match self
                    .retry
                    .policy()
                    .decide(attempt, attempts, e.retryable(), None)
                {
                    Retry::After(wait) => {
                        tracing::info!(attempt, error = %e, "call_api failed; retrying");
                        tokio::time::sleep(wait).await;
                        attempt += 1;
                    }
                    Retry::GiveUp => {
                        return Err(format!("call_api failed after {attempt} attempt(s): {e}"));
                    }
                },
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use async_trait::async_trait;
    use chrono::Utc;
    use gathering_domain::scheduler::{ExecutionStatus, LaunchError, MissedRuns, OverlapPolicy};
    use gathering_domain::tools::ToolError;
    use std::sync::Mutex;

    /// Fails with the queued errors first, then succeeds; records every call.
    struct ScriptedTools {
        failures: Mutex<Vec<ToolError>>,
        calls: Mutex<Vec<(String, Value, Option<String>)>>,
    }

    #[async_trait]
    impl ToolInvoker for ScriptedTools {
        async fn invoke(
            &self,
            ctx: &ToolContext,
            name: &str,
            params: Value,
        ) -> Result<Value, ToolError> {
            self.calls.lock().unwrap().push((
                name.to_owned(),
                params.clone(),
                ctx.idempotency_key.clone(),
            ));
            let next = self.failures.lock().unwrap().pop();
            match next {
                Some(e) => Err(e),
                None => Ok(json!({"status": 200})),
            }
        }
    }

    fn tools(failures: Vec<ToolError>) -> Arc<ScriptedTools> {
        Arc::new(ScriptedTools {
            failures: Mutex::new(failures),
            calls: Mutex::new(Vec::new()),
        })
    }

    fn ports(t: Arc<ScriptedTools>) -> ActionPorts {
        ActionPorts {
            tools: t,
            agents: None,
            pipelines: None,
            retry: RetryPolicy {
                default_attempts: 3,
                base_backoff: Duration::from_millis(1),
                max_backoff: Duration::from_millis(4),
            },
            breakers: Breakers::new(
                gathering_resilience::BreakerConfig {
                    failures: 3,
                    ..Default::default()
                },
                Arc::new(gathering_domain::SystemClock),
            ),
        }
    }

    fn sched(action: ActionType, config: Value) -> (Schedule, Execution) {
        let now = Utc::now();
        let s = Schedule {
            id: Uuid::now_v7(),
            owner_id: Uuid::now_v7(),
            name: "s".into(),
            cron: None,
            interval_secs: Some(60),
            timezone: None,
            action_type: action,
            action_config: config,
            enabled: true,
            missed_runs: MissedRuns::Skip,
            overlap: OverlapPolicy::Skip,
            max_executions: None,
            execution_count: 0,
            next_run_at: Some(now),
            created_at: now,
            updated_at: now,
        };
        let e = Execution {
            id: Uuid::now_v7(),
            schedule_id: s.id,
            scheduled_for: now,
            status: ExecutionStatus::Running,
            started_at: now,
            finished_at: None,
            result: None,
            error: None,
            instance_id: Uuid::now_v7(),
            run_id: None,
        };
        (s, e)
    }

    fn retryable() -> ToolError {
        ToolError::Failed {
            message: "503".into(),
            retryable: true,
            status: Some(503),
        }
    }

    #[test]
    fn config_shapes_are_checked_per_action_type() {
        assert!(validate(ActionType::CallApi, &json!({"url": "http://x/y"})).is_empty());
        let p = validate(
            ActionType::CallApi,
            &json!({"url": "ftp://x", "method": "BREW", "x": 1}),
        );
        let fields: Vec<_> = p.iter().map(|f| f.field.as_str()).collect();
        assert!(fields.contains(&"/action_config/url"));
        assert!(fields.contains(&"/action_config/method"));
        assert!(fields.contains(&"/action_config/x"));
        assert!(!validate(ActionType::SendNotification, &json!({"title": "t"})).is_empty());
        assert!(
            validate(
                ActionType::SendNotification,
                &json!({"title": "t", "message": "m"})
            )
            .is_empty()
        );
        assert!(
            !validate(
                ActionType::RunTask,
                &json!({"agent_id": "nope", "prompt": "p"})
            )
            .is_empty()
        );
        assert!(
            validate(
                ActionType::RunTask,
                &json!({"agent_id": Uuid::now_v7(), "prompt": "p"})
            )
            .is_empty()
        );
        assert!(!validate(ActionType::ExecutePipeline, &json!({})).is_empty());
        assert!(
            validate(
                ActionType::ExecutePipeline,
                &json!({"pipeline_id": Uuid::now_v7(), "input": {"a": 1}})
            )
            .is_empty()
        );
        assert_eq!(validate(ActionType::CallApi, &json!([])).len(), 1);
    }

    #[test]
    fn action_configs_and_headers_are_bounded() {
        let big = "x".repeat(MAX_ACTION_CONFIG_BYTES);
        let p = validate(
            ActionType::ExecutePipeline,
            &json!({"pipeline_id": Uuid::now_v7(), "input": {"blob": big}}),
        );
        assert_eq!(p[0].field, "/action_config");
        let headers: Map<String, Value> = (0..=MAX_HEADERS)
            .map(|i| (format!("x-h{i}"), json!("v")))
            .collect();
        let p = validate(
            ActionType::CallApi,
            &json!({"url": "https://example.com/", "headers": headers}),
        );
        assert_eq!(p[0].field, "/action_config/headers");
        let p = validate(
            ActionType::CallApi,
            &json!({"url": "https://example.com/", "headers": {"x": "v".repeat(9000)}}),
        );
        assert_eq!(p[0].field, "/action_config/headers");
    }

    #[test]
    fn call_api_to_a_literal_private_address_is_refused_unless_allowed() {
        let none = AllowList::default();
        for url in [
            "http://127.0.0.1:8080/x",
            "http://10.1.2.3/",
            "http://169.254.169.254/latest/meta-data",
            "http://[::1]/",
            "http://2130706433/",
        ] {
            let p = check_call_api_target(&json!({ "url": url }), &none);
            assert_eq!(
                p.map(|p| p.field).as_deref(),
                Some("/action_config/url"),
                "{url}"
            );
        }
        assert!(check_call_api_target(&json!({"url": "https://example.com/x"}), &none).is_none());
        // Names are checked by the guard's resolver when the action runs.
        assert!(check_call_api_target(&json!({"url": "http://localhost:9/"}), &none).is_none());
        let allow = AllowList::new(&["127.0.0.1:8080".to_owned()]);
        assert!(
            check_call_api_target(&json!({"url": "http://127.0.0.1:8080/x"}), &allow).is_none()
        );
        assert!(check_call_api_target(&json!({"url": "http://127.0.0.1:9/"}), &allow).is_some());
    }

    #[tokio::test]
    async fn call_api_retries_retryable_failures_then_succeeds() {
        let t = tools(vec![retryable(), retryable()]);
        let (s, e) = sched(
            ActionType::CallApi,
            json!({"url": "http://h/x", "method": "post"}),
        );
        let out = ports(t.clone()).perform(&s, &e).await.unwrap();
        assert_eq!(out.result["attempts"], 3);
        let calls = t.calls.lock().unwrap();
        assert_eq!(calls.len(), 3);
        assert_eq!(calls[0].0, "http_request");
        assert_eq!(calls[0].1["method"], "POST");
        assert_eq!(
            calls[0].2.as_deref(),
            Some(format!("schedule:{}:{}", s.id, e.id).as_str())
        );
    }

    #[tokio::test]
    async fn call_api_gives_up_after_bounded_attempts() {
        let t = tools(vec![retryable(), retryable(), retryable(), retryable()]);
        let (s, e) = sched(
            ActionType::CallApi,
            json!({"url": "http://h/x", "max_attempts": 2}),
        );
        let err = ports(t.clone()).perform(&s, &e).await.unwrap_err();
        assert!(err.contains("after 2 attempt"), "{err}");
        assert_eq!(t.calls.lock().unwrap().len(), 2);
    }

    #[tokio::test]
    async fn call_api_does_not_retry_permanent_failures() {
        let t = tools(vec![ToolError::Forbidden("blocked host".into())]);
        let (s, e) = sched(ActionType::CallApi, json!({"url": "http://10.0.0.1/"}));
        let err = ports(t.clone()).perform(&s, &e).await.unwrap_err();
        assert!(err.contains("blocked host"));
        assert_eq!(t.calls.lock().unwrap().len(), 1);
    }

    #[tokio::test]
    async fn run_task_without_runner_fails_clearly() {
        let (s, e) = sched(
            ActionType::RunTask,
            json!({"agent_id": Uuid::now_v7(), "prompt": "hi"}),
        );
        let err = ports(tools(vec![])).perform(&s, &e).await.unwrap_err();
        assert!(err.contains("no agent runner configured"), "{err}");
    }

    struct Launcher;
    #[async_trait]
    impl PipelineLauncher for Launcher {
        async fn launch(&self, _o: Uuid, p: Uuid, input: Value) -> Result<Uuid, LaunchError> {
            if input["fail"] == true {
                return Err(LaunchError::NotFound);
            }
            Ok(p)
        }
    }

    #[tokio::test]
    async fn execute_pipeline_records_the_run_id() {
        let pid = Uuid::now_v7();
        let (s, e) = sched(ActionType::ExecutePipeline, json!({"pipeline_id": pid}));
        let mut p = ports(tools(vec![]));
        p.pipelines = Some(Arc::new(Launcher));
        let out = p.perform(&s, &e).await.unwrap();
        assert_eq!(out.run_id, Some(pid));
        assert_eq!(out.result, json!({"run_id": pid}));
        let (s, e) = sched(
            ActionType::ExecutePipeline,
            json!({"pipeline_id": pid, "input": {"fail": true}}),
        );
        assert!(
            p.perform(&s, &e)
                .await
                .unwrap_err()
                .contains("pipeline not found")
        );
    }

    #[tokio::test]
    async fn send_notification_goes_through_the_tool() {
        let t = tools(vec![]);
        let (s, e) = sched(
            ActionType::SendNotification,
            json!({"title": "t", "message": "m"}),
        );
        ports(t.clone()).perform(&s, &e).await.unwrap();
        let calls = t.calls.lock().unwrap();
        assert_eq!(calls[0].0, "send_notification");
        assert_eq!(calls[0].1, json!({"title": "t", "message": "m"}));
    }

    #[test]
    fn backoff_doubles_with_jitter_and_is_capped() {
        let r = RetryPolicy::default();
        for _ in 0..50 {
            let within = |d: Duration, full: Duration| d >= full / 2 && d <= full;
            assert!(within(r.backoff(1), Duration::from_millis(500)));
            assert!(within(r.backoff(2), Duration::from_secs(1)));
            assert!(within(r.backoff(30), Duration::from_secs(30)));
        }
    }

    #[tokio::test]
    async fn call_api_fails_fast_once_the_endpoint_circuit_is_open_and_only_there() {
        let t = tools((0..3).map(|_| retryable()).collect());
        let p = ports(t.clone());
        let (s, e) = sched(
            ActionType::CallApi,
            json!({"url": "http://down.example/x", "max_attempts": 3}),
        );
        assert!(p.perform(&s, &e).await.is_err());
        assert_eq!(t.calls.lock().unwrap().len(), 3);
        let err = p.perform(&s, &e).await.unwrap_err();
        assert!(
            err.contains("circuit for net:down.example:80 is open"),
            "{err}"
        );
        assert_eq!(t.calls.lock().unwrap().len(), 3, "no call while open");
        let (s, e) = sched(ActionType::CallApi, json!({"url": "http://up.example/x"}));
        assert!(
            p.perform(&s, &e).await.is_ok(),
            "another endpoint is unaffected"
        );
    }

    #[tokio::test]
    async fn call_api_with_its_own_short_timeout_never_opens_the_circuit() {
        let t = tools((0..9).map(|_| ToolError::Timeout(1)).collect());
        let p = ports(t.clone());
        let (s, e) = sched(
            ActionType::CallApi,
            json!({"url": "http://slow.example/x", "timeout_ms": 1}),
        );
        for _ in 0..3 {
            assert!(p.perform(&s, &e).await.is_err());
        }
        assert_eq!(t.calls.lock().unwrap().len(), 9, "every attempt was made");
        assert_eq!(p.breakers.tracked(), 0);
    }

    /// Fails with a retryable provider error `fail` times, then answers.
    struct FlakyAgent(std::sync::atomic::AtomicU32, u32);
    #[async_trait]
    impl AgentRunner for FlakyAgent {
        async fn run(
            &self,
            _req: AgentRequest,
        ) -> Result<gathering_domain::agents::AgentOutput, gathering_domain::agents::AgentError>
        {
            let n = self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            if n < self.1 {
                return Err(gathering_domain::agents::AgentError::Provider {
                    retryable: true,
                    message: "openai answered HTTP 503".into(),
                });
            }
            Ok(gathering_domain::agents::AgentOutput {
                text: "done".into(),
                usage: Default::default(),
                session_id: None,
            })
        }
    }

    #[tokio::test]
    async fn run_task_is_retried_by_the_scheduler_with_bounded_attempts() {
        let (s, e) = sched(
            ActionType::RunTask,
            json!({"agent_id": Uuid::now_v7(), "prompt": "hi"}),
        );
        let mut p = ports(tools(vec![]));
        let agent = Arc::new(FlakyAgent(Default::default(), 2));
        p.agents = Some(agent.clone());
        assert_eq!(p.perform(&s, &e).await.unwrap().result["text"], "done");
        assert_eq!(agent.0.load(std::sync::atomic::Ordering::SeqCst), 3);
        let agent = Arc::new(FlakyAgent(Default::default(), 10));
        p.agents = Some(agent.clone());
        assert!(p.perform(&s, &e).await.is_err());
        assert_eq!(agent.0.load(std::sync::atomic::Ordering::SeqCst), 3);
    }
}
