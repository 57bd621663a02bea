//! The in-app inbox: a page of items (newest first, optionally unread only) with the unread
//! count, mark one or all read, delete one. Changes are pushed to the user's sockets
//! (`bellhop:inbox`) so every open bell stays current. Two doors share this code: the signed
//! backend API (`/apps/{id}/users/{user}/inbox…`), and the client API (`/client/{key}/inbox…`)
//! a browser calls with a token the backend signed for its user (`client_inbox`).

use actix_web::{web, HttpRequest, HttpResponse};
use bellhop_protocol::AppId;
use serde::Deserialize;
use serde_json::{json, Value};

use super::signed::verify;
use crate::http::ApiError;
use crate::state::ServerState;

fn store_err(e: crate::store::StoreError) -> ApiError {
    super::store_unavailable(e, "")
}

/// A page of the inbox; `param` reads the query (`unread`, `before`, `limit`).
pub(crate) async fn page<'a>(
    state: &ServerState,
    app: &str,
    user: &str,
    param: impl Fn(&str) -> Option<&'a str>,
) -> Result<Value, ApiError> {
    let limit = super::limit(param("limit"), 20, 200);
    let before = match param("before") {
        None | Some("") => None,
        Some(b) => Some(
            b.parse::<i64>()
                .map_err(|_| ApiError::BadRequest("before is an item id".into()))?,
        ),
    };
    let unread = matches!(param("unread"), Some("true" | "1"));
    let items = state
        .store
        .inbox(app, user, before, unread, limit)
        .await
        .map_err(store_err)?;
    let unread_count = state
        .store
        .unread_count(app, user)
        .await
        .map_err(store_err)?;
    let next = (items.len() as i64 == limit)
        .then(|| items.last().map(|i| i.id))
        .flatten();
    Ok(json!({ "items": items, "unread_count": unread_count, "next_before": next }))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ReadBody {
    /// One item; without it, every item.
    #[serde(default)]
    id: Option<i64>,
}

/// Marks `{"id": N}` (or, with `{}`, every item) read.
pub(crate) async fn read(
    state: &ServerState,
    app: &AppId,
    user: &str,
    body: &[u8],
) -> Result<Value, ApiError> {
    let body: ReadBody = if body.is_empty() {
        ReadBody::default()
    } else {
        serde_json::from_slice(body)
            .map_err(|e| ApiError::BadRequest(format!("invalid body: {e}")))?
    };
    let id = app.as_str();
    let changed = state
        .store
        .mark_read(id, user, body.id)
        .await
        .map_err(store_err)?;
    let unread = state
        .store
        .unread_count(id, user)
        .await
        .map_err(store_err)?;
    if changed > 0 {
        state.delivery.push_unread(app.as_str(), user, unread).await;
    }
    Ok(json!({ "changed": changed, "unread_count": unread }))
}

pub(crate) async fn remove(
    state: &ServerState,
    app: &AppId,
    user: &str,
    item: i64,
) -> Result<Value, ApiError> {
    let id = app.as_str();
    if !state
        .store
        .delete_inbox_item(id, user, item)
        .await
        .map_err(store_err)?
    {
        return Err(ApiError::NotFound("no such inbox item".into()));
    }
    let unread = state
        .store
        .unread_count(id, user)
        .await
        .map_err(store_err)?;
    state.delivery.push_unread(app.as_str(), user, unread).await;
    Ok(json!({ "unread_count": unread }))
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
    let page = page(&state, signed.app.id.as_str(), &user, |k| signed.param(k)).await?;
    Ok(HttpResponse::Ok().json(page))
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
    let answer = read(&state, &signed.app.id, &user, &signed.body).await?;
    Ok(HttpResponse::Ok().json(answer))
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
    let answer = remove(&state, &signed.app.id, &user, item).await?;
    Ok(HttpResponse::Ok().json(answer))
}
