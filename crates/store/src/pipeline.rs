//! [`PipelineRepository`] and [`RunRepository`] on PostgreSQL (schema `pipeline`).
//!
//! Runs are claimed with `FOR UPDATE SKIP LOCKED` under a lease (owner + expiry) that the
//! executor extends by heartbeat; `apply` upserts a run's node states and updates the run in ONE
//! statement, guarded by the lease, and `apply_many` commits the transitions of many runs in ONE
//! transaction (group commit; a lost lease is refused per run).

use crate::error::{db_err, invalid};
use crate::page::query_page;
use crate::pool::{PgPool, conn};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use gathering_domain::codes;
use gathering_domain::pipeline::{
    CancelOutcome, ClaimedRun, HeldLease, NewPipeline, NodeRun, NodeStatus, Pipeline,
    PipelineDefinition, PipelineRepository, PipelineUpdate, RescueReport, Run, RunCommit,
    RunDetail, RunError, RunRepository, RunStatus, RunTransition,
};
use gathering_domain::{Page, PageRequest, RepoError};
use serde_json::Value;
use std::collections::HashMap;
use tokio_postgres::{GenericClient, Row, Statement};
use uuid::Uuid;

fn to_json<T: serde::Serialize>(column: &'static str, v: &T) -> Result<Value, RepoError> {
    serde_json::to_value(v).map_err(|e| invalid(column, e.to_string()))
}

const PIPELINE_COLS: &str = "p.id, p.owner_id, p.name, p.description, p.version, p.created_at, \
                             p.updated_at, v.definition";
const PIPELINE_FROM: &str = "pipeline.pipelines p JOIN pipeline.pipeline_versions v \
                             ON v.pipeline_id = p.id AND v.version = p.version";

fn pipeline_from_row(row: &Row) -> Result<Pipeline, RepoError> {
    let def: Value = row.try_get("definition").map_err(db_err)?;
    Ok(Pipeline {
        id: row.try_get("id").map_err(db_err)?,
        owner_id: row.try_get("owner_id").map_err(db_err)?,
        name: row.try_get("name").map_err(db_err)?,
        description: row.try_get("description").map_err(db_err)?,
        version: row.try_get("version").map_err(db_err)?,
        definition: serde_json::from_value(def)
            .map_err(|e| invalid("pipeline_versions.definition", e.to_string()))?,
        created_at: row.try_get("created_at").map_err(db_err)?,
        updated_at: row.try_get("updated_at").map_err(db_err)?,
    })
}

// JSON documents a run produced are read as text and decoded with a depth guard
// ([`stored_json`]): a value nested deeper than serde_json's recursion limit (stored before
// outputs were bounded) must not make a run, or the pipeline's whole run list, unreadable.
const RUN_COLS: &str = "r.id, r.pipeline_id, r.pipeline_version, r.owner_id, r.status, \
                        r.input::text AS input, r.output::text AS output, r.error::text AS error, \
                        r.created_at, r.started_at, r.finished_at, r.deadline_at, \
                        r.cancel_requested";

/// Deepest stored document decoded as it is (serde_json's own limit is 128).
const MAX_STORED_DEPTH: usize = 120;

