//! Frames that arrive from a client, decoded into [`ClientEvent`]. Decoding checks shape only;
//! whether a subscription or client event is allowed is the server's business.

use serde::Deserialize;
use serde_json::value::RawValue;

use crate::limits::{CLIENT_EVENT_PREFIX, MAX_EVENT_NAME_LEN};

/// One decoded client frame.
#[derive(Debug)]
pub enum ClientEvent {
    Ping,
    Pong,
    Subscribe(SubscribeRequest),
    Unsubscribe {
        channel: String,
    },
    Signin {
        auth: String,
        user_data: String,
    },
    /// A `client-` event to relay to the channel's other subscribers. `data` is kept verbatim.
    Client {
        event: String,
        channel: String,
        data: Box<RawValue>,
    },
}

impl PartialEq for ClientEvent {
    fn eq(&self, other: &Self) -> bool {
        use ClientEvent::*;
        match (self, other) {
            (Ping, Ping) | (Pong, Pong) => true,
            (Subscribe(a), Subscribe(b)) => a == b,
            (Unsubscribe { channel: a }, Unsubscribe { channel: b }) => a == b,
            (
                Signin {
                    auth: a1,
                    user_data: u1,
                },
                Signin {
                    auth: a2,
                    user_data: u2,
                },
            ) => a1 == a2 && u1 == u2,
            (
                Client {
                    event: e1,
                    channel: c1,
                    data: d1,
                },
                Client {
                    event: e2,
                    channel: c2,
                    data: d2,
                },
            ) => e1 == e2 && c1 == c2 && d1.get() == d2.get(),
            _ => false,
        }
    }
}

/// `pusher:subscribe` data. The channel name is unchecked here so that a bad name can be
/// answered with a `pusher:subscription_error` for that name.
#[derive(Debug, PartialEq, Deserialize)]
pub struct SubscribeRequest {
    pub channel: String,
    #[serde(default)]
    pub auth: Option<String>,
    #[serde(default)]
    pub channel_data: Option<String>,
}

#[derive(Debug, PartialEq, thiserror::Error)]
pub enum DecodeError {
    #[error("frame is not a JSON object with an \"event\" field")]
    Malformed,
    #[error("event name is empty or longer than {MAX_EVENT_NAME_LEN} characters")]
    BadEventName,
    #[error("unsupported event {0:?}")]
    UnknownEvent(String),
    #[error("{event} needs {what}")]
    BadData {
        event: &'static str,
        what: &'static str,
    },
}

#[derive(Deserialize)]
struct Frame<'a> {
    #[serde(borrow)]
    event: std::borrow::Cow<'a, str>,
    #[serde(default)]
    channel: Option<String>,
    #[serde(default, borrow)]
    data: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct UnsubscribeData {
    channel: String,
}

#[derive(Deserialize)]
struct SigninData {
    auth: String,
    user_data: String,
}

/// Some clients send `data` as an object, others as a string holding the object; accept both.
fn data_object<'a, T: Deserialize<'a>>(raw: Option<&'a RawValue>) -> Option<T> {
    let raw = raw?;
    if let Ok(v) = serde_json::from_str::<T>(raw.get()) {
        return Some(v);
    }
    let inner: String = serde_json::from_str(raw.get()).ok()?;
    // The nested string is owned here, so deserialise to an owned value via `Value`.
    let value: serde_json::Value = serde_json::from_str(&inner).ok()?;
    T::deserialize(value).ok()
}

