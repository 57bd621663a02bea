//! Zoho: CRM contacts and deals for a booking, and invoices (Zoho Books or Zoho Invoice) for
//! a payment. One OAuth client per app: the refresh-token flow against the account's data
//! centre (the API domain comes from the token answer), the access token shared by every
//! node through the store so it is refreshed at most once per expiry, and refreshed when Zoho
//! refuses it. Every operation is idempotent on the Zoho side (upsert on a duplicate-check
//! field, invoices found by their reference before one is made, a paid invoice left alone),
//! so a retry after a crash or a timeout never makes a second record. Each operation is
//! reported as a sync record: operation, entity, remote id, status, error.

mod books;
mod crm;
mod token;

use std::collections::BTreeMap;
use std::time::Duration;

use bellhop_protocol::Secret;
use serde::{Deserialize, Serialize};
use serde_json::Value;

pub use books::Invoice;
pub use crm::Booking;
use token::TokenCache;

use crate::store::Store;

const ACCOUNTS: &str = "https://accounts.zoho.com";

/// `[apps.zoho]` in the config file.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ZohoConfig {
    pub client_id: String,
    pub client_secret: Secret,
    pub refresh_token: Secret,
    /// The data centre's accounts server (`https://accounts.zoho.eu`, `.in`, `.com.au`, …).
    #[serde(default)]
    pub accounts_url: Option<String>,
    /// The deal field holding the booking reference that makes the deal upsert idempotent.
    #[serde(default = "d_reference")]
    pub deal_reference_field: String,
    /// Where invoices go; none = this app makes no invoices.
    #[serde(default)]
    pub invoices: Option<InvoicesConfig>,
    #[serde(default = "d_timeout")]
    pub timeout_secs: u64,
    /// Calls per second to Zoho for this app, across the cluster.
    #[serde(default)]
    pub max_per_second: Option<u32>,
}

/// `[apps.zoho.invoices]`: Zoho Books or Zoho Invoice, and the organisation.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct InvoicesConfig {
    #[serde(default)]
    pub product: InvoiceProduct,
    pub organization_id: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum InvoiceProduct {
    #[default]
    Books,
    Invoice,
}

fn d_reference() -> String {
    "Booking_Reference".into()
}

fn d_timeout() -> u64 {
    20
}

impl ZohoConfig {
    /// Shape checks made at load, without calling Zoho.
    pub fn validate(&self) -> Result<(), String> {
        if !self.client_id.starts_with("1000.") {
            return Err("zoho.client_id must look like 1000.XXXXXXXX".into());
        }
        if !self.refresh_token.expose().starts_with("1000.") {
            return Err("zoho.refresh_token must look like 1000.xxxx.yyyy".into());
        }
        if let Some(i) = &self.invoices {
            if i.organization_id.is_empty()
                || !i.organization_id.bytes().all(|b| b.is_ascii_digit())
            {
                return Err(
                    "zoho.invoices.organization_id must be the organisation's number".into(),
                );
            }
        }
        Ok(())
    }
}

/// A rule's `zoho = { … }`: which records the event makes, each field a template.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ZohoSpec {
    /// CRM contact fields (upserted on Email).
    #[serde(default)]
    pub contact: Option<BTreeMap<String, String>>,
    /// CRM deal fields (upserted on the reference field, linked to the contact).
    #[serde(default)]
    pub deal: Option<BTreeMap<String, String>>,
    #[serde(default)]
    pub invoice: Option<books::InvoiceSpec>,
}

impl ZohoSpec {
    pub fn validate(&self) -> Result<(), String> {
        if self.deal.is_some() && self.contact.is_none() {
            return Err("zoho.deal needs zoho.contact: a deal is linked to its contact".into());
        }
        if self.contact.is_none() && self.invoice.is_none() {
            return Err("zoho needs a contact (CRM) or an invoice".into());
        }
        if let Some(i) = &self.invoice {
            if i.line_items.is_empty() {
                return Err("zoho.invoice needs at least one line item".into());
            }
        }
        Ok(())
    }
}

/// One operation's outcome, as the seeds' `zohoSyncLogs` record it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SyncRecord {
    pub operation: &'static str,
    pub entity: &'static str,
    pub remote_id: Option<String>,
    pub status: &'static str,
    pub error: Option<String>,
}

impl SyncRecord {
    fn success(operation: &'static str, entity: &'static str, id: &str) -> Self {
        Self {
            operation,
            entity,
            remote_id: Some(id.to_owned()),
            status: "SUCCESS",
            error: None,
        }
    }

