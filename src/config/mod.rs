//! Configuration: serde structs that refuse unknown keys, loaded in layers (TOML file, then
//! `BELLHOP_*` variables through a [`Source`]), then validated into the typed [`crate::apps::App`]
//! values the server runs with.

mod source;

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

pub use source::{EnvSource, MapSource, Source};

/// Every environment variable bellhop reads, with what it sets. `--help` prints this table.
pub const ENV_VARS: &[(&str, &str)] = &[
    ("BELLHOP_CONFIG", "path of the TOML config file"),
    ("BELLHOP_HOST", "address to listen on (default 127.0.0.1)"),
    (
        "BELLHOP_PORT",
        "port to listen on (default 6001; 0 picks a free one)",
    ),
    (
        "BELLHOP_ACTIVITY_TIMEOUT",
        "seconds of silence before the server pings a client (default 120)",
    ),
    (
        "BELLHOP_PONG_TIMEOUT",
        "seconds to wait for a pong before closing with 4201 (default 30)",
    ),
    (
        "BELLHOP_WORKERS",
        "HTTP/WebSocket worker threads (default: one per core)",
    ),
    (
        "BELLHOP_ALLOW_DEFAULT_SECRET",
        "true to allow the default app secret on a non-loopback address",
    ),
    ("BELLHOP_APP_ID", "default app: numeric id (default 1)"),
    ("BELLHOP_APP_KEY", "default app: key (default app-key)"),
    (
        "BELLHOP_APP_SECRET",
        "default app: secret (default app-secret)",
    ),
    (
        "BELLHOP_APP_CLIENT_EVENTS",
        "default app: true to allow client events (default false)",
    ),
    (
        "BELLHOP_APP_MAX_CONNECTIONS",
        "default app: connection limit (default unlimited)",
    ),
    (
        "BELLHOP_APP_MAX_EVENTS_PER_SECOND",
        "default app: messages (event x channel) the HTTP API accepts per second, cluster-wide (default unlimited)",
    ),
    (
        "BELLHOP_LOG",
        "log filter, e.g. info or bellhop=debug (default info)",
    ),
    ("BELLHOP_LOG_FORMAT", "text or json (default text)"),
];

