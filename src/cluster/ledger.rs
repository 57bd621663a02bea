//! The cluster ledger on Redis: how many sockets each node has subscribed to each channel,
//! which presence members and signed-in users it holds, and how many connections per app, with
//! the cluster-wide totals kept beside them by one Lua script (`ledger.lua`).
//!
//! Every change of this node goes through one writer task, in order, batched into one script
//! call; the task also keeps this node's own share (the truth of what its sockets are doing), so
//! that after an outage, a restart or being taken for dead it can put its record right with one
//! `sync`. Facts the script reports — a channel's first subscriber, a user's last socket, a
//! node that stopped beating — are handed to the [`Announcer`](super::Announcer) exactly once.
//!
//! Reads (channel lists, counts, members, who is online) go straight to Redis and never wait on
//! the writer, so the HTTP API answers cluster-wide from one round trip and no scatter-gather.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bellhop_protocol::{AppId, ChannelName, SocketId, UserId};
use redis::aio::ConnectionManager;
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{json, Value};
use tokio::sync::{mpsc, oneshot};

use super::announce::{Announcer, Deferred, Fact};
use crate::channel::presence_view::PresenceView;

const SCRIPT: &str = include_str!("ledger.lua");
/// The same script for reads outside the writer (built once: a script hashes its source).
static LEDGER: std::sync::LazyLock<redis::Script> =
    std::sync::LazyLock::new(|| redis::Script::new(SCRIPT));

/// Takes messages from an app's per-second budget, or none of them (built once: a script
/// hashes its source when made).
static TAKE_EVENTS: std::sync::LazyLock<redis::Script> = std::sync::LazyLock::new(|| {
    redis::Script::new(
        "local t = redis.call('INCRBY', KEYS[1], ARGV[1]) \
         if t == tonumber(ARGV[1]) then redis.call('EXPIRE', KEYS[1], 2) end \
         if t > tonumber(ARGV[2]) then redis.call('DECRBY', KEYS[1], ARGV[1]) return 0 end \
         return 1",
    )
});
/// Ops sent in one script call at most.
const BATCH: usize = 512;
const CALL_TIMEOUT: Duration = Duration::from_secs(2);

/// How often a node beats, when a silent node is taken for dead, how often each node re-sends
/// its whole share (which also refreshes every key's TTL), and the TTL itself.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    pub beat: Duration,
    pub dead_after: Duration,
    pub resync: Duration,
    pub ttl: Duration,
    /// The webhook cancel window (`channel_vacated`, `member_removed`), cluster-wide.
    pub webhook_delay: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Self {
            beat: Duration::from_secs(1),
            dead_after: Duration::from_secs(5),
            resync: Duration::from_secs(60),
            ttl: Duration::from_secs(3600),
            webhook_delay: Duration::from_secs(3),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    #[error("the cluster ledger is unavailable: {0}")]
    Unavailable(String),
    #[error("the cluster ledger answered something unexpected: {0}")]
    Malformed(String),
}

impl From<redis::RedisError> for LedgerError {
    fn from(e: redis::RedisError) -> Self {
        Self::Unavailable(e.to_string())
    }
}

/// One thing this node counts in the ledger.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Entry {
    /// Sockets subscribed to a channel.
    Subscription { app: AppId, channel: ChannelName },
    /// Sockets of one presence member in a channel.
    Member {
        app: AppId,
        channel: ChannelName,
        user: UserId,
    },
    /// Sockets signed in as a user.
    SignedIn { app: AppId, user: UserId },
    /// Connections of an app (counted only for apps with a connection limit).
    Connections { app: AppId },
}

/// User ids read back from Redis were checked when they were written; this bound only keeps
/// a corrupted value from becoming a huge id.
const MAX_STORED_USER_ID: usize = 4096;

impl Entry {
    fn encode(&self) -> Value {
        match self {
            Entry::Subscription { app, channel } => json!(["s", app.as_str(), channel.as_str()]),
            Entry::Member { app, channel, user } => {
                json!(["p", app.as_str(), channel.as_str(), user.as_str()])
            }
            Entry::SignedIn { app, user } => json!(["o", app.as_str(), user.as_str()]),
            Entry::Connections { app } => json!(["c", app.as_str()]),
        }
    }

