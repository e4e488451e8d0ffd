//! The durable executor.
//!
//! Any instance claims claimable runs (`RunRepository::claim`, `FOR UPDATE SKIP LOCKED` on
//! PostgreSQL) under a lease it keeps alive with heartbeats. For each claimed run a driver walks
//! the DAG: nodes whose predecessors all finished become ready; a ready node reachable only
//! through untaken edges is `skipped`; the others run concurrently (bounded per instance by a
//! semaphore), with retry/backoff (the node's `retry` policy is the only layer that retries an
//! agent or tool node: the agent runner makes a single provider attempt) and the circuit breaker
//! of the remote endpoint a network tool calls (`gathering_resilience::keys::tool`; pure built-in
//! tools and agents have none here — an agent's provider breaker sits in the LLM transport, so a
//! node passes through exactly one breaker). Every state change is persisted through
//! `RunRepository::apply_many` — the completion of a node and the start of the nodes it unblocks
//! go out together — and published as an event to the run's owner.
//!
//! Group commit: every driver and node task of an instance hands its transitions to the
//! instance's committer ([`Committer`]), which writes everything pending in ONE transaction and
//! commits once, then wakes each waiter with its own result. A waiter proceeds only once its
//! transition is committed (a node's children start after its success is durable; a cancel is
//! reported after the cancelled state is durable). A run whose lease was lost is refused alone.
//!
//! Delay nodes are durable timers: when only timers remain, the run is released with a due
//! time and the worker is free; whoever claims it when due continues. After a crash, completed
//! nodes are not run again (their outputs are read back); a node that was mid-flight runs again
//! with the same idempotency key (`run_id:node_id`).

use crate::condition;
use crate::limits::{Limits, depth_within, json_size_within};
use crate::pool::CelPool;
use crate::retry::{Sleeper, TokioSleeper, backoff};
use crate::template::{self, TemplateContext};
use chrono::{DateTime, Utc};
use futures::StreamExt;
use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
use gathering_domain::agents::{AgentError, AgentRequest, AgentRunner};
use gathering_domain::codes;
use gathering_domain::events::{Event, EventPublisher};
use gathering_domain::notify::ListenerEvent;
use gathering_domain::pipeline::{
    ClaimedRun, NodeRun, NodeStatus, NodeType, PipelineDefinition, RescueReport, RetryPolicy, Run,
    RunCommit, RunError, RunRepository, RunStatus, RunTransition,
};
use gathering_domain::tools::{ToolContext, ToolError, ToolInvoker};
use gathering_domain::{Clock, ErrorCode, RepoError};
use gathering_resilience::{BreakerConfig, Breakers, Outcome, keys};
use parking_lot::Mutex;
use serde_json::{Value, json};
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{Notify, Semaphore, broadcast, oneshot};
use tokio::task::{JoinHandle, JoinSet};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};
use uuid::Uuid;

/// NOTIFY channel telling executors a run was queued (payload: run id).
pub const RUN_QUEUED_CHANNEL: &str = "gathering_run_queued";
/// NOTIFY channel telling the executor holding a run to cancel it (payload: run id).
pub const RUN_CANCEL_CHANNEL: &str = "gathering_run_cancel";

#[derive(Debug, Clone)]
pub struct ExecutorConfig {
    /// Node executions (tool/agent calls) running at once on this instance.
    pub max_concurrent_nodes: usize,
    /// Runs driven at once on this instance.
    pub max_concurrent_runs: usize,
    /// Runs claimed per claim query.
    pub claim_batch: u32,
    pub lease_ttl: Duration,
    pub heartbeat_interval: Duration,
    /// How often to look for work when no NOTIFY arrives (timers come due, missed notifications).
    pub poll_interval: Duration,
    /// How often the rescuer looks for expired leases.
    pub rescue_interval: Duration,
    /// A run whose lease expired more often than this fails as `abandoned`.
    pub max_rescues: u32,
    /// `GATHERING__PIPELINE__BREAKER_FAILURES` / `..._BREAKER_COOLDOWN_SECS`.
    pub breaker_failures: u32,
    pub breaker_cooldown: Duration,
    pub max_breaker_targets: usize,
    /// The process-wide breaker registry (shared with the LLM transport and the scheduler);
    /// `None`: the executor builds its own from the three settings above.
    pub breakers: Option<Arc<Breakers>>,
    /// Graceful stop: how long in-flight nodes may finish before their runs are released.
    pub drain_timeout: Duration,
    /// Timeout of a node attempt without its own `timeout_ms`.
    pub default_node_timeout: Duration,
    /// Bounds on conditions, rendered templates and outputs.
    pub limits: Limits,
    /// Where conditions are evaluated (shared with the service's compile checks).
    pub cel_pool: CelPool,
    /// Group commit: most run transitions written in one transaction.
    pub commit_batch_max: usize,
    /// Group commit: a batch stops growing past this many bytes of node outputs and errors (a
    /// single transition larger than this still goes out, alone).
    pub commit_batch_max_bytes: usize,
}

impl Default for ExecutorConfig {
    fn default() -> Self {
        Self {
            max_concurrent_nodes: 64,
            max_concurrent_runs: 256,
            claim_batch: 32,
            lease_ttl: Duration::from_secs(30),
            heartbeat_interval: Duration::from_secs(10),
            poll_interval: Duration::from_secs(1),
            rescue_interval: Duration::from_secs(15),
            max_rescues: 3,
            breaker_failures: 5,
            breaker_cooldown: Duration::from_secs(30),
            max_breaker_targets: 1024,
            breakers: None,
            drain_timeout: Duration::from_secs(20),
            default_node_timeout: Duration::from_secs(300),
            limits: Limits::default(),
            cel_pool: CelPool::default(),
            commit_batch_max: 256,
            commit_batch_max_bytes: 8 * 1024 * 1024,
        }
    }
}

