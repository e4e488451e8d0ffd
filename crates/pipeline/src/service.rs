//! [`PipelineService`]: pipeline CRUD (validated, versioned, owner-scoped) and runs (start,
//! inspect, cancel) for the HTTP layer and the scheduler's `execute_pipeline`.

use crate::error::PipelineError;
use crate::executor::{RUN_CANCEL_CHANNEL, RUN_QUEUED_CHANNEL};
use crate::limits::Limits;
use crate::pool::{CelPool, PoolError};
use crate::validate::{check_static, compile_conditions};
use gathering_domain::agents::AgentRepository;
use gathering_domain::events::{Event, EventPublisher};
use gathering_domain::notify::Notifier;
use gathering_domain::pipeline::{
    CancelOutcome, Edge, NewPipeline, Node, NodeType, Pipeline, PipelineDefinition,
    PipelineRepository, PipelineUpdate, Run, RunDetail, RunRepository,
};
use gathering_domain::{Clock, FieldProblem, Page, PageRequest};
use serde_json::{Value, json};
use std::collections::HashSet;
use std::sync::Arc;
use tracing::warn;
use uuid::Uuid;

pub const MAX_NAME_CHARS: usize = 200;
pub const MAX_DESCRIPTION_CHARS: usize = 2000;
/// Largest run input (serialized bytes).
pub const MAX_INPUT_BYTES: usize = 256 * 1024;

#[derive(Debug, Clone, PartialEq)]
pub struct CreatePipeline {
    pub name: String,
    pub description: Option<String>,
    pub definition: PipelineDefinition,
}

/// `PATCH /pipelines/{id}`: absent fields keep their value; the merged definition is validated.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct PatchPipeline {
    pub name: Option<String>,
    pub description: Option<Option<String>>,
    pub nodes: Option<Vec<Node>>,
    pub edges: Option<Vec<Edge>>,
    pub timeout_ms: Option<Option<u64>>,
}

pub struct PipelineService {
    pipelines: Arc<dyn PipelineRepository>,
    runs: Arc<dyn RunRepository>,
    events: Arc<dyn EventPublisher>,
    notifier: Option<Arc<dyn Notifier>>,
    clock: Arc<dyn Clock>,
    /// Names of the tools action nodes may call; `None` accepts any name (checked at run time).
    known_tools: Option<Arc<HashSet<String>>>,
    limits: Limits,
    cel_pool: CelPool,
    /// Agent nodes must name one of the owner's agents; `None` checks only at run time.
    agents: Option<Arc<dyn AgentRepository>>,
}

fn check_name(name: &str, problems: &mut Vec<FieldProblem>) {
    let n = name.trim().chars().count();
    if n == 0 || n > MAX_NAME_CHARS {
        problems.push(FieldProblem::new(
            "/name",
            format!("must be 1 to {MAX_NAME_CHARS} characters"),
        ));
    }
}

fn check_description(d: &Option<String>, problems: &mut Vec<FieldProblem>) {
    if d.as_ref()
        .is_some_and(|d| d.chars().count() > MAX_DESCRIPTION_CHARS)
    {
        problems.push(FieldProblem::new(
            "/description",
            format!("at most {MAX_DESCRIPTION_CHARS} characters"),
        ));
    }
}

impl PipelineService {
    pub fn new(
        pipelines: Arc<dyn PipelineRepository>,
        runs: Arc<dyn RunRepository>,
        events: Arc<dyn EventPublisher>,
        notifier: Option<Arc<dyn Notifier>>,
        clock: Arc<dyn Clock>,
    ) -> Self {
        Self {
            pipelines,
            runs,
            events,
            notifier,
            clock,
            known_tools: None,
            limits: Limits::default(),
            cel_pool: CelPool::default(),
            agents: None,
        }
    }

    /// The limits definitions are checked against, and the CEL pool (shared with the executor)
    /// their conditions are compiled on.
    pub fn with_limits(mut self, limits: Limits, cel_pool: CelPool) -> Self {
        self.limits = limits;
        self.cel_pool = cel_pool;
        self
    }

