//! Durable node executions per second: 100 concurrent runs of a 10-node pipeline of cheap nodes
//! (a trigger and 9 in-process tool calls in a chain) against the real PostgreSQL, executed by
//! one `Executor`; plus the per-node overhead of a single run (one node at a time, so every
//! transition's round trip is on the critical path).
//!
//! Every transition is durable (`synchronous_commit` on) unless `ASYNC=1`; the executor's group
//! committer writes the transitions pending from all runs in one transaction per commit.
//!
//! `cargo bench -p gathering-benches --bench pipeline` (needs PostgreSQL at TEST_DATABASE_URL or
//! 127.0.0.1:5432). Options via env: `RUNS` (100), `ROUNDS` (5), `POOL` (16), `ASYNC` (0; 1 commits
//! intermediate node transitions without waiting for the WAL flush).

use async_trait::async_trait;
use gathering_domain::events::NoopPublisher;
use gathering_domain::pipeline::{PipelineDefinition, RunStatus};
use gathering_domain::tools::{ToolContext, ToolError, ToolInvoker};
use gathering_domain::{Clock, SystemClock};
use gathering_pipeline::executor::{Executor, ExecutorConfig, ExecutorDeps};
use gathering_pipeline::service::{CreatePipeline, PipelineService};
use gathering_store::pipeline::{PgPipelineRepository, PgRunRepository};
use gathering_store::test_support::TestDb;
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::Instant;
use uuid::Uuid;

/// A cheap tool: answers its parameters.
struct Echo;

#[async_trait]
impl ToolInvoker for Echo {
    async fn invoke(
        &self,
        _ctx: &ToolContext,
        _name: &str,
        params: Value,
    ) -> Result<Value, ToolError> {
        Ok(params)
    }
}

fn env_num(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn chain_definition(nodes: usize) -> Result<PipelineDefinition, serde_json::Error> {
    let mut ns = vec![json!({"id": "n0", "type": "trigger"})];
    let mut es = Vec::new();
    for i in 1..nodes {
        ns.push(json!({"id": format!("n{i}"), "type": "action",
                       "config": {"tool": "echo", "params": {"step": i, "prev": format!("{{{{nodes.n{}.output}}}}", i - 1)}}}));
        es.push(json!({"from": format!("n{}", i - 1), "to": format!("n{i}")}));
    }
    serde_json::from_value(json!({"nodes": ns, "edges": es}))
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> anyhow::Result<()> {
    let runs_per_round = env_num("RUNS", 100);
    let rounds = env_num("ROUNDS", 5);
    let nodes = 10;
    let db = TestDb::new().await?;
    let pool = db.pool.clone();
    let owner = Uuid::now_v7();
    pool.get()
        .await?
        .execute(
            "INSERT INTO auth.users (id, email, name, role, password_hash) VALUES ($1, $2, 'bench', 'user', 'x')",
            &[&owner, &format!("{owner}@bench.local")],
        )
        .await?;
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let pipelines = Arc::new(PgPipelineRepository::new(pool.clone()));
    // ASYNC=1: intermediate node transitions skip the WAL flush wait
    // (GATHERING__PIPELINE__ASYNC_NODE_COMMITS; see PgRunRepository::with_synchronous_transitions).
    let synchronous = env_num("ASYNC", 0) != 1;
    let runs =
        Arc::new(PgRunRepository::new(pool.clone()).with_synchronous_transitions(synchronous));
    let svc = PipelineService::new(
        pipelines,
        runs.clone(),
        Arc::new(NoopPublisher),
        None,
        clock.clone(),
    );
    let exec = Executor::new(
        ExecutorDeps {
            runs: runs.clone(),
            tools: Arc::new(Echo),
            agents: None,
            events: Arc::new(NoopPublisher),
            clock,
        },
        ExecutorConfig {
            max_concurrent_runs: runs_per_round.max(1),
            max_concurrent_nodes: 256,
            claim_batch: 50,
            ..ExecutorConfig::default()
        },
    );
    let p = svc
        .create(
            owner,
            CreatePipeline {
                name: "bench".into(),
                description: None,
                definition: chain_definition(nodes)?,
            },
        )
        .await?;

    // Single run: per-node overhead with nothing else going on.
    let single = svc.start_run(owner, p.id, json!({})).await?;
    let t = Instant::now();
    exec.run_until_idle().await?;
    let single_elapsed = t.elapsed();
    anyhow::ensure!(svc.get_run(owner, single.id).await?.run.status == RunStatus::Succeeded);
    println!(
        "single run of {nodes} nodes: {:.1} ms ({:.2} ms per node, sequential)",
        single_elapsed.as_secs_f64() * 1e3,
        single_elapsed.as_secs_f64() * 1e3 / nodes as f64
    );

    let mut rates = Vec::with_capacity(rounds);
    for round in 1..=rounds {
        let mut ids = Vec::with_capacity(runs_per_round);
        for _ in 0..runs_per_round {
            ids.push(
                svc.start_run(owner, p.id, json!({"round": round}))
                    .await?
                    .id,
            );
        }
        let t = Instant::now();
        exec.run_until_idle().await?;
        let elapsed = t.elapsed();
        for id in &ids {
            let d = svc.get_run(owner, *id).await?;
            anyhow::ensure!(
                d.run.status == RunStatus::Succeeded,
                "run {id} ended {:?}",
                d.run.status
            );
        }
        let executions = (runs_per_round * nodes) as f64;
        let rate = executions / elapsed.as_secs_f64();
        rates.push(rate);
        println!(
            "round {round}: {runs_per_round} concurrent runs x {nodes} nodes = {executions} durable node executions in {:.1} ms -> {rate:.0} node executions/s",
            elapsed.as_secs_f64() * 1e3
        );
    }
    rates.sort_by(f64::total_cmp);
    let best = rates.last().copied().unwrap_or_default();
    let median = rates.get(rates.len() / 2).copied().unwrap_or_default();
    println!(
        "median: {median:.0}, best: {best:.0} node executions/s (goal >= 5000, every transition durable unless ASYNC=1)"
    );
    Ok(())
}
