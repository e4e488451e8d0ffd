//! Agents: owner-scoped CRUD, chat with persisted sessions, memories.

use crate::error::ApiError;
use crate::extract::{AuthUser, PageQuery};
use crate::json::Json;
use crate::state::AppState;
use actix_web::{HttpResponse, web};
use chrono::{DateTime, Utc};
use gathering_domain::agents::{Agent, Memory, Usage};

use gathering_llm::service::{AgentInput, AgentPatchInput};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

#[derive(Deserialize, ToSchema)]
pub struct CreateAgentBody {
    pub name: String,
    /// The system prompt.
    #[serde(default)]
    pub persona: String,
    /// `openai`, `anthropic`, `deepseek` or `ollama`.
    pub provider: String,
    pub model: String,
    /// 0 to 2; default 0.7.
    pub temperature: Option<f64>,
    /// Names of tools the agent may call.
    #[serde(default)]
    pub tools: Vec<String>,
}

#[derive(Deserialize, ToSchema)]
pub struct PatchAgentBody {
    pub name: Option<String>,
    pub persona: Option<String>,
    pub provider: Option<String>,
    pub model: Option<String>,
    pub temperature: Option<f64>,
    pub tools: Option<Vec<String>>,
}

#[derive(Serialize, ToSchema)]
pub struct AgentResponse {
    pub id: Uuid,
    pub name: String,
    pub persona: String,
    pub provider: String,
    pub model: String,
    pub temperature: f64,
    pub tools: Vec<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl From<Agent> for AgentResponse {
    fn from(a: Agent) -> Self {
        Self {
            id: a.id,
            name: a.name,
            persona: a.persona,
            provider: a.provider.as_str().to_owned(),
            model: a.model,
            temperature: a.temperature,
            tools: a.tools,
            created_at: a.created_at,
            updated_at: a.updated_at,
        }
    }
}

#[derive(Serialize, ToSchema)]
pub struct AgentPage {
    pub items: Vec<AgentResponse>,
    pub next_cursor: Option<String>,
}

#[derive(Deserialize, ToSchema)]
pub struct ChatBody {
    pub message: String,
    /// Continue this session; omitted → a new session.
    pub session_id: Option<Uuid>,
}

#[derive(Serialize, ToSchema)]
pub struct UsageResponse {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
}

impl From<Usage> for UsageResponse {
    fn from(u: Usage) -> Self {
        Self {
            prompt_tokens: u.prompt_tokens,
            completion_tokens: u.completion_tokens,
        }
    }
}

#[derive(Serialize, ToSchema)]
pub struct ChatResponse {
    pub session_id: Uuid,
    pub reply: String,
    pub usage: UsageResponse,
}

#[derive(Deserialize, ToSchema)]
pub struct MemoryBody {
    pub content: String,
}

#[derive(Serialize, ToSchema)]
pub struct MemoryResponse {
    pub id: Uuid,
    pub agent_id: Uuid,
    pub content: String,
    pub created_at: DateTime<Utc>,
}

impl From<Memory> for MemoryResponse {
    fn from(m: Memory) -> Self {
        Self {
            id: m.id,
            agent_id: m.agent_id,
            content: m.content,
            created_at: m.created_at,
        }
    }
}

#[derive(Serialize, ToSchema)]
pub struct MemoryPage {
    pub items: Vec<MemoryResponse>,
    pub next_cursor: Option<String>,
}

#[utoipa::path(post, path = "/agents", tag = "agents", request_body = CreateAgentBody,
    responses((status = 201, body = AgentResponse), (status = 422)), security(("bearer" = [])))]
pub async fn create(
    user: AuthUser,
    state: web::Data<AppState>,
    body: Json<CreateAgentBody>,
) -> Result<HttpResponse, ApiError> {
    let b = body.into_inner();
    let agent = state
        .agents
        .create(
            user.id,
            AgentInput {
                name: b.name,
                persona: b.persona,
                provider: b.provider,
                model: b.model,
                temperature: b.temperature,
                tools: b.tools,
            },
        )
        .await?;
    Ok(HttpResponse::Created().json(AgentResponse::from(agent)))
}

#[utoipa::path(get, path = "/agents", tag = "agents", params(PageQuery),
    responses((status = 200, body = AgentPage)), security(("bearer" = [])))]
pub async fn list(
    user: AuthUser,
    state: web::Data<AppState>,
    q: web::Query<PageQuery>,
) -> Result<HttpResponse, ApiError> {
    let page = state.agents.list(user.id, q.to_page_request()?).await?;
    let page = page.map(AgentResponse::from);
    Ok(HttpResponse::Ok().json(AgentPage {
        items: page.items,
        next_cursor: page.next_cursor,
    }))
}

