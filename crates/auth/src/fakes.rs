//! In-memory fakes of the domain ports auth uses (users, refresh tokens, revocations, audit,
//! notifier), with the same semantics as the PostgreSQL implementations and counters for
//! tests. Enabled for this crate's tests and, for other crates, by the `fakes` feature.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use gathering_domain::auth::{
    AuditEvent, AuditFilter, AuditKind, AuditRepository, Email, NewRefreshToken, NewUser,
    REVOCATION_CHANNEL, RefreshTokenRecord, RefreshTokenRepository, RevocationRepository,
    RevokedToken, Role, RotateOutcome, User, UserCredentials, UserId, UserRepository,
};
use gathering_domain::notify::{ListenerEvent, Notifier};
use gathering_domain::{Page, PageRequest, RepoError};
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use tokio::sync::broadcast;
use uuid::Uuid;

fn unavailable() -> RepoError {
    RepoError::Unavailable("fake repository switched off".into())
}

// ------------------------------------------------------------------------------- users

#[derive(Debug, Default)]
pub struct InMemoryUsers {
    rows: Mutex<HashMap<UserId, UserCredentials>>,
    pub find_by_email_calls: AtomicU64,
    pub find_by_id_calls: AtomicU64,
}

impl InMemoryUsers {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn password_hash_of(&self, email: &str) -> Option<String> {
        let e = email.to_lowercase();
        self.rows
            .lock()
            .values()
            .find(|c| c.user.email.as_str() == e)
            .map(|c| c.password_hash.clone())
    }
    pub fn set_disabled(&self, id: UserId, disabled: bool) {
        if let Some(c) = self.rows.lock().get_mut(&id) {
            c.user.disabled = disabled;
        }
    }
    pub fn set_role(&self, id: UserId, role: Role) {
        if let Some(c) = self.rows.lock().get_mut(&id) {
            c.user.role = role;
        }
    }
    pub fn len(&self) -> usize {
        self.rows.lock().len()
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[async_trait]
impl UserRepository for InMemoryUsers {
    async fn create(&self, new: NewUser) -> Result<User, RepoError> {
        let mut rows = self.rows.lock();
        if rows.values().any(|c| c.user.email == new.email) {
            return Err(RepoError::Conflict("email".into()));
        }
        let user = User {
            id: Uuid::now_v7(),
            email: new.email,
            name: new.name,
            role: new.role,
            created_at: Utc::now(),
            disabled: false,
        };
        rows.insert(
            user.id,
            UserCredentials {
                user: user.clone(),
                password_hash: new.password_hash,
            },
        );
        Ok(user)
    }

    async fn find_by_email(&self, email: &Email) -> Result<Option<UserCredentials>, RepoError> {
        self.find_by_email_calls.fetch_add(1, Ordering::Relaxed);
        Ok(self
            .rows
            .lock()
            .values()
            .find(|c| &c.user.email == email)
            .cloned())
    }

    async fn find_by_id(&self, id: UserId) -> Result<Option<User>, RepoError> {
        self.find_by_id_calls.fetch_add(1, Ordering::Relaxed);
        Ok(self.rows.lock().get(&id).map(|c| c.user.clone()))
    }

    async fn update_password_hash(&self, id: UserId, password_hash: &str) -> Result<(), RepoError> {
        match self.rows.lock().get_mut(&id) {
            Some(c) => {
                c.password_hash = password_hash.to_owned();
                Ok(())
            }
            None => Err(RepoError::NotFound),
        }
    }

    async fn ensure_admin(&self, new: NewUser) -> Result<User, RepoError> {
        let mut rows = self.rows.lock();
        // An existing row is returned unchanged (never promoted), like the PostgreSQL one.
        if let Some(c) = rows.values().find(|c| c.user.email == new.email) {
            return Ok(c.user.clone());
        }
        let user = User {
            id: Uuid::now_v7(),
            email: new.email,
            name: new.name,
            role: Role::Admin,
            created_at: Utc::now(),
            disabled: false,
        };
        rows.insert(
            user.id,
            UserCredentials {
                user: user.clone(),
                password_hash: new.password_hash,
            },
        );
        Ok(user)
    }
}

// ------------------------------------------------------------------------------- refresh tokens

#[derive(Debug, Default)]
pub struct InMemoryRefreshTokens {
    rows: Mutex<Vec<RefreshTokenRecord>>,
}

impl InMemoryRefreshTokens {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn records(&self) -> Vec<RefreshTokenRecord> {
        self.rows.lock().clone()
    }
    /// Tokens of the family that are neither used, revoked nor expired at `now`.
    pub fn live_in_family(&self, family_id: Uuid, now: DateTime<Utc>) -> usize {
        self.rows
            .lock()
            .iter()
            .filter(|r| {
                r.family_id == family_id
                    && r.used_at.is_none()
                    && r.revoked_at.is_none()
                    && r.expires_at > now
            })
            .count()
    }
}

#[async_trait]
impl RefreshTokenRepository for InMemoryRefreshTokens {
    async fn insert(&self, t: NewRefreshToken) -> Result<(), RepoError> {
        let mut rows = self.rows.lock();
        if rows.iter().any(|r| r.token_hash == t.token_hash) {
            // The name of the unique constraint, as the PostgreSQL store reports it.
            return Err(RepoError::Conflict("refresh_tokens_token_hash_key".into()));
        }
        rows.push(RefreshTokenRecord {
            id: t.id,
            user_id: t.user_id,
            family_id: t.family_id,
            token_hash: t.token_hash,
            created_at: Utc::now(),
            expires_at: t.expires_at,
            used_at: None,
            revoked_at: None,
        });
        Ok(())
    }

    async fn rotate(
        &self,
        old_hash: &[u8],
        new: NewRefreshToken,
        now: DateTime<Utc>,
    ) -> Result<RotateOutcome, RepoError> {
        let mut rows = self.rows.lock();
        let Some(old) = rows.iter_mut().find(|r| r.token_hash == old_hash) else {
            return Ok(RotateOutcome::NotFound);
        };
        if old.used_at.is_some() || old.revoked_at.is_some() {
            return Ok(RotateOutcome::Reused { old: old.clone() });
        }
        if old.expires_at <= now {
            return Ok(RotateOutcome::Expired { old: old.clone() });
        }
        // Answer the record as presented (before it was marked used), like the PostgreSQL one.
        let presented = old.clone();
        old.used_at = Some(now);
        let old = presented;
        rows.push(RefreshTokenRecord {
            id: new.id,
            user_id: old.user_id,
            family_id: old.family_id,
            token_hash: new.token_hash,
            created_at: now,
            expires_at: new.expires_at,
            used_at: None,
            revoked_at: None,
        });
        Ok(RotateOutcome::Rotated { old })
    }

    async fn revoke_family(&self, family_id: Uuid, now: DateTime<Utc>) -> Result<u64, RepoError> {
        let mut n = 0;
        for r in self.rows.lock().iter_mut() {
            if r.family_id == family_id && r.revoked_at.is_none() {
                r.revoked_at = Some(now);
                // Counts the LIVE tokens revoked (not used, not expired), like PostgreSQL.
                if r.used_at.is_none() && r.expires_at > now {
                    n += 1;
                }
            }
        }
        Ok(n)
    }

    async fn revoke(
        &self,
        token_hash: &[u8],
        user_id: UserId,
        now: DateTime<Utc>,
    ) -> Result<bool, RepoError> {
        let mut rows = self.rows.lock();
        match rows
            .iter_mut()
            .find(|r| r.token_hash == token_hash && r.user_id == user_id && r.revoked_at.is_none())
        {
            Some(r) => {
                r.revoked_at = Some(now);
                Ok(true)
            }
            None => Ok(false),
        }
    }

    async fn revoke_all_for_user(
        &self,
        user_id: UserId,
        now: DateTime<Utc>,
    ) -> Result<u64, RepoError> {
        let mut n = 0;
        for r in self.rows.lock().iter_mut() {
            if r.user_id == user_id && r.revoked_at.is_none() {
                r.revoked_at = Some(now);
                // Counts the LIVE tokens revoked (not used, not expired), like PostgreSQL.
                if r.used_at.is_none() && r.expires_at > now {
                    n += 1;
                }
            }
        }
        Ok(n)
    }

    async fn purge_expired(&self, before: DateTime<Utc>) -> Result<u64, RepoError> {
        let mut rows = self.rows.lock();
        let n = rows.len();
        rows.retain(|r| r.expires_at >= before);
        Ok((n - rows.len()) as u64)
    }
}

// ------------------------------------------------------------------------------- notifier

/// Delivers notifications to every subscriber, like LISTEN/NOTIFY across instances.
#[derive(Debug)]
pub struct InMemoryNotifier {
    tx: broadcast::Sender<ListenerEvent>,
}

impl Default for InMemoryNotifier {
    fn default() -> Self {
        Self::new()
    }
}

impl InMemoryNotifier {
    pub fn new() -> Self {
        Self {
            tx: broadcast::channel(1024).0,
        }
    }
    pub fn subscribe(&self) -> broadcast::Receiver<ListenerEvent> {
        self.tx.subscribe()
    }
    /// Sends a listener-level event (Connected/Disconnected) to every subscriber.
    pub fn emit(&self, ev: ListenerEvent) {
        let _ = self.tx.send(ev);
    }
}

#[async_trait]
impl Notifier for InMemoryNotifier {
    async fn notify(&self, channel: &str, payload: &str) -> Result<(), RepoError> {
        self.emit(ListenerEvent::Notification {
            channel: channel.to_owned(),
            payload: payload.to_owned(),
        });
        Ok(())
    }
}

// ------------------------------------------------------------------------------- revocations

#[derive(Debug, Default)]
pub struct InMemoryRevocations {
    rows: Mutex<HashMap<Uuid, (DateTime<Utc>, UserId)>>,
    notifier: Option<Arc<InMemoryNotifier>>,
    pub is_revoked_calls: AtomicU64,
    pub list_active_calls: AtomicU64,
    down: AtomicBool,
}

impl InMemoryRevocations {
    pub fn new() -> Self {
        Self::default()
    }
    /// Announces each revocation on [`REVOCATION_CHANNEL`] through `notifier`.
    pub fn with_notifier(notifier: Arc<InMemoryNotifier>) -> Self {
        Self {
            notifier: Some(notifier),
            ..Self::default()
        }
    }
    /// Makes every call fail with `RepoError::Unavailable` (the database went away).
    pub fn set_down(&self, down: bool) {
        self.down.store(down, Ordering::SeqCst);
    }
    /// Stores a revocation without announcing it (as if the notification were lost).
    pub fn insert_silently(&self, token: RevokedToken, user_id: UserId) {
        self.rows
            .lock()
            .insert(token.jti, (token.expires_at, user_id));
    }
    pub fn len(&self) -> usize {
        self.rows.lock().len()
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    pub fn is_revoked_calls(&self) -> u64 {
        self.is_revoked_calls.load(Ordering::SeqCst)
    }
    fn check_up(&self) -> Result<(), RepoError> {
        if self.down.load(Ordering::SeqCst) {
            Err(unavailable())
        } else {
            Ok(())
        }
    }
}

#[async_trait]
impl RevocationRepository for InMemoryRevocations {
    async fn revoke(&self, token: RevokedToken, user_id: UserId) -> Result<(), RepoError> {
        self.check_up()?;
        self.rows
            .lock()
            .entry(token.jti)
            .or_insert((token.expires_at, user_id));
        if let Some(n) = &self.notifier {
            n.notify(REVOCATION_CHANNEL, &token.jti.to_string()).await?;
        }
        Ok(())
    }

    async fn is_revoked(&self, jti: Uuid) -> Result<bool, RepoError> {
        self.is_revoked_calls.fetch_add(1, Ordering::SeqCst);
        self.check_up()?;
        Ok(self.rows.lock().contains_key(&jti))
    }

    async fn list_active(
        &self,
        now: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<RevokedToken>, RepoError> {
        self.list_active_calls.fetch_add(1, Ordering::SeqCst);
        self.check_up()?;
        let mut v: Vec<RevokedToken> = self
            .rows
            .lock()
            .iter()
            .filter(|(_, (exp, _))| *exp > now)
            .map(|(jti, (exp, _))| RevokedToken {
                jti: *jti,
                expires_at: *exp,
            })
            .collect();
        v.sort_by_key(|r| std::cmp::Reverse(r.expires_at));
        v.truncate(limit as usize);
        Ok(v)
    }

    async fn purge_expired(&self, before: DateTime<Utc>) -> Result<u64, RepoError> {
        self.check_up()?;
        let mut rows = self.rows.lock();
        let n = rows.len();
        rows.retain(|_, (exp, _)| *exp >= before);
        Ok((n - rows.len()) as u64)
    }
}

// ------------------------------------------------------------------------------- audit

#[derive(Debug, Default)]
pub struct InMemoryAudit {
    rows: Mutex<Vec<AuditEvent>>,
}

impl InMemoryAudit {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn events(&self) -> Vec<AuditEvent> {
        self.rows.lock().clone()
    }
    pub fn of_kind(&self, kind: AuditKind) -> Vec<AuditEvent> {
        self.rows
            .lock()
            .iter()
            .filter(|e| e.event == kind)
            .cloned()
            .collect()
    }
    pub fn count(&self, kind: AuditKind) -> usize {
        self.of_kind(kind).len()
    }
}

#[async_trait]
impl AuditRepository for InMemoryAudit {
    async fn record(&self, mut event: AuditEvent) -> Result<(), RepoError> {
        // Stored lower-cased, like PostgreSQL (the failed-login counter compares lower-cased).
        event.email = event.email.map(|e| e.to_lowercase());
        self.rows.lock().push(event);
        Ok(())
    }

    async fn list(
        &self,
        filter: AuditFilter,
        page: PageRequest,
    ) -> Result<Page<AuditEvent>, RepoError> {
        let mut rows: Vec<AuditEvent> = self
            .rows
            .lock()
            .iter()
            .filter(|e| filter.event.is_none_or(|k| e.event == k))
            .filter(|e| filter.user_id.is_none_or(|u| e.user_id == Some(u)))
            .filter(|e| page.cursor.is_none_or(|c| e.id < c))
            .cloned()
            .collect();
        rows.sort_by_key(|e| std::cmp::Reverse(e.id));
        rows.truncate(usize::try_from(page.fetch_limit()).unwrap_or(usize::MAX));
        Ok(Page::from_rows(rows, page, |e| e.id))
    }

    async fn count_login_failures(
        &self,
        email: &str,
        since: DateTime<Utc>,
    ) -> Result<u64, RepoError> {
        let email = email.to_lowercase();
        Ok(self
            .rows
            .lock()
            .iter()
            .filter(|e| {
                e.event == AuditKind::LoginFailure
                    && e.email.as_deref() == Some(email.as_str())
                    && e.at >= since
            })
            .count() as u64)
    }
}

/// All fakes wired together, plus the [`crate::AuthRepos`] to build a service from them.
#[derive(Debug, Clone)]
pub struct Fakes {
    pub users: Arc<InMemoryUsers>,
    pub refresh_tokens: Arc<InMemoryRefreshTokens>,
    pub revocations: Arc<InMemoryRevocations>,
    pub audit: Arc<InMemoryAudit>,
    pub notifier: Arc<InMemoryNotifier>,
}

impl Default for Fakes {
    fn default() -> Self {
        Self::new()
    }
}

impl Fakes {
    pub fn new() -> Self {
        let notifier = Arc::new(InMemoryNotifier::new());
        Self {
            users: Arc::new(InMemoryUsers::new()),
            refresh_tokens: Arc::new(InMemoryRefreshTokens::new()),
            revocations: Arc::new(InMemoryRevocations::with_notifier(Arc::clone(&notifier))),
            audit: Arc::new(InMemoryAudit::new()),
            notifier,
        }
    }

    pub fn repos(&self) -> crate::AuthRepos {
        crate::AuthRepos {
            users: self.users.clone(),
            refresh_tokens: self.refresh_tokens.clone(),
            revocations: self.revocations.clone(),
            audit: self.audit.clone(),
        }
    }
}