/// What the executor talks to.
#[derive(Clone)]
pub struct ExecutorDeps {
    pub runs: Arc<dyn RunRepository>,
    pub tools: Arc<dyn ToolInvoker>,
    /// `None`: agent nodes fail with "no agent runner configured".
    pub agents: Option<Arc<dyn AgentRunner>>,
    pub events: Arc<dyn EventPublisher>,
    pub clock: Arc<dyn Clock>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StopReason {
    Cancelled,
    LeaseLost,
}

#[derive(Clone)]
struct RunControl {
    stop: CancellationToken,
    reason: Arc<Mutex<Option<StopReason>>>,
}

impl RunControl {
    fn new() -> Self {
        Self {
            stop: CancellationToken::new(),
            reason: Arc::new(Mutex::new(None)),
        }
    }
    fn stop(&self, reason: StopReason) {
        {
            let mut r = self.reason.lock();
            if r.is_none() {
                *r = Some(reason);
            }
        }
        self.stop.cancel();
    }
    fn reason(&self) -> Option<StopReason> {
        *self.reason.lock()
    }
}

struct Inner {
    deps: ExecutorDeps,
    sleeper: Arc<dyn Sleeper>,
    breakers: Arc<Breakers>,
    cfg: ExecutorConfig,
    instance_id: Uuid,
    node_slots: Arc<Semaphore>,
    active: Mutex<HashMap<Uuid, RunControl>>,
    wake: Notify,
    drain: CancellationToken,
    committer: Committer,
}

/// Cheap to clone; all clones share one instance (breakers, slots, active runs).
#[derive(Clone)]
pub struct Executor {
    inner: Arc<Inner>,
}

impl Executor {
    pub fn new(deps: ExecutorDeps, cfg: ExecutorConfig) -> Self {
        Self::with_sleeper(deps, cfg, Arc::new(TokioSleeper))
    }

    /// Like [`Executor::new`] with the retry sleeper injected (tests move a manual clock).
    pub fn with_sleeper(
        deps: ExecutorDeps,
        cfg: ExecutorConfig,
        sleeper: Arc<dyn Sleeper>,
    ) -> Self {
        let breakers = cfg.breakers.clone().unwrap_or_else(|| {
            Breakers::new(
                BreakerConfig {
                    failures: cfg.breaker_failures.max(1),
                    cooldown: cfg.breaker_cooldown,
                    max_keys: cfg.max_breaker_targets,
                },
                Arc::clone(&deps.clock),
            )
        });
        Self {
            inner: Arc::new(Inner {
                node_slots: Arc::new(Semaphore::new(cfg.max_concurrent_nodes.max(1))),
                deps,
                sleeper,
                breakers,
                cfg,
                instance_id: Uuid::now_v7(),
                active: Mutex::new(HashMap::new()),
                wake: Notify::new(),
                drain: CancellationToken::new(),
                committer: Committer::default(),
            }),
        }
    }

    /// The lease owner id of this instance.
    pub fn instance_id(&self) -> Uuid {
        self.inner.instance_id
    }

    /// True once a graceful stop began.
    pub fn is_draining(&self) -> bool {
        self.inner.drain.is_cancelled()
    }

    /// Cancels a run this instance is driving (no-op otherwise). Called for NOTIFYs on
    /// [`RUN_CANCEL_CHANNEL`]; the run's cancel flag is already persisted by the requester.
    pub fn cancel_local(&self, run_id: Uuid) -> bool {
        let ctl = self.inner.active.lock().get(&run_id).cloned();
        match ctl {
            Some(ctl) => {
                ctl.stop(StopReason::Cancelled);
                true
            }
            None => false,
        }
    }

    /// Feeds one listener event (from the LISTEN/NOTIFY port) to the executor.
    pub fn handle_listener_event(&self, event: &ListenerEvent) {
        match event {
            ListenerEvent::Notification { channel, payload } if channel == RUN_CANCEL_CHANNEL => {
                if let Ok(id) = Uuid::parse_str(payload.trim()) {
                    self.cancel_local(id);
                }
            }
            ListenerEvent::Notification { channel, .. } if channel == RUN_QUEUED_CHANNEL => {
                self.inner.wake.notify_one();
            }
            ListenerEvent::Connected => self.inner.wake.notify_one(),
            _ => {}
        }
    }

    /// Claims and drives runs until none is claimable and none is in flight; answers how many
    /// runs were claimed. For tests and one-shot tools; the server uses [`Executor::spawn`].
    pub async fn run_until_idle(&self) -> Result<usize, RepoError> {
        let mut set = JoinSet::new();
        let mut total = 0;
        loop {
            total += self.claim_and_start(&mut set).await?;
            if set.is_empty() {
                break;
            }
            tokio::select! {
                _ = set.join_next() => {}
                _ = tokio::time::sleep(self.inner.cfg.heartbeat_interval) => self.heartbeat_once().await,
            }
        }
        Ok(total)
    }

    /// Requeues runs whose lease expired (their executor died); publishes `run.finished` for
    /// runs given up as `abandoned`.
    pub async fn rescue_stale(&self) -> Result<RescueReport, RepoError> {
        let now = self.inner.deps.clock.now();
        let report = self
            .inner
            .deps
            .runs
            .rescue_stale(now, self.inner.cfg.max_rescues)
            .await?;
        for (run_id, owner) in &report.abandoned {
            self.inner.deps.events.publish(Event::new(
                *owner,
                "run.finished",
                json!({"run_id": run_id, "status": "failed", "error": {"code": codes::CRASH_LOOP}}),
            ));
        }
        if !report.requeued.is_empty() {
            info!(
                count = report.requeued.len(),
                "requeued runs with expired leases"
            );
            self.inner.wake.notify_one();
        }
        Ok(report)
    }

