//! Delivery status reports from the providers, written to the delivery the provider
//! acknowledged: Twilio's status callbacks (SMS and WhatsApp, `X-Twilio-Signature` checked
//! against the URL the app configured) and Meta's WhatsApp webhooks (the subscription check,
//! then `X-Hub-Signature-256` over the raw body). A forged report changes nothing.

use actix_web::{web, HttpRequest, HttpResponse};
use bellhop_protocol::signing::{verify_hub_signature, verify_twilio};
use serde_json::Value;
use subtle::ConstantTimeEq;

use crate::apps::App;
use crate::delivery::provider::{sms, whatsapp};
use crate::http::ApiError;
use crate::state::ServerState;

fn app(state: &ServerState, id: &str) -> Result<std::sync::Arc<App>, ApiError> {
    state
        .apps
        .by_id(id)
        .ok_or_else(|| ApiError::NotFound(format!("Unknown app {id:?}")))
}

fn header<'a>(req: &'a HttpRequest, name: &str) -> &'a str {
    req.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

async fn record(state: &ServerState, app: &App, id: &str, status: &str) -> Result<(), ApiError> {
    let found = state
        .store
        .record_provider_status(app.id.as_str(), id, status)
        .await
        .map_err(|e| ApiError::Unavailable(e.to_string()))?;
    if !found {
        tracing::debug!(app_id = %app.id, provider_id = id, "status report for an unknown message");
    }
    Ok(())
}

/// `POST /callbacks/{app_id}/twilio`: `MessageSid`, `MessageStatus` (and `ErrorCode`).
pub async fn twilio(
    req: HttpRequest,
    path: web::Path<String>,
    body: web::Bytes,
    state: web::Data<ServerState>,
) -> Result<HttpResponse, ApiError> {
    let app = app(&state, &path)?;
    // The body is form-encoded, which parses like a query string.
    let params: Vec<(String, String)> = std::str::from_utf8(&body)
        .ok()
        .and_then(|b| web::Query::<Vec<(String, String)>>::from_query(b).ok())
        .map(|q| q.into_inner())
        .ok_or_else(|| ApiError::BadRequest("the body is not form-encoded".into()))?;
    let given = header(&req, "x-twilio-signature");
    // The URL Twilio signed is the one the app told it to call (this node may sit behind a
    // proxy); either Twilio account of the app may have sent it.
    let accounts: Vec<(&str, &str)> = [
        app.config.sms.as_ref().and_then(|s: &sms::SmsConfig| {
            Some((
                s.auth_token.as_ref()?.expose(),
                s.status_callback_url.as_deref()?,
            ))
        }),
        app.config
            .whatsapp
            .as_ref()
            .and_then(|w: &whatsapp::WhatsappConfig| {
                Some((
                    w.auth_token.as_ref()?.expose(),
                    w.status_callback_url.as_deref()?,
                ))
            }),
    ]
    .into_iter()
    .flatten()
    .collect();
    if !accounts
        .iter()
        .any(|(token, url)| verify_twilio(token, url, &params, given))
    {
        return Err(ApiError::Unauthorized("bad X-Twilio-Signature".into()));
    }
    let get = |k: &str| params.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    let (Some(sid), Some(status)) = (get("MessageSid"), get("MessageStatus")) else {
        return Err(ApiError::BadRequest(
            "MessageSid and MessageStatus are required".into(),
        ));
    };
    let status = match get("ErrorCode").filter(|c| !c.is_empty()) {
        Some(code) => format!("{status} (error {code})"),
        None => status.to_owned(),
    };
    record(&state, &app, sid, &status).await?;
    Ok(HttpResponse::Ok()
        .content_type("text/xml")
        .body("<Response/>"))
}

/// `GET /callbacks/{app_id}/meta`: Meta's subscription check echoes `hub.challenge` when the
/// verify token matches.
pub async fn meta_verify(
    req: HttpRequest,
    path: web::Path<String>,
    state: web::Data<ServerState>,
) -> Result<HttpResponse, ApiError> {
    let app = app(&state, &path)?;
    let q = web::Query::<Vec<(String, String)>>::from_query(req.query_string())
        .map(|q| q.into_inner())
        .unwrap_or_default();
    let get = |k: &str| q.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    let want = app
        .config
        .whatsapp
        .as_ref()
        .and_then(|w| w.verify_token.as_ref().map(|t| t.expose()));
    match (
        get("hub.mode"),
        get("hub.verify_token"),
        get("hub.challenge"),
        want,
    ) {
        (Some("subscribe"), Some(given), Some(challenge), Some(want))
            if bool::from(given.as_bytes().ct_eq(want.as_bytes())) =>
        {
            Ok(HttpResponse::Ok()
                .content_type("text/plain")
                .body(challenge.to_owned()))
        }
        _ => Err(ApiError::Forbidden("verification failed")),
    }
}

/// `POST /callbacks/{app_id}/meta`: `entry[].changes[].value.statuses[]` with `id` (the
/// `wamid`) and `status` (sent, delivered, read, failed with `errors`).
pub async fn meta(
    req: HttpRequest,
    path: web::Path<String>,
    body: web::Bytes,
    state: web::Data<ServerState>,
) -> Result<HttpResponse, ApiError> {
    let app = app(&state, &path)?;
    let secret = app
        .config
        .whatsapp
        .as_ref()
        .and_then(|w| w.app_secret.as_ref().map(|s| s.expose()))
        .ok_or(ApiError::Forbidden("this app has no Meta app_secret"))?;
    if !verify_hub_signature(secret, &body, header(&req, "x-hub-signature-256")) {
        return Err(ApiError::Unauthorized("bad X-Hub-Signature-256".into()));
    }
    let v: Value = serde_json::from_slice(&body)
        .map_err(|e| ApiError::BadRequest(format!("invalid JSON: {e}")))?;
    for entry in v["entry"].as_array().into_iter().flatten() {
        for change in entry["changes"].as_array().into_iter().flatten() {
            for s in change["value"]["statuses"].as_array().into_iter().flatten() {
                let (Some(id), Some(status)) = (s["id"].as_str(), s["status"].as_str()) else {
                    continue;
                };
                let status = match s["errors"][0]["code"].as_i64() {
                    Some(code) => format!(
                        "{status} (error {code}: {})",
                        s["errors"][0]["title"].as_str().unwrap_or("")
                    ),
                    None => status.to_owned(),
                };
                record(&state, &app, id, &status).await?;
            }
        }
    }
    Ok(HttpResponse::Ok().finish())
}
