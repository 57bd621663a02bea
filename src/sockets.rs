//! Every open connection on this node, by socket id and by signed-in user, so that the
//! server can reach them as a whole: terminate a user's connections, or tell everyone to
//! reconnect elsewhere when shutting down.

use std::collections::{HashMap, HashSet};

use bellhop_protocol::{server, AppId, SocketId, UserId};
use bytestring::ByteString;
use parking_lot::Mutex;

use crate::outbox::{CloseRequest, Outbox};

#[derive(Default)]
pub struct Connections {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    sockets: HashMap<SocketId, (AppId, Outbox)>,
    users: HashMap<(AppId, UserId), HashSet<SocketId>>,
    /// Watched user → the sockets whose watchlist names them.
    watchers: HashMap<(AppId, UserId), HashSet<SocketId>>,
    /// Socket → the users it watches, to undo the above when it closes.
    watching: HashMap<SocketId, Vec<UserId>>,
}

impl Inner {
    /// Tells everyone watching `user` that they went online or offline.
    fn notify_watchers(&self, app: &AppId, user: &UserId, name: &str) {
        let Some(ids) = self.watchers.get(&(app.clone(), user.clone())) else {
            return;
        };
        let frame = ByteString::from(server::watchlist_events(name, &[user.as_str()]));
        for id in ids {
            if let Some((_, outbox)) = self.sockets.get(id) {
                let _ = outbox.push(frame.clone());
            }
        }
    }
}

impl Connections {
    pub fn add(&self, socket_id: SocketId, app: AppId, outbox: Outbox) {
        self.inner.lock().sockets.insert(socket_id, (app, outbox));
    }

    /// Tells this node's watchers of `user` that they went online or offline (a cluster fact).
    pub fn watch_event(&self, app: &AppId, user: &UserId, online: bool) {
        let name = if online { "online" } else { "offline" };
        self.inner.lock().notify_watchers(app, user, name);
    }

    /// Forgets a connection (and its signed-in user, if any). Alone (`announce`), the user's
    /// watchers hear `offline` when this was the user's last socket; clustered, the ledger
    /// decides that.
    pub fn remove(&self, socket_id: SocketId, user: Option<&UserId>, announce: bool) {
        let mut inner = self.inner.lock();
        let Some((app, _)) = inner.sockets.remove(&socket_id) else {
            return;
        };
        for watched in inner.watching.remove(&socket_id).unwrap_or_default() {
            let key = (app.clone(), watched);
            if let Some(set) = inner.watchers.get_mut(&key) {
                set.remove(&socket_id);
                if set.is_empty() {
                    inner.watchers.remove(&key);
                }
            }
        }
        if let Some(user) = user {
            let key = (app.clone(), user.clone());
            if let Some(set) = inner.users.get_mut(&key) {
                set.remove(&socket_id);
                if set.is_empty() {
                    inner.users.remove(&key);
                    if announce {
                        inner.notify_watchers(&app, user, "offline");
                    }
                }
            }
        }
    }

    /// Records a sign-in. Alone (`announce`), watchers of `user` hear `online` if this is the
    /// user's first socket, and the socket itself hears which of its `watchlist` are online
    /// now; clustered, the ledger knows both and the caller tells them.
    pub fn signed_in(
        &self,
        socket_id: SocketId,
        app: &AppId,
        user: &UserId,
        watchlist: Vec<UserId>,
        announce: bool,
    ) {
        let mut inner = self.inner.lock();
        let sockets = inner.users.entry((app.clone(), user.clone())).or_default();
        let first = sockets.is_empty();
        sockets.insert(socket_id);
        if first && announce {
            inner.notify_watchers(app, user, "online");
        }
        if watchlist.is_empty() {
            return;
        }
        for watched in &watchlist {
            inner
                .watchers
                .entry((app.clone(), watched.clone()))
                .or_default()
                .insert(socket_id);
        }
        let online: Vec<&str> = watchlist
            .iter()
            .filter(|w| inner.users.contains_key(&(app.clone(), (*w).clone())))
            .map(|w| w.as_str())
            .collect();
        if !online.is_empty() && announce {
            if let Some((_, outbox)) = inner.sockets.get(&socket_id) {
                let _ = outbox.push(server::watchlist_events("online", &online).into());
            }
        }
        inner.watching.insert(socket_id, watchlist);
    }

    /// Whether `user` is signed in on a socket of this node.
    pub fn user_online(&self, app: &AppId, user: &UserId) -> bool {
        self.inner
            .lock()
            .users
            .contains_key(&(app.clone(), user.clone()))
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

    /// Closes every connection of `app`; returns how many.
    pub fn close_app(&self, app: &AppId, request: CloseRequest) -> usize {
        let outboxes: Vec<Outbox> = self
            .inner
            .lock()
            .sockets
            .values()
            .filter(|(a, _)| a == app)
            .map(|(_, o)| o.clone())
            .collect();
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
