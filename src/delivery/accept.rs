//! Accepting notifications: the app's rules matched against triggered events (or a direct
//! API call) name the recipients, and each gets a notification with one delivery per channel
//! entry, each with its job, written in one transaction before the trigger is answered. The
//! idempotency key (the event, or the rule's own key, + recipient + type + channel) makes the
//! same event reach a person once per channel, whoever triggers it again.

use std::collections::BTreeSet;

use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};

use super::event_webhooks;
use super::records::{NewDelivery, NewNotification};
use super::rules::{self, ChannelKind, Deliver, Priority, Recipient, Rule};
use super::templates::render;
use super::{Direct, Engine, Triggered};
use crate::store::{now_ms, StoreError};
use bellhop_protocol::AppId;

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

/// A triggered event as the rules read it, with its id.
struct Event<'a> {
    channel: &'a str,
    name: &'a str,
    payload: Value,
    id: String,
}

impl<'a> Event<'a> {
    fn of(ev: &'a Triggered<'a>) -> Self {
        Self {
            channel: ev.channel.as_str(),
            name: ev.name,
            payload: rules::payload(ev.data),
            id: event_id(ev.channel.as_str(), ev.name, ev.data),
        }
    }
}

/// The rule's own idempotency key for this event, if it has one that renders.
fn rule_key(rule: &Rule, ctx: &Map<String, Value>) -> Option<String> {
    let c = &rule.config;
    let t = c.idempotency_key.as_ref()?;
    render("idempotency_key", t, ctx, false)
        .map_err(|e| tracing::warn!(rule = %c.name, error = %e, "idempotency key template failed; using the event id"))
        .ok()
}

/// When the rule's deliveries go: now, or at each future reminder time of its schedule (with
/// the minutes before the start each one is).
fn send_times(rule: &Rule, payload: &Value, now: i64) -> Vec<(i64, Option<i64>)> {
    let c = &rule.config;
    let Some(s) = &c.schedule else {
        return vec![(now, None)];
    };
    match s.times(payload) {
        Some(t) => t
            .into_iter()
            .filter(|(at, _)| *at > now)
            .map(|(at, m)| (at, Some(m)))
            .collect(),
        None => {
            tracing::warn!(rule = %c.name, field = %s.at, "schedule time missing or not a time; nothing scheduled");
            Vec::new()
        }
    }
}

impl Engine {
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
                    for u in self.presence.members(app.as_str(), &ch).await {
                        out.insert(Recipient::User(u));
                    }
                }
            }
        }
        out
    }

    /// Accepts the notifications the app's rules make of these events, and the business
    /// webhooks subscribed to them, in one transaction. `Ok` means they are in the store: the
    /// caller may now publish and answer.
    pub async fn accept_events(
        &self,
        app: &AppId,
        events: &[Triggered<'_>],
    ) -> Result<usize, StoreError> {
        let Some(setup) = self
            .setups
            .of(app.as_str())
            .filter(|s| s.reacts_to_events())
        else {
            return Ok(0);
        };
        let subs = &setup.event_webhooks;
        let now = now_ms();
        let mut notes = Vec::new();
        let mut hooks = Vec::new();
        for ev in events {
            let event = Event::of(ev);
            hooks.extend(event_webhooks::jobs_for(
                app.as_str(),
                subs,
                &event.id,
                ev.name,
                ev.channel.as_str(),
                &event.payload,
            ));
            for rule in &setup.rules {
                notes.extend(self.notes_of_rule(app, rule, &event, now).await?);
            }
        }
        if notes.is_empty() && hooks.is_empty() {
            return Ok(0);
        }
        let accepted = self.store.accept_notifications(&notes, &hooks).await?;
        tracing::debug!(app_id = %app, deliveries = accepted.len(), hooks = hooks.len(), "notifications accepted");
        Ok(accepted.len() + hooks.len())
    }

    /// The notifications one rule makes of one event: none when it does not match; its
    /// `cancels` and a reschedule to no time at all cancel what it scheduled before.
    async fn notes_of_rule(
        &self,
        app: &AppId,
        rule: &Rule,
        ev: &Event<'_>,
        now: i64,
    ) -> Result<Vec<NewNotification>, StoreError> {
        let Some(caps) = rule.matches(ev.channel, ev.name, &ev.payload) else {
            return Ok(Vec::new());
        };
        let ctx = rules::context(ev.name, ev.channel, &ev.payload, &caps);
        let c = &rule.config;
        let key = rule_key(rule, &ctx);
        let base = match &key {
            Some(k) => format!("{}:{k}", c.name),
            None => ev.id.clone(),
        };
        // `{rule}:{key}|` prefixes every scheduled delivery a rule makes for a key.
        let scheduled = |name: &str| key.as_ref().map(|k| format!("{name}:{k}|"));
        for other in &c.cancels {
            if let Some(prefix) = scheduled(other) {
                let reason = format!("cancelled by {} ({})", ev.name, c.name);
                self.store
                    .cancel_scheduled(app.as_str(), &prefix, &reason)
                    .await?;
            }
        }
        if c.recipients.is_empty() || c.deliver.is_empty() {
            return Ok(Vec::new());
        }
        let times = send_times(rule, &ev.payload, now);
        let own = scheduled(&c.name).filter(|_| c.schedule.is_some());
        if let (Some(prefix), true) = (&own, times.is_empty()) {
            // Moved so close (or without a time) that no reminder is due any more: the
            // earlier ones must not go out either.
            let reason = "superseded by a later event";
            self.store
                .cancel_scheduled(app.as_str(), prefix, reason)
                .await?;
            return Ok(Vec::new());
        }
        let schedule_key = own.map(|p| p.trim_end_matches('|').to_owned());
        let head = Head {
            kind: &c.kind,
            priority: c.priority,
            rule: Some(&c.name),
            source: format!("event:{}", ev.id),
        };
        let mut notes = Vec::new();
        for r in self.recipients(app, rule, &ctx, &ev.payload).await {
            let deliveries = deliveries_for(
                &c.deliver,
                &base,
                &r,
                &c.kind,
                &times,
                schedule_key.as_deref(),
            );
            let data = Value::Object(ctx.clone());
            notes.push(new_notification(app, &r, &head, data, deliveries));
        }
        Ok(notes)
    }

    /// Accepts a direct notification to users; returns the new delivery ids.
    pub async fn accept_direct(&self, app: &AppId, d: Direct) -> Result<Vec<i64>, StoreError> {
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
                new_notification(app, &r, &head, Value::Object(ctx.clone()), deliveries)
            })
            .collect();
        self.store.accept_notifications(&notes, &[]).await
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
