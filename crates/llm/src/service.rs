//! The agent runtime: owner-scoped agents, chat with persisted sessions, memory recall and
//! bounded tool calling. Implements the domain's [`AgentRunner`] port.

use crate::anthropic::Anthropic;
use crate::config::LlmConfig;
use crate::error::LlmError;
use crate::http::{RetryPolicy, Transport, breaker_key, build_client, build_guarded_client};
use crate::model::{ChatModel, ChatRequest, Message, ToolCall, ToolSchema};
use crate::openai::OpenAiCompatible;
use crate::settings::{Credentials, SettingsService, forbidden_literal, refused_message};
use async_trait::async_trait;
use gathering_domain::agents::{
    Agent, AgentError, AgentOutput, AgentPatch, AgentRepository, AgentRequest, AgentRunner,
    ChatRole, Memory, NewAgent, NewMessage, Provider, StoredMessage, Usage,
};
use gathering_domain::tools::{ToolContext, ToolInvoker};
use gathering_domain::{FieldProblem, Page, PageRequest, RepoError, SystemClock};
use gathering_resilience::{BreakerConfig, Breakers};
use gathering_tools::net::AllowList;
use serde::Serialize;
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::Duration;
use uuid::Uuid;

pub const MAX_NAME_CHARS: usize = 200;
pub const MAX_PERSONA_CHARS: usize = 20_000;
pub const MAX_MESSAGE_CHARS: usize = 100_000;
pub const MAX_MEMORY_CHARS: usize = 10_000;
pub const MAX_TOOLS: usize = 32;
/// Longest tool result fed back to the model.
pub const MAX_TOOL_RESULT_CHARS: usize = 20_000;
pub const DEFAULT_TEMPERATURE: f64 = 0.7;

/// The tools an agent may be offered (the server adapts the tool registry).
pub trait ToolCatalog: Send + Sync {
    fn tool_schemas(&self) -> Vec<ToolSchema>;
}

/// Which layer retries a provider call (exactly one does).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retries {
    /// The transport retries 429/408/5xx/connection failures (interactive chat, circles).
    Transport,
    /// One transport attempt: the caller retries (pipeline nodes with their `retry` policy,
    /// scheduled `run_task` with the scheduler's action retry).
    Caller,
}

/// Makes a model client for an endpoint; the HTTP one in production, fakes in tests.
pub trait ModelFactory: Send + Sync {
    /// A model whose calls are retried as `retries` says.
    fn model_with(
        &self,
        credentials: &Credentials,
        retries: Retries,
    ) -> Result<Arc<dyn ChatModel>, LlmError>;

    /// A model for interactive calls (the transport retries).
    fn model(&self, credentials: &Credentials) -> Result<Arc<dyn ChatModel>, LlmError> {
        self.model_with(credentials, Retries::Transport)
    }
}

/// Real providers over HTTP behind the shared circuit-breaker registry, keyed by provider,
/// base URL and credential fingerprint (one user's failing key never pauses another's).
///
/// The server's own endpoints are called with the plain client; a user's own `base_url` with
/// the SSRF-guarded one (unless its host is allow-listed), see [`build_guarded_client`].
pub struct HttpModelFactory {
    client: reqwest::Client,
    guarded: reqwest::Client,
    allow: AllowList,
    policy: RetryPolicy,
    breakers: Arc<Breakers>,
}

impl HttpModelFactory {
    /// With a registry of its own (default settings, system clock); the server passes the
    /// process-wide one through [`HttpModelFactory::with_breakers`].
    pub fn new(config: &LlmConfig) -> Result<Self, LlmError> {
        Self::with_breakers(
            config,
            Breakers::new(BreakerConfig::default(), Arc::new(SystemClock)),
        )
    }

