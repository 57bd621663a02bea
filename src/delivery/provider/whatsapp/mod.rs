//! WhatsApp through the Meta Cloud API or Twilio (one module each): a template with rendered
//! body parameters, or free-form text, which WhatsApp takes only inside the 24-hour customer
//! window ("the window is closed" is a permanent outcome that says a template was needed).
//! Numbers are normalised to E.164 like SMS.

pub mod meta;
pub mod twilio;

use bellhop_protocol::Secret;
use futures_util::future::BoxFuture;
use serde::{Deserialize, Serialize};

use super::{Message, Outcome, Provider, Services};
use crate::delivery::templates::render;
use crate::store::StoreError;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Gateway {
    Meta,
    Twilio,
}

/// `[apps.whatsapp]` in the config file.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct WhatsappConfig {
    pub provider: Gateway,
    #[serde(default)]
    pub default_region: Option<String>,
    /// Meta: the business phone number's id and a system-user access token.
    #[serde(default)]
    pub phone_number_id: Option<String>,
    #[serde(default)]
    pub access_token: Option<Secret>,
    #[serde(default = "d_version")]
    pub api_version: String,
    /// Twilio: account SID, auth token and the WhatsApp sender (`+14155238886`).
    #[serde(default)]
    pub account_sid: Option<String>,
    #[serde(default)]
    pub auth_token: Option<Secret>,
    #[serde(default)]
    pub from: Option<String>,
    #[serde(default)]
    pub base_url: Option<String>,
    #[serde(default = "d_timeout")]
    pub timeout_secs: u64,
    /// Meta: the app secret that signs status webhooks (`X-Hub-Signature-256`) and the token
    /// its subscription check must echo.
    #[serde(default)]
    pub app_secret: Option<Secret>,
    #[serde(default)]
    pub verify_token: Option<Secret>,
    /// Twilio: the public URL of `/callbacks/{app_id}/twilio` for status reports.
    #[serde(default)]
    pub status_callback_url: Option<String>,
    /// Messages per second for this app, across the cluster (the account's or sender's
    /// throughput); none = as fast as the provider answers.
    #[serde(default)]
    pub max_per_second: Option<u32>,
}

fn d_version() -> String {
    "v21.0".into()
}

fn d_timeout() -> u64 {
    15
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum WhatsappSetupError {
    #[error("whatsapp ({provider}): {missing} is required")]
    Missing {
        provider: &'static str,
        missing: &'static str,
    },
}

/// A rule's `whatsapp_template = { name, language, params = [...] }`: `params` are
/// templates rendered in order into the body's `{{1}}`, `{{2}}`… (Meta) or the content
/// variables `"1"`, `"2"`… (Twilio, where `name` is the `HX…` content SID).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TemplateSpec {
    pub name: String,
    #[serde(default = "d_language")]
    pub language: String,
    #[serde(default)]
    pub params: Vec<String>,
}

fn d_language() -> String {
    "en_US".into()
}

/// What to send: a template with rendered parameters, or free-form text.
pub enum Content<'a> {
    Template {
        name: &'a str,
        language: &'a str,
        params: Vec<String>,
    },
    Text(&'a str),
}

/// Free-form text outside the customer window: only a template reaches them now.
pub(crate) fn window_closed(detail: &str) -> Outcome {
    Outcome::Permanent(format!(
        "the 24-hour window is closed; a template is needed ({detail})"
    ))
}

impl WhatsappConfig {
    pub fn validate(&self) -> Result<(), WhatsappSetupError> {
        let need = |v: &Option<String>, provider, missing| match v {
            Some(s) if !s.is_empty() => Ok(()),
            _ => Err(WhatsappSetupError::Missing { provider, missing }),
        };
        match self.provider {
            Gateway::Meta => {
                need(&self.phone_number_id, "meta", "phone_number_id")?;
                if self.access_token.is_none() {
                    return Err(WhatsappSetupError::Missing {
                        provider: "meta",
                        missing: "access_token",
                    });
                }
                Ok(())
            }
            Gateway::Twilio => {
                need(&self.account_sid, "twilio", "account_sid")?;
                if self.auth_token.is_none() {
                    return Err(WhatsappSetupError::Missing {
                        provider: "twilio",
                        missing: "auth_token",
                    });
                }
                need(&self.from, "twilio", "from")
            }
        }
    }
}

/// The WhatsApp provider of one app.
#[derive(Debug)]
pub struct Whatsapp {
    config: WhatsappConfig,
    http: reqwest::Client,
}

impl Whatsapp {
    pub fn new(config: &WhatsappConfig) -> Result<Self, WhatsappSetupError> {
        config.validate()?;
        Ok(Self {
            config: config.clone(),
            http: crate::outbound::client(std::time::Duration::from_secs(
                config.timeout_secs.max(1),
            )),
        })
    }

    /// Sends `content` to `to` (E.164).
    pub async fn send_to(&self, to: &str, content: Content<'_>) -> Outcome {
        match self.config.provider {
            Gateway::Meta => meta::send(&self.http, &self.config, to, &content).await,
            Gateway::Twilio => twilio::send(&self.http, &self.config, to, &content).await,
        }
    }
}

impl Provider for Whatsapp {
    fn name(&self) -> &'static str {
        "whatsapp"
    }

    fn send<'a>(
        &'a self,
        m: &'a Message<'a>,
        _: &'a Services<'a>,
    ) -> BoxFuture<'a, Result<Outcome, StoreError>> {
        Box::pin(async move {
            let number = m
                .profile
                .and_then(|p| p.whatsapp.clone().or_else(|| p.phone.clone()))
                .or_else(|| m.row.address.clone());
            let Some(number) = number else {
                return Ok(Outcome::RecipientGone("no WhatsApp number".into()));
            };
            let region = self.config.default_region.as_deref();
            let to = match super::sms::normalize(&number, region) {
                Ok(n) => n,
                Err(reason) => return Ok(Outcome::RecipientGone(reason)),
            };
            let content = match &m.spec.whatsapp_template {
                Some(t) => {
                    let mut params = Vec::with_capacity(t.params.len());
                    for p in &t.params {
                        match render("whatsapp_template.params", p, m.vars, false) {
                            Ok(v) => params.push(v),
                            Err(e) => return Ok(Outcome::Permanent(e.to_string())),
                        }
                    }
                    Content::Template {
                        name: &t.name,
                        language: &t.language,
                        params,
                    }
                }
                None => Content::Text(&m.rendered.body),
            };
            Ok(match self.send_to(&to, content).await {
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