impl ClientEvent {
    pub fn decode(text: &str) -> Result<Self, DecodeError> {
        let frame: Frame<'_> = serde_json::from_str(text).map_err(|_| DecodeError::Malformed)?;
        let event = frame.event.as_ref();
        match event {
            "pusher:ping" => Ok(Self::Ping),
            "pusher:pong" => Ok(Self::Pong),
            "pusher:subscribe" => data_object::<SubscribeRequest>(frame.data)
                .map(Self::Subscribe)
                .ok_or(DecodeError::BadData {
                    event: "pusher:subscribe",
                    what: "data with a \"channel\" string",
                }),
            "pusher:unsubscribe" => data_object::<UnsubscribeData>(frame.data)
                .map(|d| Self::Unsubscribe { channel: d.channel })
                .ok_or(DecodeError::BadData {
                    event: "pusher:unsubscribe",
                    what: "data with a \"channel\" string",
                }),
            "pusher:signin" => data_object::<SigninData>(frame.data)
                .map(|d| Self::Signin {
                    auth: d.auth,
                    user_data: d.user_data,
                })
                .ok_or(DecodeError::BadData {
                    event: "pusher:signin",
                    what: "data with \"auth\" and \"user_data\" strings",
                }),
            e if e.starts_with(CLIENT_EVENT_PREFIX) => {
                if e.chars().count() > MAX_EVENT_NAME_LEN {
                    return Err(DecodeError::BadEventName);
                }
                let channel = frame.channel.ok_or(DecodeError::BadData {
                    event: "client event",
                    what: "a \"channel\"",
                })?;
                let data = match frame.data {
                    Some(d) => d.to_owned(),
                    None => {
                        RawValue::from_string("null".into()).map_err(|_| DecodeError::Malformed)?
                    }
                };
                Ok(Self::Client {
                    event: frame.event.into_owned(),
                    channel,
                    data,
                })
            }
            "" => Err(DecodeError::BadEventName),
            other => Err(DecodeError::UnknownEvent(
                other.chars().take(MAX_EVENT_NAME_LEN).collect(),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_pusher_js_frames() {
        assert_eq!(
            ClientEvent::decode(r#"{"event":"pusher:ping","data":{}}"#),
            Ok(ClientEvent::Ping)
        );
        assert_eq!(
            ClientEvent::decode(
                r#"{"event":"pusher:subscribe","data":{"auth":"k:s","channel_data":"{\"user_id\":\"1\"}","channel":"presence-a"}}"#
            ),
            Ok(ClientEvent::Subscribe(SubscribeRequest {
                channel: "presence-a".into(),
                auth: Some("k:s".into()),
                channel_data: Some(r#"{"user_id":"1"}"#.into()),
            }))
        );
        assert_eq!(
            ClientEvent::decode(r#"{"event":"pusher:unsubscribe","data":{"channel":"a"}}"#),
            Ok(ClientEvent::Unsubscribe {
                channel: "a".into()
            })
        );
    }

    #[test]
    fn accepts_stringified_data() {
        assert_eq!(
            ClientEvent::decode(r#"{"event":"pusher:subscribe","data":"{\"channel\":\"a\"}"}"#),
            Ok(ClientEvent::Subscribe(SubscribeRequest {
                channel: "a".into(),
                auth: None,
                channel_data: None,
            }))
        );
    }

    #[test]
    fn keeps_client_event_data_verbatim() {
        let ev = ClientEvent::decode(
            r#"{"event":"client-typing","channel":"private-a","data":{"b": [1, 2]}}"#,
        )
        .unwrap();
        match ev {
            ClientEvent::Client {
                event,
                channel,
                data,
            } => {
                assert_eq!(event, "client-typing");
                assert_eq!(channel, "private-a");
                assert_eq!(data.get(), r#"{"b": [1, 2]}"#);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn refuses_bad_frames() {
        assert_eq!(ClientEvent::decode("nope"), Err(DecodeError::Malformed));
        assert_eq!(ClientEvent::decode("[1]"), Err(DecodeError::Malformed));
        assert_eq!(
            ClientEvent::decode(r#"{"data":{}}"#),
            Err(DecodeError::Malformed)
        );
        assert_eq!(
            ClientEvent::decode(r#"{"event":"pusher:bogus"}"#),
            Err(DecodeError::UnknownEvent("pusher:bogus".into()))
        );
        assert!(matches!(
            ClientEvent::decode(r#"{"event":"pusher:subscribe","data":{}}"#),
            Err(DecodeError::BadData { .. })
        ));
        assert!(matches!(
            ClientEvent::decode(r#"{"event":"client-x","data":{}}"#),
            Err(DecodeError::BadData { .. })
        ));
        let long = format!(
            r#"{{"event":"client-{}","channel":"private-a"}}"#,
            "x".repeat(200)
        );
        assert_eq!(ClientEvent::decode(&long), Err(DecodeError::BadEventName));
    }
}
