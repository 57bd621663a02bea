//! One task per WebSocket reads client frames, answers them (through [`dispatch`] for the
//! decisions), keeps the connection alive with pings, and on the way out leaves every channel
//! it joined. Everything sent to the client — its own answers and channel events alike —
//! goes through the connection's bounded [`Outbox`] and leaves through the [`Writer`], which
//! writes to the socket the upgrade handed over.

pub mod dispatch;
mod frames;
pub mod writer;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use actix::Addr;
use actix_ws::{AggregatedMessage, CloseCode};
use bellhop_protocol::server::{self};
use bellhop_protocol::signing;
use bellhop_protocol::{ChannelName, ClientEvent, ErrorCode, SocketId, SubscribeRequest, UserId};
use bytestring::ByteString;
use futures_util::{Stream, StreamExt};
use serde_json::value::RawValue;
use tokio::time::{sleep_until, Instant};

pub use crate::outbox::{outbox, CloseRequest, Frame, Next, Outbox, OutboxReceiver, Overflow};
pub use crate::sockets::Connections;
pub use frames::{FrameError, FrameReader};
pub use writer::Writer;

use crate::apps::{App, ConnectionSlot};
use crate::channel::messages::{Joined, Publish, Subscribe, Unsubscribe};
use crate::channel::{ChannelActor, ChannelKey};
use crate::cluster::{Entry, Op};
use crate::metrics::{AppMetrics, METRICS};
use crate::state::ServerState;
use crate::webhooks::{Observed, WebhookEvent};
use dispatch::{authorize_subscription, check_client_event, RateLimit};

struct Subscription {
    addr: Addr<ChannelActor>,
    user: Option<UserId>,
}

/// How `terminate_connections` closes a user's sockets, on whichever node they are.
pub fn terminated() -> CloseRequest {
    CloseRequest::Pusher(
        ErrorCode::Unauthorized,
        "connection terminated by the application".into(),
    )
}

/// The `subscription_error` for a presence channel at its member limit.
fn full_presence(channel: &str, max: usize) -> String {
    server::subscription_error(
        channel,
        server::SubscriptionErrorKind::LimitReached,
        &format!("presence channel is full: at most {max} members"),
        400,
    )
}

/// Pusher accepts the first 100 user ids of a watchlist.
const MAX_WATCHLIST: usize = 100;

pub struct Connection {
    state: Arc<ServerState>,
    app: Arc<App>,
    socket_id: SocketId,
    outbox: Outbox,
    subscriptions: HashMap<ChannelName, Subscription>,
    user: Option<UserId>,
    rate: RateLimit,
    metrics: AppMetrics,
    /// Counted in the ledger's connections of the app (its limit is cluster-wide).
    counted_in_cluster: bool,
    _slot: ConnectionSlot,
}

impl Connection {
    pub fn new(
        state: Arc<ServerState>,
        app: Arc<App>,
        slot: ConnectionSlot,
        outbox: Outbox,
        counted_in_cluster: bool,
    ) -> Self {
        let socket_id = SocketId::new(rand::random::<u32>().into(), rand::random::<u32>().into());
        state
            .connections
            .add(socket_id, app.id.clone(), outbox.clone());
        let app_label = [app.id.as_str()];
        METRICS.connected.with_label_values(&app_label).inc();
        METRICS.new_connections.with_label_values(&app_label).inc();
        Self {
            metrics: AppMetrics::for_app(app.id.as_str()),
            state,
            app,
            socket_id,
            outbox,
            subscriptions: HashMap::new(),
            user: None,
            rate: RateLimit::new(std::time::Instant::now()),
            counted_in_cluster,
            _slot: slot,
        }
    }

    fn send(&self, frame: String) {
        self.metrics.messages_sent.inc();
        self.metrics.bytes_sent.inc_by(frame.len() as u64);
        // Overflow marks the outbox closed; the run loop then closes the socket with 4100.
        let _ = self.outbox.push(ByteString::from(frame));
    }

