//! The event store conformance suite: the contract every
//! [`wharf_eventstore::EventStore`] implementation (embedded, PostgreSQL,
//! remote) must honour, one `pub async fn` per behaviour.
//!
//! An implementation supplies an [`EventStoreFactory`] and expands
//! [`eventstore_tests!`](crate::eventstore_tests) in one of its test files;
//! that generates one test per case. Stream names, tags and event types are
//! unique to each case run (built from [`unique_name`]), and every global
//! read filters on the case's stream prefix, so suites can share one
//! database or server.
//!
//! ```text
//! // crates/wharf-eventstore/tests/conformance.rs
//! struct Factory(tempfile::TempDir);
//! #[async_trait::async_trait]
//! impl wharf_testkit::eventstore::EventStoreFactory for Factory {
//!     async fn open(&self) -> std::sync::Arc<dyn wharf_eventstore::EventStore> {
//!         std::sync::Arc::new(wharf_eventstore::EmbeddedStore::open(self.0.path()).await.unwrap())
//!     }
//! }
//! wharf_testkit::eventstore_tests!(Factory(tempfile::tempdir().unwrap()));
//! ```

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use wharf_eventstore::{
    AppendCondition, AppendRequest, CurrentVersion, EventData, EventStore, EventStoreError,
    ExpectedVersion, GlobalFilter, Position, Query, QueryItem, ReadStream, RecordedEvent,
    StreamFrom, StreamId, StreamMetadata, SubscribeFrom, MAX_VERSION,
};

use crate::{unique_name, Outcome, WAIT};

/// Opens the event store under test.
///
/// One factory value is made per case.
#[async_trait]
pub trait EventStoreFactory: Send + Sync + 'static {
    /// Opens the store. For a persistent store, a second call after the
    /// first store was closed and dropped must open the same data (the
    /// restart case relies on it).
    async fn open(&self) -> Arc<dyn EventStore>;

    /// Whether a second [`open`](Self::open) sees the first one's data
    /// (false for in-memory stores: the restart case is then skipped).
    fn persistent(&self) -> bool {
        true
    }
}

/// Expands to one test per event store conformance case, each opening a
/// store from a fresh `$factory` value (an expression whose type implements
/// [`EventStoreFactory`]).
#[macro_export]
macro_rules! eventstore_tests {
    ($factory:expr $(,)?) => {
        $crate::eventstore_tests!(@async $factory;
            append_and_read_round_trip_every_field,
            expected_versions_are_checked_and_a_conflict_names_stream_expected_and_actual,
            a_failed_multi_event_append_stores_none_and_a_good_one_is_contiguous,
            racing_exact_writers_one_wins_and_the_stream_holds_one_copy,
            read_stream_forwards_backwards_and_from_a_version,
            read_all_is_in_commit_order_and_filters_by_prefix_type_and_tag,
            conditional_append_fails_only_on_a_matching_event_after_its_position,
            catch_up_then_live_delivers_every_event_once_in_order_under_concurrent_appends,
            subscription_from_end_and_filtered_subscription,
            bad_input_is_refused_with_typed_errors_and_nothing_is_stored,
            unknown_stream_reads_not_found,
            truncate_before_and_max_count_hide_old_versions_from_stream_reads,
            soft_delete_hides_the_stream_until_an_append_recreates_it,
            tombstone_refuses_reads_writes_and_metadata_for_ever,
            list_streams_by_prefix_with_paging,
            restart_keeps_events_versions_and_metadata,
            close_ends_subscriptions_and_refuses_calls,
        );
        #[test]
        fn conditional_appends_under_concurrent_writers_match_the_model() {
            let factory = $factory;
            $crate::eventstore::conditional_appends_under_concurrent_writers_match_the_model(
                &factory,
            );
        }
    };
    (@async $factory:expr; $($case:ident),+ $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let factory = $factory;
                match $crate::eventstore::$case(&factory).await {
                    $crate::Outcome::Passed => {}
                    $crate::Outcome::Skipped(why) => {
                        println!("SKIPPED {}: {}", stringify!($case), why);
                    }
                }
            }
        )+
    };
}

fn stream(name: &str) -> StreamId {
    StreamId::new(name).expect("a valid test stream name")
}

/// A namespace unique to one case run: stream prefix, tag and type stem.
fn ns() -> String {
    unique_name("es")
}

fn ev(ty: &str, n: u64) -> EventData {
    EventData::new(ty, format!("{{\"n\":{n}}}"))
}

async fn read_all_of(store: &dyn EventStore, filter: &GlobalFilter) -> Vec<RecordedEvent> {
    let mut out = Vec::new();
    let mut from = Position::START;
    loop {
        let page = store.read_all(from, filter, 500).await.expect("read_all");
        out.extend(page.events);
        from = page.next;
        if page.is_end {
            return out;
        }
    }
}

async fn versions(store: &dyn EventStore, s: &StreamId) -> Vec<u64> {
    store
        .read_stream(s, ReadStream::forwards())
        .await
        .expect("read_stream")
        .iter()
        .map(|e| e.version)
        .collect()
}

/// Every field written comes back; versions count from 0; positions grow.
pub async fn append_and_read_round_trip_every_field<F: EventStoreFactory>(f: &F) -> Outcome {
    let store = f.open().await;
    let ns = ns();
    let s = stream(&format!("{ns}-order-1"));
    let payload = Bytes::from_static(b"\x00\x01binary\xff");
    let a = EventData::new("OrderPlaced", payload.clone())
        .with_schema_version(3)
        .with_tag(format!("{ns}:customer"))
        .with_tag("region:eu")
        .with_metadata("traceparent", "00-abc-def-01")
        .with_metadata("correlation", "c-1");
    let b = EventData::new("OrderPaid", "{}");
    let r = store
        .append(&s, ExpectedVersion::NoStream, vec![a.clone(), b.clone()])
        .await
        .expect("append");
    assert_eq!((r.first_version, r.last_version), (0, 1));
    assert!(r.first_position < r.last_position);
    let got = store
        .read_stream(&s, ReadStream::forwards())
        .await
        .expect("read");
    assert_eq!(got.len(), 2);
    for (e, want) in got.iter().zip([&a, &b]) {
        assert_eq!(e.stream, s);
        assert_eq!(&e.to_event_data(), want, "every field round-trips");
        assert!(e.timestamp_ms > 0);
    }
    assert_eq!((got[0].version, got[1].version), (0, 1));
    assert_eq!(got[0].position, r.first_position);
    assert_eq!(got[1].position, r.last_position);
    assert_eq!(got[0].metadata_value("correlation"), Some("c-1"));
    // The global log holds the same events at the same positions.
    let all = read_all_of(&*store, &GlobalFilter::all().stream_prefix(&ns)).await;
    assert_eq!(all, got);
    let info = store.stream_info(&s).await.expect("info");
    assert_eq!(info.version, CurrentVersion::Version(1));
    assert!(!info.soft_deleted);
    Outcome::Passed
}

