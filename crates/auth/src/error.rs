//! The auth crate's error type and its mapping onto the shared error vocabulary.

use gathering_domain::codes;
use gathering_domain::{ErrorCode, ErrorKind, FieldProblem, RepoError};
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// Every login failure (unknown email, wrong password, disabled account) looks like this.
    #[error("invalid email or password")]
    InvalidCredentials,
    #[error("an account with this email already exists")]
    EmailTaken,
    #[error("validation failed")]
    Validation(Vec<FieldProblem>),
    /// Missing, malformed, expired, revoked or foreign token (access or refresh).
    #[error("invalid or expired token")]
    InvalidToken,
    /// Too many failed logins for this account. Deliberately says nothing about whether the
    /// account exists.
    #[error("too many failed login attempts, try again later")]
    LockedOut { retry_after: Duration },
    #[error("forbidden")]
    Forbidden,
    /// Start-up only: the configured admin email belongs to an existing account that is not an
    /// admin (e.g. registered by someone else before the operator configured it). It is never
    /// promoted silently.
    #[error(
        "the configured admin email {0} already belongs to a non-admin account; it is not promoted. \
         Remove or rename that account (it may have been registered by someone else), or configure \
         another GATHERING__AUTH__ADMIN_EMAIL"
    )]
    AdminEmailTaken(String),
    /// Every hashing slot stayed busy for the configured wait.
    #[error("password hashing is saturated")]
    Overloaded,
    #[error("repository failure")]
    Repo(#[from] RepoError),
    /// A bug or a broken invariant (key material, hashing library). Never shown to clients.
    #[error("internal auth failure: {0}")]
    Internal(String),
}

impl ErrorCode for AuthError {
    fn kind(&self) -> ErrorKind {
        match self {
            AuthError::InvalidCredentials | AuthError::InvalidToken => ErrorKind::Unauthorized,
            AuthError::EmailTaken => ErrorKind::Conflict,
            AuthError::Validation(_) => ErrorKind::Validation,
            AuthError::LockedOut { .. } => ErrorKind::RateLimited,
            AuthError::Forbidden => ErrorKind::Forbidden,
            AuthError::Overloaded => ErrorKind::Unavailable,
            AuthError::Repo(RepoError::Unavailable(_)) => ErrorKind::Unavailable,
            AuthError::Repo(_) | AuthError::Internal(_) | AuthError::AdminEmailTaken(_) => {
                ErrorKind::Internal
            }
        }
    }

    fn code(&self) -> &'static str {
        match self {
            AuthError::InvalidCredentials => codes::INVALID_CREDENTIALS,
            AuthError::EmailTaken => codes::EMAIL_TAKEN,
            AuthError::Validation(_) => codes::VALIDATION_FAILED,
            AuthError::InvalidToken => codes::INVALID_TOKEN,
            AuthError::LockedOut { .. } => codes::RATE_LIMITED,
            AuthError::Forbidden => codes::FORBIDDEN,
            AuthError::Overloaded | AuthError::Repo(RepoError::Unavailable(_)) => {
                codes::UNAVAILABLE
            }
            AuthError::Repo(_) | AuthError::Internal(_) | AuthError::AdminEmailTaken(_) => {
                codes::INTERNAL
            }
        }
    }

    fn details(&self) -> Vec<FieldProblem> {
        match self {
            AuthError::Validation(d) => d.clone(),
            _ => Vec::new(),
        }
    }

    fn retry_after(&self) -> Option<Duration> {
        match self {
            AuthError::LockedOut { retry_after } => Some(*retry_after),
            AuthError::Overloaded => Some(Duration::from_secs(1)),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn internal_errors_hide_their_cause_from_clients() {
        let e = AuthError::Internal("key material broken at /secret/path".into());
        assert_eq!(e.code(), "internal");
        assert_eq!(e.public_message(), "internal error");
        let e = AuthError::Repo(RepoError::Unavailable("pool timeout".into()));
        assert_eq!(e.kind(), ErrorKind::Unavailable);
        assert_eq!(e.public_message(), "service temporarily unavailable");
    }

    #[test]
    fn lockout_is_rate_limited_with_retry_after_and_generic_message() {
        let e = AuthError::LockedOut {
            retry_after: Duration::from_secs(900),
        };
        assert_eq!(e.kind(), ErrorKind::RateLimited);
        assert_eq!(e.code(), "rate_limited");
        assert_eq!(e.retry_after(), Some(Duration::from_secs(900)));
        assert!(!e.public_message().contains("account"));
    }
}
