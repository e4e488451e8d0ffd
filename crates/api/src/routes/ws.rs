//! `GET /api/v1/ws`: the caller's live events over a WebSocket.
//!
//! Authentication: `?access_token=` (or an `Authorization: Bearer` header) is verified before the
//! upgrade — a bad token answers 401 JSON and no socket is opened. Without a token, an upgrade
//! request is accepted and the first text message must be `{"access_token": "..."}` within
//! [`WsConfig::auth_timeout`]; it is answered with `{"type": "authenticated", ...}` or a close
//! frame (1008). A plain GET without a token or upgrade answers 401.
//!
//! Messages to the client are `{"type", "at", "data"}`: the user's own events, and
//! `{"type": "lagged", "data": {"missed": n}}` when the client fell behind and `n` events were
//! skipped (reload state then). `?replay=true` first sends the user's recent history.
//! The server pings every [`WsConfig::heartbeat_interval`] and closes a connection silent for
//! [`WsConfig::client_timeout`]; it closes with 1001 (going away) on shutdown and with 1008 when
//! the access token expires or is revoked: a logout, a refresh-family revocation (reuse
//! detection) or a change making the user inactive (disabled, deleted) reaches every instance
//! over LISTEN/NOTIFY, and each open socket it concerns re-checks its token at once.

use crate::error::ApiError;
use crate::extract::{AuthUser, authenticate_token, bearer};
use crate::state::AppState;
use actix_web::http::header;
use actix_web::{HttpRequest, HttpResponse, web};
use actix_ws::{CloseCode, CloseReason, Message, MessageStream, Session};
use chrono::{DateTime, Utc};
use gathering_domain::ErrorCode;
use gathering_domain::auth::RequestMeta;
use gathering_domain::codes;
use gathering_events::{EventBus, Received, Subscription};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tokio::sync::broadcast;
use tokio::time::{Instant, sleep_until, timeout};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// Timing and limits of WebSocket connections ([`AppState::ws`]).
#[derive(Debug, Clone)]
pub struct WsConfig {
    /// How often the server pings.
    pub heartbeat_interval: Duration,
    /// A client that sends nothing (not even a pong) for this long is disconnected.
    pub client_timeout: Duration,
    /// How long a client without a query token has to send `{"access_token": ...}`.
    pub auth_timeout: Duration,
    /// Bound on handing one message to the socket; a client that stops reading is dropped.
    pub send_timeout: Duration,
    /// Largest frame accepted from a client.
    pub max_frame_bytes: usize,
    /// Open connections per user on this instance (0: unlimited). One more is refused: 429
    /// before the upgrade, or a 1008 close when the token came in the first message.
    pub max_connections_per_user: usize,
    /// Upgraded connections still waiting for their first-message token, on this instance
    /// (0: unlimited). One more upgrade is refused with 429.
    pub max_unauthenticated: usize,
    /// The live counts; shared by every clone of this configuration.
    pub admission: Arc<WsAdmission>,
}

impl Default for WsConfig {
    fn default() -> Self {
        Self {
            heartbeat_interval: Duration::from_secs(15),
            client_timeout: Duration::from_secs(45),
            auth_timeout: Duration::from_secs(5),
            send_timeout: Duration::from_secs(10),
            max_frame_bytes: 16 * 1024,
            max_connections_per_user: 16,
            max_unauthenticated: 256,
            admission: Arc::new(WsAdmission::default()),
        }
    }
}

/// How long a client refused for too many connections is told to wait.
const ADMISSION_RETRY_AFTER: Duration = Duration::from_secs(5);

/// Live connection counts of one instance: open connections per user, and upgrades waiting
/// for their first-message token. Slots are RAII guards: dropping one (the connection ended,
/// however) gives it back.
#[derive(Debug, Default)]
pub struct WsAdmission {
    unauthenticated: AtomicUsize,
    per_user: parking_lot::Mutex<HashMap<Uuid, usize>>,
}

impl WsAdmission {
    /// A slot for one more open connection of `user`; `None` at `max` (0: unlimited).
    pub fn admit_user(self: &Arc<Self>, user: Uuid, max: usize) -> Option<UserSlot> {
        let mut map = self.per_user.lock();
        let n = map.entry(user).or_insert(0);
        if max != 0 && *n >= max {
            return None;
        }
        *n += 1;
        Some(UserSlot {
            admission: Arc::clone(self),
            user,
        })
    }