    fn decode(parts: &[String]) -> Option<Self> {
        let app = AppId::parse(parts.get(1)?).ok()?;
        let channel = |i: usize| parts.get(i).and_then(|c| ChannelName::parse(c).ok());
        let user = |i: usize| {
            parts
                .get(i)
                .and_then(|u| UserId::parse(u, MAX_STORED_USER_ID).ok())
        };
        Some(match parts.first()?.as_str() {
            "s" => Entry::Subscription {
                app,
                channel: channel(2)?,
            },
            "p" => Entry::Member {
                app,
                channel: channel(2)?,
                user: user(3)?,
            },
            "o" => Entry::SignedIn {
                app,
                user: user(2)?,
            },
            "c" => Entry::Connections { app },
            _ => return None,
        })
    }
}

/// A change to this node's share.
#[derive(Debug, Clone)]
pub struct Op {
    pub entry: Entry,
    pub delta: i64,
    /// A presence member's `user_info`, kept with the member.
    pub info: Option<Arc<RawValue>>,
    /// Refuse an increase when the total is at this limit (members or connections); 0 = none.
    pub max: u64,
    /// Answer with the channel's members (presence subscribe).
    pub want_members: bool,
    /// Refused whenever the op before it in the same call is refused (a presence member at
    /// its limit takes its subscription with it).
    pub gated: bool,
    /// The socket that caused the change, left out of the `member_added` it may cause (the
    /// script publishes member events itself, so that they keep the order it ran in).
    pub socket: Option<SocketId>,
}

impl Op {
    pub fn new(entry: Entry, delta: i64) -> Self {
        Self {
            entry,
            delta,
            info: None,
            max: 0,
            want_members: false,
            gated: false,
            socket: None,
        }
    }
}

/// What the ledger said of one op.
#[derive(Debug, Default)]
pub struct Outcome {
    /// Refused: the total is at its limit. Nothing changed.
    pub full: bool,
    /// The cluster-wide total after the change.
    pub total: u64,
    /// The presence channel's members, when asked for, and the number of the last member
    /// frame they include.
    pub members: Vec<(String, Box<RawValue>)>,
    pub seq: Option<u64>,
}

#[derive(Deserialize, Default)]
struct RawOutcome {
    #[serde(default)]
    full: bool,
    #[serde(default)]
    fact: Option<String>,
    #[serde(default)]
    total: i64,
    #[serde(default)]
    d: i64,
    #[serde(default)]
    members: Option<Value>,
    #[serde(default)]
    pending: Option<String>,
    #[serde(default)]
    seq: Option<u64>,
}

#[derive(Deserialize)]
struct RawBeat {
    epoch: String,
    registered: bool,
    #[serde(default)]
    facts: Option<Value>,
}

#[derive(Deserialize)]
struct RawSync {
    #[serde(default)]
    facts: Option<Value>,
}

struct Request {
    ops: Vec<Op>,
    reply: Option<oneshot::Sender<Result<Vec<Outcome>, LedgerError>>>,
    /// The node is stopping: take it off the live nodes and stop beating.
    leave: bool,
}

pub struct Ledger {
    tx: mpsc::UnboundedSender<Request>,
    reader: ConnectionManager,
    prefix: String,
    healthy: Arc<AtomicBool>,
    ttl_secs: u64,
}

impl Ledger {
    /// Starts the writer. Before anything else it clears what an earlier process with the same
    /// node id may have left (announcing it), then beats.
    pub fn start(
        conn: ConnectionManager,
        prefix: String,
        node: String,
        timing: Timing,
        announcer: Arc<Announcer>,
        reconcile: Arc<tokio::sync::Notify>,
    ) -> Arc<Self> {
        // Unbounded: a dropped leave would stay in this node's share for ever. Joins wait for
        // their answer, so the queue holds at most one join per connection plus its leaves.
        let (tx, rx) = mpsc::unbounded_channel();
        let healthy = Arc::new(AtomicBool::new(false));
        let writer = Writer {
            conn: conn.clone(),
            script: redis::Script::new(SCRIPT),
            prefix: prefix.clone(),
            node,
            timing,
            share: HashMap::new(),
            dirty: true,
            epoch: None,
            announcer,
            healthy: healthy.clone(),
            counts_due: BTreeSet::new(),
            deferred: Vec::new(),
            reconcile,
        };
        tokio::spawn(writer.run(rx));
        Arc::new(Self {
            tx,
            reader: conn,
            prefix,
            healthy,
            ttl_secs: timing.ttl.as_secs().max(1),
        })
    }

