//! Per-user provider settings. Keys are encrypted at rest and never returned, only a hint.

use crate::error::ApiError;
use crate::extract::AuthUser;
use crate::json::Json;
use crate::state::AppState;
use actix_web::{HttpResponse, web};
use gathering_domain::agents::Provider;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

#[derive(Deserialize, ToSchema)]
pub struct ProviderBody {
    /// Omitted: unchanged; empty string: removed.
    pub api_key: Option<String>,
    /// Omitted: unchanged; empty string: back to the server's.
    pub base_url: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct ProviderSettingResponse {
    pub provider: String,
    /// The endpoint in effect (yours, else the server's).
    pub base_url: String,
    pub key_set: bool,
    /// e.g. `…3456`
    pub key_hint: Option<String>,
    /// Whether the server has its own key for this provider.
    pub server_key_set: bool,
}

#[derive(Serialize, ToSchema)]
pub struct ProviderSettingList {
    pub items: Vec<ProviderSettingResponse>,
    pub next_cursor: Option<String>,
}

#[utoipa::path(put, path = "/settings/providers/{provider}", tag = "settings",
    request_body = ProviderBody,
    responses((status = 204), (status = 404, description = "unknown provider"), (status = 422)),
    security(("bearer" = [])))]
pub async fn put(
    user: AuthUser,
    state: web::Data<AppState>,
    provider: web::Path<String>,
    body: Json<ProviderBody>,
) -> Result<HttpResponse, ApiError> {
    let provider = Provider::parse(&provider.into_inner()).ok_or_else(ApiError::not_found)?;
    let b = body.into_inner();
    state
        .provider_settings
        .put(user.id, provider, b.api_key, b.base_url)
        .await?;
    Ok(HttpResponse::NoContent().finish())
}

#[utoipa::path(get, path = "/settings/providers", tag = "settings",
    responses((status = 200, body = ProviderSettingList)), security(("bearer" = [])))]
pub async fn list(user: AuthUser, state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let items = state
        .provider_settings
        .list(user.id)
        .await?
        .into_iter()
        .map(|v| ProviderSettingResponse {
            provider: v.provider.as_str().to_owned(),
            base_url: v.base_url,
            key_set: v.key_set,
            key_hint: v.key_hint,
            server_key_set: v.server_key_set,
        })
        .collect();
    Ok(HttpResponse::Ok().json(ProviderSettingList {
        items,
        next_cursor: None,
    }))
}

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/settings/providers", web::get().to(list))
        .route("/settings/providers/{provider}", web::put().to(put));
}

#[derive(utoipa::OpenApi)]
#[openapi(paths(put, list), tags((name = "settings")))]
struct SettingsDoc;

pub fn openapi() -> utoipa::openapi::OpenApi {
    <SettingsDoc as utoipa::OpenApi>::openapi()
}
