//! Behaviour of the event bus in one process (and across in-memory "instances").
#![allow(clippy::unwrap_used, clippy::expect_used)]

use async_trait::async_trait;
use gathering_domain::RepoError;
use gathering_domain::events::{Event, EventPublisher};
use gathering_domain::notify::{ListenerEvent, Notifier};
use gathering_events::remote::MAX_PAYLOAD_BYTES;
use gathering_events::{EVENTS_CHANNEL, EventBus, EventsConfig, Received, Subscription};
use parking_lot::Mutex;
use serde_json::json;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinHandle;
use tokio::time::timeout;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

const WAIT: Duration = Duration::from_secs(10);

fn config() -> EventsConfig {
    EventsConfig {
        queue_capacity: 8192,
        flush_window: Duration::from_millis(5),
        history_per_user: 50,
        max_users_in_history: 100,
        subscriber_capacity: 8192,
        ..EventsConfig::default()
    }
}

struct Running {
    bus: EventBus,
    cancel: CancellationToken,
    task: JoinHandle<()>,
}

fn start(config: EventsConfig) -> Running {
    let (bus, flusher) = EventBus::new(config).unwrap();
    let cancel = CancellationToken::new();
    let task = tokio::spawn(flusher.run(cancel.clone()));
    Running { bus, cancel, task }
}

impl Running {
    async fn stop(self) {
        self.cancel.cancel();
        timeout(WAIT, self.task).await.unwrap().unwrap();
    }
}

async fn next(sub: &mut Subscription) -> Received {
    timeout(WAIT, sub.recv())
        .await
        .expect("an event within the wait")
        .expect("the bus is running")
}

async fn next_event(sub: &mut Subscription) -> Arc<Event> {
    match next(sub).await {
        Received::Event(e) => e,
        Received::Lagged(n) => panic!("unexpected lag of {n}"),
    }
}

