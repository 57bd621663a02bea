//! The signed HTTP API, as the official Pusher server SDKs call it. Every handler starts
//! with [`signed::verify`]; nothing reaches a channel before the signature holds.

pub mod channels;
pub mod client_inbox;
pub mod directory;
pub mod events;
pub mod inbox;
pub mod notifications;
pub mod provider_callbacks;
pub mod signed;
pub mod sync_logs;
pub mod users;
pub mod web_push;

/// A store failure as the API answers it (503); `what` says what was not done.
pub(crate) fn store_unavailable(e: crate::store::StoreError, what: &str) -> crate::http::ApiError {
    tracing::warn!(error = %e, "store unavailable");
    crate::http::ApiError::Unavailable(format!("the store is unavailable{what}"))
}

/// A page size from the query: `default` when absent or not a number, kept within 1..=`max`.
pub(crate) fn limit(param: Option<&str>, default: i64, max: i64) -> i64 {
    param
        .and_then(|l| l.parse::<i64>().ok())
        .unwrap_or(default)
        .clamp(1, max)
}

/// The attributes a request asked for with `info=a,b`.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Info {
    pub user_count: bool,
    pub subscription_count: bool,
}

impl Info {
    pub fn parse(s: Option<&str>) -> Self {
        let mut info = Self::default();
        for attr in s.unwrap_or("").split(',').map(str::trim) {
            match attr {
                "user_count" => info.user_count = true,
                "subscription_count" => info.subscription_count = true,
                _ => {}
            }
        }
        info
    }

    pub fn any(self) -> bool {
        self.user_count || self.subscription_count
    }
}
