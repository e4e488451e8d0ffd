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

/// The whole configuration. Each section is its owning crate's settings struct, which holds
/// that section's defaults (`#[serde(default)]` + `Default`); only `server`, `database` and
/// `data_dir`, which no crate owns, have their defaults here. No default is written twice.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct Settings {
    pub database_url: Option<SecretString>,
    pub data_dir: PathBuf,
    pub server: ServerSettings,
    pub database: DatabaseSettings,
    pub auth: AuthSettings,
    pub rate_limit: RateLimitSettings,
    pub tools: ToolsSettings,
    pub pipeline: gathering_pipeline::settings::PipelineSettings,
    pub scheduler: SchedulerSettings,
    pub events: EventsSettings,
    pub llm: LlmSettings,
    pub quotas: QuotaSettings,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            database_url: None,
            // `GATHERING__DATA_DIR`
            data_dir: PathBuf::from("./.gathering"),
            server: ServerSettings::default(),
            database: DatabaseSettings::default(),
            auth: AuthSettings::default(),
            rate_limit: RateLimitSettings::default(),
            tools: ToolsSettings::default(),
            pipeline: gathering_pipeline::settings::PipelineSettings::default(),
            scheduler: SchedulerSettings::default(),
            events: EventsSettings::default(),
            llm: LlmSettings::default(),
            quotas: QuotaSettings::default(),
        }
    }
}

/// `[server]` (`GATHERING__SERVER__*`): no crate owns it, so its defaults live here, once.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub struct ServerSettings {
    pub host: String,
    pub port: u16,
    pub shutdown_timeout_secs: u64,
    /// Comma-separated addresses whose `X-Forwarded-For` is believed.
    pub trusted_proxies: String,
    /// HTTP worker threads; 0 = one per core.
    pub workers: usize,
}

impl Default for ServerSettings {
    fn default() -> Self {
        Self {
            host: "127.0.0.1".to_owned(),
            port: 8080,
            shutdown_timeout_secs: 30,
            trusted_proxies: String::new(),
            workers: 0,
        }
    }
}

/// `[database]` (`GATHERING__DATABASE__*`): no crate owns it, so its defaults live here, once.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub struct DatabaseSettings {
    pub pool_max_size: usize,
    pub acquire_timeout_secs: u64,
    /// How long start-up waits for the database to answer before giving up.
    pub startup_wait_secs: u64,
}

impl Default for DatabaseSettings {
    fn default() -> Self {
        Self {
            pool_max_size: 16,
            acquire_timeout_secs: 5,
            startup_wait_secs: 30,
        }
    }
}

/// `[auth]`: the auth crate's own section; its defaults live there, not here.
pub use gathering_auth::AuthSettings;

/// `[rate_limit]`: the api crate's own section; its defaults live there, not here.
pub use gathering_api::ratelimit::RateLimitSettings;

/// `[tools]`: the tools crate's own section; its defaults live there, not here.
pub use gathering_tools::ToolsSettings;

/// `[scheduler]`: the scheduler crate's own section; its defaults live there, not here.
pub use gathering_scheduler::SchedulerSettings;

/// `[quotas]` (`GATHERING__QUOTAS__*`; 0 disables one): the store crate's per-user limits;
/// their defaults live there, not here.
pub use gathering_store::quotas::QuotaLimits as QuotaSettings;

/// `[events]`: the events crate's own section; its defaults live there, not here.
pub use gathering_events::EventsSettings;

/// `[llm]`: the llm crate's own section (all optional).
pub use gathering_llm::server_settings::{LlmSettings, ProviderSettings};

impl Settings {
    /// Reads the configuration from the process environment.
    pub fn load() -> anyhow::Result<Settings> {
        let env: Vec<(String, String)> = std::env::vars().collect();
        Self::from_sources(&env)
    }

