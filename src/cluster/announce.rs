//! Turns what the cluster ledger reports into webhooks: each fact was reported to exactly one
//! node, which records the webhook (a leave's after the cluster-wide cancel window). Member
//! and watchlist events reach clients straight from the ledger script, which publishes them
//! in the order it ran (see `ledger.lua`); subscription counts are sent from here.

use std::sync::Arc;

use actix::Recipient;
use bellhop_protocol::{server, AppId, ChannelName, SocketId, UserId};
use bytestring::ByteString;

use super::ledger::Entry;
use super::{Envelope, SharedBus};
use crate::apps::AppDirectory;
use crate::channel::messages::Publish;
use crate::channel::{ChannelKey, ChannelRegistry};
use crate::webhooks::{Observed, WebhookEvent};

/// Something that became true cluster-wide.
#[derive(Debug, Clone)]
pub enum Fact {
    /// `webhook` is false for a rejoin within the cancel window: the leave it cancelled sends
    /// nothing either.
    Occupied {
        app: AppId,
        channel: ChannelName,
        webhook: bool,
    },
    /// `pending`: the webhook waits out the cancel window on this key (see `ledger.lua`).
    Vacated {
        app: AppId,
        channel: ChannelName,
        pending: Option<String>,
    },
    MemberAdded {
        app: AppId,
        channel: ChannelName,
        user: UserId,
        webhook: bool,
    },
    MemberRemoved {
        app: AppId,
        channel: ChannelName,
        user: UserId,
        pending: Option<String>,
    },
    Online {
        app: AppId,
        user: UserId,
    },
    Offline {
        app: AppId,
        user: UserId,
    },
}

impl Fact {
    /// The fact a ledger change reported (`first`, `rejoin` or `last`) for an entry; none
    /// for connection counts, which only enforce limits.
    pub fn from_ledger(fact: &str, entry: &Entry, pending: Option<String>) -> Option<Fact> {
        let (first, webhook) = match fact {
            "first" => (true, true),
            "rejoin" => (true, false),
            "last" => (false, true),
            _ => return None,
        };
        Some(match (entry.clone(), first) {
            (Entry::Subscription { app, channel }, true) => Fact::Occupied {
                app,
                channel,
                webhook,
            },
            (Entry::Subscription { app, channel }, false) => Fact::Vacated {
                app,
                channel,
                pending,
            },
            (Entry::Member { app, channel, user }, true) => Fact::MemberAdded {
                app,
                channel,
                user,
                webhook,
            },
            (Entry::Member { app, channel, user }, false) => Fact::MemberRemoved {
                app,
                channel,
                user,
                pending,
            },
            (Entry::SignedIn { app, user }, true) => Fact::Online { app, user },
            (Entry::SignedIn { app, user }, false) => Fact::Offline { app, user },
            (Entry::Connections { .. }, _) => return None,
        })
    }
}

/// A leave webhook waiting out the cancel window: sent only if `key` is still in Redis then.
#[derive(Debug)]
pub struct Deferred {
    pub key: String,
    pub app: AppId,
    pub event: WebhookEvent,
}

pub struct Announcer {
    pub node: String,
    pub registry: Arc<ChannelRegistry>,
    pub bus: SharedBus,
    pub webhooks: Recipient<Observed>,
    pub apps: Arc<AppDirectory>,
}

impl Announcer {
    /// Webhook facts are settled: the ledger applied the cancel window.
    pub fn observe(&self, app: &AppId, event: WebhookEvent) {
        self.webhooks.do_send(Observed {
            app: app.clone(),
            event,
            settled: true,
        });
    }

    /// A leave's webhook now, or after the cancel window when it waits on a pending key.
    fn leave(
        &self,
        deferred: &mut Vec<Deferred>,
        app: AppId,
        pending: Option<String>,
        event: WebhookEvent,
    ) {
        match pending {
            Some(key) => deferred.push(Deferred { key, app, event }),
            None => self.observe(&app, event),
        }
    }

    /// Delivers `frame` here and queues it for the other nodes.
    fn deliver(
        &self,
        out: &mut Vec<Envelope>,
        app: &AppId,
        channel: &ChannelName,
        frame: String,
        except: Option<SocketId>,
    ) {
        let frame = ByteString::from(frame);
        let key = ChannelKey {
            app: app.clone(),
            name: channel.clone(),
        };
        self.registry.publish(
            &key,
            Publish {
                frame: frame.clone(),
                except,
                from: None,
                member_seq: None,
            },
        );
        out.push(Envelope::event(
            &self.node,
            app.clone(),
            channel.clone(),
            except,
            frame,
        ));
    }