fn assert_wrong_version(
    r: Result<wharf_eventstore::AppendResult, EventStoreError>,
    s: &StreamId,
    expected: ExpectedVersion,
    actual: CurrentVersion,
) {
    match r {
        Err(EventStoreError::WrongExpectedVersion {
            stream,
            expected: e,
            actual: a,
        }) => {
            assert_eq!(&stream, s);
            assert_eq!(e, expected);
            assert_eq!(a, actual);
        }
        other => panic!("expected WrongExpectedVersion({expected} vs {actual}), got {other:?}"),
    }
}

/// `Any`, `NoStream`, `StreamExists`, `Exact(n)`; a conflict is typed and
/// stores nothing.
pub async fn expected_versions_are_checked_and_a_conflict_names_stream_expected_and_actual<
    F: EventStoreFactory,
>(
    f: &F,
) -> Outcome {
    let store = f.open().await;
    let s = stream(&format!("{}-acct", ns()));
    assert_wrong_version(
        store
            .append(&s, ExpectedVersion::StreamExists, vec![ev("T", 0)])
            .await,
        &s,
        ExpectedVersion::StreamExists,
        CurrentVersion::NoStream,
    );
    assert_wrong_version(
        store
            .append(&s, ExpectedVersion::Exact(0), vec![ev("T", 0)])
            .await,
        &s,
        ExpectedVersion::Exact(0),
        CurrentVersion::NoStream,
    );
    store
        .append(&s, ExpectedVersion::NoStream, vec![ev("T", 0)])
        .await
        .expect("NoStream on a new stream");
    assert_wrong_version(
        store
            .append(&s, ExpectedVersion::NoStream, vec![ev("T", 1)])
            .await,
        &s,
        ExpectedVersion::NoStream,
        CurrentVersion::Version(0),
    );
    store
        .append(&s, ExpectedVersion::StreamExists, vec![ev("T", 1)])
        .await
        .expect("StreamExists");
    let r = store
        .append(&s, ExpectedVersion::Exact(1), vec![ev("T", 2)])
        .await
        .expect("Exact(1)");
    assert_eq!(r.last_version, 2);
    assert_wrong_version(
        store
            .append(&s, ExpectedVersion::Exact(1), vec![ev("T", 3)])
            .await,
        &s,
        ExpectedVersion::Exact(1),
        CurrentVersion::Version(2),
    );
    assert_wrong_version(
        store
            .append(&s, ExpectedVersion::Exact(7), vec![ev("T", 3)])
            .await,
        &s,
        ExpectedVersion::Exact(7),
        CurrentVersion::Version(2),
    );
    store
        .append(&s, ExpectedVersion::Any, vec![ev("T", 3)])
        .await
        .expect("Any");
    assert_eq!(versions(&*store, &s).await, vec![0, 1, 2, 3]);
    let got = store
        .read_stream(&s, ReadStream::forwards())
        .await
        .expect("read");
    let payloads: Vec<&[u8]> = got.iter().map(|e| &e.payload[..]).collect();
    assert_eq!(
        payloads,
        [&b"{\"n\":0}"[..], b"{\"n\":1}", b"{\"n\":2}", b"{\"n\":3}"],
        "no conflicting append stored anything"
    );
    Outcome::Passed
}

/// A multi-event append that conflicts stores none of its events; one that
/// succeeds gets consecutive versions even with other streams written
/// concurrently.
pub async fn a_failed_multi_event_append_stores_none_and_a_good_one_is_contiguous<
    F: EventStoreFactory,
>(
    f: &F,
) -> Outcome {
    let store = f.open().await;
    let ns = ns();
    let a = stream(&format!("{ns}-a"));
    store
        .append(&a, ExpectedVersion::NoStream, vec![ev("T", 0)])
        .await
        .expect("seed");
    let batch: Vec<EventData> = (1..=5).map(|n| ev("T", n)).collect();
    assert!(store
        .append(&a, ExpectedVersion::NoStream, batch.clone())
        .await
        .is_err_and(|e| e.is_conflict()));
    assert_eq!(versions(&*store, &a).await, vec![0]);
    // Concurrent single-event appends to other streams while batches land.
    let noise = {
        let store = Arc::clone(&store);
        let ns = ns.clone();
        tokio::spawn(async move {
            for i in 0..50u64 {
                let s = stream(&format!("{ns}-noise-{}", i % 5));
                store
                    .append(&s, ExpectedVersion::Any, vec![ev("N", i)])
                    .await
                    .expect("noise append");
            }
        })
    };
    let mut expected = ExpectedVersion::Exact(0);
    for round in 0..10u64 {
        let evs: Vec<EventData> = (0..5).map(|n| ev("T", round * 10 + n)).collect();
        let r = store
            .append(&a, expected, evs.clone())
            .await
            .expect("batch append");
        assert_eq!(r.last_version - r.first_version, 4);
        expected = ExpectedVersion::Exact(r.last_version);
        let got = store
            .read_stream(
                &a,
                ReadStream::forwards().from(StreamFrom::Version(r.first_version)),
            )
            .await
            .expect("read batch");
        let ids: Vec<_> = got.iter().map(|e| e.id).collect();
        let want: Vec<_> = evs.iter().map(|e| e.id).collect();
        assert_eq!(ids, want, "the batch is stored whole, in order");
        assert!(got.windows(2).all(|w| w[0].position < w[1].position));
    }
    noise.await.expect("noise task");
    assert_eq!(versions(&*store, &a).await, (0..=50).collect::<Vec<_>>());
    Outcome::Passed
}

