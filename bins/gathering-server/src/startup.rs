//! Builds the whole service from settings: database (or a private local cluster), migrations,
//! repositories, engines, background tasks and the HTTP server; runs it until a signal.

use crate::config::Settings;
use actix_web::dev::{Server, ServerHandle};
use actix_web::{HttpServer, web};
use anyhow::Context;
use async_trait::async_trait;
use gathering_api::AppState;
use gathering_api::ratelimit::{RateLimitSettings, RateLimits, TrustedProxies};
use gathering_api::routes::health::{Readiness, ReadinessProbe};
use gathering_api::routes::projects::DataDir;
use gathering_api::routes::ws::WsConfig;
use gathering_api::state::RequestTasks;
use gathering_domain::notify::ListenerConsumer;
use gathering_domain::projects::ProjectRepository;
use gathering_domain::{Clock, SystemClock};
use gathering_pgcluster::LocalCluster;
use gathering_store::PgPool;
use secrecy::ExposeSecret;
use std::net::TcpListener;
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// Channels this instance listens on (one connection for all).
fn listen_channels() -> Vec<String> {
    vec![
        gathering_domain::auth::REVOCATION_CHANNEL.to_owned(),
        gathering_domain::auth::USER_CHANGED_CHANNEL.to_owned(),
        gathering_events::EVENTS_CHANNEL.to_owned(),
        gathering_pipeline::executor::RUN_QUEUED_CHANNEL.to_owned(),
        gathering_pipeline::executor::RUN_CANCEL_CHANNEL.to_owned(),
        gathering_domain::scheduler::SCHEDULES_CHANGED_CHANNEL.to_owned(),
    ]
}

pub struct Application {
    port: u16,
    server: Server,
    handle: ServerHandle,
    /// What the HTTP layer uses; shutdown drains its readiness and request tasks.
    state: web::Data<AppState>,
    /// Cancelled to ask for a graceful stop (signals, tests).
    stop: CancellationToken,
    /// Cancelled once HTTP has drained: background tasks end.
    background: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
    cluster: Option<LocalCluster>,
    shutdown_timeout: Duration,
}

struct DbProbe(PgPool);

#[async_trait]
impl ReadinessProbe for DbProbe {
    async fn check(&self) -> Result<(), String> {
        gathering_store::pool::ping(&self.0)
            .await
            .map_err(|e| e.to_string())
    }
}

