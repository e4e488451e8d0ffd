//! The bus: bounded publish queue, per-user subscriber channels, per-user history rings.

use crate::config::EventsConfig;
use crate::error::EventsError;
use crate::flusher::Flusher;
use crate::remote::{self, EVENTS_CHANNEL};
use gathering_domain::events::{Event, EventPublisher};
use gathering_domain::notify::{ListenerConsumer, ListenerEvent, Notifier};
use lru::LruCache;
use parking_lot::Mutex;
use serde::Serialize;
use std::collections::{HashMap, VecDeque};
use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use tokio::sync::{broadcast, mpsc};
use uuid::Uuid;

/// Counters since the bus started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct EventStats {
    /// Accepted into the queue.
    pub published: u64,
    /// Refused because the queue was full.
    pub dropped_full: u64,
    /// Refused because the flusher has stopped (shutdown).
    pub dropped_closed: u64,
    /// Replaced by a later event with the same user and key within one window.
    pub deduplicated: u64,
    /// Passed through the flusher (after de-duplication), local ones only.
    pub flushed: u64,
    /// Sent to a user with at least one subscriber (local and remote events).
    pub delivered: u64,
    /// NOTIFY payloads sent.
    pub notify_sent: u64,
    /// NOTIFYs that failed or timed out.
    pub notify_failed: u64,
    /// NOTIFY payloads dropped because the notify queue was full, plus events too large even
    /// for a stub.
    pub notify_dropped: u64,
    /// Events sent to other instances as a truncation stub.
    pub truncated: u64,
    /// Events received from other instances and delivered here.
    pub remote_received: u64,
    /// Our own notifications coming back (ignored).
    pub remote_echoes: u64,
    /// Notifications on our channel that could not be decoded (ignored).
    pub remote_invalid: u64,
}

#[derive(Default)]
pub(crate) struct Counters {
    pub published: AtomicU64,
    pub dropped_full: AtomicU64,
    pub dropped_closed: AtomicU64,
    pub deduplicated: AtomicU64,
    pub flushed: AtomicU64,
    pub delivered: AtomicU64,
    pub notify_sent: AtomicU64,
    pub notify_failed: AtomicU64,
    pub notify_dropped: AtomicU64,
    pub truncated: AtomicU64,
    pub remote_received: AtomicU64,
    pub remote_echoes: AtomicU64,
    pub remote_invalid: AtomicU64,
}

pub(crate) fn add(c: &AtomicU64, n: u64) {
    if n > 0 {
        c.fetch_add(n, Ordering::Relaxed);
    }
}

struct State {
    /// `None` when history is disabled.
    history: Option<LruCache<Uuid, VecDeque<Arc<Event>>>>,
    /// One bounded channel per user with live subscribers; removed with the last subscriber.
    subscribers: HashMap<Uuid, broadcast::Sender<Arc<Event>>>,
    /// The flusher has stopped: no more deliveries, new subscriptions end at once.
    closed: bool,
}

pub(crate) struct Inner {
    pub(crate) config: EventsConfig,
    pub(crate) instance_id: Uuid,
    pub(crate) notifier: Option<Arc<dyn Notifier>>,
    tx: mpsc::Sender<Event>,
    state: Mutex<State>,
    pub(crate) counters: Counters,
}

/// The event bus. Cheap to clone (all clones share one bus).
#[derive(Clone)]
pub struct EventBus {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for EventBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventBus")
            .field("instance_id", &self.inner.instance_id)
            .finish_non_exhaustive()
    }
}

/// What a subscriber receives.
#[derive(Debug, Clone, PartialEq)]
pub enum Received {
    Event(Arc<Event>),
    /// The subscriber fell behind and this many events were skipped.
    Lagged(u64),
}

impl EventBus {
    /// A bus for this instance only (no cross-instance fan-out).
    /// Spawn the returned [`Flusher`]: `tokio::spawn(flusher.run(cancel))`.
    pub fn new(config: EventsConfig) -> Result<(EventBus, Flusher), EventsError> {
        Self::build(config, None)
    }

    /// A bus that also NOTIFYs other instances on [`EVENTS_CHANNEL`]; feed what the listener
    /// receives into [`EventBus::handle_listener_event`].
    pub fn with_notifier(
        config: EventsConfig,
        notifier: Arc<dyn Notifier>,
    ) -> Result<(EventBus, Flusher), EventsError> {
        Self::build(config, Some(notifier))
    }

