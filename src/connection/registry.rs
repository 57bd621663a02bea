//! Every open connection on this node, by socket id and by signed-in user, so that the
//! server can reach them as a whole: terminate a user's connections, or tell everyone to
//! reconnect elsewhere when shutting down.

use std::collections::{HashMap, HashSet};

use bellhop_protocol::{AppId, SocketId, UserId};
use parking_lot::Mutex;

use super::outbox::{CloseRequest, Outbox};

#[derive(Default)]
pub struct Connections {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    sockets: HashMap<SocketId, (AppId, Outbox)>,
    users: HashMap<(AppId, UserId), HashSet<SocketId>>,
}

impl Connections {
    pub fn add(&self, socket_id: SocketId, app: AppId, outbox: Outbox) {
        self.inner.lock().sockets.insert(socket_id, (app, outbox));
    }

    /// Forgets a connection (and its signed-in user, if any).
    pub fn remove(&self, socket_id: SocketId, user: Option<&UserId>) {
        let mut inner = self.inner.lock();
        if let Some((app, _)) = inner.sockets.remove(&socket_id) {
            if let Some(user) = user {
                let key = (app, user.clone());
                if let Some(set) = inner.users.get_mut(&key) {
                    set.remove(&socket_id);
                    if set.is_empty() {
                        inner.users.remove(&key);
                    }
                }
            }
        }
    }

    pub fn signed_in(&self, socket_id: SocketId, app: &AppId, user: &UserId) {
        self.inner
            .lock()
            .users
            .entry((app.clone(), user.clone()))
            .or_default()
            .insert(socket_id);
    }

    /// Closes every connection of `user` in `app`; returns how many.
    pub fn terminate_user(&self, app: &AppId, user: &UserId, request: CloseRequest) -> usize {
        let inner = self.inner.lock();
        let Some(ids) = inner.users.get(&(app.clone(), user.clone())) else {
            return 0;
        };
        let outboxes: Vec<Outbox> = ids
            .iter()
            .filter_map(|id| inner.sockets.get(id).map(|(_, o)| o.clone()))
            .collect();
        drop(inner);
        for o in &outboxes {
            o.close(request.clone());
        }
        outboxes.len()
    }

    /// Up to `n` open connections not yet asked to close.
    pub fn some_open(&self, n: usize) -> Vec<Outbox> {
        self.inner
            .lock()
            .sockets
            .values()
            .filter(|(_, o)| !o.is_closing())
            .take(n)
            .map(|(_, o)| o.clone())
            .collect()
    }

    pub fn len(&self) -> usize {
        self.inner.lock().sockets.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