/// Nesting depth of a JSON text (strings skipped); linear, no recursion.
fn json_text_depth(text: &str) -> usize {
    let (mut depth, mut max, mut in_string, mut escaped) = (0usize, 0usize, false, false);
    for b in text.bytes() {
        if in_string {
            match b {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                max = max.max(depth);
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    max
}

/// Decodes a stored JSON text; a document that cannot be decoded (too deep, or invalid) reads
/// as an `{"error": {"code": codes::UNREADABLE_VALUE, …}}` marker instead of failing the request.
fn stored_json(text: Option<String>, column: &str) -> Option<Value> {
    let text = text?;
    let problem = if json_text_depth(&text) > MAX_STORED_DEPTH {
        format!("the stored {column} is nested deeper than {MAX_STORED_DEPTH} levels")
    } else {
        match serde_json::from_str(&text) {
            Ok(v) => return Some(v),
            Err(e) => format!("the stored {column} cannot be decoded: {e}"),
        }
    };
    tracing::warn!(column, "{problem}");
    Some(serde_json::json!({"error": {"code": codes::UNREADABLE_VALUE, "message": problem}}))
}

fn run_error(v: Option<String>, column: &'static str) -> Option<RunError> {
    let text = v?;
    if json_text_depth(&text) <= MAX_STORED_DEPTH
        && let Ok(e) = serde_json::from_str::<RunError>(&text)
    {
        return Some(e);
    }
    Some(RunError::new(
        codes::UNREADABLE_VALUE,
        format!("the stored {column} cannot be decoded"),
    ))
}

fn run_from_row(row: &Row) -> Result<Run, RepoError> {
    let status: &str = row.try_get("status").map_err(db_err)?;
    Ok(Run {
        id: row.try_get("id").map_err(db_err)?,
        pipeline_id: row.try_get("pipeline_id").map_err(db_err)?,
        pipeline_version: row.try_get("pipeline_version").map_err(db_err)?,
        owner_id: row.try_get("owner_id").map_err(db_err)?,
        status: RunStatus::parse(status).ok_or_else(|| invalid("runs.status", status))?,
        input: stored_json(row.try_get("input").map_err(db_err)?, "runs.input")
            .unwrap_or(Value::Null),
        output: stored_json(row.try_get("output").map_err(db_err)?, "runs.output"),
        error: run_error(row.try_get("error").map_err(db_err)?, "runs.error"),
        created_at: row.try_get("created_at").map_err(db_err)?,
        started_at: row.try_get("started_at").map_err(db_err)?,
        finished_at: row.try_get("finished_at").map_err(db_err)?,
        deadline_at: row.try_get("deadline_at").map_err(db_err)?,
        cancel_requested: row.try_get("cancel_requested").map_err(db_err)?,
    })
}

const NODE_COLS: &str = "run_id, node_id, status, attempts, output::text AS output, \
                         error::text AS error, started_at, finished_at, wake_at";

fn node_from_row(row: &Row) -> Result<NodeRun, RepoError> {
    let status: &str = row.try_get("status").map_err(db_err)?;
    Ok(NodeRun {
        node_id: row.try_get("node_id").map_err(db_err)?,
        status: NodeStatus::parse(status).ok_or_else(|| invalid("node_runs.status", status))?,
        attempts: row.try_get("attempts").map_err(db_err)?,
        output: stored_json(row.try_get("output").map_err(db_err)?, "node_runs.output"),
        error: run_error(row.try_get("error").map_err(db_err)?, "node_runs.error"),
        started_at: row.try_get("started_at").map_err(db_err)?,
        finished_at: row.try_get("finished_at").map_err(db_err)?,
        wake_at: row.try_get("wake_at").map_err(db_err)?,
    })
}

#[cfg(test)]
mod decode_tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn documents_deeper_than_serde_can_read_decode_to_a_marker() {
        let deep = format!("{}1{}", "[".repeat(5000), "]".repeat(5000));
        let v = stored_json(Some(deep), "node_runs.output").unwrap();
        assert_eq!(v["error"]["code"], "unreadable_value");
        let ok = stored_json(Some(r#"{"a": "[[[[[[", "b": [1]}"#.into()), "x").unwrap();
        assert_eq!(ok["b"][0], 1);
        assert_eq!(json_text_depth(r#"{"a": "[[\"[[[", "b": [1]}"#), 2);
        assert!(run_error(Some("{".repeat(300)), "runs.error").is_some());
    }
}

#[derive(Clone)]
pub struct PgPipelineRepository {
    pool: PgPool,
}

impl PgPipelineRepository {
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }
}

#[async_trait]
impl PipelineRepository for PgPipelineRepository {
    async fn create(&self, new: NewPipeline, now: DateTime<Utc>) -> Result<Pipeline, RepoError> {
        let id = Uuid::now_v7();
        let def = to_json("pipeline_versions.definition", &new.definition)?;
        let c = conn(&self.pool).await?;
        let stmt = c
            .prepare_cached(
                "WITH p AS (
                     INSERT INTO pipeline.pipelines
                         (id, owner_id, name, description, version, created_at, updated_at)
                     VALUES ($1, $2, $3, $4, 1, $6, $6) RETURNING id)
                 INSERT INTO pipeline.pipeline_versions (pipeline_id, version, definition, created_at)
                 SELECT id, 1, $5, $6 FROM p",
            )
            .await
            .map_err(db_err)?;
        c.execute(
            &stmt,
            &[&id, &new.owner_id, &new.name, &new.description, &def, &now],
        )
        .await
        .map_err(db_err)?;
        Ok(Pipeline {
            id,
            owner_id: new.owner_id,
            name: new.name,
            description: new.description,
            version: 1,
            definition: new.definition,
            created_at: now,
            updated_at: now,
        })
    }

    async fn get(&self, owner_id: Uuid, id: Uuid) -> Result<Option<Pipeline>, RepoError> {
        let c = conn(&self.pool).await?;
        let stmt = c
            .prepare_cached(&format!(
                "SELECT {PIPELINE_COLS} FROM {PIPELINE_FROM} WHERE p.id = $1 AND p.owner_id = $2"
            ))
            .await
            .map_err(db_err)?;
        let row = c
            .query_opt(&stmt, &[&id, &owner_id])
            .await
            .map_err(db_err)?;
        row.as_ref().map(pipeline_from_row).transpose()
    }

    async fn list(&self, owner_id: Uuid, page: PageRequest) -> Result<Page<Pipeline>, RepoError> {
        let c = conn(&self.pool).await?;
        query_page(
            &c,
            &format!(
                "SELECT {PIPELINE_COLS} FROM {PIPELINE_FROM}
                 WHERE p.owner_id = $1 AND ($2::uuid IS NULL OR p.id < $2)
                 ORDER BY p.id DESC LIMIT $3"
            ),
            &[&owner_id, &page.cursor, &page.fetch_limit()],
            page,
            pipeline_from_row,
            |p| p.id,
        )
        .await
    }

    async fn update(
        &self,
        owner_id: Uuid,
        id: Uuid,
        update: PipelineUpdate,
        now: DateTime<Utc>,
    ) -> Result<Option<Pipeline>, RepoError> {
        let mut c = conn(&self.pool).await?;
        let tx = c.transaction().await.map_err(db_err)?;
        let row = tx
            .query_opt(
                &format!(
                    "SELECT {PIPELINE_COLS} FROM {PIPELINE_FROM}
                     WHERE p.id = $1 AND p.owner_id = $2 FOR UPDATE OF p"
                ),
                &[&id, &owner_id],
            )
            .await
            .map_err(db_err)?;
        let Some(row) = row else {
            return Ok(None);
        };
        let mut p = pipeline_from_row(&row)?;
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
        let def = to_json("pipeline_versions.definition", &p.definition)?;
        tx.execute(
            "UPDATE pipeline.pipelines SET name = $2, description = $3, version = $4, updated_at = $5
             WHERE id = $1",
            &[&id, &p.name, &p.description, &p.version, &now],
        )
        .await
        .map_err(db_err)?;
        tx.execute(
            "INSERT INTO pipeline.pipeline_versions (pipeline_id, version, definition, created_at)
             VALUES ($1, $2, $3, $4)",
            &[&id, &p.version, &def, &now],
        )
        .await
        .map_err(db_err)?;
        tx.commit().await.map_err(db_err)?;
        Ok(Some(p))
    }

    async fn delete(&self, owner_id: Uuid, id: Uuid) -> Result<bool, RepoError> {
        let c = conn(&self.pool).await?;
        let n = c
            .execute(
                "DELETE FROM pipeline.pipelines WHERE id = $1 AND owner_id = $2",
                &[&id, &owner_id],
            )
            .await
            .map_err(db_err)?;
        Ok(n > 0)
    }
}

#[derive(Clone)]
pub struct PgRunRepository {
    pool: PgPool,
    synchronous_transitions: bool,
}

impl PgRunRepository {
    /// Every transition waits for its WAL flush: a node recorded as finished is never run
    /// again, even after a database crash.
    pub fn new(pool: PgPool) -> Self {
        Self {
            pool,
            synchronous_transitions: true,
        }
    }

    /// `false` commits intermediate node transitions (`RunCommit::Nodes`) with
    /// `synchronous_commit = off` (`GATHERING__PIPELINE__ASYNC_NODE_COMMITS`): they skip the WAL
    /// flush wait, which bounds node throughput. A *database* crash may then lose the last few
    /// hundred milliseconds of them, which only means those nodes run again after resume with
    /// the same idempotency key (the rule for an executor crash). Claims, finishes, releases and
    /// cancels stay synchronous, and a synchronous commit also makes every earlier transition
    /// durable (the WAL is ordered).
    pub fn with_synchronous_transitions(mut self, on: bool) -> Self {
        self.synchronous_transitions = on;
        self
    }
}

#[async_trait]
impl RunRepository for PgRunRepository {
    async fn create_run(
        &self,
        owner_id: Uuid,
        pipeline_id: Uuid,
        input: Value,
        now: DateTime<Utc>,
    ) -> Result<Option<Run>, RepoError> {
        let c = conn(&self.pool).await?;
        let stmt = c
            .prepare_cached(&format!(
                "WITH r AS (
                     INSERT INTO pipeline.runs
                         (id, pipeline_id, pipeline_version, owner_id, status, input, timeout_ms, created_at)
                     SELECT $1, p.id, p.version, p.owner_id, 'queued', $4,
                            (v.definition->>'timeout_ms')::bigint, $5
                     FROM {PIPELINE_FROM} WHERE p.id = $2 AND p.owner_id = $3
                     RETURNING *)
                 SELECT {RUN_COLS} FROM r"
            ))
            .await
            .map_err(db_err)?;
        let row = c
            .query_opt(
                &stmt,
                &[&Uuid::now_v7(), &pipeline_id, &owner_id, &input, &now],
            )
            .await
            .map_err(db_err)?;
        row.as_ref().map(run_from_row).transpose()
    }

    async fn get_run(&self, owner_id: Uuid, run_id: Uuid) -> Result<Option<RunDetail>, RepoError> {
        let c = conn(&self.pool).await?;
        let stmt = c
            .prepare_cached(&format!(
                "SELECT {RUN_COLS},
                        jsonb_path_query_array(v.definition, '$.nodes[*].id') AS node_order
                 FROM pipeline.runs r
                 JOIN pipeline.pipeline_versions v
                   ON v.pipeline_id = r.pipeline_id AND v.version = r.pipeline_version
                 WHERE r.id = $1 AND r.owner_id = $2"
            ))
            .await
            .map_err(db_err)?;
        let Some(row) = c
            .query_opt(&stmt, &[&run_id, &owner_id])
            .await
            .map_err(db_err)?
        else {
            return Ok(None);
        };
        let run = run_from_row(&row)?;
        let order: Value = row.try_get("node_order").map_err(db_err)?;
        let node_order: Vec<String> = serde_json::from_value(order)
            .map_err(|e| invalid("pipeline_versions.definition", e.to_string()))?;
        let stmt = c
            .prepare_cached(&format!(
                "SELECT {NODE_COLS} FROM pipeline.node_runs WHERE run_id = $1 LIMIT 10000"
            ))
            .await
            .map_err(db_err)?;
        let nodes = c
            .query(&stmt, &[&run_id])
            .await
            .map_err(db_err)?
            .iter()
            .map(node_from_row)
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Some(RunDetail {
            run,
            nodes,
            node_order,
        }))
    }

    async fn list_runs(
        &self,
        owner_id: Uuid,
        pipeline_id: Uuid,
        page: PageRequest,
    ) -> Result<Option<Page<Run>>, RepoError> {
        let c = conn(&self.pool).await?;
        let stmt = c
            .prepare_cached("SELECT 1 FROM pipeline.pipelines WHERE id = $1 AND owner_id = $2")
            .await
            .map_err(db_err)?;
        let exists = c
            .query_opt(&stmt, &[&pipeline_id, &owner_id])
            .await
            .map_err(db_err)?;
        if exists.is_none() {
            return Ok(None);
        }
        Ok(Some(
            query_page(
                &c,
                &format!(
                    "SELECT {RUN_COLS} FROM pipeline.runs r
                 WHERE r.pipeline_id = $1 AND r.owner_id = $2 AND ($3::uuid IS NULL OR r.id < $3)
                 ORDER BY r.id DESC LIMIT $4"
                ),
                &[&pipeline_id, &owner_id, &page.cursor, &page.fetch_limit()],
                page,
                run_from_row,
                |r| r.id,
            )
            .await?,
        ))
    }

    async fn claim(
        &self,
        owner: Uuid,
        now: DateTime<Utc>,
        lease_until: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<ClaimedRun>, RepoError> {
        let c = conn(&self.pool).await?;
        let stmt = c
            .prepare_cached(&format!(
                "WITH c AS (
                     SELECT id, started_at IS NULL AS first_start FROM pipeline.runs
                     WHERE lease_owner IS NULL AND status IN ('queued', 'running')
                       AND (due_at IS NULL OR due_at <= $1)
                     ORDER BY due_at NULLS FIRST, id
                     LIMIT $2
                     FOR UPDATE SKIP LOCKED),
                 r AS (
                     UPDATE pipeline.runs r SET
                         status = 'running', lease_owner = $3, lease_expires_at = $4, due_at = NULL,
                         started_at = COALESCE(r.started_at, $1),
                         deadline_at = COALESCE(r.deadline_at,
                             $1 + r.timeout_ms * interval '1 millisecond')
                     FROM c WHERE r.id = c.id
                     RETURNING r.*, c.first_start)
                 SELECT {RUN_COLS}, r.first_start, r.rescue_count, v.definition
                 FROM r JOIN pipeline.pipeline_versions v
                   ON v.pipeline_id = r.pipeline_id AND v.version = r.pipeline_version"
            ))
            .await
            .map_err(db_err)?;
        let rows = c
            .query(&stmt, &[&now, &i64::from(limit), &owner, &lease_until])
            .await
            .map_err(db_err)?;
        if rows.is_empty() {
            return Ok(Vec::new());
        }
        let mut claimed = Vec::with_capacity(rows.len());
        for row in &rows {
            let def: Value = row.try_get("definition").map_err(db_err)?;
            let definition: PipelineDefinition = serde_json::from_value(def)
                .map_err(|e| invalid("pipeline_versions.definition", e.to_string()))?;
            claimed.push(ClaimedRun {
                run: run_from_row(row)?,
                definition,
                nodes: Vec::new(),
                first_start: row.try_get("first_start").map_err(db_err)?,
                rescue_count: u32::try_from(row.try_get::<_, i32>("rescue_count").map_err(db_err)?)
                    .unwrap_or(0),
            });
        }
        // Node states of the runs that already started (resume).
        let resumed: Vec<Uuid> = claimed
            .iter()
            .filter(|c| !c.first_start)
            .map(|c| c.run.id)
            .collect();
        if !resumed.is_empty() {
            let stmt = c
                .prepare_cached(&format!(
                    "SELECT {NODE_COLS} FROM pipeline.node_runs WHERE run_id = ANY($1) LIMIT 100000"
                ))
                .await
                .map_err(db_err)?;
            let mut by_run: HashMap<Uuid, Vec<NodeRun>> = HashMap::new();
            for row in c.query(&stmt, &[&resumed]).await.map_err(db_err)? {
                let run_id: Uuid = row.try_get("run_id").map_err(db_err)?;
                by_run.entry(run_id).or_default().push(node_from_row(&row)?);
            }
            for c in &mut claimed {
                if let Some(nodes) = by_run.remove(&c.run.id) {
                    c.nodes = nodes;
                }
            }
        }
        Ok(claimed)
    }

    async fn heartbeat(
        &self,
        owner: Uuid,
        run_ids: &[Uuid],
        lease_until: DateTime<Utc>,
    ) -> Result<Vec<HeldLease>, RepoError> {
        if run_ids.is_empty() {
            return Ok(Vec::new());
        }
        let c = conn(&self.pool).await?;
        let stmt = c
            .prepare_cached(
                // Rows locked in id order, as `apply_many` takes them: no deadlock between a
                // heartbeat and a batch of transitions that end runs.
                "WITH l AS (
                     SELECT id FROM pipeline.runs
                     WHERE id = ANY($1) AND lease_owner = $2
                     ORDER BY id FOR NO KEY UPDATE)
                 UPDATE pipeline.runs r SET lease_expires_at = $3
                 FROM l WHERE r.id = l.id AND r.lease_owner = $2
                 RETURNING r.id, r.cancel_requested",
            )
            .await
            .map_err(db_err)?;
        let rows = c
            .query(&stmt, &[&run_ids, &owner, &lease_until])
            .await
            .map_err(db_err)?;
        rows.iter()
            .map(|r| {
                Ok(HeldLease {
                    run_id: r.try_get("id").map_err(db_err)?,
                    cancel_requested: r.try_get("cancel_requested").map_err(db_err)?,
                })
            })
            .collect()
    }

    async fn apply(
        &self,
        run_id: Uuid,
        owner: Uuid,
        nodes: &[NodeRun],
        commit: RunCommit,
    ) -> Result<(), RepoError> {
        let mut results = self.apply_batch(owner, &[(run_id, nodes, &commit)]).await?;
        results.pop().unwrap_or(Ok(()))
    }

    async fn apply_many(
        &self,
        owner: Uuid,
        batch: &[RunTransition],
    ) -> Result<Vec<Result<(), RepoError>>, RepoError> {
        let items: Vec<(Uuid, &[NodeRun], &RunCommit)> = batch
            .iter()
            .map(|t| (t.run_id, t.nodes.as_slice(), &t.commit))
            .collect();
        self.apply_batch(owner, &items).await
    }

    async fn request_cancel(
        &self,
        owner_id: Uuid,
        run_id: Uuid,
        now: DateTime<Utc>,
    ) -> Result<Option<CancelOutcome>, RepoError> {
        let mut c = conn(&self.pool).await?;
        let tx = c.transaction().await.map_err(db_err)?;
        let Some(row) = tx
            .query_opt(
                "SELECT status, lease_owner FROM pipeline.runs
                 WHERE id = $1 AND owner_id = $2 FOR UPDATE",
                &[&run_id, &owner_id],
            )
            .await
            .map_err(db_err)?
        else {
            return Ok(None);
        };
        let status: &str = row.try_get("status").map_err(db_err)?;
        let status = RunStatus::parse(status).ok_or_else(|| invalid("runs.status", status))?;
        if status.is_terminal() {
            return Ok(Some(CancelOutcome::AlreadyFinished(status)));
        }
        let leased: Option<Uuid> = row.try_get("lease_owner").map_err(db_err)?;
        if leased.is_some() {
            tx.execute(
                "UPDATE pipeline.runs SET cancel_requested = true WHERE id = $1",
                &[&run_id],
            )
            .await
            .map_err(db_err)?;
            tx.commit().await.map_err(db_err)?;
            return Ok(Some(CancelOutcome::Requested));
        }
        // Nobody runs it (queued, or waiting on a timer): cancel it here and now.
        let cancelled: Value =
            serde_json::json!({"code": codes::CANCELLED, "message": "the run was cancelled"});
        let row = tx
            .query_one(
                &format!(
                    "UPDATE pipeline.runs r SET cancel_requested = true, status = 'cancelled',
                         finished_at = $2, error = $3, due_at = NULL
                     WHERE r.id = $1 RETURNING {RUN_COLS}"
                ),
                &[&run_id, &now, &cancelled],
            )
            .await
            .map_err(db_err)?;
        tx.execute(
            "UPDATE pipeline.node_runs SET status = 'cancelled', finished_at = $2, wake_at = NULL
             WHERE run_id = $1 AND status IN ('pending', 'running')",
            &[&run_id, &now],
        )
        .await
        .map_err(db_err)?;
        tx.commit().await.map_err(db_err)?;
        Ok(Some(CancelOutcome::CancelledNow(Box::new(run_from_row(
            &row,
        )?))))
    }

    async fn rescue_stale(
        &self,
        now: DateTime<Utc>,
        max_rescues: u32,
    ) -> Result<RescueReport, RepoError> {
        let c = conn(&self.pool).await?;
        let stmt = c
            .prepare_cached(
                "WITH s AS (
                     SELECT id FROM pipeline.runs
                     WHERE lease_owner IS NOT NULL AND lease_expires_at < $1
                     ORDER BY lease_expires_at LIMIT 1000
                     FOR UPDATE SKIP LOCKED)
                 UPDATE pipeline.runs r SET
                     lease_owner = NULL, lease_expires_at = NULL, due_at = NULL,
                     rescue_count = r.rescue_count + 1,
                     status = CASE WHEN r.rescue_count + 1 > $2 THEN 'failed' ELSE r.status END,
                     finished_at = CASE WHEN r.rescue_count + 1 > $2 THEN $1 ELSE r.finished_at END,
                     error = CASE WHEN r.rescue_count + 1 > $2
                         THEN jsonb_build_object('code', 'crash_loop', 'message',
                              'the run''s executor stopped ' || (r.rescue_count + 1)
                              || ' times while running it')
                         ELSE r.error END
                 FROM s WHERE r.id = s.id
                 RETURNING r.id, r.owner_id, r.status",
            )
            .await
            .map_err(db_err)?;
        let max = i32::try_from(max_rescues).unwrap_or(i32::MAX);
        let rows = c.query(&stmt, &[&now, &max]).await.map_err(db_err)?;
        let mut report = RescueReport::default();
        for row in rows {
            let id: Uuid = row.try_get("id").map_err(db_err)?;
            let status: &str = row.try_get("status").map_err(db_err)?;
            if status == "failed" {
                report
                    .abandoned
                    .push((id, row.try_get("owner_id").map_err(db_err)?));
            } else {
                report.requeued.push(id);
            }
        }
        Ok(report)
    }
}

