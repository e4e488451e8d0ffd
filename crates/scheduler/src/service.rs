//! Owner-scoped schedule management: validation (422 with details), CRUD, run-now, executions.
//! Every change is announced on `gathering_schedules_changed` so all instances re-plan.

use crate::actions;
use crate::error::SchedulerError;
use crate::settings::SchedulerSettings;
use crate::timing::Timing;
use crate::worker::Scheduler;
use gathering_domain::scheduler::{
    ActionType, Execution, MissedRuns, NewSchedule, OverlapPolicy, Schedule, ScheduleUpdate,
};
use gathering_domain::{FieldProblem, Page, PageRequest, RepoError};
use gathering_tools::net::AllowList;
use serde_json::Value;
use uuid::Uuid;

pub const MAX_NAME_CHARS: usize = 200;

/// Per-schedule limits checked when a schedule is stored (`GATHERING__SCHEDULER__*`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScheduleLimits {
    /// Shortest `interval_secs`, and the shortest gap between two firings of a cron pattern
    /// (`MIN_INTERVAL_SECS`, default 10; at least 1).
    pub min_interval_secs: u64,
    /// Longest cron pattern, in characters (`MAX_CRON_CHARS`, default 128).
    pub max_cron_chars: usize,
    /// Hosts a `call_api` action may target although loopback/private (the tools' allow-list).
    pub http_allowed_hosts: Vec<String>,
}

/// The configurable values come from [`SchedulerSettings::default`] (the one source).
impl Default for ScheduleLimits {
    fn default() -> Self {
        let s = SchedulerSettings::default();
        Self {
            min_interval_secs: s.min_interval_secs,
            max_cron_chars: s.max_cron_chars,
            http_allowed_hosts: Vec::new(),
        }
    }
}

/// Occurrences examined (within a year) to find a cron pattern's shortest gap.
const CRON_GAP_SAMPLES: usize = 2048;

/// Whether two consecutive firings of `timing` (a cron pattern) within the next year come
/// closer than `min_secs`. 5-field patterns fire at most once a minute, so a minimum of 60 s
/// or less always holds.
fn cron_fires_too_often(
    timing: &Timing,
    now: chrono::DateTime<chrono::Utc>,
    min_secs: i64,
) -> bool {
    if min_secs <= 60 || !matches!(timing, Timing::Cron { .. }) {
        return false;
    }
    let horizon = now + chrono::Duration::days(366);
    let Some(mut prev) = timing.first_after(now) else {
        return false;
    };
    for _ in 0..CRON_GAP_SAMPLES {
        let Some(next) = timing.next_after(prev, prev) else {
            return false;
        };
        if (next - prev).num_seconds() < min_secs {
            return true;
        }
        if next > horizon {
            return false;
        }
        prev = next;
    }
    false
}

/// What `POST /schedules` asks for (the API deserializes its own body). Enumerations are
/// strings so a bad value is a 422 with details.
#[derive(Debug, Clone, Default)]
pub struct CreateSchedule {
    pub name: String,
    pub cron: Option<String>,
    pub interval_secs: Option<i64>,
    pub timezone: Option<String>,
    pub action_type: String,
    pub action_config: Value,
    pub enabled: Option<bool>,
    pub missed_runs: Option<String>,
    pub overlap: Option<String>,
    pub max_executions: Option<i64>,
}

/// What `PATCH /schedules/{id}` asks for: `None` keeps a value, `Some(None)` clears it.
/// Setting `cron` clears `interval_secs` and vice versa.
#[derive(Debug, Clone, Default)]
pub struct PatchSchedule {
    pub name: Option<String>,
    pub cron: Option<Option<String>>,
    pub interval_secs: Option<Option<i64>>,
    pub timezone: Option<Option<String>>,
    pub action_type: Option<String>,
    pub action_config: Option<Value>,
    pub enabled: Option<bool>,
    pub missed_runs: Option<String>,
    pub overlap: Option<String>,
    pub max_executions: Option<Option<i64>>,
}

/// A fully validated schedule definition.
struct Valid {
    name: String,
    cron: Option<String>,
    interval_secs: Option<i64>,
    timezone: Option<String>,
    timing: Timing,
    action_type: ActionType,
    action_config: Value,
    missed_runs: MissedRuns,
    overlap: OverlapPolicy,
    max_executions: Option<i64>,
}

