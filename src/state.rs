//! What every request and connection handler shares: the config, the apps, the channels.

use std::sync::Arc;

use actix::Recipient;

use crate::apps::AppDirectory;
use crate::channel::ChannelRegistry;
use crate::config::ServerConfig;
use crate::store::Store;
use crate::webhooks::Observed;

pub struct ServerState {
    pub config: ServerConfig,
    pub apps: Arc<AppDirectory>,
    pub channels: Arc<ChannelRegistry>,
    pub store: Store,
    /// Facts for webhooks (client events come from connections).
    pub webhooks: Recipient<Observed>,
}
