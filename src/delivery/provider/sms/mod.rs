//! SMS through Twilio or Africa's Talking (one module each). Numbers are normalised to E.164
//! with the app's default region (`0712 345 678` in KE is `+254712345678`); a number that is
//! not one is a recorded skip, never a retry loop. A send that times out after the request
//! went out is *ambiguous*: the gateway may have sent it, so by default it is not sent again.

pub mod africastalking;
pub mod twilio;

use bellhop_protocol::Secret;
use futures_util::future::BoxFuture;
use serde::{Deserialize, Serialize};

use super::{Message, Outcome, Provider, Services};
use crate::store::StoreError;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Gateway {
    Twilio,
    Africastalking,
}

/// `[apps.sms]` in the config file.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SmsConfig {
    pub provider: Gateway,
    /// ISO 3166 region for numbers written without a country code (`KE`, `SA`).
    #[serde(default)]
    pub default_region: Option<String>,
    /// Twilio: `AC…` and its auth token (kept with the app; Debug and admin answers leave it
    /// out); a sender number (`from`) or a Messaging Service (`MG…`).
    #[serde(default)]
    pub account_sid: Option<String>,
    #[serde(default)]
    pub auth_token: Option<Secret>,
    #[serde(default)]
    pub messaging_service_sid: Option<String>,
    /// Africa's Talking: the app username and API key; `sandbox` picks the sandbox URL.
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub api_key: Option<Secret>,
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
            Gateway::Twilio => {
                need(&self.account_sid, "twilio", "account_sid")?;
                if self.auth_token.is_none() {
                    return Err(SmsSetupError::Missing {
                        provider: "twilio",
                        missing: "auth_token",
                    });
                }
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
            Gateway::Africastalking => {
                need(&self.username, "africastalking", "username")?;
                if self.api_key.is_none() {
                    return Err(SmsSetupError::Missing {
                        provider: "africastalking",
                        missing: "api_key",
                    });
                }
            }
        }
        Ok(())
    }
}

/// The SMS provider of one app.
#[derive(Debug)]
pub struct Sms {
    config: SmsConfig,
    http: reqwest::Client,
}

impl Sms {
    pub fn new(config: &SmsConfig) -> Result<Self, SmsSetupError> {
        config.validate()?;
        Ok(Self {
            config: config.clone(),
            http: crate::outbound::client(std::time::Duration::from_secs(
                config.timeout_secs.max(1),
            )),
        })
    }

    /// Sends `body` to `to` (E.164).
    pub async fn send_text(&self, to: &str, body: &str) -> Outcome {
        match self.config.provider {
            Gateway::Twilio => twilio::send(&self.http, &self.config, to, body).await,
            Gateway::Africastalking => {
                africastalking::send(&self.http, &self.config, to, body).await
            }
        }
    }
}

impl Provider for Sms {
    fn name(&self) -> &'static str {
        "sms"
    }

    fn send<'a>(
        &'a self,
        m: &'a Message<'a>,
        _: &'a Services<'a>,
    ) -> BoxFuture<'a, Result<Outcome, StoreError>> {
        Box::pin(async move {
            let number = m
                .profile
                .and_then(|p| p.phone.clone())
                .or_else(|| m.row.address.clone());
            let Some(number) = number else {
                return Ok(Outcome::RecipientGone("no phone number".into()));
            };
            let to = match normalize(&number, self.config.default_region.as_deref()) {
                Ok(n) => n,
                Err(reason) => return Ok(Outcome::RecipientGone(reason)),
            };
            Ok(match self.send_text(&to, &m.rendered.body).await {
                Outcome::Sent { provider_id, .. } => Outcome::Sent {
                    detail: format!("to {to}"),
                    provider_id,
                },
                other => other,
            })
        })
    }

    fn max_per_second(&self) -> Option<u32> {
        self.config.max_per_second
    }

    fn id_means_sent(&self) -> bool {
        true
    }
}

/// What a gateway that may have received the request but answered nothing usable comes to.
pub(crate) fn no_answer(e: crate::outbound::NoAnswer) -> Outcome {
    match e {
        crate::outbound::NoAnswer::NotSent(reason) => Outcome::Retry {
            after: None,
            reason: format!("the provider could not be reached: {reason}"),
        },
        crate::outbound::NoAnswer::Unknown(reason) => {
            Outcome::Ambiguous(format!("{reason}; the message may have been sent"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
            provider: Gateway::Twilio,
            default_region: Some("KE".into()),
            account_sid: Some(format!("AC{}", "a".repeat(32))),
            auth_token: Some(Secret::parse("t").unwrap()),
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
        c.provider = Gateway::Africastalking;
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
}