    pub fn with_breakers(config: &LlmConfig, breakers: Arc<Breakers>) -> Result<Self, LlmError> {
        let connect = Duration::from_secs(config.connect_timeout_secs.max(1));
        let read = Duration::from_secs(config.read_timeout_secs.max(1));
        Ok(Self::with_client(
            build_client(connect, read)?,
            build_guarded_client(connect, read)?,
            &config.http_allowed_hosts,
            RetryPolicy {
                max_attempts: config.max_attempts.max(1),
                base_backoff: Duration::from_millis(500),
                max_wait: Duration::from_secs(config.max_retry_wait_secs),
                request_timeout: config.request_timeout(),
            },
            breakers,
        ))
    }

    /// `client` calls the server's endpoints and allow-listed user endpoints; `guarded`
    /// (from [`build_guarded_client`]) every other user endpoint.
    pub fn with_client(
        client: reqwest::Client,
        guarded: reqwest::Client,
        allowed_hosts: &[String],
        policy: RetryPolicy,
        breakers: Arc<Breakers>,
    ) -> Self {
        Self {
            client,
            guarded,
            allow: AllowList::new(allowed_hosts),
            policy,
            breakers,
        }
    }

    /// The shared breaker registry.
    pub fn breakers(&self) -> &Arc<Breakers> {
        &self.breakers
    }

    /// The client for these credentials; a user endpoint naming a forbidden address is
    /// refused here, before anything is sent.
    fn client_for(&self, c: &Credentials) -> Result<reqwest::Client, LlmError> {
        if !c.user_base_url {
            return Ok(self.client.clone());
        }
        let url = url::Url::parse(&c.base_url)
            .map_err(|_| LlmError::validation("/base_url", "must be an absolute http(s) URL"))?;
        if self.allow.allows(&url) {
            return Ok(self.client.clone());
        }
        if let Some(ip) = forbidden_literal(&url, &self.allow) {
            return Err(LlmError::UrlRefused(refused_message(format_args!("{ip}"))));
        }
        Ok(self.guarded.clone())
    }
}

impl ModelFactory for HttpModelFactory {
    fn model_with(
        &self,
        c: &Credentials,
        retries: Retries,
    ) -> Result<Arc<dyn ChatModel>, LlmError> {
        let mut policy = self.policy.clone();
        if retries == Retries::Caller {
            policy.max_attempts = 1;
        }
        let transport = Transport {
            client: self.client_for(c)?,
            policy,
            breakers: Arc::clone(&self.breakers),
            breaker_key: breaker_key(c.provider.as_str(), &c.base_url, c.api_key.as_deref()),
            provider: c.provider.as_str().to_owned(),
        };
        Ok(match c.provider {
            Provider::Anthropic => {
                let key = c.api_key.clone().ok_or_else(|| {
                    LlmError::NotConfigured("no API key for anthropic".to_owned())
                })?;
                Arc::new(Anthropic::new(&c.base_url, key, transport))
            }
            p => Arc::new(OpenAiCompatible::new(
                p,
                &c.base_url,
                c.api_key.clone(),
                transport,
            )),
        })
    }
}

/// `POST /agents` body, validated by [`AgentService::create`].
#[derive(Debug, Clone, Default)]
pub struct AgentInput {
    pub name: String,
    pub persona: String,
    pub provider: String,
    pub model: String,
    pub temperature: Option<f64>,
    pub tools: Vec<String>,
}

/// `PATCH /agents/{id}` body: `None` keeps the field.
#[derive(Debug, Clone, Default)]
pub struct AgentPatchInput {
    pub name: Option<String>,
    pub persona: Option<String>,
    pub provider: Option<String>,
    pub model: Option<String>,
    pub temperature: Option<f64>,
    pub tools: Option<Vec<String>>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ChatOutcome {
    pub session_id: Uuid,
    pub reply: String,
    pub usage: Usage,
}

struct ToolAccess {
    invoker: Arc<dyn ToolInvoker>,
    catalog: Arc<dyn ToolCatalog>,
}

pub struct AgentService {
    agents: Arc<dyn AgentRepository>,
    settings: Arc<SettingsService>,
    models: Arc<dyn ModelFactory>,
    tools: Option<ToolAccess>,
    config: LlmConfig,
}

fn text_len_ok(v: &str, min: usize, max: usize) -> bool {
    let n = v.chars().count();
    n >= min && n <= max
}

fn truncate(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_owned();
    }
    let mut t: String = s.chars().take(max).collect();
    t.push_str("…[truncated]");
    t
}