    fn error(&self, code: ErrorCode, message: &str) {
        self.send(server::error_with_message(code, message));
    }

    /// How a broken read ends the connection: the close code RFC 6455 gives each breach, with
    /// the `pusher:error` the Pusher client libraries show first for an oversized frame.
    fn on_frame_error(&self, e: FrameError) -> Option<CloseRequest> {
        tracing::debug!(socket_id = %self.socket_id, error = %e, "websocket read ended");
        let code = match &e {
            FrameError::TooLarge { .. } => {
                self.error(ErrorCode::GenericError, &e.to_string());
                CloseCode::Size
            }
            FrameError::InvalidUtf8 => CloseCode::Invalid,
            FrameError::Protocol(_) => CloseCode::Protocol,
            FrameError::Io(_) => return None,
        };
        Some(CloseRequest::WebSocket(code.into(), e.to_string()))
    }

    fn key(&self, name: ChannelName) -> ChannelKey {
        ChannelKey {
            app: self.app.id.clone(),
            name,
        }
    }

    async fn on_text(&mut self, text: &str) -> Option<CloseRequest> {
        let event = match ClientEvent::decode(text) {
            Ok(e) => e,
            Err(e) => {
                tracing::debug!(socket_id = %self.socket_id, error = %e, "refused client frame");
                self.error(ErrorCode::GenericError, &e.to_string());
                return None;
            }
        };
        match event {
            ClientEvent::Ping => self.send(server::pong()),
            ClientEvent::Pong => {}
            ClientEvent::Subscribe(req) => self.subscribe(req).await,
            ClientEvent::Unsubscribe { channel } => self.unsubscribe(&channel),
            ClientEvent::Signin { auth, user_data } => return self.signin(&auth, &user_data).await,
            ClientEvent::Client {
                event,
                channel,
                data,
            } => self.client_event(&event, &channel, &data),
        }
        None
    }

    async fn subscribe(&mut self, req: SubscribeRequest) {
        let authorized = match authorize_subscription(
            &self.app,
            self.socket_id,
            &req,
            self.user.as_ref(),
        ) {
            Ok(a) => a,
            Err(refusal) => {
                tracing::debug!(socket_id = %self.socket_id, channel = %req.channel, error = %refusal.error, "subscription refused");
                // The name exactly as sent (the frame limit bounds it), so that the client
                // library can route the error to the channel it subscribed.
                self.send(server::subscription_error(
                    &req.channel,
                    refusal.kind,
                    &refusal.error,
                    refusal.status,
                ));
                return;
            }
        };
        if !self.subscriptions.contains_key(&authorized.channel)
            && self.subscriptions.len() >= self.app.limits.max_subscriptions_per_connection
        {
            self.send(server::subscription_error(
                authorized.channel.as_str(),
                server::SubscriptionErrorKind::LimitReached,
                &format!(
                    "a connection may hold at most {} subscriptions",
                    self.app.limits.max_subscriptions_per_connection
                ),
                400,
            ));
            return;
        }
        let user = authorized.member.as_ref().map(|m| m.user_id.clone());
        let key = self.key(authorized.channel.clone());
        let repeated = self.subscriptions.contains_key(&authorized.channel);
        if self.state.ledger.is_some() && authorized.member.is_some() && !repeated {
            // Registered first (hearing nothing yet), so that no member frame published
            // while the ledger answers can miss this socket; then completed with the snapshot.
            let member = authorized.member.clone();
            let addr = self.state.channels.subscribe(
                &key,
                Subscribe {
                    socket_id: self.socket_id,
                    outbox: self.outbox.clone(),
                    member: authorized.member,
                    max_members: self.app.limits.max_presence_members,
                    subscription_count: self.app.subscription_count,
                    cluster_members: None,
                    pending: true,
                },
            );
            match self
                .join_cluster(&authorized.channel, member.as_ref())
                .await
            {
                Err(full) => {
                    addr.do_send(Unsubscribe {
                        socket_id: self.socket_id,
                    });
                    self.send(full);
                }
                Ok(snapshot) => {
                    let (members, seq) = snapshot.map_or((None, None), |(m, s)| (Some(m), s));
                    addr.do_send(Joined {
                        socket_id: self.socket_id,
                        members,
                        seq,
                    });
                    self.subscriptions
                        .insert(authorized.channel, Subscription { addr, user });
                }
            }
            return;
        }
        let cluster_members = match self
            .join_cluster(&authorized.channel, authorized.member.as_ref())
            .await
        {
            Ok(snapshot) => snapshot.map(|(members, _)| members),
            Err(full) => {
                self.send(full);
                return;
            }
        };
        let addr = self.state.channels.subscribe(
            &key,
            Subscribe {
                socket_id: self.socket_id,
                outbox: self.outbox.clone(),
                member: authorized.member,
                max_members: self.app.limits.max_presence_members,
                subscription_count: self.app.subscription_count,
                cluster_members,
                pending: false,
            },
        );
        // A repeated subscribe to the same live actor changes nothing there (it keeps the
        // first member), so the user id stamped on client events must not change either. A
        // different actor means the earlier attempt was refused and that actor retired.
        match self.subscriptions.get_mut(&authorized.channel) {
            Some(existing) if existing.addr == addr => {}
            _ => {
                self.subscriptions
                    .insert(authorized.channel, Subscription { addr, user });
            }
        }
    }

