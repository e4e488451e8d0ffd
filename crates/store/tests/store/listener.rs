//! LISTEN/NOTIFY against the real PostgreSQL: delivery, several channels, reconnection after the
//! backend is killed, cancellation.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use gathering_domain::RepoError;
use gathering_domain::notify::{ListenerEvent, Notifier};
use gathering_store::listener::{
    LISTENER_APPLICATION_NAME, ListenerOptions, PgListener, PgNotifier,
};
use gathering_store::test_support::{TestDb, wait_until};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tokio::sync::broadcast::Receiver;
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(15);

async fn next_event(rx: &mut Receiver<ListenerEvent>) -> ListenerEvent {
    tokio::time::timeout(WAIT, rx.recv())
        .await
        .expect("no listener event within the timeout")
        .expect("listener channel closed or lagged")
}

async fn expect_connected(rx: &mut Receiver<ListenerEvent>) {
    assert_eq!(next_event(rx).await, ListenerEvent::Connected);
}

fn fast_options() -> ListenerOptions {
    ListenerOptions {
        capacity: 64,
        min_backoff: Duration::from_millis(50),
        max_backoff: Duration::from_millis(500),
        connect_timeout: Duration::from_secs(5),
    }
}

#[tokio::test]
async fn notification_sent_through_the_notifier_reaches_the_listener() {
    let db = TestDb::new().await.unwrap();
    let cancel = CancellationToken::new();
    let (listener, mut rx) = PgListener::spawn(
        &db.url,
        vec!["token_revoked".to_owned()],
        fast_options(),
        cancel.clone(),
    )
    .unwrap();
    expect_connected(&mut rx).await;
    assert!(listener.is_connected());

    let notifier = PgNotifier::new(db.pool.clone());
    notifier
        .notify("token_revoked", "0190-some-jti")
        .await
        .unwrap();
    assert_eq!(
        next_event(&mut rx).await,
        ListenerEvent::Notification {
            channel: "token_revoked".to_owned(),
            payload: "0190-some-jti".to_owned()
        }
    );
    cancel.cancel();
    tokio::time::timeout(WAIT, listener.join()).await.unwrap();
}

#[tokio::test]
async fn listener_delivers_each_channel_it_listens_to_and_no_other() {
    let db = TestDb::new().await.unwrap();
    let cancel = CancellationToken::new();
    let (listener, mut rx) = PgListener::spawn(
        &db.url,
        vec!["alpha".to_owned(), "beta_2".to_owned()],
        fast_options(),
        cancel.clone(),
    )
    .unwrap();
    expect_connected(&mut rx).await;
    let mut second = listener.subscribe();

    let notifier = PgNotifier::new(db.pool.clone());
    notifier.notify("alpha", "a").await.unwrap();
    notifier.notify("gamma", "not listened").await.unwrap();
    notifier.notify("beta_2", "b").await.unwrap();

    for r in [&mut rx, &mut second] {
        assert_eq!(
            next_event(r).await,
            ListenerEvent::Notification {
                channel: "alpha".to_owned(),
                payload: "a".to_owned()
            }
        );
        assert_eq!(
            next_event(r).await,
            ListenerEvent::Notification {
                channel: "beta_2".to_owned(),
                payload: "b".to_owned()
            }
        );
    }
    cancel.cancel();
    tokio::time::timeout(WAIT, listener.join()).await.unwrap();
}

#[tokio::test]
async fn oversized_payload_is_refused_not_truncated() {
    let db = TestDb::new().await.unwrap();
    let notifier = PgNotifier::new(db.pool.clone());
    let err = notifier
        .notify("token_revoked", &"x".repeat(8000))
        .await
        .unwrap_err();
    assert!(matches!(err, RepoError::Other(_)));
    let msg = std::error::Error::source(&err).unwrap().to_string();
    assert!(msg.contains("8000 bytes"), "{msg}");
    // The largest allowed payload goes through.
    notifier
        .notify("token_revoked", &"x".repeat(7999))
        .await
        .unwrap();
}

