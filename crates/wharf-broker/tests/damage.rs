//! A damaged batch in one partition, after a clean close and after a crash:
//! the broker opens, every other partition (and topic) serves, the damaged
//! partition serves up to the damage, `topics()` reports it, and a repair
//! (dry run, then skip or truncate) makes the partition serve again with
//! nothing acknowledged outside the damaged batch lost.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use wharf_broker::{Broker, Durability, RepairAction, TopicConfig};
use wharf_core::{
    Backend, Message, Publisher, StartPosition, SubscribeOptions, Subscriber, Subscription,
};
use wharf_log::batch::BatchHeader;

const PARTITIONS: u32 = 4;

async fn open(dir: &Path) -> Broker {
    Broker::builder()
        .default_topic(
            TopicConfig::default()
                .durability(Durability::Never)
                .partitions(PARTITIONS),
        )
        .open(dir)
        .await
        .expect("the broker opens despite the damage")
}

/// Publishes 40 batches of 10 keyed messages; returns (partition, offset) →
/// payload of every acknowledged message.
async fn fill(b: &Broker, topic: &str) -> BTreeMap<(u32, u64), String> {
    let mut stored = BTreeMap::new();
    for i in 0..40 {
        let batch: Vec<Message> = (0..10)
            .map(|j| {
                Message::builder()
                    .payload(format!("{topic}-{i}-{j}"))
                    .key(format!("k{}", i % 8))
                    .build()
            })
            .collect();
        let payloads: Vec<String> = (0..10).map(|j| format!("{topic}-{i}-{j}")).collect();
        let receipts = b.publish_batch(topic, batch).await.expect("publish");
        for (r, p) in receipts.iter().zip(payloads) {
            stored.insert((r.partition, r.offset.expect("offset")), p);
        }
    }
    stored
}

fn segment(dir: &Path, topic: &str, partition: u32) -> PathBuf {
    let pdir = dir.join("topics").join(topic).join(partition.to_string());
    std::fs::read_dir(&pdir)
        .expect("partition dir")
        .map(|e| e.expect("entry").path())
        .find(|p| p.extension().is_some_and(|e| e == "log"))
        .expect("a segment")
}

/// Flips a body byte of the third batch; returns its offset range.
fn damage_third_batch(seg: &Path) -> (u64, u64) {
    let mut bytes = std::fs::read(seg).expect("read");
    let mut pos = 0usize;
    for _ in 0..2 {
        pos += BatchHeader::parse(&bytes[pos..]).expect("header").len as usize;
    }
    let h = BatchHeader::parse(&bytes[pos..]).expect("header");
    bytes[pos + 60] ^= 0x20;
    std::fs::write(seg, bytes).expect("write");
    (h.base_offset, h.next_offset())
}

/// Everything delivered (and acked) until nothing comes for `quiet`.
async fn drain(sub: &mut Subscription, quiet: Duration) -> BTreeMap<(u32, u64), String> {
    let mut got = BTreeMap::new();
    while let Ok(Some(d)) = tokio::time::timeout(quiet, sub.next()).await {
        let d = d.expect("no error reaches a consumer of a partly damaged topic");
        got.insert(
            (d.info().partition, d.info().offset.expect("offset")),
            String::from_utf8_lossy(d.message().payload()).into_owned(),
        );
        d.ack().await.expect("ack");
    }
    got
}

fn without(
    all: &BTreeMap<(u32, u64), String>,
    keep: impl Fn(u32, u64) -> bool,
) -> BTreeMap<(u32, u64), String> {
    all.iter()
        .filter(|((p, o), _)| keep(*p, *o))
        .map(|(k, v)| (*k, v.clone()))
        .collect()
}