    /// Clustered: counts the subscription (and presence member) in the ledger first, so that
    /// limits hold cluster-wide and `subscription_succeeded` lists every node's members.
    /// `Ok(None)` alone, for a repeated subscribe of a non-presence channel, or while the ledger
    /// is unreachable (the channel then answers from this node, and the node resyncs later);
    /// `Err(frame)` when the presence channel is full.
    async fn join_cluster(
        &self,
        channel: &ChannelName,
        member: Option<&crate::channel::messages::Member>,
    ) -> Result<Option<(Vec<(String, Box<RawValue>)>, Option<u64>)>, String> {
        let Some(ledger) = &self.state.ledger else {
            return Ok(None);
        };
        let app = self.app.id.clone();
        let repeated = self.subscriptions.contains_key(channel);
        if repeated {
            if !channel.is_presence() {
                return Ok(None);
            }
            // Answered again with the members as they are now; nothing is counted twice.
            return Ok(ledger
                .member_list(&app, channel)
                .await
                .ok()
                .map(|m| (m, None)));
        }
        let mut ops = vec![Op::new(
            Entry::Subscription {
                app: app.clone(),
                channel: channel.clone(),
            },
            1,
        )];
        if let Some(m) = member {
            let mut op = Op::new(
                Entry::Member {
                    app,
                    channel: channel.clone(),
                    user: m.user_id.clone(),
                },
                1,
            );
            op.info = Some(m.user_info.clone());
            op.max = self.app.limits.max_presence_members as u64;
            op.want_members = true;
            op.socket = Some(self.socket_id);
            // The member goes first: a full channel refuses it, and the subscription with it.
            ops.insert(0, op);
            ops[1].gated = true;
        }
        match ledger.apply(ops).await {
            Ok(outcomes) => {
                let Some(first) = outcomes.into_iter().next() else {
                    return Ok(None);
                };
                if member.is_none() {
                    return Ok(None);
                }
                if first.full {
                    return Err(full_presence(
                        channel.as_str(),
                        self.app.limits.max_presence_members,
                    ));
                }
                Ok(Some((first.members, first.seq)))
            }
            Err(e) => {
                tracing::warn!(socket_id = %self.socket_id, error = %e, "subscribed without the cluster ledger");
                Ok(None)
            }
        }
    }

