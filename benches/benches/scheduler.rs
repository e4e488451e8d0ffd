//! 10,000 schedules due in the same second, two scheduler instances (each with its own pool, as
//! two processes would) on one database: time from the due second until every occurrence has
//! been dispatched and recorded, and duplicates (must be 0).
//!
//! `cargo bench -p gathering-benches --bench scheduler` (needs PostgreSQL at TEST_DATABASE_URL or
//! 127.0.0.1:5432). Options via env: `SCHEDULES` (10000), `BATCH` (500), `CONCURRENCY` (64).

use anyhow::{Context, bail};
use async_trait::async_trait;
use gathering_domain::SystemClock;
use gathering_domain::events::NoopPublisher;
use gathering_domain::tools::{ToolContext, ToolError, ToolInvoker};
use gathering_scheduler::{Scheduler, SchedulerConfig, SchedulerDeps};
use gathering_store::scheduler::PgScheduleRepository;
use gathering_store::test_support::TestDb;
use gathering_store::{PoolSettings, connect};
use serde_json::{Value, json};
use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// Counts calls (and their idempotency keys) instead of calling anything.
struct Counting {
    calls: AtomicUsize,
    keys: Mutex<HashSet<String>>,
    target: usize,
    done: Notify,
}

#[async_trait]
impl ToolInvoker for Counting {
    async fn invoke(&self, ctx: &ToolContext, _name: &str, _p: Value) -> Result<Value, ToolError> {
        if let Ok(mut k) = self.keys.lock() {
            k.insert(ctx.idempotency_key.clone().unwrap_or_default());
        }
        if self.calls.fetch_add(1, Ordering::SeqCst) + 1 >= self.target {
            self.done.notify_one();
        }
        Ok(json!({"status": 200}))
    }
}

fn env_num(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> anyhow::Result<()> {
    let n = env_num("SCHEDULES", 10_000);
    let batch = u32::try_from(env_num("BATCH", 500))?;
    let concurrency = env_num("CONCURRENCY", 64);
    let db = TestDb::new().await.context("test database")?;
    let owner = Uuid::now_v7();
    let c = db.pool.get().await?;
    c.execute(
        "INSERT INTO auth.users (id, email, name, role, password_hash) VALUES ($1, 'bench@example.test', 'b', 'user', 'x')",
        &[&owner],
    )
    .await?;
    // All due in the same second, three seconds from now (after both instances are up).
    let due: chrono::DateTime<chrono::Utc> = c
        .query_one(
            "SELECT date_trunc('second', now()) + interval '3 seconds'",
            &[],
        )
        .await?
        .get(0);
    c.execute(
        "INSERT INTO scheduler.schedules (id, owner_id, name, interval_secs, action_type,
             action_config, enabled, next_run_at, created_at, updated_at)
         SELECT gen_random_uuid(), $1, 'bench ' || g, 3600, 'call_api',
                '{\"url\": \"http://bench.invalid/\"}'::jsonb, true,
                $2::timestamptz + (g % 1000) * interval '1 millisecond', now(), now()
         FROM generate_series(1, $3::int) g",
        &[&owner, &due, &i32::try_from(n)?],
    )
    .await?;
    drop(c);

    let tools = Arc::new(Counting {
        calls: AtomicUsize::new(0),
        keys: Mutex::new(HashSet::new()),
        target: n,
        done: Notify::new(),
    });
    let cancel = CancellationToken::new();
    let mut instances = Vec::new();
    let mut handles = Vec::new();
    for _ in 0..2 {
        let pool = connect(
            &db.url,
            &PoolSettings {
                max_size: 8,
                ..PoolSettings::default()
            },
        )?;
        let s = Scheduler::new(
            SchedulerDeps {
                repo: Arc::new(PgScheduleRepository::new(pool)),
                tools: tools.clone(),
                agents: None,
                pipelines: None,
                events: Arc::new(NoopPublisher),
                notifier: None,
                clock: Arc::new(SystemClock),
            },
            SchedulerConfig {
                batch_size: batch,
                max_concurrency: concurrency,
                ..SchedulerConfig::default()
            },
        );
        handles.push(s.spawn(None, cancel.clone()));
        instances.push(s);
    }

    let until_due = (due - chrono::Utc::now())
        .to_std()
        .unwrap_or(Duration::ZERO);
    tokio::time::sleep(until_due).await;
    let started = Instant::now();
    if std::env::var("PROGRESS").is_ok() {
        let t = tools.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(500)).await;
                println!(
                    "{:?}: {}",
                    started.elapsed(),
                    t.calls.load(Ordering::SeqCst)
                );
            }
        });
    }
    tokio::time::timeout(Duration::from_secs(300), tools.done.notified())
        .await
        .context("not every occurrence was dispatched within 300 s")?;
    let dispatched = started.elapsed();
    for s in &instances {
        s.wait_idle().await;
    }
    let recorded = started.elapsed();
    cancel.cancel();
    for h in handles {
        h.await?;
    }

    let c = db.pool.get().await?;
    let row = c
        .query_one(
            "SELECT count(*) AS total,
                    count(*) - count(DISTINCT (schedule_id, scheduled_for)) AS dup_rows,
                    count(*) FILTER (WHERE status = 'succeeded') AS ok,
                    count(DISTINCT instance_id) AS instances
             FROM scheduler.executions",
            &[],
        )
        .await?;
    let (total, dup_rows, ok, used): (i64, i64, i64, i64) =
        (row.get(0), row.get(1), row.get(2), row.get(3));
    let per_instance = c
        .query(
            "SELECT instance_id, count(*) FROM scheduler.executions GROUP BY 1 ORDER BY 1",
            &[],
        )
        .await?;
    let calls = tools.calls.load(Ordering::SeqCst);
    let unique_keys = tools.keys.lock().map(|k| k.len()).unwrap_or(0);
    println!(
        "scheduler bench: {n} schedules due in the same second, 2 instances, batch {batch}, concurrency {concurrency}"
    );
    println!(
        "  all dispatched (action called) after : {:>8.1} ms",
        dispatched.as_secs_f64() * 1e3
    );
    println!(
        "  all recorded (succeeded) after       : {:>8.1} ms",
        recorded.as_secs_f64() * 1e3
    );
    println!(
        "  throughput                           : {:>8.0} executions/s",
        n as f64 / recorded.as_secs_f64()
    );
    println!("  execution rows {total}, succeeded {ok}, instances used {used}");
    for r in &per_instance {
        let id: Uuid = r.get(0);
        let k: i64 = r.get(1);
        println!("    instance {id}: {k}");
    }
    println!("  action calls {calls}, distinct occurrences called {unique_keys}");
    let duplicates = (calls - unique_keys) as i64 + dup_rows;
    println!("  duplicates: {duplicates}");
    if duplicates != 0 || total != n as i64 || calls != n {
        bail!("expected {n} executions and calls with no duplicates");
    }
    Ok(())
}
