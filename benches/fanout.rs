//! Encode-once fan-out: one frame encoded, then a shared clone pushed into N subscribers'
//! outboxes and drained by their writers, as a channel actor and the socket tasks do.

use std::collections::VecDeque;

use bellhop::outbox::{outbox, Frame, Outbox, OutboxReceiver};
use bellhop_protocol::server;
use bytestring::ByteString;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};

fn fanout(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let mut group = c.benchmark_group("fanout");
    for n in [1_000usize, 10_000] {
        let (txs, rxs): (Vec<Outbox>, Vec<OutboxReceiver>) = (0..n).map(|_| outbox(1024)).unzip();
        let mut buf: VecDeque<Frame> = VecDeque::with_capacity(64);
        let data = format!(r#"{{"seq":1,"pad":"{}"}}"#, "x".repeat(100));
        group.throughput(Throughput::Elements(n as u64));
        group.bench_with_input(
            BenchmarkId::new("encode once, push and drain", n),
            &n,
            |b, _| {
                b.iter(|| {
                    let frame = ByteString::from(server::channel_event("e", "loadtest-0", &data));
                    for tx in &txs {
                        tx.push(frame.clone()).unwrap();
                    }
                    rt.block_on(async {
                        for rx in &rxs {
                            rx.recv(&mut buf).await;
                            buf.clear();
                        }
                    });
                })
            },
        );
    }
    group.finish();
}

criterion_group!(benches, fanout);
criterion_main!(benches);
