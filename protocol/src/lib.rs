//! The Pusher Channels protocol (version 7) as pure data: what comes in from a client
//! ([`ClientEvent`]), what goes out ([`server`]), the names and identifiers that cross the
//! wire ([`ChannelName`], [`SocketId`], [`AppId`], …), the signatures that authorise them
//! ([`signing`]) and the code table ([`ErrorCode`]). Nothing here does IO or reads config, so
//! every edge case can be tested without a server.

pub mod channel;
pub mod client;
pub mod codes;
pub mod ids;
pub mod limits;
pub mod server;
pub mod signing;

pub use channel::{ChannelKind, ChannelName, ChannelNameError};
pub use client::{ClientEvent, DecodeError, SubscribeRequest};
pub use codes::{ErrorCode, Reconnect};
pub use ids::{AppId, AppKey, IdError, Secret, SocketId, UserId};
