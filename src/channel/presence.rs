//! Presence members of one channel on this node: each user counted once however many of
//! their sockets are subscribed, so `member_added` fires on a user's first socket and
//! `member_removed` on their last.

use std::collections::HashMap;
use std::sync::Arc;

use bellhop_protocol::UserId;
use serde_json::value::RawValue;

#[derive(Default)]
pub struct Members {
    users: HashMap<UserId, Entry>,
}

struct Entry {
    info: Arc<RawValue>,
    sockets: u32,
}

/// What a join or leave changed.
#[derive(Debug, PartialEq, Eq)]
pub enum Change {
    /// The user's first socket joined / last socket left.
    First,
    /// Another socket of a user who is already a member.
    Repeat,
}

impl Members {
    pub fn len(&self) -> usize {
        self.users.len()
    }

    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }

    pub fn contains(&self, user: &UserId) -> bool {
        self.users.contains_key(user)
    }

    pub fn join(&mut self, user: UserId, info: Arc<RawValue>) -> Change {
        match self.users.get_mut(&user) {
            Some(e) => {
                e.sockets += 1;
                Change::Repeat
            }
            None => {
                self.users.insert(user, Entry { info, sockets: 1 });
                Change::First
            }
        }
    }

    pub fn leave(&mut self, user: &UserId) -> Option<Change> {
        let e = self.users.get_mut(user)?;
        e.sockets -= 1;
        if e.sockets == 0 {
            self.users.remove(user);
            Some(Change::First)
        } else {
            Some(Change::Repeat)
        }
    }

    pub fn iter(&self) -> impl ExactSizeIterator<Item = (&str, &RawValue)> + Clone {
        self.users.iter().map(|(id, e)| (id.as_str(), &*e.info))
    }

    pub fn ids(&self) -> Vec<UserId> {
        self.users.keys().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info() -> Arc<RawValue> {
        Arc::from(RawValue::from_string("{}".into()).unwrap())
    }

    #[test]
    fn a_user_counts_once_across_sockets() {
        let mut m = Members::default();
        let u = UserId::parse("1", 128).unwrap();
        assert_eq!(m.join(u.clone(), info()), Change::First);
        assert_eq!(m.join(u.clone(), info()), Change::Repeat);
        assert_eq!(m.len(), 1);
        assert_eq!(m.leave(&u), Some(Change::Repeat));
        assert_eq!(m.leave(&u), Some(Change::First));
        assert_eq!(m.leave(&u), None);
        assert!(m.is_empty());
    }
}