pub const DEFAULT_APP_ID: &str = "1";
pub const DEFAULT_APP_KEY: &str = "app-key";
pub const DEFAULT_APP_SECRET: &str = "app-secret";

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub server: ServerConfig,
    pub apps: Vec<AppConfig>,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    pub host: String,
    pub port: u16,
    /// Seconds of client silence before the server sends `pusher:ping`; also advertised to
    /// clients in `connection_established`.
    pub activity_timeout_secs: u64,
    /// Seconds to wait for `pusher:pong` before closing with 4201.
    pub pong_timeout_secs: u64,
    /// Frames a connection may have queued before it is closed as too slow (4100).
    pub outbox_capacity: usize,
    /// Largest WebSocket frame accepted from a client, in bytes.
    pub max_frame_bytes: usize,
    /// HTTP/WebSocket worker threads; 0 means one per core.
    pub workers: usize,
    /// Threads that run channel actors; 0 means one per core.
    pub channel_threads: usize,
    /// Allow the published default secret on a non-loopback address.
    pub allow_default_secret: bool,
    pub log_format: LogFormat,
    /// `sqlite://…` or `postgres://…`; default: `bellhop.db` in `data_dir`.
    pub database_url: Option<String>,
    pub data_dir: String,
    /// Bearer token for `/admin`; the admin API is off without one.
    pub admin_token: Option<String>,
    pub node_id: Option<String>,
    /// How long `channel_vacated` / `member_removed` webhooks wait for a cancelling rejoin.
    pub webhook_delay_ms: u64,
    /// How long webhook events gather before a batch is enqueued.
    pub webhook_batch_ms: u64,
    /// Per-request timeout for webhook deliveries.
    pub webhook_timeout_ms: u64,
    /// How long a worker holds a claimed job; a crashed worker's job is retried after it.
    pub job_lease_secs: u64,
    /// Jobs (webhooks, deliveries) one node runs at once.
    pub job_concurrency: usize,
    /// Redis for a cluster of nodes; without it this node runs alone on the in-memory bus.
    pub redis_url: Option<String>,
    pub redis_prefix: String,
    /// How often a clustered node beats, and how long a silent node has before the others
    /// take its sockets (presence members, counts) away.
    pub node_beat_ms: u64,
    pub node_dead_after_ms: u64,
    /// TTL of every cluster key, so nothing outlives a vanished cluster; each node refreshes
    /// its keys (and re-sends its whole share) every `cluster_resync_secs`.
    pub cluster_key_ttl_secs: u64,
    pub cluster_resync_secs: u64,
    /// PEM certificate chain and key: when both are set, the listener speaks TLS.
    pub tls_cert: Option<String>,
    pub tls_key: Option<String>,
    /// Where Prometheus scrapes `/metrics` (a separate listener, loopback by default).
    pub metrics_host: String,
    pub metrics_port: u16,
    /// On SIGTERM/SIGINT: the time allowed for telling clients to reconnect elsewhere.
    pub shutdown_grace_secs: u64,
    /// How long readiness fails before clients are moved (within the grace time).
    pub shutdown_drain_ms: u64,
    /// Connections told to reconnect per 100 ms during shutdown, so a fleet does not
    /// stampede the remaining nodes.
    pub shutdown_batch: usize,
    /// How long a request body may take to arrive once a handler reads it (408 after).
    pub body_timeout_ms: u64,
    /// How long a connection may take to send a request's head (slow clients are closed).
    pub header_timeout_ms: u64,
    /// SQLite: whether each commit is synced to the disk (`full`) or only at checkpoints
    /// (`normal`, the default: safe across a process crash, not a power loss).
    pub sqlite_synchronous: crate::store::Synchronous,
    /// Request body bytes the node holds at once across all requests (503 beyond).
    pub max_body_bytes_in_flight: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            host: "127.0.0.1".into(),
            port: 6001,
            activity_timeout_secs: 120,
            pong_timeout_secs: 30,
            outbox_capacity: 1024,
            max_frame_bytes: 64 * 1024,
            workers: 0,
            channel_threads: 0,
            allow_default_secret: false,
            log_format: LogFormat::Text,
            database_url: None,
            data_dir: "data".into(),
            admin_token: None,
            node_id: None,
            webhook_delay_ms: 3000,
            webhook_batch_ms: 250,
            webhook_timeout_ms: 10_000,
            job_lease_secs: 60,
            job_concurrency: 16,
            redis_url: None,
            redis_prefix: "bellhop".into(),
            node_beat_ms: 1000,
            node_dead_after_ms: 5000,
            cluster_key_ttl_secs: 3600,
            cluster_resync_secs: 60,
            tls_cert: None,
            tls_key: None,
            metrics_host: "127.0.0.1".into(),
            metrics_port: 9601,
            shutdown_grace_secs: 10,
            shutdown_drain_ms: 1000,
            shutdown_batch: 500,
            body_timeout_ms: 5000,
            header_timeout_ms: 10_000,
            sqlite_synchronous: crate::store::Synchronous::Normal,
            max_body_bytes_in_flight: 32 * 1024 * 1024,
        }
    }
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

