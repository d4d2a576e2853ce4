//! A publish/consume load any backend can run: the adapters' `bench`
//! examples call [`run`] so their figures are comparable (the same phases,
//! the same percentiles). `wharf bench --backend URL` is the side-by-side
//! tool; this measures the phases it doesn't (consume + ack throughput).

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::stream::{FuturesUnordered, StreamExt};
use wharf_core::{Backend, Message, StartPosition, SubscribeOptions};

type BoxResult<T> = Result<T, wharf_core::BoxError>;

const BATCH: usize = 1000;
const IN_FLIGHT: usize = 1000;
const PUBLISHERS: usize = 64;

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
    p
}

fn group_opts(topic: &str, group: &str) -> SubscribeOptions {
    SubscribeOptions::new(topic)
        .group(group)
        .start(StartPosition::Earliest)
        .max_in_flight(IN_FLIGHT)
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
    let mut sub = b.subscribe(group_opts(topic, group)).await?;
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

/// Declares `group` on `topic` (so messages published next are kept for it).
async fn declare_group(b: &Arc<dyn Backend>, topic: &str, group: &str) -> BoxResult<()> {
    b.ensure_topic(topic).await?;
    let mut sub = b.subscribe(group_opts(topic, group)).await?;
    sub.close().await?;
    Ok(())
}

/// Runs the load on `b` with `n` messages of `size` bytes and prints one line:
/// single publishes from 64 concurrent tasks, batches of 1,000, consuming the
/// backlog with acks, and end-to-end latency while a group consumes.
///
/// # Errors
/// The first backend error.
pub async fn run(b: Arc<dyn Backend>, size: usize, n: usize) -> BoxResult<()> {
    let base = Instant::now();
    // 1. Single publishes from PUBLISHERS concurrent tasks: each waits for its
    //    own durable acknowledgement.
    let topic = format!("bench.single{size}");
    declare_group(&b, &topic, "backlog").await?;
    let start = Instant::now();
    let tasks: Vec<_> = (0..PUBLISHERS)
        .map(|w| {
            let b = b.clone();
            let topic = topic.clone();
            tokio::spawn(async move {
                let mut lat = Vec::new();
                let mut i = w;
                while i < n {
                    let t = Instant::now();
                    b.publish(&topic, Message::new(payload(size, base))).await?;
                    lat.push(t.elapsed());
                    i += PUBLISHERS;
                }
                Ok::<_, wharf_core::Error>(lat)
            })
        })
        .collect();
    let mut single_lat = Vec::with_capacity(n);
    for t in tasks {
        single_lat.extend(t.await??);
    }
    let single_elapsed = start.elapsed();
    single_lat.sort();
    // 2. Batch publishes, one batch at a time.
    let btopic = format!("bench.batch{size}");
    declare_group(&b, &btopic, "backlog").await?;
    let start = Instant::now();
    let mut batch_lat = Vec::new();
    for chunk in 0..n.div_ceil(BATCH) {
        let k = BATCH.min(n - chunk * BATCH);
        let msgs = (0..k).map(|_| Message::new(payload(size, base))).collect();
        let t = Instant::now();
        b.publish_batch(&btopic, msgs).await?;
        batch_lat.push(t.elapsed());
    }
    let batch_elapsed = start.elapsed();
    batch_lat.sort();
    // 3. Consume the backlog with acks.
    let (cons_elapsed, _) = consume(&b, &btopic, "backlog", n, base).await?;
    let _ = consume(&b, &topic, "backlog", n, base).await?;
    // 4. End to end: publish batches of 100 while a group consumes.
    let e2e_topic = format!("bench.e2e{size}");
    declare_group(&b, &e2e_topic, "e2e").await?;
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
        "{size:>5} B | publish x{PUBLISHERS} {:>7.0} msgs/s (p50 {:.2?}, p99 {:.2?}) | batch of {BATCH} {:>7.0} msgs/s (p50 {:.2?}, p99 {:.2?}) | consume+ack {:>7.0} msgs/s | end-to-end p50 {:.2?} p99 {:.2?}",
        n as f64 / single_elapsed.as_secs_f64(),
        pct(&single_lat, 0.5),
        pct(&single_lat, 0.99),
        n as f64 / batch_elapsed.as_secs_f64(),
        pct(&batch_lat, 0.5),
        pct(&batch_lat, 0.99),
        n as f64 / cons_elapsed.as_secs_f64(),
        pct(&lat, 0.5),
        pct(&lat, 0.99),
    );
    Ok(())
}
