//! [`ScheduleRepository`] on PostgreSQL (schema `scheduler`).
//!
//! Claiming happens in ONE transaction: due schedules are locked with `FOR UPDATE SKIP LOCKED`
//! and a transaction-scoped advisory lock each; every planned occurrence is inserted into
//! `scheduler.executions` (UNIQUE (schedule_id, scheduled_for), `ON CONFLICT DO NOTHING`) and
//! `next_run_at` is advanced before the commit. Once committed, the execution row is the claim:
//! no other instance can create the same occurrence again, whatever happens to the locks.

use crate::error::{db_err, invalid};
use crate::page::query_page;
use crate::pool::{PgPool, conn};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use gathering_domain::scheduler::{
    ActionType, ClaimOutcome, ClaimPlanner, ClaimedExecution, Execution, ExecutionFinish,
    ExecutionStatus, MissedRuns, NewSchedule, OverlapPolicy, Schedule, ScheduleRepository,
    ScheduleUpdate,
};
use gathering_domain::{Page, PageRequest, RepoError};
use serde_json::Value;
use std::collections::HashMap;
use tokio_postgres::Row;
use uuid::Uuid;

/// First key of the two-key advisory locks taken per schedule while claiming.
const ADVISORY_CLASS: i32 = 0x5C4E_D001;

const SCHEDULE_COLS: &str = "s.id, s.owner_id, s.name, s.cron, s.interval_secs, s.timezone, \
     s.action_type, s.action_config, s.enabled, s.missed_runs, s.overlap, s.max_executions, \
     s.execution_count, s.next_run_at, s.created_at, s.updated_at";

const EXECUTION_COLS: &str = "e.id, e.schedule_id, e.scheduled_for, e.status, e.started_at, \
     e.finished_at, e.result, e.error, e.instance_id, e.run_id";

fn schedule_from_row(row: &Row) -> Result<Schedule, RepoError> {
    let action: &str = row.try_get("action_type").map_err(db_err)?;
    let missed: &str = row.try_get("missed_runs").map_err(db_err)?;
    let overlap: &str = row.try_get("overlap").map_err(db_err)?;
    Ok(Schedule {
        id: row.try_get("id").map_err(db_err)?,
        owner_id: row.try_get("owner_id").map_err(db_err)?,
        name: row.try_get("name").map_err(db_err)?,
        cron: row.try_get("cron").map_err(db_err)?,
        interval_secs: row.try_get("interval_secs").map_err(db_err)?,
        timezone: row.try_get("timezone").map_err(db_err)?,
        action_type: ActionType::parse(action)
            .ok_or_else(|| invalid("schedules.action_type", action))?,
        action_config: row.try_get("action_config").map_err(db_err)?,
        enabled: row.try_get("enabled").map_err(db_err)?,
        missed_runs: MissedRuns::parse(missed)
            .ok_or_else(|| invalid("schedules.missed_runs", missed))?,
        overlap: OverlapPolicy::parse(overlap)
            .ok_or_else(|| invalid("schedules.overlap", overlap))?,
        max_executions: row.try_get("max_executions").map_err(db_err)?,
        execution_count: row.try_get("execution_count").map_err(db_err)?,
        next_run_at: row.try_get("next_run_at").map_err(db_err)?,
        created_at: row.try_get("created_at").map_err(db_err)?,
        updated_at: row.try_get("updated_at").map_err(db_err)?,
    })
}

fn execution_from_row(row: &Row) -> Result<Execution, RepoError> {
    let status: &str = row.try_get("status").map_err(db_err)?;
    Ok(Execution {
        id: row.try_get("id").map_err(db_err)?,
        schedule_id: row.try_get("schedule_id").map_err(db_err)?,
        scheduled_for: row.try_get("scheduled_for").map_err(db_err)?,
        status: ExecutionStatus::parse(status)
            .ok_or_else(|| invalid("executions.status", status))?,
        started_at: row.try_get("started_at").map_err(db_err)?,
        finished_at: row.try_get("finished_at").map_err(db_err)?,
        result: row.try_get("result").map_err(db_err)?,
        error: row.try_get("error").map_err(db_err)?,
        instance_id: row.try_get("instance_id").map_err(db_err)?,
        run_id: row.try_get("run_id").map_err(db_err)?,
    })
}

#[derive(Clone)]
pub struct PgScheduleRepository {
    pool: PgPool,
}

impl PgScheduleRepository {
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }
}

