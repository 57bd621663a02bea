//! Sends one business-event webhook job: signed with the subscription's current secret
//! (Standard Webhooks headers), POSTed and classified by the one signed-webhook sender.

use std::sync::Arc;
use std::time::Duration;

use bellhop_protocol::signing::{sign_standard_webhook, standard_webhook_key};
use futures_util::future::BoxFuture;

use super::{Payload, KIND};
use crate::delivery::setup::Setups;
use crate::jobs::retry::Schedule;
use crate::jobs::{Attempt, Claimed, Handler, Verdict};
use crate::store::now_ms;

pub struct EventWebhookSender {
    setups: Arc<Setups>,
    http: reqwest::Client,
}

impl EventWebhookSender {
    pub fn new(setups: Arc<Setups>, timeout: Duration) -> Self {
        Self {
            setups,
            http: crate::outbound::client(timeout),
        }
    }

    async fn send(&self, job: &Claimed) -> Attempt {
        let permanent = |detail: String| Attempt {
            verdict: Verdict::Permanent,
            http_status: None,
            detail,
        };
        let Ok(p) = serde_json::from_str::<Payload>(&job.payload) else {
            return permanent("malformed event webhook job".into());
        };
        let Some(setup) = self.setups.of(&job.app_id) else {
            return permanent(format!("app {} no longer exists", job.app_id));
        };
        // Signed with the subscription's current secret; a removed subscription gets nothing.
        let Some(key) = setup
            .event_webhooks
            .iter()
            .find(|s| s.url == p.url)
            .and_then(|s| standard_webhook_key(s.secret.expose()))
        else {
            return permanent(format!("subscription {} is no longer configured", p.url));
        };
        let ts = now_ms() / 1000;
        let signature = sign_standard_webhook(&key, &p.id, ts, p.body.as_bytes());
        let headers = vec![
            ("webhook-id".to_owned(), p.id.clone()),
            ("webhook-timestamp".to_owned(), ts.to_string()),
            ("webhook-signature".to_owned(), signature),
        ];
        crate::webhooks::post::post(&self.http, &p.url, p.body, headers).await
    }
}

impl Handler for EventWebhookSender {
    fn kind(&self) -> &'static str {
        KIND
    }

    fn schedule(&self) -> Schedule {
        Schedule::WEBHOOK
    }

    fn run<'a>(&'a self, job: &'a Claimed) -> BoxFuture<'a, Attempt> {
        Box::pin(self.send(job))
    }
}
