//! Wiring: build the shared state from config, start the channel threads and the HTTP
//! server, and stop them in order.

use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use actix::Actor;
use actix_web::{web, App as WebApp, HttpServer};
use tokio::sync::watch;

use crate::apps::{App, AppDirectory};
use crate::channel::ChannelRegistry;
use crate::config::Config;
use crate::http;
use crate::jobs::Workers;
use crate::sockets::Connections;
use crate::state::ServerState;
use crate::store::{Dialect, Store, StoreError};
use crate::webhooks::{WebhookBatcher, WebhookSender};

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("app {id}: {source}")]
    App {
        id: String,
        source: crate::apps::AppError,
    },
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: String,
        source: std::io::Error,
    },
    #[error("server stopped with an error: {0}")]
    Serve(std::io::Error),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("TLS: {0}")]
    Tls(String),
    #[error(transparent)]
    Bus(#[from] crate::cluster::BusError),
}

/// What another node published reaches this node's subscribers (and cache channels), and
/// what it decided for users (terminate, online/offline) reaches this node's connections.
fn deliver_from_bus(
    registry: Arc<ChannelRegistry>,
    apps: Arc<AppDirectory>,
    connections: Arc<Connections>,
) -> impl Fn(crate::cluster::Envelope) + Send + Sync + 'static {
    use crate::cluster::Body;
    move |env| match env.body {
        Body::Event {
            channel,
            except,
            cacheable,
            member_seq,
            frame,
        } => {
            let key = crate::channel::ChannelKey {
                app: env.app,
                name: channel,
            };
            if cacheable && key.name.is_cache() {
                if let Some(app) = apps.by_id(key.app.as_str()) {
                    registry.remember(&key, frame.clone(), app.cache_ttl);
                }
            }
            registry.publish(
                &key,
                crate::channel::messages::Publish {
                    frame,
                    except,
                    from: None,
                    member_seq,
                },
            );
        }
        Body::Terminate { user } => {
            connections.terminate_user(&env.app, &user, crate::connection::terminated());
        }
        Body::Watch { user, online } => connections.watch_event(&env.app, &user, online),
    }
}

/// Loads the PEM certificate chain and key into a rustls server config.
fn tls_config(cert: &str, key: &str) -> Result<rustls::ServerConfig, RunError> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs = CertificateDer::pem_file_iter(cert)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| RunError::Tls(format!("cannot read certificates from {cert}: {e}")))?;
    if certs.is_empty() {
        return Err(RunError::Tls(format!("no certificate in {cert}")));
    }
    let key = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| RunError::Tls(format!("cannot read the private key from {key}: {e}")))?;
    rustls::ServerConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .and_then(|b| b.with_no_client_auth().with_single_cert(certs, key))
    .map_err(|e| RunError::Tls(e.to_string()))
}

/// Apps changed through the admin API live in the store; they override config-file apps
/// with the same id.
async fn load_stored_apps(store: &Store, apps: &AppDirectory) -> Result<(), StoreError> {
    for row in store.stored_apps().await? {
        let app = crate::apps::StoredApp::from_row(&row)
            .map_err(|e| e.to_string())
            .and_then(|stored| stored.to_app().map_err(|e| e.to_string()));
        match app {
            Ok(app) => apps.upsert(app),
            Err(e) => {
                tracing::error!(app_id = %row.id(), error = %e, "stored app is invalid; not served")
            }
        }
    }
    Ok(())
}

/// A repeated event is a duplicate for a day; after that its keys are free again.
async fn expire_delivery_keys(store: Store) {
    const DAY_MS: i64 = 24 * 3600 * 1000;
    loop {
        tokio::time::sleep(Duration::from_secs(600)).await;
        match store.expire_keys(DAY_MS).await {
            Ok(0) => {}
            Ok(n) => tracing::debug!(keys = n, "freed day-old idempotency keys"),
            Err(e) => tracing::warn!(error = %e, "freeing idempotency keys failed"),
        }
    }
}

