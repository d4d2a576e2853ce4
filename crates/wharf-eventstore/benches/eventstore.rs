//! Criterion benches of the embedded event store, on the defaults (an
//! `fdatasync` before every acknowledgement, shared by concurrent
//! appenders) unless a name says `never` (no fsync: the store's own cost):
//! - 64 writers, each appending 1 event with `Exact(n)` to its own stream;
//! - batched appends of 1,000 events of 100 B (one writer, and four);
//! - a conditional append against a plain one, on a store holding 100k
//!   tagged events (with and without fsync);
//! - loading a 10k-event aggregate from a snapshot (plus a 50-event tail)
//!   and by replaying every event;
//! - catching up on the global log: `read_all` pages and a subscription
//!   from the start, over 200k events of 100 B.
//!
//! `cargo bench -p wharf-eventstore --bench eventstore`; figures and ratios
//! in BENCHMARKS.md.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use serde::{Deserialize, Serialize};
use wharf_eventstore::aggregate::{
    json, Aggregate, CodecError, DomainEvent, JsonSnapshots, Repository, SNAPSHOT_VERSION_METADATA,
};
use wharf_eventstore::{
    AppendCondition, AppendRequest, Durability, EmbeddedStore, EventData, EventStore,
    ExpectedVersion, GlobalFilter, Position, Query, StreamId, SubscribeFrom, SNAPSHOT_EVENT_TYPE,
};

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

fn store(rt: &tokio::runtime::Runtime, durability: Durability) -> EmbeddedStore {
    rt.block_on(EmbeddedStore::builder().durability(durability).temporary())
        .expect("store")
}

fn sid(s: &str) -> StreamId {
    StreamId::new(s).expect("stream name")
}

fn event_100b() -> EventData {
    EventData::new("Bench", vec![b'x'; 100 - "Bench".len()])
}

const WRITERS: usize = 64;
const PER_WRITER: u64 = 16;

fn concurrent_exact(c: &mut Criterion) {
    let rt = rt();
    let s = Arc::new(store(&rt, Durability::Always));
    let versions: Arc<Vec<AtomicU64>> = Arc::new((0..WRITERS).map(|_| AtomicU64::new(0)).collect());
    let mut g = c.benchmark_group("eventstore");
    g.sample_size(10).measurement_time(Duration::from_secs(8));
    g.throughput(Throughput::Elements(WRITERS as u64 * PER_WRITER));
    g.bench_function("append_64_writers_exact_1_event_fsync", |b| {
        b.to_async(&rt).iter(|| {
            let s = Arc::clone(&s);
            let versions = Arc::clone(&versions);
            async move {
                let mut tasks = Vec::with_capacity(WRITERS);
                for w in 0..WRITERS {
                    let s = Arc::clone(&s);
                    let versions = Arc::clone(&versions);
                    tasks.push(tokio::spawn(async move {
                        let stream = sid(&format!("writer-{w}"));
                        for _ in 0..PER_WRITER {
                            let n = versions[w].load(Ordering::Relaxed);
                            let expected = match n {
                                0 => ExpectedVersion::NoStream,
                                n => ExpectedVersion::Exact(n - 1),
                            };
                            s.append(&stream, expected, vec![event_100b()])
                                .await
                                .expect("append");
                            versions[w].store(n + 1, Ordering::Relaxed);
                        }
                    }));
                }
                for t in tasks {
                    t.await.expect("writer");
                }
            }
        });
    });
    g.finish();
}

const BATCH: usize = 1000;

fn batched(c: &mut Criterion) {
    let rt = rt();
    let mut g = c.benchmark_group("eventstore");
    g.sample_size(10).measurement_time(Duration::from_secs(6));
    for writers in [1usize, 4] {
        let s = Arc::new(store(&rt, Durability::Always));
        g.throughput(Throughput::Elements((BATCH * writers) as u64));
        let name = format!("append_batch_1000x100B_{writers}_writer_fsync");
        g.bench_function(&name, |b| {
            b.to_async(&rt).iter(|| {
                let s = Arc::clone(&s);
                async move {
                    let mut tasks = Vec::new();
                    for w in 0..writers {
                        let s = Arc::clone(&s);
                        tasks.push(tokio::spawn(async move {
                            let events: Vec<EventData> = (0..BATCH).map(|_| event_100b()).collect();
                            s.append(&sid(&format!("batch-{w}")), ExpectedVersion::Any, events)
                                .await
                                .expect("append");
                        }));
                    }
                    for t in tasks {
                        t.await.expect("writer");
                    }
                }
            });
        });
    }
    g.finish();
}

