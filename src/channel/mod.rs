//! Channels: one [`ChannelActor`] per live channel holds that channel's subscribers (and, for
//! presence channels, its members) and fans each published frame out to their outboxes. The
//! [`ChannelRegistry`] is the only place that creates or retires channel actors.

mod actor;
pub mod messages;
pub mod presence;
pub mod presence_view;
mod registry;

pub use actor::ChannelActor;
pub use registry::{ChannelKey, ChannelRegistry, ChannelStats};
