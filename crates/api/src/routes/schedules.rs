//! Schedules and their executions (API.md "Schedules"). Owner-scoped: another user's id
//! answers 404. Pause with `PATCH {"enabled": false}`.

use crate::error::ApiError;
use crate::extract::{AuthUser, PageQuery};
use crate::json::Json;
use crate::state::AppState;
use actix_web::{HttpResponse, web};
use chrono::{DateTime, Utc};
use gathering_domain::scheduler::{Execution, Schedule};
use gathering_scheduler::{CreateSchedule, PatchSchedule};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;
use utoipa::ToSchema;
use uuid::Uuid;

fn empty_object() -> Value {
    Value::Object(serde_json::Map::new())
}

/// Distinguishes an absent field (keep) from an explicit `null` (clear).
fn double_option<'de, D, T>(d: D) -> Result<Option<Option<T>>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(d).map(Some)
}

#[derive(Deserialize, ToSchema)]
pub struct CreateScheduleBody {
    pub name: String,
    /// 5-field cron pattern (`minute hour day-of-month month day-of-week`); exclusive with
    /// `interval_secs`.
    #[serde(default)]
    pub cron: Option<String>,
    #[serde(default)]
    pub interval_secs: Option<i64>,
    /// IANA timezone of the cron pattern (default UTC).
    #[serde(default)]
    pub timezone: Option<String>,
    /// `run_task|execute_pipeline|send_notification|call_api`
    pub action_type: String,
    /// call_api `{url, method?, headers?, body?, timeout_ms?, accept_status?, max_attempts?}`;
    /// send_notification `{title, message, channel?}`; run_task `{agent_id, prompt, session_id?}`;
    /// execute_pipeline `{pipeline_id, input?}`.
    #[serde(default = "empty_object")]
    #[schema(value_type = Object)]
    pub action_config: Value,
    #[serde(default)]
    pub enabled: Option<bool>,
    /// `skip` (default) or `run_once`
    #[serde(default)]
    pub missed_runs: Option<String>,
    /// `skip` (default) or `allow`
    #[serde(default)]
    pub overlap: Option<String>,
    #[serde(default)]
    pub max_executions: Option<i64>,
}

#[derive(Deserialize, ToSchema)]
pub struct PatchScheduleBody {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<String>)]
    pub cron: Option<Option<String>>,
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<i64>)]
    pub interval_secs: Option<Option<i64>>,
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<String>)]
    pub timezone: Option<Option<String>>,
    #[serde(default)]
    pub action_type: Option<String>,
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub action_config: Option<Value>,
    #[serde(default)]
    pub enabled: Option<bool>,
    #[serde(default)]
    pub missed_runs: Option<String>,
    #[serde(default)]
    pub overlap: Option<String>,
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<i64>)]
    pub max_executions: Option<Option<i64>>,
}

#[derive(Serialize, ToSchema)]
pub struct ScheduleResponse {
    pub id: Uuid,
    pub name: String,
    pub cron: Option<String>,
    pub interval_secs: Option<i64>,
    pub timezone: Option<String>,
    pub action_type: String,
    #[schema(value_type = Object)]
    pub action_config: Value,
    pub enabled: bool,
    pub missed_runs: String,
    pub overlap: String,
    pub max_executions: Option<i64>,
    pub execution_count: i64,
    pub next_run_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl From<Schedule> for ScheduleResponse {
    fn from(s: Schedule) -> Self {
        Self {
            id: s.id,
            name: s.name,
            cron: s.cron,
            interval_secs: s.interval_secs,
            timezone: s.timezone,
            action_type: s.action_type.as_str().to_owned(),
            action_config: s.action_config,
            enabled: s.enabled,
            missed_runs: s.missed_runs.as_str().to_owned(),
            overlap: s.overlap.as_str().to_owned(),
            max_executions: s.max_executions,
            execution_count: s.execution_count,
            next_run_at: s.next_run_at,
            created_at: s.created_at,
            updated_at: s.updated_at,
        }
    }
}

#[derive(Serialize, ToSchema)]
pub struct SchedulePage {
    pub items: Vec<ScheduleResponse>,
    pub next_cursor: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct ExecutionResponse {
    pub id: Uuid,
    pub schedule_id: Uuid,
    pub scheduled_for: DateTime<Utc>,
    /// `running|succeeded|failed|skipped|interrupted`
    pub status: String,
    pub started_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    /// The action's result (any JSON value); null while running or after a failure.
    pub result: Option<Value>,
    pub error: Option<String>,
    /// The pipeline run started by an `execute_pipeline` schedule.
    pub run_id: Option<Uuid>,
}

impl From<Execution> for ExecutionResponse {
    fn from(e: Execution) -> Self {
        Self {
            id: e.id,
            schedule_id: e.schedule_id,
            scheduled_for: e.scheduled_for,
            status: e.status.as_str().to_owned(),
            started_at: e.started_at,
            finished_at: e.finished_at,
            result: e.result,
            error: e.error,
            run_id: e.run_id,
        }
    }
}

#[derive(Serialize, ToSchema)]
pub struct ExecutionPage {
    pub items: Vec<ExecutionResponse>,
    pub next_cursor: Option<String>,
}

#[utoipa::path(post, path = "/api/v1/schedules", tag = "schedules", request_body = CreateScheduleBody,
    responses((status = 201, body = ScheduleResponse),
              (status = 422, description = "validation_failed: bad cron, timezone, timing or action_config")),
    security(("bearer" = [])))]
