//! Delivery rules, as an app configures them: which triggered events become notifications,
//! for whom, on which channels and in what order. Everything here is pure: matching a channel
//! pattern with named captures, an event name pattern and payload conditions, and naming the
//! recipients from captures, payload fields and static lists. The engine does the IO.

use std::collections::BTreeMap;

use regex::Regex;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// Where a notification may go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ChannelKind {
    /// bellhop's own inbox, pushed live to the user's sockets.
    InApp,
    /// Firebase Cloud Messaging (HTTP v1) to the user's devices.
    Fcm,
    /// SMTP.
    Email,
    /// Twilio or Africa's Talking.
    Sms,
    /// Meta Cloud API or Twilio.
    Whatsapp,
    /// Zoho CRM: the contact and the deal of a booking.
    Zoho,
    /// Web Push (RFC 8030, encrypted per RFC 8291, VAPID per RFC 8292) to the user's
    /// browsers.
    WebPush,
}

impl ChannelKind {
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::InApp => "in_app",
            Self::Fcm => "fcm",
            Self::Email => "email",
            Self::Sms => "sms",
            Self::Whatsapp => "whatsapp",
            Self::Zoho => "zoho",
            Self::WebPush => "web_push",
        }
    }

    /// Its name in messages to people ("the app has no SMS configured").
    pub fn label(&self) -> &'static str {
        match self {
            Self::InApp => "inbox",
            Self::Fcm => "FCM",
            Self::Email => "email",
            Self::Sms => "SMS",
            Self::Whatsapp => "WhatsApp",
            Self::Zoho => "Zoho",
            Self::WebPush => "Web Push",
        }
    }
}

/// When a channel of a rule is used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Condition {
    #[default]
    Always,
    /// Only if the recipient has no live socket (signed in as them, or subscribed to the
    /// channel the event went to) once `offline_for_secs` have passed.
    Offline,
    /// Only if push is impossible: the recipient has no active device.
    NoDevice,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Priority {
    #[default]
    Normal,
    /// Bypasses quiet hours and preferences.
    Critical,
}

/// One message template set; every string is a minijinja template.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Content {
    #[serde(default)]
    pub title: Option<String>,
    #[serde(default)]
    pub body: Option<String>,
    /// Email subject (defaults to the title).
    #[serde(default)]
    pub subject: Option<String>,
    /// Email HTML body (auto-escaped).
    #[serde(default)]
    pub html: Option<String>,
    /// FCM data (values rendered to strings) or in-app item data.
    #[serde(default)]
    pub data: BTreeMap<String, String>,
}

/// One channel of a rule, with its condition and templates (per-locale variants beside).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Deliver {
    pub channel: ChannelKind,
    #[serde(default)]
    pub when: Condition,
    #[serde(default)]
    pub offline_for_secs: u64,
    #[serde(default)]
    pub title: Option<String>,
    #[serde(default)]
    pub body: Option<String>,
    #[serde(default)]
    pub subject: Option<String>,
    #[serde(default)]
    pub html: Option<String>,
    #[serde(default)]
    pub data: BTreeMap<String, String>,
    /// Variants by locale (`fr`, `pt-BR`); the recipient's locale picks one, then its
    /// language, then the default above.
    #[serde(default)]
    pub locales: BTreeMap<String, Content>,
    /// FCM: Android `click_action` / APNs category, and a collapse key.
    #[serde(default)]
    pub click_action: Option<String>,
    #[serde(default)]
    pub collapse_key: Option<String>,
    /// Email: a calendar invite built from payload times.
    #[serde(default)]
    pub attach_ics: Option<super::attachments::IcsSpec>,
    /// Email: a QR code (PNG) of this template's text, e.g. `{{ booking_id }}`.
    #[serde(default)]
    pub attach_qr: Option<String>,
    /// SMS and WhatsApp: send again after a timeout that may have been a send (default: no).
    #[serde(default)]
    pub resend_ambiguous: bool,
    /// WhatsApp: an approved template (needed outside the 24-hour window); without it the
    /// `body` goes as free-form text.
    #[serde(default)]
    pub whatsapp_template: Option<super::provider::whatsapp::TemplateSpec>,
    /// Zoho CRM: the contact's and the deal's fields (templates).
    #[serde(default)]
    pub zoho: Option<super::provider::zoho::ZohoSpec>,
}