#[derive(Clone, Deserialize, serde::Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AppConfig {
    pub id: String,
    pub key: String,
    /// Never serialized: settings stored or returned by the admin API leave it out.
    #[serde(skip_serializing, default)]
    pub secret: String,
    #[serde(default = "yes")]
    pub enabled: bool,
    #[serde(default)]
    pub client_events: bool,
    #[serde(default)]
    pub max_connections: Option<u64>,
    #[serde(default = "d_event_bytes")]
    pub max_event_bytes: usize,
    #[serde(default = "d_channels_per_trigger")]
    pub max_channels_per_trigger: usize,
    #[serde(default = "d_batch")]
    pub max_batch_size: usize,
    #[serde(default = "d_client_rate")]
    pub client_event_rate: u32,
    /// Messages (event × channel) the HTTP API accepts per second for this app, across the
    /// cluster; none = unlimited.
    #[serde(default)]
    pub max_events_per_second: Option<u64>,
    #[serde(default = "d_members")]
    pub max_presence_members: usize,
    #[serde(default = "d_user_info")]
    pub max_presence_user_info_bytes: usize,
    #[serde(default = "d_user_id")]
    pub max_presence_user_id_len: usize,
    #[serde(default)]
    pub webhooks: Vec<crate::webhooks::WebhookTarget>,
    /// Send `pusher_internal:subscription_count` to the subscribers of non-presence channels.
    #[serde(default)]
    pub subscription_count: bool,
    /// Close sockets that have not signed in within this many seconds (4009).
    #[serde(default)]
    pub signin_timeout_secs: Option<u64>,
    /// How long a cache channel keeps its last event.
    #[serde(default = "d_cache_ttl")]
    pub cache_ttl_secs: u64,
    /// Channels one connection may be subscribed to at once.
    #[serde(default = "d_subs_per_conn")]
    pub max_subscriptions_per_connection: usize,
    /// Origins allowed to open WebSockets (exact, or `*.example.com` for subdomains);
    /// empty allows any.
    #[serde(default)]
    pub allowed_origins: Vec<String>,
    /// Delivery rules: which triggered events notify whom, and how.
    #[serde(default)]
    pub rules: Vec<crate::delivery::rules::RuleConfig>,
    #[serde(default)]
    pub fcm: Option<crate::delivery::provider::fcm::FcmConfig>,
    #[serde(default)]
    pub email: Option<crate::delivery::provider::email::EmailConfig>,
    #[serde(default)]
    pub sms: Option<crate::delivery::provider::sms::SmsConfig>,
    #[serde(default)]
    pub whatsapp: Option<crate::delivery::provider::whatsapp::WhatsappConfig>,
    #[serde(default)]
    pub zoho: Option<crate::delivery::provider::zoho::ZohoConfig>,
    /// Web Push to browsers: the VAPID key and subject.
    #[serde(default)]
    pub web_push: Option<crate::delivery::provider::web_push::WebPushConfig>,
    /// Business-event webhooks, signed with Standard Webhooks headers.
    #[serde(default)]
    pub event_webhooks: Vec<crate::delivery::event_webhooks::Subscription>,
}

fn d_cache_ttl() -> u64 {
    30 * 60
}

fn d_subs_per_conn() -> usize {
    1000
}

fn yes() -> bool {
    true
}
fn d_event_bytes() -> usize {
    10 * 1024
}
fn d_channels_per_trigger() -> usize {
    100
}
fn d_batch() -> usize {
    10
}
fn d_client_rate() -> u32 {
    10
}
fn d_members() -> usize {
    100
}
fn d_user_info() -> usize {
    1024
}
fn d_user_id() -> usize {
    128
}

impl AppConfig {
    pub fn new(id: &str, key: &str, secret: &str) -> Self {
        Self {
            id: id.into(),
            key: key.into(),
            secret: secret.into(),
            enabled: true,
            client_events: false,
            max_connections: None,
            max_event_bytes: d_event_bytes(),
            max_channels_per_trigger: d_channels_per_trigger(),
            max_batch_size: d_batch(),
            client_event_rate: d_client_rate(),
            max_events_per_second: None,
            max_presence_members: d_members(),
            max_presence_user_info_bytes: d_user_info(),
            max_presence_user_id_len: d_user_id(),
            webhooks: Vec::new(),
            subscription_count: false,
            signin_timeout_secs: None,
            cache_ttl_secs: d_cache_ttl(),
            allowed_origins: Vec::new(),
            max_subscriptions_per_connection: d_subs_per_conn(),
            rules: Vec::new(),
            fcm: None,
            email: None,
            sms: None,
            whatsapp: None,
            zoho: None,
            web_push: None,
            event_webhooks: Vec::new(),
        }
    }

