//! The notification engine: delivery rules turn triggered events into notifications for the
//! people concerned (`rules`), accepted durably with their deliveries (`records`), then sent
//! by the job workers through in-app, FCM (`fcm`) or email (`email`), with templates
//! (`templates`), the recipient's preferences and quiet hours (`preferences`), and live
//! presence deciding whether a push is needed at all (`engine`); SMS, WhatsApp and Zoho
//! behind per-provider gates shared by the cluster (`throttle`).

pub mod attachments;
pub mod email;
mod engine;
pub mod event_webhooks;
pub mod fcm;
pub mod preferences;
pub mod records;
pub mod rules;
pub mod sms;
pub mod templates;
pub mod throttle;
pub mod whatsapp;
pub mod zoho;

pub use engine::{Direct, Engine, Triggered, INBOX_EVENT, UNREAD_EVENT};