#[allow(clippy::too_many_arguments)]
fn validate(
    limits: &Checks,
    now: chrono::DateTime<chrono::Utc>,
    name: &str,
    cron: Option<String>,
    interval_secs: Option<i64>,
    timezone: Option<String>,
    action_type: &str,
    action_config: Value,
    missed_runs: &str,
    overlap: &str,
    max_executions: Option<i64>,
) -> Result<Valid, SchedulerError> {
    let mut problems = Vec::new();
    let name = name.trim().to_owned();
    if name.is_empty() || name.chars().count() > MAX_NAME_CHARS {
        problems.push(FieldProblem::new(
            "/name",
            format!("must be 1 to {MAX_NAME_CHARS} characters"),
        ));
    }
    let cron = cron.map(|c| c.trim().to_owned());
    let timezone = timezone.map(|t| t.trim().to_owned());
    match (&cron, interval_secs) {
        (Some(_), Some(_)) => problems.push(FieldProblem::new(
            "/cron",
            "give either cron or interval_secs, not both",
        )),
        (None, None) => problems.push(FieldProblem::new(
            "/cron",
            "one of cron or interval_secs is required",
        )),
        (Some(c), None) if c.chars().count() > limits.limits.max_cron_chars => {
            problems.push(FieldProblem::new(
                "/cron",
                format!(
                    "must be at most {} characters",
                    limits.limits.max_cron_chars
                ),
            ));
        }
        (Some(c), None) => {
            if let Err(e) = crate::timing::parse_cron(c) {
                problems.push(FieldProblem::new("/cron", e));
            }
        }
        (None, Some(i)) if i < limits.min_interval() => {
            problems.push(FieldProblem::new(
                "/interval_secs",
                format!("must be at least {} seconds", limits.min_interval()),
            ));
        }
        (None, Some(_)) => {}
    }
    if let Some(tz) = &timezone
        && let Err(e) = crate::timing::parse_timezone(tz)
    {
        problems.push(FieldProblem::new("/timezone", e));
    }
    let action = ActionType::parse(action_type);
    match action {
        Some(a) => {
            let shape = actions::validate(a, &action_config);
            if shape.is_empty() && a == ActionType::CallApi {
                problems.extend(actions::check_call_api_target(
                    &action_config,
                    &limits.allow,
                ));
            }
            problems.extend(shape);
        }
        None => problems.push(FieldProblem::new(
            "/action_type",
            "must be one of run_task, execute_pipeline, send_notification, call_api",
        )),
    }
    let missed = MissedRuns::parse(missed_runs);
    if missed.is_none() {
        problems.push(FieldProblem::new(
            "/missed_runs",
            "must be skip or run_once",
        ));
    }
    let overlap_policy = OverlapPolicy::parse(overlap);
    if overlap_policy.is_none() {
        problems.push(FieldProblem::new("/overlap", "must be skip or allow"));
    }
    if max_executions.is_some_and(|m| m < 1) {
        problems.push(FieldProblem::new("/max_executions", "must be at least 1"));
    }
    let timing = if problems.is_empty() {
        match Timing::new(cron.as_deref(), interval_secs, timezone.as_deref()) {
            Ok(t) if cron_fires_too_often(&t, now, limits.min_interval()) => {
                problems.push(FieldProblem::new(
                    "/cron",
                    format!(
                        "fires more often than once every {} seconds",
                        limits.min_interval()
                    ),
                ));
                None
            }
            Ok(t) => Some(t),
            Err(e) => {
                problems.push(FieldProblem::new("/cron", e));
                None
            }
        }
    } else {
        None
    };
    match (timing, action, missed, overlap_policy) {
        (Some(timing), Some(action_type), Some(missed_runs), Some(overlap))
            if problems.is_empty() =>
        {
            Ok(Valid {
                name,
                cron,
                interval_secs,
                timezone,
                timing,
                action_type,
                action_config,
                missed_runs,
                overlap,
                max_executions,
            })
        }
        _ => Err(SchedulerError::Validation(problems)),
    }
}