async fn scenario(crash: bool, action: RepairAction) {
    let dir = tempfile::tempdir().expect("tempdir");
    let (stored, other) = {
        let b = open(dir.path()).await;
        let stored = fill(&b, "t").await;
        let other = fill(&b, "other").await;
        b.close().await.expect("close");
        (stored, other)
    };
    if crash {
        for t in ["t", "other"] {
            for p in 0..PARTITIONS {
                let m = dir
                    .path()
                    .join("topics")
                    .join(t)
                    .join(p.to_string())
                    .join("clean.shutdown");
                std::fs::remove_file(m).expect("simulate a crash");
            }
        }
    }
    // The partition that holds the most batches.
    let v = (0..PARTITIONS)
        .max_by_key(|&p| stored.keys().filter(|k| k.0 == p).count())
        .expect("a partition");
    assert!(
        stored.keys().filter(|k| k.0 == v).count() >= 40,
        "at least four batches"
    );
    let (lo, hi) = damage_third_batch(&segment(dir.path(), "t", v));

    let b = open(dir.path()).await;
    let quiet = Duration::from_millis(500);
    let mut sub = b
        .subscribe(
            SubscribeOptions::new("t")
                .group("g")
                .start(StartPosition::Earliest),
        )
        .await
        .expect("subscribe");
    let got = drain(&mut sub, quiet).await;
    assert_eq!(
        got,
        without(&stored, |p, o| p != v || o < lo),
        "crash={crash}: every other partition, and the damaged one up to the damage"
    );
    let mut osub = b
        .subscribe(
            SubscribeOptions::new("other")
                .group("g")
                .start(StartPosition::Earliest),
        )
        .await
        .expect("subscribe");
    assert_eq!(
        drain(&mut osub, quiet).await,
        other,
        "another topic serves in full"
    );

    let info = b
        .topics()
        .into_iter()
        .find(|t| t.name == "t")
        .expect("topic");
    assert_eq!(info.damage.len(), 1, "{:?}", info.damage);
    let (p, d) = &info.damage[0];
    assert_eq!((*p, d.start_offset, d.end_offset), (v, lo, hi));
    assert!(d
        .path
        .ends_with(Path::new(&format!("t/{v}/00000000000000000000.log"))));
    assert!(b.integrity_stats().detected >= 1);

    let dry = b.repair("t", v, action, true).await.expect("dry run");
    assert!(dry.dry_run);
    assert_eq!(dry.damage.as_ref().map(|d| d.start_offset), Some(lo));
    let end = info.partitions[v as usize].1;
    match action {
        RepairAction::SkipBatch => assert_eq!(dry.lost, lo..hi),
        _ => assert_eq!(dry.lost, lo..end),
    }
    assert!(
        drain(&mut sub, quiet).await.is_empty(),
        "a dry run skips nothing"
    );

    let done = b.repair("t", v, action, false).await.expect("repair");
    assert_eq!(done.lost, dry.lost);
    let rest = drain(&mut sub, quiet).await;
    match action {
        RepairAction::SkipBatch => {
            assert_eq!(
                rest,
                without(&stored, |p, o| p == v && o >= hi),
                "the rest of the partition"
            );
            assert_eq!(b.integrity_stats().skipped, 1);
        }
        _ => {
            assert!(rest.is_empty(), "{rest:?}");
            assert_eq!(b.integrity_stats().truncated, 1);
            assert_eq!(
                b.topics()
                    .into_iter()
                    .find(|t| t.name == "t")
                    .expect("t")
                    .partitions[v as usize]
                    .1,
                lo
            );
            // New messages to the truncated partition reach the group.
            let mut sent = BTreeMap::new();
            for k in 0..8 {
                let m = Message::builder()
                    .payload(format!("new-{k}"))
                    .key(format!("k{k}"))
                    .build();
                let r = b.publish("t", m).await.expect("publish");
                sent.insert((r.partition, r.offset.expect("offset")), format!("new-{k}"));
            }
            assert!(sent.contains_key(&(v, lo)), "{sent:?}");
            assert_eq!(drain(&mut sub, quiet).await, sent);
        }
    }
    assert!(b.topics().into_iter().all(|t| t.damage.is_empty()));
    drop(sub);
    drop(osub);
    b.close().await.expect("close");
    drop(b);

    // After a restart nothing is redelivered and nothing is damaged.
    let b = open(dir.path()).await;
    let mut sub = b
        .subscribe(
            SubscribeOptions::new("t")
                .group("g")
                .start(StartPosition::Earliest),
        )
        .await
        .expect("subscribe");
    assert!(
        drain(&mut sub, quiet).await.is_empty(),
        "the group's position passed the repair"
    );
    let seen: BTreeSet<u32> = b
        .topics()
        .iter()
        .flat_map(|t| t.damage.iter().map(|(p, _)| *p))
        .collect();
    assert!(seen.is_empty());
}

