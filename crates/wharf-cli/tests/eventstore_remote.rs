//! The event store conformance suite (`wharf_testkit::eventstore_tests!`)
//! run through `wharf-client`'s `RemoteEventStore` against a real
//! `wharf serve` process: every case opens the store over gRPC; a second
//! open (the restart case) restarts the server process on the same data
//! dir first (SIGTERM, start again), so what it reads back was kept by the
//! server's store on disk.

mod common;

use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use wharf_eventstore::EventStore;

struct Factory {
    dir: tempfile::TempDir,
    server: Mutex<Option<common::Server>>,
}

impl Factory {
    fn new() -> Factory {
        Factory {
            dir: tempfile::tempdir().expect("temp dir"),
            server: Mutex::new(None),
        }
    }
}

#[async_trait]
impl wharf_testkit::eventstore::EventStoreFactory for Factory {
    async fn open(&self) -> Arc<dyn EventStore> {
        let url = {
            let mut guard = self.server.lock().expect("lock");
            match guard.as_mut() {
                Some(s) => s.restart(),
                None => *guard = Some(common::Server::start(self.dir.path(), None)),
            }
            guard.as_ref().expect("started").url()
        };
        let store = wharf_client::RemoteEventStore::connect(&url, None)
            .await
            .expect("connect to wharf serve's event store");
        Arc::new(store)
    }
}

wharf_testkit::eventstore_tests!(Factory::new());

/// A subscription through `RemoteEventStore` outlives a server restart:
/// the client resubscribes after the last event it delivered, so events
/// appended before, during the outage's aftermath and after arrive once
/// each, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscription_resumes_after_a_server_restart_without_gap_or_duplicate() {
    use std::time::Duration;
    use wharf_eventstore::{EventData, ExpectedVersion, GlobalFilter, StreamId, SubscribeFrom};

    let dir = tempfile::tempdir().expect("temp dir");
    let mut server = common::Server::start(dir.path(), None);
    let store = wharf_client::RemoteEventStore::connect(&server.url(), None)
        .await
        .expect("connect");
    let s = StreamId::new("resume-1").expect("name");
    let append = |n: u64| {
        let store = store.clone();
        let s = s.clone();
        async move {
            store
                .append(
                    &s,
                    ExpectedVersion::Any,
                    vec![EventData::new("T", n.to_string())],
                )
                .await
                .expect("append")
        }
    };
    for n in 0..3 {
        append(n).await;
    }
    let mut sub = store
        .subscribe(
            SubscribeFrom::Start,
            GlobalFilter::all().stream_prefix("resume-"),
        )
        .await
        .expect("subscribe");
    let mut got = Vec::new();
    for _ in 0..3 {
        got.push(next_event(&mut sub).await.version);
    }
    server.restart();
    // The first calls after the restart may meet the old connection.
    let mut n = 3;
    while n < 6 {
        match store
            .append(
                &s,
                ExpectedVersion::Exact(n - 1),
                vec![EventData::new("T", n.to_string())],
            )
            .await
        {
            Ok(_) => n += 1,
            Err(wharf_eventstore::EventStoreError::Unavailable { .. }) => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("append after restart: {e:?}"),
        }
    }
    for _ in 3..6 {
        got.push(next_event(&mut sub).await.version);
    }
    assert_eq!(got, (0..6).collect::<Vec<u64>>());
    assert!(
        tokio::time::timeout(Duration::from_millis(500), sub.next())
            .await
            .is_err(),
        "no duplicate follows"
    );
}

async fn next_event(
    sub: &mut wharf_eventstore::EventSubscription,
) -> wharf_eventstore::RecordedEvent {
    tokio::time::timeout(std::time::Duration::from_secs(20), sub.next())
        .await
        .expect("an event in time")
        .expect("the subscription is open")
        .expect("an event")
}

/// A stream longer than the server's page (10,000 events per read) reads
/// whole through `RemoteEventStore`, forwards and backwards, and a bounded
/// read across the page boundary stops at its bound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_stream_reads_are_paged_whole_in_both_directions() {
    use wharf_eventstore::{EventData, ExpectedVersion, ReadStream, StreamFrom, StreamId};

    let dir = tempfile::tempdir().expect("temp dir");
    let server = common::Server::start(dir.path(), None);
    let store = wharf_client::RemoteEventStore::connect(&server.url(), None)
        .await
        .expect("connect");
    let s = StreamId::new("long-1").expect("name");
    const N: u64 = 10_500;
    for chunk in 0..N / 1500 {
        let evs = (0..1500)
            .map(|i| EventData::new("T", (chunk * 1500 + i).to_string()))
            .collect();
        store
            .append(&s, ExpectedVersion::Any, evs)
            .await
            .expect("append");
    }
    let fwd = store
        .read_stream(&s, ReadStream::forwards())
        .await
        .expect("read forwards");
    assert_eq!(
        fwd.iter().map(|e| e.version).collect::<Vec<_>>(),
        (0..N).collect::<Vec<_>>()
    );
    let back = store
        .read_stream(&s, ReadStream::backwards())
        .await
        .expect("read backwards");
    assert_eq!(
        back.iter().map(|e| e.version).collect::<Vec<_>>(),
        (0..N).rev().collect::<Vec<_>>()
    );
    let bounded = store
        .read_stream(
            &s,
            ReadStream::forwards()
                .from(StreamFrom::Version(100))
                .max_count(10_200),
        )
        .await
        .expect("bounded read");
    assert_eq!(bounded.len(), 10_200);
    assert_eq!(bounded.first().map(|e| e.version), Some(100));
    assert_eq!(bounded.last().map(|e| e.version), Some(10_299));
}