    /// Reads the configuration from the given environment (tests pass their own).
    pub fn from_sources(env: &[(String, String)]) -> anyhow::Result<Settings> {
        // Defaults: each section's `Default` (serde defaults), never repeated here.
        let mut builder = config::Config::builder();
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

    /// The composition of each owning crate's `Default`, written out section by section.
    fn composed_defaults() -> Settings {
        Settings {
            database_url: None,
            data_dir: PathBuf::from("./.gathering"),
            server: ServerSettings::default(),
            database: DatabaseSettings::default(),
            auth: gathering_auth::AuthSettings::default(),
            rate_limit: gathering_api::ratelimit::RateLimitSettings::default(),
            tools: gathering_tools::ToolsSettings::default(),
            pipeline: gathering_pipeline::settings::PipelineSettings::default(),
            scheduler: gathering_scheduler::SchedulerSettings::default(),
            events: gathering_events::EventsSettings::default(),
            llm: gathering_llm::server_settings::LlmSettings::default(),
            quotas: gathering_store::quotas::QuotaLimits::default(),
        }
    }

    #[test]
    fn an_empty_configuration_is_the_composition_of_each_crates_defaults() {
        let s = Settings::from_sources(&[]).unwrap();
        let d = composed_defaults();
        assert_eq!(s.server, d.server);
        assert_eq!(s.database, d.database);
        assert_eq!(s.rate_limit, d.rate_limit);
        assert_eq!(s.tools, d.tools);
        assert_eq!(s.pipeline, d.pipeline);
        assert_eq!(s.scheduler, d.scheduler);
        assert_eq!(s.events, d.events);
        assert_eq!(s.quotas, d.quotas);
        assert_eq!(s.data_dir, d.data_dir);
        // Sections holding secrets have no `PartialEq`; their `Debug` shows every other field.
        assert_eq!(format!("{:?}", s.auth), format!("{:?}", d.auth));
        assert_eq!(format!("{:?}", s.llm), format!("{:?}", d.llm));
        assert_eq!(format!("{s:?}"), format!("{d:?}"));
        assert_eq!(format!("{:?}", Settings::default()), format!("{d:?}"));
    }

    #[test]
    fn the_defaults_are_the_values_the_server_has_always_run_with() {
        let s = Settings::from_sources(&[]).unwrap();
        assert_eq!(s.data_dir, PathBuf::from("./.gathering"));
        assert_eq!(
            (
                s.server.host.as_str(),
                s.server.port,
                s.server.shutdown_timeout_secs
            ),
            ("127.0.0.1", 8080, 30)
        );
        assert_eq!(
            (s.server.trusted_proxies.as_str(), s.server.workers),
            ("", 0)
        );
        assert_eq!(
            (
                s.database.pool_max_size,
                s.database.acquire_timeout_secs,
                s.database.startup_wait_secs
            ),
            (16, 5, 30)
        );
        let a = &s.auth;
        assert_eq!(
            (a.access_ttl_secs, a.refresh_ttl_secs, a.max_failed_logins),
            (900, 1_209_600, 5)
        );
        assert_eq!(
            (
                a.lockout_window_secs,
                a.lockout_base_delay_secs,
                a.lockout_max_delay_secs
            ),
            (900, 1, 300)
        );
        assert_eq!(
            (
                a.hash_concurrency,
                a.revocation_cache_capacity,
                a.token_cache_capacity,
                a.user_cache_capacity,
                a.user_cache_ttl_secs
            ),
            (0, 100_000, 10_000, 10_000, 30)
        );
        let r = &s.rate_limit;
        assert_eq!(
            (
                r.auth_per_minute,
                r.write_per_minute,
                r.read_per_minute,
                r.max_keys
            ),
            (20, 300, 1200, 100_000)
        );
        let t = &s.tools;
        assert_eq!(
            (
                t.max_response_bytes,
                t.blocking_concurrency,
                t.max_output_bytes
            ),
            (1_048_576, 8, 1_048_576)
        );
        assert_eq!(
            (
                t.max_output_depth,
                t.json_query_max_depth,
                t.json_query_max_work_bytes
            ),
            (64, 64, 67_108_864)
        );
        let p = &s.pipeline;
        assert_eq!(
            (
                p.breaker_failures,
                p.breaker_cooldown_secs,
                p.max_concurrent_nodes,
                p.lease_secs
            ),
            (5, 30, 64, 30)
        );
        let q = &s.quotas;
        assert_eq!(
            (
                q.schedules_per_user,
                q.pipelines_per_user,
                q.agents_per_user,
                q.workspace_bytes_per_user
            ),
            (1000, 1000, 200, 104_857_600)
        );
        let e = &s.events;
        assert_eq!(
            (
                e.queue_capacity,
                e.flush_window_ms,
                e.history_per_user,
                e.max_users_in_history
            ),
            (65_536, 50, 200, 10_000)
        );
        assert_eq!(
            (
                e.subscriber_capacity,
                e.ws_heartbeat_secs,
                e.ws_client_timeout_secs,
                e.ws_max_connections_per_user,
                e.ws_max_unauthenticated
            ),
            (1024, 15, 45, 16, 256)
        );
    }

    #[test]
    fn every_moved_section_keeps_its_environment_names() {
        let s = Settings::from_sources(&env(&[
            ("GATHERING__DATABASE__POOL_MAX_SIZE", "3"),
            ("GATHERING__AUTH__TOKEN_CACHE_CAPACITY", "0"),
            ("GATHERING__AUTH__ADMIN_EMAIL", "root@example.com"),
            ("GATHERING__RATE_LIMIT__WRITE_PER_MINUTE", "7"),
            ("GATHERING__TOOLS__BLOCKING_CONCURRENCY", "2"),
            ("GATHERING__TOOLS__WEBHOOKS", "ops=http://h/x"),
            ("GATHERING__EVENTS__WS_MAX_UNAUTHENTICATED", "4"),
            ("GATHERING__EVENTS__FLUSH_WINDOW_MS", "9"),
            ("GATHERING__QUOTAS__AGENTS_PER_USER", "2"),
            ("GATHERING__LLM__OLLAMA__BASE_URL", "http://127.0.0.1:11434"),
            ("GATHERING__LLM__SETTINGS_KEY", "ab"),
            ("GATHERING__PIPELINE__BREAKER_FAILURES", "2"),
        ]))
        .unwrap();
        let d = composed_defaults();
        assert_eq!(s.database.pool_max_size, 3);
        assert_eq!(
            s.database.acquire_timeout_secs,
            d.database.acquire_timeout_secs
        );
        assert_eq!(s.auth.token_cache_capacity, 0);
        assert_eq!(s.auth.admin_email.as_deref(), Some("root@example.com"));
        assert_eq!(s.auth.access_ttl_secs, d.auth.access_ttl_secs);
        assert_eq!(s.rate_limit.write_per_minute, 7);
        assert_eq!(s.rate_limit.read_per_minute, d.rate_limit.read_per_minute);
        assert_eq!(s.tools.blocking_concurrency, 2);
        assert_eq!(s.tools.webhooks, "ops=http://h/x");
        assert_eq!(s.tools.max_output_depth, d.tools.max_output_depth);
        assert_eq!(s.events.ws_max_unauthenticated, 4);
        assert_eq!(s.events.flush_window_ms, 9);
        assert_eq!(s.events.queue_capacity, d.events.queue_capacity);
        assert_eq!(s.quotas.agents_per_user, 2);
        assert_eq!(s.quotas.pipelines_per_user, d.quotas.pipelines_per_user);
        assert_eq!(
            s.llm.ollama.base_url.as_deref(),
            Some("http://127.0.0.1:11434")
        );
        assert_eq!(
            s.llm
                .settings_key
                .as_ref()
                .map(|k| k.expose_secret().to_owned()),
            Some("ab".to_owned())
        );
        assert!(s.llm.openai.base_url.is_none());
        assert_eq!(s.pipeline.breaker_failures, 2);
        assert_eq!(s.pipeline.lease_secs, d.pipeline.lease_secs);
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
