//! Messages a channel actor accepts. Commands are imperative, queries ask.

use std::sync::Arc;

use actix::Message;
use bellhop_protocol::{SocketId, UserId};
use bytestring::ByteString;
use serde_json::value::RawValue;

use crate::outbox::Outbox;

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
    /// Clustered presence: registered before the ledger is asked, so that no member frame
    /// published meanwhile can miss this socket; it hears nothing until [`Joined`].
    pub pending: bool,
}

/// Completes a pending presence subscription with the ledger's snapshot: the actor sends
/// `subscription_succeeded` with `members`, then the member frames it held for this socket
/// that are newer than `seq`.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Joined {
    pub socket_id: SocketId,
    /// None: the ledger was unreachable; this node's members answer.
    pub members: Option<Vec<(String, Box<RawValue>)>>,
    pub seq: Option<u64>,
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
    /// A presence member frame's number (clustered): held for sockets still joining.
    pub member_seq: Option<u64>,
}

/// The user ids of a presence channel's members.
#[derive(Message)]
#[rtype(result = "Vec<UserId>")]
pub struct ListMembers;

/// Clustered presence: the ledger's members list as of member frame `view.seq()`. The actor
/// tells each socket the adds and removals between what it was told and this, and answers
/// false (changing nothing) when it has already moved past `view.seq()`: read again.
#[derive(Message)]
#[rtype(result = "bool")]
pub struct Reconcile {
    pub view: crate::channel::presence_view::PresenceView,
}
