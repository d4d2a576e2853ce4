//! Broker throughput against the bare log, measured in one run.
//!
//! `cargo run --release -p wharf-broker --example broker_bench [-- N [BACKLOG]]`
//!
//! Prints, for 100 B messages with durability `Never` (so the broker's own
//! cost is measured, not the disk's) and otherwise the topic defaults a user
//! gets — in particular the 120 s dedup window:
//! 1. the bare `wharf-log`: append in batches of 1,000, then read and decode everything;
//! 2. broker publish→consume end to end (batched publish, queue-mode group,
//!    `next_batch`, the batch acknowledged with an `AckBatch`), as a ratio of (1);
//! 3. the same in stream mode, and queue mode with one `ack().await` per
//!    message;
//! 4. queue mode again with dedup off (labelled), so the dedup window's cost
//!    reads as a ratio from the same run;
//! 5. with BACKLOG > 0: RSS while a group starts consuming a backlog of BACKLOG messages.
//!
//! `WHARF_BENCH_ONLY=log|queue|stream|per-message|queue-dedup-off` runs one part alone, for
//! counting instructions per message with
//! `valgrind --tool=callgrind target/release/examples/broker_bench 200000`.

use std::time::Instant;

use bytes::Bytes;
use wharf_broker::{Broker, Durability, TopicConfig};
use wharf_core::{
    AckBatch, Backend, GroupMode, Message, Publisher, StartPosition, SubscribeOptions, Subscriber,
};
use wharf_log::{Log, LogConfig, Record};

const BATCH: usize = 1000;

fn rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

fn bare_log(n: usize) -> f64 {
    let dir = tempfile::tempdir().expect("temp dir");
    let cfg = LogConfig::builder()
        .durability(wharf_log::Durability::Never)
        .build()
        .expect("config");
    let log = Log::open(dir.path(), cfg).expect("open log");
    let payload = Bytes::from(vec![b'x'; 100]);
    let start = Instant::now();
    let mut batch = Vec::with_capacity(BATCH);
    for i in 0..n {
        batch.push(Record::new(i as i64, payload.clone()));
        if batch.len() == BATCH {
            log.append(&batch).expect("append");
            batch.clear();
        }
    }
    if !batch.is_empty() {
        log.append(&batch).expect("append");
    }
    let mut off = 0;
    let mut count = 0usize;
    while off < log.end_offset() {
        let r = log.read(off, 1 << 20).expect("read");
        for rec in r.records() {
            let rec = rec.expect("record");
            count += rec.value.len() / 100;
        }
        off = r.next_offset();
    }
    assert_eq!(count, n);
    n as f64 / start.elapsed().as_secs_f64()
}

/// The topic configuration of every broker run: the defaults, but no fsync;
/// `dedup: false` turns the (default 120 s) dedup window off.
fn topic_config(dedup: bool) -> TopicConfig {
    let cfg = TopicConfig::default().durability(Durability::Never);
    if dedup {
        cfg
    } else {
        cfg.dedup_window(None)
    }
}

async fn broker_e2e(n: usize, mode: GroupMode, batch_ack: bool, dedup: bool) -> f64 {
    let b = Broker::builder()
        .default_topic(topic_config(dedup))
        .temporary()
        .await
        .expect("broker");
    let topic = "bench.e2e";
    b.ensure_topic(topic).await.expect("topic");
    let mut sub = b
        .subscribe(
            SubscribeOptions::new(topic)
                .group("bench")
                .mode(mode)
                .start(StartPosition::Earliest)
                .max_in_flight(4096),
        )
        .await
        .expect("subscribe");
    let payload = Bytes::from(vec![b'x'; 100]);
    let start = Instant::now();
    let publisher = {
        let b = b.clone();
        tokio::spawn(async move {
            let mut sent = 0;
            while sent < n {
                let k = BATCH.min(n - sent);
                let msgs: Vec<Message> = (0..k).map(|_| Message::new(payload.clone())).collect();
                b.publish_batch(topic, msgs).await.expect("publish");
                sent += k;
            }
        })
    };
    let mut got = 0;
    let mut buf = Vec::with_capacity(256);
    let mut acks = AckBatch::new();
    while got < n {
        buf.clear();
        let k = sub.next_batch(256, &mut buf).await.expect("next_batch");
        assert!(k > 0, "subscription ended");
        if batch_ack {
            for d in buf.drain(..) {
                acks.push(d);
            }
            let failed = acks.flush().await;
            assert!(failed.is_empty(), "{failed:?}");
        } else {
            for d in buf.drain(..) {
                d.ack().await.expect("ack");
            }
        }
        got += k;
    }
    publisher.await.expect("publisher");
    let rate = n as f64 / start.elapsed().as_secs_f64();
    b.close().await.expect("close");
    rate
}