fn ev(user: Uuid, kind: &str, data: serde_json::Value) -> Event {
    Event::new(user, kind, data)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_publishers_lose_nothing_within_bounds_and_keep_each_publishers_order() {
    let r = start(config());
    let user = Uuid::now_v7();
    let mut sub = r.bus.subscribe(user);
    let (publishers, per) = (8u64, 500u64);
    let mut handles = Vec::new();
    for p in 0..publishers {
        let bus = r.bus.clone();
        handles.push(tokio::spawn(async move {
            for seq in 0..per {
                bus.publish(ev(user, "tick", json!({ "p": p, "seq": seq })));
                if seq % 50 == 0 {
                    tokio::task::yield_now().await;
                }
            }
        }));
    }
    for h in handles {
        h.await.unwrap();
    }
    let mut last: HashMap<u64, u64> = HashMap::new();
    for _ in 0..publishers * per {
        let e = next_event(&mut sub).await;
        let (p, seq) = (
            e.data["p"].as_u64().unwrap(),
            e.data["seq"].as_u64().unwrap(),
        );
        match last.insert(p, seq) {
            Some(prev) => assert_eq!(seq, prev + 1, "publisher {p} out of order"),
            None => assert_eq!(seq, 0),
        }
    }
    assert!(last.values().all(|s| *s == per - 1));
    let s = r.bus.stats();
    assert_eq!(s.published, publishers * per);
    assert_eq!(s.dropped_full, 0);
    assert_eq!(s.flushed, publishers * per);
    assert_eq!(s.delivered, publishers * per);
    r.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn keyed_updates_from_concurrent_publishers_stay_in_order_and_always_end_with_the_last() {
    let r = start(config());
    let user = Uuid::now_v7();
    let mut sub = r.bus.subscribe(user);
    let (publishers, per) = (4u64, 2000u64);
    let mut handles = Vec::new();
    for p in 0..publishers {
        let bus = r.bus.clone();
        handles.push(tokio::spawn(async move {
            for seq in 0..per {
                bus.publish(
                    ev(user, "progress", json!({ "p": p, "seq": seq }))
                        .with_dedup_key(format!("run:{p}")),
                );
                if seq % 100 == 0 {
                    tokio::task::yield_now().await;
                }
            }
        }));
    }
    for h in handles {
        h.await.unwrap();
    }
    let mut last: HashMap<u64, u64> = HashMap::new();
    let mut received = 0u64;
    while last.len() < publishers as usize || last.values().any(|s| *s != per - 1) {
        let e = next_event(&mut sub).await;
        received += 1;
        let (p, seq) = (
            e.data["p"].as_u64().unwrap(),
            e.data["seq"].as_u64().unwrap(),
        );
        if let Some(prev) = last.insert(p, seq) {
            assert!(seq > prev, "key run:{p} went back from {prev} to {seq}");
        }
    }
    let s = r.bus.stats();
    assert_eq!(s.dropped_full, 0);
    assert_eq!(s.flushed + s.deduplicated, publishers * per);
    assert_eq!(s.flushed, received);
    r.stop().await;
}

#[tokio::test]
async fn duplicates_within_one_window_collapse_to_the_last_in_publish_order() {
    // Everything is queued before the flusher starts, so it all falls in its first window.
    let (bus, flusher) = EventBus::new(config()).unwrap();
    let user = Uuid::now_v7();
    let mut sub = bus.subscribe(user);
    bus.publish(ev(user, "a", json!({"n": 1})).with_dedup_key("x"));
    bus.publish(ev(user, "b", json!({"n": 2})));
    bus.publish(ev(user, "a", json!({"n": 3})).with_dedup_key("y"));
    bus.publish(ev(user, "a", json!({"n": 4})).with_dedup_key("x"));
    bus.publish(ev(user, "b", json!({"n": 5})));
    bus.publish(ev(user, "b", json!({"n": 6})));
    bus.publish(ev(user, "a", json!({"n": 7})).with_dedup_key("x"));
    let cancel = CancellationToken::new();
    let task = tokio::spawn(flusher.run(cancel.clone()));
    let mut got = Vec::new();
    for _ in 0..5 {
        got.push(next_event(&mut sub).await.data["n"].as_u64().unwrap());
    }
    assert_eq!(got, vec![2, 3, 5, 6, 7]);
    assert_eq!(sub.try_recv(), Ok(None));
    assert_eq!(bus.stats().deduplicated, 2);
    cancel.cancel();
    timeout(WAIT, task).await.unwrap().unwrap();
}

#[tokio::test]
async fn the_same_key_in_a_later_window_is_delivered_again() {
    let r = start(config());
    let user = Uuid::now_v7();
    let mut sub = r.bus.subscribe(user);
    r.bus
        .publish(ev(user, "status", json!({"n": 1})).with_dedup_key("k"));
    assert_eq!(next_event(&mut sub).await.data["n"], json!(1));
    r.bus
        .publish(ev(user, "status", json!({"n": 2})).with_dedup_key("k"));
    assert_eq!(next_event(&mut sub).await.data["n"], json!(2));
    r.stop().await;
}

#[tokio::test]
async fn a_slow_subscriber_lags_and_is_told_while_its_buffer_stays_at_capacity() {
    let r = start(EventsConfig {
        subscriber_capacity: 16,
        ..config()
    });
    let (slow_user, marker_user) = (Uuid::now_v7(), Uuid::now_v7());
    let mut slow = r.bus.subscribe(slow_user);
    let mut marker = r.bus.subscribe(marker_user);
    for seq in 0..1000u64 {
        r.bus.publish(ev(slow_user, "tick", json!({ "seq": seq })));
    }
    r.bus.publish(ev(marker_user, "done", json!({})));
    // Events are delivered in publish order: once the marker is here, all 1000 were sent.
    next_event(&mut marker).await;

    assert_eq!(next(&mut slow).await, Received::Lagged(1000 - 16));
    // Only the newest `capacity` events were kept for it.
    for seq in 1000 - 16..1000u64 {
        assert_eq!(next_event(&mut slow).await.data["seq"], json!(seq));
    }
    assert_eq!(slow.try_recv(), Ok(None));
    assert_eq!(r.bus.stats().dropped_full, 0);
    r.stop().await;
}

#[tokio::test]
async fn each_user_receives_only_their_own_events() {
    let r = start(config());
    let (alice, bob) = (Uuid::now_v7(), Uuid::now_v7());
    let mut a = r.bus.subscribe(alice);
    let mut a2 = r.bus.subscribe(alice);
    let mut b = r.bus.subscribe(bob);
    for n in 0..10 {
        r.bus.publish(ev(alice, "for.alice", json!({ "n": n })));
        r.bus.publish(ev(bob, "for.bob", json!({ "n": n })));
    }
    for _ in 0..10 {
        let e = next_event(&mut a).await;
        assert_eq!((e.user_id, e.kind.as_str()), (alice, "for.alice"));
        let e = next_event(&mut a2).await;
        assert_eq!((e.user_id, e.kind.as_str()), (alice, "for.alice"));
        let e = next_event(&mut b).await;
        assert_eq!((e.user_id, e.kind.as_str()), (bob, "for.bob"));
    }
    assert_eq!(a.try_recv(), Ok(None));
    assert_eq!(b.try_recv(), Ok(None));
    r.stop().await;
}

#[tokio::test]
async fn unsubscribing_frees_the_users_channel() {
    let r = start(config());
    let user = Uuid::now_v7();
    let s1 = r.bus.subscribe(user);
    let s2 = r.bus.subscribe(user);
    assert_eq!(r.bus.subscribed_users(), 1);
    drop(s1);
    assert_eq!(r.bus.subscribed_users(), 1);
    drop(s2);
    assert_eq!(r.bus.subscribed_users(), 0);
    r.stop().await;
}

#[tokio::test]
async fn history_is_bounded_per_user_and_replayed_before_live_events() {
    let r = start(EventsConfig {
        history_per_user: 5,
        ..config()
    });
    let user = Uuid::now_v7();
    let mut watcher = r.bus.subscribe(user);
    for n in 0..12u64 {
        r.bus.publish(ev(user, "tick", json!({ "n": n })));
    }
    for _ in 0..12 {
        next_event(&mut watcher).await;
    }
    let kept: Vec<u64> = r
        .bus
        .history(user)
        .iter()
        .map(|e| e.data["n"].as_u64().unwrap())
        .collect();
    assert_eq!(kept, vec![7, 8, 9, 10, 11]);

    let mut late = r.bus.subscribe_with_replay(user);
    r.bus.publish(ev(user, "tick", json!({ "n": 12 })));
    let mut got = Vec::new();
    for _ in 0..6 {
        got.push(next_event(&mut late).await.data["n"].as_u64().unwrap());
    }
    assert_eq!(got, vec![7, 8, 9, 10, 11, 12]);
    assert_eq!(late.try_recv(), Ok(None));
    // A plain subscription does not replay.
    let mut plain = r.bus.subscribe(user);
    assert_eq!(plain.try_recv(), Ok(None));
    r.stop().await;
}

#[tokio::test]
async fn history_keeps_at_most_the_configured_users_evicting_the_least_recently_used() {
    let r = start(EventsConfig {
        max_users_in_history: 3,
        ..config()
    });
    let users: Vec<Uuid> = (0..4).map(|_| Uuid::now_v7()).collect();
    let mut subs: Vec<Subscription> = users.iter().map(|u| r.bus.subscribe(*u)).collect();
    for (u, s) in users[..3].iter().zip(subs.iter_mut()) {
        r.bus.publish(ev(*u, "tick", json!({})));
        next_event(s).await;
    }
    // Touch user 0 so user 1 becomes the least recently used.
    assert_eq!(r.bus.history(users[0]).len(), 1);
    r.bus.publish(ev(users[3], "tick", json!({})));
    next_event(&mut subs[3]).await;
    assert_eq!(r.bus.users_in_history(), 3);
    assert_eq!(r.bus.history(users[0]).len(), 1);
    assert!(r.bus.history(users[1]).is_empty(), "LRU user evicted");
    assert_eq!(r.bus.history(users[3]).len(), 1);
    r.stop().await;
}

#[tokio::test]
async fn a_full_queue_drops_and_counts_without_blocking_the_publisher() {
    // No flusher running: the queue fills.
    let (bus, _flusher) = EventBus::new(EventsConfig {
        queue_capacity: 4,
        ..config()
    })
    .unwrap();
    let user = Uuid::now_v7();
    for n in 0..10 {
        bus.publish(ev(user, "tick", json!({ "n": n })));
    }
    let s = bus.stats();
    assert_eq!(s.published, 4);
    assert_eq!(s.dropped_full, 6);
    assert_eq!(bus.queue_len(), 4);
}

#[tokio::test]
async fn shutdown_delivers_what_was_queued_ends_subscriptions_and_counts_later_publishes() {
    let (bus, flusher) = EventBus::new(EventsConfig {
        flush_window: Duration::from_secs(30),
        ..config()
    })
    .unwrap();
    let user = Uuid::now_v7();
    let mut sub = bus.subscribe(user);
    for n in 0..3 {
        bus.publish(ev(user, "tick", json!({ "n": n })));
    }
    let cancel = CancellationToken::new();
    cancel.cancel();
    timeout(WAIT, flusher.run(cancel)).await.unwrap();
    for n in 0..3 {
        assert_eq!(next_event(&mut sub).await.data["n"], json!(n));
    }
    assert_eq!(timeout(WAIT, sub.recv()).await.unwrap(), None);
    assert!(bus.subscribe(user).recv().await.is_none());
    bus.publish(ev(user, "late", json!({})));
    assert_eq!(bus.stats().dropped_closed, 1);
}

#[tokio::test]
async fn invalid_configuration_is_refused() {
    for bad in [
        EventsConfig {
            queue_capacity: 0,
            ..config()
        },
        EventsConfig {
            subscriber_capacity: 0,
            ..config()
        },
        EventsConfig {
            max_batch: 0,
            ..config()
        },
    ] {
        assert!(EventBus::new(bad).is_err());
    }
    // History may be disabled.
    let r = start(EventsConfig {
        history_per_user: 0,
        ..config()
    });
    let user = Uuid::now_v7();
    let mut s = r.bus.subscribe(user);
    r.bus.publish(ev(user, "x", json!({})));
    next_event(&mut s).await;
    assert!(r.bus.history(user).is_empty());
    r.stop().await;
}

/// Stands in for PostgreSQL: every notification reaches every bus (including the sender).
#[derive(Default)]
struct Hub {
    buses: Mutex<Vec<EventBus>>,
    payloads: Mutex<Vec<String>>,
}

#[async_trait]
impl Notifier for Hub {
    async fn notify(&self, channel: &str, payload: &str) -> Result<(), RepoError> {
        assert!(payload.len() <= MAX_PAYLOAD_BYTES);
        self.payloads.lock().push(payload.to_owned());
        let buses = self.buses.lock().clone();
        let ev = ListenerEvent::Notification {
            channel: channel.to_owned(),
            payload: payload.to_owned(),
        };
        for b in buses {
            b.handle_listener_event(&ev);
        }
        Ok(())
    }
}

fn start_on(hub: &Arc<Hub>, config: EventsConfig) -> Running {
    let (bus, flusher) = EventBus::with_notifier(config, hub.clone()).unwrap();
    hub.buses.lock().push(bus.clone());
    let cancel = CancellationToken::new();
    let task = tokio::spawn(flusher.run(cancel.clone()));
    Running { bus, cancel, task }
}

#[tokio::test]
async fn events_reach_subscribers_on_another_instance_once_and_the_origin_ignores_its_echo() {
    let hub = Arc::new(Hub::default());
    let a = start_on(&hub, config());
    let b = start_on(&hub, config());
    let user = Uuid::now_v7();
    let mut on_a = a.bus.subscribe(user);
    let mut on_b = b.bus.subscribe(user);
    for n in 0..20 {
        a.bus.publish(ev(user, "run.started", json!({ "n": n })));
    }
    for n in 0..20 {
        assert_eq!(next_event(&mut on_a).await.data["n"], json!(n));
        assert_eq!(next_event(&mut on_b).await.data["n"], json!(n));
    }
    // The echo came back to A (the hub delivers to everyone) and was ignored.
    b.bus.publish(ev(user, "marker", json!({})));
    assert_eq!(next_event(&mut on_a).await.kind, "marker");
    assert_eq!(next_event(&mut on_b).await.kind, "marker");
    assert_eq!(on_a.try_recv(), Ok(None));
    assert_eq!(on_b.try_recv(), Ok(None));
    let sa = a.bus.stats();
    assert!(sa.remote_echoes >= 1);
    assert_eq!(sa.remote_received, 1);
    assert_eq!(b.bus.stats().remote_received, 20);
    // 20 small events in one window travel in fewer notifications than events.
    let payloads = hub.payloads.lock().len();
    assert!(payloads < 21, "{payloads} payloads for 21 events");
    // Replay on B includes what A published.
    assert_eq!(b.bus.history(user).len(), 21);
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn an_event_too_large_for_notify_arrives_elsewhere_as_a_stub_and_whole_locally() {
    let hub = Arc::new(Hub::default());
    let a = start_on(&hub, config());
    let b = start_on(&hub, config());
    let user = Uuid::now_v7();
    let mut on_a = a.bus.subscribe(user);
    let mut on_b = b.bus.subscribe(user);
    let big = ev(
        user,
        "node.succeeded",
        json!({ "run_id": "r1", "output": "x".repeat(50_000) }),
    );
    a.bus.publish(big.clone());
    let local = next_event(&mut on_a).await;
    assert_eq!(*local, big);
    let remote = next_event(&mut on_b).await;
    assert_eq!(remote.kind, "node.succeeded");
    assert_eq!(remote.at, big.at);
    assert_eq!(remote.data["truncated"], json!(true));
    assert_eq!(remote.data["run_id"], json!("r1"));
    assert_eq!(a.bus.stats().truncated, 1);
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn notifications_on_other_channels_or_undecodable_are_ignored() {
    let r = start(config());
    let user = Uuid::now_v7();
    let mut s = r.bus.subscribe(user);
    r.bus.handle_listener_event(&ListenerEvent::Notification {
        channel: "token_revoked".into(),
        payload: "{}".into(),
    });
    r.bus.handle_listener_event(&ListenerEvent::Notification {
        channel: EVENTS_CHANNEL.into(),
        payload: "not json".into(),
    });
    r.bus.handle_listener_event(&ListenerEvent::Connected);
    r.bus.handle_listener_event(&ListenerEvent::Disconnected);
    assert_eq!(s.try_recv(), Ok(None));
    assert_eq!(r.bus.stats().remote_invalid, 1);
    r.stop().await;
}

/// A notifier that never answers: local delivery must not wait for it.
struct Stuck;

#[async_trait]
impl Notifier for Stuck {
    async fn notify(&self, _channel: &str, _payload: &str) -> Result<(), RepoError> {
        futures::future::pending::<()>().await;
        Ok(())
    }
}

#[tokio::test]
async fn a_stuck_database_does_not_delay_local_delivery_and_notify_backlog_is_bounded() {
    let (bus, flusher) = EventBus::with_notifier(
        EventsConfig {
            notify_queue: 2,
            notify_timeout: Duration::from_secs(3600),
            ..config()
        },
        Arc::new(Stuck),
    )
    .unwrap();
    let cancel = CancellationToken::new();
    let _task = tokio::spawn(flusher.run(cancel.clone()));
    let user = Uuid::now_v7();
    let mut s = bus.subscribe(user);
    for n in 0..10u64 {
        bus.publish(ev(user, "tick", json!({ "n": n })));
        // One window per event: each flush queues one payload.
        assert_eq!(next_event(&mut s).await.data["n"], json!(n));
    }
    let st = bus.stats();
    assert_eq!(st.notify_sent, 0);
    // One payload is being sent, two wait; the rest were dropped and counted.
    assert!(st.notify_dropped >= 7, "{st:?}");
}