    /// The server's loop: claims runs when notified (NOTIFY [`RUN_QUEUED_CHANNEL`] through
    /// `notifications`) or every `poll_interval`, heartbeats leases, rescues stale runs, and
    /// reacts to cancel NOTIFYs. When `shutdown` fires it stops claiming, lets in-flight nodes
    /// finish up to `drain_timeout`, releases the leases of unfinished runs and returns.
    pub fn spawn(
        &self,
        shutdown: CancellationToken,
        mut notifications: Option<broadcast::Receiver<ListenerEvent>>,
    ) -> JoinHandle<()> {
        let this = self.clone();
        tokio::spawn(async move {
            let cfg = this.inner.cfg.clone();
            let mut set = JoinSet::new();
            let mut heartbeat = tokio::time::interval(cfg.heartbeat_interval);
            let mut rescue = tokio::time::interval(cfg.rescue_interval);
            heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            rescue.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                let mut full_batch = false;
                match this.claim_and_start(&mut set).await {
                    Ok(n) => full_batch = n > 0 && n as u32 >= cfg.claim_batch,
                    Err(e) => warn!(error = %e, "claiming pipeline runs failed"),
                }
                if full_batch {
                    // More may be waiting; claim again without sleeping (unless shutting down).
                    if shutdown.is_cancelled() {
                        break;
                    }
                    while set.try_join_next().is_some() {}
                    continue;
                }
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = this.inner.wake.notified() => {}
                    _ = tokio::time::sleep(cfg.poll_interval) => {}
                    Some(_) = set.join_next(), if !set.is_empty() => {}
                    _ = heartbeat.tick() => this.heartbeat_once().await,
                    _ = rescue.tick() => {
                        if let Err(e) = this.rescue_stale().await {
                            warn!(error = %e, "rescuing stale runs failed");
                        }
                    }
                    ev = recv_opt(&mut notifications) => match ev {
                        Some(ev) => this.handle_listener_event(&ev),
                        None => notifications = None,
                    },
                }
            }
            // Graceful stop: drivers stop starting nodes, finish in-flight ones, release leases.
            this.inner.drain.cancel();
            let wait = async {
                loop {
                    tokio::select! {
                        next = set.join_next() => if next.is_none() { break },
                        _ = heartbeat.tick() => this.heartbeat_once().await,
                    }
                }
            };
            if tokio::time::timeout(cfg.drain_timeout + Duration::from_secs(5), wait)
                .await
                .is_err()
            {
                warn!("pipeline executor stopped before every run released its lease");
                set.abort_all();
            }
            info!("pipeline executor stopped");
        })
    }

    async fn claim_and_start(&self, set: &mut JoinSet<()>) -> Result<usize, RepoError> {
        let inner = &self.inner;
        if inner.drain.is_cancelled() {
            return Ok(0);
        }
        let free = inner
            .cfg
            .max_concurrent_runs
            .saturating_sub(inner.active.lock().len());
        if free == 0 {
            return Ok(0);
        }
        let limit = (free as u32).min(inner.cfg.claim_batch.max(1));
        let now = inner.deps.clock.now();
        let lease_until = now + chrono_dur(inner.cfg.lease_ttl);
        let claimed = inner
            .deps
            .runs
            .claim(inner.instance_id, now, lease_until, limit)
            .await?;
        let n = claimed.len();
        for c in claimed {
            let ctl = RunControl::new();
            inner.active.lock().insert(c.run.id, ctl.clone());
            let inner = Arc::clone(inner);
            set.spawn(async move {
                let run_id = c.run.id;
                Driver::new(Arc::clone(&inner), c, ctl).drive().await;
                inner.active.lock().remove(&run_id);
            });
        }
        Ok(n)
    }

    async fn heartbeat_once(&self) {
        let inner = &self.inner;
        let ids: Vec<Uuid> = inner.active.lock().keys().copied().collect();
        if ids.is_empty() {
            return;
        }
        let lease_until = inner.deps.clock.now() + chrono_dur(inner.cfg.lease_ttl);
        match inner
            .deps
            .runs
            .heartbeat(inner.instance_id, &ids, lease_until)
            .await
        {
            Ok(held) => {
                let held: HashMap<Uuid, bool> = held
                    .into_iter()
                    .map(|h| (h.run_id, h.cancel_requested))
                    .collect();
                let active = inner.active.lock();
                for id in ids {
                    let Some(ctl) = active.get(&id) else { continue };
                    match held.get(&id) {
                        None => ctl.stop(StopReason::LeaseLost),
                        Some(true) => ctl.stop(StopReason::Cancelled),
                        Some(false) => {}
                    }
                }
            }
            Err(e) => warn!(error = %e, "heartbeat of pipeline run leases failed"),
        }
    }
}

async fn recv_opt(rx: &mut Option<broadcast::Receiver<ListenerEvent>>) -> Option<ListenerEvent> {
    match rx {
        None => std::future::pending().await,
        Some(rx) => match rx.recv().await {
            Ok(ev) => Some(ev),
            // Missed some: treat as a reconnect (claim and heartbeat will resync).
            Err(broadcast::error::RecvError::Lagged(_)) => Some(ListenerEvent::Connected),
            Err(broadcast::error::RecvError::Closed) => None,
        },
    }
}

fn chrono_dur(d: Duration) -> chrono::Duration {
    chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX)
}

fn until(now: DateTime<Utc>, at: DateTime<Utc>) -> Duration {
    (at - now).to_std().unwrap_or(Duration::ZERO)
}

/// The result of one node execution (all its attempts).
struct NodeOutcome {
    attempts: i32,
    result: Result<Value, NodeFailure>,
}

#[derive(Debug, Clone)]
struct NodeFailure {
    error: RunError,
    timed_out: bool,
}

impl NodeFailure {
    fn new(code: &str, message: impl Into<String>) -> Self {
        Self {
            error: RunError::new(code, message),
            timed_out: code == "timed_out",
        }
    }
}

enum NodeCall {
    Tool { name: String, params: Value },
    Agent { agent_id: Uuid, prompt: String },
}

/// Drives one claimed run to its end, a durable timer, a release, or the loss of its lease.
struct Driver {
    inner: Arc<Inner>,
    run: Run,
    def: PipelineDefinition,
    /// Per node: (edge index, predecessor node index).
    in_edges: Vec<Vec<(usize, usize)>>,
    has_successors: Vec<bool>,
    state: Vec<NodeRun>,
    pending: Vec<NodeRun>,
    failure: Option<NodeFailure>,
    ctl: RunControl,
    first_start: bool,
    rescue_count: u32,
}

impl Driver {
    fn new(inner: Arc<Inner>, claimed: ClaimedRun, ctl: RunControl) -> Self {
        let ClaimedRun {
            run,
            definition: def,
            nodes,
            first_start,
            rescue_count,
        } = claimed;
        let index: HashMap<&str, usize> = def
            .nodes
            .iter()
            .enumerate()
            .map(|(i, n)| (n.id.as_str(), i))
            .collect();
        let mut in_edges = vec![Vec::new(); def.nodes.len()];
        let mut has_successors = vec![false; def.nodes.len()];
        for (e, edge) in def.edges.iter().enumerate() {
            if let (Some(&f), Some(&t)) =
                (index.get(edge.from.as_str()), index.get(edge.to.as_str()))
            {
                in_edges[t].push((e, f));
                has_successors[f] = true;
            }
        }
        let mut persisted: HashMap<String, NodeRun> =
            nodes.into_iter().map(|n| (n.node_id.clone(), n)).collect();
        let state = def
            .nodes
            .iter()
            .map(|n| match persisted.remove(&n.id) {
                // Mid-flight when the previous holder stopped: run it again (same idempotency key).
                Some(mut nr) if nr.status == NodeStatus::Running && nr.wake_at.is_none() => {
                    nr.status = NodeStatus::Pending;
                    nr
                }
                Some(nr) => nr,
                None => NodeRun {
                    node_id: n.id.clone(),
                    status: NodeStatus::Pending,
                    attempts: 0,
                    output: None,
                    error: None,
                    started_at: None,
                    finished_at: None,
                    wake_at: None,
                },
            })
            .collect();
        Self {
            inner,
            run,
            def,
            in_edges,
            has_successors,
            state,
            pending: Vec::new(),
            failure: None,
            ctl,
            first_start,
            rescue_count,
        }
    }

    fn now(&self) -> DateTime<Utc> {
        self.inner.deps.clock.now()
    }

