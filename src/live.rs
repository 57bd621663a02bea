//! What the delivery engine needs of the realtime side, answered from this node's registries
//! or, clustered, from the ledger and the bus: who is connected ([`Presence`]), and a way to
//! every socket a user has signed in with ([`UserSockets`]).

use std::sync::Arc;

use bellhop_protocol::{server, AppId, ChannelName, UserId};
use bytestring::ByteString;
use futures_util::future::BoxFuture;
use serde_json::Value;

use crate::channel::messages::Publish;
use crate::channel::{ChannelKey, ChannelRegistry};
use crate::cluster::{Body, Envelope, Ledger, SharedBus};
use crate::delivery::presence::Presence;
use crate::delivery::provider::UserSockets;
use crate::sockets::Connections;

/// Longest user id read back from a store or a rule: a bound, not a rule of Pusher's.
const MAX_USER_ID: usize = 4096;

/// One node: its connections and its channel actors know everyone.
pub struct NodePresence {
    pub connections: Arc<Connections>,
    pub registry: Arc<ChannelRegistry>,
}

fn key(app: &str, channel: &str) -> Option<ChannelKey> {
    Some(ChannelKey {
        app: AppId::parse(app).ok()?,
        name: ChannelName::parse(channel).ok()?,
    })
}

impl Presence for NodePresence {
    fn connected<'a>(
        &'a self,
        app: &'a str,
        user: &'a str,
        channel: Option<&'a str>,
        personal: bool,
    ) -> BoxFuture<'a, bool> {
        Box::pin(async move {
            let (Ok(app_id), Ok(uid)) = (AppId::parse(app), UserId::parse(user, MAX_USER_ID))
            else {
                return false;
            };
            if self.connections.user_online(&app_id, &uid) {
                return true;
            }
            match channel.and_then(|c| key(app, c)) {
                Some(k) if k.name.is_presence() => self.registry.members(&k).await.contains(&uid),
                Some(k) if personal => self.registry.stats(&k).is_some(),
                _ => false,
            }
        })
    }

    fn members<'a>(&'a self, app: &'a str, channel: &'a str) -> BoxFuture<'a, Vec<String>> {
        Box::pin(async move {
            let Some(k) = key(app, channel) else {
                return Vec::new();
            };
            let members = self.registry.members(&k).await;
            members.into_iter().map(|u| u.as_str().to_owned()).collect()
        })
    }
}

/// A cluster: the ledger counts every node's sockets.
pub struct ClusterPresence {
    pub ledger: Arc<Ledger>,
}

impl Presence for ClusterPresence {
    fn connected<'a>(
        &'a self,
        app: &'a str,
        user: &'a str,
        channel: Option<&'a str>,
        personal: bool,
    ) -> BoxFuture<'a, bool> {
        Box::pin(async move {
            let (Ok(app_id), Ok(uid)) = (AppId::parse(app), UserId::parse(user, MAX_USER_ID))
            else {
                return false;
            };
            let l = &self.ledger;
            let online = l.online(&app_id, std::slice::from_ref(&uid)).await;
            if online.is_ok_and(|v| v.first().copied().unwrap_or(false)) {
                return true;
            }
            match channel.and_then(|c| ChannelName::parse(c).ok()) {
                Some(c) if c.is_presence() => l
                    .members(&app_id, &c)
                    .await
                    .is_ok_and(|m| m.iter().any(|id| id == user)),
                Some(c) if personal => l.channel(&app_id, &c).await.is_ok_and(|(n, _)| n > 0),
                _ => false,
            }
        })
    }

    fn members<'a>(&'a self, app: &'a str, channel: &'a str) -> BoxFuture<'a, Vec<String>> {
        Box::pin(async move {
            let (Ok(app), Ok(name)) = (AppId::parse(app), ChannelName::parse(channel)) else {
                return Vec::new();
            };
            self.ledger.members(&app, &name).await.unwrap_or_default()
        })
    }
}

/// `#server-to-user-{id}`: every signed-in socket of the user, on every node.
pub struct ServerToUser {
    pub registry: Arc<ChannelRegistry>,
    pub bus: SharedBus,
    pub node: String,
}

impl UserSockets for ServerToUser {
    fn push<'a>(
        &'a self,
        app: &'a str,
        user: &'a str,
        event: &'a str,
        data: &'a Value,
    ) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            let Some(k) = key(app, &format!("#server-to-user-{user}")) else {
                return;
            };
            let frame = server::channel_event(event, k.name.as_str(), &data.to_string());
            let frame = ByteString::from(frame);
            if !self.bus.alone() {
                let env = Envelope {
                    origin: self.node.clone(),
                    app: k.app.clone(),
                    body: Body::Event {
                        channel: k.name.clone(),
                        except: None,
                        cacheable: false,
                        member_seq: None,
                        frame: frame.clone(),
                    },
                };
                if let Err(e) = self.bus.publish(env).await {
                    tracing::warn!(error = %e, "inbox push not shared with other nodes");
                }
            }
            let publish = Publish {
                frame,
                except: None,
                from: None,
                member_seq: None,
            };
            self.registry.publish(&k, publish);
        })
    }
}
