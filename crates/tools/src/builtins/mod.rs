//! The built-in tools (names and parameters fixed by the API contract).

pub mod calculator;
pub mod files;
pub mod http;
pub mod jmes_eval;
pub mod json_query;
pub mod notify;
pub mod template;

use crate::config::ToolsConfig;
use crate::error::ToolsError;
use crate::limits::OutputLimits;
use crate::net::HttpClient;
use crate::registry::ToolRegistry;
use gathering_domain::events::EventPublisher;
use gathering_domain::notifications::NotificationRepository;
use gathering_domain::projects::ProjectRepository;
use std::collections::HashMap;
use std::sync::Arc;
use url::Url;

impl ToolRegistry {
    /// A registry holding every built-in tool.
    pub fn with_builtins(
        config: &ToolsConfig,
        projects: Arc<dyn ProjectRepository>,
        notifications: Arc<dyn NotificationRepository>,
        publisher: Arc<dyn EventPublisher>,
    ) -> Result<ToolRegistry, ToolsError> {
        let http = Arc::new(
            HttpClient::new(
                &config.http_allowed_hosts,
                config.max_response_bytes,
                config.max_redirects,
            )
            .map_err(|e| ToolsError::Config(format!("HTTP client: {e}")))?,
        );
        let mut webhooks = HashMap::new();
        for (channel, url) in &config.webhooks {
            let parsed = Url::parse(url)
                .ok()
                .filter(|u| matches!(u.scheme(), "http" | "https"))
                .ok_or_else(|| {
                    ToolsError::Config(format!(
                        "webhook of channel `{channel}` is not an http(s) URL"
                    ))
                })?;
            webhooks.insert(channel.clone(), parsed);
        }

        let output = OutputLimits {
            max_bytes: config.max_output_bytes,
            max_depth: config.max_output_depth,
        };
        let mut r = ToolRegistry::new(config.blocking_concurrency).with_output_limits(output);
        r.register_async(
            http::spec(),
            http::HttpRequestTool::new(http.clone(), config.default_timeout),
        )?;
        let query = json_query::JsonQuery {
            max_depth: config.json_query_max_depth,
            max_work: config.json_query_max_work_bytes,
            output,
        };
        r.register_blocking(json_query::spec(), move |_: &_, params| query.run(params))?;
        let max_text = config.max_output_bytes;
        r.register_blocking(template::spec(), move |_: &_, params| {
            template::run_bounded(params, max_text)
        })?;
        r.register_blocking(calculator::spec(), calculator::run)?;
        let files = files::FileTools::new(projects, config.max_file_bytes)
            .with_quota(config.workspace_quota.clone());
        r.register_async(files::read_spec(), files::ReadFile(files.clone()))?;
        r.register_async(files::write_spec(), files::WriteFile(files.clone()))?;
        r.register_async(files::list_spec(), files::ListFiles(files))?;
        r.register_async(
            notify::spec(),
            notify::SendNotification::new(
                notifications,
                publisher,
                http,
                webhooks,
                config.default_timeout,
            ),
        )?;
        Ok(r)
    }
}
