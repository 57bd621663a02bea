//! Messages a channel actor accepts. Commands are imperative, queries ask.

use std::sync::Arc;

use actix::Message;
use bellhop_protocol::{SocketId, UserId};
use bytestring::ByteString;
use serde_json::value::RawValue;

use crate::connection::Outbox;

/// A presence member as given by a subscription's `channel_data`.
#[derive(Debug, Clone)]
pub struct Member {
    pub user_id: UserId,
    pub user_info: Arc<RawValue>,
}

/// Adds a socket to the channel. The actor answers through the outbox: the
/// `subscription_succeeded` frame, or a `subscription_error` when a limit refuses it.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Subscribe {
    pub socket_id: SocketId,
    pub outbox: Outbox,
    pub member: Option<Member>,
    /// The presence members limit of the channel's app.
    pub max_members: usize,
    /// Whether the app wants `subscription_count` events.
    pub subscription_count: bool,
    /// Clustered: the channel's members across the cluster (the ledger already admitted this
    /// member), for `subscription_succeeded`. None alone, or while the ledger is unreachable.
    pub cluster_members: Option<Vec<(String, Box<RawValue>)>>,
}

/// Removes a socket; a no-op when it is not subscribed.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Unsubscribe {
    pub socket_id: SocketId,
}

/// Sends an encoded frame to every subscriber except `except`. With `from`, the frame is a
/// client event and is dropped unless `from` is subscribed.
#[derive(Message, Clone)]
#[rtype(result = "()")]
pub struct Publish {
    pub frame: ByteString,
    pub except: Option<SocketId>,
    pub from: Option<SocketId>,
}

/// The user ids of a presence channel's members.
#[derive(Message)]
#[rtype(result = "Vec<UserId>")]
pub struct ListMembers;
