//! Engine tests against the in-memory repositories and fake tools/agents.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::executor::{Executor, ExecutorConfig, ExecutorDeps};
use crate::memory::MemoryStore;
use crate::retry::Sleeper;
use crate::service::{CreatePipeline, PatchPipeline, PipelineService};
use async_trait::async_trait;
use chrono::Utc;
use gathering_domain::agents::{AgentError, AgentOutput, AgentRequest, AgentRunner, Usage};
use gathering_domain::events::{Event, EventPublisher};
use gathering_domain::notify::{ListenerEvent, Notifier};
use gathering_domain::pipeline::{NodeRun, NodeStatus, PipelineDefinition, RunDetail, RunStatus};
use gathering_domain::tools::{ToolContext, ToolError, ToolInvoker};
use gathering_domain::{Clock, ErrorCode, ManualClock, PageRequest, RepoError, SystemClock};
use parking_lot::Mutex;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;
use tokio::sync::Notify;
use uuid::Uuid;

const LIMIT: Duration = Duration::from_secs(10);

#[derive(Default)]
struct FakeTools {
    calls: Mutex<Vec<(String, Value, Option<String>)>>,
    flaky_left: AtomicU32,
    slow_started: Notify,
    slow_dropped: AtomicBool,
    slow_succeeds: AtomicBool,
    slow_release: Notify,
    /// `slow`: wake itself on every poll while it waits, and count the polls, so a test can see
    /// the driver make a pass over its in-flight nodes.
    slow_spins: AtomicBool,
    slow_polls: AtomicU32,
    barrier: Mutex<Option<Arc<tokio::sync::Barrier>>>,
    /// `fragile`: once `flaky_left` is used up, block like `slow` (true) or fail with a 503.
    fragile_blocks: AtomicBool,
    /// `gauge`: calls in flight now, and the most seen at once.
    in_flight: AtomicU32,
    max_in_flight: AtomicU32,
}

struct DropFlag<'a>(&'a AtomicBool);
impl Drop for DropFlag<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

impl FakeTools {
    fn names(&self) -> Vec<String> {
        self.calls.lock().iter().map(|c| c.0.clone()).collect()
    }
    fn count(&self, name: &str) -> usize {
        self.calls.lock().iter().filter(|c| c.0 == name).count()
    }
}

#[async_trait]
impl ToolInvoker for FakeTools {
    async fn invoke(
        &self,
        ctx: &ToolContext,
        name: &str,
        params: Value,
    ) -> Result<Value, ToolError> {
        self.calls
            .lock()
            .push((name.to_owned(), params.clone(), ctx.idempotency_key.clone()));
        match name {
            "echo" | "echo2" | "echo3" => Ok(params),
            "flaky" => {
                if self.flaky_left.load(Ordering::SeqCst) > 0 {
                    self.flaky_left.fetch_sub(1, Ordering::SeqCst);
                    Err(ToolError::Failed {
                        message: "503 from upstream".into(),
                        retryable: true,
                        status: Some(503),
                    })
                } else {
                    Ok(json!({"ok": true}))
                }
            }
            "fail4xx" => Err(ToolError::Failed {
                message: "404 not found".into(),
                retryable: false,
                status: Some(404),
            }),
            "http_request" if params["url"].as_str().is_some_and(|u| u.ends_with("/slow")) => {
                std::future::pending::<()>().await;
                Ok(params)
            }
            "http_request" if params["url"].as_str().is_some_and(|u| u.ends_with("/ok")) => {
                Ok(params)
            }
            "fail5xx" | "http_request" => Err(ToolError::Failed {
                message: "500 boom".into(),
                retryable: true,
                status: Some(500),
            }),
            "fragile" => {
                if self.flaky_left.load(Ordering::SeqCst) > 0 {
                    self.flaky_left.fetch_sub(1, Ordering::SeqCst);
                } else if self.fragile_blocks.load(Ordering::SeqCst) {
                    self.slow_started.notify_one();
                    std::future::pending::<()>().await;
                }
                Err(ToolError::Failed {
                    message: "503 from upstream".into(),
                    retryable: true,
                    status: Some(503),
                })
            }
            "gauge" => {
                let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
                self.max_in_flight.fetch_max(now, Ordering::SeqCst);
                // A call that takes time (the behaviour measured: how many overlap).
                tokio::time::sleep(Duration::from_millis(20)).await;
                self.in_flight.fetch_sub(1, Ordering::SeqCst);
                Ok(params)
            }
            "barrier" => {
                let b = self.barrier.lock().clone().unwrap();
                b.wait().await;
                Ok(params)
            }
            "slow" => {
                let _guard = DropFlag(&self.slow_dropped);
                self.slow_started.notify_one();
                if self.slow_succeeds.load(Ordering::SeqCst) {
                    return Ok(json!({"slow": "done"}));
                }
                if self.slow_spins.load(Ordering::SeqCst) {
                    let mut released = std::pin::pin!(self.slow_release.notified());
                    std::future::poll_fn(|cx| {
                        self.slow_polls.fetch_add(1, Ordering::SeqCst);
                        let p = released.as_mut().poll(cx);
                        if p.is_pending() {
                            cx.waker().wake_by_ref();
                        }
                        p
                    })
                    .await;
                } else {
                    self.slow_release.notified().await;
                }
                Ok(json!({"slow": "released"}))
            }
            other => Err(ToolError::UnknownTool(other.to_owned())),
        }
    }
}

#[derive(Default)]
struct RecEvents(Mutex<Vec<Event>>);
impl EventPublisher for RecEvents {
    fn publish(&self, event: Event) {
        self.0.lock().push(event);
    }
}
impl RecEvents {
    fn kinds(&self) -> Vec<String> {
        self.0.lock().iter().map(|e| e.kind.clone()).collect()
    }
}

/// Moves the manual clock instead of sleeping; records every wait.
struct ClockSleeper {
    clock: Option<Arc<ManualClock>>,
    slept: Mutex<Vec<Duration>>,
}
#[async_trait]
impl Sleeper for ClockSleeper {
    async fn sleep(&self, d: Duration) {
        self.slept.lock().push(d);
        if let Some(c) = &self.clock {
            c.advance(chrono::Duration::from_std(d).unwrap());
        }
    }
}

/// Delivers NOTIFYs in-process to the executor, like the LISTEN loop would.
#[derive(Default)]
struct LoopbackNotifier(Mutex<Option<Executor>>);
#[async_trait]
impl Notifier for LoopbackNotifier {
    async fn notify(&self, channel: &str, payload: &str) -> Result<(), RepoError> {
        if let Some(e) = self.0.lock().clone() {
            e.handle_listener_event(&ListenerEvent::Notification {
                channel: channel.to_owned(),
                payload: payload.to_owned(),
            });
        }
        Ok(())
    }
}

struct FakeAgent;
#[async_trait]
impl AgentRunner for FakeAgent {
    async fn run(&self, req: AgentRequest) -> Result<AgentOutput, AgentError> {
        Ok(AgentOutput {
            text: format!("echo: {}", req.prompt),
            usage: Usage {
                prompt_tokens: 3,
                completion_tokens: 2,
            },
            session_id: None,
        })
    }
}

struct H {
    store: Arc<MemoryStore>,
    tools: Arc<FakeTools>,
    events: Arc<RecEvents>,
    manual: Option<Arc<ManualClock>>,
    sleeper: Arc<ClockSleeper>,
    exec: Executor,
    svc: PipelineService,
    owner: Uuid,
}

fn cfg() -> ExecutorConfig {
    ExecutorConfig {
        breaker_failures: 3,
        ..ExecutorConfig::default()
    }
}

fn harness_with(manual: bool, cfg: ExecutorConfig, agents: Option<Arc<dyn AgentRunner>>) -> H {
    let store = Arc::new(MemoryStore::new());
    let tools = Arc::new(FakeTools::default());
    let events = Arc::new(RecEvents::default());
    let manual = manual.then(|| Arc::new(ManualClock::new(Utc::now())));
    let clock: Arc<dyn Clock> = match &manual {
        Some(m) => m.clone(),
        None => Arc::new(SystemClock),
    };
    let sleeper = Arc::new(ClockSleeper {
        clock: manual.clone(),
        slept: Mutex::new(Vec::new()),
    });
    let exec = Executor::with_sleeper(
        ExecutorDeps {
            runs: store.clone(),
            tools: tools.clone(),
            agents,
            events: events.clone(),
            clock: clock.clone(),
        },
        cfg,
        sleeper.clone(),
    );
    let notifier = Arc::new(LoopbackNotifier::default());
    *notifier.0.lock() = Some(exec.clone());
    let svc = PipelineService::new(
        store.clone(),
        store.clone(),
        events.clone(),
        Some(notifier),
        clock,
    );
    H {
        store,
        tools,
        events,
        manual,
        sleeper,
        exec,
        svc,
        owner: Uuid::now_v7(),
    }
}