    /// The record of one step: its remote id when it succeeded, its error when not.
    fn of(operation: &'static str, entity: &'static str, step: &Result<String, Failure>) -> Self {
        match step {
            Ok(id) => Self::success(operation, entity, id),
            Err(f) => Self {
                operation,
                entity,
                remote_id: None,
                status: "FAILED",
                error: Some(f.reason().to_owned()),
            },
        }
    }
}

/// `CONTACT_UPSERT Contacts 4150868000001234001 SUCCESS`, or `… - FAILED (the error)`.
impl std::fmt::Display for SyncRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {} {} {}",
            self.operation,
            self.entity,
            self.remote_id.as_deref().unwrap_or("-"),
            self.status
        )?;
        match &self.error {
            Some(e) => write!(f, " ({e})"),
            None => Ok(()),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum ZohoResult {
    Done(Vec<SyncRecord>),
    Retry {
        after: Option<Duration>,
        reason: String,
        records: Vec<SyncRecord>,
    },
    Rejected {
        reason: String,
        records: Vec<SyncRecord>,
    },
}

impl ZohoResult {
    pub fn records(&self) -> &[SyncRecord] {
        match self {
            Self::Done(r) | Self::Retry { records: r, .. } | Self::Rejected { records: r, .. } => r,
        }
    }

    fn from_failure(f: Failure, records: Vec<SyncRecord>) -> Self {
        match f {
            Failure::Retry { after, reason } => Self::Retry {
                after,
                reason,
                records,
            },
            Failure::Rejected(reason) => Self::Rejected { reason, records },
        }
    }
}

/// Why a call did not succeed.
#[derive(Debug, Clone, PartialEq)]
enum Failure {
    Retry {
        after: Option<Duration>,
        reason: String,
    },
    Rejected(String),
}

impl Failure {
    fn reason(&self) -> &str {
        match self {
            Self::Retry { reason, .. } | Self::Rejected(reason) => reason,
        }
    }

    fn retry(reason: impl Into<String>) -> Self {
        Self::Retry {
            after: None,
            reason: reason.into(),
        }
    }
}

pub struct Zoho {
    config: ZohoConfig,
    http: reqwest::Client,
    token: TokenCache,
}

impl std::fmt::Debug for Zoho {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Zoho")
            .field("config", &self.config)
            .finish()
    }
}

