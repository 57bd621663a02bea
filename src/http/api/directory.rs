//! The directory API, signed like the Pusher API: the people an app notifies (email, phone,
//! WhatsApp number, locale, time zone, display name, preferences, quiet hours) and their
//! devices (FCM tokens). A token registered again moves to the new user.

use actix_web::{web, HttpRequest, HttpResponse};
use serde::Deserialize;
use serde_json::json;

use super::signed::verify;
use crate::delivery::preferences::{time_zone, validate_preferences};
use crate::delivery::records::Profile;
use crate::http::ApiError;
use crate::state::ServerState;

fn store_err(e: crate::store::StoreError) -> ApiError {
    super::store_unavailable(e, "")
}

pub(super) fn check_user_id(user: &str) -> Result<(), ApiError> {
    if user.is_empty() || user.len() > 256 {
        return Err(ApiError::BadRequest(
            "user ids are 1 to 256 characters".into(),
        ));
    }
    Ok(())
}

/// `PUT /apps/{id}/users/{user_id}`: creates or replaces the user's profile.
pub async fn put_user(
    req: HttpRequest,
    path: web::Path<(String, String)>,
    payload: web::Payload,
    state: web::Data<ServerState>,
) -> Result<HttpResponse, ApiError> {
    let (app_id, user) = path.into_inner();
    let signed = verify(&state, &req, &app_id, payload).await?;
    check_user_id(&user)?;
    let mut profile: Profile = serde_json::from_slice(&signed.body)
        .map_err(|e| ApiError::BadRequest(format!("invalid user: {e}")))?;
    if !profile.user_id.is_empty() && profile.user_id != user {
        return Err(ApiError::BadRequest(
            "user_id in the body differs from the path".into(),
        ));
    }
    profile.user_id = user;
    if profile.preferences.is_null() {
        profile.preferences = json!({});
    }
    validate_preferences(&profile.preferences).map_err(|e| ApiError::BadRequest(e.to_string()))?;
    time_zone(profile.time_zone.as_deref()).map_err(|e| ApiError::BadRequest(e.to_string()))?;
    if let Some(q) = &profile.quiet_hours {
        q.validate()
            .map_err(|e| ApiError::BadRequest(e.to_string()))?;
    }
    state
        .store
        .upsert_profile(signed.app.id.as_str(), &profile)
        .await
        .map_err(store_err)?;
    Ok(HttpResponse::Ok().json(profile))
}

/// `GET /apps/{id}/users/{user_id}`: the profile and its devices.
pub async fn get_user(
    req: HttpRequest,
    path: web::Path<(String, String)>,
    payload: web::Payload,
    state: web::Data<ServerState>,
) -> Result<HttpResponse, ApiError> {
    let (app_id, user) = path.into_inner();
    let signed = verify(&state, &req, &app_id, payload).await?;
    let app = signed.app.id.as_str();
    let profile = state.store.profile(app, &user).await.map_err(store_err)?;
    let devices = state.store.devices(app, &user).await.map_err(store_err)?;
    // Devices registered before (or without) a profile still make a user to look at.
    let profile = match profile {
        Some(p) => p,
        None if !devices.is_empty() => Profile {
            user_id: user.clone(),
            ..Profile::default()
        },
        None => return Err(ApiError::NotFound(format!("no user {user:?}"))),
    };
    let mut body = serde_json::to_value(profile).unwrap_or_default();
    body["devices"] = json!(devices);
    Ok(HttpResponse::Ok().json(body))
}

/// `GET /apps/{id}/users?after=ID&limit=N`: a page of users by id.
pub async fn list_users(
    req: HttpRequest,
    path: web::Path<String>,
    payload: web::Payload,
    state: web::Data<ServerState>,
) -> Result<HttpResponse, ApiError> {
    let signed = verify(&state, &req, &path, payload).await?;
    let limit = super::limit(signed.param("limit"), 100, 1000);
    let after = signed.param("after").unwrap_or("");
    let users = state
        .store
        .profiles(signed.app.id.as_str(), after, limit)
        .await
        .map_err(store_err)?;
    Ok(HttpResponse::Ok().json(json!({ "users": users })))
}

/// `DELETE /apps/{id}/users/{user_id}`: the profile and its devices.
pub async fn delete_user(
    req: HttpRequest,
    path: web::Path<(String, String)>,
    payload: web::Payload,
    state: web::Data<ServerState>,
) -> Result<HttpResponse, ApiError> {
    let (app_id, user) = path.into_inner();
    let signed = verify(&state, &req, &app_id, payload).await?;
    if !state
        .store
        .delete_profile(signed.app.id.as_str(), &user)
        .await
        .map_err(store_err)?
    {
        return Err(ApiError::NotFound(format!("no user {user:?}")));
    }
    Ok(HttpResponse::Ok().json(json!({})))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DeviceBody {
    token: String,
    platform: String,
}

/// `POST /apps/{id}/users/{user_id}/devices`: registers an FCM token for the user.
pub async fn add_device(
    req: HttpRequest,
    path: web::Path<(String, String)>,
    payload: web::Payload,
    state: web::Data<ServerState>,
) -> Result<HttpResponse, ApiError> {
    let (app_id, user) = path.into_inner();
    let signed = verify(&state, &req, &app_id, payload).await?;
    check_user_id(&user)?;
    let d: DeviceBody = serde_json::from_slice(&signed.body)
        .map_err(|e| ApiError::BadRequest(format!("invalid device: {e}")))?;
    if d.token.is_empty() || d.token.len() > 4096 {
        return Err(ApiError::BadRequest("token is 1 to 4096 characters".into()));
    }
    if !matches!(d.platform.as_str(), "android" | "ios" | "web") {
        return Err(ApiError::BadRequest(
            "platform is android, ios or web".into(),
        ));
    }
    state
        .store
        .register_device(signed.app.id.as_str(), &user, &d.token, &d.platform, None)
        .await
        .map_err(store_err)?;
    Ok(HttpResponse::Ok()
        .json(json!({"token": d.token, "user_id": user, "platform": d.platform, "active": true})))
}

/// `DELETE /apps/{id}/devices/{token}`.
pub async fn delete_device(
    req: HttpRequest,
    path: web::Path<(String, String)>,
    payload: web::Payload,
    state: web::Data<ServerState>,
) -> Result<HttpResponse, ApiError> {
    let (app_id, token) = path.into_inner();
    let signed = verify(&state, &req, &app_id, payload).await?;
    if !state
        .store
        .delete_device(signed.app.id.as_str(), &token)
        .await
        .map_err(store_err)?
    {
        return Err(ApiError::NotFound("no such device".into()));
    }
    Ok(HttpResponse::Ok().json(json!({})))
}
