//! Errors of the providers, settings and agent runtime.

use gathering_domain::agents::AgentError;
use gathering_domain::codes;
use gathering_domain::{ErrorCode, ErrorKind, FieldProblem, RepoError};
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum LlmError {
    #[error("{provider} rejected the credentials: {message}")]
    Unauthorized { provider: String, message: String },
    #[error("{provider} rate limit exceeded")]
    RateLimited {
        provider: String,
        retry_after: Option<Duration>,
    },
    #[error("{provider} is failing repeatedly for this endpoint and key; calls are paused for {}s", retry_after.as_secs().max(1))]
    CircuitOpen {
        provider: String,
        retry_after: Duration,
    },
    #[error("{provider} answered HTTP {status}: {message}")]
    Status {
        provider: String,
        status: u16,
        message: String,
    },
    #[error("{provider} did not answer in time")]
    Timeout { provider: String },
    #[error("cannot reach {provider}: {message}")]
    Connect { provider: String, message: String },
    #[error("{provider} sent a malformed response: {message}")]
    Malformed { provider: String, message: String },
    /// No key (or endpoint) for the provider: clear message, never a fake answer.
    #[error("{0}")]
    NotConfigured(String),
    /// A user's own `base_url` points at (or resolves to) a loopback, private, link-local or
    /// otherwise non-public address: nothing was sent.
    #[error("{0}")]
    UrlRefused(String),
    #[error("not found")]
    NotFound,
    #[error("invalid input")]
    Validation(Vec<FieldProblem>),
    /// The server key or a stored ciphertext is unusable.
    #[error("secret key error: {0}")]
    Key(String),
    #[error(transparent)]
    Repo(#[from] RepoError),
}

impl LlmError {
    pub fn malformed(provider: impl Into<String>, message: impl Into<String>) -> Self {
        LlmError::Malformed {
            provider: provider.into(),
            message: message.into(),
        }
    }

    pub fn validation(field: &str, problem: &str) -> Self {
        LlmError::Validation(vec![FieldProblem::new(field, problem)])
    }

    /// Worth trying again later (rate limits, outages, timeouts).
    pub fn retryable(&self) -> bool {
        match self {
            LlmError::RateLimited { .. }
            | LlmError::CircuitOpen { .. }
            | LlmError::Timeout { .. }
            | LlmError::Connect { .. } => true,
            LlmError::Status { status, .. } => *status >= 500,
            LlmError::Repo(RepoError::Unavailable(_)) => true,
            _ => false,
        }
    }

    fn is_provider_failure(&self) -> bool {
        matches!(
            self,
            LlmError::Unauthorized { .. }
                | LlmError::RateLimited { .. }
                | LlmError::CircuitOpen { .. }
                | LlmError::Status { .. }
                | LlmError::Timeout { .. }
                | LlmError::Connect { .. }
                | LlmError::Malformed { .. }
        )
    }
}

impl ErrorCode for LlmError {
    fn kind(&self) -> ErrorKind {
        match self {
            LlmError::Unauthorized { .. } | LlmError::NotConfigured(_) => ErrorKind::Validation,
            LlmError::Validation(_) | LlmError::UrlRefused(_) => ErrorKind::Validation,
            LlmError::RateLimited { .. } => ErrorKind::RateLimited,
            LlmError::Status { status, .. } if *status < 500 => ErrorKind::Validation,
            LlmError::CircuitOpen { .. }
            | LlmError::Status { .. }
            | LlmError::Timeout { .. }
            | LlmError::Connect { .. }
            | LlmError::Malformed { .. } => ErrorKind::Unavailable,
            LlmError::NotFound => ErrorKind::NotFound,
            LlmError::Key(_) => ErrorKind::Internal,
            LlmError::Repo(e) => e.kind(),
        }
    }

    fn code(&self) -> &'static str {
        match self {
            LlmError::Unauthorized { .. } => codes::PROVIDER_UNAUTHORIZED,
            LlmError::RateLimited { .. } => codes::PROVIDER_RATE_LIMITED,
            LlmError::CircuitOpen { .. } => codes::PROVIDER_CIRCUIT_OPEN,
            LlmError::Status { .. } => codes::PROVIDER_ERROR,
            LlmError::Timeout { .. } => codes::PROVIDER_TIMEOUT,
            LlmError::Connect { .. } => codes::PROVIDER_UNREACHABLE,
            LlmError::Malformed { .. } => codes::PROVIDER_MALFORMED_RESPONSE,
            LlmError::NotConfigured(_) => codes::PROVIDER_NOT_CONFIGURED,
            LlmError::NotFound => codes::NOT_FOUND,
            LlmError::Validation(_) | LlmError::UrlRefused(_) => codes::VALIDATION_FAILED,
            LlmError::Key(_) => codes::INTERNAL,
            LlmError::Repo(e) => e.code(),
        }
    }

    /// Provider failures are the user's business (their key, their provider): say what happened.
    fn public_message(&self) -> String {
        if self.is_provider_failure() {
            return self.to_string();
        }
        match self.kind() {
            ErrorKind::Internal => "internal error".to_owned(),
            ErrorKind::Unavailable => "service temporarily unavailable".to_owned(),
            _ => self.to_string(),
        }
    }

    fn details(&self) -> Vec<FieldProblem> {
        match self {
            LlmError::Validation(d) => d.clone(),
            LlmError::UrlRefused(m) => vec![FieldProblem::new("/base_url", m.as_str())],
            _ => Vec::new(),
        }
    }

    fn retry_after(&self) -> Option<Duration> {
        match self {
            LlmError::RateLimited { retry_after, .. } => *retry_after,
            LlmError::CircuitOpen { retry_after, .. } => Some(*retry_after),
            _ => None,
        }
    }
}

impl From<LlmError> for AgentError {
    fn from(e: LlmError) -> Self {
        match e {
            LlmError::NotFound => AgentError::NotFound,
            LlmError::NotConfigured(m) => AgentError::NotConfigured(m),
            other => AgentError::Provider {
                retryable: other.retryable(),
                message: other.public_message(),
            },
        }
    }
}
