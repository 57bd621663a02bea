//! What travels between nodes: a short header line (JSON) and, for events, the encoded frame
//! after it, untouched, so a receiving node neither parses nor re-encodes the event.

use bellhop_protocol::{AppId, ChannelName, SocketId, UserId};
use bytestring::ByteString;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq)]
pub struct Envelope {
    /// The node that sent it; it already acted locally.
    pub origin: String,
    pub app: AppId,
    pub body: Body,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Body {
    /// An encoded frame for a channel's subscribers.
    Event {
        channel: ChannelName,
        /// The socket not to deliver to (trigger `socket_id`, or a client event's sender).
        except: Option<SocketId>,
        /// Whether this is a server event that a cache channel should remember.
        cacheable: bool,
        /// A presence member frame's number in its channel (from the ledger script).
        member_seq: Option<u64>,
        frame: ByteString,
    },
    /// Close every connection of a signed-in user (`terminate_connections`).
    Terminate { user: UserId },
    /// A user's first socket anywhere signed in, or their last one left (watchlists).
    Watch { user: UserId, online: bool },
}

/// Ids were checked by the sending node; this bound only stops a corrupted header.
const MAX_USER_ID: usize = 4096;

#[derive(Serialize, Deserialize)]
struct Header<'a> {
    #[serde(rename = "n")]
    origin: &'a str,
    #[serde(rename = "a")]
    app: &'a str,
    /// e = event, t = terminate, w = watch.
    #[serde(rename = "t", default = "event_kind")]
    kind: &'a str,
    #[serde(rename = "c", default, skip_serializing_if = "Option::is_none")]
    channel: Option<&'a str>,
    #[serde(rename = "x", default, skip_serializing_if = "Option::is_none")]
    except: Option<String>,
    #[serde(rename = "k", default)]
    cacheable: bool,
    #[serde(rename = "u", default, skip_serializing_if = "Option::is_none")]
    user: Option<&'a str>,
    #[serde(rename = "on", default)]
    online: bool,
    #[serde(rename = "q", default, skip_serializing_if = "Option::is_none")]
    member_seq: Option<u64>,
}

fn event_kind() -> &'static str {
    "e"
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum EnvelopeError {
    #[error("envelope has no header line")]
    NoHeader,
    #[error("envelope header is malformed")]
    BadHeader,
    #[error("envelope frame is not UTF-8")]
    BadFrame,
}

impl Envelope {
    pub fn event(
        origin: &str,
        app: AppId,
        channel: ChannelName,
        except: Option<SocketId>,
        frame: ByteString,
    ) -> Self {
        Self {
            origin: origin.to_owned(),
            app,
            body: Body::Event {
                channel,
                except,
                cacheable: false,
                member_seq: None,
                frame,
            },
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut header = Header {
            origin: &self.origin,
            app: self.app.as_str(),
            kind: "e",
            channel: None,
            except: None,
            cacheable: false,
            user: None,
            online: false,
            member_seq: None,
        };
        let mut frame: &[u8] = &[];
        match &self.body {
            Body::Event {
                channel,
                except,
                cacheable,
                member_seq,
                frame: f,
            } => {
                header.channel = Some(channel.as_str());
                header.except = except.map(|s| s.to_string());
                header.cacheable = *cacheable;
                header.member_seq = *member_seq;
                frame = f.as_bytes();
            }
            Body::Terminate { user } => {
                header.kind = "t";
                header.user = Some(user.as_str());
            }
            Body::Watch { user, online } => {
                header.kind = "w";
                header.user = Some(user.as_str());
                header.online = *online;
            }
        }
        // unwrap: a struct of strings and bools always serialises.
        let mut out = serde_json::to_vec(&header).unwrap();
        out.push(b'\n');
        out.extend_from_slice(frame);
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, EnvelopeError> {
        let nl = bytes
            .iter()
            .position(|&b| b == b'\n')
            .ok_or(EnvelopeError::NoHeader)?;
        let header: Header<'_> =
            serde_json::from_slice(&bytes[..nl]).map_err(|_| EnvelopeError::BadHeader)?;
        let user = || {
            header
                .user
                .and_then(|u| UserId::parse(u, MAX_USER_ID).ok())
                .ok_or(EnvelopeError::BadHeader)
        };
        let body = match header.kind {
            "e" => {
                let frame =
                    std::str::from_utf8(&bytes[nl + 1..]).map_err(|_| EnvelopeError::BadFrame)?;
                Body::Event {
                    channel: header
                        .channel
                        .and_then(|c| ChannelName::parse(c).ok())
                        .ok_or(EnvelopeError::BadHeader)?,
                    except: header
                        .except
                        .as_deref()
                        .map(SocketId::parse)
                        .transpose()
                        .map_err(|_| EnvelopeError::BadHeader)?,
                    cacheable: header.cacheable,
                    member_seq: header.member_seq,
                    frame: ByteString::from(frame.to_owned()),
                }
            }
            "t" => Body::Terminate { user: user()? },
            "w" => Body::Watch {
                user: user()?,
                online: header.online,
            },
            _ => return Err(EnvelopeError::BadHeader),
        };
        Ok(Self {
            origin: header.origin.to_owned(),
            app: AppId::parse(header.app).map_err(|_| EnvelopeError::BadHeader)?,
            body,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn app() -> AppId {
        AppId::parse("1").unwrap()
    }

    #[test]
    fn round_trips_with_the_frame_untouched() {
        let e = Envelope {
            origin: "node-1".into(),
            app: app(),
            body: Body::Event {
                channel: ChannelName::parse("hotel-1").unwrap(),
                except: Some(SocketId::parse("1.2").unwrap()),
                cacheable: false,
                member_seq: Some(7),
                frame: r#"{"event":"e","channel":"hotel-1","data":"line\nbreak"}"#.into(),
            },
        };
        assert_eq!(Envelope::decode(&e.encode()).unwrap(), e);
    }

    #[test]
    fn control_messages_round_trip() {
        let user = UserId::parse("staff-42", 128).unwrap();
        for body in [
            Body::Terminate { user: user.clone() },
            Body::Watch {
                user: user.clone(),
                online: true,
            },
            Body::Watch {
                user,
                online: false,
            },
        ] {
            let e = Envelope {
                origin: "n".into(),
                app: app(),
                body,
            };
            assert_eq!(Envelope::decode(&e.encode()).unwrap(), e);
        }
    }

    #[test]
    fn refuses_garbage() {
        assert_eq!(
            Envelope::decode(b"no newline"),
            Err(EnvelopeError::NoHeader)
        );
        assert_eq!(Envelope::decode(b"{\n{}"), Err(EnvelopeError::BadHeader));
        assert_eq!(
            Envelope::decode(b"{\"n\":\"x\",\"a\":\"app\",\"c\":\"c\"}\n{}"),
            Err(EnvelopeError::BadHeader)
        );
        assert_eq!(
            Envelope::decode(b"{\"n\":\"x\",\"a\":\"1\",\"t\":\"t\"}\n"),
            Err(EnvelopeError::BadHeader),
            "a terminate names its user"
        );
        assert_eq!(
            Envelope::decode(b"{\"n\":\"x\",\"a\":\"1\",\"t\":\"?\"}\n"),
            Err(EnvelopeError::BadHeader)
        );
    }
}
