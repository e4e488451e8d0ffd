//! The agent runner port: pipelines' `agent` nodes and the scheduler's `run_task` call it.

use crate::codes;
use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentRequest {
    pub owner_id: Uuid,
    pub agent_id: Uuid,
    pub prompt: String,
    /// Continue this chat session, or start a new one.
    pub session_id: Option<Uuid>,
    pub idempotency_key: Option<String>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentOutput {
    pub text: String,
    pub usage: Usage,
    pub session_id: Option<Uuid>,
}

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("agent not found")]
    NotFound,
    /// No runner or provider is configured (e.g. no API key): fails clearly, never fakes.
    #[error("{0}")]
    NotConfigured(String),
    #[error("{message}")]
    Provider { message: String, retryable: bool },
}

impl AgentError {
    pub fn retryable(&self) -> bool {
        matches!(
            self,
            AgentError::Provider {
                retryable: true,
                ..
            }
        )
    }
}

#[async_trait]
pub trait AgentRunner: Send + Sync {
    async fn run(&self, request: AgentRequest) -> Result<AgentOutput, AgentError>;
}

impl crate::error::ErrorCode for AgentError {
    fn kind(&self) -> crate::error::ErrorKind {
        use crate::error::ErrorKind;
        match self {
            AgentError::NotFound => ErrorKind::NotFound,
            AgentError::NotConfigured(_) => ErrorKind::Validation,
            AgentError::Provider { .. } => ErrorKind::Unavailable,
        }
    }
    fn code(&self) -> &'static str {
        match self {
            AgentError::NotFound => codes::NOT_FOUND,
            AgentError::NotConfigured(_) => codes::PROVIDER_NOT_CONFIGURED,
            AgentError::Provider { .. } => codes::PROVIDER_FAILED,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Agents, chat sessions, memories, circles and provider settings: types and repository ports.
// ---------------------------------------------------------------------------------------------

use crate::error::RepoError;
use crate::page::{Page, PageRequest};
use chrono::{DateTime, Utc};

/// The LLM providers an agent may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Provider {
    #[serde(rename = "openai")]
    OpenAi,
    Anthropic,
    #[serde(rename = "deepseek")]
    DeepSeek,
    Ollama,
}

impl Provider {
    pub const ALL: [Provider; 4] = [
        Provider::OpenAi,
        Provider::Anthropic,
        Provider::DeepSeek,
        Provider::Ollama,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Provider::OpenAi => "openai",
            Provider::Anthropic => "anthropic",
            Provider::DeepSeek => "deepseek",
            Provider::Ollama => "ollama",
        }
    }

    pub fn parse(s: &str) -> Option<Provider> {
        Provider::ALL.into_iter().find(|p| p.as_str() == s)
    }

    /// Whether calls need an API key (a local Ollama does not).
    pub fn needs_api_key(self) -> bool {
        !matches!(self, Provider::Ollama)
    }
}

impl std::fmt::Display for Provider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Agent {
    pub id: Uuid,
    pub owner_id: Uuid,
    pub name: String,
    /// The system prompt.
    pub persona: String,
    pub provider: Provider,
    pub model: String,
    /// 0.0..=2.0
    pub temperature: f64,
    /// Names of the tools the agent may call.
    pub tools: Vec<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct NewAgent {
    pub owner_id: Uuid,
    pub name: String,
    pub persona: String,
    pub provider: Provider,
    pub model: String,
    pub temperature: f64,
    pub tools: Vec<String>,
}

/// Fields left `None` keep their value.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AgentPatch {
    pub name: Option<String>,
    pub persona: Option<String>,
    pub provider: Option<Provider>,
    pub model: Option<String>,
    pub temperature: Option<f64>,
    pub tools: Option<Vec<String>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ChatRole {
    System,
    User,
    Assistant,
    Tool,
}

impl ChatRole {
    pub fn as_str(self) -> &'static str {
        match self {
            ChatRole::System => "system",
            ChatRole::User => "user",
            ChatRole::Assistant => "assistant",
            ChatRole::Tool => "tool",
        }
    }
    pub fn parse(s: &str) -> Option<ChatRole> {
        match s {
            "system" => Some(ChatRole::System),
            "user" => Some(ChatRole::User),
            "assistant" => Some(ChatRole::Assistant),
            "tool" => Some(ChatRole::Tool),
            _ => None,
        }
    }
}

