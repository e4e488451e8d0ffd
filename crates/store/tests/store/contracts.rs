//! The port contracts of gathering-pipeline and gathering-auth against PostgreSQL: the same
//! functions the in-memory fakes pass, so the fakes behave like the real store.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use gathering_auth::contract as auth;
use gathering_pipeline::contract as pipeline;
use gathering_store::audit::PgAuditRepository;
use gathering_store::pipeline::{PgPipelineRepository, PgRunRepository};
use gathering_store::revocations::PgRevocationRepository;
use gathering_store::test_support::TestDb;
use gathering_store::tokens::PgRefreshTokenRepository;
use gathering_store::users::PgUserRepository;

async fn pipeline_setup() -> (TestDb, PgPipelineRepository, PgRunRepository) {
    let db = TestDb::new().await.unwrap();
    let p = PgPipelineRepository::new(db.pool.clone());
    let r = PgRunRepository::new(db.pool.clone());
    (db, p, r)
}

#[tokio::test]
async fn pg_pipelines_are_owner_scoped_versioned_and_paged() {
    let (db, p, _) = pipeline_setup().await;
    let (owner, other) = (db.user().await, db.user().await);
    pipeline::pipelines_are_owner_scoped_versioned_and_paged(&p, owner, other).await;
}

#[tokio::test]
async fn pg_runs_are_claimed_once_until_released() {
    let (db, p, r) = pipeline_setup().await;
    let (owner, other) = (db.user().await, db.user().await);
    pipeline::runs_are_claimed_once_until_released(&p, &r, owner, other).await;
}

#[tokio::test]
async fn pg_apply_keeps_order_and_refuses_a_lost_lease() {
    let (db, p, r) = pipeline_setup().await;
    let owner = db.user().await;
    pipeline::apply_keeps_order_and_refuses_a_lost_lease(&p, &r, owner).await;
}

#[tokio::test]
async fn pg_cancel_ends_queued_flags_held_and_reports_finished() {
    let (db, p, r) = pipeline_setup().await;
    let (owner, other) = (db.user().await, db.user().await);
    pipeline::cancel_ends_queued_flags_held_and_reports_finished(&p, &r, owner, other).await;
}

#[tokio::test]
async fn pg_claim_takes_undated_runs_first_then_due_timers() {
    let (db, p, r) = pipeline_setup().await;
    let owner = db.user().await;
    pipeline::claim_takes_undated_runs_first_then_due_timers(&p, &r, owner).await;
}

#[tokio::test]
async fn pg_versions_deadlines_interruptions_and_delete() {
    let (db, p, r) = pipeline_setup().await;
    let owner = db.user().await;
    pipeline::versions_deadlines_interruptions_and_delete(&p, &r, owner).await;
}

#[tokio::test]
async fn pg_concurrent_claims_never_share_a_run() {
    let (db, p, r) = pipeline_setup().await;
    let owner = db.user().await;
    pipeline::concurrent_claims_never_share_a_run(&p, &r, owner).await;
}

#[tokio::test]
async fn pg_rescue_stale_counts_toward_crash_loop() {
    let (db, p, r) = pipeline_setup().await;
    let owner = db.user().await;
    pipeline::rescue_stale_counts_toward_crash_loop(&p, &r, owner).await;
}

async fn two_users(db: &TestDb) -> (uuid::Uuid, uuid::Uuid) {
    (db.user().await, db.user().await)
}

#[tokio::test]
async fn pg_users_create_conflict_and_lookup() {
    let db = TestDb::new().await.unwrap();
    auth::users_create_conflict_and_lookup(&PgUserRepository::new(db.pool.clone())).await;
}

#[tokio::test]
async fn pg_refresh_rotation_detects_reuse() {
    let db = TestDb::new().await.unwrap();
    let (user, other) = two_users(&db).await;
    auth::refresh_rotation_detects_reuse(
        &PgRefreshTokenRepository::new(db.pool.clone()),
        user,
        other,
    )
    .await;
}

#[tokio::test]
async fn pg_revocations_are_seen_and_listed() {
    let db = TestDb::new().await.unwrap();
    let user = db.user().await;
    auth::revocations_are_seen_and_listed(&PgRevocationRepository::new(db.pool.clone()), user)
        .await;
}

#[tokio::test]
async fn pg_audit_appends_filters_and_counts() {
    let db = TestDb::new().await.unwrap();
    let (user, other) = two_users(&db).await;
    auth::audit_appends_filters_and_counts(&PgAuditRepository::new(db.pool.clone()), user, other)
        .await;
}

#[tokio::test]
async fn pg_notifications_are_idempotent_scoped_and_paged() {
    let db = TestDb::new().await.unwrap();
    let (user, other) = two_users(&db).await;
    gathering_domain::notifications_contract::notifications_are_idempotent_scoped_and_paged(
        &gathering_store::notifications::PgNotificationRepository::new(db.pool.clone()),
        user,
        other,
    )
    .await;
}
