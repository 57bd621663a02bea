//! `presence-churn`: users join and leave presence channels (spread over the given nodes)
//! while one observer per channel counts `member_added` and `member_removed`. Each user's
//! join must produce exactly one `member_added` and each leave one `member_removed`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::client::{self, Conn};
use crate::measure::{self, cpu_json};
use crate::report::Report;
use crate::Target;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Users (one socket each).
    #[arg(long, default_value_t = 50)]
    pub users: usize,
    /// Presence channels the users are spread over.
    #[arg(long, default_value_t = 5)]
    pub channels: usize,
    /// Leave-and-join cycles per user after the first join.
    #[arg(long, default_value_t = 5)]
    pub cycles: usize,
    /// Milliseconds between a leave and the next join.
    #[arg(long, default_value_t = 50)]
    pub pause_ms: u64,
}

fn channel(c: usize) -> String {
    format!("presence-loadtest-{c}")
}

async fn join(conn: &mut Conn, target: &Target, channel: &str, user: &str) -> anyhow::Result<()> {
    let data = json!({"user_id": user, "user_info": {"name": user}}).to_string();
    let auth = conn.sign(&target.key, &target.secret, channel, Some(&data))?;
    conn.subscribe(channel, Some(auth), Some(data)).await
}

pub async fn run(target: &Target, a: Args) -> anyhow::Result<Report> {
    let channels = a.channels.max(1);
    let added = Arc::new(AtomicU64::new(0));
    let removed = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(tokio::sync::Notify::new());
    let mut observers = Vec::new();
    for c in 0..channels {
        let mut conn = client::connect(target.addr(), &target.key, target.source_ip(c)).await?;
        join(&mut conn, target, &channel(c), &format!("observer-{c}")).await?;
        let (added, removed, stop) = (added.clone(), removed.clone(), stop.clone());
        observers.push(tokio::spawn(async move {
            let stopped = stop.notified();
            tokio::pin!(stopped);
            loop {
                let t = tokio::select! {
                    _ = &mut stopped => break,
                    t = client::next_text(&mut conn.ws) => t,
                };
                let Ok(t) = t else { break };
                if t.contains("pusher_internal:member_added") {
                    added.fetch_add(1, Ordering::Relaxed);
                } else if t.contains("pusher_internal:member_removed") {
                    removed.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }

    let server_before = measure::sample(target.server_pid);
    let start = Instant::now();
    let users: Vec<_> = (0..a.users)
        .map(|u| {
            let target = target.clone();
            let (cycles, pause) = (a.cycles, Duration::from_millis(a.pause_ms));
            tokio::spawn(async move {
                let ch = channel(u % channels);
                let user = format!("user-{u}");
                let mut conn =
                    client::connect(target.node(u), &target.key, target.source_ip(u)).await?;
                join(&mut conn, &target, &ch, &user).await?;
                for _ in 0..cycles {
                    tokio::time::sleep(pause).await;
                    conn.send_text(
                        json!({"event": "pusher:unsubscribe", "data": {"channel": ch}}).to_string(),
                    )
                    .await?;
                    tokio::time::sleep(pause).await;
                    join(&mut conn, &target, &ch, &user).await?;
                }
                tokio::time::sleep(pause).await;
                conn.send_text(
                    json!({"event": "pusher:unsubscribe", "data": {"channel": ch}}).to_string(),
                )
                .await?;
                // Keep the socket until the leave has been processed.
                tokio::time::sleep(Duration::from_millis(200)).await;
                anyhow::Ok(())
            })
        })
        .collect();
    let mut failed = 0u64;
    for u in users {
        if !matches!(u.await, Ok(Ok(()))) {
            failed += 1;
        }
    }
    let expected = (a.users * (a.cycles + 1)) as u64;
    let limit = Instant::now() + Duration::from_secs(10);
    while (added.load(Ordering::Relaxed) < expected || removed.load(Ordering::Relaxed) < expected)
        && Instant::now() < limit
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Anything extra (duplicates) would arrive shortly after.
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.notify_waiters();
    for o in observers {
        let _ = o.await;
    }
    let wall = start.elapsed().as_secs_f64();
    let (got_added, got_removed) = (
        added.load(Ordering::Relaxed),
        removed.load(Ordering::Relaxed),
    );
    let server = cpu_json(server_before, measure::sample(target.server_pid), wall);
    let ok = failed == 0 && got_added == expected && got_removed == expected;
    Ok(Report {
        scenario: "presence-churn",
        ok,
        summary: vec![
            format!(
                "{} users over {channels} channels and {} node(s), {} cycles: member_added {got_added}/{expected}, member_removed {got_removed}/{expected}, failed users {failed}, {wall:.2}s",
                a.users,
                1 + target.nodes.len(),
                a.cycles
            ),
            format!("server {server}"),
        ],
        json: json!({
            "users": a.users, "channels": channels, "cycles": a.cycles,
            "nodes": 1 + target.nodes.len(),
            "expected": expected, "member_added": got_added, "member_removed": got_removed,
            "failed_users": failed, "wall_secs": wall, "server": server,
        }),
    })
}
