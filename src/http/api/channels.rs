//! `GET /apps/{id}/channels`, `/channels/{name}` and `/channels/{name}/users`. Alone, they are
//! answered from counters the channel actors keep current, without waiting on them (but for
//! the member list, which only the presence channel's actor holds); clustered, from the
//! cluster ledger in Redis, in one or two round trips, never by asking every node.

use std::collections::{BTreeMap, HashMap};

use actix_web::{web, HttpRequest, HttpResponse};
use bellhop_protocol::ChannelName;
use serde_json::{json, Map, Value};

use super::signed::verify;
use super::Info;
use crate::channel::{ChannelKey, ChannelStats};
use crate::cluster::LedgerError;
use crate::http::ApiError;
use crate::state::ServerState;

fn parse_channel(name: &str) -> Result<ChannelName, ApiError> {
    ChannelName::parse(name)
        .map_err(|e| ApiError::BadRequest(format!("invalid channel {name:?}: {e}")))
}

fn unavailable(e: LedgerError) -> ApiError {
    ApiError::Unavailable(e.to_string())
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
    let listed: Vec<(ChannelName, ChannelStats)> = match &state.ledger {
        None => state.channels.list(&signed.app.id, prefix),
        Some(ledger) => {
            let occupied: Vec<(ChannelName, u64)> = ledger
                .channels(&signed.app.id)
                .await
                .map_err(unavailable)?
                .into_iter()
                .filter(|(c, _)| c.as_str().starts_with(prefix))
                .collect();
            let presence: Vec<&ChannelName> = occupied
                .iter()
                .map(|(c, _)| c)
                .filter(|c| info.user_count && c.is_presence())
                .collect();
            let users = ledger
                .user_counts(&signed.app.id, &presence)
                .await
                .map_err(unavailable)?;
            let users: HashMap<&ChannelName, u64> = presence.into_iter().zip(users).collect();
            occupied
                .iter()
                .map(|(c, n)| {
                    let stats = ChannelStats {
                        subscription_count: *n,
                        user_count: users.get(c).copied().unwrap_or(0),
                    };
                    (c.clone(), stats)
                })
                .collect()
        }
    };
    let channels: BTreeMap<String, Value> = listed
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
    let stats = match &state.ledger {
        None => state.channels.stats(&ChannelKey {
            app: signed.app.id.clone(),
            name,
        }),
        Some(ledger) => {
            let (subscription_count, user_count) = ledger
                .channel(&signed.app.id, &name)
                .await
                .map_err(unavailable)?;
            (subscription_count > 0).then_some(ChannelStats {
                subscription_count,
                user_count,
            })
        }
    };
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
    let mut ids: Vec<String> = match &state.ledger {
        None => state
            .channels
            .members(&ChannelKey {
                app: signed.app.id.clone(),
                name,
            })
            .await
            .into_iter()
            .map(|u| u.as_str().to_owned())
            .collect(),
        Some(ledger) => ledger
            .members(&signed.app.id, &name)
            .await
            .map_err(unavailable)?,
    };
    ids.sort();
    let users: Vec<Value> = ids.iter().map(|id| json!({ "id": id })).collect();
    Ok(HttpResponse::Ok().json(json!({ "users": users })))
}
