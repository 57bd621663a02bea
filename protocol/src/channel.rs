//! Channel names: the allowed characters and length, and the kind a name's prefix gives it.

use std::fmt;
use std::sync::Arc;

use crate::limits::MAX_CHANNEL_NAME_LEN;

/// What a channel's prefix makes of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ChannelKind {
    Public,
    Private,
    PrivateEncrypted,
    Presence,
    /// `#server-to-user-{id}`: joined by a signed-in user's own sockets only.
    ServerToUser,
}

impl ChannelKind {
    /// Whether subscribing needs a signed `auth`.
    pub const fn requires_auth(self) -> bool {
        matches!(
            self,
            Self::Private | Self::PrivateEncrypted | Self::Presence
        )
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChannelNameError {
    #[error("channel name must not be empty")]
    Empty,
    #[error("channel name is {len} characters, over the limit of {max}")]
    TooLong { len: usize, max: usize },
    #[error("channel name contains {0:?}; allowed are A-Z a-z 0-9 _ - = @ , . ;")]
    BadCharacter(char),
    #[error("channel name prefix {0:?} needs a name after it")]
    EmptyAfterPrefix(&'static str),
}

pub const SERVER_TO_USER_PREFIX: &str = "#server-to-user-";

/// A validated channel name with its kind. Cloning shares the string.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChannelName {
    name: Arc<str>,
    // Derived from `name`, kept so hot paths need not re-read the prefix.
    kind: KindBits,
}

#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct KindBits {
    kind: u8,
    cache: bool,
}

const fn allowed(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'=' | b'@' | b',' | b'.' | b';')
}

impl ChannelName {
    pub fn parse(s: &str) -> Result<Self, ChannelNameError> {
        if s.is_empty() {
            return Err(ChannelNameError::Empty);
        }
        let len = s.chars().count();
        if len > MAX_CHANNEL_NAME_LEN {
            return Err(ChannelNameError::TooLong {
                len,
                max: MAX_CHANNEL_NAME_LEN,
            });
        }
        let body = match s.strip_prefix(SERVER_TO_USER_PREFIX) {
            Some("") => return Err(ChannelNameError::EmptyAfterPrefix(SERVER_TO_USER_PREFIX)),
            Some(rest) => rest,
            None => s,
        };
        if let Some(c) = body.chars().find(|&c| !c.is_ascii() || !allowed(c as u8)) {
            return Err(ChannelNameError::BadCharacter(c));
        }
        let (kind, cache) = classify(s);
        Ok(Self {
            name: s.into(),
            kind: KindBits {
                kind: kind as u8,
                cache,
            },
        })
    }

    pub fn as_str(&self) -> &str {
        &self.name
    }

    pub fn kind(&self) -> ChannelKind {
        match self.kind.kind {
            0 => ChannelKind::Public,
            1 => ChannelKind::Private,
            2 => ChannelKind::PrivateEncrypted,
            3 => ChannelKind::Presence,
            _ => ChannelKind::ServerToUser,
        }
    }

    /// Cache channels (`cache-`, `private-cache-`, `private-encrypted-cache-`, `presence-cache-`)
    /// keep their last event for late subscribers.
    pub fn is_cache(&self) -> bool {
        self.kind.cache
    }

    pub fn is_presence(&self) -> bool {
        self.kind() == ChannelKind::Presence
    }

    /// The user id of a `#server-to-user-{id}` channel.
    pub fn server_to_user_id(&self) -> Option<&str> {
        self.name.strip_prefix(SERVER_TO_USER_PREFIX)
    }
}

fn classify(s: &str) -> (ChannelKind, bool) {
    const TABLE: [(&str, ChannelKind, bool); 8] = [
        (SERVER_TO_USER_PREFIX, ChannelKind::ServerToUser, false),
        (
            "private-encrypted-cache-",
            ChannelKind::PrivateEncrypted,
            true,
        ),
        ("private-encrypted-", ChannelKind::PrivateEncrypted, false),
        ("private-cache-", ChannelKind::Private, true),
        ("private-", ChannelKind::Private, false),
        ("presence-cache-", ChannelKind::Presence, true),
        ("presence-", ChannelKind::Presence, false),
        ("cache-", ChannelKind::Public, true),
    ];
    TABLE
        .iter()
        .find(|(prefix, _, _)| s.starts_with(prefix))
        .map_or((ChannelKind::Public, false), |&(_, k, c)| (k, c))
}

impl fmt::Display for ChannelName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)
    }
}

impl fmt::Debug for ChannelName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.name, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_decide_kind() {
        let k = |s: &str| {
            let c = ChannelName::parse(s).unwrap();
            (c.kind(), c.is_cache())
        };
        assert_eq!(k("my-channel"), (ChannelKind::Public, false));
        assert_eq!(k("private-a"), (ChannelKind::Private, false));
        assert_eq!(k("presence-a"), (ChannelKind::Presence, false));
        assert_eq!(
            k("private-encrypted-a"),
            (ChannelKind::PrivateEncrypted, false)
        );
        assert_eq!(k("cache-a"), (ChannelKind::Public, true));
        assert_eq!(k("private-cache-a"), (ChannelKind::Private, true));
        assert_eq!(
            k("private-encrypted-cache-a"),
            (ChannelKind::PrivateEncrypted, true)
        );
        assert_eq!(k("presence-cache-a"), (ChannelKind::Presence, true));
        assert_eq!(k("#server-to-user-42"), (ChannelKind::ServerToUser, false));
        assert_eq!(
            ChannelName::parse("#server-to-user-42")
                .unwrap()
                .server_to_user_id(),
            Some("42")
        );
    }

    #[test]
    fn hospitality_names_are_valid() {
        for s in [
            "grand-hotel-staff-42-porter",
            "private-hotel-1-room-204-chat",
            "presence-hotel_1;staff=on@duty,x.y",
        ] {
            assert!(ChannelName::parse(s).is_ok(), "{s}");
        }
    }

    #[test]
    fn bad_names_are_refused_with_reason() {
        assert_eq!(ChannelName::parse(""), Err(ChannelNameError::Empty));
        assert_eq!(
            ChannelName::parse("a b"),
            Err(ChannelNameError::BadCharacter(' '))
        );
        assert_eq!(
            ChannelName::parse("caf\u{e9}"),
            Err(ChannelNameError::BadCharacter('\u{e9}'))
        );
        assert_eq!(
            ChannelName::parse("#other"),
            Err(ChannelNameError::BadCharacter('#'))
        );
        assert!(ChannelName::parse(&"a".repeat(200)).is_ok());
        assert_eq!(
            ChannelName::parse(&"a".repeat(201)),
            Err(ChannelNameError::TooLong { len: 201, max: 200 })
        );
        assert!(ChannelName::parse("#server-to-user-").is_err());
    }
}