    fn build(
        config: EventsConfig,
        notifier: Option<Arc<dyn Notifier>>,
    ) -> Result<(EventBus, Flusher), EventsError> {
        config.validate()?;
        let (tx, rx) = mpsc::channel(config.queue_capacity);
        let history = match (
            NonZeroUsize::new(config.max_users_in_history),
            config.history_per_user,
        ) {
            (Some(users), per_user) if per_user > 0 => Some(LruCache::new(users)),
            _ => None,
        };
        let inner = Arc::new(Inner {
            config,
            instance_id: Uuid::now_v7(),
            notifier,
            tx,
            state: Mutex::new(State {
                history,
                subscribers: HashMap::new(),
                closed: false,
            }),
            counters: Counters::default(),
        });
        let flusher = Flusher::new(inner.clone(), rx);
        Ok((EventBus { inner }, flusher))
    }

    /// This instance's id; notifications carrying it are our own echo.
    pub fn instance_id(&self) -> Uuid {
        self.inner.instance_id
    }

    pub fn config(&self) -> &EventsConfig {
        &self.inner.config
    }

    /// Events waiting for the flusher.
    pub fn queue_len(&self) -> usize {
        self.inner.config.queue_capacity - self.inner.tx.capacity()
    }

    pub fn stats(&self) -> EventStats {
        let c = &self.inner.counters;
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        EventStats {
            published: g(&c.published),
            dropped_full: g(&c.dropped_full),
            dropped_closed: g(&c.dropped_closed),
            deduplicated: g(&c.deduplicated),
            flushed: g(&c.flushed),
            delivered: g(&c.delivered),
            notify_sent: g(&c.notify_sent),
            notify_failed: g(&c.notify_failed),
            notify_dropped: g(&c.notify_dropped),
            truncated: g(&c.truncated),
            remote_received: g(&c.remote_received),
            remote_echoes: g(&c.remote_echoes),
            remote_invalid: g(&c.remote_invalid),
        }
    }

    /// Live events of one user from now on.
    pub fn subscribe(&self, user_id: Uuid) -> Subscription {
        self.subscribe_inner(user_id, false)
    }

    /// The user's recent history (oldest first, at most `history_per_user`) followed by live
    /// events, with nothing lost or repeated in between.
    pub fn subscribe_with_replay(&self, user_id: Uuid) -> Subscription {
        self.subscribe_inner(user_id, true)
    }

    fn subscribe_inner(&self, user_id: Uuid, replay: bool) -> Subscription {
        let mut state = self.inner.state.lock();
        let replay = if replay {
            state
                .history
                .as_mut()
                .and_then(|h| h.get(&user_id))
                .map(|q| q.iter().cloned().collect())
                .unwrap_or_default()
        } else {
            VecDeque::new()
        };
        let rx = if state.closed {
            None
        } else {
            let capacity = self.inner.config.subscriber_capacity;
            Some(
                state
                    .subscribers
                    .entry(user_id)
                    .or_insert_with(|| broadcast::channel(capacity).0)
                    .subscribe(),
            )
        };
        Subscription {
            user_id,
            replay,
            rx,
            bus: Arc::downgrade(&self.inner),
        }
    }

