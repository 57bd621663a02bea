//! Whether a delivery goes out now, decided at send time before any provider is asked: the
//! recipient's preferences (a critical notification bypasses them) and quiet hours (the
//! inbox is never quiet), and the entry's condition — `offline` skips a recipient who is
//! connected right now, `no_device` one who has a device for push.

use std::time::Duration;

use super::preferences::{allows, time_zone};
use super::presence::Presence;
use super::records::{DeliveryRow, Profile};
use super::rules::{ChannelKind, Condition, Deliver};
use crate::store::{now_ms, Store, StoreError};

/// What the decision came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Send,
    Skip(String),
    /// Not now: try again after `wait`.
    Hold {
        reason: String,
        wait: Duration,
    },
}

/// The recipient's own settings: a type they turned off on this channel, or quiet hours.
pub fn by_recipient(
    row: &DeliveryRow,
    spec: &Deliver,
    profile: Option<&Profile>,
    now: chrono::DateTime<chrono::Utc>,
) -> Decision {
    let Some(p) = profile.filter(|_| row.priority != "critical") else {
        return Decision::Send;
    };
    let channel = spec.channel.as_str();
    if !allows(&p.preferences, &row.kind, channel) {
        return Decision::Skip(format!(
            "the recipient turned {} off on {channel}",
            row.kind
        ));
    }
    if spec.channel == ChannelKind::InApp {
        return Decision::Send;
    }
    let (Some(q), Ok(tz)) = (&p.quiet_hours, time_zone(p.time_zone.as_deref())) else {
        return Decision::Send;
    };
    match q.ends_after(now, tz) {
        Some(end) => Decision::Hold {
            reason: format!("quiet hours until {}", end.to_rfc3339()),
            wait: Duration::from_millis((end.timestamp_millis() - now_ms()).max(1000) as u64),
        },
        None => Decision::Send,
    }
}

/// The entry's condition: `offline` and `no_device` look at the recipient right now.
pub async fn by_condition(
    row: &DeliveryRow,
    spec: &Deliver,
    presence: &dyn Presence,
    store: &Store,
) -> Result<Decision, StoreError> {
    match spec.when {
        Condition::Always => Ok(Decision::Send),
        Condition::Offline => {
            let user = row.user_id.as_deref().unwrap_or("");
            let channel = row.data["channel"].as_str();
            // The event's channel is the user's own when one of its captures is their id.
            let personal = row.data["captures"]
                .as_object()
                .is_some_and(|c| c.values().any(|v| v.as_str() == Some(user)));
            Ok(
                if presence
                    .connected(&row.app_id, user, channel, personal)
                    .await
                {
                    Decision::Skip("the recipient is connected".into())
                } else {
                    Decision::Send
                },
            )
        }
        Condition::NoDevice => {
            let Some(u) = &row.user_id else {
                return Ok(Decision::Send);
            };
            let devices = store.devices(&row.app_id, u).await?;
            Ok(if devices.iter().any(|d| d.active) {
                Decision::Skip("the recipient has a device for push".into())
            } else {
                Decision::Send
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn row(priority: &str) -> DeliveryRow {
        DeliveryRow {
            id: 1,
            notification_id: 1,
            app_id: "1".into(),
            channel: "fcm".into(),
            state: "pending".into(),
            spec: json!({}),
            provider_id: None,
            user_id: Some("42".into()),
            address: None,
            kind: "PROMO".into(),
            priority: priority.into(),
            data: json!({}),
            created_at: 0,
        }
    }

    fn entry(channel: &str) -> Deliver {
        serde_json::from_value(json!({"channel": channel})).unwrap()
    }

    fn profile(prefs: serde_json::Value, quiet: Option<(&str, &str)>) -> Profile {
        serde_json::from_value(json!({
            "user_id": "42", "time_zone": "Africa/Nairobi", "preferences": prefs,
            "quiet_hours": quiet.map(|(s, e)| json!({"start": s, "end": e})),
        }))
        .unwrap()
    }

    #[test]
    fn a_type_turned_off_is_skipped_unless_critical() {
        let p = profile(json!({"PROMO": {"fcm": false}}), None);
        let now = chrono::Utc::now();
        assert!(matches!(
            by_recipient(&row("normal"), &entry("fcm"), Some(&p), now),
            Decision::Skip(_)
        ));
        assert_eq!(
            by_recipient(&row("critical"), &entry("fcm"), Some(&p), now),
            Decision::Send
        );
        assert_eq!(
            by_recipient(&row("normal"), &entry("email"), Some(&p), now),
            Decision::Send
        );
    }

    #[test]
    fn quiet_hours_hold_everything_but_the_inbox() {
        // 23:00 in Nairobi is 20:00 UTC.
        let late = chrono::DateTime::parse_from_rfc3339("2026-01-10T20:00:00Z")
            .unwrap()
            .with_timezone(&chrono::Utc);
        let p = profile(json!({}), Some(("22:00", "07:00")));
        let fcm = by_recipient(&row("normal"), &entry("fcm"), Some(&p), late);
        assert!(
            matches!(&fcm, Decision::Hold { reason, .. } if reason.starts_with("quiet hours until 2026-01-11T04:00:00+00:00")),
            "{fcm:?}"
        );
        assert_eq!(
            by_recipient(&row("normal"), &entry("in_app"), Some(&p), late),
            Decision::Send
        );
        assert_eq!(
            by_recipient(&row("normal"), &entry("fcm"), None, late),
            Decision::Send
        );
    }
}
