//! Error vocabulary shared by every crate.
//!
//! Each crate has its own `thiserror` enum and implements [`ErrorCode`] for it; the HTTP
//! layer turns any `ErrorCode` into the JSON error body in exactly one place.

use crate::codes;
use serde::Serialize;
use std::time::Duration;

/// What kind of failure this is; the HTTP layer maps each kind to one status code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// 400: the request could not be understood (malformed JSON, bad query string).
    BadRequest,
    /// 401
    Unauthorized,
    /// 403
    Forbidden,
    /// 404
    NotFound,
    /// 409
    Conflict,
    /// 422: well-formed but invalid; `details` lists the fields.
    Validation,
    /// 429: `retry_after` tells when to come back.
    RateLimited,
    /// 503: a dependency (database, provider) is unavailable right now.
    Unavailable,
    /// 500: a bug or an unexpected failure; never shown to the client beyond the request id.
    Internal,
}

/// One field-level problem of a 422 answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FieldProblem {
    /// JSON pointer of the offending value, e.g. `/nodes/2/config/timeout_ms`.
    pub field: String,
    pub problem: String,
}

impl FieldProblem {
    pub fn new(field: impl Into<String>, problem: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            problem: problem.into(),
        }
    }
}

/// Implemented by every crate's error enum.
pub trait ErrorCode: std::error::Error {
    fn kind(&self) -> ErrorKind;
    /// Stable machine-readable code, e.g. `invalid_credentials`, `cycle_detected`.
    fn code(&self) -> &'static str;
    /// Message safe to show the client. Internal errors must return a generic text.
    fn public_message(&self) -> String {
        match self.kind() {
            ErrorKind::Internal => "internal error".to_owned(),
            ErrorKind::Unavailable => "service temporarily unavailable".to_owned(),
            _ => self.to_string(),
        }
    }
    fn details(&self) -> Vec<FieldProblem> {
        Vec::new()
    }
    fn retry_after(&self) -> Option<Duration> {
        None
    }
}

/// Failure of a repository (persistence) call.
#[derive(Debug, thiserror::Error)]
pub enum RepoError {
    #[error("not found")]
    NotFound,
    /// A uniqueness or state conflict; the string names what conflicted (e.g. `email`).
    #[error("conflict on {0}")]
    Conflict(String),
    /// The storage cannot be reached right now (pool timeout, connection refused).
    #[error("storage unavailable")]
    Unavailable(#[source] Box<dyn std::error::Error + Send + Sync>),
    #[error("storage error")]
    Other(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The storage refused a value the caller sent (a NUL character, an invalid byte sequence,
    /// a value too large to index): the request is invalid, not the server broken. The text
    /// says what was refused, never internals.
    #[error("{0}")]
    Invalid(String),
    /// A per-user quota (schedules, pipelines, agents, workspace bytes) would be exceeded; the
    /// text names the quota and its limit.
    #[error("{0}")]
    QuotaExceeded(String),
}

impl ErrorCode for RepoError {
    fn kind(&self) -> ErrorKind {
        match self {
            RepoError::NotFound => ErrorKind::NotFound,
            RepoError::Conflict(_) => ErrorKind::Conflict,
            RepoError::Unavailable(_) => ErrorKind::Unavailable,
            RepoError::Other(_) => ErrorKind::Internal,
            RepoError::Invalid(_) | RepoError::QuotaExceeded(_) => ErrorKind::Validation,
        }
    }
    fn code(&self) -> &'static str {
        match self {
            RepoError::NotFound => codes::NOT_FOUND,
            RepoError::Conflict(_) => codes::CONFLICT,
            RepoError::Unavailable(_) => codes::UNAVAILABLE,
            RepoError::Other(_) => codes::INTERNAL,
            RepoError::Invalid(_) => codes::VALIDATION_FAILED,
            RepoError::QuotaExceeded(_) => codes::QUOTA_EXCEEDED,
        }
    }
    fn details(&self) -> Vec<FieldProblem> {
        match self {
            // The storage cannot tell which field it was: the pointer is the whole body.
            RepoError::Invalid(m) => vec![FieldProblem::new("", m.as_str())],
            _ => Vec::new(),
        }
    }
}
