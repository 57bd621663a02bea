//! `POST /apps/{id}/events` and `POST /apps/{id}/batch_events`: validate every event first,
//! then encode each (event, channel) frame once and hand it to the channel.

use std::collections::BTreeMap;

use actix_web::{web, HttpRequest, HttpResponse};
use bellhop_protocol::limits::MAX_EVENT_NAME_LEN;
use bellhop_protocol::{server, ChannelName, SocketId};
use bytestring::ByteString;
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{json, Map, Value};

use super::signed::{verify, Signed};
use super::Info;
use crate::apps::App;
use crate::channel::messages::Publish;
use crate::channel::ChannelKey;
use crate::cluster::{Body, Envelope};
use crate::delivery::Triggered;
use crate::http::ApiError;
use crate::state::ServerState;

#[derive(Deserialize)]
struct EventBody {
    name: String,
    #[serde(default)]
    data: Option<Box<RawValue>>,
    #[serde(default)]
    channels: Option<Vec<String>>,
    #[serde(default)]
    channel: Option<String>,
    #[serde(default)]
    socket_id: Option<String>,
    #[serde(default)]
    info: Option<String>,
}

#[derive(Deserialize)]
struct BatchBody {
    batch: Vec<EventBody>,
}

/// An event that passed validation and is ready to publish.
struct Event {
    name: String,
    data: String,
    channels: Vec<ChannelName>,
    except: Option<SocketId>,
    info: Info,
}

/// The API's `data` is a string; other JSON is passed on as its text, as soketi does.
fn data_text(raw: Option<&RawValue>) -> Result<String, ApiError> {
    match raw {
        None => Ok(String::new()),
        Some(r) if r.get().starts_with('"') => serde_json::from_str(r.get())
            .map_err(|_| ApiError::BadRequest("data is not a valid JSON string".into())),
        Some(r) => Ok(r.get().to_owned()),
    }
}

