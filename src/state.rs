//! What every request and connection handler shares: the config, the apps, the channels.

use std::sync::Arc;

use actix::Recipient;

use crate::apps::{AppDirectory, EventBudget};
use crate::channel::ChannelRegistry;
use crate::cluster::{Ledger, SharedBus};
use crate::config::ServerConfig;
use crate::sockets::Connections;
use crate::store::Store;
use crate::webhooks::Observed;

pub struct ServerState {
    pub config: ServerConfig,
    pub apps: Arc<AppDirectory>,
    pub channels: Arc<ChannelRegistry>,
    pub connections: Arc<Connections>,
    pub store: Store,
    /// Set when shutdown begins: readiness fails and new connections are turned away.
    pub shutting_down: std::sync::atomic::AtomicBool,
    /// Facts for webhooks (client events come from connections).
    pub webhooks: Recipient<Observed>,
    /// Other nodes (the in-memory bus when alone).
    pub bus: SharedBus,
    /// Cluster-wide counts, presence and limits (clustered only; alone, the channel actors
    /// and `apps` count by themselves).
    pub ledger: Option<Arc<Ledger>>,
    /// Notifications: rules, direct API, directory and inbox.
    pub delivery: Arc<crate::delivery::Engine>,
    /// The HTTP API's per-app message budgets when alone.
    pub event_budget: EventBudget,
    pub node_id: String,
}
