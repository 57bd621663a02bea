//! `bellhop-loadtest`: a load generator for any Pusher-compatible server. It speaks protocol 7
//! and the signed HTTP API, so the same run can be pointed at bellhop or at a peer. Every
//! scenario is bounded in count and time, prints a human summary and one JSON line.

use clap::{Parser, Subcommand};

use bellhop_loadtest::Target;
use bellhop_loadtest::{measure, scenario};

#[derive(Parser)]
#[command(
    name = "bellhop-loadtest",
    version,
    about = "Load generator for Pusher-compatible servers"
)]
struct Cli {
    #[command(flatten)]
    target: Target,
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Subcommand)]
enum Scenario {
    /// N connections ramped at R/s, each subscribed to a channel, held for T seconds.
    Connect(scenario::connect::Args),
    /// S subscribers on one channel; a publisher triggers M events at rate R.
    Fanout(scenario::fanout::Args),
    /// C channels x K subscribers; a publisher spreads events over the channels.
    Channels(scenario::fanout::ChannelsArgs),
    /// HTTP API throughput alone at concurrency Q.
    Trigger(scenario::trigger::Args),
    /// Pairs of clients on private channels exchanging client events; round-trip latency.
    ClientEvents(scenario::client_events::Args),
    /// Users joining and leaving presence channels; member events received vs expected.
    PresenceChurn(scenario::presence_churn::Args),
    /// Signed triggers that match the server's rules: an inbox item and an FCM push each, to
    /// a fake FCM in this process; pushes/s, trigger-to-provider latency, lost, duplicated.
    Notify(scenario::notify::Args),
    /// Connections cycling connect/subscribe/unsubscribe/disconnect at R/s beside idle
    /// ones; the server's RSS sampled to show it stays flat.
    Churn(scenario::churn::Args),
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let steal_before = measure::steal_ticks();
    let started = std::time::Instant::now();
    let mut report = match cli.scenario {
        Scenario::Connect(a) => scenario::connect::run(&cli.target, a).await?,
        Scenario::Fanout(a) => scenario::fanout::run(&cli.target, a.into()).await?,
        Scenario::Channels(a) => scenario::fanout::run(&cli.target, a.into()).await?,
        Scenario::Trigger(a) => scenario::trigger::run(&cli.target, a).await?,
        Scenario::ClientEvents(a) => scenario::client_events::run(&cli.target, a).await?,
        Scenario::PresenceChurn(a) => scenario::presence_churn::run(&cli.target, a).await?,
        Scenario::Churn(a) => scenario::churn::run(&cli.target, a).await?,
        Scenario::Notify(a) => scenario::notify::run(&cli.target, a).await?,
    };
    report.add_host_steal(measure::steal_json(
        steal_before,
        measure::steal_ticks(),
        started.elapsed().as_secs_f64(),
    ));
    report.print();
    if !report.ok {
        std::process::exit(1);
    }
    Ok(())
}