impl Deliver {
    /// The default-locale templates.
    pub fn content(&self) -> Content {
        Content {
            title: self.title.clone(),
            body: self.body.clone(),
            subject: self.subject.clone(),
            html: self.html.clone(),
            data: self.data.clone(),
        }
    }
}

/// Who a rule notifies. Exactly one field is set.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RecipientSpec {
    /// A user id template, e.g. `{{ staff_id }}` from a channel capture.
    #[serde(default)]
    pub user: Option<String>,
    /// A payload field holding a user id or a list of them (`mentioned_staff_ids`).
    #[serde(default)]
    pub users_field: Option<String>,
    /// A payload field holding an email address (`attendee_email`).
    #[serde(default)]
    pub email_field: Option<String>,
    /// A payload field holding a phone number (`customer_phone`).
    #[serde(default)]
    pub phone_field: Option<String>,
    /// Fixed addresses (a host or team list).
    #[serde(default)]
    pub emails: Vec<String>,
    /// Every current member of this presence channel (a template).
    #[serde(default)]
    pub presence: Option<String>,
}

/// A condition on the payload.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FieldTest {
    /// A dotted path into the payload (`order.status`).
    pub field: String,
    #[serde(default)]
    pub equals: Option<Value>,
    #[serde(default, rename = "in")]
    pub one_of: Option<Vec<Value>>,
    #[serde(default)]
    pub exists: Option<bool>,
}

/// A rule as written in the config file or sent to the admin API.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    pub name: String,
    /// A channel pattern with named captures: `{hotel}-staff-{staff_id}-porter`.
    pub channel: String,
    /// An event name, `*` matching any run of characters; `a|b` matches either.
    pub event: String,
    #[serde(default)]
    pub when: Vec<FieldTest>,
    /// The notification type (category), for preferences.
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub priority: Priority,
    pub recipients: Vec<RecipientSpec>,
    pub deliver: Vec<Deliver>,
    /// The idempotency key template; by default the event's id (a digest of event, channel
    /// and data), so the same event never notifies the same person twice on one channel.
    #[serde(default)]
    pub idempotency_key: Option<String>,
    /// Send at times computed from the payload (reminders) instead of now.
    #[serde(default)]
    pub schedule: Option<Schedule>,
    /// Rules whose pending scheduled deliveries with this rule's key are cancelled when this
    /// rule matches (a cancelled booking cancels its reminders).
    #[serde(default)]
    pub cancels: Vec<String>,
}

/// `schedule = { at = "start_at", minutes_before = [1440, 60] }`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Schedule {
    /// A payload field holding the time: RFC 3339, or Unix seconds or milliseconds.
    pub at: String,
    #[serde(default)]
    pub minutes_before: Vec<i64>,
}

impl Schedule {
    /// The send times (Unix ms) with their offsets, for a payload; none when the field is
    /// missing or not a time.
    pub fn times(&self, payload: &Value) -> Option<Vec<(i64, i64)>> {
        let at = match field(payload, &self.at)? {
            Value::String(s) => chrono::DateTime::parse_from_rfc3339(s)
                .ok()?
                .timestamp_millis(),
            Value::Number(n) => {
                let n = n.as_i64()?;
                // Seconds until the year 5138, milliseconds after.
                if n < 100_000_000_000 {
                    n.saturating_mul(1000)
                } else {
                    n
                }
            }
            _ => return None,
        };
        let offsets: &[i64] = if self.minutes_before.is_empty() {
            &[0]
        } else {
            &self.minutes_before
        };
        Some(
            offsets
                .iter()
                .map(|m| (at.saturating_sub(m.saturating_mul(60_000)), *m))
                .collect(),
        )
    }
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum RuleError {
    #[error("rule {rule:?}: channel pattern {pattern:?}: {reason}")]
    Pattern {
        rule: String,
        pattern: String,
        reason: &'static str,
    },
    #[error("rule {rule:?}: each recipient sets exactly one of user, users_field, email_field, phone_field, emails, presence")]
    Recipient { rule: String },
    #[error("rule {rule:?}: at least one recipient and one deliver entry are needed (or cancels)")]
    Empty { rule: String },
    #[error("rule {rule:?}: a schedule or cancels needs an idempotency_key (e.g. '{{{{ booking_id }}}}')")]
    NeedsKey { rule: String },
    #[error("rule {rule:?}: condition on {field:?} sets none of equals, in, exists")]
    Test { rule: String, field: String },
    #[error("rule {rule:?}: {reason}")]
    Zoho { rule: String, reason: String },
}

/// A rule ready to match.
#[derive(Debug, Clone)]
pub struct Rule {
    pub config: RuleConfig,
    channel: Regex,
    event: Regex,
}

/// A rule that matched an event: its captures and the template context.
#[derive(Debug, Clone)]
pub struct Matched<'a> {
    pub rule: &'a Rule,
    pub captures: BTreeMap<String, String>,
}

