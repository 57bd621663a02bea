//! Zoho CRM: the OAuth refresh-token flow against the account's data centre (the API domain
//! comes from the token response), the access token cached until a minute before it expires
//! and refreshed when Zoho says it is no longer valid; a booking upserts the contact
//! (duplicate check on email) and upserts the deal linked to it (duplicate check on a
//! reference field, so a retry never creates a second deal). Each operation is reported as a
//! sync record: operation, entity, remote id, status, error.

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use tokio::sync::Mutex;

const ACCOUNTS: &str = "https://accounts.zoho.com";

/// `[apps.zoho]` in the config file.
#[derive(Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ZohoConfig {
    pub client_id: String,
    pub client_secret: String,
    pub refresh_token: String,
    /// The data centre's accounts server (`https://accounts.zoho.eu`, `.in`, `.com.au`, …).
    #[serde(default)]
    pub accounts_url: Option<String>,
    /// The deal field holding the booking reference that makes the deal upsert idempotent.
    #[serde(default = "d_reference")]
    pub deal_reference_field: String,
    #[serde(default = "d_timeout")]
    pub timeout_secs: u64,
}

fn d_reference() -> String {
    "Booking_Reference".into()
}

fn d_timeout() -> u64 {
    20
}

impl std::fmt::Debug for ZohoConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ZohoConfig")
            .field("client_id", &self.client_id)
            .field("accounts_url", &self.accounts_url)
            .finish_non_exhaustive()
    }
}

/// A rule's `zoho = { contact = { … }, deal = { … } }`: field name → template.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ZohoSpec {
    pub contact: std::collections::BTreeMap<String, String>,
    #[serde(default)]
    pub deal: Option<std::collections::BTreeMap<String, String>>,
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

struct Token {
    value: String,
    api_domain: String,
    until: Instant,
}

pub struct Zoho {
    config: ZohoConfig,
    http: reqwest::Client,
    token: Mutex<Option<Token>>,
}

impl std::fmt::Debug for Zoho {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Zoho")
            .field("config", &self.config)
            .finish()
    }
}

enum Call {
    Ok(Value),
    /// The access token was refused: fetch a new one and try once more.
    TokenRefused,
    Retry(String),
    Rejected(String),
}

impl Zoho {
    pub fn new(config: &ZohoConfig) -> Self {
        Self {
            config: config.clone(),
            http: super::sms::provider_client(config.timeout_secs),
            token: Mutex::new(None),
        }
    }

    /// A valid access token and the API domain it is for.
    async fn token(&self) -> Result<(String, String), String> {
        let mut cached = self.token.lock().await;
        if let Some(t) = cached.as_ref().filter(|t| t.until > Instant::now()) {
            return Ok((t.value.clone(), t.api_domain.clone()));
        }
        let c = &self.config;
        let url = format!(
            "{}/oauth/v2/token",
            super::sms::base_url(c.accounts_url.as_deref(), ACCOUNTS)
        );
        let resp = self
            .http
            .post(url)
            .form(&[
                ("refresh_token", c.refresh_token.as_str()),
                ("client_id", c.client_id.as_str()),
                ("client_secret", c.client_secret.as_str()),
                ("grant_type", "refresh_token"),
            ])
            .send()
            .await
            .map_err(|e| format!("Zoho accounts unreachable: {e}"))?;
        let body: Value = resp.json().await.unwrap_or(Value::Null);
        let (Some(token), Some(domain)) =
            (body["access_token"].as_str(), body["api_domain"].as_str())
        else {
            return Err(format!(
                "Zoho refused the refresh token: {}",
                body["error"].as_str().unwrap_or("no access_token")
            ));
        };
        let ttl = body["expires_in"].as_u64().unwrap_or(3600);
        *cached = Some(Token {
            value: token.to_owned(),
            api_domain: domain.trim_end_matches('/').to_owned(),
            until: Instant::now() + Duration::from_secs(ttl.saturating_sub(60)),
        });
        Ok((token.to_owned(), domain.trim_end_matches('/').to_owned()))
    }

