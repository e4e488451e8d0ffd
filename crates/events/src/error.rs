use gathering_domain::codes;
use gathering_domain::{ErrorCode, ErrorKind};

/// Failures of the event bus itself. Publishing never fails; only construction can.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EventsError {
    #[error("invalid events configuration: {0}")]
    InvalidConfig(String),
}

impl ErrorCode for EventsError {
    fn kind(&self) -> ErrorKind {
        ErrorKind::Internal
    }
    fn code(&self) -> &'static str {
        match self {
            EventsError::InvalidConfig(_) => codes::INVALID_EVENTS_CONFIG,
        }
    }
}