fn harness() -> H {
    harness_with(false, cfg(), None)
}

impl H {
    async fn start(&self, def: Value, input: Value) -> Uuid {
        let definition: PipelineDefinition = serde_json::from_value(def).unwrap();
        let p = self
            .svc
            .create(
                self.owner,
                CreatePipeline {
                    name: "p".into(),
                    description: None,
                    definition,
                },
            )
            .await
            .unwrap();
        self.svc
            .start_run(self.owner, p.id, input)
            .await
            .unwrap()
            .id
    }
    async fn idle(&self) {
        tokio::time::timeout(LIMIT, self.exec.run_until_idle())
            .await
            .unwrap()
            .unwrap();
    }
    async fn detail(&self, run: Uuid) -> RunDetail {
        self.svc.get_run(self.owner, run).await.unwrap()
    }
    async fn node(&self, run: Uuid, id: &str) -> NodeRun {
        self.detail(run)
            .await
            .all_nodes()
            .into_iter()
            .find(|n| n.node_id == id)
            .unwrap()
    }
}

fn action(id: &str, tool: &str, params: Value) -> Value {
    json!({"id": id, "type": "action", "config": {"tool": tool, "params": params}})
}

#[tokio::test]
async fn linear_pipeline_runs_in_order_and_passes_outputs_downstream() {
    let h = harness();
    let run = h
        .start(
            json!({
                "nodes": [
                    {"id": "start", "type": "trigger"},
                    action("a", "echo", json!({"x": "{{input.n}}", "obj": "{{input}}"})),
                    action("b", "echo2", json!({"y": "{{nodes.a.output.x}}", "s": "n={{nodes.a.output.x}}"}))
                ],
                "edges": [{"from": "start", "to": "a"}, {"from": "a", "to": "b"}]
            }),
            json!({"n": 7}),
        )
        .await;
    h.idle().await;
    let d = h.detail(run).await;
    assert_eq!(d.run.status, RunStatus::Succeeded, "{:?}", d.run.error);
    assert_eq!(h.tools.names(), vec!["echo", "echo2"]);
    let b = h.node(run, "b").await;
    assert_eq!(b.output, Some(json!({"y": 7, "s": "n=7"})));
    assert_eq!(
        h.node(run, "a").await.output.unwrap()["obj"],
        json!({"n": 7})
    );
    assert_eq!(d.run.output, Some(json!({"b": {"y": 7, "s": "n=7"}})));
    assert!(
        d.all_nodes()
            .iter()
            .all(|n| n.status == NodeStatus::Succeeded)
    );
    let kinds = h.events.kinds();
    assert_eq!(kinds.first().map(String::as_str), Some("run.queued"));
    assert_eq!(kinds.get(1).map(String::as_str), Some("run.started"));
    assert_eq!(kinds.last().map(String::as_str), Some("run.finished"));
    assert_eq!(kinds.iter().filter(|k| *k == "node.succeeded").count(), 3);
    assert_eq!(kinds.iter().filter(|k| *k == "node.started").count(), 3);
    assert!(h.events.0.lock().iter().all(|e| e.user_id == h.owner));
}

#[tokio::test]
async fn condition_picks_an_edge_and_skips_nodes_reachable_only_through_untaken_edges() {
    let h = harness();
    let def = json!({
        "nodes": [
            {"id": "start", "type": "trigger"},
            {"id": "check", "type": "condition", "config": {"expression": "input.n > 5"}},
            action("yes", "echo", json!({})),
            action("after_yes", "echo", json!({})),
            action("no", "echo2", json!({})),
            action("after_no", "echo2", json!({})),
            action("join", "echo3", json!({"from_yes": "{{nodes.after_yes.output}}", "from_no": "{{nodes.after_no.output}}"}))
        ],
        "edges": [
            {"from": "start", "to": "check"},
            {"from": "check", "to": "yes", "when": true}, {"from": "yes", "to": "after_yes"},
            {"from": "check", "to": "no", "when": false}, {"from": "no", "to": "after_no"},
            {"from": "after_yes", "to": "join"}, {"from": "after_no", "to": "join"}
        ]
    });
    let run = h.start(def, json!({"n": 9})).await;
    h.idle().await;
    let d = h.detail(run).await;
    assert_eq!(d.run.status, RunStatus::Succeeded, "{:?}", d.run.error);
    assert_eq!(h.node(run, "check").await.output, Some(json!(true)));
    assert_eq!(h.node(run, "no").await.status, NodeStatus::Skipped);
    assert_eq!(h.node(run, "after_no").await.status, NodeStatus::Skipped);
    assert_eq!(h.node(run, "join").await.status, NodeStatus::Succeeded);
    assert_eq!(h.tools.count("echo2"), 0);
    assert_eq!(h.tools.names(), vec!["echo", "echo", "echo3"]);
    assert!(h.events.kinds().contains(&"node.skipped".to_owned()));
}

#[tokio::test]
async fn successors_of_a_parallel_node_run_concurrently() {
    let h = harness();
    *h.tools.barrier.lock() = Some(Arc::new(tokio::sync::Barrier::new(2)));
    let run = h
        .start(
            json!({
                "nodes": [
                    {"id": "start", "type": "trigger"}, {"id": "fan", "type": "parallel"},
                    action("a", "barrier", json!({"v": 1})), action("b", "barrier", json!({"v": 2})),
                    action("join", "echo", json!({"a": "{{nodes.a.output.v}}", "b": "{{nodes.b.output.v}}"}))
                ],
                "edges": [{"from": "start", "to": "fan"}, {"from": "fan", "to": "a"}, {"from": "fan", "to": "b"},
                          {"from": "a", "to": "join"}, {"from": "b", "to": "join"}]
            }),
            json!({}),
        )
        .await;
    // Both barrier nodes must be in flight at once, or the run never finishes.
    h.idle().await;
    assert_eq!(
        h.node(run, "join").await.output,
        Some(json!({"a": 1, "b": 2}))
    );
}

#[tokio::test]
async fn retryable_failures_are_retried_with_exponential_backoff_then_succeed() {
    let h = harness_with(true, cfg(), None);
    h.tools.flaky_left.store(2, Ordering::SeqCst);
    let mut node = action("f", "flaky", json!({}));
    node["retry"] = json!({"max_attempts": 3, "initial_backoff_ms": 100, "multiplier": 2.0, "max_backoff_ms": 1000});
    let run = h
        .start(json!({"nodes": [node], "edges": []}), json!({}))
        .await;
    h.idle().await;
    let f = h.node(run, "f").await;
    assert_eq!(f.status, NodeStatus::Succeeded);
    assert_eq!(f.attempts, 3);
    let slept: Vec<u128> = h
        .sleeper
        .slept
        .lock()
        .iter()
        .map(|d| d.as_millis())
        .collect();
    assert_eq!(slept.len(), 2);
    assert!((50..=100).contains(&slept[0]), "{slept:?}");
    assert!((100..=200).contains(&slept[1]), "{slept:?}");
    assert!(h.manual.is_some());
    assert_eq!(
        h.events
            .kinds()
            .iter()
            .filter(|k| *k == "node.retrying")
            .count(),
        2
    );
}

#[tokio::test]
async fn retries_stop_at_max_attempts_and_the_run_fails_with_the_node_error() {
    let h = harness_with(
        true,
        ExecutorConfig {
            breaker_failures: 100,
            ..cfg()
        },
        None,
    );
    let mut node = action("f", "fail5xx", json!({}));
    node["retry"] = json!({"max_attempts": 4, "initial_backoff_ms": 10});
    let run = h
        .start(json!({"nodes": [node], "edges": []}), json!({}))
        .await;
    h.idle().await;
    let d = h.detail(run).await;
    assert_eq!(d.run.status, RunStatus::Failed);
    assert_eq!(d.run.error.as_ref().unwrap().code, "tool_failed");
    assert!(d.run.error.unwrap().message.contains("`f`"));
    assert_eq!(h.node(run, "f").await.attempts, 4);
    assert_eq!(h.tools.count("fail5xx"), 4);
}

