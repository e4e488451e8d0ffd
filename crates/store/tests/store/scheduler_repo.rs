//! PgScheduleRepository against the real PostgreSQL.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use chrono::{DateTime, Duration, Utc};
use gathering_domain::PageRequest;
use gathering_domain::scheduler::{
    ActionType, ClaimPlan, ClaimPlanner, ExecutionStatus, MissedRuns, NewSchedule, OverlapPolicy,
    Schedule, ScheduleRepository,
};
use gathering_store::scheduler::PgScheduleRepository;
use gathering_store::test_support::TestDb;
use serde_json::json;
use std::collections::HashSet;
use std::sync::Arc;
use uuid::Uuid;

/// Runs the due occurrence and moves the schedule `step` after it.
struct StepPlanner(Duration);

impl ClaimPlanner for StepPlanner {
    fn plan(&self, s: &Schedule, _now: DateTime<Utc>) -> ClaimPlan {
        ClaimPlan {
            run: s.next_run_at,
            next_run_at: s.next_run_at.map(|t| t + self.0),
        }
    }
}

fn new_schedule(owner: Uuid, due: DateTime<Utc>) -> NewSchedule {
    NewSchedule {
        owner_id: owner,
        name: "s".into(),
        cron: None,
        interval_secs: Some(1),
        timezone: None,
        action_type: ActionType::CallApi,
        action_config: json!({"url": "http://x"}),
        enabled: true,
        missed_runs: MissedRuns::Skip,
        overlap: OverlapPolicy::Allow,
        max_executions: None,
        next_run_at: Some(due),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_claimers_never_claim_one_occurrence_twice() {
    let db = TestDb::new().await.unwrap();
    let owner = db.user().await;
    let repo = Arc::new(PgScheduleRepository::new(db.pool.clone()));
    let due = Utc::now() - Duration::seconds(5);
    for _ in 0..50 {
        repo.create(new_schedule(owner, due)).await.unwrap();
    }
    let now = Utc::now();
    let mut tasks = Vec::new();
    for _ in 0..6 {
        let repo = repo.clone();
        tasks.push(tokio::spawn(async move {
            let instance = Uuid::now_v7();
            let planner = StepPlanner(Duration::hours(1));
            let mut ids = Vec::new();
            loop {
                let o = repo.claim_due(now, 7, instance, &planner).await.unwrap();
                if o.examined == 0 {
                    break;
                }
                ids.extend(o.to_run.into_iter().map(|c| c.schedule.id));
            }
            ids
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    assert_eq!(all.len(), 50);
    assert_eq!(all.iter().collect::<HashSet<_>>().len(), 50);
    let c = db.pool.get().await.unwrap();
    let n: i64 = c
        .query_one("SELECT count(*) FROM scheduler.executions", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 50);
    // next_run_at advanced in the same transaction: nothing is due any more.
    assert!(repo.next_due().await.unwrap().unwrap() > now);
}

#[tokio::test]
async fn an_occurrence_already_recorded_is_not_inserted_again() {
    let db = TestDb::new().await.unwrap();
    let owner = db.user().await;
    let repo = PgScheduleRepository::new(db.pool.clone());
    let due = Utc::now() - Duration::seconds(1);
    let s = repo.create(new_schedule(owner, due)).await.unwrap();
    let i = Uuid::now_v7();
    let first = repo
        .claim_due(Utc::now(), 10, i, &StepPlanner(Duration::zero()))
        .await
        .unwrap();
    assert_eq!(first.to_run.len(), 1);
    // A planner that keeps the same occurrence due (a second claim of it) inserts nothing.
    let second = repo
        .claim_due(Utc::now(), 10, i, &StepPlanner(Duration::zero()))
        .await
        .unwrap();
    assert_eq!(second.examined, 1);
    assert!(second.to_run.is_empty());
    let page = repo
        .list_executions(owner, s.id, PageRequest::default())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(page.items.len(), 1);
    assert_eq!(
        repo.get(owner, s.id)
            .await
            .unwrap()
            .unwrap()
            .execution_count,
        1
    );
}

#[tokio::test]
async fn overlap_skip_records_skipped_while_previous_runs() {
    let db = TestDb::new().await.unwrap();
    let owner = db.user().await;
    let repo = PgScheduleRepository::new(db.pool.clone());
    let mut n = new_schedule(owner, Utc::now() - Duration::seconds(10));
    n.overlap = OverlapPolicy::Skip;
    let s = repo.create(n).await.unwrap();
    let p = StepPlanner(Duration::seconds(1));
    let i = Uuid::now_v7();
    let a = repo.claim_due(Utc::now(), 10, i, &p).await.unwrap();
    assert_eq!(a.to_run.len(), 1);
    let b = repo.claim_due(Utc::now(), 10, i, &p).await.unwrap();
    assert_eq!((b.to_run.len(), b.skipped.len()), (0, 1));
    assert_eq!(b.skipped[0].status, ExecutionStatus::Skipped);
    // Once the first finishes, the next occurrence runs.
    let id = a.to_run[0].execution.id;
    assert!(
        repo.finish_execution(
            id,
            ExecutionStatus::Succeeded,
            Some(json!({"ok": true})),
            None,
            None,
            Utc::now()
        )
        .await
        .unwrap()
    );
    let c = repo.claim_due(Utc::now(), 10, i, &p).await.unwrap();
    assert_eq!(c.to_run.len(), 1);
    let _ = s;
}

#[tokio::test]
async fn executions_list_is_bounded_paginated_and_owner_scoped() {
    let db = TestDb::new().await.unwrap();
    let owner = db.user().await;
    let other = db.user().await;
    let repo = PgScheduleRepository::new(db.pool.clone());
    let s = repo
        .create(new_schedule(owner, Utc::now() + Duration::hours(1)))
        .await
        .unwrap();
    let base = Utc::now();
    for k in 0..5 {
        repo.insert_run_now(owner, s.id, base + Duration::seconds(k), Uuid::now_v7())
            .await
            .unwrap()
            .unwrap();
    }
    let p1 = repo
        .list_executions(owner, s.id, PageRequest::new(Some(2), None))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(p1.items.len(), 2);
    let cursor = Uuid::parse_str(p1.next_cursor.as_deref().unwrap()).unwrap();
    let p2 = repo
        .list_executions(owner, s.id, PageRequest::new(Some(10), Some(cursor)))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(p2.items.len(), 3);
    assert!(p2.next_cursor.is_none());
    assert!(p1.items[0].id > p2.items[0].id);
    assert!(
        repo.list_executions(other, s.id, PageRequest::default())
            .await
            .unwrap()
            .is_none()
    );
    assert!(repo.get(other, s.id).await.unwrap().is_none());
    assert!(!repo.delete(other, s.id).await.unwrap());
    // run-now twice for the same instant is a conflict, not a second execution.
    assert!(
        repo.insert_run_now(owner, s.id, base, Uuid::now_v7())
            .await
            .is_err()
    );
    assert!(
        repo.insert_run_now(other, s.id, Utc::now(), Uuid::now_v7())
            .await
            .unwrap()
            .is_none()
    );
}

#[tokio::test]
async fn recover_interrupts_only_executions_of_silent_instances() {
    let db = TestDb::new().await.unwrap();
    let owner = db.user().await;
    let repo = PgScheduleRepository::new(db.pool.clone());
    let s = repo
        .create(new_schedule(owner, Utc::now() + Duration::hours(1)))
        .await
        .unwrap();
    let now = Utc::now();
    let (alive, dead, never) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
    repo.heartbeat(alive, now).await.unwrap();
    repo.heartbeat(dead, now - Duration::minutes(5))
        .await
        .unwrap();
    repo.insert_run_now(owner, s.id, now, alive).await.unwrap();
    repo.insert_run_now(owner, s.id, now + Duration::seconds(1), dead)
        .await
        .unwrap();
    repo.insert_run_now(owner, s.id, now + Duration::seconds(2), never)
        .await
        .unwrap();
    assert_eq!(repo.recover(now, Duration::seconds(30)).await.unwrap(), 2);
    let page = repo
        .list_executions(owner, s.id, PageRequest::default())
        .await
        .unwrap()
        .unwrap();
    let mut statuses: Vec<(Uuid, ExecutionStatus)> = page
        .items
        .iter()
        .map(|e| (e.instance_id, e.status))
        .collect();
    statuses.sort_by_key(|p| p.0);
    let mut expected = vec![
        (alive, ExecutionStatus::Running),
        (dead, ExecutionStatus::Interrupted),
        (never, ExecutionStatus::Interrupted),
    ];
    expected.sort_by_key(|p| p.0);
    assert_eq!(statuses, expected);
    repo.forget_instance(alive).await.unwrap();
    assert_eq!(repo.recover(now, Duration::seconds(30)).await.unwrap(), 1);
}

#[tokio::test]
async fn a_schedule_at_its_execution_limit_is_not_claimed_even_if_enabled() {
    let db = TestDb::new().await.unwrap();
    let owner = db.user().await;
    let repo = PgScheduleRepository::new(db.pool.clone());
    let due = Utc::now() - Duration::seconds(1);
    let mut at_limit = new_schedule(owner, due);
    at_limit.max_executions = Some(2);
    let at_limit = repo.create(at_limit).await.unwrap();
    // Its limit was lowered below its count (a PATCH), and a running overlap=skip sibling
    // shows no "skipped" row is recorded either.
    let mut over_limit = new_schedule(owner, due);
    over_limit.max_executions = Some(1);
    over_limit.overlap = OverlapPolicy::Skip;
    let over_limit = repo.create(over_limit).await.unwrap();
    let mut below = new_schedule(owner, due);
    below.max_executions = Some(3);
    let below = repo.create(below).await.unwrap();
    // Counts as left by earlier runs; the schedules are (re-)enabled and due.
    let c = db.pool.get().await.unwrap();
    for (id, count) in [(at_limit.id, 2i64), (over_limit.id, 3), (below.id, 2)] {
        c.execute(
            "UPDATE scheduler.schedules SET execution_count = $2, enabled = true WHERE id = $1",
            &[&id, &count],
        )
        .await
        .unwrap();
    }
    repo.insert_run_now(
        owner,
        over_limit.id,
        due - Duration::seconds(5),
        Uuid::now_v7(),
    )
    .await
    .unwrap()
    .unwrap();

    let o = repo
        .claim_due(
            Utc::now(),
            10,
            Uuid::now_v7(),
            &StepPlanner(Duration::seconds(1)),
        )
        .await
        .unwrap();
    let run: Vec<Uuid> = o.to_run.iter().map(|c| c.schedule.id).collect();
    assert_eq!(run, vec![below.id]);
    assert!(o.skipped.is_empty(), "{:?}", o.skipped);
    for (id, executions) in [(at_limit.id, 0), (over_limit.id, 1), (below.id, 1)] {
        let page = repo
            .list_executions(owner, id, PageRequest::default())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(page.items.len(), executions);
    }
    // Those at their limit were disabled and their count untouched; the last run of the one
    // below its limit disabled it too.
    for (id, count) in [(at_limit.id, 2), (over_limit.id, 3), (below.id, 3)] {
        let s = repo.get(owner, id).await.unwrap().unwrap();
        assert!(!s.enabled, "{id} still enabled");
        assert_eq!(s.execution_count, count);
    }
    // Nothing is due any more, so a later claim examines nothing.
    let again = repo
        .claim_due(
            Utc::now() + Duration::hours(1),
            10,
            Uuid::now_v7(),
            &StepPlanner(Duration::seconds(1)),
        )
        .await
        .unwrap();
    assert_eq!(again.examined, 0);
}
