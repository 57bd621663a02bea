//! Web Push subscriptions, registered per user like FCM tokens: by the backend
//! (`POST /apps/{id}/users/{user}/web-push`, signed) or straight from the browser with the
//! inbox token (`POST /client/{key}/web-push`, and `DELETE` to unsubscribe); the body is the
//! browser's `PushSubscription.toJSON()`. `GET /client/{key}/web-push/key` answers the VAPID
//! public key a browser subscribes with.

use actix_web::{web, HttpRequest, HttpResponse};
use serde::Deserialize;
use serde_json::{json, Value};

use super::client_inbox::{answer, app_for, user_of};
use super::signed::verify;
use super::store_unavailable;
use crate::delivery::provider::web_push::Keys;
use crate::delivery::records::WEB_PUSH;
use crate::http::ApiError;
use crate::state::ServerState;

/// `PushSubscription.toJSON()`.
#[derive(Deserialize)]
struct Subscription {
    endpoint: String,
    keys: Keys,
    #[serde(default, rename = "expirationTime")]
    _expiration_time: Option<Value>,
}

/// The subscription checked: an endpoint a push service would give (https; plain http only
/// on loopback, where tests and local push services run) and keys a browser would make.
fn parse(body: &[u8]) -> Result<Subscription, ApiError> {
    let s: Subscription = serde_json::from_slice(body)
        .map_err(|e| ApiError::BadRequest(format!("invalid push subscription: {e}")))?;
    let url = reqwest::Url::parse(&s.endpoint)
        .map_err(|_| ApiError::BadRequest("endpoint is not a URL".into()))?;
    let loopback = matches!(url.host_str(), Some("localhost" | "127.0.0.1" | "[::1]"));
    let secure = url.scheme() == "https" || (url.scheme() == "http" && loopback);
    if !secure || s.endpoint.len() > 2048 {
        return Err(ApiError::BadRequest(
            "endpoint must be an https URL of at most 2048 characters".into(),
        ));
    }
    if !s.keys.usable() {
        return Err(ApiError::BadRequest(
            "keys.p256dh must be a P-256 public key and keys.auth 16 bytes, base64url".into(),
        ));
    }
    Ok(s)
}

async fn register(
    state: &ServerState,
    app: &str,
    user: &str,
    body: &[u8],
) -> Result<Value, ApiError> {
    let s = parse(body)?;
    let keys = serde_json::to_string(&s.keys).unwrap_or_default();
    state
        .store
        .register_device(app, user, &s.endpoint, WEB_PUSH, Some(&keys))
        .await
        .map_err(|e| store_unavailable(e, "; the subscription was not registered"))?;
    Ok(json!({"endpoint": s.endpoint, "user_id": user, "active": true}))
}

/// `POST /apps/{id}/users/{user}/web-push` (signed).
pub async fn add(
    req: HttpRequest,
    path: web::Path<(String, String)>,
    payload: web::Payload,
    state: web::Data<ServerState>,
) -> Result<HttpResponse, ApiError> {
    let (app_id, user) = path.into_inner();
    let signed = verify(&state, &req, &app_id, payload).await?;
    super::directory::check_user_id(&user)?;
    let v = register(&state, signed.app.id.as_str(), &user, &signed.body).await?;
    Ok(HttpResponse::Ok().json(v))
}

/// `POST /client/{key}/web-push` (inbox token): the browser subscribes its user.
pub async fn client_add(
    req: HttpRequest,
    key: web::Path<String>,
    body: web::Bytes,
    state: web::Data<ServerState>,
) -> Result<HttpResponse, ApiError> {
    let app = app_for(&state, &key)?;
    let result = match user_of(&app, &req) {
        Ok(user) => register(&state, app.id.as_str(), &user, &body).await,
        Err(e) => Err(e),
    };
    Ok(answer(&app, &req, result))
}

#[derive(Deserialize)]
struct Unsubscribe {
    endpoint: String,
}

/// `DELETE /client/{key}/web-push` (inbox token): `{"endpoint"}` of the user's subscription.
pub async fn client_remove(
    req: HttpRequest,
    key: web::Path<String>,
    body: web::Bytes,
    state: web::Data<ServerState>,
) -> Result<HttpResponse, ApiError> {
    let app = app_for(&state, &key)?;
    let remove = async {
        let user = user_of(&app, &req)?;
        let u: Unsubscribe = serde_json::from_slice(&body)
            .map_err(|e| ApiError::BadRequest(format!("expected {{\"endpoint\"}}: {e}")))?;
        let mine = state
            .store
            .devices(app.id.as_str(), &user)
            .await
            .map_err(|e| store_unavailable(e, ""))?
            .iter()
            .any(|d| d.token == u.endpoint && d.platform == WEB_PUSH);
        if !mine {
            return Err(ApiError::NotFound(
                "no such subscription of this user".into(),
            ));
        }
        state
            .store
            .delete_device(app.id.as_str(), &u.endpoint)
            .await
            .map_err(|e| store_unavailable(e, ""))?;
        Ok(json!({}))
    };
    let result = remove.await;
    Ok(answer(&app, &req, result))
}

/// `GET /client/{key}/web-push/key`: the VAPID public key (`applicationServerKey`).
pub async fn client_key(
    req: HttpRequest,
    key: web::Path<String>,
    state: web::Data<ServerState>,
) -> Result<HttpResponse, ApiError> {
    let app = app_for(&state, &key)?;
    let result = state
        .delivery
        .setups
        .of(app.id.as_str())
        .and_then(|s| s.vapid_public_key.clone())
        .map(|k| json!({ "public_key": k }))
        .ok_or_else(|| ApiError::NotFound("the app has no web push configured".into()));
    Ok(answer(&app, &req, result))
}