impl Application {
    /// Wiring only: settings → database → services → [`AppState`] → background tasks → HTTP.
    pub async fn build(settings: Settings) -> anyhow::Result<Application> {
        std::fs::create_dir_all(&settings.data_dir).with_context(|| {
            format!("cannot create the data dir {}", settings.data_dir.display())
        })?;
        let db = open_database(&settings).await?;
        let clock: Arc<dyn Clock> = Arc::new(SystemClock);
        let projects: Arc<dyn ProjectRepository> = Arc::new(
            gathering_store::projects::PgProjectRepository::new(db.pool.clone()),
        );
        let auth = build_auth(&settings, &db.pool, clock.clone()).await?;
        let engines = crate::engines::build(&settings, &db.pool, clock, projects.clone())?;

        let stop = CancellationToken::new();
        let state = web::Data::new(app_state(
            &settings,
            &db.pool,
            auth,
            projects,
            &engines,
            stop.clone(),
        )?);
        let background = CancellationToken::new();
        let tasks = spawn_background(engines, state.auth.clone(), &db.url, &background)?;

        let listener = TcpListener::bind((settings.server.host.as_str(), settings.server.port))
            .with_context(|| {
                format!(
                    "cannot listen on {}:{}",
                    settings.server.host, settings.server.port
                )
            })?;
        let port = listener.local_addr()?.port();
        let app_state = state.clone();
        let server = HttpServer::new(move || gathering_api::app(app_state.clone()))
            .workers(settings.workers())
            .shutdown_timeout(settings.server.shutdown_timeout_secs)
            .disable_signals()
            .listen(listener)?
            .run();
        let handle = server.handle();
        info!(port, "listening");

        Ok(Application {
            port,
            server,
            handle,
            state,
            stop,
            background,
            tasks,
            cluster: db.cluster,
            shutdown_timeout: Duration::from_secs(settings.server.shutdown_timeout_secs),
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Cancel it to start a graceful stop, as SIGTERM does.
    pub fn stop_token(&self) -> CancellationToken {
        self.stop.clone()
    }

    /// Serves until SIGTERM/SIGINT (or the stop token): readiness turns 503, the listener
    /// closes, in-flight requests finish (bounded), tasks started by requests (circle tasks)
    /// finish (bounded), background tasks stop and are joined (bounded), the local cluster
    /// stops.
    pub async fn run_until_stopped(self) -> anyhow::Result<()> {
        let Application {
            server,
            handle,
            state,
            stop,
            background,
            tasks,
            cluster,
            shutdown_timeout,
            ..
        } = self;
        let signals = tokio::spawn(wait_for_signal(stop.clone()));
        let mut server = tokio::spawn(server);
        let served = tokio::select! {
            r = &mut server => Some(r),
            _ = stop.cancelled() => None,
        };
        let result = match served {
            Some(r) => r
                .context("HTTP server task failed")?
                .context("HTTP server failed"),
            None => {
                info!("shutting down: draining in-flight requests");
                state.readiness.start_draining();
                handle.stop(true).await;
                server
                    .await
                    .context("HTTP server task failed")?
                    .context("HTTP server failed")
            }
        };
        signals.abort();
        // Work requests started (circle tasks) finishes before the engines stop under it.
        state.tasks.drain(shutdown_timeout).await;
        background.cancel();
        let all = futures::future::join_all(tasks);
        if tokio::time::timeout(shutdown_timeout, all).await.is_err() {
            warn!("background tasks did not stop in time");
        }
        if let Some(cluster) = cluster
            && let Err(e) = cluster.stop().await
        {
            warn!(error = %e, "stopping the local PostgreSQL cluster failed");
        }
        info!("stopped");
        result
    }
}

/// The HTTP layer's state: the services, and the settings it applies.
fn app_state(
    settings: &Settings,
    pool: &PgPool,
    auth: Arc<gathering_auth::AuthService>,
    projects: Arc<dyn ProjectRepository>,
    engines: &crate::engines::Engines,
    stop: CancellationToken,
) -> anyhow::Result<AppState> {
    Ok(AppState {
        auth,
        projects,
        notifications: engines.notifications.clone(),
        tools: engines.tools.clone(),
        agents: engines.llm.agents.clone(),
        circles: engines.llm.circles.clone(),
        provider_settings: engines.llm.settings.clone(),
        pipelines: engines.pipelines.clone(),
        schedules: engines.schedules.clone(),
        bus: engines.bus.clone(),
        readiness: Arc::new(Readiness::new(Arc::new(DbProbe(pool.clone())))),
        data_dir: data_dir(settings)?,
        limits: RateLimits::new(&rate_limit_settings(settings)),
        proxies: TrustedProxies(settings.trusted_proxies()?),
        ws: ws_config(settings),
        shutdown: stop,
        tasks: RequestTasks::new(
            tokio::runtime::Handle::try_current().context("no tokio runtime")?,
        ),
    })
}

/// Starts the background tasks, each owned by its crate and stopped by `stop` (cancelled once
/// HTTP has drained); `run_until_stopped` joins the handles (bounded).
fn spawn_background(
    engines: crate::engines::Engines,
    auth: Arc<gathering_auth::AuthService>,
    database_url: &str,
    stop: &CancellationToken,
) -> anyhow::Result<Vec<JoinHandle<()>>> {
    // One LISTEN connection for the instance, fanned out to its consumers.
    let (listener, events) = gathering_store::listener::PgListener::spawn(
        database_url,
        listen_channels(),
        gathering_store::listener::ListenerOptions::default(),
        stop.clone(),
    )?;
    let consumers: Vec<Arc<dyn ListenerConsumer>> =
        vec![auth.clone(), Arc::new(engines.bus.clone())];
    Ok(vec![
        tokio::spawn(engines.flusher.run(stop.clone())),
        engines
            .executor
            .spawn(stop.clone(), Some(listener.subscribe())),
        engines
            .scheduler
            .spawn(Some(listener.subscribe()), stop.clone()),
        gathering_store::listener::spawn_fanout(listener, events, consumers, stop.clone()),
        gathering_auth::spawn_purge(
            auth,
            gathering_auth::maintenance::PURGE_INTERVAL,
            stop.clone(),
        ),
    ])
}

/// The database this instance uses: its pool, its URL (for the LISTEN connection) and the
/// local cluster when we started one.
struct Database {
    pool: PgPool,
    url: String,
    cluster: Option<LocalCluster>,
}

/// Connects (starting a private cluster without `DATABASE_URL`), waits for PostgreSQL,
/// migrates and writes the per-user quotas.
async fn open_database(settings: &Settings) -> anyhow::Result<Database> {
    let (url, cluster) = match &settings.database_url {
        Some(url) => (url.expose_secret().to_owned(), None),
        None => {
            info!(data_dir = %settings.data_dir.display(), "no DATABASE_URL: starting a private PostgreSQL cluster");
            let cluster = LocalCluster::start(&settings.data_dir)
                .await
                .context("cannot start the local PostgreSQL cluster")?;
            (cluster.url(), Some(cluster))
        }
    };
    let pool = gathering_store::connect(
        &url,
        &gathering_store::PoolSettings {
            max_size: settings.database.pool_max_size,
            wait_timeout: Duration::from_secs(settings.database.acquire_timeout_secs),
            ..Default::default()
        },
    )?;
    wait_for_database(
        &pool,
        Duration::from_secs(settings.database.startup_wait_secs),
    )
    .await?;
    let applied = gathering_store::migrate::run(&pool)
        .await
        .context("database migrations failed; the server did not start")?;
    info!(applied, "database schema is up to date");
    gathering_store::quotas::apply_count_limits(&pool, &crate::engines::quota_limits(settings))
        .await
        .context("cannot write the per-user quotas (GATHERING__QUOTAS__*)")?;
    Ok(Database { pool, url, cluster })
}

/// The auth service on its repositories, and the configured admin account.
async fn build_auth(
    settings: &Settings,
    pool: &PgPool,
    clock: Arc<dyn Clock>,
) -> anyhow::Result<Arc<gathering_auth::AuthService>> {
    let token_key = crate::keys::load_or_create(
        settings.auth.token_key.as_ref(),
        &settings.data_dir,
        "token",
        "GATHERING__AUTH__TOKEN_KEY",
    )?;
    let keys = gathering_auth::KeyRing::from_key(&token_key)
        .map_err(|e| anyhow::anyhow!("GATHERING__AUTH__TOKEN_KEY: {e}"))?;
    let repos = gathering_auth::AuthRepos {
        users: Arc::new(gathering_store::users::PgUserRepository::new(pool.clone())),
        refresh_tokens: Arc::new(gathering_store::tokens::PgRefreshTokenRepository::new(
            pool.clone(),
        )),
        revocations: Arc::new(gathering_store::revocations::PgRevocationRepository::new(
            pool.clone(),
        )),
        audit: Arc::new(gathering_store::audit::PgAuditRepository::new(pool.clone())),
    };
    let auth = Arc::new(
        gathering_auth::AuthService::new(repos, clock, keys, auth_config(settings))
            .await
            .context("cannot start the auth service")?,
    );
    if let (Some(email), Some(password)) =
        (&settings.auth.admin_email, &settings.auth.admin_password)
    {
        // An existing non-admin account with this email is never promoted: whoever
        // registered it chose its password. Start-up stops with the reason instead.
        if let Err(e) = auth
            .ensure_admin(email, password.expose_secret().to_owned())
            .await
        {
            tracing::error!(error = %e, email = %email, "SECURITY: admin bootstrap refused; the server does not start");
            return Err(anyhow::Error::new(e)
                .context("cannot create the configured admin (GATHERING__AUTH__ADMIN_EMAIL)"));
        }
        info!(email = %email, "admin account ensured");
    }
    Ok(auth)
}

fn auth_config(settings: &Settings) -> gathering_auth::AuthConfig {
    let a = &settings.auth;
    gathering_auth::AuthConfig {
        access_ttl: Duration::from_secs(a.access_ttl_secs),
        refresh_ttl: Duration::from_secs(a.refresh_ttl_secs),
        max_failed_logins: a.max_failed_logins,
        lockout_window: Duration::from_secs(a.lockout_window_secs),
        lockout_base_delay: Duration::from_secs(a.lockout_base_delay_secs),
        lockout_max_delay: Duration::from_secs(a.lockout_max_delay_secs),
        hash_concurrency: if a.hash_concurrency == 0 {
            settings.workers()
        } else {
            a.hash_concurrency
        },
        revocation_cache_capacity: a.revocation_cache_capacity,
        token_cache_capacity: a.token_cache_capacity,
        user_cache_capacity: a.user_cache_capacity,
        user_cache_ttl: Duration::from_secs(a.user_cache_ttl_secs),
        ..Default::default()
    }
}

fn rate_limit_settings(settings: &Settings) -> RateLimitSettings {
    RateLimitSettings {
        auth_per_minute: settings.rate_limit.auth_per_minute,
        write_per_minute: settings.rate_limit.write_per_minute,
        read_per_minute: settings.rate_limit.read_per_minute,
        max_keys: settings.rate_limit.max_keys,
    }
}

fn ws_config(settings: &Settings) -> WsConfig {
    WsConfig {
        heartbeat_interval: Duration::from_secs(settings.events.ws_heartbeat_secs.max(1)),
        client_timeout: Duration::from_secs(settings.events.ws_client_timeout_secs.max(1)),
        max_connections_per_user: settings.events.ws_max_connections_per_user,
        max_unauthenticated: settings.events.ws_max_unauthenticated,
        ..Default::default()
    }
}

/// The data dir, canonical. Projects may not reach into it (keys/token.key would let a
/// project reader forge tokens).
fn data_dir(settings: &Settings) -> anyhow::Result<DataDir> {
    let dir = std::fs::canonicalize(&settings.data_dir).with_context(|| {
        format!(
            "cannot resolve the data dir {}",
            settings.data_dir.display()
        )
    })?;
    Ok(DataDir(dir))
}

async fn wait_for_signal(stop: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        warn!("cannot install signal handlers");
        return;
    };
    tokio::select! {
        _ = term.recv() => info!("SIGTERM received"),
        _ = int.recv() => info!("SIGINT received"),
        _ = stop.cancelled() => return,
    }
    stop.cancel();
}

async fn wait_for_database(pool: &PgPool, patience: Duration) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + patience;
    loop {
        match gathering_store::pool::ping(pool).await {
            Ok(()) => return Ok(()),
            Err(e) if tokio::time::Instant::now() >= deadline => {
                return Err(anyhow::Error::new(e).context(format!(
                    "PostgreSQL did not answer within {} s (check DATABASE_URL)",
                    patience.as_secs()
                )));
            }
            Err(e) => {
                warn!(error = %e, "waiting for PostgreSQL");
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        }
    }
}
