//! In-memory implementations of [`PipelineRepository`] and [`RunRepository`], with the same
//! semantics as the PostgreSQL ones (owner scoping, leases, claimable runs, rescue). For engine
//! tests and for other crates' tests that need pipelines without a database. Not bounded: do not
//! use it in the server.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use gathering_domain::codes;
use gathering_domain::pipeline::{
    CancelOutcome, ClaimedRun, HeldLease, NewPipeline, NodeRun, NodeStatus, Pipeline,
    PipelineDefinition, PipelineRepository, PipelineUpdate, RescueReport, Run, RunCommit,
    RunDetail, RunError, RunRepository, RunStatus, RunTransition,
};
use gathering_domain::{Page, PageRequest, RepoError};
use parking_lot::Mutex;
use serde_json::Value;
use std::collections::{BTreeMap, HashMap};
use uuid::Uuid;

#[derive(Debug, Clone)]
struct MemRun {
    run: Run,
    timeout_ms: Option<u64>,
    due_at: Option<DateTime<Utc>>,
    lease_owner: Option<Uuid>,
    lease_expires_at: Option<DateTime<Utc>>,
    rescue_count: u32,
    nodes: Vec<NodeRun>,
}

#[derive(Debug, Default)]
struct MemState {
    pipelines: BTreeMap<Uuid, Pipeline>,
    versions: HashMap<(Uuid, i32), PipelineDefinition>,
    runs: BTreeMap<Uuid, MemRun>,
}

#[derive(Debug, Default)]
pub struct MemoryStore {
    state: Mutex<MemState>,
}

impl MemoryStore {
    pub fn new() -> Self {
        Self::default()
    }

    /// Test helper: who holds the lease of a run.
    pub fn lease_owner(&self, run_id: Uuid) -> Option<Uuid> {
        self.state
            .lock()
            .runs
            .get(&run_id)
            .and_then(|r| r.lease_owner)
    }

    /// Test helper: how often the run was rescued or interrupted.
    pub fn rescue_count(&self, run_id: Uuid) -> Option<u32> {
        self.state.lock().runs.get(&run_id).map(|r| r.rescue_count)
    }

    /// Test helper: when a released run becomes claimable again.
    pub fn due_at(&self, run_id: Uuid) -> Option<DateTime<Utc>> {
        self.state.lock().runs.get(&run_id).and_then(|r| r.due_at)
    }
}

fn page_of<T: Clone>(
    items: impl Iterator<Item = T>,
    req: PageRequest,
    id: impl Fn(&T) -> Uuid,
) -> Page<T> {
    let rows: Vec<T> = items
        .filter(|t| req.cursor.is_none_or(|c| id(t) < c))
        .take(req.fetch_limit() as usize)
        .collect();
    Page::from_rows(rows, req, id)
}

#[async_trait]
impl PipelineRepository for MemoryStore {
    async fn create(&self, new: NewPipeline, now: DateTime<Utc>) -> Result<Pipeline, RepoError> {
        let p = Pipeline {
            id: Uuid::now_v7(),
            owner_id: new.owner_id,
            name: new.name,
            description: new.description,
            version: 1,
            definition: new.definition,
            created_at: now,
            updated_at: now,
        };
        let mut s = self.state.lock();
        s.versions.insert((p.id, 1), p.definition.clone());
        s.pipelines.insert(p.id, p.clone());
        Ok(p)
    }

    async fn get(&self, owner_id: Uuid, id: Uuid) -> Result<Option<Pipeline>, RepoError> {
        Ok(self
            .state
            .lock()
            .pipelines
            .get(&id)
            .filter(|p| p.owner_id == owner_id)
            .cloned())
    }

    async fn list(&self, owner_id: Uuid, page: PageRequest) -> Result<Page<Pipeline>, RepoError> {
        let s = self.state.lock();
        Ok(page_of(
            s.pipelines
                .values()
                .rev()
                .filter(|p| p.owner_id == owner_id)
                .cloned(),
            page,
            |p| p.id,
        ))
    }

    async fn update(
        &self,
        owner_id: Uuid,
        id: Uuid,
        update: PipelineUpdate,
        now: DateTime<Utc>,
    ) -> Result<Option<Pipeline>, RepoError> {
        let mut s = self.state.lock();
        let Some(p) = s.pipelines.get_mut(&id).filter(|p| p.owner_id == owner_id) else {
            return Ok(None);
        };
        if let Some(n) = update.name {
            p.name = n;
        }
        if let Some(d) = update.description {
            p.description = d;
        }
        if let Some(d) = update.definition {
            p.definition = d;
        }
        p.version += 1;
        p.updated_at = now;
        let p = p.clone();
        s.versions.insert((p.id, p.version), p.definition.clone());
        Ok(Some(p))
    }

