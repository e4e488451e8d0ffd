//! Fresh, migrated databases for tests against the real PostgreSQL.
//!
//! `TEST_DATABASE_URL` points at a server (default `postgres://postgres@127.0.0.1:5432/postgres`);
//! each [`TestDb`] creates a database named by a fresh UUID there and migrates it. Databases are
//! left behind for inspection; `.ci/run` drops every `gathering_test_*` database when it starts.

pub mod loopback;

use crate::error::StoreError;
use crate::pool::{PgPool, PoolSettings, connect};
use uuid::Uuid;

pub fn admin_url() -> String {
    std::env::var("TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

/// Replaces the database name at the end of a URL (`.../postgres` → `.../<name>`).
pub fn with_database(url: &str, name: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let base = match base.rfind('/') {
        Some(i) if i > base.find("//").map(|j| j + 1).unwrap_or(0) => &base[..i],
        _ => base,
    };
    match query {
        Some(q) => format!("{base}/{name}?{q}"),
        None => format!("{base}/{name}"),
    }
}

pub struct TestDb {
    pub name: String,
    pub url: String,
    pub pool: PgPool,
}

impl TestDb {
    /// Creates and migrates a fresh database.
    pub async fn new() -> Result<TestDb, StoreError> {
        let name = format!("gathering_test_{}", Uuid::new_v4().simple());
        let (client, connection) = tokio_postgres::connect(&admin_url(), tokio_postgres::NoTls)
            .await
            .map_err(|e| StoreError::Connect(Box::new(e)))?;
        tokio::spawn(connection);
        // The name is generated above from a UUID, never from input: identifiers cannot be
        // bind parameters.
        client
            .batch_execute(&format!("CREATE DATABASE \"{name}\""))
            .await?;
        let url = with_database(&admin_url(), &name);
        let pool = connect(&url, &PoolSettings::default())?;
        crate::migrate::run(&pool).await?;
        Ok(TestDb { name, url, pool })
    }
}

/// A TCP proxy in front of the test server that counts the statements clients execute, read
/// off the PostgreSQL wire protocol: every `Bind` (one execution of a prepared statement, which
/// is how `query`/`execute` run) and every non-empty simple `Query`. Pool health checks (empty
/// simple queries) and `Parse`/`Describe` of a first use are not executions and not counted. So a
/// test can prove how many statements an operation sends, whatever the code under test claims.
pub struct CountingProxy {
    /// `admin_url()` with the proxy's address; pair with [`with_database`].
    pub url: String,
    executed: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl CountingProxy {
    pub async fn start() -> std::io::Result<CountingProxy> {
        use std::sync::atomic::Ordering;
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let admin = admin_url();
        let config: tokio_postgres::Config = admin
            .parse()
            .map_err(|e| std::io::Error::other(format!("TEST_DATABASE_URL: {e}")))?;
        let host = match config.get_hosts().first() {
            Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
            _ => "127.0.0.1".to_owned(),
        };
        let port = config.get_ports().first().copied().unwrap_or(5432);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let local = listener.local_addr()?;
        let url = format!(
            "postgres://{}@127.0.0.1:{}/postgres",
            config.get_user().unwrap_or("postgres"),
            local.port()
        );
        let executed = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let counter = executed.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = tokio::net::TcpStream::connect((host.as_str(), port)).await else {
                    continue;
                };
                let counter = counter.clone();
                tokio::spawn(async move {
                    let (mut cr, mut cw) = client.into_split();
                    let (mut sr, mut sw) = server.into_split();
                    tokio::spawn(async move {
                        let _ = tokio::io::copy(&mut sr, &mut cw).await;
                    });
                    // Client → server: untyped start-up packets (SSL/GSS requests, then the
                    // startup message), then typed messages.
                    let mut started = false;
                    loop {
                        let mut kind = [0u8; 1];
                        if started && cr.read_exact(&mut kind).await.is_err() {
                            break;
                        }
                        let mut len = [0u8; 4];
                        if cr.read_exact(&mut len).await.is_err() {
                            break;
                        }
                        let n = u32::from_be_bytes(len) as usize;
                        let mut body = vec![0u8; n.saturating_sub(4)];
                        if cr.read_exact(&mut body).await.is_err() {
                            break;
                        }
                        if !started {
                            let code = body
                                .get(..4)
                                .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]));
                            // 80877103 = SSLRequest, 80877104 = GSSENCRequest: more start-up follows.
                            started = !matches!(code, Some(80_877_103 | 80_877_104));
                        } else if kind[0] == b'B' || (kind[0] == b'Q' && body.first() != Some(&0)) {
                            counter.fetch_add(1, Ordering::SeqCst);
                        }
                        let mut packet = Vec::with_capacity(n + 1);
                        if kind[0] != 0 {
                            packet.push(kind[0]);
                        }
                        packet.extend_from_slice(&len);
                        packet.extend_from_slice(&body);
                        if sw.write_all(&packet).await.is_err() {
                            break;
                        }
                    }
                });
            }
        });
        Ok(CountingProxy { url, executed })
    }

    /// Statements executed through the proxy so far.
    pub fn executed(&self) -> u64 {
        self.executed.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// Inserts a plain user (role `user`, an unusable password hash) straight into `auth.users`
/// and returns its id: the one copy of that SQL for repository and engine tests.
pub async fn insert_user(pool: &PgPool) -> Result<Uuid, gathering_domain::RepoError> {
    let id = Uuid::now_v7();
    let c = crate::pool::conn(pool).await?;
    c.execute(
        "INSERT INTO auth.users (id, email, name, role, password_hash) \
         VALUES ($1, $2, 'u', 'user', 'x')",
        &[&id, &format!("{id}@example.test")],
    )
    .await
    .map_err(crate::error::db_err)?;
    Ok(id)
}

impl TestDb {
    /// [`insert_user`] into this database; panics (failing the test) if it cannot.
    pub async fn user(&self) -> Uuid {
        match insert_user(&self.pool).await {
            Ok(id) => id,
            Err(e) => panic!("cannot insert a test user: {e}"),
        }
    }
}

/// How often [`wait_until`] re-checks its condition.
const POLL: std::time::Duration = std::time::Duration::from_millis(10);

/// Waits until `cond` holds, re-checking it every 10 ms; panics (failing the test) if it does
/// not hold within `within`. For waiting on an effect instead of sleeping and hoping.
pub async fn wait_until<F, Fut>(within: std::time::Duration, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if cond().await {
            return;
        }
        if tokio::time::Instant::now() >= deadline {
            panic!("condition not met within {within:?}");
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Like [`wait_until`], for a condition that yields a value once it holds.
pub async fn wait_for<T, F, Fut>(within: std::time::Duration, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if let Some(v) = probe().await {
            return v;
        }
        if tokio::time::Instant::now() >= deadline {
            panic!("condition not met within {within:?}");
        }
        tokio::time::sleep(POLL).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn with_database_replaces_only_the_path() {
        assert_eq!(
            with_database("postgres://postgres@127.0.0.1:5432/postgres", "x"),
            "postgres://postgres@127.0.0.1:5432/x"
        );
        assert_eq!(
            with_database("postgres://u@h/db?sslmode=disable", "y"),
            "postgres://u@h/y?sslmode=disable"
        );
        assert_eq!(with_database("postgres://u@h", "z"), "postgres://u@h/z");
    }
}
