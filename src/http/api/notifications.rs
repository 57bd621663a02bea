//! `POST /apps/{id}/notifications`: notify users by id, signed like the rest of the API. With
//! an `Idempotency-Key` header a retried request gets the first answer back and sends nothing
//! twice; two concurrent requests with one key: the second is told to retry (409).
//! `GET /apps/{id}/users/{user_id}/notifications`: the user's notifications with every
//! delivery's state and attempts (the audit record).

use actix_web::{web, HttpRequest, HttpResponse};
use serde::Deserialize;
use serde_json::{json, Value};

use super::signed::verify;
use crate::delivery::rules::{Deliver, Priority};
use crate::delivery::Direct;
use crate::http::ApiError;
use crate::state::ServerState;

/// Users a request may name at once.
const MAX_USERS: usize = 1000;
const MAX_KEY_LEN: usize = 255;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NotifyBody {
    users: Vec<String>,
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    priority: Priority,
    #[serde(default)]
    data: Value,
    channels: Vec<Deliver>,
    /// Unix ms; later than now schedules it.
    #[serde(default)]
    send_at: Option<i64>,
}

fn store_err(e: crate::store::StoreError) -> ApiError {
    super::store_unavailable(e, "; nothing was accepted")
}

fn validate(body: &NotifyBody) -> Result<(), ApiError> {
    if body.users.is_empty() || body.users.len() > MAX_USERS {
        return Err(ApiError::BadRequest(format!(
            "users must name 1 to {MAX_USERS} user ids"
        )));
    }
    if body.users.iter().any(|u| u.is_empty() || u.len() > 256) {
        return Err(ApiError::BadRequest(
            "user ids are 1 to 256 characters".into(),
        ));
    }
    if body.kind.is_empty() || body.kind.len() > 100 {
        return Err(ApiError::BadRequest("type is 1 to 100 characters".into()));
    }
    if body.channels.is_empty() {
        return Err(ApiError::BadRequest("channels must not be empty".into()));
    }
    let now = crate::store::now_ms();
    if body
        .send_at
        .is_some_and(|t| t < now - 86_400_000 || t > now + 366 * 86_400_000)
    {
        return Err(ApiError::BadRequest(
            "send_at is Unix milliseconds within the coming year".into(),
        ));
    }
    Ok(())
}

pub async fn notify(
    req: HttpRequest,
    path: web::Path<String>,
    payload: web::Payload,
    state: web::Data<ServerState>,
) -> Result<HttpResponse, ApiError> {
    let signed = verify(&state, &req, &path, payload).await?;
    let body: NotifyBody = serde_json::from_slice(&signed.body)
        .map_err(|e| ApiError::BadRequest(format!("invalid notification: {e}")))?;
    validate(&body)?;
    let key = req
        .headers()
        .get("idempotency-key")
        .map(|v| v.to_str().map(str::to_owned))
        .transpose()
        .map_err(|_| ApiError::BadRequest("Idempotency-Key must be visible ASCII".into()))?;
    if key
        .as_ref()
        .is_some_and(|k| k.is_empty() || k.len() > MAX_KEY_LEN)
    {
        return Err(ApiError::BadRequest(format!(
            "Idempotency-Key must be 1 to {MAX_KEY_LEN} characters"
        )));
    }
    let app = signed.app.id.as_str().to_owned();
    if let Some(k) = &key {
        match state
            .store
            .claim_idempotency(&app, k)
            .await
            .map_err(store_err)?
        {
            None => {}
            Some((0, _)) => {
                return Err(ApiError::Conflict(
                    "a request with this Idempotency-Key is still being answered; retry".into(),
                ))
            }
            Some((status, answer)) => {
                let status = actix_web::http::StatusCode::from_u16(status)
                    .unwrap_or(actix_web::http::StatusCode::ACCEPTED);
                return Ok(HttpResponse::build(status)
                    .insert_header(("Idempotent-Replayed", "true"))
                    .json(answer));
            }
        }
    }
    let direct = Direct {
        users: body.users,
        kind: body.kind,
        priority: body.priority,
        data: body.data,
        deliver: body.channels,
        key: key
            .clone()
            .unwrap_or_else(|| format!("{:032x}", rand::random::<u128>())),
        send_at: body.send_at,
    };
    let accepted = match state.delivery.accept_direct(&signed.app.id, direct).await {
        Ok(ids) => ids,
        Err(e) => {
            if let Some(k) = &key {
                let _ = state.store.release_idempotency(&app, k).await;
            }
            return Err(store_err(e));
        }
    };
    let answer = json!({ "deliveries": accepted });
    if let Some(k) = &key {
        // The notifications are accepted whatever happens here; a retry that finds the key
        // unfinished takes it over after a minute and accepts nothing twice.
        if let Err(e) = state.store.finish_idempotent(&app, k, 202, &answer).await {
            tracing::warn!(error = %e, "the answer to an Idempotency-Key was not kept");
        }
    }
    Ok(HttpResponse::Accepted().json(answer))
}

pub async fn of_user(
    req: HttpRequest,
    path: web::Path<(String, String)>,
    payload: web::Payload,
    state: web::Data<ServerState>,
) -> Result<HttpResponse, ApiError> {
    let (app_id, user) = path.into_inner();
    let signed = verify(&state, &req, &app_id, payload).await?;
    let limit = super::limit(signed.param("limit"), 50, 500);
    let notes = state
        .store
        .notifications_of(signed.app.id.as_str(), &user, limit)
        .await
        .map_err(store_err)?;
    Ok(HttpResponse::Ok().json(json!({ "notifications": notes })))
}