/// Turns `{name}` captures into a regex; names are identifiers, everything else literal.
fn channel_regex(rule: &str, pattern: &str) -> Result<Regex, RuleError> {
    let err = |reason| RuleError::Pattern {
        rule: rule.to_owned(),
        pattern: pattern.to_owned(),
        reason,
    };
    let mut re = String::from("^");
    let mut rest = pattern;
    let mut names = Vec::new();
    while let Some(open) = rest.find('{') {
        re.push_str(&regex::escape(&rest[..open]));
        let close = rest[open..].find('}').ok_or(err("a { is not closed"))? + open;
        let name = &rest[open + 1..close];
        let valid = !name.is_empty()
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
            && !name.starts_with(|c: char| c.is_ascii_digit());
        if !valid {
            return Err(err("capture names are letters, digits and _"));
        }
        if names.contains(&name) {
            return Err(err("a capture name appears twice"));
        }
        names.push(name);
        // Lazy, so literal parts anchor the split: `{hotel}-staff-{id}` takes
        // "grand-hotel" for hotel in "grand-hotel-staff-42".
        re.push_str(&format!("(?P<{name}>.+?)"));
        rest = &rest[close + 1..];
    }
    if rest.contains('}') {
        return Err(err("a } has no {"));
    }
    re.push_str(&regex::escape(rest));
    re.push('$');
    Regex::new(&re).map_err(|_| err("not a valid pattern"))
}

/// `booking.*`, or alternatives: `booking.confirmed|booking.rescheduled`.
fn glob_regex(pattern: &str) -> Regex {
    let alternatives: Vec<String> = pattern
        .split('|')
        .map(|alt| {
            let parts: Vec<String> = alt.trim().split('*').map(regex::escape).collect();
            parts.join(".*")
        })
        .collect();
    // unwrap: escaped literals joined by `.*` and `|` always form a valid regex.
    Regex::new(&format!("^(?:{})$", alternatives.join("|"))).unwrap()
}

impl Rule {
    pub fn new(config: RuleConfig) -> Result<Self, RuleError> {
        let name = config.name.clone();
        let sends = !config.recipients.is_empty() && !config.deliver.is_empty();
        if !sends && config.cancels.is_empty() {
            return Err(RuleError::Empty { rule: name });
        }
        if (config.schedule.is_some() || !config.cancels.is_empty())
            && config.idempotency_key.is_none()
        {
            return Err(RuleError::NeedsKey { rule: name });
        }
        for r in &config.recipients {
            let set = [
                r.user.is_some(),
                r.users_field.is_some(),
                r.email_field.is_some(),
                r.phone_field.is_some(),
                !r.emails.is_empty(),
                r.presence.is_some(),
            ]
            .iter()
            .filter(|s| **s)
            .count();
            if set != 1 {
                return Err(RuleError::Recipient { rule: name });
            }
        }
        for d in &config.deliver {
            match (d.channel, &d.zoho) {
                (ChannelKind::Zoho, None) => {
                    return Err(RuleError::Zoho {
                        rule: name,
                        reason: "a zoho entry needs zoho = { contact = …, invoice = … }".into(),
                    })
                }
                (ChannelKind::Zoho, Some(z)) => {
                    z.validate().map_err(|reason| RuleError::Zoho {
                        rule: name.clone(),
                        reason,
                    })?;
                }
                _ => {}
            }
        }
        for t in &config.when {
            if t.equals.is_none() && t.one_of.is_none() && t.exists.is_none() {
                return Err(RuleError::Test {
                    rule: name,
                    field: t.field.clone(),
                });
            }
        }
        Ok(Self {
            channel: channel_regex(&config.name, &config.channel)?,
            event: glob_regex(&config.event),
            config,
        })
    }

    /// The captures when `channel` and `event` match and every condition holds.
    pub fn matches(
        &self,
        channel: &str,
        event: &str,
        payload: &Value,
    ) -> Option<BTreeMap<String, String>> {
        if !self.event.is_match(event) {
            return None;
        }
        let caps = self.channel.captures(channel)?;
        if !self.config.when.iter().all(|t| test(t, payload)) {
            return None;
        }
        Some(
            self.channel
                .capture_names()
                .flatten()
                .filter_map(|n| Some((n.to_owned(), caps.name(n)?.as_str().to_owned())))
                .collect(),
        )
    }
}

