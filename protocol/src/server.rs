//! Frames the server sends, encoded straight to JSON text. Each function is called once per
//! message; the resulting bytes are shared by every recipient.

use serde::Serialize;
use serde_json::value::RawValue;

use crate::codes::ErrorCode;
use crate::ids::SocketId;

#[derive(Serialize)]
struct Frame<'a, D: Serialize + ?Sized> {
    event: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    channel: Option<&'a str>,
    data: &'a D,
    #[serde(skip_serializing_if = "Option::is_none")]
    user_id: Option<&'a str>,
}

fn encode<D: Serialize + ?Sized>(
    event: &str,
    channel: Option<&str>,
    data: &D,
    user_id: Option<&str>,
) -> String {
    // unwrap: every `D` used here is a string, a RawValue or a derived struct of strings and
    // numbers, none of which can fail to serialise.
    serde_json::to_string(&Frame {
        event,
        channel,
        data,
        user_id,
    })
    .unwrap()
}

fn stringified<T: Serialize>(v: &T) -> String {
    // unwrap: as in `encode`.
    serde_json::to_string(v).unwrap()
}

/// `pusher:connection_established`; its data is a JSON string, as Pusher sends it.
pub fn connection_established(socket_id: SocketId, activity_timeout_secs: u64) -> String {
    #[derive(Serialize)]
    struct Data {
        socket_id: String,
        activity_timeout: u64,
    }
    let data = stringified(&Data {
        socket_id: socket_id.to_string(),
        activity_timeout: activity_timeout_secs,
    });
    encode("pusher:connection_established", None, &data, None)
}

#[derive(Serialize)]
struct ErrorData<'a> {
    code: u16,
    message: &'a str,
}

/// `pusher:error` with a code from the table and its standard message.
pub fn error(code: ErrorCode) -> String {
    error_with_message(code, code.message())
}

/// `pusher:error` with a more specific message than the table's.
pub fn error_with_message(code: ErrorCode, message: &str) -> String {
    encode(
        "pusher:error",
        None,
        &ErrorData {
            code: code.number(),
            message,
        },
        None,
    )
}

/// `pusher:signin_success`, echoing the signed `user_data` string.
pub fn signin_success(user_data: &str) -> String {
    #[derive(Serialize)]
    struct Data<'a> {
        user_data: &'a str,
    }
    encode("pusher:signin_success", None, &Data { user_data }, None)
}

pub fn ping() -> String {
    encode("pusher:ping", None, &Empty {}, None)
}

pub fn pong() -> String {
    encode("pusher:pong", None, &Empty {}, None)
}

#[derive(Serialize)]
struct Empty {}

/// `pusher_internal:subscription_succeeded` for a channel without presence.
pub fn subscription_succeeded(channel: &str) -> String {
    encode(
        "pusher_internal:subscription_succeeded",
        Some(channel),
        "{}",
        None,
    )
}

/// `pusher_internal:subscription_succeeded` for a presence channel: every member's id and info.
/// `members` yields `(user_id, user_info as raw JSON)`.
pub fn presence_subscription_succeeded<'a>(
    channel: &str,
    members: impl ExactSizeIterator<Item = (&'a str, &'a RawValue)> + Clone,
) -> String {
    use serde::ser::{SerializeMap, SerializeSeq};
    struct Ids<I>(I);
    impl<'a, I: Iterator<Item = (&'a str, &'a RawValue)> + Clone> Serialize for Ids<I> {
        fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            let mut seq = s.serialize_seq(None)?;
            for (id, _) in self.0.clone() {
                seq.serialize_element(id)?;
            }
            seq.end()
        }
    }
    struct Hash<I>(I);
    impl<'a, I: Iterator<Item = (&'a str, &'a RawValue)> + Clone> Serialize for Hash<I> {
        fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            let mut map = s.serialize_map(None)?;
            for (id, info) in self.0.clone() {
                map.serialize_entry(id, info)?;
            }
            map.end()
        }
    }
    #[derive(Serialize)]
    struct PresenceOut<A, B> {
        ids: A,
        hash: B,
        count: usize,
    }
    #[derive(Serialize)]
    struct Data<P> {
        presence: P,
    }
    let count = members.len();
    let data = stringified(&Data {
        presence: PresenceOut {
            ids: Ids(members.clone()),
            hash: Hash(members),
            count,
        },
    });
    encode(
        "pusher_internal:subscription_succeeded",
        Some(channel),
        &data,
        None,
    )
}

/// `pusher_internal:member_added`.
pub fn member_added(channel: &str, user_id: &str, user_info: &RawValue) -> String {
    #[derive(Serialize)]
    struct Data<'a> {
        user_id: &'a str,
        user_info: &'a RawValue,
    }
    let data = stringified(&Data { user_id, user_info });
    encode("pusher_internal:member_added", Some(channel), &data, None)
}

/// `pusher_internal:member_removed`.
pub fn member_removed(channel: &str, user_id: &str) -> String {
    #[derive(Serialize)]
    struct Data<'a> {
        user_id: &'a str,
    }
    let data = stringified(&Data { user_id });
    encode("pusher_internal:member_removed", Some(channel), &data, None)
}

/// `pusher:cache_miss`: a cache channel has no cached event for a new subscriber.
pub fn cache_miss(channel: &str) -> String {
    encode("pusher:cache_miss", Some(channel), "{}", None)
}

/// `pusher_internal:subscription_count` (pusher-js re-emits it as `pusher:subscription_count`).
pub fn subscription_count(channel: &str, count: u64) -> String {
    #[derive(Serialize)]
    struct Data {
        subscription_count: u64,
    }
    let data = stringified(&Data {
        subscription_count: count,
    });
    encode(
        "pusher_internal:subscription_count",
        Some(channel),
        &data,
        None,
    )
}