/// Writers racing with the same `Exact(n)`: exactly one wins each round,
/// the others get the typed conflict, the stream holds the winner's event
/// once.
pub async fn racing_exact_writers_one_wins_and_the_stream_holds_one_copy<F: EventStoreFactory>(
    f: &F,
) -> Outcome {
    let store = f.open().await;
    let s = stream(&format!("{}-race", ns()));
    store
        .append(&s, ExpectedVersion::NoStream, vec![ev("Opened", 0)])
        .await
        .expect("seed");
    const WRITERS: usize = 8;
    for round in 0..20u64 {
        let barrier = Arc::new(tokio::sync::Barrier::new(WRITERS));
        let mut tasks = Vec::new();
        for w in 0..WRITERS {
            let store = Arc::clone(&store);
            let s = s.clone();
            let barrier = Arc::clone(&barrier);
            tasks.push(tokio::spawn(async move {
                let e = ev("Raced", round * 100 + w as u64);
                let id = e.id;
                barrier.wait().await;
                (
                    id,
                    store
                        .append(&s, ExpectedVersion::Exact(round), vec![e])
                        .await,
                )
            }));
        }
        let mut winners = Vec::new();
        for t in tasks {
            let (id, r) = t.await.expect("writer task");
            match r {
                Ok(r) => {
                    assert_eq!(r.last_version, round + 1);
                    winners.push(id);
                }
                Err(e) => assert_wrong_version(
                    Err(e),
                    &s,
                    ExpectedVersion::Exact(round),
                    CurrentVersion::Version(round + 1),
                ),
            }
        }
        assert_eq!(winners.len(), 1, "exactly one writer wins round {round}");
        let last = store
            .read_stream(&s, ReadStream::backwards().max_count(1))
            .await
            .expect("read last");
        assert_eq!(last[0].id, winners[0]);
        assert_eq!(last[0].version, round + 1);
    }
    let all = store
        .read_stream(&s, ReadStream::forwards())
        .await
        .expect("read all");
    assert_eq!(all.len(), 21, "one event per round, no copies");
    let ids: HashSet<_> = all.iter().map(|e| e.id).collect();
    assert_eq!(ids.len(), 21);
    Outcome::Passed
}

/// Stream reads in both directions, from a version, bounded by a count.
pub async fn read_stream_forwards_backwards_and_from_a_version<F: EventStoreFactory>(
    f: &F,
) -> Outcome {
    let store = f.open().await;
    let s = stream(&format!("{}-ten", ns()));
    for n in 0..10 {
        store
            .append(&s, ExpectedVersion::Any, vec![ev("T", n)])
            .await
            .expect("append");
    }
    let v = |events: Vec<RecordedEvent>| events.iter().map(|e| e.version).collect::<Vec<_>>();
    let read = |o: ReadStream| {
        let store = Arc::clone(&store);
        let s = s.clone();
        async move { v(store.read_stream(&s, o).await.expect("read")) }
    };
    assert_eq!(read(ReadStream::backwards().max_count(3)).await, [9, 8, 7]);
    assert_eq!(
        read(
            ReadStream::forwards()
                .from(StreamFrom::Version(5))
                .max_count(2)
        )
        .await,
        [5, 6]
    );
    assert_eq!(
        read(ReadStream::backwards().from(StreamFrom::Version(2))).await,
        [2, 1, 0]
    );
    assert_eq!(
        read(ReadStream::backwards().from(StreamFrom::Start)).await,
        [0]
    );
    assert!(read(ReadStream::forwards().from(StreamFrom::End))
        .await
        .is_empty());
    assert!(read(ReadStream::forwards().from(StreamFrom::Version(100)))
        .await
        .is_empty());
    assert_eq!(
        read(
            ReadStream::backwards()
                .from(StreamFrom::Version(100))
                .max_count(1)
        )
        .await,
        [9]
    );
    assert!(read(ReadStream::forwards().max_count(0)).await.is_empty());
    assert_eq!(
        read(ReadStream::forwards()).await,
        (0..10).collect::<Vec<_>>()
    );
    Outcome::Passed
}

/// The global log in commit order, with prefix, type and tag filters and
/// paging that resumes without gaps or repeats.
pub async fn read_all_is_in_commit_order_and_filters_by_prefix_type_and_tag<
    F: EventStoreFactory,
>(
    f: &F,
) -> Outcome {
    let store = f.open().await;
    let ns = ns();
    let tag = format!("{ns}:vip");
    let mut written = Vec::new();
    for n in 0..30u64 {
        let (s, ty) = if n % 3 == 0 {
            (format!("{ns}-a-{}", n % 2), "Placed")
        } else {
            (format!("{ns}-b-{}", n % 2), "Shipped")
        };
        let mut e = ev(ty, n);
        if n % 5 == 0 {
            e = e.with_tag(tag.clone());
        }
        written.push(e.id);
        store
            .append(&stream(&s), ExpectedVersion::Any, vec![e])
            .await
            .expect("append");
    }
    let all = read_all_of(&*store, &GlobalFilter::all().stream_prefix(&ns)).await;
    assert_eq!(
        all.iter().map(|e| e.id).collect::<Vec<_>>(),
        written,
        "commit order"
    );
    assert!(all.windows(2).all(|w| w[0].position < w[1].position));
    let a = read_all_of(
        &*store,
        &GlobalFilter::all().stream_prefix(format!("{ns}-a-")),
    )
    .await;
    assert_eq!(a.len(), 10);
    assert!(a.iter().all(|e| e.event_type == "Placed"));
    let shipped = read_all_of(
        &*store,
        &GlobalFilter::all()
            .stream_prefix(&ns)
            .event_types(["Shipped"]),
    )
    .await;
    assert_eq!(shipped.len(), 20);
    let vip = read_all_of(
        &*store,
        &GlobalFilter::all()
            .stream_prefix(&ns)
            .query(Query::tags([tag.clone()])),
    )
    .await;
    assert_eq!(vip.len(), 6);
    let vip_placed = read_all_of(
        &*store,
        &GlobalFilter::all()
            .stream_prefix(&ns)
            .query(Query::new().item(QueryItem {
                types: vec!["Placed".into()],
                tags: vec![tag.clone()],
            })),
    )
    .await;
    assert_eq!(vip_placed.len(), 2, "n = 0 and 15");
    // Paging one event at a time from a middle position.
    let mid = all[10].position;
    let mut from = mid;
    let mut paged = Vec::new();
    loop {
        let page = store
            .read_all(from, &GlobalFilter::all().stream_prefix(&ns), 1)
            .await
            .expect("page");
        assert!(page.events.len() <= 1);
        assert!(page.next > from || page.is_end);
        paged.extend(page.events);
        from = page.next;
        if page.is_end {
            break;
        }
    }
    assert_eq!(paged, all[10..].to_vec());
    Outcome::Passed
}

/// The dynamic consistency boundary: a conditional append fails exactly
/// when an event matching its query was written after its position, and
/// then stores nothing.
pub async fn conditional_append_fails_only_on_a_matching_event_after_its_position<
    F: EventStoreFactory,