pub async fn create(
    user: AuthUser,
    state: web::Data<AppState>,
    body: Json<CreateScheduleBody>,
) -> Result<HttpResponse, ApiError> {
    let b = body.into_inner();
    let s = state
        .schedules
        .create(
            user.id,
            CreateSchedule {
                name: b.name,
                cron: b.cron,
                interval_secs: b.interval_secs,
                timezone: b.timezone,
                action_type: b.action_type,
                action_config: b.action_config,
                enabled: b.enabled,
                missed_runs: b.missed_runs,
                overlap: b.overlap,
                max_executions: b.max_executions,
            },
        )
        .await?;
    Ok(HttpResponse::Created().json(ScheduleResponse::from(s)))
}

#[utoipa::path(get, path = "/api/v1/schedules", tag = "schedules", params(PageQuery),
    responses((status = 200, body = SchedulePage)), security(("bearer" = [])))]
pub async fn list(
    user: AuthUser,
    state: web::Data<AppState>,
    q: web::Query<PageQuery>,
) -> Result<HttpResponse, ApiError> {
    let page = state
        .schedules
        .list(user.id, q.to_page_request()?)
        .await?
        .map(ScheduleResponse::from);
    Ok(HttpResponse::Ok().json(SchedulePage {
        items: page.items,
        next_cursor: page.next_cursor,
    }))
}

#[utoipa::path(get, path = "/api/v1/schedules/{id}", tag = "schedules",
    params(("id" = Uuid, Path)),
    responses((status = 200, body = ScheduleResponse), (status = 404)), security(("bearer" = [])))]
pub async fn get(
    user: AuthUser,
    state: web::Data<AppState>,
    id: web::Path<Uuid>,
) -> Result<HttpResponse, ApiError> {
    let s = state.schedules.get(user.id, *id).await?;
    Ok(HttpResponse::Ok().json(ScheduleResponse::from(s)))
}

#[utoipa::path(patch, path = "/api/v1/schedules/{id}", tag = "schedules",
    params(("id" = Uuid, Path)), request_body = PatchScheduleBody,
    responses((status = 200, body = ScheduleResponse), (status = 404), (status = 422)),
    security(("bearer" = [])))]
pub async fn update(
    user: AuthUser,
    state: web::Data<AppState>,
    id: web::Path<Uuid>,
    body: Json<PatchScheduleBody>,
) -> Result<HttpResponse, ApiError> {
    let b = body.into_inner();
    let s = state
        .schedules
        .update(
            user.id,
            *id,
            PatchSchedule {
                name: b.name,
                cron: b.cron,
                interval_secs: b.interval_secs,
                timezone: b.timezone,
                action_type: b.action_type,
                action_config: b.action_config,
                enabled: b.enabled,
                missed_runs: b.missed_runs,
                overlap: b.overlap,
                max_executions: b.max_executions,
            },
        )
        .await?;
    Ok(HttpResponse::Ok().json(ScheduleResponse::from(s)))
}

#[utoipa::path(delete, path = "/api/v1/schedules/{id}", tag = "schedules",
    params(("id" = Uuid, Path)),
    responses((status = 204), (status = 404)), security(("bearer" = [])))]
pub async fn delete(
    user: AuthUser,
    state: web::Data<AppState>,
    id: web::Path<Uuid>,
) -> Result<HttpResponse, ApiError> {
    state.schedules.delete(user.id, *id).await?;
    Ok(HttpResponse::NoContent().finish())
}

#[utoipa::path(post, path = "/api/v1/schedules/{id}/run-now", tag = "schedules",
    params(("id" = Uuid, Path)),
    responses((status = 202, body = ExecutionResponse, description = "the execution, started"),
              (status = 404)),
    security(("bearer" = [])))]
pub async fn run_now(
    user: AuthUser,
    state: web::Data<AppState>,
    id: web::Path<Uuid>,
) -> Result<HttpResponse, ApiError> {
    let e = state.schedules.run_now(user.id, *id).await?;
    Ok(HttpResponse::Accepted().json(ExecutionResponse::from(e)))
}

#[utoipa::path(get, path = "/api/v1/schedules/{id}/executions", tag = "schedules",
    params(("id" = Uuid, Path), PageQuery),
    responses((status = 200, body = ExecutionPage), (status = 404)), security(("bearer" = [])))]
pub async fn executions(
    user: AuthUser,
    state: web::Data<AppState>,
    id: web::Path<Uuid>,
    q: web::Query<PageQuery>,
) -> Result<HttpResponse, ApiError> {
    let page = state
        .schedules
        .executions(user.id, *id, q.to_page_request()?)
        .await?
        .map(ExecutionResponse::from);
    Ok(HttpResponse::Ok().json(ExecutionPage {
        items: page.items,
        next_cursor: page.next_cursor,
    }))
}

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/schedules", web::post().to(create))
        .route("/schedules", web::get().to(list))
        .route("/schedules/{id}", web::get().to(get))
        .route("/schedules/{id}", web::patch().to(update))
        .route("/schedules/{id}", web::delete().to(delete))
        .route("/schedules/{id}/run-now", web::post().to(run_now))
        .route("/schedules/{id}/executions", web::get().to(executions));
}

#[derive(utoipa::OpenApi)]
#[openapi(
    paths(create, list, get, update, delete, run_now, executions),
    tags((name = "schedules"))
)]
struct Doc;

pub fn openapi() -> utoipa::openapi::OpenApi {
    <Doc as utoipa::OpenApi>::openapi()
}
