//! Live events: what users see over the WebSocket.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Only this user receives the event.
    pub user_id: Uuid,
    /// e.g. `run.started`, `node.succeeded`, `run.finished`, `schedule.executed`.
    #[serde(rename = "type")]
    pub kind: String,
    pub at: DateTime<Utc>,
    pub data: serde_json::Value,
    /// Events with the same key inside one flush window are de-duplicated (last wins).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub dedup_key: Option<String>,
}

impl Event {
    pub fn new(user_id: Uuid, kind: impl Into<String>, data: serde_json::Value) -> Self {
        Self {
            user_id,
            kind: kind.into(),
            at: Utc::now(),
            data,
            dedup_key: None,
        }
    }
    pub fn with_dedup_key(mut self, key: impl Into<String>) -> Self {
        self.dedup_key = Some(key.into());
        self
    }
}

/// Publishing never blocks and never fails the caller: a full bus drops and counts.
pub trait EventPublisher: Send + Sync {
    fn publish(&self, event: Event);
}

/// Publishes nowhere; for engines running without a bus (tests, tools).
#[derive(Debug, Default, Clone, Copy)]
pub struct NoopPublisher;

impl EventPublisher for NoopPublisher {
    fn publish(&self, _event: Event) {}
}