    fn publish(&self, kind: &str, mut data: Value) {
        if let Value::Object(m) = &mut data {
            m.insert("run_id".into(), json!(self.run.id));
            m.insert("pipeline_id".into(), json!(self.run.pipeline_id));
        }
        self.inner
            .deps
            .events
            .publish(Event::new(self.run.owner_id, kind, data));
    }

    async fn drive(mut self) {
        if self.run.cancel_requested {
            return self
                .finish_aborted(
                    RunStatus::Cancelled,
                    RunError::new(codes::CANCELLED, "the run was cancelled"),
                )
                .await;
        }
        if self.rescue_count > self.inner.cfg.max_rescues {
            // Every execution of this run so far ended with its instance dying (or stopping
            // with nodes in flight): do not run it again.
            let error = RunError::new(
                codes::CRASH_LOOP,
                format!(
                    "the run was interrupted {} times while running (max_rescues {}); \
                     it is not run again",
                    self.rescue_count, self.inner.cfg.max_rescues
                ),
            );
            return self.finish_aborted(RunStatus::Failed, error).await;
        }
        if self.first_start {
            self.publish("run.started", json!({}));
        }
        let mut running: FuturesUnordered<BoxFuture<'static, (usize, NodeOutcome)>> =
            FuturesUnordered::new();
        let mut draining = false;
        let mut drain_deadline: Option<tokio::time::Instant> = None;
        loop {
            let now = self.now();
            if let Some(deadline) = self.run.deadline_at
                && now >= deadline
            {
                drop(running);
                let ms = self.def.timeout_ms.unwrap_or_default();
                return self
                    .finish_aborted(
                        RunStatus::TimedOut,
                        RunError::new(
                            codes::TIMED_OUT,
                            format!("the run exceeded its timeout of {ms} ms"),
                        ),
                    )
                    .await;
            }
            let mut to_spawn = Vec::new();
            if !draining && self.failure.is_none() {
                self.schedule(now, &mut to_spawn);
            }
            if let Some(f) = self.failure.clone() {
                drop(running);
                let status = if f.timed_out {
                    RunStatus::TimedOut
                } else {
                    RunStatus::Failed
                };
                return self.finish_aborted(status, f.error).await;
            }
            if running.is_empty()
                && to_spawn.is_empty()
                && self.state.iter().all(|n| n.status.is_terminal())
            {
                return self.finish_succeeded().await;
            }
            if !self.pending.is_empty() && !self.flush(RunCommit::Nodes).await {
                return;
            }
            for f in to_spawn {
                running.push(f);
            }
            let next_wake = self
                .state
                .iter()
                .filter(|n| n.status == NodeStatus::Running)
                .filter_map(|n| n.wake_at)
                .min();
            if running.is_empty() {
                if draining {
                    self.release(None).await;
                    return;
                }
                if let Some(wake) = next_wake {
                    // Only timers left: release the worker; the run is claimable again when due.
                    let due = match self.run.deadline_at {
                        Some(d) if d < wake => d,
                        _ => wake,
                    };
                    self.release(Some(due)).await;
                    return;
                }
                // Nothing runs, nothing is ready, not everything finished: cannot happen in a
                // validated DAG; fail rather than spin.
                return self
                    .finish_aborted(
                        RunStatus::Failed,
                        RunError::new(codes::INTERNAL, "the run cannot make progress"),
                    )
                    .await;
            }
            let timer_at = match (next_wake, self.run.deadline_at) {
                (Some(w), Some(d)) => Some(w.min(d)),
                (w, d) => w.or(d),
            };
            let timer = timer_at.map(|t| until(now, t));
            tokio::select! {
                Some((i, outcome)) = running.next() => self.on_outcome(i, outcome),
                _ = self.ctl.stop.cancelled() => {
                    drop(running);
                    match self.ctl.reason() {
                        Some(StopReason::LeaseLost) | None => {
                            warn!(run_id = %self.run.id, "lost the lease of a run; another instance continues it");
                            return;
                        }
                        Some(StopReason::Cancelled) => {
                            return self
                                .finish_aborted(RunStatus::Cancelled, RunError::new(codes::CANCELLED, "the run was cancelled"))
                                .await;
                        }
                    }
                }
                _ = sleep_opt(timer) => {}
                _ = self.inner.drain.cancelled(), if !draining => {
                    draining = true;
                    drain_deadline = Some(tokio::time::Instant::now() + self.inner.cfg.drain_timeout);
                }
                _ = sleep_until_opt(drain_deadline), if draining => {
                    // In-flight nodes did not finish in time: they run again on resume, and the
                    // interruption counts against `max_rescues` (a node that brings its host down
                    // through a supervisor's restart must not loop forever).
                    drop(running);
                    if self.flush(RunCommit::Interrupted).await {
                        debug!(run_id = %self.run.id, "released an interrupted run");
                    }
                    return;
                }
            }
        }
    }

    /// Starts every ready node; skips nodes reachable only through untaken edges; completes
    /// nodes that need no worker (trigger, parallel, condition, due timers). Repeats until
    /// nothing changes.
    fn schedule(
        &mut self,
        now: DateTime<Utc>,
        to_spawn: &mut Vec<BoxFuture<'static, (usize, NodeOutcome)>>,
    ) {
        loop {
            let mut changed = false;
            for i in 0..self.state.len() {
                if self.failure.is_some() {
                    return;
                }
                match self.state[i].status {
                    NodeStatus::Running => {
                        if let Some(wake) = self.state[i].wake_at
                            && wake <= now
                        {
                            let ms = self.def.nodes[i]
                                .config
                                .get("ms")
                                .cloned()
                                .unwrap_or(Value::Null);
                            self.state[i].wake_at = None;
                            self.succeed(i, json!({"delayed_ms": ms}), now);
                            changed = true;
                        }
                        continue;
                    }
                    NodeStatus::Pending => {}
                    _ => continue,
                }
                let preds_done = self.in_edges[i].iter().all(|(_, p)| {
                    matches!(
                        self.state[*p].status,
                        NodeStatus::Succeeded | NodeStatus::Skipped
                    )
                });
                if !preds_done {
                    continue;
                }
                changed = true;
                let activated = self.in_edges[i].is_empty()
                    || self.in_edges[i].iter().any(|(e, p)| {
                        let pred = &self.state[*p];
                        pred.status == NodeStatus::Succeeded
                            && match self.def.edges[*e].when {
                                None => true,
                                Some(w) => pred.output.as_ref().and_then(Value::as_bool) == Some(w),
                            }
                    });
                if !activated {
                    let n = &mut self.state[i];
                    n.status = NodeStatus::Skipped;
                    n.finished_at = Some(now);
                    self.pending.push(n.clone());
                    let id = n.node_id.clone();
                    self.publish("node.skipped", json!({"node_id": id}));
                    continue;
                }
                self.start(i, now, to_spawn);
            }
            if !changed {
                return;
            }
        }
    }