/// The next run of a (re)timed, enabled schedule; a pattern that never fires is refused.
fn first_run(
    v: &Valid,
    now: chrono::DateTime<chrono::Utc>,
) -> Result<chrono::DateTime<chrono::Utc>, SchedulerError> {
    v.timing
        .first_after(now)
        .ok_or_else(|| SchedulerError::invalid("/cron", "the cron pattern never fires"))
}

/// The limits with the allow-list parsed once.
struct Checks {
    limits: ScheduleLimits,
    allow: AllowList,
}

impl Checks {
    fn new(limits: ScheduleLimits) -> Self {
        let allow = AllowList::new(&limits.http_allowed_hosts);
        Self { limits, allow }
    }

    fn min_interval(&self) -> i64 {
        i64::try_from(self.limits.min_interval_secs.max(1)).unwrap_or(i64::MAX)
    }
}

/// The agent or pipeline a `run_task` / `execute_pipeline` schedule names.
fn referenced(action: ActionType, config: &Value) -> Option<(&'static str, Uuid)> {
    let key = match action {
        ActionType::RunTask => "agent_id",
        ActionType::ExecutePipeline => "pipeline_id",
        ActionType::CallApi | ActionType::SendNotification => return None,
    };
    let id = config.get(key)?.as_str()?.parse().ok()?;
    Some((key, id))
}

pub struct ScheduleService {
    scheduler: Scheduler,
    checks: Checks,
}

impl ScheduleService {
    /// The service shares the scheduler's repository, clock and notifier; run-now executes on
    /// that scheduler instance. Default [`ScheduleLimits`].
    pub fn new(scheduler: Scheduler) -> Self {
        Self::with_limits(scheduler, ScheduleLimits::default())
    }

    pub fn with_limits(scheduler: Scheduler, limits: ScheduleLimits) -> Self {
        Self {
            scheduler,
            checks: Checks::new(limits),
        }
    }

    pub fn limits(&self) -> &ScheduleLimits {
        &self.checks.limits
    }

    /// A schedule may only name its owner's agent or pipeline. Another user's and a missing
    /// one get the same answer (no existence leak).
    async fn check_reference(
        &self,
        owner: Uuid,
        action: ActionType,
        config: &Value,
    ) -> Result<(), SchedulerError> {
        let Some((key, id)) = referenced(action, config) else {
            return Ok(());
        };
        let repo = self.scheduler.repo();
        let (owned, what) = match action {
            ActionType::RunTask => (repo.owns_agent(owner, id).await?, "agent"),
            _ => (repo.owns_pipeline(owner, id).await?, "pipeline"),
        };
        if owned {
            Ok(())
        } else {
            Err(SchedulerError::invalid(
                &format!("/action_config/{key}"),
                format!("no such {what}"),
            ))
        }
    }

    pub fn scheduler(&self) -> &Scheduler {
        &self.scheduler
    }

    pub async fn create(
        &self,
        owner: Uuid,
        input: CreateSchedule,
    ) -> Result<Schedule, SchedulerError> {
        let v = validate(
            &self.checks,
            self.scheduler.clock().now(),
            &input.name,
            input.cron,
            input.interval_secs,
            input.timezone,
            &input.action_type,
            input.action_config,
            input.missed_runs.as_deref().unwrap_or("skip"),
            input.overlap.as_deref().unwrap_or("skip"),
            input.max_executions,
        )?;
        self.check_reference(owner, v.action_type, &v.action_config)
            .await?;
        let enabled = input.enabled.unwrap_or(true);
        let next_run_at = if enabled {
            Some(first_run(&v, self.scheduler.clock().now())?)
        } else {
            None
        };
        let s = self
            .scheduler
            .repo()
            .create(NewSchedule {
                owner_id: owner,
                name: v.name,
                cron: v.cron,
                interval_secs: v.interval_secs,
                timezone: v.timezone,
                action_type: v.action_type,
                action_config: v.action_config,
                enabled,
                missed_runs: v.missed_runs,
                overlap: v.overlap,
                max_executions: v.max_executions,
                next_run_at,
            })
            .await?;
        self.scheduler.announce_change(s.id).await;
        Ok(s)
    }

    pub async fn get(&self, owner: Uuid, id: Uuid) -> Result<Schedule, SchedulerError> {
        self.scheduler
            .repo()
            .get(owner, id)
            .await?
            .ok_or(SchedulerError::NotFound)
    }