fn add_usage(total: &mut Usage, u: Usage) {
    total.prompt_tokens += u.prompt_tokens;
    total.completion_tokens += u.completion_tokens;
}

impl AgentService {
    pub fn new(
        agents: Arc<dyn AgentRepository>,
        settings: Arc<SettingsService>,
        models: Arc<dyn ModelFactory>,
    ) -> Self {
        let config = settings.config().clone();
        Self {
            agents,
            settings,
            models,
            tools: None,
            config,
        }
    }

    /// Lets agents call tools: `invoker` runs (and validates) calls, `catalog` lists schemas.
    pub fn with_tools(
        mut self,
        invoker: Arc<dyn ToolInvoker>,
        catalog: Arc<dyn ToolCatalog>,
    ) -> Self {
        self.tools = Some(ToolAccess { invoker, catalog });
        self
    }

    pub fn settings(&self) -> &Arc<SettingsService> {
        &self.settings
    }

    fn check_tools(&self, tools: &[String], problems: &mut Vec<FieldProblem>) {
        if tools.len() > MAX_TOOLS {
            problems.push(FieldProblem::new("/tools", "at most 32 tools"));
            return;
        }
        let known: Option<Vec<String>> = self.tools.as_ref().map(|t| {
            t.catalog
                .tool_schemas()
                .into_iter()
                .map(|s| s.name)
                .collect()
        });
        for (i, t) in tools.iter().enumerate() {
            if !text_len_ok(t, 1, 100) {
                problems.push(FieldProblem::new(
                    format!("/tools/{i}"),
                    "must be 1 to 100 characters",
                ));
            } else if let Some(known) = &known
                && !known.contains(t)
            {
                problems.push(FieldProblem::new(format!("/tools/{i}"), "unknown tool"));
            } else if known.is_none() {
                problems.push(FieldProblem::new(
                    format!("/tools/{i}"),
                    "tools are not available on this server",
                ));
            }
        }
    }

    fn check_common(
        name: Option<&str>,
        persona: Option<&str>,
        model: Option<&str>,
        temperature: Option<f64>,
        problems: &mut Vec<FieldProblem>,
    ) {
        if let Some(n) = name
            && !text_len_ok(n.trim(), 1, MAX_NAME_CHARS)
        {
            problems.push(FieldProblem::new("/name", "must be 1 to 200 characters"));
        }
        if let Some(p) = persona
            && !text_len_ok(p, 0, MAX_PERSONA_CHARS)
        {
            problems.push(FieldProblem::new(
                "/persona",
                "must be at most 20000 characters",
            ));
        }
        if let Some(m) = model
            && !text_len_ok(m.trim(), 1, MAX_NAME_CHARS)
        {
            problems.push(FieldProblem::new("/model", "must be 1 to 200 characters"));
        }
        if let Some(t) = temperature
            && !(t.is_finite() && (0.0..=2.0).contains(&t))
        {
            problems.push(FieldProblem::new("/temperature", "must be between 0 and 2"));
        }
    }

    fn parse_provider(p: &str, problems: &mut Vec<FieldProblem>) -> Option<Provider> {
        let parsed = Provider::parse(p);
        if parsed.is_none() {
            problems.push(FieldProblem::new(
                "/provider",
                "must be one of openai, anthropic, deepseek, ollama",
            ));
        }
        parsed
    }

    pub async fn create(&self, owner: Uuid, input: AgentInput) -> Result<Agent, LlmError> {
        let mut problems = Vec::new();
        Self::check_common(
            Some(&input.name),
            Some(&input.persona),
            Some(&input.model),
            input.temperature,
            &mut problems,
        );
        let provider = Self::parse_provider(&input.provider, &mut problems);
        self.check_tools(&input.tools, &mut problems);
        let Some(provider) = provider.filter(|_| problems.is_empty()) else {
            return Err(LlmError::Validation(problems));
        };
        let mut tools = input.tools;
        tools.dedup();
        Ok(self
            .agents
            .create_agent(NewAgent {
                owner_id: owner,
                name: input.name.trim().to_owned(),
                persona: input.persona,
                provider,
                model: input.model.trim().to_owned(),
                temperature: input.temperature.unwrap_or(DEFAULT_TEMPERATURE),
                tools,
            })
            .await?)
    }