    /// Borrowed outputs of the succeeded nodes (templates copy only what they reference).
    fn outputs(&self) -> HashMap<&str, &Value> {
        const NULL: &Value = &Value::Null;
        self.state
            .iter()
            .filter(|n| n.status == NodeStatus::Succeeded)
            .map(|n| (n.node_id.as_str(), n.output.as_ref().unwrap_or(NULL)))
            .collect()
    }

    fn start(
        &mut self,
        i: usize,
        now: DateTime<Utc>,
        to_spawn: &mut Vec<BoxFuture<'static, (usize, NodeOutcome)>>,
    ) {
        let node = self.def.nodes[i].clone();
        let Some(kind) = node.kind() else {
            self.fail(
                i,
                NodeFailure::new(
                    codes::INVALID_NODE,
                    format!("unknown node type `{}`", node.node_type),
                ),
                now,
            );
            return;
        };
        match kind {
            NodeType::Trigger => {
                self.publish("node.started", json!({"node_id": node.id, "attempt": 1}));
                let input = self.run.input.clone();
                self.succeed(i, input, now);
            }
            NodeType::Parallel => {
                self.publish("node.started", json!({"node_id": node.id, "attempt": 1}));
                self.succeed(i, Value::Null, now);
            }
            NodeType::Condition => {
                self.publish("node.started", json!({"node_id": node.id, "attempt": 1}));
                let expr = node
                    .config
                    .get("expression")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_owned();
                // Copy only the outputs the expression can read.
                let reads = condition::nodes_read(&expr);
                let nodes: serde_json::Map<String, Value> = self
                    .state
                    .iter()
                    .filter(|n| n.status.is_terminal())
                    .filter(|n| reads.as_ref().is_none_or(|ids| ids.contains(&n.node_id)))
                    .map(|n| {
                        (
                            n.node_id.clone(),
                            json!({"output": n.output.clone().unwrap_or(Value::Null), "status": n.status.as_str()}),
                        )
                    })
                    .collect();
                let n = &mut self.state[i];
                n.status = NodeStatus::Running;
                n.attempts = 1;
                n.started_at = Some(now);
                n.error = None;
                self.pending.push(n.clone());
                // Evaluated on the CEL pool, never on the runtime; the deadline is the node's
                // timeout capped by the condition budget. Cancelling the run drops this future,
                // which abandons the evaluation (see `crate::pool`).
                let budget = node
                    .timeout_ms
                    .map(Duration::from_millis)
                    .unwrap_or(self.inner.cfg.default_node_timeout)
                    .min(self.inner.cfg.limits.condition_budget);
                let pool = self.inner.cfg.cel_pool.clone();
                let limits = self.inner.cfg.limits.cel;
                let input = self.run.input.clone();
                to_spawn.push(Box::pin(async move {
                    let result =
                        match condition::evaluate_on(&pool, &limits, budget, expr, input, nodes)
                            .await
                        {
                            Ok(b) => Ok(Value::Bool(b)),
                            Err(condition::EvalError::TimedOut) => Err(NodeFailure::new(
                                codes::TIMED_OUT,
                                format!(
                                    "the condition did not finish within {} ms",
                                    budget.as_millis()
                                ),
                            )),
                            Err(condition::EvalError::Failed(e)) => {
                                Err(NodeFailure::new(codes::CONDITION_FAILED, e))
                            }
                        };
                    (
                        i,
                        NodeOutcome {
                            attempts: 1,
                            result,
                        },
                    )
                }));
            }
            NodeType::Delay => {
                let ms = node.config.get("ms").and_then(Value::as_u64).unwrap_or(0);
                self.publish("node.started", json!({"node_id": node.id, "attempt": 1}));
                if ms == 0 {
                    self.succeed(i, json!({"delayed_ms": 0}), now);
                    return;
                }
                let n = &mut self.state[i];
                n.status = NodeStatus::Running;
                n.attempts = 1;
                n.started_at = Some(now);
                n.wake_at =
                    Some(now + chrono::Duration::milliseconds(ms.min(i64::MAX as u64) as i64));
                self.pending.push(n.clone());
            }
            NodeType::Action | NodeType::Agent => {
                let outputs = self.outputs();
                let max_rendered = self.inner.cfg.limits.max_rendered_bytes;
                let ctx = TemplateContext {
                    input: &self.run.input,
                    outputs: &outputs,
                };
                let call = if kind == NodeType::Action {
                    let name = node
                        .config
                        .get("tool")
                        .and_then(Value::as_str)
                        .unwrap_or("")
                        .to_owned();
                    let params = node
                        .config
                        .get("params")
                        .cloned()
                        .unwrap_or_else(|| json!({}));
                    template::render_bounded(&params, &ctx, max_rendered)
                        .map(|params| NodeCall::Tool { name, params })
                } else {
                    let agent_id = node
                        .config
                        .get("agent_id")
                        .and_then(Value::as_str)
                        .and_then(|s| Uuid::parse_str(s).ok())
                        .unwrap_or_default();
                    let prompt = node
                        .config
                        .get("prompt")
                        .and_then(Value::as_str)
                        .unwrap_or("");
                    template::render_text_bounded(prompt, &ctx, max_rendered)
                        .map(|prompt| NodeCall::Agent { agent_id, prompt })
                };
                let call = match call {
                    Ok(c) => c,
                    Err(e @ template::RenderError::TooLarge(_)) => {
                        self.fail(
                            i,
                            NodeFailure::new(codes::PARAMS_TOO_LARGE, e.to_string()),
                            now,
                        );
                        return;
                    }
                    Err(e) => {
                        self.fail(
                            i,
                            NodeFailure::new(codes::TEMPLATE_FAILED, e.to_string()),
                            now,
                        );
                        return;
                    }
                };
                let policy = node.retry.clone().unwrap_or_default();
                let prev_attempts = self.state[i].attempts;
                if prev_attempts > attempt_budget(&policy) {
                    // The one re-run past the budget (see `NodeExec::run`) was interrupted too.
                    self.fail(
                        i,
                        NodeFailure::new(
                            codes::ATTEMPTS_EXHAUSTED,
                            format!(
                                "interrupted during its last attempt and again during its re-run \
                                 ({prev_attempts} attempts started, max_attempts {})",
                                policy.max_attempts
                            ),
                        ),
                        now,
                    );
                    return;
                }
                let n = &mut self.state[i];
                n.status = NodeStatus::Running;
                n.started_at = Some(now);
                n.attempts = prev_attempts + 1;
                n.error = None;
                self.pending.push(n.clone());
                self.publish(
                    "node.started",
                    json!({"node_id": node.id, "attempt": prev_attempts + 1}),
                );
                let exec = NodeExec {
                    inner: Arc::clone(&self.inner),
                    run_id: self.run.id,
                    pipeline_id: self.run.pipeline_id,
                    owner_id: self.run.owner_id,
                    node_id: node.id.clone(),
                    policy,
                    timeout: node
                        .timeout_ms
                        .map(Duration::from_millis)
                        .unwrap_or(self.inner.cfg.default_node_timeout),
                    prev_attempts,
                    started_at: now,
                };
                to_spawn.push(Box::pin(async move { (i, exec.run(call).await) }));
            }
        }
    }

