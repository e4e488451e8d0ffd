//! Circles of agents and the tasks they work together.

use crate::error::ApiError;
use crate::extract::AuthUser;
use crate::json::Json;
use crate::routes::agents::{AgentResponse, UsageResponse};
use crate::state::AppState;
use actix_web::{HttpResponse, web};
use chrono::{DateTime, Utc};
use gathering_domain::agents::{CircleDetail, CircleTaskDetail};
use serde::{Deserialize, Serialize};
use tracing::Instrument;
use utoipa::ToSchema;
use uuid::Uuid;

#[derive(Deserialize, ToSchema)]
pub struct MemberBody {
    pub agent_id: Uuid,
    /// `lead` (exactly one), `member` or `reviewer`.
    pub role: String,
}

#[derive(Deserialize, ToSchema)]
pub struct CreateCircleBody {
    pub name: String,
    pub members: Vec<MemberBody>,
}

#[derive(Serialize, ToSchema)]
pub struct MemberProvider {
    pub provider: String,
    /// The owner's own base URL for this provider, if set.
    pub base_url: Option<String>,
    /// Whether the owner stored a key for this provider.
    pub key_set: bool,
}

#[derive(Serialize, ToSchema)]
pub struct MemberResponse {
    pub role: String,
    pub agent: AgentResponse,
    pub provider: MemberProvider,
}

#[derive(Serialize, ToSchema)]
pub struct CircleResponse {
    pub id: Uuid,
    pub name: String,
    pub created_at: DateTime<Utc>,
    pub members: Vec<MemberResponse>,
}

impl From<CircleDetail> for CircleResponse {
    fn from(d: CircleDetail) -> Self {
        Self {
            id: d.circle.id,
            name: d.circle.name,
            created_at: d.circle.created_at,
            members: d
                .members
                .into_iter()
                .map(|m| MemberResponse {
                    role: m.role.as_str().to_owned(),
                    provider: MemberProvider {
                        provider: m.provider.provider.as_str().to_owned(),
                        base_url: m.provider.base_url,
                        key_set: m.provider.key_set,
                    },
                    agent: m.agent.into(),
                })
                .collect(),
        }
    }
}

#[derive(Deserialize, ToSchema)]
pub struct TaskBody {
    pub title: String,
    #[serde(default)]
    pub description: String,
}

#[derive(Serialize, ToSchema)]
pub struct TurnResponse {
    pub round: i32,
    pub agent_id: Option<Uuid>,
    pub speaker: String,
    pub content: String,
    pub usage: UsageResponse,
    pub created_at: DateTime<Utc>,
}

#[derive(Serialize, ToSchema)]
pub struct TaskResponse {
    pub id: Uuid,
    pub circle_id: Uuid,
    pub title: String,
    pub description: String,
    /// `running`, `succeeded` or `failed`.
    pub status: String,
    pub result: Option<String>,
    pub error: Option<String>,
    pub created_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    pub transcript: Vec<TurnResponse>,
}

impl From<CircleTaskDetail> for TaskResponse {
    fn from(d: CircleTaskDetail) -> Self {
        let t = d.task;
        Self {
            id: t.id,
            circle_id: t.circle_id,
            title: t.title,
            description: t.description,
            status: t.status.as_str().to_owned(),
            result: t.result,
            error: t.error,
            created_at: t.created_at,
            finished_at: t.finished_at,
            transcript: d
                .transcript
                .into_iter()
                .map(|x| TurnResponse {
                    round: x.round,
                    agent_id: x.agent_id,
                    speaker: x.speaker,
                    content: x.content,
                    usage: x.usage.into(),
                    created_at: x.created_at,
                })
                .collect(),
        }
    }
}

#[utoipa::path(post, path = "/circles", tag = "circles", request_body = CreateCircleBody,
    responses((status = 201, body = CircleResponse), (status = 422)), security(("bearer" = [])))]
pub async fn create(
    user: AuthUser,
    state: web::Data<AppState>,
    body: Json<CreateCircleBody>,
) -> Result<HttpResponse, ApiError> {
    let b = body.into_inner();
    let members = b
        .members
        .into_iter()
        .map(|m| (m.agent_id, m.role))
        .collect();
    let circle = state.circles.create(user.id, b.name, members).await?;
    let detail = state.circles.get(user.id, circle.id).await?;
    Ok(HttpResponse::Created().json(CircleResponse::from(detail)))
}

/// The circle with each member's agent and provider, read in one query.
#[utoipa::path(get, path = "/circles/{id}", tag = "circles",
    responses((status = 200, body = CircleResponse), (status = 404)), security(("bearer" = [])))]
pub async fn get(
    user: AuthUser,
    state: web::Data<AppState>,
    id: web::Path<Uuid>,
) -> Result<HttpResponse, ApiError> {
    let detail = state.circles.get(user.id, id.into_inner()).await?;
    Ok(HttpResponse::Ok().json(CircleResponse::from(detail)))
}

/// Works the task to the end (progress is published as `circle.task.*` events) and answers
/// with the result and transcript; a provider failure gives `status: failed` with the reason.
#[utoipa::path(post, path = "/circles/{id}/tasks", tag = "circles", request_body = TaskBody,
    responses((status = 201, body = TaskResponse), (status = 404), (status = 422)),
    security(("bearer" = [])))]
pub async fn create_task(
    user: AuthUser,
    state: web::Data<AppState>,
    id: web::Path<Uuid>,
    body: Json<TaskBody>,
) -> Result<HttpResponse, ApiError> {
    let b = body.into_inner();
    // Worked on its own task: a client that disconnects (actix then drops this handler) must
    // not leave the task `running` forever; it runs to its end and stays readable by id. The
    // task is tracked ([`AppState::tasks`]): shutdown waits for it (bounded) before stopping.
    let svc = state.circles.clone();
    let (owner, circle_id) = (user.id, id.into_inner());
    let work = state.tasks.spawn(
        async move { svc.run_task(owner, circle_id, b.title, b.description).await }
            .instrument(tracing::Span::current()),
    )?;
    let done = work
        .await
        .map_err(|e| ApiError::internal(format!("circle task worker: {e}")))??;
    Ok(HttpResponse::Created().json(TaskResponse::from(done)))
}

#[utoipa::path(get, path = "/circles/{id}/tasks/{task_id}", tag = "circles",
    responses((status = 200, body = TaskResponse), (status = 404)), security(("bearer" = [])))]
pub async fn get_task(
    user: AuthUser,
    state: web::Data<AppState>,
    path: web::Path<(Uuid, Uuid)>,
) -> Result<HttpResponse, ApiError> {
    let (circle_id, task_id) = path.into_inner();
    let detail = state.circles.get_task(user.id, task_id).await?;
    if detail.task.circle_id != circle_id {
        return Err(ApiError::not_found());
    }
    Ok(HttpResponse::Ok().json(TaskResponse::from(detail)))
}

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/circles", web::post().to(create))
        .route("/circles/{id}", web::get().to(get))
        .route("/circles/{id}/tasks", web::post().to(create_task))
        .route("/circles/{id}/tasks/{task_id}", web::get().to(get_task));
}

#[derive(utoipa::OpenApi)]
#[openapi(paths(create, get, create_task, get_task), tags((name = "circles")))]
struct CirclesDoc;

pub fn openapi() -> utoipa::openapi::OpenApi {
    <CirclesDoc as utoipa::OpenApi>::openapi()
}
