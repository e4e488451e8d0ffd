//! The tool registry: specs, schema validation before a tool runs, and invocation with a
//! timeout (async tools awaited, blocking tools on the blocking pool behind a semaphore).

use crate::error::ToolsError;
use crate::limits::{self, OutputLimits};
use async_trait::async_trait;
use gathering_domain::FieldProblem;
use gathering_domain::tools::{ToolContext, ToolError, ToolInvoker};
use jsonschema::error::ValidationErrorKind;
use serde::Serialize;
use serde_json::Value;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;

/// What a tool is: its name, what it does, its parameters (a JSON Schema) and how long it
/// may run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ToolSpec {
    pub name: String,
    pub description: String,
    /// JSON Schema of the `params` object.
    pub parameters: Value,
    /// True for tools awaited on the runtime; false for tools run on the blocking pool.
    pub is_async: bool,
    #[serde(rename = "timeout_ms", serialize_with = "as_millis")]
    pub timeout: Duration,
}

fn as_millis<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u64(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

impl ToolSpec {
    /// A spec; `is_async` is set by the registration method used.
    pub fn new(
        name: impl Into<String>,
        description: impl Into<String>,
        parameters: Value,
        timeout: Duration,
    ) -> Self {
        Self {
            name: name.into(),
            description: description.into(),
            parameters,
            is_async: true,
            timeout,
        }
    }

    pub fn timeout_ms(&self) -> u64 {
        u64::try_from(self.timeout.as_millis()).unwrap_or(u64::MAX)
    }
}

/// A tool awaited on the async runtime (it must not block).
#[async_trait]
pub trait AsyncTool: Send + Sync {
    async fn call(&self, ctx: &ToolContext, params: Value) -> Result<Value, ToolError>;
}

/// A tool that blocks or burns CPU; it runs on the blocking pool.
pub trait BlockingTool: Send + Sync {
    fn call(&self, ctx: &ToolContext, params: Value) -> Result<Value, ToolError>;
}

impl<F> BlockingTool for F
where
    F: Fn(&ToolContext, Value) -> Result<Value, ToolError> + Send + Sync,
{
    fn call(&self, ctx: &ToolContext, params: Value) -> Result<Value, ToolError> {
        self(ctx, params)
    }
}

#[derive(Clone)]
enum ToolImpl {
    Async(Arc<dyn AsyncTool>),
    Blocking(Arc<dyn BlockingTool>),
}

struct Entry {
    spec: ToolSpec,
    validator: jsonschema::Validator,
    imp: ToolImpl,
}

/// Registered tools by name. Cheap to share behind an `Arc`; implements [`ToolInvoker`].
pub struct ToolRegistry {
    tools: BTreeMap<String, Arc<Entry>>,
    blocking: Arc<Semaphore>,
    output_limits: OutputLimits,
}

impl std::fmt::Debug for ToolRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ToolRegistry")
            .field("tools", &self.tools.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl ToolRegistry {
    /// An empty registry; at most `blocking_concurrency` blocking tools run at once.
    pub fn new(blocking_concurrency: usize) -> Self {
        Self {
            tools: BTreeMap::new(),
            blocking: Arc::new(Semaphore::new(blocking_concurrency.max(1))),
            output_limits: OutputLimits::default(),
        }
    }

    /// Sets the bounds every tool's output is checked against.
    pub fn with_output_limits(mut self, limits: OutputLimits) -> Self {
        self.output_limits = limits;
        self
    }

    pub fn output_limits(&self) -> OutputLimits {
        self.output_limits
    }

    fn insert(&mut self, mut spec: ToolSpec, imp: ToolImpl) -> Result<(), ToolsError> {
        if self.tools.contains_key(&spec.name) {
            return Err(ToolsError::Duplicate(spec.name));
        }
        // Compiled once, here. Without the `resolve-http`/`resolve-file` features no remote
        // or file `$ref` is ever fetched.
        let validator =
            jsonschema::validator_for(&spec.parameters).map_err(|e| ToolsError::InvalidSchema {
                tool: spec.name.clone(),
                message: e.to_string(),
            })?;
        spec.is_async = matches!(imp, ToolImpl::Async(_));
        self.tools.insert(
            spec.name.clone(),
            Arc::new(Entry {
                spec,
                validator,
                imp,
            }),
        );
        Ok(())
    }

    pub fn register_async(
        &mut self,
        spec: ToolSpec,
        tool: impl AsyncTool + 'static,
    ) -> Result<(), ToolsError> {
        self.insert(spec, ToolImpl::Async(Arc::new(tool)))
    }

    pub fn register_blocking(
        &mut self,
        spec: ToolSpec,
        tool: impl BlockingTool + 'static,
    ) -> Result<(), ToolsError> {
        self.insert(spec, ToolImpl::Blocking(Arc::new(tool)))
    }

    pub fn lookup(&self, name: &str) -> Option<&ToolSpec> {
        self.tools.get(name).map(|e| &e.spec)
    }

    /// Every tool, by name.
    pub fn list(&self) -> Vec<&ToolSpec> {
        self.tools.values().map(|e| &e.spec).collect()
    }

    /// Validates and runs the tool under its timeout, then bounds its output (size and
    /// nesting depth, [`OutputLimits`]): an output over the bounds is refused with
    /// [`ToolError::OutputTooLarge`] (`output_too_large`), never returned.
    #[tracing::instrument(skip_all, fields(tool = %name))]
    pub async fn invoke(
        &self,
        ctx: &ToolContext,
        name: &str,
        params: Value,
    ) -> Result<Value, ToolError> {
        let output = self.run(ctx, name, params).await?;
        if let Err(e) = limits::check_value(&output, self.output_limits) {
            tracing::info!(limit = %e, "tool output refused");
            // Dropped off the runtime: a large value takes a while to free.
            drop_in_background(output);
            return Err(e.into_tool_error(name));
        }
        Ok(output)
    }

    async fn run(&self, ctx: &ToolContext, name: &str, params: Value) -> Result<Value, ToolError> {
        let entry = self
            .tools
            .get(name)
            .ok_or_else(|| ToolError::UnknownTool(name.to_owned()))?
            .clone();
        check(&entry.validator, &params)?;
        let timeout = entry.spec.timeout;
        let run = async {
            match &entry.imp {
                ToolImpl::Async(tool) => tool.call(ctx, params).await,
                ToolImpl::Blocking(tool) => {
                    let permit = self
                        .blocking
                        .clone()
                        .acquire_owned()
                        .await
                        .map_err(|_| ToolError::failed("tool pool is shut down"))?;
                    let tool = tool.clone();
                    let ctx = ctx.clone();
                    // The permit lives as long as the thread really runs, even past a timeout,
                    // so the semaphore bounds the threads actually busy.
                    tokio::task::spawn_blocking(move || {
                        let _permit = permit;
                        tool.call(&ctx, params)
                    })
                    .await
                    .map_err(|e| {
                        tracing::error!(error = %e, "blocking tool panicked");
                        ToolError::failed("the tool crashed")
                    })?
                }
            }
        };
        match tokio::time::timeout(timeout, run).await {
            Ok(result) => result,
            Err(_) => Err(ToolError::Timeout(entry.spec.timeout_ms())),
        }
    }
}

#[async_trait]
impl ToolInvoker for ToolRegistry {
    async fn invoke(
        &self,
        ctx: &ToolContext,
        name: &str,
        params: Value,
    ) -> Result<Value, ToolError> {
        ToolRegistry::invoke(self, ctx, name, params).await
    }
}

/// Frees a (possibly large) value on the blocking pool rather than on a runtime worker.
fn drop_in_background(v: Value) {
    if tokio::runtime::Handle::try_current().is_ok() {
        drop(tokio::task::spawn_blocking(move || drop(v)));
    }
}

/// Escapes one JSON-pointer reference token.
fn pointer_token(s: &str) -> String {
    s.replace('~', "~0").replace('/', "~1")
}

fn check(validator: &jsonschema::Validator, params: &Value) -> Result<(), ToolError> {
    let mut problems = Vec::new();
    for err in validator.iter_errors(params) {
        let at = err.instance_path().as_str().to_owned();
        match err.kind() {
            ValidationErrorKind::Required { property } => {
                let name = property
                    .as_str()
                    .map_or_else(|| property.to_string(), str::to_owned);
                problems.push(FieldProblem::new(
                    format!("{at}/{}", pointer_token(&name)),
                    "is required",
                ));
            }
            ValidationErrorKind::AdditionalProperties { unexpected } => {
                for name in unexpected {
                    problems.push(FieldProblem::new(
                        format!("{at}/{}", pointer_token(name)),
                        "is not an allowed parameter",
                    ));
                }
            }
            _ => {
                let field = if at.is_empty() { "/".to_owned() } else { at };
                problems.push(FieldProblem::new(field, err.masked().to_string()));
            }
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(ToolError::InvalidParams(problems))
    }
}

/// Deserializes already-validated params into the tool's own type.
pub fn parse_params<T: serde::de::DeserializeOwned>(params: Value) -> Result<T, ToolError> {
    serde_json::from_value(params)
        .map_err(|e| ToolError::InvalidParams(vec![FieldProblem::new("/", e.to_string())]))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Instant;
    use uuid::Uuid;

    fn ctx() -> ToolContext {
        ToolContext {
            user_id: Uuid::now_v7(),
            is_admin: false,
            idempotency_key: None,
            request_id: None,
        }
    }

    struct Echo;
    #[async_trait]
    impl AsyncTool for Echo {
        async fn call(&self, _ctx: &ToolContext, params: Value) -> Result<Value, ToolError> {
            Ok(params)
        }
    }

    struct Hang;
    #[async_trait]
    impl AsyncTool for Hang {
        async fn call(&self, _ctx: &ToolContext, _params: Value) -> Result<Value, ToolError> {
            std::future::pending().await
        }
    }

    fn schema() -> Value {
        json!({
            "type": "object",
            "properties": {
                "url": {"type": "string", "minLength": 1},
                "count": {"type": "integer", "minimum": 1},
                "nested": {"type": "object", "properties": {"a/b": {"type": "string"}}}
            },
            "required": ["url", "count"],
            "additionalProperties": false
        })
    }

    fn spec(name: &str, timeout: Duration) -> ToolSpec {
        ToolSpec::new(name, "test tool", schema(), timeout)
    }

    #[tokio::test]
    async fn valid_params_reach_the_tool() {
        let mut r = ToolRegistry::new(4);
        r.register_async(spec("echo", Duration::from_secs(1)), Echo)
            .unwrap();
        let out = r
            .invoke(&ctx(), "echo", json!({"url": "x", "count": 2}))
            .await
            .unwrap();
        assert_eq!(out, json!({"url": "x", "count": 2}));
    }

    #[tokio::test]
    async fn every_invalid_parameter_is_listed_with_its_pointer_before_the_tool_runs() {
        let calls = Arc::new(AtomicUsize::new(0));
        let seen = calls.clone();
        let mut r = ToolRegistry::new(4);
        r.register_blocking(
            spec("count", Duration::from_secs(1)),
            move |_: &ToolContext, _: Value| {
                seen.fetch_add(1, Ordering::SeqCst);
                Ok(Value::Null)
            },
        )
        .unwrap();
        let err = r
            .invoke(
                &ctx(),
                "count",
                json!({"url": 5, "extra": true, "nested": {"a/b": 1}}),
            )
            .await
            .unwrap_err();
        let ToolError::InvalidParams(problems) = err else {
            panic!("expected InvalidParams, got {err:?}");
        };
        let mut fields: Vec<_> = problems.iter().map(|p| p.field.as_str()).collect();
        fields.sort_unstable();
        assert_eq!(fields, ["/count", "/extra", "/nested/a~1b", "/url"]);
        assert_eq!(calls.load(Ordering::SeqCst), 0, "the tool never ran");
    }

    #[tokio::test]
    async fn unknown_tool_is_reported_as_such() {
        let r = ToolRegistry::new(1);
        assert!(matches!(
            r.invoke(&ctx(), "nope", json!({})).await,
            Err(ToolError::UnknownTool(n)) if n == "nope"
        ));
    }

    #[test]
    fn schemas_that_do_not_compile_and_duplicates_are_refused_at_registration() {
        let mut r = ToolRegistry::new(1);
        let bad = ToolSpec::new(
            "bad",
            "",
            json!({"type": "no-such-type"}),
            Duration::from_secs(1),
        );
        assert!(matches!(
            r.register_async(bad, Echo),
            Err(ToolsError::InvalidSchema { .. })
        ));
        r.register_async(spec("echo", Duration::from_secs(1)), Echo)
            .unwrap();
        assert!(matches!(
            r.register_async(spec("echo", Duration::from_secs(1)), Echo),
            Err(ToolsError::Duplicate(_))
        ));
    }

    #[tokio::test]
    async fn async_tool_past_its_timeout_fails_with_timeout() {
        let mut r = ToolRegistry::new(1);
        r.register_async(spec("hang", Duration::from_millis(50)), Hang)
            .unwrap();
        let res = tokio::time::timeout(
            Duration::from_secs(5),
            r.invoke(&ctx(), "hang", json!({"url": "x", "count": 1})),
        )
        .await
        .unwrap();
        assert!(matches!(res, Err(ToolError::Timeout(50))));
        assert!(res.unwrap_err().to_string().contains("50 ms"));
    }

    #[tokio::test]
    async fn blocking_tool_past_its_timeout_fails_with_timeout() {
        let mut r = ToolRegistry::new(1);
        r.register_blocking(
            spec("slow", Duration::from_millis(50)),
            |_: &ToolContext, _: Value| {
                std::thread::sleep(Duration::from_millis(300));
                Ok(Value::Null)
            },
        )
        .unwrap();
        let res = r
            .invoke(&ctx(), "slow", json!({"url": "x", "count": 1}))
            .await;
        assert!(matches!(res, Err(ToolError::Timeout(50))));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn ten_concurrent_200ms_blocking_invocations_finish_well_under_two_seconds() {
        let mut r = ToolRegistry::new(16);
        r.register_blocking(
            spec("sleepy", Duration::from_secs(5)),
            |_: &ToolContext, _: Value| {
                std::thread::sleep(Duration::from_millis(200));
                Ok(json!("done"))
            },
        )
        .unwrap();
        let r = Arc::new(r);
        let started = Instant::now();
        let calls: Vec<_> = (0..10)
            .map(|_| {
                let r = r.clone();
                tokio::spawn(async move {
                    r.invoke(&ctx(), "sleepy", json!({"url": "x", "count": 1}))
                        .await
                })
            })
            .collect();
        for c in calls {
            assert_eq!(c.await.unwrap().unwrap(), json!("done"));
        }
        let took = started.elapsed();
        assert!(took < Duration::from_millis(1500), "took {took:?}");
    }

    #[tokio::test]
    async fn panicking_blocking_tool_fails_without_taking_the_registry_down() {
        let mut r = ToolRegistry::new(1);
        r.register_blocking(
            spec("boom", Duration::from_secs(1)),
            |_: &ToolContext, _: Value| -> Result<Value, ToolError> { panic!("boom") },
        )
        .unwrap();
        let res = r
            .invoke(&ctx(), "boom", json!({"url": "x", "count": 1}))
            .await;
        assert!(matches!(
            res,
            Err(ToolError::Failed {
                retryable: false,
                ..
            })
        ));
        // The permit came back: the next call gets to run.
        let res = r
            .invoke(&ctx(), "boom", json!({"url": "x", "count": 1}))
            .await;
        assert!(matches!(res, Err(ToolError::Failed { .. })));
    }

    #[tokio::test]
    async fn outputs_over_the_size_or_depth_bound_are_refused_with_output_too_large() {
        let mut r = ToolRegistry::new(1).with_output_limits(OutputLimits {
            max_bytes: 100,
            max_depth: 3,
        });
        r.register_blocking(
            spec("big", Duration::from_secs(1)),
            |_: &ToolContext, _: Value| Ok(json!("x".repeat(200))),
        )
        .unwrap();
        r.register_async(spec("echo", Duration::from_secs(1)), Echo)
            .unwrap();
        let p = json!({"url": "x", "count": 1});
        let err = r.invoke(&ctx(), "big", p.clone()).await.unwrap_err();
        assert!(matches!(&err, ToolError::OutputTooLarge(m) if m.contains("100 bytes")));
        assert_eq!(gathering_domain::ErrorCode::code(&err), "output_too_large");
        let deep = json!({"url": "x", "count": 1, "nested": {"a": [[1]]}});
        assert!(matches!(
            r.invoke(&ctx(), "echo", deep).await,
            Err(ToolError::InvalidParams(_) | ToolError::OutputTooLarge(_))
        ));
        // Within both bounds: returned as is.
        assert_eq!(r.invoke(&ctx(), "echo", p.clone()).await.unwrap(), p);
        let mut r = ToolRegistry::new(1).with_output_limits(OutputLimits {
            max_bytes: 1000,
            max_depth: 2,
        });
        r.register_blocking(
            spec("deep", Duration::from_secs(1)),
            |_: &ToolContext, _: Value| Ok(json!([[[1]]])),
        )
        .unwrap();
        let err = r.invoke(&ctx(), "deep", p).await.unwrap_err();
        assert!(matches!(&err, ToolError::OutputTooLarge(m) if m.contains("deeper than 2")));
    }

    #[test]
    fn specs_serialize_with_timeout_in_milliseconds() {
        let mut r = ToolRegistry::new(1);
        r.register_blocking(
            spec("b", Duration::from_millis(1500)),
            |_: &ToolContext, v| Ok(v),
        )
        .unwrap();
        let v = serde_json::to_value(r.list()).unwrap();
        assert_eq!(v[0]["name"], "b");
        assert_eq!(v[0]["is_async"], false);
        assert_eq!(v[0]["timeout_ms"], 1500);
        assert_eq!(v[0]["parameters"]["type"], "object");
    }
}
