//! What a webhook reports: the facts channel actors, the cluster ledger and connections
//! observe, and their JSON as Pusher sends it.

use actix::Message;
use bellhop_protocol::AppId;
use serde_json::{json, Value};

/// A fact worth a webhook.
#[derive(Debug, Clone, PartialEq)]
pub enum WebhookEvent {
    ChannelOccupied {
        channel: String,
    },
    ChannelVacated {
        channel: String,
    },
    MemberAdded {
        channel: String,
        user_id: String,
    },
    MemberRemoved {
        channel: String,
        user_id: String,
    },
    ClientEvent {
        channel: String,
        event: String,
        data: String,
        socket_id: String,
        user_id: Option<String>,
    },
    CacheMiss {
        channel: String,
    },
    SubscriptionCount {
        channel: String,
        count: u64,
    },
}

impl WebhookEvent {
    pub fn kind(&self) -> &'static str {
        match self {
            Self::ChannelOccupied { .. } => "channel_occupied",
            Self::ChannelVacated { .. } => "channel_vacated",
            Self::MemberAdded { .. } => "member_added",
            Self::MemberRemoved { .. } => "member_removed",
            Self::ClientEvent { .. } => "client_event",
            Self::CacheMiss { .. } => "cache_miss",
            Self::SubscriptionCount { .. } => "subscription_count",
        }
    }

    /// The event as it appears in the webhook body's `events` array.
    pub fn to_json(&self) -> Value {
        let name = self.kind();
        match self {
            Self::ChannelOccupied { channel }
            | Self::ChannelVacated { channel }
            | Self::CacheMiss { channel } => json!({"name": name, "channel": channel}),
            Self::MemberAdded { channel, user_id } | Self::MemberRemoved { channel, user_id } => {
                json!({"name": name, "channel": channel, "user_id": user_id})
            }
            Self::ClientEvent {
                channel,
                event,
                data,
                socket_id,
                user_id,
            } => {
                let mut v = json!({"name": name, "channel": channel, "event": event,
                                   "data": data, "socket_id": socket_id});
                if let Some(u) = user_id {
                    v["user_id"] = u.as_str().into();
                }
                v
            }
            Self::SubscriptionCount { channel, count } => {
                json!({"name": name, "channel": channel, "subscription_count": count})
            }
        }
    }

    /// The channel (and member, or "") this event opens or closes, and whether it opens
    /// it: what pairs a leave with the join that cancels it within the window.
    pub fn pair(&self) -> Option<(&str, &str, bool)> {
        match self {
            Self::ChannelOccupied { channel } => Some((channel, "", true)),
            Self::ChannelVacated { channel } => Some((channel, "", false)),
            Self::MemberAdded { channel, user_id } => Some((channel, user_id, true)),
            Self::MemberRemoved { channel, user_id } => Some((channel, user_id, false)),
            _ => None,
        }
    }

    /// The event that closes what a held row (channel, user or "") says is open.
    pub fn closing(channel: String, user_id: String) -> Self {
        if user_id.is_empty() {
            Self::ChannelVacated { channel }
        } else {
            Self::MemberRemoved { channel, user_id }
        }
    }
}

/// A fact from a channel or connection, for one app.
#[derive(Message, Debug, Clone)]
#[rtype(result = "()")]
pub struct Observed {
    pub app: AppId,
    pub event: WebhookEvent,
    /// The cancel window was already applied (by the cluster ledger): send as it is.
    pub settled: bool,
}
