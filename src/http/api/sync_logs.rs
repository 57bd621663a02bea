//! `GET /apps/{id}/zoho/sync_logs[?reference=B-1&limit=50]`: every Zoho operation the app's
//! deliveries made (operation, entity, remote id, status, error), newest first, signed like
//! the rest of the API.

use actix_web::{web, HttpRequest, HttpResponse};
use serde_json::json;

use super::signed::verify;
use crate::http::ApiError;
use crate::state::ServerState;

pub async fn list(
    req: HttpRequest,
    path: web::Path<String>,
    payload: web::Payload,
    state: web::Data<ServerState>,
) -> Result<HttpResponse, ApiError> {
    let signed = verify(&state, &req, &path.into_inner(), payload).await?;
    let limit = super::limit(signed.param("limit"), 50, 500);
    let logs = state
        .store
        .sync_logs(signed.app.id.as_str(), signed.param("reference"), limit)
        .await
        .map_err(|e| super::store_unavailable(e, ""))?;
    Ok(HttpResponse::Ok().json(json!({ "sync_logs": logs })))
}