>(
    f: &F,
) -> Outcome {
    let store = f.open().await;
    let ns = ns();
    let course = format!("{ns}:course-1");
    let other = format!("{ns}:course-2");
    let s = stream(&format!("{ns}-enrol"));
    let p0 = store.head().await.expect("head");
    let before = p0.value().checked_sub(1).map(Position);
    let e1 = store
        .append(
            &s,
            ExpectedVersion::Any,
            vec![EventData::new("Subscribed", "{}").with_tag(course.clone())],
        )
        .await
        .expect("e1");
    let cond = |q: Query, after: Option<Position>| AppendCondition { query: q, after };
    let append = |c: AppendCondition| {
        let store = Arc::clone(&store);
        let s = s.clone();
        let course = course.clone();
        async move {
            store
                .append_with(
                    AppendRequest::new(
                        s,
                        ExpectedVersion::Any,
                        vec![EventData::new("Subscribed", "{}").with_tag(course)],
                    )
                    .condition(c),
                )
                .await
        }
    };
    // A matching event after the position: conflict naming it.
    match append(cond(Query::tags([course.clone()]), before)).await {
        Err(EventStoreError::ConditionFailed { after, conflict }) => {
            assert_eq!(after, before);
            assert_eq!(conflict, e1.last_position);
        }
        other => panic!("expected ConditionFailed, got {other:?}"),
    }
    assert_eq!(versions(&*store, &s).await, vec![0], "nothing stored");
    // The whole log (no position) is the uniqueness guard.
    assert!(matches!(
        append(AppendCondition::new(Query::tags([course.clone()]))).await,
        Err(EventStoreError::ConditionFailed { after: None, .. })
    ));
    // Type and tag must both match within an item.
    let typed = |ty: &str| {
        Query::new().item(QueryItem {
            types: vec![ty.into()],
            tags: vec![course.clone()],
        })
    };
    assert!(matches!(
        append(cond(typed("Subscribed"), before)).await,
        Err(EventStoreError::ConditionFailed { .. })
    ));
    let r = append(cond(typed("Unsubscribed"), before))
        .await
        .expect("a different type does not match");
    // A query on another tag passes (every append here is tagged course-1).
    let p2 = append(cond(Query::tags([other.clone()]), before))
        .await
        .expect("other tag")
        .last_position;
    // Bounded at the previous append, the one after it conflicts ...
    match append(cond(Query::tags([course.clone()]), Some(r.last_position))).await {
        Err(EventStoreError::ConditionFailed { conflict, .. }) => assert_eq!(conflict, p2),
        other => panic!("expected ConditionFailed at {p2}, got {other:?}"),
    }
    // ... bounded at the last one (the bound itself is not after), nothing does.
    append(cond(Query::tags([course.clone()]), Some(p2)))
        .await
        .expect("nothing after the last position");
    // An empty query never fails.
    append(AppendCondition::new(Query::new()))
        .await
        .expect("empty query");
    // The expected version is checked too.
    let r = store
        .append_with(
            AppendRequest::new(s.clone(), ExpectedVersion::Exact(0), vec![ev("X", 0)])
                .condition(AppendCondition::new(Query::tags([format!("{ns}:none")]))),
        )
        .await;
    assert!(matches!(
        r,
        Err(EventStoreError::WrongExpectedVersion { .. })
    ));
    assert_eq!(versions(&*store, &s).await, vec![0, 1, 2, 3, 4]);
    Outcome::Passed
}

/// One writer's operation in the model test.
#[derive(Debug, Clone)]
struct ModelOp {
    writer: usize,
    tag: usize,
    query: usize,
    conditional: bool,
    /// Decide on the writer's previous read instead of a fresh one.
    stale: bool,
}

fn model_ops() -> impl proptest::strategy::Strategy<Value = Vec<ModelOp>> {
    use proptest::prelude::*;
    proptest::collection::vec(
        (
            0..3usize,
            0..3usize,
            0..3usize,
            proptest::bool::weighted(0.8),
            proptest::bool::weighted(0.3),
        )
            .prop_map(|(writer, tag, query, conditional, stale)| ModelOp {
                writer,
                tag,
                query,
                conditional,
                stale,
            }),
        1..40,
    )
}

/// What one operation decided, for the checks after the run.
#[derive(Debug)]
struct Decided {
    op: ModelOp,
    after: Option<Position>,
    id: wharf_eventstore::EventId,
    result: Result<Position, Position>,
}

/// Conditional appends by concurrent writers against a model: each op reads
/// what its query selects (DCB style) — or, to provoke conflicts, reuses
/// its previous, stale read — then appends one tagged event conditioned on
/// nothing matching having been written after the read position. Checked
/// on the final log: every success had no matching event between its read
/// position and itself (no decision on stale state), every failure names a
/// real matching event after its read position, successes are stored once
/// and failures not at all — and with one writer every outcome is exactly
/// what a sequential model (a list of the stored events) predicts.
pub fn conditional_appends_under_concurrent_writers_match_the_model<F: EventStoreFactory>(f: &F) {
    use proptest::test_runner::{Config, TestRunner};
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let store = rt.block_on(f.open());
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(24);
    let mut runner = TestRunner::new(Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    });
    runner
        .run(&model_ops(), |ops| {
            rt.block_on(run_model_case(Arc::clone(&store), ops));
            Ok(())
        })
        .expect("conditional appends match the model");
}

