//! `AuthService`: register, login, refresh, logout, authenticate, audit.

use crate::cache::{TokenKey, UserCache, VerifiedTokens};
use crate::config::AuthConfig;
use crate::email::normalize_email;
use crate::error::AuthError;
use crate::password::PasswordHasher;
use crate::revocation::{CacheLookup, RevocationCache};
use crate::tokens::{AccessClaims, AccessTokens, KeyRing, RefreshSecret, TokenError};
use chrono::{DateTime, TimeDelta, Utc};
use gathering_domain::auth::{
    AuditEvent, AuditFilter, AuditKind, AuditRepository, Email, NewRefreshToken, NewUser, Password,
    REVOCATION_CHANNEL, RefreshTokenRepository, RequestMeta, RevocationRepository, RevokedToken,
    Role, RotateOutcome, USER_CHANGED_CHANNEL, User, UserId, UserRepository,
};
use gathering_domain::notify::ListenerEvent;
use gathering_domain::{Clock, FieldProblem, Page, PageRequest, RepoError};
use parking_lot::Mutex;
use serde::Serialize;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::broadcast;
use uuid::Uuid;

/// Longest user-agent / request-id kept in an audit row.
const MAX_META_LEN: usize = 512;
/// Longest display name.
pub const MAX_NAME_CHARS: usize = 200;
/// Login passwords beyond this are refused without looking further (bounded work).
const MAX_LOGIN_PASSWORD_BYTES: usize = 4096;

/// The persistence ports the service needs.
#[derive(Clone)]
pub struct AuthRepos {
    pub users: Arc<dyn UserRepository>,
    pub refresh_tokens: Arc<dyn RefreshTokenRepository>,
    pub revocations: Arc<dyn RevocationRepository>,
    pub audit: Arc<dyn AuditRepository>,
}

/// Answer of login and refresh (`POST /auth/login`, `POST /auth/refresh`).
#[derive(Clone, Serialize)]
pub struct TokenPair {
    pub access_token: String,
    pub refresh_token: String,
    pub token_type: &'static str,
    /// Seconds until the access token expires.
    pub expires_in: u64,
}

impl std::fmt::Debug for TokenPair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenPair")
            .field("token_type", &self.token_type)
            .field("expires_in", &self.expires_in)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct PurgeReport {
    pub revocations: u64,
    pub refresh_tokens: u64,
    pub cache_evicted: u64,
}

/// At most `per_sec` events per clock second; the rest are dropped and counted.
#[derive(Debug)]
struct AuditLimiter {
    per_sec: u32,
    window: Mutex<(i64, u32)>,
    dropped: AtomicU64,
}

impl AuditLimiter {
    fn new(per_sec: u32) -> Self {
        Self {
            per_sec,
            window: Mutex::new((i64::MIN, 0)),
            dropped: AtomicU64::new(0),
        }
    }

    fn allow(&self, now: DateTime<Utc>) -> bool {
        let sec = now.timestamp();
        let mut w = self.window.lock();
        if w.0 != sec {
            *w = (sec, 0);
        }
        if w.1 < self.per_sec {
            w.1 += 1;
            true
        } else {
            drop(w);
            self.dropped.fetch_add(1, Ordering::Relaxed);
            false
        }
    }
}

pub struct AuthService {
    repos: AuthRepos,
    clock: Arc<dyn Clock>,
    config: AuthConfig,
    hasher: PasswordHasher,
    tokens: AccessTokens,
    cache: RevocationCache,
    verified: VerifiedTokens,
    users: UserCache,
    rejected_audit: AuditLimiter,
    lockout_audit: AuditLimiter,
    refresh_ttl: TimeDelta,
    lockout_window: TimeDelta,
    clock_skew: TimeDelta,
    /// Ids that were just revoked or changed (a jti, a refresh family, a user id; the nil id
    /// for "anything may have changed"), for live sessions such as WebSockets to re-check.
    revoked_tx: broadcast::Sender<Uuid>,
}

impl std::fmt::Debug for AuthService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthService")
            .field("config", &self.config)
            .field("tokens", &self.tokens)
            .finish_non_exhaustive()
    }
}

