//! The notification engine. A notification's life, one module each:
//!
//! - **accept** (`accept`): triggered events matched against the app's rules (`rules`), or a
//!   direct API call, name the recipients; each gets a notification with a delivery per
//!   channel entry and its job, committed in one transaction with the events' business
//!   webhooks (`event_webhooks`) before the trigger is answered (`records`).
//! - **decide** (`decide`), when the job runs: the recipient's preferences and quiet hours
//!   (`preferences`), and whether they are connected right now (`presence`, an interface the
//!   realtime side answers).
//! - **send** (`send`): the templates render (`templates`), the provider's rate gate passes
//!   (`throttle`), one [`provider::Provider`] sends, and the outcome is recorded.
//!
//! Each app's rules and providers are its [`setup::Setup`], built from its config.

mod accept;
pub mod attachments;
pub mod decide;
pub mod event_webhooks;
pub mod preferences;
pub mod presence;
pub mod provider;
pub mod records;
pub mod rules;
mod send;
pub mod setup;
pub mod templates;
pub mod throttle;

use std::sync::Arc;

use bellhop_protocol::ChannelName;
use serde_json::Value;

pub use provider::in_app::{INBOX_EVENT, UNREAD_EVENT};

use crate::store::Store;

/// A published event, as the delivery rules see it.
pub struct Triggered<'a> {
    pub channel: &'a ChannelName,
    pub name: &'a str,
    pub data: &'a str,
}

/// A direct notification (`POST /apps/{id}/notifications`).
pub struct Direct {
    pub users: Vec<String>,
    pub kind: String,
    pub priority: rules::Priority,
    pub data: Value,
    pub deliver: Vec<rules::Deliver>,
    /// Scopes the deliveries' idempotency keys (the request's `Idempotency-Key`).
    pub key: String,
    pub send_at: Option<i64>,
}

pub struct Engine {
    pub store: Store,
    /// Every app's rules and providers.
    pub setups: Arc<setup::Setups>,
    pub presence: Arc<dyn presence::Presence>,
    pub sockets: Arc<dyn provider::UserSockets>,
    pub throttle: throttle::Throttle,
}

impl Engine {
    /// Tells the user's sockets the unread count changed (read, deleted).
    pub async fn push_unread(&self, app: &str, user: &str, unread: i64) {
        let data = serde_json::json!({ "unread_count": unread });
        self.sockets.push(app, user, UNREAD_EVENT, &data).await;
    }
}
