//! The scheduler against the real PostgreSQL: exactly-once across instances, crash recovery,
//! missed-run policies, overlap, max executions, run-now.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use async_trait::async_trait;
use chrono::{Duration as CDuration, Utc};
use gathering_domain::events::NoopPublisher;
use gathering_domain::scheduler::{ExecutionStatus, ScheduleRepository};
use gathering_domain::tools::{ToolContext, ToolError, ToolInvoker};
use gathering_domain::{Clock, ErrorCode, ErrorKind, ManualClock, PageRequest, SystemClock};
use gathering_scheduler::timing::Planner;
use gathering_scheduler::{
    CreateSchedule, PatchSchedule, ScheduleLimits, ScheduleService, Scheduler, SchedulerConfig,
    SchedulerDeps,
};
use gathering_store::scheduler::PgScheduleRepository;
use gathering_store::test_support::{TestDb, wait_until};
use serde_json::{Value, json};
use std::collections::HashSet;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// Counts every call; optionally blocks each call until a permit is added to `gate`.
#[derive(Default)]
struct CountingTools {
    keys: Mutex<Vec<String>>,
    gate: Option<Arc<Semaphore>>,
    /// Each call takes this long.
    delay: Option<Duration>,
}

#[async_trait]
impl ToolInvoker for CountingTools {
    async fn invoke(&self, ctx: &ToolContext, name: &str, _p: Value) -> Result<Value, ToolError> {
        self.keys
            .lock()
            .unwrap()
            .push(ctx.idempotency_key.clone().unwrap_or_default());
        if let Some(g) = &self.gate {
            g.acquire().await.unwrap().forget();
        }
        if let Some(d) = self.delay {
            tokio::time::sleep(d).await;
        }
        Ok(json!({"tool": name}))
    }
}

impl CountingTools {
    fn count(&self) -> usize {
        self.keys.lock().unwrap().len()
    }
}

/// Panics on its first `panics` calls (after counting them), then behaves like [`CountingTools`].
struct PanickingTools {
    inner: CountingTools,
    panics: usize,
}

#[async_trait]
impl ToolInvoker for PanickingTools {
    async fn invoke(&self, ctx: &ToolContext, name: &str, p: Value) -> Result<Value, ToolError> {
        let call = self.inner.count();
        if call < self.panics {
            self.inner.keys.lock().unwrap().push("panicked".into());
            tokio::task::yield_now().await;
            panic!("tool blew up: secret-internal-detail");
        }
        self.inner.invoke(ctx, name, p).await
    }
}

fn scheduler(
    db: &TestDb,
    tools: Arc<dyn ToolInvoker>,
    clock: Arc<dyn Clock>,
    config: SchedulerConfig,
) -> Scheduler {
    Scheduler::new(
        SchedulerDeps {
            repo: Arc::new(PgScheduleRepository::new(db.pool.clone())),
            tools,
            agents: None,
            pipelines: None,
            events: Arc::new(NoopPublisher),
            notifier: None,
            clock,
        },
        config,
    )
}

/// The service with test limits: 1-second intervals, and the fake tools' loopback target
/// allowed (the production minimum is 10 s and loopback is refused at store time).
fn service_for(scheduler: Scheduler) -> ScheduleService {
    ScheduleService::with_limits(
        scheduler,
        ScheduleLimits {
            min_interval_secs: 1,
            http_allowed_hosts: vec!["127.0.0.1".to_owned()],
            ..ScheduleLimits::default()
        },
    )
}

fn call_api(interval: i64) -> CreateSchedule {
    CreateSchedule {
        name: "ping".into(),
        interval_secs: Some(interval),
        action_type: "call_api".into(),
        action_config: json!({"url": "http://127.0.0.1:9/ping"}),
        ..CreateSchedule::default()
    }
}

