//! Users, credentials, refresh tokens, revocations and the audit trail: types and ports.

use crate::error::RepoError;
use crate::page::{Page, PageRequest};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

pub type UserId = Uuid;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Admin,
    User,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::User => "user",
        }
    }
    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "admin" => Some(Role::Admin),
            "user" => Some(Role::User),
            _ => None,
        }
    }
}

/// A syntactically valid e-mail address, stored lower-cased (emails are unique case-insensitively).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(transparent)]
pub struct Email(String);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidEmail(pub &'static str);

impl Email {
    pub const MAX_LEN: usize = 254;

    pub fn parse(raw: &str) -> Result<Email, InvalidEmail> {
        let s = raw.trim();
        if s.is_empty() {
            return Err(InvalidEmail("email is required"));
        }
        if s.len() > Self::MAX_LEN {
            return Err(InvalidEmail("email is too long"));
        }
        if s.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(InvalidEmail(
                "email must not contain spaces or control characters",
            ));
        }
        let Some((local, domain)) = s.rsplit_once('@') else {
            return Err(InvalidEmail("email must contain @"));
        };
        if local.is_empty() || local.len() > 64 || local.contains('@') {
            return Err(InvalidEmail("email local part is invalid"));
        }
        let labels: Vec<&str> = domain.split('.').collect();
        if labels.len() < 2
            || labels.iter().any(|l| {
                l.is_empty()
                    || l.len() > 63
                    || l.starts_with('-')
                    || l.ends_with('-')
                    || !l.chars().all(|c| c.is_alphanumeric() || c == '-')
            })
        {
            return Err(InvalidEmail("email domain is invalid"));
        }
        Ok(Email(s.to_lowercase()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// For values read back from storage, which were validated on the way in.
    pub fn from_trusted(s: String) -> Email {
        Email(s)
    }
}

/// Password policy (ASVS): at least 12 characters, at most 128, never truncated.
#[derive(Clone)]
pub struct Password(String);

impl std::fmt::Debug for Password {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Password(***)")
    }
}

impl Password {
    pub const MIN_CHARS: usize = 12;
    pub const MAX_CHARS: usize = 128;

    pub fn parse(raw: String) -> Result<Password, &'static str> {
        let n = raw.chars().count();
        if n < Self::MIN_CHARS {
            return Err("password must be at least 12 characters");
        }
        if n > Self::MAX_CHARS {
            return Err("password must be at most 128 characters");
        }
        Ok(Password(raw))
    }
    /// For a login attempt: no policy, but still bounded so hashing cost stays bounded.
    pub fn for_login(raw: String) -> Password {
        Password(raw)
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct User {
    pub id: UserId,
    pub email: Email,
    pub name: String,
    pub role: Role,
    pub created_at: DateTime<Utc>,
    pub disabled: bool,
}

/// A user row together with its PHC password hash (never leaves the auth crate).
#[derive(Debug, Clone)]
pub struct UserCredentials {
    pub user: User,
    pub password_hash: String,
}

#[derive(Debug, Clone)]
pub struct NewUser {
    pub email: Email,
    pub name: String,
    pub role: Role,
    pub password_hash: String,
}

#[async_trait]
pub trait UserRepository: Send + Sync {
    /// `RepoError::Conflict("email")` when the (case-insensitive) email exists.
    async fn create(&self, new: NewUser) -> Result<User, RepoError>;
    async fn find_by_email(&self, email: &Email) -> Result<Option<UserCredentials>, RepoError>;
    async fn find_by_id(&self, id: UserId) -> Result<Option<User>, RepoError>;
    async fn update_password_hash(&self, id: UserId, password_hash: &str) -> Result<(), RepoError>;
    /// Creates the user as admin; an existing user with that email is returned unchanged (never
    /// promoted, password kept): the caller refuses a non-admin one.
    async fn ensure_admin(&self, new: NewUser) -> Result<User, RepoError>;
}

/// A refresh token as stored: only a SHA-256 of the secret is kept.
#[derive(Debug, Clone)]
pub struct RefreshTokenRecord {
    pub id: Uuid,
    pub user_id: UserId,
    pub family_id: Uuid,
    pub token_hash: Vec<u8>,
    pub created_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    pub used_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone)]
pub struct NewRefreshToken {
    pub id: Uuid,
    pub user_id: UserId,
    pub family_id: Uuid,
    pub token_hash: Vec<u8>,
    pub expires_at: DateTime<Utc>,
}

/// Outcome of presenting a refresh token for rotation.
#[derive(Debug, Clone)]
pub enum RotateOutcome {
    /// The presented token was live; it is now used and `new` is stored in the same family.
    Rotated {
        old: RefreshTokenRecord,
    },
    /// The presented token exists but was already used or revoked: reuse. Nothing was stored.
    Reused {
        old: RefreshTokenRecord,
    },
    /// Exists but expired. Nothing was stored.
    Expired {
        old: RefreshTokenRecord,
    },
    NotFound,
}

#[async_trait]
pub trait RefreshTokenRepository: Send + Sync {
    async fn insert(&self, token: NewRefreshToken) -> Result<(), RepoError>;
    /// Atomically: if the token with `old_hash` is live, mark it used and insert `new` (same
    /// family); otherwise store nothing and say why.
    async fn rotate(
        &self,
        old_hash: &[u8],
        new: NewRefreshToken,
        now: DateTime<Utc>,
    ) -> Result<RotateOutcome, RepoError>;
    /// Revokes every token of the family; returns how many were live.
    async fn revoke_family(&self, family_id: Uuid, now: DateTime<Utc>) -> Result<u64, RepoError>;
    /// Revokes one token if it belongs to `user_id`; returns whether one was revoked.
    async fn revoke(
        &self,
        token_hash: &[u8],
        user_id: UserId,
        now: DateTime<Utc>,
    ) -> Result<bool, RepoError>;
    async fn revoke_all_for_user(
        &self,
        user_id: UserId,
        now: DateTime<Utc>,
    ) -> Result<u64, RepoError>;
    /// Deletes tokens expired before `before`; returns how many.
    async fn purge_expired(&self, before: DateTime<Utc>) -> Result<u64, RepoError>;
}

/// Channel on which revocations are announced to every instance (LISTEN/NOTIFY).
pub const REVOCATION_CHANNEL: &str = "gathering_revocations";

/// Channel on which a trigger on `auth.users` announces every changed or deleted user
/// (payload: the user id), so instances can drop cached rows.
pub const USER_CHANGED_CHANNEL: &str = "gathering_users_changed";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RevokedToken {
    pub jti: Uuid,
    pub expires_at: DateTime<Utc>,
}

#[async_trait]
pub trait RevocationRepository: Send + Sync {
    /// Persists the revocation and announces it on [`REVOCATION_CHANNEL`] (payload: the jti)
    /// in the same transaction.
    async fn revoke(&self, token: RevokedToken, user_id: UserId) -> Result<(), RepoError>;
    async fn is_revoked(&self, jti: Uuid) -> Result<bool, RepoError>;
    /// Revocations not yet expired at `now`, at most `limit` (for warming a cache).
    async fn list_active(
        &self,
        now: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<RevokedToken>, RepoError>;
    /// Deletes revocations whose token expired before `before`.
    async fn purge_expired(&self, before: DateTime<Utc>) -> Result<u64, RepoError>;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuditKind {
    Register,
    LoginSuccess,
    LoginFailure,
    Logout,
    TokenRefresh,
    TokenReuseDetected,
    TokenRejected,
    Lockout,
}

impl AuditKind {
    pub const ALL: [AuditKind; 8] = [
        AuditKind::Register,
        AuditKind::LoginSuccess,
        AuditKind::LoginFailure,
        AuditKind::Logout,
        AuditKind::TokenRefresh,
        AuditKind::TokenReuseDetected,
        AuditKind::TokenRejected,
        AuditKind::Lockout,
    ];
    pub fn as_str(self) -> &'static str {
        match self {
            AuditKind::Register => "register",
            AuditKind::LoginSuccess => "login_success",
            AuditKind::LoginFailure => "login_failure",
            AuditKind::Logout => "logout",
            AuditKind::TokenRefresh => "token_refresh",
            AuditKind::TokenReuseDetected => "token_reuse_detected",
            AuditKind::TokenRejected => "token_rejected",
            AuditKind::Lockout => "lockout",
        }
    }
    pub fn parse(s: &str) -> Option<AuditKind> {
        Self::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

/// Who made a request: recorded with every audit event.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RequestMeta {
    pub ip: Option<String>,
    pub user_agent: Option<String>,
    pub request_id: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AuditEvent {
    pub id: Uuid,
    pub at: DateTime<Utc>,
    pub event: AuditKind,
    pub user_id: Option<UserId>,
    pub email: Option<String>,
    pub ip: Option<String>,
    pub user_agent: Option<String>,
    pub success: bool,
    pub reason: Option<String>,
    pub request_id: Option<String>,
}

#[derive(Debug, Clone, Default)]
pub struct AuditFilter {
    pub event: Option<AuditKind>,
    pub user_id: Option<UserId>,
}

#[async_trait]
pub trait AuditRepository: Send + Sync {
    async fn record(&self, event: AuditEvent) -> Result<(), RepoError>;
    async fn list(
        &self,
        filter: AuditFilter,
        page: PageRequest,
    ) -> Result<Page<AuditEvent>, RepoError>;
    /// `login_failure` events for this (lower-cased) email since `since`: the per-account
    /// failed-login counter, shared by every instance.
    async fn count_login_failures(
        &self,
        email: &str,
        since: DateTime<Utc>,
    ) -> Result<u64, RepoError>;
}
