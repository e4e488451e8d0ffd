//! The port through which pipelines, schedules and agents invoke tools.

use crate::codes;
use crate::error::{ErrorCode, ErrorKind, FieldProblem};
use async_trait::async_trait;
use serde_json::Value;
use uuid::Uuid;

/// Who invokes a tool and on whose behalf; tools use it for scoping (projects, notifications).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToolContext {
    pub user_id: Uuid,
    pub is_admin: bool,
    /// Stable across retries and crash-resumes of the same logical call (`run_id:node_id`).
    pub idempotency_key: Option<String>,
    pub request_id: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ToolError {
    #[error("unknown tool `{0}`")]
    UnknownTool(String),
    #[error("invalid tool parameters")]
    InvalidParams(Vec<FieldProblem>),
    #[error("{0}")]
    Forbidden(String),
    /// A project path that leaves the project root (API.md: 403 `path_forbidden`).
    #[error("{0}")]
    PathForbidden(String),
    #[error("tool timed out after {0} ms")]
    Timeout(u64),
    /// The tool's output (or a query result on its way to becoming one) is larger or deeper
    /// than the configured bound; nothing of it is returned.
    #[error("{0}")]
    OutputTooLarge(String),
    /// The tool ran and failed. `retryable`: connection errors, timeouts, 429, 5xx.
    #[error("{message}")]
    Failed {
        message: String,
        retryable: bool,
        status: Option<u16>,
    },
}

impl ToolError {
    pub fn retryable(&self) -> bool {
        matches!(
            self,
            ToolError::Timeout(_)
                | ToolError::Failed {
                    retryable: true,
                    ..
                }
        )
    }
    pub fn failed(message: impl Into<String>) -> Self {
        ToolError::Failed {
            message: message.into(),
            retryable: false,
            status: None,
        }
    }
}

impl ErrorCode for ToolError {
    fn kind(&self) -> ErrorKind {
        match self {
            ToolError::UnknownTool(_) => ErrorKind::NotFound,
            ToolError::InvalidParams(_) => ErrorKind::Validation,
            ToolError::Forbidden(_) | ToolError::PathForbidden(_) => ErrorKind::Forbidden,
            // A tool that ran and failed is the caller's input problem, reported as 422 with
            // the tool's message (it never carries server internals).
            ToolError::Timeout(_) | ToolError::Failed { .. } | ToolError::OutputTooLarge(_) => {
                ErrorKind::Validation
            }
        }
    }
    fn code(&self) -> &'static str {
        match self {
            ToolError::UnknownTool(_) => codes::NOT_FOUND,
            ToolError::InvalidParams(_) => codes::VALIDATION_FAILED,
            ToolError::Forbidden(_) => codes::FORBIDDEN,
            ToolError::PathForbidden(_) => codes::PATH_FORBIDDEN,
            ToolError::Timeout(_) => codes::TOOL_TIMEOUT,
            ToolError::Failed { .. } => codes::TOOL_FAILED,
            ToolError::OutputTooLarge(_) => codes::OUTPUT_TOO_LARGE,
        }
    }
    fn details(&self) -> Vec<FieldProblem> {
        match self {
            ToolError::InvalidParams(d) => d.clone(),
            _ => Vec::new(),
        }
    }
}

#[async_trait]
pub trait ToolInvoker: Send + Sync {
    async fn invoke(
        &self,
        ctx: &ToolContext,
        name: &str,
        params: Value,
    ) -> Result<Value, ToolError>;
}
