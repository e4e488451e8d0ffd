//! The HTTP layer: routes, extractors (auth, pagination), middleware (request id, rate limits,
//! security headers), the error → HTTP mapping and the OpenAPI document.
//!
//! Engine crates never depend on actix; this crate depends on the engines. The server binary
//! builds one [`AppState`] and serves [`app`]`(state)`; the tests serve the same `app`.

pub mod error;
pub mod extract;
pub mod json;
pub mod middleware;
pub mod openapi;
pub mod ratelimit;
pub mod routes;
pub mod state;
#[cfg(test)]
pub(crate) mod test_state;

use crate::error::ApiError;
use actix_web::body::MessageBody;
use actix_web::dev::{ServiceFactory, ServiceRequest, ServiceResponse};
use actix_web::error::{JsonPayloadError, PathError, QueryPayloadError};
use actix_web::middleware::from_fn;
use actix_web::{App, HttpRequest, HttpResponse, web};
use gathering_domain::FieldProblem;
use gathering_domain::codes;
use tracing_actix_web::TracingLogger;

pub use error::ApiError as Error;
pub use state::AppState;

/// Largest JSON body accepted anywhere (pipelines with many nodes fit comfortably).
pub const MAX_JSON_BYTES: usize = 1024 * 1024;

/// The whole HTTP application: request id and tracing middleware, the state (registered once),
/// every route and the JSON 404. `main` and the tests serve exactly this.
pub fn app(
    state: web::Data<AppState>,
) -> App<
    impl ServiceFactory<
        ServiceRequest,
        Config = (),
        Response = ServiceResponse<impl MessageBody>,
        Error = actix_web::Error,
        InitError = (),
    >,
> {
    App::new()
        .wrap(TracingLogger::<middleware::RequestSpan>::new())
        .wrap(from_fn(middleware::request_id))
        .app_data(state)
        .configure(configure)
        .default_service(web::to(not_found))
}

/// Mounts every route: health and docs at the root, the API under `/api/v1`. The routes read
/// their services from `web::Data<AppState>`, which [`app`] registers.
fn configure(cfg: &mut web::ServiceConfig) {
    cfg.app_data(json_config())
        .app_data(query_config())
        .app_data(path_config())
        .app_data(web::PayloadConfig::new(MAX_JSON_BYTES))
        .service(routes::health::live)
        .service(routes::health::ready)
        .service(openapi::docs())
        .service(
            web::scope("/api/v1")
                .route("/openapi.json", web::get().to(openapi::json))
                .configure(routes::auth::configure)
                .configure(routes::projects::configure)
                .configure(routes::tools::configure)
                .configure(routes::notifications::configure)
                .configure(routes::agents::configure)
                .configure(routes::circles::configure)
                .configure(routes::settings::configure)
                .configure(routes::pipelines::configure)
                .configure(routes::schedules::configure)
                .configure(routes::ws::configure),
        );
}

/// Answers every unknown route with the JSON 404.
pub async fn not_found() -> Result<HttpResponse, ApiError> {
    Err(ApiError::not_found())
}

fn json_config() -> web::JsonConfig {
    web::JsonConfig::default()
        .limit(MAX_JSON_BYTES)
        .error_handler(|err, _req: &HttpRequest| json_error(err).into())
}

pub(crate) fn json_error(err: JsonPayloadError) -> ApiError {
    match err {
        JsonPayloadError::Deserialize(e) if e.is_data() => {
            // Wrong type or missing field: the request is well-formed JSON but invalid.
            let field = e
                .to_string()
                .split('`')
                .nth(1)
                .map(|f| format!("/{f}"))
                .unwrap_or_default();
            ApiError::validation(vec![FieldProblem::new(field, e.to_string())])
        }
        JsonPayloadError::Deserialize(e) => {
            ApiError::bad_request(codes::INVALID_JSON, format!("malformed JSON: {e}"))
        }
        JsonPayloadError::OverflowKnownLength { .. } | JsonPayloadError::Overflow { .. } => {
            ApiError::bad_request(codes::PAYLOAD_TOO_LARGE, "request body is too large")
        }
        JsonPayloadError::ContentType => ApiError::bad_request(
            codes::UNSUPPORTED_MEDIA_TYPE,
            "expected Content-Type: application/json",
        ),
        other => ApiError::bad_request(codes::INVALID_BODY, other.to_string()),
    }
}

fn query_config() -> web::QueryConfig {
    web::QueryConfig::default().error_handler(|err, _req| {
        let message = match &err {
            QueryPayloadError::Deserialize(e) => e.to_string(),
            other => other.to_string(),
        };
        ApiError::bad_request(codes::INVALID_QUERY, message).into()
    })
}

fn path_config() -> web::PathConfig {
    // A malformed id in a URL names nothing that exists.
    web::PathConfig::default().error_handler(|_err: PathError, _req| ApiError::not_found().into())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use crate::ratelimit::{RateLimitSettings, TrustedProxies};
    use crate::test_state::test_state;
    use actix_web::test::{TestRequest, call_service, init_service};
    use std::net::SocketAddr;

    fn login(peer: &str, forwarded: Option<&str>) -> TestRequest {
        let mut r = TestRequest::post()
            .uri("/api/v1/auth/login")
            .peer_addr(peer.parse::<SocketAddr>().unwrap())
            .set_json(serde_json::json!({"email": "nobody@example.com", "password": "x"}));
        if let Some(f) = forwarded {
            r = r.insert_header(("x-forwarded-for", f));
        }
        r
    }

    fn one_per_minute() -> RateLimitSettings {
        RateLimitSettings {
            auth_per_minute: 1,
            ..Default::default()
        }
    }

    #[actix_web::test]
    async fn the_auth_tier_limits_an_app_built_from_the_state() {
        let (state, _db) = test_state(one_per_minute(), TrustedProxies::default()).await;
        let app = init_service(app(state)).await;
        let first = call_service(&app, login("10.0.0.1:4000", None).to_request()).await;
        assert_ne!(first.status().as_u16(), 429);
        let second = call_service(&app, login("10.0.0.1:4000", None).to_request()).await;
        assert_eq!(second.status().as_u16(), 429);
        assert!(second.headers().contains_key("retry-after"));
    }

    #[actix_web::test]
    async fn a_trusted_proxy_forwarded_address_keys_the_auth_tier() {
        let proxy = "10.0.0.9".parse().unwrap();
        let (state, _db) = test_state(one_per_minute(), TrustedProxies(vec![proxy])).await;
        let app = init_service(app(state)).await;
        let a = call_service(&app, login("10.0.0.9:4000", Some("1.1.1.1")).to_request()).await;
        let b = call_service(&app, login("10.0.0.9:4000", Some("2.2.2.2")).to_request()).await;
        assert_ne!(a.status().as_u16(), 429);
        assert_ne!(b.status().as_u16(), 429, "another client behind the proxy");
        let again = call_service(&app, login("10.0.0.9:4000", Some("1.1.1.1")).to_request()).await;
        assert_eq!(again.status().as_u16(), 429);
    }
}
