//! Errors of building the registry (not of invoking tools: those are
//! [`gathering_domain::tools::ToolError`]).

use gathering_domain::codes;
use gathering_domain::{ErrorCode, ErrorKind};

#[derive(Debug, thiserror::Error)]
pub enum ToolsError {
    #[error("tool `{0}` is already registered")]
    Duplicate(String),
    #[error("parameter schema of tool `{tool}` does not compile: {message}")]
    InvalidSchema { tool: String, message: String },
    #[error("invalid tools configuration: {0}")]
    Config(String),
}

impl ErrorCode for ToolsError {
    fn kind(&self) -> ErrorKind {
        ErrorKind::Internal
    }
    fn code(&self) -> &'static str {
        codes::INTERNAL
    }
}