    pub async fn get(&self, owner: Uuid, id: Uuid) -> Result<Agent, LlmError> {
        self.agents
            .get_agent(owner, id)
            .await?
            .ok_or(LlmError::NotFound)
    }

    pub async fn list(&self, owner: Uuid, page: PageRequest) -> Result<Page<Agent>, LlmError> {
        Ok(self.agents.list_agents(owner, page).await?)
    }

    pub async fn update(
        &self,
        owner: Uuid,
        id: Uuid,
        input: AgentPatchInput,
    ) -> Result<Agent, LlmError> {
        let mut problems = Vec::new();
        Self::check_common(
            input.name.as_deref(),
            input.persona.as_deref(),
            input.model.as_deref(),
            input.temperature,
            &mut problems,
        );
        let provider = match &input.provider {
            Some(p) => Self::parse_provider(p, &mut problems),
            None => None,
        };
        if let Some(t) = &input.tools {
            self.check_tools(t, &mut problems);
        }
        if !problems.is_empty() {
            return Err(LlmError::Validation(problems));
        }
        self.agents
            .update_agent(
                owner,
                id,
                AgentPatch {
                    name: input.name.map(|n| n.trim().to_owned()),
                    persona: input.persona,
                    provider,
                    model: input.model.map(|m| m.trim().to_owned()),
                    temperature: input.temperature,
                    tools: input.tools,
                },
            )
            .await?
            .ok_or(LlmError::NotFound)
    }

    pub async fn delete(&self, owner: Uuid, id: Uuid) -> Result<(), LlmError> {
        if self.agents.delete_agent(owner, id).await? {
            Ok(())
        } else {
            Err(LlmError::NotFound)
        }
    }

    pub async fn add_memory(
        &self,
        owner: Uuid,
        agent_id: Uuid,
        content: String,
    ) -> Result<Memory, LlmError> {
        let content = content.trim().to_owned();
        if !text_len_ok(&content, 1, MAX_MEMORY_CHARS) {
            return Err(LlmError::validation(
                "/content",
                "must be 1 to 10000 characters",
            ));
        }
        match self.agents.add_memory(owner, agent_id, content).await {
            Err(RepoError::NotFound) => Err(LlmError::NotFound),
            other => Ok(other?),
        }
    }

    pub async fn list_memories(
        &self,
        owner: Uuid,
        agent_id: Uuid,
        page: PageRequest,
    ) -> Result<Page<Memory>, LlmError> {
        self.get(owner, agent_id).await?;
        Ok(self.agents.list_memories(owner, agent_id, page).await?)
    }

    async fn model_for(
        &self,
        agent: &Agent,
        retries: Retries,
    ) -> Result<Arc<dyn ChatModel>, LlmError> {
        let creds = self
            .settings
            .resolve(agent.owner_id, agent.provider)
            .await?;
        self.models.model_with(&creds, retries)
    }

    /// One answer of `agent` to `prompt` (persona as system, no session, no tools): what circle
    /// members use.
    pub async fn respond(&self, agent: &Agent, prompt: &str) -> Result<(String, Usage), LlmError> {
        let model = self.model_for(agent, Retries::Transport).await?;
        let mut messages = Vec::new();
        if !agent.persona.trim().is_empty() {
            messages.push(Message::System(agent.persona.clone()));
        }
        messages.push(Message::User(prompt.to_owned()));
        let mut req = ChatRequest::new(agent.model.clone(), messages);
        req.temperature = Some(agent.temperature);
        req.max_tokens = Some(self.config.max_tokens);
        let resp = model.chat(&req).await?;
        Ok((resp.text, resp.usage))
    }