    /// Clustered: the ledger changes that undo a subscription.
    fn leave_ops(&self, channel: &ChannelName, user: Option<&UserId>, ops: &mut Vec<Op>) {
        let app = self.app.id.clone();
        if let Some(user) = user {
            ops.push(Op::new(
                Entry::Member {
                    app: app.clone(),
                    channel: channel.clone(),
                    user: user.clone(),
                },
                -1,
            ));
        }
        ops.push(Op::new(
            Entry::Subscription {
                app,
                channel: channel.clone(),
            },
            -1,
        ));
    }

    fn unsubscribe(&mut self, channel: &str) {
        let Ok(name) = ChannelName::parse(channel) else {
            return;
        };
        if let Some(sub) = self.subscriptions.remove(&name) {
            sub.addr.do_send(Unsubscribe {
                socket_id: self.socket_id,
            });
            if let Some(ledger) = &self.state.ledger {
                let mut ops = Vec::new();
                self.leave_ops(&name, sub.user.as_ref(), &mut ops);
                ledger.submit(ops);
            }
        }
    }

    async fn signin(&mut self, auth: &str, user_data: &str) -> Option<CloseRequest> {
        #[derive(serde::Deserialize)]
        struct UserData {
            id: String,
            #[serde(default)]
            watchlist: Vec<String>,
        }
        let verified = signing::verify_user(
            &self.app.key,
            &self.app.secrets,
            self.socket_id,
            user_data,
            auth,
        );
        let max_id = self.app.limits.max_presence_user_id_len;
        let parsed = serde_json::from_str::<UserData>(user_data)
            .ok()
            .and_then(|d| {
                let user = UserId::parse(&d.id, max_id).ok()?;
                Some((user, d.watchlist))
            });
        match (verified, parsed) {
            (Ok(()), Some((user, watchlist))) => {
                if self.user.as_ref().is_some_and(|u| u != &user) {
                    return Some(CloseRequest::Pusher(
                        ErrorCode::Unauthorized,
                        "socket is already signed in as another user".into(),
                    ));
                }
                let over_limit = watchlist.len() > MAX_WATCHLIST;
                let watchlist: Vec<UserId> = watchlist
                    .iter()
                    .take(MAX_WATCHLIST)
                    .filter_map(|w| UserId::parse(w, max_id).ok())
                    .collect();
                let first_signin = self.user.is_none();
                let alone = self.state.ledger.is_none();
                let confirm = |conn: &Self| {
                    conn.send(server::signin_success(user_data));
                    if over_limit {
                        let code = ErrorCode::WatchlistLimit;
                        conn.error(code, code.message());
                    }
                };
                if alone {
                    // Alone, the registry tells the socket who is online as it records it.
                    confirm(self);
                }
                self.state.connections.signed_in(
                    self.socket_id,
                    &self.app.id,
                    &user,
                    watchlist.clone(),
                    alone,
                );
                let mut snapshot = None;
                if let Some(ledger) = &self.state.ledger {
                    if first_signin {
                        let entry = Entry::SignedIn {
                            app: self.app.id.clone(),
                            user: user.clone(),
                        };
                        if let Err(e) = ledger.apply(vec![Op::new(entry, 1)]).await {
                            tracing::warn!(socket_id = %self.socket_id, error = %e, "signed in without the cluster ledger");
                        }
                    }
                    // Read before the client hears it is signed in: a user who signs in after
                    // that is reported once, by the live event, not also by this snapshot.
                    snapshot = self.online_frame(ledger, &watchlist).await;
                }
                if !alone {
                    confirm(self);
                }
                if let Some(frame) = snapshot {
                    self.send(frame);
                }
                self.user = Some(user);
                None
            }
            (Err(e), _) => Some(CloseRequest::Pusher(
                ErrorCode::Unauthorized,
                format!("sign-in refused: {e}"),
            )),
            (Ok(()), None) => Some(CloseRequest::Pusher(
                ErrorCode::Unauthorized,
                "sign-in refused: user_data must be a JSON object with a string id".into(),
            )),
        }
    }

