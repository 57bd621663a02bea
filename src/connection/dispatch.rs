//! Decisions on what a client asked for, without IO: may this socket subscribe to this
//! channel, and may it send this client event. The run loop carries the decisions out.

use std::sync::Arc;
use std::time::Instant;

use bellhop_protocol::server::SubscriptionErrorKind;
use bellhop_protocol::signing::{self, AuthError};
use bellhop_protocol::{ChannelKind, ChannelName, ErrorCode, SocketId, SubscribeRequest, UserId};
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::apps::App;
use crate::channel::messages::Member;

/// A subscription that may go ahead.
#[derive(Debug)]
pub struct Authorized {
    pub channel: ChannelName,
    pub member: Option<Member>,
}

/// Why a subscription was refused, as sent in `pusher:subscription_error`.
#[derive(Debug, PartialEq, Eq)]
pub struct Refusal {
    pub kind: SubscriptionErrorKind,
    pub error: String,
    pub status: u16,
}

impl Refusal {
    fn auth(error: impl Into<String>) -> Self {
        Self {
            kind: SubscriptionErrorKind::AuthError,
            error: error.into(),
            status: 401,
        }
    }

    fn invalid(error: impl Into<String>) -> Self {
        Self {
            kind: SubscriptionErrorKind::InvalidChannel,
            error: error.into(),
            status: 400,
        }
    }

    fn limit(error: impl Into<String>) -> Self {
        Self {
            kind: SubscriptionErrorKind::LimitReached,
            error: error.into(),
            status: 400,
        }
    }
}

#[derive(Deserialize)]
struct ChannelData<'a> {
    #[serde(borrow)]
    user_id: &'a RawValue,
    #[serde(default, borrow)]
    user_info: Option<&'a RawValue>,
}

/// Presence `user_id` may be a string or a number; both become the same string id.
fn user_id_text(raw: &RawValue) -> Option<String> {
    match serde_json::from_str::<serde_json::Value>(raw.get()).ok()? {
        serde_json::Value::String(s) => Some(s),
        serde_json::Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

fn presence_member(app: &App, channel_data: Option<&str>) -> Result<Member, Refusal> {
    let text = channel_data.ok_or_else(|| Refusal::auth("presence channels need channel_data"))?;
    let data: ChannelData<'_> = serde_json::from_str(text)
        .map_err(|_| Refusal::auth("channel_data must be a JSON object with a user_id"))?;
    let id = user_id_text(data.user_id)
        .ok_or_else(|| Refusal::auth("user_id must be a string or a number"))?;
    let limits = &app.limits;
    let user_id = UserId::parse(&id, limits.max_presence_user_id_len).map_err(|_| {
        Refusal::limit(format!(
            "user_id must be 1 to {} characters",
            limits.max_presence_user_id_len
        ))
    })?;
    let info = match data.user_info {
        Some(raw) if raw.get().len() > limits.max_presence_user_info_bytes => {
            return Err(Refusal::limit(format!(
                "user_info is {} bytes, over the limit of {}",
                raw.get().len(),
                limits.max_presence_user_info_bytes
            )))
        }
        Some(raw) if raw.get().starts_with('{') || raw.get() == "null" => raw.to_owned(),
        Some(_) => return Err(Refusal::auth("user_info must be an object")),
        None => RawValue::from_string("null".into()).map_err(|_| Refusal::auth("bad user_info"))?,
    };
    Ok(Member {
        user_id,
        user_info: Arc::from(info),
    })
}

/// Decides a `pusher:subscribe`. `signed_in` is the user the socket signed in as, if any.
pub fn authorize_subscription(
    app: &App,
    socket_id: SocketId,
    req: &SubscribeRequest,
    signed_in: Option<&UserId>,
) -> Result<Authorized, Refusal> {
    let channel = ChannelName::parse(&req.channel).map_err(|e| Refusal::invalid(e.to_string()))?;
    let kind = channel.kind();
    if kind == ChannelKind::ServerToUser {
        return match (signed_in, channel.server_to_user_id()) {
            (Some(user), Some(id)) if user.as_str() == id => Ok(Authorized {
                channel,
                member: None,
            }),
            _ => Err(Refusal::auth(
                "only the signed-in user may subscribe to their #server-to-user- channel",
            )),
        };
    }
    if !kind.requires_auth() {
        return Ok(Authorized {
            channel,
            member: None,
        });
    }
    let auth = req
        .auth
        .as_deref()
        .filter(|a| !a.is_empty())
        .ok_or_else(|| Refusal::auth(format!("auth is required for {}", channel)))?;
    let channel_data = if kind == ChannelKind::Presence {
        req.channel_data.as_deref()
    } else {
        None
    };
    let member = if kind == ChannelKind::Presence {
        Some(presence_member(app, channel_data)?)
    } else {
        None
    };
    signing::verify_channel(
        &app.key,
        &app.secrets,
        socket_id,
        channel.as_str(),
        channel_data,
        auth,
    )
    .map_err(|e| match e {
        AuthError::Malformed => Refusal::auth("auth must be \"<key>:<signature>\""),
        AuthError::WrongKey => Refusal::auth("auth was signed for another app key"),
        AuthError::BadSignature => Refusal::auth(format!(
            "Invalid signature: expected HMAC-SHA256 hex digest of {socket_id}:{channel}{}",
            if channel_data.is_some() {
                ":<channel_data>"
            } else {
                ""
            }
        )),
    })?;
    Ok(Authorized { channel, member })
}

/// Why a client event was not relayed; sent as `pusher:error` (the socket stays open).
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum ClientEventError {
    #[error("client events are not enabled for this app")]
    Disabled,
    #[error("cannot send client event: not subscribed to {0}")]
    NotSubscribed(String),
    #[error("client events are allowed on private and presence channels only, not {0}")]
    WrongChannelKind(String),
    #[error("client events are not allowed on encrypted channels")]
    Encrypted,
    #[error("client event data is {size} bytes, over the limit of {max}")]
    TooLarge { size: usize, max: usize },
    #[error("Client event rejected due to rate limit ({per_second} per second)")]
    RateLimited { per_second: u32 },
}

impl ClientEventError {
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::RateLimited { .. } => ErrorCode::ClientEventRateLimit,
            _ => ErrorCode::GenericError,
        }
    }
}