    /// Whether the last call to Redis succeeded (readiness).
    pub fn healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    /// Applies `ops` in order and waits for the outcome. On an error, this node's share still
    /// records the ops, and the node puts the ledger right once Redis answers again.
    pub async fn apply(&self, ops: Vec<Op>) -> Result<Vec<Outcome>, LedgerError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Request {
                ops,
                reply: Some(reply),
                leave: false,
            })
            .map_err(|_| LedgerError::Unavailable("the ledger writer stopped".into()))?;
        rx.await
            .map_err(|_| LedgerError::Unavailable("the ledger writer stopped".into()))?
    }

    /// Waits until every op submitted before it has reached Redis (or failed): shutdown
    /// calls it so that the leaves of the closed sockets are not lost with the process.
    pub async fn flush(&self) {
        let _ = self.apply(Vec::new()).await;
    }

    /// Takes this node off the live nodes (graceful shutdown, after [`Self::flush`]): the
    /// others stop counting on it at once instead of when it stops beating.
    pub async fn leave(&self) {
        let (reply, rx) = oneshot::channel();
        let request = Request {
            ops: Vec::new(),
            reply: Some(reply),
            leave: true,
        };
        if self.tx.send(request).is_ok() {
            let _ = rx.await;
        }
    }

    /// Applies `ops` without waiting: leaves, whose facts the writer announces by itself.
    pub fn submit(&self, ops: Vec<Op>) {
        if ops.is_empty() {
            return;
        }
        let request = Request {
            ops,
            reply: None,
            leave: false,
        };
        if self.tx.send(request).is_err() {
            tracing::error!("cluster ledger writer stopped; this node's leaves are not recorded");
        }
    }

    fn key(&self, parts: &[&str]) -> String {
        let mut k = self.prefix.clone();
        for p in parts {
            k.push(':');
            k.push_str(p);
        }
        k
    }

    async fn read<T: redis::FromRedisValue>(&self, cmd: &redis::Cmd) -> Result<T, LedgerError> {
        let mut conn = self.reader.clone();
        tokio::time::timeout(CALL_TIMEOUT, cmd.query_async(&mut conn))
            .await
            .map_err(|_| LedgerError::Unavailable("Redis did not answer in time".into()))?
            .map_err(LedgerError::from)
    }

    /// Occupied channels of `app` across the cluster, with their subscription counts.
    pub async fn channels(&self, app: &AppId) -> Result<Vec<(ChannelName, u64)>, LedgerError> {
        let all: HashMap<String, i64> = self
            .read(redis::cmd("HGETALL").arg(self.key(&["c", app.as_str()])))
            .await?;
        let mut out: Vec<_> = all
            .into_iter()
            .filter(|(_, n)| *n > 0)
            .filter_map(|(c, n)| Some((ChannelName::parse(&c).ok()?, n as u64)))
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }

    /// Distinct presence members of each channel, in one round trip.
    pub async fn user_counts(
        &self,
        app: &AppId,
        channels: &[&ChannelName],
    ) -> Result<Vec<u64>, LedgerError> {
        if channels.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for c in channels {
            pipe.cmd("HLEN")
                .arg(self.key(&["u", app.as_str(), c.as_str()]));
        }
        let mut conn = self.reader.clone();
        tokio::time::timeout(CALL_TIMEOUT, pipe.query_async::<Vec<u64>>(&mut conn))
            .await
            .map_err(|_| LedgerError::Unavailable("Redis did not answer in time".into()))?
            .map_err(LedgerError::from)
    }

    /// One channel's subscription count and distinct members, cluster-wide.
    pub async fn channel(
        &self,
        app: &AppId,
        channel: &ChannelName,
    ) -> Result<(u64, u64), LedgerError> {
        let subs: Option<i64> = self
            .read(
                redis::cmd("HGET")
                    .arg(self.key(&["c", app.as_str()]))
                    .arg(channel.as_str()),
            )
            .await?;
        let users = self.user_counts(app, &[channel]).await?[0];
        Ok((subs.unwrap_or(0).max(0) as u64, users))
    }

    /// The user ids of a presence channel's members, cluster-wide.
    pub async fn members(
        &self,
        app: &AppId,
        channel: &ChannelName,
    ) -> Result<Vec<String>, LedgerError> {
        self.read(redis::cmd("HKEYS").arg(self.key(&["u", app.as_str(), channel.as_str()])))
            .await
    }

    /// A presence channel's members with their `user_info`, cluster-wide.
    pub async fn member_list(
        &self,
        app: &AppId,
        channel: &ChannelName,
    ) -> Result<Vec<(String, Box<RawValue>)>, LedgerError> {
        let all: Vec<(String, String)> = self
            .read(redis::cmd("HGETALL").arg(self.key(&["m", app.as_str(), channel.as_str()])))
            .await?;
        Ok(all
            .into_iter()
            .filter_map(|(id, info)| Some((id, RawValue::from_string(info).ok()?)))
            .collect())
    }

    /// A presence channel's members and the number of the last member frame they include,
    /// read together (for [`super::reconcile`]).
    pub async fn presence_truth(
        &self,
        app: &AppId,
        channel: &ChannelName,
    ) -> Result<PresenceView, LedgerError> {
        #[derive(Deserialize)]
        struct Truth {
            seq: u64,
            members: Value,
        }
        let payload = json!(["p", app.as_str(), channel.as_str()]);
        let mut invocation = LEDGER.prepare_invoke();
        invocation
            .arg(&self.prefix)
            .arg("")
            .arg(Mode::Truth.name())
            .arg(payload.to_string())
            .arg(self.ttl_secs)
            .arg(0)
            .arg("")
            .arg("");
        let mut conn = self.reader.clone();
        let answer: String = tokio::time::timeout(CALL_TIMEOUT, invocation.invoke_async(&mut conn))
            .await
            .map_err(|_| LedgerError::Unavailable("Redis did not answer in time".into()))??;
        let truth: Truth =
            serde_json::from_str(&answer).map_err(|e| LedgerError::Malformed(e.to_string()))?;
        Ok(PresenceView::new(parse_members(truth.members), truth.seq))
    }

    /// Which of `users` have a signed-in socket anywhere in the cluster.
    pub async fn online(&self, app: &AppId, users: &[UserId]) -> Result<Vec<bool>, LedgerError> {
        if users.is_empty() {
            return Ok(Vec::new());
        }
        let mut cmd = redis::cmd("HMGET");
        cmd.arg(self.key(&["o", app.as_str()]));
        for u in users {
            cmd.arg(u.as_str());
        }
        let counts: Vec<Option<i64>> = self.read(&cmd).await?;
        Ok(counts.into_iter().map(|c| c.unwrap_or(0) > 0).collect())
    }

    /// Counts `n` messages against the app's per-second budget across the cluster. False when
    /// they would exceed `per_second` (and then they are not counted).
    pub async fn take_events(
        &self,
        app: &AppId,
        n: u64,
        per_second: u64,
    ) -> Result<bool, LedgerError> {
        let second = now_ms() / 1000;
        let key = self.key(&["er", app.as_str(), &second.to_string()]);
        let script = &*TAKE_EVENTS;
        let mut conn = self.reader.clone();
        let allowed: i64 = tokio::time::timeout(
            CALL_TIMEOUT,
            script
                .key(key)
                .arg(n)
                .arg(per_second)
                .invoke_async(&mut conn),
        )
        .await
        .map_err(|_| LedgerError::Unavailable("Redis did not answer in time".into()))??;
        Ok(allowed == 1)
    }
}

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// This node's share of one entry.
struct Share {
    count: i64,
    info: Option<Arc<RawValue>>,
}