fn delta(d: Duration, what: &str) -> Result<TimeDelta, AuthError> {
    TimeDelta::from_std(d).map_err(|_| AuthError::Internal(format!("{what} out of range")))
}

fn token_err(e: TokenError) -> AuthError {
    AuthError::Internal(format!("access token: {e}"))
}

fn clip(s: &Option<String>) -> Option<String> {
    s.as_ref().map(|v| {
        if v.len() <= MAX_META_LEN {
            v.clone()
        } else {
            let mut end = MAX_META_LEN;
            while !v.is_char_boundary(end) {
                end -= 1;
            }
            v[..end].to_owned()
        }
    })
}

/// The key the per-account failure counter (and the audit row) uses for an address that is
/// not a valid email: bounded, lower-cased, control characters (NUL included, which the
/// database cannot store) replaced, so the refusal is recorded and counted like any other.
fn malformed_key(raw_email: &str) -> String {
    raw_email
        .trim()
        .chars()
        .take(Email::MAX_LEN)
        .map(|c| if c.is_control() { '\u{FFFD}' } else { c })
        .collect::<String>()
        .to_lowercase()
}

/// Progressive per-account delay: none below `free` failures, then `base * 2^(failures-free)`
/// capped at `max`.
fn progressive_delay(failures: u64, free: u32, base: Duration, max: Duration) -> Option<Duration> {
    let over = failures.checked_sub(u64::from(free))?;
    let factor = 1u32 << over.min(30);
    Some(base.saturating_mul(factor).min(max))
}

#[cfg(test)]
pub(crate) fn progressive_delay_for_tests(
    failures: u64,
    free: u32,
    base: Duration,
    max: Duration,
) -> Option<Duration> {
    progressive_delay(failures, free, base, max)
}

impl AuthService {
    /// Builds the service; computes the dummy password hash on the hashing pool.
    pub async fn new(
        repos: AuthRepos,
        clock: Arc<dyn Clock>,
        keys: KeyRing,
        config: AuthConfig,
    ) -> Result<Self, AuthError> {
        let tokens = AccessTokens::new(keys, config.access_ttl).map_err(token_err)?;
        let hasher = PasswordHasher::new(
            config.password_params,
            config.hash_concurrency,
            config.hash_wait_timeout,
        )
        .await?;
        let clock_skew = delta(config.clock_skew, "clock_skew")?;
        let cache =
            RevocationCache::new(config.revocation_cache_capacity, tokens.ttl() + clock_skew);
        let users = UserCache::new(
            config.user_cache_capacity,
            delta(config.user_cache_ttl, "user_cache_ttl")?,
        );
        Ok(Self {
            verified: VerifiedTokens::new(config.token_cache_capacity),
            users,
            refresh_ttl: delta(config.refresh_ttl, "refresh_ttl")?,
            lockout_window: delta(config.lockout_window, "lockout_window")?,
            clock_skew,
            rejected_audit: AuditLimiter::new(config.rejected_audit_per_sec),
            lockout_audit: AuditLimiter::new(config.rejected_audit_per_sec),
            revoked_tx: broadcast::channel(1024).0,
            repos,
            clock,
            config,
            hasher,
            tokens,
            cache,
        })
    }

    pub fn config(&self) -> &AuthConfig {
        &self.config
    }

    pub fn hasher(&self) -> &PasswordHasher {
        &self.hasher
    }

    pub fn revocation_cache(&self) -> &RevocationCache {
        &self.cache
    }

    /// Ids revoked or changed from now on: a token's jti, a refresh family (`fam` claim), a user
    /// id (its row changed), or the nil id (the notification listener reconnected, so anything
    /// may have changed). A receiver re-checks its claims with [`Self::check_claims`] when one
    /// concerns it (and after lagging).
    pub fn subscribe_revocations(&self) -> broadcast::Receiver<Uuid> {
        self.revoked_tx.subscribe()
    }

    fn announce(&self, id: Uuid) {
        // No receiver is fine.
        let _ = self.revoked_tx.send(id);
    }