    /// Agent nodes must name an agent of the pipeline's owner when the definition is stored.
    pub fn with_agents(mut self, agents: Arc<dyn AgentRepository>) -> Self {
        self.agents = Some(agents);
        self
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Validates name/description problems and the definition together, reporting every problem
    /// at once: the static checks inline (linear, counts first), condition compiles on the CEL
    /// pool, agent ownership through the agent repository.
    async fn validate_all(
        &self,
        owner_id: Uuid,
        mut problems: Vec<FieldProblem>,
        def: &PipelineDefinition,
    ) -> Result<(), PipelineError> {
        let mut checked = check_static(def, self.known_tools.as_deref(), &self.limits);
        problems.append(&mut checked.problems);
        checked.problems = problems;
        if def.nodes.len() > self.limits.max_nodes || def.edges.len() > self.limits.max_edges {
            return checked.finish(Vec::new());
        }
        let conditions = std::mem::take(&mut checked.conditions);
        let compile = if conditions.is_empty() {
            Vec::new()
        } else {
            let at: Vec<usize> = conditions.iter().map(|(i, _)| *i).collect();
            match self
                .cel_pool
                .run(self.limits.compile_budget, move || {
                    compile_conditions(&conditions)
                })
                .await
            {
                Ok(p) => p,
                Err(e) => {
                    let why = match e {
                        PoolError::TimedOut => "could not be checked in time; try again".to_owned(),
                        PoolError::Failed(e) => format!("could not be checked: {e}"),
                    };
                    at.into_iter()
                        .map(|i| {
                            FieldProblem::new(format!("/nodes/{i}/config/expression"), why.clone())
                        })
                        .collect()
                }
            }
        };
        let mut problems = compile;
        problems.extend(self.check_agents(owner_id, def).await?);
        checked.finish(problems)
    }

    /// Agent nodes naming an agent the owner does not have (another user's, or none) — the
    /// same answer for both, so the check reveals nothing about other users' agents.
    async fn check_agents(
        &self,
        owner_id: Uuid,
        def: &PipelineDefinition,
    ) -> Result<Vec<FieldProblem>, PipelineError> {
        let Some(agents) = &self.agents else {
            return Ok(Vec::new());
        };
        let mut known: std::collections::HashMap<Uuid, bool> = std::collections::HashMap::new();
        let mut problems = Vec::new();
        for (i, node) in def.nodes.iter().enumerate() {
            if node.kind() != Some(NodeType::Agent) {
                continue;
            }
            let Some(id) = node
                .config
                .get("agent_id")
                .and_then(Value::as_str)
                .and_then(|s| Uuid::parse_str(s).ok())
            else {
                continue; // reported by the static check
            };
            let exists = match known.get(&id) {
                Some(e) => *e,
                None => {
                    let e = agents.get_agent(owner_id, id).await?.is_some();
                    known.insert(id, e);
                    e
                }
            };
            if !exists {
                problems.push(FieldProblem::new(
                    format!("/nodes/{i}/config/agent_id"),
                    "no such agent",
                ));
            }
        }
        Ok(problems)
    }

    /// Refuse action nodes naming a tool outside `names` when a definition is stored.
    pub fn with_known_tools(mut self, names: impl IntoIterator<Item = String>) -> Self {
        self.known_tools = Some(Arc::new(names.into_iter().collect()));
        self
    }

    pub async fn create(
        &self,
        owner_id: Uuid,
        new: CreatePipeline,
    ) -> Result<Pipeline, PipelineError> {
        let mut problems = Vec::new();
        check_name(&new.name, &mut problems);
        check_description(&new.description, &mut problems);
        self.validate_all(owner_id, problems, &new.definition)
            .await?;
        Ok(self
            .pipelines
            .create(
                NewPipeline {
                    owner_id,
                    name: new.name.trim().to_owned(),
                    description: new.description,
                    definition: new.definition,
                },
                self.clock.now(),
            )
            .await?)
    }

    pub async fn get(&self, owner_id: Uuid, id: Uuid) -> Result<Pipeline, PipelineError> {
        self.pipelines
            .get(owner_id, id)
            .await?
            .ok_or(PipelineError::NotFound)
    }

    pub async fn list(
        &self,
        owner_id: Uuid,
        page: PageRequest,
    ) -> Result<Page<Pipeline>, PipelineError> {
        Ok(self.pipelines.list(owner_id, page).await?)
    }

    pub async fn update(
        &self,
        owner_id: Uuid,
        id: Uuid,
        patch: PatchPipeline,
    ) -> Result<Pipeline, PipelineError> {
        let current = self.get(owner_id, id).await?;
        let mut problems = Vec::new();
        if let Some(n) = &patch.name {
            check_name(n, &mut problems);
        }
        if let Some(d) = &patch.description {
            check_description(d, &mut problems);
        }
        let definition =
            if patch.nodes.is_some() || patch.edges.is_some() || patch.timeout_ms.is_some() {
                let mut def = current.definition.clone();
                if let Some(n) = patch.nodes {
                    def.nodes = n;
                }
                if let Some(e) = patch.edges {
                    def.edges = e;
                }
                if let Some(t) = patch.timeout_ms {
                    def.timeout_ms = t;
                }
                self.validate_all(owner_id, problems, &def).await?;
                Some(def)
            } else {
                if !problems.is_empty() {
                    return Err(PipelineError::Invalid(problems));
                }
                None
            };
        self.pipelines
            .update(
                owner_id,
                id,
                PipelineUpdate {
                    name: patch.name.map(|n| n.trim().to_owned()),
                    description: patch.description,
                    definition,
                },
                self.clock.now(),
            )
            .await?
            .ok_or(PipelineError::NotFound)
    }

    pub async fn delete(&self, owner_id: Uuid, id: Uuid) -> Result<(), PipelineError> {
        if self.pipelines.delete(owner_id, id).await? {
            Ok(())
        } else {
            Err(PipelineError::NotFound)
        }
    }

    /// Queues a run of the pipeline's current version; executors are woken by NOTIFY
    /// `gathering_run_queued` (or find it by polling).
    pub async fn start_run(
        &self,
        owner_id: Uuid,
        pipeline_id: Uuid,
        input: Value,
    ) -> Result<Run, PipelineError> {
        if serde_json::to_vec(&input)
            .map(|v| v.len())
            .unwrap_or(usize::MAX)
            > MAX_INPUT_BYTES
        {
            return Err(PipelineError::Invalid(vec![FieldProblem::new(
                "/input",
                format!("at most {MAX_INPUT_BYTES} bytes"),
            )]));
        }
        let run = self
            .runs
            .create_run(owner_id, pipeline_id, input, self.clock.now())
            .await?
            .ok_or(PipelineError::NotFound)?;
        self.events.publish(Event::new(
            owner_id,
            "run.queued",
            json!({"run_id": run.id, "pipeline_id": pipeline_id}),
        ));
        self.notify(RUN_QUEUED_CHANNEL, run.id).await;
        Ok(run)
    }

    pub async fn get_run(&self, owner_id: Uuid, run_id: Uuid) -> Result<RunDetail, PipelineError> {
        self.runs
            .get_run(owner_id, run_id)
            .await?
            .ok_or(PipelineError::NotFound)
    }

    pub async fn list_runs(
        &self,
        owner_id: Uuid,
        pipeline_id: Uuid,
        page: PageRequest,
    ) -> Result<Page<Run>, PipelineError> {
        self.runs
            .list_runs(owner_id, pipeline_id, page)
            .await?
            .ok_or(PipelineError::NotFound)
    }

    /// Cancels a run: persisted first, then the instance running it is told (NOTIFY
    /// `gathering_run_cancel`); a run nobody runs is cancelled at once.
    pub async fn cancel(&self, owner_id: Uuid, run_id: Uuid) -> Result<(), PipelineError> {
        match self
            .runs
            .request_cancel(owner_id, run_id, self.clock.now())
            .await?
            .ok_or(PipelineError::NotFound)?
        {
            CancelOutcome::Requested => {
                self.notify(RUN_CANCEL_CHANNEL, run_id).await;
                Ok(())
            }
            CancelOutcome::CancelledNow(run) => {
                self.events.publish(Event::new(
                    owner_id,
                    "run.finished",
                    json!({"run_id": run.id, "pipeline_id": run.pipeline_id, "status": "cancelled"}),
                ));
                Ok(())
            }
            CancelOutcome::AlreadyFinished(status) => {
                Err(PipelineError::RunFinished(status.as_str()))
            }
        }
    }

    async fn notify(&self, channel: &str, run_id: Uuid) {
        if let Some(n) = &self.notifier
            && let Err(e) = n.notify(channel, &run_id.to_string()).await
        {
            // Executors also poll and heartbeats carry the cancel flag: this only costs latency.
            warn!(error = %e, channel, "NOTIFY failed");
        }
    }
}
