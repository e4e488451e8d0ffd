//! Cross-instance notifications: PostgreSQL `NOTIFY` behind the domain's [`Notifier`] port, and
//! a reconnecting `LISTEN` task ([`PgListener`]) that broadcasts [`ListenerEvent`]s.
//!
//! The listener owns one dedicated connection (never a pooled one: a pooled connection would be
//! recycled and lose its `LISTEN`s). When that connection drops it reports
//! [`ListenerEvent::Disconnected`], reconnects with capped exponential backoff until cancelled,
//! and reports [`ListenerEvent::Connected`] once every channel is listened to again.
//! Notifications sent while disconnected are lost, so consumers that cache state resync on every
//! `Connected` — and also when their receiver reports `RecvError::Lagged`.

use crate::error::{StoreError, db_err};
use crate::pool::{PgPool, conn};
use async_trait::async_trait;
use futures::StreamExt;
use gathering_domain::RepoError;
use gathering_domain::notify::{ListenerConsumer, ListenerEvent, Notifier};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::sync::broadcast;
use tokio::task::JoinHandle;
use tokio_postgres::AsyncMessage;
use tokio_util::sync::CancellationToken;

/// PostgreSQL rejects payloads of 8000 bytes or more.
pub const MAX_PAYLOAD_BYTES: usize = 7999;
/// PostgreSQL truncates identifiers longer than this (NAMEDATALEN - 1).
pub const MAX_CHANNEL_BYTES: usize = 63;
/// `application_name` of the listener's connection (visible in `pg_stat_activity`).
pub const LISTENER_APPLICATION_NAME: &str = "gathering-listener";

/// Why a notification or a listener setup was refused before reaching PostgreSQL.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum NotifyError {
    #[error(
        "notification payload on channel {channel:?} is {len} bytes; PostgreSQL accepts at most \
         {MAX_PAYLOAD_BYTES} (send an id and let receivers load the rest)"
    )]
    PayloadTooLarge { channel: String, len: usize },
    #[error("invalid notification channel {0:?}: use 1 to 63 characters of [a-z0-9_]")]
    InvalidChannel(String),
}

/// Checks that a channel name is a code constant of `[a-z0-9_]{1,63}`, so it can be quoted as an
/// identifier in `LISTEN` (identifiers cannot be bind parameters).
pub fn validate_channel(channel: &str) -> Result<(), NotifyError> {
    let ok = !channel.is_empty()
        && channel.len() <= MAX_CHANNEL_BYTES
        && channel
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(NotifyError::InvalidChannel(channel.to_owned()))
    }
}

/// Checks a payload against PostgreSQL's limit; never truncates.
pub fn validate_payload(channel: &str, payload: &str) -> Result<(), NotifyError> {
    if payload.len() > MAX_PAYLOAD_BYTES {
        return Err(NotifyError::PayloadTooLarge {
            channel: channel.to_owned(),
            len: payload.len(),
        });
    }
    Ok(())
}

/// [`Notifier`] on `SELECT pg_notify($1, $2)` through the pool.
#[derive(Clone)]
pub struct PgNotifier {
    pool: PgPool,
}

impl PgNotifier {
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }
}

#[async_trait]
impl Notifier for PgNotifier {
    async fn notify(&self, channel: &str, payload: &str) -> Result<(), RepoError> {
        validate_channel(channel).map_err(|e| RepoError::Other(Box::new(e)))?;
        validate_payload(channel, payload).map_err(|e| RepoError::Other(Box::new(e)))?;
        let c = conn(&self.pool).await?;
        let stmt = c
            .prepare_cached("SELECT pg_notify($1, $2)")
            .await
            .map_err(db_err)?;
        c.execute(&stmt, &[&channel, &payload])
            .await
            .map_err(db_err)?;
        Ok(())
    }
}

/// Tuning of a [`PgListener`].
#[derive(Debug, Clone)]
pub struct ListenerOptions {
    /// Capacity of the broadcast channel; a receiver that falls further behind gets
    /// `RecvError::Lagged` and must resync like on `Connected`.
    pub capacity: usize,
    /// First reconnect delay; doubled after every failed attempt...
    pub min_backoff: Duration,
    /// ...up to this cap.
    pub max_backoff: Duration,
    /// Bound on establishing the connection (TCP + startup).
    pub connect_timeout: Duration,
}

