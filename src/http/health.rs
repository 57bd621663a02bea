//! Liveness (the process answers) and readiness (it can do its work: the store answers).

use actix_web::{web, HttpResponse};
use serde_json::json;

use crate::state::ServerState;

pub async fn live() -> HttpResponse {
    HttpResponse::Ok().json(json!({"status": "ok"}))
}

pub async fn ready(state: web::Data<ServerState>) -> HttpResponse {
    if state
        .shutting_down
        .load(std::sync::atomic::Ordering::Relaxed)
    {
        return HttpResponse::ServiceUnavailable().json(json!({"status": "shutting down"}));
    }
    if !state.bus.healthy() || state.ledger.as_ref().is_some_and(|l| !l.healthy()) {
        return HttpResponse::ServiceUnavailable()
            .json(json!({"status": "not ready", "bus": "unreachable"}));
    }
    if state.store.ping().await {
        HttpResponse::Ok().json(json!({"status": "ready"}))
    } else {
        HttpResponse::ServiceUnavailable()
            .json(json!({"status": "not ready", "store": "unreachable"}))
    }
}
