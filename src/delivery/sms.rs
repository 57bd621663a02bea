//! SMS through Twilio (Messages API: form-encoded, Basic auth with the account SID and auth
//! token, a sender number or a Messaging Service) or Africa's Talking (`apiKey` header,
//! username, sandbox and live base URLs, a status per recipient). Numbers are normalised to
//! E.164 with the app's default region (`0712 345 678` in KE is `+254712345678`); a number
//! that is not one is a recorded skip, never a retry loop. A send that times out after the
//! request went out is *ambiguous*: the provider may have sent it, so by default it is not
//! sent again.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;

const TWILIO: &str = "https://api.twilio.com";
const AT_LIVE: &str = "https://api.africastalking.com";
const AT_SANDBOX: &str = "https://api.sandbox.africastalking.com";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Provider {
    Twilio,
    Africastalking,
}

/// `[apps.sms]` in the config file.
#[derive(Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SmsConfig {
    pub provider: Provider,
    /// ISO 3166 region for numbers written without a country code (`KE`, `SA`).
    #[serde(default)]
    pub default_region: Option<String>,
    /// Twilio: `AC…` and its auth token (kept with the app; Debug and admin answers leave it
    /// out); a sender number (`from`) or a Messaging Service (`MG…`).
    #[serde(default)]
    pub account_sid: Option<String>,
    #[serde(default)]
    pub auth_token: Option<String>,
    #[serde(default)]
    pub messaging_service_sid: Option<String>,
    /// Africa's Talking: the app username and API key; `sandbox` picks the sandbox URL.
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub api_key: Option<String>,
    #[serde(default)]
    pub sandbox: bool,
    /// The sender: a number, a short code or an alphanumeric sender id.
    #[serde(default)]
    pub from: Option<String>,
    /// Overrides the provider's base URL (tests point it at a local server).
    #[serde(default)]
    pub base_url: Option<String>,
    #[serde(default = "d_timeout")]
    pub timeout_secs: u64,
    /// Twilio: the public URL of this app's `/callbacks/{app_id}/twilio` endpoint; when set,
    /// every message asks Twilio to report its status there (signature checked).
    #[serde(default)]
    pub status_callback_url: Option<String>,
    /// Messages per second for this app, across the cluster (the account's or sender's
    /// throughput); none = as fast as the provider answers.
    #[serde(default)]
    pub max_per_second: Option<u32>,
}

fn d_timeout() -> u64 {
    15
}

impl std::fmt::Debug for SmsConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SmsConfig")
            .field("provider", &self.provider)
            .field("default_region", &self.default_region)
            .field("account_sid", &self.account_sid)
            .field("username", &self.username)
            .field("from", &self.from)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum SmsSetupError {
    #[error("sms: unknown default_region {0:?} (use an ISO 3166 code such as KE or SA)")]
    Region(String),
    #[error("sms ({provider}): {missing} is required")]
    Missing {
        provider: &'static str,
        missing: &'static str,
    },
    #[error("sms (twilio): account_sid must look like AC followed by 32 hex digits")]
    AccountSid,
}

fn region(name: Option<&str>) -> Result<Option<phonenumber::country::Id>, SmsSetupError> {
    name.map(|r| {
        r.to_ascii_uppercase()
            .parse::<phonenumber::country::Id>()
            .map_err(|_| SmsSetupError::Region(r.to_owned()))
    })
    .transpose()
}

/// The number in E.164 (`+254712345678`), or why it is not one.
pub fn normalize(number: &str, default_region: Option<&str>) -> Result<String, String> {
    let region = region(default_region).map_err(|e| e.to_string())?;
    let parsed = phonenumber::parse(region, number)
        .map_err(|_| format!("{number:?} is not a phone number"))?;
    if !phonenumber::is_valid(&parsed) {
        return Err(format!("{number:?} is not a valid phone number"));
    }
    Ok(parsed.format().mode(phonenumber::Mode::E164).to_string())
}