    /// Clustered: the `online` frame for those of the watchlist signed in anywhere, read
    /// from the ledger; none when nobody is.
    async fn online_frame(
        &self,
        ledger: &crate::cluster::Ledger,
        watchlist: &[UserId],
    ) -> Option<String> {
        match ledger.online(&self.app.id, watchlist).await {
            Ok(flags) => {
                let online: Vec<&str> = watchlist
                    .iter()
                    .zip(flags)
                    .filter(|(_, on)| *on)
                    .map(|(u, _)| u.as_str())
                    .collect();
                (!online.is_empty()).then(|| server::watchlist_events("online", &online))
            }
            Err(e) => {
                tracing::warn!(socket_id = %self.socket_id, error = %e, "watchlist state unavailable");
                None
            }
        }
    }

    fn client_event(&mut self, event: &str, channel: &str, data: &RawValue) {
        let sub = ChannelName::parse(channel)
            .ok()
            .and_then(|n| self.subscriptions.get(&n));
        if let Err(e) = check_client_event(&self.app, channel, data.get().len(), sub.is_some()) {
            tracing::debug!(socket_id = %self.socket_id, channel, error = %e, "client event refused");
            self.error(e.code(), &e.to_string());
            return;
        }
        if !self
            .rate
            .allow(std::time::Instant::now(), self.app.limits.client_event_rate)
        {
            let e = dispatch::ClientEventError::RateLimited {
                per_second: self.app.limits.client_event_rate,
            };
            self.error(e.code(), &e.to_string());
            return;
        }
        // unwrap: check_client_event refused the event unless `sub` is Some.
        let sub = sub.unwrap();
        let user_id = sub.user.as_ref().map(|u| u.as_str());
        let frame = ByteString::from(server::client_event(event, channel, data, user_id));
        sub.addr.do_send(Publish {
            frame: frame.clone(),
            except: Some(self.socket_id),
            from: Some(self.socket_id),
            member_seq: None,
        });
        if let Some(name) = ChannelName::parse(channel)
            .ok()
            .filter(|_| !self.state.bus.alone())
        {
            let envelope = crate::cluster::Envelope::event(
                &self.state.node_id,
                self.app.id.clone(),
                name,
                Some(self.socket_id),
                frame,
            );
            let bus = self.state.bus.clone();
            actix_web::rt::spawn(async move {
                if let Err(e) = bus.publish(envelope).await {
                    tracing::warn!(error = %e, "client event not shared with other nodes");
                }
            });
        }
        if self.app.wants_webhook("client_event") {
            // Webhooks carry client event data as a string, as Pusher sends it.
            let raw = data.get();
            let data = serde_json::from_str::<String>(raw).unwrap_or_else(|_| raw.to_owned());
            self.state.webhooks.do_send(Observed {
                app: self.app.id.clone(),
                event: WebhookEvent::ClientEvent {
                    channel: channel.to_owned(),
                    event: event.to_owned(),
                    data,
                    socket_id: self.socket_id.to_string(),
                    user_id: user_id.map(str::to_owned),
                },
                settled: false,
            });
        }
    }

    /// Leaves every channel; clustered, also gives back the sign-in and the connection in
    /// one ledger batch.
    fn leave_all(&mut self) {
        let mut ops = Vec::new();
        let subscriptions = std::mem::take(&mut self.subscriptions);
        for (name, sub) in subscriptions {
            sub.addr.do_send(Unsubscribe {
                socket_id: self.socket_id,
            });
            self.leave_ops(&name, sub.user.as_ref(), &mut ops);
        }
        let Some(ledger) = &self.state.ledger else {
            return;
        };
        if let Some(user) = &self.user {
            let entry = Entry::SignedIn {
                app: self.app.id.clone(),
                user: user.clone(),
            };
            ops.push(Op::new(entry, -1));
        }
        if self.counted_in_cluster {
            ops.push(Op::new(
                Entry::Connections {
                    app: self.app.id.clone(),
                },
                -1,
            ));
        }
        ledger.submit(ops);
    }
}

