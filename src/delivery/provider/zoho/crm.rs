//! Zoho CRM: a booking upserts its contact (duplicate check on Email) and then its deal
//! (duplicate check on the reference field), linked to the contact.

use reqwest::Method;
use serde_json::{json, Map, Value};

use super::{message, Call, Failure, SyncRecord, Zoho, ZohoResult};
use crate::store::Store;

/// A booking's rendered CRM fields.
pub struct Booking {
    pub contact: Map<String, Value>,
    pub deal: Option<Map<String, Value>>,
}

impl Zoho {
    async fn upsert(
        &self,
        store: &Store,
        module: &str,
        record: Value,
        check: &str,
    ) -> Result<String, Failure> {
        let mut call = Call::new(Method::POST, format!("/crm/v2/{module}/upsert"));
        call.body = Some(json!({"data": [record], "duplicate_check_fields": [check]}));
        let (status, body) = self.send(store, &call).await?;
        let item = &body["data"][0];
        match (item["status"].as_str(), item["details"]["id"].as_str()) {
            (Some("success"), Some(id)) => Ok(id.to_owned()),
            _ if item.is_object() => Err(Failure::Rejected(format!("{status} {}", message(item)))),
            _ => Err(Failure::Rejected(format!("{status} {}", message(&body)))),
        }
    }

    /// Upserts the contact, then the deal linked to it; `records` gets one entry per step.
    pub(super) async fn sync_booking(
        &self,
        store: &Store,
        booking: Booking,
        records: &mut Vec<SyncRecord>,
    ) -> Result<(), Failure> {
        let contact = self
            .upsert(store, "Contacts", Value::Object(booking.contact), "Email")
            .await;
        records.push(SyncRecord::of("CONTACT_UPSERT", "Contacts", &contact));
        let contact_id = contact?;
        let Some(mut deal) = booking.deal else {
            return Ok(());
        };
        deal.insert("Contact_Name".into(), json!({ "id": contact_id }));
        let check = self.config.deal_reference_field.clone();
        let deal = self
            .upsert(store, "Deals", Value::Object(deal), &check)
            .await;
        records.push(SyncRecord::of("DEAL_CREATE", "Deals", &deal));
        deal.map(drop)
    }

    /// The CRM records of a booking and/or the invoice of a payment, in that order.
    pub async fn sync(
        &self,
        store: &Store,
        booking: Option<Booking>,
        invoice: Option<super::Invoice>,
    ) -> ZohoResult {
        let mut records = Vec::new();
        if let Some(b) = booking {
            if let Err(f) = self.sync_booking(store, b, &mut records).await {
                return ZohoResult::from_failure(f, records);
            }
        }
        if let Some(i) = invoice {
            if let Err(f) = self.sync_invoice(store, i, &mut records).await {
                return ZohoResult::from_failure(f, records);
            }
        }
        ZohoResult::Done(records)
    }
}