    async fn delete(&self, owner_id: Uuid, id: Uuid) -> Result<bool, RepoError> {
        let mut s = self.state.lock();
        if s.pipelines.get(&id).is_none_or(|p| p.owner_id != owner_id) {
            return Ok(false);
        }
        s.pipelines.remove(&id);
        s.versions.retain(|(pid, _), _| *pid != id);
        s.runs.retain(|_, r| r.run.pipeline_id != id);
        Ok(true)
    }
}

#[async_trait]
impl RunRepository for MemoryStore {
    async fn create_run(
        &self,
        owner_id: Uuid,
        pipeline_id: Uuid,
        input: Value,
        now: DateTime<Utc>,
    ) -> Result<Option<Run>, RepoError> {
        let mut s = self.state.lock();
        let Some(p) = s
            .pipelines
            .get(&pipeline_id)
            .filter(|p| p.owner_id == owner_id)
        else {
            return Ok(None);
        };
        let run = Run {
            id: Uuid::now_v7(),
            pipeline_id,
            pipeline_version: p.version,
            owner_id,
            status: RunStatus::Queued,
            input,
            output: None,
            error: None,
            created_at: now,
            started_at: None,
            finished_at: None,
            deadline_at: None,
            cancel_requested: false,
        };
        let timeout_ms = p.definition.timeout_ms;
        s.runs.insert(
            run.id,
            MemRun {
                run: run.clone(),
                timeout_ms,
                due_at: None,
                lease_owner: None,
                lease_expires_at: None,
                rescue_count: 0,
                nodes: Vec::new(),
            },
        );
        Ok(Some(run))
    }

    async fn get_run(&self, owner_id: Uuid, run_id: Uuid) -> Result<Option<RunDetail>, RepoError> {
        let s = self.state.lock();
        Ok(s.runs
            .get(&run_id)
            .filter(|r| r.run.owner_id == owner_id)
            .map(|r| RunDetail {
                run: r.run.clone(),
                nodes: r.nodes.clone(),
                node_order: s
                    .versions
                    .get(&(r.run.pipeline_id, r.run.pipeline_version))
                    .map(|d| d.nodes.iter().map(|n| n.id.clone()).collect())
                    .unwrap_or_default(),
            }))
    }

    async fn list_runs(
        &self,
        owner_id: Uuid,
        pipeline_id: Uuid,
        page: PageRequest,
    ) -> Result<Option<Page<Run>>, RepoError> {
        let s = self.state.lock();
        if s.pipelines
            .get(&pipeline_id)
            .is_none_or(|p| p.owner_id != owner_id)
        {
            return Ok(None);
        }
        Ok(Some(page_of(
            s.runs
                .values()
                .rev()
                .filter(|r| r.run.pipeline_id == pipeline_id)
                .map(|r| r.run.clone()),
            page,
            |r| r.id,
        )))
    }