    /// Records the facts' webhooks and tells watchers on every node; returns the leave
    /// webhooks that wait out the cancel window.
    pub async fn announce(&self, facts: Vec<Fact>) -> Vec<Deferred> {
        let mut deferred = Vec::new();
        if facts.is_empty() {
            return deferred;
        }
        for fact in facts {
            match fact {
                Fact::Occupied {
                    app,
                    channel,
                    webhook,
                } => {
                    if webhook {
                        let channel = channel.to_string();
                        self.observe(&app, WebhookEvent::ChannelOccupied { channel });
                    }
                }
                Fact::Vacated {
                    app,
                    channel,
                    pending,
                } => {
                    let channel = channel.to_string();
                    self.leave(
                        &mut deferred,
                        app,
                        pending,
                        WebhookEvent::ChannelVacated { channel },
                    );
                }
                Fact::MemberAdded {
                    app,
                    channel,
                    user,
                    webhook,
                } => {
                    if webhook {
                        self.observe(
                            &app,
                            WebhookEvent::MemberAdded {
                                channel: channel.to_string(),
                                user_id: user.as_str().to_owned(),
                            },
                        );
                    }
                }
                Fact::MemberRemoved {
                    app,
                    channel,
                    user,
                    pending,
                } => {
                    let event = WebhookEvent::MemberRemoved {
                        channel: channel.to_string(),
                        user_id: user.as_str().to_owned(),
                    };
                    self.leave(&mut deferred, app, pending, event);
                }
                // The ledger script published these to every node, in order.
                Fact::Online { .. } | Fact::Offline { .. } => {}
            }
        }
        deferred
    }

    /// Whether changes of this channel's subscription count are announced.
    pub fn wants_count(&self, app: &AppId, channel: &ChannelName) -> bool {
        !channel.is_presence()
            && self
                .apps
                .by_id(app.as_str())
                .is_some_and(|a| a.subscription_count)
    }

    /// Sends each channel's cluster-wide subscription count to its subscribers on every node;
    /// `new_count` says which counts no node has reported yet (their webhook goes out here).
    pub async fn counts(&self, counts: Vec<(AppId, ChannelName, u64, bool)>) {
        let mut out = Vec::new();
        for (app, channel, n, new_count) in counts {
            if n == 0 {
                continue;
            }
            self.deliver(
                &mut out,
                &app,
                &channel,
                server::subscription_count(channel.as_str(), n),
                None,
            );
            if new_count {
                self.observe(
                    &app,
                    WebhookEvent::SubscriptionCount {
                        channel: channel.to_string(),
                        count: n,
                    },
                );
            }
        }
        if let Err(e) = self.bus.publish_many(out).await {
            tracing::warn!(error = %e, "subscription counts not shared with other nodes");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ledger_facts_map_to_what_clients_see() {
        let app = AppId::parse("1").unwrap();
        let channel = ChannelName::parse("presence-x").unwrap();
        let user = UserId::parse("u", 128).unwrap();
        let member = Entry::Member {
            app: app.clone(),
            channel: channel.clone(),
            user: user.clone(),
        };
        assert!(matches!(
            Fact::from_ledger("first", &member, None),
            Some(Fact::MemberAdded { .. })
        ));
        assert!(matches!(
            Fact::from_ledger("last", &member, Some("k".into())),
            Some(Fact::MemberRemoved { user: u, pending: Some(_), .. }) if u == user
        ));
        let sub = Entry::Subscription {
            app: app.clone(),
            channel,
        };
        assert!(matches!(
            Fact::from_ledger("last", &sub, None),
            Some(Fact::Vacated { .. })
        ));
        assert!(matches!(
            Fact::from_ledger("first", &sub, None),
            Some(Fact::Occupied { webhook: true, .. })
        ));
        assert!(matches!(
            Fact::from_ledger("rejoin", &sub, None),
            Some(Fact::Occupied { webhook: false, .. })
        ));
        assert!(Fact::from_ledger("first", &Entry::Connections { app }, None).is_none());
        assert!(Fact::from_ledger("reaped", &sub, None).is_none());
    }
}
