//! Builds the engines (event bus, tool registry, LLM services, pipelines) from settings.
//! The only place that knows every concrete type.

use crate::config::{Settings, comma_list};
use anyhow::Context;
use gathering_domain::Clock;
use gathering_domain::agents::{AgentRunner, Provider};
use gathering_domain::events::EventPublisher;
use gathering_domain::notifications::NotificationRepository;
use gathering_domain::projects::ProjectRepository;
use gathering_domain::scheduler::{LaunchError, PipelineLauncher};
use gathering_domain::tools::ToolInvoker;
use gathering_events::{EventBus, EventsConfig, Flusher};
use gathering_llm::{LlmConfig, LlmServices, ToolCatalog};
use gathering_pipeline::PipelineError;
use gathering_pipeline::executor::{Executor, ExecutorDeps};
use gathering_pipeline::service::PipelineService;
use gathering_scheduler::{ScheduleService, Scheduler, SchedulerConfig, SchedulerDeps};
use gathering_store::PgPool;
use gathering_store::listener::PgNotifier;
use gathering_tools::{ToolRegistry, ToolsConfig};
use secrecy::ExposeSecret;
use serde_json::Value;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use uuid::Uuid;

pub struct Engines {
    pub bus: EventBus,
    pub flusher: Flusher,
    pub tools: Arc<ToolRegistry>,
    pub notifications: Arc<dyn NotificationRepository>,
    pub llm: LlmServices,
    pub pipelines: Arc<PipelineService>,
    pub executor: Executor,
    pub schedules: Arc<ScheduleService>,
    pub scheduler: Scheduler,
}

/// The pipeline service as the scheduler's `execute_pipeline` port.
struct Launcher(Arc<PipelineService>);

#[async_trait::async_trait]
impl PipelineLauncher for Launcher {
    async fn launch(
        &self,
        owner_id: Uuid,
        pipeline_id: Uuid,
        input: Value,
    ) -> Result<Uuid, LaunchError> {
        match self.0.start_run(owner_id, pipeline_id, input).await {
            Ok(run) => Ok(run.id),
            Err(PipelineError::NotFound) => Err(LaunchError::NotFound),
            Err(e @ (PipelineError::Invalid(_) | PipelineError::Cycle { .. })) => {
                Err(LaunchError::Invalid(e.to_string()))
            }
            Err(e) => Err(LaunchError::Unavailable(e.to_string())),
        }
    }
}

/// The tool registry as the agents' catalogue of callable tools.
struct RegistryCatalog(Arc<ToolRegistry>);

impl ToolCatalog for RegistryCatalog {
    fn tool_schemas(&self) -> Vec<gathering_llm::model::ToolSchema> {
        self.0
            .list()
            .into_iter()
            .map(|spec| gathering_llm::model::ToolSchema {
                name: spec.name.clone(),
                description: spec.description.clone(),
                parameters: spec.parameters.clone(),
            })
            .collect()
    }
}

pub fn tools_config(settings: &Settings) -> anyhow::Result<ToolsConfig> {
    let mut webhooks = HashMap::new();
    for pair in comma_list(&settings.tools.webhooks) {
        let Some((channel, url)) = pair.split_once('=') else {
            anyhow::bail!("GATHERING__TOOLS__WEBHOOKS: `{pair}` is not `channel=url`");
        };
        webhooks.insert(channel.trim().to_owned(), url.trim().to_owned());
    }
    Ok(ToolsConfig {
        http_allowed_hosts: comma_list(&settings.tools.http_allowed_hosts)
            .map(str::to_owned)
            .collect(),
        max_response_bytes: settings.tools.max_response_bytes as u64,
        blocking_concurrency: settings.tools.blocking_concurrency.max(1),
        webhooks,
        max_output_bytes: settings.tools.max_output_bytes.max(1),
        max_output_depth: settings.tools.max_output_depth.max(1),
        json_query_max_depth: settings.tools.json_query_max_depth.max(1),
        json_query_max_work_bytes: settings.tools.json_query_max_work_bytes.max(1024),
        ..Default::default()
    })
}

/// The per-user quotas of `GATHERING__QUOTAS__*`.
pub fn quota_limits(settings: &Settings) -> gathering_store::quotas::QuotaLimits {
    gathering_store::quotas::QuotaLimits {
        schedules_per_user: settings.quotas.schedules_per_user,
        pipelines_per_user: settings.quotas.pipelines_per_user,
        agents_per_user: settings.quotas.agents_per_user,
        workspace_bytes_per_user: settings.quotas.workspace_bytes_per_user,
    }
}

