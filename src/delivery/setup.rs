//! Each app's delivery setup, built from its config: its rules, its business-event webhook
//! subscriptions and its providers, one per channel. The wiring keeps the setups in step with
//! the apps (a changed app gets a new setup), so delivery never looks at an app itself.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::RwLock;
use serde::{Deserialize, Serialize};

use super::event_webhooks::{Subscription, SubscriptionError};
use super::provider::email::{EmailConfig, EmailSetupError, Mailer};
use super::provider::fcm::{Fcm, FcmConfig, FcmSetupError};
use super::provider::in_app::InApp;
use super::provider::sms::{Sms, SmsConfig, SmsSetupError};
use super::provider::web_push::{WebPush, WebPushConfig, WebPushSetupError};
use super::provider::whatsapp::{Whatsapp, WhatsappConfig, WhatsappSetupError};
use super::provider::zoho::{Zoho, ZohoConfig};
use super::provider::Provider;
use super::rules::{ChannelKind, Rule, RuleConfig, RuleError};

/// The delivery part of an app's config.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
pub struct DeliveryConfig {
    pub app_id: String,
    pub rules: Vec<RuleConfig>,
    pub fcm: Option<FcmConfig>,
    pub email: Option<EmailConfig>,
    pub sms: Option<SmsConfig>,
    pub whatsapp: Option<WhatsappConfig>,
    pub zoho: Option<ZohoConfig>,
    pub web_push: Option<WebPushConfig>,
    pub event_webhooks: Vec<Subscription>,
}

#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error(transparent)]
    Rule(#[from] RuleError),
    #[error(transparent)]
    Fcm(#[from] FcmSetupError),
    #[error(transparent)]
    Email(#[from] EmailSetupError),
    #[error(transparent)]
    Sms(#[from] SmsSetupError),
    #[error(transparent)]
    Whatsapp(#[from] WhatsappSetupError),
    #[error("{0}")]
    Zoho(String),
    #[error(transparent)]
    WebPush(#[from] WebPushSetupError),
    #[error(transparent)]
    EventWebhook(#[from] SubscriptionError),
}

/// Checks what can be checked without building a client: rules compile, every provider's
/// settings are complete, every subscription is well formed.
pub fn validate(c: &DeliveryConfig) -> Result<(), SetupError> {
    for r in &c.rules {
        Rule::new(r.clone())?;
    }
    if let Some(f) = &c.fcm {
        f.validate()?;
    }
    if let Some(s) = &c.sms {
        s.validate()?;
    }
    if let Some(w) = &c.whatsapp {
        w.validate()?;
    }
    if let Some(z) = &c.zoho {
        z.validate().map_err(SetupError::Zoho)?;
    }
    if let Some(e) = &c.email {
        e.validate()?;
    }
    if let Some(w) = &c.web_push {
        w.validate()?;
    }
    for s in &c.event_webhooks {
        s.validate()?;
    }
    Ok(())
}

/// One app's rules and providers.
pub struct Setup {
    pub rules: Vec<Rule>,
    pub event_webhooks: Vec<Subscription>,
    providers: HashMap<ChannelKind, Arc<dyn Provider>>,
    /// Web Push: the key browsers subscribe with (`applicationServerKey`).
    pub vapid_public_key: Option<String>,
}

impl Setup {
    pub fn build(c: &DeliveryConfig) -> Result<Self, SetupError> {
        validate(c)?;
        let rules = c
            .rules
            .iter()
            .map(|r| Rule::new(r.clone()))
            .collect::<Result<Vec<_>, _>>()?;
        let mut providers: HashMap<ChannelKind, Arc<dyn Provider>> = HashMap::new();
        providers.insert(ChannelKind::InApp, Arc::new(InApp));
        if let Some(f) = &c.fcm {
            providers.insert(ChannelKind::Fcm, Arc::new(Fcm::new(f)?));
        }
        if let Some(e) = &c.email {
            providers.insert(ChannelKind::Email, Arc::new(Mailer::new(e)?));
        }
        if let Some(s) = &c.sms {
            providers.insert(ChannelKind::Sms, Arc::new(Sms::new(s)?));
        }
        if let Some(w) = &c.whatsapp {
            providers.insert(ChannelKind::Whatsapp, Arc::new(Whatsapp::new(w)?));
        }
        if let Some(z) = &c.zoho {
            providers.insert(ChannelKind::Zoho, Arc::new(Zoho::new(&c.app_id, z)));
        }
        let web_push = c.web_push.as_ref().map(WebPush::new).transpose()?;
        let vapid_public_key = web_push.as_ref().map(|w| w.public_key().to_owned());
        if let Some(w) = web_push {
            providers.insert(ChannelKind::WebPush, Arc::new(w));
        }
        Ok(Self {
            rules,
            event_webhooks: c.event_webhooks.clone(),
            providers,
            vapid_public_key,
        })
    }

    /// The provider of `channel`, if the app configured one.
    pub fn get(&self, channel: ChannelKind) -> Option<Arc<dyn Provider>> {
        self.providers.get(&channel).cloned()
    }

    /// Whether triggered events need looking at (rules or subscriptions).
    pub fn reacts_to_events(&self) -> bool {
        !self.rules.is_empty() || !self.event_webhooks.is_empty()
    }
}

/// Every app's setup, by app id, with the config it was built from.
#[derive(Default)]
pub struct Setups {
    by_app: RwLock<HashMap<String, (DeliveryConfig, Arc<Setup>)>>,
}

impl Setups {
    pub fn of(&self, app_id: &str) -> Option<Arc<Setup>> {
        self.by_app.read().get(app_id).map(|(_, s)| s.clone())
    }

    /// Builds and installs the setup of `c.app_id` unless it is built from this very config
    /// already (providers keep their clients and token caches); on an error the old one stays.
    pub fn install(&self, c: &DeliveryConfig) -> Result<(), SetupError> {
        if self
            .by_app
            .read()
            .get(&c.app_id)
            .is_some_and(|(old, _)| old == c)
        {
            return Ok(());
        }
        let setup = Arc::new(Setup::build(c)?);
        self.by_app
            .write()
            .insert(c.app_id.clone(), (c.clone(), setup));
        Ok(())
    }
}
