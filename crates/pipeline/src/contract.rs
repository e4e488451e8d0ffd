//! Contract tests for the pipeline ports: async functions generic over the port, run against
//! the in-memory fake ([`crate::memory::MemoryStore`], in this crate's tests) and against the
//! PostgreSQL adapter (gathering-store's tests), so the fake the engine tests rely on behaves
//! like the real store. Each panics on a broken contract.
//!
//! Owners are passed in: PostgreSQL needs them to exist as users.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use chrono::{DateTime, Duration, SubsecRound, Utc};
use gathering_domain::pipeline::{
    CancelOutcome, NewPipeline, NodeRun, NodeStatus, PipelineDefinition, PipelineRepository,
    PipelineUpdate, RunCommit, RunRepository, RunStatus, RunTransition,
};
use gathering_domain::{PageRequest, RepoError};
use serde_json::json;
use uuid::Uuid;

/// Database time has microsecond precision.
fn now() -> DateTime<Utc> {
    Utc::now().trunc_subsecs(6)
}

fn definition() -> PipelineDefinition {
    serde_json::from_value(json!({
        "nodes": [{"id": "a", "type": "trigger"}, {"id": "b", "type": "action", "config": {"tool": "echo", "params": {}}}],
        "edges": [{"from": "a", "to": "b"}]
    }))
    .unwrap()
}

fn node(id: &str, status: NodeStatus, attempts: i32) -> NodeRun {
    NodeRun {
        node_id: id.into(),
        status,
        attempts,
        output: None,
        error: None,
        started_at: Some(now()),
        finished_at: None,
        wake_at: None,
    }
}

async fn pipeline<P: PipelineRepository>(repo: &P, owner: Uuid, name: &str) -> Uuid {
    repo.create(
        NewPipeline {
            owner_id: owner,
            name: name.into(),
            description: Some("d".into()),
            definition: definition(),
        },
        now(),
    )
    .await
    .unwrap()
    .id
}

/// create/get round trip, owner scoping (another owner sees not-found everywhere), paging newest
/// first, and a version bump on every update.
pub async fn pipelines_are_owner_scoped_versioned_and_paged<P: PipelineRepository>(
    repo: &P,
    owner: Uuid,
    other: Uuid,
) {
    let first = pipeline(repo, owner, "p0").await;
    let got = repo.get(owner, first).await.unwrap().unwrap();
    assert_eq!(got.version, 1);
    assert_eq!(got.name, "p0");
    assert_eq!(got.owner_id, owner);
    assert_eq!(got.definition, definition());
    assert!(repo.get(other, first).await.unwrap().is_none());
    assert!(repo.get(owner, Uuid::now_v7()).await.unwrap().is_none());

    for i in 1..5 {
        pipeline(repo, owner, &format!("p{i}")).await;
    }
    // Walk the pages with the cursor: newest first, every pipeline once, no more.
    let mut names = Vec::new();
    let mut cursor = None;
    for _ in 0..10 {
        let page = repo
            .list(owner, PageRequest::new(Some(2), cursor))
            .await
            .unwrap();
        assert!(page.items.len() <= 2);
        names.extend(page.items.iter().map(|p| p.name.clone()));
        match page.next_cursor {
            Some(c) => cursor = Some(c.parse::<Uuid>().unwrap()),
            None => break,
        }
    }
    assert_eq!(
        names,
        ["p4", "p3", "p2", "p1", "p0"],
        "newest first, each once"
    );
    let theirs = repo.list(other, PageRequest::default()).await.unwrap();
    assert!(theirs.items.is_empty());
    assert!(theirs.next_cursor.is_none());

    let update = PipelineUpdate {
        name: Some("renamed".into()),
        ..PipelineUpdate::default()
    };
    assert!(
        repo.update(other, first, update.clone(), now())
            .await
            .unwrap()
            .is_none()
    );
    let v2 = repo
        .update(owner, first, update, now())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(v2.version, 2);
    assert_eq!(v2.name, "renamed");
    assert_eq!(v2.description.as_deref(), Some("d"), "None keeps the value");
    let v3 = repo
        .update(owner, first, PipelineUpdate::default(), now())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(v3.version, 3, "any update is a new version");
    assert_eq!(repo.get(owner, first).await.unwrap().unwrap().version, 3);

    assert!(!repo.delete(other, first).await.unwrap());
    assert!(repo.delete(owner, first).await.unwrap());
    assert!(repo.get(owner, first).await.unwrap().is_none());
    assert!(!repo.delete(owner, first).await.unwrap());
}