impl SmsConfig {
    pub fn validate(&self) -> Result<(), SmsSetupError> {
        region(self.default_region.as_deref())?;
        let need = |v: &Option<String>, provider, missing| match v {
            Some(s) if !s.is_empty() => Ok(()),
            _ => Err(SmsSetupError::Missing { provider, missing }),
        };
        match self.provider {
            Provider::Twilio => {
                need(&self.account_sid, "twilio", "account_sid")?;
                need(&self.auth_token, "twilio", "auth_token")?;
                let sid = self.account_sid.as_deref().unwrap_or("");
                let hex = sid.strip_prefix("AC").unwrap_or("");
                if hex.len() != 32 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return Err(SmsSetupError::AccountSid);
                }
                if self.from.is_none() && self.messaging_service_sid.is_none() {
                    return Err(SmsSetupError::Missing {
                        provider: "twilio",
                        missing: "from or messaging_service_sid",
                    });
                }
            }
            Provider::Africastalking => {
                need(&self.username, "africastalking", "username")?;
                need(&self.api_key, "africastalking", "api_key")?;
            }
        }
        Ok(())
    }
}

/// What one send came to.
#[derive(Debug, Clone, PartialEq)]
pub enum SmsResult {
    /// Accepted; the provider's message id.
    Sent(String),
    /// This recipient cannot get SMS (invalid, unsubscribed, blacklisted): skip, do not retry.
    BadRecipient(String),
    Retry {
        after: Option<Duration>,
        reason: String,
    },
    /// Will not succeed as configured (credentials, sender id, balance).
    Rejected(String),
    /// The request went out and no answer came: it may have been sent.
    Ambiguous(String),
}

pub struct Sms {
    config: SmsConfig,
    http: reqwest::Client,
}

impl std::fmt::Debug for Sms {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sms").field("config", &self.config).finish()
    }
}

pub(crate) fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    headers
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(|s| Duration::from_secs(s.min(3600)))
}

/// Twilio error codes that mean this recipient cannot be sent to.
const TWILIO_BAD_RECIPIENT: [i64; 6] = [21211, 21214, 21610, 21612, 21614, 21408];

pub fn classify_twilio(status: u16, headers: &reqwest::header::HeaderMap, body: &str) -> SmsResult {
    let v: Value = serde_json::from_str(body).unwrap_or(Value::Null);
    if (200..300).contains(&status) {
        return match v["sid"].as_str() {
            Some(sid) => SmsResult::Sent(sid.to_owned()),
            None => SmsResult::Ambiguous(format!("{status} without a message sid")),
        };
    }
    let code = v["code"].as_i64().unwrap_or(0);
    let reason = format!(
        "{status} Twilio {code}: {}",
        v["message"].as_str().unwrap_or("")
    );
    match (status, code) {
        (_, c) if TWILIO_BAD_RECIPIENT.contains(&c) => SmsResult::BadRecipient(reason),
        (429, _) | (_, 20429) => SmsResult::Retry {
            after: retry_after(headers),
            reason,
        },
        (500..=599, _) => SmsResult::Retry {
            after: retry_after(headers),
            reason,
        },
        _ => SmsResult::Rejected(reason),
    }
}

/// Africa's Talking answers 201 with a status per recipient.
pub fn classify_africastalking(
    status: u16,
    headers: &reqwest::header::HeaderMap,
    body: &str,
) -> SmsResult {
    if status == 429 || status >= 500 {
        return SmsResult::Retry {
            after: retry_after(headers),
            reason: format!("{status}: {}", body.chars().take(200).collect::<String>()),
        };
    }
    let v: Value = match serde_json::from_str(body) {
        Ok(v) => v,
        // 401 answers plain text ("The supplied authentication is invalid").
        Err(_) => return SmsResult::Rejected(format!("{status}: {}", body.trim())),
    };
    let Some(r) = v["SMSMessageData"]["Recipients"].get(0) else {
        let message = v["SMSMessageData"]["Message"].as_str().unwrap_or("");
        // "InvalidPhoneNumber" comes back with no recipient at all.
        return if message.contains("Invalid") {
            SmsResult::BadRecipient(format!("{status}: {message}"))
        } else {
            SmsResult::Rejected(format!("{status}: {message}"))
        };
    };
    let code = r["statusCode"].as_i64().unwrap_or(0);
    let reason = format!("{code} {}", r["status"].as_str().unwrap_or(""));
    match code {
        100..=102 => SmsResult::Sent(r["messageId"].as_str().unwrap_or("").to_owned()),
        403 | 404 | 406 => SmsResult::BadRecipient(reason),
        407 | 500..=502 => SmsResult::Retry {
            after: None,
            reason,
        },
        _ => SmsResult::Rejected(reason),
    }
}

