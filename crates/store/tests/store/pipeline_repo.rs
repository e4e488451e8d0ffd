//! PgPipelineRepository / PgRunRepository against the real PostgreSQL (fresh database each).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use chrono::{Duration, Utc};
use gathering_domain::pipeline::{
    CancelOutcome, NewPipeline, NodeRun, NodeStatus, PipelineDefinition, PipelineRepository,
    PipelineUpdate, RunCommit, RunError, RunRepository, RunStatus, RunTransition,
};
use gathering_domain::{PageRequest, RepoError};
use gathering_store::pipeline::{PgPipelineRepository, PgRunRepository};
use gathering_store::test_support::TestDb;
use serde_json::json;
use std::collections::HashSet;
use uuid::Uuid;

fn definition(timeout_ms: Option<u64>) -> PipelineDefinition {
    serde_json::from_value(json!({
        "nodes": [{"id": "a", "type": "trigger"}, {"id": "b", "type": "action", "config": {"tool": "echo", "params": {}}}],
        "edges": [{"from": "a", "to": "b"}],
        "timeout_ms": timeout_ms
    }))
    .unwrap()
}

async fn setup() -> (TestDb, PgPipelineRepository, PgRunRepository, Uuid) {
    let db = TestDb::new().await.unwrap();
    let owner = db.user().await;
    let repo = PgPipelineRepository::new(db.pool.clone());
    let runs = PgRunRepository::new(db.pool.clone());
    (db, repo, runs, owner)
}

async fn pipeline(repo: &PgPipelineRepository, owner: Uuid, timeout_ms: Option<u64>) -> Uuid {
    repo.create(
        NewPipeline {
            owner_id: owner,
            name: "p".into(),
            description: Some("d".into()),
            definition: definition(timeout_ms),
        },
        Utc::now(),
    )
    .await
    .unwrap()
    .id
}

fn node(id: &str, status: NodeStatus, output: Option<serde_json::Value>) -> NodeRun {
    NodeRun {
        node_id: id.into(),
        status,
        attempts: 1,
        output,
        error: None,
        started_at: Some(Utc::now()),
        finished_at: None,
        wake_at: None,
    }
}

#[tokio::test]
async fn pipelines_are_versioned_owner_scoped_and_paginated() {
    let (db, repo, runs, owner) = setup().await;
    let other = db.user().await;
    let id = pipeline(&repo, owner, None).await;
    assert!(repo.get(other, id).await.unwrap().is_none());
    assert_eq!(
        repo.get(owner, id).await.unwrap().unwrap().definition,
        definition(None)
    );
    let run1 = runs
        .create_run(owner, id, json!({"x": 1}), Utc::now())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(run1.pipeline_version, 1);
    assert!(
        runs.create_run(other, id, json!({}), Utc::now())
            .await
            .unwrap()
            .is_none()
    );
    let updated = repo
        .update(
            owner,
            id,
            PipelineUpdate {
                name: Some("q".into()),
                definition: Some(definition(Some(5000))),
                ..Default::default()
            },
            Utc::now(),
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!((updated.version, updated.name.as_str()), (2, "q"));
    assert!(
        repo.update(other, id, PipelineUpdate::default(), Utc::now())
            .await
            .unwrap()
            .is_none()
    );
    let run2 = runs
        .create_run(owner, id, json!({}), Utc::now())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(run2.pipeline_version, 2);
    // Pagination, newest first.
    for _ in 0..3 {
        pipeline(&repo, owner, None).await;
    }
    let page = repo
        .list(owner, PageRequest::new(Some(3), None))
        .await
        .unwrap();
    assert_eq!(page.items.len(), 3);
    let cursor = page.next_cursor.clone().unwrap().parse().unwrap();
    let rest = repo
        .list(owner, PageRequest::new(Some(3), Some(cursor)))
        .await
        .unwrap();
    assert_eq!(rest.items.len(), 1);
    assert_eq!(rest.items[0].id, id);
    assert!(
        repo.list(other, PageRequest::default())
            .await
            .unwrap()
            .items
            .is_empty()
    );
    let listed = runs
        .list_runs(owner, id, PageRequest::default())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        listed.items.iter().map(|r| r.id).collect::<Vec<_>>(),
        vec![run2.id, run1.id]
    );
    assert!(
        runs.list_runs(other, id, PageRequest::default())
            .await
            .unwrap()
            .is_none()
    );
    assert!(!repo.delete(other, id).await.unwrap());
    assert!(repo.delete(owner, id).await.unwrap());
    assert!(
        runs.get_run(owner, run1.id).await.unwrap().is_none(),
        "runs go with their pipeline"
    );
}