    /// Checks the app without building anything: ids, limits, webhook targets, and the
    /// delivery part (rules, providers' settings, subscriptions).
    pub fn validate(&self) -> Result<(), AppError> {
        bellhop_protocol::AppId::parse(&self.id)?;
        bellhop_protocol::AppKey::parse(&self.key)?;
        bellhop_protocol::Secret::parse(&self.secret)?;
        for (name, v) in [
            ("max_event_bytes", self.max_event_bytes),
            ("max_channels_per_trigger", self.max_channels_per_trigger),
            ("max_batch_size", self.max_batch_size),
            ("max_presence_members", self.max_presence_members),
            (
                "max_presence_user_info_bytes",
                self.max_presence_user_info_bytes,
            ),
            ("max_presence_user_id_len", self.max_presence_user_id_len),
            (
                "max_subscriptions_per_connection",
                self.max_subscriptions_per_connection,
            ),
        ] {
            if v == 0 {
                return Err(AppError::ZeroLimit(name));
            }
        }
        for w in &self.webhooks {
            w.validate()?;
        }
        // Durations feed Instant arithmetic, which must not overflow.
        const YEAR: u64 = 365 * 24 * 3600;
        if self.cache_ttl_secs > YEAR {
            return Err(AppError::TooLong("cache_ttl_secs"));
        }
        if self.signin_timeout_secs.is_some_and(|t| t > YEAR) {
            return Err(AppError::TooLong("signin_timeout_secs"));
        }
        crate::delivery::setup::validate(&self.delivery())?;
        Ok(())
    }

    /// The delivery part of the app: what its delivery setup is built from.
    pub fn delivery(&self) -> crate::delivery::setup::DeliveryConfig {
        crate::delivery::setup::DeliveryConfig {
            app_id: self.id.clone(),
            rules: self.rules.clone(),
            fcm: self.fcm.clone(),
            email: self.email.clone(),
            sms: self.sms.clone(),
            whatsapp: self.whatsapp.clone(),
            zoho: self.zoho.clone(),
            web_push: self.web_push.clone(),
            event_webhooks: self.event_webhooks.clone(),
        }
    }
}