pub fn build(
    settings: &Settings,
    pool: &PgPool,
    clock: Arc<dyn Clock>,
    projects: Arc<dyn ProjectRepository>,
) -> anyhow::Result<Engines> {
    let notifier = Arc::new(PgNotifier::new(pool.clone()));

    // Live events: bounded bus, fanned out to other instances through NOTIFY.
    let (bus, flusher) = EventBus::with_notifier(
        EventsConfig {
            queue_capacity: settings.events.queue_capacity,
            flush_window: Duration::from_millis(settings.events.flush_window_ms),
            history_per_user: settings.events.history_per_user,
            max_users_in_history: settings.events.max_users_in_history,
            subscriber_capacity: settings.events.subscriber_capacity,
            ..Default::default()
        },
        notifier.clone(),
    )
    .context("invalid events configuration")?;
    let publisher: Arc<dyn EventPublisher> = Arc::new(bus.clone());

    // Tools.
    let notifications: Arc<dyn NotificationRepository> =
        Arc::new(gathering_store::notifications::PgNotificationRepository::new(pool.clone()));
    let mut tools_cfg = tools_config(settings)?;
    tools_cfg.workspace_quota = Some(gathering_tools::builtins::files::QuotaPort(Arc::new(
        gathering_store::quotas::PgQuotas::new(pool.clone(), &quota_limits(settings)),
    )));
    let tools = Arc::new(
        ToolRegistry::with_builtins(
            &tools_cfg,
            projects,
            notifications.clone(),
            publisher.clone(),
        )
        .context("cannot build the tool registry")?,
    );
    let invoker: Arc<dyn ToolInvoker> = tools.clone();

    // One circuit-breaker registry for the process (`GATHERING__PIPELINE__BREAKER_*`): provider
    // calls, pipeline network tools and scheduled `call_api` (docs/architecture.md, Resilience).
    let breakers =
        gathering_resilience::Breakers::new(settings.pipeline.breaker_config(), clock.clone());

    // Agents and providers.
    let mut llm_config = LlmConfig {
        http_allowed_hosts: tools_config(settings)?.http_allowed_hosts,
        ..Default::default()
    };
    for (provider, ps) in [
        (Provider::OpenAi, &settings.llm.openai),
        (Provider::Anthropic, &settings.llm.anthropic),
        (Provider::DeepSeek, &settings.llm.deepseek),
        (Provider::Ollama, &settings.llm.ollama),
    ] {
        llm_config.set_provider(
            provider,
            ps.base_url.clone(),
            ps.api_key.as_ref().map(|k| k.expose_secret().to_owned()),
        );
    }
    let settings_key = crate::keys::load_or_create(
        settings.llm.settings_key.as_ref(),
        &settings.data_dir,
        "settings",
        "GATHERING__LLM__SETTINGS_KEY",
    )?;
    let llm = LlmServices::with_breakers(
        Arc::new(gathering_store::agents::PgAgentStore::new(pool.clone())),
        gathering_llm::SecretKey::from_bytes(settings_key),
        llm_config,
        publisher.clone(),
        Some((
            invoker.clone(),
            Arc::new(RegistryCatalog(tools.clone())) as Arc<dyn ToolCatalog>,
        )),
        breakers.clone(),
    )
    .context("cannot build the LLM services")?;
    let runner: Arc<dyn AgentRunner> = llm.agents.clone();

    // Pipelines. One CEL pool per process, shared by definition checks and the executor.
    let cel_pool = settings.pipeline.cel_pool();
    let runs = Arc::new(
        gathering_store::pipeline::PgRunRepository::new(pool.clone())
            .with_synchronous_transitions(!settings.pipeline.async_node_commits),
    );
    let pipelines = Arc::new(
        PipelineService::new(
            Arc::new(gathering_store::pipeline::PgPipelineRepository::new(
                pool.clone(),
            )),
            runs.clone(),
            publisher.clone(),
            Some(notifier.clone()),
            clock.clone(),
        )
        .with_known_tools(tools.list().into_iter().map(|s| s.name.clone()))
        .with_limits(settings.pipeline.limits(), cel_pool.clone())
        .with_agents(Arc::new(gathering_store::agents::PgAgentStore::new(
            pool.clone(),
        ))),
    );
    let executor = Executor::new(
        ExecutorDeps {
            runs,
            tools: invoker.clone(),
            agents: Some(runner.clone()),
            events: publisher.clone(),
            clock: clock.clone(),
        },
        gathering_pipeline::executor::ExecutorConfig {
            cel_pool,
            breakers: Some(breakers.clone()),
            ..settings
                .pipeline
                .executor_config(Duration::from_secs(settings.server.shutdown_timeout_secs))
        },
    );

    // Schedules.
    let scheduler = Scheduler::new(
        SchedulerDeps {
            repo: Arc::new(gathering_store::scheduler::PgScheduleRepository::new(
                pool.clone(),
            )),
            tools: invoker,
            agents: Some(runner),
            pipelines: Some(Arc::new(Launcher(pipelines.clone()))),
            events: publisher,
            notifier: Some(notifier),
            clock,
        },
        SchedulerConfig {
            batch_size: settings.scheduler.batch_size,
            max_concurrency: settings.scheduler.max_concurrent,
            shutdown_timeout: Duration::from_secs(settings.server.shutdown_timeout_secs),
            heartbeat_every: Duration::from_secs(settings.scheduler.heartbeat_secs.max(1)),
            stale_after: Duration::from_secs(settings.scheduler.stale_after_secs.max(1)),
            misfire_grace: Duration::from_secs(settings.scheduler.misfire_grace_secs),
            breakers: Some(breakers),
            ..Default::default()
        },
    );
    let schedules = Arc::new(ScheduleService::with_limits(
        scheduler.clone(),
        gathering_scheduler::ScheduleLimits {
            min_interval_secs: settings.scheduler.min_interval_secs.max(1),
            max_cron_chars: settings.scheduler.max_cron_chars,
            http_allowed_hosts: tools_config(settings)?.http_allowed_hosts,
        },
    ));

    Ok(Engines {
        bus,
        flusher,
        tools,
        notifications,
        llm,
        pipelines,
        executor,
        schedules,
        scheduler,
    })
}
