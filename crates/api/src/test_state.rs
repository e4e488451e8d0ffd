//! A complete [`AppState`] for in-process tests of [`crate::app`]: real services on a fresh
//! migrated test database (`TEST_DATABASE_URL`), no background tasks, chosen limits and proxies.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::ratelimit::{RateLimitSettings, RateLimits, TrustedProxies};
use crate::routes::health::{Readiness, ReadinessProbe};
use crate::routes::projects::DataDir;
use crate::routes::ws::WsConfig;
use crate::state::{AppState, RequestTasks};
use actix_web::web;
use async_trait::async_trait;
use gathering_domain::events::EventPublisher;
use gathering_domain::{Clock, SystemClock};
use gathering_store::test_support::TestDb;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

struct AlwaysReady;

#[async_trait]
impl ReadinessProbe for AlwaysReady {
    async fn check(&self) -> Result<(), String> {
        Ok(())
    }
}

/// The state (and the database it lives in, kept alive by the caller).
pub(crate) async fn test_state(
    limits: RateLimitSettings,
    proxies: TrustedProxies,
) -> (web::Data<AppState>, TestDb) {
    let db = TestDb::new().await.expect("test database");
    let pool = db.pool.clone();
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let auth = gathering_auth::AuthService::new(
        gathering_auth::AuthRepos {
            users: Arc::new(gathering_store::users::PgUserRepository::new(pool.clone())),
            refresh_tokens: Arc::new(gathering_store::tokens::PgRefreshTokenRepository::new(
                pool.clone(),
            )),
            revocations: Arc::new(gathering_store::revocations::PgRevocationRepository::new(
                pool.clone(),
            )),
            audit: Arc::new(gathering_store::audit::PgAuditRepository::new(pool.clone())),
        },
        clock.clone(),
        gathering_auth::KeyRing::new("k1", &[7u8; 32]).unwrap(),
        gathering_auth::AuthConfig {
            password_params: gathering_auth::PasswordParams {
                m_cost_kib: 64,
                t_cost: 1,
                p_cost: 1,
            },
            hash_concurrency: 1,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let (bus, _flusher) =
        gathering_events::EventBus::new(gathering_events::EventsConfig::default()).unwrap();
    let publisher: Arc<dyn EventPublisher> = Arc::new(bus.clone());
    let tools = Arc::new(gathering_tools::ToolRegistry::new(1));
    let llm = gathering_llm::LlmServices::new(
        Arc::new(gathering_store::agents::PgAgentStore::new(pool.clone())),
        gathering_llm::SecretKey::from_bytes([9u8; 32]),
        gathering_llm::LlmConfig::default(),
        publisher.clone(),
        None,
    )
    .unwrap();
    let pipelines = gathering_pipeline::service::PipelineService::new(
        Arc::new(gathering_store::pipeline::PgPipelineRepository::new(
            pool.clone(),
        )),
        Arc::new(gathering_store::pipeline::PgRunRepository::new(
            pool.clone(),
        )),
        publisher.clone(),
        None,
        clock.clone(),
    );
    let scheduler = gathering_scheduler::worker::Scheduler::new(
        gathering_scheduler::worker::SchedulerDeps {
            repo: Arc::new(gathering_store::scheduler::PgScheduleRepository::new(
                pool.clone(),
            )),
            tools: tools.clone(),
            agents: None,
            pipelines: None,
            events: publisher,
            notifier: None,
            clock,
        },
        Default::default(),
    );
    let state = AppState {
        auth: Arc::new(auth),
        projects: Arc::new(gathering_store::projects::PgProjectRepository::new(
            pool.clone(),
        )),
        notifications: Arc::new(
            gathering_store::notifications::PgNotificationRepository::new(pool),
        ),
        tools,
        agents: llm.agents,
        circles: llm.circles,
        provider_settings: llm.settings,
        pipelines: Arc::new(pipelines),
        schedules: Arc::new(gathering_scheduler::ScheduleService::new(scheduler)),
        bus,
        readiness: Arc::new(Readiness::new(Arc::new(AlwaysReady))),
        data_dir: DataDir(std::env::temp_dir().join("gathering-api-tests-data")),
        limits: RateLimits::new(&limits),
        proxies,
        ws: WsConfig::default(),
        shutdown: CancellationToken::new(),
        tasks: RequestTasks::new(tokio::runtime::Handle::current()),
    };
    (web::Data::new(state), db)
}
