//! Projections on the embedded store: several in parallel under concurrent
//! appends, each event applied exactly once and in order; a durable
//! checkpoint stored with the read model resumes after a restart without
//! re-applying; a failed batch is retried whole from the checkpoint without
//! holding up the others; a rebuild equals the live read model; lag is
//! reported in the status and the metrics.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::Semaphore;
use wharf_eventstore::projection::{
    Projection, ProjectionError, ProjectionRunner, ProjectionState,
};
use wharf_eventstore::{
    EmbeddedStore, EventData, EventStore, ExpectedVersion, GlobalFilter, Position, RecordedEvent,
    StreamId,
};

const WAIT: Duration = Duration::from_secs(20);

/// Records every event it applies (position, stream, version) and counts
/// per stream; optionally fails the first `fail_first` calls of `apply`
/// that see the event at `fail_at`, and waits for a permit per batch.
#[derive(Default)]
struct Recorder {
    filter: Option<GlobalFilter>,
    state: Mutex<State>,
    fail_at: Option<Position>,
    fail_left: AtomicUsize,
    gate: Option<Arc<Semaphore>>,
    batches: AtomicU64,
}

#[derive(Default, Clone, PartialEq, Eq, Debug)]
struct State {
    applied: Vec<(u64, String, u64)>,
    per_stream: BTreeMap<String, u64>,
    checkpoint: Position,
}

#[async_trait]
impl Projection for Recorder {
    fn filter(&self) -> GlobalFilter {
        self.filter.clone().unwrap_or_else(GlobalFilter::all)
    }
    async fn checkpoint(&self) -> Result<Position, ProjectionError> {
        Ok(self.state.lock().unwrap().checkpoint)
    }
    async fn apply(&self, events: &[RecordedEvent], next: Position) -> Result<(), ProjectionError> {
        if let Some(gate) = &self.gate {
            gate.acquire().await.expect("gate open").forget();
        }
        self.batches.fetch_add(1, Ordering::SeqCst);
        if let Some(at) = self.fail_at {
            if events.iter().any(|e| e.position == at)
                && self
                    .fail_left
                    .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                    .is_ok()
            {
                return Err(format!("read model refused position {at}").into());
            }
        }
        let mut s = self.state.lock().unwrap();
        for e in events {
            s.applied
                .push((e.position.value(), e.stream.to_string(), e.version));
            *s.per_stream.entry(e.stream.to_string()).or_default() += 1;
        }
        s.checkpoint = next;
        Ok(())
    }
    async fn reset(&self) -> Result<(), ProjectionError> {
        *self.state.lock().unwrap() = State::default();
        Ok(())
    }
}

impl Recorder {
    fn snapshot(&self) -> State {
        self.state.lock().unwrap().clone()
    }
}

async fn append(store: &dyn EventStore, stream: &str, n: usize) {
    let id = StreamId::new(stream).expect("stream name");
    for i in 0..n {
        let e = EventData::new("Happened", format!("{{\"i\":{i}}}"));
        store
            .append(&id, ExpectedVersion::Any, vec![e])
            .await
            .expect("append");
    }
}