async fn run_model_case(store: Arc<dyn EventStore>, ops: Vec<ModelOp>) {
    let ns = ns();
    let start = store.head().await.expect("head");
    let tags: Vec<String> = (0..3).map(|i| format!("{ns}:t{i}")).collect();
    let mut per_writer: Vec<Vec<ModelOp>> = vec![Vec::new(); 3];
    for op in &ops {
        per_writer[op.writer].push(op.clone());
    }
    let writers_used = per_writer.iter().filter(|w| !w.is_empty()).count();
    let mut tasks = Vec::new();
    for (w, mine) in per_writer.into_iter().enumerate() {
        let store = Arc::clone(&store);
        let tags = tags.clone();
        let ns = ns.clone();
        tasks.push(tokio::spawn(async move {
            let s = stream(&format!("{ns}-w{w}"));
            let mut decided = Vec::new();
            let mut previous: Option<Option<Position>> = None;
            for op in mine {
                // Read the decision model: everything the query selects,
                // up to the position the read reached.
                let filter = GlobalFilter::all()
                    .stream_prefix(&ns)
                    .query(Query::tags([tags[op.query].clone()]));
                let mut from = start;
                let next = loop {
                    let page = store.read_all(from, &filter, 1000).await.expect("read");
                    from = page.next;
                    if page.is_end {
                        break page.next;
                    }
                };
                let fresh = next.value().checked_sub(1).map(Position);
                let after = match previous {
                    Some(p) if op.stale => p,
                    _ => fresh,
                };
                previous = Some(fresh);
                let e = EventData::new("Op", "{}").with_tag(tags[op.tag].clone());
                let id = e.id;
                let mut req = AppendRequest::new(s.clone(), ExpectedVersion::Any, vec![e]);
                if op.conditional {
                    req = req.condition(AppendCondition {
                        query: Query::tags([tags[op.query].clone()]),
                        after,
                    });
                }
                let result = match store.append_with(req).await {
                    Ok(r) => Ok(r.last_position),
                    Err(EventStoreError::ConditionFailed { conflict, after: a }) => {
                        assert_eq!(a, after);
                        Err(conflict)
                    }
                    Err(e) => panic!("unexpected append error: {e}"),
                };
                decided.push(Decided {
                    op,
                    after,
                    id,
                    result,
                });
            }
            decided
        }));
    }
    let mut decided = Vec::new();
    for t in tasks {
        decided.extend(t.await.expect("writer"));
    }
    let log = read_all_of(&*store, &GlobalFilter::all().stream_prefix(&ns)).await;
    let at: HashMap<Position, &RecordedEvent> = log.iter().map(|e| (e.position, e)).collect();
    let has = |e: &RecordedEvent, t: usize| e.tags.iter().any(|x| *x == tags[t]);
    let ids: HashSet<_> = log.iter().map(|e| e.id).collect();
    assert_eq!(ids.len(), log.len(), "no event stored twice");
    for d in &decided {
        match d.result {
            Ok(pos) => {
                let e = at.get(&pos).expect("a success is in the log");
                assert_eq!(e.id, d.id);
                if d.op.conditional {
                    let stale = log.iter().find(|x| {
                        x.position < pos
                            && d.after.is_none_or(|a| x.position > a)
                            && has(x, d.op.query)
                    });
                    assert!(
                        stale.is_none(),
                        "{d:?} succeeded although {stale:?} matched after its read position"
                    );
                }
            }
            Err(conflict) => {
                assert!(!ids.contains(&d.id), "a failed append stored nothing");
                let e = at
                    .get(&conflict)
                    .expect("the conflict names a stored event");
                assert!(has(e, d.op.query), "the conflict matches the query");
                assert!(d.after.is_none_or(|a| conflict > a));
            }
        }
    }
    assert_eq!(
        log.len(),
        decided.iter().filter(|d| d.result.is_ok()).count()
    );
    if writers_used == 1 {
        // Sequential: replay the decisions in order against the list of
        // stored events; a conditional op fails iff a stored event carries
        // its query tag after its read position.
        let mut model: Vec<(Position, usize)> = Vec::new();
        for d in &decided {
            let predicted_fail = d.op.conditional
                && model
                    .iter()
                    .any(|&(p, t)| t == d.op.query && d.after.is_none_or(|a| p > a));
            assert_eq!(
                d.result.is_err(),
                predicted_fail,
                "the outcome of {d:?} differs from the model {model:?}"
            );
            if let Ok(p) = d.result {
                model.push((p, d.op.tag));
            }
        }
    }
}

/// A subscription from the start catches up, switches to live while
/// writers append concurrently, and delivers every event exactly once, in
/// commit order.
pub async fn catch_up_then_live_delivers_every_event_once_in_order_under_concurrent_appends<
    F: EventStoreFactory,
>(
    f: &F,
) -> Outcome {
    let store = f.open().await;
    let ns = ns();
    let start = store.head().await.expect("head");
    for n in 0..200u64 {
        store
            .append(
                &stream(&format!("{ns}-pre-{}", n % 4)),
                ExpectedVersion::Any,
                vec![ev("Pre", n)],
            )
            .await
            .expect("pre-append");
    }
    const WRITERS: u64 = 4;
    const PER_WRITER: u64 = 150;
    let go = Arc::new(tokio::sync::Barrier::new(WRITERS as usize + 1));
    let mut writers = Vec::new();
    for w in 0..WRITERS {
        let store = Arc::clone(&store);
        let ns = ns.clone();
        let go = Arc::clone(&go);
        writers.push(tokio::spawn(async move {
            go.wait().await;
            let s = stream(&format!("{ns}-live-{w}"));
            let mut n = 0;
            while n < PER_WRITER {
                let k = (n % 3 + 1).min(PER_WRITER - n);
                let evs = (0..k).map(|i| ev("Live", w * 1000 + n + i)).collect();
                store
                    .append(&s, ExpectedVersion::Any, evs)
                    .await
                    .expect("live append");
                n += k;
                tokio::task::yield_now().await;
            }
        }));
    }
    go.wait().await;
    // Subscribe while the writers run: the backlog is being caught up as
    // new events commit.
    let mut sub = store
        .subscribe(
            SubscribeFrom::Position(start),
            GlobalFilter::all().stream_prefix(&ns),
        )
        .await
        .expect("subscribe");
    let total = 200 + WRITERS * PER_WRITER;
    let mut got = Vec::new();
    while (got.len() as u64) < total {
        match tokio::time::timeout(WAIT, sub.next()).await {
            Ok(Some(Ok(e))) => got.push(e),
            Ok(Some(Err(e))) => panic!("subscription failed: {e}"),
            Ok(None) => panic!("subscription ended"),
            Err(_) => panic!("only {} of {total} events within {WAIT:?}", got.len()),
        }
    }
    for w in writers {
        w.await.expect("writer");
    }
    assert!(
        got.windows(2).all(|w| w[0].position < w[1].position),
        "commit order, no duplicate"
    );
    let all = read_all_of(&*store, &GlobalFilter::all().stream_prefix(&ns)).await;
    assert_eq!(got, all, "exactly the committed events");
    // Nothing more arrives (no duplicate after the last one).
    let extra = tokio::time::timeout(Duration::from_millis(200), sub.next()).await;
    assert!(extra.is_err(), "unexpected extra item {extra:?}");
    Outcome::Passed
}

async fn next_event(sub: &mut wharf_eventstore::EventSubscription) -> RecordedEvent {
    tokio::time::timeout(WAIT, sub.next())
        .await
        .expect("an event in time")
        .expect("not ended")
        .expect("no error")
}