#[tokio::test]
async fn non_retryable_failures_are_not_retried() {
    let h = harness_with(true, cfg(), None);
    let mut node = action("f", "fail4xx", json!({}));
    node["retry"] = json!({"max_attempts": 5});
    let run = h
        .start(json!({"nodes": [node], "edges": []}), json!({}))
        .await;
    h.idle().await;
    assert_eq!(h.detail(run).await.run.status, RunStatus::Failed);
    assert_eq!(h.tools.count("fail4xx"), 1);
    assert!(h.sleeper.slept.lock().is_empty());
    let kinds = h.events.kinds();
    assert!(kinds.contains(&"node.failed".to_owned()), "{kinds:?}");
    assert!(!kinds.contains(&"node.retrying".to_owned()), "{kinds:?}");
}

#[tokio::test]
async fn breaker_opens_after_consecutive_failures_and_later_runs_fail_fast() {
    let h = harness_with(true, cfg(), None);
    let mut node = action(
        "f",
        "http_request",
        json!({"url": "https://down.example/x"}),
    );
    node["retry"] = json!({"max_attempts": 3, "initial_backoff_ms": 1});
    let def = json!({"nodes": [node], "edges": []});
    let first = h.start(def.clone(), json!({})).await;
    h.idle().await;
    assert_eq!(h.tools.count("http_request"), 3);
    assert_eq!(h.node(first, "f").await.error.unwrap().code, "tool_failed");
    let second = h.start(def.clone(), json!({})).await;
    h.idle().await;
    let f = h.node(second, "f").await;
    assert_eq!(f.error.unwrap().code, "circuit_open");
    assert_eq!(f.attempts, 1);
    assert_eq!(
        h.tools.count("http_request"),
        3,
        "an open circuit makes no call"
    );
    // After the cooldown a half-open probe goes through (and fails again here).
    h.manual
        .as_ref()
        .unwrap()
        .advance(chrono::Duration::seconds(31));
    let third = h.start(def, json!({})).await;
    h.idle().await;
    assert_eq!(h.tools.count("http_request"), 4, "exactly one probe call");
    let f = h.node(third, "f").await;
    assert_eq!(
        f.error.unwrap().code,
        "circuit_open",
        "the failed probe reopened the circuit"
    );
}

/// Always fails with a retryable provider error; counts its calls.
#[derive(Default)]
struct FailingAgent(AtomicU32);
#[async_trait]
impl AgentRunner for FailingAgent {
    async fn run(&self, _req: AgentRequest) -> Result<AgentOutput, AgentError> {
        self.0.fetch_add(1, Ordering::SeqCst);
        Err(AgentError::Provider {
            retryable: true,
            message: "openai answered HTTP 503".into(),
        })
    }
}

fn shared_breakers(clock: Arc<dyn Clock>) -> Arc<gathering_resilience::Breakers> {
    gathering_resilience::Breakers::new(
        gathering_resilience::BreakerConfig {
            failures: 3,
            ..Default::default()
        },
        clock,
    )
}

#[tokio::test]
async fn a_node_timeout_shorter_than_the_tool_never_opens_the_endpoint_circuit() {
    let breakers = shared_breakers(Arc::new(SystemClock));
    let h = harness_with(
        false,
        ExecutorConfig {
            breakers: Some(breakers.clone()),
            ..cfg()
        },
        None,
    );
    // User A: a 1 ms budget on a call to a slow endpoint, failing over and over.
    let mut slow = action(
        "a",
        "http_request",
        json!({"url": "https://api.example/slow"}),
    );
    slow["timeout_ms"] = json!(1);
    for _ in 0..6 {
        let run = h
            .start(json!({"nodes": [slow.clone()], "edges": []}), json!({}))
            .await;
        h.idle().await;
        assert_eq!(h.node(run, "a").await.error.unwrap().code, "timed_out");
    }
    assert_eq!(
        breakers.tracked(),
        0,
        "the caller's own budget never counts"
    );
    // User B: the same endpoint still answers.
    let ok = action(
        "b",
        "http_request",
        json!({"url": "https://api.example/ok"}),
    );
    let run = h
        .start(json!({"nodes": [ok], "edges": []}), json!({}))
        .await;
    h.idle().await;
    assert_eq!(h.detail(run).await.run.status, RunStatus::Succeeded);
}

#[tokio::test]
async fn pure_builtin_tools_and_agents_have_no_breaker_in_the_executor() {
    let breakers = shared_breakers(Arc::new(SystemClock));
    let agent = Arc::new(FailingAgent::default());
    let h = harness_with(
        false,
        ExecutorConfig {
            breakers: Some(breakers.clone()),
            ..cfg()
        },
        Some(agent.clone()),
    );
    let tool = json!({"nodes": [action("f", "fail5xx", json!({}))], "edges": []});
    let agent_def = json!({"nodes": [
        {"id": "ag", "type": "agent", "config": {"agent_id": Uuid::now_v7().to_string(), "prompt": "hi"}}
    ], "edges": []});
    for _ in 0..5 {
        let run = h.start(tool.clone(), json!({})).await;
        h.idle().await;
        assert_eq!(h.node(run, "f").await.error.unwrap().code, "tool_failed");
        let run = h.start(agent_def.clone(), json!({})).await;
        h.idle().await;
        assert_eq!(h.node(run, "ag").await.error.unwrap().code, "agent_failed");
    }
    assert_eq!(h.tools.count("fail5xx"), 5, "never refused by a circuit");
    assert_eq!(
        agent.0.load(Ordering::SeqCst),
        5,
        "never refused by a circuit"
    );
    assert_eq!(breakers.tracked(), 0);
}

#[tokio::test]
async fn node_timeout_fails_the_node_and_times_the_run_out() {
    let h = harness();
    let mut node = action("s", "slow", json!({}));
    node["timeout_ms"] = json!(50);
    let run = h
        .start(json!({"nodes": [node], "edges": []}), json!({}))
        .await;
    h.idle().await;
    let d = h.detail(run).await;
    assert_eq!(d.run.status, RunStatus::TimedOut);
    let s = h.node(run, "s").await;
    assert_eq!(s.status, NodeStatus::Failed);
    assert_eq!(s.error.unwrap().code, "timed_out");
    assert!(h.tools.slow_dropped.load(Ordering::SeqCst));
}

#[tokio::test]
async fn run_timeout_cancels_running_nodes() {
    let h = harness();
    let run = h
        .start(
            json!({"nodes": [{"id": "t", "type": "trigger"}, action("s", "slow", json!({})), action("after", "echo", json!({}))],
                   "edges": [{"from": "t", "to": "s"}, {"from": "s", "to": "after"}], "timeout_ms": 100}),
            json!({}),
        )
        .await;
    h.idle().await;
    let d = h.detail(run).await;
    assert_eq!(d.run.status, RunStatus::TimedOut);
    assert_eq!(d.run.error.unwrap().code, "timed_out");
    assert_eq!(h.node(run, "s").await.status, NodeStatus::Cancelled);
    assert_eq!(h.node(run, "after").await.status, NodeStatus::Cancelled);
    assert!(h.tools.slow_dropped.load(Ordering::SeqCst));
    assert_eq!(h.tools.count("echo"), 0);
}

#[tokio::test]
async fn cancel_stops_running_nodes_and_starts_no_more() {
    let h = harness();
    let run = h
        .start(
            json!({"nodes": [{"id": "t", "type": "trigger"}, action("s", "slow", json!({})), action("after", "echo", json!({}))],
                   "edges": [{"from": "t", "to": "s"}, {"from": "s", "to": "after"}]}),
            json!({}),
        )
        .await;
    let exec = h.exec.clone();
    let driving = tokio::spawn(async move { exec.run_until_idle().await });
    tokio::time::timeout(LIMIT, h.tools.slow_started.notified())
        .await
        .unwrap();
    h.svc.cancel(h.owner, run).await.unwrap();
    tokio::time::timeout(LIMIT, driving)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let d = h.detail(run).await;
    assert_eq!(d.run.status, RunStatus::Cancelled);
    assert_eq!(h.node(run, "s").await.status, NodeStatus::Cancelled);
    assert_eq!(h.node(run, "after").await.status, NodeStatus::Cancelled);
    assert!(
        h.tools.slow_dropped.load(Ordering::SeqCst),
        "the running tool future was dropped"
    );
    assert_eq!(h.tools.count("echo"), 0);
    assert!(h.events.kinds().contains(&"node.cancelled".to_owned()));
    // Cancelling again: the run has finished.
    assert_eq!(
        h.svc.cancel(h.owner, run).await.unwrap_err().code(),
        "run_finished"
    );
}