impl Default for ListenerOptions {
    fn default() -> Self {
        Self {
            capacity: 1024,
            min_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(5),
        }
    }
}

/// Handle of the running listener task. Dropping the handle does not stop the task: cancel the
/// token given to [`PgListener::spawn`] (then [`PgListener::join`] to wait for it).
pub struct PgListener {
    sender: broadcast::Sender<ListenerEvent>,
    connected: Arc<AtomicBool>,
    task: JoinHandle<()>,
}

impl PgListener {
    /// Starts the listener task on the current tokio runtime. Returns the handle and a first
    /// receiver, subscribed before the task starts so it cannot miss the first `Connected`.
    ///
    /// Fails only on invalid input: a malformed URL, no channels, or a channel name outside
    /// `[a-z0-9_]{1,63}`. An unreachable database is not an error: the task keeps retrying.
    pub fn spawn(
        database_url: impl AsRef<str>,
        channels: Vec<String>,
        options: ListenerOptions,
        cancel: CancellationToken,
    ) -> Result<(PgListener, broadcast::Receiver<ListenerEvent>), StoreError> {
        let mut config: tokio_postgres::Config = database_url
            .as_ref()
            .parse()
            .map_err(|e: tokio_postgres::Error| StoreError::Config(e.to_string()))?;
        if channels.is_empty() {
            return Err(StoreError::Config(
                "the listener needs at least one channel".to_owned(),
            ));
        }
        for c in &channels {
            validate_channel(c).map_err(|e| StoreError::Config(e.to_string()))?;
        }
        if options.capacity == 0 {
            return Err(StoreError::Config(
                "listener capacity must be at least 1".to_owned(),
            ));
        }
        config
            .application_name(LISTENER_APPLICATION_NAME)
            .connect_timeout(options.connect_timeout)
            // Notice a silently dead peer (network partition) instead of waiting forever.
            .keepalives(true)
            .keepalives_idle(Duration::from_secs(30))
            .keepalives_interval(Duration::from_secs(5))
            .keepalives_retries(3);

        let (sender, receiver) = broadcast::channel(options.capacity);
        let connected = Arc::new(AtomicBool::new(false));
        let task = tokio::spawn(run(
            config,
            channels,
            options,
            cancel,
            sender.clone(),
            connected.clone(),
        ));
        Ok((
            PgListener {
                sender,
                connected,
                task,
            },
            receiver,
        ))
    }

    /// Another receiver; it sees events from now on. Check [`PgListener::is_connected`] after
    /// subscribing to learn the current state.
    pub fn subscribe(&self) -> broadcast::Receiver<ListenerEvent> {
        self.sender.subscribe()
    }

    /// Whether the listener is currently connected and listening on every channel.
    pub fn is_connected(&self) -> bool {
        self.connected.load(Ordering::SeqCst)
    }

    /// Whether the task has ended (only after cancellation).
    pub fn is_finished(&self) -> bool {
        self.task.is_finished()
    }

    /// Waits for the task to end (it ends only after the token is cancelled).
    pub async fn join(self) {
        if let Err(e) = self.task.await {
            tracing::error!(error = %e, "listener task failed");
        }
    }
}

/// Starts the fan-out task: every event of `events` goes to each consumer, in order. A lagged
/// receiver is reported as `Disconnected` then `Connected`, so caches resync. The task owns the
/// listener: when `stop` is cancelled it ends and then joins the listener task (which stops on
/// the same token). The caller joins the returned handle on shutdown.
pub fn spawn_fanout(
    listener: PgListener,
    mut events: broadcast::Receiver<ListenerEvent>,
    consumers: Vec<Arc<dyn ListenerConsumer>>,
    stop: CancellationToken,
) -> JoinHandle<()> {
    use tracing::Instrument;
    tokio::spawn(
        async move {
            loop {
                let ev = tokio::select! {
                    _ = stop.cancelled() => break,
                    ev = events.recv() => ev,
                };
                let batch = match ev {
                    Ok(ev) => vec![ev],
                    // Missed notifications: like a reconnect, so caches resync.
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        vec![ListenerEvent::Disconnected, ListenerEvent::Connected]
                    }
                    Err(broadcast::error::RecvError::Closed) => break,
                };
                for ev in &batch {
                    for c in &consumers {
                        c.on_listener_event(ev).await;
                    }
                }
            }
            listener.join().await;
        }
        .instrument(tracing::info_span!("listener_fanout")),
    )
}

