//! The WebSocket upgrade at `/app/{key}`: admits the connection (app, protocol version,
//! connection quota) and hands the socket to its own task. A refusal still completes the
//! upgrade so the client gets a `pusher:error` and the matching close code, never a bare
//! dropped TCP connection.

use std::sync::Arc;

use actix_http::body::{BodyStream, MessageBody};
use actix_http::ws::handshake;
use actix_web::{web, HttpRequest, HttpResponse};
use bellhop_protocol::limits::SUPPORTED_PROTOCOLS;
use bellhop_protocol::ErrorCode;

use crate::apps::{App, ConnectionSlot};
use crate::cluster::{Entry, Op};
use crate::connection::{self, outbox, CloseRequest, Connection, Writer};
use crate::state::ServerState;

pub async fn upgrade(
    req: HttpRequest,
    body: web::Payload,
    key: web::Path<String>,
    state: web::Data<ServerState>,
) -> actix_web::Result<HttpResponse> {
    // actix-ws validates the handshake and gives the reading half; the writing half is our
    // own response body, fed straight from the connection's outbox.
    let (_, _, stream) = actix_ws::handle(&req, body)?;
    let max = state.config.max_frame_bytes;
    let stream = stream
        .max_frame_size(max)
        .aggregate_continuations()
        .max_continuation_size(max);
    let state = state.into_inner();
    let (tx, rx) = outbox(state.config.outbox_capacity);
    let origin = req
        .headers()
        .get(actix_web::http::header::ORIGIN)
        .and_then(|v| v.to_str().ok());
    let admitted = match admit(&state, &key, req.query_string(), origin) {
        Ok((app, slot)) => admit_in_cluster(&state, &app)
            .await
            .map(|counted| (app, slot, counted)),
        Err(code) => Err(code),
    };
    match admitted {
        Ok((app, slot, counted)) => {
            let conn = Connection::new(state, app, slot, tx, counted);
            actix_web::rt::spawn(connection::run(conn, stream));
        }
        Err(code) => {
            tracing::debug!(key = %key.as_str(), code = code.number(), "connection refused");
            tx.close(CloseRequest::Pusher(code, code.message().into()));
        }
    }
    let response = handshake(req.head())?
        .message_body(BodyStream::new(Writer::new(rx)).boxed())?
        .into();
    Ok(response)
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