/// Checks a client event's channel and size; `subscribed` says whether this socket holds a
/// subscription to `channel`.
pub fn check_client_event(
    app: &App,
    channel: &str,
    data_len: usize,
    subscribed: bool,
) -> Result<(), ClientEventError> {
    if !app.client_events {
        return Err(ClientEventError::Disabled);
    }
    if !subscribed {
        return Err(ClientEventError::NotSubscribed(channel.to_owned()));
    }
    let name = ChannelName::parse(channel)
        .map_err(|_| ClientEventError::NotSubscribed(channel.to_owned()))?;
    match name.kind() {
        ChannelKind::Private | ChannelKind::Presence => {}
        ChannelKind::PrivateEncrypted => return Err(ClientEventError::Encrypted),
        _ => return Err(ClientEventError::WrongChannelKind(channel.to_owned())),
    }
    if data_len > app.limits.max_event_bytes {
        return Err(ClientEventError::TooLarge {
            size: data_len,
            max: app.limits.max_event_bytes,
        });
    }
    Ok(())
}

/// A token bucket: bursts of up to `per_second` events, refilled at `per_second` a second.
/// Unlike a fixed window it never refuses a client that sends at exactly its allowed rate
/// with a little jitter.
#[derive(Debug)]
pub struct RateLimit {
    tokens: f64,
    last: Instant,
}

impl RateLimit {
    pub fn new(now: Instant) -> Self {
        Self {
            tokens: f64::INFINITY,
            last: now,
        }
    }

    pub fn allow(&mut self, now: Instant, per_second: u32) -> bool {
        let cap = f64::from(per_second);
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * cap).min(cap);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::AppConfig;
    use std::time::Duration;

    fn app() -> App {
        let mut c = AppConfig::new("1", "key", "secret");
        c.client_events = true;
        App::from_config(&c).unwrap()
    }

    fn sid() -> SocketId {
        SocketId::parse("1.2").unwrap()
    }

    fn req(channel: &str, auth: Option<String>, data: Option<&str>) -> SubscribeRequest {
        SubscribeRequest {
            channel: channel.into(),
            auth,
            channel_data: data.map(Into::into),
        }
    }

    fn sign(channel: &str, data: Option<&str>) -> Option<String> {
        let a = app();
        Some(signing::sign_channel(
            &a.key,
            a.signing_secret(),
            sid(),
            channel,
            data,
        ))
    }

    #[test]
    fn public_channels_need_no_auth() {
        let ok = authorize_subscription(&app(), sid(), &req("news", None, None), None).unwrap();
        assert_eq!(ok.channel.as_str(), "news");
        assert!(ok.member.is_none());
    }

    #[test]
    fn private_channels_check_the_signature() {
        let a = app();
        assert!(authorize_subscription(
            &a,
            sid(),
            &req("private-a", sign("private-a", None), None),
            None
        )
        .is_ok());
        let err =
            authorize_subscription(&a, sid(), &req("private-a", None, None), None).unwrap_err();
        assert_eq!(
            (err.kind, err.status),
            (SubscriptionErrorKind::AuthError, 401)
        );
        let err = authorize_subscription(
            &a,
            sid(),
            &req("private-a", sign("private-b", None), None),
            None,
        )
        .unwrap_err();
        assert!(err.error.starts_with("Invalid signature"), "{}", err.error);
        let err = authorize_subscription(
            &a,
            sid(),
            &req("private-encrypted-a", Some("key:00".into()), None),
            None,
        )
        .unwrap_err();
        assert_eq!(err.kind, SubscriptionErrorKind::AuthError);
    }