    async fn upsert(&self, module: &str, record: Value, check: &str) -> Call {
        for _ in 0..2 {
            let (token, domain) = match self.token().await {
                Ok(t) => t,
                Err(e) => return Call::Retry(e),
            };
            let resp = self
                .http
                .post(format!("{domain}/crm/v2/{module}/upsert"))
                .header("Authorization", format!("Zoho-oauthtoken {token}"))
                .json(&json!({"data": [record], "duplicate_check_fields": [check]}))
                .send()
                .await;
            let Ok(resp) = resp else {
                return Call::Retry(format!("Zoho CRM unreachable for {module}"));
            };
            let status = resp.status().as_u16();
            let body: Value = resp.json().await.unwrap_or(Value::Null);
            if status == 401 && body["code"] == "INVALID_TOKEN" {
                *self.token.lock().await = None;
                continue;
            }
            if status == 429 || status >= 500 {
                return Call::Retry(format!("{status} from Zoho CRM"));
            }
            let item = &body["data"][0];
            return match (item["status"].as_str(), item["details"]["id"].as_str()) {
                (Some("success"), Some(_)) => Call::Ok(item.clone()),
                _ => Call::Rejected(format!(
                    "{status} {}: {}",
                    item["code"]
                        .as_str()
                        .or(body["code"].as_str())
                        .unwrap_or(""),
                    item["message"]
                        .as_str()
                        .or(body["message"].as_str())
                        .unwrap_or("")
                )),
            };
        }
        Call::TokenRefused
    }

    /// Upserts the contact, then the deal linked to it.
    pub async fn sync_booking(
        &self,
        contact: Map<String, Value>,
        deal: Option<Map<String, Value>>,
    ) -> ZohoResult {
        let mut records = Vec::new();
        let record = |op, entity, r: &Call| SyncRecord {
            operation: op,
            entity,
            remote_id: match r {
                Call::Ok(v) => v["details"]["id"].as_str().map(str::to_owned),
                _ => None,
            },
            status: if matches!(r, Call::Ok(_)) {
                "SUCCESS"
            } else {
                "FAILED"
            },
            error: match r {
                Call::Ok(_) => None,
                Call::Retry(e) | Call::Rejected(e) => Some(e.clone()),
                Call::TokenRefused => Some("the access token was refused twice".into()),
            },
        };
        let c = self
            .upsert("Contacts", Value::Object(contact), "Email")
            .await;
        records.push(record("CONTACT_UPSERT", "Contacts", &c));
        let contact_id = match c {
            Call::Ok(v) => v["details"]["id"].as_str().unwrap_or("").to_owned(),
            Call::Retry(reason) => {
                return ZohoResult::Retry {
                    after: None,
                    reason,
                    records,
                }
            }
            Call::TokenRefused => {
                return ZohoResult::Retry {
                    after: None,
                    reason: "the access token was refused twice".into(),
                    records,
                }
            }
            Call::Rejected(reason) => return ZohoResult::Rejected { reason, records },
        };
        let Some(mut deal) = deal else {
            return ZohoResult::Done(records);
        };
        deal.insert("Contact_Name".into(), json!({ "id": contact_id }));
        let d = self
            .upsert(
                "Deals",
                Value::Object(deal),
                &self.config.deal_reference_field,
            )
            .await;
        records.push(record("DEAL_CREATE", "Deals", &d));
        match d {
            Call::Ok(_) => ZohoResult::Done(records),
            Call::Retry(reason) => ZohoResult::Retry {
                after: None,
                reason,
                records,
            },
            Call::TokenRefused => ZohoResult::Retry {
                after: None,
                reason: "the access token was refused twice".into(),
                records,
            },
            Call::Rejected(reason) => ZohoResult::Rejected { reason, records },
        }
    }
}