    async fn claim(
        &self,
        owner: Uuid,
        now: DateTime<Utc>,
        lease_until: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<ClaimedRun>, RepoError> {
        let mut s = self.state.lock();
        let MemState { runs, versions, .. } = &mut *s;
        // The PostgreSQL order: `ORDER BY due_at NULLS FIRST, id`.
        let mut order: Vec<(bool, Option<DateTime<Utc>>, Uuid)> = runs
            .values()
            .filter(|r| {
                r.lease_owner.is_none()
                    && !r.run.status.is_terminal()
                    && r.due_at.is_none_or(|d| d <= now)
            })
            .map(|r| (r.due_at.is_some(), r.due_at, r.run.id))
            .collect();
        order.sort_unstable();
        order.truncate(limit as usize);
        let mut out = Vec::new();
        for (_, _, id) in order {
            let Some(r) = runs.get_mut(&id) else {
                continue;
            };
            let first_start = r.run.started_at.is_none();
            r.run.status = RunStatus::Running;
            r.lease_owner = Some(owner);
            r.lease_expires_at = Some(lease_until);
            r.due_at = None;
            r.run.started_at.get_or_insert(now);
            if r.run.deadline_at.is_none() {
                r.run.deadline_at = r
                    .timeout_ms
                    .map(|ms| now + chrono::Duration::milliseconds(ms as i64));
            }
            let definition = versions
                .get(&(r.run.pipeline_id, r.run.pipeline_version))
                .cloned()
                .ok_or(RepoError::NotFound)?;
            out.push(ClaimedRun {
                run: r.run.clone(),
                definition,
                nodes: r.nodes.clone(),
                first_start,
                rescue_count: r.rescue_count,
            });
        }
        Ok(out)
    }

    async fn heartbeat(
        &self,
        owner: Uuid,
        run_ids: &[Uuid],
        lease_until: DateTime<Utc>,
    ) -> Result<Vec<HeldLease>, RepoError> {
        let mut s = self.state.lock();
        let mut held = Vec::new();
        for id in run_ids {
            if let Some(r) = s.runs.get_mut(id).filter(|r| r.lease_owner == Some(owner)) {
                r.lease_expires_at = Some(lease_until);
                held.push(HeldLease {
                    run_id: *id,
                    cancel_requested: r.run.cancel_requested,
                });
            }
        }
        Ok(held)
    }

    async fn apply(
        &self,
        run_id: Uuid,
        owner: Uuid,
        nodes: &[NodeRun],
        commit: RunCommit,
    ) -> Result<(), RepoError> {
        apply_one(&mut self.state.lock(), run_id, owner, nodes, commit)
    }

    /// All transitions under one lock: atomic, in order, a lost lease refused per run.
    async fn apply_many(
        &self,
        owner: Uuid,
        batch: &[RunTransition],
    ) -> Result<Vec<Result<(), RepoError>>, RepoError> {
        let mut s = self.state.lock();
        Ok(batch
            .iter()
            .map(|t| apply_one(&mut s, t.run_id, owner, &t.nodes, t.commit.clone()))
            .collect())
    }

    async fn request_cancel(
        &self,
        owner_id: Uuid,
        run_id: Uuid,
        now: DateTime<Utc>,
    ) -> Result<Option<CancelOutcome>, RepoError> {
        let mut s = self.state.lock();
        let Some(r) = s
            .runs
            .get_mut(&run_id)
            .filter(|r| r.run.owner_id == owner_id)
        else {
            return Ok(None);
        };
        if r.run.status.is_terminal() {
            return Ok(Some(CancelOutcome::AlreadyFinished(r.run.status)));
        }
        r.run.cancel_requested = true;
        if r.lease_owner.is_some() {
            return Ok(Some(CancelOutcome::Requested));
        }
        r.run.status = RunStatus::Cancelled;
        r.run.finished_at = Some(now);
        r.run.error = Some(RunError::new(codes::CANCELLED, "the run was cancelled"));
        r.due_at = None;
        for n in &mut r.nodes {
            if !n.status.is_terminal() {
                n.status = NodeStatus::Cancelled;
                n.finished_at = Some(now);
                n.wake_at = None;
            }
        }
        Ok(Some(CancelOutcome::CancelledNow(Box::new(r.run.clone()))))
    }

    async fn rescue_stale(
        &self,
        now: DateTime<Utc>,
        max_rescues: u32,
    ) -> Result<RescueReport, RepoError> {
        let mut s = self.state.lock();
        let mut report = RescueReport::default();
        for r in s.runs.values_mut() {
            if r.lease_owner.is_some() && r.lease_expires_at.is_some_and(|t| t < now) {
                r.lease_owner = None;
                r.lease_expires_at = None;
                r.due_at = None;
                r.rescue_count += 1;
                if r.rescue_count > max_rescues {
                    r.run.status = RunStatus::Failed;
                    r.run.finished_at = Some(now);
                    r.run.error = Some(RunError::new(
                        codes::CRASH_LOOP,
                        format!(
                            "the run's executor stopped {} times while running it",
                            r.rescue_count
                        ),
                    ));
                    report.abandoned.push((r.run.id, r.run.owner_id));
                } else {
                    report.requeued.push(r.run.id);
                }
            }
        }
        Ok(report)
    }
}

/// [`RunRepository::apply`] on the locked state.
fn apply_one(
    s: &mut MemState,
    run_id: Uuid,
    owner: Uuid,
    nodes: &[NodeRun],
    commit: RunCommit,
) -> Result<(), RepoError> {
    let Some(r) = s
        .runs
        .get_mut(&run_id)
        .filter(|r| r.lease_owner == Some(owner))
    else {
        return Err(RepoError::Conflict("lease".to_owned()));
    };
    for n in nodes {
        match r.nodes.iter_mut().find(|x| x.node_id == n.node_id) {
            Some(x) => {
                let started = x.started_at;
                *x = n.clone();
                x.started_at = started.or(n.started_at);
            }
            None => r.nodes.push(n.clone()),
        }
    }
    match commit {
        RunCommit::Nodes => {}
        RunCommit::Finish {
            status,
            output,
            error,
            at,
        } => {
            r.run.status = status;
            r.run.output = output;
            r.run.error = error;
            r.run.finished_at = Some(at);
            r.lease_owner = None;
            r.lease_expires_at = None;
            r.due_at = None;
        }
        RunCommit::Release { due_at } => {
            r.lease_owner = None;
            r.lease_expires_at = None;
            r.due_at = due_at;
        }
        RunCommit::Interrupted => {
            r.lease_owner = None;
            r.lease_expires_at = None;
            r.due_at = None;
            r.rescue_count += 1;
        }
    }
    Ok(())
}
