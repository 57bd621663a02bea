//! bellhop: a self-hosted, Pusher-compatible realtime server.
//!
//! Three flows run through it (see `docs/architecture.md`): a WebSocket frame
//! (`http::ws` → `connection` → `channel`), an HTTP trigger (`http::api` → `channel`), and a
//! notification (`delivery`).

pub mod app;
pub mod apps;
pub mod channel;
pub mod cluster;
pub mod config;
pub mod connection;
pub mod delivery;
pub mod http;
pub mod jobs;
pub mod live;
pub mod metrics;
pub mod outbound;
pub mod outbox;
pub mod rate;
pub mod sockets;
pub mod state;
pub mod store;
pub mod webhooks;