    /// `token_rejected` audit rows dropped by the rate limit so far.
    pub fn dropped_rejection_audits(&self) -> u64 {
        self.rejected_audit.dropped.load(Ordering::Relaxed)
    }

    // ---------------------------------------------------------------- audit helpers

    fn event(
        &self,
        kind: AuditKind,
        meta: &RequestMeta,
        user_id: Option<UserId>,
        email: Option<String>,
        success: bool,
        reason: Option<&str>,
    ) -> AuditEvent {
        AuditEvent {
            id: Uuid::now_v7(),
            at: self.clock.now(),
            event: kind,
            user_id,
            email,
            ip: clip(&meta.ip),
            user_agent: clip(&meta.user_agent),
            success,
            reason: reason.map(str::to_owned),
            request_id: clip(&meta.request_id),
        }
    }

    /// Records an event after the security decision was made: a failure is logged, not
    /// turned into an error (the client's outcome stays what it is).
    async fn audit(&self, ev: AuditEvent) {
        let kind = ev.event;
        if let Err(e) = self.repos.audit.record(ev).await {
            tracing::error!(error = %e, event = kind.as_str(), "audit record failed");
        }
    }

    async fn audit_rejected(&self, meta: &RequestMeta, user_id: Option<UserId>, reason: &str) {
        if self.rejected_audit.allow(self.clock.now()) {
            let ev = self.event(
                AuditKind::TokenRejected,
                meta,
                user_id,
                None,
                false,
                Some(reason),
            );
            self.audit(ev).await;
        }
    }

    // ---------------------------------------------------------------- register

    /// Validates, hashes (always, before any database access) and creates a user.
    #[tracing::instrument(skip_all)]
    pub async fn register(
        &self,
        email: &str,
        password: String,
        name: String,
        meta: &RequestMeta,
    ) -> Result<User, AuthError> {
        let mut problems = Vec::new();
        let email = normalize_email(email)
            .map_err(|e| problems.push(FieldProblem::new("/email", e.0)))
            .ok();
        let password = Password::parse(password)
            .map_err(|e| problems.push(FieldProblem::new("/password", e)))
            .ok();
        let name = name.trim().to_owned();
        let name_chars = name.chars().count();
        if name_chars == 0 {
            problems.push(FieldProblem::new("/name", "name is required"));
        } else if name_chars > MAX_NAME_CHARS {
            problems.push(FieldProblem::new(
                "/name",
                "name must be at most 200 characters",
            ));
        } else if name.chars().any(char::is_control) {
            problems.push(FieldProblem::new(
                "/name",
                "name must not contain control characters",
            ));
        }
        let (Some(email), Some(password), true) = (email, password, problems.is_empty()) else {
            return Err(AuthError::Validation(problems));
        };
        // Hash first: an existing email costs the same time as a new one.
        let password_hash = self.hasher.hash(password.expose().to_owned()).await?;
        let new = NewUser {
            email: email.clone(),
            name,
            role: Role::User,
            password_hash,
        };
        match self.repos.users.create(new).await {
            Ok(user) => {
                let ev = self.event(
                    AuditKind::Register,
                    meta,
                    Some(user.id),
                    Some(user.email.as_str().to_owned()),
                    true,
                    None,
                );
                self.audit(ev).await;
                Ok(user)
            }
            Err(RepoError::Conflict(_)) => {
                let ev = self.event(
                    AuditKind::Register,
                    meta,
                    None,
                    Some(email.as_str().to_owned()),
                    false,
                    Some("email_taken"),
                );
                self.audit(ev).await;
                Err(AuthError::EmailTaken)
            }
            Err(e) => Err(e.into()),
        }
    }

    // ---------------------------------------------------------------- login