#[tokio::test]
async fn listener_reconnects_after_its_backend_is_terminated_and_keeps_delivering() {
    let db = TestDb::new().await.unwrap();
    let cancel = CancellationToken::new();
    let (listener, mut rx) = PgListener::spawn(
        &db.url,
        vec!["token_revoked".to_owned()],
        fast_options(),
        cancel.clone(),
    )
    .unwrap();
    expect_connected(&mut rx).await;

    let client = db.pool.get().await.unwrap();
    let killed: i64 = client
        .query_one(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
             WHERE application_name = $1 AND datname = $2",
            &[&LISTENER_APPLICATION_NAME, &db.name],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(killed, 1);

    assert_eq!(next_event(&mut rx).await, ListenerEvent::Disconnected);
    expect_connected(&mut rx).await;
    assert!(listener.is_connected());

    let notifier = PgNotifier::new(db.pool.clone());
    notifier.notify("token_revoked", "after").await.unwrap();
    assert_eq!(
        next_event(&mut rx).await,
        ListenerEvent::Notification {
            channel: "token_revoked".to_owned(),
            payload: "after".to_owned()
        }
    );
    cancel.cancel();
    tokio::time::timeout(WAIT, listener.join()).await.unwrap();
}

#[tokio::test]
async fn cancelling_stops_the_task_and_closes_its_connection() {
    let db = TestDb::new().await.unwrap();
    let cancel = CancellationToken::new();
    let (listener, mut rx) = PgListener::spawn(
        &db.url,
        vec!["token_revoked".to_owned()],
        fast_options(),
        cancel.clone(),
    )
    .unwrap();
    expect_connected(&mut rx).await;

    cancel.cancel();
    assert_eq!(next_event(&mut rx).await, ListenerEvent::Disconnected);
    let mut rx2 = listener.subscribe();
    tokio::time::timeout(WAIT, listener.join()).await.unwrap();
    // The sender is gone with the task: receivers see the channel closed.
    assert!(matches!(
        tokio::time::timeout(WAIT, rx2.recv()).await.unwrap(),
        Err(tokio::sync::broadcast::error::RecvError::Closed)
    ));

    // Its backend goes away (the server may take a moment to notice the closed socket).
    let client = db.pool.get().await.unwrap();
    let gone = tokio::time::timeout(WAIT, async {
        loop {
            let n: i64 = client
                .query_one(
                    "SELECT count(*) FROM pg_stat_activity \
                     WHERE application_name = $1 AND datname = $2",
                    &[&LISTENER_APPLICATION_NAME, &db.name],
                )
                .await
                .unwrap()
                .get(0);
            if n == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert!(gone.is_ok(), "listener backend still present after cancel");
}

#[tokio::test]
async fn listener_keeps_retrying_an_unreachable_database_until_cancelled() {
    // A port that accepts each connection and closes it at once: no database there, and every
    // attempt is counted.
    let refuser = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = refuser.local_addr().unwrap().port();
    let attempts = Arc::new(AtomicUsize::new(0));
    let counted = attempts.clone();
    tokio::spawn(async move {
        while let Ok((sock, _)) = refuser.accept().await {
            counted.fetch_add(1, Ordering::SeqCst);
            drop(sock);
        }
    });
    let cancel = CancellationToken::new();
    let (listener, _rx) = PgListener::spawn(
        format!("postgres://postgres@127.0.0.1:{port}/nothing"),
        vec!["token_revoked".to_owned()],
        fast_options(),
        cancel.clone(),
    )
    .unwrap();
    // A few retry rounds go by without the task ending.
    wait_until(WAIT, || async { attempts.load(Ordering::SeqCst) >= 3 }).await;
    assert!(!listener.is_finished());
    assert!(!listener.is_connected());
    cancel.cancel();
    tokio::time::timeout(WAIT, listener.join()).await.unwrap();
}

/// Records what the fan-out hands it.
#[derive(Default)]
struct Recorder(std::sync::Mutex<Vec<ListenerEvent>>);

#[async_trait::async_trait]
impl gathering_domain::notify::ListenerConsumer for Recorder {
    async fn on_listener_event(&self, event: &ListenerEvent) {
        self.0.lock().unwrap().push(event.clone());
    }
}

#[tokio::test]
async fn the_fanout_feeds_every_consumer_and_its_handle_joins_the_listener_on_cancel() {
    let db = TestDb::new().await.unwrap();
    let cancel = CancellationToken::new();
    let (listener, rx) = PgListener::spawn(
        &db.url,
        vec!["fanout_test".to_owned()],
        fast_options(),
        cancel.clone(),
    )
    .unwrap();
    let mut watch = listener.subscribe();
    let (a, b) = (
        std::sync::Arc::new(Recorder::default()),
        std::sync::Arc::new(Recorder::default()),
    );
    let consumers: Vec<std::sync::Arc<dyn gathering_domain::notify::ListenerConsumer>> =
        vec![a.clone(), b.clone()];
    let task = gathering_store::listener::spawn_fanout(listener, rx, consumers, cancel.clone());
    expect_connected(&mut watch).await;
    PgNotifier::new(db.pool.clone())
        .notify("fanout_test", "hello")
        .await
        .unwrap();
    let hello = ListenerEvent::Notification {
        channel: "fanout_test".to_owned(),
        payload: "hello".to_owned(),
    };
    let deadline = tokio::time::Instant::now() + WAIT;
    while !(a.0.lock().unwrap().contains(&hello) && b.0.lock().unwrap().contains(&hello)) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the notification did not reach both consumers"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(a.0.lock().unwrap().first(), Some(&ListenerEvent::Connected));

    cancel.cancel();
    tokio::time::timeout(WAIT, task)
        .await
        .expect("the fan-out (and the listener it owns) stop on cancel")
        .unwrap();
}