/// The connection's life: handshake frame, then client frames until the client leaves or
/// the connection is closed from either side.
pub async fn run<S>(mut conn: Connection, mut stream: S)
where
    S: Stream<Item = Result<AggregatedMessage, FrameError>> + Unpin,
{
    let cfg = conn.state.clone();
    let cfg = &cfg.config;
    let activity = Duration::from_secs(cfg.activity_timeout_secs);
    let pong_wait = Duration::from_secs(cfg.pong_timeout_secs);
    conn.send(server::connection_established(
        conn.socket_id,
        cfg.activity_timeout_secs,
    ));
    tracing::debug!(app_id = %conn.app.id, socket_id = %conn.socket_id, "connection opened");

    let mut deadline = Instant::now() + activity;
    let mut awaiting_pong = false;
    // Apps that require sign-in close sockets that do not sign in within the timeout.
    let signin_deadline = conn.app.signin_timeout.map(|t| Instant::now() + t);
    let far = Instant::now() + Duration::from_secs(365 * 24 * 3600);
    let close = loop {
        tokio::select! {
            msg = stream.next() => {
                deadline = Instant::now() + activity;
                awaiting_pong = false;
                match msg {
                    Some(Ok(AggregatedMessage::Text(text))) => {
                        conn.metrics.messages_received.inc();
                        conn.metrics.bytes_received.inc_by(text.len() as u64);
                        if let Some(close) = conn.on_text(&text).await {
                            break Some(close);
                        }
                    }
                    Some(Ok(AggregatedMessage::Ping(bytes))) => {
                        let _ = conn.outbox.push_frame(Frame::Pong(bytes));
                    }
                    Some(Ok(AggregatedMessage::Pong(_))) => {}
                    Some(Ok(AggregatedMessage::Binary(_))) => {
                        conn.error(ErrorCode::GenericError, "binary frames are not supported; send JSON text");
                    }
                    Some(Ok(AggregatedMessage::Close(reason))) => {
                        // Answer the client's close so its library sees a clean close.
                        let code = reason.map_or(CloseCode::Normal, |r| r.code);
                        break Some(CloseRequest::WebSocket(code.into(), String::new()));
                    }
                    None => break None,
                    Some(Err(e)) => break conn.on_frame_error(e),
                }
            }
            // Closed from elsewhere (terminated, app disabled, too slow, shutdown): stop
            // acting for this client now, not when it goes quiet.
            _ = conn.outbox.closed() => break None,
            _ = sleep_until(signin_deadline.unwrap_or(far)), if signin_deadline.is_some() && conn.user.is_none() => {
                let code = ErrorCode::Unauthorized;
                break Some(CloseRequest::Pusher(code, "not signed in within the sign-in timeout".into()));
            }
            _ = sleep_until(deadline) => {
                if awaiting_pong {
                    let code = ErrorCode::PongNotReceived;
                    break Some(CloseRequest::Pusher(code, code.message().into()));
                }
                awaiting_pong = true;
                conn.send(server::ping());
                deadline = Instant::now() + pong_wait;
            }
        }
    };
    finish(conn, close);
}

/// Everything a connection undoes when it ends: its channels, its registry entry, its share
/// of the cluster's counts. Also for a connection whose handshake never reached the client.
pub fn finish(mut conn: Connection, close: Option<CloseRequest>) {
    conn.leave_all();
    conn.state.connections.remove(
        conn.socket_id,
        conn.user.as_ref(),
        conn.state.ledger.is_none(),
    );
    let app_label = [conn.app.id.as_str()];
    METRICS.connected.with_label_values(&app_label).dec();
    METRICS.disconnections.with_label_values(&app_label).inc();
    // The writer ends once the close is sent; without a reason (the client went away) it
    // still needs telling, so that nothing waits on this socket.
    conn.outbox
        .close(close.unwrap_or(CloseRequest::WebSocket(1000, String::new())));
    tracing::debug!(app_id = %conn.app.id, socket_id = %conn.socket_id, "connection closed");
}
