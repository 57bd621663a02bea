//! The inbox for browsers and apps: `/client/{key}/inbox` (list), `/inbox/read`, and
//! `/inbox/{item}` (DELETE), authorised by `Authorization: Bearer <token>`, a JWT (HS256) the
//! app's backend signs with the app secret for one user: `{"sub": user id, "aud":
//! "bellhop:inbox", "exp": …}`. Any JWT library makes one; no Pusher secret reaches the client.
//! CORS follows the app's `allowed_origins`.

use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};
use serde::Deserialize;

use super::inbox;
use crate::apps::App;
use crate::http::ApiError;
use crate::state::ServerState;

pub const AUDIENCE: &str = "bellhop:inbox";
/// Tokens longer-lived than this are refused: a leaked token must expire.
const MAX_TTL_SECS: i64 = 7 * 24 * 3600;

#[derive(Deserialize)]
struct Claims {
    sub: String,
    exp: i64,
}

pub(super) fn app_for(state: &ServerState, key: &str) -> Result<std::sync::Arc<App>, ApiError> {
    let app = state
        .apps
        .by_key(key)
        .ok_or_else(|| ApiError::NotFound(format!("Unknown app key {key:?}")))?;
    if !app.enabled {
        return Err(ApiError::Forbidden("Application disabled"));
    }
    Ok(app)
}

/// The user the bearer token names, if one of the app's secrets signed it and it is current.
pub(super) fn user_of(app: &App, req: &HttpRequest) -> Result<String, ApiError> {
    let token = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or_else(|| {
            ApiError::Unauthorized("an inbox token is required (Authorization: Bearer)".into())
        })?;
    let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::HS256);
    v.set_audience(&[AUDIENCE]);
    v.set_required_spec_claims(&["exp", "sub", "aud"]);
    // A little leeway for clock skew between the backend that signs and this node.
    v.leeway = 5;
    for secret in &app.secrets {
        let Ok(key) = jsonwebtoken::DecodingKey::from_secret(secret.expose().as_bytes()) else {
            continue;
        };
        if let Ok(data) = jsonwebtoken::decode::<Claims>(token, &key, &v) {
            let now = crate::store::now_ms() / 1000;
            if data.claims.exp - now > MAX_TTL_SECS {
                return Err(ApiError::Unauthorized(
                    "inbox tokens may live at most 7 days".into(),
                ));
            }
            if data.claims.sub.is_empty() || data.claims.sub.len() > 256 {
                return Err(ApiError::Unauthorized(
                    "the token names no valid user".into(),
                ));
            }
            return Ok(data.claims.sub);
        }
    }
    Err(ApiError::Unauthorized(
        "the inbox token is invalid or expired".into(),
    ))
}

/// CORS headers for the request's origin, when the app allows it.
fn cors(app: &App, req: &HttpRequest, mut resp: HttpResponse) -> HttpResponse {
    let origin = req
        .headers()
        .get(header::ORIGIN)
        .and_then(|v| v.to_str().ok());
    if let Some(origin) = origin.filter(|o| app.allows_origin(Some(o))) {
        let h = resp.headers_mut();
        if let Ok(v) = header::HeaderValue::from_str(origin) {
            h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, v);
            h.insert(header::VARY, header::HeaderValue::from_static("Origin"));
        }
    }
    resp
}

pub(super) fn answer(
    app: &App,
    req: &HttpRequest,
    result: Result<serde_json::Value, ApiError>,
) -> HttpResponse {
    let resp = match result {
        Ok(v) => HttpResponse::Ok().json(v),
        Err(e) => actix_web::ResponseError::error_response(&e),
    };
    cors(app, req, resp)
}

pub async fn list(
    req: HttpRequest,
    key: web::Path<String>,
    state: web::Data<ServerState>,
) -> Result<HttpResponse, ApiError> {
    let app = app_for(&state, &key)?;
    let query = web::Query::<Vec<(String, String)>>::from_query(req.query_string())
        .map_err(|_| ApiError::BadRequest("query string is not valid URL encoding".into()))?
        .into_inner();
    let param = |k: &str| query.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    let result = match user_of(&app, &req) {
        Ok(user) => inbox::page(&state, app.id.as_str(), &user, param).await,
        Err(e) => Err(e),
    };
    Ok(answer(&app, &req, result))
}

pub async fn read(
    req: HttpRequest,
    key: web::Path<String>,
    body: web::Bytes,
    state: web::Data<ServerState>,
) -> Result<HttpResponse, ApiError> {
    let app = app_for(&state, &key)?;
    let result = match user_of(&app, &req) {
        Ok(user) => inbox::read(&state, &app.id, &user, &body).await,
        Err(e) => Err(e),
    };
    Ok(answer(&app, &req, result))
}

pub async fn delete(
    req: HttpRequest,
    path: web::Path<(String, i64)>,
    state: web::Data<ServerState>,
) -> Result<HttpResponse, ApiError> {
    let (key, item) = path.into_inner();
    let app = app_for(&state, &key)?;
    let result = match user_of(&app, &req) {
        Ok(user) => inbox::remove(&state, &app.id, &user, item).await,
        Err(e) => Err(e),
    };
    Ok(answer(&app, &req, result))
}

/// The CORS preflight of the client routes.
pub async fn preflight(
    req: HttpRequest,
    state: web::Data<ServerState>,
) -> Result<HttpResponse, ApiError> {
    let key = req.match_info().get("key").unwrap_or_default().to_owned();
    let app = app_for(&state, &key)?;
    let resp = HttpResponse::NoContent()
        .insert_header((header::ACCESS_CONTROL_ALLOW_METHODS, "GET, POST, DELETE"))
        .insert_header((
            header::ACCESS_CONTROL_ALLOW_HEADERS,
            "Authorization, Content-Type",
        ))
        .insert_header((header::ACCESS_CONTROL_MAX_AGE, "600"))
        .finish();
    Ok(cors(&app, &req, resp))
}
