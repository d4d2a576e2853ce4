//! Publish/consume load against the NATS JetStream backend: 100 B and 1 KiB
//! messages, pipelined batch publish, group consume with acks, and an
//! end-to-end latency run; prints msgs/s and p50/p99.
//!
//! `cargo run --release -p wharf-nats --example bench -- [messages]`
//! (server from `WHARF_TEST_NATS_URL`, default nats://127.0.0.1:4222).
//! Durability: JetStream file store, acked after the write to the page
//! cache; NATS 2.9 fsyncs every 2 minutes by default, not before the ack.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::stream::{FuturesUnordered, StreamExt};
use wharf_core::{Backend, Message, StartPosition, SubscribeOptions};
use wharf_nats::{NatsBackend, NatsConfig};

type BoxResult<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

const BATCH: usize = 1000;
const IN_FLIGHT: usize = 1000;

fn pct(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

fn payload(size: usize, base: Instant) -> Vec<u8> {
    let mut p = vec![b'x'; size.max(8)];
    let nanos = base.elapsed().as_nanos() as u64;
    p[..8].copy_from_slice(&nanos.to_le_bytes());
    p.truncate(size.max(8));
    p
}

/// Consumes `n` messages from `group`, acking with up to `IN_FLIGHT` acks
/// outstanding; returns (elapsed, end-to-end latencies).
async fn consume(
    b: &Arc<dyn Backend>,
    topic: &str,
    group: &str,
    n: usize,
    base: Instant,
) -> BoxResult<(Duration, Vec<Duration>)> {
    let opts = SubscribeOptions::new(topic)
        .group(group)
        .start(StartPosition::Earliest)
        .max_in_flight(IN_FLIGHT);
    let mut sub = b.subscribe(opts).await?;
    let start = Instant::now();
    let mut lat = Vec::with_capacity(n);
    let mut acks = FuturesUnordered::new();
    let mut got = 0;
    let mut batch = Vec::with_capacity(256);
    while got < n {
        batch.clear();
        if sub.next_batch(256, &mut batch).await? == 0 {
            return Err("subscription ended".into());
        }
        let now = base.elapsed().as_nanos() as u64;
        for d in batch.drain(..) {
            let p = d.message().payload();
            let sent = u64::from_le_bytes(p[..8].try_into()?);
            lat.push(Duration::from_nanos(now.saturating_sub(sent)));
            // Spawned: an ack future parked un-polled in a set can hold a
            // client's send slot and stall every other request behind it.
            acks.push(tokio::spawn(d.ack()));
            got += 1;
        }
        while acks.len() > IN_FLIGHT / 2 {
            if let Some(r) = acks.next().await {
                r??;
            }
        }
    }
    while let Some(r) = acks.next().await {
        r??;
    }
    let elapsed = start.elapsed();
    sub.close().await?;
    Ok((elapsed, lat))
}

async fn run(b: Arc<dyn Backend>, size: usize, n: usize) -> BoxResult<()> {
    let base = Instant::now();
    let topic = format!("bench.s{size}");
    // 1. Publish throughput: pipelined batches.
    let start = Instant::now();
    let mut batch_lat = Vec::new();
    for chunk in 0..n.div_ceil(BATCH) {
        let k = BATCH.min(n - chunk * BATCH);
        let msgs = (0..k).map(|_| Message::new(payload(size, base))).collect();
        let t = Instant::now();
        b.publish_batch(&topic, msgs).await?;
        batch_lat.push(t.elapsed());
    }
    let pub_elapsed = start.elapsed();
    batch_lat.sort();
    // 2. Consume the backlog with acks.
    let (cons_elapsed, _) = consume(&b, &topic, "backlog", n, base).await?;
    // 3. End to end: publish batches of 100 while a group consumes.
    let e2e_topic = format!("bench.e2e{size}");
    let consumer = {
        let b = b.clone();
        let t = e2e_topic.clone();
        tokio::spawn(async move { consume(&b, &t, "e2e", n, base).await })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    for chunk in 0..n.div_ceil(100) {
        let k = 100.min(n - chunk * 100);
        let msgs = (0..k).map(|_| Message::new(payload(size, base))).collect();
        b.publish_batch(&e2e_topic, msgs).await?;
    }
    let (_, mut lat) = consumer.await??;
    lat.sort();
    println!(
        "{size:>5} B | publish {:>9.0} msgs/s (batch of {BATCH}: p50 {:?}, p99 {:?}) | consume+ack {:>9.0} msgs/s | end-to-end p50 {:?} p99 {:?}",
        n as f64 / pub_elapsed.as_secs_f64(),
        pct(&batch_lat, 0.5),
        pct(&batch_lat, 0.99),
        n as f64 / cons_elapsed.as_secs_f64(),
        pct(&lat, 0.5),
        pct(&lat, 0.99),
    );
    Ok(())
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> BoxResult<()> {
    let n: usize = std::env::args()
        .nth(1)
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(100_000);
    let url =
        std::env::var("WHARF_TEST_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into());
    println!("wharf-nats bench: {n} messages per size, server {url}");
    println!("durability: JetStream file store, acked after write to page cache (NATS 2.9 fsyncs every 2 min)");
    for size in [100, 1024] {
        let ns = format!("bench{}", std::process::id());
        let cfg = NatsConfig::new(url.clone())
            .stream(format!("BENCH_{ns}_{size}"))
            .subject_prefix(format!("{ns}-{size}"));
        let backend = NatsBackend::connect(cfg).await?;
        let result = run(Arc::new(backend.clone()), size, n).await;
        backend.delete_stream().await?;
        result?;
    }
    Ok(())
}
