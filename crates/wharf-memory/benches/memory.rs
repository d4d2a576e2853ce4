//! Criterion benchmarks of the memory backend: publish→consume throughput
//! (batched publish of 256, `next_batch` + ack, one publisher and one consumer
//! task on a two-worker runtime) for 100 B and 1 KiB messages, and the round
//! trip of one message (publish, receive, ack).
//!
//! Run: `cargo bench -p wharf-memory --bench memory`

use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use wharf_core::{Message, Publisher, SubscribeOptions, Subscriber};
use wharf_memory::MemoryBackend;

const BATCH: usize = 256;
const MESSAGES: usize = 100 * BATCH;

async fn pump(n: usize, size: usize) -> Duration {
    let backend = MemoryBackend::new();
    let mut sub = backend
        .subscribe(SubscribeOptions::new("bench").group("g"))
        .await
        .expect("subscribe");
    // Pre-built messages, cloned per batch: measures the transport, not
    // UUID generation (see examples/throughput.rs for both).
    let payload = Bytes::from(vec![7u8; size]);
    let template: Vec<Message> = (0..BATCH).map(|_| Message::new(payload.clone())).collect();
    let start = Instant::now();
    let consumer = tokio::spawn(async move {
        let mut got = 0;
        let mut out = Vec::with_capacity(BATCH);
        while got < n {
            got += sub.next_batch(BATCH, &mut out).await.expect("next_batch");
            for d in out.drain(..) {
                d.ack().await.expect("ack");
            }
        }
    });
    let publisher = tokio::spawn(async move {
        for _ in 0..n / BATCH {
            backend
                .publish_batch("bench", template.clone())
                .await
                .expect("publish");
        }
    });
    publisher.await.expect("publisher");
    consumer.await.expect("consumer");
    start.elapsed()
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

fn throughput(c: &mut Criterion) {
    let rt = runtime();
    let mut g = c.benchmark_group("publish_consume");
    g.throughput(Throughput::Elements(MESSAGES as u64));
    for size in [100usize, 1024] {
        g.bench_with_input(BenchmarkId::from_parameter(size), &size, |b, &size| {
            b.iter_custom(|iters| (0..iters).map(|_| rt.block_on(pump(MESSAGES, size))).sum());
        });
    }
    g.finish();
}

fn latency(c: &mut Criterion) {
    let rt = runtime();
    let backend = MemoryBackend::new();
    let mut sub = rt
        .block_on(backend.subscribe(SubscribeOptions::new("rtt").group("g")))
        .expect("subscribe");
    let payload = Bytes::from(vec![7u8; 100]);
    c.bench_function("round_trip_100B", |b| {
        b.iter(|| {
            rt.block_on(async {
                backend
                    .publish("rtt", Message::new(payload.clone()))
                    .await
                    .expect("publish");
                let d = sub.next().await.expect("open").expect("delivery");
                d.ack().await.expect("ack");
            });
        });
    });
}

criterion_group!(benches, throughput, latency);
criterion_main!(benches);