    /// History usable as context: user and assistant text, newest kept within the budget.
    fn history_messages(&self, stored: Vec<StoredMessage>) -> Vec<Message> {
        let mut budget = self.config.history_chars;
        let mut kept = Vec::new();
        for m in stored.into_iter().rev() {
            let msg = match m.role {
                ChatRole::User => Message::User(m.content),
                ChatRole::Assistant if m.tool_calls.is_null() => Message::assistant(m.content),
                _ => continue,
            };
            let len = match &msg {
                Message::User(t) => t.chars().count(),
                Message::Assistant { text, .. } => text.chars().count(),
                _ => 0,
            };
            if len > budget {
                break;
            }
            budget -= len;
            kept.push(msg);
        }
        kept.reverse();
        // Start with a user turn: some providers refuse a leading assistant message.
        while matches!(kept.first(), Some(Message::Assistant { .. })) {
            kept.remove(0);
        }
        kept
    }

    async fn run_tool(&self, owner: Uuid, agent: &Agent, call: &ToolCall) -> String {
        let Some(access) = &self.tools else {
            return json!({"error": "tools are not available"}).to_string();
        };
        if !agent.tools.contains(&call.name) {
            return json!({"error": format!("tool `{}` is not allowed for this agent", call.name)})
                .to_string();
        }
        let ctx = ToolContext {
            user_id: owner,
            is_admin: false,
            idempotency_key: None,
            request_id: None,
        };
        match access
            .invoker
            .invoke(&ctx, &call.name, call.arguments.clone())
            .await
        {
            Ok(v) => truncate(&v.to_string(), MAX_TOOL_RESULT_CHARS),
            Err(e) => {
                let details: Vec<Value> = gathering_domain::ErrorCode::details(&e)
                    .into_iter()
                    .map(|d| json!({"field": d.field, "problem": d.problem}))
                    .collect();
                json!({"error": e.to_string(), "details": details}).to_string()
            }
        }
    }

    /// One chat turn: persona, recalled memories, bounded history, the message; tool calls
    /// executed (bounded turns); every message and its usage persisted.
    pub async fn chat(
        &self,
        owner: Uuid,
        agent_id: Uuid,
        message: String,
        session_id: Option<Uuid>,
    ) -> Result<ChatOutcome, LlmError> {
        self.converse(
            owner,
            agent_id,
            message,
            session_id,
            None,
            Retries::Transport,
        )
        .await
    }

    /// [`Self::chat`] for callers that retry the same logical call (pipeline nodes, schedules):
    /// with `idempotency_key` and no session, the first call binds a session to the key; a
    /// retry after the answer was stored returns that answer without calling the provider.
    /// The caller is the one layer that retries: each provider call is attempted once.
    pub async fn chat_keyed(
        &self,
        owner: Uuid,
        agent_id: Uuid,
        message: String,
        session_id: Option<Uuid>,
        idempotency_key: Option<&str>,
    ) -> Result<ChatOutcome, LlmError> {
        self.converse(
            owner,
            agent_id,
            message,
            session_id,
            idempotency_key,
            Retries::Caller,
        )
        .await
    }

