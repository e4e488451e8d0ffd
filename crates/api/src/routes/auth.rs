//! `/auth/*` and `/admin/audit`.

use crate::error::ApiError;
use crate::extract::{AdminUser, AuthUser, PageQuery, request_meta};
use crate::json::{Json, OptionalJson};
use crate::state::AppState;
use actix_web::{HttpRequest, HttpResponse, web};
use chrono::{DateTime, Utc};
use gathering_domain::auth::{AuditEvent, AuditFilter, AuditKind, User};
use gathering_domain::{FieldProblem, Page};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

#[derive(Debug, Deserialize, ToSchema)]
pub struct RegisterBody {
    pub email: String,
    pub password: String,
    pub name: String,
}

#[derive(Deserialize, ToSchema)]
pub struct LoginBody {
    pub email: String,
    pub password: String,
}

#[derive(Deserialize, ToSchema)]
pub struct RefreshBody {
    pub refresh_token: String,
}

#[derive(Deserialize, ToSchema, Default)]
pub struct LogoutBody {
    pub refresh_token: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct UserResponse {
    pub id: Uuid,
    pub email: String,
    pub name: String,
    pub role: String,
    pub created_at: DateTime<Utc>,
}

impl From<User> for UserResponse {
    fn from(u: User) -> Self {
        Self {
            id: u.id,
            email: u.email.as_str().to_owned(),
            name: u.name,
            role: u.role.as_str().to_owned(),
            created_at: u.created_at,
        }
    }
}

#[derive(Serialize, ToSchema)]
pub struct TokenResponse {
    pub access_token: String,
    pub refresh_token: String,
    pub token_type: String,
    pub expires_in: u64,
}

#[derive(Serialize, ToSchema)]
pub struct AuditEventResponse {
    pub id: Uuid,
    pub at: DateTime<Utc>,
    pub event: String,
    pub user_id: Option<Uuid>,
    pub email: Option<String>,
    pub ip: Option<String>,
    pub user_agent: Option<String>,
    pub success: bool,
    pub reason: Option<String>,
    pub request_id: Option<String>,
}

impl From<AuditEvent> for AuditEventResponse {
    fn from(e: AuditEvent) -> Self {
        Self {
            id: e.id,
            at: e.at,
            event: e.event.as_str().to_owned(),
            user_id: e.user_id,
            email: e.email,
            ip: e.ip,
            user_agent: e.user_agent,
            success: e.success,
            reason: e.reason,
            request_id: e.request_id,
        }
    }
}

#[derive(Serialize, ToSchema)]
pub struct AuditPage {
    pub items: Vec<AuditEventResponse>,
    pub next_cursor: Option<String>,
}

#[derive(Deserialize, utoipa::IntoParams)]
pub struct AuditQuery {
    pub event: Option<String>,
    pub user_id: Option<Uuid>,
    /// Items per page: default 50, at most 200.
    pub limit: Option<u32>,
    pub cursor: Option<String>,
}

#[utoipa::path(post, path = "/api/v1/auth/register", tag = "auth", request_body = RegisterBody,
    responses((status = 201, body = UserResponse), (status = 409, description = "email_taken"),
              (status = 422, description = "validation_failed"),
              (status = 429, description = "per-address limit (Retry-After)")))]
pub async fn register(
    req: HttpRequest,
    state: web::Data<AppState>,
    body: Json<RegisterBody>,
) -> Result<HttpResponse, ApiError> {
    let body = body.into_inner();
    let user = state
        .auth
        .register(
            &body.email,
            body.password,
            body.name,
            &request_meta(&req, &state.proxies),
        )
        .await?;
    Ok(HttpResponse::Created().json(UserResponse::from(user)))
}

#[utoipa::path(post, path = "/api/v1/auth/login", tag = "auth", request_body = LoginBody,
    responses((status = 200, body = TokenResponse), (status = 401, description = "invalid_credentials"),
              (status = 429, description = "too many failures")))]
pub async fn login(
    req: HttpRequest,
    state: web::Data<AppState>,
    body: Json<LoginBody>,
) -> Result<HttpResponse, ApiError> {
    let body = body.into_inner();
    let pair = state
        .auth
        .login(
            &body.email,
            body.password,
            &request_meta(&req, &state.proxies),
        )
        .await?;
    Ok(HttpResponse::Ok().json(TokenResponse {
        access_token: pair.access_token,
        refresh_token: pair.refresh_token,
        token_type: "Bearer".to_owned(),
        expires_in: pair.expires_in,
    }))
}