    /// `Err` when `output` is over the output bounds (checked before anything is stored:
    /// a value nested deeper than serde_json reads back would make the run unreadable).
    fn check_output(&self, output: &Value) -> Result<(), NodeFailure> {
        let l = &self.inner.cfg.limits;
        if !depth_within(output, l.max_output_depth) {
            return Err(NodeFailure::new(
                codes::OUTPUT_TOO_DEEP,
                format!("the output nests deeper than {} levels", l.max_output_depth),
            ));
        }
        if json_size_within(output, l.max_output_bytes).is_none() {
            return Err(NodeFailure::new(
                codes::OUTPUT_TOO_LARGE,
                format!("the output is larger than {} bytes", l.max_output_bytes),
            ));
        }
        Ok(())
    }

    fn succeed(&mut self, i: usize, output: Value, now: DateTime<Utc>) {
        if let Err(f) = self.check_output(&output) {
            return self.fail(i, f, now);
        }
        let n = &mut self.state[i];
        n.status = NodeStatus::Succeeded;
        if n.attempts == 0 {
            n.attempts = 1;
        }
        n.started_at.get_or_insert(now);
        n.finished_at = Some(now);
        n.output = Some(output);
        n.error = None;
        n.wake_at = None;
        self.pending.push(n.clone());
        let id = n.node_id.clone();
        self.publish("node.succeeded", json!({"node_id": id}));
    }

    fn fail(&mut self, i: usize, failure: NodeFailure, now: DateTime<Utc>) {
        let n = &mut self.state[i];
        n.status = NodeStatus::Failed;
        if n.attempts == 0 {
            n.attempts = 1;
        }
        n.started_at.get_or_insert(now);
        n.finished_at = Some(now);
        n.error = Some(failure.error.clone());
        self.pending.push(n.clone());
        let id = n.node_id.clone();
        self.publish(
            "node.failed",
            json!({"node_id": id, "error": failure.error}),
        );
        let mut f = failure;
        f.error.message = format!("node `{id}` failed: {}", f.error.message);
        self.failure = Some(f);
    }

    fn on_outcome(&mut self, i: usize, outcome: NodeOutcome) {
        let now = self.now();
        self.state[i].attempts = outcome.attempts;
        match outcome.result {
            Ok(v) => self.succeed(i, v, now),
            Err(f) => self.fail(i, f, now),
        }
    }

    /// Persists pending node transitions with `commit`; false when the run must be left alone
    /// (lease lost or storage failing: the lease expires and the rescuer requeues the run).
    async fn flush(&mut self, commit: RunCommit) -> bool {
        let nodes = std::mem::take(&mut self.pending);
        match Committer::commit(&self.inner, self.run.id, nodes, commit).await {
            Ok(()) => true,
            Err(RepoError::Conflict(_)) => {
                warn!(run_id = %self.run.id, "lost the lease of a run; stopping work on it");
                false
            }
            Err(e) => {
                warn!(run_id = %self.run.id, error = %e, "persisting run state failed; leaving the run to the rescuer");
                false
            }
        }
    }

    async fn release(&mut self, due_at: Option<DateTime<Utc>>) {
        if self.flush(RunCommit::Release { due_at }).await {
            debug!(run_id = %self.run.id, ?due_at, "released run");
        }
    }

    async fn finish_succeeded(mut self) {
        let output: serde_json::Map<String, Value> = self
            .state
            .iter()
            .enumerate()
            .filter(|(i, n)| !self.has_successors[*i] && n.status == NodeStatus::Succeeded)
            .map(|(_, n)| (n.node_id.clone(), n.output.clone().unwrap_or(Value::Null)))
            .collect();
        let now = self.now();
        let output = Value::Object(output);
        let max = self.inner.cfg.limits.max_run_output_bytes;
        if json_size_within(&output, max).is_none() {
            return self
                .finish_aborted(
                    RunStatus::Failed,
                    RunError::new(
                        codes::OUTPUT_TOO_LARGE,
                        format!("the run output is larger than {max} bytes"),
                    ),
                )
                .await;
        }
        if self
            .flush(RunCommit::Finish {
                status: RunStatus::Succeeded,
                output: Some(output),
                error: None,
                at: now,
            })
            .await
        {
            self.publish("run.finished", json!({"status": "succeeded"}));
        }
    }

    /// Ends the run as failed/timed out/cancelled: running and never-started nodes become
    /// `cancelled` (their futures were already dropped).
    async fn finish_aborted(mut self, status: RunStatus, error: RunError) {
        let now = self.now();
        for i in 0..self.state.len() {
            let n = &mut self.state[i];
            if matches!(n.status, NodeStatus::Running | NodeStatus::Pending) {
                let was_running = n.status == NodeStatus::Running;
                n.status = NodeStatus::Cancelled;
                n.finished_at = Some(now);
                n.wake_at = None;
                self.pending.push(n.clone());
                if was_running {
                    let id = n.node_id.clone();
                    self.publish("node.cancelled", json!({"node_id": id}));
                }
            }
        }
        if self
            .flush(RunCommit::Finish {
                status,
                output: None,
                error: Some(error.clone()),
                at: now,
            })
            .await
        {
            self.publish(
                "run.finished",
                json!({"status": status.as_str(), "error": error}),
            );
        }
    }
}

/// One submitted transition and its waiter.
struct Submitted {
    transition: RunTransition,
    bytes: usize,
    done: oneshot::Sender<Result<(), RepoError>>,
}

#[derive(Default)]
struct CommitQueue {
    pending: VecDeque<Submitted>,
    /// A committer task is running (it takes what is pending until nothing is).
    running: bool,
}

/// The instance's group committer. Transitions wait in a queue; one committer task at a time
/// takes everything pending (up to `commit_batch_max` transitions and `commit_batch_max_bytes`),
/// writes it with ONE `apply_many` (one transaction, one flush), answers every waiter, and
/// repeats while anything is pending: transitions that arrive during a commit form the next
/// batch. The task exists only while there is work, so there is nothing to stop on drain: a
/// drained executor's last transitions (releases) are committed like any other, and the task
/// ends when the queue is empty. The queue is bounded by the instance's concurrency: each run's
/// driver and each node task waits on at most one transition at a time.
#[derive(Default)]
struct Committer {
    queue: Mutex<CommitQueue>,
}

