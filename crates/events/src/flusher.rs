//! The flusher task: gathers a window of events, de-duplicates, delivers locally, and sends
//! them to other instances in batched NOTIFYs.

use crate::batch::Batch;
use crate::bus::{Inner, add};
use crate::remote::{self, EVENTS_CHANNEL, MAX_PAYLOAD_BYTES};
use gathering_domain::events::Event;
use std::sync::Arc;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Events taken from the queue per receive call.
const RECV_CHUNK: usize = 256;

/// Runs a bus's deliveries. Created with the bus; run exactly once:
/// `tokio::spawn(flusher.run(cancel))`. When `cancel` fires it flushes what is queued, sends the
/// last NOTIFYs, then ends every subscription.
pub struct Flusher {
    inner: Arc<Inner>,
    rx: mpsc::Receiver<Event>,
}

impl Flusher {
    pub(crate) fn new(inner: Arc<Inner>, rx: mpsc::Receiver<Event>) -> Self {
        Self { inner, rx }
    }

    pub async fn run(self, cancel: CancellationToken) {
        let Flusher { inner, mut rx } = self;
        let (ntx, nrx) = mpsc::channel::<String>(inner.config.notify_queue);
        let notifying = notify_loop(inner.clone(), nrx);
        let flushing = async {
            flush_loop(&inner, &mut rx, &ntx, &cancel).await;
            // Refuse further publishes, then deliver what slipped in meanwhile (bounded).
            rx.close();
            let mut batch = Batch::new(inner.config.max_batch);
            while let Ok(e) = rx.try_recv() {
                push(&inner, &mut batch, e);
                if batch.is_full() {
                    flush(&inner, &mut batch, &ntx);
                }
            }
            flush(&inner, &mut batch, &ntx);
            drop(ntx);
        };
        tokio::join!(flushing, notifying);
        inner.close();
        tracing::info!("event bus stopped");
    }
}

fn push(inner: &Inner, batch: &mut Batch, e: Event) {
    if batch.push(e) {
        add(&inner.counters.deduplicated, 1);
    }
}

async fn flush_loop(
    inner: &Inner,
    rx: &mut mpsc::Receiver<Event>,
    ntx: &mpsc::Sender<String>,
    cancel: &CancellationToken,
) {
    let window = inner.config.flush_window;
    let mut batch = Batch::new(inner.config.max_batch);
    let mut buf: Vec<Event> = Vec::with_capacity(RECV_CHUNK);
    loop {
        // Idle until the first event of a window.
        let n = tokio::select! {
            biased;
            _ = cancel.cancelled() => return,
            n = rx.recv_many(&mut buf, RECV_CHUNK) => n,
        };
        if n == 0 {
            return;
        }
        for e in buf.drain(..) {
            push(inner, &mut batch, e);
        }
        // Gather until the window ends or the batch is full (it may overshoot `max_batch` by
        // less than one receive chunk).
        let deadline = Instant::now() + window;
        let mut stop = false;
        while !batch.is_full() {
            tokio::select! {
                biased;
                _ = cancel.cancelled() => { stop = true; break; }
                _ = tokio::time::sleep_until(deadline) => break,
                n = rx.recv_many(&mut buf, RECV_CHUNK) => {
                    if n == 0 { stop = true; break; }
                    for e in buf.drain(..) {
                        push(inner, &mut batch, e);
                    }
                }
            }
        }
        flush(inner, &mut batch, ntx);
        if stop {
            return;
        }
    }
}

/// Delivers the batch locally, then queues its NOTIFY payloads (never waits for them).
fn flush(inner: &Inner, batch: &mut Batch, ntx: &mpsc::Sender<String>) {
    if batch.is_empty() {
        return;
    }
    let events: Vec<Arc<Event>> = batch.take().into_iter().map(Arc::new).collect();
    add(&inner.counters.flushed, events.len() as u64);
    inner.deliver(events.iter().cloned());
    if inner.notifier.is_none() {
        return;
    }
    let encoded = remote::encode(
        inner.instance_id,
        events.iter().map(|e| &**e),
        MAX_PAYLOAD_BYTES,
    );
    add(&inner.counters.truncated, encoded.truncated);
    add(&inner.counters.notify_dropped, encoded.dropped);
    for payload in encoded.payloads {
        if ntx.try_send(payload).is_err() {
            add(&inner.counters.notify_dropped, 1);
        }
    }
}

/// Sends queued payloads one at a time, each bounded by `notify_timeout`.
async fn notify_loop(inner: Arc<Inner>, mut nrx: mpsc::Receiver<String>) {
    let Some(notifier) = inner.notifier.clone() else {
        // Nothing is ever queued without a notifier; wait for the sender to go away.
        while nrx.recv().await.is_some() {}
        return;
    };
    while let Some(payload) = nrx.recv().await {
        let sent = tokio::time::timeout(
            inner.config.notify_timeout,
            notifier.notify(EVENTS_CHANNEL, &payload),
        )
        .await;
        match sent {
            Ok(Ok(())) => add(&inner.counters.notify_sent, 1),
            Ok(Err(e)) => {
                add(&inner.counters.notify_failed, 1);
                tracing::warn!(error = %e, "event NOTIFY failed; other instances miss these events");
            }
            Err(_) => {
                add(&inner.counters.notify_failed, 1);
                tracing::warn!("event NOTIFY timed out; other instances miss these events");
            }
        }
    }
}
