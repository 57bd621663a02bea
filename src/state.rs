//! What every request and connection handler shares: the config, the apps, the channels.

use std::sync::Arc;

use crate::apps::AppDirectory;
use crate::channel::ChannelRegistry;
use crate::config::ServerConfig;

pub struct ServerState {
    pub config: ServerConfig,
    pub apps: AppDirectory,
    pub channels: Arc<ChannelRegistry>,
}