#[tokio::test]
async fn two_concurrent_claimers_never_claim_the_same_run() {
    let (_db, repo, runs, owner) = setup().await;
    let id = pipeline(&repo, owner, None).await;
    for _ in 0..60 {
        runs.create_run(owner, id, json!({}), Utc::now())
            .await
            .unwrap();
    }
    let claimer = |runs: PgRunRepository| async move {
        let me = Uuid::now_v7();
        let mut mine = Vec::new();
        loop {
            let now = Utc::now();
            let got = runs
                .claim(me, now, now + Duration::seconds(30), 7)
                .await
                .unwrap();
            if got.is_empty() {
                break;
            }
            mine.extend(got.into_iter().map(|c| c.run.id));
        }
        mine
    };
    let (a, b) = tokio::join!(claimer(runs.clone()), claimer(runs.clone()));
    let sa: HashSet<Uuid> = a.iter().copied().collect();
    let sb: HashSet<Uuid> = b.iter().copied().collect();
    assert_eq!(sa.len() + sb.len(), 60);
    assert!(sa.is_disjoint(&sb));
}

#[tokio::test]
async fn claim_starts_the_run_and_apply_persists_transitions_under_the_lease() {
    let (_db, repo, runs, owner) = setup().await;
    let id = pipeline(&repo, owner, Some(60_000)).await;
    let run = runs
        .create_run(owner, id, json!({"n": 1}), Utc::now())
        .await
        .unwrap()
        .unwrap();
    let me = Uuid::now_v7();
    let now = Utc::now();
    let claimed = runs
        .claim(me, now, now + Duration::seconds(30), 10)
        .await
        .unwrap();
    assert_eq!(claimed.len(), 1);
    let c = &claimed[0];
    assert!(c.first_start);
    assert_eq!(c.run.status, RunStatus::Running);
    assert_eq!(c.definition, definition(Some(60_000)));
    let deadline = c.run.deadline_at.unwrap();
    assert!((deadline - c.run.started_at.unwrap()).num_milliseconds() == 60_000);
    // Nothing else to claim while leased.
    assert!(
        runs.claim(Uuid::now_v7(), now, now + Duration::seconds(30), 10)
            .await
            .unwrap()
            .is_empty()
    );

    let mut a = node("a", NodeStatus::Succeeded, Some(json!({"n": 1})));
    a.finished_at = Some(Utc::now());
    let b = node("b", NodeStatus::Running, None);
    // Duplicate entries of one node in a batch: the last wins.
    let b_failed_then_running = NodeRun {
        error: Some(RunError::new("x", "y")),
        ..b.clone()
    };
    runs.apply(
        run.id,
        me,
        &[a.clone(), b_failed_then_running, b.clone()],
        RunCommit::Nodes,
    )
    .await
    .unwrap();
    let d = runs.get_run(owner, run.id).await.unwrap().unwrap();
    assert_eq!(d.node_order, vec!["a", "b"]);
    assert_eq!(d.nodes.len(), 2);
    let stored_b = d.nodes.iter().find(|n| n.node_id == "b").unwrap();
    assert_eq!(stored_b.status, NodeStatus::Running);
    assert_eq!(stored_b.error, None);

    // Another owner of the lease is refused.
    let err = runs
        .apply(
            run.id,
            Uuid::now_v7(),
            std::slice::from_ref(&b),
            RunCommit::Nodes,
        )
        .await
        .unwrap_err();
    assert!(matches!(err, RepoError::Conflict(_)));

    // Release with a due time: claimable only when due, and the resume sees the node states.
    let due = Utc::now() + Duration::seconds(60);
    runs.apply(run.id, me, &[], RunCommit::Release { due_at: Some(due) })
        .await
        .unwrap();
    assert!(
        runs.claim(me, Utc::now(), Utc::now() + Duration::seconds(30), 10)
            .await
            .unwrap()
            .is_empty()
    );
    let later = due + Duration::seconds(1);
    let again = runs
        .claim(me, later, later + Duration::seconds(30), 10)
        .await
        .unwrap();
    assert_eq!(again.len(), 1);
    assert!(!again[0].first_start);
    assert_eq!(
        again[0].run.deadline_at,
        Some(deadline),
        "the deadline is kept across claims"
    );
    assert_eq!(again[0].nodes.len(), 2);
    assert_eq!(
        again[0]
            .nodes
            .iter()
            .find(|n| n.node_id == "a")
            .unwrap()
            .output,
        Some(json!({"n": 1}))
    );

    let mut b_done = b.clone();
    b_done.status = NodeStatus::Succeeded;
    b_done.output = Some(json!("ok"));
    runs.apply(
        run.id,
        me,
        &[b_done],
        RunCommit::Finish {
            status: RunStatus::Succeeded,
            output: Some(json!({"b": "ok"})),
            error: None,
            at: Utc::now(),
        },
    )
    .await
    .unwrap();
    let d = runs.get_run(owner, run.id).await.unwrap().unwrap();
    assert_eq!(d.run.status, RunStatus::Succeeded);
    assert_eq!(d.run.output, Some(json!({"b": "ok"})));
    assert!(d.run.finished_at.is_some());
    assert!(matches!(
        runs.apply(run.id, me, &[], RunCommit::Nodes).await,
        Err(RepoError::Conflict(_))
    ));
}

