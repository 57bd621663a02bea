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
use crate::cluster::Envelope;
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

/// Hands every (event, channel) frame to the other nodes first, then to local subscribers.
/// If the bus refuses, the request fails before any local delivery; channels already handed
/// to the bus in this request may then see the event again when the backend retries.
async fn publish(state: &ServerState, app: &App, event: &Event) -> Result<(), ApiError> {
    let frames: Vec<(ChannelName, ByteString)> = event
        .channels
        .iter()
        .map(|c| {
            let frame = server::channel_event(&event.name, c.as_str(), &event.data);
            (c.clone(), ByteString::from(frame))
        })
        .collect();
    for (channel, frame) in frames.iter().filter(|_| !state.bus.alone()) {
        let envelope = Envelope {
            origin: state.node_id.clone(),
            app: app.id.clone(),
            channel: channel.clone(),
            except: event.except,
            cacheable: true,
            frame: frame.clone(),
        };
        state.bus.publish(envelope).await.map_err(|e| {
            tracing::warn!(app_id = %app.id, error = %e, "trigger refused: the cluster bus is down");
            ApiError::Unavailable(e.to_string())
        })?;
    }
    for (channel, frame) in frames {
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
                except: event.except,
                from: None,
            },
        );
    }
    Ok(())
}

/// The `info` attributes of one channel, as Pusher reports them after a trigger.
fn channel_info(state: &ServerState, app: &App, channel: &ChannelName, info: Info) -> Value {
    let stats = state.channels.stats(&ChannelKey {
        app: app.id.clone(),
        name: channel.clone(),
    });
    let mut attrs = Map::new();
    if info.subscription_count {
        attrs.insert(
            "subscription_count".into(),
            stats.map_or(0, |s| s.subscription_count).into(),
        );
    }
    if info.user_count && channel.is_presence() {
        attrs.insert(
            "user_count".into(),
            stats.map_or(0, |s| s.user_count).into(),
        );
    }
    Value::Object(attrs)
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
    publish(&state, &app, &event).await?;
    if !event.info.any() {
        return Ok(HttpResponse::Ok().json(json!({})));
    }
    let channels: BTreeMap<&str, Value> = event
        .channels
        .iter()
        .map(|c| (c.as_str(), channel_info(&state, &app, c, event.info)))
        .collect();
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
    for event in &events {
        publish(&state, &app, event).await?;
    }
    if !events.iter().any(|e| e.info.any()) {
        return Ok(HttpResponse::Ok().json(json!({})));
    }
    let batch: Vec<Value> = events
        .iter()
        .map(|e| channel_info(&state, &app, &e.channels[0], e.info))
        .collect();
    Ok(HttpResponse::Ok().json(json!({ "batch": batch })))
}
