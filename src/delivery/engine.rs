//! The delivery engine: turns triggered events that match an app's rules (and direct API
//! calls) into notifications, accepted in one transaction before the trigger is answered; and,
//! as the job handler for `delivery`, decides at send time — preferences, quiet hours, whether
//! the recipient is connected right now — and sends through the channel's provider.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use bellhop_protocol::{server, AppId, ChannelName, UserId};
use bytestring::ByteString;
use futures_util::future::BoxFuture;
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};

use super::attachments;
use super::email::{Mail, MailResult};
use super::event_webhooks;
use super::fcm::{Push, SendResult};
use super::preferences::{allows, time_zone};
use super::records::{DeliveryRow, NewDelivery, NewInboxItem, NewNotification, JOB_KIND};
use super::rules::{self, ChannelKind, Condition, Deliver, Priority, Recipient, Rule};
use super::sms::{self, SmsResult};
use super::templates::{for_locale, render, render_content, TemplateError};
use super::throttle::Gate;
use super::whatsapp::{self, WhatsappResult};
use super::zoho;
use crate::apps::{App, AppDirectory};
use crate::channel::messages::Publish;
use crate::channel::{ChannelKey, ChannelRegistry};
use crate::cluster::{Body, Envelope, Ledger, SharedBus};
use crate::connection::Connections;
use crate::jobs::retry::Schedule;
use crate::jobs::{Attempt, Claimed, Handler, Verdict};
use crate::store::provider_state::NewSyncLog;
use crate::store::{now_ms, Store, StoreError};

/// The event pushed to a user's sockets when an in-app item arrives.
pub const INBOX_EVENT: &str = "bellhop:notification";
/// The event pushed when the unread count changes otherwise (read, deleted).
pub const UNREAD_EVENT: &str = "bellhop:inbox";

/// A published event, as the delivery rules see it.
pub struct Triggered<'a> {
    pub channel: &'a ChannelName,
    pub name: &'a str,
    pub data: &'a str,
}

/// A direct notification (`POST /apps/{id}/notifications`).
pub struct Direct {
    pub users: Vec<String>,
    pub kind: String,
    pub priority: Priority,
    pub data: Value,
    pub deliver: Vec<Deliver>,
    /// Scopes the deliveries' idempotency keys (the request's `Idempotency-Key`).
    pub key: String,
    pub send_at: Option<i64>,
}

pub struct Engine {
    pub store: Store,
    pub apps: Arc<AppDirectory>,
    pub registry: Arc<ChannelRegistry>,
    pub connections: Arc<Connections>,
    pub ledger: Option<Arc<Ledger>>,
    pub throttle: super::throttle::Throttle,
    pub bus: SharedBus,
    pub node: String,
}

/// An event's id: the same event (name, channel, data) always has the same one.
fn event_id(channel: &str, name: &str, data: &str) -> String {
    let mut h = Sha256::new();
    for part in [name, channel, data] {
        h.update(part.as_bytes());
        h.update([0]);
    }
    hex::encode(&h.finalize()[..12])
}

fn recipient_key(r: &Recipient) -> String {
    match r {
        Recipient::User(u) => format!("user:{u}"),
        Recipient::Email(e) => format!("email:{}", e.to_ascii_lowercase()),
        Recipient::Phone(p) => format!("phone:{p}"),
    }
}

/// The key that makes a delivery happen once: the event (or the rule's own key) + recipient +
/// type + channel.
fn idempotency_key(base: &str, r: &Recipient, kind: &str, channel: ChannelKind) -> String {
    format!("{base}|{}|{kind}|{}", recipient_key(r), channel.as_str())
}

/// What every notification from one rule (or API call) shares.
struct Head<'a> {
    kind: &'a str,
    priority: Priority,
    rule: Option<&'a str>,
    source: String,
}

fn new_notification(
    app: &AppId,
    r: &Recipient,
    head: &Head<'_>,
    data: Value,
    deliveries: Vec<NewDelivery>,
) -> NewNotification {
    let Head {
        kind,
        priority,
        rule,
        ref source,
    } = *head;
    let (user_id, address) = match r {
        Recipient::User(u) => (Some(u.clone()), None),
        Recipient::Email(a) | Recipient::Phone(a) => (None, Some(a.clone())),
    };
    NewNotification {
        app_id: app.as_str().to_owned(),
        user_id,
        address,
        kind: kind.to_owned(),
        priority: match priority {
            Priority::Normal => "normal".into(),
            Priority::Critical => "critical".into(),
        },
        rule: rule.map(str::to_owned),
        source: source.clone(),
        data,
        deliveries,
    }
}

