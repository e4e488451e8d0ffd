//! Schedules and executions: types and ports (owned by the scheduler work).
//!
//! A schedule fires on a cron pattern (in its timezone) or every `interval_secs`. Each
//! occurrence becomes exactly one [`Execution`] row, created in the same transaction that
//! advances the schedule's `next_run_at` (see [`ScheduleRepository::claim_due`]).

use crate::error::RepoError;
use crate::page::{Page, PageRequest};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

/// The NOTIFY channel on which schedule changes (create, update, delete, run-now) are announced,
/// so every scheduler instance recomputes when to wake.
pub const SCHEDULES_CHANGED_CHANNEL: &str = "gathering_schedules_changed";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ActionType {
    RunTask,
    ExecutePipeline,
    SendNotification,
    CallApi,
}

impl ActionType {
    pub const ALL: [ActionType; 4] = [
        ActionType::RunTask,
        ActionType::ExecutePipeline,
        ActionType::SendNotification,
        ActionType::CallApi,
    ];
    pub fn as_str(self) -> &'static str {
        match self {
            ActionType::RunTask => "run_task",
            ActionType::ExecutePipeline => "execute_pipeline",
            ActionType::SendNotification => "send_notification",
            ActionType::CallApi => "call_api",
        }
    }
    pub fn parse(s: &str) -> Option<ActionType> {
        ActionType::ALL.into_iter().find(|a| a.as_str() == s)
    }
}

/// What happens to occurrences missed while no instance was running.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MissedRuns {
    /// None of them runs; the next one is on time.
    #[default]
    Skip,
    /// Exactly one catch-up execution, then on time.
    RunOnce,
}

impl MissedRuns {
    pub fn as_str(self) -> &'static str {
        match self {
            MissedRuns::Skip => "skip",
            MissedRuns::RunOnce => "run_once",
        }
    }
    pub fn parse(s: &str) -> Option<MissedRuns> {
        match s {
            "skip" => Some(MissedRuns::Skip),
            "run_once" => Some(MissedRuns::RunOnce),
            _ => None,
        }
    }
}

/// What happens to an occurrence whose previous execution is still running.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OverlapPolicy {
    /// Recorded as `skipped`, not started.
    #[default]
    Skip,
    /// Started anyway.
    Allow,
}

