//! Limits that the protocol itself fixes (as opposed to per-app limits, which live in config).

/// Longest channel name the official SDKs accept.
pub const MAX_CHANNEL_NAME_LEN: usize = 200;
/// Longest event name Pusher accepts.
pub const MAX_EVENT_NAME_LEN: usize = 200;
/// Protocol versions bellhop speaks; pusher-js 7 and 8 send 7.
pub const SUPPORTED_PROTOCOLS: std::ops::RangeInclusive<u32> = 5..=7;
/// Prefix that client events must carry.
pub const CLIENT_EVENT_PREFIX: &str = "client-";
