//! The WebSocket upgrade at `/app/{key}`: admits the connection (app, protocol version,
//! connection quota), answers the handshake and takes the socket over from the HTTP layer.
//! A refusal still completes the upgrade so the client gets a `pusher:error` and the
//! matching close code, never a bare dropped TCP connection.

use std::sync::Arc;

use actix_codec::{AsyncRead, AsyncWrite, Framed};
use actix_http::body::{BodySize, BoxBody};
use actix_http::ws::handshake;
use actix_http::{h1, HttpMessage, Request, Response, StatusCode};
use actix_web::{web, HttpResponse};
use bellhop_protocol::limits::SUPPORTED_PROTOCOLS;
use bellhop_protocol::ErrorCode;
use futures_util::SinkExt;

use crate::apps::{App, ConnectionSlot};
use crate::cluster::{Entry, Op};
use crate::connection::{self, outbox, CloseRequest, Connection, FrameReader, Writer};
use crate::state::ServerState;

/// Every upgrade request of the HTTP server comes here with its socket (the HTTP layer's
/// buffers go with it and are dropped): `/app/{key}` becomes a Pusher connection, anything
/// else is answered 404. From the 101 on, the socket is read by [`FrameReader`] and written
/// by the connection's [`Writer`], with nothing in between.
pub async fn takeover<T>(
    state: Arc<ServerState>,
    req: Request,
    mut framed: Framed<T, h1::Codec>,
) -> std::io::Result<()>
where
    T: AsyncRead + AsyncWrite + Unpin + 'static,
{
    let key = req
        .path()
        .strip_prefix("/app/")
        .filter(|k| !k.is_empty() && !k.contains('/'))
        .map(str::to_owned);
    let Some(key) = key else {
        return answer(&mut framed, Response::new(StatusCode::NOT_FOUND)).await;
    };
    let mut response = match handshake(req.head()) {
        Ok(r) => r,
        Err(e) => return answer(&mut framed, Response::from(&e)).await,
    };
    let max = state.config.max_frame_bytes;
    let (tx, rx) = outbox(state.config.outbox_capacity);
    let origin = req
        .headers()
        .get(actix_web::http::header::ORIGIN)
        .and_then(|v| v.to_str().ok());
    let admitted = match admit(&state, &key, req.uri().query().unwrap_or(""), origin) {
        Ok((app, slot)) => admit_in_cluster(&state, &app)
            .await
            .map(|counted| (app, slot, counted)),
        Err(code) => Err(code),
    };
    let conn = match admitted {
        Ok((app, slot, counted)) => Some(Connection::new(
            state.clone(),
            app,
            slot,
            tx.clone(),
            counted,
        )),
        Err(code) => {
            tracing::debug!(key = %key, code = code.number(), "connection refused");
            // The upgrade still completes, so the client reads why before the close.
            tx.close(CloseRequest::Pusher(code, code.message().into()));
            None
        }
    };
    let head = response.finish().drop_body();
    if let Err(e) = framed.send(h1::Message::Item((head, BodySize::None))).await {
        // The client never saw the 101: undo what admitting it counted.
        if let Some(conn) = conn {
            connection::finish(conn, Some(CloseRequest::WebSocket(1006, String::new())));
        }
        return Err(std::io::Error::other(e.to_string()));
    }
    let parts = framed.into_parts();
    // The HTTP layer's 8 KB read buffer goes; whatever the client sent after its request
    // (nothing, usually) moves to a buffer sized to it.
    let leftover = actix_web::web::BytesMut::from(&parts.read_buf[..]);
    let (read, write) = tokio::io::split(parts.io);
    actix_web::rt::spawn(connection::writer::drive(Writer::new(rx), write, tx));
    // A task of its own: the HTTP dispatcher (sized for any request) finishes here.
    if let Some(conn) = conn {
        actix_web::rt::spawn(connection::run(conn, FrameReader::new(read, leftover, max)));
    }
    Ok(())
}