fn validate(app: &App, body: EventBody, max_channels: usize) -> Result<Event, ApiError> {
    let name_len = body.name.chars().count();
    if name_len == 0 || name_len > MAX_EVENT_NAME_LEN {
        return Err(ApiError::BadRequest(format!(
            "event name must be 1 to {MAX_EVENT_NAME_LEN} characters"
        )));
    }
    if body.name.starts_with("pusher:") || body.name.starts_with("pusher_internal:") {
        return Err(ApiError::BadRequest(
            "event names starting with pusher: or pusher_internal: are reserved".into(),
        ));
    }
    let names = match (body.channels, body.channel) {
        (Some(list), None) => list,
        (None, Some(one)) => vec![one],
        (Some(_), Some(_)) => {
            return Err(ApiError::BadRequest(
                "give either channel or channels, not both".into(),
            ))
        }
        (None, None) => return Err(ApiError::BadRequest("missing channels".into())),
    };
    if names.is_empty() {
        return Err(ApiError::BadRequest("channels must not be empty".into()));
    }
    if names.len() > max_channels {
        return Err(ApiError::BadRequest(format!(
            "too many channels: {} given, at most {max_channels} allowed",
            names.len()
        )));
    }
    let channels = names
        .iter()
        .map(|n| {
            ChannelName::parse(n)
                .map_err(|e| ApiError::BadRequest(format!("invalid channel {n:?}: {e}")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let except = match body.socket_id.as_deref() {
        None | Some("") => None,
        Some(s) => Some(
            SocketId::parse(s)
                .map_err(|_| ApiError::BadRequest(format!("invalid socket_id {s:?}")))?,
        ),
    };
    let data = data_text(body.data.as_deref())?;
    if data.len() > app.limits.max_event_bytes {
        return Err(ApiError::PayloadTooLarge(format!(
            "The data content of this event exceeds the allowed maximum ({} bytes)",
            app.limits.max_event_bytes
        )));
    }
    Ok(Event {
        name: body.name,
        data,
        channels,
        except,
        info: Info::parse(body.info.as_deref()),
    })
}

/// Takes the request's messages (event × channel) from the app's per-second budget, counted
/// across the cluster when clustered. Refuses the whole request when it does not fit.
async fn take_budget(state: &ServerState, app: &App, messages: u64) -> Result<(), ApiError> {
    let Some(per_second) = app.limits.max_events_per_second else {
        return Ok(());
    };
    let allowed = match &state.ledger {
        Some(ledger) => ledger
            .take_events(&app.id, messages, per_second)
            .await
            .map_err(|e| ApiError::Unavailable(e.to_string()))?,
        None => {
            let second = crate::cluster::now_ms() / 1000;
            state
                .event_budget
                .take(&app.id, second, messages, per_second)
        }
    };
    if allowed {
        Ok(())
    } else {
        Err(ApiError::TooManyRequests(format!(
            "this app may publish at most {per_second} messages (event x channel) per second"
        )))
    }
}

/// Accepts the notifications the events make, then hands every (event, channel) frame to the
/// other nodes, then to local subscribers.
/// If the bus refuses, the request fails before any local delivery, so a 200 always means
/// every node got the event; when the backend retries, no node has seen it yet.
async fn publish(state: &ServerState, app: &App, events: &[Event]) -> Result<(), ApiError> {
    let frames: Vec<(ChannelName, ByteString, Option<SocketId>)> = events
        .iter()
        .flat_map(|event| {
            event.channels.iter().map(|c| {
                let frame = server::channel_event(&event.name, c.as_str(), &event.data);
                (c.clone(), ByteString::from(frame), event.except)
            })
        })
        .collect();
    take_budget(state, app, frames.len() as u64).await?;
    // Notifications the rules make of these events are accepted (committed) first: a 200
    // means they will be delivered, and a store failure publishes nothing.
    let reacts = state
        .delivery
        .setups
        .of(app.id.as_str())
        .is_some_and(|s| s.reacts_to_events());
    if reacts {
        let triggered: Vec<Triggered<'_>> = events
            .iter()
            .flat_map(|e| {
                e.channels.iter().map(|c| Triggered {
                    channel: c,
                    name: &e.name,
                    data: &e.data,
                })
            })
            .collect();
        state
            .delivery
            .accept_events(&app.id, &triggered)
            .await
            .map_err(|e| {
                tracing::warn!(app_id = %app.id, error = %e, "trigger refused: notifications could not be accepted");
                ApiError::Unavailable("the store is unavailable; nothing was published".into())
            })?;
    }
    if !state.bus.alone() {
        let envelopes = frames
            .iter()
            .map(|(channel, frame, except)| Envelope {
                origin: state.node_id.clone(),
                app: app.id.clone(),
                body: Body::Event {
                    channel: channel.clone(),
                    except: *except,
                    cacheable: true,
                    member_seq: None,
                    frame: frame.clone(),
                },
            })
            .collect();
        state.bus.publish_many(envelopes).await.map_err(|e| {
            tracing::warn!(app_id = %app.id, error = %e, "trigger refused: the cluster bus is down");
            ApiError::Unavailable(e.to_string())
        })?;
    }
    for (channel, frame, except) in frames {
        let key = ChannelKey {
            app: app.id.clone(),
            name: channel.clone(),
        };
        if channel.is_cache() {
            state.channels.remember(&key, frame.clone(), app.cache_ttl);
        }
        state.channels.publish(
            &key,
            Publish {
                frame,
                except,
                from: None,
                member_seq: None,
            },
        );
    }
    Ok(())
}

/// The `info` attributes of one channel, as Pusher reports them after a trigger: from the
/// cluster ledger when clustered, else from this node's channel counters.
async fn channel_info(
    state: &ServerState,
    app: &App,
    channel: &ChannelName,
    info: Info,
) -> Result<Value, ApiError> {
    let (subscriptions, users) = match &state.ledger {
        Some(ledger) => ledger
            .channel(&app.id, channel)
            .await
            .map_err(|e| ApiError::Unavailable(e.to_string()))?,
        None => state
            .channels
            .stats(&ChannelKey {
                app: app.id.clone(),
                name: channel.clone(),
            })
            .map_or((0, 0), |s| (s.subscription_count, s.user_count)),
    };
    let mut attrs = Map::new();
    if info.subscription_count {
        attrs.insert("subscription_count".into(), subscriptions.into());
    }
    if info.user_count && channel.is_presence() {
        attrs.insert("user_count".into(), users.into());
    }
    Ok(Value::Object(attrs))
}

fn parse_json<'a, T: Deserialize<'a>>(body: &'a [u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError::BadRequest(format!("invalid JSON body: {e}")))
}

pub async fn trigger(
    req: HttpRequest,
    path: web::Path<String>,
    payload: web::Payload,
    state: web::Data<ServerState>,
) -> Result<HttpResponse, ApiError> {
    let Signed { app, body, .. } = verify(&state, &req, &path, payload).await?;
    let body: EventBody = parse_json(&body)?;
    let event = validate(&app, body, app.limits.max_channels_per_trigger)?;
    publish(&state, &app, std::slice::from_ref(&event)).await?;
    if !event.info.any() {
        return Ok(HttpResponse::Ok().json(json!({})));
    }
    let mut channels: BTreeMap<&str, Value> = BTreeMap::new();
    for c in &event.channels {
        channels.insert(c.as_str(), channel_info(&state, &app, c, event.info).await?);
    }
    Ok(HttpResponse::Ok().json(json!({ "channels": channels })))
}

pub async fn trigger_batch(
    req: HttpRequest,
    path: web::Path<String>,
    payload: web::Payload,
    state: web::Data<ServerState>,
) -> Result<HttpResponse, ApiError> {
    let Signed { app, body, .. } = verify(&state, &req, &path, payload).await?;
    let body: BatchBody = parse_json(&body)?;
    let max = app.limits.max_batch_size;
    if body.batch.len() > max {
        return Err(ApiError::BadRequest(format!(
            "batch has {} events, at most {max} allowed",
            body.batch.len()
        )));
    }
    let mut events = Vec::with_capacity(body.batch.len());
    for (i, item) in body.batch.into_iter().enumerate() {
        if item.channels.is_some() {
            return Err(ApiError::BadRequest(format!(
                "batch[{i}]: each batch event takes one channel"
            )));
        }
        let event = validate(&app, item, 1).map_err(|e| match e {
            ApiError::BadRequest(m) => ApiError::BadRequest(format!("batch[{i}]: {m}")),
            ApiError::PayloadTooLarge(m) => ApiError::PayloadTooLarge(format!("batch[{i}]: {m}")),
            other => other,
        })?;
        events.push(event);
    }
    publish(&state, &app, &events).await?;
    if !events.iter().any(|e| e.info.any()) {
        return Ok(HttpResponse::Ok().json(json!({})));
    }
    let mut batch: Vec<Value> = Vec::with_capacity(events.len());
    for e in &events {
        batch.push(channel_info(&state, &app, &e.channels[0], e.info).await?);
    }
    Ok(HttpResponse::Ok().json(json!({ "batch": batch })))
}
