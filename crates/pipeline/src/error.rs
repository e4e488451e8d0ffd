//! The pipeline crate's error enum.

use gathering_domain::codes;
use gathering_domain::{ErrorCode, ErrorKind, FieldProblem, RepoError};

#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    /// The definition (or name) is invalid; every problem is listed.
    #[error("the pipeline definition is invalid")]
    Invalid(Vec<FieldProblem>),
    /// The graph has a cycle; `nodes` are the node ids on it, `problems` every problem found.
    #[error("the pipeline graph has a cycle through nodes {}", nodes.join(", "))]
    Cycle {
        nodes: Vec<String>,
        problems: Vec<FieldProblem>,
    },
    #[error("not found")]
    NotFound,
    #[error("the run has already finished ({0})")]
    RunFinished(&'static str),
    #[error(transparent)]
    Repo(#[from] RepoError),
}

impl ErrorCode for PipelineError {
    fn kind(&self) -> ErrorKind {
        match self {
            PipelineError::Invalid(_) | PipelineError::Cycle { .. } => ErrorKind::Validation,
            PipelineError::NotFound => ErrorKind::NotFound,
            PipelineError::RunFinished(_) => ErrorKind::Conflict,
            PipelineError::Repo(e) => e.kind(),
        }
    }
    fn code(&self) -> &'static str {
        match self {
            PipelineError::Invalid(_) => codes::VALIDATION_FAILED,
            PipelineError::Cycle { .. } => codes::CYCLE_DETECTED,
            PipelineError::NotFound => codes::NOT_FOUND,
            PipelineError::RunFinished(_) => codes::RUN_FINISHED,
            PipelineError::Repo(e) => e.code(),
        }
    }
    fn details(&self) -> Vec<FieldProblem> {
        match self {
            PipelineError::Invalid(p) | PipelineError::Cycle { problems: p, .. } => p.clone(),
            _ => Vec::new(),
        }
    }
}
