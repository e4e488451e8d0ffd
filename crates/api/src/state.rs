//! The application state: every service and setting the HTTP layer uses, built once by the
//! binary and registered once (as `web::Data<AppState>`) by [`crate::app`]. Handlers and
//! extractors read their dependencies from it, so forgetting a service is a compile error
//! rather than a feature that silently switches off.

use crate::ratelimit::{RateLimits, TrustedProxies};
use crate::routes::health::Readiness;
use crate::routes::projects::DataDir;
use crate::routes::ws::WsConfig;
use gathering_auth::AuthService;
use gathering_domain::notifications::NotificationRepository;
use gathering_domain::projects::ProjectRepository;
use gathering_events::EventBus;
use gathering_llm::{AgentService, CircleService, SettingsService};
use gathering_pipeline::service::PipelineService;
use gathering_scheduler::ScheduleService;
use gathering_tools::ToolRegistry;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub struct AppState {
    /// Accounts, tokens, revocations, audit (also the `AuthUser` extractor).
    pub auth: Arc<AuthService>,
    pub projects: Arc<dyn ProjectRepository>,
    pub notifications: Arc<dyn NotificationRepository>,
    pub tools: Arc<ToolRegistry>,
    pub agents: Arc<AgentService>,
    pub circles: Arc<CircleService>,
    /// Per-user provider settings.
    pub provider_settings: Arc<SettingsService>,
    pub pipelines: Arc<PipelineService>,
    pub schedules: Arc<ScheduleService>,
    /// Live events (the WebSocket route subscribes here).
    pub bus: EventBus,
    /// `/health/ready`; the binary turns it to draining on shutdown.
    pub readiness: Arc<Readiness>,
    /// The server's data dir, canonical: no project may contain it or lie inside it.
    pub data_dir: DataDir,
    /// Per-address and per-user rate limits.
    pub limits: RateLimits,
    /// Proxies whose `X-Forwarded-For` is believed (may be empty).
    pub proxies: TrustedProxies,
    pub ws: WsConfig,
    /// Cancelled when the server starts stopping (WebSockets close with 1001).
    pub shutdown: CancellationToken,
    /// Work started by requests that must outlive them (circle tasks). Closed and waited on
    /// during shutdown ([`AppState::drain_tasks`]): nothing a handler starts escapes the drain.
    pub tasks: TaskTracker,
}

impl AppState {
    /// Closes the task set and waits (at most `timeout`) for the tasks started by requests.
    /// Returns how many were still running when the wait gave up (0: all finished).
    pub async fn drain_tasks(&self, timeout: Duration) -> usize {
        drain(&self.tasks, timeout).await
    }
}

/// Closes `tasks` and waits for them, at most `timeout`; the number left running is logged
/// and returned (they are dropped with the runtime).
pub async fn drain(tasks: &TaskTracker, timeout: Duration) -> usize {
    tasks.close();
    if tokio::time::timeout(timeout, tasks.wait()).await.is_ok() {
        return 0;
    }
    let left = tasks.len();
    tracing::warn!(
        left,
        "request tasks (circle tasks) did not finish within the shutdown timeout"
    );
    left
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn tracker_drain_waits_for_an_in_flight_task() {
        let tasks = TaskTracker::new();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let d = done.clone();
        tasks.spawn(async move {
            let _ = rx.await;
            d.store(true, std::sync::atomic::Ordering::SeqCst);
        });
        let release = tokio::spawn(async move {
            tokio::task::yield_now().await;
            let _ = tx.send(());
        });
        assert_eq!(drain(&tasks, Duration::from_secs(10)).await, 0);
        assert!(done.load(std::sync::atomic::Ordering::SeqCst));
        let _ = release.await;
    }
}

#[cfg(test)]
mod more_tests {
    use super::*;

    #[tokio::test]
    async fn drain_gives_up_after_the_timeout_and_reports_what_is_left() {
        let tasks = TaskTracker::new();
        let (_tx, rx) = tokio::sync::oneshot::channel::<()>();
        tasks.spawn(async move {
            let _ = rx.await;
        });
        assert_eq!(drain(&tasks, Duration::from_millis(20)).await, 1);
    }
}
