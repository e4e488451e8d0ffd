//! Configuration of the tool registry and the built-in tools (`GATHERING__TOOLS__*`).

use crate::error::ToolsError;
use std::collections::HashMap;
use std::time::Duration;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToolsConfig {
    /// Hosts (`host` or `host:port`) `http_request` and webhooks may reach even though they
    /// resolve to loopback, private or link-local addresses
    /// (`GATHERING__TOOLS__HTTP_ALLOWED_HOSTS`, comma list).
    pub http_allowed_hosts: Vec<String>,
    /// Largest HTTP response body read, in bytes.
    pub max_response_bytes: u64,
    /// How many blocking tools may run at once on the blocking pool.
    pub blocking_concurrency: usize,
    /// Notification channel → webhook URL that receives a JSON POST per notification.
    pub webhooks: HashMap<String, String>,
    /// Timeout of tools that declare none of their own (and of `http_request` without
    /// `timeout_ms`).
    pub default_timeout: Duration,
    /// Largest file `read_file` reads and `write_file` writes, in bytes.
    pub max_file_bytes: u64,
    /// Redirects `http_request` follows (each hop is checked again).
    pub max_redirects: usize,
    /// Largest output of any tool, in bytes of its JSON serialization
    /// (`GATHERING__TOOLS__MAX_OUTPUT_BYTES`).
    pub max_output_bytes: usize,
    /// Deepest nesting of arrays/objects in any tool's output
    /// (`GATHERING__TOOLS__MAX_OUTPUT_DEPTH`).
    pub max_output_depth: usize,
    /// Deepest nesting a `json_query` expression may have (brackets, parentheses, `!`/`&`
    /// prefixes, `.`/`|`/`||`/`&&`/comparison chains), checked before it is compiled
    /// (`GATHERING__TOOLS__JSON_QUERY_MAX_DEPTH`).
    pub json_query_max_depth: usize,
    /// Most memory a `json_query` evaluation may materialize (array slots, object entries,
    /// new values, string bytes), in bytes (`GATHERING__TOOLS__JSON_QUERY_MAX_WORK_BYTES`).
    pub json_query_max_work_bytes: usize,
    /// The per-user workspace-bytes quota `write_file` charges; `None`: unlimited.
    pub workspace_quota: Option<crate::builtins::files::QuotaPort>,
}

impl Default for ToolsConfig {
    fn default() -> Self {
        Self {
            http_allowed_hosts: Vec::new(),
            max_response_bytes: 1024 * 1024,
            blocking_concurrency: 16,
            webhooks: HashMap::new(),
            default_timeout: Duration::from_secs(30),
            max_file_bytes: 1024 * 1024,
            max_redirects: 5,
            max_output_bytes: 1024 * 1024,
            max_output_depth: 64,
            json_query_max_depth: 64,
            json_query_max_work_bytes: 64 * 1024 * 1024,
            workspace_quota: None,
        }
    }
}

impl ToolsConfig {
    /// Parses the comma list of `GATHERING__TOOLS__HTTP_ALLOWED_HOSTS` (blanks ignored,
    /// lowercased).
    pub fn parse_allowed_hosts(list: &str) -> Vec<String> {
        list.split(',')
            .map(|h| h.trim().to_ascii_lowercase())
            .filter(|h| !h.is_empty())
            .collect()
    }

    /// Parses `channel=url` pairs separated by commas (`GATHERING__TOOLS__WEBHOOKS`). URLs
    /// are checked when the registry is built.
    pub fn parse_webhooks(list: &str) -> Result<HashMap<String, String>, ToolsError> {
        let mut out = HashMap::new();
        for pair in list.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (channel, url) = pair
                .split_once('=')
                .map(|(c, u)| (c.trim(), u.trim()))
                .filter(|(c, u)| !c.is_empty() && !u.is_empty())
                .ok_or_else(|| {
                    ToolsError::Config(format!("webhook `{pair}` is not `channel=url`"))
                })?;
            out.insert(channel.to_owned(), url.to_owned());
        }
        Ok(out)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn allowed_hosts_list_is_split_trimmed_and_lowercased() {
        assert_eq!(
            ToolsConfig::parse_allowed_hosts(" Localhost:8080, ,127.0.0.1 ,"),
            ["localhost:8080", "127.0.0.1"]
        );
        assert!(ToolsConfig::parse_allowed_hosts("").is_empty());
    }

    #[test]
    fn webhooks_are_channel_equals_url_pairs() {
        let w = ToolsConfig::parse_webhooks(" ops=http://h/x , dev = https://d/y,").unwrap();
        assert_eq!(w.len(), 2);
        assert_eq!(w["ops"], "http://h/x");
        assert_eq!(w["dev"], "https://d/y");
        assert!(ToolsConfig::parse_webhooks("").unwrap().is_empty());
        assert!(ToolsConfig::parse_webhooks("nourl").is_err());
        assert!(ToolsConfig::parse_webhooks("=http://x").is_err());
    }
}
