//! Integration tests: real bellhop processes on loopback ports, driven by a real WebSocket
//! client and signed HTTP requests. One binary, one module per area.

mod admin;
mod api;
mod client;
mod cluster;
mod cluster_presence;
mod connection;
mod delivery;
mod delivery_booking;
mod delivery_sms;
mod delivery_web_push;
mod delivery_zoho;
mod examples;
mod faults;
mod harness;
mod http_api;
mod loadtest_smoke;
mod mock_http;
mod presence;
mod provider_limits;
mod queue;
mod receiver;
mod sdk;
mod subscriptions;
mod surface;
mod webhooks;