    /// A slot for one more connection without a token yet; `None` at `max` (0: unlimited).
    pub fn admit_unauthenticated(self: &Arc<Self>, max: usize) -> Option<PendingSlot> {
        let admitted = self
            .unauthenticated
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (max == 0 || n < max).then_some(n + 1)
            })
            .is_ok();
        admitted.then(|| PendingSlot {
            admission: Arc::clone(self),
        })
    }

    /// Open connections of `user`.
    pub fn connections_of(&self, user: Uuid) -> usize {
        self.per_user.lock().get(&user).copied().unwrap_or(0)
    }

    /// Connections waiting for their first-message token.
    pub fn unauthenticated(&self) -> usize {
        self.unauthenticated.load(Ordering::Acquire)
    }
}

/// One open connection of a user; released on drop.
#[derive(Debug)]
pub struct UserSlot {
    admission: Arc<WsAdmission>,
    user: Uuid,
}

impl Drop for UserSlot {
    fn drop(&mut self) {
        let mut map = self.admission.per_user.lock();
        if let Some(n) = map.get_mut(&self.user) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                map.remove(&self.user);
            }
        }
    }
}

/// One connection still waiting for its token; released on drop.
#[derive(Debug)]
pub struct PendingSlot {
    admission: Arc<WsAdmission>,
}

impl Drop for PendingSlot {
    fn drop(&mut self) {
        self.admission
            .unauthenticated
            .fetch_sub(1, Ordering::AcqRel);
    }
}

/// The slot a connection holds: pending until its token arrives, then the user's.
#[derive(Debug, Default)]
struct Slots {
    pending: Option<PendingSlot>,
    user: Option<UserSlot>,
}

fn too_many(message: &str) -> ApiError {
    ApiError::quota_exceeded(message, Some(ADMISSION_RETRY_AFTER))
}

#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
pub struct WsQuery {
    /// Access token (alternatively send `{"access_token": "..."}` as the first message).
    pub access_token: Option<String>,
    /// Send the user's recent events first.
    pub replay: Option<bool>,
}

#[derive(Deserialize)]
struct AuthMessage {
    access_token: String,
}

/// One message to the client.
#[derive(Serialize)]
struct Outgoing<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    at: DateTime<Utc>,
    data: &'a serde_json::Value,
}

fn message(kind: &str, at: DateTime<Utc>, data: &serde_json::Value) -> String {
    serde_json::to_string(&Outgoing { kind, at, data }).unwrap_or_else(|e| {
        tracing::error!(error = %e, kind, "event cannot be serialized");
        String::from("{\"type\":\"error\",\"data\":{}}")
    })
}

fn is_upgrade(req: &HttpRequest) -> bool {
    req.headers()
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"))
}

#[utoipa::path(get, path = "/api/v1/ws", tag = "events", params(WsQuery),
    responses(
        (status = 101, description = "WebSocket of the caller's events: `{type, at, data}` messages"),
        (status = 400, description = "not a WebSocket upgrade request"),
        (status = 401, description = "missing, invalid, expired or revoked token")))]
pub async fn connect(
    req: HttpRequest,
    body: web::Payload,
    q: web::Query<WsQuery>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let config = state.ws.clone();
    let shutdown = state.shutdown.clone();
    let token = q
        .access_token
        .clone()
        .filter(|t| !t.is_empty())
        .or_else(|| bearer(&req));
    let replay = q.replay.unwrap_or(false);

    // Verify a given token before upgrading, so a bad one is a plain 401.
    let user = match token {
        Some(t) => Some(authenticate_token(&req, &state, &t).await?),
        None if is_upgrade(&req) => None,
        None => {
            return Err(ApiError::unauthorized(
                "missing access token: pass ?access_token= or send it as the first message",
            ));
        }
    };
    // Admission: a slot of the user's connections, or of the connections without a token.
    // Nothing is counted for a request that is not an upgrade (it fails just below).
    let mut slots = Slots::default();
    if is_upgrade(&req) {
        match &user {
            Some(u) => {
                slots.user = Some(
                    config
                        .admission
                        .admit_user(u.id, config.max_connections_per_user)
                        .ok_or_else(|| {
                            too_many("too many open WebSocket connections for this user")
                        })?,
                );
            }
            None => {
                slots.pending = Some(
                    config
                        .admission
                        .admit_unauthenticated(config.max_unauthenticated)
                        .ok_or_else(|| {
                            too_many("too many WebSocket connections waiting for a token")
                        })?,
                );
            }
        }
    }
    // Subscribe before answering, so the client sees every event published after the 101.
    let subscribed = user.map(|u| {
        let sub = subscribe(&state.bus, u.id, replay);
        (u, sub)
    });

    let (response, session, stream) = actix_ws::handle(&req, body).map_err(|e| {
        ApiError::bad_request(
            codes::WEBSOCKET_UPGRADE_REQUIRED,
            format!("expected a WebSocket upgrade request: {e}"),
        )
    })?;
    let stream = stream.max_frame_size(config.max_frame_bytes);
    let bus = state.bus.clone();
    actix_web::rt::spawn(async move {
        let conn = Connection {
            session,
            stream,
            config,
            shutdown,
            state,
            slots,
        };
        // The request is kept only while the first message may still bring the token.
        let auth_req = subscribed.is_none().then_some(req);
        conn.serve(auth_req, bus, subscribed, replay).await;
    });
    Ok(response)
}

