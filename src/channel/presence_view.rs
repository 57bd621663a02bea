//! What the sockets of a clustered presence channel have been told: the members list their
//! `subscription_succeeded` gave them, moved on by every member frame since, numbered by the
//! ledger's member sequence. The channel actor keeps one such view for its sockets, so that
//! it can drop a frame that would tell them nothing true (an add of a member they have, a
//! removal of one they lack: what a ledger rebuilt after Redis lost everything publishes),
//! and bring them back to the truth with the right adds and removals after a gap.

use std::collections::HashMap;
use std::sync::Arc;

use bellhop_protocol::server;
use bytestring::ByteString;
use serde::Deserialize;
use serde_json::value::RawValue;

/// A member frame, read back from its encoded bytes.
#[derive(Debug, Clone)]
pub enum MemberChange {
    Added {
        user_id: String,
        info: Arc<RawValue>,
    },
    Removed {
        user_id: String,
    },
}

impl PartialEq for MemberChange {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (
                Self::Added { user_id, info },
                Self::Added {
                    user_id: u,
                    info: i,
                },
            ) => user_id == u && info.get() == i.get(),
            (Self::Removed { user_id }, Self::Removed { user_id: u }) => user_id == u,
            _ => false,
        }
    }
}

impl MemberChange {
    /// The change a `pusher_internal:member_added`/`member_removed` frame makes; None for
    /// any other frame.
    pub fn parse(frame: &str) -> Option<Self> {
        #[derive(Deserialize)]
        struct Outer<'a> {
            event: &'a str,
            data: String,
        }
        #[derive(Deserialize)]
        struct Data {
            user_id: String,
            #[serde(default)]
            user_info: Option<Box<RawValue>>,
        }
        let outer: Outer<'_> = serde_json::from_str(frame).ok()?;
        let data: Data = serde_json::from_str(&outer.data).ok()?;
        match outer.event {
            "pusher_internal:member_added" => Some(Self::Added {
                user_id: data.user_id,
                info: data
                    .user_info
                    .map(Arc::from)
                    .unwrap_or_else(|| Arc::from(empty_info())),
            }),
            "pusher_internal:member_removed" => Some(Self::Removed {
                user_id: data.user_id,
            }),
            _ => None,
        }
    }
}

fn empty_info() -> Box<RawValue> {
    // unwrap: "{}" is valid JSON.
    RawValue::from_string("{}".into()).unwrap()
}

/// A members list as of one point of the ledger's member sequence.
#[derive(Debug, Clone, Default)]
pub struct PresenceView {
    members: HashMap<String, Arc<RawValue>>,
    seq: u64,
}

impl PresenceView {
    pub fn new(members: impl IntoIterator<Item = (String, Box<RawValue>)>, seq: u64) -> Self {
        Self {
            members: members
                .into_iter()
                .map(|(id, info)| (id, Arc::from(info)))
                .collect(),
            seq,
        }
    }

    pub fn seq(&self) -> u64 {
        self.seq
    }

    pub fn len(&self) -> usize {
        self.members.len()
    }

    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// Moves the view on by the change numbered `seq`. True when a socket holding this view
    /// must be told: the change is newer than the view and alters it.
    pub fn apply(&mut self, change: &MemberChange, seq: u64) -> bool {
        if seq <= self.seq {
            return false;
        }
        self.seq = seq;
        match change {
            MemberChange::Added { user_id, info } => {
                self.members.insert(user_id.clone(), info.clone()).is_none()
            }
            MemberChange::Removed { user_id } => self.members.remove(user_id).is_some(),
        }
    }

    /// The member frames that bring a socket told `self` to `truth`: removals first, then
    /// additions, each in user id order.
    pub fn frames_to(&self, truth: &PresenceView, channel: &str) -> Vec<ByteString> {
        let mut gone: Vec<&String> = self
            .members
            .keys()
            .filter(|id| !truth.members.contains_key(*id))
            .collect();
        gone.sort();
        let mut new: Vec<(&String, &Arc<RawValue>)> = truth
            .members
            .iter()
            .filter(|(id, _)| !self.members.contains_key(*id))
            .collect();
        new.sort_by_key(|(id, _)| *id);
        gone.into_iter()
            .map(|id| server::member_removed(channel, id).into())
            .chain(
                new.into_iter()
                    .map(|(id, info)| server::member_added(channel, id, info).into()),
            )
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(s: &str) -> Box<RawValue> {
        RawValue::from_string(s.into()).unwrap()
    }

    fn view(ids: &[&str], seq: u64) -> PresenceView {
        PresenceView::new(ids.iter().map(|id| (id.to_string(), info("{}"))), seq)
    }

    #[test]
    fn member_frames_parse_back_to_their_change() {
        let added = server::member_added("presence-a", "u\"1", &info(r#"{"name":"Ana"}"#));
        match MemberChange::parse(&added) {
            Some(MemberChange::Added { user_id, info }) => {
                assert_eq!(user_id, "u\"1");
                assert_eq!(info.get(), r#"{"name":"Ana"}"#);
            }
            other => panic!("{other:?}"),
        }
        let removed = server::member_removed("presence-a", "7");
        assert_eq!(
            MemberChange::parse(&removed),
            Some(MemberChange::Removed {
                user_id: "7".into()
            })
        );
        assert_eq!(MemberChange::parse(r#"{"event":"x","data":"{}"}"#), None);
        assert_eq!(MemberChange::parse("not json"), None);
    }

    #[test]
    fn only_newer_changes_that_alter_the_view_are_told() {
        let mut v = view(&["1", "2"], 10);
        let add = |id: &str| MemberChange::Added {
            user_id: id.into(),
            info: Arc::from(info("{}")),
        };
        let remove = |id: &str| MemberChange::Removed { user_id: id.into() };
        assert!(!v.apply(&add("3"), 10), "not newer than the view");
        assert!(!v.apply(&add("1"), 11), "already a member: redundant");
        assert!(v.apply(&add("3"), 12));
        assert!(!v.apply(&remove("9"), 13), "never a member: redundant");
        assert!(v.apply(&remove("1"), 14));
        assert_eq!(v.seq(), 14);
        assert_eq!(v.len(), 2);
    }

    #[test]
    fn frames_to_the_truth_remove_then_add() {
        let told = view(&["1", "2", "3"], 5);
        let truth = view(&["2", "4"], 1_000_000);
        let frames = told.frames_to(&truth, "presence-x");
        let changes: Vec<_> = frames
            .iter()
            .map(|f| MemberChange::parse(f).unwrap())
            .collect();
        assert_eq!(
            changes,
            vec![
                MemberChange::Removed {
                    user_id: "1".into()
                },
                MemberChange::Removed {
                    user_id: "3".into()
                },
                MemberChange::Added {
                    user_id: "4".into(),
                    info: Arc::from(info("{}"))
                },
            ]
        );
        assert!(truth.frames_to(&truth, "presence-x").is_empty());
    }
}