/// A run is created `queued` of the current version, only for its owner; a claimed run is not
/// claimed again (by anyone) until it is released.
pub async fn runs_are_claimed_once_until_released<P: PipelineRepository, R: RunRepository>(
    pipelines: &P,
    runs: &R,
    owner: Uuid,
    other: Uuid,
) {
    let pid = pipeline(pipelines, owner, "claims").await;
    assert!(
        runs.create_run(other, pid, json!({}), now())
            .await
            .unwrap()
            .is_none()
    );
    let r1 = runs
        .create_run(owner, pid, json!({"n": 1}), now())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(r1.status, RunStatus::Queued);
    assert_eq!(r1.pipeline_version, 1);
    let r2 = runs
        .create_run(owner, pid, json!({"n": 2}), now())
        .await
        .unwrap()
        .unwrap();
    assert!(runs.get_run(other, r1.id).await.unwrap().is_none());
    let listed = runs
        .list_runs(owner, pid, PageRequest::default())
        .await
        .unwrap()
        .unwrap();
    let ids: Vec<Uuid> = listed.items.iter().map(|r| r.id).collect();
    assert_eq!(ids, [r2.id, r1.id], "newest first");
    assert!(
        runs.list_runs(other, pid, PageRequest::default())
            .await
            .unwrap()
            .is_none()
    );

    let a = Uuid::now_v7();
    let b = Uuid::now_v7();
    let lease = now() + Duration::seconds(60);
    let claimed = runs.claim(a, now(), lease, 1).await.unwrap();
    assert_eq!(claimed.len(), 1, "limit is honoured");
    let first = claimed[0].run.id;
    assert!(claimed[0].first_start);
    assert_eq!(claimed[0].rescue_count, 0);
    assert_eq!(claimed[0].run.status, RunStatus::Running);
    assert_eq!(claimed[0].definition, definition());
    let rest = runs.claim(b, now(), lease, 10).await.unwrap();
    assert_eq!(rest.len(), 1, "the other run only");
    let second = rest[0].run.id;
    assert_ne!(first, second);
    assert!([r1.id, r2.id].contains(&first) && [r1.id, r2.id].contains(&second));
    assert!(
        runs.claim(b, now(), lease, 10).await.unwrap().is_empty(),
        "a held run is never claimed twice"
    );
    assert!(runs.claim(a, now(), lease, 10).await.unwrap().is_empty());

    let held = runs.heartbeat(a, &[first, second], lease).await.unwrap();
    assert_eq!(held.len(), 1);
    assert_eq!(held[0].run_id, first);

    runs.apply(
        first,
        a,
        &[node("a", NodeStatus::Succeeded, 1)],
        RunCommit::Release { due_at: None },
    )
    .await
    .unwrap();
    assert!(runs.heartbeat(a, &[first], lease).await.unwrap().is_empty());
    let again = runs.claim(b, now(), lease, 10).await.unwrap();
    assert_eq!(again.len(), 1, "a released run is claimable again");
    assert_eq!(again[0].run.id, first);
    assert!(!again[0].first_start);
    assert_eq!(again[0].nodes.len(), 1, "persisted node states come back");
    assert_eq!(again[0].nodes[0].node_id, "a");

    // A timer in the future is not due yet.
    runs.apply(
        second,
        b,
        &[],
        RunCommit::Release {
            due_at: Some(now() + Duration::seconds(30)),
        },
    )
    .await
    .unwrap();
    assert!(runs.claim(a, now(), lease, 10).await.unwrap().is_empty());
    let due = runs
        .claim(
            a,
            now() + Duration::seconds(31),
            lease + Duration::seconds(31),
            10,
        )
        .await
        .unwrap();
    assert_eq!(due.len(), 1);
    assert_eq!(due[0].run.id, second);
}

