//! Provider gates in Redis, shared by every node of a cluster: the pause is a key with a TTL
//! (the `Retry-After`), the budget a counter per second; one script reads both atomically.

use std::time::Duration;

use futures_util::future::BoxFuture;
use redis::aio::ConnectionManager;

use super::{Gate, GateError, Gates};
use crate::store::now_ms;

const CALL_TIMEOUT: Duration = Duration::from_secs(2);

/// The pause first, then this second's budget. Answers how many ms to wait, 0 when the send
/// may go now (and is counted); negative: paused for that long.
static ADMIT: std::sync::LazyLock<redis::Script> = std::sync::LazyLock::new(|| {
    redis::Script::new(
        "local p = redis.call('PTTL', KEYS[1]) if p > 0 then return -p end \
         local limit = tonumber(ARGV[1]) if limit == 0 then return 0 end \
         local t = redis.call('INCR', KEYS[2]) \
         if t == 1 then redis.call('EXPIRE', KEYS[2], 2) end \
         if t > limit then redis.call('DECR', KEYS[2]) return tonumber(ARGV[2]) end \
         return 0",
    )
});

/// Pauses for ARGV[1] ms unless already paused for longer.
static PAUSE: std::sync::LazyLock<redis::Script> = std::sync::LazyLock::new(|| {
    redis::Script::new(
        "if redis.call('PTTL', KEYS[1]) < tonumber(ARGV[1]) then \
         redis.call('SET', KEYS[1], '1', 'PX', ARGV[1]) end return 1",
    )
});

pub struct RedisGates {
    conn: ConnectionManager,
    prefix: String,
}

impl RedisGates {
    pub fn new(conn: ConnectionManager, prefix: &str) -> Self {
        Self {
            conn,
            prefix: prefix.to_owned(),
        }
    }

    fn paused_key(&self, app: &str, provider: &str) -> String {
        format!("{}:pp:{app}:{provider}", self.prefix)
    }
}

fn unavailable(e: impl std::fmt::Display) -> GateError {
    GateError(e.to_string())
}

impl Gates for RedisGates {
    fn admit<'a>(
        &'a self,
        app: &'a str,
        provider: &'a str,
        per_second: Option<u32>,
    ) -> BoxFuture<'a, Result<Gate, GateError>> {
        Box::pin(async move {
            let now = now_ms();
            let window = format!("{}:pw:{app}:{provider}:{}", self.prefix, now / 1000);
            let mut conn = self.conn.clone();
            let mut call = ADMIT.prepare_invoke();
            call.key(self.paused_key(app, provider))
                .key(window)
                .arg(per_second.unwrap_or(0))
                .arg(1000 - now % 1000);
            let wait: i64 = tokio::time::timeout(CALL_TIMEOUT, call.invoke_async(&mut conn))
                .await
                .map_err(|_| unavailable("Redis did not answer in time"))?
                .map_err(unavailable)?;
            Ok(match wait {
                0 => Gate::Open,
                w if w < 0 => Gate::Paused(Duration::from_millis(w.unsigned_abs())),
                w => Gate::Full(Duration::from_millis(w as u64)),
            })
        })
    }

    fn pause<'a>(
        &'a self,
        app: &'a str,
        provider: &'a str,
        pause: Duration,
    ) -> BoxFuture<'a, Result<(), GateError>> {
        Box::pin(async move {
            let mut conn = self.conn.clone();
            let mut call = PAUSE.prepare_invoke();
            call.key(self.paused_key(app, provider))
                .arg(pause.as_millis().max(1) as u64);
            let _: i64 = tokio::time::timeout(CALL_TIMEOUT, call.invoke_async(&mut conn))
                .await
                .map_err(|_| unavailable("Redis did not answer in time"))?
                .map_err(unavailable)?;
            Ok(())
        })
    }
}