#[utoipa::path(get, path = "/agents/{id}", tag = "agents",
    responses((status = 200, body = AgentResponse), (status = 404)), security(("bearer" = [])))]
pub async fn get(
    user: AuthUser,
    state: web::Data<AppState>,
    id: web::Path<Uuid>,
) -> Result<HttpResponse, ApiError> {
    let agent = state.agents.get(user.id, id.into_inner()).await?;
    Ok(HttpResponse::Ok().json(AgentResponse::from(agent)))
}

#[utoipa::path(patch, path = "/agents/{id}", tag = "agents", request_body = PatchAgentBody,
    responses((status = 200, body = AgentResponse), (status = 404), (status = 422)),
    security(("bearer" = [])))]
pub async fn patch(
    user: AuthUser,
    state: web::Data<AppState>,
    id: web::Path<Uuid>,
    body: Json<PatchAgentBody>,
) -> Result<HttpResponse, ApiError> {
    let b = body.into_inner();
    let agent = state
        .agents
        .update(
            user.id,
            id.into_inner(),
            AgentPatchInput {
                name: b.name,
                persona: b.persona,
                provider: b.provider,
                model: b.model,
                temperature: b.temperature,
                tools: b.tools,
            },
        )
        .await?;
    Ok(HttpResponse::Ok().json(AgentResponse::from(agent)))
}

#[utoipa::path(delete, path = "/agents/{id}", tag = "agents",
    responses((status = 204), (status = 404)), security(("bearer" = [])))]
pub async fn delete(
    user: AuthUser,
    state: web::Data<AppState>,
    id: web::Path<Uuid>,
) -> Result<HttpResponse, ApiError> {
    state.agents.delete(user.id, id.into_inner()).await?;
    Ok(HttpResponse::NoContent().finish())
}

#[utoipa::path(post, path = "/agents/{id}/chat", tag = "agents", request_body = ChatBody,
    responses((status = 200, body = ChatResponse), (status = 404),
              (status = 422, description = "invalid message, or no provider key configured"),
              (status = 429), (status = 503)),
    security(("bearer" = [])))]
pub async fn chat(
    user: AuthUser,
    state: web::Data<AppState>,
    id: web::Path<Uuid>,
    body: Json<ChatBody>,
) -> Result<HttpResponse, ApiError> {
    let b = body.into_inner();
    let out = state
        .agents
        .chat(user.id, id.into_inner(), b.message, b.session_id)
        .await?;
    Ok(HttpResponse::Ok().json(ChatResponse {
        session_id: out.session_id,
        reply: out.reply,
        usage: out.usage.into(),
    }))
}

#[utoipa::path(post, path = "/agents/{id}/memories", tag = "agents", request_body = MemoryBody,
    responses((status = 201, body = MemoryResponse), (status = 404), (status = 422)),
    security(("bearer" = [])))]
pub async fn add_memory(
    user: AuthUser,
    state: web::Data<AppState>,
    id: web::Path<Uuid>,
    body: Json<MemoryBody>,
) -> Result<HttpResponse, ApiError> {
    let m = state
        .agents
        .add_memory(user.id, id.into_inner(), body.into_inner().content)
        .await?;
    Ok(HttpResponse::Created().json(MemoryResponse::from(m)))
}

#[utoipa::path(get, path = "/agents/{id}/memories", tag = "agents", params(PageQuery),
    responses((status = 200, body = MemoryPage), (status = 404)), security(("bearer" = [])))]
pub async fn list_memories(
    user: AuthUser,
    state: web::Data<AppState>,
    id: web::Path<Uuid>,
    q: web::Query<PageQuery>,
) -> Result<HttpResponse, ApiError> {
    let page = state
        .agents
        .list_memories(user.id, id.into_inner(), q.to_page_request()?)
        .await?
        .map(MemoryResponse::from);
    Ok(HttpResponse::Ok().json(MemoryPage {
        items: page.items,
        next_cursor: page.next_cursor,
    }))
}

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/agents", web::post().to(create))
        .route("/agents", web::get().to(list))
        .route("/agents/{id}", web::get().to(get))
        .route("/agents/{id}", web::patch().to(patch))
        .route("/agents/{id}", web::delete().to(delete))
        .route("/agents/{id}/chat", web::post().to(chat))
        .route("/agents/{id}/memories", web::post().to(add_memory))
        .route("/agents/{id}/memories", web::get().to(list_memories));
}

#[derive(utoipa::OpenApi)]
#[openapi(
    paths(create, list, get, patch, delete, chat, add_memory, list_memories),
    tags((name = "agents"))
)]
struct AgentsDoc;

pub fn openapi() -> utoipa::openapi::OpenApi {
    <AgentsDoc as utoipa::OpenApi>::openapi()
}