/// `apply` only while the lease is held (`Conflict("lease")` otherwise); `apply_many` applies in
/// the order given, answers per transition, and a lost lease does not sink the others.
pub async fn apply_keeps_order_and_refuses_a_lost_lease<P: PipelineRepository, R: RunRepository>(
    pipelines: &P,
    runs: &R,
    owner: Uuid,
) {
    let pid = pipeline(pipelines, owner, "apply").await;
    let r1 = runs
        .create_run(owner, pid, json!({}), now())
        .await
        .unwrap()
        .unwrap();
    let r2 = runs
        .create_run(owner, pid, json!({}), now())
        .await
        .unwrap()
        .unwrap();
    let a = Uuid::now_v7();
    let stranger = Uuid::now_v7();
    let lease = now() + Duration::seconds(60);
    assert_eq!(runs.claim(a, now(), lease, 1).await.unwrap().len(), 1);
    let held_id = runs.heartbeat(a, &[r1.id, r2.id], lease).await.unwrap()[0].run_id;
    let queued_id = if held_id == r1.id { r2.id } else { r1.id };

    let err = runs
        .apply(held_id, stranger, &[], RunCommit::Nodes)
        .await
        .unwrap_err();
    assert!(
        matches!(err, RepoError::Conflict(ref f) if f == "lease"),
        "{err:?}"
    );
    let err = runs
        .apply(queued_id, a, &[], RunCommit::Nodes)
        .await
        .unwrap_err();
    assert!(
        matches!(err, RepoError::Conflict(ref f) if f == "lease"),
        "{err:?}"
    );

    let batch = vec![
        RunTransition {
            run_id: held_id,
            nodes: vec![node("b", NodeStatus::Running, 1)],
            commit: RunCommit::Nodes,
        },
        RunTransition {
            run_id: queued_id,
            nodes: vec![node("b", NodeStatus::Running, 1)],
            commit: RunCommit::Nodes,
        },
        RunTransition {
            run_id: held_id,
            nodes: vec![node("b", NodeStatus::Succeeded, 2)],
            commit: RunCommit::Finish {
                status: RunStatus::Succeeded,
                output: Some(json!({"ok": true})),
                error: None,
                at: now(),
            },
        },
    ];
    let out = runs.apply_many(a, &batch).await.unwrap();
    assert_eq!(out.len(), 3);
    assert!(out[0].is_ok());
    assert!(
        matches!(out[1], Err(RepoError::Conflict(ref f)) if f == "lease"),
        "{out:?}"
    );
    assert!(out[2].is_ok());
    let detail = runs.get_run(owner, held_id).await.unwrap().unwrap();
    assert_eq!(detail.run.status, RunStatus::Succeeded);
    assert_eq!(detail.run.output, Some(json!({"ok": true})));
    assert!(detail.run.finished_at.is_some());
    let b = detail.nodes.iter().find(|n| n.node_id == "b").unwrap();
    assert_eq!(b.status, NodeStatus::Succeeded, "the later transition wins");
    assert_eq!(b.attempts, 2);
    let untouched = runs.get_run(owner, queued_id).await.unwrap().unwrap();
    assert_eq!(untouched.run.status, RunStatus::Queued);
    assert!(untouched.nodes.is_empty());

    // Finishing released the lease.
    let err = runs
        .apply(held_id, a, &[], RunCommit::Nodes)
        .await
        .unwrap_err();
    assert!(
        matches!(err, RepoError::Conflict(ref f) if f == "lease"),
        "{err:?}"
    );
    assert!(
        runs.heartbeat(a, &[held_id], lease)
            .await
            .unwrap()
            .is_empty()
    );
}

/// Cancelling a queued run ends it now; a held run gets the flag; a finished run says so;
/// another owner's run is not found.
pub async fn cancel_ends_queued_flags_held_and_reports_finished<
    P: PipelineRepository,
    R: RunRepository,
