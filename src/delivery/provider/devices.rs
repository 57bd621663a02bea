//! One message to each of a user's registered devices (FCM tokens, Web Push subscriptions),
//! once each: the devices reached are kept on the delivery while others remain (a job run
//! again after a crash or an expired lease skips them), a device whose token is gone is
//! deactivated, and the message counts as sent if any device got it.

use std::future::Future;
use std::time::Duration;

use super::{Message, Outcome, Services};
use crate::delivery::records::DeliveryRow;
use crate::delivery::records::Device;
use crate::store::{Store, StoreError};

/// What one device's push service answered.
#[derive(Debug, Clone, PartialEq)]
pub enum DeviceAnswer {
    Sent,
    /// The token or subscription is no longer valid; the device is deactivated.
    Gone(String),
    Retry {
        after: Option<Duration>,
        reason: String,
    },
    /// Refused for this message (bad payload, auth): retrying would not help.
    Failed(String),
}

/// Which of the user's devices a provider serves, and how its outcomes name them.
pub struct Fleet {
    pub serves: fn(&Device) -> bool,
    /// The outcome's plural, as in "pushed to 2 device(s)".
    pub noun: &'static str,
    pub none: &'static str,
    pub all_gone: &'static str,
}

/// Sends to every device of `fleet` not yet reached, through `push`.
pub async fn push_to_each<F, Fut>(
    m: &Message<'_>,
    services: &Services<'_>,
    fleet: &Fleet,
    mut push: F,
) -> Result<Outcome, StoreError>
where
    F: FnMut(Device) -> Fut,
    Fut: Future<Output = DeviceAnswer>,
{
    let Some(user) = m.user() else {
        return Ok(Outcome::RecipientGone("a push needs a user id".into()));
    };
    let (row, store) = (m.row, services.store);
    let devices: Vec<Device> = store
        .devices(&row.app_id, user)
        .await?
        .into_iter()
        .filter(|d| d.active && (fleet.serves)(d))
        .collect();
    if devices.is_empty() {
        return Ok(Outcome::RecipientGone(fleet.none.into()));
    }
    let mut tally = Tally::resume(row);
    let todo: Vec<&Device> = devices
        .iter()
        .filter(|d| !tally.done.contains(&d.token))
        .collect();
    for (i, d) in todo.iter().enumerate() {
        match push((*d).clone()).await {
            DeviceAnswer::Sent => {
                tally.sent.push(d.token.clone());
                // After the last one the outcome itself is the record.
                if i + 1 < todo.len() {
                    tally.keep(store, row).await?;
                }
            }
            DeviceAnswer::Gone(reason) => {
                tally.gone += 1;
                store
                    .deactivate_device(&row.app_id, &d.token, &reason)
                    .await?;
            }
            DeviceAnswer::Retry { after, reason } => tally.retry = Some((after, reason)),
            DeviceAnswer::Failed(reason) => tally.failed = Some(reason),
        }
    }
    // Devices reached but not yet kept (the last ones) must be kept before a retry comes
    // back for the others.
    if tally.retry.is_some() && tally.sent.len() > tally.done.len() {
        tally.keep(store, row).await?;
    }
    Ok(tally.outcome(fleet))
}

/// The devices reached so far (kept as a JSON list in the delivery's provider id) and what
/// the others answered.
struct Tally {
    done: Vec<String>,
    sent: Vec<String>,
    gone: usize,
    retry: Option<(Option<Duration>, String)>,
    failed: Option<String>,
}

impl Tally {
    fn resume(row: &DeliveryRow) -> Self {
        let done: Vec<String> = row
            .provider_id
            .as_deref()
            .and_then(|p| serde_json::from_str(p).ok())
            .unwrap_or_default();
        Self {
            sent: done.clone(),
            done,
            gone: 0,
            retry: None,
            failed: None,
        }
    }

    async fn keep(&self, store: &Store, row: &DeliveryRow) -> Result<(), StoreError> {
        let reached = serde_json::to_string(&self.sent).unwrap_or_default();
        store
            .set_delivery_state(row.id, "pending", None, Some(&reached))
            .await
    }

    fn outcome(self, fleet: &Fleet) -> Outcome {
        match (self.retry, self.failed) {
            (Some((after, reason)), _) => Outcome::Retry { after, reason },
            (None, Some(reason)) if self.sent.is_empty() => Outcome::Permanent(reason),
            _ if !self.sent.is_empty() => Outcome::Sent {
                detail: format!("pushed to {} {}(s)", self.sent.len(), fleet.noun),
                provider_id: None,
            },
            _ => Outcome::RecipientGone(format!("{} ({})", fleet.all_gone, self.gone)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tally() -> Tally {
        Tally {
            done: vec![],
            sent: vec![],
            gone: 0,
            retry: None,
            failed: None,
        }
    }

    const FLEET: Fleet = Fleet {
        serves: |_| true,
        noun: "device",
        none: "no device",
        all_gone: "every device token is gone",
    };

    #[test]
    fn a_retry_wins_over_devices_reached_so_the_others_are_tried_again() {
        let mut t = tally();
        t.sent.push("a".into());
        t.retry = Some((None, "503".into()));
        assert!(matches!(t.outcome(&FLEET), Outcome::Retry { .. }));
    }

    #[test]
    fn one_device_reached_is_a_send_even_when_another_refused() {
        let mut t = tally();
        t.sent.push("a".into());
        t.failed = Some("400".into());
        match t.outcome(&FLEET) {
            Outcome::Sent { detail, .. } => assert_eq!(detail, "pushed to 1 device(s)"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn refused_everywhere_is_permanent_and_all_gone_is_recipient_gone() {
        let mut t = tally();
        t.failed = Some("400 bad payload".into());
        assert!(matches!(t.outcome(&FLEET), Outcome::Permanent(r) if r == "400 bad payload"));
        let mut t = tally();
        t.gone = 2;
        assert!(
            matches!(t.outcome(&FLEET), Outcome::RecipientGone(r) if r == "every device token is gone (2)")
        );
    }
}
