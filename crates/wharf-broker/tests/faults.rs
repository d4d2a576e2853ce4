//! A publish that returns an error stores none of its messages — tested
//! through the storage seam at every write and every `fdatasync` of a
//! batch that spans several partitions, with both a full disk (ENOSPC) and
//! an I/O error (EIO). After each failure: nothing of the batch is
//! readable, everything acknowledged before is, a retry of the same ids
//! (dedup on, the default) stores them exactly once without a restart, and
//! after a simulated power cut that keeps every unsynced byte the reopened
//! broker holds exactly the acknowledged messages.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;

use wharf_broker::{Broker, PeekPosition, TopicConfig};
use wharf_core::{Backend, Error, Message, MessageId, Publisher};
use wharf_log::SimStorage;

const TOPIC: &str = "orders";
const PARTITIONS: u32 = 3;
const BATCH: usize = 12;
const ENOSPC: i32 = 28;
const EIO: i32 = 5;

async fn open(dir: &Path, sim: &SimStorage) -> Broker {
    Broker::builder()
        .storage(Arc::new(sim.clone()))
        .default_topic(TopicConfig::default().partitions(PARTITIONS))
        .open(dir)
        .await
        .expect("the broker opens")
}

/// Every readable payload of the topic, in (partition, offset) order.
fn stored(b: &Broker) -> Vec<String> {
    let mut out = Vec::new();
    let mut from = PeekPosition::START;
    loop {
        let page = b.peek(TOPIC, from, 1024).expect("peek");
        out.extend(
            page.messages
                .iter()
                .map(|p| String::from_utf8_lossy(p.message.payload()).into_owned()),
        );
        match page.next {
            Some(n) => from = n,
            None => return out,
        }
    }
}

fn as_set(v: &[String]) -> BTreeSet<String> {
    v.iter().cloned().collect()
}

/// A batch of `BATCH` keyed messages (spread over every partition) with
/// fixed ids, so it can be retried.
fn batch(tag: &str, ids: &[MessageId]) -> Vec<Message> {
    ids.iter()
        .enumerate()
        .map(|(i, id)| {
            Message::builder()
                .id(*id)
                .key(format!("key-{i}"))
                .payload(format!("{tag}-{i}"))
                .build()
        })
        .collect()
}

#[derive(Clone, Copy, Debug)]
enum Fault {
    Write(i32),
    Sync(i32),
}

impl Fault {
    fn arm(self, sim: &SimStorage, n: u64) {
        match self {
            Fault::Write(errno) => sim.fail_write_after_calls(n, errno),
            Fault::Sync(errno) => sim.fail_sync_after_calls(n, errno),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_multi_partition_publish_stores_nothing_at_every_write_and_sync() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sim = SimStorage::new();
    let b = open(dir.path(), &sim).await;

    let mut acked: Vec<String> = Vec::new();
    let first: Vec<MessageId> = (0..BATCH).map(|_| MessageId::new()).collect();
    let receipts = b
        .publish_batch(TOPIC, batch("first", &first))
        .await
        .expect("a publish without faults");
    let spread: BTreeSet<u32> = receipts.iter().map(|r| r.partition).collect();
    assert_eq!(
        spread.len(),
        PARTITIONS as usize,
        "the batch must span every partition to test a multi-partition publish"
    );
    acked.extend((0..BATCH).map(|i| format!("first-{i}")));

    let faults = [
        Fault::Write(ENOSPC),
        Fault::Write(EIO),
        Fault::Sync(EIO),
        Fault::Sync(ENOSPC),
    ];
    for fault in faults {
        let mut failures = 0;
        for n in 0u64.. {
            assert!(n < 1000, "{fault:?}: the publish never got past its faults");
            let tag = format!("{fault:?}-{n}");
            let ids: Vec<MessageId> = (0..BATCH).map(|_| MessageId::new()).collect();
            fault.arm(&sim, n);
            let r = b.publish_batch(TOPIC, batch(&tag, &ids)).await;
            sim.clear_faults();
            match r {
                Ok(receipts) => {
                    // `n` passed every write/sync of this publish.
                    assert_eq!(receipts.len(), BATCH);
                    acked.extend((0..BATCH).map(|i| format!("{tag}-{i}")));
                    assert_eq!(as_set(&stored(&b)), as_set(&acked), "{fault:?} n={n}");
                    break;
                }
                Err(e) => {
                    failures += 1;
                    match fault {
                        Fault::Write(ENOSPC) | Fault::Sync(ENOSPC) => assert!(
                            matches!(e, Error::StorageFull { .. }),
                            "{fault:?} n={n}: a full disk is a typed, retryable error, got {e:?}"
                        ),
                        _ => assert!(
                            !matches!(e, Error::StorageFull { .. }),
                            "{fault:?} n={n}: an I/O error is not a full disk, got {e:?}"
                        ),
                    }
                    let now = stored(&b);
                    assert_eq!(
                        now.len(),
                        acked.len(),
                        "{fault:?} n={n}: a failed publish left messages readable (or lost acknowledged ones): {e}"
                    );
                    assert_eq!(as_set(&now), as_set(&acked), "{fault:?} n={n}");
                    // The same ids again, with the storage healthy: stored
                    // once, by this process (no restart), although a dedup
                    // window is on.
                    let retry = b
                        .publish_batch(TOPIC, batch(&tag, &ids))
                        .await
                        .unwrap_or_else(|e| {
                            panic!("{fault:?} n={n}: the retry after the fault failed: {e}")
                        });
                    assert_eq!(retry.len(), BATCH);
                    acked.extend((0..BATCH).map(|i| format!("{tag}-{i}")));
                    let now = stored(&b);
                    assert_eq!(
                        now.len(),
                        acked.len(),
                        "{fault:?} n={n}: the retry stored a copy"
                    );
                    assert_eq!(as_set(&now), as_set(&acked), "{fault:?} n={n}");
                    assert!(
                        !b.storage_full(),
                        "a write that succeeded clears storage_full"
                    );
                }
            }
        }
        eprintln!("{fault:?}: {failures} injection points failed the publish");
        // One write per partition at least, and one sync: each of them
        // was made to fail.
        let least = match fault {
            Fault::Write(_) => PARTITIONS as usize,
            Fault::Sync(_) => 1,
        };
        assert!(
            failures >= least,
            "{fault:?}: only {failures} injection points failed the publish"
        );
    }

    // A power cut that keeps every unsynced byte: nothing of a failed
    // publish comes back, nothing acknowledged is lost.
    let after = sim.crash(|_, unsynced| unsynced);
    drop(b);
    let b = open(dir.path(), &after).await;
    let now = stored(&b);
    assert_eq!(now.len(), acked.len(), "after the crash");
    assert_eq!(as_set(&now), as_set(&acked), "after the crash");
    b.close().await.expect("close");
}
