//! One interface for every way a notification leaves bellhop: the inbox, FCM, email, SMS,
//! WhatsApp, Zoho and Web Push each implement [`Provider`] in a module of their own, owning
//! their config and their client. A provider builds its request from a rendered message and
//! its recipient, sends it once, and classifies the answer into an [`Outcome`]; everything
//! the outcomes have in common — a message the provider may have sent is not sent again, a
//! provider id is kept before the state moves on, a rate gate and a `Retry-After` pause shared
//! by the cluster — is decided once, above the trait (`delivery::send`).

mod devices;
pub mod email;
pub mod fcm;
pub mod in_app;
pub mod sms;
pub mod web_push;
pub mod whatsapp;
pub mod zoho;

use std::time::Duration;

use futures_util::future::BoxFuture;
use serde_json::{Map, Value};

use super::records::{DeliveryRow, Profile};
use super::rules::Deliver;
use super::templates::Rendered;
use crate::store::{Store, StoreError};

/// One message to one recipient, rendered and ready to go.
pub struct Message<'a> {
    /// The delivery: ids, recipient (user or address), the progress kept so far.
    pub row: &'a DeliveryRow,
    /// The channel entry of the rule (or API call): the provider's own options.
    pub spec: &'a Deliver,
    pub rendered: &'a Rendered,
    /// The template variables, for what a provider renders itself (WhatsApp template
    /// parameters, Zoho fields, calendar invites).
    pub vars: &'a Map<String, Value>,
    /// The recipient's directory entry, when the delivery is for a user who has one.
    pub profile: Option<&'a Profile>,
}

impl Message<'_> {
    /// The user the delivery is for, if any.
    pub fn user(&self) -> Option<&str> {
        self.row.user_id.as_deref()
    }
}

/// What one send came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Accepted by the provider. `provider_id` is kept with the delivery (status callbacks
    /// find it by this id).
    Sent {
        detail: String,
        provider_id: Option<String>,
    },
    /// Not sent; worth trying again, not before `after` if the provider said so.
    Retry {
        after: Option<Duration>,
        reason: String,
    },
    /// Will never be sent as it is (refused, misconfigured, a template that does not render).
    Permanent(String),
    /// This recipient cannot be reached here (no address, a number that is not one, every
    /// device gone): nothing was sent and nothing will be.
    RecipientGone(String),
    /// The request went out and no answer came: it may have been sent. Not sent again unless
    /// the entry asks for it (`resend_ambiguous`).
    Ambiguous(String),
}

/// What a provider may use besides its own client.
pub struct Services<'a> {
    pub store: &'a Store,
    /// The recipient's live sockets (the in-app provider pushes to them).
    pub sockets: &'a dyn UserSockets,
}

/// Pushes an event to every socket signed in as a user, on every node.
pub trait UserSockets: Send + Sync {
    /// Best effort: a user with no socket misses nothing (the inbox keeps the item).
    fn push<'a>(
        &'a self,
        app: &'a str,
        user: &'a str,
        event: &'a str,
        data: &'a Value,
    ) -> BoxFuture<'a, ()>;
}

/// A way out for notifications.
pub trait Provider: Send + Sync {
    /// Its name in rate gates, metrics and logs (`fcm`, `sms`, …).
    fn name(&self) -> &'static str;

    /// Sends at most once per call. Progress that must survive a crash mid-send (the devices
    /// a push already reached) is written through `services.store` before it returns; a
    /// store error means nothing is known of this attempt's outcome beyond that progress.
    fn send<'a>(
        &'a self,
        message: &'a Message<'a>,
        services: &'a Services<'a>,
    ) -> BoxFuture<'a, Result<Outcome, StoreError>>;

    /// Sends per second the app may make through this provider, cluster-wide (`None`: no
    /// gate). Providers that bill or limit per request are gated.
    fn max_per_second(&self) -> Option<u32> {
        None
    }

    /// Whether a kept provider id means the provider accepted the message (so a job run
    /// again after a crash marks it sent instead of sending again). False for providers
    /// whose kept id is progress (the devices a push reached).
    fn id_means_sent(&self) -> bool {
        false
    }
}
