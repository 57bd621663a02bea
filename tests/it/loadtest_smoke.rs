//! A short, bounded run of the load generator against a real bellhop: the generator's own
//! test (zero lost or duplicated deliveries), and the smoke scenario CI runs. Speed is
//! measured with `scripts/bench.sh`, never here.

use bellhop_loadtest::scenario::{churn, client_events, fanout, presence_churn, trigger};
use bellhop_loadtest::Target;

use crate::harness::{Setup, APP_ID, KEY, SECRET};

fn target(server: &crate::harness::Server) -> Target {
    Target {
        host: server.addr.ip(),
        port: server.addr.port(),
        app_id: APP_ID.into(),
        key: KEY.into(),
        secret: SECRET.into(),
        nodes: vec![],
        source_ips: vec![],
        api: None,
        server_pid: None,
    }
}

#[tokio::test]
async fn generator_runs_every_scenario_without_loss() {
    let server = Setup::new().start();
    let t = target(&server);
    let publish = fanout::Publish {
        events: 50,
        rate: 200.0,
        payload: 64,
        connect_rate: 1000.0,
        drain_secs: 5,
        publishers: 8,
    };
    let r = fanout::run(
        &t,
        fanout::Args {
            subscribers: 50,
            publish: publish.clone(),
        }
        .into(),
    )
    .await
    .unwrap();
    assert!(r.ok, "{:?}", r.summary);
    assert_eq!(r.json["lost"], 0);
    assert_eq!(r.json["duplicated"], 0);
    assert_eq!(r.json["deliveries"], 2500);

    let r = fanout::run(
        &t,
        fanout::ChannelsArgs {
            channels: 5,
            subscribers_per_channel: 4,
            publish,
        }
        .into(),
    )
    .await
    .unwrap();
    assert!(r.ok, "{:?}", r.summary);
    assert_eq!(r.json["deliveries"], 200);

    let r = trigger::run(
        &t,
        trigger::Args {
            concurrency: 4,
            requests: 200,
            payload: 32,
        },
    )
    .await
    .unwrap();
    assert!(r.ok, "{:?}", r.summary);
    assert_eq!(r.json["requests"], 200);

    let r = client_events::run(
        &t,
        client_events::Args {
            pairs: 3,
            rate: 5.0,
            duration: 1,
        },
    )
    .await
    .unwrap();
    assert!(r.ok, "{:?}", r.summary);

    let r = presence_churn::run(
        &t,
        presence_churn::Args {
            users: 6,
            channels: 2,
            cycles: 2,
            pause_ms: 20,
        },
    )
    .await
    .unwrap();
    assert!(r.ok, "{:?}", r.summary);
    assert_eq!(r.json["member_added"], 18);
}

#[tokio::test]
async fn presence_churn_across_two_nodes_is_exact() {
    let redis = crate::cluster::Redis::start();
    let nodes = crate::cluster::nodes(&redis, 2);
    let mut t = target(&nodes[0]);
    t.nodes = vec![nodes[1].addr];
    let r = presence_churn::run(
        &t,
        presence_churn::Args {
            users: 20,
            channels: 2,
            cycles: 3,
            pause_ms: 20,
        },
    )
    .await
    .unwrap();
    assert!(r.ok, "{:?}", r.summary);
    assert_eq!(r.json["nodes"], 2);
    assert_eq!(r.json["member_added"], r.json["expected"]);
    assert_eq!(r.json["member_removed"], r.json["expected"]);
}

#[tokio::test]
async fn churn_cycles_cleanly_and_samples_the_server() {
    let server = Setup::new().start();
    let mut t = target(&server);
    t.server_pid = Some(server.pid());
    let r = churn::run(
        &t,
        churn::Args {
            rate: 100.0,
            duration: 4,
            warmup: 1,
            sample_every: 1,
            base: 20,
            channels: 5,
            // A debug build's heap is still settling after a second; the bound catches a
            // runaway, the 30-minute run in docs/performance.md measures flatness.
            tolerance: 50.0,
        },
    )
    .await
    .unwrap();
    assert!(r.ok, "{:?}", r.summary);
    assert_eq!(r.json["failures"], 0);
    assert!(r.json["cycles"].as_u64().unwrap() >= 300, "{}", r.json);
    assert!(
        r.json["rss_samples_kb"].as_array().unwrap().len() >= 2,
        "{}",
        r.json
    );
    // Every cycle and then the base left: no channel of the run is still occupied.
    let api = crate::api::Api::new(&server);
    let mut left = usize::MAX;
    for _ in 0..50 {
        let r = api
            .get("/channels", &[("filter_by_prefix", "churn-")])
            .await;
        assert_eq!(r.status, 200);
        left = r.body["channels"].as_object().unwrap().len();
        if left == 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(left, 0, "channels still occupied after the run");
}