/// Every event passing `filter`, in commit order, as (position, stream, version).
async fn expected(store: &dyn EventStore, filter: &GlobalFilter) -> Vec<(u64, String, u64)> {
    let mut out = Vec::new();
    let mut from = Position::START;
    loop {
        let page = store.read_all(from, filter, 1000).await.expect("read_all");
        out.extend(
            page.events
                .iter()
                .map(|e| (e.position.value(), e.stream.to_string(), e.version)),
        );
        if page.is_end {
            return out;
        }
        from = page.next;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn projections_in_parallel_apply_every_matching_event_once_in_order_under_concurrent_appends()
{
    let store: Arc<dyn EventStore> = Arc::new(EmbeddedStore::temporary().await.expect("store"));
    append(&*store, "order-0", 20).await; // some history to catch up on
    let all = Arc::new(Recorder::default());
    let orders = Arc::new(Recorder {
        filter: Some(GlobalFilter::all().stream_prefix("order-")),
        ..Recorder::default()
    });
    let runner = ProjectionRunner::new(store.clone()).batch_size(7);
    let h_all = runner.start("all", all.clone());
    let h_orders = runner.start("orders", orders.clone());

    let writers: Vec<_> = (0..4)
        .map(|w| {
            let store = store.clone();
            tokio::spawn(async move {
                let prefix = if w % 2 == 0 { "order" } else { "payment" };
                append(&*store, &format!("{prefix}-{w}"), 150).await;
            })
        })
        .collect();
    for w in writers {
        w.await.expect("writer");
    }
    tokio::time::timeout(WAIT, h_all.catch_up())
        .await
        .expect("caught up in time")
        .expect("caught up");
    tokio::time::timeout(WAIT, h_orders.catch_up())
        .await
        .expect("caught up in time")
        .expect("caught up");

    let want_all = expected(&*store, &GlobalFilter::all()).await;
    let want_orders = expected(&*store, &GlobalFilter::all().stream_prefix("order-")).await;
    assert_eq!(want_all.len(), 620);
    assert_eq!(want_orders.len(), 320);
    assert_eq!(
        all.snapshot().applied,
        want_all,
        "all: once each, in commit order"
    );
    assert_eq!(
        orders.snapshot().applied,
        want_orders,
        "orders: once each, in commit order"
    );
    assert!(
        orders.batches.load(Ordering::SeqCst) >= 320 / 7,
        "batches hold at most batch_size events"
    );
    let status = h_all.status();
    assert_eq!(status.state, ProjectionState::Running);
    assert_eq!(status.applied, 620);
    assert_eq!(status.lag, 0);
    h_all.stop().await;
    h_orders.stop().await;
}

/// A read model kept in one JSON file with its checkpoint, replaced
/// atomically (write a temporary file, fsync, rename): after a restart it
/// resumes where the file says, so nothing is applied twice.
struct FileModel {
    path: PathBuf,
    /// Events applied per process lifetime of this model (not persisted).
    applied_now: AtomicU64,
}

#[derive(serde::Serialize, serde::Deserialize, Default)]
struct FileState {
    checkpoint: u64,
    /// Event id → times applied.
    seen: HashMap<String, u32>,
}

impl FileModel {
    fn load(&self) -> FileState {
        match std::fs::read(&self.path) {
            Ok(b) => serde_json::from_slice(&b).expect("model file"),
            Err(_) => FileState::default(),
        }
    }
    fn store(&self, s: &FileState) -> std::io::Result<()> {
        let tmp = self.path.with_extension("tmp");
        let mut f = std::fs::File::create(&tmp)?;
        std::io::Write::write_all(&mut f, &serde_json::to_vec(s).expect("json"))?;
        f.sync_all()?;
        std::fs::rename(&tmp, &self.path)
    }
}

#[async_trait]
impl Projection for FileModel {
    async fn checkpoint(&self) -> Result<Position, ProjectionError> {
        Ok(Position(self.load().checkpoint))
    }
    async fn apply(&self, events: &[RecordedEvent], next: Position) -> Result<(), ProjectionError> {
        let mut s = self.load();
        for e in events {
            *s.seen.entry(e.id.to_string()).or_default() += 1;
        }
        s.checkpoint = next.value();
        self.store(&s)?;
        self.applied_now
            .fetch_add(events.len() as u64, Ordering::SeqCst);
        Ok(())
    }
    async fn reset(&self) -> Result<(), ProjectionError> {
        self.store(&FileState::default())?;
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_durable_checkpoint_resumes_after_a_restart_without_applying_anything_twice() {
    let dir = tempfile::tempdir().expect("dir");
    let model_path = dir.path().join("model.json");
    let store_dir = dir.path().join("store");

    let store: Arc<dyn EventStore> = Arc::new(EmbeddedStore::open(&store_dir).await.expect("open"));
    append(&*store, "account-1", 40).await;
    let model = Arc::new(FileModel {
        path: model_path.clone(),
        applied_now: AtomicU64::new(0),
    });
    let h = ProjectionRunner::new(store.clone()).start("balances", model.clone());
    tokio::time::timeout(WAIT, h.catch_up())
        .await
        .expect("in time")
        .expect("caught up");
    h.stop().await;
    store.close().await.expect("close");
    drop(store);
    assert_eq!(model.applied_now.load(Ordering::SeqCst), 40);

    // Restart: the store and the model from disk, more events meanwhile.
    let store: Arc<dyn EventStore> =
        Arc::new(EmbeddedStore::open(&store_dir).await.expect("reopen"));
    append(&*store, "account-2", 25).await;
    let model = Arc::new(FileModel {
        path: model_path,
        applied_now: AtomicU64::new(0),
    });
    let h = ProjectionRunner::new(store.clone()).start("balances", model.clone());
    let checkpoint = tokio::time::timeout(WAIT, h.catch_up())
        .await
        .expect("in time")
        .expect("caught up");
    assert_eq!(
        model.applied_now.load(Ordering::SeqCst),
        25,
        "only the events after the stored checkpoint are applied after the restart"
    );
    let state = model.load();
    assert_eq!(state.seen.len(), 65);
    assert!(
        state.seen.values().all(|&n| n == 1),
        "every event applied exactly once"
    );
    assert_eq!(state.checkpoint, checkpoint.value());
    h.stop().await;
    store.close().await.expect("close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_batch_is_retried_whole_from_the_checkpoint_and_others_go_on() {
    let store: Arc<dyn EventStore> = Arc::new(EmbeddedStore::temporary().await.expect("store"));
    append(&*store, "order-1", 30).await;
    let at = expected(&*store, &GlobalFilter::all()).await[17].0;
    let flaky = Arc::new(Recorder {
        fail_at: Some(Position(at)),
        fail_left: AtomicUsize::new(2),
        ..Recorder::default()
    });
    let steady = Arc::new(Recorder::default());
    let runner = ProjectionRunner::new(store.clone()).batch_size(5);
    let h_flaky = runner.start("flaky", flaky.clone());
    let h_steady = runner.start("steady", steady.clone());
    tokio::time::timeout(WAIT, h_steady.catch_up())
        .await
        .expect("the steady projection is not held up")
        .expect("caught up");
    tokio::time::timeout(WAIT, h_flaky.catch_up())
        .await
        .expect("the flaky projection recovers")
        .expect("caught up");
    let want = expected(&*store, &GlobalFilter::all()).await;
    assert_eq!(
        flaky.snapshot().applied,
        want,
        "no event lost or applied twice"
    );
    assert_eq!(steady.snapshot().applied, want);
    let status = h_flaky.status();
    assert_eq!(status.failures, 2);
    assert_eq!(status.state, ProjectionState::Running);
    assert_eq!(h_steady.status().failures, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebuild_from_zero_equals_the_live_read_model() {
    let store: Arc<dyn EventStore> = Arc::new(EmbeddedStore::temporary().await.expect("store"));
    let live = Arc::new(Recorder::default());
    let runner = ProjectionRunner::new(store.clone()).batch_size(16);
    let h = runner.start("live", live.clone());
    // Built live, while events arrive.
    for s in 0..5 {
        append(&*store, &format!("cart-{s}"), 30).await;
    }
    tokio::time::timeout(WAIT, h.catch_up())
        .await
        .expect("in time")
        .expect("caught up");
    let built_live = live.snapshot();
    assert_eq!(built_live.applied.len(), 150);

    h.rebuild().await.expect("rebuild");
    tokio::time::timeout(WAIT, h.catch_up())
        .await
        .expect("in time")
        .expect("rebuilt");
    assert_eq!(
        live.snapshot(),
        built_live,
        "the rebuild replays to the same model"
    );
    assert_eq!(h.status().applied, 150, "counted from the rebuild");

    // And a fresh projection from zero gets there too.
    let fresh = Arc::new(Recorder::default());
    let h2 = runner.start("fresh", fresh.clone());
    tokio::time::timeout(WAIT, h2.catch_up())
        .await
        .expect("in time")
        .expect("caught up");
    assert_eq!(fresh.snapshot(), built_live);
}

/// Captures gauges and counters registered while it is the local recorder.
#[derive(Default)]
struct Captured {
    values: Mutex<HashMap<String, Arc<AtomicU64>>>,
}

impl Captured {
    fn handle(&self, key: &metrics::Key) -> Arc<AtomicU64> {
        let labels: Vec<String> = key
            .labels()
            .map(|l| format!("{}={}", l.key(), l.value()))
            .collect();
        let name = format!("{}{{{}}}", key.name(), labels.join(","));
        self.values.lock().unwrap().entry(name).or_default().clone()
    }
    fn gauge(&self, name: &str) -> f64 {
        let v = self.values.lock().unwrap()[name].load(Ordering::SeqCst);
        f64::from_bits(v)
    }
    fn counter(&self, name: &str) -> u64 {
        self.values.lock().unwrap()[name].load(Ordering::SeqCst)
    }
}

impl metrics::Recorder for Captured {
    fn describe_counter(
        &self,
        _: metrics::KeyName,
        _: Option<metrics::Unit>,
        _: metrics::SharedString,
    ) {
    }
    fn describe_gauge(
        &self,
        _: metrics::KeyName,
        _: Option<metrics::Unit>,
        _: metrics::SharedString,
    ) {
    }
    fn describe_histogram(
        &self,
        _: metrics::KeyName,
        _: Option<metrics::Unit>,
        _: metrics::SharedString,
    ) {
    }
    fn register_counter(&self, key: &metrics::Key, _: &metrics::Metadata<'_>) -> metrics::Counter {
        metrics::Counter::from_arc(self.handle(key))
    }
    fn register_gauge(&self, key: &metrics::Key, _: &metrics::Metadata<'_>) -> metrics::Gauge {
        metrics::Gauge::from_arc(self.handle(key))
    }
    fn register_histogram(
        &self,
        _: &metrics::Key,
        _: &metrics::Metadata<'_>,
    ) -> metrics::Histogram {
        metrics::Histogram::noop()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lag_is_reported_while_events_wait_and_is_zero_once_caught_up() {
    let store: Arc<dyn EventStore> = Arc::new(EmbeddedStore::temporary().await.expect("store"));
    append(&*store, "meter-1", 100).await;
    let gate = Arc::new(Semaphore::new(0));
    let slow = Arc::new(Recorder {
        gate: Some(gate.clone()),
        ..Recorder::default()
    });
    let captured = Arc::new(Captured::default());
    let runner = ProjectionRunner::new(store.clone()).batch_size(10);
    let h = metrics::with_local_recorder(&*captured, || runner.start("slow", slow.clone()));

    gate.add_permits(1); // one batch of 10
    let mut status = h.status();
    for _ in 0..200 {
        status = h.status();
        if status.applied == 10 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(status.applied, 10);
    assert_eq!(status.lag, 90, "90 positions wait behind the checkpoint");
    assert_eq!(
        captured.gauge("wharf_projection_lag{projection=slow}"),
        90.0
    );
    assert_eq!(
        captured.counter("wharf_projection_events_total{projection=slow}"),
        10
    );

    gate.add_permits(1000);
    tokio::time::timeout(WAIT, h.catch_up())
        .await
        .expect("in time")
        .expect("caught up");
    assert_eq!(h.status().lag, 0);
    assert_eq!(captured.gauge("wharf_projection_lag{projection=slow}"), 0.0);
    assert_eq!(
        captured.counter("wharf_projection_events_total{projection=slow}"),
        100
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closing_the_store_stops_its_projections() {
    let store: Arc<dyn EventStore> = Arc::new(EmbeddedStore::temporary().await.expect("store"));
    append(&*store, "x-1", 3).await;
    let model = Arc::new(Recorder::default());
    let h = ProjectionRunner::new(store.clone()).start("p", model.clone());
    tokio::time::timeout(WAIT, h.catch_up())
        .await
        .expect("in time")
        .expect("caught up");
    store.close().await.expect("close");
    for _ in 0..500 {
        if h.status().state == ProjectionState::Stopped {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(h.status().state, ProjectionState::Stopped);
    assert!(
        h.rebuild().await.is_err(),
        "a stopped projection refuses a rebuild"
    );
}