/// The parameters of [`APPLY_SQL`] for one wave of transitions (at most one per run), owned:
/// one row per run (`runs` arrays) and one row per node state (`nodes` arrays).
#[derive(Default)]
struct Wave {
    run_ids: Vec<Uuid>,
    modes: Vec<&'static str>,
    statuses: Vec<Option<&'static str>>,
    outputs: Vec<Option<Value>>,
    errors: Vec<Option<Value>>,
    ats: Vec<Option<DateTime<Utc>>>,
    due_ats: Vec<Option<DateTime<Utc>>>,
    n_run_ids: Vec<Uuid>,
    n_ids: Vec<String>,
    n_statuses: Vec<&'static str>,
    n_attempts: Vec<i32>,
    n_outputs: Vec<Option<Value>>,
    n_errors: Vec<Option<Value>>,
    n_started: Vec<Option<DateTime<Utc>>>,
    n_finished: Vec<Option<DateTime<Utc>>>,
    n_wake: Vec<Option<DateTime<Utc>>>,
}

impl Wave {
    fn push(
        &mut self,
        run_id: Uuid,
        nodes: &[NodeRun],
        commit: &RunCommit,
    ) -> Result<(), RepoError> {
        // One row per node (the last state wins) so the upsert touches each row once.
        let mut last: Vec<&NodeRun> = Vec::with_capacity(nodes.len());
        let mut at: HashMap<&str, usize> = HashMap::with_capacity(nodes.len());
        for n in nodes {
            match at.get(n.node_id.as_str()) {
                Some(&i) => last[i] = n,
                None => {
                    at.insert(n.node_id.as_str(), last.len());
                    last.push(n);
                }
            }
        }
        for n in last {
            self.n_run_ids.push(run_id);
            self.n_ids.push(n.node_id.clone());
            self.n_statuses.push(n.status.as_str());
            self.n_attempts.push(n.attempts);
            self.n_outputs.push(n.output.clone());
            self.n_errors.push(
                n.error
                    .as_ref()
                    .map(|e| to_json("node_runs.error", e))
                    .transpose()?,
            );
            self.n_started.push(n.started_at);
            self.n_finished.push(n.finished_at);
            self.n_wake.push(n.wake_at);
        }
        let (mode, status, output, error, at, due_at) = match commit {
            RunCommit::Nodes => ("nodes", None, None, None, None, None),
            RunCommit::Finish {
                status,
                output,
                error,
                at,
            } => (
                "finish",
                Some(status.as_str()),
                output.clone(),
                error
                    .as_ref()
                    .map(|e| to_json("runs.error", e))
                    .transpose()?,
                Some(*at),
                None,
            ),
            RunCommit::Release { due_at } => ("release", None, None, None, None, *due_at),
            RunCommit::Interrupted => ("interrupt", None, None, None, None, None),
        };
        self.run_ids.push(run_id);
        self.modes.push(mode);
        self.statuses.push(status);
        self.outputs.push(output);
        self.errors.push(error);
        self.ats.push(at);
        self.due_ats.push(due_at);
        Ok(())
    }
}

