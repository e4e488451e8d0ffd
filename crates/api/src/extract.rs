//! Extractors: authentication and roles in the type, request metadata, pagination.

use crate::error::ApiError;
use crate::middleware::RequestId;
use crate::ratelimit::{TrustedProxies, client_ip};
use crate::state::AppState;
use actix_web::dev::Payload;
use actix_web::http::{Method, header};
use actix_web::{FromRequest, HttpMessage, HttpRequest, web};
use chrono::{DateTime, Utc};
use gathering_auth::AccessClaims;
use gathering_domain::PageRequest;
use gathering_domain::auth::{RequestMeta, Role};
use gathering_domain::codes;
use serde::Deserialize;
use std::future::Future;
use std::pin::Pin;
use uuid::Uuid;

/// An authenticated caller. Extracting it verifies the bearer token (signature, lifetime,
/// expiry, revocation of the token and of its refresh family) and the user's current state
/// (deleted or disabled → 401; `role` is the user's role *now*, not the one in the token), and
/// applies the per-user read/write rate limit.
#[derive(Debug, Clone)]
pub struct AuthUser {
    pub id: Uuid,
    pub role: Role,
    pub jti: Uuid,
    pub issued_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    /// The refresh family the token was issued from (revoked by logout and by reuse detection).
    pub family_id: Option<Uuid>,
}

impl AuthUser {
    pub fn is_admin(&self) -> bool {
        self.role == Role::Admin
    }

    /// The verified claims this user was built from.
    pub fn claims(&self) -> AccessClaims {
        AccessClaims {
            user_id: self.id,
            role: self.role,
            jti: self.jti,
            issued_at: self.issued_at,
            expires_at: self.expires_at,
            family_id: self.family_id,
        }
    }
}

/// An authenticated admin; anyone else gets 403.
#[derive(Debug, Clone)]
pub struct AdminUser(pub AuthUser);

/// Who is calling, for the audit trail.
pub fn request_meta(req: &HttpRequest, proxies: &TrustedProxies) -> RequestMeta {
    RequestMeta {
        ip: client_ip(req, proxies).map(|ip| ip.to_string()),
        user_agent: req
            .headers()
            .get(header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .map(|s| s.chars().take(512).collect()),
        request_id: req.extensions().get::<RequestId>().map(|r| r.0.clone()),
    }
}

/// The token of an `Authorization: Bearer <token>` header.
pub(crate) fn bearer(req: &HttpRequest) -> Option<String> {
    let value = req.headers().get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim().to_owned())
        .filter(|t| !t.is_empty())
}

/// The application state [`crate::app`] registers. Every app is built by `app`, so this is
/// always there; were it not, requests fail closed (500), never unauthenticated or unlimited.
pub(crate) fn app_state(req: &HttpRequest) -> Result<web::Data<AppState>, ApiError> {
    req.app_data::<web::Data<AppState>>()
        .cloned()
        .ok_or_else(|| {
            ApiError::internal("the app state is missing: build the app with gathering_api::app")
        })
}

/// Verifies `token` as an access token for this request (used by the WebSocket route, which
/// may receive the token in the query string or the first message).
pub async fn authenticate_token(
    req: &HttpRequest,
    state: &AppState,
    token: &str,
) -> Result<AuthUser, ApiError> {
    let meta = request_meta(req, &state.proxies);
    let claims = state.auth.authenticate(token, &meta).await?;
    Ok(AuthUser {
        id: claims.user_id,
        role: claims.role,
        jti: claims.jti,
        issued_at: claims.issued_at,
        expires_at: claims.expires_at,
        family_id: claims.family_id,
    })
}

fn apply_user_limit(req: &HttpRequest, state: &AppState, user: &AuthUser) -> Result<(), ApiError> {
    let limits = &state.limits;
    let key = user.id.to_string();
    let tier = match *req.method() {
        Method::GET | Method::HEAD | Method::OPTIONS => &limits.read,
        _ => &limits.write,
    };
    tier.check(&key).map_err(ApiError::rate_limited)
}

impl FromRequest for AuthUser {
    type Error = ApiError;
    type Future = Pin<Box<dyn Future<Output = Result<Self, Self::Error>>>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let req = req.clone();
        Box::pin(async move {
            if let Some(user) = req.extensions().get::<AuthUser>().cloned() {
                return Ok(user);
            }
            let token = bearer(&req).ok_or_else(|| {
                ApiError::unauthorized("missing or malformed Authorization: Bearer header")
            })?;
            let state = app_state(&req)?;
            let user = authenticate_token(&req, &state, &token).await?;
            apply_user_limit(&req, &state, &user)?;
            req.extensions_mut().insert(user.clone());
            Ok(user)
        })
    }
}

impl FromRequest for AdminUser {
    type Error = ApiError;
    type Future = Pin<Box<dyn Future<Output = Result<Self, Self::Error>>>>;

    fn from_request(req: &HttpRequest, payload: &mut Payload) -> Self::Future {
        let user = AuthUser::from_request(req, payload);
        Box::pin(async move {
            let user = user.await?;
            if !user.is_admin() {
                return Err(ApiError::forbidden(codes::FORBIDDEN, "administrators only"));
            }
            Ok(AdminUser(user))
        })
    }
}

/// `?limit=&cursor=` of list endpoints.
#[derive(Debug, Clone, Default, Deserialize, utoipa::IntoParams)]
pub struct PageQuery {
    /// Items per page: default 50, at most 200.
    pub limit: Option<u32>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

impl PageQuery {
    pub fn to_page_request(&self) -> Result<PageRequest, ApiError> {
        let cursor = match self.cursor.as_deref() {
            None | Some("") => None,
            Some(c) => Some(
                Uuid::parse_str(c)
                    .map_err(|_| ApiError::bad_request(codes::INVALID_CURSOR, "invalid cursor"))?,
            ),
        };
        Ok(PageRequest::new(self.limit, cursor))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::test::TestRequest;

    #[test]
    fn bearer_requires_the_scheme_and_a_token() {
        let r = TestRequest::default()
            .insert_header((header::AUTHORIZATION, "Bearer abc"))
            .to_http_request();
        assert_eq!(bearer(&r).as_deref(), Some("abc"));
        let r = TestRequest::default()
            .insert_header((header::AUTHORIZATION, "Basic abc"))
            .to_http_request();
        assert_eq!(bearer(&r), None);
        let r = TestRequest::default()
            .insert_header((header::AUTHORIZATION, "Bearer "))
            .to_http_request();
        assert_eq!(bearer(&r), None);
    }

    #[test]
    fn bad_cursor_is_a_400() {
        let q = PageQuery {
            limit: Some(5),
            cursor: Some("nope".into()),
        };
        assert!(q.to_page_request().is_err());
        let q = PageQuery {
            limit: Some(500),
            cursor: None,
        };
        assert_eq!(q.to_page_request().map(|p| p.limit).ok(), Some(200));
    }
}