#[tokio::test]
async fn rescue_requeues_expired_leases_and_abandons_after_the_cap() {
    let (_db, repo, runs, owner) = setup().await;
    let id = pipeline(&repo, owner, None).await;
    let run = runs
        .create_run(owner, id, json!({}), Utc::now())
        .await
        .unwrap()
        .unwrap();
    let t0 = Utc::now();
    let dead = Uuid::now_v7();
    runs.claim(dead, t0, t0 + Duration::seconds(30), 1)
        .await
        .unwrap();
    // Not expired yet.
    assert_eq!(
        runs.rescue_stale(t0 + Duration::seconds(10), 1)
            .await
            .unwrap()
            .requeued
            .len(),
        0
    );
    // Heartbeats keep it alive.
    let held = runs
        .heartbeat(dead, &[run.id], t0 + Duration::seconds(60))
        .await
        .unwrap();
    assert_eq!(held.len(), 1);
    assert_eq!(
        runs.rescue_stale(t0 + Duration::seconds(45), 1)
            .await
            .unwrap()
            .requeued
            .len(),
        0
    );
    let report = runs
        .rescue_stale(t0 + Duration::seconds(61), 1)
        .await
        .unwrap();
    assert_eq!(report.requeued, vec![run.id]);
    assert!(
        runs.heartbeat(dead, &[run.id], t0 + Duration::seconds(90))
            .await
            .unwrap()
            .is_empty(),
        "the lease is gone"
    );
    // Claimed again, dies again: over the cap it fails as a crash loop.
    let t1 = t0 + Duration::seconds(62);
    assert_eq!(
        runs.claim(Uuid::now_v7(), t1, t1 + Duration::seconds(30), 1)
            .await
            .unwrap()
            .len(),
        1
    );
    let report = runs
        .rescue_stale(t1 + Duration::seconds(31), 1)
        .await
        .unwrap();
    assert_eq!(report.abandoned, vec![(run.id, owner)]);
    let d = runs.get_run(owner, run.id).await.unwrap().unwrap();
    assert_eq!(d.run.status, RunStatus::Failed);
    assert_eq!(d.run.error.unwrap().code, "crash_loop");
}