>(
    pipelines: &P,
    runs: &R,
    owner: Uuid,
    other: Uuid,
) {
    let pid = pipeline(pipelines, owner, "cancel").await;
    let queued = runs
        .create_run(owner, pid, json!({}), now())
        .await
        .unwrap()
        .unwrap();
    assert!(
        runs.request_cancel(other, queued.id, now())
            .await
            .unwrap()
            .is_none()
    );
    match runs.request_cancel(owner, queued.id, now()).await.unwrap() {
        Some(CancelOutcome::CancelledNow(run)) => {
            assert_eq!(run.status, RunStatus::Cancelled);
            assert!(run.finished_at.is_some());
        }
        other => panic!("expected CancelledNow, got {other:?}"),
    }
    let a = Uuid::now_v7();
    let lease = now() + Duration::seconds(60);
    assert!(
        runs.claim(a, now(), lease, 10).await.unwrap().is_empty(),
        "a cancelled run is not claimable"
    );
    assert_eq!(
        runs.request_cancel(owner, queued.id, now()).await.unwrap(),
        Some(CancelOutcome::AlreadyFinished(RunStatus::Cancelled))
    );

    let held = runs
        .create_run(owner, pid, json!({}), now())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(runs.claim(a, now(), lease, 10).await.unwrap().len(), 1);
    assert_eq!(
        runs.request_cancel(owner, held.id, now()).await.unwrap(),
        Some(CancelOutcome::Requested)
    );
    let beat = runs.heartbeat(a, &[held.id], lease).await.unwrap();
    assert_eq!(beat.len(), 1);
    assert!(beat[0].cancel_requested, "the holder learns of the request");
    assert_eq!(
        runs.get_run(owner, held.id)
            .await
            .unwrap()
            .unwrap()
            .run
            .status,
        RunStatus::Running,
        "the holder ends it"
    );
}

/// An expired lease is rescued (claimable again, counted); a run rescued more than
/// `max_rescues` times fails as `crash_loop`; a live lease is left alone.
pub async fn rescue_stale_counts_toward_crash_loop<P: PipelineRepository, R: RunRepository>(
    pipelines: &P,
    runs: &R,
    owner: Uuid,
) {
    let pid = pipeline(pipelines, owner, "rescue").await;
    let run = runs
        .create_run(owner, pid, json!({}), now())
        .await
        .unwrap()
        .unwrap();
    let max_rescues = 1;
    let mut t = now();
    let lease = |t: DateTime<Utc>| t + Duration::seconds(10);

    assert_eq!(
        runs.claim(Uuid::now_v7(), t, lease(t), 10)
            .await
            .unwrap()
            .len(),
        1
    );
    let early = runs
        .rescue_stale(t + Duration::seconds(5), max_rescues)
        .await
        .unwrap();
    assert!(
        early.requeued.is_empty() && early.abandoned.is_empty(),
        "lease still live"
    );

    for expected_count in 1..=max_rescues {
        t += Duration::seconds(20);
        let report = runs.rescue_stale(t, max_rescues).await.unwrap();
        assert_eq!(report.requeued, vec![run.id]);
        assert!(report.abandoned.is_empty());
        let claimed = runs.claim(Uuid::now_v7(), t, lease(t), 10).await.unwrap();
        assert_eq!(claimed.len(), 1, "a rescued run is claimable again");
        assert_eq!(claimed[0].rescue_count, expected_count);
    }
    t += Duration::seconds(20);
    let report = runs.rescue_stale(t, max_rescues).await.unwrap();
    assert!(report.requeued.is_empty());
    assert_eq!(report.abandoned, vec![(run.id, owner)]);
    let detail = runs.get_run(owner, run.id).await.unwrap().unwrap();
    assert_eq!(detail.run.status, RunStatus::Failed);
    assert_eq!(
        detail.run.error.as_ref().map(|e| e.code.as_str()),
        Some("crash_loop")
    );
    assert!(
        runs.claim(Uuid::now_v7(), t, lease(t), 10)
            .await
            .unwrap()
            .is_empty()
    );
    let again = runs
        .rescue_stale(t + Duration::seconds(60), max_rescues)
        .await
        .unwrap();
    assert!(again.requeued.is_empty() && again.abandoned.is_empty());
}

