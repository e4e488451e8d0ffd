//! The one place where errors become HTTP responses.
//!
//! Every crate's error enum implements [`ErrorCode`]; `?` turns any of them into [`ApiError`]
//! (blanket `From`). The status comes from the error's [`ErrorKind`] here and nowhere else. The
//! request-id middleware completes the body with the request id and logs the cause chain of
//! 5xx answers once ([`crate::middleware`]); a 500 body never carries internal detail.

use actix_web::http::StatusCode;
use actix_web::http::header::{self, HeaderValue};
use actix_web::{HttpResponse, ResponseError};
use gathering_domain::codes;
use gathering_domain::{ErrorCode, ErrorKind, FieldProblem};
use serde::Serialize;
use std::fmt;
use std::time::Duration;

pub struct ApiError {
    pub kind: ErrorKind,
    pub code: &'static str,
    pub message: String,
    pub details: Vec<FieldProblem>,
    pub retry_after: Option<Duration>,
    /// The original error, kept for the log; never sent to the client.
    pub source: Option<Box<dyn std::error::Error + Send + Sync>>,
}

impl ApiError {
    pub fn new(kind: ErrorKind, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            kind,
            code,
            message: message.into(),
            details: Vec::new(),
            retry_after: None,
            source: None,
        }
    }
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(ErrorKind::BadRequest, code, message)
    }
    pub fn not_found() -> Self {
        Self::new(ErrorKind::NotFound, codes::NOT_FOUND, "not found")
    }
    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Unauthorized, codes::UNAUTHORIZED, message)
    }
    pub fn forbidden(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Forbidden, code, message)
    }
    pub fn validation(details: Vec<FieldProblem>) -> Self {
        let mut e = Self::new(
            ErrorKind::Validation,
            codes::VALIDATION_FAILED,
            "the request is invalid",
        );
        e.details = details;
        e
    }
    pub fn rate_limited(retry_after: Duration) -> Self {
        let mut e = Self::new(
            ErrorKind::RateLimited,
            codes::RATE_LIMITED,
            "too many requests",
        );
        e.retry_after = Some(retry_after);
        e
    }
    /// 429 `quota_exceeded`: a per-user (or per-instance) limit is reached; `retry_after`
    /// when waiting helps.
    pub fn quota_exceeded(message: impl Into<String>, retry_after: Option<Duration>) -> Self {
        let mut e = Self::new(ErrorKind::RateLimited, codes::QUOTA_EXCEEDED, message);
        e.retry_after = retry_after;
        e
    }
    pub fn internal(source: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        let mut e = Self::new(ErrorKind::Internal, codes::INTERNAL, "internal error");
        e.source = Some(source.into());
        e
    }

    /// The error for a response that was built without an error value (a 405 from routing,
    /// an extractor's own 4xx/5xx): the generic code of its status.
    pub fn for_status(status: StatusCode) -> Self {
        let (kind, code) = match status.as_u16() {
            400 => (ErrorKind::BadRequest, codes::BAD_REQUEST),
            401 => (ErrorKind::Unauthorized, codes::UNAUTHORIZED),
            403 => (ErrorKind::Forbidden, codes::FORBIDDEN),
            404 => (ErrorKind::NotFound, codes::NOT_FOUND),
            405 => (ErrorKind::BadRequest, codes::METHOD_NOT_ALLOWED),
            409 => (ErrorKind::Conflict, codes::CONFLICT),
            413 => (ErrorKind::BadRequest, codes::PAYLOAD_TOO_LARGE),
            415 => (ErrorKind::BadRequest, codes::UNSUPPORTED_MEDIA_TYPE),
            422 => (ErrorKind::Validation, codes::VALIDATION_FAILED),
            429 => (ErrorKind::RateLimited, codes::RATE_LIMITED),
            503 => (ErrorKind::Unavailable, codes::UNAVAILABLE),
            s if s >= 500 => (ErrorKind::Internal, codes::INTERNAL),
            _ => (ErrorKind::BadRequest, codes::BAD_REQUEST),
        };
        let message = match kind {
            ErrorKind::Internal => "internal error",
            _ => status.canonical_reason().unwrap_or("error"),
        };
        Self::new(kind, code, message.to_lowercase())
    }

    pub fn status(&self) -> StatusCode {
        status_of(self.kind)
    }

    /// The JSON body; `request_id` is filled in by the middleware.
    pub fn body(&self, request_id: Option<&str>) -> serde_json::Value {
        serde_json::json!({
            "error": ErrorBody {
                code: self.code,
                message: &self.message,
                details: &self.details,
                request_id,
            }
        })
    }

    /// The cause chain, for the log.
    pub fn cause_chain(&self) -> String {
        let mut out = format!("{}: {}", self.code, self.message);
        let mut next: Option<&(dyn std::error::Error + 'static)> = match &self.source {
            Some(s) => Some(s.as_ref()),
            None => None,
        };
        while let Some(e) = next {
            out.push_str(": ");
            out.push_str(&e.to_string());
            next = e.source();
        }
        out
    }
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    code: &'a str,
    message: &'a str,
    details: &'a [FieldProblem],
    request_id: Option<&'a str>,
}

