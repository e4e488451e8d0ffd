//! Pipelines and their runs (API.md "Pipelines"). Everything is owner-scoped: another user's id
//! answers 404.

use crate::error::ApiError;
use crate::extract::{AuthUser, PageQuery};
use crate::state::AppState;
use actix_web::{HttpRequest, HttpResponse, web};
use chrono::{DateTime, Utc};
use futures::StreamExt;
use gathering_domain::FieldProblem;
use gathering_domain::codes;
use gathering_domain::pipeline::{
    Edge, Node, NodeRun, Pipeline, PipelineDefinition, Run, RunDetail, RunError,
};
use gathering_pipeline::service::{CreatePipeline, PatchPipeline};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;
use utoipa::ToSchema;
use uuid::Uuid;

#[derive(Deserialize, ToSchema)]
pub struct CreatePipelineBody {
    pub name: String,
    #[serde(default)]
    pub description: Option<String>,
    /// `{id, type, name?, config, retry?, timeout_ms?}`
    #[schema(value_type = Vec<Object>)]
    pub nodes: Vec<Node>,
    /// `{from, to, when?}`
    #[serde(default)]
    #[schema(value_type = Vec<Object>)]
    pub edges: Vec<Edge>,
    #[serde(default)]
    pub timeout_ms: Option<u64>,
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
pub struct PatchPipelineBody {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<String>)]
    pub description: Option<Option<String>>,
    #[serde(default)]
    #[schema(value_type = Option<Vec<Object>>)]
    pub nodes: Option<Vec<Node>>,
    #[serde(default)]
    #[schema(value_type = Option<Vec<Object>>)]
    pub edges: Option<Vec<Edge>>,
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<u64>)]
    pub timeout_ms: Option<Option<u64>>,
}

#[derive(Serialize, ToSchema)]
pub struct PipelineResponse {
    pub id: Uuid,
    pub name: String,
    pub description: Option<String>,
    pub version: i32,
    #[schema(value_type = Vec<Object>)]
    pub nodes: Vec<Node>,
    #[schema(value_type = Vec<Object>)]
    pub edges: Vec<Edge>,
    pub timeout_ms: Option<u64>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl From<Pipeline> for PipelineResponse {
    fn from(p: Pipeline) -> Self {
        let PipelineDefinition {
            nodes,
            edges,
            timeout_ms,
        } = p.definition;
        Self {
            id: p.id,
            name: p.name,
            description: p.description,
            version: p.version,
            nodes,
            edges,
            timeout_ms,
            created_at: p.created_at,
            updated_at: p.updated_at,
        }
    }
}

#[derive(Serialize, ToSchema)]
pub struct PipelinePage {
    pub items: Vec<PipelineResponse>,
    pub next_cursor: Option<String>,
}

#[derive(Deserialize, ToSchema, Default)]
pub struct StartRunBody {
    /// A JSON object (default `{}`); anything else is refused with 422.
    #[serde(default)]
    #[schema(value_type = Object)]
    pub input: Option<Value>,
}

#[derive(Serialize, ToSchema)]
pub struct RunErrorBody {
    pub code: String,
    pub message: String,
}

impl From<RunError> for RunErrorBody {
    fn from(e: RunError) -> Self {
        Self {
            code: e.code,
            message: e.message,
        }
    }
}

#[derive(Serialize, ToSchema)]
pub struct NodeRunResponse {
    pub node_id: String,
    /// `pending|running|succeeded|failed|skipped|cancelled`
    pub status: String,
    pub attempts: i32,
    /// Any JSON value (a condition node outputs a boolean); null until the node succeeds.
    pub output: Option<Value>,
    pub error: Option<RunErrorBody>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
}

impl From<NodeRun> for NodeRunResponse {
    fn from(n: NodeRun) -> Self {
        Self {
            node_id: n.node_id,
            status: n.status.as_str().to_owned(),
            attempts: n.attempts,
            output: n.output,
            error: n.error.map(Into::into),
            started_at: n.started_at,
            finished_at: n.finished_at,
        }
    }
}

#[derive(Serialize, ToSchema)]
pub struct RunResponse {
    pub id: Uuid,
    pub pipeline_id: Uuid,
    pub pipeline_version: i32,
    /// `queued|running|succeeded|failed|cancelled|timed_out`
    pub status: String,
    #[schema(value_type = Object)]
    pub input: Value,
    /// The outputs by node id; null until the run ends.
    #[schema(value_type = Option<Object>)]
    pub output: Option<Value>,
    pub error: Option<RunErrorBody>,
    pub created_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nodes: Option<Vec<NodeRunResponse>>,
}

impl From<Run> for RunResponse {
    fn from(r: Run) -> Self {
        Self {
            id: r.id,
            pipeline_id: r.pipeline_id,
            pipeline_version: r.pipeline_version,
            status: r.status.as_str().to_owned(),
            input: r.input,
            output: r.output,
            error: r.error.map(Into::into),
            created_at: r.created_at,
            started_at: r.started_at,
            finished_at: r.finished_at,
            nodes: None,
        }
    }
}

impl From<RunDetail> for RunResponse {
    fn from(d: RunDetail) -> Self {
        let nodes = d.all_nodes().into_iter().map(Into::into).collect();
        let mut r = RunResponse::from(d.run);
        r.nodes = Some(nodes);
        r
    }
}

#[derive(Serialize, ToSchema)]
pub struct RunPage {
    pub items: Vec<RunResponse>,
    pub next_cursor: Option<String>,
}

fn too_large(max: usize) -> ApiError {
    ApiError::bad_request(
        codes::PAYLOAD_TOO_LARGE,
        format!("the request body must be at most {max} bytes"),
    )
}

/// Reads a body of at most `max` bytes (the route's own limit): refused from `Content-Length`
/// before reading, or as soon as the bytes read pass the limit.
async fn read_body(
    req: &HttpRequest,
    mut payload: web::Payload,
    max: usize,
) -> Result<web::BytesMut, ApiError> {
    let declared = req
        .headers()
        .get(actix_web::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > max) {
        return Err(too_large(max));
    }
    let mut buf = web::BytesMut::with_capacity(declared.unwrap_or(0).min(max));
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(|e| ApiError::bad_request(codes::INVALID_BODY, e.to_string()))?;
        if buf.len() + chunk.len() > max {
            return Err(too_large(max));
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(buf)
}

/// Parses a JSON body read by [`read_body`]: 400 for malformed JSON or a non-JSON content type,
/// 422 naming the field for JSON of the wrong shape.
fn parse_body<T: DeserializeOwned>(req: &HttpRequest, body: &[u8]) -> Result<T, ApiError> {
    if let Some(ct) = req.headers().get(actix_web::http::header::CONTENT_TYPE)
        && !ct
            .to_str()
            .unwrap_or("")
            .to_ascii_lowercase()
            .contains("json")
    {
        return Err(ApiError::bad_request(
            codes::UNSUPPORTED_MEDIA_TYPE,
            "expected Content-Type: application/json",
        ));
    }
    // Parsed as a value first, so a NUL anywhere is refused exactly as `Json<T>` refuses it.
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(codes::INVALID_JSON, format!("malformed JSON: {e}")))?;
    crate::json::checked(value)
}

#[utoipa::path(post, path = "/api/v1/pipelines", tag = "pipelines", request_body = CreatePipelineBody,
    responses((status = 201, body = PipelineResponse),
              (status = 422, description = "validation_failed or cycle_detected")),
    security(("bearer" = [])))]