/// The HTTP client for a messaging provider: the send's timeout, and 5 s to connect.
pub(crate) fn provider_client(timeout_secs: u64) -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(timeout_secs.max(1)))
        .connect_timeout(Duration::from_secs(5))
        .build()
        // unwrap: a client with timeouts only always builds.
        .unwrap()
}

/// The provider's base URL, or the configured override (tests point it at a local server).
pub(crate) fn base_url(configured: Option<&str>, default: &str) -> String {
    configured
        .unwrap_or(default)
        .trim_end_matches('/')
        .to_owned()
}

/// Sends a provider request and reads its answer. A failure before anything reached the
/// provider may be retried; one after the request went out (a timeout, a cut connection or
/// answer) is ambiguous: the message may have been sent.
pub(crate) async fn exchange(
    req: reqwest::RequestBuilder,
) -> Result<(u16, reqwest::header::HeaderMap, String), SmsResult> {
    let resp = match req.send().await {
        Ok(r) => r,
        Err(e) if e.is_connect() => {
            return Err(SmsResult::Retry {
                after: None,
                reason: "the provider could not be reached".into(),
            })
        }
        Err(e) if e.is_timeout() => {
            return Err(SmsResult::Ambiguous(
                "no answer within the timeout; the message may have been sent".into(),
            ))
        }
        Err(_) => {
            return Err(SmsResult::Ambiguous(
                "the connection failed after the request was sent".into(),
            ))
        }
    };
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    match resp.text().await {
        Ok(t) => Ok((status, headers, t)),
        Err(_) => Err(SmsResult::Ambiguous("the answer was cut off".into())),
    }
}

impl Sms {
    pub fn new(config: &SmsConfig) -> Result<Self, SmsSetupError> {
        config.validate()?;
        Ok(Self {
            config: config.clone(),
            http: provider_client(config.timeout_secs),
        })
    }

    pub fn default_region(&self) -> Option<&str> {
        self.config.default_region.as_deref()
    }

    pub fn max_per_second(&self) -> Option<u32> {
        self.config.max_per_second
    }

    fn base(&self, default: &str) -> String {
        base_url(self.config.base_url.as_deref(), default)
    }