/// `SubscribeFrom::End` skips the backlog; a filtered subscription gets
/// only matching events.
pub async fn subscription_from_end_and_filtered_subscription<F: EventStoreFactory>(
    f: &F,
) -> Outcome {
    let store = f.open().await;
    let ns = ns();
    let s = stream(&format!("{ns}-s"));
    store
        .append(&s, ExpectedVersion::Any, vec![ev("Old", 0)])
        .await
        .expect("old");
    let mut from_end = store
        .subscribe(SubscribeFrom::End, GlobalFilter::all().stream_prefix(&ns))
        .await
        .expect("subscribe end");
    let mut typed = store
        .subscribe(
            SubscribeFrom::Start,
            GlobalFilter::all()
                .stream_prefix(&ns)
                .event_types(["Wanted"]),
        )
        .await
        .expect("subscribe typed");
    let r = store
        .append(
            &s,
            ExpectedVersion::Any,
            vec![ev("Other", 1), ev("Wanted", 2)],
        )
        .await
        .expect("new");
    let a = next_event(&mut from_end).await;
    assert_eq!(a.event_type, "Other");
    assert_eq!(a.position, r.first_position);
    assert_eq!(next_event(&mut from_end).await.event_type, "Wanted");
    let t = next_event(&mut typed).await;
    assert_eq!((t.event_type.as_str(), t.version), ("Wanted", 2));
    Outcome::Passed
}

/// Invalid names, versions, positions and sizes get typed errors, and none
/// of it is stored.
pub async fn bad_input_is_refused_with_typed_errors_and_nothing_is_stored<F: EventStoreFactory>(
    f: &F,
) -> Outcome {
    let store = f.open().await;
    let limits = store.limits();
    let ns = ns();
    let s = stream(&format!("{ns}-bad"));
    for bad in ["", "a\nb", "nul\0", "$all", "$snapshot-"] {
        assert!(
            matches!(
                StreamId::new(bad),
                Err(EventStoreError::InvalidArgument {
                    field: "stream",
                    ..
                })
            ),
            "stream name {bad:?}"
        );
    }
    assert!(StreamId::new("x".repeat(256)).is_err());
    let invalid = |r: Result<wharf_eventstore::AppendResult, EventStoreError>, what: &str| match r {
        Err(EventStoreError::InvalidArgument { .. }) => {}
        other => panic!("{what}: expected InvalidArgument, got {other:?}"),
    };
    let one = |e: EventData| vec![e];
    invalid(
        store
            .append(&s, ExpectedVersion::Any, one(EventData::new("", "x")))
            .await,
        "empty type",
    );
    invalid(
        store
            .append(&s, ExpectedVersion::Any, one(EventData::new("A\u{7}", "x")))
            .await,
        "control character in type",
    );
    invalid(
        store
            .append(
                &s,
                ExpectedVersion::Any,
                one(EventData::new("$snapshot", "x")),
            )
            .await,
        "system type on a user stream",
    );
    invalid(
        store
            .append(
                &s,
                ExpectedVersion::Any,
                one(EventData::new("T", "x").with_tag("")),
            )
            .await,
        "empty tag",
    );
    invalid(
        store
            .append(
                &s,
                ExpectedVersion::Any,
                one(EventData::new("T", "x").with_schema_version(0)),
            )
            .await,
        "schema version 0",
    );
    let mut many_tags = EventData::new("T", "x");
    for i in 0..=limits.max_tags_per_event {
        many_tags = many_tags.with_tag(format!("t{i}"));
    }
    invalid(
        store.append(&s, ExpectedVersion::Any, one(many_tags)).await,
        "too many tags",
    );
    invalid(
        store.append(&s, ExpectedVersion::Any, vec![]).await,
        "no events",
    );
    invalid(
        store
            .append(&s, ExpectedVersion::Exact(MAX_VERSION + 1), one(ev("T", 0)))
            .await,
        "overflowing expected version",
    );
    invalid(
        store
            .append(&s, ExpectedVersion::Exact(u64::MAX), one(ev("T", 0)))
            .await,
        "u64::MAX expected version",
    );
    invalid(
        store
            .append_with(
                AppendRequest::new(s.clone(), ExpectedVersion::Any, one(ev("T", 0)))
                    .condition(AppendCondition::new(Query::tags(["ok"])).after(Position(u64::MAX))),
            )
            .await,
        "overflowing condition position",
    );
    // Oversized: one byte over the event limit; an append over its limit.
    let over = EventData::new("T", vec![b'x'; limits.max_event_bytes]);
    match store.append(&s, ExpectedVersion::Any, one(over)).await {
        Err(EventStoreError::TooLarge {
            what: "event",
            size,
            max,
        }) => {
            assert_eq!(max, limits.max_event_bytes);
            assert_eq!(size, limits.max_event_bytes + 1);
        }
        other => panic!("oversized event: {other:?}"),
    }
    let per = limits.max_event_bytes - 1;
    let n = limits.max_append_bytes / limits.max_event_bytes + 2;
    if n <= limits.max_events_per_append {
        let big: Vec<EventData> = (0..n)
            .map(|_| EventData::new("T", vec![b'y'; per - 1]))
            .collect();
        assert!(matches!(
            store.append(&s, ExpectedVersion::Any, big).await,
            Err(EventStoreError::TooLarge { what: "append", .. })
        ));
    }
    let too_many: Vec<EventData> = (0..=limits.max_events_per_append)
        .map(|_| EventData::new("T", ""))
        .collect();
    assert!(matches!(
        store.append(&s, ExpectedVersion::Any, too_many).await,
        Err(EventStoreError::TooLarge {
            what: "events in one append",
            ..
        })
    ));
    // Reads with out-of-range versions and positions.
    assert!(matches!(
        store
            .read_stream(
                &s,
                ReadStream::forwards().from(StreamFrom::Version(u64::MAX))
            )
            .await,
        Err(EventStoreError::InvalidArgument { .. })
    ));
    assert!(matches!(
        store
            .read_all(Position(u64::MAX), &GlobalFilter::all(), 1)
            .await,
        Err(EventStoreError::InvalidArgument { .. })
    ));
    assert!(matches!(
        store
            .subscribe(
                SubscribeFrom::Position(Position(u64::MAX)),
                GlobalFilter::all()
            )
            .await,
        Err(EventStoreError::InvalidArgument { .. })
    ));
    assert!(matches!(
        store
            .set_stream_metadata(&s, StreamMetadata::new().with_max_count(0))
            .await,
        Err(EventStoreError::InvalidArgument { .. })
    ));
    assert!(matches!(
        store
            .set_stream_metadata(&s, StreamMetadata::new().with_truncate_before(u64::MAX))
            .await,
        Err(EventStoreError::InvalidArgument { .. })
    ));
    // Nothing of it was stored.
    let info = store.stream_info(&s).await.expect("info");
    assert_eq!(info.version, CurrentVersion::NoStream);
    assert_eq!(info.metadata, StreamMetadata::default());
    assert!(
        read_all_of(&*store, &GlobalFilter::all().stream_prefix(&ns))
            .await
            .is_empty()
    );
    // The largest event is accepted whole.
    let max = EventData::new("T", vec![b'z'; limits.max_event_bytes - 1]);
    store
        .append(&s, ExpectedVersion::NoStream, vec![max])
        .await
        .expect("an event of exactly the maximum size");
    let got = store
        .read_stream(&s, ReadStream::forwards())
        .await
        .expect("read");
    assert_eq!(got[0].payload.len(), limits.max_event_bytes - 1);
    Outcome::Passed
}

