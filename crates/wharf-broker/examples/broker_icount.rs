//! Fixed workloads for the instruction-count gate (`scripts/icount.sh`):
//! the broker's publish and consume hot paths, each inside one named
//! function so callgrind can count only it (`--toggle-collect`).
//!
//! `broker_icount publish|consume N`: 100 B keyless messages in batches of
//! 1,000 on the topic defaults (4 partitions, 120 s dedup window) except
//! durability `Never`, on a current-thread runtime so the count repeats.

use bytes::Bytes;
use tokio::runtime::Runtime;
use wharf_broker::{Broker, Durability, TopicConfig};
use wharf_core::{
    AckBatch, Backend, Message, Publisher, StartPosition, SubscribeOptions, Subscriber,
    Subscription,
};

const BATCH: usize = 1000;
const TOPIC: &str = "icount.t";

fn batches(n: usize) -> Vec<Vec<Message>> {
    let payload = Bytes::from(vec![b'x'; 100]);
    (0..n.div_ceil(BATCH))
        .map(|i| {
            let k = BATCH.min(n - i * BATCH);
            (0..k).map(|_| Message::new(payload.clone())).collect()
        })
        .collect()
}

/// Publishes the prepared batches (the messages are built outside, so only
/// the broker's publish path is counted).
#[inline(never)]
fn publish_phase(rt: &Runtime, b: &Broker, batches: Vec<Vec<Message>>) {
    rt.block_on(async {
        for msgs in batches {
            b.publish_batch(TOPIC, msgs).await.expect("publish");
        }
    });
}

/// Takes `n` deliveries in batches of up to 256 and acknowledges each batch
/// with one `AckBatch`.
#[inline(never)]
fn consume_phase(rt: &Runtime, sub: &mut Subscription, n: usize) {
    rt.block_on(async {
        let mut got = 0;
        let mut buf = Vec::with_capacity(256);
        let mut acks = AckBatch::new();
        while got < n {
            buf.clear();
            let k = sub.next_batch(256, &mut buf).await.expect("next_batch");
            assert!(k > 0, "subscription ended");
            for d in buf.drain(..) {
                acks.push(d);
            }
            assert!(acks.flush().await.is_empty(), "ack failed");
            got += k;
        }
    });
}

fn main() {
    let mut args = std::env::args().skip(1);
    let mode = args.next().unwrap_or_default();
    let n: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(20_000);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let b = rt
        .block_on(
            Broker::builder()
                .default_topic(TopicConfig::default().durability(Durability::Never))
                .temporary(),
        )
        .expect("broker");
    rt.block_on(b.ensure_topic(TOPIC)).expect("topic");
    let msgs = batches(n);
    match mode.as_str() {
        "publish" => publish_phase(&rt, &b, msgs),
        "consume" => {
            let mut sub = rt
                .block_on(
                    b.subscribe(
                        SubscribeOptions::new(TOPIC)
                            .group("icount")
                            .start(StartPosition::Earliest)
                            .max_in_flight(4096),
                    ),
                )
                .expect("subscribe");
            rt.block_on(async {
                for m in msgs {
                    b.publish_batch(TOPIC, m).await.expect("publish");
                }
            });
            consume_phase(&rt, &mut sub, n);
            rt.block_on(sub.close()).expect("close subscription");
        }
        other => panic!("mode {other:?}: expected publish or consume"),
    }
    rt.block_on(b.close()).expect("close");
    println!("{mode}: {n} messages");
}