/// `pusher_internal:watchlist_events`: users of a signed-in user's watchlist went online or
/// offline (`name` is `online` or `offline`).
pub fn watchlist_events(name: &str, user_ids: &[&str]) -> String {
    #[derive(Serialize)]
    struct Event<'a> {
        name: &'a str,
        user_ids: &'a [&'a str],
    }
    #[derive(Serialize)]
    struct Data<'a> {
        events: [Event<'a>; 1],
    }
    let data = stringified(&Data {
        events: [Event { name, user_ids }],
    });
    encode("pusher_internal:watchlist_events", None, &data, None)
}

/// Why a subscription was refused; `kind` is the `type` pusher-js reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubscriptionErrorKind {
    AuthError,
    LimitReached,
    InvalidChannel,
}

impl SubscriptionErrorKind {
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::AuthError => "AuthError",
            Self::LimitReached => "LimitReached",
            Self::InvalidChannel => "InvalidChannel",
        }
    }
}

/// `pusher:subscription_error` with the `type`, `error` and `status` fields pusher-js reads.
pub fn subscription_error(
    channel: &str,
    kind: SubscriptionErrorKind,
    error: &str,
    status: u16,
) -> String {
    #[derive(Serialize)]
    struct Data<'a> {
        #[serde(rename = "type")]
        kind: &'a str,
        error: &'a str,
        status: u16,
    }
    encode(
        "pusher:subscription_error",
        Some(channel),
        &Data {
            kind: kind.as_str(),
            error,
            status,
        },
        None,
    )
}

/// An event triggered through the HTTP API: `data` is the string the backend sent.
pub fn channel_event(event: &str, channel: &str, data: &str) -> String {
    encode(event, Some(channel), data, None)
}

/// A client event relayed to the other subscribers; `user_id` is set on presence channels.
/// Pusher delivers client event data as a JSON string whatever the sender sent, so an object
/// is passed on as its JSON text.
pub fn client_event(event: &str, channel: &str, data: &RawValue, user_id: Option<&str>) -> String {
    let raw = data.get();
    if raw.starts_with('"') {
        encode(event, Some(channel), data, user_id)
    } else {
        encode(event, Some(channel), raw, user_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    fn parse(s: &str) -> Value {
        serde_json::from_str(s).unwrap()
    }

    #[test]
    fn connection_established_data_is_a_string() {
        let f = parse(&connection_established(SocketId::new(12, 34), 120));
        assert_eq!(f["event"], "pusher:connection_established");
        let data: Value = serde_json::from_str(f["data"].as_str().unwrap()).unwrap();
        assert_eq!(data, json!({"socket_id": "12.34", "activity_timeout": 120}));
    }

    #[test]
    fn error_frames() {
        assert_eq!(
            parse(&error(ErrorCode::AppNotFound)),
            json!({"event":"pusher:error","data":{"code":4001,"message":"Application does not exist"}})
        );
    }

    #[test]
    fn presence_success_lists_members() {
        let info = RawValue::from_string(r#"{"name":"Ann"}"#.into()).unwrap();
        let members = [("1", &*info)];
        let f = parse(&presence_subscription_succeeded(
            "presence-a",
            members.iter().copied(),
        ));
        assert_eq!(f["channel"], "presence-a");
        let data: Value = serde_json::from_str(f["data"].as_str().unwrap()).unwrap();
        assert_eq!(
            data,
            json!({"presence":{"ids":["1"],"hash":{"1":{"name":"Ann"}},"count":1}})
        );
    }

    #[test]
    fn channel_event_keeps_data_as_string() {
        let f = parse(&channel_event("my-event", "c", r#"{"a":1}"#));
        assert_eq!(
            f,
            json!({"event":"my-event","channel":"c","data":"{\"a\":1}"})
        );
    }

    #[test]
    fn client_event_adds_user_id() {
        let data = RawValue::from_string(r#"{"x":1}"#.into()).unwrap();
        let f = parse(&client_event("client-a", "presence-a", &data, Some("7")));
        assert_eq!(
            f,
            json!({"event":"client-a","channel":"presence-a","data":"{\"x\":1}","user_id":"7"})
        );
        let text = RawValue::from_string(r#""hi""#.into()).unwrap();
        let f = parse(&client_event("client-a", "private-a", &text, None));
        assert_eq!(
            f,
            json!({"event":"client-a","channel":"private-a","data":"hi"})
        );
    }

    #[test]
    fn cache_miss_and_subscription_count() {
        assert_eq!(
            parse(&cache_miss("cache-a")),
            json!({"event":"pusher:cache_miss","channel":"cache-a","data":"{}"})
        );
        assert_eq!(
            parse(&subscription_count("a", 12)),
            json!({"event":"pusher_internal:subscription_count","channel":"a","data":"{\"subscription_count\":12}"})
        );
    }

    #[test]
    fn watchlist_event_shape() {
        let f = parse(&watchlist_events("online", &["1", "2"]));
        assert_eq!(f["event"], "pusher_internal:watchlist_events");
        let data: Value = serde_json::from_str(f["data"].as_str().unwrap()).unwrap();
        assert_eq!(
            data,
            json!({"events":[{"name":"online","user_ids":["1","2"]}]})
        );
    }

    #[test]
    fn subscription_error_fields() {
        let f = parse(&subscription_error(
            "private-a",
            SubscriptionErrorKind::AuthError,
            "Invalid signature",
            401,
        ));
        assert_eq!(
            f,
            json!({"event":"pusher:subscription_error","channel":"private-a","data":{"type":"AuthError","error":"Invalid signature","status":401}})
        );
    }
}
