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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use crate::fakes::Fakes;
    use crate::{AuthConfig, KeyRing, PasswordParams};
    use chrono::{TimeDelta, TimeZone, Utc};
    use gathering_domain::ManualClock;
    use gathering_domain::auth::RevokedToken;
    use uuid::Uuid;

    #[tokio::test]
    async fn the_purge_task_deletes_expired_revocations_and_ends_on_cancel() {
        let fakes = Fakes::new();
        let now = Utc.with_ymd_and_hms(2026, 3, 1, 9, 0, 0).unwrap();
        let clock = Arc::new(ManualClock::new(now));
        let config = AuthConfig {
            password_params: PasswordParams {
                m_cost_kib: 64,
                t_cost: 1,
                p_cost: 1,
            },
            hash_concurrency: 1,
            ..AuthConfig::default()
        };
        let keys = KeyRing::new("k1", &[7u8; 32]).unwrap();
        let auth = Arc::new(
            AuthService::new(fakes.repos(), clock, keys, config)
                .await
                .unwrap(),
        );
        fakes.revocations.insert_silently(
            RevokedToken {
                jti: Uuid::new_v4(),
                expires_at: now - TimeDelta::days(2),
            },
            Uuid::new_v4(),
        );
        assert_eq!(fakes.revocations.len(), 1);

        let stop = CancellationToken::new();
        let task = spawn_purge(auth, Duration::from_millis(10), stop.clone());
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while !fakes.revocations.is_empty() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the expired revocation was never purged"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        stop.cancel();
        tokio::time::timeout(Duration::from_secs(10), task)
            .await
            .expect("the purge task ends when cancelled")
            .unwrap();
    }
}