#[utoipa::path(post, path = "/api/v1/auth/refresh", tag = "auth", request_body = RefreshBody,
    responses((status = 200, body = TokenResponse), (status = 401, description = "invalid or reused token"),
              (status = 429, description = "per-address limit (Retry-After)")))]
pub async fn refresh(
    req: HttpRequest,
    state: web::Data<AppState>,
    body: Json<RefreshBody>,
) -> Result<HttpResponse, ApiError> {
    let pair = state
        .auth
        .refresh(&body.refresh_token, &request_meta(&req, &state.proxies))
        .await?;
    Ok(HttpResponse::Ok().json(TokenResponse {
        access_token: pair.access_token,
        refresh_token: pair.refresh_token,
        token_type: "Bearer".to_owned(),
        expires_in: pair.expires_in,
    }))
}

/// The optional logout body: absent (or only whitespace) is fine, anything else must be a
/// JSON object of [`LogoutBody`].
/// Revokes the access token and the refresh family it was issued from (so the refresh token
/// of this session dies even without a body), plus the refresh token in the body if given.
#[utoipa::path(post, path = "/api/v1/auth/logout", tag = "auth", request_body(content = LogoutBody, description = "optional"),
    responses((status = 204), (status = 400, description = "malformed body"), (status = 401)),
    security(("bearer" = [])))]
pub async fn logout(
    req: HttpRequest,
    user: AuthUser,
    state: web::Data<AppState>,
    body: OptionalJson<LogoutBody>,
) -> Result<HttpResponse, ApiError> {
    let refresh = body.into_inner().and_then(|b| b.refresh_token);
    state
        .auth
        .logout(&user.claims(), refresh, &request_meta(&req, &state.proxies))
        .await?;
    Ok(HttpResponse::NoContent().finish())
}

#[utoipa::path(get, path = "/api/v1/auth/me", tag = "auth",
    responses((status = 200, body = UserResponse), (status = 401)), security(("bearer" = [])))]
pub async fn me(user: AuthUser, state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let u = state.auth.me(&user.claims()).await?;
    Ok(HttpResponse::Ok().json(UserResponse::from(u)))
}

#[utoipa::path(get, path = "/api/v1/admin/audit", tag = "admin", params(AuditQuery),
    responses((status = 200, body = AuditPage), (status = 403),
              (status = 422, description = "unknown audit event")), security(("bearer" = [])))]
pub async fn audit(
    _admin: AdminUser,
    state: web::Data<AppState>,
    q: web::Query<AuditQuery>,
) -> Result<HttpResponse, ApiError> {
    let event = match q.event.as_deref() {
        None | Some("") => None,
        Some(e) => Some(AuditKind::parse(e).ok_or_else(|| {
            ApiError::validation(vec![FieldProblem::new("event", "unknown audit event")])
        })?),
    };
    let page = PageQuery {
        limit: q.limit,
        cursor: q.cursor.clone(),
    }
    .to_page_request()?;
    let events: Page<AuditEvent> = state
        .auth
        .audit_events(
            AuditFilter {
                event,
                user_id: q.user_id,
            },
            page,
        )
        .await?;
    let page = events.map(AuditEventResponse::from);
    Ok(HttpResponse::Ok().json(AuditPage {
        items: page.items,
        next_cursor: page.next_cursor,
    }))
}

/// Credential endpoints (register, login, refresh) share the per-address `auth` tier; the
/// authenticated ones (`me`, `logout`) fall under the per-user read/write tiers of [`AuthUser`].
pub fn configure(cfg: &mut web::ServiceConfig) {
    use crate::ratelimit::auth_tier;
    use actix_web::middleware::from_fn;
    cfg.service(
        web::scope("/auth")
            .service(
                web::resource("/register")
                    .wrap(from_fn(auth_tier))
                    .route(web::post().to(register)),
            )
            .service(
                web::resource("/login")
                    .wrap(from_fn(auth_tier))
                    .route(web::post().to(login)),
            )
            .service(
                web::resource("/refresh")
                    .wrap(from_fn(auth_tier))
                    .route(web::post().to(refresh)),
            )
            .route("/logout", web::post().to(logout))
            .route("/me", web::get().to(me)),
    )
    .route("/admin/audit", web::get().to(audit));
}
