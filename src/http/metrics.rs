//! The Prometheus listener (`/metrics` on its own port) and the HTTP API call metrics.

use std::time::Instant;

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::middleware::Next;
use actix_web::{web, HttpResponse};

use crate::metrics::{render, METRICS};
use crate::state::ServerState;

/// `GET /metrics` on the metrics port. Queue depths are read from the store at scrape time.
pub async fn scrape(state: web::Data<ServerState>) -> HttpResponse {
    if let Ok(counts) = state.store.job_counts().await {
        for s in ["pending", "running", "done", "dead"] {
            let n = counts.iter().find(|(k, _)| k == s).map_or(0, |(_, n)| *n);
            METRICS.jobs.with_label_values(&[s]).set(n);
        }
    }
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(render())
}

/// Counts and times every `/apps/...` call by endpoint, app and status.
pub async fn observe_api(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let api = req.path().starts_with("/apps/");
    // Only known apps get their own series: unauthenticated callers must not be able to
    // create label values (and memory) at will.
    let named = req.path().split('/').nth(2).unwrap_or("");
    let app_id = req
        .app_data::<web::Data<ServerState>>()
        .and_then(|s| s.apps.by_id(named))
        .map_or_else(|| "unknown".to_owned(), |a| a.id.to_string());
    let start = Instant::now();
    let res = next.call(req).await?;
    if api {
        let endpoint = res
            .request()
            .match_pattern()
            .unwrap_or_else(|| "unmatched".into());
        let status = res.status().as_u16().to_string();
        METRICS
            .http_calls
            .with_label_values(&[&app_id, &endpoint, &status])
            .inc();
        METRICS
            .http_duration
            .with_label_values(&[&endpoint])
            .observe(start.elapsed().as_secs_f64());
    }
    Ok(res)
}