pub async fn create(
    user: AuthUser,
    state: web::Data<AppState>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let body = read_body(&req, payload, state.pipelines.limits().max_definition_bytes).await?;
    let b: CreatePipelineBody = parse_body(&req, &body)?;
    drop(body);
    let p = state
        .pipelines
        .create(
            user.id,
            CreatePipeline {
                name: b.name,
                description: b.description,
                definition: PipelineDefinition {
                    nodes: b.nodes,
                    edges: b.edges,
                    timeout_ms: b.timeout_ms,
                },
            },
        )
        .await?;
    Ok(HttpResponse::Created().json(PipelineResponse::from(p)))
}

#[utoipa::path(get, path = "/api/v1/pipelines", tag = "pipelines", params(PageQuery),
    responses((status = 200, body = PipelinePage)), security(("bearer" = [])))]
pub async fn list(
    user: AuthUser,
    state: web::Data<AppState>,
    q: web::Query<PageQuery>,
) -> Result<HttpResponse, ApiError> {
    let page = state
        .pipelines
        .list(user.id, q.to_page_request()?)
        .await?
        .map(PipelineResponse::from);
    Ok(HttpResponse::Ok().json(PipelinePage {
        items: page.items,
        next_cursor: page.next_cursor,
    }))
}

#[utoipa::path(get, path = "/api/v1/pipelines/{id}", tag = "pipelines",
    responses((status = 200, body = PipelineResponse), (status = 404)), security(("bearer" = [])))]
pub async fn get(
    user: AuthUser,
    state: web::Data<AppState>,
    id: web::Path<Uuid>,
) -> Result<HttpResponse, ApiError> {
    let p = state.pipelines.get(user.id, *id).await?;
    Ok(HttpResponse::Ok().json(PipelineResponse::from(p)))
}

#[utoipa::path(patch, path = "/api/v1/pipelines/{id}", tag = "pipelines", request_body = PatchPipelineBody,
    responses((status = 200, body = PipelineResponse), (status = 404), (status = 422)),
    security(("bearer" = [])))]