#[tokio::test]
async fn cancelling_a_queued_run_cancels_it_at_once() {
    let h = harness();
    let run = h
        .start(
            json!({"nodes": [action("a", "echo", json!({}))], "edges": []}),
            json!({}),
        )
        .await;
    h.svc.cancel(h.owner, run).await.unwrap();
    assert_eq!(h.detail(run).await.run.status, RunStatus::Cancelled);
    assert_eq!(h.exec.run_until_idle().await.unwrap(), 0);
    assert_eq!(h.tools.count("echo"), 0);
}

#[tokio::test]
async fn delay_releases_the_worker_and_resumes_when_due() {
    let h = harness_with(true, cfg(), None);
    let run = h
        .start(
            json!({"nodes": [{"id": "t", "type": "trigger"}, {"id": "wait", "type": "delay", "config": {"ms": 60000}}, action("a", "echo", json!({}))],
                   "edges": [{"from": "t", "to": "wait"}, {"from": "wait", "to": "a"}]}),
            json!({}),
        )
        .await;
    h.idle().await;
    let d = h.detail(run).await;
    assert_eq!(d.run.status, RunStatus::Running);
    assert_eq!(
        h.store.lease_owner(run),
        None,
        "no worker holds a waiting run"
    );
    let wait = h.node(run, "wait").await;
    assert_eq!(wait.status, NodeStatus::Running);
    assert_eq!(h.store.due_at(run), wait.wake_at);
    assert_eq!(h.tools.count("echo"), 0);
    // Not due yet: nothing to claim.
    assert_eq!(h.exec.run_until_idle().await.unwrap(), 0);
    h.manual
        .as_ref()
        .unwrap()
        .advance(chrono::Duration::seconds(61));
    h.idle().await;
    assert_eq!(h.detail(run).await.run.status, RunStatus::Succeeded);
    assert_eq!(h.tools.count("echo"), 1);
}

#[tokio::test]
async fn after_a_crash_completed_nodes_are_not_rerun_and_the_mid_flight_node_reruns_with_its_key() {
    let h = harness_with(true, cfg(), None);
    let run = h
        .start(
            json!({"nodes": [action("a", "echo", json!({"v": 1})), action("b", "slow", json!({"from_a": "{{nodes.a.output.v}}"}))],
                   "edges": [{"from": "a", "to": "b"}]}),
            json!({}),
        )
        .await;
    let exec = h.exec.clone();
    let crashed = tokio::spawn(async move { exec.run_until_idle().await });
    tokio::time::timeout(LIMIT, h.tools.slow_started.notified())
        .await
        .unwrap();
    crashed.abort(); // the instance dies: no release, the lease stays
    let _ = crashed.await;
    assert!(h.store.lease_owner(run).is_some());
    // A second instance: nothing to claim while the lease is valid; the rescuer requeues it later.
    let other = harness_peer(&h);
    assert_eq!(other.run_until_idle().await.unwrap(), 0);
    h.manual
        .as_ref()
        .unwrap()
        .advance(chrono::Duration::seconds(31));
    let report = other.rescue_stale().await.unwrap();
    assert_eq!(report.requeued, vec![run]);
    h.tools.slow_succeeds.store(true, Ordering::SeqCst);
    tokio::time::timeout(LIMIT, other.run_until_idle())
        .await
        .unwrap()
        .unwrap();
    let d = h.detail(run).await;
    assert_eq!(d.run.status, RunStatus::Succeeded, "{:?}", d.run.error);
    assert_eq!(h.tools.count("echo"), 1, "completed node not re-run");
    let keys: Vec<Option<String>> = h
        .tools
        .calls
        .lock()
        .iter()
        .filter(|c| c.0 == "slow")
        .map(|c| c.2.clone())
        .collect();
    assert_eq!(keys.len(), 2);
    assert_eq!(keys[0], Some(format!("{run}:b")));
    assert_eq!(keys[0], keys[1]);
    assert_eq!(h.node(run, "b").await.attempts, 2);
}

#[tokio::test]
async fn runs_rescued_too_often_fail_as_crash_loop() {
    let h = harness_with(
        true,
        ExecutorConfig {
            max_rescues: 1,
            ..cfg()
        },
        None,
    );
    let run = h
        .start(
            json!({"nodes": [action("s", "slow", json!({}))], "edges": []}),
            json!({}),
        )
        .await;
    for _ in 0..2 {
        let exec = h.exec.clone();
        let t = tokio::spawn(async move { exec.run_until_idle().await });
        tokio::time::timeout(LIMIT, h.tools.slow_started.notified())
            .await
            .unwrap();
        t.abort();
        let _ = t.await;
        h.manual
            .as_ref()
            .unwrap()
            .advance(chrono::Duration::seconds(31));
        h.exec.rescue_stale().await.unwrap();
    }
    let d = h.detail(run).await;
    assert_eq!(d.run.status, RunStatus::Failed);
    assert_eq!(d.run.error.unwrap().code, "crash_loop");
}

/// Lets an instance run `run` until a node blocks in `fragile`/`slow`, kills the instance
/// (no release: the lease stays) and lets the lease expire and the rescuer requeue the run.
async fn crash_mid_flight(h: &H, run: Uuid) {
    let exec = harness_peer(h);
    let crashed = tokio::spawn(async move { exec.run_until_idle().await });
    tokio::time::timeout(LIMIT, h.tools.slow_started.notified())
        .await
        .unwrap();
    crashed.abort();
    let _ = crashed.await;
    h.manual
        .as_ref()
        .unwrap()
        .advance(chrono::Duration::seconds(31));
    let report = h.exec.rescue_stale().await.unwrap();
    assert_eq!(report.requeued, vec![run]);
}

fn fragile_pipeline(max_attempts: u32) -> Value {
    let mut node = action("f", "fragile", json!({}));
    node["retry"] = json!({"max_attempts": max_attempts, "initial_backoff_ms": 10});
    json!({"nodes": [node], "edges": []})
}

fn no_breaker() -> ExecutorConfig {
    ExecutorConfig {
        breaker_failures: 100,
        ..cfg()
    }
}

#[tokio::test]
async fn a_node_resumed_mid_retry_only_makes_the_attempts_left_in_its_budget() {
    let h = harness_with(true, no_breaker(), None);
    // Attempt 1 fails, attempt 2 is in flight when the instance dies.
    h.tools.flaky_left.store(1, Ordering::SeqCst);
    h.tools.fragile_blocks.store(true, Ordering::SeqCst);
    let run = h.start(fragile_pipeline(3), json!({})).await;
    crash_mid_flight(&h, run).await;
    assert_eq!(h.tools.count("fragile"), 2);
    assert_eq!(
        h.node(run, "f").await.attempts,
        2,
        "the in-flight attempt counts"
    );
    // From now on every call fails retryably.
    h.tools.fragile_blocks.store(false, Ordering::SeqCst);
    h.idle().await;
    let d = h.detail(run).await;
    assert_eq!(d.run.status, RunStatus::Failed, "{:?}", d.run.error);
    assert_eq!(
        h.tools.count("fragile"),
        3,
        "max_attempts bounds the calls across the resume"
    );
    let f = h.node(run, "f").await;
    assert_eq!(f.status, NodeStatus::Failed);
    assert_eq!(f.attempts, 3);
    let keys: Vec<Option<String>> = h.tools.calls.lock().iter().map(|c| c.2.clone()).collect();
    assert!(
        keys.iter().all(|k| *k == Some(format!("{run}:f"))),
        "{keys:?}"
    );
}