/// A plain HTTP answer on a connection that asked to upgrade (then it closes).
async fn answer<T>(framed: &mut Framed<T, h1::Codec>, res: Response<BoxBody>) -> std::io::Result<()>
where
    T: AsyncRead + AsyncWrite + Unpin,
{
    let res = res.drop_body();
    framed
        .send(h1::Message::Item((res, BodySize::Sized(0))))
        .await
        .map_err(|e| std::io::Error::other(e.to_string()))
}

/// `GET /app/{key}` without an upgrade: it is only ever a WebSocket.
pub async fn not_upgraded() -> HttpResponse {
    HttpResponse::BadRequest()
        .insert_header((actix_web::http::header::UPGRADE, "websocket"))
        .body("expected a WebSocket upgrade (Connection: Upgrade, Upgrade: websocket)")
}

/// Clustered, an app's connection limit holds across every node: the ledger counts the
/// connection or refuses it. True when counted (the connection gives it back when it closes).
/// An unreachable ledger admits it: this node's share still records it, and is restored later.
async fn admit_in_cluster(state: &ServerState, app: &App) -> Result<bool, ErrorCode> {
    let (Some(ledger), Some(max)) = (&state.ledger, app.limits.max_connections) else {
        return Ok(false);
    };
    let mut op = Op::new(
        Entry::Connections {
            app: app.id.clone(),
        },
        1,
    );
    op.max = max;
    match ledger.apply(vec![op]).await {
        Ok(outcomes) if outcomes.first().is_some_and(|o| o.full) => {
            Err(ErrorCode::OverConnectionQuota)
        }
        Ok(_) => Ok(true),
        Err(e) => {
            tracing::warn!(app_id = %app.id, error = %e, "connection admitted without the cluster ledger");
            Ok(true)
        }
    }
}

fn protocol_version(query: &str) -> Result<u32, ErrorCode> {
    let value = web::Query::<Vec<(String, String)>>::from_query(query)
        .ok()
        .and_then(|q| {
            q.into_inner()
                .into_iter()
                .find(|(k, _)| k == "protocol")
                .map(|(_, v)| v)
        })
        .ok_or(ErrorCode::NoProtocolVersion)?;
    let v: u32 = value.parse().map_err(|_| ErrorCode::InvalidVersionFormat)?;
    if SUPPORTED_PROTOCOLS.contains(&v) {
        Ok(v)
    } else {
        Err(ErrorCode::UnsupportedProtocolVersion)
    }
}

fn admit(
    state: &ServerState,
    key: &str,
    query: &str,
    origin: Option<&str>,
) -> Result<(Arc<App>, ConnectionSlot), ErrorCode> {
    if state
        .shutting_down
        .load(std::sync::atomic::Ordering::Relaxed)
    {
        // This node is going away: reconnect now, through the load balancer, to another.
        return Err(ErrorCode::ReconnectImmediately);
    }
    let app = state.apps.by_key(key).ok_or(ErrorCode::AppNotFound)?;
    if !app.enabled {
        return Err(ErrorCode::AppDisabled);
    }
    protocol_version(query)?;
    if !app.allows_origin(origin) {
        return Err(ErrorCode::Unauthorized);
    }
    let slot = state
        .apps
        .admit(&app)
        .ok_or(ErrorCode::OverConnectionQuota)?;
    Ok((app, slot))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn protocol_versions() {
        assert_eq!(
            protocol_version("protocol=7&client=js&version=8.4.0"),
            Ok(7)
        );
        assert_eq!(protocol_version("protocol=5"), Ok(5));
        assert_eq!(
            protocol_version("client=js"),
            Err(ErrorCode::NoProtocolVersion)
        );
        assert_eq!(protocol_version(""), Err(ErrorCode::NoProtocolVersion));
        assert_eq!(
            protocol_version("protocol=abc"),
            Err(ErrorCode::InvalidVersionFormat)
        );
        assert_eq!(
            protocol_version("protocol=99"),
            Err(ErrorCode::UnsupportedProtocolVersion)
        );
        assert_eq!(
            protocol_version("protocol=4"),
            Err(ErrorCode::UnsupportedProtocolVersion)
        );
    }
}
