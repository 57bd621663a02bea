//! Wiring: build the shared state from config, start the channel threads and the HTTP
//! server, and stop them in order.

use std::io::Write;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use actix_web::{web, App as WebApp, HttpServer};

use crate::apps::{App, AppDirectory};
use crate::channel::ChannelRegistry;
use crate::config::Config;
use crate::http;
use crate::state::ServerState;

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
    let arbiters: Vec<actix::Arbiter> = (0..threads(config.server.channel_threads))
        .map(|_| actix::Arbiter::new())
        .collect();
    let registry = ChannelRegistry::new(arbiters.iter().map(|a| a.handle()).collect());
    let state = web::Data::new(ServerState {
        config: config.server.clone(),
        apps: AppDirectory::new(apps),
        channels: registry,
    });

    let addr = format!("{}:{}", config.server.host, config.server.port);
    let data = state.clone();
    let server =
        HttpServer::new(move || WebApp::new().app_data(data.clone()).configure(http::routes))
            .on_connect(|conn, _| {
                // Small frames must leave at once; Nagle would hold them for the peer's delayed ACK.
                if let Some(tcp) = conn.downcast_ref::<actix_web::rt::net::TcpStream>() {
                    let _ = tcp.set_nodelay(true);
                }
            })
            .workers(threads(config.server.workers))
            .backlog(4096)
            .max_connections(200_000)
            .shutdown_timeout(10)
            .client_request_timeout(Duration::from_secs(10))
            .bind(&addr)
            .map_err(|source| RunError::Bind {
                addr: addr.clone(),
                source,
            })?;
    let bound: Vec<SocketAddr> = server.addrs();
    for a in &bound {
        tracing::info!(addr = %a, apps = state.apps.all().len(), "bellhop listening");
        // A machine-readable line on stdout, so scripts and tests can find a port picked by
        // the OS (BELLHOP_PORT=0).
        println!("listening http://{a}");
    }
    let _ = std::io::stdout().flush();
    let result = server.run().await.map_err(RunError::Serve);
    for a in arbiters {
        a.stop();
    }
    tracing::info!("bellhop stopped");
    result
}

/// Builds a registry on fresh arbiters, for tests of the channel layer.
pub fn test_registry(threads: usize) -> (Arc<ChannelRegistry>, Vec<actix::Arbiter>) {
    let arbiters: Vec<actix::Arbiter> = (0..threads).map(|_| actix::Arbiter::new()).collect();
    (
        ChannelRegistry::new(arbiters.iter().map(|a| a.handle()).collect()),
        arbiters,
    )
}
