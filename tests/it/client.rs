//! A minimal protocol-7 client for tests: connect, send frames, wait for events by name.

use std::time::Duration;

use bellhop_protocol::{signing, AppKey, Secret, SocketId};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{connect_async, MaybeTlsStream, WebSocketStream};

use crate::harness::{Server, KEY, SECRET};

pub const WAIT: Duration = Duration::from_secs(5);

pub struct Client {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    pub socket_id: String,
}

/// What came off the socket.
#[derive(Debug)]
pub enum Received {
    Event(Value),
    Closed(Option<u16>),
}

impl Client {
    /// Connects to `url` and returns the client with the raw first frame, unparsed.
    pub async fn connect_raw(url: &str) -> WebSocketStream<MaybeTlsStream<TcpStream>> {
        let (ws, _) = connect_async(url).await.expect("websocket handshake");
        ws
    }

    /// Connects without waiting for `connection_established` (for refusals).
    pub async fn connect_raw_client(url: &str) -> Client {
        Client {
            ws: Self::connect_raw(url).await,
            socket_id: String::new(),
        }
    }

    pub async fn connect(server: &Server) -> Client {
        Self::connect_to(&server.ws_url(KEY)).await
    }

    pub async fn connect_to(url: &str) -> Client {
        let ws = Self::connect_raw(url).await;
        let mut c = Client {
            ws,
            socket_id: String::new(),
        };
        let ev = c.expect("pusher:connection_established").await;
        let data: Value = serde_json::from_str(ev["data"].as_str().unwrap()).unwrap();
        c.socket_id = data["socket_id"].as_str().unwrap().to_owned();
        c
    }

    pub async fn send(&mut self, frame: Value) {
        self.ws
            .send(Message::Text(frame.to_string()))
            .await
            .unwrap();
    }

    pub async fn send_text(&mut self, text: String) {
        self.ws.send(Message::Text(text)).await.unwrap();
    }

    /// The next event or close, or None after `wait` with nothing.
    pub async fn next_within(&mut self, wait: Duration) -> Option<Received> {
        loop {
            let msg = match tokio::time::timeout(wait, self.ws.next()).await {
                Err(_) => return None,
                Ok(None) => return Some(Received::Closed(None)),
                Ok(Some(Err(_))) => return Some(Received::Closed(None)),
                Ok(Some(Ok(m))) => m,
            };
            match msg {
                Message::Text(t) => {
                    return Some(Received::Event(serde_json::from_str(&t).unwrap()))
                }
                Message::Close(frame) => {
                    return Some(Received::Closed(frame.map(|f| u16::from(f.code))))
                }
                _ => continue,
            }
        }
    }

    pub async fn next_event(&mut self) -> Value {
        match self.next_within(WAIT).await {
            Some(Received::Event(v)) => v,
            other => panic!("expected an event, got {other:?}"),
        }
    }

    /// Waits for an event named `name`, failing on any other event first.
    pub async fn expect(&mut self, name: &str) -> Value {
        let ev = self.next_event().await;
        assert_eq!(ev["event"], name, "unexpected frame {ev}");
        ev
    }

    /// Waits up to `secs` for an event named `name`, failing on any other event first.
    pub async fn expect_within(&mut self, name: &str, secs: u64) -> Value {
        match self.next_within(Duration::from_secs(secs)).await {
            Some(Received::Event(ev)) => {
                assert_eq!(ev["event"], name, "unexpected frame {ev}");
                ev
            }
            other => panic!("expected {name} within {secs} s, got {other:?}"),
        }
    }

    /// Skips other events until one named `name` arrives.
    pub async fn wait_for(&mut self, name: &str) -> Value {
        loop {
            let ev = self.next_event().await;
            if ev["event"] == name {
                return ev;
            }
        }
    }

    /// Reads until an event named `sentinel` arrives and returns it, failing on any other
    /// event (or a close) before it.
    ///
    /// This is how a test proves that something did *not* arrive: after the moment the
    /// forbidden event would have been sent, cause a sentinel that travels the same ordered
    /// path (the same channel through the same node, the same sender's client events, the
    /// same presence channel's member frames); its arrival with nothing before it proves
    /// the forbidden event never came. A timeout proves nothing and is never used for that.
    pub async fn expect_only_until(&mut self, sentinel: &str) -> Value {
        match self.next_within(WAIT).await {
            Some(Received::Event(ev)) if ev["event"] == sentinel => ev,
            Some(Received::Event(ev)) => {
                panic!("expected only the sentinel {sentinel}, but first got {ev}")
            }
            other => panic!("expected the sentinel {sentinel}, got {other:?}"),
        }
    }

    /// [`expect_only_until`](Self::expect_only_until) for a presence sentinel: the next
    /// frame must be `event` (`pusher_internal:member_added` or `_removed`) about `user_id`.
    pub async fn expect_only_member(&mut self, event: &str, user_id: &str) -> Value {
        let ev = self.expect_only_until(event).await;
        assert_eq!(
            data(&ev)["user_id"],
            user_id,
            "expected only the sentinel {event} of {user_id}, but first got {ev}"
        );
        ev
    }

    /// Expects `pusher:error` with `code`, then a close with the same code.
    pub async fn expect_refusal(&mut self, code: u16) {
        let ev = self.expect("pusher:error").await;
        assert_eq!(ev["data"]["code"], code, "{ev}");
        assert!(ev["data"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()));
        self.expect_close(code).await;
    }

    pub async fn expect_close(&mut self, code: u16) {
        match self.next_within(WAIT).await {
            Some(Received::Closed(got)) => assert_eq!(got, Some(code)),
            other => panic!("expected close {code}, got {other:?}"),
        }
    }

    pub async fn subscribe(&mut self, channel: &str) -> Value {
        let auth = if channel.starts_with("private-") || channel.starts_with("presence-") {
            Some(self.sign(channel, None))
        } else {
            None
        };
        self.subscribe_with(channel, auth.as_deref(), None).await;
        self.expect("pusher_internal:subscription_succeeded").await
    }

    pub async fn subscribe_presence(&mut self, channel: &str, user_id: &str, info: Value) -> Value {
        let data = json!({"user_id": user_id, "user_info": info}).to_string();
        let auth = self.sign(channel, Some(&data));
        self.subscribe_with(channel, Some(&auth), Some(&data)).await;
        self.wait_for("pusher_internal:subscription_succeeded")
            .await
    }

    pub async fn subscribe_with(&mut self, channel: &str, auth: Option<&str>, data: Option<&str>) {
        let mut d = json!({ "channel": channel });
        if let Some(a) = auth {
            d["auth"] = a.into();
        }
        if let Some(cd) = data {
            d["channel_data"] = cd.into();
        }
        self.send(json!({"event": "pusher:subscribe", "data": d}))
            .await;
    }

    pub fn sign(&self, channel: &str, data: Option<&str>) -> String {
        signing::sign_channel(
            &AppKey::parse(KEY).unwrap(),
            &Secret::parse(SECRET).unwrap(),
            SocketId::parse(&self.socket_id).unwrap(),
            channel,
            data,
        )
    }

    pub async fn close(mut self) {
        let _ = self
            .ws
            .close(Some(tokio_tungstenite::tungstenite::protocol::CloseFrame {
                code: CloseCode::Normal,
                reason: "".into(),
            }))
            .await;
    }
}

/// Parses an event's `data`, which the server sends as a JSON string.
pub fn data(ev: &Value) -> Value {
    match &ev["data"] {
        Value::String(s) => serde_json::from_str(s).unwrap_or(Value::String(s.clone())),
        other => other.clone(),
    }
}
