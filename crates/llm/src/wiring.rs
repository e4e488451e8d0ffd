//! One call for the server: every service of this crate, wired on one repository.

use crate::circles::CircleService;
use crate::config::LlmConfig;
use crate::crypto::{SecretKey, load_or_create_key};
use crate::error::LlmError;
use crate::service::{AgentService, HttpModelFactory, ToolCatalog};
use crate::settings::SettingsService;
use gathering_domain::agents::{AgentRepository, CircleRepository, ProviderSettingsRepository};
use gathering_domain::events::EventPublisher;
use gathering_domain::tools::ToolInvoker;
use std::path::Path;
use std::sync::Arc;

/// File name of the generated settings key inside the data directory.
pub const SETTINGS_KEY_FILE: &str = "settings.key";

/// The configured key (64 hex characters) if any, else the one kept in
/// `<data_dir>/settings.key` (generated on first start). Blocking file I/O: start-up only.
pub fn settings_key(configured_hex: Option<&str>, data_dir: &Path) -> Result<SecretKey, LlmError> {
    match configured_hex.map(str::trim).filter(|k| !k.is_empty()) {
        Some(hex) => SecretKey::from_hex(hex),
        None => load_or_create_key(&data_dir.join(SETTINGS_KEY_FILE)),
    }
}

pub struct LlmServices {
    pub settings: Arc<SettingsService>,
    pub agents: Arc<AgentService>,
    pub circles: Arc<CircleService>,
}

impl LlmServices {
    /// `repo`: e.g. `Arc::new(gathering_store::agents::PgAgentStore::new(pool))`.
    /// `tools`: the tool registry as invoker and catalog (`None`: agents may not use tools).
    pub fn new<R>(
        repo: Arc<R>,
        key: SecretKey,
        config: LlmConfig,
        events: Arc<dyn EventPublisher>,
        tools: Option<(Arc<dyn ToolInvoker>, Arc<dyn ToolCatalog>)>,
    ) -> Result<Self, LlmError>
    where
        R: AgentRepository + CircleRepository + ProviderSettingsRepository + 'static,
    {
        let models = Arc::new(HttpModelFactory::new(&config)?);
        let rounds = config.circle_rounds;
        let settings = Arc::new(SettingsService::new(repo.clone(), key, config));
        let mut agents = AgentService::new(repo.clone(), settings.clone(), models);
        if let Some((invoker, catalog)) = tools {
            agents = agents.with_tools(invoker, catalog);
        }
        let agents = Arc::new(agents);
        let circles = Arc::new(CircleService::new(repo, agents.clone(), events, rounds));
        Ok(Self {
            settings,
            agents,
            circles,
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn configured_key_wins_over_the_key_file() {
        let dir = tempfile::tempdir().unwrap();
        let hex = "11".repeat(32);
        let k = settings_key(Some(&hex), dir.path()).unwrap();
        assert_eq!(k.to_hex(), hex);
        assert!(!dir.path().join(SETTINGS_KEY_FILE).exists());
        let a = settings_key(None, dir.path()).unwrap();
        let b = settings_key(Some("  "), dir.path()).unwrap();
        assert_eq!(a.to_hex(), b.to_hex());
        assert!(settings_key(Some("abc"), dir.path()).is_err());
    }
}