/// The value at a dotted path of the payload.
pub fn field<'a>(payload: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.').try_fold(payload, |v, key| match v {
        Value::Object(m) => m.get(key),
        Value::Array(a) => key.parse::<usize>().ok().and_then(|i| a.get(i)),
        _ => None,
    })
}

fn test(t: &FieldTest, payload: &Value) -> bool {
    let v = field(payload, &t.field).filter(|v| !v.is_null());
    if let Some(want) = t.exists {
        if v.is_some() != want {
            return false;
        }
    }
    if let Some(eq) = &t.equals {
        if !v.is_some_and(|v| loosely_equal(v, eq)) {
            return false;
        }
    }
    if let Some(list) = &t.one_of {
        if !v.is_some_and(|v| list.iter().any(|x| loosely_equal(v, x))) {
            return false;
        }
    }
    true
}

/// Payloads carry ids as numbers or strings depending on the backend; `42` equals `"42"`.
fn loosely_equal(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::String(s), Value::Number(n)) | (Value::Number(n), Value::String(s)) => {
            s == &n.to_string()
        }
        _ => a == b,
    }
}

/// The event's payload as JSON: Pusher data is a string, usually JSON text.
pub fn payload(data: &str) -> Value {
    serde_json::from_str(data).unwrap_or_else(|_| Value::String(data.to_owned()))
}

/// The template context of a matched event: the payload's fields at the top level (so
/// `{{ room_number }}` works as in the seeds' templates), then the captures, and `event`,
/// `channel`, `data` (the whole payload), `captures` (the captures alone).
pub fn context(
    event: &str,
    channel: &str,
    payload: &Value,
    captures: &BTreeMap<String, String>,
) -> Map<String, Value> {
    let mut ctx = match payload {
        Value::Object(m) => m.clone(),
        _ => Map::new(),
    };
    for (k, v) in captures {
        ctx.insert(k.clone(), Value::String(v.clone()));
    }
    ctx.insert("event".into(), Value::String(event.to_owned()));
    ctx.insert("channel".into(), Value::String(channel.to_owned()));
    ctx.insert("data".into(), payload.clone());
    ctx.insert(
        "captures".into(),
        Value::Object(
            captures
                .iter()
                .map(|(k, v)| (k.clone(), Value::String(v.clone())))
                .collect(),
        ),
    );
    ctx
}

/// A recipient named by a rule before the directory is consulted.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Recipient {
    User(String),
    Email(String),
    Phone(String),
}