async fn executions(db: &TestDb, schedule: Uuid) -> Vec<(String, chrono::DateTime<Utc>)> {
    let c = db.pool.get().await.unwrap();
    c.query(
        "SELECT status, scheduled_for FROM scheduler.executions WHERE schedule_id = $1 ORDER BY scheduled_for",
        &[&schedule],
    )
    .await
    .unwrap()
    .iter()
    .map(|r| (r.get(0), r.get(1)))
    .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_instances_execute_every_occurrence_exactly_once() {
    let db = TestDb::new().await.unwrap();
    let owner = db.user().await;
    // Both instances share one manual clock and are stepped (no sleeping): each "second" the
    // clock advances and both claim concurrently. Actions block on `gate` in the first second,
    // so an instance holds at most 10 and the 50 due occurrences cannot all go to one of them.
    let gate = Arc::new(Semaphore::new(0));
    let tools = Arc::new(CountingTools {
        gate: Some(gate.clone()),
        ..CountingTools::default()
    });
    let clock = Arc::new(ManualClock::new(Utc::now()));
    let cfg = || SchedulerConfig {
        instance_id: Uuid::now_v7(),
        batch_size: 5,
        max_concurrency: 10,
        ..SchedulerConfig::default()
    };
    let a = scheduler(&db, tools.clone(), clock.clone(), cfg());
    let b = scheduler(&db, tools.clone(), clock.clone(), cfg());
    let service = service_for(a.clone());
    let mut ids = Vec::new();
    for _ in 0..50 {
        ids.push(service.create(owner, call_api(1)).await.unwrap().id);
    }
    let c = db.pool.get().await.unwrap();
    let count = |sql: &'static str| {
        let c = &c;
        async move { c.query_one(sql, &[]).await.unwrap().get::<_, i64>(0) }
    };

    for second in 1..=4_i64 {
        clock.advance(CDuration::seconds(1));
        if second == 1 {
            // Claim concurrently until both instances are saturated (the gate holds every action).
            loop {
                let (ra, rb) = tokio::join!(a.tick_once(), b.tick_once());
                let (ra, rb) = (ra.unwrap(), rb.unwrap());
                if ra.saturated && rb.saturated {
                    break;
                }
            }
            let per_instance = c
                .query(
                    "SELECT instance_id, count(*) FROM scheduler.executions GROUP BY instance_id",
                    &[],
                )
                .await
                .unwrap();
            assert_eq!(per_instance.len(), 2, "one instance did everything");
            for r in &per_instance {
                assert_eq!(
                    r.get::<_, i64>(1),
                    10,
                    "an instance holds more than its slots"
                );
            }
            gate.add_permits(Semaphore::MAX_PERMITS / 2);
        }
        // Both claim and run concurrently until nothing is due and nothing runs.
        let (ra, rb) = tokio::join!(a.run_until_idle(), b.run_until_idle());
        ra.unwrap();
        rb.unwrap();
        assert_eq!(
            count("SELECT count(*) FROM scheduler.executions").await,
            50 * second,
            "second {second}: every schedule fires exactly once per second"
        );
    }

    let rows = c
        .query(
            "SELECT id, schedule_id, scheduled_for, status, instance_id FROM scheduler.executions",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(rows.len(), 200);
    let occurrences: HashSet<(Uuid, chrono::DateTime<Utc>)> =
        rows.iter().map(|r| (r.get(1), r.get(2))).collect();
    assert_eq!(occurrences.len(), rows.len(), "an occurrence has two rows");
    // One action call per execution, each with its own key: nothing ran twice.
    assert_eq!(tools.count(), rows.len());
    let keys: HashSet<String> = tools.keys.lock().unwrap().iter().cloned().collect();
    assert_eq!(keys.len(), rows.len());
    for r in &rows {
        assert_eq!(r.get::<_, String>(3), "succeeded");
    }
    // Both instances took part.
    let instances: HashSet<Uuid> = rows.iter().map(|r| r.get(4)).collect();
    assert_eq!(instances.len(), 2, "one instance did everything");

    // The run loops: each beats, and a graceful stop removes the heartbeats.
    let cancel = CancellationToken::new();
    let ha = a.spawn(None, cancel.clone());
    let hb = b.spawn(None, cancel.clone());
    wait_until(Duration::from_secs(10), || async {
        count("SELECT count(*) FROM scheduler.instances").await == 2
    })
    .await;
    cancel.cancel();
    tokio::time::timeout(Duration::from_secs(30), async {
        ha.await.unwrap();
        hb.await.unwrap();
    })
    .await
    .unwrap();
    assert_eq!(count("SELECT count(*) FROM scheduler.instances").await, 0);
}

#[tokio::test]
async fn running_executions_of_a_dead_instance_become_interrupted_and_never_rerun() {
    let db = TestDb::new().await.unwrap();
    let owner = db.user().await;
    let start = Utc::now();
    let clock = Arc::new(ManualClock::new(start));
    let tools = Arc::new(CountingTools::default());
    let live = scheduler(
        &db,
        tools.clone(),
        clock.clone(),
        SchedulerConfig::default(),
    );
    let service = service_for(live.clone());
    let s = service.create(owner, call_api(60)).await.unwrap();

    // A "crashed" instance claimed the occurrence, then stopped beating.
    let repo = PgScheduleRepository::new(db.pool.clone());
    let dead = Uuid::now_v7();
    clock.advance(CDuration::seconds(61));
    repo.heartbeat(dead, clock.now()).await.unwrap();
    let planner = Planner::new(CDuration::seconds(60));
    let claimed = repo
        .claim_due(clock.now(), 10, dead, &planner)
        .await
        .unwrap();
    assert_eq!(claimed.to_run.len(), 1);
    let exec_id = claimed.to_run[0].execution.id;

    // Within stale_after nothing is touched.
    live.heartbeat().await.unwrap();
    assert_eq!(live.recover().await.unwrap(), 0);
    // After stale_after, the running execution is interrupted, not re-run.
    clock.advance(CDuration::seconds(45));
    live.heartbeat().await.unwrap();
    assert_eq!(live.recover().await.unwrap(), 1);
    let ex = executions(&db, s.id).await;
    assert_eq!(ex.len(), 1);
    assert_eq!(ex[0].0, "interrupted");
    // The dead instance's late result is not recorded over it.
    let recorded = repo
        .finish_execution(
            exec_id,
            ExecutionStatus::Succeeded,
            None,
            None,
            None,
            clock.now(),
        )
        .await
        .unwrap();
    assert!(!recorded);
    // And the scheduler does not run that occurrence again.
    live.run_until_idle().await.unwrap();
    assert_eq!(tools.count(), 0);
    assert_eq!(executions(&db, s.id).await.len(), 1);
}

async fn missed_runs_case(
    policy: &str,
) -> (
    Vec<(String, chrono::DateTime<Utc>)>,
    chrono::DateTime<Utc>,
    chrono::DateTime<Utc>,
    usize,
    Option<chrono::DateTime<Utc>>,
) {
    let db = TestDb::new().await.unwrap();
    let owner = db.user().await;
    let clock = Arc::new(ManualClock::new(Utc::now()));
    let tools = Arc::new(CountingTools::default());
    let sch = scheduler(
        &db,
        tools.clone(),
        clock.clone(),
        SchedulerConfig::default(),
    );
    let service = service_for(sch.clone());
    let s = service
        .create(
            owner,
            CreateSchedule {
                missed_runs: Some(policy.into()),
                ..call_api(60)
            },
        )
        .await
        .unwrap();
    let first_due = s.next_run_at.unwrap();
    // Every instance was down for three hours.
    clock.advance(CDuration::hours(3));
    sch.run_until_idle().await.unwrap();
    let after = service.get(owner, s.id).await.unwrap();
    (
        executions(&db, s.id).await,
        first_due,
        clock.now(),
        tools.count(),
        after.next_run_at,
    )
}

#[tokio::test]
async fn run_once_policy_catches_up_with_exactly_one_execution() {
    let (ex, first_due, now, calls, next) = missed_runs_case("run_once").await;
    assert_eq!(ex.len(), 1);
    assert_eq!(ex[0], ("succeeded".to_owned(), first_due));
    assert_eq!(calls, 1);
    let next = next.unwrap();
    assert!(next > now && next <= now + CDuration::seconds(60));
}

#[tokio::test]
async fn skip_policy_runs_none_of_the_missed_occurrences() {
    let (ex, _first_due, now, calls, next) = missed_runs_case("skip").await;
    assert!(ex.is_empty(), "{ex:?}");
    assert_eq!(calls, 0);
    let next = next.unwrap();
    assert!(next > now && next <= now + CDuration::seconds(60));
}

#[tokio::test]
async fn overlapping_occurrence_is_recorded_skipped_while_the_previous_runs() {
    let db = TestDb::new().await.unwrap();
    let owner = db.user().await;
    let clock = Arc::new(ManualClock::new(Utc::now()));
    let gate = Arc::new(Semaphore::new(0));
    let tools = Arc::new(CountingTools {
        gate: Some(gate.clone()),
        ..CountingTools::default()
    });
    let sch = scheduler(
        &db,
        tools.clone(),
        clock.clone(),
        SchedulerConfig::default(),
    );
    let service = service_for(sch.clone());
    let s = service.create(owner, call_api(1)).await.unwrap();
    clock.advance(CDuration::seconds(1));
    assert_eq!(sch.tick_once().await.unwrap().started, 1);
    clock.advance(CDuration::seconds(1));
    let r = sch.tick_once().await.unwrap();
    assert_eq!((r.started, r.skipped), (0, 1));
    gate.add_permits(1);
    tokio::time::timeout(Duration::from_secs(10), sch.wait_idle())
        .await
        .unwrap();
    let statuses: Vec<String> = executions(&db, s.id)
        .await
        .into_iter()
        .map(|e| e.0)
        .collect();
    assert_eq!(statuses, vec!["succeeded", "skipped"]);
    assert_eq!(tools.count(), 1);
}

#[tokio::test]
async fn a_panicking_action_fails_its_execution_and_the_next_occurrence_still_runs() {
    let db = TestDb::new().await.unwrap();
    let owner = db.user().await;
    let clock = Arc::new(ManualClock::new(Utc::now()));
    let tools = Arc::new(PanickingTools {
        inner: CountingTools::default(),
        panics: 1,
    });
    let sch = scheduler(
        &db,
        tools.clone(),
        clock.clone(),
        SchedulerConfig::default(),
    );
    let service = service_for(sch.clone());
    // overlap=skip: an execution left `running` would make every later occurrence `skipped`.
    let s = service
        .create(
            owner,
            CreateSchedule {
                overlap: Some("skip".into()),
                ..call_api(1)
            },
        )
        .await
        .unwrap();
    for _ in 0..2 {
        clock.advance(CDuration::seconds(1));
        tokio::time::timeout(Duration::from_secs(10), sch.run_until_idle())
            .await
            .unwrap()
            .unwrap();
    }
    assert_eq!(tools.inner.count(), 2);
    let page = service
        .executions(owner, s.id, PageRequest::default())
        .await
        .unwrap();
    let mut items = page.items;
    items.sort_by_key(|e| e.scheduled_for);
    let statuses: Vec<ExecutionStatus> = items.iter().map(|e| e.status).collect();
    assert_eq!(
        statuses,
        vec![ExecutionStatus::Failed, ExecutionStatus::Succeeded]
    );
    assert_eq!(items[0].error.as_deref(), Some("action panicked"));
    assert!(items[0].finished_at.is_some());
    assert!(items[1].error.is_none());
}

#[tokio::test]
async fn schedule_is_disabled_after_max_executions() {
    let db = TestDb::new().await.unwrap();
    let owner = db.user().await;
    let clock = Arc::new(ManualClock::new(Utc::now()));
    let tools = Arc::new(CountingTools::default());
    let sch = scheduler(
        &db,
        tools.clone(),
        clock.clone(),
        SchedulerConfig::default(),
    );
    let service = service_for(sch.clone());
    let s = service
        .create(
            owner,
            CreateSchedule {
                max_executions: Some(2),
                ..call_api(1)
            },
        )
        .await
        .unwrap();
    for _ in 0..5 {
        clock.advance(CDuration::seconds(1));
        sch.run_until_idle().await.unwrap();
    }
    assert_eq!(tools.count(), 2);
    let after = service.get(owner, s.id).await.unwrap();
    assert!(!after.enabled);
    assert_eq!(after.execution_count, 2);
}

#[tokio::test]
async fn run_now_executes_immediately_and_is_listed() {
    let db = TestDb::new().await.unwrap();
    let owner = db.user().await;
    let tools = Arc::new(CountingTools::default());
    let sch = scheduler(
        &db,
        tools.clone(),
        Arc::new(SystemClock),
        SchedulerConfig::default(),
    );
    let service = service_for(sch.clone());
    let s = service.create(owner, call_api(3600)).await.unwrap();
    let e = service.run_now(owner, s.id).await.unwrap();
    assert_eq!(e.status, ExecutionStatus::Running);
    tokio::time::timeout(Duration::from_secs(10), sch.wait_idle())
        .await
        .unwrap();
    let page = service
        .executions(owner, s.id, PageRequest::default())
        .await
        .unwrap();
    assert_eq!(page.items.len(), 1);
    assert_eq!(page.items[0].id, e.id);
    assert_eq!(page.items[0].status, ExecutionStatus::Succeeded);
    assert!(page.items[0].finished_at.is_some());
    assert_eq!(tools.count(), 1);
    // Another user sees nothing.
    let other = db.user().await;
    let err = service.run_now(other, s.id).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound);
}