/// Where the listener connects, for logs: never includes the password.
fn describe(config: &tokio_postgres::Config) -> String {
    let host = match config.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
        Some(tokio_postgres::config::Host::Unix(p)) => p.display().to_string(),
        None => "localhost".to_owned(),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    let db = config.get_dbname().unwrap_or("");
    format!("{host}:{port}/{db}")
}

fn next_backoff(current: Duration, options: &ListenerOptions) -> Duration {
    current.saturating_mul(2).min(options.max_backoff)
}

/// How one connection ended.
enum SessionEnd {
    Cancelled,
    /// Failed before `Connected` was reported.
    FailedToConnect(String),
    /// Lost after `Connected` was reported.
    Lost(String),
}

async fn run(
    config: tokio_postgres::Config,
    channels: Vec<String>,
    options: ListenerOptions,
    cancel: CancellationToken,
    sender: broadcast::Sender<ListenerEvent>,
    connected: Arc<AtomicBool>,
) {
    let target = describe(&config);
    // Channel names were validated to [a-z0-9_]+ above, so double-quoting them is safe.
    let listen_sql: String = channels
        .iter()
        .map(|c| format!("LISTEN \"{c}\";"))
        .collect::<Vec<_>>()
        .join(" ");
    let mut backoff = options.min_backoff;
    loop {
        match session(&config, &target, &listen_sql, &cancel, &sender, &connected).await {
            SessionEnd::Cancelled => break,
            SessionEnd::Lost(error) => {
                connected.store(false, Ordering::SeqCst);
                let _ = sender.send(ListenerEvent::Disconnected);
                tracing::warn!(target_db = %target, %error, "listener connection lost; reconnecting");
                backoff = options.min_backoff;
            }
            SessionEnd::FailedToConnect(error) => {
                tracing::warn!(
                    target_db = %target,
                    %error,
                    retry_in_ms = backoff.as_millis() as u64,
                    "listener cannot connect; retrying"
                );
            }
        }
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = next_backoff(backoff, &options);
    }
    if connected.swap(false, Ordering::SeqCst) {
        let _ = sender.send(ListenerEvent::Disconnected);
    }
    tracing::info!(target_db = %target, "listener stopped");
}

async fn session(
    config: &tokio_postgres::Config,
    target: &str,
    listen_sql: &str,
    cancel: &CancellationToken,
    sender: &broadcast::Sender<ListenerEvent>,
    connected: &AtomicBool,
) -> SessionEnd {
    let connecting = config.connect(tokio_postgres::NoTls);
    let (client, mut connection) = tokio::select! {
        _ = cancel.cancelled() => return SessionEnd::Cancelled,
        r = connecting => match r {
            Ok(pair) => pair,
            Err(e) => return SessionEnd::FailedToConnect(e.to_string()),
        },
    };
    // The connection makes progress only while polled; this stream drives it and yields the
    // asynchronous messages (notifications, notices).
    let mut messages = futures::stream::poll_fn(move |cx| connection.poll_message(cx));

    // Phase 1: LISTEN on every channel while driving the connection. Notifications arriving
    // before the LISTEN batch completes are kept and delivered right after `Connected`.
    let mut early = Vec::new();
    {
        let listen = client.batch_execute(listen_sql);
        tokio::pin!(listen);
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return SessionEnd::Cancelled,
                r = &mut listen => match r {
                    Ok(()) => break,
                    Err(e) => return SessionEnd::FailedToConnect(format!("LISTEN failed: {e}")),
                },
                m = messages.next() => match m {
                    Some(Ok(AsyncMessage::Notification(n))) => early.push(n),
                    Some(Ok(_)) => {}
                    Some(Err(e)) => return SessionEnd::FailedToConnect(e.to_string()),
                    None => return SessionEnd::FailedToConnect("connection closed".to_owned()),
                },
            }
        }
    }
    connected.store(true, Ordering::SeqCst);
    tracing::info!(target_db = %target, "listener connected");
    let _ = sender.send(ListenerEvent::Connected);
    for n in early {
        forward(sender, n);
    }

    // Phase 2: forward notifications until the connection ends or we are cancelled. `client`
    // stays alive here: dropping it would close the connection.
    loop {
        tokio::select! {
            _ = cancel.cancelled() => {
                drop(client);
                return SessionEnd::Cancelled;
            }
            m = messages.next() => match m {
                Some(Ok(AsyncMessage::Notification(n))) => forward(sender, n),
                Some(Ok(AsyncMessage::Notice(notice))) => {
                    tracing::debug!(message = notice.message(), "listener notice");
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => return SessionEnd::Lost(e.to_string()),
                None => return SessionEnd::Lost("connection closed".to_owned()),
            },
        }
    }
}