struct Writer {
    conn: ConnectionManager,
    script: redis::Script,
    prefix: String,
    node: String,
    timing: Timing,
    share: HashMap<Entry, Share>,
    /// The ledger may not match `share` (an op failed, or this node just started).
    dirty: bool,
    /// The ledger's epoch as last seen; a new one means Redis lost everything.
    epoch: Option<String>,
    announcer: Arc<Announcer>,
    healthy: Arc<AtomicBool>,
    /// Channels whose subscription count changed here, announced once a beat.
    counts_due: BTreeSet<(AppId, ChannelName)>,
    /// Leave webhooks waiting out the cancel window, oldest first.
    deferred: Vec<(tokio::time::Instant, Deferred)>,
    /// Asks for this node's presence channels to be reconciled with the ledger.
    reconcile: Arc<tokio::sync::Notify>,
}

enum Mode {
    Apply,
    Beat,
    Sync,
    Truth,
}

/// Which events a script call publishes to the bus.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Publishing {
    /// Member frames and watchlist events: the normal case.
    All,
    /// Member frames only: a rebuild after Redis lost everything, whose member frames the
    /// channel actors filter against what their sockets know (watchlist events they cannot).
    MembersOnly,
}

impl Mode {
    fn name(&self) -> &'static str {
        match self {
            Mode::Apply => "apply",
            Mode::Beat => "beat",
            Mode::Sync => "sync",
            Mode::Truth => "truth",
        }
    }
}

