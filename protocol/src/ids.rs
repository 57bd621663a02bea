//! Identifiers that cross module boundaries. Each is a newtype built with `parse`, so an
//! invalid value cannot exist past the edge that received it.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("app id must be 1 to 64 digits")]
    AppId,
    #[error("app key must be 1 to 128 characters from [A-Za-z0-9_-]")]
    AppKey,
    #[error("socket id must look like 123.456")]
    SocketId,
    #[error("user id must be 1 to {max} characters")]
    UserId { max: usize },
    #[error("secret must not be empty")]
    Secret,
}

/// An application id. Digits only: the official Python SDK accepts nothing else.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AppId(Arc<str>);

impl AppId {
    pub fn parse(s: &str) -> Result<Self, IdError> {
        if s.is_empty() || s.len() > 64 || !s.bytes().all(|b| b.is_ascii_digit()) {
            return Err(IdError::AppId);
        }
        Ok(Self(s.into()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The public key a client connects with (`/app/{key}`).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AppKey(Arc<str>);

impl AppKey {
    pub fn parse(s: &str) -> Result<Self, IdError> {
        if s.is_empty()
            || s.len() > 128
            || !s
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(IdError::AppKey);
        }
        Ok(Self(s.into()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

macro_rules! display_as_str {
    ($($t:ty),*) => {$(
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
        impl fmt::Debug for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Debug::fmt(self.as_str(), f)
            }
        }
    )*};
}
display_as_str!(AppId, AppKey, UserId);

/// A shared secret. `Debug` and `Display` never show it, so it cannot reach a log by accident.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Arc<str>);

impl Secret {
    pub fn parse(s: &str) -> Result<Self, IdError> {
        if s.is_empty() {
            return Err(IdError::Secret);
        }
        Ok(Self(s.into()))
    }

    /// The secret itself, for signing. Call sites are easy to audit by this name.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret([redacted])")
    }
}

/// Read from and written as the plain string (config files, stored settings); what hides it
/// is `Debug`, and the admin API leaving credential fields out of its answers.
impl serde::Serialize for Secret {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.expose())
    }
}

impl<'de> serde::Deserialize<'de> for Secret {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Secret::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// A connection's id in Pusher's `"<n>.<n>"` form.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SocketId {
    high: u64,
    low: u64,
}

impl SocketId {
    pub const fn new(high: u64, low: u64) -> Self {
        Self { high, low }
    }

    pub fn parse(s: &str) -> Result<Self, IdError> {
        let (a, b) = s.split_once('.').ok_or(IdError::SocketId)?;
        let digits = |p: &str| {
            if p.is_empty() || p.len() > 19 || !p.bytes().all(|b| b.is_ascii_digit()) {
                return Err(IdError::SocketId);
            }
            p.parse::<u64>().map_err(|_| IdError::SocketId)
        };
        Ok(Self {
            high: digits(a)?,
            low: digits(b)?,
        })
    }
}

impl FromStr for SocketId {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl fmt::Display for SocketId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.high, self.low)
    }
}

impl fmt::Debug for SocketId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// A user id: from presence `channel_data` or from sign-in `user_data`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct UserId(Arc<str>);

impl UserId {
    pub fn parse(s: &str, max_len: usize) -> Result<Self, IdError> {
        if s.is_empty() || s.len() > max_len {
            return Err(IdError::UserId { max: max_len });
        }
        Ok(Self(s.into()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn app_ids_are_digits() {
        assert!(AppId::parse("12345").is_ok());
        assert_eq!(AppId::parse("app-1"), Err(IdError::AppId));
        assert_eq!(AppId::parse(""), Err(IdError::AppId));
    }

    #[test]
    fn socket_ids_round_trip() {
        let id = SocketId::parse("1234.5678").unwrap();
        assert_eq!(id.to_string(), "1234.5678");
        for bad in ["", "1234", "1234.", ".5", "a.b", "1.2.3", "-1.2", "1 .2"] {
            assert!(SocketId::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn secrets_are_redacted() {
        let s = Secret::parse("app-secret").unwrap();
        assert_eq!(format!("{s:?}"), "Secret([redacted])");
        assert_eq!(s.expose(), "app-secret");
    }

    #[test]
    fn user_ids_are_bounded() {
        assert!(UserId::parse(&"u".repeat(128), 128).is_ok());
        assert!(UserId::parse(&"u".repeat(129), 128).is_err());
        assert!(UserId::parse("", 128).is_err());
    }
}