/// A stream never written reads as not found.
pub async fn unknown_stream_reads_not_found<F: EventStoreFactory>(f: &F) -> Outcome {
    let store = f.open().await;
    let s = stream(&format!("{}-nobody", ns()));
    match store.read_stream(&s, ReadStream::forwards()).await {
        Err(EventStoreError::StreamNotFound { stream }) => assert_eq!(stream, s),
        other => panic!("expected StreamNotFound, got {other:?}"),
    }
    let info = store.stream_info(&s).await.expect("info");
    assert_eq!(info.version, CurrentVersion::NoStream);
    assert!(matches!(
        store.delete_stream(&s, ExpectedVersion::Any).await,
        Err(EventStoreError::StreamNotFound { .. })
    ));
    Outcome::Passed
}

/// Metadata shapes stream reads; the global log keeps every event.
pub async fn truncate_before_and_max_count_hide_old_versions_from_stream_reads<
    F: EventStoreFactory,
>(
    f: &F,
) -> Outcome {
    let store = f.open().await;
    let ns = ns();
    let s = stream(&format!("{ns}-meta"));
    let evs: Vec<EventData> = (0..10).map(|n| ev("T", n)).collect();
    store
        .append(&s, ExpectedVersion::NoStream, evs)
        .await
        .expect("append");
    let m = StreamMetadata::new().with_truncate_before(4);
    store.set_stream_metadata(&s, m).await.expect("set tb");
    assert_eq!(store.stream_info(&s).await.expect("info").metadata, m);
    assert_eq!(versions(&*store, &s).await, (4..10).collect::<Vec<_>>());
    let back: Vec<u64> = store
        .read_stream(&s, ReadStream::backwards())
        .await
        .expect("back")
        .iter()
        .map(|e| e.version)
        .collect();
    assert_eq!(back, (4..10).rev().collect::<Vec<_>>());
    let m = StreamMetadata::new()
        .with_max_count(3)
        .with_max_age(Duration::from_secs(3600));
    store.set_stream_metadata(&s, m).await.expect("set count");
    assert_eq!(versions(&*store, &s).await, vec![7, 8, 9]);
    store
        .append(&s, ExpectedVersion::Exact(9), vec![ev("T", 10)])
        .await
        .expect("append after metadata");
    assert_eq!(versions(&*store, &s).await, vec![8, 9, 10]);
    let info = store.stream_info(&s).await.expect("info");
    assert_eq!(info.version, CurrentVersion::Version(10));
    assert_eq!(info.metadata, m);
    assert_eq!(
        read_all_of(&*store, &GlobalFilter::all().stream_prefix(&ns))
            .await
            .len(),
        11,
        "the global log keeps every event"
    );
    Outcome::Passed
}

/// Soft delete: reads say not found, the version goes on after an append
/// recreates the stream, and old events stay hidden.
pub async fn soft_delete_hides_the_stream_until_an_append_recreates_it<F: EventStoreFactory>(
    f: &F,
) -> Outcome {
    let store = f.open().await;
    let s = stream(&format!("{}-soft", ns()));
    store
        .append(
            &s,
            ExpectedVersion::NoStream,
            vec![ev("T", 0), ev("T", 1), ev("T", 2)],
        )
        .await
        .expect("append");
    assert!(matches!(
        store.delete_stream(&s, ExpectedVersion::Exact(1)).await,
        Err(EventStoreError::WrongExpectedVersion { .. })
    ));
    store
        .delete_stream(&s, ExpectedVersion::Exact(2))
        .await
        .expect("delete");
    assert!(matches!(
        store.read_stream(&s, ReadStream::forwards()).await,
        Err(EventStoreError::StreamNotFound { .. })
    ));
    let info = store.stream_info(&s).await.expect("info");
    assert!(info.soft_deleted);
    assert_eq!(info.version, CurrentVersion::Version(2));
    assert_eq!(info.metadata.truncate_before, Some(3));
    assert!(matches!(
        store.delete_stream(&s, ExpectedVersion::Any).await,
        Err(EventStoreError::StreamNotFound { .. })
    ));
    assert!(matches!(
        store
            .append(&s, ExpectedVersion::StreamExists, vec![ev("T", 3)])
            .await,
        Err(EventStoreError::WrongExpectedVersion { .. })
    ));
    let r = store
        .append(&s, ExpectedVersion::NoStream, vec![ev("T", 3)])
        .await
        .expect("recreate");
    assert_eq!(r.first_version, 3, "numbering goes on");
    assert_eq!(versions(&*store, &s).await, vec![3]);
    assert!(!store.stream_info(&s).await.expect("info").soft_deleted);
    Outcome::Passed
}