fn subscribe(bus: &EventBus, user: Uuid, replay: bool) -> Subscription {
    if replay {
        bus.subscribe_with_replay(user)
    } else {
        bus.subscribe(user)
    }
}

struct Connection {
    session: Session,
    stream: MessageStream,
    config: WsConfig,
    shutdown: CancellationToken,
    /// The auth service (revocations to watch, token checks).
    state: web::Data<AppState>,
    /// Held for the connection's life (RAII).
    slots: Slots,
}

/// How a connection ends: with a close frame (reason) or because the peer is gone.
enum End {
    Close(CloseCode, &'static str),
    Gone,
}

impl Connection {
    async fn serve(
        mut self,
        req: Option<HttpRequest>,
        bus: EventBus,
        subscribed: Option<(AuthUser, Subscription)>,
        replay: bool,
    ) {
        let end = match (subscribed, req) {
            (Some((user, sub)), _) => self.pump(&user, sub).await,
            (None, None) => End::Close(CloseCode::Error, "internal error"),
            (None, Some(req)) => match self.first_message_auth(&req).await {
                Ok(user) => {
                    let sub = subscribe(&bus, user.id, replay);
                    let data = serde_json::json!({ "user_id": user.id });
                    if self.send(message("authenticated", Utc::now(), &data)).await {
                        self.pump(&user, sub).await
                    } else {
                        End::Gone
                    }
                }
                Err(end) => end,
            },
        };
        if let End::Close(code, description) = end {
            let reason = CloseReason {
                code,
                description: Some(description.to_owned()),
            };
            let _ = timeout(self.config.send_timeout, self.session.close(Some(reason))).await;
        }
    }

    /// Trades the pending slot for one of the user's, once the first message authenticated
    /// the connection; 1008 when the user already has too many.
    fn admit(&mut self, user: AuthUser) -> Result<AuthUser, End> {
        let slot = self
            .config
            .admission
            .admit_user(user.id, self.config.max_connections_per_user)
            .ok_or(End::Close(
                CloseCode::Policy,
                "too many open WebSocket connections for this user",
            ))?;
        self.slots.user = Some(slot);
        self.slots.pending = None;
        Ok(user)
    }

    /// Waits for `{"access_token": "..."}` as the first text message.
    async fn first_message_auth(&mut self, req: &HttpRequest) -> Result<AuthUser, End> {
        let deadline = Instant::now() + self.config.auth_timeout;
        loop {
            let msg = tokio::select! {
                _ = self.shutdown.cancelled() => {
                    return Err(End::Close(CloseCode::Away, "server shutting down"));
                }
                _ = sleep_until(deadline) => {
                    return Err(End::Close(CloseCode::Policy, "authentication timed out"));
                }
                m = self.stream.recv() => m,
            };
            match msg {
                Some(Ok(Message::Text(text))) => {
                    let Ok(auth) = serde_json::from_str::<AuthMessage>(&text) else {
                        return Err(End::Close(
                            CloseCode::Policy,
                            "expected {\"access_token\": \"...\"} first",
                        ));
                    };
                    let user = authenticate_token(req, &self.state, &auth.access_token)
                        .await
                        .map_err(|_| End::Close(CloseCode::Policy, "invalid access token"))?;
                    return self.admit(user);
                }
                Some(Ok(Message::Ping(b))) => {
                    if self.session.pong(&b).await.is_err() {
                        return Err(End::Gone);
                    }
                }
                Some(Ok(Message::Pong(_) | Message::Nop | Message::Continuation(_))) => {}
                Some(Ok(Message::Binary(_))) => {
                    return Err(End::Close(
                        CloseCode::Policy,
                        "expected {\"access_token\": \"...\"} first",
                    ));
                }
                Some(Ok(Message::Close(_))) | None => return Err(End::Gone),
                Some(Err(_)) => return Err(End::Close(CloseCode::Protocol, "protocol error")),
            }
        }
    }

