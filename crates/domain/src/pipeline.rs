//! Pipeline definitions, runs and node runs: types and ports (owned by the pipeline work).
//!
//! A pipeline is a versioned DAG definition owned by one user. A run executes one version of
//! it; every node of a run has a durable [`NodeRun`] state. [`PipelineRepository`] and
//! [`RunRepository`] are implemented on PostgreSQL by `gathering-store` and in memory by
//! `gathering-pipeline::memory` (for engine tests).

use crate::error::RepoError;
use crate::page::{Page, PageRequest};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

/// The node types a definition may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NodeType {
    Trigger,
    Agent,
    Condition,
    Action,
    Parallel,
    Delay,
}

impl NodeType {
    pub const ALL: [NodeType; 6] = [
        NodeType::Trigger,
        NodeType::Agent,
        NodeType::Condition,
        NodeType::Action,
        NodeType::Parallel,
        NodeType::Delay,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            NodeType::Trigger => "trigger",
            NodeType::Agent => "agent",
            NodeType::Condition => "condition",
            NodeType::Action => "action",
            NodeType::Parallel => "parallel",
            NodeType::Delay => "delay",
        }
    }

    pub fn parse(s: &str) -> Option<NodeType> {
        NodeType::ALL.into_iter().find(|t| t.as_str() == s)
    }
}

/// Retry policy of one node: `max_attempts` counts the first attempt.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RetryPolicy {
    pub max_attempts: u32,
    #[serde(default = "default_initial_backoff_ms")]
    pub initial_backoff_ms: u64,
    #[serde(default = "default_multiplier")]
    pub multiplier: f64,
    #[serde(default = "default_max_backoff_ms")]
    pub max_backoff_ms: u64,
}

fn default_initial_backoff_ms() -> u64 {
    100
}
fn default_multiplier() -> f64 {
    2.0
}
fn default_max_backoff_ms() -> u64 {
    10_000
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 1,
            initial_backoff_ms: default_initial_backoff_ms(),
            multiplier: default_multiplier(),
            max_backoff_ms: default_max_backoff_ms(),
        }
    }
}

/// One node of a definition. `node_type` stays a string on the wire so an unknown type is a
/// validation problem (422 with a pointer), not a body-parsing failure.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Node {
    pub id: String,
    #[serde(rename = "type")]
    pub node_type: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default)]
    pub config: Value,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<RetryPolicy>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
}

impl Node {
    /// The parsed type; `None` for an unknown type (validation rejects those).
    pub fn kind(&self) -> Option<NodeType> {
        NodeType::parse(&self.node_type)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Edge {
    pub from: String,
    pub to: String,
    /// Only on edges leaving a `condition`: the edge is taken when the condition's output equals it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub when: Option<bool>,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct PipelineDefinition {
    #[serde(default)]
    pub nodes: Vec<Node>,
    #[serde(default)]
    pub edges: Vec<Edge>,
    /// Whole-run timeout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Pipeline {
    pub id: Uuid,
    pub owner_id: Uuid,
    pub name: String,
    pub description: Option<String>,
    /// Starts at 1; every update stores a new version. A run records the version it ran.
    pub version: i32,
    pub definition: PipelineDefinition,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct NewPipeline {
    pub owner_id: Uuid,
    pub name: String,
    pub description: Option<String>,
    /// Must have passed validation.
    pub definition: PipelineDefinition,
}

/// A partial update; `None` keeps the current value. Any update creates a new version.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct PipelineUpdate {
    pub name: Option<String>,
    pub description: Option<Option<String>>,
    /// Must have passed validation.
    pub definition: Option<PipelineDefinition>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    Queued,
    Running,
    Succeeded,
    Failed,
    Cancelled,
    TimedOut,
}

impl RunStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Queued => "queued",
            RunStatus::Running => "running",
            RunStatus::Succeeded => "succeeded",
            RunStatus::Failed => "failed",
            RunStatus::Cancelled => "cancelled",
            RunStatus::TimedOut => "timed_out",
        }
    }
    pub fn parse(s: &str) -> Option<RunStatus> {
        [
            RunStatus::Queued,
            RunStatus::Running,
            RunStatus::Succeeded,
            RunStatus::Failed,
            RunStatus::Cancelled,
            RunStatus::TimedOut,
        ]
        .into_iter()
        .find(|t| t.as_str() == s)
    }
    pub fn is_terminal(self) -> bool {
        !matches!(self, RunStatus::Queued | RunStatus::Running)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NodeStatus {
    Pending,
    Running,
    Succeeded,
    Failed,
    Skipped,
    Cancelled,
}

impl NodeStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            NodeStatus::Pending => "pending",
            NodeStatus::Running => "running",
            NodeStatus::Succeeded => "succeeded",
            NodeStatus::Failed => "failed",
            NodeStatus::Skipped => "skipped",
            NodeStatus::Cancelled => "cancelled",
        }
    }
    pub fn parse(s: &str) -> Option<NodeStatus> {
        [
            NodeStatus::Pending,
            NodeStatus::Running,
            NodeStatus::Succeeded,
            NodeStatus::Failed,
            NodeStatus::Skipped,
            NodeStatus::Cancelled,
        ]
        .into_iter()
        .find(|t| t.as_str() == s)
    }
    pub fn is_terminal(self) -> bool {
        !matches!(self, NodeStatus::Pending | NodeStatus::Running)
    }
}