#[tokio::test]
async fn cancel_flags_leased_runs_and_cancels_unleased_ones_at_once() {
    let (db, repo, runs, owner) = setup().await;
    let id = pipeline(&repo, owner, None).await;
    let leased = runs
        .create_run(owner, id, json!({}), Utc::now())
        .await
        .unwrap()
        .unwrap();
    let me = Uuid::now_v7();
    let now = Utc::now();
    runs.claim(me, now, now + Duration::seconds(30), 1)
        .await
        .unwrap();
    let queued = runs
        .create_run(owner, id, json!({}), Utc::now())
        .await
        .unwrap()
        .unwrap();
    let stranger = db.user().await;
    assert!(
        runs.request_cancel(stranger, leased.id, Utc::now())
            .await
            .unwrap()
            .is_none()
    );
    assert_eq!(
        runs.request_cancel(owner, leased.id, Utc::now())
            .await
            .unwrap(),
        Some(CancelOutcome::Requested)
    );
    let held = runs
        .heartbeat(me, &[leased.id], Utc::now() + Duration::seconds(30))
        .await
        .unwrap();
    assert!(held[0].cancel_requested);
    match runs
        .request_cancel(owner, queued.id, Utc::now())
        .await
        .unwrap()
    {
        Some(CancelOutcome::CancelledNow(r)) => assert_eq!(r.status, RunStatus::Cancelled),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        runs.request_cancel(owner, queued.id, Utc::now())
            .await
            .unwrap(),
        Some(CancelOutcome::AlreadyFinished(RunStatus::Cancelled))
    );
    assert!(
        runs.claim(me, Utc::now(), Utc::now() + Duration::seconds(30), 10)
            .await
            .unwrap()
            .is_empty()
    );
}

/// Creates and claims `n` runs for `me`; answers their ids.
async fn claimed_runs(
    repo: &PgPipelineRepository,
    runs: &PgRunRepository,
    owner: Uuid,
    me: Uuid,
    n: usize,
) -> Vec<Uuid> {
    let id = pipeline(repo, owner, None).await;
    let mut ids = Vec::new();
    for _ in 0..n {
        ids.push(
            runs.create_run(owner, id, json!({}), Utc::now())
                .await
                .unwrap()
                .unwrap()
                .id,
        );
    }
    let now = Utc::now();
    let claimed = runs
        .claim(me, now, now + Duration::seconds(30), n as u32)
        .await
        .unwrap();
    assert_eq!(claimed.len(), n);
    ids
}

