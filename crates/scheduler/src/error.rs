//! The scheduler's error type.

use gathering_domain::codes;
use gathering_domain::{ErrorCode, ErrorKind, FieldProblem, RepoError};

#[derive(Debug, thiserror::Error)]
pub enum SchedulerError {
    #[error("invalid schedule")]
    Validation(Vec<FieldProblem>),
    #[error("schedule not found")]
    NotFound,
    #[error("an execution for this instant already exists; retry")]
    Conflict,
    #[error(transparent)]
    Repo(#[from] RepoError),
}

impl SchedulerError {
    pub fn invalid(field: &str, problem: impl Into<String>) -> Self {
        SchedulerError::Validation(vec![FieldProblem::new(field, problem)])
    }
}

impl ErrorCode for SchedulerError {
    fn kind(&self) -> ErrorKind {
        match self {
            SchedulerError::Validation(_) => ErrorKind::Validation,
            SchedulerError::NotFound => ErrorKind::NotFound,
            SchedulerError::Conflict => ErrorKind::Conflict,
            SchedulerError::Repo(e) => e.kind(),
        }
    }
    fn code(&self) -> &'static str {
        match self {
            SchedulerError::Validation(_) => codes::VALIDATION_FAILED,
            SchedulerError::NotFound => codes::NOT_FOUND,
            SchedulerError::Conflict => codes::CONFLICT,
            SchedulerError::Repo(e) => e.code(),
        }
    }
    fn details(&self) -> Vec<FieldProblem> {
        match self {
            SchedulerError::Validation(d) => d.clone(),
            SchedulerError::Repo(e) => e.details(),
            _ => Vec::new(),
        }
    }
}