    async fn converse(
        &self,
        owner: Uuid,
        agent_id: Uuid,
        message: String,
        session_id: Option<Uuid>,
        idempotency_key: Option<&str>,
        retries: Retries,
    ) -> Result<ChatOutcome, LlmError> {
        if !text_len_ok(&message, 1, MAX_MESSAGE_CHARS) || message.trim().is_empty() {
            return Err(LlmError::validation(
                "/message",
                "must be 1 to 100000 characters",
            ));
        }
        let agent = self.get(owner, agent_id).await?;
        let model = self.model_for(&agent, retries).await?;
        let (session, continuing) = match (session_id, idempotency_key) {
            (None, Some(key)) => {
                let (sid, existed) = self.agents.open_keyed_session(owner, agent.id, key).await?;
                if existed
                    && let Some(last) = self.agents.recent_messages(sid, 1).await?.pop()
                    && last.role == ChatRole::Assistant
                    && last.tool_calls.is_null()
                {
                    return Ok(ChatOutcome {
                        session_id: sid,
                        reply: last.content,
                        usage: last.usage,
                    });
                }
                (sid, existed)
            }
            _ => {
                let sid = self
                    .agents
                    .open_session(owner, agent.id, session_id)
                    .await?
                    .ok_or(LlmError::NotFound)?;
                (sid, session_id.is_some())
            }
        };
        let memories = if self.config.memory_recall > 0 {
            self.agents
                .recall_memories(owner, agent.id, &message, self.config.memory_recall)
                .await?
        } else {
            Vec::new()
        };
        let history = if continuing {
            let stored = self
                .agents
                .recent_messages(session, self.config.history_messages)
                .await?;
            self.history_messages(stored)
        } else {
            Vec::new()
        };

        let mut system = agent.persona.clone();
        if !memories.is_empty() {
            if !system.is_empty() {
                system.push_str("\n\n");
            }
            system.push_str("Things you remember about this user:\n");
            for m in &memories {
                system.push_str("- ");
                system.push_str(&m.content);
                system.push('\n');
            }
        }
        let mut messages = Vec::with_capacity(history.len() + 2);
        if !system.trim().is_empty() {
            messages.push(Message::System(system));
        }
        messages.extend(history);
        messages.push(Message::User(message.clone()));

        let tools: Vec<ToolSchema> = match &self.tools {
            Some(t) if !agent.tools.is_empty() => t
                .catalog
                .tool_schemas()
                .into_iter()
                .filter(|s| agent.tools.contains(&s.name))
                .collect(),
            _ => Vec::new(),
        };

        let mut to_store = vec![NewMessage::text(ChatRole::User, message)];
        let mut total = Usage::default();
        let turns = self.config.max_tool_turns.max(1);
        let mut reply = String::new();
        for turn in 0..turns {
            let last = turn + 1 == turns;
            let mut req = ChatRequest::new(agent.model.clone(), messages.clone());
            req.temperature = Some(agent.temperature);
            req.max_tokens = Some(self.config.max_tokens);
            if !last {
                req.tools = tools.clone();
            }
            let resp = model.chat(&req).await?;
            add_usage(&mut total, resp.usage);
            if resp.tool_calls.is_empty() || last {
                reply = resp.text;
                let mut m = NewMessage::text(ChatRole::Assistant, reply.clone());
                m.usage = resp.usage;
                to_store.push(m);
                break;
            }
            to_store.push(NewMessage {
                role: ChatRole::Assistant,
                content: resp.text.clone(),
                tool_calls: serde_json::to_value(&resp.tool_calls).unwrap_or(Value::Null),
                tool_call_id: None,
                usage: resp.usage,
            });
            messages.push(Message::Assistant {
                text: resp.text,
                tool_calls: resp.tool_calls.clone(),
            });
            for call in &resp.tool_calls {
                let result = self.run_tool(owner, &agent, call).await;
                to_store.push(NewMessage {
                    role: ChatRole::Tool,
                    content: result.clone(),
                    tool_calls: Value::Null,
                    tool_call_id: Some(call.id.clone()),
                    usage: Usage::default(),
                });
                messages.push(Message::Tool {
                    call_id: call.id.clone(),
                    name: call.name.clone(),
                    content: result,
                });
            }
        }
        self.agents.append_messages(session, to_store).await?;
        Ok(ChatOutcome {
            session_id: session,
            reply,
            usage: total,
        })
    }
}

#[async_trait]
impl AgentRunner for AgentService {
    async fn run(&self, request: AgentRequest) -> Result<AgentOutput, AgentError> {
        let out = self
            .chat_keyed(
                request.owner_id,
                request.agent_id,
                request.prompt,
                request.session_id,
                request.idempotency_key.as_deref(),
            )
            .await?;
        Ok(AgentOutput {
            text: out.reply,
            usage: out.usage,
            session_id: Some(out.session_id),
        })
    }
}