#[tokio::test]
async fn a_node_interrupted_in_its_last_attempt_is_rerun_exactly_once_without_retries() {
    let h = harness_with(true, no_breaker(), None);
    // Attempt 1 fails, attempt 2 (the last of 2) is in flight when the instance dies.
    h.tools.flaky_left.store(1, Ordering::SeqCst);
    h.tools.fragile_blocks.store(true, Ordering::SeqCst);
    let run = h.start(fragile_pipeline(2), json!({})).await;
    crash_mid_flight(&h, run).await;
    assert_eq!(h.tools.count("fragile"), 2);
    h.tools.fragile_blocks.store(false, Ordering::SeqCst);
    h.idle().await;
    let d = h.detail(run).await;
    assert_eq!(d.run.status, RunStatus::Failed, "{:?}", d.run.error);
    assert_eq!(d.run.error.unwrap().code, "tool_failed");
    assert_eq!(h.tools.count("fragile"), 3, "one re-run, not retried");
    assert_eq!(h.node(run, "f").await.attempts, 3);
}

#[tokio::test]
async fn a_node_whose_extra_rerun_is_interrupted_too_fails_without_another_call() {
    let h = harness_with(true, no_breaker(), None);
    // The only attempt is in flight when the instance dies, and so is its one re-run.
    h.tools.fragile_blocks.store(true, Ordering::SeqCst);
    let run = h.start(fragile_pipeline(1), json!({})).await;
    crash_mid_flight(&h, run).await;
    crash_mid_flight(&h, run).await;
    assert_eq!(h.tools.count("fragile"), 2);
    h.tools.fragile_blocks.store(false, Ordering::SeqCst);
    h.idle().await;
    let d = h.detail(run).await;
    assert_eq!(d.run.status, RunStatus::Failed, "{:?}", d.run.error);
    assert_eq!(d.run.error.unwrap().code, "attempts_exhausted");
    assert_eq!(h.tools.count("fragile"), 2, "no third call");
    let f = h.node(run, "f").await;
    assert_eq!(f.status, NodeStatus::Failed);
    assert_eq!(f.attempts, 2);
}

fn harness_peer(h: &H) -> Executor {
    Executor::with_sleeper(
        ExecutorDeps {
            runs: h.store.clone(),
            tools: h.tools.clone(),
            agents: None,
            events: h.events.clone(),
            clock: h.manual.clone().unwrap(),
        },
        cfg(),
        h.sleeper.clone(),
    )
}

#[tokio::test]
async fn agent_node_without_a_runner_fails_clearly() {
    let h = harness();
    let run = h
        .start(
            json!({"nodes": [{"id": "ag", "type": "agent", "config": {"agent_id": Uuid::now_v7().to_string(), "prompt": "hi"}}], "edges": []}),
            json!({}),
        )
        .await;
    h.idle().await;
    let ag = h.node(run, "ag").await;
    assert_eq!(ag.status, NodeStatus::Failed);
    let err = ag.error.unwrap();
    assert_eq!(err.code, "agent_unavailable");
    assert_eq!(err.message, "no agent runner configured");
    assert_eq!(ag.output, None);
}

#[tokio::test]
async fn agent_node_gets_a_templated_prompt_and_outputs_text_and_usage() {
    let h = harness_with(false, cfg(), Some(Arc::new(FakeAgent)));
    let run = h
        .start(
            json!({"nodes": [{"id": "t", "type": "trigger"},
                             {"id": "ag", "type": "agent", "config": {"agent_id": Uuid::now_v7().to_string(), "prompt": "hello {{nodes.t.output.who}}"}}],
                   "edges": [{"from": "t", "to": "ag"}]}),
            json!({"who": "ada"}),
        )
        .await;
    h.idle().await;
    let ag = h.node(run, "ag").await;
    assert_eq!(
        ag.output,
        Some(
            json!({"text": "echo: hello ada", "usage": {"prompt_tokens": 3, "completion_tokens": 2}})
        )
    );
}

// Single-threaded on purpose: the wait for the driver to see the drain relies on it.
#[tokio::test(flavor = "current_thread")]
async fn graceful_stop_lets_in_flight_nodes_finish_and_releases_the_lease() {
    let h = harness_with(
        false,
        ExecutorConfig {
            poll_interval: Duration::from_millis(20),
            ..cfg()
        },
        None,
    );
    h.tools.slow_spins.store(true, Ordering::SeqCst);
    let run = h
        .start(
            json!({"nodes": [action("s", "slow", json!({})), action("after", "echo", json!({}))],
                   "edges": [{"from": "s", "to": "after"}]}),
            json!({}),
        )
        .await;
    let shutdown = tokio_util::sync::CancellationToken::new();
    let handle = h.exec.spawn(shutdown.clone(), None);
    tokio::time::timeout(LIMIT, h.tools.slow_started.notified())
        .await
        .unwrap();
    // The node is in flight; it finishes soon after the stop begins.
    shutdown.cancel();
    tokio::time::timeout(LIMIT, async {
        while !h.exec.is_draining() {
            tokio::task::yield_now().await;
        }
    })
    .await
    .unwrap();
    // The driver must take the drain before the node completes. This runtime is single-threaded
    // and the in-flight node wakes itself on every poll, so the driver keeps passing over it; a
    // pass that starts now finds the drain ready and takes it in that same pass (before or right
    // after polling the node). So one new poll of the node proves the driver saw the drain.
    let seen = h.tools.slow_polls.load(Ordering::SeqCst);
    tokio::time::timeout(LIMIT, async {
        while h.tools.slow_polls.load(Ordering::SeqCst) == seen {
            tokio::task::yield_now().await;
        }
    })
    .await
    .unwrap();
    h.tools.slow_release.notify_one();
    tokio::time::timeout(LIMIT, handle).await.unwrap().unwrap();
    assert_eq!(
        h.node(run, "s").await.status,
        NodeStatus::Succeeded,
        "in-flight node finished"
    );
    let d = h.detail(run).await;
    assert_eq!(d.run.status, RunStatus::Running);
    assert_eq!(h.store.lease_owner(run), None, "lease released on stop");
    assert_eq!(h.tools.count("echo"), 0, "no node starts while stopping");
}