impl Committer {
    /// Submits one run's transition and waits until it is committed (or refused, or failed).
    async fn commit(
        inner: &Arc<Inner>,
        run_id: Uuid,
        nodes: Vec<NodeRun>,
        commit: RunCommit,
    ) -> Result<(), RepoError> {
        let bytes = transition_bytes(&nodes, &commit);
        let (done, answer) = oneshot::channel();
        let start = {
            let mut q = inner.committer.queue.lock();
            q.pending.push_back(Submitted {
                transition: RunTransition {
                    run_id,
                    nodes,
                    commit,
                },
                bytes,
                done,
            });
            !std::mem::replace(&mut q.running, true)
        };
        if start {
            tokio::spawn(Self::run(Arc::clone(inner)));
        }
        answer
            .await
            .unwrap_or_else(|_| Err(RepoError::Other("the transition committer stopped".into())))
    }

    /// Takes the next batch; `None` (and the task ends) when nothing is pending.
    fn next_batch(inner: &Inner) -> Option<Vec<Submitted>> {
        let mut q = inner.committer.queue.lock();
        if q.pending.is_empty() {
            q.running = false;
            return None;
        }
        let max = inner.cfg.commit_batch_max.max(1);
        let max_bytes = inner.cfg.commit_batch_max_bytes;
        let mut batch = Vec::new();
        let mut bytes = 0usize;
        while let Some(next) = q.pending.front() {
            if !batch.is_empty() && (batch.len() >= max || bytes + next.bytes > max_bytes) {
                break;
            }
            bytes += next.bytes;
            if let Some(s) = q.pending.pop_front() {
                batch.push(s);
            }
        }
        Some(batch)
    }

    async fn run(inner: Arc<Inner>) {
        // If this task dies (panic in a store), the next submission must start another one,
        // and whoever waits here must not wait forever.
        struct Reset<'a>(&'a Inner);
        impl Drop for Reset<'_> {
            fn drop(&mut self) {
                let mut q = self.0.committer.queue.lock();
                if q.running && std::thread::panicking() {
                    q.pending.clear();
                    q.running = false;
                }
            }
        }
        let _reset = Reset(&inner);
        while let Some(batch) = Self::next_batch(&inner) {
            let (transitions, waiters): (Vec<_>, Vec<_>) =
                batch.into_iter().map(|s| (s.transition, s.done)).unzip();
            match inner
                .deps
                .runs
                .apply_many(inner.instance_id, &transitions)
                .await
            {
                Ok(results) if results.len() == waiters.len() => {
                    for (done, r) in waiters.into_iter().zip(results) {
                        let _ = done.send(r);
                    }
                }
                Ok(_) => {
                    for done in waiters {
                        let _ = done.send(Err(RepoError::Other(
                            "the store answered a batch of transitions incompletely".into(),
                        )));
                    }
                }
                Err(e) => {
                    debug!(error = %e, count = waiters.len(), "a batch of run transitions failed");
                    for done in waiters {
                        let _ = done.send(Err(same_error(&e)));
                    }
                }
            }
        }
    }
}

/// A copy of a batch's error for each of its waiters (`RepoError` is not `Clone`).
fn same_error(e: &RepoError) -> RepoError {
    let text =
        |src: &(dyn std::error::Error + Send + Sync)| -> Box<dyn std::error::Error + Send + Sync> {
            src.to_string().into()
        };
    match e {
        RepoError::NotFound => RepoError::NotFound,
        RepoError::Conflict(s) => RepoError::Conflict(s.clone()),
        RepoError::Unavailable(src) => RepoError::Unavailable(text(src.as_ref())),
        RepoError::Other(src) => RepoError::Other(text(src.as_ref())),
        RepoError::Invalid(s) => RepoError::Invalid(s.clone()),
        RepoError::QuotaExceeded(s) => RepoError::QuotaExceeded(s.clone()),
    }
}

/// About how many bytes a transition sends (what the batch byte bound counts).
fn transition_bytes(nodes: &[NodeRun], commit: &RunCommit) -> usize {
    let json = |v: &Value| json_size_within(v, usize::MAX).unwrap_or(0);
    let nodes: usize = nodes
        .iter()
        .map(|n| {
            128 + n.node_id.len()
                + n.output.as_ref().map_or(0, json)
                + n.error
                    .as_ref()
                    .map_or(0, |e| e.message.len() + e.code.len())
        })
        .sum();
    let run = match commit {
        RunCommit::Finish { output, .. } => output.as_ref().map_or(0, json),
        _ => 0,
    };
    64 + nodes + run
}

async fn sleep_opt(d: Option<Duration>) {
    match d {
        Some(d) => tokio::time::sleep(d).await,
        None => std::future::pending().await,
    }
}