/// Claim order: runs never given a due time (fresh or released now) first, oldest first; then due
/// timers by due time. `limit` bounds each claim.
pub async fn claim_takes_undated_runs_first_then_due_timers<
    P: PipelineRepository,
    R: RunRepository,
>(
    pipelines: &P,
    runs: &R,
    owner: Uuid,
) {
    let pid = pipeline(pipelines, owner, "order").await;
    let mut ids = Vec::new();
    for _ in 0..2 {
        ids.push(
            runs.create_run(owner, pid, json!({}), now())
                .await
                .unwrap()
                .unwrap()
                .id,
        );
    }
    let a = Uuid::now_v7();
    let t = now();
    let lease = t + Duration::seconds(60);
    let got = runs.claim(a, t, lease, 1).await.unwrap();
    assert_eq!(got[0].run.id, ids[0], "oldest first");
    // The oldest now waits on a timer that is already due.
    runs.apply(
        ids[0],
        a,
        &[],
        RunCommit::Release {
            due_at: Some(t - Duration::seconds(1)),
        },
    )
    .await
    .unwrap();
    let newest = runs
        .create_run(owner, pid, json!({}), now())
        .await
        .unwrap()
        .unwrap()
        .id;
    let t = now();
    let order: Vec<Uuid> = {
        let mut v = Vec::new();
        for _ in 0..3 {
            let c = runs.claim(a, t, lease, 1).await.unwrap();
            assert_eq!(c.len(), 1);
            v.push(c[0].run.id);
        }
        v
    };
    assert_eq!(
        order,
        [ids[1], newest, ids[0]],
        "undated first, then due timers"
    );
    assert!(runs.claim(a, t, lease, 1).await.unwrap().is_empty());
}

/// A run records the version current at its creation; the first claim sets `started_at` and the
/// deadline from the version's `timeout_ms`; `Interrupted` releases and counts a rescue; deleting
/// the pipeline deletes its runs.
pub async fn versions_deadlines_interruptions_and_delete<
    P: PipelineRepository,
    R: RunRepository,