/// One wave of transitions (at most one per run) in ONE statement: locks the rows of the runs
/// whose lease `$1` holds, in id order (the order [`RunRepository::heartbeat`] locks them in,
/// so the two cannot deadlock, and a rescue cannot take a lease between check and commit),
/// upserts their node states and applies their run commits; answers the runs held. Nothing is
/// written for a run whose lease is not held. `$18` false lets the transaction commit without
/// waiting for the WAL flush (only ever for node-only batches).
const APPLY_SQL: &str = "WITH held AS (
         SELECT id FROM pipeline.runs
         WHERE id = ANY($2) AND lease_owner = $1
         ORDER BY id FOR NO KEY UPDATE),
     t AS (
         SELECT * FROM unnest($2::uuid[], $3::text[], $4::text[], $5::jsonb[], $6::jsonb[],
                              $7::timestamptz[], $8::timestamptz[])
              AS t(run_id, mode, status, output, error, at, due_at)),
     nodes AS (
         INSERT INTO pipeline.node_runs AS n
             (run_id, node_id, status, attempts, output, error, started_at, finished_at, wake_at)
         SELECT u.run_id, u.node_id, u.status, u.attempts, u.output, u.error,
                u.started_at, u.finished_at, u.wake_at
         FROM unnest($9::uuid[], $10::text[], $11::text[], $12::int4[], $13::jsonb[],
                     $14::jsonb[], $15::timestamptz[], $16::timestamptz[], $17::timestamptz[])
              AS u(run_id, node_id, status, attempts, output, error, started_at, finished_at,
                   wake_at)
         WHERE u.run_id IN (SELECT id FROM held)
         ON CONFLICT (run_id, node_id) DO UPDATE SET
             status = EXCLUDED.status, attempts = EXCLUDED.attempts,
             output = EXCLUDED.output, error = EXCLUDED.error,
             started_at = COALESCE(n.started_at, EXCLUDED.started_at),
             finished_at = EXCLUDED.finished_at, wake_at = EXCLUDED.wake_at
         RETURNING 1),
     run AS (
         UPDATE pipeline.runs r SET
             status = CASE WHEN t.mode = 'finish' THEN t.status ELSE r.status END,
             output = CASE WHEN t.mode = 'finish' THEN t.output ELSE r.output END,
             error = CASE WHEN t.mode = 'finish' THEN t.error ELSE r.error END,
             finished_at = CASE WHEN t.mode = 'finish' THEN t.at ELSE r.finished_at END,
             due_at = CASE WHEN t.mode = 'release' THEN t.due_at ELSE NULL END,
             rescue_count = CASE WHEN t.mode = 'interrupt' THEN r.rescue_count + 1
                                 ELSE r.rescue_count END,
             lease_owner = NULL, lease_expires_at = NULL
         FROM t WHERE r.id = t.run_id AND t.mode <> 'nodes'
           AND t.run_id IN (SELECT id FROM held)
         RETURNING 1)
     SELECT ARRAY(SELECT id FROM held) AS held,
            (SELECT count(*) FROM nodes) + (SELECT count(*) FROM run) AS written,
            set_config('synchronous_commit',
                       CASE WHEN $18::bool THEN current_setting('synchronous_commit')
                            ELSE 'off' END,
                       true) AS sync";

