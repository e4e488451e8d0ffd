//! The edge middleware every request passes: request id, uniform error bodies, the log line of
//! failures, panic safety net, security headers.

use crate::error::ApiError;
use actix_web::HttpMessage;
use actix_web::body::{BoxBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{self, HeaderName, HeaderValue};
use actix_web::middleware::Next;
use futures::FutureExt;
use gathering_domain::codes;
use std::panic::AssertUnwindSafe;
use tracing_actix_web::{DefaultRootSpanBuilder, RootSpanBuilder};

pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// The id of the current request: the client's `x-request-id` when it is sane, else a UUID.
#[derive(Debug, Clone)]
pub struct RequestId(pub String);

fn sane_request_id(v: &HeaderValue) -> Option<String> {
    let s = v.to_str().ok()?;
    if s.is_empty() || s.len() > 128 {
        return None;
    }
    s.bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
        .then(|| s.to_owned())
}

/// Runs before the tracing middleware so the root span carries the request id.
pub async fn request_id(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    let rid = req
        .headers()
        .get(REQUEST_ID_HEADER)
        .and_then(sane_request_id)
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    req.extensions_mut().insert(RequestId(rid.clone()));
    let path = req.path().to_owned();

    // Handlers' and extractors' errors arrive as responses; an `Err` here can only come from a
    // middleware, and actix renders it through `ResponseError` (our JSON body).
    let res = if let Some(refused) = nul_in_target(&req) {
        // No route may see a NUL (`%00`) in its path segments or query parameters: PostgreSQL
        // cannot store it, so it could only end as a 500 further in.
        req.error_response(refused).map_into_boxed_body()
    } else {
        match AssertUnwindSafe(next.call(req)).catch_unwind().await {
            Ok(Ok(res)) => res.map_into_boxed_body(),
            Ok(Err(err)) => return Err(err),
            Err(_) => {
                tracing::error!(request_id = %rid, "handler panicked");
                return Err(ApiError::internal("handler panicked").into());
            }
        }
    };
    let mut res = complete_error(res, &rid);
    let headers = res.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&rid) {
        headers.insert(HeaderName::from_static(REQUEST_ID_HEADER), v);
    }
    security_headers(headers, &path);
    Ok(res)
}

/// A 400 when the request target's path or query string encodes a NUL character.
fn nul_in_target(req: &ServiceRequest) -> Option<ApiError> {
    if crate::json::encodes_nul(req.uri().path()) {
        return Some(ApiError::bad_request(
            codes::INVALID_PATH,
            "the URL path must not contain the NUL character (%00)",
        ));
    }
    if crate::json::encodes_nul(req.query_string()) {
        return Some(ApiError::bad_request(
            codes::INVALID_QUERY,
            "the query string must not contain the NUL character (%00)",
        ));
    }
    None
}

/// Rewrites every error response into the one JSON error shape, with the request id, and logs
/// server-side failures once with their cause chain.
fn complete_error(res: ServiceResponse<BoxBody>, rid: &str) -> ServiceResponse<BoxBody> {
    let status = res.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return res;
    }
    let api = match res.response().error() {
        Some(e) => match e.as_error::<ApiError>() {
            Some(api) => {
                if status.is_server_error() {
                    tracing::error!(request_id = %rid, error.cause_chain = %api.cause_chain(), "request failed");
                }
                Rewrite::Body(api.body(Some(rid)))
            }
            None => {
                if status.is_server_error() {
                    tracing::error!(request_id = %rid, error.cause_chain = %e, "request failed");
                }
                Rewrite::Generic
            }
        },
        // Error responses built without an error value (e.g. a 405 from routing).
        None => {
            let is_json = res
                .headers()
                .get(header::CONTENT_TYPE)
                .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
            if is_json {
                return res;
            }
            Rewrite::Generic
        }
    };
    let body = match api {
        Rewrite::Body(body) => body,
        Rewrite::Generic => {
            let e = ApiError::for_status(status);
            e.body(Some(rid))
        }
    };
    let (req, old) = res.into_parts();
    let mut builder = actix_web::HttpResponse::build(status);
    for (name, value) in old.headers() {
        if name != header::CONTENT_TYPE && name != header::CONTENT_LENGTH {
            builder.append_header((name.clone(), value.clone()));
        }
    }
    ServiceResponse::new(req, builder.json(body))
}

enum Rewrite {
    Body(serde_json::Value),
    Generic,
}

fn security_headers(h: &mut actix_web::http::header::HeaderMap, path: &str) {
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    // The interactive docs page loads its viewer script; everything else is JSON.
    if path != "/docs" {
        h.insert(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static("default-src 'none'; frame-ancestors 'none'"),
        );
    }
    if path.starts_with("/api/v1/auth/") {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        h.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    }
}

/// Root span of every request, carrying the request id so every log line of the request has it.
pub struct RequestSpan;

impl RootSpanBuilder for RequestSpan {
    fn on_request_start(request: &ServiceRequest) -> tracing::Span {
        let rid = request
            .extensions()
            .get::<RequestId>()
            .map(|r| r.0.clone())
            .unwrap_or_default();
        tracing::info_span!(
            "http_request",
            request_id = %rid,
            http.method = %request.method(),
            http.route = %request.match_pattern().unwrap_or_else(|| "unmatched".to_owned()),
            http.status_code = tracing::field::Empty,
        )
    }

    fn on_request_end<B: MessageBody>(
        span: tracing::Span,
        outcome: &Result<ServiceResponse<B>, actix_web::Error>,
    ) {
        if let Ok(res) = outcome {
            span.record("http.status_code", res.status().as_u16());
        }
        DefaultRootSpanBuilder::on_request_end(span, outcome);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_from_clients_are_sanitised() {
        assert_eq!(
            sane_request_id(&HeaderValue::from_static("abc-123_x.y:z")),
            Some("abc-123_x.y:z".to_owned())
        );
        assert_eq!(sane_request_id(&HeaderValue::from_static("a b")), None);
        assert_eq!(sane_request_id(&HeaderValue::from_static("")), None);
        let long = "a".repeat(129);
        assert_eq!(
            sane_request_id(&HeaderValue::from_str(&long).unwrap_or(HeaderValue::from_static("x"))),
            None
        );
    }
}
