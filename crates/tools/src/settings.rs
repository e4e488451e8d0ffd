//! The `[tools]` configuration section (`GATHERING__TOOLS__*`): the one place its defaults
//! live. The binary composes this struct into its settings.

use crate::config::ToolsConfig;
use serde::Deserialize;

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub struct ToolsSettings {
    /// `GATHERING__TOOLS__HTTP_ALLOWED_HOSTS`: comma-separated hosts (`host` or `host:port`)
    /// that may be reached although loopback/private.
    pub http_allowed_hosts: String,
    /// `GATHERING__TOOLS__MAX_RESPONSE_BYTES`
    pub max_response_bytes: usize,
    /// `GATHERING__TOOLS__BLOCKING_CONCURRENCY`
    pub blocking_concurrency: usize,
    /// `GATHERING__TOOLS__WEBHOOKS`: comma-separated `channel=url` pairs for
    /// `send_notification` webhooks.
    pub webhooks: String,
    /// `GATHERING__TOOLS__MAX_OUTPUT_BYTES`: largest tool output (JSON bytes).
    pub max_output_bytes: usize,
    /// `GATHERING__TOOLS__MAX_OUTPUT_DEPTH`: deepest nesting of a tool output.
    pub max_output_depth: usize,
    /// `GATHERING__TOOLS__JSON_QUERY_MAX_DEPTH`: deepest nesting of a `json_query` expression,
    /// checked before compiling it.
    pub json_query_max_depth: usize,
    /// `GATHERING__TOOLS__JSON_QUERY_MAX_WORK_BYTES`: most memory a `json_query` evaluation
    /// may materialize, in bytes.
    pub json_query_max_work_bytes: usize,
}

impl Default for ToolsSettings {
    fn default() -> Self {
        let d = ToolsConfig::default();
        Self {
            http_allowed_hosts: String::new(),
            max_response_bytes: d.max_response_bytes as usize,
            // The server runs with fewer blocking tools at once than the library's default.
            blocking_concurrency: 8,
            webhooks: String::new(),
            max_output_bytes: d.max_output_bytes,
            max_output_depth: d.max_output_depth,
            json_query_max_depth: d.json_query_max_depth,
            json_query_max_work_bytes: d.json_query_max_work_bytes,
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_the_ones_the_server_has_always_run_with() {
        let s = ToolsSettings::default();
        assert_eq!(
            (s.max_response_bytes, s.blocking_concurrency),
            (1_048_576, 8)
        );
        assert_eq!((s.max_output_bytes, s.max_output_depth), (1_048_576, 64));
        assert_eq!(
            (s.json_query_max_depth, s.json_query_max_work_bytes),
            (64, 67_108_864)
        );
        assert!(s.http_allowed_hosts.is_empty() && s.webhooks.is_empty());
    }

    #[test]
    fn a_missing_key_takes_its_default() {
        let one: ToolsSettings = serde_json::from_str(r#"{"max_output_depth": 3}"#).unwrap();
        assert_eq!(one.max_output_depth, 3);
        assert_eq!(
            one.blocking_concurrency,
            ToolsSettings::default().blocking_concurrency
        );
    }
}