    pub async fn list(
        &self,
        owner: Uuid,
        page: PageRequest,
    ) -> Result<Page<Schedule>, SchedulerError> {
        Ok(self.scheduler.repo().list(owner, page).await?)
    }

    pub async fn update(
        &self,
        owner: Uuid,
        id: Uuid,
        patch: PatchSchedule,
    ) -> Result<Schedule, SchedulerError> {
        let cur = self.get(owner, id).await?;
        let (cron, interval_secs) = match (patch.cron, patch.interval_secs) {
            (Some(c), Some(i)) => (c, i),
            (Some(Some(c)), None) => (Some(c), None),
            (Some(None), None) => (None, cur.interval_secs),
            (None, Some(Some(i))) => (None, Some(i)),
            (None, Some(None)) => (cur.cron.clone(), None),
            (None, None) => (cur.cron.clone(), cur.interval_secs),
        };
        let timezone = match patch.timezone {
            Some(t) => t,
            None => cur.timezone.clone(),
        };
        let retimed =
            cron != cur.cron || interval_secs != cur.interval_secs || timezone != cur.timezone;
        let reaction = patch.action_type.is_some() || patch.action_config.is_some();
        let v = validate(
            &self.checks,
            self.scheduler.clock().now(),
            patch.name.as_deref().unwrap_or(&cur.name),
            cron,
            interval_secs,
            timezone,
            patch
                .action_type
                .as_deref()
                .unwrap_or(cur.action_type.as_str()),
            patch.action_config.unwrap_or(cur.action_config.clone()),
            patch
                .missed_runs
                .as_deref()
                .unwrap_or(cur.missed_runs.as_str()),
            patch.overlap.as_deref().unwrap_or(cur.overlap.as_str()),
            match patch.max_executions {
                Some(m) => m,
                None => cur.max_executions,
            },
        )?;
        if reaction {
            self.check_reference(owner, v.action_type, &v.action_config)
                .await?;
        }
        let enabled = patch.enabled.unwrap_or(cur.enabled);
        let next_run_at = if !enabled {
            None
        } else if retimed || !cur.enabled || cur.next_run_at.is_none() {
            Some(first_run(&v, self.scheduler.clock().now())?)
        } else {
            cur.next_run_at
        };
        let updated = self
            .scheduler
            .repo()
            .update(
                owner,
                id,
                ScheduleUpdate {
                    name: v.name,
                    cron: v.cron,
                    interval_secs: v.interval_secs,
                    timezone: v.timezone,
                    action_type: v.action_type,
                    action_config: v.action_config,
                    enabled,
                    missed_runs: v.missed_runs,
                    overlap: v.overlap,
                    max_executions: v.max_executions,
                    next_run_at,
                },
            )
            .await?
            .ok_or(SchedulerError::NotFound)?;
        self.scheduler.announce_change(id).await;
        Ok(updated)
    }

    pub async fn delete(&self, owner: Uuid, id: Uuid) -> Result<(), SchedulerError> {
        if !self.scheduler.repo().delete(owner, id).await? {
            return Err(SchedulerError::NotFound);
        }
        self.scheduler.announce_change(id).await;
        Ok(())
    }

    /// Records a `running` execution for now and starts it on this instance.
    pub async fn run_now(&self, owner: Uuid, id: Uuid) -> Result<Execution, SchedulerError> {
        let now = self.scheduler.clock().now();
        let claimed = match self
            .scheduler
            .repo()
            .insert_run_now(owner, id, now, self.scheduler.instance_id())
            .await
        {
            Ok(Some(c)) => c,
            Ok(None) => return Err(SchedulerError::NotFound),
            Err(RepoError::Conflict(_)) => return Err(SchedulerError::Conflict),
            Err(e) => return Err(e.into()),
        };
        let execution = claimed.execution.clone();
        self.scheduler.start(claimed);
        Ok(execution)
    }

    pub async fn executions(
        &self,
        owner: Uuid,
        id: Uuid,
        page: PageRequest,
    ) -> Result<Page<Execution>, SchedulerError> {
        self.scheduler
            .repo()
            .list_executions(owner, id, page)
            .await?
            .ok_or(SchedulerError::NotFound)
    }
}
