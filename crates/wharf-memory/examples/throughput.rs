//! Publish→consume throughput of the memory backend, for BENCHMARKS.md.
//!
//! One publisher task (`publish_batch` of 256) and one consumer task
//! (`next_batch` of 256, then `ack` each) on a two-worker multi-thread
//! runtime; the baseline is a bounded tokio mpsc channel carrying the same
//! messages in the same batches, measured in the same run. Two message
//! sources: `fresh` builds every message with `Message::new` (a new UUIDv7
//! each, part of the cost), `cloned` clones a pre-built batch (measures the
//! transport alone).
//!
//! Run: `cargo run --release -p wharf-memory --example throughput [messages]`

use std::time::{Duration, Instant};

use bytes::Bytes;
use wharf_core::{Message, Publisher, SubscribeOptions, Subscriber};
use wharf_memory::MemoryBackend;

const BATCH: usize = 256;

#[derive(Clone, Copy)]
enum Source {
    Fresh,
    Cloned,
}

fn batch(payload: &Bytes, source: Source, template: &[Message]) -> Vec<Message> {
    match source {
        Source::Fresh => (0..BATCH).map(|_| Message::new(payload.clone())).collect(),
        Source::Cloned => template.to_vec(),
    }
}

async fn memory(n: usize, size: usize, source: Source) -> Duration {
    let backend = MemoryBackend::new();
    let mut sub = backend
        .subscribe(SubscribeOptions::new("bench").group("g"))
        .await
        .expect("subscribe");
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
                .publish_batch("bench", batch(&payload, source, &template))
                .await
                .expect("publish");
        }
    });
    publisher.await.expect("publisher");
    consumer.await.expect("consumer");
    start.elapsed()
}

async fn channel(n: usize, size: usize, source: Source) -> Duration {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Message>(wharf_memory::DEFAULT_TOPIC_CAPACITY);
    let payload = Bytes::from(vec![7u8; size]);
    let template: Vec<Message> = (0..BATCH).map(|_| Message::new(payload.clone())).collect();
    let start = Instant::now();
    let consumer = tokio::spawn(async move {
        let mut got = 0;
        let mut out = Vec::with_capacity(BATCH);
        while got < n {
            got += rx.recv_many(&mut out, BATCH).await;
            out.clear();
        }
    });
    let publisher = tokio::spawn(async move {
        for _ in 0..n / BATCH {
            for m in batch(&payload, source, &template) {
                tx.send(m).await.expect("send");
            }
        }
    });
    publisher.await.expect("publisher");
    consumer.await.expect("consumer");
    start.elapsed()
}

fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(2_000_000)
        / BATCH
        * BATCH;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    println!("{n} messages, batch {BATCH}, 1 publisher + 1 consumer task, 2 worker threads");
    for (label, source) in [("fresh", Source::Fresh), ("cloned", Source::Cloned)] {
        for size in [100, 1024] {
            rt.block_on(memory(n / 10 / BATCH * BATCH, size, source)); // warm-up
            let base = rt.block_on(channel(n, size, source));
            let mem = rt.block_on(memory(n, size, source));
            let rate = |d: Duration| n as f64 / d.as_secs_f64();
            println!(
                "{label:>6} {size:>5} B: memory {:>10.0} msgs/s   mpsc baseline {:>10.0} msgs/s   ratio {:.2}",
                rate(mem),
                rate(base),
                rate(mem) / rate(base)
            );
        }
    }
}