/// The deliveries of one notification: each channel entry now (or after its offline grace
/// period), or at each scheduled time.
fn deliveries_for(
    specs: &[Deliver],
    base: &str,
    r: &Recipient,
    kind: &str,
    times: &[(i64, Option<i64>)],
    schedule_key: Option<&str>,
) -> Vec<NewDelivery> {
    let mut out = Vec::new();
    for (at, minutes_before) in times {
        for d in specs {
            let mut key = idempotency_key(base, r, kind, d.channel);
            let mut vars = Map::new();
            if let Some(m) = minutes_before {
                key.push_str(&format!("|at:{at}"));
                vars.insert("minutes_before".into(), json!(m));
            }
            out.push(NewDelivery {
                channel: d.channel.as_str().to_owned(),
                idempotency_key: key,
                // An offline-only push waits out its grace period before it looks.
                run_at: at.saturating_add((d.offline_for_secs.min(86_400) as i64) * 1000),
                spec: json!({ "deliver": d, "vars": vars }),
                schedule_key: schedule_key.map(|k| format!("{k}|{}", recipient_key(r))),
            });
        }
    }
    out
}

impl Engine {
    /// Members of a presence channel, cluster-wide when clustered.
    async fn presence_members(&self, app: &AppId, channel: &str) -> Vec<String> {
        let Ok(name) = ChannelName::parse(channel) else {
            return Vec::new();
        };
        match &self.ledger {
            Some(l) => l.members(app, &name).await.unwrap_or_default(),
            None => self
                .registry
                .members(&ChannelKey {
                    app: app.clone(),
                    name,
                })
                .await
                .into_iter()
                .map(|u| u.as_str().to_owned())
                .collect(),
        }
    }

    async fn recipients(
        &self,
        app: &AppId,
        rule: &Rule,
        ctx: &Map<String, Value>,
        payload: &Value,
    ) -> BTreeSet<Recipient> {
        let mut out = BTreeSet::new();
        for spec in &rule.config.recipients {
            if let Some(t) = &spec.user {
                match render("recipient", t, ctx, false) {
                    Ok(u) if !u.is_empty() => {
                        out.insert(Recipient::User(u));
                    }
                    Ok(_) => {}
                    Err(e) => {
                        tracing::warn!(rule = %rule.config.name, error = %e, "recipient template failed")
                    }
                }
            }
            if let Some(f) = &spec.users_field {
                for u in rules::field(payload, f)
                    .map(rules::ids_in)
                    .unwrap_or_default()
                {
                    out.insert(Recipient::User(u));
                }
            }
            if let Some(f) = &spec.email_field {
                if let Some(e) = rules::field(payload, f).and_then(Value::as_str) {
                    out.insert(Recipient::Email(e.to_owned()));
                }
            }
            if let Some(f) = &spec.phone_field {
                if let Some(p) = rules::field(payload, f).and_then(Value::as_str) {
                    out.insert(Recipient::Phone(p.to_owned()));
                }
            }
            for e in &spec.emails {
                out.insert(Recipient::Email(e.clone()));
            }
            if let Some(t) = &spec.presence {
                if let Ok(ch) = render("presence", t, ctx, false) {
                    for u in self.presence_members(app, &ch).await {
                        out.insert(Recipient::User(u));
                    }
                }
            }
        }
        out
    }