    /// Email + password → token pair. Every failure is the same `InvalidCredentials` and is
    /// audited (a malformed email too: it counts for the account key it spells). After
    /// `max_failed_logins` recent failures for the account (existing or not), each attempt must
    /// wait a progressive delay after the latest failure, else `LockedOut`.
    #[tracing::instrument(skip_all)]
    pub async fn login(
        &self,
        email: &str,
        password: String,
        meta: &RequestMeta,
    ) -> Result<TokenPair, AuthError> {
        let now = self.clock.now();
        let parsed = normalize_email(email).ok();
        let key = match &parsed {
            Some(e) => e.as_str().to_owned(),
            None => malformed_key(email),
        };
        if let Some(wait) = self.login_delay(&key, now).await? {
            // Bounded like rejected tokens: a flood against a locked account must not flood
            // the audit table.
            if self.lockout_audit.allow(now) {
                let ev = self.event(
                    AuditKind::Lockout,
                    meta,
                    None,
                    Some(key),
                    false,
                    Some("too_many_failures"),
                );
                self.audit(ev).await;
            }
            return Err(AuthError::LockedOut { retry_after: wait });
        }

        let password = if password.len() > MAX_LOGIN_PASSWORD_BYTES {
            None
        } else {
            Some(password)
        };
        let creds = match &parsed {
            Some(e) => self.repos.users.find_by_email(e).await?,
            None => None,
        };
        let (outcome, user) = match (creds, password) {
            (None, pw) => {
                // Same work as a real verification, whatever the email.
                self.hasher.verify_dummy(pw.unwrap_or_default()).await?;
                let reason = if parsed.is_some() {
                    "unknown_email"
                } else {
                    "malformed_email"
                };
                (Err(reason), None)
            }
            (Some(c), None) => {
                self.hasher.verify_dummy(String::new()).await?;
                (Err("password_too_long"), Some(c))
            }
            (Some(c), Some(pw)) => {
                let ok = self
                    .hasher
                    .verify(pw.clone(), c.password_hash.clone())
                    .await?;
                if !ok {
                    (Err("wrong_password"), Some(c))
                } else if c.user.disabled {
                    (Err("disabled"), Some(c))
                } else {
                    if self.hasher.needs_rehash(&c.password_hash) {
                        self.rehash(c.user.id, pw).await;
                    }
                    (Ok(()), Some(c))
                }
            }
        };

        match (outcome, user) {
            (Ok(()), Some(c)) => {
                let pair = self.new_session(c.user.id, c.user.role, now).await?;
                let ev = self.event(
                    AuditKind::LoginSuccess,
                    meta,
                    Some(c.user.id),
                    Some(c.user.email.as_str().to_owned()),
                    true,
                    None,
                );
                self.audit(ev).await;
                Ok(pair)
            }
            (outcome, user) => {
                let reason = outcome.err().unwrap_or("unknown");
                let ev = self.event(
                    AuditKind::LoginFailure,
                    meta,
                    user.map(|c| c.user.id),
                    Some(key),
                    false,
                    Some(reason),
                );
                // This row is the failure counter: it must land, or the failure is not counted.
                self.repos.audit.record(ev).await?;
                Err(AuthError::InvalidCredentials)
            }
        }
    }

    /// How long the account must still wait, if it is in the progressive delay: `failures`
    /// recent failures demand `delay` since the latest one; when a failure happened within the
    /// last `delay`, the attempt is refused (Retry-After: the whole `delay`, an upper bound).
    async fn login_delay(
        &self,
        key: &str,
        now: DateTime<Utc>,
    ) -> Result<Option<Duration>, AuthError> {
        let failures = self
            .repos
            .audit
            .count_login_failures(key, now - self.lockout_window)
            .await?;
        let Some(delay) = progressive_delay(
            failures,
            self.config.max_failed_logins,
            self.config.lockout_base_delay,
            self.config.lockout_max_delay,
        ) else {
            return Ok(None);
        };
        let recent = self
            .repos
            .audit
            // A failure exactly `delay` ago no longer holds the account (timestamps are µs).
            .count_login_failures(
                key,
                now - delta(delay, "lockout delay")? + TimeDelta::microseconds(1),
            )
            .await?;
        Ok((recent > 0).then_some(delay))
    }