impl PgRunRepository {
    /// [`RunRepository::apply_many`]. The transitions are cut into waves — wave k holds the
    /// k-th transition of each run, so one run's transitions keep their order — and each wave
    /// is ONE [`APPLY_SQL`] statement; several waves share one transaction (pipelined on one
    /// connection), and a single wave is one autocommitted statement.
    async fn apply_batch(
        &self,
        owner: Uuid,
        items: &[(Uuid, &[NodeRun], &RunCommit)],
    ) -> Result<Vec<Result<(), RepoError>>, RepoError> {
        if items.is_empty() {
            return Ok(Vec::new());
        }
        let mut waves: Vec<Wave> = Vec::new();
        // (wave, run) of each item.
        let mut placed: Vec<(usize, Uuid)> = Vec::with_capacity(items.len());
        let mut seen: HashMap<Uuid, usize> = HashMap::with_capacity(items.len());
        for (run_id, nodes, commit) in items {
            let k = seen.entry(*run_id).or_insert(0);
            if waves.len() <= *k {
                waves.push(Wave::default());
            }
            waves[*k].push(*run_id, nodes, commit)?;
            placed.push((*k, *run_id));
            *k += 1;
        }
        // Only a batch of node-only transitions may skip the flush wait: any claim-ending
        // transition in it makes the whole commit synchronous.
        let sync = self.synchronous_transitions
            || items.iter().any(|(_, _, c)| !matches!(c, RunCommit::Nodes));
        let mut c = conn(&self.pool).await?;
        let held: Vec<Vec<Uuid>> = if waves.len() == 1 {
            let stmt = c.prepare_cached(APPLY_SQL).await.map_err(db_err)?;
            vec![apply_wave(&**c, &stmt, owner, &waves[0], sync).await?]
        } else {
            let tx = c.transaction().await.map_err(db_err)?;
            let stmt = tx.prepare_cached(APPLY_SQL).await.map_err(db_err)?;
            // Issued together: tokio-postgres pipelines them (sent and executed in this order).
            let answers = futures::future::join_all(
                waves
                    .iter()
                    .map(|w| apply_wave(&*tx, &stmt, owner, w, sync)),
            )
            .await;
            let held = answers.into_iter().collect::<Result<Vec<_>, _>>()?;
            tx.commit().await.map_err(db_err)?;
            held
        };
        Ok(placed
            .into_iter()
            .map(|(k, run_id)| {
                if held.get(k).is_some_and(|h| h.contains(&run_id)) {
                    Ok(())
                } else {
                    Err(RepoError::Conflict("lease".to_owned()))
                }
            })
            .collect())
    }
}

async fn apply_wave<C: GenericClient>(
    c: &C,
    stmt: &Statement,
    owner: Uuid,
    w: &Wave,
    sync: bool,
) -> Result<Vec<Uuid>, RepoError> {
    let row = c
        .query_one(
            stmt,
            &[
                &owner,
                &w.run_ids,
                &w.modes,
                &w.statuses,
                &w.outputs,
                &w.errors,
                &w.ats,
                &w.due_ats,
                &w.n_run_ids,
                &w.n_ids,
                &w.n_statuses,
                &w.n_attempts,
                &w.n_outputs,
                &w.n_errors,
                &w.n_started,
                &w.n_finished,
                &w.n_wake,
                &sync,
            ],
        )
        .await
        .map_err(db_err)?;
    row.try_get("held").map_err(db_err)
}
