//! The Pusher error and close code table: one place for every number, its message, and what a
//! client library does when the socket is closed with it.

use std::fmt;

/// What pusher-js does after the server closes with a code in each range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reconnect {
    /// 4000–4099: the client must not reconnect with the same parameters.
    Never,
    /// 4100–4199: reconnect after backing off.
    Backoff,
    /// 4200–4299: reconnect immediately.
    Immediately,
    /// 4300–4399: an error that does not close the connection.
    NotClosed,
}

/// A Pusher protocol error code. The discriminant is the number on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum ErrorCode {
    SslOnly = 4000,
    AppNotFound = 4001,
    AppDisabled = 4003,
    OverConnectionQuota = 4004,
    PathNotFound = 4005,
    InvalidVersionFormat = 4006,
    UnsupportedProtocolVersion = 4007,
    NoProtocolVersion = 4008,
    Unauthorized = 4009,
    OverCapacity = 4100,
    ReconnectImmediately = 4200,
    PongNotReceived = 4201,
    ClosedAfterInactivity = 4202,
    GenericError = 4300,
    ClientEventRateLimit = 4301,
    WatchlistLimit = 4302,
}

impl ErrorCode {
    /// The number sent in `pusher:error` and used as the WebSocket close code.
    pub const fn number(self) -> u16 {
        self as u16
    }

    /// The message Pusher sends with this code.
    pub const fn message(self) -> &'static str {
        match self {
            Self::SslOnly => "Application only accepts SSL connections, reconnect using wss://",
            Self::AppNotFound => "Application does not exist",
            Self::AppDisabled => "Application disabled",
            Self::OverConnectionQuota => "Application is over connection quota",
            Self::PathNotFound => "Path not found",
            Self::InvalidVersionFormat => "Invalid version string format",
            Self::UnsupportedProtocolVersion => "Unsupported protocol version",
            Self::NoProtocolVersion => "No protocol version supplied",
            Self::Unauthorized => "Connection is unauthorized",
            Self::OverCapacity => "Over capacity",
            Self::ReconnectImmediately => "Generic reconnect immediately",
            Self::PongNotReceived => "Pong reply not received",
            Self::ClosedAfterInactivity => "Closed after inactivity",
            Self::GenericError => "Generic error",
            Self::ClientEventRateLimit => "Client event rejected due to rate limit",
            Self::WatchlistLimit => {
                "Watchlist limit exceeded. Only the first 100 user IDs are accepted."
            }
        }
    }

    /// How a client reacts when the connection is closed with this code.
    pub const fn reconnect(self) -> Reconnect {
        match self.number() {
            4000..=4099 => Reconnect::Never,
            4100..=4199 => Reconnect::Backoff,
            4200..=4299 => Reconnect::Immediately,
            _ => Reconnect::NotClosed,
        }
    }

    /// Whether the server closes the socket after sending this error.
    pub const fn closes_connection(self) -> bool {
        !matches!(self.reconnect(), Reconnect::NotClosed)
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.number(), self.message())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_decide_reconnect_advice() {
        assert_eq!(ErrorCode::AppNotFound.reconnect(), Reconnect::Never);
        assert_eq!(ErrorCode::OverCapacity.reconnect(), Reconnect::Backoff);
        assert_eq!(
            ErrorCode::PongNotReceived.reconnect(),
            Reconnect::Immediately
        );
        assert!(!ErrorCode::ClientEventRateLimit.closes_connection());
        assert!(ErrorCode::NoProtocolVersion.closes_connection());
        assert_eq!(ErrorCode::NoProtocolVersion.number(), 4008);
    }
}
