//! What every request and connection handler shares: the config, the apps, the channels.

use std::sync::Arc;

use actix::Recipient;

use crate::apps::AppDirectory;
use crate::channel::ChannelRegistry;
use crate::cluster::SharedBus;
use crate::config::ServerConfig;
use crate::connection::Connections;
use crate::store::Store;
use crate::webhooks::Observed;

pub struct ServerState {
    pub config: ServerConfig,
    pub apps: Arc<AppDirectory>,
    pub channels: Arc<ChannelRegistry>,
    pub connections: Connections,
    pub store: Store,
    /// Set when shutdown begins: readiness fails and new connections are turned away.
    pub shutting_down: std::sync::atomic::AtomicBool,
    /// Facts for webhooks (client events come from connections).
    pub webhooks: Recipient<Observed>,
    /// Other nodes (the in-memory bus when alone).
    pub bus: SharedBus,
    pub node_id: String,
}
