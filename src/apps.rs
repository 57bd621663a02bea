//! The apps a server serves, looked up by id (HTTP API) or key (WebSocket), and how many
//! connections each holds. Config builds the directory at start; the store will add to it.

use std::collections::HashMap;
use std::sync::Arc;

use bellhop_protocol::{AppId, AppKey, Secret};
use parking_lot::{Mutex, RwLock};

use crate::config::AppConfig;
use crate::rate::SecondWindow;
use crate::webhooks::WebhookTarget;

/// Per-app limits; the defaults are Pusher's.
#[derive(Debug, Clone, PartialEq)]
pub struct AppLimits {
    pub max_connections: Option<u64>,
    pub max_event_bytes: usize,
    pub max_channels_per_trigger: usize,
    pub max_batch_size: usize,
    pub client_event_rate: u32,
    pub max_events_per_second: Option<u64>,
    pub max_subscriptions_per_connection: usize,
    pub max_presence_members: usize,
    pub max_presence_user_info_bytes: usize,
    pub max_presence_user_id_len: usize,
}

#[derive(Debug, Clone)]
pub struct App {
    pub id: AppId,
    pub key: AppKey,
    /// The first secret signs; all verify, so a secret can be rotated without downtime.
    pub secrets: Vec<Secret>,
    pub enabled: bool,
    pub client_events: bool,
    pub limits: AppLimits,
    pub webhooks: Vec<WebhookTarget>,
    pub subscription_count: bool,
    pub signin_timeout: Option<std::time::Duration>,
    pub cache_ttl: std::time::Duration,
    pub allowed_origins: Vec<String>,
    /// The settings this app was built from (for the admin API to change and store).
    pub config: AppConfig,
}

pub use crate::config::AppError;

impl App {
    /// The app `c` describes, once `c` is valid.
    pub fn from_config(c: &AppConfig) -> Result<Self, AppError> {
        c.validate()?;
        Ok(Self {
            webhooks: c.webhooks.clone(),
            subscription_count: c.subscription_count,
            signin_timeout: c.signin_timeout_secs.map(std::time::Duration::from_secs),
            cache_ttl: std::time::Duration::from_secs(c.cache_ttl_secs),
            allowed_origins: c.allowed_origins.clone(),
            config: c.clone(),
            id: AppId::parse(&c.id)?,
            key: AppKey::parse(&c.key)?,
            secrets: vec![Secret::parse(&c.secret)?],
            enabled: c.enabled,
            client_events: c.client_events,
            limits: AppLimits {
                max_connections: c.max_connections,
                max_event_bytes: c.max_event_bytes,
                max_channels_per_trigger: c.max_channels_per_trigger,
                max_batch_size: c.max_batch_size,
                client_event_rate: c.client_event_rate,
                max_events_per_second: c.max_events_per_second,
                max_subscriptions_per_connection: c.max_subscriptions_per_connection,
                max_presence_members: c.max_presence_members,
                max_presence_user_info_bytes: c.max_presence_user_info_bytes,
                max_presence_user_id_len: c.max_presence_user_id_len,
            },
        })
    }

    /// Whether a WebSocket from `origin` may connect. With no list, any origin may; with a
    /// list, a request without an Origin header (not a browser) may too.
    pub fn allows_origin(&self, origin: Option<&str>) -> bool {
        let Some(origin) = origin else {
            return true;
        };
        self.allowed_origins.is_empty()
            || self.allowed_origins.iter().any(|allowed| {
                allowed == "*"
                    || allowed == origin
                    || allowed.strip_prefix("*.").is_some_and(|domain| {
                        origin
                            .split_once("://")
                            .map_or(origin, |(_, host)| host)
                            .strip_suffix(domain)
                            .is_some_and(|sub| sub.ends_with('.'))
                    })
            })
    }

    /// Whether any webhook target wants events of `kind`.
    pub fn wants_webhook(&self, kind: &str) -> bool {
        self.webhooks.iter().any(|w| w.wants(kind))
    }

    /// The secret new signatures are made with.
    pub fn signing_secret(&self) -> &Secret {
        // unwrap: `from_config` always stores one secret and nothing removes the last one.
        self.secrets.first().unwrap()
    }
}

