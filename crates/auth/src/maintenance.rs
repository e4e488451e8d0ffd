//! Background work the auth service owns: the purge loop and its feed from the LISTEN fan-out.

use crate::service::AuthService;
use async_trait::async_trait;
use gathering_domain::notify::{ListenerConsumer, ListenerEvent};
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

/// How often [`spawn_purge`] runs by default.
pub const PURGE_INTERVAL: Duration = Duration::from_secs(600);

#[async_trait]
impl ListenerConsumer for AuthService {
    async fn on_listener_event(&self, event: &ListenerEvent) {
        self.handle_listener_event(event).await;
    }
}

/// Starts the maintenance task: every `every` (first run at once), deletes expired revocations
/// and refresh tokens ([`AuthService::purge_expired`]). Ends when `stop` is cancelled; the
/// caller joins the handle on shutdown.
pub fn spawn_purge(
    auth: Arc<AuthService>,
    every: Duration,
    stop: CancellationToken,
) -> JoinHandle<()> {
    tokio::spawn(
        async move {
            let mut ticks = tokio::time::interval(every.max(Duration::from_millis(1)));
            loop {
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = ticks.tick() => {
                        if let Err(e) = auth.purge_expired().await {
                            tracing::warn!(error = %e, "purging expired tokens failed");
                        }
                    }
                }
            }
        }
        .instrument(tracing::info_span!("auth_purge")),
    )
}
