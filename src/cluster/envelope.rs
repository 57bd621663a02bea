//! What travels between nodes: a short header line (JSON) and the encoded frame after it,
//! untouched, so a receiving node neither parses nor re-encodes the event.

use bellhop_protocol::{AppId, ChannelName, SocketId};
use bytestring::ByteString;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq)]
pub struct Envelope {
    /// The node that accepted the event; it already delivered locally.
    pub origin: String,
    pub app: AppId,
    pub channel: ChannelName,
    /// The socket not to deliver to (trigger `socket_id`, or a client event's sender).
    pub except: Option<SocketId>,
    /// Whether this is a server event that a cache channel should remember.
    pub cacheable: bool,
    pub frame: ByteString,
}

#[derive(Serialize, Deserialize)]
struct Header<'a> {
    #[serde(rename = "n")]
    origin: &'a str,
    #[serde(rename = "a")]
    app: &'a str,
    #[serde(rename = "c")]
    channel: &'a str,
    #[serde(rename = "x", default, skip_serializing_if = "Option::is_none")]
    except: Option<String>,
    #[serde(rename = "k", default)]
    cacheable: bool,
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
    pub fn encode(&self) -> Vec<u8> {
        let except = self.except.map(|s| s.to_string());
        let header = Header {
            origin: &self.origin,
            app: self.app.as_str(),
            channel: self.channel.as_str(),
            except,
            cacheable: self.cacheable,
        };
        // unwrap: a struct of strings and a bool always serialises.
        let mut out = serde_json::to_vec(&header).unwrap();
        out.push(b'\n');
        out.extend_from_slice(self.frame.as_bytes());
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, EnvelopeError> {
        let nl = bytes
            .iter()
            .position(|&b| b == b'\n')
            .ok_or(EnvelopeError::NoHeader)?;
        let header: Header<'_> =
            serde_json::from_slice(&bytes[..nl]).map_err(|_| EnvelopeError::BadHeader)?;
        let frame = std::str::from_utf8(&bytes[nl + 1..]).map_err(|_| EnvelopeError::BadFrame)?;
        Ok(Self {
            origin: header.origin.to_owned(),
            app: AppId::parse(header.app).map_err(|_| EnvelopeError::BadHeader)?,
            channel: ChannelName::parse(header.channel).map_err(|_| EnvelopeError::BadHeader)?,
            except: header
                .except
                .map(|s| SocketId::parse(&s))
                .transpose()
                .map_err(|_| EnvelopeError::BadHeader)?,
            cacheable: header.cacheable,
            frame: ByteString::from(frame.to_owned()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_with_the_frame_untouched() {
        let e = Envelope {
            origin: "node-1".into(),
            app: AppId::parse("1").unwrap(),
            channel: ChannelName::parse("hotel-1").unwrap(),
            except: Some(SocketId::parse("1.2").unwrap()),
            cacheable: false,
            frame: r#"{"event":"e","channel":"hotel-1","data":"line\nbreak"}"#.into(),
        };
        assert_eq!(Envelope::decode(&e.encode()).unwrap(), e);
    }

    #[test]
    fn refuses_garbage() {
        assert_eq!(
            Envelope::decode(b"no newline"),
            Err(EnvelopeError::NoHeader)
        );
        assert_eq!(Envelope::decode(b"{\n{}"), Err(EnvelopeError::BadHeader));
        assert_eq!(
            Envelope::decode(br#"{"n":"x","a":"app","c":"c"}"#.iter().chain(b"\n{}").copied().collect::<Vec<_>>().as_slice()),
            Err(EnvelopeError::BadHeader)
        );
    }
}
