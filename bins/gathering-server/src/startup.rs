//! Builds the whole service from settings: database (or a private local cluster), migrations,
//! repositories, engines, background tasks and the HTTP server; runs it until a signal.

use crate::config::Settings;
use actix_web::dev::{Server, ServerHandle};
use actix_web::middleware::from_fn;
use actix_web::{App, HttpServer, web};
use anyhow::Context;
use async_trait::async_trait;
use gathering_api::ratelimit::{RateLimitSettings, RateLimits, TrustedProxies};
use gathering_api::routes::health::{Readiness, ReadinessProbe};
use gathering_domain::notify::ListenerEvent;
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
use tracing::{Instrument, info, warn};
use tracing_actix_web::TracingLogger;

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
    readiness: web::Data<Readiness>,
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
    pub async fn build(settings: Settings) -> anyhow::Result<Application> {
        std::fs::create_dir_all(&settings.data_dir).with_context(|| {
            format!("cannot create the data dir {}", settings.data_dir.display())
        })?;

        // 1. Database: the configured one, or our own local cluster.
        let (database_url, cluster) = match &settings.database_url {
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
            &database_url,
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
        gathering_store::quotas::apply_count_limits(
            &pool,
            &crate::engines::quota_limits(&settings),
        )
        .await
        .context("cannot write the per-user quotas (GATHERING__QUOTAS__*)")?;

        let clock: Arc<dyn Clock> = Arc::new(SystemClock);
        let background = CancellationToken::new();
        let mut tasks = Vec::new();

        // 2. Repositories.
        let users = Arc::new(gathering_store::users::PgUserRepository::new(pool.clone()));
        let refresh = Arc::new(gathering_store::tokens::PgRefreshTokenRepository::new(
            pool.clone(),
        ));
        let revocations = Arc::new(gathering_store::revocations::PgRevocationRepository::new(
            pool.clone(),
        ));
        let audit = Arc::new(gathering_store::audit::PgAuditRepository::new(pool.clone()));
        let projects: Arc<dyn ProjectRepository> = Arc::new(
            gathering_store::projects::PgProjectRepository::new(pool.clone()),
        );

        // 3. Auth.
        let token_key = crate::keys::load_or_create(
            settings.auth.token_key.as_ref(),
            &settings.data_dir,
            "token",
            "GATHERING__AUTH__TOKEN_KEY",
        )?;
        let keys = gathering_auth::KeyRing::from_key(&token_key)
            .map_err(|e| anyhow::anyhow!("GATHERING__AUTH__TOKEN_KEY: {e}"))?;
        let auth = web::Data::new(
            gathering_auth::AuthService::new(
                gathering_auth::AuthRepos {
                    users,
                    refresh_tokens: refresh,
                    revocations,
                    audit,
                },
                clock.clone(),
                keys,
                gathering_auth::AuthConfig {
                    access_ttl: Duration::from_secs(settings.auth.access_ttl_secs),
                    refresh_ttl: Duration::from_secs(settings.auth.refresh_ttl_secs),
                    max_failed_logins: settings.auth.max_failed_logins,
                    lockout_window: Duration::from_secs(settings.auth.lockout_window_secs),
                    lockout_base_delay: Duration::from_secs(settings.auth.lockout_base_delay_secs),
                    lockout_max_delay: Duration::from_secs(settings.auth.lockout_max_delay_secs),
                    hash_concurrency: if settings.auth.hash_concurrency == 0 {
                        settings.workers()
                    } else {
                        settings.auth.hash_concurrency
                    },
                    revocation_cache_capacity: settings.auth.revocation_cache_capacity,
                    token_cache_capacity: settings.auth.token_cache_capacity,
                    user_cache_capacity: settings.auth.user_cache_capacity,
                    user_cache_ttl: Duration::from_secs(settings.auth.user_cache_ttl_secs),
                    ..Default::default()
                },
            )
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

        // 4. Engines: events, tools, agents, pipelines.
        let engines = crate::engines::build(&settings, &pool, clock.clone(), projects.clone())?;
        let bus = engines.bus.clone();
        tasks.push(tokio::spawn(engines.flusher.run(background.clone())));

        // 5. Cross-instance notifications: one LISTEN connection, fanned out to consumers.
        let (listener, mut listener_events) = gathering_store::listener::PgListener::spawn(
            &database_url,
            listen_channels(),
            gathering_store::listener::ListenerOptions::default(),
            background.clone(),
        )?;
        tasks.push(
            engines
                .executor
                .spawn(background.clone(), Some(listener.subscribe())),
        );
        tasks.push(
            engines
                .scheduler
                .spawn(Some(listener.subscribe()), background.clone()),
        );
        {
            let auth = auth.clone();
            let bus = bus.clone();
            let stop = background.clone();
            tasks.push(tokio::spawn(
                async move {
                    let _listener = listener;
                    loop {
                        let ev = tokio::select! {
                            _ = stop.cancelled() => break,
                            ev = listener_events.recv() => ev,
                        };
                        let events = match ev {
                            Ok(ev) => vec![ev],
                            // Missed notifications: like a reconnect, so caches resync.
                            Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                                vec![ListenerEvent::Disconnected, ListenerEvent::Connected]
                            }
                            Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
                        };
                        for ev in &events {
                            auth.handle_listener_event(ev).await;
                            bus.handle_listener_event(ev);
                        }
                    }
                }
                .instrument(tracing::info_span!("listener_fanout")),
            ));
        }

        // 6. Maintenance: purge expired revocations and refresh tokens.
        {
            let auth = auth.clone();
            let stop = background.clone();
            tasks.push(tokio::spawn(async move {
                let mut every = tokio::time::interval(Duration::from_secs(600));
                loop {
                    tokio::select! {
                        _ = stop.cancelled() => break,
                        _ = every.tick() => {
                            if let Err(e) = auth.purge_expired().await {
                                warn!(error = %e, "purging expired tokens failed");
                            }
                        }
                    }
                }
            }));
        }

        // 7. HTTP.
        let readiness = web::Data::new(Readiness::new(Arc::new(DbProbe(pool.clone()))));
        let limits = web::Data::new(RateLimits::new(&RateLimitSettings {
            auth_per_minute: settings.rate_limit.auth_per_minute,
            write_per_minute: settings.rate_limit.write_per_minute,
            read_per_minute: settings.rate_limit.read_per_minute,
            max_keys: settings.rate_limit.max_keys,
        }));
        let proxies = web::Data::new(TrustedProxies(settings.trusted_proxies()?));
        let projects = web::Data::new(projects);
        // Projects may not reach into the data dir (keys/token.key would let a project reader
        // forge tokens).
        let data_dir = web::Data::new(gathering_api::routes::projects::DataDir(
            std::fs::canonicalize(&settings.data_dir).with_context(|| {
                format!(
                    "cannot resolve the data dir {}",
                    settings.data_dir.display()
                )
            })?,
        ));
        let stop = CancellationToken::new();
        let shutdown_signal = web::Data::new(gathering_events::Shutdown(stop.clone()));
        let bus = web::Data::new(bus);
        let ws_config = web::Data::new(gathering_api::routes::ws::WsConfig {
            heartbeat_interval: Duration::from_secs(settings.events.ws_heartbeat_secs.max(1)),
            client_timeout: Duration::from_secs(settings.events.ws_client_timeout_secs.max(1)),
            max_connections_per_user: settings.events.ws_max_connections_per_user,
            max_unauthenticated: settings.events.ws_max_unauthenticated,
            ..Default::default()
        });
        let tools = web::Data::from(engines.tools.clone());
        let notifications = web::Data::new(engines.notifications.clone());
        let agents = web::Data::from(engines.llm.agents.clone());
        let circles = web::Data::from(engines.llm.circles.clone());
        let provider_settings = web::Data::from(engines.llm.settings.clone());
        let pipelines = web::Data::from(engines.pipelines.clone());
        let schedules = web::Data::from(engines.schedules.clone());

        let listener = TcpListener::bind((settings.server.host.as_str(), settings.server.port))
            .with_context(|| {
                format!(
                    "cannot listen on {}:{}",
                    settings.server.host, settings.server.port
                )
            })?;
        let port = listener.local_addr()?.port();
        let shutdown_timeout = Duration::from_secs(settings.server.shutdown_timeout_secs);
        let app_readiness = readiness.clone();
        let server = HttpServer::new(move || {
            App::new()
                .wrap(TracingLogger::<gathering_api::middleware::RequestSpan>::new())
                .wrap(from_fn(gathering_api::middleware::request_id))
                .app_data(app_readiness.clone())
                .app_data(limits.clone())
                .app_data(proxies.clone())
                .app_data(auth.clone())
                .app_data(projects.clone())
                .app_data(data_dir.clone())
                .app_data(shutdown_signal.clone())
                .app_data(bus.clone())
                .app_data(ws_config.clone())
                .app_data(tools.clone())
                .app_data(notifications.clone())
                .app_data(agents.clone())
                .app_data(circles.clone())
                .app_data(provider_settings.clone())
                .app_data(pipelines.clone())
                .app_data(schedules.clone())
                .configure(gathering_api::configure)
                .default_service(web::to(gathering_api::not_found))
        })
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
            readiness,
            stop,
            background,
            tasks,
            cluster,
            shutdown_timeout,
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
    /// closes, in-flight requests finish (bounded), background tasks stop, the local cluster
    /// stops.
    pub async fn run_until_stopped(self) -> anyhow::Result<()> {
        let Application {
            server,
            handle,
            readiness,
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
                readiness.start_draining();
                handle.stop(true).await;
                server
                    .await
                    .context("HTTP server task failed")?
                    .context("HTTP server failed")
            }
        };
        signals.abort();
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
