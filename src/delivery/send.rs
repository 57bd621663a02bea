//! The `delivery` job: one attempt at one delivery. Above every provider, once: a delivery
//! already decided is not decided again (ambiguous included: it may have been sent); a kept
//! provider id that means acceptance marks it sent instead of sending again; the recipient's
//! settings and the entry's condition decide (`decide`); the templates render strictly; the
//! provider's cluster-wide rate gate is passed; then one `Provider::send`, whose outcome is
//! written with its provider id in one statement, and a `Retry-After` pauses the provider
//! for every node.

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use serde_json::{Map, Value};

use super::decide::{by_condition, by_recipient, Decision};
use super::provider::{Message, Outcome, Provider, Services};
use super::records::{DeliveryRow, JOB_KIND};
use super::rules::Deliver;
use super::templates::{for_locale, render_content, TemplateError};
use super::throttle::Turn;
use super::Engine;
use crate::jobs::retry::Schedule;
use crate::jobs::{Attempt, Claimed, Handler, Verdict};
use crate::store::StoreError;

/// What became of one attempt.
#[derive(Debug)]
enum Step {
    Sent {
        detail: String,
        provider_id: Option<String>,
    },
    /// The provider may or may not have sent it; not sent again.
    Ambiguous(String),
    Skipped(String),
    Failed(String),
    Held {
        reason: String,
        wait: Duration,
    },
    Retry {
        after: Option<Duration>,
        reason: String,
    },
    /// Decided by an earlier attempt.
    Already,
}

impl Step {
    /// The delivery's state and reason after this step (None: unchanged).
    fn state(&self) -> Option<(&'static str, &str)> {
        Some(match self {
            Step::Sent { detail, .. } => ("sent", detail.as_str()),
            Step::Skipped(r) => ("skipped", r.as_str()),
            Step::Failed(r) => ("failed", r.as_str()),
            Step::Held { reason, .. } => ("held", reason.as_str()),
            Step::Ambiguous(r) => ("ambiguous", r.as_str()),
            Step::Retry { reason, .. } => ("pending", reason.as_str()),
            Step::Already => return None,
        })
    }

    /// What the job queue makes of it.
    fn attempt(self) -> (Verdict, String) {
        match self {
            Step::Sent { detail, .. } => (Verdict::Done, format!("sent: {detail}")),
            Step::Skipped(r) => (Verdict::Done, format!("skipped: {r}")),
            Step::Ambiguous(r) => (Verdict::Done, format!("ambiguous: {r}")),
            Step::Already => (Verdict::Done, "already decided".into()),
            Step::Failed(r) => (Verdict::Permanent, r),
            Step::Held { reason, wait } => (
                Verdict::Retry {
                    retry_after: Some(wait),
                },
                reason,
            ),
            Step::Retry { after, reason } => (Verdict::Retry { retry_after: after }, reason),
        }
    }
}

/// A delivery's retries: from 2 s, doubling, to 5 minutes.
const SCHEDULE: Schedule = Schedule {
    base: Duration::from_secs(2),
    max: Duration::from_secs(300),
};

/// States a later attempt never changes.
const FINAL: [&str; 5] = ["sent", "skipped", "failed", "cancelled", "ambiguous"];

impl Engine {
    async fn run_delivery(&self, job: &Claimed) -> Result<Step, StoreError> {
        let id = serde_json::from_str::<Value>(&job.payload)
            .ok()
            .and_then(|v| v["delivery_id"].as_i64());
        let Some(id) = id else {
            return Ok(Step::Failed("job payload names no delivery".into()));
        };
        let Some(row) = self.store.delivery(id).await? else {
            return Ok(Step::Failed(format!("delivery {id} not found")));
        };
        if FINAL.contains(&row.state.as_str()) {
            return Ok(Step::Already);
        }
        let step = self.attempt(&row).await?;
        if let Some((state, reason)) = step.state() {
            let provider_id = match &step {
                Step::Sent { provider_id, .. } => provider_id.as_deref(),
                _ => None,
            };
            self.store
                .set_delivery_state(row.id, state, Some(reason), provider_id)
                .await?;
        }
        Ok(step)
    }