    #[test]
    fn presence_channels_read_channel_data() {
        let a = app();
        let data = r#"{"user_id":10,"user_info":{"name":"Ann"}}"#;
        let ok = authorize_subscription(
            &a,
            sid(),
            &req("presence-a", sign("presence-a", Some(data)), Some(data)),
            None,
        )
        .unwrap();
        let m = ok.member.unwrap();
        assert_eq!(m.user_id.as_str(), "10");
        assert_eq!(m.user_info.get(), r#"{"name":"Ann"}"#);

        for bad in [
            "not json",
            r#"{"user_info":{}}"#,
            r#"{"user_id":[1]}"#,
            r#"{"user_id":"1","user_info":5}"#,
        ] {
            let err = authorize_subscription(
                &a,
                sid(),
                &req("presence-a", sign("presence-a", Some(bad)), Some(bad)),
                None,
            )
            .unwrap_err();
            assert_eq!(err.kind, SubscriptionErrorKind::AuthError, "{bad}");
        }
        let err = authorize_subscription(
            &a,
            sid(),
            &req("presence-a", sign("presence-a", None), None),
            None,
        )
        .unwrap_err();
        assert_eq!(err.kind, SubscriptionErrorKind::AuthError);

        let long = format!(r#"{{"user_id":"{}"}}"#, "u".repeat(129));
        let err = authorize_subscription(
            &a,
            sid(),
            &req("presence-a", sign("presence-a", Some(&long)), Some(&long)),
            None,
        )
        .unwrap_err();
        assert_eq!(err.kind, SubscriptionErrorKind::LimitReached);
        let big = format!(
            r#"{{"user_id":"1","user_info":{{"x":"{}"}}}}"#,
            "i".repeat(1100)
        );
        let err = authorize_subscription(
            &a,
            sid(),
            &req("presence-a", sign("presence-a", Some(&big)), Some(&big)),
            None,
        )
        .unwrap_err();
        assert_eq!(err.kind, SubscriptionErrorKind::LimitReached);
    }

    #[test]
    fn bad_names_and_server_to_user() {
        let a = app();
        let err =
            authorize_subscription(&a, sid(), &req("bad name", None, None), None).unwrap_err();
        assert_eq!(err.kind, SubscriptionErrorKind::InvalidChannel);
        let u = UserId::parse("7", 128).unwrap();
        assert!(
            authorize_subscription(&a, sid(), &req("#server-to-user-7", None, None), Some(&u))
                .is_ok()
        );
        assert!(
            authorize_subscription(&a, sid(), &req("#server-to-user-8", None, None), Some(&u))
                .is_err()
        );
        assert!(
            authorize_subscription(&a, sid(), &req("#server-to-user-7", None, None), None).is_err()
        );
    }

    #[test]
    fn client_event_rules() {
        let a = app();
        assert_eq!(check_client_event(&a, "private-a", 10, true), Ok(()));
        assert_eq!(check_client_event(&a, "presence-a", 10, true), Ok(()));
        assert_eq!(
            check_client_event(&a, "public", 10, true),
            Err(ClientEventError::WrongChannelKind("public".into()))
        );
        assert_eq!(
            check_client_event(&a, "private-encrypted-a", 10, true),
            Err(ClientEventError::Encrypted)
        );
        assert_eq!(
            check_client_event(&a, "private-a", 10, false),
            Err(ClientEventError::NotSubscribed("private-a".into()))
        );
        assert_eq!(
            check_client_event(&a, "private-a", 10241, true),
            Err(ClientEventError::TooLarge {
                size: 10241,
                max: 10240
            })
        );
        let mut off = a.clone();
        off.client_events = false;
        assert_eq!(
            check_client_event(&off, "private-a", 10, true),
            Err(ClientEventError::Disabled)
        );
    }

    #[test]
    fn rate_limit_allows_a_burst_then_the_rate() {
        let t0 = Instant::now();
        let mut r = RateLimit::new(t0);
        for _ in 0..10 {
            assert!(r.allow(t0, 10));
        }
        assert!(!r.allow(t0, 10));
        assert!(!r.allow(t0 + Duration::from_millis(50), 10));
        assert!(r.allow(t0 + Duration::from_millis(150), 10));
        assert!(!r.allow(t0 + Duration::from_millis(160), 10));
    }

    #[test]
    fn rate_limit_tolerates_jitter_at_the_allowed_rate() {
        let t0 = Instant::now();
        let mut r = RateLimit::new(t0);
        for i in 0..100u64 {
            // 10 a second on average, each up to 40 ms late or early.
            let jitter = if i % 2 == 0 { 40 } else { 0 };
            let t = t0 + Duration::from_millis(i * 100 + jitter);
            assert!(r.allow(t, 10), "event {i} refused");
        }
    }
}