fn forward(sender: &broadcast::Sender<ListenerEvent>, n: tokio_postgres::Notification) {
    // No receivers is not an error: consumers may subscribe later.
    let _ = sender.send(ListenerEvent::Notification {
        channel: n.channel().to_owned(),
        payload: n.payload().to_owned(),
    });
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn channel_names_outside_the_allowed_alphabet_are_refused() {
        assert!(validate_channel("token_revoked").is_ok());
        assert!(validate_channel("a1_b2").is_ok());
        for bad in [
            "",
            "Upper",
            "with space",
            "quote\"",
            "semi;colon",
            "dash-name",
            "é",
        ] {
            assert_eq!(
                validate_channel(bad),
                Err(NotifyError::InvalidChannel(bad.to_owned()))
            );
        }
        assert!(validate_channel(&"a".repeat(63)).is_ok());
        assert!(validate_channel(&"a".repeat(64)).is_err());
    }

    #[test]
    fn payload_limit_is_7999_bytes_counted_in_bytes() {
        assert!(validate_payload("c", &"x".repeat(7999)).is_ok());
        assert_eq!(
            validate_payload("c", &"x".repeat(8000)),
            Err(NotifyError::PayloadTooLarge {
                channel: "c".to_owned(),
                len: 8000
            })
        );
        // 4000 two-byte characters are 8000 bytes.
        assert!(validate_payload("c", &"é".repeat(4000)).is_err());
    }

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let o = ListenerOptions::default();
        let mut b = o.min_backoff;
        let mut seen = vec![b];
        for _ in 0..10 {
            b = next_backoff(b, &o);
            seen.push(b);
        }
        assert_eq!(seen[1], Duration::from_millis(200));
        assert_eq!(seen[2], Duration::from_millis(400));
        assert_eq!(*seen.last().unwrap(), o.max_backoff);
        assert!(seen.iter().all(|d| *d <= o.max_backoff));
    }

    #[test]
    fn describe_never_contains_the_password() {
        let c: tokio_postgres::Config = "postgres://u:s3cret@db.example:6543/app".parse().unwrap();
        let d = describe(&c);
        assert_eq!(d, "db.example:6543/app");
        assert!(!d.contains("s3cret"));
    }

    #[test]
    fn spawn_refuses_bad_channels_and_empty_lists() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let url = "postgres://postgres@127.0.0.1:1/x";
            let cancel = CancellationToken::new();
            assert!(matches!(
                PgListener::spawn(url, vec![], ListenerOptions::default(), cancel.clone()),
                Err(StoreError::Config(_))
            ));
            assert!(matches!(
                PgListener::spawn(
                    url,
                    vec!["bad\"name".to_owned()],
                    ListenerOptions::default(),
                    cancel.clone()
                ),
                Err(StoreError::Config(_))
            ));
        });
    }
}