/// Why an app's settings are refused.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error(transparent)]
    Id(#[from] bellhop_protocol::IdError),
    #[error(transparent)]
    Webhook(#[from] crate::webhooks::TargetError),
    #[error("{0} must be at least 1")]
    ZeroLimit(&'static str),
    #[error("{0} must be at most a year")]
    TooLong(&'static str),
    #[error(transparent)]
    Delivery(#[from] crate::delivery::setup::SetupError),
}

impl std::fmt::Debug for AppConfig {
    // The secret never reaches a log through Debug.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppConfig")
            .field("id", &self.id)
            .field("key", &self.key)
            .field("secret", &"[redacted]")
            .field("enabled", &self.enabled)
            .field("client_events", &self.client_events)
            .field("max_connections", &self.max_connections)
            .field("webhooks", &self.webhooks)
            .finish_non_exhaustive()
    }
}

impl ServerConfig {
    /// The store URL: the configured one, or a SQLite file in the data directory.
    pub fn database_url(&self) -> String {
        self.database_url.clone().unwrap_or_else(|| {
            format!(
                "sqlite://{}/bellhop.db",
                self.data_dir.trim_end_matches('/')
            )
        })
    }

    pub fn node_id(&self) -> String {
        self.node_id.clone().unwrap_or_else(|| {
            let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|h| h.trim().to_owned())
                .unwrap_or_else(|_| "node".into());
            format!("{host}-{}", std::process::id())
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path}: {source}")]
    Parse {
        path: PathBuf,
        source: Box<toml::de::Error>,
    },
    #[error("{name}={value:?}: {reason}")]
    Env {
        name: &'static str,
        value: String,
        reason: &'static str,
    },
    #[error("app {id:?}: {reason}")]
    App { id: String, reason: String },
    #[error("{0}")]
    Server(&'static str),
}

fn env_parse<T: std::str::FromStr>(
    source: &dyn Source,
    name: &'static str,
    reason: &'static str,
) -> Result<Option<T>, ConfigError> {
    match source.var(name) {
        None => Ok(None),
        Some(value) => value
            .trim()
            .parse()
            .map(Some)
            .map_err(|_| ConfigError::Env {
                name,
                value,
                reason,
            }),
    }
}

impl Config {
    /// Reads the file named by `file` (or `BELLHOP_CONFIG`), then applies `BELLHOP_*`
    /// variables from `source`, then validates.
    pub fn load(file: Option<&Path>, source: &dyn Source) -> Result<Self, ConfigError> {
        let path = file
            .map(Path::to_path_buf)
            .or_else(|| source.var("BELLHOP_CONFIG").map(PathBuf::from));
        let mut config = match path {
            Some(path) => Self::from_file(&path)?,
            None => Self::default(),
        };
        config.apply_env(source)?;
        config.validate()?;
        Ok(config)
    }

    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::from_toml(&text).map_err(|source| ConfigError::Parse {
            path: path.to_owned(),
            source: Box::new(source),
        })
    }

    pub fn from_toml(text: &str) -> Result<Self, toml::de::Error> {
        toml::from_str(text)
    }

    fn apply_env(&mut self, source: &dyn Source) -> Result<(), ConfigError> {
        const BOOL: &str = "expected true or false";
        const NUM: &str = "expected a non-negative whole number";
        let s = &mut self.server;
        if let Some(v) = source.var("BELLHOP_HOST") {
            s.host = v;
        }
        if let Some(v) = env_parse(source, "BELLHOP_PORT", "expected a port number")? {
            s.port = v;
        }
        if let Some(v) = env_parse(source, "BELLHOP_ACTIVITY_TIMEOUT", NUM)? {
            s.activity_timeout_secs = v;
        }
        if let Some(v) = env_parse(source, "BELLHOP_PONG_TIMEOUT", NUM)? {
            s.pong_timeout_secs = v;
        }
        if let Some(v) = env_parse(source, "BELLHOP_WORKERS", NUM)? {
            s.workers = v;
        }
        if let Some(v) = env_parse(source, "BELLHOP_ALLOW_DEFAULT_SECRET", BOOL)? {
            s.allow_default_secret = v;
        }
        if let Some(v) = source.var("BELLHOP_DATABASE_URL").filter(|v| !v.is_empty()) {
            s.database_url = Some(v);
        }
        if let Some(v) = source.var("BELLHOP_DATA_DIR").filter(|v| !v.is_empty()) {
            s.data_dir = v;
        }
        if let Some(v) = source.var("BELLHOP_ADMIN_TOKEN").filter(|v| !v.is_empty()) {
            s.admin_token = Some(v);
        }
        if let Some(v) = source.var("BELLHOP_NODE_ID").filter(|v| !v.is_empty()) {
            s.node_id = Some(v);
        }
        if let Some(v) = env_parse(source, "BELLHOP_WEBHOOK_DELAY_MS", NUM)? {
            s.webhook_delay_ms = v;
        }
        if let Some(v) = env_parse(source, "BELLHOP_WEBHOOK_BATCH_MS", NUM)? {
            s.webhook_batch_ms = v;
        }
        if let Some(v) = env_parse(source, "BELLHOP_WEBHOOK_TIMEOUT_MS", NUM)? {
            s.webhook_timeout_ms = v;
        }
        if let Some(v) = env_parse(source, "BELLHOP_JOB_LEASE_SECS", NUM)? {
            s.job_lease_secs = v;
        }
        if let Some(v) = env_parse(source, "BELLHOP_JOB_CONCURRENCY", NUM)? {
            s.job_concurrency = v;
        }
        if let Some(v) = source.var("BELLHOP_REDIS_URL").filter(|v| !v.is_empty()) {
            s.redis_url = Some(v);
        }
        if let Some(v) = source.var("BELLHOP_REDIS_PREFIX").filter(|v| !v.is_empty()) {
            s.redis_prefix = v;
        }
        if let Some(v) = env_parse(source, "BELLHOP_NODE_BEAT_MS", NUM)? {
            s.node_beat_ms = v;
        }
        if let Some(v) = env_parse(source, "BELLHOP_NODE_DEAD_AFTER_MS", NUM)? {
            s.node_dead_after_ms = v;
        }
        if let Some(v) = env_parse(source, "BELLHOP_CLUSTER_KEY_TTL_SECS", NUM)? {
            s.cluster_key_ttl_secs = v;
        }
        if let Some(v) = env_parse(source, "BELLHOP_CLUSTER_RESYNC_SECS", NUM)? {
            s.cluster_resync_secs = v;
        }
        if let Some(v) = source.var("BELLHOP_TLS_CERT").filter(|v| !v.is_empty()) {
            s.tls_cert = Some(v);
        }
        if let Some(v) = source.var("BELLHOP_TLS_KEY").filter(|v| !v.is_empty()) {
            s.tls_key = Some(v);
        }
        if let Some(v) = source.var("BELLHOP_METRICS_HOST").filter(|v| !v.is_empty()) {
            s.metrics_host = v;
        }
        if let Some(v) = env_parse(source, "BELLHOP_METRICS_PORT", "expected a port number")? {
            s.metrics_port = v;
        }
        if let Some(v) = env_parse(source, "BELLHOP_SHUTDOWN_DRAIN_MS", NUM)? {
            s.shutdown_drain_ms = v;
        }
        if let Some(v) = env_parse(source, "BELLHOP_SHUTDOWN_GRACE_SECS", NUM)? {
            s.shutdown_grace_secs = v;
        }
        if let Some(v) = env_parse(source, "BELLHOP_BODY_TIMEOUT_MS", NUM)? {
            s.body_timeout_ms = v;
        }
        if let Some(v) = env_parse(source, "BELLHOP_HEADER_TIMEOUT_MS", NUM)? {
            s.header_timeout_ms = v;
        }
        if let Some(v) = source.var("BELLHOP_SQLITE_SYNCHRONOUS") {
            s.sqlite_synchronous = match v.as_str() {
                "normal" => crate::store::Synchronous::Normal,
                "full" => crate::store::Synchronous::Full,
                _ => {
                    return Err(ConfigError::Env {
                        name: "BELLHOP_SQLITE_SYNCHRONOUS",
                        value: v,
                        reason: "expected normal or full",
                    })
                }
            };
        }
        if let Some(v) = env_parse(source, "BELLHOP_MAX_BODY_BYTES_IN_FLIGHT", NUM)? {
            s.max_body_bytes_in_flight = v;
        }
        if let Some(v) = source.var("BELLHOP_LOG_FORMAT") {
            s.log_format = match v.as_str() {
                "text" => LogFormat::Text,
                "json" => LogFormat::Json,
                _ => {
                    return Err(ConfigError::Env {
                        name: "BELLHOP_LOG_FORMAT",
                        value: v,
                        reason: "expected text or json",
                    })
                }
            };
        }

        let id = source.var("BELLHOP_APP_ID");
        let key = source.var("BELLHOP_APP_KEY");
        let secret = source.var("BELLHOP_APP_SECRET");
        let client_events: Option<bool> = env_parse(source, "BELLHOP_APP_CLIENT_EVENTS", BOOL)?;
        let max_conn: Option<u64> = env_parse(source, "BELLHOP_APP_MAX_CONNECTIONS", NUM)?;
        let max_events: Option<u64> = env_parse(source, "BELLHOP_APP_MAX_EVENTS_PER_SECOND", NUM)?;
        let sub_count: Option<bool> = env_parse(source, "BELLHOP_APP_SUBSCRIPTION_COUNT", BOOL)?;
        let signin: Option<u64> = env_parse(source, "BELLHOP_APP_SIGNIN_TIMEOUT", NUM)?;
        let origins = source.var("BELLHOP_APP_ALLOWED_ORIGINS").map(|v| {
            v.split(',')
                .map(|o| o.trim().to_owned())
                .filter(|o| !o.is_empty())
                .collect::<Vec<_>>()
        });
        let webhooks = match source.var("BELLHOP_APP_WEBHOOKS").filter(|v| !v.trim().is_empty()) {
            None => None,
            Some(v) => Some(
                serde_json::from_str::<Vec<crate::webhooks::WebhookTarget>>(&v).map_err(|_| {
                    ConfigError::Env {
                        name: "BELLHOP_APP_WEBHOOKS",
                        value: v,
                        reason: "expected a JSON array of {\"url\": …, \"event_types\": […], \"headers\": {…}}",
                    }
                })?,
            ),
        };
        let env_names_app =
            id.is_some() || key.is_some() || secret.is_some() || client_events.is_some();
        if env_names_app || self.apps.is_empty() {
            let id = id.unwrap_or_else(|| DEFAULT_APP_ID.into());
            let existing = self.apps.iter().position(|a| a.id == id);
            let mut app = match existing {
                Some(i) => self.apps.remove(i),
                None => AppConfig::new(&id, DEFAULT_APP_KEY, DEFAULT_APP_SECRET),
            };
            if let Some(k) = key {
                app.key = k;
            }
            if let Some(s) = secret {
                app.secret = s;
            }
            if let Some(c) = client_events {
                app.client_events = c;
            }
            if max_conn.is_some() {
                app.max_connections = max_conn;
            }
            if max_events.is_some() {
                app.max_events_per_second = max_events;
            }
            if let Some(w) = webhooks {
                app.webhooks = w;
            }
            if let Some(c) = sub_count {
                app.subscription_count = c;
            }
            if signin.is_some() {
                app.signin_timeout_secs = signin;
            }
            if let Some(o) = origins {
                app.allowed_origins = o;
            }
            self.apps.insert(0, app);
        }
        Ok(())
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let s = &self.server;
        let host: IpAddr = s
            .host
            .parse()
            .map_err(|_| ConfigError::Server("server.host must be an IP address"))?;
        if s.activity_timeout_secs == 0 || s.pong_timeout_secs == 0 {
            return Err(ConfigError::Server(
                "activity and pong timeouts must be at least 1 second",
            ));
        }
        if let Some(url) = &s.database_url {
            if !(url.starts_with("sqlite:")
                || url.starts_with("postgres:")
                || url.starts_with("postgresql:"))
            {
                return Err(ConfigError::Server(
                    "database_url must start with sqlite: or postgres://",
                ));
            }
        }
        if s.admin_token.as_ref().is_some_and(|t| t.len() < 16) {
            return Err(ConfigError::Server(
                "admin_token must be at least 16 characters (or unset to turn the admin API off)",
            ));
        }
        if s.node_dead_after_ms < 2 * s.node_beat_ms.max(1) {
            return Err(ConfigError::Server(
                "node_dead_after_ms must be at least twice node_beat_ms, or live nodes are taken for dead",
            ));
        }
        if s.cluster_key_ttl_secs <= 2 * s.cluster_resync_secs {
            return Err(ConfigError::Server(
                "cluster_key_ttl_secs must exceed twice cluster_resync_secs, or live keys expire",
            ));
        }
        if s.tls_cert.is_some() != s.tls_key.is_some() {
            return Err(ConfigError::Server(
                "TLS needs both tls_cert and tls_key (BELLHOP_TLS_CERT, BELLHOP_TLS_KEY)",
            ));
        }
        if s.metrics_host.parse::<IpAddr>().is_err() {
            return Err(ConfigError::Server(
                "server.metrics_host must be an IP address",
            ));
        }
        if s.body_timeout_ms == 0
            || s.header_timeout_ms == 0
            || s.max_body_bytes_in_flight < 1024 * 1024
        {
            return Err(ConfigError::Server(
                "body_timeout_ms and header_timeout_ms must be positive and max_body_bytes_in_flight at least 1 MiB (one largest body)",
            ));
        }
        if s.shutdown_batch == 0 {
            return Err(ConfigError::Server("shutdown_batch must be at least 1"));
        }
        if s.webhook_batch_ms == 0
            || s.webhook_timeout_ms == 0
            || s.job_lease_secs == 0
            || s.job_concurrency == 0
        {
            return Err(ConfigError::Server(
                "webhook_batch_ms, webhook_timeout_ms, job_lease_secs and job_concurrency must be at least 1",
            ));
        }
        if s.outbox_capacity == 0 || s.max_frame_bytes < 1024 {
            return Err(ConfigError::Server(
                "outbox_capacity must be positive and max_frame_bytes at least 1024",
            ));
        }
        let mut ids = std::collections::HashSet::new();
        let mut keys = std::collections::HashSet::new();
        for app in &self.apps {
            let err = |reason: String| ConfigError::App {
                id: app.id.clone(),
                reason,
            };
            app.validate().map_err(|e| err(e.to_string()))?;
            if !ids.insert(&app.id) {
                return Err(err("duplicate app id".into()));
            }
            if !keys.insert(&app.key) {
                return Err(err("app key is used by another app".into()));
            }
            if app.secret == DEFAULT_APP_SECRET && !host.is_loopback() && !s.allow_default_secret {
                return Err(err(format!(
                    "uses the published default secret on non-loopback address {host}; set a \
                     secret (BELLHOP_APP_SECRET) or BELLHOP_ALLOW_DEFAULT_SECRET=true"
                )));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_config_serves_the_default_app_on_loopback() {
        let c = Config::load(None, &MapSource::default()).unwrap();
        assert_eq!(c.server.host, "127.0.0.1");
        assert_eq!(c.server.port, 6001);
        assert_eq!(c.apps.len(), 1);
        assert_eq!(
            (
                c.apps[0].id.as_str(),
                c.apps[0].key.as_str(),
                c.apps[0].secret.as_str()
            ),
            (DEFAULT_APP_ID, DEFAULT_APP_KEY, DEFAULT_APP_SECRET)
        );
    }

    #[test]
    fn default_secret_on_public_address_is_refused() {
        let src = MapSource::default().with("BELLHOP_HOST", "0.0.0.0");
        let err = Config::load(None, &src).unwrap_err().to_string();
        assert!(err.contains("default secret"), "{err}");
        let src = src.with("BELLHOP_ALLOW_DEFAULT_SECRET", "true");
        assert!(Config::load(None, &src).is_ok());
        let src = MapSource::default()
            .with("BELLHOP_HOST", "0.0.0.0")
            .with("BELLHOP_APP_SECRET", "s3cret");
        assert!(Config::load(None, &src).is_ok());
    }

    #[test]
    fn debug_never_shows_secrets() {
        let c = AppConfig::new("1", "k", "very-secret-value");
        assert!(!format!("{c:?}").contains("very-secret-value"));
        let err = Config::load(
            None,
            &MapSource::default().with("BELLHOP_ADMIN_TOKEN", "short"),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("admin_token"), "{err}");
    }

    #[test]
    fn unknown_keys_are_named() {
        let err = Config::from_toml("[server]\nprot = 1\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("prot"), "{err}");
        let err = Config::from_toml("[[apps]]\nid='1'\nkey='k'\nsecret='s'\nclient_event=true\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("client_event"), "{err}");
    }

    #[test]
    fn file_apps_and_env_app_combine() {
        let mut c = Config::from_toml(
            "[[apps]]\nid='7'\nkey='seven'\nsecret='s7'\nclient_events=true\nmax_connections=5\n",
        )
        .unwrap();
        c.apply_env(
            &MapSource::default()
                .with("BELLHOP_APP_ID", "8")
                .with("BELLHOP_APP_KEY", "eight")
                .with("BELLHOP_APP_SECRET", "s8"),
        )
        .unwrap();
        c.validate().unwrap();
        assert_eq!(c.apps.len(), 2);
        assert_eq!(c.apps[1].max_connections, Some(5));
        assert!(c.apps[1].client_events);
        assert_eq!(c.apps[0].key, "eight");
    }

    #[test]
    fn bad_values_are_explained() {
        let err = Config::load(None, &MapSource::default().with("BELLHOP_PORT", "http"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("BELLHOP_PORT"), "{err}");
        let err = Config::load(None, &MapSource::default().with("BELLHOP_APP_ID", "abc"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("digits"), "{err}");
        let err = Config::load(
            None,
            &MapSource::default().with("BELLHOP_APP_WEBHOOKS", "[{]"),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("BELLHOP_APP_WEBHOOKS"), "{err}");
        let err = Config::load(
            None,
            &MapSource::default().with("BELLHOP_APP_WEBHOOKS", r#"[{"url":"ftp://x/y"}]"#),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("http://"), "{err}");
    }

    #[test]
    fn webhooks_from_env() {
        let c = Config::load(
            None,
            &MapSource::default().with(
                "BELLHOP_APP_WEBHOOKS",
                r#"[{"url": "http://127.0.0.1:9876/webhook", "event_types": ["channel_occupied", "member_added"]}]"#,
            ),
        )
        .unwrap();
        assert_eq!(c.apps[0].webhooks.len(), 1);
        assert!(c.apps[0].webhooks[0].wants("member_added"));
        assert!(!c.apps[0].webhooks[0].wants("client_event"));
    }
}