    async fn rehash(&self, user_id: UserId, password: String) {
        match self.hasher.hash(password).await {
            Ok(h) => {
                if let Err(e) = self.repos.users.update_password_hash(user_id, &h).await {
                    tracing::warn!(error = %e, "password rehash not stored");
                } else {
                    tracing::info!(%user_id, "password rehashed with current parameters");
                }
            }
            Err(e) => tracing::warn!(error = %e, "password rehash failed"),
        }
    }

    /// Access token + a refresh token starting a new family.
    async fn new_session(
        &self,
        user_id: UserId,
        role: Role,
        now: DateTime<Utc>,
    ) -> Result<TokenPair, AuthError> {
        let secret = RefreshSecret::generate();
        let family_id = Uuid::now_v7();
        self.repos
            .refresh_tokens
            .insert(NewRefreshToken {
                id: Uuid::now_v7(),
                user_id,
                family_id,
                token_hash: secret.hash.clone(),
                expires_at: now + self.refresh_ttl,
            })
            .await?;
        self.pair(user_id, role, family_id, now, secret)
    }

    /// An access token bound to the refresh family `family_id`, with its refresh token.
    fn pair(
        &self,
        user_id: UserId,
        role: Role,
        family_id: Uuid,
        now: DateTime<Utc>,
        refresh: RefreshSecret,
    ) -> Result<TokenPair, AuthError> {
        let issued = self
            .tokens
            .issue_in(user_id, role, Some(family_id), now)
            .map_err(token_err)?;
        let expires_in = (issued.claims.expires_at - now)
            .num_seconds()
            .max(0)
            .unsigned_abs();
        Ok(TokenPair {
            access_token: issued.token,
            refresh_token: refresh.token,
            token_type: "Bearer",
            expires_in,
        })
    }

    // ---------------------------------------------------------------- refresh

    /// Rotates a refresh token. A token presented a second time revokes its whole family.
    #[tracing::instrument(skip_all)]
    pub async fn refresh(
        &self,
        refresh_token: &str,
        meta: &RequestMeta,
    ) -> Result<TokenPair, AuthError> {
        let now = self.clock.now();
        let Some(hash) = RefreshSecret::hash_of(refresh_token) else {
            self.audit_rejected(meta, None, "refresh_malformed").await;
            return Err(AuthError::InvalidToken);
        };
        let secret = RefreshSecret::generate();
        let new = NewRefreshToken {
            id: Uuid::now_v7(),
            // The repository keeps the old token's user and family.
            user_id: Uuid::nil(),
            family_id: Uuid::nil(),
            token_hash: secret.hash.clone(),
            expires_at: now + self.refresh_ttl,
        };
        match self.repos.refresh_tokens.rotate(&hash, new, now).await? {
            RotateOutcome::Rotated { old } => {
                let user = self.repos.users.find_by_id(old.user_id).await?;
                let Some(user) = user.filter(|u| !u.disabled) else {
                    self.revoke_family(old.family_id, old.user_id, now).await?;
                    self.audit_rejected(meta, Some(old.user_id), "refresh_user_inactive")
                        .await;
                    return Err(AuthError::InvalidToken);
                };
                let pair = self.pair(user.id, user.role, old.family_id, now, secret)?;
                let ev = self.event(
                    AuditKind::TokenRefresh,
                    meta,
                    Some(user.id),
                    None,
                    true,
                    None,
                );
                self.audit(ev).await;
                Ok(pair)
            }
            RotateOutcome::Reused { old } => {
                // The whole family: its refresh tokens and the access tokens issued from it.
                let revoked = self.revoke_family(old.family_id, old.user_id, now).await?;
                tracing::warn!(user_id = %old.user_id, family = %old.family_id, revoked, "refresh token reuse detected");
                let ev = self.event(
                    AuditKind::TokenReuseDetected,
                    meta,
                    Some(old.user_id),
                    None,
                    false,
                    Some("refresh_token_reused"),
                );
                self.audit(ev).await;
                Err(AuthError::InvalidToken)
            }
            RotateOutcome::Expired { old } => {
                self.audit_rejected(meta, Some(old.user_id), "refresh_expired")
                    .await;
                Err(AuthError::InvalidToken)
            }
            RotateOutcome::NotFound => {
                self.audit_rejected(meta, None, "refresh_unknown").await;
                Err(AuthError::InvalidToken)
            }
        }
    }