/// Error of a run or node: a stable code (`tool_failed`, `timed_out`, `circuit_open`,
/// `cancelled`, …) and a message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunError {
    pub code: String,
    pub message: String,
}

impl RunError {
    pub fn new(code: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            code: code.into(),
            message: message.into(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Run {
    pub id: Uuid,
    pub pipeline_id: Uuid,
    pub pipeline_version: i32,
    pub owner_id: Uuid,
    pub status: RunStatus,
    pub input: Value,
    pub output: Option<Value>,
    pub error: Option<RunError>,
    pub created_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    /// Set when the run first starts (from the definition's `timeout_ms`).
    pub deadline_at: Option<DateTime<Utc>>,
    pub cancel_requested: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeRun {
    pub node_id: String,
    pub status: NodeStatus,
    pub attempts: i32,
    pub output: Option<Value>,
    pub error: Option<RunError>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    /// A `delay` node that is waiting: when it is due.
    pub wake_at: Option<DateTime<Utc>>,
}

/// A run with the states of its nodes (nodes never started have no row).
#[derive(Debug, Clone, PartialEq)]
pub struct RunDetail {
    pub run: Run,
    pub nodes: Vec<NodeRun>,
    /// Node ids of the version the run executes, in definition order.
    pub node_order: Vec<String>,
}

impl RunDetail {
    /// Every node of the run's version in definition order; nodes never started are `pending`.
    pub fn all_nodes(&self) -> Vec<NodeRun> {
        let mut out: Vec<NodeRun> = self
            .node_order
            .iter()
            .map(|id| {
                self.nodes
                    .iter()
                    .find(|n| &n.node_id == id)
                    .cloned()
                    .unwrap_or_else(|| NodeRun {
                        node_id: id.clone(),
                        status: NodeStatus::Pending,
                        attempts: 0,
                        output: None,
                        error: None,
                        started_at: None,
                        finished_at: None,
                        wake_at: None,
                    })
            })
            .collect();
        for n in &self.nodes {
            if !self.node_order.contains(&n.node_id) {
                out.push(n.clone());
            }
        }
        out
    }
}

/// A run an executor claimed: the run, the definition of the version it runs, and the node
/// states persisted so far (for resume).
#[derive(Debug, Clone, PartialEq)]
pub struct ClaimedRun {
    pub run: Run,
    pub definition: PipelineDefinition,
    pub nodes: Vec<NodeRun>,
    /// True when this claim moved the run out of `queued` for the first time.
    pub first_start: bool,
    /// How often an execution of this run ended without finishing it or reaching a timer: its
    /// lease expired (the instance died) or a graceful stop interrupted nodes in flight. Over
    /// the executor's `max_rescues` the run fails as `crash_loop` instead of running again.
    pub rescue_count: u32,
}

/// What happens to the run row together with a batch of node transitions.
#[derive(Debug, Clone, PartialEq)]
pub enum RunCommit {
    /// Only node transitions.
    Nodes,
    /// The run ends; its lease is released.
    Finish {
        status: RunStatus,
        output: Option<Value>,
        error: Option<RunError>,
        at: DateTime<Utc>,
    },
    /// Release the lease; the run becomes claimable again at `due_at` (now when `None`):
    /// durable timers (delay nodes) and graceful shutdown.
    Release { due_at: Option<DateTime<Utc>> },
    /// Release the lease, claimable now, and count an interruption (`rescue_count + 1`): a
    /// graceful stop that had to abandon nodes in flight. A node that takes its host down with it
    /// must not be re-run forever through restarts.
    Interrupted,
}

/// One run's transition inside a batch ([`RunRepository::apply_many`]): node states to upsert
/// and what happens to the run row, exactly the arguments of [`RunRepository::apply`].
#[derive(Debug, Clone, PartialEq)]
pub struct RunTransition {
    pub run_id: Uuid,
    pub nodes: Vec<NodeRun>,
    pub commit: RunCommit,
}

/// Outcome of a cancel request.
#[derive(Debug, Clone, PartialEq)]
pub enum CancelOutcome {
    /// An executor holds the run: it was told through the flag (and the caller's NOTIFY).
    Requested,
    /// Nobody was running it (queued or waiting on a timer): it is now `cancelled`.
    CancelledNow(Box<Run>),
    /// The run had already ended.
    AlreadyFinished(RunStatus),
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct RescueReport {
    /// Runs whose lease expired and that are claimable again.
    pub requeued: Vec<Uuid>,
    /// Runs that were rescued too often and are now `failed` (`crash_loop`): (run id, owner id).
    pub abandoned: Vec<(Uuid, Uuid)>,
}

/// A lease an executor still holds after a heartbeat.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeldLease {
    pub run_id: Uuid,
    pub cancel_requested: bool,
}

/// Owner-scoped pipelines with versioning. Every method takes the owner: another user's id
/// behaves as absent.
#[async_trait]
pub trait PipelineRepository: Send + Sync {
    async fn create(&self, new: NewPipeline, now: DateTime<Utc>) -> Result<Pipeline, RepoError>;
    async fn get(&self, owner_id: Uuid, id: Uuid) -> Result<Option<Pipeline>, RepoError>;
    /// Newest first, bounded by `page`.
    async fn list(&self, owner_id: Uuid, page: PageRequest) -> Result<Page<Pipeline>, RepoError>;
    /// Stores a new version; `None` when the pipeline does not exist for this owner.
    async fn update(
        &self,
        owner_id: Uuid,
        id: Uuid,
        update: PipelineUpdate,
        now: DateTime<Utc>,
    ) -> Result<Option<Pipeline>, RepoError>;
    /// Deletes the pipeline, its versions and its runs; false when absent.
    async fn delete(&self, owner_id: Uuid, id: Uuid) -> Result<bool, RepoError>;
}

/// Durable runs and node states, claimed by executors under a lease.
#[async_trait]
pub trait RunRepository: Send + Sync {
    /// Creates a `queued` run of the pipeline's current version; `None` when the pipeline does
    /// not exist for this owner.
    async fn create_run(
        &self,
        owner_id: Uuid,
        pipeline_id: Uuid,
        input: Value,
        now: DateTime<Utc>,
    ) -> Result<Option<Run>, RepoError>;

    async fn get_run(&self, owner_id: Uuid, run_id: Uuid) -> Result<Option<RunDetail>, RepoError>;

    /// Runs of one pipeline, newest first; `None` when the pipeline is not the owner's.
    async fn list_runs(
        &self,
        owner_id: Uuid,
        pipeline_id: Uuid,
        page: PageRequest,
    ) -> Result<Option<Page<Run>>, RepoError>;

    /// Claims up to `limit` claimable runs (queued, released, or due timers) with
    /// `FOR UPDATE SKIP LOCKED`: marks them running under a lease held by `owner` until
    /// `lease_until`, and sets `started_at`/`deadline_at` on first start.
    async fn claim(
        &self,
        owner: Uuid,
        now: DateTime<Utc>,
        lease_until: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<ClaimedRun>, RepoError>;

    /// Extends the leases `owner` still holds among `run_ids`; answers those still held (a run
    /// missing from the answer was lost: stop working on it).
    async fn heartbeat(
        &self,
        owner: Uuid,
        run_ids: &[Uuid],
        lease_until: DateTime<Utc>,
    ) -> Result<Vec<HeldLease>, RepoError>;

    /// Upserts node states and applies `commit` to the run, in ONE round trip, only while
    /// `owner` holds the lease; `RepoError::Conflict("lease")` when it does not.
    async fn apply(
        &self,
        run_id: Uuid,
        owner: Uuid,
        nodes: &[NodeRun],
        commit: RunCommit,
    ) -> Result<(), RepoError>;

    /// Applies the transitions of several runs in ONE transaction (one commit, durable before
    /// it answers, as `apply`), each as `apply` would and in the order given (so the transitions
    /// of one run keep their order). Answers one result per transition: a run whose lease
    /// `owner` does not hold gets `Conflict("lease")` while the others still commit. `Err`
    /// when the batch as a whole failed (nothing of it is committed).
    ///
    /// The default applies them one by one (one commit each); stores override it.
    async fn apply_many(
        &self,
        owner: Uuid,
        batch: &[RunTransition],
    ) -> Result<Vec<Result<(), RepoError>>, RepoError> {
        let mut out = Vec::with_capacity(batch.len());
        for t in batch {
            out.push(
                self.apply(t.run_id, owner, &t.nodes, t.commit.clone())
                    .await,
            );
        }
        Ok(out)
    }

    /// Records a cancel request of the owner's run (see [`CancelOutcome`]).
    async fn request_cancel(
        &self,
        owner_id: Uuid,
        run_id: Uuid,
        now: DateTime<Utc>,
    ) -> Result<Option<CancelOutcome>, RepoError>;

    /// Requeues runs whose lease expired before `now` (counting a rescue); a run rescued more
    /// than `max_rescues` times fails as `crash_loop` instead.
    async fn rescue_stale(
        &self,
        now: DateTime<Utc>,
        max_rescues: u32,
    ) -> Result<RescueReport, RepoError>;
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn definition_round_trips_through_json_with_wire_names() {
        let json = serde_json::json!({
            "nodes": [{"id": "a", "type": "trigger", "config": {}},
                      {"id": "b", "type": "action", "config": {"tool": "calculator", "params": {}},
                       "retry": {"max_attempts": 3}, "timeout_ms": 500}],
            "edges": [{"from": "a", "to": "b"}],
            "timeout_ms": 1000
        });
        let def: PipelineDefinition = serde_json::from_value(json.clone()).unwrap();
        assert_eq!(def.nodes[1].kind(), Some(NodeType::Action));
        assert_eq!(def.nodes[1].retry.as_ref().unwrap().initial_backoff_ms, 100);
        let back = serde_json::to_value(&def).unwrap();
        assert_eq!(back["nodes"][1]["type"], "action");
        assert_eq!(back["timeout_ms"], 1000);
    }

    #[test]
    fn statuses_parse_their_own_names() {
        for s in [
            "queued",
            "running",
            "succeeded",
            "failed",
            "cancelled",
            "timed_out",
        ] {
            assert_eq!(RunStatus::parse(s).unwrap().as_str(), s);
        }
        for s in [
            "pending",
            "running",
            "succeeded",
            "failed",
            "skipped",
            "cancelled",
        ] {
            assert_eq!(NodeStatus::parse(s).unwrap().as_str(), s);
        }
        assert!(RunStatus::TimedOut.is_terminal());
        assert!(!NodeStatus::Running.is_terminal());
    }
}
