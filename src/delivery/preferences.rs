//! A recipient's say: notification types they turned off per channel, and quiet hours in
//! their own time zone, during which non-critical messages wait for the window to open.
//! Pure: the engine passes the clock in.

use chrono::{DateTime, Duration, NaiveTime, TimeZone, Utc};
use chrono_tz::Tz;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// `{"start": "22:00", "end": "07:00"}`: a window in local time, wrapping midnight when
/// start > end.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct QuietHours {
    pub start: String,
    pub end: String,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum PreferenceError {
    #[error("quiet hours must be HH:MM, got {0:?}")]
    Time(String),
    #[error("unknown time zone {0:?} (use an IANA name such as Africa/Nairobi)")]
    TimeZone(String),
    #[error("preferences must be an object of type -> {{channel: true|false}}")]
    Shape,
}

fn hhmm(s: &str) -> Result<NaiveTime, PreferenceError> {
    NaiveTime::parse_from_str(s, "%H:%M").map_err(|_| PreferenceError::Time(s.to_owned()))
}

impl QuietHours {
    pub fn validate(&self) -> Result<(), PreferenceError> {
        hhmm(&self.start)?;
        hhmm(&self.end)?;
        Ok(())
    }

    /// When the window in force at `now` ends, if `now` is inside one.
    pub fn ends_after(&self, now: DateTime<Utc>, tz: Tz) -> Option<DateTime<Utc>> {
        let (start, end) = (hhmm(&self.start).ok()?, hhmm(&self.end).ok()?);
        if start == end {
            return None;
        }
        let local = now.with_timezone(&tz);
        let t = local.time();
        let inside = if start < end {
            t >= start && t < end
        } else {
            t >= start || t < end
        };
        if !inside {
            return None;
        }
        let mut day = local.date_naive();
        if t >= end {
            day += Duration::days(1);
        }
        // A DST gap at `end` moves the end to the next valid instant.
        let end_local = day.and_time(end);
        let resolved = tz.from_local_datetime(&end_local).earliest().or_else(|| {
            tz.from_local_datetime(&(end_local + Duration::hours(1)))
                .earliest()
        })?;
        Some(resolved.with_timezone(&Utc))
    }
}

pub fn time_zone(name: Option<&str>) -> Result<Tz, PreferenceError> {
    match name {
        None | Some("") => Ok(Tz::UTC),
        Some(n) => n
            .parse::<Tz>()
            .map_err(|_| PreferenceError::TimeZone(n.to_owned())),
    }
}

/// Checks the shape of stored preferences: `{type: {channel: bool}}`.
pub fn validate_preferences(v: &Value) -> Result<(), PreferenceError> {
    let Value::Object(types) = v else {
        return Err(PreferenceError::Shape);
    };
    for channels in types.values() {
        let Value::Object(c) = channels else {
            return Err(PreferenceError::Shape);
        };
        if !c.values().all(Value::is_boolean) {
            return Err(PreferenceError::Shape);
        }
    }
    Ok(())
}

/// Whether the recipient allows `kind` on `channel`: anything not turned off is on, and `*`
/// stands for every type.
pub fn allows(preferences: &Value, kind: &str, channel: &str) -> bool {
    let off = |t: &str| {
        preferences
            .get(t)
            .and_then(|c| c.get(channel))
            .and_then(Value::as_bool)
            == Some(false)
    };
    !off(kind) && !off("*")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn a_window_over_midnight_in_the_users_zone() {
        let q = QuietHours {
            start: "22:00".into(),
            end: "07:00".into(),
        };
        let nairobi = time_zone(Some("Africa/Nairobi")).unwrap(); // UTC+3
                                                                  // 20:30 UTC is 23:30 in Nairobi: held until 07:00 local = 04:00 UTC next day.
        assert_eq!(
            q.ends_after(utc("2026-12-01T20:30:00Z"), nairobi),
            Some(utc("2026-12-02T04:00:00Z"))
        );
        // 01:00 UTC is 04:00 local: held until 04:00 UTC the same day.
        assert_eq!(
            q.ends_after(utc("2026-12-02T01:00:00Z"), nairobi),
            Some(utc("2026-12-02T04:00:00Z"))
        );
        // 09:00 UTC is noon: not quiet.
        assert_eq!(q.ends_after(utc("2026-12-02T09:00:00Z"), nairobi), None);
    }

    #[test]
    fn a_window_within_one_day() {
        let q = QuietHours {
            start: "13:00".into(),
            end: "14:00".into(),
        };
        let t = q.ends_after(utc("2026-12-02T13:30:00Z"), Tz::UTC);
        assert_eq!(t, Some(utc("2026-12-02T14:00:00Z")));
        assert_eq!(q.ends_after(utc("2026-12-02T14:00:00Z"), Tz::UTC), None);
    }

    #[test]
    fn bad_inputs_are_named() {
        assert_eq!(
            QuietHours {
                start: "25:00".into(),
                end: "07:00".into()
            }
            .validate(),
            Err(PreferenceError::Time("25:00".into()))
        );
        assert!(time_zone(Some("Mars/Olympus")).is_err());
        assert!(validate_preferences(&json!({"t": {"email": "no"}})).is_err());
        assert!(validate_preferences(&json!({"t": {"email": false}})).is_ok());
    }

    #[test]
    fn preferences_turn_types_off_per_channel() {
        let p = json!({"marketing": {"email": false}, "*": {"sms": false}});
        assert!(!allows(&p, "marketing", "email"));
        assert!(allows(&p, "marketing", "fcm"));
        assert!(allows(&p, "booking", "email"));
        assert!(!allows(&p, "booking", "sms"));
        assert!(allows(&json!({}), "x", "y"));
    }
}
