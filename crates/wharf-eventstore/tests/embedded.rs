//! Behaviour of the embedded store beyond the shared suite: storage faults
//! injected through the log's `SimStorage` seam (a failed sync stores
//! nothing of the appends it covered, the index follows the log's cut-back,
//! the store goes on), `max_age` on a manual clock, and refusing a log
//! that does not hold events.

use std::collections::{BTreeMap, HashSet};
use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rand::{Rng, SeedableRng};
use wharf_eventstore::{
    EmbeddedStore, EventData, EventId, EventStore, EventStoreError, ExpectedVersion, GlobalFilter,
    ManualClock, Position, ReadStream, SimStorage, StreamFrom, StreamId, StreamMetadata,
};

fn sid(s: &str) -> StreamId {
    StreamId::new(s).unwrap()
}

async fn open_sim(sim: &SimStorage) -> EmbeddedStore {
    EmbeddedStore::builder()
        .storage(Arc::new(sim.clone()))
        .open("/es")
        .await
        .expect("open on sim storage")
}

async fn all_events(store: &EmbeddedStore) -> Vec<wharf_eventstore::RecordedEvent> {
    let mut out = Vec::new();
    let mut from = Position::START;
    loop {
        let page = store
            .read_all(from, &GlobalFilter::all(), 1000)
            .await
            .expect("read_all");
        out.extend(page.events);
        from = page.next;
        if page.is_end {
            return out;
        }
    }
}