>(
    pipelines: &P,
    runs: &R,
    owner: Uuid,
) {
    let pid = pipeline(pipelines, owner, "versions").await;
    let old = runs
        .create_run(owner, pid, json!({}), now())
        .await
        .unwrap()
        .unwrap();
    let mut def = definition();
    def.timeout_ms = Some(60_000);
    let v2 = pipelines
        .update(
            owner,
            pid,
            PipelineUpdate {
                definition: Some(def.clone()),
                ..PipelineUpdate::default()
            },
            now(),
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!(v2.version, 2);
    assert_eq!(v2.definition, def);
    let new = runs
        .create_run(owner, pid, json!({}), now())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(old.pipeline_version, 1);
    assert_eq!(new.pipeline_version, 2);
    assert!(new.started_at.is_none() && new.deadline_at.is_none());

    let a = Uuid::now_v7();
    let t = now();
    let lease = t + Duration::seconds(60);
    let claimed = runs.claim(a, t, lease, 10).await.unwrap();
    assert_eq!(claimed.len(), 2);
    let c_old = claimed.iter().find(|c| c.run.id == old.id).unwrap();
    let c_new = claimed.iter().find(|c| c.run.id == new.id).unwrap();
    assert_eq!(
        c_old.definition,
        definition(),
        "the version the run was created on"
    );
    assert_eq!(c_new.definition, def);
    assert_eq!(c_new.run.started_at, Some(t));
    assert_eq!(
        c_new.run.deadline_at,
        Some(t + Duration::milliseconds(60_000))
    );
    assert_eq!(c_old.run.deadline_at, None);

    runs.apply(new.id, a, &[], RunCommit::Interrupted)
        .await
        .unwrap();
    let t2 = t + Duration::seconds(5);
    let again = runs.claim(a, t2, lease, 10).await.unwrap();
    assert_eq!(again.len(), 1, "an interrupted run is claimable now");
    assert_eq!(again[0].run.id, new.id);
    assert_eq!(again[0].rescue_count, 1);
    assert!(!again[0].first_start);
    assert_eq!(again[0].run.started_at, Some(t), "started once");
    assert_eq!(
        again[0].run.deadline_at,
        Some(t + Duration::milliseconds(60_000))
    );

    assert!(pipelines.delete(owner, pid).await.unwrap());
    assert!(runs.get_run(owner, old.id).await.unwrap().is_none());
    assert!(runs.get_run(owner, new.id).await.unwrap().is_none());
    assert!(
        runs.list_runs(owner, pid, PageRequest::default())
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        runs.heartbeat(a, &[old.id, new.id], lease)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(runs.claim(a, t2, lease, 10).await.unwrap().is_empty());
}

/// Claims racing each other (`FOR UPDATE SKIP LOCKED` in PostgreSQL) never hand one run to two
/// executors, and together take every claimable run.
pub async fn concurrent_claims_never_share_a_run<P: PipelineRepository, R: RunRepository>(
    pipelines: &P,
    runs: &R,
    owner: Uuid,
) {
    let pid = pipeline(pipelines, owner, "race").await;
    let mut created = std::collections::BTreeSet::new();
    for _ in 0..24 {
        created.insert(
            runs.create_run(owner, pid, json!({}), now())
                .await
                .unwrap()
                .unwrap()
                .id,
        );
    }
    let t = now();
    let lease = t + Duration::seconds(60);
    let claims =
        futures::future::join_all((0..8).map(|_| runs.claim(Uuid::now_v7(), t, lease, 4))).await;
    let mut seen = std::collections::BTreeSet::new();
    for c in claims {
        let c = c.unwrap();
        assert!(c.len() <= 4, "limit is honoured");
        for run in c {
            assert!(seen.insert(run.run.id), "run {} claimed twice", run.run.id);
        }
    }
    // 8 x 4 >= 24: every run was taken, by exactly one claimer.
    assert_eq!(seen, created);
    assert!(
        runs.claim(Uuid::now_v7(), t, lease, 100)
            .await
            .unwrap()
            .is_empty()
    );
}

/// Every contract against the in-memory fake.
#[cfg(test)]
mod memory_fake {
    use super::*;
    use crate::memory::MemoryStore;

    #[tokio::test]
    async fn memory_pipelines_are_owner_scoped_versioned_and_paged() {
        let s = MemoryStore::new();
        pipelines_are_owner_scoped_versioned_and_paged(&s, Uuid::now_v7(), Uuid::now_v7()).await;
    }

    #[tokio::test]
    async fn memory_runs_are_claimed_once_until_released() {
        let s = MemoryStore::new();
        runs_are_claimed_once_until_released(&s, &s, Uuid::now_v7(), Uuid::now_v7()).await;
    }

    #[tokio::test]
    async fn memory_apply_keeps_order_and_refuses_a_lost_lease() {
        let s = MemoryStore::new();
        apply_keeps_order_and_refuses_a_lost_lease(&s, &s, Uuid::now_v7()).await;
    }

    #[tokio::test]
    async fn memory_cancel_ends_queued_flags_held_and_reports_finished() {
        let s = MemoryStore::new();
        cancel_ends_queued_flags_held_and_reports_finished(&s, &s, Uuid::now_v7(), Uuid::now_v7())
            .await;
    }

    #[tokio::test]
    async fn memory_claim_takes_undated_runs_first_then_due_timers() {
        let s = MemoryStore::new();
        claim_takes_undated_runs_first_then_due_timers(&s, &s, Uuid::now_v7()).await;
    }

    #[tokio::test]
    async fn memory_versions_deadlines_interruptions_and_delete() {
        let s = MemoryStore::new();
        versions_deadlines_interruptions_and_delete(&s, &s, Uuid::now_v7()).await;
    }

    #[tokio::test]
    async fn memory_concurrent_claims_never_share_a_run() {
        let s = MemoryStore::new();
        concurrent_claims_never_share_a_run(&s, &s, Uuid::now_v7()).await;
    }

    #[tokio::test]
    async fn memory_rescue_stale_counts_toward_crash_loop() {
        let s = MemoryStore::new();
        rescue_stale_counts_toward_crash_loop(&s, &s, Uuid::now_v7()).await;
    }
}