    // ---------------------------------------------------------------- logout

    /// Revokes the access token (persisted, announced to every instance, cached here at once),
    /// the refresh family it was issued from (every refresh token of it and every access token
    /// carrying it), and, when given, the refresh token if it belongs to the same user.
    #[tracing::instrument(skip_all, fields(user_id = %claims.user_id))]
    pub async fn logout(
        &self,
        claims: &AccessClaims,
        refresh_token: Option<String>,
        meta: &RequestMeta,
    ) -> Result<(), AuthError> {
        let now = self.clock.now();
        self.repos
            .revocations
            .revoke(
                RevokedToken {
                    jti: claims.jti,
                    expires_at: claims.expires_at,
                },
                claims.user_id,
            )
            .await?;
        self.cache.insert(claims.jti, claims.expires_at, now);
        self.announce(claims.jti);
        let mut reason = None;
        if let Some(rt) = refresh_token {
            let revoked = match RefreshSecret::hash_of(&rt) {
                Some(h) => {
                    self.repos
                        .refresh_tokens
                        .revoke(&h, claims.user_id, now)
                        .await?
                }
                None => false,
            };
            if !revoked {
                reason = Some("refresh_token_not_revoked");
            }
        }
        if let Some(family) = claims.family_id {
            self.revoke_family(family, claims.user_id, now).await?;
        }
        let ev = self.event(
            AuditKind::Logout,
            meta,
            Some(claims.user_id),
            None,
            true,
            reason,
        );
        self.audit(ev).await;
        Ok(())
    }

    // ---------------------------------------------------------------- authenticate

    /// Verifies an access token: authenticity, kid, expiry (by the injected clock) and
    /// revocation (cache, else the table). Every failure is `InvalidToken`.
    pub async fn authenticate(
        &self,
        access_token: &str,
        meta: &RequestMeta,
    ) -> Result<AccessClaims, AuthError> {
        let now = self.clock.now();
        let key = TokenKey::of(access_token);
        let cached = match self.verified.get_key(&key, now) {
            Ok(c) => c,
            Err(()) => {
                self.audit_rejected(meta, None, TokenError::Expired.reason())
                    .await;
                return Err(AuthError::InvalidToken);
            }
        };
        let claims = match cached {
            Some(c) => c,
            None => match self.tokens.verify(access_token, now) {
                Ok(c) => {
                    self.verified.insert_key(key, &c);
                    c
                }
                Err(e) => {
                    self.audit_rejected(meta, None, e.reason()).await;
                    return Err(AuthError::InvalidToken);
                }
            },
        };
        self.check_at(claims, meta, now).await
    }

    /// The checks after authenticity and expiry, for claims verified earlier (also by live
    /// sessions when a revocation concerns them): not issued in the future, the token and its
    /// refresh family not revoked, the user still there and enabled. The returned claims carry
    /// the user's *current* role (a demotion or promotion applies at once). The user row comes
    /// from the user cache (no database round trip on a hit; bypassed while the listener is
    /// down).
    pub async fn check_claims(
        &self,
        claims: AccessClaims,
        meta: &RequestMeta,
    ) -> Result<AccessClaims, AuthError> {
        self.check_at(claims, meta, self.clock.now()).await
    }

    async fn check_at(
        &self,
        mut claims: AccessClaims,
        meta: &RequestMeta,
        now: DateTime<Utc>,
    ) -> Result<AccessClaims, AuthError> {
        if claims.issued_at > now + self.clock_skew {
            self.audit_rejected(meta, Some(claims.user_id), "issued_in_future")
                .await;
            return Err(AuthError::InvalidToken);
        }
        let mut revoked = self.is_revoked(claims.jti, &claims, now).await?;
        if !revoked && let Some(family) = claims.family_id {
            revoked = self.is_revoked(family, &claims, now).await?;
        }
        if revoked {
            self.audit_rejected(meta, Some(claims.user_id), "revoked")
                .await;
            return Err(AuthError::InvalidToken);
        }
        match self.current_user(claims.user_id, now).await? {
            Some(u) if !u.disabled => {
                claims.role = u.role;
                Ok(claims)
            }
            _ => {
                self.audit_rejected(meta, Some(claims.user_id), "user_inactive")
                    .await;
                Err(AuthError::InvalidToken)
            }
        }
    }

