//! Prometheus metrics, named as soketi and sockudo users know them (with a `bellhop_`
//! prefix and an `app_id` label). Hot paths hold pre-resolved handles (`AppMetrics`) so a
//! fan-out costs two atomic adds, not a label lookup.

use std::sync::LazyLock;

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

pub struct Metrics {
    pub registry: Registry,
    pub connected: IntGaugeVec,
    pub new_connections: IntCounterVec,
    pub disconnections: IntCounterVec,
    pub ws_messages_received: IntCounterVec,
    pub ws_messages_sent: IntCounterVec,
    pub socket_received_bytes: IntCounterVec,
    pub socket_transmitted_bytes: IntCounterVec,
    pub http_calls: IntCounterVec,
    pub http_duration: HistogramVec,
    pub channels: IntGaugeVec,
    pub presence_members: IntGaugeVec,
    pub jobs: IntGaugeVec,
    pub job_attempts: IntCounterVec,
    pub provider_token_refreshes: IntCounterVec,
    /// Sends held back by a provider's rate limit or its cluster-wide pause.
    pub provider_throttled: IntCounterVec,
}

fn counter(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
    r.register(Box::new(c.clone())).expect("unique metric");
    c
}

fn gauge(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let g = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric");
    r.register(Box::new(g.clone())).expect("unique metric");
    g
}

/// The process's metrics. Built once; every name is a constant, so construction cannot fail.
pub static METRICS: LazyLock<Metrics> = LazyLock::new(|| {
    let r = Registry::new();
    let app = &["app_id"];
    let http_duration = HistogramVec::new(
        HistogramOpts::new(
            "bellhop_http_request_duration_seconds",
            "HTTP API request latency",
        )
        .buckets(vec![
            0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
        ]),
        &["endpoint"],
    )
    .expect("valid metric");
    r.register(Box::new(http_duration.clone()))
        .expect("unique metric");
    Metrics {
        connected: gauge(&r, "bellhop_connected", "Open WebSocket connections", app),
        new_connections: counter(
            &r,
            "bellhop_new_connections_total",
            "WebSocket connections opened",
            app,
        ),
        disconnections: counter(
            &r,
            "bellhop_new_disconnections_total",
            "WebSocket connections closed",
            app,
        ),
        ws_messages_received: counter(
            &r,
            "bellhop_ws_messages_received_total",
            "Frames received from clients",
            app,
        ),
        ws_messages_sent: counter(
            &r,
            "bellhop_ws_messages_sent_total",
            "Frames queued to clients",
            app,
        ),
        socket_received_bytes: counter(
            &r,
            "bellhop_socket_received_bytes",
            "Bytes received from clients",
            app,
        ),
        socket_transmitted_bytes: counter(
            &r,
            "bellhop_socket_transmitted_bytes",
            "Bytes queued to clients",
            app,
        ),
        http_calls: counter(
            &r,
            "bellhop_http_calls_received_total",
            "HTTP API calls",
            &["app_id", "endpoint", "status"],
        ),
        http_duration,
        channels: gauge(&r, "bellhop_channels", "Live channels on this node", app),
        presence_members: gauge(
            &r,
            "bellhop_presence_members",
            "Presence members on this node",
            app,
        ),
        jobs: gauge(
            &r,
            "bellhop_jobs",
            "Jobs in the durable queue by state",
            &["state"],
        ),
        job_attempts: counter(
            &r,
            "bellhop_job_attempts_total",
            "Job attempts by kind and outcome",
            &["kind", "outcome"],
        ),
        provider_token_refreshes: counter(
            &r,
            "bellhop_provider_token_refreshes_total",
            "Access tokens fetched from a provider by this node",
            &["provider"],
        ),
        provider_throttled: counter(
            &r,
            "bellhop_provider_throttled_total",
            "Sends held back by a provider rate limit or pause",
            &["provider", "why"],
        ),
        registry: r,
    }
});

/// One app's handles for the hot paths.
#[derive(Clone)]
pub struct AppMetrics {
    pub messages_sent: IntCounter,
    pub bytes_sent: IntCounter,
    pub messages_received: IntCounter,
    pub bytes_received: IntCounter,
    pub channels: IntGauge,
    pub presence_members: IntGauge,
}

impl AppMetrics {
    pub fn for_app(app_id: &str) -> Self {
        let m = &*METRICS;
        Self {
            messages_sent: m.ws_messages_sent.with_label_values(&[app_id]),
            bytes_sent: m.socket_transmitted_bytes.with_label_values(&[app_id]),
            messages_received: m.ws_messages_received.with_label_values(&[app_id]),
            bytes_received: m.socket_received_bytes.with_label_values(&[app_id]),
            channels: m.channels.with_label_values(&[app_id]),
            presence_members: m.presence_members.with_label_values(&[app_id]),
        }
    }
}

/// The text exposition of every metric.
pub fn render() -> String {
    let mut buf = Vec::new();
    // unwrap: the text encoder only fails on a writer error, and a Vec never fails.
    TextEncoder::new()
        .encode(&METRICS.registry.gather(), &mut buf)
        .unwrap();
    String::from_utf8_lossy(&buf).into_owned()
}