/// A tombstoned stream can never be read, appended to or changed again.
pub async fn tombstone_refuses_reads_writes_and_metadata_for_ever<F: EventStoreFactory>(
    f: &F,
) -> Outcome {
    let store = f.open().await;
    let ns = ns();
    let s = stream(&format!("{ns}-gone"));
    store
        .append(&s, ExpectedVersion::NoStream, vec![ev("T", 0)])
        .await
        .expect("append");
    assert!(matches!(
        store.tombstone_stream(&s, ExpectedVersion::NoStream).await,
        Err(EventStoreError::WrongExpectedVersion { .. })
    ));
    store
        .tombstone_stream(&s, ExpectedVersion::Exact(0))
        .await
        .expect("tombstone");
    let deleted = |r: Result<(), EventStoreError>, what: &str| match r {
        Err(EventStoreError::StreamDeleted { stream }) => assert_eq!(stream, s, "{what}"),
        other => panic!("{what}: expected StreamDeleted, got {other:?}"),
    };
    deleted(
        store
            .read_stream(&s, ReadStream::forwards())
            .await
            .map(|_| ()),
        "read",
    );
    deleted(
        store
            .append(&s, ExpectedVersion::Any, vec![ev("T", 1)])
            .await
            .map(|_| ()),
        "append",
    );
    deleted(
        store
            .append(&s, ExpectedVersion::NoStream, vec![ev("T", 1)])
            .await
            .map(|_| ()),
        "append NoStream",
    );
    deleted(
        store
            .set_stream_metadata(&s, StreamMetadata::new())
            .await
            .map(|_| ()),
        "metadata",
    );
    deleted(
        store
            .tombstone_stream(&s, ExpectedVersion::Any)
            .await
            .map(|_| ()),
        "tombstone again",
    );
    deleted(
        store
            .delete_stream(&s, ExpectedVersion::Any)
            .await
            .map(|_| ()),
        "soft delete",
    );
    deleted(store.stream_info(&s).await.map(|_| ()), "info");
    // A stream can be tombstoned before it exists.
    let never = stream(&format!("{ns}-never"));
    store
        .tombstone_stream(&never, ExpectedVersion::NoStream)
        .await
        .expect("tombstone a new name");
    assert!(matches!(
        store
            .append(&never, ExpectedVersion::NoStream, vec![ev("T", 0)])
            .await,
        Err(EventStoreError::StreamDeleted { .. })
    ));
    assert_eq!(
        read_all_of(&*store, &GlobalFilter::all().stream_prefix(&ns))
            .await
            .len(),
        1,
        "the tombstoned stream's event stays in the global log"
    );
    Outcome::Passed
}

/// Stream names by prefix, in byte order, paged with a cursor.
pub async fn list_streams_by_prefix_with_paging<F: EventStoreFactory>(f: &F) -> Outcome {
    let store = f.open().await;
    let ns = ns();
    for name in ["b-2", "a-1", "b-1", "a-2", "b-3"] {
        store
            .append(
                &stream(&format!("{ns}-{name}")),
                ExpectedVersion::NoStream,
                vec![ev("T", 0)],
            )
            .await
            .expect("append");
    }
    let names = |v: Vec<StreamId>| {
        v.iter()
            .map(|s| s.as_str()[ns.len() + 1..].to_owned())
            .collect::<Vec<_>>()
    };
    let b = format!("{ns}-b-");
    assert_eq!(
        names(store.list_streams(&b, None, 10).await.expect("list")),
        ["b-1", "b-2", "b-3"]
    );
    let page1 = store.list_streams(&b, None, 2).await.expect("page 1");
    assert_eq!(names(page1.clone()), ["b-1", "b-2"]);
    let page2 = store
        .list_streams(&b, page1.last(), 2)
        .await
        .expect("page 2");
    assert_eq!(names(page2), ["b-3"]);
    assert_eq!(
        store
            .list_streams(&format!("{ns}-"), None, 100)
            .await
            .expect("all")
            .len(),
        5
    );
    Outcome::Passed
}

/// Closing and reopening keeps events, versions, metadata and deletions.
pub async fn restart_keeps_events_versions_and_metadata<F: EventStoreFactory>(f: &F) -> Outcome {
    if !f.persistent() {
        return Outcome::Skipped("the store is not persistent".into());
    }
    let ns = ns();
    let s = stream(&format!("{ns}-keep"));
    let gone = stream(&format!("{ns}-gone"));
    let ids = {
        let store = f.open().await;
        let evs: Vec<EventData> = (0..5)
            .map(|n| ev("T", n).with_tag(format!("{ns}:k")))
            .collect();
        let ids: Vec<_> = evs.iter().map(|e| e.id).collect();
        store
            .append(&s, ExpectedVersion::NoStream, evs)
            .await
            .expect("append");
        store
            .set_stream_metadata(&s, StreamMetadata::new().with_truncate_before(1))
            .await
            .expect("metadata");
        store
            .append(&gone, ExpectedVersion::NoStream, vec![ev("T", 0)])
            .await
            .expect("append gone");
        store
            .tombstone_stream(&gone, ExpectedVersion::Any)
            .await
            .expect("tombstone");
        store.close().await.expect("close");
        ids
    };
    let store = f.open().await;
    let got = store
        .read_stream(&s, ReadStream::forwards())
        .await
        .expect("read after restart");
    assert_eq!(
        got.iter().map(|e| e.id).collect::<Vec<_>>(),
        ids[1..].to_vec()
    );
    assert_eq!(got[0].version, 1);
    assert_eq!(
        store.stream_info(&s).await.expect("info").metadata,
        StreamMetadata::new().with_truncate_before(1)
    );
    store
        .append(&s, ExpectedVersion::Exact(4), vec![ev("T", 5)])
        .await
        .expect("versions go on");
    assert!(matches!(
        store.read_stream(&gone, ReadStream::forwards()).await,
        Err(EventStoreError::StreamDeleted { .. })
    ));
    // The condition index came back too.
    assert!(matches!(
        store
            .append_with(
                AppendRequest::new(s.clone(), ExpectedVersion::Any, vec![ev("T", 6)])
                    .condition(AppendCondition::new(Query::tags([format!("{ns}:k")])))
            )
            .await,
        Err(EventStoreError::ConditionFailed { .. })
    ));
    Outcome::Passed
}

/// After `close`, subscriptions end and calls fail with `Closed`.
pub async fn close_ends_subscriptions_and_refuses_calls<F: EventStoreFactory>(f: &F) -> Outcome {
    let store = f.open().await;
    let s = stream(&format!("{}-close", ns()));
    let mut sub = store
        .subscribe(SubscribeFrom::End, GlobalFilter::all())
        .await
        .expect("subscribe");
    store.close().await.expect("close");
    match tokio::time::timeout(WAIT, sub.next()).await {
        Ok(None) => {}
        other => panic!("expected the subscription to end, got {other:?}"),
    }
    assert!(matches!(
        store
            .append(&s, ExpectedVersion::Any, vec![ev("T", 0)])
            .await,
        Err(EventStoreError::Closed)
    ));
    assert!(matches!(
        store.read_stream(&s, ReadStream::forwards()).await,
        Err(EventStoreError::Closed)
    ));
    Outcome::Passed
}
