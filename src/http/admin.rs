//! The operator API under `/admin`, behind a bearer token (compared in constant time). It is
//! off unless `BELLHOP_ADMIN_TOKEN` is set.

use actix_web::{web, HttpRequest, HttpResponse};
use serde::Deserialize;
use serde_json::json;
use subtle::ConstantTimeEq;

use crate::apps::App;
use crate::apps::StoredApp;
use crate::config::AppConfig;
use crate::connection::CloseRequest;
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
    if !given.is_empty() && bool::from(given.as_bytes().ct_eq(token.as_bytes())) {
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

/// `GET /admin/apps/{id}/users/{user}/notifications`: the delivery audit of one recipient.
pub async fn user_notifications(
    req: HttpRequest,
    path: web::Path<(String, String)>,
    state: web::Data<ServerState>,
) -> Result<HttpResponse, ApiError> {
    authorize(&state, &req)?;
    let (app, user) = path.into_inner();
    if state.apps.by_id(&app).is_none() {
        return Err(ApiError::NotFound(format!("no app {app}")));
    }
    let notes = state
        .store
        .notifications_of(&app, &user, 100)
        .await
        .map_err(store_error)?;
    Ok(HttpResponse::Ok().json(json!({ "notifications": notes })))
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

fn new_secret() -> String {
    format!("{:032x}", rand::random::<u128>())
}

/// An app as the admin API shows it: the app secret is never serialized (see AppConfig), and
/// provider credentials kept with the settings are masked.
fn app_json(app: &AppConfig) -> serde_json::Value {
    let mut v = serde_json::to_value(app).unwrap_or_default();
    const MASK: &str = "********";
    if let Some(p) = v.pointer_mut("/email/password").filter(|p| !p.is_null()) {
        *p = MASK.into();
    }
    for path in [
        "/sms/auth_token",
        "/sms/api_key",
        "/whatsapp/access_token",
        "/whatsapp/auth_token",
        "/whatsapp/app_secret",
        "/whatsapp/verify_token",
        "/zoho/client_secret",
        "/zoho/refresh_token",
        "/web_push/vapid_private_key",
    ] {
        if let Some(p) = v.pointer_mut(path).filter(|p| !p.is_null()) {
            *p = MASK.into();
        }
    }
    if let Some(hooks) = v
        .pointer_mut("/event_webhooks")
        .and_then(|h| h.as_array_mut())
    {
        for h in hooks {
            h["secret"] = MASK.into();
        }
    }
    v
}

/// Validates, stores and serves `stored`; the directory change is what makes it live.
async fn save(state: &ServerState, stored: StoredApp) -> Result<App, ApiError> {
    let app = stored
        .to_app()
        .map_err(|e| ApiError::BadRequest(e.to_string()))?;
    if let Some(other) = state.apps.by_key(app.key.as_str()) {
        if other.id != app.id {
            return Err(ApiError::Conflict(format!(
                "key {} is used by app {}",
                app.key, other.id
            )));
        }
    }
    state
        .store
        .save_app(&stored.to_row())
        .await
        .map_err(store_error)?;
    state.apps.upsert(app.clone());
    Ok(app)
}

/// The stored form of a live app (config-file apps become stored on their first change).
async fn current(state: &ServerState, id: &str) -> Result<StoredApp, ApiError> {
    if let Some(row) = state.store.stored_app(id).await.map_err(store_error)? {
        return StoredApp::from_row(&row)
            .map_err(|e| ApiError::Unavailable(format!("stored app {id} is unreadable: {e}")));
    }
    let app = state
        .apps
        .by_id(id)
        .ok_or_else(|| ApiError::NotFound(format!("no app {id}")))?;
    let mut config = app.config.clone();
    config.secret = app.signing_secret().expose().to_owned();
    Ok(StoredApp {
        config,
        previous_secret: None,
    })
}

/// `POST /admin/apps`: the body is an `[[apps]]` entry as JSON; a missing secret is
/// generated. The secret is returned once, here.
pub async fn create_app(
    req: HttpRequest,
    body: web::Json<serde_json::Value>,
    state: web::Data<ServerState>,
) -> Result<HttpResponse, ApiError> {
    authorize(&state, &req)?;
    let mut v = body.into_inner();
    if v.get("secret").is_none() {
        v["secret"] = new_secret().into();
    }
    let mut config: AppConfig =
        serde_json::from_value(v.clone()).map_err(|e| ApiError::BadRequest(e.to_string()))?;
    config.secret = v["secret"].as_str().unwrap_or_default().to_owned();
    if state.apps.by_id(&config.id).is_some() {
        return Err(ApiError::Conflict(format!("app {} exists", config.id)));
    }
    let secret = config.secret.clone();
    save(
        &state,
        StoredApp {
            config: config.clone(),
            previous_secret: None,
        },
    )
    .await?;
    tracing::info!(app_id = %config.id, "app created");
    Ok(HttpResponse::Created().json(json!({"app": app_json(&config), "secret": secret})))
}

/// `PATCH /admin/apps/{id}`: changes the given settings (not the id or the secret).
pub async fn update_app(
    req: HttpRequest,
    id: web::Path<String>,
    body: web::Json<serde_json::Value>,
    state: web::Data<ServerState>,
) -> Result<HttpResponse, ApiError> {
    authorize(&state, &req)?;
    let patch = body.into_inner();
    let Some(fields) = patch.as_object() else {
        return Err(ApiError::BadRequest(
            "the body must be a JSON object".into(),
        ));
    };
    if fields.contains_key("id") || fields.contains_key("secret") {
        return Err(ApiError::BadRequest(
            "id and secret cannot be patched; rotate the secret with /rotate-secret".into(),
        ));
    }
    let mut stored = current(&state, &id).await?;
    let mut v = app_json(&stored.config);
    for (k, val) in fields {
        v[k] = val.clone();
    }
    v["secret"] = stored.config.secret.clone().into();
    let mut config: AppConfig =
        serde_json::from_value(v).map_err(|e| ApiError::BadRequest(e.to_string()))?;
    config.secret = stored.config.secret.clone();
    stored.config = config;
    let disabled = !stored.config.enabled;
    let app = save(&state, stored).await?;
    if disabled {
        let closed = state.connections.close_app(
            &app.id,
            CloseRequest::Pusher(
                bellhop_protocol::ErrorCode::AppDisabled,
                "Application disabled".into(),
            ),
        );
        tracing::info!(app_id = %app.id, closed, "app disabled");
    }
    Ok(HttpResponse::Ok().json(json!({"app": app_json(&app.config)})))
}

/// `POST /admin/apps/{id}/rotate-secret`: a new secret signs from now on; the old one keeps
/// verifying until `finish-rotation`, so backends can switch without downtime.
pub async fn rotate_secret(
    req: HttpRequest,
    id: web::Path<String>,
    state: web::Data<ServerState>,
) -> Result<HttpResponse, ApiError> {
    authorize(&state, &req)?;
    let mut stored = current(&state, &id).await?;
    let secret = new_secret();
    stored.previous_secret = Some(std::mem::replace(&mut stored.config.secret, secret.clone()));
    save(&state, stored).await?;
    tracing::info!(app_id = %id, "secret rotation started");
    Ok(HttpResponse::Ok().json(json!({"secret": secret, "previous_valid": true})))
}

/// `POST /admin/apps/{id}/finish-rotation`: the previous secret stops verifying.
pub async fn finish_rotation(
    req: HttpRequest,
    id: web::Path<String>,
    state: web::Data<ServerState>,
) -> Result<HttpResponse, ApiError> {
    authorize(&state, &req)?;
    let mut stored = current(&state, &id).await?;
    stored.previous_secret = None;
    save(&state, stored).await?;
    tracing::info!(app_id = %id, "secret rotation finished");
    Ok(HttpResponse::Ok().json(json!({"previous_valid": false})))
}