#[tokio::test]
async fn a_damaged_batch_after_a_clean_close_is_isolated_and_skipped_by_a_repair() {
    scenario(false, RepairAction::SkipBatch).await;
}

#[tokio::test]
async fn a_damaged_batch_after_a_crash_does_not_stop_the_broker_and_is_skipped_by_a_repair() {
    scenario(true, RepairAction::SkipBatch).await;
}

#[tokio::test]
async fn a_damaged_batch_after_a_crash_is_truncated_by_a_repair() {
    scenario(true, RepairAction::TruncateAt(None)).await;
}

#[tokio::test]
async fn with_the_skip_policy_a_damaged_batch_is_skipped_without_an_operator() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = TopicConfig::default()
        .durability(Durability::Never)
        .partitions(PARTITIONS)
        .skip_damaged_batches(true);
    let stored = {
        let b = open(dir.path()).await;
        b.create_topic("s", cfg).await.expect("create");
        let stored = fill(&b, "s").await;
        b.close().await.expect("close");
        stored
    };
    let v = (0..PARTITIONS)
        .max_by_key(|&p| stored.keys().filter(|k| k.0 == p).count())
        .expect("a partition");
    let (lo, hi) = damage_third_batch(&segment(dir.path(), "s", v));
    let b = open(dir.path()).await;
    let mut sub = b
        .subscribe(
            SubscribeOptions::new("s")
                .group("g")
                .start(StartPosition::Earliest),
        )
        .await
        .expect("subscribe");
    let got = drain(&mut sub, Duration::from_millis(1500)).await;
    assert_eq!(
        got,
        without(&stored, |p, o| p != v || !(lo..hi).contains(&o))
    );
    assert_eq!(
        b.integrity_stats().skipped,
        1,
        "skipped by the policy, counted"
    );
    assert!(b.topics().iter().all(|t| t.damage.is_empty()));
}

#[tokio::test]
async fn a_damaged_metadata_store_is_an_error_at_open_never_a_crash_and_loses_no_message() {
    let dir = tempfile::tempdir().expect("tempdir");
    let stored = {
        let b = open(dir.path()).await;
        let stored = fill(&b, "t").await;
        b.close().await.expect("close");
        stored
    };
    let meta = dir.path().join("meta.redb");
    let pristine = std::fs::read(&meta).expect("meta");
    // The header and the first pages (where the tables live; flips at 4148
    // and 4270 made the store itself panic), then a sample of the rest.
    let mut positions: Vec<usize> = (0..4096).step_by(256).collect();
    positions.extend([4148, 4270]);
    positions.extend((4096..8192).step_by(512));
    positions.extend((8192..pristine.len()).step_by(pristine.len() / 10 + 1));
    let (mut opened, mut refused) = (0, 0);
    for at in positions {
        let mut bytes = pristine.clone();
        bytes[at] ^= 0x10;
        std::fs::write(&meta, &bytes).expect("write");
        let r = tokio::spawn(Broker::open(dir.path().to_owned()))
            .await
            .unwrap_or_else(|_| panic!("opening with byte {at} of meta.redb flipped panicked"));
        match r {
            Ok(b) => {
                opened += 1;
                b.close().await.expect("close");
            }
            Err(e) => {
                refused += 1;
                assert!(e.to_string().contains("open metadata"), "byte {at}: {e}");
            }
        }
    }
    assert!(opened + refused > 0);
    // The messages are in the topics' logs, not in the store: with the store
    // restored (from a backup), every acknowledged message is there.
    std::fs::write(&meta, &pristine).expect("restore");
    let b = open(dir.path()).await;
    let mut sub = b
        .subscribe(
            SubscribeOptions::new("t")
                .group("after")
                .start(StartPosition::Earliest),
        )
        .await
        .expect("subscribe");
    assert_eq!(drain(&mut sub, Duration::from_millis(500)).await, stored);
}
