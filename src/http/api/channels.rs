//! `GET /apps/{id}/channels`, `/channels/{name}` and `/channels/{name}/users`: answered from
//! counters the channel actors keep current, without waiting on them (but for the member
//! list, which only the presence channel's actor holds).

use std::collections::BTreeMap;

use actix_web::{web, HttpRequest, HttpResponse};
use bellhop_protocol::ChannelName;
use serde_json::{json, Map, Value};

use super::signed::verify;
use super::Info;
use crate::channel::ChannelKey;
use crate::http::ApiError;
use crate::state::ServerState;

fn parse_channel(name: &str) -> Result<ChannelName, ApiError> {
    ChannelName::parse(name)
        .map_err(|e| ApiError::BadRequest(format!("invalid channel {name:?}: {e}")))
}

pub async fn list(
    req: HttpRequest,
    path: web::Path<String>,
    payload: web::Payload,
    state: web::Data<ServerState>,
) -> Result<HttpResponse, ApiError> {
    let signed = verify(&state, &req, &path, payload).await?;
    let prefix = signed.param("filter_by_prefix").unwrap_or("");
    let info = Info::parse(signed.param("info"));
    if info.user_count && !prefix.starts_with("presence-") {
        return Err(ApiError::BadRequest(
            "user_count may only be requested for presence channels - please supply filter_by_prefix beginning with presence-".into(),
        ));
    }
    let channels: BTreeMap<String, Value> = state
        .channels
        .list(&signed.app.id, prefix)
        .into_iter()
        .map(|(name, stats)| {
            let mut attrs = Map::new();
            if info.user_count {
                attrs.insert("user_count".into(), stats.user_count.into());
            }
            if info.subscription_count {
                attrs.insert("subscription_count".into(), stats.subscription_count.into());
            }
            (name.to_string(), Value::Object(attrs))
        })
        .collect();
    Ok(HttpResponse::Ok().json(json!({ "channels": channels })))
}

pub async fn show(
    req: HttpRequest,
    path: web::Path<(String, String)>,
    payload: web::Payload,
    state: web::Data<ServerState>,
) -> Result<HttpResponse, ApiError> {
    let (app_id, channel) = path.into_inner();
    let signed = verify(&state, &req, &app_id, payload).await?;
    let name = parse_channel(&channel)?;
    let info = Info::parse(signed.param("info"));
    if info.user_count && !name.is_presence() {
        return Err(ApiError::BadRequest(
            "Cannot retrieve the user count unless the channel is a presence channel".into(),
        ));
    }
    let stats = state.channels.stats(&ChannelKey {
        app: signed.app.id.clone(),
        name,
    });
    let mut body = Map::new();
    body.insert("occupied".into(), stats.is_some().into());
    if info.user_count {
        body.insert(
            "user_count".into(),
            stats.map_or(0, |s| s.user_count).into(),
        );
    }
    if info.subscription_count {
        body.insert(
            "subscription_count".into(),
            stats.map_or(0, |s| s.subscription_count).into(),
        );
    }
    Ok(HttpResponse::Ok().json(Value::Object(body)))
}

pub async fn users(
    req: HttpRequest,
    path: web::Path<(String, String)>,
    payload: web::Payload,
    state: web::Data<ServerState>,
) -> Result<HttpResponse, ApiError> {
    let (app_id, channel) = path.into_inner();
    let signed = verify(&state, &req, &app_id, payload).await?;
    let name = parse_channel(&channel)?;
    if !name.is_presence() {
        return Err(ApiError::BadRequest(
            "users are only available for presence channels".into(),
        ));
    }
    let mut ids = state
        .channels
        .members(&ChannelKey {
            app: signed.app.id.clone(),
            name,
        })
        .await;
    ids.sort();
    let users: Vec<Value> = ids.iter().map(|id| json!({ "id": id.as_str() })).collect();
    Ok(HttpResponse::Ok().json(json!({ "users": users })))
}
