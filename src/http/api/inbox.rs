//! The in-app inbox through the signed backend API: a page of items (newest first,
//! optionally unread only) with the unread count, mark one or all read, delete one. Changes
//! are pushed to the user's sockets (`bellhop:inbox`) so every open bell stays current.

use actix_web::{web, HttpRequest, HttpResponse};
use serde::Deserialize;
use serde_json::json;

use super::signed::verify;
use crate::http::ApiError;
use crate::state::ServerState;

fn store_err(e: crate::store::StoreError) -> ApiError {
    tracing::warn!(error = %e, "inbox store unavailable");
    ApiError::Unavailable("the store is unavailable".into())
}

/// `GET /apps/{id}/users/{user_id}/inbox?unread=true&before=ITEM&limit=N`.
pub async fn list(
    req: HttpRequest,
    path: web::Path<(String, String)>,
    payload: web::Payload,
    state: web::Data<ServerState>,
) -> Result<HttpResponse, ApiError> {
    let (app_id, user) = path.into_inner();
    let signed = verify(&state, &req, &app_id, payload).await?;
    let limit = signed
        .param("limit")
        .and_then(|l| l.parse::<i64>().ok())
        .unwrap_or(20)
        .clamp(1, 200);
    let before = match signed.param("before") {
        None | Some("") => None,
        Some(b) => Some(
            b.parse::<i64>()
                .map_err(|_| ApiError::BadRequest("before is an item id".into()))?,
        ),
    };
    let unread = matches!(signed.param("unread"), Some("true" | "1"));
    let app = signed.app.id.as_str();
    let items = state
        .store
        .inbox(app, &user, before, unread, limit)
        .await
        .map_err(store_err)?;
    let unread_count = state
        .store
        .unread_count(app, &user)
        .await
        .map_err(store_err)?;
    let next = (items.len() as i64 == limit)
        .then(|| items.last().map(|i| i.id))
        .flatten();
    Ok(HttpResponse::Ok()
        .json(json!({ "items": items, "unread_count": unread_count, "next_before": next })))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ReadBody {
    /// One item; without it, every item.
    #[serde(default)]
    id: Option<i64>,
}

/// `POST /apps/{id}/users/{user_id}/inbox/read` with `{"id": N}` or `{}` for all.
pub async fn mark_read(
    req: HttpRequest,
    path: web::Path<(String, String)>,
    payload: web::Payload,
    state: web::Data<ServerState>,
) -> Result<HttpResponse, ApiError> {
    let (app_id, user) = path.into_inner();
    let signed = verify(&state, &req, &app_id, payload).await?;
    let body: ReadBody = if signed.body.is_empty() {
        ReadBody::default()
    } else {
        serde_json::from_slice(&signed.body)
            .map_err(|e| ApiError::BadRequest(format!("invalid body: {e}")))?
    };
    let app = signed.app.id.as_str();
    let changed = state
        .store
        .mark_read(app, &user, body.id)
        .await
        .map_err(store_err)?;
    let unread = state
        .store
        .unread_count(app, &user)
        .await
        .map_err(store_err)?;
    if changed > 0 {
        state
            .delivery
            .push_unread(&signed.app.id, &user, unread)
            .await;
    }
    Ok(HttpResponse::Ok().json(json!({ "changed": changed, "unread_count": unread })))
}

/// `DELETE /apps/{id}/users/{user_id}/inbox/{item}`.
pub async fn delete(
    req: HttpRequest,
    path: web::Path<(String, String, i64)>,
    payload: web::Payload,
    state: web::Data<ServerState>,
) -> Result<HttpResponse, ApiError> {
    let (app_id, user, item) = path.into_inner();
    let signed = verify(&state, &req, &app_id, payload).await?;
    let app = signed.app.id.as_str();
    if !state
        .store
        .delete_inbox_item(app, &user, item)
        .await
        .map_err(store_err)?
    {
        return Err(ApiError::NotFound("no such inbox item".into()));
    }
    let unread = state
        .store
        .unread_count(app, &user)
        .await
        .map_err(store_err)?;
    state
        .delivery
        .push_unread(&signed.app.id, &user, unread)
        .await;
    Ok(HttpResponse::Ok().json(json!({ "unread_count": unread })))
}