    /// Sends `body` to `to` (E.164).
    pub async fn send(&self, to: &str, body: &str) -> SmsResult {
        let c = &self.config;
        let req = match c.provider {
            Provider::Twilio => {
                let sid = c.account_sid.as_deref().unwrap_or("");
                let url = format!(
                    "{}/2010-04-01/Accounts/{sid}/Messages.json",
                    self.base(TWILIO)
                );
                let mut form = vec![("To", to), ("Body", body)];
                match (&c.messaging_service_sid, &c.from) {
                    (Some(m), _) => form.push(("MessagingServiceSid", m)),
                    (None, Some(f)) => form.push(("From", f)),
                    (None, None) => {}
                }
                if let Some(cb) = &c.status_callback_url {
                    form.push(("StatusCallback", cb));
                }
                self.http
                    .post(url)
                    .basic_auth(sid, c.auth_token.as_deref())
                    .form(&form)
            }
            Provider::Africastalking => {
                let default = if c.sandbox { AT_SANDBOX } else { AT_LIVE };
                let url = format!("{}/version1/messaging", self.base(default));
                let mut form = vec![
                    ("username", c.username.as_deref().unwrap_or("")),
                    ("to", to),
                    ("message", body),
                ];
                if let Some(f) = &c.from {
                    form.push(("from", f));
                }
                self.http
                    .post(url)
                    .header("apiKey", c.api_key.as_deref().unwrap_or(""))
                    .header("Accept", "application/json")
                    .form(&form)
            }
        };
        let (status, headers, text) = match exchange(req).await {
            Ok(answer) => answer,
            Err(failed) => return failed,
        };
        match c.provider {
            Provider::Twilio => classify_twilio(status, &headers, &text),
            Provider::Africastalking => classify_africastalking(status, &headers, &text),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderMap;
    use serde_json::json;

    #[test]
    fn numbers_become_e164_with_the_default_region() {
        assert_eq!(
            normalize("0712 345 678", Some("KE")).unwrap(),
            "+254712345678"
        );
        assert_eq!(normalize("+254 712 345678", None).unwrap(), "+254712345678");
        assert_eq!(
            normalize("050 123 4567", Some("sa")).unwrap(),
            "+966501234567"
        );
        assert!(normalize("12", Some("KE")).is_err());
        assert!(normalize("not a number", Some("KE")).is_err());
        assert!(
            normalize("0712345678", None).is_err(),
            "no region, no country code"
        );
    }

    #[test]
    fn configs_name_what_is_missing() {
        let mut c = SmsConfig {
            provider: Provider::Twilio,
            default_region: Some("KE".into()),
            account_sid: Some(format!("AC{}", "a".repeat(32))),
            auth_token: Some("t".into()),
            messaging_service_sid: None,
            username: None,
            api_key: None,
            sandbox: false,
            from: Some("+15005550006".into()),
            base_url: None,
            timeout_secs: 15,
            status_callback_url: None,
            max_per_second: None,
        };
        assert!(c.validate().is_ok());
        c.account_sid = Some("AC123".into());
        assert_eq!(c.validate(), Err(SmsSetupError::AccountSid));
        c.provider = Provider::Africastalking;
        assert!(matches!(
            c.validate(),
            Err(SmsSetupError::Missing {
                missing: "username",
                ..
            })
        ));
        c.default_region = Some("XX".into());
        assert!(matches!(c.validate(), Err(SmsSetupError::Region(_))));
    }

    #[test]
    fn twilio_answers_are_classified() {
        let h = HeaderMap::new();
        let ok = json!({"sid": "SM123", "status": "queued"}).to_string();
        assert_eq!(
            classify_twilio(201, &h, &ok),
            SmsResult::Sent("SM123".into())
        );
        let invalid = json!({"code": 21211, "message": "The 'To' number +1234 is not a valid phone number.", "status": 400}).to_string();
        assert!(matches!(
            classify_twilio(400, &h, &invalid),
            SmsResult::BadRecipient(_)
        ));
        let stop = json!({"code": 21610, "message": "Attempt to send to unsubscribed recipient", "status": 400}).to_string();
        assert!(matches!(
            classify_twilio(400, &h, &stop),
            SmsResult::BadRecipient(_)
        ));
        let busy =
            json!({"code": 20429, "message": "Too Many Requests", "status": 429}).to_string();
        assert!(matches!(
            classify_twilio(429, &h, &busy),
            SmsResult::Retry { .. }
        ));
        let auth = json!({"code": 20003, "message": "Authenticate", "status": 401}).to_string();
        assert!(matches!(
            classify_twilio(401, &h, &auth),
            SmsResult::Rejected(_)
        ));
    }

    #[test]
    fn africas_talking_answers_are_classified() {
        let h = HeaderMap::new();
        let sent = json!({"SMSMessageData": {"Message": "Sent to 1/1 Total Cost: KES 0.8000",
            "Recipients": [{"statusCode": 101, "number": "+254711XXXYYY", "status": "Success",
            "cost": "KES 0.8000", "messageId": "ATPid_SampleTxnId123"}]}})
        .to_string();
        assert_eq!(
            classify_africastalking(201, &h, &sent),
            SmsResult::Sent("ATPid_SampleTxnId123".into())
        );
        let bad = json!({"SMSMessageData": {"Message": "Sent to 0/1", "Recipients": [
            {"statusCode": 403, "number": "+2547", "status": "InvalidPhoneNumber", "cost": "0", "messageId": "None"}]}})
        .to_string();
        assert!(matches!(
            classify_africastalking(201, &h, &bad),
            SmsResult::BadRecipient(_)
        ));
        let broke = json!({"SMSMessageData": {"Message": "Sent to 0/1", "Recipients": [
            {"statusCode": 405, "number": "+254711", "status": "InsufficientBalance", "cost": "0", "messageId": "None"}]}})
        .to_string();
        assert!(matches!(
            classify_africastalking(201, &h, &broke),
            SmsResult::Rejected(_)
        ));
        assert!(matches!(
            classify_africastalking(401, &h, "The supplied authentication is invalid"),
            SmsResult::Rejected(_)
        ));
        assert!(matches!(
            classify_africastalking(503, &h, ""),
            SmsResult::Retry { .. }
        ));
    }
}