/// Checks that the store holds exactly `acked` (ids per stream, in order)
/// with contiguous versions.
async fn assert_holds_exactly(store: &EmbeddedStore, acked: &BTreeMap<String, Vec<EventId>>) {
    for (name, ids) in acked {
        let got = store
            .read_stream(&sid(name), ReadStream::forwards())
            .await
            .expect("read stream");
        assert_eq!(
            got.iter().map(|e| e.version).collect::<Vec<_>>(),
            (0..ids.len() as u64).collect::<Vec<_>>(),
            "versions of {name} are contiguous"
        );
        assert_eq!(
            got.iter().map(|e| e.id).collect::<Vec<_>>(),
            *ids,
            "{name} holds exactly its acknowledged events, in order"
        );
    }
    let all = all_events(store).await;
    let total: usize = acked.values().map(Vec::len).sum();
    assert_eq!(all.len(), total, "the global log holds nothing else");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_syncs_store_nothing_of_their_appends_and_the_store_goes_on() {
    let sim = SimStorage::new();
    let store = open_sim(&sim).await;
    let mut rng = rand::rngs::StdRng::seed_from_u64(20);
    // Per stream, the ids acknowledged, in version order.
    let mut acked: BTreeMap<String, Vec<EventId>> = BTreeMap::new();
    let mut failures = 0;
    for round in 0..40 {
        if round % 2 == 1 {
            sim.fail_sync_after_calls(rng.gen_range(0..3), 5);
        }
        let mut tasks = Vec::new();
        for w in 0..8 {
            let store = store.clone();
            let name = format!("s-{}", (round + w) % 4);
            let n = rng.gen_range(1..4);
            tasks.push(tokio::spawn(async move {
                let evs: Vec<EventData> = (0..n)
                    .map(|i| EventData::new("T", format!("{round}-{w}-{i}")))
                    .collect();
                let ids: Vec<EventId> = evs.iter().map(|e| e.id).collect();
                let r = store.append(&sid(&name), ExpectedVersion::Any, evs).await;
                (name, ids, r)
            }));
        }
        let mut done = Vec::new();
        for t in tasks {
            done.push(t.await.unwrap());
        }
        // Acknowledged appends in version order per stream.
        done.sort_by_key(|(_, _, r)| r.as_ref().map_or(u64::MAX, |r| r.first_version));
        for (name, ids, r) in done {
            match r {
                Ok(r) => {
                    let have = acked.entry(name.clone()).or_default();
                    assert_eq!(r.first_version, have.len() as u64, "{name}: no gap");
                    have.extend(ids);
                }
                Err(e) => {
                    assert!(
                        matches!(e, EventStoreError::Storage { .. }),
                        "a failed sync is a storage error: {e:?}"
                    );
                    assert!(e.is_retryable());
                    failures += 1;
                }
            }
        }
        sim.clear_faults();
    }
    assert!(failures > 0, "the faults failed some appends");
    assert_holds_exactly(&store, &acked).await;
    // A conditional check and appends still work after the faults.
    let r = store
        .append(
            &sid("s-0"),
            ExpectedVersion::Any,
            vec![EventData::new("T", "after")],
        )
        .await
        .expect("append after faults");
    acked.get_mut("s-0").unwrap().push(
        store
            .read_stream(&sid("s-0"), ReadStream::backwards().max_count(1))
            .await
            .unwrap()[0]
            .id,
    );
    assert_eq!(r.first_version as usize + 1, acked["s-0"].len());
    // A crash keeping every byte written, or none past the last sync,
    // reopens to the same acknowledged history.
    for keep in [u64::MAX, 0] {
        let image = sim.crash(|_, _| keep);
        let reopened = open_sim(&image).await;
        assert_holds_exactly(&reopened, &acked).await;
        drop(reopened);
    }
}

#[tokio::test]
async fn max_age_hides_events_older_than_the_clock_allows() {
    let clock = Arc::new(ManualClock::new(1_000_000));
    let store = EmbeddedStore::builder()
        .clock(clock.clone())
        .in_memory()
        .await
        .unwrap();
    let s = sid("aging");
    for i in 0..5 {
        store
            .append(
                &s,
                ExpectedVersion::Any,
                vec![EventData::new("Old", format!("{i}"))],
            )
            .await
            .unwrap();
    }
    clock.advance(Duration::from_secs(60));
    for i in 0..3 {
        store
            .append(
                &s,
                ExpectedVersion::Any,
                vec![EventData::new("New", format!("{i}"))],
            )
            .await
            .unwrap();
    }
    store
        .set_stream_metadata(
            &s,
            StreamMetadata::new().with_max_age(Duration::from_secs(30)),
        )
        .await
        .unwrap();
    let versions = |evs: Vec<wharf_eventstore::RecordedEvent>| {
        evs.iter().map(|e| e.version).collect::<Vec<_>>()
    };
    let fwd = store.read_stream(&s, ReadStream::forwards()).await.unwrap();
    assert_eq!(versions(fwd), [5, 6, 7]);
    // A bounded forward read finds the fresh events past the expired ones.
    let two = store
        .read_stream(&s, ReadStream::forwards().max_count(2))
        .await
        .unwrap();
    assert_eq!(versions(two), [5, 6]);
    let back = store
        .read_stream(&s, ReadStream::backwards().from(StreamFrom::Version(6)))
        .await
        .unwrap();
    assert_eq!(versions(back), [6, 5]);
    clock.advance(Duration::from_secs(31));
    assert!(store
        .read_stream(&s, ReadStream::forwards())
        .await
        .unwrap()
        .is_empty());
    // The global log keeps them all.
    assert_eq!(all_events(&store).await.len(), 8);
}

#[tokio::test]
async fn a_log_of_foreign_records_is_refused_with_a_storage_error() {
    let dir = tempfile::tempdir().unwrap();
    {
        let log = wharf_log::Log::open(dir.path(), wharf_log::LogConfig::default()).unwrap();
        log.append(&[wharf_log::Record::new(1, "not an event").with_key("s")])
            .unwrap();
        log.close().unwrap();
    }
    match EmbeddedStore::open(dir.path()).await {
        Err(EventStoreError::Storage { source }) => {
            assert!(source.to_string().contains("position 0"), "{source}");
        }
        other => panic!("expected a storage error, got {other:?}"),
    }
}

#[tokio::test]
async fn reopening_rebuilds_streams_conditions_and_listing_from_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let mut ids = HashSet::new();
    {
        let store = EmbeddedStore::open(dir.path()).await.unwrap();
        for i in 0..300u64 {
            let e = EventData::new(format!("T{}", i % 3), format!("{i}"))
                .with_tag(format!("k:{}", i % 7));
            ids.insert(e.id);
            store
                .append(
                    &sid(&format!("s-{}", i % 10)),
                    ExpectedVersion::Any,
                    vec![e],
                )
                .await
                .unwrap();
        }
        store
            .delete_stream(&sid("s-3"), ExpectedVersion::Any)
            .await
            .unwrap();
        // Dropped without close: the next open recovers from the log.
    }
    reopen_and_check(dir.path(), &ids).await;
}