    /// Whether `id` (the token's jti or its family) is revoked, for a token with `claims`.
    async fn is_revoked(
        &self,
        id: Uuid,
        claims: &AccessClaims,
        now: DateTime<Utc>,
    ) -> Result<bool, AuthError> {
        // A miss is trusted only for tokens whose lifetime fits what a notification entry
        // covers (tokens from an instance with a longer ttl are checked in the table).
        let fits = claims.expires_at - claims.issued_at <= self.tokens.ttl();
        match self.cache.lookup(id) {
            CacheLookup::Revoked => Ok(true),
            CacheLookup::NotRevoked if fits => Ok(false),
            CacheLookup::NotRevoked | CacheLookup::Unknown => {
                let revoked = self.repos.revocations.is_revoked(id).await?;
                if revoked {
                    self.cache.insert(id, claims.expires_at, now);
                }
                Ok(revoked)
            }
        }
    }

    /// Revokes a refresh family: its refresh tokens, and (persisted under the family id in the
    /// revocation table, announced on NOTIFY, cached here) every access token carrying it. The
    /// entry lives as long as any access token issued before now can. Returns how many live
    /// refresh tokens were revoked.
    async fn revoke_family(
        &self,
        family_id: Uuid,
        user_id: UserId,
        now: DateTime<Utc>,
    ) -> Result<u64, AuthError> {
        let revoked = self
            .repos
            .refresh_tokens
            .revoke_family(family_id, now)
            .await?;
        let expires_at = now + self.tokens.ttl() + self.clock_skew;
        self.repos
            .revocations
            .revoke(
                RevokedToken {
                    jti: family_id,
                    expires_at,
                },
                user_id,
            )
            .await?;
        self.cache.insert(family_id, expires_at, now);
        self.announce(family_id);
        Ok(revoked)
    }

    /// The user row, from the cache when it may be trusted, else from the database (and then
    /// cached unless something changed meanwhile).
    async fn current_user(
        &self,
        id: UserId,
        now: DateTime<Utc>,
    ) -> Result<Option<User>, AuthError> {
        if let Some(u) = self.users.get(id, now) {
            return Ok(Some(u));
        }
        let generation = self.users.generation();
        let found = self.repos.users.find_by_id(id).await?;
        if let Some(u) = &found {
            self.users.insert(generation, u, now);
        }
        Ok(found)
    }

    // ---------------------------------------------------------------- listener

    /// Feed of the LISTEN/NOTIFY listener: `Connected` warms the cache from the table,
    /// `Disconnected` stops trusting misses, a revocation notification caches the jti.
    pub async fn handle_listener_event(&self, ev: &ListenerEvent) {
        match ev {
            ListenerEvent::Connected => {
                self.users.connected();
                if let Err(e) = self.resync_revocations().await {
                    tracing::warn!(error = %e, "revocation cache warm-up failed; misses go to the database");
                }
                // Notifications may have been missed while disconnected: live sessions re-check.
                self.announce(Uuid::nil());
            }
            ListenerEvent::Disconnected => {
                self.cache.mark_unsynced();
                self.users.disconnected();
            }
            ListenerEvent::Notification { channel, payload } if channel == REVOCATION_CHANNEL => {
                match Uuid::parse_str(payload.trim()) {
                    Ok(jti) => {
                        self.cache.on_notification(jti, self.clock.now());
                        self.announce(jti);
                    }
                    Err(_) => tracing::warn!("ignoring malformed revocation notification"),
                }
            }
            ListenerEvent::Notification { channel, payload } if channel == USER_CHANGED_CHANNEL => {
                match Uuid::parse_str(payload.trim()) {
                    Ok(id) => {
                        self.users.invalidate(id);
                        self.announce(id);
                    }
                    Err(_) => tracing::warn!("ignoring malformed user-changed notification"),
                }
            }
            ListenerEvent::Notification { .. } => {}
        }
    }