/// An app kept in the store (managed through the admin API): its settings and, while a
/// rotation is open, its previous secret.
#[derive(Debug, Clone)]
pub struct StoredApp {
    pub config: AppConfig,
    pub previous_secret: Option<String>,
}

impl StoredApp {
    pub fn from_row(row: &crate::store::apps::AppRow) -> Result<Self, serde_json::Error> {
        Ok(Self {
            config: serde_json::from_value(row.settings.clone())?,
            previous_secret: row.previous_secret.clone(),
        })
    }

    pub fn to_row(&self) -> crate::store::apps::AppRow {
        let mut settings = serde_json::to_value(&self.config).unwrap_or_default();
        // Serialize leaves the secret out of the settings (so a dump never shows it); the row
        // keeps it in a column of its own.
        settings["secret"] = serde_json::Value::String(self.config.secret.clone());
        crate::store::apps::AppRow {
            settings,
            previous_secret: self.previous_secret.clone(),
        }
    }

    /// The runtime app: settings validated, both secrets valid while a rotation is open.
    pub fn to_app(&self) -> Result<App, AppError> {
        let mut app = App::from_config(&self.config)?;
        if let Some(prev) = &self.previous_secret {
            app.secrets.push(Secret::parse(prev)?);
        }
        Ok(app)
    }
}

#[derive(Default)]
struct Snapshot {
    by_id: HashMap<AppId, Arc<App>>,
    by_key: HashMap<AppKey, Arc<App>>,
}

/// Told of every app added or changed (the delivery setups follow the apps this way).
pub type AppListener = Arc<dyn Fn(&App) + Send + Sync>;

/// Apps by id and key, plus live connection counts per app.
#[derive(Default)]
pub struct AppDirectory {
    apps: RwLock<Arc<Snapshot>>,
    connections: Arc<Mutex<HashMap<AppId, u64>>>,
    listeners: RwLock<Vec<AppListener>>,
}

impl AppDirectory {
    pub fn new(apps: impl IntoIterator<Item = App>) -> Self {
        let dir = Self::default();
        for app in apps {
            dir.upsert(app);
        }
        dir
    }

    /// Calls `listener` with every app now, and with every app added or changed from now on.
    pub fn on_change(&self, listener: AppListener) {
        for app in self.all() {
            listener(&app);
        }
        self.listeners.write().push(listener);
    }

    /// Adds or replaces an app (matched by id).
    pub fn upsert(&self, app: App) {
        let mut guard = self.apps.write();
        let mut next = Snapshot {
            by_id: guard.by_id.clone(),
            by_key: guard.by_key.clone(),
        };
        if let Some(old) = next.by_id.get(&app.id).cloned() {
            next.by_key.remove(&old.key);
        }
        let app = Arc::new(app);
        next.by_key.insert(app.key.clone(), app.clone());
        next.by_id.insert(app.id.clone(), app.clone());
        *guard = Arc::new(next);
        drop(guard);
        for listener in self.listeners.read().iter() {
            listener(&app);
        }
    }

    pub fn by_id(&self, id: &str) -> Option<Arc<App>> {
        let id = AppId::parse(id).ok()?;
        self.apps.read().by_id.get(&id).cloned()
    }

    pub fn by_key(&self, key: &str) -> Option<Arc<App>> {
        let key = AppKey::parse(key).ok()?;
        self.apps.read().by_key.get(&key).cloned()
    }

    pub fn all(&self) -> Vec<Arc<App>> {
        self.apps.read().by_id.values().cloned().collect()
    }

    /// Counts a new connection unless the app is at its limit. The count drops when the
    /// returned guard does.
    pub fn admit(&self, app: &App) -> Option<ConnectionSlot> {
        let mut counts = self.connections.lock();
        let n = counts.entry(app.id.clone()).or_insert(0);
        if app.limits.max_connections.is_some_and(|max| *n >= max) {
            return None;
        }
        *n += 1;
        Some(ConnectionSlot {
            app: app.id.clone(),
            counts: self.connections.clone(),
        })
    }

