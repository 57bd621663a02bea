//! The operator API under `/admin`, behind a bearer token (compared in constant time). It is
//! off unless `BELLHOP_ADMIN_TOKEN` is set.

use actix_web::{web, HttpRequest, HttpResponse};
use serde::Deserialize;
use serde_json::json;
use subtle::ConstantTimeEq;

use crate::http::ApiError;
use crate::state::ServerState;
use crate::webhooks::WEBHOOK_EXPIRY;

fn authorize(state: &ServerState, req: &HttpRequest) -> Result<(), ApiError> {
    let Some(token) = state.config.admin_token.as_deref() else {
        return Err(ApiError::NotFound(
            "the admin API is off: set BELLHOP_ADMIN_TOKEN".into(),
        ));
    };
    let given = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    if bool::from(given.as_bytes().ct_eq(token.as_bytes())) {
        Ok(())
    } else {
        Err(ApiError::Unauthorized(
            "missing or wrong admin bearer token".into(),
        ))
    }
}

fn store_error(e: crate::store::StoreError) -> ApiError {
    tracing::warn!(error = %e, "admin query failed");
    ApiError::Unavailable("the store is unavailable".into())
}

#[derive(Deserialize)]
pub struct ListQuery {
    state: Option<String>,
    limit: Option<i64>,
}

pub async fn list_jobs(
    req: HttpRequest,
    q: web::Query<ListQuery>,
    state: web::Data<ServerState>,
) -> Result<HttpResponse, ApiError> {
    authorize(&state, &req)?;
    if let Some(s) = q.state.as_deref() {
        if !["pending", "running", "done", "dead"].contains(&s) {
            return Err(ApiError::BadRequest(
                "state must be pending, running, done or dead".into(),
            ));
        }
    }
    let limit = q.limit.unwrap_or(100).clamp(1, 1000);
    let jobs = state
        .store
        .jobs(q.state.as_deref(), limit)
        .await
        .map_err(store_error)?;
    let counts = state.store.job_counts().await.map_err(store_error)?;
    let counts: serde_json::Map<String, serde_json::Value> =
        counts.into_iter().map(|(k, v)| (k, v.into())).collect();
    Ok(HttpResponse::Ok().json(json!({"jobs": jobs, "counts": counts})))
}

pub async fn show_job(
    req: HttpRequest,
    id: web::Path<i64>,
    state: web::Data<ServerState>,
) -> Result<HttpResponse, ApiError> {
    authorize(&state, &req)?;
    match state.store.job(*id).await.map_err(store_error)? {
        Some((job, attempts)) => {
            Ok(HttpResponse::Ok().json(json!({"job": job, "attempts": attempts})))
        }
        None => Err(ApiError::NotFound(format!("no job {id}"))),
    }
}

pub async fn retry_job(
    req: HttpRequest,
    id: web::Path<i64>,
    state: web::Data<ServerState>,
) -> Result<HttpResponse, ApiError> {
    authorize(&state, &req)?;
    if state
        .store
        .retry_dead(*id, WEBHOOK_EXPIRY)
        .await
        .map_err(store_error)?
    {
        Ok(HttpResponse::Ok().json(json!({"retried": *id})))
    } else {
        Err(ApiError::Conflict(format!(
            "job {id} is not dead (or does not exist)"
        )))
    }
}

pub async fn drop_job(
    req: HttpRequest,
    id: web::Path<i64>,
    state: web::Data<ServerState>,
) -> Result<HttpResponse, ApiError> {
    authorize(&state, &req)?;
    if state.store.drop_dead(*id).await.map_err(store_error)? {
        Ok(HttpResponse::Ok().json(json!({"dropped": *id})))
    } else {
        Err(ApiError::Conflict(format!(
            "job {id} is not dead (or does not exist)"
        )))
    }
}

/// Apps with their limits and webhook targets; secrets are never returned.
pub async fn list_apps(
    req: HttpRequest,
    state: web::Data<ServerState>,
) -> Result<HttpResponse, ApiError> {
    authorize(&state, &req)?;
    let mut apps: Vec<_> = state
        .apps
        .all()
        .iter()
        .map(|a| {
            json!({
                "id": a.id.as_str(), "key": a.key.as_str(), "enabled": a.enabled,
                "client_events": a.client_events,
                "connections": state.apps.connection_count(&a.id),
                "webhooks": a.webhooks.iter().map(|w| json!({"url": w.url, "event_types": w.event_types})).collect::<Vec<_>>(),
            })
        })
        .collect();
    apps.sort_by(|a, b| a["id"].as_str().cmp(&b["id"].as_str()));
    Ok(HttpResponse::Ok().json(json!({ "apps": apps })))
}