impl OverlapPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            OverlapPolicy::Skip => "skip",
            OverlapPolicy::Allow => "allow",
        }
    }
    pub fn parse(s: &str) -> Option<OverlapPolicy> {
        match s {
            "skip" => Some(OverlapPolicy::Skip),
            "allow" => Some(OverlapPolicy::Allow),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExecutionStatus {
    Running,
    Succeeded,
    Failed,
    Skipped,
    /// Its instance stopped while it ran; never re-run automatically.
    Interrupted,
}

impl ExecutionStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            ExecutionStatus::Running => "running",
            ExecutionStatus::Succeeded => "succeeded",
            ExecutionStatus::Failed => "failed",
            ExecutionStatus::Skipped => "skipped",
            ExecutionStatus::Interrupted => "interrupted",
        }
    }
    pub fn parse(s: &str) -> Option<ExecutionStatus> {
        match s {
            "running" => Some(ExecutionStatus::Running),
            "succeeded" => Some(ExecutionStatus::Succeeded),
            "failed" => Some(ExecutionStatus::Failed),
            "skipped" => Some(ExecutionStatus::Skipped),
            "interrupted" => Some(ExecutionStatus::Interrupted),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Schedule {
    pub id: Uuid,
    pub owner_id: Uuid,
    pub name: String,
    /// 5-field cron pattern, exclusive with `interval_secs`.
    pub cron: Option<String>,
    pub interval_secs: Option<i64>,
    /// IANA name; `None` = UTC.
    pub timezone: Option<String>,
    pub action_type: ActionType,
    pub action_config: Value,
    pub enabled: bool,
    pub missed_runs: MissedRuns,
    pub overlap: OverlapPolicy,
    pub max_executions: Option<i64>,
    pub execution_count: i64,
    /// `None` when the schedule will never fire again.
    pub next_run_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct NewSchedule {
    pub owner_id: Uuid,
    pub name: String,
    pub cron: Option<String>,
    pub interval_secs: Option<i64>,
    pub timezone: Option<String>,
    pub action_type: ActionType,
    pub action_config: Value,
    pub enabled: bool,
    pub missed_runs: MissedRuns,
    pub overlap: OverlapPolicy,
    pub max_executions: Option<i64>,
    pub next_run_at: Option<DateTime<Utc>>,
}

/// A full replacement of a schedule's editable fields (the service merges a PATCH into the
/// current schedule, validates it and recomputes `next_run_at`).
#[derive(Debug, Clone, PartialEq)]
pub struct ScheduleUpdate {
    pub name: String,
    pub cron: Option<String>,
    pub interval_secs: Option<i64>,
    pub timezone: Option<String>,
    pub action_type: ActionType,
    pub action_config: Value,
    pub enabled: bool,
    pub missed_runs: MissedRuns,
    pub overlap: OverlapPolicy,
    pub max_executions: Option<i64>,
    pub next_run_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Execution {
    pub id: Uuid,
    pub schedule_id: Uuid,
    pub scheduled_for: DateTime<Utc>,
    pub status: ExecutionStatus,
    pub started_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    pub result: Option<Value>,
    pub error: Option<String>,
    /// The scheduler instance that claimed it.
    pub instance_id: Uuid,
    /// The pipeline run it started (`execute_pipeline`).
    pub run_id: Option<Uuid>,
}

/// The end of one execution, for [`ScheduleRepository::finish_executions`].
#[derive(Debug, Clone, PartialEq)]
pub struct ExecutionFinish {
    pub execution_id: Uuid,
    pub status: ExecutionStatus,
    pub result: Option<Value>,
    pub error: Option<String>,
    pub run_id: Option<Uuid>,
    pub finished_at: DateTime<Utc>,
}

/// An execution to perform now, with the schedule as it was when claimed.
#[derive(Debug, Clone, PartialEq)]
pub struct ClaimedExecution {
    pub execution: Execution,
    pub schedule: Schedule,
}

/// What claiming does with one due schedule; decided by a [`ClaimPlanner`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClaimPlan {
    /// The occurrence to execute, if any (`None`: every due occurrence is skipped).
    pub run: Option<DateTime<Utc>>,
    /// The schedule's new `next_run_at` (`None`: it never fires again).
    pub next_run_at: Option<DateTime<Utc>>,
}

/// Computes, inside the claiming transaction, which occurrence of a due schedule runs and when
/// it is next due (timing and the `missed_runs` policy live in the scheduler crate).
pub trait ClaimPlanner: Send + Sync {
    fn plan(&self, schedule: &Schedule, now: DateTime<Utc>) -> ClaimPlan;
}

/// The outcome of one claiming transaction.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ClaimOutcome {
    /// Inserted as `running`: the caller performs them.
    pub to_run: Vec<ClaimedExecution>,
    /// Recorded as `skipped` (overlap policy).
    pub skipped: Vec<Execution>,
    /// How many due schedules were examined (a full batch means more may be due).
    pub examined: usize,
}

#[async_trait]
pub trait ScheduleRepository: Send + Sync {
    async fn create(&self, new: NewSchedule) -> Result<Schedule, RepoError>;
    /// The schedule if `owner` owns it.
    async fn get(&self, owner: Uuid, id: Uuid) -> Result<Option<Schedule>, RepoError>;
    async fn list(&self, owner: Uuid, page: PageRequest) -> Result<Page<Schedule>, RepoError>;
    async fn update(
        &self,
        owner: Uuid,
        id: Uuid,
        update: ScheduleUpdate,
    ) -> Result<Option<Schedule>, RepoError>;
    async fn delete(&self, owner: Uuid, id: Uuid) -> Result<bool, RepoError>;
    /// Whether `owner` owns the agent `agent_id` (a `run_task` schedule may only name its
    /// owner's agents).
    async fn owns_agent(&self, owner: Uuid, agent_id: Uuid) -> Result<bool, RepoError>;
    /// Whether `owner` owns the pipeline `pipeline_id` (same rule for `execute_pipeline`).
    async fn owns_pipeline(&self, owner: Uuid, pipeline_id: Uuid) -> Result<bool, RepoError>;

    /// In ONE transaction: locks up to `batch` enabled schedules due at `now`
    /// (`FOR UPDATE SKIP LOCKED` + a transaction-scoped advisory lock each), inserts each
    /// planned occurrence as an execution (unique per schedule and time), and advances
    /// `next_run_at`. Overlapping occurrences of `overlap = skip` schedules are recorded as
    /// `skipped`; a schedule reaching `max_executions` is disabled.
    async fn claim_due(
        &self,
        now: DateTime<Utc>,
        batch: u32,
        instance_id: Uuid,
        planner: &dyn ClaimPlanner,
    ) -> Result<ClaimOutcome, RepoError>;
    /// Inserts a `running` execution scheduled for `now` (run-now). `None` when the schedule is
    /// not the owner's. `Conflict` when one already exists for that instant.
    async fn insert_run_now(
        &self,
        owner: Uuid,
        id: Uuid,
        now: DateTime<Utc>,
        instance_id: Uuid,
    ) -> Result<Option<ClaimedExecution>, RepoError>;
    /// Records the end of a running execution. Returns `false` when it was no longer
    /// `running` (e.g. marked interrupted meanwhile).
    async fn finish_execution(
        &self,
        execution_id: Uuid,
        status: ExecutionStatus,
        result: Option<Value>,
        error: Option<String>,
        run_id: Option<Uuid>,
        finished_at: DateTime<Utc>,
    ) -> Result<bool, RepoError>;
    /// Records the end of many running executions in one statement (group commit). Returns the
    /// ids actually updated (those still `running`).
    async fn finish_executions(&self, batch: &[ExecutionFinish]) -> Result<Vec<Uuid>, RepoError>;
    /// The schedule's executions, newest first. `None` when the schedule is not the owner's.
    async fn list_executions(
        &self,
        owner: Uuid,
        schedule_id: Uuid,
        page: PageRequest,
    ) -> Result<Option<Page<Execution>>, RepoError>;
    /// The earliest `next_run_at` of enabled schedules.
    async fn next_due(&self) -> Result<Option<DateTime<Utc>>, RepoError>;
    /// Records that `instance_id` is alive at `at`.
    async fn heartbeat(&self, instance_id: Uuid, at: DateTime<Utc>) -> Result<(), RepoError>;
    /// Removes the instance's heartbeat (graceful stop).
    async fn forget_instance(&self, instance_id: Uuid) -> Result<(), RepoError>;
    /// Marks `interrupted` every `running` execution whose instance has not beaten since
    /// `now - stale_after` (or never). Returns how many.
    async fn recover(
        &self,
        now: DateTime<Utc>,
        stale_after: chrono::Duration,
    ) -> Result<u64, RepoError>;
}

/// Why a pipeline could not be launched.
#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    #[error("pipeline not found")]
    NotFound,
    #[error("invalid pipeline input: {0}")]
    Invalid(String),
    #[error("{0}")]
    Unavailable(String),
}

/// Starts a pipeline run on behalf of a schedule (adapted by the server to the pipeline
/// service); returns the run's id.
#[async_trait]
pub trait PipelineLauncher: Send + Sync {
    async fn launch(
        &self,
        owner_id: Uuid,
        pipeline_id: Uuid,
        input: Value,
    ) -> Result<Uuid, LaunchError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enums_round_trip_through_their_names() {
        for a in ActionType::ALL {
            assert_eq!(ActionType::parse(a.as_str()), Some(a));
        }
        for s in [
            ExecutionStatus::Running,
            ExecutionStatus::Succeeded,
            ExecutionStatus::Failed,
            ExecutionStatus::Skipped,
            ExecutionStatus::Interrupted,
        ] {
            assert_eq!(ExecutionStatus::parse(s.as_str()), Some(s));
        }
        assert_eq!(MissedRuns::parse("run_once"), Some(MissedRuns::RunOnce));
        assert_eq!(OverlapPolicy::parse("allow"), Some(OverlapPolicy::Allow));
        assert_eq!(ActionType::parse("nope"), None);
    }
}
