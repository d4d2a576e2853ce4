//! Making and removing a topic's files: a topic of many partitions is made
//! with every partition in place and in order (its files opened on several
//! threads), and deleting a topic syncs and writes nothing of the files it
//! removes — closing each partition's log first cost four fsyncs per
//! partition, seconds for thousands (found from outside: schemathesis timed
//! out deleting a 2,783-partition topic on a loaded machine).

use std::path::Path;
use std::sync::Arc;

use wharf_broker::{Broker, TopicConfig};
use wharf_core::{Backend, Message, Publisher};
use wharf_log::SimStorage;

async fn open(dir: &Path, sim: &SimStorage) -> Broker {
    Broker::builder()
        .storage(Arc::new(sim.clone()))
        .open(dir)
        .await
        .expect("the broker opens")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_topic_syncs_and_writes_nothing_of_its_files() {
    let dir = tempfile::tempdir().expect("dir");
    let sim = SimStorage::new();
    let broker = open(dir.path(), &sim).await;
    broker
        .create_topic("doomed", TopicConfig::default().partitions(64))
        .await
        .expect("create");
    for i in 0..200 {
        let m = Message::builder().key(format!("k{i}")).payload("x").build();
        broker.publish("doomed", m).await.expect("publish");
    }
    let topic_dir = dir.path().join("topics").join("doomed");
    assert!(
        !sim.file_names(&topic_dir.join("63")).is_empty(),
        "partition 63 has files"
    );

    sim.reset_stats();
    broker.delete_topic("doomed").await.expect("delete");
    let io = sim.stats();
    assert_eq!(io.syncs, 0, "no fsync of files being removed");
    assert_eq!(io.writes, 0, "no index or marker written for removed files");
    for p in [0, 31, 63] {
        assert!(
            sim.file_names(&topic_dir.join(p.to_string())).is_empty(),
            "partition {p}'s files are gone"
        );
    }

    // The name starts afresh, and the broker reopens cleanly.
    broker
        .create_topic("doomed", TopicConfig::default().partitions(2))
        .await
        .expect("create again");
    let r = broker
        .publish("doomed", Message::new("again"))
        .await
        .expect("publish");
    assert_eq!(r.offset, Some(0));
    broker.close().await.expect("close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_topic_of_many_partitions_keeps_each_partition_in_its_own_directory_across_a_restart() {
    let dir = tempfile::tempdir().expect("dir");
    let sim = SimStorage::new();
    let broker = open(dir.path(), &sim).await;
    let n = 300usize;
    broker
        .create_topic("wide", TopicConfig::default().partitions(n as u32))
        .await
        .expect("create");
    // Messages of one size, spread by key: partitions end up holding
    // different counts.
    let mut counts = vec![0u64; n];
    for i in 0..3000 {
        let m = Message::builder()
            .key(format!("k{i:05}"))
            .payload("0123456789")
            .build();
        let r = broker.publish("wide", m).await.expect("publish");
        counts[r.partition as usize] += 1;
    }
    let topic_dir = dir.path().join("topics").join("wide");
    // Partition p (the broker's p-th log) writes in directory p: its bytes
    // grow with its own count.
    let bytes = |p: usize| -> usize {
        let d = topic_dir.join(p.to_string());
        sim.file_names(&d)
            .iter()
            .map(|f| sim.contents(&d.join(f)).map_or(0, |c| c.len()))
            .sum()
    };
    let mut by_count: Vec<(u64, usize)> = (0..n).map(|p| (counts[p], bytes(p))).collect();
    by_count.sort_unstable();
    for w in by_count.windows(2) {
        let ((c0, b0), (c1, b1)) = (w[0], w[1]);
        if c0 == c1 {
            assert_eq!(b0, b1, "equal counts {c0}, equal bytes");
        } else {
            assert!(b0 < b1, "{c0} messages in {b0} bytes, {c1} in {b1}");
        }
    }
    broker.close().await.expect("close");
    drop(broker);

    let sim = sim.crash(|_, len| len); // every byte kept: a clean stop
    let broker = open(dir.path(), &sim).await;
    let info = broker
        .topics()
        .into_iter()
        .find(|t| t.name == "wide")
        .expect("the topic reopens");
    let ends: Vec<u64> = info.partitions.iter().map(|&(_, end)| end).collect();
    assert_eq!(
        ends, counts,
        "every partition reopened at its index with its messages"
    );
    broker.close().await.expect("close");
}
