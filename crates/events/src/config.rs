use crate::error::EventsError;
use std::time::Duration;

/// Bounds and timing of an [`crate::EventBus`]. Every in-memory structure is bounded by one of
/// these numbers.
#[derive(Debug, Clone)]
pub struct EventsConfig {
    /// Events waiting for the flusher; `publish` drops (and counts) beyond this.
    pub queue_capacity: usize,
    /// How long the flusher gathers events before delivering them; duplicates (same user and
    /// `dedup_key`) inside one window collapse to the last one.
    pub flush_window: Duration,
    /// Events kept per user for replay on connect (0 disables history).
    pub history_per_user: usize,
    /// Users with a history ring; the least recently used user's ring is evicted beyond this
    /// (0 disables history).
    pub max_users_in_history: usize,
    /// Events buffered per subscribed user; a subscriber further behind lags (tokio rounds this
    /// up to a power of two).
    pub subscriber_capacity: usize,
    /// Most events gathered into one flush (a full batch is flushed before the window ends).
    pub max_batch: usize,
    /// NOTIFY payloads waiting to be sent to other instances; beyond this they are dropped and
    /// counted (the database is slow or down).
    pub notify_queue: usize,
    /// Bound on one NOTIFY.
    pub notify_timeout: Duration,
}

impl Default for EventsConfig {
    fn default() -> Self {
        Self {
            queue_capacity: 65_536,
            flush_window: Duration::from_millis(50),
            history_per_user: 200,
            max_users_in_history: 10_000,
            subscriber_capacity: 1024,
            max_batch: 4096,
            notify_queue: 256,
            notify_timeout: Duration::from_secs(5),
        }
    }
}

impl EventsConfig {
    pub fn validate(&self) -> Result<(), EventsError> {
        let positive = [
            ("queue_capacity", self.queue_capacity),
            ("subscriber_capacity", self.subscriber_capacity),
            ("max_batch", self.max_batch),
            ("notify_queue", self.notify_queue),
        ];
        for (name, v) in positive {
            if v == 0 {
                return Err(EventsError::InvalidConfig(format!(
                    "{name} must be at least 1"
                )));
            }
        }
        // tokio's broadcast channel refuses capacities above usize::MAX / 2.
        if self.subscriber_capacity > 1 << 20 {
            return Err(EventsError::InvalidConfig(
                "subscriber_capacity must be at most 1048576".to_owned(),
            ));
        }
        if self.flush_window > Duration::from_secs(60) {
            return Err(EventsError::InvalidConfig(
                "flush_window must be at most 60 s".to_owned(),
            ));
        }
        Ok(())
    }
}