async fn backlog_rss(n: usize) -> (f64, f64) {
    let b = Broker::builder()
        .default_topic(topic_config(true))
        .temporary()
        .await
        .expect("broker");
    let topic = "bench.backlog";
    let payload = Bytes::from(vec![b'x'; 100]);
    let mut sent = 0;
    while sent < n {
        let k = BATCH.min(n - sent);
        let msgs: Vec<Message> = (0..k).map(|_| Message::new(payload.clone())).collect();
        b.publish_batch(topic, msgs).await.expect("publish");
        sent += k;
    }
    let after_publish = rss_mib();
    let mut sub = b
        .subscribe(
            SubscribeOptions::new(topic)
                .group("late")
                .start(StartPosition::Earliest),
        )
        .await
        .expect("subscribe");
    for _ in 0..100_000 {
        let d = sub.next().await.expect("open").expect("delivery");
        d.ack().await.expect("ack");
    }
    let consuming = rss_mib();
    b.close().await.expect("close");
    (after_publish, consuming)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let mut args = std::env::args().skip(1);
    let n: usize = args
        .next()
        .and_then(|a| a.parse().ok())
        .unwrap_or(2_000_000);
    let backlog: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(0);
    if let Ok(only) = std::env::var("WHARF_BENCH_ONLY") {
        let rate = match only.as_str() {
            "log" => tokio::task::spawn_blocking(move || bare_log(n))
                .await
                .expect("bare log"),
            "queue" => broker_e2e(n, GroupMode::Queue, true, true).await,
            "stream" => broker_e2e(n, GroupMode::Stream, true, true).await,
            "per-message" => broker_e2e(n, GroupMode::Queue, false, true).await,
            "queue-dedup-off" => broker_e2e(n, GroupMode::Queue, true, false).await,
            other => panic!(
                "WHARF_BENCH_ONLY={other}: expected log, queue, stream, per-message or queue-dedup-off"
            ),
        };
        println!("{only}: {rate:.0} msgs/s");
        return;
    }
    let log = tokio::task::spawn_blocking(move || bare_log(n))
        .await
        .expect("bare log");
    let queue = broker_e2e(n, GroupMode::Queue, true, true).await;
    let stream = broker_e2e(n, GroupMode::Stream, true, true).await;
    let per_message = broker_e2e(n, GroupMode::Queue, false, true).await;
    let no_dedup = broker_e2e(n, GroupMode::Queue, true, false).await;
    println!(
        "messages: {n} x 100 B, durability Never, publish batches of {BATCH}, \
         topic defaults (dedup window 120 s) unless labelled"
    );
    println!("bare log append+read:               {:>12.0} msgs/s", log);
    println!(
        "broker publish->consume, queue:     {:>12.0} msgs/s  ({:.0}% of bare log)",
        queue,
        100.0 * queue / log
    );
    println!(
        "broker publish->consume, stream:    {:>12.0} msgs/s  ({:.0}% of bare log)",
        stream,
        100.0 * stream / log
    );
    println!(
        "broker, queue, one ack per message: {:>12.0} msgs/s  ({:.0}% of bare log)",
        per_message,
        100.0 * per_message / log
    );
    println!(
        "broker, queue, dedup off:           {:>12.0} msgs/s  ({:.0}% of bare log, {:.2}x the default)",
        no_dedup,
        100.0 * no_dedup / log,
        no_dedup / queue
    );
    if backlog > 0 {
        let (a, c) = backlog_rss(backlog).await;
        println!("RSS with a backlog of {backlog} messages: {a:.0} MiB after publishing, {c:.0} MiB while a group consumes it");
    }
}