/// One persisted message of a chat session.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredMessage {
    pub id: Uuid,
    pub session_id: Uuid,
    pub role: ChatRole,
    pub content: String,
    /// Tool calls the assistant requested (`[{id, name, arguments}]`), or `null`.
    pub tool_calls: serde_json::Value,
    /// For `tool` messages: the call this answers.
    pub tool_call_id: Option<String>,
    pub usage: Usage,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct NewMessage {
    pub role: ChatRole,
    pub content: String,
    pub tool_calls: serde_json::Value,
    pub tool_call_id: Option<String>,
    pub usage: Usage,
}

impl NewMessage {
    pub fn text(role: ChatRole, content: impl Into<String>) -> Self {
        Self {
            role,
            content: content.into(),
            tool_calls: serde_json::Value::Null,
            tool_call_id: None,
            usage: Usage::default(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Memory {
    pub id: Uuid,
    pub agent_id: Uuid,
    pub owner_id: Uuid,
    pub content: String,
    pub created_at: DateTime<Utc>,
}

#[async_trait]
pub trait AgentRepository: Send + Sync {
    async fn create_agent(&self, new: NewAgent) -> Result<Agent, RepoError>;
    /// The agent if `owner` owns it.
    async fn get_agent(&self, owner: Uuid, id: Uuid) -> Result<Option<Agent>, RepoError>;
    async fn list_agents(&self, owner: Uuid, page: PageRequest) -> Result<Page<Agent>, RepoError>;
    async fn update_agent(
        &self,
        owner: Uuid,
        id: Uuid,
        patch: AgentPatch,
    ) -> Result<Option<Agent>, RepoError>;
    /// `false` when no such agent of `owner` exists.
    async fn delete_agent(&self, owner: Uuid, id: Uuid) -> Result<bool, RepoError>;

    /// Returns the session to use: `session` when it exists for this owner and agent
    /// (`None` when it does not), or a new one when `session` is `None`.
    async fn open_session(
        &self,
        owner: Uuid,
        agent_id: Uuid,
        session: Option<Uuid>,
    ) -> Result<Option<Uuid>, RepoError>;
    /// The session bound to `key` for this owner and agent, created when missing; the flag
    /// is `true` when it already existed (a retry of the same logical call).
    async fn open_keyed_session(
        &self,
        owner: Uuid,
        agent_id: Uuid,
        key: &str,
    ) -> Result<(Uuid, bool), RepoError>;
    /// Appends messages in order, in one transaction.
    async fn append_messages(
        &self,
        session_id: Uuid,
        messages: Vec<NewMessage>,
    ) -> Result<Vec<StoredMessage>, RepoError>;
    /// The last `limit` messages of a session, oldest first.
    async fn recent_messages(
        &self,
        session_id: Uuid,
        limit: u32,
    ) -> Result<Vec<StoredMessage>, RepoError>;

    async fn add_memory(
        &self,
        owner: Uuid,
        agent_id: Uuid,
        content: String,
    ) -> Result<Memory, RepoError>;
    async fn list_memories(
        &self,
        owner: Uuid,
        agent_id: Uuid,
        page: PageRequest,
    ) -> Result<Page<Memory>, RepoError>;
    /// Up to `limit` memories most relevant to `query` (full-text rank), best first.
    async fn recall_memories(
        &self,
        owner: Uuid,
        agent_id: Uuid,
        query: &str,
        limit: u32,
    ) -> Result<Vec<Memory>, RepoError>;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CircleRole {
    Lead,
    Member,
    Reviewer,
}

impl CircleRole {
    pub fn as_str(self) -> &'static str {
        match self {
            CircleRole::Lead => "lead",
            CircleRole::Member => "member",
            CircleRole::Reviewer => "reviewer",
        }
    }
    pub fn parse(s: &str) -> Option<CircleRole> {
        match s {
            "lead" => Some(CircleRole::Lead),
            "member" => Some(CircleRole::Member),
            "reviewer" => Some(CircleRole::Reviewer),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Circle {
    pub id: Uuid,
    pub owner_id: Uuid,
    pub name: String,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct NewCircle {
    pub owner_id: Uuid,
    pub name: String,
    pub members: Vec<(Uuid, CircleRole)>,
}

/// The owner's provider setting as seen alongside a member (never the key itself).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProviderInfo {
    pub provider: Provider,
    /// The owner's base URL override, if any.
    pub base_url: Option<String>,
    /// Whether the owner stored their own key for this provider.
    pub key_set: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CircleMember {
    pub role: CircleRole,
    pub agent: Agent,
    pub provider: ProviderInfo,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CircleDetail {
    pub circle: Circle,
    pub members: Vec<CircleMember>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TaskStatus {
    Running,
    Succeeded,
    Failed,
}

impl TaskStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            TaskStatus::Running => "running",
            TaskStatus::Succeeded => "succeeded",
            TaskStatus::Failed => "failed",
        }
    }
    pub fn parse(s: &str) -> Option<TaskStatus> {
        match s {
            "running" => Some(TaskStatus::Running),
            "succeeded" => Some(TaskStatus::Succeeded),
            "failed" => Some(TaskStatus::Failed),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CircleTask {
    pub id: Uuid,
    pub circle_id: Uuid,
    pub owner_id: Uuid,
    pub title: String,
    pub description: String,
    pub status: TaskStatus,
    pub result: Option<String>,
    pub error: Option<String>,
    pub created_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
}

/// One contribution to a circle task's transcript.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskTurn {
    pub id: Uuid,
    pub task_id: Uuid,
    /// 0 = the lead's first answer; 1.. = rounds; the last is the lead's synthesis.
    pub round: i32,
    /// `None` for the facilitator.
    pub agent_id: Option<Uuid>,
    pub speaker: String,
    pub content: String,
    pub usage: Usage,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct NewTaskTurn {
    pub round: i32,
    pub agent_id: Option<Uuid>,
    pub speaker: String,
    pub content: String,
    pub usage: Usage,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CircleTaskDetail {
    pub task: CircleTask,
    pub transcript: Vec<TaskTurn>,
}

#[async_trait]
pub trait CircleRepository: Send + Sync {
    /// Members must be agents of the owner: otherwise `Conflict("agent")`.
    async fn create_circle(&self, new: NewCircle) -> Result<Circle, RepoError>;
    /// The circle with each member's agent and provider setting, in one query.
    async fn get_circle(&self, owner: Uuid, id: Uuid) -> Result<Option<CircleDetail>, RepoError>;
    async fn create_task(
        &self,
        owner: Uuid,
        circle_id: Uuid,
        title: String,
        description: String,
    ) -> Result<CircleTask, RepoError>;
    async fn append_turn(&self, task_id: Uuid, turn: NewTaskTurn) -> Result<TaskTurn, RepoError>;
    async fn finish_task(
        &self,
        task_id: Uuid,
        status: TaskStatus,
        result: Option<String>,
        error: Option<String>,
    ) -> Result<CircleTask, RepoError>;
    /// The task (if `owner` owns it) with its transcript in order.
    async fn get_task(
        &self,
        owner: Uuid,
        task_id: Uuid,
    ) -> Result<Option<CircleTaskDetail>, RepoError>;
}

/// A user's stored provider setting. The key is `nonce || ciphertext` (AEAD), never plain.
#[derive(Debug, Clone, PartialEq)]
pub struct ProviderSetting {
    pub owner_id: Uuid,
    pub provider: Provider,
    pub base_url: Option<String>,
    pub api_key_encrypted: Option<Vec<u8>>,
    /// e.g. `…3456`
    pub key_hint: Option<String>,
    pub updated_at: DateTime<Utc>,
}

/// A change to a provider setting: `None` keeps the field, `Some(None)` clears it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ProviderSettingChange {
    pub base_url: Option<Option<String>>,
    /// (`nonce || ciphertext`, hint)
    pub api_key: Option<Option<(Vec<u8>, String)>>,
}

#[async_trait]
pub trait ProviderSettingsRepository: Send + Sync {
    async fn upsert_provider_setting(
        &self,
        owner: Uuid,
        provider: Provider,
        change: ProviderSettingChange,
    ) -> Result<ProviderSetting, RepoError>;
    async fn get_provider_setting(
        &self,
        owner: Uuid,
        provider: Provider,
    ) -> Result<Option<ProviderSetting>, RepoError>;
    /// At most one per provider.
    async fn list_provider_settings(&self, owner: Uuid) -> Result<Vec<ProviderSetting>, RepoError>;
}
