//! The one question delivery asks of the realtime side: is this person connected right now
//! (so a push would only repeat what their open app already shows), and who is in a presence
//! channel (a rule's `presence` recipients). One node answers from its own registries, a
//! cluster from the ledger; the implementations live with the wiring, so delivery depends on
//! neither channels nor connections.

use futures_util::future::BoxFuture;

pub trait Presence: Send + Sync {
    /// Whether `user` has a live socket: signed in as them anywhere; or, for the channel the
    /// event went to, a member of it (presence) or a subscriber of a channel that is theirs
    /// (`personal`: the channel's name carries their id, like `{hotel}-staff-{id}-porter`).
    /// Anyone else on a shared channel says nothing about this user. An answer that cannot be
    /// had (the ledger away) is `false`: better a push too many than a missed one.
    fn connected<'a>(
        &'a self,
        app: &'a str,
        user: &'a str,
        channel: Option<&'a str>,
        personal: bool,
    ) -> BoxFuture<'a, bool>;

    /// The user ids of a presence channel's members, cluster-wide (empty when unknown).
    fn members<'a>(&'a self, app: &'a str, channel: &'a str) -> BoxFuture<'a, Vec<String>>;
}
