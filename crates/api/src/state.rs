//! The application state: every service and setting the HTTP layer uses, built once by the
//! binary and registered once (as `web::Data<AppState>`) by [`crate::app`]. Handlers and
//! extractors read their dependencies from it, so forgetting a service is a compile error
//! rather than a feature that silently switches off.

use crate::error::ApiError;
use crate::ratelimit::{RateLimits, TrustedProxies};
use crate::routes::health::Readiness;
use crate::routes::projects::DataDir;
use crate::routes::ws::WsConfig;
use gathering_auth::AuthService;
use gathering_domain::ErrorKind;
use gathering_domain::codes;
use gathering_domain::notifications::NotificationRepository;
use gathering_domain::projects::ProjectRepository;
use gathering_events::EventBus;
use gathering_llm::{AgentService, CircleService, SettingsService};
use gathering_pipeline::service::PipelineService;
use gathering_scheduler::ScheduleService;
use gathering_tools::ToolRegistry;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::runtime::Handle;
use tokio::task::JoinHandle;
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
    /// during shutdown ([`RequestTasks::drain`]): nothing a handler starts escapes the drain.
    pub tasks: RequestTasks,
}

/// The tracked set of tasks requests start. They run on the server's main runtime, not on the
/// HTTP worker's (an actix worker's runtime is dropped, with its tasks, when the worker stops
/// at the end of the HTTP drain), so the shutdown can wait for them after HTTP has stopped.
#[derive(Debug, Clone)]
pub struct RequestTasks {
    tracker: TaskTracker,
    runtime: Handle,
}

impl RequestTasks {
    /// Tasks will run on `runtime` (the one that runs the shutdown sequence).
    pub fn new(runtime: Handle) -> Self {
        Self {
            tracker: TaskTracker::new(),
            runtime,
        }
    }

    /// Runs `task` on the tracked set. Refused (an error) once the drain has started.
    pub fn spawn<F>(&self, task: F) -> Result<JoinHandle<F::Output>, ApiError>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        if self.tracker.is_closed() {
            let mut e = ApiError::new(
                ErrorKind::Unavailable,
                codes::SHUTTING_DOWN,
                "the server is shutting down",
            );
            e.retry_after = Some(Duration::from_secs(1));
            return Err(e);
        }
        Ok(self.tracker.spawn_on(task, &self.runtime))
    }

    /// Tasks still running.
    pub fn len(&self) -> usize {
        self.tracker.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tracker.is_empty()
    }

    /// Closes the set and waits (at most `timeout`) for its tasks. Returns how many were still
    /// running when the wait gave up (0: all finished); those are logged.
    pub async fn drain(&self, timeout: Duration) -> usize {
        drain(&self.tracker, timeout).await
    }
}

/// Closes `tasks` and waits for them, at most `timeout`; the number left running is logged
/// and returned (they are dropped with the runtime).
async fn drain(tasks: &TaskTracker, timeout: Duration) -> usize {
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
    use std::sync::atomic::{AtomicBool, Ordering};

    #[tokio::test]
    async fn the_drain_waits_for_an_in_flight_task() {
        let tasks = RequestTasks::new(Handle::current());
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let done = Arc::new(AtomicBool::new(false));
        let d = done.clone();
        let task = tasks.spawn(async move {
            let _ = rx.await;
            d.store(true, Ordering::SeqCst);
        });
        assert!(task.is_ok());
        let release = tokio::spawn(async move {
            tokio::task::yield_now().await;
            let _ = tx.send(());
        });
        assert_eq!(tasks.drain(Duration::from_secs(10)).await, 0);
        assert!(done.load(Ordering::SeqCst));
        let _ = release.await;
    }

    #[tokio::test]
    async fn the_drain_gives_up_after_the_timeout_and_reports_what_is_left() {
        let tasks = RequestTasks::new(Handle::current());
        let (_tx, rx) = tokio::sync::oneshot::channel::<()>();
        assert!(
            tasks
                .spawn(async move {
                    let _ = rx.await;
                })
                .is_ok()
        );
        assert_eq!(tasks.drain(Duration::from_millis(20)).await, 1);
    }

    #[tokio::test]
    async fn no_task_starts_once_the_drain_has_begun() {
        let tasks = RequestTasks::new(Handle::current());
        assert_eq!(tasks.drain(Duration::from_millis(20)).await, 0);
        let refused = tasks.spawn(async {}).err().map(|e| e.status().as_u16());
        assert_eq!(refused, Some(503));
    }
}