#[tokio::test]
async fn paused_schedule_does_not_fire_and_resumes_on_enable() {
    let db = TestDb::new().await.unwrap();
    let owner = db.user().await;
    let clock = Arc::new(ManualClock::new(Utc::now()));
    let tools = Arc::new(CountingTools::default());
    let sch = scheduler(
        &db,
        tools.clone(),
        clock.clone(),
        SchedulerConfig::default(),
    );
    let service = service_for(sch.clone());
    let s = service.create(owner, call_api(10)).await.unwrap();
    let paused = service
        .update(
            owner,
            s.id,
            PatchSchedule {
                enabled: Some(false),
                ..PatchSchedule::default()
            },
        )
        .await
        .unwrap();
    assert!(!paused.enabled);
    assert_eq!(paused.next_run_at, None);
    clock.advance(CDuration::seconds(30));
    sch.run_until_idle().await.unwrap();
    assert_eq!(tools.count(), 0);
    let resumed = service
        .update(
            owner,
            s.id,
            PatchSchedule {
                enabled: Some(true),
                ..PatchSchedule::default()
            },
        )
        .await
        .unwrap();
    let expected = clock.now() + CDuration::seconds(10);
    let diff = (resumed.next_run_at.unwrap() - expected)
        .num_milliseconds()
        .abs();
    assert!(
        diff < 1,
        "next_run_at {:?} vs {expected}",
        resumed.next_run_at
    );
    clock.advance(CDuration::seconds(10));
    sch.run_until_idle().await.unwrap();
    assert_eq!(tools.count(), 1);
}