    /// Reloads the active revocations into the cache. Call after the listener (re)connected,
    /// or when the cache overflowed. Returns whether the cache is synced afterwards.
    pub async fn resync_revocations(&self) -> Result<bool, AuthError> {
        let epoch = self.cache.begin_sync();
        let now = self.clock.now();
        let cap = self.cache.capacity();
        let limit = u32::try_from(cap.saturating_add(1)).unwrap_or(u32::MAX);
        let active = self.repos.revocations.list_active(now, limit).await?;
        let complete = active.len() <= cap;
        Ok(self.cache.complete_sync(epoch, &active, complete, now))
    }

    // ---------------------------------------------------------------- users & admin

    /// The user behind verified claims (`GET /auth/me`); a deleted or disabled user → 401.
    pub async fn me(&self, claims: &AccessClaims) -> Result<User, AuthError> {
        let user = self.current_user(claims.user_id, self.clock.now()).await?;
        match user {
            Some(u) if !u.disabled => Ok(u),
            _ => Err(AuthError::InvalidToken),
        }
    }

    /// The user-row cache behind [`Self::me`].
    pub fn user_cache(&self) -> &UserCache {
        &self.users
    }

    /// Creates the configured admin; an existing admin with that email is left as it is. An
    /// existing account that is *not* an admin is never promoted (whoever registered it knows
    /// its password): `AdminEmailTaken`, and the server refuses to start.
    #[tracing::instrument(skip_all)]
    pub async fn ensure_admin(&self, email: &str, password: String) -> Result<User, AuthError> {
        let mut problems = Vec::new();
        let email = normalize_email(email)
            .map_err(|e| problems.push(FieldProblem::new("/auth/admin_email", e.0)))
            .ok();
        let password = Password::parse(password)
            .map_err(|e| problems.push(FieldProblem::new("/auth/admin_password", e)))
            .ok();
        let (Some(email), Some(password)) = (email, password) else {
            return Err(AuthError::Validation(problems));
        };
        let password_hash = self.hasher.hash(password.expose().to_owned()).await?;
        let user = self
            .repos
            .users
            .ensure_admin(NewUser {
                email: email.clone(),
                name: "Administrator".to_owned(),
                role: Role::Admin,
                password_hash,
            })
            .await?;
        self.users.invalidate(user.id);
        if user.role != Role::Admin {
            tracing::error!(
                user_id = %user.id,
                email = %email.as_str(),
                "SECURITY: the configured admin email belongs to an existing non-admin account; \
                 refusing to promote it (its password was chosen by whoever registered it)"
            );
            return Err(AuthError::AdminEmailTaken(email.as_str().to_owned()));
        }
        Ok(user)
    }

    pub async fn audit_events(
        &self,
        filter: AuditFilter,
        page: PageRequest,
    ) -> Result<Page<AuditEvent>, AuthError> {
        Ok(self.repos.audit.list(filter, page).await?)
    }

    // ---------------------------------------------------------------- maintenance

    /// Deletes expired revocations and refresh tokens, evicts expired cache entries, and
    /// resyncs the cache when it overflowed (so misses become trusted again).
    pub async fn purge_expired(&self) -> Result<PurgeReport, AuthError> {
        let now = self.clock.now();
        let cache_evicted = self.cache.evict_expired(now) as u64;
        let revocations = self
            .repos
            .revocations
            .purge_expired(now - self.clock_skew)
            .await?;
        let refresh_tokens = self.repos.refresh_tokens.purge_expired(now).await?;
        if self.cache.is_synced() && self.cache.is_overflowed() {
            self.resync_revocations().await?;
        }
        Ok(PurgeReport {
            revocations,
            refresh_tokens,
            cache_evicted,
        })
    }
}
