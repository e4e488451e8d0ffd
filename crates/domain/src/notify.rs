//! Cross-instance notifications (PostgreSQL LISTEN/NOTIFY behind a port).

use crate::error::RepoError;
use async_trait::async_trait;

/// What a listener reports to its consumers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListenerEvent {
    /// (Re)connected and listening on every channel. Consumers that cache state must resync:
    /// notifications sent while disconnected were lost.
    Connected,
    /// The connection dropped; until the next `Connected`, nothing is delivered.
    Disconnected,
    Notification {
        channel: String,
        payload: String,
    },
}

/// Sends a notification to every instance listening on `channel`.
#[async_trait]
pub trait Notifier: Send + Sync {
    /// PostgreSQL limits payloads to under 8000 bytes; callers keep payloads small (ids).
    async fn notify(&self, channel: &str, payload: &str) -> Result<(), RepoError>;
}

/// A consumer of the listener's events (caches that resync, buses that relay remote events).
/// The LISTEN fan-out task hands every event to each consumer in turn.
#[async_trait]
pub trait ListenerConsumer: Send + Sync {
    async fn on_listener_event(&self, event: &ListenerEvent);
}
