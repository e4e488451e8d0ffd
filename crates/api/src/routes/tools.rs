//! Tools: the registry's listing and direct invocation.

use crate::error::ApiError;
use crate::extract::AuthUser;
use crate::json::Json;
use crate::middleware::RequestId;
use crate::state::AppState;
use actix_web::{HttpMessage, HttpRequest, HttpResponse, web};
use gathering_domain::tools::ToolContext;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

/// Longest `Idempotency-Key` header honoured.
const MAX_IDEMPOTENCY_KEY: usize = 200;

#[derive(Serialize, ToSchema)]
pub struct ToolInfo {
    pub name: String,
    pub description: String,
    /// JSON Schema of `params`.
    #[schema(value_type = Object)]
    pub parameters: Value,
    pub is_async: bool,
    pub timeout_ms: u64,
}

#[derive(Deserialize, ToSchema)]
pub struct InvokeBody {
    /// The tool's parameters (validated against its schema before it runs).
    #[serde(default = "empty_object")]
    #[schema(value_type = Object)]
    pub params: Value,
}

fn empty_object() -> Value {
    Value::Object(serde_json::Map::new())
}

#[derive(Serialize, ToSchema)]
pub struct InvokeResponse {
    #[schema(value_type = Object)]
    pub output: Value,
}

#[utoipa::path(get, path = "/api/v1/tools", tag = "tools",
    responses((status = 200, body = [ToolInfo])), security(("bearer" = [])))]
pub async fn list(_user: AuthUser, state: web::Data<AppState>) -> HttpResponse {
    let items: Vec<ToolInfo> = state
        .tools
        .list()
        .into_iter()
        .map(|s| ToolInfo {
            name: s.name.clone(),
            description: s.description.clone(),
            parameters: s.parameters.clone(),
            is_async: s.is_async,
            timeout_ms: s.timeout_ms(),
        })
        .collect();
    HttpResponse::Ok().json(items)
}

#[utoipa::path(post, path = "/api/v1/tools/{name}/invoke", tag = "tools", request_body = InvokeBody,
    params(("name" = String, Path, description = "tool name"),
           ("Idempotency-Key" = Option<String>, Header,
            description = "retries with the same key do not repeat side effects that honour it (send_notification)")),
    responses((status = 200, body = InvokeResponse),
              (status = 403, description = "target or path not allowed"),
              (status = 404, description = "unknown tool"),
              (status = 422, description = "validation_failed (one detail per invalid parameter, before the tool runs), tool_failed or tool_timeout")),
    security(("bearer" = [])))]
pub async fn invoke(
    user: AuthUser,
    req: HttpRequest,
    state: web::Data<AppState>,
    name: web::Path<String>,
    body: Json<InvokeBody>,
) -> Result<HttpResponse, ApiError> {
    let idempotency_key = req
        .headers()
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .filter(|k| !k.is_empty() && k.len() <= MAX_IDEMPOTENCY_KEY)
        .map(|k| format!("http:{k}"));
    let ctx = ToolContext {
        user_id: user.id,
        is_admin: user.is_admin(),
        idempotency_key,
        request_id: req.extensions().get::<RequestId>().map(|r| r.0.clone()),
    };
    let output = state
        .tools
        .invoke(&ctx, &name, body.into_inner().params)
        .await?;
    Ok(HttpResponse::Ok().json(InvokeResponse { output }))
}

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/tools", web::get().to(list))
        .route("/tools/{name}/invoke", web::post().to(invoke));
}

#[derive(utoipa::OpenApi)]
#[openapi(paths(list, invoke), tags((name = "tools")))]
struct Doc;

pub fn openapi() -> utoipa::openapi::OpenApi {
    <Doc as utoipa::OpenApi>::openapi()
}