/// A store holding 100k events over 1,000 streams, tagged with one of 100
/// courses and one of 1,000 students.
fn tagged_store(rt: &tokio::runtime::Runtime, durability: Durability) -> EmbeddedStore {
    let s = store(rt, durability);
    rt.block_on(async {
        for b in 0..100u64 {
            let events: Vec<EventData> = (0..1000u64)
                .map(|i| {
                    let n = b * 1000 + i;
                    event_100b()
                        .with_tag(format!("course:{}", n % 100))
                        .with_tag(format!("student:{}", n % 1000))
                })
                .collect();
            s.append(&sid(&format!("fill-{b}")), ExpectedVersion::Any, events)
                .await
                .expect("fill");
        }
    });
    s
}

fn conditional(c: &mut Criterion) {
    let rt = rt();
    let mut g = c.benchmark_group("eventstore");
    g.sample_size(10).measurement_time(Duration::from_secs(5));
    g.throughput(Throughput::Elements(1));
    for (label, durability) in [("never", Durability::Never), ("fsync", Durability::Always)] {
        let s = Arc::new(tagged_store(&rt, durability));
        let stream = sid("enrolment");
        g.bench_function(format!("append_plain_1_event_{label}"), |b| {
            b.to_async(&rt).iter(|| {
                let s = Arc::clone(&s);
                let stream = stream.clone();
                async move {
                    let e = event_100b().with_tag("course:7").with_tag("student:123456");
                    s.append(&stream, ExpectedVersion::Any, vec![e])
                        .await
                        .expect("append")
                }
            });
        });
        g.bench_function(format!("append_conditional_1_event_{label}"), |b| {
            b.to_async(&rt).iter(|| {
                let s = Arc::clone(&s);
                let stream = stream.clone();
                async move {
                    // The DCB pattern: the decision read up to the head; the
                    // append holds if nothing for this course and student
                    // was written since.
                    let head = s.head().await.expect("head");
                    let after = Position(head.value() - 1);
                    let e = event_100b().with_tag("course:7").with_tag("student:123456");
                    let query = Query::tags(["course:7", "student:123456"]).item(
                        wharf_eventstore::QueryItem {
                            types: vec!["CourseClosed".into()],
                            tags: vec!["course:7".into()],
                        },
                    );
                    s.append_with(
                        AppendRequest::new(stream, ExpectedVersion::Any, vec![e])
                            .condition(AppendCondition::new(query).after(after)),
                    )
                    .await
                    .expect("conditional append")
                }
            });
        });
    }
    g.finish();
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
enum CounterEvent {
    Added { n: u64 },
}

impl DomainEvent for CounterEvent {
    fn event_type(&self) -> &'static str {
        "Added"
    }
    fn encode(&self) -> Result<bytes::Bytes, CodecError> {
        json::encode(self)
    }
    fn decode(_: &str, _: u32, payload: &[u8]) -> Result<Self, CodecError> {
        json::decode(payload)
    }
}

#[derive(Debug, Default, Clone, Serialize, Deserialize)]
struct Counter {
    total: u64,
    count: u64,
}

impl Aggregate for Counter {
    const NAME: &'static str = "counter";
    type Command = u64;
    type Event = CounterEvent;
    type Error = std::convert::Infallible;
    fn handle(&self, n: u64) -> Result<Vec<CounterEvent>, Self::Error> {
        Ok(vec![CounterEvent::Added { n }])
    }
    fn apply(&mut self, CounterEvent::Added { n }: &CounterEvent) {
        self.total += n;
        self.count += 1;
    }
}

const AGGREGATE_EVENTS: u64 = 10_000;
const TAIL: u64 = 50;

