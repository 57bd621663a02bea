//! A lean protocol-7 client: connect (optionally from a chosen source address), subscribe,
//! read frames. It does as little work per frame as it can, so that the generator is not
//! what is measured.

use std::net::{IpAddr, SocketAddr};

use anyhow::{anyhow, bail, Context};
use bellhop_protocol::{signing, AppKey, Secret, SocketId};
use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

pub type Ws = WebSocketStream<TcpStream>;

pub struct Conn {
    pub ws: Ws,
    pub socket_id: String,
}

/// Finds `"key":"value"` in frames without parsing them; the searcher is built once per key,
/// not per frame.
pub struct Field(memchr::memmem::Finder<'static>);

impl Field {
    pub fn new(key: &str) -> Self {
        Self(memchr::memmem::Finder::new(format!("\"{key}\":\"").as_bytes()).into_owned())
    }

    pub fn find<'a>(&self, frame: &'a str) -> Option<&'a str> {
        let bytes = frame.as_bytes();
        let start = self.0.find(bytes)? + self.0.needle().len();
        let end = memchr::memchr(b'"', &bytes[start..])? + start;
        // Both ends sit next to an ASCII quote, so they are character boundaries.
        Some(&frame[start..end])
    }
}

/// No ping frame is longer; longer frames skip the search for one.
const MAX_PING_LEN: usize = 128;

pub async fn connect(addr: SocketAddr, key: &str, source: Option<IpAddr>) -> anyhow::Result<Conn> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    if let Some(ip) = source {
        socket
            .bind(SocketAddr::new(ip, 0))
            .context("bind source address")?;
    }
    let stream = socket.connect(addr).await.context("tcp connect")?;
    stream.set_nodelay(true)?;
    let url = format!("ws://{addr}/app/{key}?protocol=7&client=bellhop-loadtest&version=0.1");
    let (mut ws, _) = tokio_tungstenite::client_async(url, stream)
        .await
        .context("websocket handshake")?;
    let first = next_text(&mut ws).await?;
    if !first.contains("pusher:connection_established") {
        bail!("expected connection_established, got {first}");
    }
    // The socket id sits inside the data string: {\"socket_id\":\"1.2\",...}
    let sid_start = first
        .find("socket_id")
        .ok_or_else(|| anyhow!("no socket_id"))?;
    let rest = &first[sid_start..];
    let digits: String = rest
        .chars()
        .skip_while(|c| !c.is_ascii_digit())
        .take_while(|c| c.is_ascii_digit() || *c == '.')
        .collect();
    Ok(Conn {
        ws,
        socket_id: digits,
    })
}

/// The next text frame; answers server pings on the way.
pub async fn next_text(ws: &mut Ws) -> anyhow::Result<String> {
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(t))) => {
                if t.len() <= MAX_PING_LEN && t.contains("\"pusher:ping\"") {
                    ws.send(Message::Text(r#"{"event":"pusher:pong","data":{}}"#.into()))
                        .await?;
                    continue;
                }
                return Ok(t);
            }
            Some(Ok(Message::Close(f))) => bail!("closed by server: {f:?}"),
            Some(Ok(_)) => continue,
            Some(Err(e)) => return Err(e.into()),
            None => bail!("connection ended"),
        }
    }
}

impl Conn {
    pub fn sign(
        &self,
        key: &str,
        secret: &str,
        channel: &str,
        data: Option<&str>,
    ) -> anyhow::Result<String> {
        Ok(signing::sign_channel(
            &AppKey::parse(key)?,
            &Secret::parse(secret)?,
            SocketId::parse(&self.socket_id)?,
            channel,
            data,
        ))
    }

    /// Subscribes and waits for the answer.
    pub async fn subscribe(
        &mut self,
        channel: &str,
        auth: Option<String>,
        channel_data: Option<String>,
    ) -> anyhow::Result<()> {
        let mut d = json!({ "channel": channel });
        if let Some(a) = auth {
            d["auth"] = a.into();
        }
        if let Some(cd) = channel_data {
            d["channel_data"] = cd.into();
        }
        self.ws
            .send(Message::Text(
                json!({"event": "pusher:subscribe", "data": d}).to_string(),
            ))
            .await?;
        loop {
            let t = next_text(&mut self.ws).await?;
            if t.contains("pusher_internal:subscription_succeeded") {
                return Ok(());
            }
            if t.contains("subscription_error") || t.contains("pusher:error") {
                bail!("subscribe {channel} refused: {t}");
            }
        }
    }

    pub async fn send_text(&mut self, text: String) -> anyhow::Result<()> {
        self.ws.send(Message::Text(text)).await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_fields_without_parsing() {
        let f = r#"{"event":"e","channel":"c","data":"12 345 xx"}"#;
        assert_eq!(Field::new("data").find(f), Some("12 345 xx"));
        assert_eq!(Field::new("event").find(f), Some("e"));
        assert_eq!(Field::new("nope").find(f), None);
    }
}
