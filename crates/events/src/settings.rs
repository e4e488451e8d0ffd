//! The `[events]` configuration section (`GATHERING__EVENTS__*`): the one place its defaults
//! live. The binary composes this struct into its settings; the bus numbers come from
//! [`EventsConfig`](crate::EventsConfig)'s defaults, so a default is written once.

use crate::config::EventsConfig;
use serde::Deserialize;

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub struct EventsSettings {
    /// `GATHERING__EVENTS__QUEUE_CAPACITY`
    pub queue_capacity: usize,
    /// `GATHERING__EVENTS__FLUSH_WINDOW_MS`
    pub flush_window_ms: u64,
    /// `GATHERING__EVENTS__HISTORY_PER_USER`
    pub history_per_user: usize,
    /// `GATHERING__EVENTS__MAX_USERS_IN_HISTORY`
    pub max_users_in_history: usize,
    /// `GATHERING__EVENTS__SUBSCRIBER_CAPACITY`
    pub subscriber_capacity: usize,
    /// `GATHERING__EVENTS__WS_HEARTBEAT_SECS`: WebSocket ping interval (at least 1 s).
    pub ws_heartbeat_secs: u64,
    /// `GATHERING__EVENTS__WS_CLIENT_TIMEOUT_SECS`: a WebSocket client silent (no pong, no
    /// message) for this long is closed with 1008.
    pub ws_client_timeout_secs: u64,
    /// `GATHERING__EVENTS__WS_MAX_CONNECTIONS_PER_USER`: open WebSocket connections per user
    /// on one instance.
    pub ws_max_connections_per_user: usize,
    /// `GATHERING__EVENTS__WS_MAX_UNAUTHENTICATED`: upgraded WebSocket connections still
    /// waiting for their first-message token, per instance (all users together).
    pub ws_max_unauthenticated: usize,
}

impl Default for EventsSettings {
    fn default() -> Self {
        let d = EventsConfig::default();
        Self {
            queue_capacity: d.queue_capacity,
            flush_window_ms: d.flush_window.as_millis() as u64,
            history_per_user: d.history_per_user,
            max_users_in_history: d.max_users_in_history,
            subscriber_capacity: d.subscriber_capacity,
            ws_heartbeat_secs: 15,
            ws_client_timeout_secs: 45,
            ws_max_connections_per_user: 16,
            ws_max_unauthenticated: 256,
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_the_ones_the_server_has_always_run_with() {
        let s = EventsSettings::default();
        assert_eq!((s.queue_capacity, s.flush_window_ms), (65_536, 50));
        assert_eq!(
            (
                s.history_per_user,
                s.max_users_in_history,
                s.subscriber_capacity
            ),
            (200, 10_000, 1024)
        );
        assert_eq!((s.ws_heartbeat_secs, s.ws_client_timeout_secs), (15, 45));
        assert_eq!(
            (s.ws_max_connections_per_user, s.ws_max_unauthenticated),
            (16, 256)
        );
    }

    #[test]
    fn a_missing_key_takes_its_default() {
        let one: EventsSettings = serde_json::from_str(r#"{"history_per_user": 3}"#).unwrap();
        assert_eq!(one.history_per_user, 3);
        assert_eq!(one.queue_capacity, EventsSettings::default().queue_capacity);
    }
}
