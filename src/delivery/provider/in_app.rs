//! The inbox: an in-app item kept per user (read and deleted through the inbox APIs), pushed
//! live with the unread count to the user's signed-in sockets (`#server-to-user-{id}`).

use futures_util::future::BoxFuture;
use serde_json::{json, Value};

use super::{Message, Outcome, Provider, Services};
use crate::delivery::records::NewInboxItem;
use crate::store::StoreError;

/// The event pushed to a user's sockets when an in-app item arrives.
pub const INBOX_EVENT: &str = "bellhop:notification";
/// The event pushed when the unread count changes otherwise (read, deleted).
pub const UNREAD_EVENT: &str = "bellhop:inbox";

/// Every app has an inbox: it needs no configuration.
pub struct InApp;

impl Provider for InApp {
    fn name(&self) -> &'static str {
        "in_app"
    }

    fn send<'a>(
        &'a self,
        m: &'a Message<'a>,
        services: &'a Services<'a>,
    ) -> BoxFuture<'a, Result<Outcome, StoreError>> {
        Box::pin(async move {
            let Some(user) = m.user() else {
                return Ok(Outcome::RecipientGone("in-app needs a user id".into()));
            };
            let row = m.row;
            let data = Value::Object(m.rendered.data.clone());
            let item = services
                .store
                .add_inbox_item(
                    &row.app_id,
                    user,
                    NewInboxItem {
                        notification: row.notification_id,
                        delivery: row.id,
                        kind: &row.kind,
                        title: &m.rendered.title,
                        body: &m.rendered.body,
                        data: &data,
                    },
                )
                .await?;
            // None: the item was added by an earlier run of this job; it was pushed then.
            if let Some(item) = item {
                let unread = services.store.unread_count(&row.app_id, user).await?;
                let data = json!({ "item": item, "unread_count": unread });
                services
                    .sockets
                    .push(&row.app_id, user, INBOX_EVENT, &data)
                    .await;
            }
            Ok(Outcome::Sent {
                detail: "in the inbox".into(),
                provider_id: None,
            })
        })
    }
}
