//! Event bus throughput, in process.
//!
//! 1. Publish throughput: `PUBLISHERS` tasks publish `EVENTS` events in total (distinct users,
//!    no de-duplication); reports the rate of `publish` calls and the end-to-end rate until one
//!    subscriber per user has received everything.
//! 2. Fan-out: 100 subscribers (`SUBSCRIBERS`) — one per user, then all on one user — each
//!    receiving `PER_SUBSCRIBER` events; reports delivered events per second.
//!
//! 3. WebSocket fan-out against the real server (`gathering_server::Application` on a fresh
//!    PostgreSQL database): `WS_CLIENTS` (100) real WebSocket clients on `GET /api/v1/ws`, events
//!    published through a real action — `POST /tools/send_notification/invoke` over HTTP, which
//!    stores the notification and publishes `notification.created`:
//!    a. one instance, all clients belong to one user, `WS_EVENTS` (300) notifications;
//!    b. one instance, one client per user (100 users), `WS_EVENTS_PER_USER` (10) each;
//!    c. two instances on one database: clients on B, notifications invoked on A (cross-instance
//!    through LISTEN/NOTIFY), one user, `WS_EVENTS` notifications.
//!    Reports the invoke rate, deliveries per second (first invoke → last delivery), the time
//!    until every client had every event, and the publish → delivery latency per message.
//!
//! `cargo bench -p gathering-benches --bench events`. Options via env: `EVENTS` (200000),
//! `PUBLISHERS` (4), `SUBSCRIBERS` (100), `PER_SUBSCRIBER` (1000), `WS_CLIENTS` (100),
//! `WS_EVENTS` (300), `WS_EVENTS_PER_USER` (10), `WS_CONCURRENCY` (16 invokes in flight),
//! `WS=0` skips part 3. Part 3 needs PostgreSQL (`TEST_DATABASE_URL`, default 127.0.0.1:5432).
//!
//! Parts 1 and 2 use in-process subscribers (the bus side of the WebSocket route); part 3
//! includes HTTP, PostgreSQL, NOTIFY and the socket writes.

use gathering_domain::events::{Event, EventPublisher};
use gathering_events::{EventBus, EventsConfig, Received, Subscription};
use serde_json::json;
use std::time::{Duration, Instant};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

