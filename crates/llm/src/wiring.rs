//! One call for the server: every service of this crate, wired on one repository.

use crate::circles::CircleService;
use crate::config::LlmConfig;
use crate::crypto::SecretKey;
use crate::error::LlmError;
use crate::service::{AgentService, HttpModelFactory, ToolCatalog};
use crate::settings::SettingsService;
use gathering_domain::SystemClock;
use gathering_domain::agents::{AgentRepository, CircleRepository, ProviderSettingsRepository};
use gathering_domain::events::EventPublisher;
use gathering_domain::tools::ToolInvoker;
use gathering_resilience::{BreakerConfig, Breakers};
use std::sync::Arc;

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
        let breakers = Breakers::new(BreakerConfig::default(), Arc::new(SystemClock));
        Self::with_breakers(repo, key, config, events, tools, breakers)
    }

    /// [`LlmServices::new`] with the process-wide circuit-breaker registry (shared with the
    /// pipeline executor and the scheduler).
    pub fn with_breakers<R>(
        repo: Arc<R>,
        key: SecretKey,
        config: LlmConfig,
        events: Arc<dyn EventPublisher>,
        tools: Option<(Arc<dyn ToolInvoker>, Arc<dyn ToolCatalog>)>,
        breakers: Arc<Breakers>,
    ) -> Result<Self, LlmError>
    where
        R: AgentRepository + CircleRepository + ProviderSettingsRepository + 'static,
    {
        let models = Arc::new(HttpModelFactory::with_breakers(&config, breakers)?);
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
