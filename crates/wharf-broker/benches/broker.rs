//! Criterion benches of the broker's hot paths: batched publish, and
//! publish→consume→ack end to end, both for 100 B messages with durability
//! `Never` (no fsync, so the broker's own cost is what is measured) and the
//! other topic defaults (the 120 s dedup window); batched publish also with
//! dedup off, labelled, beside it.
//! `broker_bench` (examples/) prints the same paths as ratios of the bare log.

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use wharf_broker::{Broker, Durability, TopicConfig};
use wharf_core::{Message, Publisher, StartPosition, SubscribeOptions, Subscriber};

const BATCH: usize = 1000;

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

fn broker(rt: &tokio::runtime::Runtime, dedup: bool) -> Broker {
    let mut cfg = TopicConfig::default().durability(Durability::Never);
    if !dedup {
        cfg = cfg.dedup_window(None);
    }
    rt.block_on(Broker::builder().default_topic(cfg).temporary())
        .expect("broker")
}

fn batch() -> Vec<Message> {
    (0..BATCH).map(|_| Message::new(vec![b'x'; 100])).collect()
}

fn publish(c: &mut Criterion) {
    let rt = rt();
    let mut g = c.benchmark_group("broker");
    g.throughput(Throughput::Elements(BATCH as u64));
    for (name, dedup) in [
        ("publish_batch_1000x100B", true),
        ("publish_batch_1000x100B_dedup_off", false),
    ] {
        let b = broker(&rt, dedup);
        g.bench_function(name, |bench| {
            bench.to_async(&rt).iter_batched(
                batch,
                |msgs| {
                    let b = b.clone();
                    async move { b.publish_batch("bench.pub", msgs).await.expect("publish") }
                },
                BatchSize::SmallInput,
            );
        });
    }
    g.finish();
}

fn end_to_end(c: &mut Criterion) {
    let rt = rt();
    let b = broker(&rt, true);
    let mut sub = rt
        .block_on(
            b.subscribe(
                SubscribeOptions::new("bench.e2e")
                    .group("g")
                    .start(StartPosition::Earliest)
                    .max_in_flight(4096),
            ),
        )
        .expect("subscribe");
    let mut g = c.benchmark_group("broker");
    g.throughput(Throughput::Elements(BATCH as u64));
    g.bench_function("publish_consume_ack_1000x100B", |bench| {
        bench.iter_batched(
            batch,
            |msgs| {
                rt.block_on(async {
                    b.publish_batch("bench.e2e", msgs).await.expect("publish");
                    let mut got = 0;
                    let mut buf = Vec::with_capacity(256);
                    while got < BATCH {
                        buf.clear();
                        got += sub.next_batch(256, &mut buf).await.expect("next_batch");
                        for d in buf.drain(..) {
                            d.ack().await.expect("ack");
                        }
                    }
                })
            },
            BatchSize::SmallInput,
        );
    });
    g.finish();
}

criterion_group!(benches, publish, end_to_end);
criterion_main!(benches);