pub async fn update(
    user: AuthUser,
    state: web::Data<AppState>,
    id: web::Path<Uuid>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let body = read_body(&req, payload, state.pipelines.limits().max_definition_bytes).await?;
    let b: PatchPipelineBody = parse_body(&req, &body)?;
    drop(body);
    let p = state
        .pipelines
        .update(
            user.id,
            *id,
            PatchPipeline {
                name: b.name,
                description: b.description,
                nodes: b.nodes,
                edges: b.edges,
                timeout_ms: b.timeout_ms,
            },
        )
        .await?;
    Ok(HttpResponse::Ok().json(PipelineResponse::from(p)))
}

#[utoipa::path(delete, path = "/api/v1/pipelines/{id}", tag = "pipelines",
    responses((status = 204), (status = 404)), security(("bearer" = [])))]
pub async fn delete(
    user: AuthUser,
    state: web::Data<AppState>,
    id: web::Path<Uuid>,
) -> Result<HttpResponse, ApiError> {
    state.pipelines.delete(user.id, *id).await?;
    Ok(HttpResponse::NoContent().finish())
}

#[utoipa::path(post, path = "/api/v1/pipelines/{id}/runs", tag = "pipelines", request_body = StartRunBody,
    responses((status = 202, body = RunResponse, description = "queued"), (status = 404),
              (status = 400, description = "malformed JSON body"),
              (status = 422, description = "input is not a JSON object, or too large")),
    security(("bearer" = [])))]
pub async fn start_run(
    user: AuthUser,
    state: web::Data<AppState>,
    id: web::Path<Uuid>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    // An empty body means `{}` input; anything else must be a well-formed JSON object.
    let body = read_body(&req, payload, crate::MAX_JSON_BYTES).await?;
    let input = if body.iter().all(u8::is_ascii_whitespace) {
        None
    } else {
        parse_body::<StartRunBody>(&req, &body)?.input
    }
    .unwrap_or_else(|| Value::Object(Default::default()));
    if !input.is_object() {
        return Err(ApiError::validation(vec![FieldProblem::new(
            "/input",
            "must be a JSON object",
        )]));
    }
    let run = state.pipelines.start_run(user.id, *id, input).await?;
    Ok(HttpResponse::Accepted().json(RunResponse::from(run)))
}

#[utoipa::path(get, path = "/api/v1/pipelines/{id}/runs", tag = "pipelines", params(PageQuery),
    responses((status = 200, body = RunPage), (status = 404)), security(("bearer" = [])))]
pub async fn list_runs(
    user: AuthUser,
    state: web::Data<AppState>,
    id: web::Path<Uuid>,
    q: web::Query<PageQuery>,
) -> Result<HttpResponse, ApiError> {
    let page = state
        .pipelines
        .list_runs(user.id, *id, q.to_page_request()?)
        .await?
        .map(RunResponse::from);
    Ok(HttpResponse::Ok().json(RunPage {
        items: page.items,
        next_cursor: page.next_cursor,
    }))
}

#[utoipa::path(get, path = "/api/v1/runs/{id}", tag = "pipelines",
    responses((status = 200, body = RunResponse), (status = 404)), security(("bearer" = [])))]
pub async fn get_run(
    user: AuthUser,
    state: web::Data<AppState>,
    id: web::Path<Uuid>,
) -> Result<HttpResponse, ApiError> {
    let d = state.pipelines.get_run(user.id, *id).await?;
    Ok(HttpResponse::Ok().json(RunResponse::from(d)))
}

#[utoipa::path(post, path = "/api/v1/runs/{id}/cancel", tag = "pipelines",
    responses((status = 202), (status = 404), (status = 409, description = "run_finished")),
    security(("bearer" = [])))]
pub async fn cancel_run(
    user: AuthUser,
    state: web::Data<AppState>,
    id: web::Path<Uuid>,
) -> Result<HttpResponse, ApiError> {
    state.pipelines.cancel(user.id, *id).await?;
    Ok(HttpResponse::Accepted().json(serde_json::json!({"id": *id, "cancel_requested": true})))
}

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/pipelines", web::post().to(create))
        .route("/pipelines", web::get().to(list))
        .route("/pipelines/{id}", web::get().to(get))
        .route("/pipelines/{id}", web::patch().to(update))
        .route("/pipelines/{id}", web::delete().to(delete))
        .route("/pipelines/{id}/runs", web::post().to(start_run))
        .route("/pipelines/{id}/runs", web::get().to(list_runs))
        .route("/runs/{id}", web::get().to(get_run))
        .route("/runs/{id}/cancel", web::post().to(cancel_run));
}

#[derive(utoipa::OpenApi)]
#[openapi(
    paths(create, list, get, update, delete, start_run, list_runs, get_run, cancel_run),
    tags((name = "pipelines"))
)]
struct Doc;

pub fn openapi() -> utoipa::openapi::OpenApi {
    <Doc as utoipa::OpenApi>::openapi()
}