/// ErrorKind → HTTP status: the single mapping.
pub fn status_of(kind: ErrorKind) -> StatusCode {
    match kind {
        ErrorKind::BadRequest => StatusCode::BAD_REQUEST,
        ErrorKind::Unauthorized => StatusCode::UNAUTHORIZED,
        ErrorKind::Forbidden => StatusCode::FORBIDDEN,
        ErrorKind::NotFound => StatusCode::NOT_FOUND,
        ErrorKind::Conflict => StatusCode::CONFLICT,
        ErrorKind::Validation => StatusCode::UNPROCESSABLE_ENTITY,
        ErrorKind::RateLimited => StatusCode::TOO_MANY_REQUESTS,
        ErrorKind::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        ErrorKind::Internal => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

impl<E> From<E> for ApiError
where
    E: ErrorCode + Send + Sync + 'static,
{
    fn from(e: E) -> Self {
        let kind = e.kind();
        let message = e.public_message();
        // API.md: every 429 and 503 carries Retry-After; errors that know no better (a
        // provider's 429 without the header, a pool timeout) get one second.
        let retry_after = e.retry_after().or(match kind {
            ErrorKind::Unavailable | ErrorKind::RateLimited => Some(Duration::from_secs(1)),
            _ => None,
        });
        ApiError {
            kind,
            code: e.code(),
            message,
            details: e.details(),
            retry_after,
            source: Some(Box::new(e)),
        }
    }
}

impl fmt::Debug for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.cause_chain())
    }
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        self.status()
    }

    fn error_response(&self) -> HttpResponse {
        let mut res = HttpResponse::build(self.status());
        if let Some(after) = self.retry_after {
            let secs = after.as_secs().max(1);
            if let Ok(v) = HeaderValue::from_str(&secs.to_string()) {
                res.insert_header((header::RETRY_AFTER, v));
            }
        }
        res.json(self.body(None))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("secret db detail")]
    struct Boom;
    impl ErrorCode for Boom {
        fn kind(&self) -> ErrorKind {
            ErrorKind::Internal
        }
        fn code(&self) -> &'static str {
            codes::INTERNAL
        }
    }

    #[test]
    fn internal_errors_hide_their_detail_from_the_body() {
        let e: ApiError = Boom.into();
        assert_eq!(e.status(), StatusCode::INTERNAL_SERVER_ERROR);
        let body = e.body(Some("rid")).to_string();
        assert!(!body.contains("secret"), "{body}");
        assert!(body.contains("rid"));
        assert!(e.cause_chain().contains("secret db detail"));
    }

    #[derive(Debug, thiserror::Error)]
    #[error("upstream said slow down")]
    struct Upstream429;
    impl ErrorCode for Upstream429 {
        fn kind(&self) -> ErrorKind {
            ErrorKind::RateLimited
        }
        fn code(&self) -> &'static str {
            codes::PROVIDER_RATE_LIMITED
        }
    }

    #[test]
    fn a_429_without_a_known_delay_still_carries_retry_after() {
        let e: ApiError = Upstream429.into();
        let res = e.error_response();
        assert_eq!(res.status().as_u16(), 429);
        assert_eq!(
            res.headers()
                .get(header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok()),
            Some("1")
        );
    }

    #[test]
    fn the_error_code_table_of_api_md_lists_exactly_the_catalogue() {
        let doc = include_str!("../../../docs/api.md");
        let section = doc
            .split("### Error codes")
            .nth(1)
            .unwrap_or_default()
            .split("\n#")
            .next()
            .unwrap_or_default();
        let listed: Vec<&str> = section
            .lines()
            .filter_map(|l| l.strip_prefix("| `"))
            .filter_map(|l| l.split('`').next())
            .collect();
        let mut sorted_listed = listed.clone();
        sorted_listed.sort_unstable();
        sorted_listed.dedup();
        assert_eq!(sorted_listed.len(), listed.len(), "a code is listed twice");
        let mut all: Vec<&str> = codes::ALL.to_vec();
        all.sort_unstable();
        assert_eq!(
            sorted_listed, all,
            "docs/api.md and gathering_domain::codes differ"
        );
    }

    #[test]
    fn responses_without_an_error_value_get_the_generic_code_of_their_status() {
        let e = ApiError::for_status(StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(e.code, codes::METHOD_NOT_ALLOWED);
        assert_eq!(
            ApiError::for_status(StatusCode::BAD_GATEWAY).code,
            codes::INTERNAL
        );
        assert_eq!(
            ApiError::for_status(StatusCode::IM_A_TEAPOT).code,
            codes::BAD_REQUEST
        );
    }

    #[test]
    fn every_kind_maps_to_its_status() {
        assert_eq!(status_of(ErrorKind::Validation).as_u16(), 422);
        assert_eq!(status_of(ErrorKind::RateLimited).as_u16(), 429);
        assert_eq!(status_of(ErrorKind::Unavailable).as_u16(), 503);
        assert_eq!(status_of(ErrorKind::NotFound).as_u16(), 404);
    }
}
