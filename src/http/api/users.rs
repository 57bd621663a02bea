//! `POST /apps/{id}/users/{user_id}/terminate_connections`: closes every socket that user
//! signed in on (the SDKs' `terminateUserConnections`), on every node: the other nodes are
//! told through the bus, and a bus that refuses fails the request.

use actix_web::{web, HttpRequest, HttpResponse};
use bellhop_protocol::UserId;
use serde_json::json;

use super::signed::verify;
use crate::cluster::{Body, Envelope};
use crate::connection::terminated;
use crate::http::ApiError;
use crate::state::ServerState;

pub async fn terminate_connections(
    req: HttpRequest,
    path: web::Path<(String, String)>,
    payload: web::Payload,
    state: web::Data<ServerState>,
) -> Result<HttpResponse, ApiError> {
    let (app_id, user_id) = path.into_inner();
    let signed = verify(&state, &req, &app_id, payload).await?;
    let user = UserId::parse(&user_id, signed.app.limits.max_presence_user_id_len)
        .map_err(|e| ApiError::BadRequest(e.to_string()))?;
    if !state.bus.alone() {
        let envelope = Envelope {
            origin: state.node_id.clone(),
            app: signed.app.id.clone(),
            body: Body::Terminate { user: user.clone() },
        };
        state.bus.publish(envelope).await.map_err(|e| {
            tracing::warn!(app_id = %signed.app.id, error = %e, "terminate refused: the cluster bus is down");
            ApiError::Unavailable(e.to_string())
        })?;
    }
    let closed = state
        .connections
        .terminate_user(&signed.app.id, &user, terminated());
    tracing::info!(app_id = %signed.app.id, user_id = %user, closed, "terminated user connections");
    Ok(HttpResponse::Ok().json(json!({})))
}