impl Writer {
    async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Request>) {
        let mut beat = tokio::time::interval(self.timing.beat);
        beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut resync = tokio::time::interval(self.timing.resync);
        resync.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        resync.tick().await;
        // Clears whatever an earlier process with this node id left, before the first beat.
        self.sync(true, Publishing::All).await;
        loop {
            tokio::select! {
                req = rx.recv() => {
                    let Some(first) = req else { break };
                    let mut batch = vec![first];
                    let mut ops = batch[0].ops.len();
                    while ops < BATCH && !batch[batch.len() - 1].leave {
                        match rx.try_recv() {
                            Ok(r) => { ops += r.ops.len(); batch.push(r); }
                            Err(_) => break,
                        }
                    }
                    let leaving = batch.last().is_some_and(|r| r.leave).then(|| batch.pop()).flatten();
                    self.apply(batch).await;
                    if let Some(leave) = leaving {
                        self.leave().await;
                        if let Some(reply) = leave.reply {
                            let _ = reply.send(Ok(Vec::new()));
                        }
                        break;
                    }
                }
                _ = beat.tick() => {
                    self.beat().await;
                    self.announce_counts().await;
                }
                _ = resync.tick() => self.sync(true, Publishing::All).await,
                _ = tokio::time::sleep_until(self.next_deferred()), if !self.deferred.is_empty() => {
                    self.settle().await;
                }
            }
        }
    }

    /// Runs the script; `publish` says which of the events it causes go to the bus.
    async fn call(
        &mut self,
        mode: Mode,
        payload: &Value,
        publish: Publishing,
    ) -> Result<String, LedgerError> {
        let bus = format!("{}:bus", self.prefix);
        let mut invocation = self.script.prepare_invoke();
        invocation
            .arg(&self.prefix)
            .arg(&self.node)
            .arg(mode.name())
            .arg(payload.to_string())
            .arg(self.timing.ttl.as_secs().max(1))
            .arg(self.timing.webhook_delay.as_millis() as u64)
            .arg(bus)
            .arg(match publish {
                Publishing::MembersOnly => "members",
                Publishing::All => "",
            });
        let result = tokio::time::timeout(CALL_TIMEOUT, invocation.invoke_async(&mut self.conn))
            .await
            .map_err(|_| LedgerError::Unavailable("Redis did not answer in time".into()))
            .and_then(|r| r.map_err(LedgerError::from));
        let was = self.healthy.swap(result.is_ok(), Ordering::Relaxed);
        match &result {
            Err(e) if was => tracing::warn!(error = %e, "cluster ledger lost Redis"),
            Ok(_) if !was => tracing::info!("cluster ledger reached Redis"),
            _ => {}
        }
        if result.is_err() {
            self.dirty = true;
        }
        result
    }

    fn record(&mut self, op: &Op, delta: i64) {
        let share = self.share.entry(op.entry.clone()).or_insert(Share {
            count: 0,
            info: None,
        });
        share.count = (share.count + delta).max(0);
        if op.info.is_some() {
            share.info = op.info.clone();
        }
        if share.count == 0 {
            self.share.remove(&op.entry);
        }
    }

    async fn apply(&mut self, batch: Vec<Request>) {
        if batch.iter().all(|r| r.ops.is_empty()) {
            for r in batch {
                if let Some(reply) = r.reply {
                    let _ = reply.send(Ok(Vec::new()));
                }
            }
            return;
        }
        let payload: Vec<Value> = batch
            .iter()
            .flat_map(|r| &r.ops)
            .map(|op| {
                json!({
                    "e": op.entry.encode(),
                    "d": op.delta,
                    "i": op.info.as_ref().map(|i| i.get()),
                    "max": op.max,
                    "want": op.want_members,
                    "x": op.socket.map(|s| s.to_string()),
                    "gated": op.gated,
                })
            })
            .collect();
        let answer = self
            .call(Mode::Apply, &Value::Array(payload), Publishing::All)
            .await;
        let raws: Result<Vec<RawOutcome>, LedgerError> = answer.and_then(|s| {
            serde_json::from_str(&s).map_err(|e| LedgerError::Malformed(e.to_string()))
        });
        let mut raws = match raws {
            Ok(r) => r.into_iter(),
            Err(e) => {
                // This node's share still changes: it is the truth the next sync restores.
                for op in batch.iter().flat_map(|r| &r.ops) {
                    self.record(op, op.delta);
                }
                for r in batch {
                    if let Some(reply) = r.reply {
                        let _ = reply.send(Err(LedgerError::Unavailable(e.to_string())));
                    }
                }
                return;
            }
        };
        let mut facts = Vec::new();
        for req in batch {
            let mut outcomes = Vec::with_capacity(req.ops.len());
            for op in &req.ops {
                let raw = raws.next().unwrap_or_default();
                if !raw.full {
                    // The op's own delta, not what Redis applied: a leave that found nothing
                    // there (this node was reaped) must still leave this node's share.
                    self.record(op, op.delta);
                    if let Some(fact) = raw.fact.as_deref() {
                        facts.extend(Fact::from_ledger(fact, &op.entry, raw.pending.clone()));
                    }
                    if raw.d != 0 {
                        if let Entry::Subscription { app, channel } = &op.entry {
                            if self.announcer.wants_count(app, channel) {
                                self.counts_due.insert((app.clone(), channel.clone()));
                            }
                        }
                    }
                }
                outcomes.push(Outcome {
                    full: raw.full,
                    total: raw.total.max(0) as u64,
                    members: raw.members.map(parse_members).unwrap_or_default(),
                    seq: raw.seq,
                });
            }
            if let Some(reply) = req.reply {
                let _ = reply.send(Ok(outcomes));
            }
        }
        self.announce(facts).await;
    }

    async fn announce(&mut self, facts: Vec<Fact>) {
        let deferred = self.announcer.announce(facts).await;
        let due = tokio::time::Instant::now() + self.timing.webhook_delay;
        self.deferred.extend(deferred.into_iter().map(|d| (due, d)));
    }

    fn next_deferred(&self) -> tokio::time::Instant {
        self.deferred
            .first()
            .map_or_else(tokio::time::Instant::now, |(at, _)| *at)
    }

    /// Closes the cancel window of the leaves that are due: each one whose pending key is
    /// still there (no node saw a rejoin) sends its webhook; the key goes either way.
    async fn settle(&mut self) {
        let now = tokio::time::Instant::now();
        let split = self.deferred.partition_point(|(at, _)| *at <= now);
        if split == 0 {
            return;
        }
        let mut pipe = redis::pipe();
        for (_, d) in &self.deferred[..split] {
            pipe.cmd("DEL").arg(&d.key);
        }
        let removed: Vec<i64> = match self.query(&pipe).await {
            Ok(r) => r,
            Err(e) => {
                // Kept for the next try; a webhook late is better than one lost.
                tracing::warn!(error = %e, "cannot close webhook cancel windows yet");
                let later = now + self.timing.beat;
                for (at, _) in &mut self.deferred[..split] {
                    *at = later;
                }
                self.deferred.sort_by_key(|(at, _)| *at);
                return;
            }
        };
        for ((_, d), removed) in self.deferred.drain(..split).zip(removed) {
            if removed == 1 {
                self.announcer.observe(&d.app, d.event);
            }
        }
    }

    async fn leave(&mut self) {
        let mut pipe = redis::pipe();
        pipe.cmd("ZREM")
            .arg(format!("{}:nodes", self.prefix))
            .arg(&self.node);
        if let Err(e) = self.query::<()>(&pipe).await {
            tracing::warn!(error = %e, "could not leave the cluster's live nodes; the others will find this node silent");
        }
    }

    async fn beat(&mut self) {
        let candidate = format!("{:016x}", rand::random::<u64>());
        // Redis's clock, not this node's, says who is silent: skewed nodes cannot reap
        // each other.
        let payload = json!({
            "dead_after": self.timing.dead_after.as_millis() as u64,
            "epoch": candidate,
        });
        let Ok(answer) = self.call(Mode::Beat, &payload, Publishing::All).await else {
            return;
        };
        let beat: RawBeat = match serde_json::from_str(&answer) {
            Ok(b) => b,
            Err(e) => {
                tracing::error!(error = %e, "cluster ledger beat answered garbage");
                return;
            }
        };
        let facts = self.facts(beat.facts);
        if !facts.is_empty() {
            tracing::info!(
                facts = facts.len(),
                "took over the share of nodes that stopped"
            );
        }
        self.announce(facts).await;
        let lost = self.epoch.as_ref().is_some_and(|e| *e != beat.epoch);
        let taken_for_dead = self.epoch.is_some() && !beat.registered;
        self.epoch = Some(beat.epoch);
        if lost {
            // Redis came back empty: every node rebuilds from its own truth, with no webhooks
            // (nothing the backend knows changed). Its member frames reach every node, whose
            // channel actors drop those their sockets already know; a reconcile a little later,
            // once every node has rebuilt, removes the members who left during the outage.
            tracing::warn!("cluster ledger was lost (Redis restarted empty); rebuilding");
            self.sync(false, Publishing::MembersOnly).await;
            self.reconcile.notify_one();
        } else if taken_for_dead || self.dirty {
            if taken_for_dead {
                tracing::warn!("this node was taken for dead; restoring its share");
            }
            self.sync(true, Publishing::All).await;
        }
    }

    /// Makes the ledger's record of this node exactly its share; `announce` the facts that
    /// the difference caused.
    async fn sync(&mut self, announce: bool, publish: Publishing) {
        let payload: Vec<Value> = self
            .share
            .iter()
            .map(|(e, s)| json!({"e": e.encode(), "n": s.count, "i": s.info.as_ref().map(|i| i.get())}))
            .collect();
        let Ok(answer) = self.call(Mode::Sync, &Value::Array(payload), publish).await else {
            return;
        };
        self.dirty = false;
        let facts = match serde_json::from_str::<RawSync>(&answer) {
            Ok(s) => self.facts(s.facts),
            Err(e) => {
                tracing::error!(error = %e, "cluster ledger sync answered garbage");
                return;
            }
        };
        if announce {
            self.announce(facts).await;
        }
    }

    /// Facts as the script lists them: `[fact, entry, pending key?]`, entry being
    /// `[kind, app, …]`.
    fn facts(&self, raw: Option<Value>) -> Vec<Fact> {
        let Some(Value::Array(list)) = raw else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for item in list {
            let Value::Array(mut item) = item else {
                continue;
            };
            let pending = (item.len() > 2)
                .then(|| item.pop())
                .flatten()
                .and_then(|p| p.as_str().map(str::to_owned));
            let Ok((fact, parts)) =
                serde_json::from_value::<(String, Vec<String>)>(Value::Array(item))
            else {
                continue;
            };
            if fact == "reaped" {
                tracing::warn!(
                    node = parts.first().map(String::as_str).unwrap_or(""),
                    "node stopped beating; its sockets are gone"
                );
                continue;
            }
            if let Some(entry) = Entry::decode(&parts) {
                out.extend(Fact::from_ledger(&fact, &entry, pending));
            }
        }
        out
    }

    /// Reads the cluster-wide counts of the channels whose count changed here, and which of
    /// them no node has reported yet, in two round trips.
    async fn announce_counts(&mut self) {
        if self.counts_due.is_empty() {
            return;
        }
        let due: Vec<_> = std::mem::take(&mut self.counts_due).into_iter().collect();
        let prefix = self.prefix.clone();
        let key = |kind: &str, app: &AppId| format!("{prefix}:{kind}:{}", app.as_str());
        let mut pipe = redis::pipe();
        for (app, channel) in &due {
            pipe.cmd("HGET").arg(key("c", app)).arg(channel.as_str());
        }
        let counts: Vec<Option<u64>> = match self.query(&pipe).await {
            Ok(c) => c,
            Err(_) => return,
        };
        let mut pipe = redis::pipe();
        for ((app, channel), n) in due.iter().zip(&counts) {
            pipe.cmd("SET")
                .arg(format!("{}:{}", key("sc", app), channel.as_str()))
                .arg(n.unwrap_or(0))
                .arg("GET")
                .arg("EX")
                .arg(self.timing.ttl.as_secs().max(1));
        }
        let old: Vec<Option<u64>> = match self.query(&pipe).await {
            Ok(o) => o,
            Err(_) => return,
        };
        let counts = due
            .into_iter()
            .zip(counts)
            .zip(old)
            .map(|((key, n), old)| (key.0, key.1, n.unwrap_or(0), old != n))
            .collect();
        self.announcer.counts(counts).await;
    }

    async fn query<T: redis::FromRedisValue>(
        &mut self,
        pipe: &redis::Pipeline,
    ) -> Result<T, LedgerError> {
        tokio::time::timeout(CALL_TIMEOUT, pipe.query_async(&mut self.conn))
            .await
            .map_err(|_| LedgerError::Unavailable("Redis did not answer in time".into()))?
            .map_err(LedgerError::from)
    }
}