#[tokio::test]
async fn invalid_schedules_are_refused_with_field_details() {
    let db = TestDb::new().await.unwrap();
    let owner = db.user().await;
    let sch = scheduler(
        &db,
        Arc::new(CountingTools::default()),
        Arc::new(SystemClock),
        SchedulerConfig::default(),
    );
    let service = service_for(sch);
    let err = service
        .create(
            owner,
            CreateSchedule {
                cron: Some("61 * * * *".into()),
                interval_secs: None,
                timezone: Some("Mars/Base".into()),
                action_type: "launch_rocket".into(),
                ..call_api(1)
            },
        )
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Validation);
    let fields: Vec<String> = err.details().into_iter().map(|d| d.field).collect();
    assert!(fields.contains(&"/cron".to_owned()), "{fields:?}");
    assert!(fields.contains(&"/timezone".to_owned()));
    assert!(fields.contains(&"/action_type".to_owned()));
    let err = service
        .create(
            owner,
            CreateSchedule {
                cron: Some("* * * * *".into()),
                ..call_api(5)
            },
        )
        .await
        .unwrap_err();
    assert_eq!(err.details()[0].field, "/cron");
    // Nothing was stored.
    let list = service.list(owner, PageRequest::default()).await.unwrap();
    assert!(list.items.is_empty());
}