    /// Accepts the notifications the app's rules make of these events. `Ok` means they are in
    /// the store: the caller may now publish and answer.
    pub async fn accept_events(
        &self,
        app: &App,
        events: &[Triggered<'_>],
    ) -> Result<usize, StoreError> {
        let subs = &app.config.event_webhooks;
        if app.rules.is_empty() && subs.is_empty() {
            return Ok(0);
        }
        let now = now_ms();
        let mut notes = Vec::new();
        let mut hooks = Vec::new();
        for ev in events {
            let payload = rules::payload(ev.data);
            let id = event_id(ev.channel.as_str(), ev.name, ev.data);
            hooks.extend(event_webhooks::jobs_for(
                app.id.as_str(),
                subs,
                &id,
                ev.name,
                ev.channel.as_str(),
                &payload,
            ));
            for rule in app.rules.iter() {
                let Some(caps) = rule.matches(ev.channel.as_str(), ev.name, &payload) else {
                    continue;
                };
                let ctx = rules::context(ev.name, ev.channel.as_str(), &payload, &caps);
                let c = &rule.config;
                let key = c.idempotency_key.as_ref().and_then(|t| {
                    render("idempotency_key", t, &ctx, false)
                        .map_err(|e| tracing::warn!(rule = %c.name, error = %e, "idempotency key template failed; using the event id"))
                        .ok()
                });
                let base = match &key {
                    Some(k) => format!("{}:{k}", c.name),
                    None => id.clone(),
                };
                // `{rule}:{key}|` prefixes every scheduled delivery a rule makes for a key.
                let scheduled = |name: &str| key.as_ref().map(|k| format!("{name}:{k}|"));
                for other in &c.cancels {
                    if let Some(prefix) = scheduled(other) {
                        let reason = format!("cancelled by {} ({})", ev.name, c.name);
                        self.store
                            .cancel_scheduled(app.id.as_str(), &prefix, &reason)
                            .await?;
                    }
                }
                if c.recipients.is_empty() || c.deliver.is_empty() {
                    continue;
                }
                let times: Vec<(i64, Option<i64>)> = match &c.schedule {
                    None => vec![(now, None)],
                    Some(s) => match s.times(&payload) {
                        Some(t) => t
                            .into_iter()
                            .filter(|(at, _)| *at > now)
                            .map(|(at, m)| (at, Some(m)))
                            .collect(),
                        None => {
                            tracing::warn!(rule = %c.name, field = %s.at, "schedule time missing or not a time; nothing scheduled");
                            Vec::new()
                        }
                    },
                };
                let schedule_key = c
                    .schedule
                    .as_ref()
                    .and(scheduled(&c.name))
                    .map(|p| p.trim_end_matches('|').to_owned());
                if let (Some(prefix), true) = (scheduled(&c.name), times.is_empty()) {
                    if c.schedule.is_some() {
                        // Moved so close (or without a time) that no reminder is due any more:
                        // the earlier ones must not go out either.
                        self.store
                            .cancel_scheduled(
                                app.id.as_str(),
                                &prefix,
                                "superseded by a later event",
                            )
                            .await?;
                        continue;
                    }
                }
                let head = Head {
                    kind: &c.kind,
                    priority: c.priority,
                    rule: Some(&c.name),
                    source: format!("event:{id}"),
                };
                for r in self.recipients(&app.id, rule, &ctx, &payload).await {
                    let deliveries = deliveries_for(
                        &c.deliver,
                        &base,
                        &r,
                        &c.kind,
                        &times,
                        schedule_key.as_deref(),
                    );
                    let data = Value::Object(ctx.clone());
                    notes.push(new_notification(&app.id, &r, &head, data, deliveries));
                }
            }
        }
        event_webhooks::enqueue(&self.store, &hooks).await?;
        if notes.is_empty() {
            return Ok(hooks.len());
        }
        let accepted = self.store.accept_notifications(&notes).await?;
        tracing::debug!(app_id = %app.id, deliveries = accepted.len(), "notifications accepted");
        Ok(accepted.len())
    }

    /// Accepts a direct notification to users; returns the new delivery ids.
    pub async fn accept_direct(&self, app: &App, d: Direct) -> Result<Vec<i64>, StoreError> {
        let run_at = d.send_at.unwrap_or_else(now_ms);
        let base = format!("api:{}", d.key);
        let mut ctx = match &d.data {
            Value::Object(m) => m.clone(),
            _ => Map::new(),
        };
        ctx.insert("data".into(), d.data.clone());
        let head = Head {
            kind: &d.kind,
            priority: d.priority,
            rule: None,
            source: "api".into(),
        };
        let notes: Vec<_> = d
            .users
            .iter()
            .map(|u| {
                let r = Recipient::User(u.clone());
                let deliveries =
                    deliveries_for(&d.deliver, &base, &r, &d.kind, &[(run_at, None)], None);
                new_notification(&app.id, &r, &head, Value::Object(ctx.clone()), deliveries)
            })
            .collect();
        self.store.accept_notifications(&notes).await
    }

    /// Whether the user has a live socket: signed in as them anywhere; or, for the channel the
    /// event went to, a member of it (presence) or a subscriber of a channel that is theirs
    /// (`personal`: the channel's name carries their id, like `{hotel}-staff-{id}-porter`).
    /// Anyone else on a shared channel says nothing about this user.
    async fn connected(
        &self,
        app: &AppId,
        user: &str,
        channel: Option<&str>,
        personal: bool,
    ) -> bool {
        let Ok(uid) = UserId::parse(user, 4096) else {
            return false;
        };
        let channel = channel.and_then(|c| ChannelName::parse(c).ok());
        let key = |name: ChannelName| ChannelKey {
            app: app.clone(),
            name,
        };
        match &self.ledger {
            Some(l) => {
                let online = l
                    .online(app, std::slice::from_ref(&uid))
                    .await
                    .map(|v| v.first().copied().unwrap_or(false))
                    .unwrap_or(false);
                online
                    || match channel {
                        Some(c) if c.is_presence() => l
                            .members(app, &c)
                            .await
                            .is_ok_and(|m| m.iter().any(|id| id == user)),
                        Some(c) if personal => l.channel(app, &c).await.is_ok_and(|(n, _)| n > 0),
                        _ => false,
                    }
            }
            None => {
                self.connections.user_online(app, &uid)
                    || match channel {
                        Some(c) if c.is_presence() => {
                            self.registry.members(&key(c)).await.contains(&uid)
                        }
                        Some(c) if personal => self.registry.stats(&key(c)).is_some(),
                        _ => false,
                    }
            }
        }
    }

    /// Pushes an in-app item and the unread count to the user's sockets on every node.
    async fn push_inbox(
        &self,
        app: &AppId,
        user: &str,
        item: &super::records::InboxItem,
        unread: i64,
    ) {
        let data = json!({ "item": item, "unread_count": unread });
        self.push_to_user(app, user, INBOX_EVENT, &data).await;
    }

    /// Tells the user's sockets the unread count changed (read, deleted).
    pub async fn push_unread(&self, app: &AppId, user: &str, unread: i64) {
        let data = json!({ "unread_count": unread });
        self.push_to_user(app, user, UNREAD_EVENT, &data).await;
    }

    /// An event on `#server-to-user-{user}`, which signed-in pusher-js clients receive.
    async fn push_to_user(&self, app: &AppId, user: &str, event: &str, data: &Value) {
        let Ok(channel) = ChannelName::parse(&format!("#server-to-user-{user}")) else {
            return;
        };
        let frame = server::channel_event(event, channel.as_str(), &data.to_string());
        let frame = ByteString::from(frame);
        if !self.bus.alone() {
            let env = Envelope {
                origin: self.node.clone(),
                app: app.clone(),
                body: Body::Event {
                    channel: channel.clone(),
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
        self.registry.publish(
            &ChannelKey {
                app: app.clone(),
                name: channel,
            },
            Publish {
                frame,
                except: None,
                from: None,
                member_seq: None,
            },
        );
    }

    /// Waits in place for the provider's next second when its rate budget is spent (a
    /// second at most); answers a hold when the provider is paused or the wait is longer.
    async fn throttle(
        &self,
        provider: &'static str,
        app: &AppId,
        per_second: Option<u32>,
    ) -> Option<Step> {
        let give_up = tokio::time::Instant::now() + Duration::from_secs(2);
        loop {
            let (why, wait) = match self.throttle.admit(app, provider, per_second).await {
                Ok(Gate::Open) => return None,
                Ok(Gate::Full(wait)) => ("rate", wait),
                Ok(Gate::Paused(wait)) => ("paused", wait),
                Err(e) => {
                    return Some(Step::Retry {
                        after: Some(Duration::from_secs(1)),
                        reason: format!("{provider} rate gate unavailable: {e}"),
                    })
                }
            };
            if why == "rate" && tokio::time::Instant::now() + wait < give_up {
                tokio::time::sleep(wait).await;
                continue;
            }
            crate::metrics::METRICS
                .provider_throttled
                .with_label_values(&[provider, why])
                .inc();
            return Some(Step::Held {
                reason: match why {
                    "paused" => format!(
                        "{provider} asked to pause; resuming in {} ms",
                        wait.as_millis()
                    ),
                    _ => format!("{provider} rate limit reached"),
                },
                wait,
            });
        }
    }

    /// A provider that answered with a Retry-After is paused for every node until then.
    async fn pause_on_retry_after(
        &self,
        provider: &'static str,
        app: &AppId,
        after: Option<Duration>,
    ) {
        let Some(after) = after else { return };
        if let Err(e) = self.throttle.pause(app, provider, after).await {
            tracing::warn!(provider, error = %e, "cannot share the provider's pause");
        }
        tracing::info!(app_id = %app, provider, pause_ms = after.as_millis() as u64, "provider paused by its Retry-After");
    }

    async fn run_delivery(&self, job: &Claimed) -> Result<Step, StoreError> {
        let id = serde_json::from_str::<Value>(&job.payload)
            .ok()
            .and_then(|v| v["delivery_id"].as_i64());
        let Some(id) = id else {
            return Ok(Step::Failed("job payload names no delivery".into()));
        };
        let Some(row) = self.store.delivery(id).await? else {
            return Ok(Step::Failed(format!("delivery {id} not found")));
        };
        // Ambiguous is final too: a job run again after a crash (its state written, its
        // attempt not yet logged) must not send what may already have been sent.
        if matches!(
            row.state.as_str(),
            "sent" | "skipped" | "failed" | "cancelled" | "ambiguous"
        ) {
            return Ok(Step::Already);
        }
        let step = self.decide(&row).await?;
        let (state, reason) = match &step {
            Step::Sent(r) => ("sent", Some(r.as_str())),
            Step::Skipped(r) => ("skipped", Some(r.as_str())),
            Step::Failed(r) => ("failed", Some(r.as_str())),
            Step::Held { reason, .. } => ("held", Some(reason.as_str())),
            Step::Ambiguous(r) => ("ambiguous", Some(r.as_str())),
            Step::Retry { reason, .. } => ("pending", Some(reason.as_str())),
            Step::Already => return Ok(step),
        };
        self.store
            .set_delivery_state(row.id, state, reason, None)
            .await?;
        Ok(step)
    }

    async fn decide(&self, row: &DeliveryRow) -> Result<Step, StoreError> {
        let spec: Deliver = match serde_json::from_value(row.spec["deliver"].clone()) {
            Ok(s) => s,
            Err(e) => return Ok(Step::Failed(format!("delivery spec unreadable: {e}"))),
        };
        // An SMS or WhatsApp message keeps the provider's id the moment it is accepted: a job
        // run again after a crash marks it sent instead of sending it again.
        if let (ChannelKind::Sms | ChannelKind::Whatsapp, Some(id)) =
            (&spec.channel, &row.provider_id)
        {
            return Ok(Step::Sent(format!(
                "already accepted by the provider ({id})"
            )));
        }
        let Some(app) = self.apps.by_id(&row.app_id) else {
            return Ok(Step::Failed("the app no longer exists".into()));
        };
        let profile = match &row.user_id {
            Some(u) => self.store.profile(&row.app_id, u).await?,
            None => None,
        };
        let critical = row.priority == "critical";
        let channel = spec.channel.as_str();
        if let Some(p) = profile.as_ref().filter(|_| !critical) {
            if !allows(&p.preferences, &row.kind, channel) {
                return Ok(Step::Skipped(format!(
                    "the recipient turned {} off on {channel}",
                    row.kind
                )));
            }
            if spec.channel != ChannelKind::InApp {
                if let (Some(q), Ok(tz)) = (&p.quiet_hours, time_zone(p.time_zone.as_deref())) {
                    if let Some(end) = q.ends_after(chrono::Utc::now(), tz) {
                        let wait = (end.timestamp_millis() - now_ms()).max(1000) as u64;
                        return Ok(Step::Held {
                            reason: format!("quiet hours until {}", end.to_rfc3339()),
                            wait: Duration::from_millis(wait),
                        });
                    }
                }
            }
        }
        let app_id = app.id.clone();
        match spec.when {
            Condition::Always => {}
            Condition::Offline => {
                let user = row.user_id.as_deref().unwrap_or("");
                let event_channel = row.data["channel"].as_str();
                let personal = row.data["captures"]
                    .as_object()
                    .is_some_and(|c| c.values().any(|v| v.as_str() == Some(user)));
                if self.connected(&app_id, user, event_channel, personal).await {
                    return Ok(Step::Skipped("the recipient is connected".into()));
                }
            }
            Condition::NoDevice => {
                if let Some(u) = &row.user_id {
                    if self
                        .store
                        .devices(&row.app_id, u)
                        .await?
                        .iter()
                        .any(|d| d.active)
                    {
                        return Ok(Step::Skipped("the recipient has a device for push".into()));
                    }
                }
            }
        }
        let mut ctx = match &row.data {
            Value::Object(m) => m.clone(),
            _ => Map::new(),
        };
        ctx.insert(
            "recipient".into(),
            serde_json::to_value(&profile).unwrap_or(Value::Null),
        );
        if let Value::Object(vars) = &row.spec["vars"] {
            ctx.extend(vars.clone());
        }
        let default = spec.content();
        let content = for_locale(
            &default,
            &spec.locales,
            profile.as_ref().and_then(|p| p.locale.as_deref()),
        );
        let rendered = match render_content(content, &ctx) {
            Ok(r) => r,
            Err(TemplateError { what, message }) => {
                return Ok(Step::Failed(format!("template {what}: {message}")))
            }
        };
        match spec.channel {
            ChannelKind::InApp => {
                let Some(user) = &row.user_id else {
                    return Ok(Step::Skipped("in-app needs a user id".into()));
                };
                let item = self
                    .store
                    .add_inbox_item(
                        &row.app_id,
                        user,
                        NewInboxItem {
                            notification: row.notification_id,
                            delivery: row.id,
                            kind: &row.kind,
                            title: &rendered.title,
                            body: &rendered.body,
                            data: &Value::Object(rendered.data),
                        },
                    )
                    .await?;
                if let Some(item) = item {
                    let unread = self.store.unread_count(&row.app_id, user).await?;
                    self.push_inbox(&app_id, user, &item, unread).await;
                }
                Ok(Step::Sent("in the inbox".into()))
            }
            ChannelKind::Fcm => {
                let Some(fcm) = app.fcm.clone() else {
                    return Ok(Step::Failed("the app has no FCM configured".into()));
                };
                let Some(user) = &row.user_id else {
                    return Ok(Step::Skipped("push needs a user id".into()));
                };
                let devices: Vec<_> = self
                    .store
                    .devices(&row.app_id, user)
                    .await?
                    .into_iter()
                    .filter(|d| d.active)
                    .collect();
                if devices.is_empty() {
                    return Ok(Step::Skipped("no device".into()));
                }
                let done: Vec<String> = row
                    .provider_id
                    .as_deref()
                    .and_then(|p| serde_json::from_str(p).ok())
                    .unwrap_or_default();
                let push = Push {
                    title: rendered.title,
                    body: rendered.body,
                    data: rendered.data,
                    click_action: spec.click_action.clone(),
                    collapse_key: spec.collapse_key.clone(),
                };
                let mut sent = done.clone();
                let (mut retry, mut rejected, mut gone) = (None, None, 0);
                for d in devices.iter().filter(|d| !done.contains(&d.token)) {
                    match fcm.send(&d.token, &push).await {
                        SendResult::Sent(_) => {
                            sent.push(d.token.clone());
                            // Kept at once, so neither a crash nor an expired lease sends
                            // it to this device again.
                            let acked = serde_json::to_string(&sent).unwrap_or_default();
                            self.store
                                .set_delivery_state(row.id, "pending", None, Some(&acked))
                                .await?;
                        }
                        SendResult::TokenGone(reason) => {
                            gone += 1;
                            self.store
                                .deactivate_device(&row.app_id, &d.token, &reason)
                                .await?;
                        }
                        SendResult::Retry { after, reason } => {
                            retry = Some((after, reason));
                        }
                        SendResult::Rejected(reason) => rejected = Some(reason),
                    }
                }
                Ok(match (retry, rejected) {
                    (Some((after, reason)), _) => Step::Retry { after, reason },
                    (None, Some(reason)) if sent.is_empty() => Step::Failed(reason),
                    _ if !sent.is_empty() => {
                        Step::Sent(format!("pushed to {} device(s)", sent.len()))
                    }
                    _ => Step::Skipped(format!("every device token is gone ({gone})")),
                })
            }
            ChannelKind::Sms => {
                let Some(sms) = app.sms.clone() else {
                    return Ok(Step::Failed("the app has no SMS configured".into()));
                };
                let number = profile
                    .as_ref()
                    .and_then(|p| p.phone.clone())
                    .or_else(|| row.address.clone());
                let Some(number) = number else {
                    return Ok(Step::Skipped("no phone number".into()));
                };
                let to = match sms::normalize(&number, sms.default_region()) {
                    Ok(n) => n,
                    Err(reason) => return Ok(Step::Skipped(reason)),
                };
                if let Some(wait) = self.throttle("sms", &app_id, sms.max_per_second()).await {
                    return Ok(wait);
                }
                Ok(match sms.send(&to, &rendered.body).await {
                    SmsResult::Sent(id) => {
                        self.store
                            .set_delivery_state(row.id, "pending", None, Some(&id))
                            .await?;
                        Step::Sent(format!("to {to}"))
                    }
                    SmsResult::BadRecipient(r) => Step::Skipped(r),
                    SmsResult::Retry { after, reason } => {
                        self.pause_on_retry_after("sms", &app_id, after).await;
                        Step::Retry { after, reason }
                    }
                    SmsResult::Rejected(r) => Step::Failed(r),
                    SmsResult::Ambiguous(reason) if spec.resend_ambiguous => Step::Retry {
                        after: None,
                        reason: format!("ambiguous, sending again: {reason}"),
                    },
                    SmsResult::Ambiguous(r) => Step::Ambiguous(r),
                })
            }
            ChannelKind::Whatsapp => {
                let Some(wa) = app.whatsapp.clone() else {
                    return Ok(Step::Failed("the app has no WhatsApp configured".into()));
                };
                let number = profile
                    .as_ref()
                    .and_then(|p| p.whatsapp.clone().or_else(|| p.phone.clone()))
                    .or_else(|| row.address.clone());
                let Some(number) = number else {
                    return Ok(Step::Skipped("no WhatsApp number".into()));
                };
                let to = match sms::normalize(&number, wa.default_region()) {
                    Ok(n) => n,
                    Err(reason) => return Ok(Step::Skipped(reason)),
                };
                let message = match &spec.whatsapp_template {
                    Some(t) => {
                        let mut params = Vec::with_capacity(t.params.len());
                        for p in &t.params {
                            match render("whatsapp_template.params", p, &ctx, false) {
                                Ok(v) => params.push(v),
                                Err(e) => return Ok(Step::Failed(e.to_string())),
                            }
                        }
                        whatsapp::Message::Template {
                            name: &t.name,
                            language: &t.language,
                            params,
                        }
                    }
                    None => whatsapp::Message::Text(&rendered.body),
                };
                if let Some(wait) = self
                    .throttle("whatsapp", &app_id, wa.max_per_second())
                    .await
                {
                    return Ok(wait);
                }
                Ok(match wa.send(&to, message).await {
                    WhatsappResult::Sent(id) => {
                        self.store
                            .set_delivery_state(row.id, "pending", None, Some(&id))
                            .await?;
                        Step::Sent(format!("to {to}"))
                    }
                    WhatsappResult::WindowClosed(r) => Step::Failed(format!(
                        "the 24-hour window is closed; a template is needed ({r})"
                    )),
                    WhatsappResult::BadRecipient(r) => Step::Skipped(r),
                    WhatsappResult::Retry { after, reason } => {
                        self.pause_on_retry_after("whatsapp", &app_id, after).await;
                        Step::Retry { after, reason }
                    }
                    WhatsappResult::Rejected(r) => Step::Failed(r),
                    WhatsappResult::Ambiguous(reason) if spec.resend_ambiguous => Step::Retry {
                        after: None,
                        reason: format!("ambiguous, sending again: {reason}"),
                    },
                    WhatsappResult::Ambiguous(r) => Step::Ambiguous(r),
                })
            }
            ChannelKind::Zoho => {
                let Some(zoho) = app.zoho.clone() else {
                    return Ok(Step::Failed("the app has no Zoho configured".into()));
                };
                let Some(z) = &spec.zoho else {
                    return Ok(Step::Failed(
                        "a zoho entry needs zoho = { contact = …, invoice = … }".into(),
                    ));
                };
                if let Some(wait) = self.throttle("zoho", &app_id, zoho.max_per_second()).await {
                    return Ok(wait);
                }
                let fields = |m: &std::collections::BTreeMap<String, String>| {
                    let mut out = Map::new();
                    for (k, t) in m {
                        out.insert(k.clone(), Value::String(render("zoho", t, &ctx, false)?));
                    }
                    Ok::<_, TemplateError>(out)
                };
                let booking = match &z.contact {
                    Some(contact) => {
                        let contact = fields(contact);
                        let deal = z.deal.as_ref().map(fields).transpose();
                        match (contact, deal) {
                            (Ok(contact), Ok(deal)) => Some(zoho::Booking { contact, deal }),
                            (Err(e), _) | (_, Err(e)) => return Ok(Step::Failed(e.to_string())),
                        }
                    }
                    None => None,
                };
                let invoice = match &z.invoice {
                    Some(i) => match i.render(|t| render("zoho.invoice", t, &ctx, false)) {
                        Ok(i) => Some(i),
                        Err(e) => return Ok(Step::Failed(e)),
                    },
                    None => None,
                };
                let reference = invoice.as_ref().map(|i| i.reference.clone()).or_else(|| {
                    booking.as_ref().and_then(|b| {
                        b.deal.as_ref()?[zoho.deal_reference_field()]
                            .as_str()
                            .map(str::to_owned)
                    })
                });
                let result = zoho.sync(&self.store, booking, invoice).await;
                let logs: Vec<_> = result
                    .records()
                    .iter()
                    .map(|r| NewSyncLog {
                        delivery_id: row.id,
                        reference: reference.as_deref(),
                        operation: r.operation,
                        entity: r.entity,
                        remote_id: r.remote_id.as_deref(),
                        status: r.status,
                        error: r.error.as_deref(),
                    })
                    .collect();
                self.store.add_sync_logs(&row.app_id, &logs).await?;
                let log = |records: &[zoho::SyncRecord]| {
                    records
                        .iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join("; ")
                };
                Ok(match result {
                    zoho::ZohoResult::Done(records) => Step::Sent(log(&records)),
                    zoho::ZohoResult::Retry {
                        after,
                        reason,
                        records,
                    } => {
                        self.pause_on_retry_after("zoho", &app_id, after).await;
                        Step::Retry {
                            after,
                            reason: format!("{reason}; {}", log(&records)),
                        }
                    }
                    zoho::ZohoResult::Rejected { reason, records } => {
                        Step::Failed(format!("{reason}; {}", log(&records)))
                    }
                })
            }
            ChannelKind::Email => {
                let Some(mailer) = app.mailer.clone() else {
                    return Ok(Step::Failed("the app has no email configured".into()));
                };
                let to = row
                    .address
                    .clone()
                    .or_else(|| profile.as_ref().and_then(|p| p.email.clone()));
                let Some(to) = to else {
                    return Ok(Step::Skipped("no email address".into()));
                };
                let mut attachments = Vec::new();
                if let Some(spec) = &spec.attach_ics {
                    let uid = format!("notification-{}@bellhop", row.notification_id);
                    match attachments::ics(spec, &ctx, &uid) {
                        Ok(f) => attachments.push(f),
                        Err(e) => return Ok(Step::Failed(e.to_string())),
                    }
                }
                if let Some(t) = &spec.attach_qr {
                    let qr = render("attach_qr", t, &ctx, false)
                        .map_err(attachments::AttachmentError::from)
                        .and_then(|content| attachments::qr_png(&content));
                    match qr {
                        Ok(f) => attachments.push(f),
                        Err(e) => return Ok(Step::Failed(e.to_string())),
                    }
                }
                let mail = Mail {
                    to,
                    subject: rendered.subject,
                    text: rendered.body,
                    html: rendered.html,
                    attachments,
                    message_id: format!("<delivery-{}-{}@bellhop>", row.id, row.created_at),
                };
                Ok(match mailer.send(mail).await {
                    MailResult::Sent(r) => Step::Sent(r),
                    MailResult::Retry(reason) => Step::Retry {
                        after: None,
                        reason,
                    },
                    MailResult::Rejected(r) => Step::Failed(r),
                    MailResult::BadAddress(r) => Step::Skipped(r),
                })
            }
        }
    }
}

/// What became of one attempt.
enum Step {
    Sent(String),
    /// The provider may or may not have sent it; not sent again.
    Ambiguous(String),
    Skipped(String),
    Failed(String),
    Held {
        reason: String,
        wait: Duration,
    },
    Retry {
        after: Option<Duration>,
        reason: String,
    },
    /// Decided by an earlier attempt.
    Already,
}

const SCHEDULE: Schedule = Schedule {
    base: Duration::from_secs(2),
    max: Duration::from_secs(300),
};

impl Handler for Engine {
    fn kind(&self) -> &'static str {
        JOB_KIND
    }

    fn schedule(&self) -> Schedule {
        SCHEDULE
    }

    fn run<'a>(&'a self, job: &'a Claimed) -> BoxFuture<'a, Attempt> {
        Box::pin(async move {
            let (verdict, detail) = match self.run_delivery(job).await {
                Ok(Step::Sent(r)) => (Verdict::Done, format!("sent: {r}")),
                Ok(Step::Skipped(r)) => (Verdict::Done, format!("skipped: {r}")),
                Ok(Step::Ambiguous(r)) => (Verdict::Done, format!("ambiguous: {r}")),
                Ok(Step::Already) => (Verdict::Done, "already decided".into()),
                Ok(Step::Failed(r)) => (Verdict::Permanent, r),
                Ok(Step::Held { reason, wait }) => (
                    Verdict::Retry {
                        retry_after: Some(wait),
                    },
                    reason,
                ),
                Ok(Step::Retry { after, reason }) => {
                    (Verdict::Retry { retry_after: after }, reason)
                }
                Err(e) => (Verdict::Retry { retry_after: None }, format!("store: {e}")),
            };
            Attempt {
                verdict,
                http_status: None,
                detail,
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_event_has_the_same_id_and_keys_differ_by_channel_and_person() {
        let a = event_id("hotel-1", "order", "{\"id\":1}");
        assert_eq!(a, event_id("hotel-1", "order", "{\"id\":1}"));
        assert_ne!(a, event_id("hotel-1", "order", "{\"id\":2}"));
        assert_ne!(a, event_id("hotel-2", "order", "{\"id\":1}"));
        let ann = Recipient::User("ann".into());
        let k1 = idempotency_key(&a, &ann, "t", ChannelKind::Fcm);
        assert_ne!(k1, idempotency_key(&a, &ann, "t", ChannelKind::Email));
        assert_ne!(
            k1,
            idempotency_key(&a, &Recipient::User("bob".into()), "t", ChannelKind::Fcm)
        );
        assert_eq!(
            idempotency_key(
                "k",
                &Recipient::Email("A@x.io".into()),
                "t",
                ChannelKind::Email
            ),
            "k|email:a@x.io|t|email"
        );
    }
}