    /// Forwards events until the client leaves, stops answering, the token expires, the bus
    /// stops or the server shuts down.
    async fn pump(&mut self, user: &AuthUser, mut sub: Subscription) -> End {
        let remaining = (user.expires_at - Utc::now())
            .to_std()
            .unwrap_or(Duration::ZERO);
        let expiry = sleep_until(Instant::now() + remaining);
        tokio::pin!(expiry);
        let mut heartbeat = tokio::time::interval_at(
            Instant::now() + self.config.heartbeat_interval,
            self.config.heartbeat_interval,
        );
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_seen = Instant::now();
        // Subscribe first, then check once: a revocation between the upgrade and now is seen.
        let mut revocations = Some(self.state.auth.subscribe_revocations());
        if let Some(end) = self.revalidate(user).await {
            return end;
        }
        loop {
            tokio::select! {
                biased;
                _ = self.shutdown.cancelled() => return End::Close(CloseCode::Away, "server shutting down"),
                _ = &mut expiry => return End::Close(CloseCode::Policy, "access token expired"),
                id = next_revocation(&mut revocations) => {
                    if concerns(user, id)
                        && let Some(end) = self.revalidate(user).await
                    {
                        return end;
                    }
                }
                _ = heartbeat.tick() => {
                    if last_seen.elapsed() > self.config.client_timeout {
                        return End::Close(CloseCode::Policy, "heartbeat timed out");
                    }
                    match timeout(self.config.send_timeout, self.session.ping(b"")).await {
                        Ok(Ok(())) => {}
                        _ => return End::Gone,
                    }
                }
                msg = self.stream.recv() => match msg {
                    Some(Ok(Message::Ping(b))) => {
                        last_seen = Instant::now();
                        if self.session.pong(&b).await.is_err() {
                            return End::Gone;
                        }
                    }
                    Some(Ok(Message::Pong(_) | Message::Text(_) | Message::Binary(_))) => {
                        last_seen = Instant::now();
                    }
                    Some(Ok(Message::Nop | Message::Continuation(_))) => {}
                    Some(Ok(Message::Close(_))) => return End::Close(CloseCode::Normal, "bye"),
                    None => return End::Gone,
                    Some(Err(_)) => return End::Close(CloseCode::Protocol, "protocol error"),
                },
                item = sub.recv() => {
                    let text = match item {
                        Some(Received::Event(e)) => message(&e.kind, e.at, &e.data),
                        Some(Received::Lagged(missed)) => message(
                            "lagged",
                            Utc::now(),
                            &serde_json::json!({ "missed": missed }),
                        ),
                        None => return End::Close(CloseCode::Away, "server shutting down"),
                    };
                    if !self.send(text).await {
                        return End::Gone;
                    }
                }
            }
        }
    }

    /// Re-checks the session's token (revocation of its jti or family, the user's state):
    /// `Some(close 1008)` once it is no longer valid.
    async fn revalidate(&self, user: &AuthUser) -> Option<End> {
        match self
            .state
            .auth
            .check_claims(user.claims(), &RequestMeta::default())
            .await
        {
            Ok(_) => None,
            Err(e) if e.kind() == gathering_domain::ErrorKind::Unauthorized => {
                Some(End::Close(CloseCode::Policy, "access token revoked"))
            }
            Err(e) => {
                // Fail closed, like an HTTP request would (503): the client reconnects later.
                tracing::warn!(error = %e, "cannot re-check a WebSocket's token; closing it");
                Some(End::Close(CloseCode::Error, "temporarily unavailable"))
            }
        }
    }