async fn sleep_until_opt(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// One action/agent node execution: attempts with breaker, timeout and backoff.
struct NodeExec {
    inner: Arc<Inner>,
    run_id: Uuid,
    pipeline_id: Uuid,
    owner_id: Uuid,
    node_id: String,
    policy: RetryPolicy,
    timeout: Duration,
    prev_attempts: i32,
    started_at: DateTime<Utc>,
}

/// The breaker of a call: the remote endpoint of a network tool; none for pure built-in tools
/// (their failures are the caller's) and none for agents (the provider's breaker, keyed by
/// endpoint and credential, is in the LLM transport).
fn target_of(call: &NodeCall) -> Option<String> {
    match call {
        NodeCall::Tool { name, params } => keys::tool(name, params),
        NodeCall::Agent { .. } => None,
    }
}

/// The attempt budget of a node: `max_attempts` (at least 1) as an attempt count.
fn attempt_budget(policy: &RetryPolicy) -> i32 {
    i32::try_from(policy.max_attempts.max(1)).unwrap_or(i32::MAX)
}

impl NodeExec {
    /// Runs attempts until one succeeds, a failure is not retryable, or the budget is spent.
    ///
    /// `max_attempts` bounds the attempts of a node across every execution of its run, crash
    /// and drain resumes included. `node_runs.attempts` counts the attempts *started* (it is
    /// persisted before each attempt begins, so an attempt in flight is already counted), and
    /// `prev_attempts` — that count as loaded on resume — is budget already spent. A node found
    /// mid-flight on resume runs again with the same idempotency key, and that re-run is a new
    /// attempt:
    /// - with budget left (`prev_attempts < max_attempts`) it is attempt `prev_attempts + 1`,
    ///   and retries continue only while the total stays within `max_attempts`;
    /// - if the interrupted attempt was the last one (`prev_attempts == max_attempts`) the node
    ///   still gets exactly one re-run (recorded as attempt `max_attempts + 1`, never retried),
    ///   so it is not failed over an attempt whose outcome nobody saw;
    /// - if that extra re-run is interrupted as well (`prev_attempts > max_attempts`) the driver
    ///   fails the node with `attempts_exhausted` without calling it again.
    async fn run(self, call: NodeCall) -> NodeOutcome {
        let target = target_of(&call);
        let max = attempt_budget(&self.policy);
        let mut attempts = self.prev_attempts;
        loop {
            // The driver persisted the first attempt of this execution; `record` the others.
            attempts += 1;
            let (result, retryable) = self.attempt(&call, target.as_deref()).await;
            match result {
                Ok(v) => {
                    return NodeOutcome {
                        attempts,
                        result: Ok(v),
                    };
                }
                Err(f) if retryable && attempts < max => {
                    let failed = u32::try_from(attempts).unwrap_or(u32::MAX);
                    let wait = backoff(&self.policy, failed);
                    self.inner.deps.events.publish(Event::new(
                        self.owner_id,
                        "node.retrying",
                        json!({"run_id": self.run_id, "pipeline_id": self.pipeline_id, "node_id": self.node_id,
                               "attempt": attempts, "error": f.error, "backoff_ms": wait.as_millis() as u64}),
                    ));
                    // The failed attempt, visible in GET /runs/{id} during the backoff.
                    self.record(attempts, &f.error).await;
                    self.inner.sleeper.sleep(wait).await;
                    // The next attempt counts as started before it is made, so a crash while it
                    // is in flight cannot hand it back to the budget on resume.
                    self.record(attempts + 1, &f.error).await;
                }
                Err(f) => {
                    return NodeOutcome {
                        attempts,
                        result: Err(f),
                    };
                }
            }
        }
    }

    /// Persists the node as running with `attempts` started and the last error; best effort
    /// (a lost lease or failing store surfaces on the driver's next commit).
    async fn record(&self, attempts: i32, error: &RunError) {
        let nr = NodeRun {
            node_id: self.node_id.clone(),
            status: NodeStatus::Running,
            attempts,
            output: None,
            error: Some(error.clone()),
            started_at: Some(self.started_at),
            finished_at: None,
            wake_at: None,
        };
        if let Err(e) =
            Committer::commit(&self.inner, self.run_id, vec![nr], RunCommit::Nodes).await
        {
            debug!(error = %e, "recording a retry failed");
        }
    }

    /// One attempt; answers the result and whether a failure may be retried.
    async fn attempt(
        &self,
        call: &NodeCall,
        target: Option<&str>,
    ) -> (Result<Value, NodeFailure>, bool) {
        let Ok(_slot) = self.inner.node_slots.acquire().await else {
            return (
                Err(NodeFailure::new(
                    codes::INTERNAL,
                    "executor is shutting down",
                )),
                false,
            );
        };
        let permit = match target.map(|t| (t, self.inner.breakers.acquire(t))) {
            None => None,
            Some((_, Ok(p))) => Some(p),
            Some((target, Err(open))) => {
                return (
                    Err(NodeFailure::new(
                        codes::CIRCUIT_OPEN,
                        format!(
                            "circuit for {target} is open after repeated failures; retry in {} s",
                            open.retry_after.as_secs().max(1)
                        ),
                    )),
                    false,
                );
            }
        };
        let key = format!("{}:{}", self.run_id, self.node_id);
        // The tool's own outcome for its endpoint's breaker, set when the tool answers.
        let outcome: Arc<Mutex<Outcome>> = Arc::new(Mutex::new(Outcome::Neutral));
        let fut: BoxFuture<'_, Result<Value, (NodeFailure, bool)>> = match call {
            NodeCall::Tool { name, params } => {
                let ctx = ToolContext {
                    user_id: self.owner_id,
                    is_admin: false,
                    idempotency_key: Some(key),
                    request_id: None,
                };
                let tools = Arc::clone(&self.inner.deps.tools);
                let name = name.clone();
                let params = params.clone();
                let caller_timeout = keys::caller_set_timeout(&params);
                let outcome = Arc::clone(&outcome);
                Box::pin(async move {
                    let result = tools.invoke(&ctx, &name, params).await;
                    *outcome.lock() =
                        keys::tool_outcome(caller_timeout, result.as_ref().map(|_| ()));
                    result.map_err(|e: ToolError| {
                        let retryable = e.retryable();
                        let msg = match &e {
                            ToolError::InvalidParams(d) => format!(
                                "invalid tool parameters: {}",
                                d.iter()
                                    .map(|p| format!("{} {}", p.field, p.problem))
                                    .collect::<Vec<_>>()
                                    .join("; ")
                            ),
                            other => other.to_string(),
                        };
                        (NodeFailure::new(e.code(), msg), retryable)
                    })
                })
            }
            NodeCall::Agent { agent_id, prompt } => {
                let Some(agents) = self.inner.deps.agents.clone() else {
                    return (
                        Err(NodeFailure::new(
                            codes::AGENT_UNAVAILABLE,
                            "no agent runner configured",
                        )),
                        false,
                    );
                };
                let req = AgentRequest {
                    owner_id: self.owner_id,
                    agent_id: *agent_id,
                    prompt: prompt.clone(),
                    session_id: None,
                    idempotency_key: Some(key),
                };
                Box::pin(async move {
                    match agents.run(req).await {
                        Ok(out) => Ok(json!({"text": out.text, "usage": out.usage})),
                        Err(e) => {
                            let retryable = e.retryable();
                            let code = match e {
                                AgentError::NotFound => codes::AGENT_NOT_FOUND,
                                AgentError::NotConfigured(_) => codes::AGENT_UNAVAILABLE,
                                AgentError::Provider { .. } => codes::AGENT_FAILED,
                            };
                            Err((NodeFailure::new(code, e.to_string()), retryable))
                        }
                    }
                })
            }
        };
        let result = tokio::time::timeout(self.timeout, fut).await;
        // Only what the tool said about its endpoint counts; the node's own timeout budget is
        // the caller's choice and never counts (the permit is given back as neutral).
        if let Some(p) = permit {
            p.record(match result {
                Ok(_) => *outcome.lock(),
                Err(_) => Outcome::Neutral,
            });
        }
        match result {
            Ok(Ok(v)) => (Ok(v), false),
            Ok(Err((f, retryable))) => (Err(f), retryable),
            Err(_) => (
                Err(NodeFailure::new(
                    codes::TIMED_OUT,
                    format!(
                        "the node exceeded its timeout of {} ms",
                        self.timeout.as_millis()
                    ),
                )),
                true,
            ),
        }
    }
}