fn env_num(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn start(config: EventsConfig) -> anyhow::Result<(EventBus, CancellationToken, JoinHandle<()>)> {
    let (bus, flusher) = EventBus::new(config)?;
    let cancel = CancellationToken::new();
    let task = tokio::spawn(flusher.run(cancel.clone()));
    Ok((bus, cancel, task))
}

/// Receives `n` events (lag notices count what was skipped); returns how many arrived.
fn drain(mut sub: Subscription, n: u64) -> JoinHandle<(u64, u64)> {
    tokio::spawn(async move {
        let (mut got, mut missed) = (0u64, 0u64);
        while got + missed < n {
            match tokio::time::timeout(Duration::from_secs(30), sub.recv()).await {
                Ok(Some(Received::Event(_))) => got += 1,
                Ok(Some(Received::Lagged(k))) => missed += k,
                Ok(None) | Err(_) => break,
            }
        }
        (got, missed)
    })
}

fn rate(n: u64, d: Duration) -> String {
    format!("{:.0}/s", n as f64 / d.as_secs_f64().max(1e-9))
}

async fn publish_throughput(total: usize, publishers: usize) -> anyhow::Result<()> {
    let users: Vec<Uuid> = (0..publishers).map(|_| Uuid::now_v7()).collect();
    let per = total / publishers;
    let (bus, cancel, task) = start(EventsConfig {
        queue_capacity: total,
        subscriber_capacity: per.next_power_of_two(),
        max_batch: 8192,
        ..EventsConfig::default()
    })?;
    let receivers: Vec<_> = users
        .iter()
        .map(|u| drain(bus.subscribe(*u), per as u64))
        .collect();
    let started = Instant::now();
    let mut pubs = Vec::new();
    for u in users.clone() {
        let bus = bus.clone();
        pubs.push(tokio::spawn(async move {
            let t = Instant::now();
            for i in 0..per {
                bus.publish(Event::new(u, "node.succeeded", json!({ "i": i })));
            }
            t.elapsed()
        }));
    }
    let mut publish_time = Duration::ZERO;
    for p in pubs {
        publish_time = publish_time.max(p.await?);
    }
    let publish_wall = started.elapsed();
    let (mut got, mut missed) = (0, 0);
    for r in receivers {
        let (g, m) = r.await?;
        got += g;
        missed += m;
    }
    let e2e = started.elapsed();
    let s = bus.stats();
    println!(
        "publish: {} events by {publishers} publishers: publish calls {} (slowest publisher {:?}, wall {:?}); \
         end-to-end {} in {:?}; received {got}, lagged {missed}, dropped {}",
        per * publishers,
        rate((per * publishers) as u64, publish_wall),
        publish_time,
        publish_wall,
        rate(got, e2e),
        e2e,
        s.dropped_full
    );
    cancel.cancel();
    task.await?;
    Ok(())
}

async fn fan_out(subscribers: usize, per_sub: usize, same_user: bool) -> anyhow::Result<()> {
    let (bus, cancel, task) = start(EventsConfig {
        queue_capacity: (subscribers * per_sub).max(1024),
        subscriber_capacity: per_sub.next_power_of_two(),
        max_batch: 8192,
        ..EventsConfig::default()
    })?;
    let shared = Uuid::now_v7();
    let users: Vec<Uuid> = (0..subscribers)
        .map(|_| if same_user { shared } else { Uuid::now_v7() })
        .collect();
    let receivers: Vec<_> = users
        .iter()
        .map(|u| drain(bus.subscribe(*u), per_sub as u64))
        .collect();
    let started = Instant::now();
    if same_user {
        for i in 0..per_sub {
            bus.publish(Event::new(shared, "node.succeeded", json!({ "i": i })));
            if i % 1024 == 0 {
                tokio::task::yield_now().await;
            }
        }
    } else {
        for i in 0..per_sub {
            for u in &users {
                bus.publish(Event::new(*u, "node.succeeded", json!({ "i": i })));
            }
            if i % 16 == 0 {
                tokio::task::yield_now().await;
            }
        }
    }
    let (mut got, mut missed) = (0, 0);
    for r in receivers {
        let (g, m) = r.await?;
        got += g;
        missed += m;
    }
    let d = started.elapsed();
    println!(
        "fan-out to {subscribers} subscribers ({}): {got} deliveries in {d:?} = {}; lagged {missed}, dropped {}",
        if same_user {
            "one user"
        } else {
            "one user each"
        },
        rate(got, d),
        bus.stats().dropped_full
    );
    cancel.cancel();
    task.await?;
    Ok(())
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> anyhow::Result<()> {
    let total = env_num("EVENTS", 200_000);
    let publishers = env_num("PUBLISHERS", 4).max(1);
    let subscribers = env_num("SUBSCRIBERS", 100).max(1);
    let per_sub = env_num("PER_SUBSCRIBER", 1000).max(1);
    publish_throughput(total, publishers).await?;
    fan_out(subscribers, per_sub, false).await?;
    fan_out(subscribers, per_sub, true).await?;
    if env_num("WS", 1) != 0 {
        ws::run(ws::Options {
            clients: env_num("WS_CLIENTS", 100).max(1),
            events: env_num("WS_EVENTS", 300).max(1),
            per_user: env_num("WS_EVENTS_PER_USER", 10).max(1),
            concurrency: env_num("WS_CONCURRENCY", 16).max(1),
        })
        .await?;
    }
    Ok(())
}

/// Fan-out to real WebSocket clients of a real server.
mod ws {
    use anyhow::{Context, anyhow, bail};
    use gathering_server::{Application, Settings};
    use serde_json::{Value, json};
    use std::sync::{Arc, Mutex};
    use std::time::{Duration, Instant};
    use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
    use tokio::net::TcpStream;
    use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
    use tokio::task::JoinHandle;
    use tokio::time::timeout;
    use tokio_util::sync::CancellationToken;
    use uuid::Uuid;

    /// Upper bound on any single wait (a server that stops answering ends the bench).
    const WAIT: Duration = Duration::from_secs(60);
    const PASSWORD: &str = "bench-password-0123";

    pub struct Options {
        pub clients: usize,
        pub events: usize,
        pub per_user: usize,
        pub concurrency: usize,
    }

    struct Server {
        port: u16,
        stop: CancellationToken,
        task: JoinHandle<anyhow::Result<()>>,
        _data_dir: tempfile::TempDir,
    }

    impl Server {
        async fn start(db_url: &str, token_key: &str, clients: usize) -> anyhow::Result<Server> {
            let data_dir = tempfile::tempdir()?;
            let capacity = (clients * 64).max(4096).to_string();
            let vars: Vec<(String, String)> = [
                ("DATABASE_URL", db_url),
                ("GATHERING__SERVER__PORT", "0"),
                ("GATHERING__SERVER__WORKERS", "2"),
                ("GATHERING__SERVER__SHUTDOWN_TIMEOUT_SECS", "5"),
                ("GATHERING__DATA_DIR", &data_dir.path().to_string_lossy()),
                ("GATHERING__AUTH__TOKEN_KEY", token_key),
                ("GATHERING__LLM__SETTINGS_KEY", token_key),
                ("GATHERING__AUTH__HASH_CONCURRENCY", "2"),
                ("GATHERING__RATE_LIMIT__AUTH_PER_MINUTE", "100000"),
                ("GATHERING__RATE_LIMIT__WRITE_PER_MINUTE", "1000000"),
                ("GATHERING__RATE_LIMIT__READ_PER_MINUTE", "1000000"),
                ("GATHERING__EVENTS__SUBSCRIBER_CAPACITY", "4096"),
                ("GATHERING__EVENTS__QUEUE_CAPACITY", capacity.as_str()),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
            let app = Application::build(Settings::from_sources(&vars)?).await?;
            let port = app.port();
            let stop = app.stop_token();
            let task = tokio::spawn(app.run_until_stopped());
            Ok(Server {
                port,
                stop,
                task,
                _data_dir: data_dir,
            })
        }

        fn url(&self, path: &str) -> String {
            format!("http://127.0.0.1:{}/api/v1{path}", self.port)
        }

        async fn stop(self) -> anyhow::Result<()> {
            self.stop.cancel();
            self.task.await??;
            Ok(())
        }
    }

    async fn post(
        http: &reqwest::Client,
        url: String,
        body: &Value,
        token: Option<&str>,
    ) -> anyhow::Result<Value> {
        let mut r = http.post(url.as_str()).json(body);
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        let r = r.send().await?;
        let status = r.status();
        let body: Value = r.json().await.unwrap_or(Value::Null);
        if !status.is_success() {
            bail!("POST {url}: {status} {body}");
        }
        Ok(body)
    }

    /// Registers a fresh user and returns their access token.
    async fn user(http: &reqwest::Client, server: &Server) -> anyhow::Result<String> {
        let email = format!("bench-{}@example.com", Uuid::now_v7().simple());
        let creds = json!({"email": email, "password": PASSWORD, "name": "Bench"});
        post(http, server.url("/auth/register"), &creds, None).await?;
        let tokens = post(http, server.url("/auth/login"), &creds, None).await?;
        tokens["access_token"]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| anyhow!("no access token in {tokens}"))
    }

    /// What one client saw: the arrival time of each event (by its sequence number) and how
    /// many events the server reported as missed (`lagged`).
    struct Seen {
        arrivals: Vec<(usize, Instant)>,
        missed: u64,
    }

    /// A WebSocket client: upgrades, then counts `notification.created` messages in a task
    /// until `expected` arrived (or were reported missed).
    async fn client(port: u16, token: &str, expected: usize) -> anyhow::Result<JoinHandle<Seen>> {
        let stream = TcpStream::connect(("127.0.0.1", port)).await?;
        stream.set_nodelay(true)?;
        let (read, mut write) = stream.into_split();
        let mut read = BufReader::new(read);
        let request = format!(
            "GET /api/v1/ws?access_token={token} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\
             Upgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        );
        write.write_all(request.as_bytes()).await?;
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            head.push(timeout(WAIT, read.read_u8()).await??);
            if head.len() > 16 * 1024 {
                bail!("response head too long");
            }
        }
        if !head.starts_with(b"HTTP/1.1 101") {
            bail!("upgrade refused: {}", String::from_utf8_lossy(&head));
        }
        Ok(tokio::spawn(async move {
            let mut seen = Seen {
                arrivals: Vec::with_capacity(expected),
                missed: 0,
            };
            while seen.arrivals.len() + (seen.missed as usize) < expected {
                let frame = match timeout(WAIT, read_frame(&mut read)).await {
                    Ok(Ok(f)) => f,
                    _ => break,
                };
                match frame {
                    (0x1, payload) => {
                        let at = Instant::now();
                        let Ok(m) = serde_json::from_slice::<Value>(&payload) else {
                            continue;
                        };
                        match m["type"].as_str() {
                            Some("notification.created") => {
                                if let Some(seq) = m["data"]["title"]
                                    .as_str()
                                    .and_then(|t| t.strip_prefix("bench "))
                                    .and_then(|n| n.parse().ok())
                                {
                                    seen.arrivals.push((seq, at));
                                }
                            }
                            Some("lagged") => {
                                seen.missed += m["data"]["missed"].as_u64().unwrap_or(0);
                            }
                            _ => {}
                        }
                    }
                    (0x8, _) => break,
                    (0x9, payload) if write_frame(&mut write, 0xA, &payload).await.is_err() => {
                        break;
                    }
                    _ => {}
                }
            }
            let _ = write_frame(&mut write, 0x8, &1000u16.to_be_bytes()).await;
            seen
        }))
    }

    async fn read_frame(io: &mut BufReader<OwnedReadHalf>) -> std::io::Result<(u8, Vec<u8>)> {
        let b0 = io.read_u8().await?;
        let b1 = io.read_u8().await?;
        let mut len = u64::from(b1 & 0x7F);
        if len == 126 {
            len = u64::from(io.read_u16().await?);
        } else if len == 127 {
            len = io.read_u64().await?;
        }
        if len > 16 * 1024 * 1024 {
            return Err(std::io::Error::other("frame too large"));
        }
        let mask = if b1 & 0x80 != 0 {
            let mut m = [0u8; 4];
            io.read_exact(&mut m).await?;
            Some(m)
        } else {
            None
        };
        let mut payload = vec![0u8; len as usize];
        io.read_exact(&mut payload).await?;
        if let Some(m) = mask {
            for (i, b) in payload.iter_mut().enumerate() {
                *b ^= m[i % 4];
            }
        }
        Ok((b0 & 0x0F, payload))
    }

    /// A masked client frame with a short payload (pong, close).
    async fn write_frame(
        io: &mut OwnedWriteHalf,
        opcode: u8,
        payload: &[u8],
    ) -> std::io::Result<()> {
        let len = u8::try_from(payload.len())
            .ok()
            .filter(|l| *l < 126)
            .ok_or_else(|| std::io::Error::other("control payload too long"))?;
        let mask = [0x5a, 0x17, 0xc3, 0x08];
        let mut frame = vec![0x80 | opcode, 0x80 | len];
        frame.extend_from_slice(&mask);
        frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        io.write_all(&frame).await
    }

    /// One notification per `(token, seq)` job, `concurrency` at a time; records when each was
    /// sent.
    async fn invoke_all(
        http: &reqwest::Client,
        server: &Server,
        jobs: Vec<(String, usize)>,
        concurrency: usize,
        sent: Arc<Mutex<Vec<Option<Instant>>>>,
    ) -> anyhow::Result<Duration> {
        let started = Instant::now();
        let queue = Arc::new(Mutex::new(jobs.into_iter()));
        let mut workers = Vec::new();
        for _ in 0..concurrency {
            let (http, queue, sent) = (http.clone(), queue.clone(), sent.clone());
            let url = server.url("/tools/send_notification/invoke");
            workers.push(tokio::spawn(async move {
                loop {
                    let next = queue.lock().map_err(|_| anyhow!("poisoned"))?.next();
                    let Some((token, seq)) = next else {
                        return Ok::<(), anyhow::Error>(());
                    };
                    if let Some(slot) = sent.lock().map_err(|_| anyhow!("poisoned"))?.get_mut(seq) {
                        *slot = Some(Instant::now());
                    }
                    let body = json!({"params": {"title": format!("bench {seq}"), "message": "m"}});
                    post(&http, url.clone(), &body, Some(&token)).await?;
                }
            }));
        }
        for w in workers {
            w.await??;
        }
        Ok(started.elapsed())
    }

    fn percentile(sorted: &[Duration], p: f64) -> Duration {
        if sorted.is_empty() {
            return Duration::ZERO;
        }
        let i = ((sorted.len() - 1) as f64 * p).round() as usize;
        sorted[i.min(sorted.len() - 1)]
    }

    /// Clients connect to `ws_server`, notifications are invoked on `http_server`.
    /// `tokens[i]` is client i's user; each user receives `per_user` notifications.
    async fn scenario(
        label: &str,
        http: &reqwest::Client,
        http_server: &Server,
        ws_server: &Server,
        tokens: &[String],
        per_user: usize,
        concurrency: usize,
    ) -> anyhow::Result<()> {
        // Distinct users and which clients belong to each.
        let mut users: Vec<&String> = tokens.iter().collect();
        users.sort();
        users.dedup();
        let mut clients = Vec::with_capacity(tokens.len());
        for t in tokens {
            // Each client also sees its user's warm-up event.
            clients.push(client(ws_server.port, t, per_user + 1).await?);
        }
        // Warm-up: wait until one event round-trips for every user (sockets subscribed,
        // listeners up), so the measurement starts from a settled state.
        let mut warm = Vec::with_capacity(users.len());
        for t in &users {
            warm.push(client(ws_server.port, t, 1).await?);
        }
        let sent_warm = Arc::new(Mutex::new(vec![None; 1]));
        let warm_jobs = users.iter().map(|t| ((*t).clone(), 0)).collect();
        invoke_all(http, http_server, warm_jobs, concurrency, sent_warm).await?;
        for w in warm {
            let seen = w.await?;
            if seen.arrivals.len() != 1 {
                bail!("{label}: warm-up event not delivered");
            }
        }

        // Sequence numbers 1.. (0 was the warm-up): user u gets u*per_user+1 ..= (u+1)*per_user.
        let total_events = users.len() * per_user;
        let sent = Arc::new(Mutex::new(vec![None; total_events + 1]));
        let mut jobs = Vec::with_capacity(total_events);
        for i in 0..per_user {
            for (u, t) in users.iter().enumerate() {
                jobs.push(((*t).clone(), u * per_user + i + 1));
            }
        }
        let started = Instant::now();
        let invoke_time = invoke_all(http, http_server, jobs, concurrency, sent.clone()).await?;
        let mut latencies = Vec::with_capacity(tokens.len() * per_user);
        let (mut delivered, mut missed, mut last) = (0usize, 0u64, started);
        {
            let mut seen_all = Vec::with_capacity(clients.len());
            for c in clients {
                seen_all.push(c.await?);
            }
            let sent = sent.lock().map_err(|_| anyhow!("poisoned"))?;
            for seen in seen_all {
                missed += seen.missed;
                for (seq, at) in seen.arrivals {
                    if seq == 0 {
                        continue;
                    }
                    delivered += 1;
                    last = last.max(at);
                    if let Some(Some(t)) = sent.get(seq) {
                        latencies.push(at.saturating_duration_since(*t));
                    }
                }
            }
        }
        let all_in = last.saturating_duration_since(started);
        let expected = tokens.len() * per_user;
        latencies.sort();
        println!(
            "ws fan-out, {label}: {} clients, {} users, {total_events} notifications invoked in {invoke_time:?} ({}); \
             {delivered}/{expected} deliveries in {all_in:?} = {} (all clients had all events after {all_in:?}); \
             latency publish->socket p50 {:?} p99 {:?} max {:?}; lagged {missed}",
            tokens.len(),
            users.len(),
            super::rate(total_events as u64, invoke_time),
            super::rate(delivered as u64, all_in),
            percentile(&latencies, 0.5),
            percentile(&latencies, 0.99),
            latencies.last().copied().unwrap_or_default(),
        );
        if delivered as u64 + missed != expected as u64 {
            bail!("{label}: {delivered} delivered + {missed} missed != {expected} expected");
        }
        Ok(())
    }

    pub async fn run(o: Options) -> anyhow::Result<()> {
        let db = gathering_store::test_support::TestDb::new()
            .await
            .context("a fresh PostgreSQL database for the WebSocket bench")?;
        let token_key = format!("{}{}", Uuid::new_v4().simple(), Uuid::new_v4().simple());
        let http = reqwest::Client::builder()
            .timeout(WAIT)
            .pool_max_idle_per_host(o.concurrency)
            .build()?;
        let a = Server::start(&db.url, &token_key, o.clients).await?;

        // a. One user, all clients theirs.
        let ada = user(&http, &a).await?;
        let tokens = vec![ada.clone(); o.clients];
        scenario(
            "one instance, one user",
            &http,
            &a,
            &a,
            &tokens,
            o.events,
            o.concurrency,
        )
        .await?;

        // b. One client per user.
        let mut tokens = Vec::with_capacity(o.clients);
        for _ in 0..o.clients {
            tokens.push(user(&http, &a).await?);
        }
        scenario(
            "one instance, one user per client",
            &http,
            &a,
            &a,
            &tokens,
            o.per_user,
            o.concurrency,
        )
        .await?;

        // c. Cross-instance: sockets on B, notifications invoked on A.
        let b = Server::start(&db.url, &token_key, o.clients).await?;
        let tokens = vec![ada; o.clients];
        scenario(
            "clients on B, invoked on A",
            &http,
            &a,
            &b,
            &tokens,
            o.events,
            o.concurrency,
        )
        .await?;
        b.stop().await?;
        a.stop().await?;
        Ok(())
    }
}