    /// The user's recent history, oldest first.
    pub fn history(&self, user_id: Uuid) -> Vec<Arc<Event>> {
        let mut state = self.inner.state.lock();
        state
            .history
            .as_mut()
            .and_then(|h| h.get(&user_id))
            .map(|q| q.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// Users with a history ring right now.
    pub fn users_in_history(&self) -> usize {
        self.inner
            .state
            .lock()
            .history
            .as_ref()
            .map_or(0, |h| h.len())
    }

    /// Users with at least one live subscription.
    pub fn subscribed_users(&self) -> usize {
        self.inner.state.lock().subscribers.len()
    }

    /// Feeds what the PostgreSQL listener reports. Notifications on [`EVENTS_CHANNEL`] from
    /// other instances are delivered to local subscribers and histories; our own echo, other
    /// channels and connection changes are ignored (events missed while disconnected are lost:
    /// clients reload state on reconnect).
    pub fn handle_listener_event(&self, event: &ListenerEvent) {
        match event {
            ListenerEvent::Notification { channel, payload } if channel == EVENTS_CHANNEL => {
                self.receive_remote(payload);
            }
            ListenerEvent::Notification { .. } => {}
            ListenerEvent::Connected => tracing::debug!("events listener connected"),
            ListenerEvent::Disconnected => {
                tracing::debug!("events listener disconnected; remote events may be missed")
            }
        }
    }

    fn receive_remote(&self, payload: &str) {
        let c = &self.inner.counters;
        let envelope = match remote::decode(payload) {
            Ok(e) => e,
            Err(e) => {
                add(&c.remote_invalid, 1);
                tracing::warn!(error = %e, bytes = payload.len(), "undecodable event notification ignored");
                return;
            }
        };
        if envelope.origin == self.inner.instance_id {
            add(&c.remote_echoes, 1);
            return;
        }
        add(&c.remote_received, envelope.events.len() as u64);
        self.inner
            .deliver(envelope.events.into_iter().map(Arc::new));
    }
}

impl Inner {
    /// Appends to the history rings and sends to subscribers, under one lock so that
    /// `subscribe_with_replay` sees each event either in the history or live, never both.
    pub(crate) fn deliver(&self, events: impl IntoIterator<Item = Arc<Event>>) {
        let per_user = self.config.history_per_user;
        let mut delivered = 0u64;
        let mut state = self.state.lock();
        if state.closed {
            return;
        }
        let State {
            history,
            subscribers,
            ..
        } = &mut *state;
        for event in events {
            if let Some(h) = history.as_mut() {
                match h.get_mut(&event.user_id) {
                    Some(q) => {
                        if q.len() >= per_user {
                            q.pop_front();
                        }
                        q.push_back(event.clone());
                    }
                    None => {
                        let mut q = VecDeque::with_capacity(per_user.min(16));
                        q.push_back(event.clone());
                        // Evicts the least recently used user's ring when full.
                        h.push(event.user_id, q);
                    }
                }
            }
            if let Some(tx) = subscribers.get(&event.user_id) {
                let user_id = event.user_id;
                if tx.send(event).is_ok() {
                    delivered += 1;
                } else {
                    subscribers.remove(&user_id);
                }
            }
        }
        drop(state);
        add(&self.counters.delivered, delivered);
    }

    /// Ends every subscription (they receive `None`) and refuses new deliveries.
    pub(crate) fn close(&self) {
        let mut state = self.state.lock();
        state.closed = true;
        state.subscribers.clear();
    }
}

impl EventPublisher for EventBus {
    fn publish(&self, event: Event) {
        let c = &self.inner.counters;
        match self.inner.tx.try_send(event) {
            Ok(()) => add(&c.published, 1),
            Err(mpsc::error::TrySendError::Full(e)) => {
                let n = c.dropped_full.fetch_add(1, Ordering::Relaxed);
                // Log the first drop and then every 1024th, not every one.
                if n.is_multiple_of(1024) {
                    tracing::warn!(kind = %e.kind, dropped = n + 1, "event queue full; event dropped");
                }
            }
            Err(mpsc::error::TrySendError::Closed(_)) => add(&c.dropped_closed, 1),
        }
    }
}

/// One subscriber's view of one user's events. Dropping it unsubscribes.
pub struct Subscription {
    user_id: Uuid,
    replay: VecDeque<Arc<Event>>,
    rx: Option<broadcast::Receiver<Arc<Event>>>,
    bus: Weak<Inner>,
}

impl std::fmt::Debug for Subscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscription")
            .field("user_id", &self.user_id)
            .field("replay_pending", &self.replay.len())
            .finish_non_exhaustive()
    }
}

impl Subscription {
    pub fn user_id(&self) -> Uuid {
        self.user_id
    }

    /// The next replayed or live event, a lag notice, or `None` once the bus has stopped.
    pub async fn recv(&mut self) -> Option<Received> {
        if let Some(e) = self.replay.pop_front() {
            return Some(Received::Event(e));
        }
        let rx = self.rx.as_mut()?;
        match rx.recv().await {
            Ok(e) => Some(Received::Event(e)),
            Err(broadcast::error::RecvError::Lagged(n)) => Some(Received::Lagged(n)),
            Err(broadcast::error::RecvError::Closed) => {
                self.rx = None;
                None
            }
        }
    }

    /// Like [`Subscription::recv`] without waiting: `Ok(None)` when nothing is there yet,
    /// `Err(())` once the bus has stopped.
    #[allow(clippy::result_unit_err)]
    pub fn try_recv(&mut self) -> Result<Option<Received>, ()> {
        if let Some(e) = self.replay.pop_front() {
            return Ok(Some(Received::Event(e)));
        }
        let rx = self.rx.as_mut().ok_or(())?;
        match rx.try_recv() {
            Ok(e) => Ok(Some(Received::Event(e))),
            Err(broadcast::error::TryRecvError::Lagged(n)) => Ok(Some(Received::Lagged(n))),
            Err(broadcast::error::TryRecvError::Empty) => Ok(None),
            Err(broadcast::error::TryRecvError::Closed) => {
                self.rx = None;
                Err(())
            }
        }
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let Some(rx) = self.rx.take() else { return };
        let Some(inner) = self.bus.upgrade() else {
            return;
        };
        let mut state = inner.state.lock();
        drop(rx);
        if let Some(tx) = state.subscribers.get(&self.user_id)
            && tx.receiver_count() == 0
        {
            state.subscribers.remove(&self.user_id);
        }
    }
}

#[async_trait::async_trait]
impl ListenerConsumer for EventBus {
    async fn on_listener_event(&self, event: &ListenerEvent) {
        self.handle_listener_event(event);
    }
}
