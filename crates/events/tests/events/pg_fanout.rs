//! Cross-instance delivery over the real PostgreSQL LISTEN/NOTIFY.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use gathering_domain::events::{Event, EventPublisher};
use gathering_domain::notify::ListenerEvent;
use gathering_events::{EVENTS_CHANNEL, EventBus, EventsConfig, Flusher, Received, Subscription};
use gathering_store::listener::{ListenerOptions, PgListener, PgNotifier};
use gathering_store::test_support::TestDb;
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::broadcast;
use tokio::time::timeout;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

const WAIT: Duration = Duration::from_secs(20);

/// One "instance": a bus NOTIFYing through the pool and fed by its own listener connection.
async fn instance(db: &TestDb, cancel: &CancellationToken) -> EventBus {
    let (bus, flusher): (EventBus, Flusher) = EventBus::with_notifier(
        EventsConfig {
            flush_window: Duration::from_millis(10),
            ..EventsConfig::default()
        },
        Arc::new(PgNotifier::new(db.pool.clone())),
    )
    .unwrap();
    tokio::spawn(flusher.run(cancel.clone()));
    let (listener, mut rx) = PgListener::spawn(
        &db.url,
        vec![EVENTS_CHANNEL.to_owned()],
        ListenerOptions::default(),
        cancel.clone(),
    )
    .unwrap();
    // Wait until it listens, so nothing sent from now on is missed.
    let first = timeout(WAIT, rx.recv()).await.unwrap().unwrap();
    assert_eq!(first, ListenerEvent::Connected);
    let feed = bus.clone();
    tokio::spawn(async move {
        let _listener = listener;
        loop {
            match rx.recv().await {
                Ok(ev) => feed.handle_listener_event(&ev),
                Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => break,
            }
        }
    });
    bus
}

async fn next_event(sub: &mut Subscription) -> Arc<Event> {
    match timeout(WAIT, sub.recv()).await.unwrap().unwrap() {
        Received::Event(e) => e,
        Received::Lagged(n) => panic!("unexpected lag of {n}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_on_instance_b_sees_events_published_on_instance_a_over_postgres() {
    let db = TestDb::new().await.expect("PostgreSQL test database");
    let cancel = CancellationToken::new();
    let a = instance(&db, &cancel).await;
    let b = instance(&db, &cancel).await;
    let (alice, bob) = (Uuid::now_v7(), Uuid::now_v7());
    let mut alice_on_b = b.subscribe(alice);
    let mut bob_on_b = b.subscribe(bob);
    let mut alice_on_a = a.subscribe(alice);

    for n in 0..50 {
        a.publish(Event::new(
            alice,
            "node.succeeded",
            json!({ "n": n, "run_id": "r" }),
        ));
    }
    // A large one travels as a stub.
    a.publish(Event::new(
        alice,
        "run.finished",
        json!({ "run_id": "r", "output": "y".repeat(20_000) }),
    ));
    a.publish(Event::new(bob, "for.bob", json!({})));

    for n in 0..50 {
        assert_eq!(next_event(&mut alice_on_b).await.data["n"], json!(n));
        assert_eq!(next_event(&mut alice_on_a).await.data["n"], json!(n));
    }
    let big_remote = next_event(&mut alice_on_b).await;
    assert_eq!(big_remote.kind, "run.finished");
    assert_eq!(big_remote.data["truncated"], json!(true));
    assert_eq!(big_remote.data["run_id"], json!("r"));
    let big_local = next_event(&mut alice_on_a).await;
    assert_eq!(big_local.data["output"].as_str().unwrap().len(), 20_000);
    assert_eq!(next_event(&mut bob_on_b).await.kind, "for.bob");

    // A marker from B back to A proves A's echo was ignored: A saw nothing twice.
    b.publish(Event::new(alice, "marker", json!({})));
    assert_eq!(next_event(&mut alice_on_a).await.kind, "marker");
    assert_eq!(next_event(&mut alice_on_b).await.kind, "marker");
    assert!(matches!(alice_on_a.try_recv(), Ok(None)));
    assert!(matches!(alice_on_b.try_recv(), Ok(None)));

    let (sa, sb) = (a.stats(), b.stats());
    assert!(sa.notify_sent >= 1 && sa.notify_failed == 0, "{sa:?}");
    assert!(
        sa.notify_sent < 52,
        "events were batched into fewer notifications: {sa:?}"
    );
    assert!(sa.remote_echoes >= 1, "{sa:?}");
    assert_eq!(sb.remote_received, 52);
    assert_eq!(sa.truncated, 1);
    cancel.cancel();
}