    /// Hands one text message to the socket; false when the client is gone or not reading.
    async fn send(&mut self, text: String) -> bool {
        matches!(
            timeout(self.config.send_timeout, self.session.text(text)).await,
            Ok(Ok(()))
        )
    }
}

/// The next announced revocation (or change): a jti, a family, a user id, or the nil id for
/// "anything may have changed" (also after this receiver lagged). Never resolves without a
/// source.
async fn next_revocation(rx: &mut Option<broadcast::Receiver<Uuid>>) -> Uuid {
    let Some(r) = rx else {
        return std::future::pending().await;
    };
    match r.recv().await {
        Ok(id) => id,
        Err(broadcast::error::RecvError::Lagged(_)) => Uuid::nil(),
        Err(broadcast::error::RecvError::Closed) => {
            *rx = None;
            std::future::pending().await
        }
    }
}

/// Whether an announced id may concern this session's token.
fn concerns(user: &AuthUser, id: Uuid) -> bool {
    id.is_nil() || id == user.jti || id == user.id || Some(id) == user.family_id
}

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/ws", web::get().to(connect));
}

#[derive(utoipa::OpenApi)]
#[openapi(paths(connect), tags((name = "events", description = "Live events over WebSocket")))]
struct Doc;

pub fn openapi() -> utoipa::openapi::OpenApi {
    <Doc as utoipa::OpenApi>::openapi()
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use actix_web::test::TestRequest;

    #[test]
    fn admission_slots_are_bounded_and_given_back_on_drop() {
        let a = Arc::new(WsAdmission::default());
        let u = Uuid::now_v7();
        let first = a.admit_user(u, 2).unwrap();
        let second = a.admit_user(u, 2).unwrap();
        assert!(a.admit_user(u, 2).is_none());
        assert!(a.admit_user(Uuid::now_v7(), 2).is_some(), "per user");
        drop(first);
        assert_eq!(a.connections_of(u), 1);
        let third = a.admit_user(u, 2).unwrap();
        drop((second, third));
        assert_eq!(a.connections_of(u), 0);
        assert!(a.per_user.lock().is_empty(), "no entry left behind");

        let p1 = a.admit_unauthenticated(1).unwrap();
        assert!(a.admit_unauthenticated(1).is_none());
        drop(p1);
        assert_eq!(a.unauthenticated(), 0);
        assert!(a.admit_unauthenticated(1).is_some());
        assert!(a.admit_user(u, 0).is_some(), "0 is unlimited");
    }

    #[test]
    fn messages_have_type_at_and_data_only() {
        let at = Utc::now();
        let v: serde_json::Value = serde_json::from_str(&message(
            "run.started",
            at,
            &serde_json::json!({"run_id": "r"}),
        ))
        .unwrap();
        assert_eq!(v["type"], "run.started");
        assert_eq!(v["data"]["run_id"], "r");
        assert!(v["at"].is_string());
        assert_eq!(v.as_object().unwrap().len(), 3);
    }

    #[test]
    fn a_revocation_concerns_the_token_its_family_or_its_user_only() {
        let user = AuthUser {
            id: Uuid::new_v4(),
            role: gathering_domain::auth::Role::User,
            jti: Uuid::new_v4(),
            issued_at: Utc::now(),
            expires_at: Utc::now(),
            family_id: Some(Uuid::new_v4()),
        };
        assert!(concerns(&user, user.jti));
        assert!(concerns(&user, user.id));
        assert!(concerns(&user, user.family_id.unwrap()));
        assert!(concerns(&user, Uuid::nil()));
        assert!(!concerns(&user, Uuid::new_v4()));
    }

    #[test]
    fn upgrade_is_recognised_case_insensitively() {
        let r = TestRequest::default()
            .insert_header((header::UPGRADE, "WebSocket"))
            .to_http_request();
        assert!(is_upgrade(&r));
        assert!(!is_upgrade(&TestRequest::default().to_http_request()));
    }

    #[test]
    fn bearer_header_is_an_alternative_to_the_query_token() {
        let r = TestRequest::default()
            .insert_header((header::AUTHORIZATION, "Bearer t0k"))
            .to_http_request();
        assert_eq!(bearer(&r).as_deref(), Some("t0k"));
        let r = TestRequest::default()
            .insert_header((header::AUTHORIZATION, "Bearer  "))
            .to_http_request();
        assert_eq!(bearer(&r), None);
    }
}