/// One call: method, URL below the API domain, query, extra headers, JSON body.
struct Call<'a> {
    method: reqwest::Method,
    path: String,
    query: Vec<(&'a str, String)>,
    headers: Vec<(&'static str, String)>,
    body: Option<Value>,
}

impl<'a> Call<'a> {
    fn new(method: reqwest::Method, path: String) -> Self {
        Self {
            method,
            path,
            query: Vec::new(),
            headers: Vec::new(),
            body: None,
        }
    }
}

impl Zoho {
    pub fn new(app_id: &str, config: &ZohoConfig) -> Self {
        Self {
            config: config.clone(),
            http: crate::outbound::client(std::time::Duration::from_secs(
                config.timeout_secs.max(1),
            )),
            token: TokenCache::new(app_id, config),
        }
    }

    pub fn max_per_second(&self) -> Option<u32> {
        self.config.max_per_second
    }

    /// Sends one call with the shared access token; when Zoho refuses the token, it is
    /// marked expired for every node, a new one is fetched (by one node) and the call is sent
    /// once more. Answers the status and the JSON body of any answer that is not a transport,
    /// token, rate-limit or server failure.
    async fn send(&self, store: &Store, call: &Call<'_>) -> Result<(u16, Value), Failure> {
        for _ in 0..2 {
            let token = self.token.get(&self.http, store).await?;
            let mut req = self
                .http
                .request(
                    call.method.clone(),
                    format!("{}{}", token.api_domain, call.path),
                )
                .header("Authorization", format!("Zoho-oauthtoken {}", token.token));
            if !call.query.is_empty() {
                req = req.query(&call.query);
            }
            for (k, v) in &call.headers {
                req = req.header(*k, v);
            }
            if let Some(b) = &call.body {
                req = req.json(b);
            }
            let resp = req.send().await.map_err(|e| {
                Failure::retry(if e.is_timeout() {
                    "Zoho did not answer in time".to_owned()
                } else {
                    "Zoho unreachable".to_owned()
                })
            })?;
            let status = resp.status().as_u16();
            let after = crate::outbound::retry_after(resp.headers());
            let body: Value = resp.json().await.unwrap_or(Value::Null);
            if status == 401 {
                self.token.refused(store, &token.token).await;
                continue;
            }
            if status == 429 {
                return Err(Failure::Retry {
                    after: after.or(Some(Duration::from_secs(60))),
                    reason: format!("429 from Zoho: {}", message(&body)),
                });
            }
            if status >= 500 {
                return Err(Failure::Retry {
                    after,
                    reason: format!("{status} from Zoho: {}", message(&body)),
                });
            }
            return Ok((status, body));
        }
        Err(Failure::retry(
            "Zoho refused a freshly refreshed access token",
        ))
    }
}

/// Zoho's error text: CRM answers `code`/`message`, Books and Invoice a numeric `code` and
/// `message`.
fn message(body: &Value) -> String {
    let code = match &body["code"] {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        _ => String::new(),
    };
    let text = body["message"].as_str().unwrap_or("");
    match (code.is_empty(), text.is_empty()) {
        (true, true) => "no error given".into(),
        (false, true) => code,
        (true, false) => text.into(),
        (false, false) => format!("{code}: {text}"),
    }
}

impl Zoho {
    pub fn deal_reference_field(&self) -> &str {
        &self.config.deal_reference_field
    }
}

/// A `channel = 'zoho'` entry: the contact (and deal) upserted and the invoice paid, each step
/// recorded in `zoho_sync_logs` and summed up on the delivery.
impl crate::delivery::provider::Provider for Zoho {
    fn name(&self) -> &'static str {
        "zoho"
    }

    fn send<'a>(
        &'a self,
        m: &'a crate::delivery::provider::Message<'a>,
        services: &'a crate::delivery::provider::Services<'a>,
    ) -> futures_util::future::BoxFuture<
        'a,
        Result<crate::delivery::provider::Outcome, crate::store::StoreError>,
    > {
        use crate::delivery::provider::Outcome;
        use crate::delivery::templates::{render, TemplateError};
        Box::pin(async move {
            let Some(z) = &m.spec.zoho else {
                return Ok(Outcome::Permanent(
                    "a zoho entry needs zoho = { contact = …, invoice = … }".into(),
                ));
            };
            let fields = |m2: &std::collections::BTreeMap<String, String>| {
                let mut out = serde_json::Map::new();
                for (k, t) in m2 {
                    let v = render("zoho", t, m.vars, false)?;
                    out.insert(k.clone(), serde_json::Value::String(v));
                }
                Ok::<_, TemplateError>(out)
            };
            let booking = match &z.contact {
                Some(contact) => {
                    let contact = fields(contact);
                    let deal = z.deal.as_ref().map(fields).transpose();
                    match (contact, deal) {
                        (Ok(contact), Ok(deal)) => Some(Booking { contact, deal }),
                        (Err(e), _) | (_, Err(e)) => return Ok(Outcome::Permanent(e.to_string())),
                    }
                }
                None => None,
            };
            let invoice = match &z.invoice {
                Some(i) => match i.render(|t| render("zoho.invoice", t, m.vars, false)) {
                    Ok(i) => Some(i),
                    Err(e) => return Ok(Outcome::Permanent(e)),
                },
                None => None,
            };
            let reference = invoice.as_ref().map(|i| i.reference.clone()).or_else(|| {
                booking.as_ref().and_then(|b| {
                    b.deal.as_ref()?[self.deal_reference_field()]
                        .as_str()
                        .map(str::to_owned)
                })
            });
            let result = self.sync(services.store, booking, invoice).await;
            let logs: Vec<_> = result
                .records()
                .iter()
                .map(|r| crate::store::provider_state::NewSyncLog {
                    delivery_id: m.row.id,
                    reference: reference.as_deref(),
                    operation: r.operation,
                    entity: r.entity,
                    remote_id: r.remote_id.as_deref(),
                    status: r.status,
                    error: r.error.as_deref(),
                })
                .collect();
            services.store.add_sync_logs(&m.row.app_id, &logs).await?;
            let log = |records: &[SyncRecord]| {
                records
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join("; ")
            };
            Ok(match result {
                ZohoResult::Done(records) => Outcome::Sent {
                    detail: log(&records),
                    provider_id: None,
                },
                ZohoResult::Retry {
                    after,
                    reason,
                    records,
                } => Outcome::Retry {
                    after,
                    reason: format!("{reason}; {}", log(&records)),
                },
                ZohoResult::Rejected { reason, records } => {
                    Outcome::Permanent(format!("{reason}; {}", log(&records)))
                }
            })
        })
    }

    fn max_per_second(&self) -> Option<u32> {
        Zoho::max_per_second(self)
    }
}