    pub fn connection_count(&self, app: &AppId) -> u64 {
        self.connections.lock().get(app).copied().unwrap_or(0)
    }
}

impl crate::webhooks::Targets for AppDirectory {
    fn targets(&self, app_id: &str) -> Vec<WebhookTarget> {
        self.by_id(app_id)
            .map(|a| a.webhooks.clone())
            .unwrap_or_default()
    }

    fn signing(&self, app_id: &str, url: &str) -> Result<crate::webhooks::Signing, String> {
        let app = self
            .by_id(app_id)
            .ok_or_else(|| format!("app {app_id} no longer exists"))?;
        // The operator may have removed the target since the batch was made: then it is not
        // sent (and never signed) again.
        let target = app
            .webhooks
            .iter()
            .find(|t| t.url == url)
            .ok_or_else(|| format!("target {url} is no longer configured"))?;
        Ok(crate::webhooks::Signing {
            key: app.key.as_str().to_owned(),
            secret: app.signing_secret().clone(),
            headers: target.headers.clone(),
        })
    }
}

/// Per-app message budgets of one node, in one-second windows (a cluster counts in Redis).
#[derive(Default)]
pub struct EventBudget {
    windows: Mutex<HashMap<AppId, SecondWindow>>,
}

impl EventBudget {
    /// Takes `n` messages from this second's budget of `per_second`; false (taking nothing)
    /// when they do not fit.
    pub fn take(&self, app: &AppId, second: u64, n: u64, per_second: u64) -> bool {
        self.windows
            .lock()
            .entry(app.clone())
            .or_default()
            .take(second, n, per_second)
    }
}

/// One admitted connection; dropping it frees the slot.
pub struct ConnectionSlot {
    app: AppId,
    counts: Arc<Mutex<HashMap<AppId, u64>>>,
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        if let Some(n) = self.counts.lock().get_mut(&self.app) {
            *n = n.saturating_sub(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_budget_refills_each_second_and_never_splits_a_request() {
        let b = EventBudget::default();
        let app = AppId::parse("1").unwrap();
        assert!(b.take(&app, 10, 3, 5));
        assert!(!b.take(&app, 10, 3, 5), "3 more do not fit in 5");
        assert!(b.take(&app, 10, 2, 5));
        assert!(!b.take(&app, 10, 1, 5));
        assert!(b.take(&app, 11, 5, 5), "a new second, a new budget");
        assert!(!b.take(&app, 11, 6, 5) && b.take(&AppId::parse("2").unwrap(), 11, 5, 5));
    }

    #[test]
    fn connection_limit_is_enforced_and_released() {
        let mut c = AppConfig::new("1", "k", "s");
        c.max_connections = Some(2);
        let app = App::from_config(&c).unwrap();
        let dir = AppDirectory::new([app.clone()]);
        let a = dir.admit(&app).unwrap();
        let _b = dir.admit(&app).unwrap();
        assert!(dir.admit(&app).is_none());
        drop(a);
        assert!(dir.admit(&app).is_some());
    }

    #[test]
    fn origins() {
        let mut c = AppConfig::new("1", "k", "s");
        let open = App::from_config(&c).unwrap();
        assert!(open.allows_origin(Some("https://anything.example")));
        c.allowed_origins = vec!["https://app.hotel.com".into(), "*.staff.hotel.com".into()];
        let app = App::from_config(&c).unwrap();
        assert!(app.allows_origin(Some("https://app.hotel.com")));
        assert!(app.allows_origin(Some("https://porter.staff.hotel.com")));
        assert!(!app.allows_origin(Some("https://staff.hotel.com.evil.io")));
        assert!(!app.allows_origin(Some("https://evilstaff.hotel.com")));
        assert!(!app.allows_origin(Some("http://app.hotel.com")));
        assert!(app.allows_origin(None));
    }

    #[test]
    fn lookups_by_id_and_key() {
        let app = App::from_config(&AppConfig::new("1", "k", "s")).unwrap();
        let dir = AppDirectory::new([app]);
        assert!(dir.by_id("1").is_some());
        assert!(dir.by_key("k").is_some());
        assert!(dir.by_key("nope").is_none());
        assert!(dir.by_id("x").is_none());
    }
}
