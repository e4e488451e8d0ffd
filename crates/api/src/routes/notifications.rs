//! The caller's notifications.

use crate::error::ApiError;
use crate::extract::{AuthUser, PageQuery};
use crate::state::AppState;
use actix_web::{HttpResponse, web};
use chrono::{DateTime, Utc};
use gathering_domain::notifications::{Notification, NotificationRepository};
use serde::Serialize;
use std::sync::Arc;
use utoipa::ToSchema;
use uuid::Uuid;

pub type Notifications = Arc<dyn NotificationRepository>;

#[derive(Serialize, ToSchema)]
pub struct NotificationResponse {
    pub id: Uuid,
    pub channel: String,
    pub title: String,
    pub message: String,
    pub created_at: DateTime<Utc>,
    pub read_at: Option<DateTime<Utc>>,
}

impl From<Notification> for NotificationResponse {
    fn from(n: Notification) -> Self {
        Self {
            id: n.id,
            channel: n.channel,
            title: n.title,
            message: n.message,
            created_at: n.created_at,
            read_at: n.read_at,
        }
    }
}

#[derive(Serialize, ToSchema)]
pub struct NotificationPage {
    pub items: Vec<NotificationResponse>,
    pub next_cursor: Option<String>,
}

#[utoipa::path(get, path = "/api/v1/notifications", tag = "notifications", params(PageQuery),
    responses((status = 200, body = NotificationPage)), security(("bearer" = [])))]
pub async fn list(
    user: AuthUser,
    state: web::Data<AppState>,
    q: web::Query<PageQuery>,
) -> Result<HttpResponse, ApiError> {
    let page = state
        .notifications
        .list_for_user(user.id, q.to_page_request()?)
        .await?
        .map(NotificationResponse::from);
    Ok(HttpResponse::Ok().json(NotificationPage {
        items: page.items,
        next_cursor: page.next_cursor,
    }))
}

#[utoipa::path(post, path = "/api/v1/notifications/{id}/read", tag = "notifications",
    responses((status = 204), (status = 404)), security(("bearer" = [])))]
pub async fn mark_read(
    user: AuthUser,
    state: web::Data<AppState>,
    id: web::Path<Uuid>,
) -> Result<HttpResponse, ApiError> {
    state.notifications.mark_read(user.id, *id).await?;
    Ok(HttpResponse::NoContent().finish())
}

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/notifications", web::get().to(list))
        .route("/notifications/{id}/read", web::post().to(mark_read));
}

#[derive(utoipa::OpenApi)]
#[openapi(paths(list, mark_read), tags((name = "notifications")))]
struct Doc;

pub fn openapi() -> utoipa::openapi::OpenApi {
    <Doc as utoipa::OpenApi>::openapi()
}
