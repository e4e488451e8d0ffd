//! Configuration: defaults < optional file < environment (`GATHERING__SECTION__KEY`).
//!
//! The file is `GATHERING_CONFIG` if set, else `gathering.toml` in the working directory when it
//! exists. `DATABASE_URL` is read as is. Secrets are `SecretString`s: their `Debug` never shows
//! them, so logging the settings is safe.

use anyhow::Context;
use secrecy::SecretString;
use serde::Deserialize;
use std::net::IpAddr;
use std::path::PathBuf;

#[derive(Debug, Clone, Deserialize)]
pub struct Settings {
    #[serde(default)]
    pub database_url: Option<SecretString>,
    pub data_dir: PathBuf,
    pub server: ServerSettings,
    pub database: DatabaseSettings,
    pub auth: AuthSettings,
    pub rate_limit: RateLimitSettings,
    pub tools: ToolsSettings,
    pub pipeline: gathering_pipeline::settings::PipelineSettings,
    #[serde(default)]
    pub scheduler: SchedulerSettings,
    pub events: EventsSettings,
    #[serde(default)]
    pub llm: LlmSettings,
    pub quotas: QuotaSettings,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ServerSettings {
    pub host: String,
    pub port: u16,
    pub shutdown_timeout_secs: u64,
    /// Comma-separated addresses whose `X-Forwarded-For` is believed.
    pub trusted_proxies: String,
    /// HTTP worker threads; 0 = one per core.
    pub workers: usize,
}

#[derive(Debug, Clone, Deserialize)]
pub struct DatabaseSettings {
    pub pool_max_size: usize,
    pub acquire_timeout_secs: u64,
    /// How long start-up waits for the database to answer before giving up.
    pub startup_wait_secs: u64,
}

#[derive(Debug, Clone, Deserialize)]
pub struct AuthSettings {
    /// 64 hex characters; generated once into the data dir when unset.
    #[serde(default)]
    pub token_key: Option<SecretString>,
    #[serde(default)]
    pub admin_email: Option<String>,
    #[serde(default)]
    pub admin_password: Option<SecretString>,
    pub access_ttl_secs: u64,
    pub refresh_ttl_secs: u64,
    pub max_failed_logins: u32,
    pub lockout_window_secs: u64,
    /// Progressive per-account login delay after `max_failed_logins`: base and cap (seconds).
    pub lockout_base_delay_secs: u64,
    pub lockout_max_delay_secs: u64,
    /// Concurrent password hashes; 0 = number of cores.
    pub hash_concurrency: usize,
    pub revocation_cache_capacity: usize,
    /// Verified access tokens kept in memory; 0 disables.
    pub token_cache_capacity: usize,
    /// User rows kept in memory for `GET /auth/me`; 0 disables.
    pub user_cache_capacity: usize,
    pub user_cache_ttl_secs: u64,
}

#[derive(Debug, Clone, Deserialize)]
pub struct RateLimitSettings {
    pub auth_per_minute: u32,
    pub write_per_minute: u32,
    pub read_per_minute: u32,
    pub max_keys: usize,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ToolsSettings {
    /// Comma-separated hosts (`host` or `host:port`) that may be reached although loopback/private.
    pub http_allowed_hosts: String,
    pub max_response_bytes: usize,
    pub blocking_concurrency: usize,
    /// Comma-separated `channel=url` pairs for `send_notification` webhooks.
    pub webhooks: String,
    /// Largest tool output (JSON bytes) and its deepest nesting.
    pub max_output_bytes: usize,
    pub max_output_depth: usize,
    /// Deepest nesting of a `json_query` expression, checked before compiling it.
    pub json_query_max_depth: usize,
    /// Most memory a `json_query` evaluation may materialize, in bytes.
    pub json_query_max_work_bytes: usize,
}

/// `[scheduler]`: the scheduler crate's own section; its defaults live there, not here.
pub use gathering_scheduler::SchedulerSettings;

/// Per-user quotas (`GATHERING__QUOTAS__*`); 0 disables one.
#[derive(Debug, Clone, Deserialize)]
pub struct QuotaSettings {
    pub schedules_per_user: u64,
    pub pipelines_per_user: u64,
    pub agents_per_user: u64,
    /// Bytes a user may write into workspaces (`write_file`), net of overwrites.
    pub workspace_bytes_per_user: u64,
}

#[derive(Debug, Clone, Deserialize)]
pub struct EventsSettings {
    pub queue_capacity: usize,
    pub flush_window_ms: u64,
    pub history_per_user: usize,
    pub max_users_in_history: usize,
    pub subscriber_capacity: usize,
    /// WebSocket ping interval (at least 1 s).
    pub ws_heartbeat_secs: u64,
    /// A WebSocket client silent (no pong, no message) for this long is closed with 1008.
    pub ws_client_timeout_secs: u64,
    /// Open WebSocket connections per user on one instance.
    pub ws_max_connections_per_user: usize,
    /// Upgraded WebSocket connections still waiting for their first-message token, per
    /// instance (all users together).
    pub ws_max_unauthenticated: usize,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct ProviderSettings {
    #[serde(default)]
    pub base_url: Option<String>,
    #[serde(default)]
    pub api_key: Option<SecretString>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct LlmSettings {
    #[serde(default)]
    pub openai: ProviderSettings,
    #[serde(default)]
    pub anthropic: ProviderSettings,
    #[serde(default)]
    pub deepseek: ProviderSettings,
    #[serde(default)]
    pub ollama: ProviderSettings,
    /// 64 hex characters for encrypting per-user provider keys; generated into the data dir when unset.
    #[serde(default)]
    pub settings_key: Option<SecretString>,
}

const DEFAULTS: &[(&str, &str)] = &[
    ("data_dir", "./.gathering"),
    ("server.host", "127.0.0.1"),
    ("server.port", "8080"),
    ("server.shutdown_timeout_secs", "30"),
    ("server.trusted_proxies", ""),
    ("server.workers", "0"),
    ("database.pool_max_size", "16"),
    ("database.acquire_timeout_secs", "5"),
    ("database.startup_wait_secs", "30"),
    ("auth.access_ttl_secs", "900"),
    ("auth.refresh_ttl_secs", "1209600"),
    ("auth.max_failed_logins", "5"),
    ("auth.lockout_window_secs", "900"),
    ("auth.lockout_base_delay_secs", "1"),
    ("auth.lockout_max_delay_secs", "300"),
    ("auth.hash_concurrency", "0"),
    ("auth.revocation_cache_capacity", "100000"),
    ("auth.token_cache_capacity", "10000"),
    ("auth.user_cache_capacity", "10000"),
    ("auth.user_cache_ttl_secs", "30"),
    ("rate_limit.auth_per_minute", "20"),
    ("rate_limit.write_per_minute", "300"),
    ("rate_limit.read_per_minute", "1200"),
    ("rate_limit.max_keys", "100000"),
    ("tools.http_allowed_hosts", ""),
    ("tools.max_response_bytes", "1048576"),
    ("tools.blocking_concurrency", "8"),
    ("tools.webhooks", ""),
    ("tools.max_output_bytes", "1048576"),
    ("tools.max_output_depth", "64"),
    ("tools.json_query_max_depth", "64"),
    ("tools.json_query_max_work_bytes", "67108864"),
    ("pipeline.breaker_failures", "5"),
    ("pipeline.breaker_cooldown_secs", "30"),
    ("pipeline.max_concurrent_nodes", "64"),
    ("pipeline.lease_secs", "30"),
    ("quotas.schedules_per_user", "1000"),
    ("quotas.pipelines_per_user", "1000"),
    ("quotas.agents_per_user", "200"),
    ("quotas.workspace_bytes_per_user", "104857600"),
    ("events.queue_capacity", "65536"),
    ("events.flush_window_ms", "50"),
    ("events.history_per_user", "200"),
    ("events.max_users_in_history", "10000"),
    ("events.subscriber_capacity", "1024"),
    ("events.ws_heartbeat_secs", "15"),
    ("events.ws_client_timeout_secs", "45"),
    ("events.ws_max_connections_per_user", "16"),
    ("events.ws_max_unauthenticated", "256"),
];

impl Settings {
    /// Reads the configuration from the process environment.
    pub fn load() -> anyhow::Result<Settings> {
        let env: Vec<(String, String)> = std::env::vars().collect();
        Self::from_sources(&env)
    }

    /// Reads the configuration from the given environment (tests pass their own).
    pub fn from_sources(env: &[(String, String)]) -> anyhow::Result<Settings> {
        let mut builder = config::Config::builder();
        for (k, v) in DEFAULTS {
            builder = builder.set_default(*k, *v)?;
        }
        let lookup = |name: &str| env.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
        let file = lookup("GATHERING_CONFIG").map(PathBuf::from).or_else(|| {
            let p = PathBuf::from("gathering.toml");
            p.exists().then_some(p)
        });
        if let Some(file) = file {
            builder = builder.add_source(config::File::from(file.clone()).required(true));
        }
        // Environment: GATHERING__SECTION__KEY → section.key (lower-cased).
        for (k, v) in env {
            let Some(rest) = k.strip_prefix("GATHERING__") else {
                continue;
            };
            let key = rest.to_lowercase().replace("__", ".");
            builder = builder.set_override(key, v.clone())?;
        }
        if let Some(url) = lookup("DATABASE_URL").filter(|u| !u.trim().is_empty()) {
            builder = builder.set_override("database_url", url)?;
        }
        let settings: Settings = builder
            .build()?
            .try_deserialize()
            .context("invalid configuration")?;
        settings.validate()?;
        Ok(settings)
    }

    fn validate(&self) -> anyhow::Result<()> {
        self.trusted_proxies()?;
        if self.auth.access_ttl_secs == 0 || self.auth.refresh_ttl_secs == 0 {
            anyhow::bail!("token lifetimes must be positive");
        }
        Ok(())
    }

    pub fn trusted_proxies(&self) -> anyhow::Result<Vec<IpAddr>> {
        comma_list(&self.server.trusted_proxies)
            .map(|s| {
                s.parse::<IpAddr>().with_context(|| {
                    format!("GATHERING__SERVER__TRUSTED_PROXIES: `{s}` is not an IP address")
                })
            })
            .collect()
    }

    pub fn workers(&self) -> usize {
        if self.server.workers == 0 {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(2)
        } else {
            self.server.workers
        }
    }
}

pub fn comma_list(s: &str) -> impl Iterator<Item = &str> {
    s.split(',').map(str::trim).filter(|s| !s.is_empty())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use secrecy::ExposeSecret;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn defaults_apply_without_any_configuration() {
        let s = Settings::from_sources(&[]).unwrap();
        assert_eq!(s.server.port, 8080);
        assert!(
            !s.pipeline.async_node_commits,
            "durable node commits by default"
        );
        assert_eq!(s.server.host, "127.0.0.1");
        assert_eq!(s.auth.access_ttl_secs, 900);
        assert_eq!(s.rate_limit.auth_per_minute, 20);
        assert!(s.database_url.is_none());
        assert_eq!(s.scheduler.min_interval_secs, 10);
        assert_eq!(s.quotas.agents_per_user, 200);
        assert_eq!(s.events.ws_max_connections_per_user, 16);
    }

    #[test]
    fn environment_overrides_defaults() {
        let s = Settings::from_sources(&env(&[
            ("GATHERING__SERVER__PORT", "9999"),
            ("GATHERING__AUTH__MAX_FAILED_LOGINS", "3"),
            ("GATHERING__DATA_DIR", "/tmp/x"),
            ("GATHERING__LLM__OPENAI__API_KEY", "sk-secret"),
            ("DATABASE_URL", "postgres://u@h/db"),
            ("GATHERING__PIPELINE__ASYNC_NODE_COMMITS", "true"),
            ("GATHERING__AUTH__USER_CACHE_TTL_SECS", "5"),
        ]))
        .unwrap();
        assert_eq!(s.server.port, 9999);
        assert!(s.pipeline.async_node_commits);
        assert_eq!(s.auth.user_cache_ttl_secs, 5);
        assert_eq!(s.auth.max_failed_logins, 3);
        assert_eq!(s.data_dir, PathBuf::from("/tmp/x"));
        assert_eq!(
            s.llm
                .openai
                .api_key
                .as_ref()
                .map(|k| k.expose_secret().to_owned()),
            Some("sk-secret".to_owned())
        );
        assert!(s.database_url.is_some());
    }

    #[test]
    fn scheduler_section_takes_the_crates_defaults_and_keeps_its_env_names() {
        let s = Settings::from_sources(&env(&[])).unwrap();
        assert_eq!(
            s.scheduler,
            gathering_scheduler::SchedulerSettings::default()
        );
        assert_eq!(
            (s.scheduler.batch_size, s.scheduler.max_concurrent),
            (500, 64)
        );
        let s = Settings::from_sources(&env(&[
            ("GATHERING__SCHEDULER__BATCH_SIZE", "7"),
            ("GATHERING__SCHEDULER__MAX_CONCURRENT", "3"),
            ("GATHERING__SCHEDULER__MAX_CRON_CHARS", "40"),
        ]))
        .unwrap();
        assert_eq!(s.scheduler.batch_size, 7);
        assert_eq!(s.scheduler.max_concurrent, 3);
        assert_eq!(s.scheduler.max_cron_chars, 40);
        assert_eq!(
            s.scheduler.heartbeat_secs, 5,
            "unset keys keep their default"
        );
    }

    #[test]
    fn secrets_never_appear_in_debug_output() {
        let s = Settings::from_sources(&env(&[
            ("GATHERING__AUTH__ADMIN_PASSWORD", "hunter2hunter2"),
            ("DATABASE_URL", "postgres://u:pw-secret@h/db"),
        ]))
        .unwrap();
        let dbg = format!("{s:?}");
        assert!(!dbg.contains("hunter2hunter2"));
        assert!(!dbg.contains("pw-secret"));
    }

    #[test]
    fn a_bad_proxy_address_is_a_clear_error() {
        let e = Settings::from_sources(&env(&[("GATHERING__SERVER__TRUSTED_PROXIES", "nope")]))
            .unwrap_err();
        assert!(format!("{e:#}").contains("TRUSTED_PROXIES"), "{e:#}");
    }

    #[test]
    fn a_config_file_sits_between_defaults_and_environment() {
        let dir = std::env::temp_dir().join(format!("gathering-cfg-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("g.toml");
        std::fs::write(&file, "[server]\nport = 7000\nhost = \"0.0.0.0\"\n").unwrap();
        let f = file.to_string_lossy().to_string();
        let s = Settings::from_sources(&env(&[
            ("GATHERING_CONFIG", &f),
            ("GATHERING__SERVER__PORT", "7001"),
        ]))
        .unwrap();
        assert_eq!(s.server.port, 7001);
        assert_eq!(s.server.host, "0.0.0.0");
    }

    #[test]
    fn pipeline_limits_come_from_the_environment() {
        let s = Settings::from_sources(&env(&[
            ("GATHERING__PIPELINE__MAX_NODES", "50"),
            ("GATHERING__PIPELINE__CEL_MAX_NESTING", "8"),
            ("GATHERING__PIPELINE__MAX_RESCUES", "1"),
        ]))
        .unwrap();
        let limits = s.pipeline.limits();
        assert_eq!(limits.max_nodes, 50);
        assert_eq!(limits.cel.max_nesting, 8);
        assert_eq!(s.pipeline.max_rescues, 1);
        let defaults = Settings::from_sources(&[]).unwrap().pipeline.limits();
        assert_eq!(defaults.max_nodes, 200);
        assert_eq!(defaults.cel.max_comprehension_depth, 1);
    }
}