/// Ids from a payload field: a string, a number, or a list of them.
pub fn ids_in(v: &Value) -> Vec<String> {
    match v {
        Value::String(s) if !s.is_empty() => vec![s.clone()],
        Value::Number(n) => vec![n.to_string()],
        Value::Array(a) => a.iter().flat_map(ids_in).collect(),
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn rule(channel: &str, event: &str) -> Rule {
        Rule::new(RuleConfig {
            name: "r".into(),
            channel: channel.into(),
            event: event.into(),
            when: vec![],
            kind: "t".into(),
            priority: Priority::Normal,
            recipients: vec![RecipientSpec {
                user: Some("{{ staff_id }}".into()),
                ..Default::default()
            }],
            deliver: vec![Deliver {
                channel: ChannelKind::InApp,
                when: Condition::Always,
                offline_for_secs: 0,
                title: None,
                body: None,
                subject: None,
                html: None,
                data: BTreeMap::new(),
                locales: BTreeMap::new(),
                click_action: None,
                collapse_key: None,
                attach_ics: None,
                attach_qr: None,
                resend_ambiguous: false,
                whatsapp_template: None,
                zoho: None,
            }],
            idempotency_key: None,
            schedule: None,
            cancels: vec![],
        })
        .unwrap()
    }

    #[test]
    fn captures_split_on_literals_even_when_values_have_dashes() {
        let r = rule("{hotel}-staff-{staff_id}-porter", "new-room-service-order");
        let caps = r
            .matches(
                "grand-hotel-staff-42-porter",
                "new-room-service-order",
                &json!({}),
            )
            .unwrap();
        assert_eq!(caps["hotel"], "grand-hotel");
        assert_eq!(caps["staff_id"], "42");
        assert!(r
            .matches(
                "grand-hotel-staff-42-kitchen",
                "new-room-service-order",
                &json!({})
            )
            .is_none());
        assert!(r
            .matches(
                "grand-hotel-staff-42-porter",
                "new-breakfast-order",
                &json!({})
            )
            .is_none());
        assert!(r
            .matches(
                "x-staff-42-porter-extra",
                "new-room-service-order",
                &json!({})
            )
            .is_none());
    }

    #[test]
    fn event_globs_and_literal_dots() {
        let r = rule("bookings", "booking.*");
        assert!(r
            .matches("bookings", "booking.created", &json!({}))
            .is_some());
        assert!(r
            .matches("bookings", "bookingXcreated", &json!({}))
            .is_none());
        let exact = rule("a.b", "e");
        assert!(exact.matches("aXb", "e", &json!({})).is_none());
        let either = rule("b", "booking.confirmed | booking.rescheduled");
        assert!(either
            .matches("b", "booking.rescheduled", &json!({}))
            .is_some());
        assert!(either
            .matches("b", "booking.cancelled", &json!({}))
            .is_none());
    }

    #[test]
    fn bad_patterns_and_recipients_are_refused() {
        let mut c = rule("x", "e").config;
        for bad in ["{hotel", "hotel}", "{}", "{a-b}", "{a}-{a}", "{1a}"] {
            c.channel = bad.into();
            assert!(
                matches!(Rule::new(c.clone()), Err(RuleError::Pattern { .. })),
                "{bad}"
            );
        }
        c.channel = "x".into();
        c.recipients = vec![RecipientSpec::default()];
        assert_eq!(
            Rule::new(c.clone()).unwrap_err(),
            RuleError::Recipient { rule: "r".into() }
        );
        c.recipients = vec![];
        assert_eq!(
            Rule::new(c).unwrap_err(),
            RuleError::Empty { rule: "r".into() }
        );
    }

    #[test]
    fn conditions_test_fields_loosely() {
        let mut c = rule("x", "e").config;
        c.when = vec![
            FieldTest {
                field: "order.status".into(),
                equals: Some(json!("pending")),
                one_of: None,
                exists: None,
            },
            FieldTest {
                field: "room".into(),
                equals: None,
                one_of: Some(vec![json!(101), json!(102)]),
                exists: None,
            },
            FieldTest {
                field: "cancelled_at".into(),
                equals: None,
                one_of: None,
                exists: Some(false),
            },
        ];
        let r = Rule::new(c).unwrap();
        let ok = json!({"order": {"status": "pending"}, "room": "101"});
        assert!(r.matches("x", "e", &ok).is_some());
        let wrong = json!({"order": {"status": "done"}, "room": 101});
        assert!(r.matches("x", "e", &wrong).is_none());
        let cancelled = json!({"order": {"status": "pending"}, "room": 102, "cancelled_at": "t"});
        assert!(r.matches("x", "e", &cancelled).is_none());
    }

    #[test]
    fn schedules_count_back_from_a_payload_time() {
        let s = Schedule {
            at: "start_at".into(),
            minutes_before: vec![1440, 60],
        };
        let t = s
            .times(&json!({"start_at": "2026-12-24T18:00:00Z"}))
            .unwrap();
        let start = 1_798_135_200_000i64;
        assert_eq!(t, vec![(start - 86_400_000, 1440), (start - 3_600_000, 60)]);
        assert_eq!(
            s.times(&json!({"start_at": 1_798_135_200})).unwrap()[1].0,
            start - 3_600_000
        );
        assert_eq!(
            s.times(&json!({"start_at": start})).unwrap()[1].0,
            start - 3_600_000
        );
        assert!(s.times(&json!({"start_at": "tomorrow"})).is_none());
        assert!(s.times(&json!({})).is_none());
    }

    #[test]
    fn context_has_payload_fields_captures_and_names() {
        let caps = BTreeMap::from([("staff_id".to_string(), "42".to_string())]);
        let ctx = context("e", "c", &json!({"room_number": "101"}), &caps);
        assert_eq!(ctx["room_number"], "101");
        assert_eq!(ctx["staff_id"], "42");
        assert_eq!(ctx["event"], "e");
        assert_eq!(ctx["data"]["room_number"], "101");
        assert_eq!(payload("not json"), json!("not json"));
        assert_eq!(ids_in(&json!([1, "2", null])), vec!["1", "2"]);
    }
}