fn aggregate_load(c: &mut Criterion) {
    let rt = rt();
    let s: Arc<dyn EventStore> = Arc::new(store(&rt, Durability::Always));
    let plain = Repository::<Counter>::new(Arc::clone(&s));
    let snapshotted =
        Repository::<Counter>::new(Arc::clone(&s)).snapshot_every(100, JsonSnapshots::new(1));
    let stream = plain.stream_id("c1").expect("stream");
    rt.block_on(async {
        let mut state = Counter::default();
        for b in 0..AGGREGATE_EVENTS / 100 {
            let events: Vec<EventData> = (0..100)
                .map(|i| {
                    let e = CounterEvent::Added { n: b * 100 + i };
                    EventData::new(e.event_type(), e.encode().expect("encode"))
                })
                .collect();
            s.append(&stream, ExpectedVersion::Any, events)
                .await
                .expect("fill");
        }
        // The snapshot the repository would have written at version
        // 10k - 50 - 1: the state of the first 9,950 events.
        for n in 0..AGGREGATE_EVENTS - TAIL {
            state.apply(&CounterEvent::Added { n });
        }
        let snap = EventData::new(SNAPSHOT_EVENT_TYPE, json::encode(&state).expect("encode"))
            .with_metadata(
                SNAPSHOT_VERSION_METADATA,
                (AGGREGATE_EVENTS - TAIL - 1).to_string(),
            );
        s.append(&stream.snapshot_of(), ExpectedVersion::Any, vec![snap])
            .await
            .expect("snapshot");
        let a = snapshotted.load("c1").await.expect("load");
        let b = plain.load("c1").await.expect("load");
        assert_eq!(a.snapshot, Some(AGGREGATE_EVENTS - TAIL - 1));
        assert_eq!(a.replayed as u64, TAIL);
        assert_eq!(b.replayed as u64, AGGREGATE_EVENTS);
        assert_eq!(
            (a.state.total, a.state.count),
            (b.state.total, b.state.count)
        );
    });
    let mut g = c.benchmark_group("eventstore");
    g.sample_size(20).measurement_time(Duration::from_secs(5));
    g.bench_function("aggregate_load_10k_events_snapshot_plus_50", |b| {
        b.to_async(&rt)
            .iter(|| async { snapshotted.load("c1").await.expect("load") });
    });
    g.bench_function("aggregate_load_10k_events_full_replay", |b| {
        b.to_async(&rt)
            .iter(|| async { plain.load("c1").await.expect("load") });
    });
    g.finish();
}

const LOG_EVENTS: u64 = 200_000;

fn catch_up(c: &mut Criterion) {
    let rt = rt();
    let s = Arc::new(store(&rt, Durability::Always));
    rt.block_on(async {
        for b in 0..LOG_EVENTS / 1000 {
            let events: Vec<EventData> = (0..1000).map(|_| event_100b()).collect();
            s.append(
                &sid(&format!("log-{}", b % 50)),
                ExpectedVersion::Any,
                events,
            )
            .await
            .expect("fill");
        }
    });
    let mut g = c.benchmark_group("eventstore");
    g.sample_size(10).measurement_time(Duration::from_secs(6));
    g.throughput(Throughput::Elements(LOG_EVENTS));
    g.bench_function("catch_up_read_all_200k_x_100B", |b| {
        b.to_async(&rt).iter(|| {
            let s = Arc::clone(&s);
            async move {
                let mut from = Position::START;
                let mut n = 0u64;
                loop {
                    let page = s
                        .read_all(from, &GlobalFilter::all(), 10_000)
                        .await
                        .expect("read_all");
                    n += page.events.len() as u64;
                    from = page.next;
                    if page.is_end {
                        break;
                    }
                }
                assert_eq!(n, LOG_EVENTS);
            }
        });
    });
    g.bench_function("catch_up_subscription_200k_x_100B", |b| {
        b.to_async(&rt).iter(|| {
            let s = Arc::clone(&s);
            async move {
                let mut sub = s
                    .subscribe(SubscribeFrom::Start, GlobalFilter::all())
                    .await
                    .expect("subscribe");
                for _ in 0..LOG_EVENTS {
                    sub.next().await.expect("event").expect("ok");
                }
            }
        });
    });
    g.finish();
}

criterion_group!(
    benches,
    concurrent_exact,
    batched,
    conditional,
    aggregate_load,
    catch_up
);
criterion_main!(benches);