#[tokio::test]
async fn apply_many_commits_several_runs_in_one_batch_and_refuses_only_a_lost_lease() {
    let (db, repo, runs, owner) = setup().await;
    let me = Uuid::now_v7();
    let ids = claimed_runs(&repo, &runs, owner, me, 3).await;
    // The second run's lease moves to another instance (rescued and reclaimed elsewhere).
    db.pool
        .get()
        .await
        .unwrap()
        .execute(
            "UPDATE pipeline.runs SET lease_owner = $2 WHERE id = $1",
            &[&ids[1], &Uuid::now_v7()],
        )
        .await
        .unwrap();
    let mut a = node("a", NodeStatus::Succeeded, Some(json!({"run": 0})));
    a.finished_at = Some(Utc::now());
    let batch = vec![
        RunTransition {
            run_id: ids[0],
            nodes: vec![a.clone(), node("b", NodeStatus::Running, None)],
            commit: RunCommit::Nodes,
        },
        RunTransition {
            run_id: ids[1],
            nodes: vec![a.clone()],
            commit: RunCommit::Nodes,
        },
        RunTransition {
            run_id: ids[2],
            nodes: vec![a.clone()],
            commit: RunCommit::Finish {
                status: RunStatus::Succeeded,
                output: Some(json!({"a": 1})),
                error: None,
                at: Utc::now(),
            },
        },
    ];
    let results = runs.apply_many(me, &batch).await.unwrap();
    assert_eq!(results.len(), 3);
    assert!(results[0].is_ok());
    assert!(matches!(&results[1], Err(RepoError::Conflict(what)) if what == "lease"));
    assert!(results[2].is_ok());

    let first = runs.get_run(owner, ids[0]).await.unwrap().unwrap();
    assert_eq!(first.run.status, RunStatus::Running);
    assert_eq!(first.nodes.len(), 2);
    let lost = runs.get_run(owner, ids[1]).await.unwrap().unwrap();
    assert!(lost.nodes.is_empty(), "nothing is written for a lost lease");
    let done = runs.get_run(owner, ids[2]).await.unwrap().unwrap();
    assert_eq!(done.run.status, RunStatus::Succeeded);
    assert_eq!(done.run.output, Some(json!({"a": 1})));
    assert_eq!(done.nodes.len(), 1);
    // Finishing released the lease: a later transition of that run is refused.
    assert!(matches!(
        runs.apply_many(
            me,
            &[RunTransition {
                run_id: ids[2],
                nodes: vec![],
                commit: RunCommit::Nodes
            }]
        )
        .await
        .unwrap()[0],
        Err(RepoError::Conflict(_))
    ));
    assert!(runs.apply_many(me, &[]).await.unwrap().is_empty());
}

#[tokio::test]
async fn apply_many_keeps_the_order_of_one_runs_transitions() {
    let (_db, repo, runs, owner) = setup().await;
    let me = Uuid::now_v7();
    let ids = claimed_runs(&repo, &runs, owner, me, 2).await;
    let (x, y) = (ids[0], ids[1]);
    let t = |run_id, nodes: Vec<NodeRun>, commit| RunTransition {
        run_id,
        nodes,
        commit,
    };
    let mut b_retry = node("b", NodeStatus::Running, None);
    b_retry.attempts = 2;
    b_retry.error = Some(RunError::new("timeout", "first attempt"));
    let mut b_done = node("b", NodeStatus::Succeeded, Some(json!("ok")));
    b_done.attempts = 2;
    let finish = RunCommit::Finish {
        status: RunStatus::Succeeded,
        output: Some(json!({"b": "ok"})),
        error: None,
        at: Utc::now(),
    };
    // The runs interleaved (the larger id first, so the store's id ordering must be stable),
    // and for `y` a transition after its finish, which must be refused as it would be alone.
    let (first, second) = if x > y { (x, y) } else { (y, x) };
    let batch = vec![
        t(
            first,
            vec![node("b", NodeStatus::Running, None)],
            RunCommit::Nodes,
        ),
        t(
            second,
            vec![node("b", NodeStatus::Running, None)],
            RunCommit::Nodes,
        ),
        t(first, vec![b_retry.clone()], RunCommit::Nodes),
        t(second, vec![b_done.clone()], finish.clone()),
        t(first, vec![b_done.clone()], RunCommit::Nodes),
        t(second, vec![b_retry.clone()], RunCommit::Nodes),
    ];
    let results = runs.apply_many(me, &batch).await.unwrap();
    assert!(results[..5].iter().all(Result::is_ok), "{results:?}");
    assert!(matches!(results[5], Err(RepoError::Conflict(_))));
    for id in [first, second] {
        let d = runs.get_run(owner, id).await.unwrap().unwrap();
        let b = d.nodes.iter().find(|n| n.node_id == "b").unwrap();
        assert_eq!(b.status, NodeStatus::Succeeded, "the last transition wins");
        assert_eq!((b.attempts, b.output.clone()), (2, Some(json!("ok"))));
    }
    let d = runs.get_run(owner, second).await.unwrap().unwrap();
    assert_eq!(d.run.status, RunStatus::Succeeded);
}
