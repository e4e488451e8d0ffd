//! Mapping of PostgreSQL and pool failures onto [`RepoError`].

use gathering_domain::RepoError;
use tokio_postgres::error::SqlState;

/// Errors of this crate's own operations (start-up, migrations).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("invalid database configuration: {0}")]
    Config(String),
    #[error("cannot connect to PostgreSQL: {0}")]
    Connect(#[source] Box<dyn std::error::Error + Send + Sync>),
    #[error("migration {version} ({name}) failed: {source}")]
    Migration {
        version: i64,
        name: String,
        #[source]
        source: tokio_postgres::Error,
    },
    #[error(
        "migration {version} ({name}) was changed after it was applied (checksum differs); \
         add a new migration instead of editing an applied one"
    )]
    MigrationChanged { version: i64, name: String },
    #[error(
        "the database is at migration version {db} but this binary only knows up to {known}; \
         run a newer GatheRing"
    )]
    MigrationAhead { db: i64, known: i64 },
    #[error(transparent)]
    Repo(#[from] RepoError),
    #[error("database error: {0}")]
    Db(#[from] tokio_postgres::Error),
}

/// SQLSTATE raised by the `quotas.enforce_count()` trigger (migration V11) when a per-user
/// count quota would be exceeded; the message names the quota and its limit.
pub const QUOTA_EXCEEDED_SQLSTATE: &str = "GQ001";

/// Maps a driver error: unique violations become `Conflict(constraint)`, connection problems
/// `Unavailable`, values PostgreSQL refuses to store (a NUL character in text or jsonb, an
/// invalid byte sequence, a value too large to index) `Invalid`, a quota trigger
/// `QuotaExceeded`, anything else `Other`.
pub fn db_err(e: tokio_postgres::Error) -> RepoError {
    if let Some(db) = e.as_db_error() {
        if db.code() == &SqlState::UNIQUE_VIOLATION {
            return RepoError::Conflict(db.constraint().unwrap_or("unique").to_owned());
        }
        if let Some(refused) = refused_value(db.code()) {
            return RepoError::Invalid(refused.to_owned());
        }
        if db.code().code() == QUOTA_EXCEEDED_SQLSTATE {
            return RepoError::QuotaExceeded(db.message().to_owned());
        }
        if db.code() == &SqlState::ADMIN_SHUTDOWN
            || db.code() == &SqlState::CANNOT_CONNECT_NOW
            || db.code() == &SqlState::TOO_MANY_CONNECTIONS
        {
            return RepoError::Unavailable(Box::new(e));
        }
        return RepoError::Other(Box::new(e));
    }
    // The connection went away or its I/O failed: the database is unavailable. Anything else
    // (a row that does not decode, a parameter that does not encode) is a bug: 500.
    let io = std::error::Error::source(&e).is_some_and(|s| s.is::<std::io::Error>());
    if e.is_closed() || io {
        return RepoError::Unavailable(Box::new(e));
    }
    RepoError::Other(Box::new(e))
}

/// The client-facing reason for SQLSTATEs that mean "this value cannot be stored" — the
/// request's fault, never a 500. `None` for every other state.
fn refused_value(code: &SqlState) -> Option<&'static str> {
    if code == &SqlState::CHARACTER_NOT_IN_REPERTOIRE {
        // 22021: "invalid byte sequence for encoding UTF8: 0x00" (a NUL in a text value).
        Some(
            "a text value contains a character that cannot be stored (NUL or invalid byte sequence)",
        )
    } else if code == &SqlState::UNTRANSLATABLE_CHARACTER {
        // 22P05: jsonb refuses \u0000 ("unsupported Unicode escape sequence").
        Some("a JSON value contains a character that cannot be stored (\\u0000)")
    } else if code == &SqlState::PROGRAM_LIMIT_EXCEEDED {
        // 54000: e.g. an index row larger than a btree page.
        Some("a value is too large to be stored")
    } else {
        None
    }
}

/// A stored value this code does not understand (e.g. a status a CHECK should have refused).
#[derive(Debug, thiserror::Error)]
#[error("invalid stored value in {column}: {value}")]
pub struct InvalidStoredValue {
    pub column: &'static str,
    pub value: String,
}

pub(crate) fn invalid(column: &'static str, value: impl Into<String>) -> RepoError {
    RepoError::Other(Box::new(InvalidStoredValue {
        column,
        value: value.into(),
    }))
}

/// Like [`db_err`], but a foreign-key violation means the referenced `what` does not exist:
/// `Conflict(what)`.
pub fn fk_conflict(what: &str) -> impl Fn(tokio_postgres::Error) -> RepoError + '_ {
    move |e| {
        if e.code() == Some(&SqlState::FOREIGN_KEY_VIOLATION) {
            return RepoError::Conflict(what.to_owned());
        }
        db_err(e)
    }
}

/// Failing to get a connection (timeout, refused, the database not accepting connections,
/// a failed recycle check) means the database is unavailable right now: 503, never 500.
pub fn pool_err(e: deadpool_postgres::PoolError) -> RepoError {
    RepoError::Unavailable(Box::new(e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_postgres_refuses_are_the_requests_fault() {
        assert!(refused_value(&SqlState::CHARACTER_NOT_IN_REPERTOIRE).is_some());
        assert!(refused_value(&SqlState::UNTRANSLATABLE_CHARACTER).is_some());
        assert!(refused_value(&SqlState::PROGRAM_LIMIT_EXCEEDED).is_some());
        assert!(refused_value(&SqlState::UNIQUE_VIOLATION).is_none());
        assert_eq!(SqlState::CHARACTER_NOT_IN_REPERTOIRE.code(), "22021");
        assert_eq!(SqlState::UNTRANSLATABLE_CHARACTER.code(), "22P05");
    }
}