#[async_trait]
impl ScheduleRepository for PgScheduleRepository {
    async fn create(&self, new: NewSchedule) -> Result<Schedule, RepoError> {
        let c = conn(&self.pool).await?;
        let stmt = c
            .prepare_cached(&format!(
                "INSERT INTO scheduler.schedules AS s (id, owner_id, name, cron, interval_secs,
                     timezone, action_type, action_config, enabled, missed_runs, overlap,
                     max_executions, execution_count, next_run_at, created_at, updated_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, 0, $13, now(), now())
                 RETURNING {SCHEDULE_COLS}"
            ))
            .await
            .map_err(db_err)?;
        let row = c
            .query_one(
                &stmt,
                &[
                    &Uuid::now_v7(),
                    &new.owner_id,
                    &new.name,
                    &new.cron,
                    &new.interval_secs,
                    &new.timezone,
                    &new.action_type.as_str(),
                    &new.action_config,
                    &new.enabled,
                    &new.missed_runs.as_str(),
                    &new.overlap.as_str(),
                    &new.max_executions,
                    &new.next_run_at,
                ],
            )
            .await
            .map_err(db_err)?;
        schedule_from_row(&row)
    }

    async fn get(&self, owner: Uuid, id: Uuid) -> Result<Option<Schedule>, RepoError> {
        let c = conn(&self.pool).await?;
        let stmt = c
            .prepare_cached(&format!(
                "SELECT {SCHEDULE_COLS} FROM scheduler.schedules s WHERE s.id = $1 AND s.owner_id = $2"
            ))
            .await
            .map_err(db_err)?;
        c.query_opt(&stmt, &[&id, &owner])
            .await
            .map_err(db_err)?
            .map(|r| schedule_from_row(&r))
            .transpose()
    }

    async fn list(&self, owner: Uuid, page: PageRequest) -> Result<Page<Schedule>, RepoError> {
        let c = conn(&self.pool).await?;
        query_page(
            &c,
            &format!(
                "SELECT {SCHEDULE_COLS} FROM scheduler.schedules s
                 WHERE s.owner_id = $1 AND ($2::uuid IS NULL OR s.id < $2)
                 ORDER BY s.id DESC LIMIT $3"
            ),
            &[&owner, &page.cursor, &page.fetch_limit()],
            page,
            schedule_from_row,
            |s| s.id,
        )
        .await
    }

    async fn update(
        &self,
        owner: Uuid,
        id: Uuid,
        u: ScheduleUpdate,
    ) -> Result<Option<Schedule>, RepoError> {
        let c = conn(&self.pool).await?;
        let stmt = c
            .prepare_cached(&format!(
                "UPDATE scheduler.schedules s SET name = $3, cron = $4, interval_secs = $5,
                     timezone = $6, action_type = $7, action_config = $8, enabled = $9,
                     missed_runs = $10, overlap = $11, max_executions = $12, next_run_at = $13,
                     updated_at = now()
                 WHERE s.id = $1 AND s.owner_id = $2
                 RETURNING {SCHEDULE_COLS}"
            ))
            .await
            .map_err(db_err)?;
        c.query_opt(
            &stmt,
            &[
                &id,
                &owner,
                &u.name,
                &u.cron,
                &u.interval_secs,
                &u.timezone,
                &u.action_type.as_str(),
                &u.action_config,
                &u.enabled,
                &u.missed_runs.as_str(),
                &u.overlap.as_str(),
                &u.max_executions,
                &u.next_run_at,
            ],
        )
        .await
        .map_err(db_err)?
        .map(|r| schedule_from_row(&r))
        .transpose()
    }

    async fn delete(&self, owner: Uuid, id: Uuid) -> Result<bool, RepoError> {
        let c = conn(&self.pool).await?;
        let n = c
            .execute(
                "DELETE FROM scheduler.schedules WHERE id = $1 AND owner_id = $2",
                &[&id, &owner],
            )
            .await
            .map_err(db_err)?;
        Ok(n > 0)
    }

    async fn owns_agent(&self, owner: Uuid, agent_id: Uuid) -> Result<bool, RepoError> {
        let c = conn(&self.pool).await?;
        let row = c
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM agents.agents WHERE id = $1 AND owner_id = $2)",
                &[&agent_id, &owner],
            )
            .await
            .map_err(db_err)?;
        row.try_get(0).map_err(db_err)
    }

    async fn owns_pipeline(&self, owner: Uuid, pipeline_id: Uuid) -> Result<bool, RepoError> {
        let c = conn(&self.pool).await?;
        let row = c
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM pipeline.pipelines WHERE id = $1 AND owner_id = $2)",
                &[&pipeline_id, &owner],
            )
            .await
            .map_err(db_err)?;
        row.try_get(0).map_err(db_err)
    }

    async fn claim_due(
        &self,
        now: DateTime<Utc>,
        batch: u32,
        instance_id: Uuid,
        planner: &dyn ClaimPlanner,
    ) -> Result<ClaimOutcome, RepoError> {
        // Set-based: five round trips per batch, whatever its size.
        let mut c = conn(&self.pool).await?;
        let tx = c.transaction().await.map_err(db_err)?;
        let select = tx
            .prepare_cached(&format!(
                "SELECT {SCHEDULE_COLS} FROM scheduler.schedules s
                 WHERE s.enabled AND s.next_run_at <= $1
                 ORDER BY s.next_run_at LIMIT $2
                 FOR UPDATE SKIP LOCKED"
            ))
            .await
            .map_err(db_err)?;
        let rows = tx
            .query(&select, &[&now, &i64::from(batch)])
            .await
            .map_err(db_err)?;
        let mut outcome = ClaimOutcome {
            examined: rows.len(),
            ..ClaimOutcome::default()
        };
        if rows.is_empty() {
            tx.commit().await.map_err(db_err)?;
            return Ok(outcome);
        }
        let schedules = rows
            .iter()
            .map(schedule_from_row)
            .collect::<Result<Vec<_>, _>>()?;
        let ids: Vec<Uuid> = schedules.iter().map(|s| s.id).collect();

        // A transaction-scoped advisory lock per schedule, and whether it has a running execution.
        let lock = tx
            .prepare_cached(
                "SELECT u.id,
                        pg_try_advisory_xact_lock($1::int4, hashtext(u.id::text)) AS locked,
                        EXISTS (SELECT 1 FROM scheduler.executions e
                                WHERE e.schedule_id = u.id AND e.status = 'running') AS busy
                 FROM unnest($2::uuid[]) AS u(id)",
            )
            .await
            .map_err(db_err)?;
        let mut state: HashMap<Uuid, (bool, bool)> = HashMap::with_capacity(ids.len());
        for r in tx
            .query(&lock, &[&ADVISORY_CLASS, &ids])
            .await
            .map_err(db_err)?
        {
            let id: Uuid = r.try_get("id").map_err(db_err)?;
            let locked: bool = r.try_get("locked").map_err(db_err)?;
            let busy: bool = r.try_get("busy").map_err(db_err)?;
            state.insert(id, (locked, busy));
        }

        // Plan every locked schedule.
        let mut ex_ids = Vec::new();
        let mut ex_schedule = Vec::new();
        let mut ex_for = Vec::new();
        let mut ex_status = Vec::new();
        let mut ex_finished: Vec<Option<DateTime<Utc>>> = Vec::new();
        let mut adv_ids = Vec::new();
        let mut adv_next: Vec<Option<DateTime<Utc>>> = Vec::new();
        for s in &schedules {
            let Some(&(true, busy)) = state.get(&s.id) else {
                // Another transaction works on this schedule right now; it is left to it.
                continue;
            };
            let plan = planner.plan(s, now);
            if let Some(at) = plan.run {
                let skip = busy && s.overlap == OverlapPolicy::Skip;
                ex_ids.push(Uuid::now_v7());
                ex_schedule.push(s.id);
                ex_for.push(at);
                if skip {
                    ex_status.push(ExecutionStatus::Skipped.as_str());
                    ex_finished.push(Some(now));
                } else {
                    ex_status.push(ExecutionStatus::Running.as_str());
                    ex_finished.push(None);
                }
            }
            adv_ids.push(s.id);
            adv_next.push(plan.next_run_at);
        }

        // One execution per occurrence: the unique key makes a second insert a no-op.
        // A schedule that already reached max_executions (re-enabled, or its limit lowered below
        // its count) gets no execution at all; the advance below disables it.
        let mut started: HashMap<Uuid, Execution> = HashMap::new();
        if !ex_ids.is_empty() {
            let insert = tx
                .prepare_cached(&format!(
                    "INSERT INTO scheduler.executions AS e (id, schedule_id, scheduled_for, status,
                         started_at, finished_at, instance_id)
                     SELECT u.id, u.schedule_id, u.scheduled_for, u.status, $6, u.finished_at, $7
                     FROM unnest($1::uuid[], $2::uuid[], $3::timestamptz[], $4::text[],
                                 $5::timestamptz[])
                          AS u(id, schedule_id, scheduled_for, status, finished_at)
                     JOIN scheduler.schedules s ON s.id = u.schedule_id
                     WHERE s.max_executions IS NULL OR s.execution_count < s.max_executions
                     ON CONFLICT (schedule_id, scheduled_for) DO NOTHING
                     RETURNING {EXECUTION_COLS}"
                ))
                .await
                .map_err(db_err)?;
            for r in tx
                .query(
                    &insert,
                    &[
                        &ex_ids,
                        &ex_schedule,
                        &ex_for,
                        &ex_status,
                        &ex_finished,
                        &now,
                        &instance_id,
                    ],
                )
                .await
                .map_err(db_err)?
            {
                let e = execution_from_row(&r)?;
                if e.status == ExecutionStatus::Skipped {
                    outcome.skipped.push(e);
                } else {
                    started.insert(e.schedule_id, e);
                }
            }
        }

        // Advance next_run_at (and count, and disable at max_executions) in the same transaction.
        if !adv_ids.is_empty() {
            let adv_started: Vec<i64> = adv_ids
                .iter()
                .map(|id| i64::from(started.contains_key(id)))
                .collect();
            let advance = tx
                .prepare_cached(&format!(
                    "UPDATE scheduler.schedules s SET next_run_at = u.next_run_at,
                         execution_count = s.execution_count + u.started,
                         enabled = s.max_executions IS NULL
                                   OR s.execution_count + u.started < s.max_executions
                     FROM unnest($1::uuid[], $2::timestamptz[], $3::int8[])
                          AS u(id, next_run_at, started)
                     WHERE s.id = u.id
                     RETURNING {SCHEDULE_COLS}"
                ))
                .await
                .map_err(db_err)?;
            for r in tx
                .query(&advance, &[&adv_ids, &adv_next, &adv_started])
                .await
                .map_err(db_err)?
            {
                let schedule = schedule_from_row(&r)?;
                if let Some(execution) = started.remove(&schedule.id) {
                    outcome.to_run.push(ClaimedExecution {
                        execution,
                        schedule,
                    });
                }
            }
        }
        tx.commit().await.map_err(db_err)?;
        outcome
            .to_run
            .sort_by_key(|c| (c.execution.scheduled_for, c.execution.id));
        Ok(outcome)
    }

    async fn insert_run_now(
        &self,
        owner: Uuid,
        id: Uuid,
        now: DateTime<Utc>,
        instance_id: Uuid,
    ) -> Result<Option<ClaimedExecution>, RepoError> {
        let mut c = conn(&self.pool).await?;
        let tx = c.transaction().await.map_err(db_err)?;
        let select = tx
            .prepare_cached(&format!(
                "SELECT {SCHEDULE_COLS} FROM scheduler.schedules s
                 WHERE s.id = $1 AND s.owner_id = $2"
            ))
            .await
            .map_err(db_err)?;
        let Some(row) = tx
            .query_opt(&select, &[&id, &owner])
            .await
            .map_err(db_err)?
        else {
            return Ok(None);
        };
        let schedule = schedule_from_row(&row)?;
        let insert = tx
            .prepare_cached(&format!(
                "INSERT INTO scheduler.executions AS e (id, schedule_id, scheduled_for, status,
                     started_at, instance_id)
                 VALUES ($1, $2, $3, 'running', $3, $4)
                 RETURNING {EXECUTION_COLS}"
            ))
            .await
            .map_err(db_err)?;
        let row = tx
            .query_one(&insert, &[&Uuid::now_v7(), &id, &now, &instance_id])
            .await
            .map_err(db_err)?;
        let execution = execution_from_row(&row)?;
        tx.commit().await.map_err(db_err)?;
        Ok(Some(ClaimedExecution {
            execution,
            schedule,
        }))
    }

    async fn finish_execution(
        &self,
        execution_id: Uuid,
        status: ExecutionStatus,
        result: Option<Value>,
        error: Option<String>,
        run_id: Option<Uuid>,
        finished_at: DateTime<Utc>,
    ) -> Result<bool, RepoError> {
        let c = conn(&self.pool).await?;
        let stmt = c
            .prepare_cached(
                "UPDATE scheduler.executions SET status = $2, result = $3, error = $4,
                     run_id = COALESCE($5, run_id), finished_at = $6
                 WHERE id = $1 AND status = 'running'",
            )
            .await
            .map_err(db_err)?;
        let n = c
            .execute(
                &stmt,
                &[
                    &execution_id,
                    &status.as_str(),
                    &result,
                    &error,
                    &run_id,
                    &finished_at,
                ],
            )
            .await
            .map_err(db_err)?;
        Ok(n > 0)
    }

    async fn finish_executions(&self, batch: &[ExecutionFinish]) -> Result<Vec<Uuid>, RepoError> {
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        let ids: Vec<Uuid> = batch.iter().map(|f| f.execution_id).collect();
        let statuses: Vec<&str> = batch.iter().map(|f| f.status.as_str()).collect();
        let results: Vec<Option<Value>> = batch.iter().map(|f| f.result.clone()).collect();
        let errors: Vec<Option<String>> = batch.iter().map(|f| f.error.clone()).collect();
        let run_ids: Vec<Option<Uuid>> = batch.iter().map(|f| f.run_id).collect();
        let finished: Vec<DateTime<Utc>> = batch.iter().map(|f| f.finished_at).collect();
        let c = conn(&self.pool).await?;
        let stmt = c
            .prepare_cached(
                "UPDATE scheduler.executions e SET status = u.status, result = u.result,
                     error = u.error, run_id = COALESCE(u.run_id, e.run_id),
                     finished_at = u.finished_at
                 FROM unnest($1::uuid[], $2::text[], $3::jsonb[], $4::text[], $5::uuid[],
                             $6::timestamptz[])
                      AS u(id, status, result, error, run_id, finished_at)
                 WHERE e.id = u.id AND e.status = 'running'
                 RETURNING e.id",
            )
            .await
            .map_err(db_err)?;
        let rows = c
            .query(
                &stmt,
                &[&ids, &statuses, &results, &errors, &run_ids, &finished],
            )
            .await
            .map_err(db_err)?;
        rows.iter()
            .map(|r| r.try_get::<_, Uuid>(0).map_err(db_err))
            .collect()
    }

    async fn list_executions(
        &self,
        owner: Uuid,
        schedule_id: Uuid,
        page: PageRequest,
    ) -> Result<Option<Page<Execution>>, RepoError> {
        let c = conn(&self.pool).await?;
        let stmt = c
            .prepare_cached("SELECT 1 FROM scheduler.schedules WHERE id = $1 AND owner_id = $2")
            .await
            .map_err(db_err)?;
        let exists = c
            .query_opt(&stmt, &[&schedule_id, &owner])
            .await
            .map_err(db_err)?;
        if exists.is_none() {
            return Ok(None);
        }
        Ok(Some(
            query_page(
                &c,
                &format!(
                    "SELECT {EXECUTION_COLS} FROM scheduler.executions e
                 WHERE e.schedule_id = $1 AND ($2::uuid IS NULL OR e.id < $2)
                 ORDER BY e.id DESC LIMIT $3"
                ),
                &[&schedule_id, &page.cursor, &page.fetch_limit()],
                page,
                execution_from_row,
                |e| e.id,
            )
            .await?,
        ))
    }

    async fn next_due(&self) -> Result<Option<DateTime<Utc>>, RepoError> {
        let c = conn(&self.pool).await?;
        let stmt = c
            .prepare_cached("SELECT min(next_run_at) AS due FROM scheduler.schedules WHERE enabled")
            .await
            .map_err(db_err)?;
        let row = c.query_one(&stmt, &[]).await.map_err(db_err)?;
        row.try_get("due").map_err(db_err)
    }

    async fn heartbeat(&self, instance_id: Uuid, at: DateTime<Utc>) -> Result<(), RepoError> {
        let c = conn(&self.pool).await?;
        let stmt = c
            .prepare_cached(
                "INSERT INTO scheduler.instances (instance_id, beat_at) VALUES ($1, $2)
                 ON CONFLICT (instance_id) DO UPDATE SET beat_at = EXCLUDED.beat_at",
            )
            .await
            .map_err(db_err)?;
        c.execute(&stmt, &[&instance_id, &at])
            .await
            .map_err(db_err)?;
        Ok(())
    }

    async fn forget_instance(&self, instance_id: Uuid) -> Result<(), RepoError> {
        let c = conn(&self.pool).await?;
        c.execute(
            "DELETE FROM scheduler.instances WHERE instance_id = $1",
            &[&instance_id],
        )
        .await
        .map_err(db_err)?;
        Ok(())
    }

    async fn recover(
        &self,
        now: DateTime<Utc>,
        stale_after: chrono::Duration,
    ) -> Result<u64, RepoError> {
        let c = conn(&self.pool).await?;
        let horizon = now - stale_after;
        let stmt = c
            .prepare_cached(
                "UPDATE scheduler.executions e SET status = 'interrupted', finished_at = $1,
                     error = 'interrupted: the scheduler instance running it stopped; not re-run'
                 WHERE e.status = 'running'
                   AND NOT EXISTS (SELECT 1 FROM scheduler.instances i
                                   WHERE i.instance_id = e.instance_id AND i.beat_at >= $2)",
            )
            .await
            .map_err(db_err)?;
        c.execute(&stmt, &[&now, &horizon]).await.map_err(db_err)
    }
}
