//! Quotas (migration V11) and values PostgreSQL refuses, against the real PostgreSQL.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use chrono::Utc;
use gathering_domain::quotas::WorkspaceQuota;
use gathering_domain::scheduler::{
    ActionType, MissedRuns, NewSchedule, OverlapPolicy, ScheduleRepository,
};
use gathering_domain::{ErrorCode, ErrorKind, RepoError};
use gathering_store::quotas::{PgQuotas, QuotaLimits, apply_count_limits};
use gathering_store::scheduler::PgScheduleRepository;
use gathering_store::test_support::TestDb;
use serde_json::json;
use std::sync::Arc;
use uuid::Uuid;

fn schedule(owner: Uuid, name: &str, config: serde_json::Value) -> NewSchedule {
    NewSchedule {
        owner_id: owner,
        name: name.into(),
        cron: None,
        interval_secs: Some(60),
        timezone: None,
        action_type: ActionType::SendNotification,
        action_config: config,
        enabled: true,
        missed_runs: MissedRuns::Skip,
        overlap: OverlapPolicy::Skip,
        max_executions: None,
        next_run_at: Some(Utc::now()),
    }
}

#[tokio::test]
async fn a_nul_the_store_is_handed_is_a_validation_error_not_a_500() {
    let db = TestDb::new().await.unwrap();
    let owner = db.user().await;
    let repo = PgScheduleRepository::new(db.pool.clone());
    let e = repo
        .create(schedule(owner, "a\u{0}b", json!({})))
        .await
        .unwrap_err();
    assert!(matches!(e, RepoError::Invalid(_)), "{e:?}");
    assert_eq!(e.kind(), ErrorKind::Validation);
    let e = repo
        .create(schedule(owner, "n", json!({"message": "a\u{0}b"})))
        .await
        .unwrap_err();
    assert!(matches!(e, RepoError::Invalid(_)), "jsonb: {e:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_count_quota_holds_under_concurrent_inserts_and_per_user() {
    let db = TestDb::new().await.unwrap();
    apply_count_limits(
        &db.pool,
        &QuotaLimits {
            schedules_per_user: 5,
            ..QuotaLimits::default()
        },
    )
    .await
    .unwrap();
    let owner = db.user().await;
    let other = db.user().await;
    let repo = Arc::new(PgScheduleRepository::new(db.pool.clone()));
    let tasks: Vec<_> = (0..20)
        .map(|i| {
            let repo = repo.clone();
            tokio::spawn(async move {
                repo.create(schedule(owner, &format!("s{i}"), json!({})))
                    .await
            })
        })
        .collect();
    let mut ok = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(_) => ok += 1,
            Err(RepoError::QuotaExceeded(m)) => assert!(m.contains("5 schedules"), "{m}"),
            Err(e) => panic!("{e:?}"),
        }
    }
    assert_eq!(ok, 5);
    repo.create(schedule(other, "o", json!({}))).await.unwrap();

    // 0 lifts the limit.
    apply_count_limits(
        &db.pool,
        &QuotaLimits {
            schedules_per_user: 0,
            ..QuotaLimits::default()
        },
    )
    .await
    .unwrap();
    repo.create(schedule(owner, "more", json!({})))
        .await
        .unwrap();
}

#[tokio::test]
async fn workspace_bytes_are_charged_refused_over_the_limit_and_never_negative() {
    let db = TestDb::new().await.unwrap();
    let owner = db.user().await;
    let q = PgQuotas::new(
        db.pool.clone(),
        &QuotaLimits {
            workspace_bytes_per_user: 1000,
            ..QuotaLimits::default()
        },
    );
    q.charge_workspace_bytes(owner, 600).await.unwrap();
    assert!(matches!(
        q.charge_workspace_bytes(owner, 500).await,
        Err(RepoError::QuotaExceeded(_))
    ));
    assert_eq!(q.workspace_bytes(owner).await.unwrap(), 600);
    q.charge_workspace_bytes(owner, 400).await.unwrap();
    assert_eq!(q.workspace_bytes(owner).await.unwrap(), 1000);
    q.charge_workspace_bytes(owner, -5000).await.unwrap();
    assert_eq!(q.workspace_bytes(owner).await.unwrap(), 0);
    assert!(matches!(
        q.charge_workspace_bytes(owner, 1001).await,
        Err(RepoError::QuotaExceeded(_))
    ));
}