/// `[[user_id, user_info], …]` as the script returns members (an empty list comes as `{}`).
fn parse_members(v: Value) -> Vec<(String, Box<RawValue>)> {
    let Value::Array(list) = v else {
        return Vec::new();
    };
    list.into_iter()
        .filter_map(|m| {
            let (id, info) = serde_json::from_value::<(String, String)>(m).ok()?;
            let info = RawValue::from_string(info).ok()?;
            Some((id, info))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_round_trip_through_their_encoding() {
        let app = AppId::parse("1").unwrap();
        let entries = [
            Entry::Subscription {
                app: app.clone(),
                channel: ChannelName::parse("hotel-1").unwrap(),
            },
            Entry::Member {
                app: app.clone(),
                channel: ChannelName::parse("presence-x").unwrap(),
                user: UserId::parse("u/1\"", 128).unwrap(),
            },
            Entry::SignedIn {
                app: app.clone(),
                user: UserId::parse("7", 128).unwrap(),
            },
            Entry::Connections { app },
        ];
        for e in entries {
            let parts: Vec<String> = serde_json::from_value(e.encode()).unwrap();
            assert_eq!(Entry::decode(&parts), Some(e));
        }
        assert_eq!(Entry::decode(&["x".into(), "1".into()]), None);
        assert_eq!(
            Entry::decode(&["s".into(), "bad app".into(), "c".into()]),
            None
        );
    }

    #[test]
    fn members_parse_and_an_empty_list_is_an_object() {
        let v = json!([["1", "{\"name\":\"Ana\"}"], ["2", "{}"]]);
        let m = parse_members(v);
        assert_eq!(m.len(), 2);
        assert_eq!(m[0].0, "1");
        assert_eq!(m[0].1.get(), "{\"name\":\"Ana\"}");
        assert!(parse_members(json!({})).is_empty());
    }
}