#[tokio::test]
async fn spawned_executor_picks_up_queued_runs_on_notify() {
    let h = harness_with(
        false,
        ExecutorConfig {
            poll_interval: Duration::from_secs(3600),
            ..cfg()
        },
        None,
    );
    let (tx, rx) = tokio::sync::broadcast::channel(16);
    let shutdown = tokio_util::sync::CancellationToken::new();
    let handle = h.exec.spawn(shutdown.clone(), Some(rx));
    tokio::time::sleep(Duration::from_millis(20)).await;
    let run = h
        .start(
            json!({"nodes": [action("a", "echo", json!({}))], "edges": []}),
            json!({}),
        )
        .await;
    tx.send(ListenerEvent::Notification {
        channel: crate::executor::RUN_QUEUED_CHANNEL.into(),
        payload: run.to_string(),
    })
    .unwrap();
    tokio::time::timeout(LIMIT, async {
        loop {
            if h.detail(run).await.run.status == RunStatus::Succeeded {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .unwrap();
    shutdown.cancel();
    tokio::time::timeout(LIMIT, handle).await.unwrap().unwrap();
}

#[tokio::test]
async fn service_rejects_invalid_definitions_and_stores_nothing() {
    let h = harness();
    let definition: PipelineDefinition = serde_json::from_value(
        json!({"nodes": [{"id": "a", "type": "nope"}], "edges": [{"from": "a", "to": "b"}]}),
    )
    .unwrap();
    let err = h
        .svc
        .create(
            h.owner,
            CreatePipeline {
                name: " ".into(),
                description: None,
                definition,
            },
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), "validation_failed");
    let fields: Vec<String> = err.details().into_iter().map(|p| p.field).collect();
    assert_eq!(fields, vec!["/name", "/nodes/0/type", "/edges/0/to"]);
    assert!(
        h.svc
            .list(h.owner, PageRequest::default())
            .await
            .unwrap()
            .items
            .is_empty()
    );
}

#[tokio::test]
async fn updates_create_versions_and_runs_record_the_version_they_ran() {
    let h = harness();
    let definition: PipelineDefinition = serde_json::from_value(
        json!({"nodes": [action("a", "echo", json!({"v": 1}))], "edges": []}),
    )
    .unwrap();
    let p = h
        .svc
        .create(
            h.owner,
            CreatePipeline {
                name: "p".into(),
                description: None,
                definition,
            },
        )
        .await
        .unwrap();
    assert_eq!(p.version, 1);
    let run1 = h.svc.start_run(h.owner, p.id, json!({})).await.unwrap();
    let nodes = serde_json::from_value(json!([action("a", "echo", json!({"v": 2}))])).unwrap();
    let p2 = h
        .svc
        .update(
            h.owner,
            p.id,
            PatchPipeline {
                nodes: Some(nodes),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(p2.version, 2);
    let run2 = h.svc.start_run(h.owner, p.id, json!({})).await.unwrap();
    h.idle().await;
    assert_eq!(h.detail(run1.id).await.run.pipeline_version, 1);
    assert_eq!(h.node(run1.id, "a").await.output, Some(json!({"v": 1})));
    assert_eq!(h.node(run2.id, "a").await.output, Some(json!({"v": 2})));
    // A PATCH with a cycle is refused and changes nothing.
    let edges = serde_json::from_value(json!([{"from": "a", "to": "a"}])).unwrap();
    let err = h
        .svc
        .update(
            h.owner,
            p.id,
            PatchPipeline {
                edges: Some(edges),
                ..Default::default()
            },
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), "cycle_detected");
    assert_eq!(h.svc.get(h.owner, p.id).await.unwrap().version, 2);
}

#[tokio::test]
async fn other_owners_see_nothing() {
    let h = harness();
    let run = h
        .start(
            json!({"nodes": [action("a", "echo", json!({}))], "edges": []}),
            json!({}),
        )
        .await;
    let pid = h.detail(run).await.run.pipeline_id;
    let stranger = Uuid::now_v7();
    assert_eq!(
        h.svc.get(stranger, pid).await.unwrap_err().code(),
        "not_found"
    );
    assert_eq!(
        h.svc.get_run(stranger, run).await.unwrap_err().code(),
        "not_found"
    );
    assert_eq!(
        h.svc.cancel(stranger, run).await.unwrap_err().code(),
        "not_found"
    );
    assert_eq!(
        h.svc
            .start_run(stranger, pid, json!({}))
            .await
            .unwrap_err()
            .code(),
        "not_found"
    );
    assert_eq!(
        h.svc
            .list_runs(stranger, pid, PageRequest::default())
            .await
            .unwrap_err()
            .code(),
        "not_found"
    );
    assert_eq!(
        h.svc.delete(stranger, pid).await.unwrap_err().code(),
        "not_found"
    );
    let _unused: HashMap<(), ()> = HashMap::new();
}

#[tokio::test]
async fn action_nodes_naming_an_unknown_tool_are_refused_when_stored() {
    let h = harness();
    let svc = PipelineService::new(
        h.store.clone(),
        h.store.clone(),
        h.events.clone(),
        None,
        Arc::new(gathering_domain::SystemClock),
    )
    .with_known_tools(["echo".to_owned()]);
    let definition: PipelineDefinition = serde_json::from_value(json!({"nodes": [
        action("a", "echo", json!({})),
        action("b", "no_such_tool", json!({})),
    ], "edges": [{"from": "a", "to": "b"}]}))
    .unwrap();
    let create = |definition| {
        svc.create(
            h.owner,
            CreatePipeline {
                name: "p".into(),
                description: None,
                definition,
            },
        )
    };
    let err = create(definition).await.unwrap_err();
    assert_eq!(err.code(), "validation_failed");
    let fields: Vec<String> = err.details().into_iter().map(|p| p.field).collect();
    assert_eq!(fields, vec!["/nodes/1/config/tool"]);
    // A known tool is accepted; an update introducing an unknown one is refused too.
    let ok: PipelineDefinition =
        serde_json::from_value(json!({"nodes": [action("a", "echo", json!({}))], "edges": []}))
            .unwrap();
    let p = create(ok).await.unwrap();
    let nodes = serde_json::from_value(json!([action("a", "nope", json!({}))])).unwrap();
    let err = svc
        .update(
            h.owner,
            p.id,
            PatchPipeline {
                nodes: Some(nodes),
                ..Default::default()
            },
        )
        .await
        .unwrap_err();
    assert_eq!(err.details()[0].field, "/nodes/0/config/tool");
}

#[tokio::test]
async fn node_executions_per_instance_are_capped_across_runs() {
    let h = harness_with(
        false,
        ExecutorConfig {
            max_concurrent_nodes: 3,
            ..cfg()
        },
        None,
    );
    // Four runs of a fan-out to four nodes each: sixteen nodes ready at once.
    let fan = |i: usize| action(&format!("g{i}"), "gauge", json!({"i": i}));
    let def = json!({
        "nodes": [{"id": "start", "type": "trigger"}, {"id": "fan", "type": "parallel"},
                  fan(0), fan(1), fan(2), fan(3)],
        "edges": [{"from": "start", "to": "fan"},
                  {"from": "fan", "to": "g0"}, {"from": "fan", "to": "g1"},
                  {"from": "fan", "to": "g2"}, {"from": "fan", "to": "g3"}]
    });
    let mut runs = Vec::new();
    for _ in 0..4 {
        runs.push(h.start(def.clone(), json!({})).await);
    }
    h.idle().await;
    for run in runs {
        assert_eq!(h.detail(run).await.run.status, RunStatus::Succeeded);
    }
    assert_eq!(h.tools.count("gauge"), 16);
    let max = h.tools.max_in_flight.load(Ordering::SeqCst);
    assert!(max <= 3, "{max} node executions at once with a cap of 3");
    assert!(max >= 2, "nodes did run concurrently ({max})");
}

/// A node that brings its host down: each time, the supervisor stops the instance gracefully
/// (drain) but the node never finishes, so the drain abandons it. Those interruptions count like
/// expired leases: past `max_rescues` the run fails as `crash_loop` instead of running again.
#[tokio::test]
async fn graceful_stops_that_abandon_in_flight_nodes_end_in_crash_loop() {
    let h = harness_with(
        false,
        ExecutorConfig {
            poll_interval: Duration::from_millis(20),
            drain_timeout: Duration::from_millis(50),
            max_rescues: 2,
            ..cfg()
        },
        None,
    );
    // A generous attempt budget, so only the interruption count can stop the loop.
    let mut node = action("s", "slow", json!({}));
    node["retry"] = json!({"max_attempts": 10});
    let run = h
        .start(json!({"nodes": [node], "edges": []}), json!({}))
        .await;
    for i in 1..=3u32 {
        let shutdown = tokio_util::sync::CancellationToken::new();
        let handle = harness_peer_live(&h, 2).spawn(shutdown.clone(), None);
        tokio::time::timeout(LIMIT, h.tools.slow_started.notified())
            .await
            .unwrap();
        shutdown.cancel();
        tokio::time::timeout(LIMIT, handle).await.unwrap().unwrap();
        assert_eq!(h.store.lease_owner(run), None);
        assert_eq!(
            h.store.rescue_count(run),
            Some(i),
            "interruption {i} counted"
        );
    }
    // The next claim does not run the node again.
    h.idle().await;
    let d = h.detail(run).await;
    assert_eq!(d.run.status, RunStatus::Failed);
    assert_eq!(d.run.error.unwrap().code, "crash_loop");
    assert_eq!(h.tools.count("slow"), 3);
}

/// Expired leases (the instance was killed) and graceful interruptions add up to one count.
#[tokio::test]
async fn killed_instances_and_interrupted_drains_count_together_toward_crash_loop() {
    let h = harness_with(
        true,
        ExecutorConfig {
            max_rescues: 1,
            ..cfg()
        },
        None,
    );
    let run = h
        .start(
            json!({"nodes": [action("s", "slow", json!({}))], "edges": []}),
            json!({}),
        )
        .await;
    crash_mid_flight(&h, run).await;
    assert_eq!(h.store.rescue_count(run), Some(1));
    // Killed again: the rescuer itself fails it.
    let exec = harness_peer(&h);
    let crashed = tokio::spawn(async move { exec.run_until_idle().await });
    tokio::time::timeout(LIMIT, h.tools.slow_started.notified())
        .await
        .unwrap();
    crashed.abort();
    let _ = crashed.await;
    h.manual
        .as_ref()
        .unwrap()
        .advance(chrono::Duration::seconds(31));
    let report = h.exec.rescue_stale().await.unwrap();
    assert_eq!(report.abandoned.len(), 1);
    let d = h.detail(run).await;
    assert_eq!(d.run.status, RunStatus::Failed);
    assert_eq!(d.run.error.unwrap().code, "crash_loop");
    assert!(
        h.events
            .0
            .lock()
            .iter()
            .any(|e| e.kind == "run.finished" && e.data["error"]["code"] == "crash_loop")
    );
}

/// An executor on the harness' store with the real clock and a short drain.
fn harness_peer_live(h: &H, max_rescues: u32) -> Executor {
    Executor::with_sleeper(
        ExecutorDeps {
            runs: h.store.clone(),
            tools: h.tools.clone(),
            agents: None,
            events: h.events.clone(),
            clock: Arc::new(SystemClock),
        },
        ExecutorConfig {
            poll_interval: Duration::from_millis(20),
            drain_timeout: Duration::from_millis(50),
            max_rescues,
            ..cfg()
        },
        h.sleeper.clone(),
    )
}

fn slow_condition_cfg(budget_ms: u64) -> ExecutorConfig {
    let mut c = cfg();
    c.limits.condition_budget = Duration::from_millis(budget_ms);
    c
}

/// ~1M comprehension steps (seconds in a debug build): allowed only with nesting enabled.
fn slow_condition_pipeline() -> Value {
    json!({"nodes": [{"id": "t", "type": "trigger"},
                     {"id": "c", "type": "condition", "config": {"expression":
                        "input.l.all(a, input.l.all(b, a + b >= 0))"}},
                     action("after", "echo", json!({}))],
           "edges": [{"from": "t", "to": "c"}, {"from": "c", "to": "after", "when": true}]})
}

fn slow_condition_harness(budget_ms: u64) -> H {
    let mut c = slow_condition_cfg(budget_ms);
    c.limits.cel.max_comprehension_depth = 2;
    let mut h = harness_with(false, c.clone(), None);
    h.svc = std::mem::replace(
        &mut h.svc,
        PipelineService::new(
            h.store.clone(),
            h.store.clone(),
            h.events.clone(),
            None,
            Arc::new(SystemClock),
        ),
    )
    .with_limits(c.limits.clone(), c.cel_pool.clone());
    h
}

#[tokio::test(flavor = "current_thread")]
async fn a_condition_over_its_budget_times_out_without_blocking_the_runtime() {
    let h = slow_condition_harness(30);
    let input = json!({"l": (0..1000).collect::<Vec<i64>>()});
    let run = h.start(slow_condition_pipeline(), input).await;
    // On a single-threaded runtime, a ticker keeps ticking while the condition evaluates: the
    // evaluation is not on the runtime.
    let ticks = Arc::new(AtomicU32::new(0));
    let t = ticks.clone();
    let ticker = tokio::spawn(async move {
        loop {
            // The ticker's own pace is what is measured (the runtime stays free).
            tokio::time::sleep(Duration::from_millis(5)).await;
            t.fetch_add(1, Ordering::SeqCst);
        }
    });
    h.idle().await;
    ticker.abort();
    assert!(
        ticks.load(Ordering::SeqCst) >= 2,
        "the runtime kept running"
    );
    let c = h.node(run, "c").await;
    assert_eq!(c.status, NodeStatus::Failed);
    assert_eq!(c.error.unwrap().code, "timed_out");
    assert_eq!(h.detail(run).await.run.status, RunStatus::TimedOut);
    assert_eq!(h.tools.count("echo"), 0);
}

#[tokio::test]
async fn cancelling_a_run_abandons_its_condition_evaluation() {
    let h = slow_condition_harness(60_000);
    let input = json!({"l": (0..1000).collect::<Vec<i64>>()});
    let run = h.start(slow_condition_pipeline(), input).await;
    let exec = h.exec.clone();
    let driving = tokio::spawn(async move { exec.run_until_idle().await });
    tokio::time::timeout(LIMIT, async {
        while h.node(run, "c").await.status != NodeStatus::Running {
            tokio::task::yield_now().await;
        }
    })
    .await
    .unwrap();
    h.svc.cancel(h.owner, run).await.unwrap();
    tokio::time::timeout(LIMIT, driving)
        .await
        .expect("the cancel does not wait for the evaluation")
        .unwrap()
        .unwrap();
    assert_eq!(h.detail(run).await.run.status, RunStatus::Cancelled);
}

#[tokio::test]
async fn nested_comprehensions_and_deep_conditions_are_refused_when_stored() {
    let h = harness();
    let deep = format!("{}true{}", "(".repeat(300), ")".repeat(300));
    for expr in [
        deep,
        slow_condition_pipeline()["nodes"][1]["config"]["expression"]
            .as_str()
            .unwrap()
            .to_owned(),
    ] {
        let definition: PipelineDefinition = serde_json::from_value(json!({
            "nodes": [{"id": "t", "type": "trigger"}, {"id": "c", "type": "condition", "config": {"expression": expr}}],
            "edges": [{"from": "t", "to": "c"}]
        }))
        .unwrap();
        let err = h
            .svc
            .create(
                h.owner,
                CreatePipeline {
                    name: "p".into(),
                    description: None,
                    definition,
                },
            )
            .await
            .unwrap_err();
        assert_eq!(err.code(), "validation_failed");
        assert_eq!(err.details()[0].field, "/nodes/1/config/expression");
    }
}

#[tokio::test]
async fn an_output_nested_too_deep_fails_the_node_and_is_not_stored() {
    let h = harness();
    let mut deep = json!(1);
    for _ in 0..70 {
        deep = json!({"d": deep});
    }
    let run = h
        .start(
            json!({"nodes": [action("e", "echo", json!({"v": deep}))], "edges": []}),
            json!({}),
        )
        .await;
    h.idle().await;
    let e = h.node(run, "e").await;
    assert_eq!(e.status, NodeStatus::Failed);
    assert_eq!(e.error.unwrap().code, "output_too_deep");
    assert!(e.output.is_none());
    assert_eq!(h.detail(run).await.run.status, RunStatus::Failed);
}

#[tokio::test]
async fn an_output_too_large_fails_the_node() {
    let mut c = cfg();
    c.limits.max_output_bytes = 1000;
    let h = harness_with(false, c, None);
    let run = h
        .start(
            json!({"nodes": [{"id": "t", "type": "trigger"}, action("e", "echo", json!({"v": "{{input.s}}"}))],
                   "edges": [{"from": "t", "to": "e"}]}),
            json!({"s": "x".repeat(500)}),
        )
        .await;
    h.idle().await;
    // The trigger's output (the input, ~510 bytes) fits; echo's fits too. Now a larger one:
    assert_eq!(h.detail(run).await.run.status, RunStatus::Succeeded);
    let run = h
        .start(
            json!({"nodes": [{"id": "t", "type": "trigger"}, action("e", "echo", json!({"v": "{{input.s}}", "w": "{{input.s}}"}))],
                   "edges": [{"from": "t", "to": "e"}]}),
            json!({"s": "x".repeat(600)}),
        )
        .await;
    h.idle().await;
    let e = h.node(run, "e").await;
    assert_eq!(e.error.unwrap().code, "output_too_large");
}

#[tokio::test]
async fn fan_out_params_fail_the_node_before_the_tool_is_called() {
    let h = harness();
    let params: serde_json::Map<String, Value> = (0..60)
        .map(|i| (format!("k{i}"), json!("{{input.x}}")))
        .collect();
    let run = h
        .start(
            json!({"nodes": [{"id": "t", "type": "trigger"}, action("e", "echo", Value::Object(params))],
                   "edges": [{"from": "t", "to": "e"}]}),
            json!({"x": "y".repeat(100 * 1024)}),
        )
        .await;
    h.idle().await;
    let e = h.node(run, "e").await;
    assert_eq!(e.status, NodeStatus::Failed);
    assert_eq!(e.error.unwrap().code, "params_too_large");
    assert_eq!(h.tools.count("echo"), 0);
}

#[tokio::test]
async fn too_many_template_references_or_nodes_are_refused_when_stored() {
    let h = harness();
    let refs: Vec<Value> = (0..2000).map(|_| json!("{{input.x}}")).collect();
    let definition: PipelineDefinition = serde_json::from_value(json!({
        "nodes": [{"id": "t", "type": "trigger"}, action("e", "echo", json!({"list": refs}))],
        "edges": [{"from": "t", "to": "e"}]
    }))
    .unwrap();
    let err = h
        .svc
        .create(
            h.owner,
            CreatePipeline {
                name: "p".into(),
                description: None,
                definition,
            },
        )
        .await
        .unwrap_err();
    assert_eq!(err.details()[0].field, "/nodes/1/config/params");
    let nodes: Vec<Value> = (0..12_000)
        .map(|i| json!({"id": format!("n{i}"), "type": "parallel"}))
        .collect();
    let definition: PipelineDefinition =
        serde_json::from_value(json!({"nodes": nodes, "edges": []})).unwrap();
    let started = std::time::Instant::now();
    let err = h
        .svc
        .create(
            h.owner,
            CreatePipeline {
                name: "p".into(),
                description: None,
                definition,
            },
        )
        .await
        .unwrap_err();
    let fields: Vec<String> = err.details().into_iter().map(|p| p.field).collect();
    assert_eq!(fields, vec!["/nodes"]);
    assert!(started.elapsed() < Duration::from_secs(5));
}

/// The in-memory store behind a group-commit probe: records each batch of `apply_many` (its
/// run ids), holds the first batch open for a while (so transitions of other runs queue up
/// behind it), and can be told to fail every batch.
struct BatchProbe {
    inner: Arc<MemoryStore>,
    batches: Mutex<Vec<Vec<Uuid>>>,
    fail: AtomicBool,
}

#[async_trait]
impl gathering_domain::pipeline::RunRepository for BatchProbe {
    async fn create_run(
        &self,
        owner_id: Uuid,
        pipeline_id: Uuid,
        input: Value,
        now: chrono::DateTime<Utc>,
    ) -> Result<Option<gathering_domain::pipeline::Run>, RepoError> {
        self.inner
            .create_run(owner_id, pipeline_id, input, now)
            .await
    }
    async fn get_run(&self, owner_id: Uuid, run_id: Uuid) -> Result<Option<RunDetail>, RepoError> {
        self.inner.get_run(owner_id, run_id).await
    }
    async fn list_runs(
        &self,
        owner_id: Uuid,
        pipeline_id: Uuid,
        page: PageRequest,
    ) -> Result<Option<gathering_domain::Page<gathering_domain::pipeline::Run>>, RepoError> {
        self.inner.list_runs(owner_id, pipeline_id, page).await
    }
    async fn claim(
        &self,
        owner: Uuid,
        now: chrono::DateTime<Utc>,
        lease_until: chrono::DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<gathering_domain::pipeline::ClaimedRun>, RepoError> {
        self.inner.claim(owner, now, lease_until, limit).await
    }
    async fn heartbeat(
        &self,
        owner: Uuid,
        run_ids: &[Uuid],
        lease_until: chrono::DateTime<Utc>,
    ) -> Result<Vec<gathering_domain::pipeline::HeldLease>, RepoError> {
        self.inner.heartbeat(owner, run_ids, lease_until).await
    }
    async fn apply(
        &self,
        run_id: Uuid,
        owner: Uuid,
        nodes: &[NodeRun],
        commit: gathering_domain::pipeline::RunCommit,
    ) -> Result<(), RepoError> {
        self.apply_many(
            owner,
            &[gathering_domain::pipeline::RunTransition {
                run_id,
                nodes: nodes.to_vec(),
                commit,
            }],
        )
        .await?
        .pop()
        .unwrap()
    }
    async fn apply_many(
        &self,
        owner: Uuid,
        batch: &[gathering_domain::pipeline::RunTransition],
    ) -> Result<Vec<Result<(), RepoError>>, RepoError> {
        let first = {
            let mut b = self.batches.lock();
            b.push(batch.iter().map(|t| t.run_id).collect());
            b.len() == 1
        };
        if first {
            // Single-threaded runtime: every other ready driver runs (and submits) meanwhile.
            for _ in 0..200 {
                tokio::task::yield_now().await;
            }
        }
        if self.fail.load(Ordering::SeqCst) {
            return Err(RepoError::Unavailable("the database is away".into()));
        }
        self.inner.apply_many(owner, batch).await
    }
    async fn request_cancel(
        &self,
        owner_id: Uuid,
        run_id: Uuid,
        now: chrono::DateTime<Utc>,
    ) -> Result<Option<gathering_domain::pipeline::CancelOutcome>, RepoError> {
        self.inner.request_cancel(owner_id, run_id, now).await
    }
    async fn rescue_stale(
        &self,
        now: chrono::DateTime<Utc>,
        max_rescues: u32,
    ) -> Result<gathering_domain::pipeline::RescueReport, RepoError> {
        self.inner.rescue_stale(now, max_rescues).await
    }
}

/// Eight runs of a three-node chain, executed by an executor whose store is a [`BatchProbe`].
async fn probed_runs(fail: bool) -> (Arc<BatchProbe>, PipelineService, Uuid, Vec<Uuid>) {
    let store = Arc::new(MemoryStore::new());
    let probe = Arc::new(BatchProbe {
        inner: store.clone(),
        batches: Mutex::new(Vec::new()),
        fail: AtomicBool::new(fail),
    });
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let events = Arc::new(RecEvents::default());
    let svc = PipelineService::new(store.clone(), store, events.clone(), None, clock.clone());
    let exec = Executor::new(
        ExecutorDeps {
            runs: probe.clone(),
            tools: Arc::new(FakeTools::default()),
            agents: None,
            events,
            clock,
        },
        cfg(),
    );
    let owner = Uuid::now_v7();
    let definition: PipelineDefinition = serde_json::from_value(json!({
        "nodes": [{"id": "start", "type": "trigger"},
                  action("a", "echo", json!({"x": 1})),
                  action("b", "echo", json!({"y": "{{nodes.a.output.x}}"}))],
        "edges": [{"from": "start", "to": "a"}, {"from": "a", "to": "b"}]
    }))
    .unwrap();
    let p = svc
        .create(
            owner,
            CreatePipeline {
                name: "p".into(),
                description: None,
                definition,
            },
        )
        .await
        .unwrap();
    let mut runs = Vec::new();
    for _ in 0..8 {
        runs.push(svc.start_run(owner, p.id, json!({})).await.unwrap().id);
    }
    tokio::time::timeout(LIMIT, exec.run_until_idle())
        .await
        .unwrap()
        .unwrap();
    (probe, svc, owner, runs)
}

#[tokio::test(flavor = "current_thread")]
async fn transitions_of_concurrent_runs_are_committed_together() {
    let (probe, svc, owner, runs) = probed_runs(false).await;
    for run in &runs {
        let d = svc.get_run(owner, *run).await.unwrap();
        assert_eq!(d.run.status, RunStatus::Succeeded, "{:?}", d.run.error);
        assert_eq!(
            d.all_nodes()
                .iter()
                .find(|n| n.node_id == "b")
                .unwrap()
                .output,
            Some(json!({"y": 1})),
            "b ran after a's output was committed"
        );
    }
    let batches = probe.batches.lock().clone();
    let widest = batches.iter().map(Vec::len).max().unwrap();
    assert!(
        widest >= runs.len(),
        "the runs that queued behind the first commit went out in one batch: {batches:?}"
    );
    // Each run: start+a (1), a's success + b started (2), b + finish (3) — never more commits
    // than that, however they were grouped.
    let total: usize = batches.iter().map(Vec::len).sum();
    assert_eq!(total, runs.len() * 3, "{batches:?}");
}

#[tokio::test(flavor = "current_thread")]
async fn a_failed_batch_fails_each_waiter_and_leaves_its_runs_to_the_rescuer() {
    let (probe, svc, owner, runs) = probed_runs(true).await;
    assert!(!probe.batches.lock().is_empty());
    for run in &runs {
        let d = svc.get_run(owner, *run).await.unwrap();
        // Nothing was committed: still running under the (now idle) lease, no node recorded.
        assert_eq!(d.run.status, RunStatus::Running);
        assert!(
            d.all_nodes()
                .iter()
                .all(|n| n.status == NodeStatus::Pending),
            "{:?}",
            d.all_nodes()
        );
    }
}