    async fn attempt(&self, row: &DeliveryRow) -> Result<Step, StoreError> {
        let spec: Deliver = match serde_json::from_value(row.spec["deliver"].clone()) {
            Ok(s) => s,
            Err(e) => return Ok(Step::Failed(format!("delivery spec unreadable: {e}"))),
        };
        let Some(setup) = self.setups.of(&row.app_id) else {
            return Ok(Step::Failed("the app no longer exists".into()));
        };
        let provider = setup.get(spec.channel);
        if let (Some(p), Some(id)) = (&provider, &row.provider_id) {
            if p.id_means_sent() {
                return Ok(Step::Sent {
                    detail: format!("already accepted by the provider ({id})"),
                    provider_id: None,
                });
            }
        }
        let profile = match &row.user_id {
            Some(u) => self.store.profile(&row.app_id, u).await?,
            None => None,
        };
        let decided = match by_recipient(row, &spec, profile.as_ref(), chrono::Utc::now()) {
            Decision::Send => by_condition(row, &spec, &*self.presence, &self.store).await?,
            other => other,
        };
        match decided {
            Decision::Send => {}
            Decision::Skip(r) => return Ok(Step::Skipped(r)),
            Decision::Hold { reason, wait } => return Ok(Step::Held { reason, wait }),
        }
        let vars = template_vars(row, profile.as_ref());
        let locale = profile.as_ref().and_then(|p| p.locale.as_deref());
        let rendered =
            match render_content(for_locale(&spec.content(), &spec.locales, locale), &vars) {
                Ok(r) => r,
                Err(TemplateError { what, message }) => {
                    return Ok(Step::Failed(format!("template {what}: {message}")))
                }
            };
        let Some(provider) = provider else {
            return Ok(Step::Failed(format!(
                "the app has no {} configured",
                spec.channel.label()
            )));
        };
        let message = Message {
            row,
            spec: &spec,
            rendered: &rendered,
            vars: &vars,
            profile: profile.as_ref(),
        };
        self.send(provider, &message, spec.resend_ambiguous).await
    }

    /// The rate gate, one send, and what the outcome means for the delivery.
    async fn send(
        &self,
        provider: Arc<dyn Provider>,
        message: &Message<'_>,
        resend_ambiguous: bool,
    ) -> Result<Step, StoreError> {
        let app = &message.row.app_id;
        match self
            .throttle
            .turn(app, provider.name(), provider.max_per_second())
            .await
        {
            Turn::Go => {}
            Turn::Wait { reason, wait } => return Ok(Step::Held { reason, wait }),
            Turn::Unknown(reason) => {
                return Ok(Step::Retry {
                    after: Some(Duration::from_secs(1)),
                    reason,
                })
            }
        }
        let services = Services {
            store: &self.store,
            sockets: &*self.sockets,
        };
        Ok(match provider.send(message, &services).await? {
            Outcome::Sent {
                detail,
                provider_id,
            } => Step::Sent {
                detail,
                provider_id,
            },
            Outcome::RecipientGone(r) => Step::Skipped(r),
            Outcome::Permanent(r) => Step::Failed(r),
            Outcome::Ambiguous(reason) if resend_ambiguous => Step::Retry {
                after: None,
                reason: format!("ambiguous, sending again: {reason}"),
            },
            Outcome::Ambiguous(r) => Step::Ambiguous(r),
            Outcome::Retry { after, reason } => {
                if let Some(after) = after {
                    self.throttle.pause(app, provider.name(), after).await;
                }
                Step::Retry { after, reason }
            }
        })
    }
}

/// What the templates see: the notification's data (payload fields, captures, `event`,
/// `channel`), the recipient's profile as `recipient`, and the delivery's own variables
/// (`minutes_before` of a reminder).
fn template_vars(
    row: &DeliveryRow,
    profile: Option<&super::records::Profile>,
) -> Map<String, Value> {
    let mut vars = match &row.data {
        Value::Object(m) => m.clone(),
        _ => Map::new(),
    };
    vars.insert(
        "recipient".into(),
        serde_json::to_value(profile).unwrap_or(Value::Null),
    );
    if let Value::Object(own) = &row.spec["vars"] {
        vars.extend(own.clone());
    }
    vars
}

impl Handler for Engine {
    fn kind(&self) -> &'static str {
        JOB_KIND
    }

    fn schedule(&self) -> Schedule {
        SCHEDULE
    }

    fn run<'a>(&'a self, job: &'a Claimed) -> BoxFuture<'a, Attempt> {
        Box::pin(async move {
            let (verdict, detail) = match self.run_delivery(job).await {
                Ok(step) => step.attempt(),
                Err(e) => (Verdict::Retry { retry_after: None }, format!("store: {e}")),
            };
            Attempt {
                verdict,
                http_status: None,
                detail,
            }
        })
    }
}
