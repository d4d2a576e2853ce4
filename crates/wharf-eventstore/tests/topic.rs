//! The store's events published to a topic of the embedded broker: each
//! delivered once to a consumer group, a stream's events in order, every
//! field of the event recovered from the message — also when the bridge
//! fails between publishing and storing its checkpoint (the republish is a
//! duplicate the broker drops) and after a restart from the checkpoint file.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use wharf_broker::Broker;
use wharf_core::{Message, StartPosition, SubscribeOptions, Subscriber, Subscription};
use wharf_eventstore::projection::{ProjectionError, ProjectionRunner};
use wharf_eventstore::topic::{
    recorded_event, to_message, CheckpointStore, FileCheckpoint, PublishToTopic,
};
use wharf_eventstore::{
    EmbeddedStore, EventData, EventStore, ExpectedVersion, GlobalFilter, Position, StreamId,
};

const WAIT: Duration = Duration::from_secs(20);

/// A file checkpoint whose first `fail` saves fail (after the publish went out).
struct FlakyCheckpoint {
    inner: FileCheckpoint,
    fail: AtomicUsize,
}

#[async_trait]
impl CheckpointStore for FlakyCheckpoint {
    async fn load(&self) -> Result<Position, ProjectionError> {
        self.inner.load().await
    }
    async fn save(&self, position: Position) -> Result<(), ProjectionError> {
        if self
            .fail
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
        {
            return Err("disk hiccup while saving the checkpoint".into());
        }
        self.inner.save(position).await
    }
}

async fn append_orders(store: &dyn EventStore, streams: usize, each: usize) {
    for i in 0..each {
        for s in 0..streams {
            let e = EventData::new("OrderLine", format!("{{\"line\":{i}}}"))
                .with_tag(format!("customer:{}", s % 3))
                .with_metadata("correlation-id", format!("c-{s}-{i}"));
            store
                .append(
                    &StreamId::new(format!("order-{s}")).unwrap(),
                    ExpectedVersion::Any,
                    vec![e],
                )
                .await
                .expect("append");
        }
    }
}

/// Receives `n` deliveries, acking each; returns their messages.
async fn receive(sub: &mut Subscription, n: usize) -> Vec<Message> {
    let mut out = Vec::new();
    while out.len() < n {
        let d = tokio::time::timeout(WAIT, sub.next())
            .await
            .unwrap_or_else(|_| panic!("only {} of {n} delivered", out.len()))
            .expect("open")
            .expect("delivery");
        out.push(d.message().clone());
        d.ack().await.expect("ack");
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_reach_a_consumer_group_once_each_in_stream_order_with_every_field() {
    let dir = tempfile::tempdir().expect("dir");
    let broker = Arc::new(
        Broker::open(dir.path().join("broker"))
            .await
            .expect("broker"),
    );
    let store: Arc<dyn EventStore> = Arc::new(EmbeddedStore::temporary().await.expect("store"));
    append_orders(&*store, 4, 10).await;
    let mut sub = broker
        .subscribe(
            SubscribeOptions::new("events.orders")
                .group("billing")
                .start(StartPosition::Earliest),
        )
        .await
        .expect("subscribe");

    let bridge = PublishToTopic::new(
        broker.clone(),
        "events.orders",
        FlakyCheckpoint {
            inner: FileCheckpoint::new(dir.path().join("orders.ckpt")),
            fail: AtomicUsize::new(2),
        },
    );
    let h = ProjectionRunner::new(store.clone())
        .batch_size(8)
        .start("orders-to-topic", Arc::new(bridge));
    append_orders(&*store, 4, 5).await; // live ones too
    tokio::time::timeout(WAIT, h.catch_up())
        .await
        .expect("in time")
        .expect("caught up");
    assert_eq!(
        h.status().failures,
        2,
        "two checkpoint saves failed after their publish"
    );

    let got = receive(&mut sub, 60).await;
    // Nothing more: the republished batches were duplicates.
    let extra = tokio::time::timeout(Duration::from_millis(500), sub.next()).await;
    assert!(extra.is_err(), "a republished event was delivered twice");

    // Every event once, each field recovered, a stream's events in version order.
    let stored = store
        .read_all(Position::START, &GlobalFilter::all(), 1000)
        .await
        .expect("read_all")
        .events;
    assert_eq!(stored.len(), 60);
    let by_id: HashMap<_, _> = stored.iter().map(|e| (e.id, e)).collect();
    let mut last_version: HashMap<String, u64> = HashMap::new();
    for m in &got {
        let e = recorded_event(m).expect("an event message");
        assert_eq!(
            &&e,
            by_id.get(&e.id).expect("a stored event"),
            "every field round-trips"
        );
        assert_eq!(
            m.key().map(|k| k.as_ref()),
            Some(e.stream.as_str().as_bytes())
        );
        if let Some(prev) = last_version.insert(e.stream.to_string(), e.version) {
            assert!(
                e.version > prev,
                "{}: version {} after {prev}",
                e.stream,
                e.version
            );
        }
    }
    let ids: std::collections::HashSet<_> = got.iter().map(|m| m.id()).collect();
    assert_eq!(ids.len(), 60);
    h.stop().await;

    // A restart resumes from the checkpoint file: only new events go out.
    let bridge = PublishToTopic::new(
        broker.clone(),
        "events.orders",
        FileCheckpoint::new(dir.path().join("orders.ckpt")),
    );
    let h = ProjectionRunner::new(store.clone()).start("orders-to-topic", Arc::new(bridge));
    append_orders(&*store, 1, 3).await;
    tokio::time::timeout(WAIT, h.catch_up())
        .await
        .expect("in time")
        .expect("caught up");
    let got = receive(&mut sub, 3).await;
    let versions: Vec<u64> = got
        .iter()
        .map(|m| recorded_event(m).unwrap().version)
        .collect();
    assert_eq!(versions, [15, 16, 17]);
    let extra = tokio::time::timeout(Duration::from_millis(500), sub.next()).await;
    assert!(extra.is_err(), "the restart republished old events");
    h.stop().await;
}

#[test]
fn a_message_that_is_not_an_event_is_refused_by_name() {
    let plain = Message::new("hello");
    let err = recorded_event(&plain).expect_err("no event headers");
    assert_eq!(err.header, wharf_eventstore::topic::STREAM);

    let event = wharf_eventstore::RecordedEvent::new(
        StreamId::new("order-1").unwrap(),
        3,
        Position(42),
        1_700_000_000_000,
        EventData::new("OrderPlaced", "{}"),
    );
    let mut m = to_message(&event);
    m.headers_mut()
        .insert(wharf_eventstore::topic::VERSION, "three");
    let err = recorded_event(&m).expect_err("a bad version");
    assert_eq!(err.header, wharf_eventstore::topic::VERSION);
    assert_eq!(err.problem, "is not a number");
}