/// Other nodes may change apps through their admin API; pick the changes up.
async fn follow_stored_apps(store: Store, apps: Arc<AppDirectory>) {
    loop {
        tokio::time::sleep(Duration::from_secs(5)).await;
        if let Err(e) = load_stored_apps(&store, &apps).await {
            tracing::warn!(error = %e, "reloading apps from the store failed");
        }
    }
}

async fn signal() {
    use actix_web::rt::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => {
            let _ = actix_web::rt::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = actix_web::rt::signal::ctrl_c() => {}
    }
}

/// On SIGTERM/SIGINT: fail readiness, refuse new sockets, tell connected clients to
/// reconnect (4200) a batch at a time, then stop — all within the grace time.
async fn shutdown_on_signal(state: web::Data<ServerState>, server: actix_web::dev::ServerHandle) {
    signal().await;
    let cfg = &state.config;
    tracing::info!(
        connections = state.connections.len(),
        grace_secs = cfg.shutdown_grace_secs,
        "shutting down: moving clients to other nodes"
    );
    state
        .shutting_down
        .store(true, std::sync::atomic::Ordering::Relaxed);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(cfg.shutdown_grace_secs);
    // Readiness fails first; load balancers take a moment to stop sending new clients here.
    let drain = tokio::time::Instant::now() + Duration::from_millis(cfg.shutdown_drain_ms);
    tokio::time::sleep_until(drain.min(deadline)).await;
    let code = bellhop_protocol::ErrorCode::ReconnectImmediately;
    while tokio::time::Instant::now() < deadline {
        let batch = state.connections.some_open(cfg.shutdown_batch);
        if batch.is_empty() {
            break;
        }
        for outbox in batch {
            outbox.close(crate::connection::CloseRequest::Pusher(
                code,
                "server shutting down: reconnect".into(),
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Give the last close frames a moment to leave, bounded by the grace time.
    while !state.connections.is_empty() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // A connection leaves the registry just before its writer sends the close frame.
    tokio::time::sleep_until(
        (tokio::time::Instant::now() + Duration::from_millis(100)).min(deadline),
    )
    .await;
    server.stop(true).await;
}

fn threads(configured: usize) -> usize {
    if configured > 0 {
        configured
    } else {
        std::thread::available_parallelism().map_or(1, |n| n.get())
    }
}

/// Runs the server until SIGINT/SIGTERM. Must be called inside an actix system.
pub async fn run(config: Config) -> Result<(), RunError> {
    let apps = config
        .apps
        .iter()
        .map(|c| {
            App::from_config(c).map_err(|source| RunError::App {
                id: c.id.clone(),
                source,
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let apps = Arc::new(AppDirectory::new(apps));
    // Each app's rules and providers follow the app: built at start, rebuilt when it changes.
    let setups = Arc::new(crate::delivery::setup::Setups::default());
    {
        let setups = setups.clone();
        apps.on_change(Arc::new(move |app: &App| {
            if let Err(e) = setups.install(&app.config.delivery()) {
                tracing::error!(app_id = %app.id, error = %e, "the app's delivery setup failed; its notifications keep the previous one");
            }
        }));
    }
    let db_url = config.server.database_url();
    let store = Store::connect_with(&db_url, config.server.sqlite_synchronous).await?;
    store.migrate().await?;
    tracing::info!(store = %store.url(), "store ready");
    load_stored_apps(&store, &apps).await?;

    actix_web::rt::spawn(follow_stored_apps(store.clone(), apps.clone()));
    actix_web::rt::spawn(expire_delivery_keys(store.clone()));
    let cfg = &config.server;
    let targets: Arc<dyn crate::webhooks::Targets> = apps.clone();
    let batcher = WebhookBatcher::new(
        targets.clone(),
        store.clone(),
        Duration::from_millis(cfg.webhook_delay_ms),
        Duration::from_millis(cfg.webhook_batch_ms),
        cfg.redis_url.is_some(),
    )
    .start();

    let arbiters: Vec<actix::Arbiter> = (0..threads(cfg.channel_threads))
        .map(|_| actix::Arbiter::new())
        .collect();
    let clustered = cfg.redis_url.is_some();
    let registry = ChannelRegistry::new(
        arbiters.iter().map(|a| a.handle()).collect(),
        Some(batcher.clone().recipient()),
        clustered,
    );
    let connections = Arc::new(Connections::default());
    let node_id = cfg.node_id();
    type Gates = Arc<dyn crate::delivery::throttle::Gates>;
    let (bus, ledger, gates): (crate::cluster::SharedBus, _, Gates) = match &cfg.redis_url {
        None => (
            Arc::new(crate::cluster::MemoryBus),
            None,
            Arc::new(crate::delivery::throttle::memory::MemoryGates::default()),
        ),
        Some(url) => {
            let deliver = deliver_from_bus(registry.clone(), apps.clone(), connections.clone());
            let bus_timing = crate::cluster::BusTiming {
                beat: Duration::from_millis(cfg.node_beat_ms.max(50)),
                dead_after: Duration::from_millis(cfg.node_dead_after_ms.max(200)),
            };
            let reconcile = Arc::new(tokio::sync::Notify::new());
            let bus = crate::cluster::RedisBus::connect(
                url,
                &cfg.redis_prefix,
                node_id.clone(),
                bus_timing,
                reconcile.clone(),
                deliver,
            )
            .await
            .map_err(RunError::Bus)?;
            let conn = bus.connection().await.map_err(RunError::Bus)?;
            let gates = crate::delivery::throttle::redis::RedisGates::new(
                bus.connection().await.map_err(RunError::Bus)?,
                &cfg.redis_prefix,
            );
            let bus: crate::cluster::SharedBus = bus;
            let announcer = Arc::new(crate::cluster::Announcer {
                node: node_id.clone(),
                registry: registry.clone(),
                bus: bus.clone(),
                webhooks: batcher.clone().recipient(),
                apps: apps.clone(),
            });
            let timing = crate::cluster::Timing {
                beat: bus_timing.beat,
                dead_after: bus_timing.dead_after,
                resync: Duration::from_secs(cfg.cluster_resync_secs.max(1)),
                ttl: Duration::from_secs(cfg.cluster_key_ttl_secs.max(60)),
                webhook_delay: Duration::from_millis(cfg.webhook_delay_ms),
            };
            let ledger = crate::cluster::Ledger::start(
                conn,
                cfg.redis_prefix.clone(),
                node_id.clone(),
                timing,
                announcer,
                reconcile.clone(),
            );
            // Two beats: every node that is back rebuilds its share on its next beat.
            actix_web::rt::spawn(crate::cluster::reconcile::run(
                ledger.clone(),
                registry.clone(),
                reconcile,
                2 * timing.beat,
            ));
            tracing::info!(prefix = %cfg.redis_prefix, node = %node_id, "cluster bus and ledger on Redis");
            (bus, Some(ledger), Arc::new(gates))
        }
    };
    let delivery = Arc::new(crate::delivery::Engine {
        store: store.clone(),
        setups: setups.clone(),
        presence: match &ledger {
            Some(l) => Arc::new(crate::live::ClusterPresence { ledger: l.clone() }),
            None => Arc::new(crate::live::NodePresence {
                connections: connections.clone(),
                registry: registry.clone(),
            }),
        },
        sockets: Arc::new(crate::live::ServerToUser {
            registry: registry.clone(),
            bus: bus.clone(),
            node: node_id.clone(),
        }),
        throttle: crate::delivery::throttle::Throttle::new(gates),
    });
    let (stop_workers, workers_stopped) = watch::channel(false);
    let workers = Workers::new(store.clone(), cfg.node_id())
        .lease(Duration::from_secs(cfg.job_lease_secs))
        .concurrency(cfg.job_concurrency)
        .handler(Arc::new(WebhookSender::new(
            targets,
            Duration::from_millis(cfg.webhook_timeout_ms),
        )))
        .handler(delivery.clone())
        .handler(Arc::new(
            crate::delivery::event_webhooks::EventWebhookSender::new(
                setups,
                Duration::from_millis(cfg.webhook_timeout_ms),
            ),
        ));
    let pg_url = (store.dialect() == Dialect::Postgres).then(|| db_url.clone());
    let workers = actix_web::rt::spawn(workers.run(pg_url, workers_stopped));
    let state = web::Data::new(ServerState {
        config: config.server.clone(),
        apps,
        channels: registry,
        connections,
        store,
        shutting_down: Default::default(),
        webhooks: batcher.recipient(),
        bus,
        ledger,
        delivery,
        event_budget: Default::default(),
        node_id,
    });

    let addr = format!("{}:{}", config.server.host, config.server.port);
    let stall_timeout = Duration::from_secs(cfg.activity_timeout_secs + cfg.pong_timeout_secs);
    let tls = match (&cfg.tls_cert, &cfg.tls_key) {
        (Some(cert), Some(key)) => Some(tls_config(cert, key)?),
        _ => None,
    };
    let scheme = if tls.is_some() { "https" } else { "http" };
    let (server, bound) = http::server::build(
        state.clone(),
        http::server::Settings {
            addr: addr.clone(),
            tls,
            workers: threads(config.server.workers),
            stall_timeout,
            header_timeout: Duration::from_millis(cfg.header_timeout_ms),
            body_budget: web::Data::new(http::body_guard::BodyBudget::new(
                cfg.max_body_bytes_in_flight,
                Duration::from_millis(cfg.body_timeout_ms),
            )),
        },
    )
    .map_err(|source| RunError::Bind {
        addr: addr.clone(),
        source,
    })?;
    for a in &bound {
        tracing::info!(addr = %a, apps = state.apps.all().len(), scheme, "bellhop listening");
        // A machine-readable line on stdout, so scripts and tests can find a port picked by
        // the OS (BELLHOP_PORT=0).
        let _ = writeln!(std::io::stdout(), "listening {scheme}://{a}");
    }
    let metrics_addr = format!("{}:{}", cfg.metrics_host, cfg.metrics_port);
    let metrics_data = state.clone();
    let metrics = HttpServer::new(move || {
        WebApp::new()
            .app_data(metrics_data.clone())
            .route("/metrics", web::get().to(http::metrics::scrape))
    })
    .workers(1)
    .disable_signals()
    .bind(&metrics_addr)
    .map_err(|source| RunError::Bind {
        addr: metrics_addr.clone(),
        source,
    })?;
    for a in metrics.addrs() {
        tracing::info!(addr = %a, "metrics listening");
        // Writes to a closed stdout are ignored: the server must not die with its reader.
        let _ = writeln!(std::io::stdout(), "metrics http://{a}/metrics");
    }
    let metrics = metrics.run();
    let metrics_handle = metrics.handle();
    actix_web::rt::spawn(metrics);
    let _ = std::io::stdout().flush();
    actix_web::rt::spawn(shutdown_on_signal(state.clone(), server.handle()));
    let result = server.await.map_err(RunError::Serve);
    if let Some(ledger) = &state.ledger {
        // The closed sockets' leaves reach the cluster now, not when this node is reaped; then
        // the node leaves the list of live nodes, so triggers elsewhere stop waiting for it.
        let _ = tokio::time::timeout(Duration::from_secs(3), ledger.flush()).await;
        let _ = tokio::time::timeout(Duration::from_secs(2), ledger.leave()).await;
    }
    metrics_handle.stop(true).await;
    // Jobs in flight finish; queued ones stay in the store for the next worker.
    let _ = stop_workers.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(10), workers).await;
    for a in arbiters {
        a.stop();
    }
    tracing::info!("bellhop stopped");
    result
}