async fn reopen_and_check(dir: &Path, ids: &HashSet<EventId>) {
    let store = EmbeddedStore::open(dir).await.unwrap();
    let all = all_events(&store).await;
    assert_eq!(all.iter().map(|e| e.id).collect::<HashSet<_>>(), *ids);
    assert_eq!(
        store
            .read_stream(&sid("s-4"), ReadStream::forwards())
            .await
            .unwrap()
            .len(),
        30
    );
    assert!(matches!(
        store.read_stream(&sid("s-3"), ReadStream::forwards()).await,
        Err(EventStoreError::StreamNotFound { .. })
    ));
    assert_eq!(store.list_streams("s-", None, 100).await.unwrap().len(), 10);
    let r = store
        .append(
            &sid("s-3"),
            ExpectedVersion::NoStream,
            vec![EventData::new("T", "")],
        )
        .await
        .unwrap();
    assert_eq!(r.first_version, 30);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_append_cancelled_while_it_waits_for_the_fsync_still_reaches_live_subscribers() {
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(dir.path()).await.unwrap();
    let mut sub = store
        .subscribe(wharf_eventstore::SubscribeFrom::End, GlobalFilter::all())
        .await
        .unwrap();
    let s = sid("cancelled");
    let e = EventData::new("T", "x");
    let id = e.id;
    // Poll the append once: it is decided and written, then dropped while
    // it waits for the fsync (which takes milliseconds on a disk).
    let mut append = Box::pin(store.append(&s, ExpectedVersion::NoStream, vec![e]));
    let first = std::future::poll_fn(|cx| std::task::Poll::Ready(append.as_mut().poll(cx))).await;
    assert!(
        first.is_pending(),
        "the append was still waiting for the fsync"
    );
    drop(append);
    // Nothing else is appended: the subscriber must learn of the event from
    // the cancelled append's own commit.
    let got = tokio::time::timeout(Duration::from_secs(10), sub.next())
        .await
        .expect("the event reaches the subscriber")
        .expect("not ended")
        .expect("no error");
    assert_eq!(got.id, id);
    assert_eq!(
        store
            .read_stream(&s, ReadStream::forwards())
            .await
            .unwrap()
            .len(),
        1
    );
}

/// Appends racing a close never hang: each is acknowledged (and then stored)
/// or refused as closed (and then not stored).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn appends_racing_a_close_are_acknowledged_or_refused_and_none_hangs() {
    for round in 0..20u64 {
        let dir = tempfile::tempdir().expect("dir");
        let store = EmbeddedStore::open(dir.path()).await.expect("open");
        let tasks: Vec<_> = (0..16)
            .map(|w| {
                let store = store.clone();
                tokio::spawn(async move {
                    let mut acked = Vec::new();
                    for i in 0..50 {
                        let e = EventData::new("T", format!("{round}-{w}-{i}"));
                        let id = e.id;
                        match store
                            .append(&sid(&format!("s-{w}")), ExpectedVersion::Any, vec![e])
                            .await
                        {
                            Ok(_) => acked.push(id),
                            Err(EventStoreError::Closed) => break,
                            Err(e) => panic!("append: {e:?}"),
                        }
                    }
                    acked
                })
            })
            .collect();
        tokio::time::sleep(Duration::from_micros(200 * round)).await;
        store.close().await.expect("close");
        let mut acked = HashSet::new();
        for t in tasks {
            let ids = tokio::time::timeout(Duration::from_secs(20), t)
                .await
                .expect("no append hangs on a close")
                .expect("task");
            acked.extend(ids);
        }
        drop(store);
        let reopened = EmbeddedStore::open(dir.path()).await.expect("reopen");
        let stored: HashSet<EventId> = all_events(&reopened).await.iter().map(|e| e.id).collect();
        assert!(
            acked.is_subset(&stored),
            "round {round}: an acknowledged append is missing after the close"
        );
        reopened.close().await.expect("close");
    }
}
