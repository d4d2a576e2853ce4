//! The embedded event store against the bare `wharf-log` underneath it,
//! measured in the same run (interleaved in rounds, so both see the same
//! disk: fsync latency on a shared VM drifts by 10× within seconds), printed
//! as absolute figures and as ratios.
//!
//! ```text
//! cargo run --release -p wharf-eventstore --example eventstore_bench
//! ```
//!
//! (a) batched appends of 1,000 × 100 B events, fsync before ack: the store
//!     (one writer, four writers) vs `Log::append` of records of the same
//!     payloads (each side builds its events/records per append); and the
//!     same without fsync, where the store's own CPU cost shows;
//! (b) 64 writers each appending 1 event with `Exact(n)` to its own stream,
//!     fsync before ack, vs 64 threads each appending 1 record to the log;
//! (c) a conditional append vs a plain one (no fsync, and with fsync) on a
//!     store of 100k tagged events;
//! (d) loading a 10k-event aggregate from a snapshot plus 50 events vs
//!     replaying all 10k;
//! (e) catching up on 200k events of 100 B: `read_all`, a subscription, and
//!     the bare log read and decoded.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use wharf_eventstore::aggregate::{
    json, Aggregate, CodecError, DomainEvent, JsonSnapshots, Repository, SNAPSHOT_VERSION_METADATA,
};
use wharf_eventstore::{
    AppendCondition, AppendRequest, Durability, EmbeddedStore, EventData, EventStore,
    ExpectedVersion, GlobalFilter, Position, Query, QueryItem, StreamId, SubscribeFrom,
    SNAPSHOT_EVENT_TYPE,
};
use wharf_log::{Log, LogConfig, Record};

fn sid(s: &str) -> StreamId {
    StreamId::new(s).expect("stream name")
}

fn event_100b() -> EventData {
    EventData::new("Bench", vec![b'x'; 95])
}

/// CPU time (user + system) of this process so far, in seconds: on a
/// shared 2-core machine far steadier than wall time for CPU-bound work.
#[allow(unsafe_code)] // audited: one libc call, see SAFETY
fn cpu_secs() -> f64 {
    let mut ru = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage writes a full `rusage` into the pointer we pass.
    let rc = unsafe { libc::getrusage(libc::RUSAGE_SELF, ru.as_mut_ptr()) };
    if rc != 0 {
        return f64::NAN;
    }
    // SAFETY: initialised by the successful call above.
    let ru = unsafe { ru.assume_init() };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

async fn open(dir: &Path, durability: Durability) -> EmbeddedStore {
    EmbeddedStore::builder()
        .durability(durability)
        .open(dir)
        .await
        .expect("open store")
}

fn log(dir: &Path, durability: Durability) -> Arc<Log> {
    let cfg = LogConfig::builder()
        .durability(durability)
        .build()
        .expect("config");
    Arc::new(Log::open(dir, cfg).expect("open log"))
}

/// (a) batched appends, interleaved store / log rounds.
async fn batched(root: &Path, writers: usize, durability: Durability) {
    const BATCH: usize = 1000;
    const ROUNDS: usize = 8;
    const PER_ROUND: usize = 6;
    let label = if durability == Durability::Always {
        "fsync"
    } else {
        "no fsync"
    };
    let store = Arc::new(open(&root.join(format!("a-store-{writers}-{label}")), durability).await);
    let bare = log(&root.join(format!("a-log-{writers}-{label}")), durability);
    let (mut ts, mut tl) = (Duration::ZERO, Duration::ZERO);
    let mut ratios = Vec::new();
    for _ in 0..ROUNDS {
        let t = Instant::now();
        for _ in 0..PER_ROUND {
            let mut tasks = Vec::new();
            for w in 0..writers {
                let store = Arc::clone(&store);
                tasks.push(tokio::spawn(async move {
                    let events: Vec<EventData> = (0..BATCH).map(|_| event_100b()).collect();
                    store
                        .append(&sid(&format!("batch-{w}")), ExpectedVersion::Any, events)
                        .await
                        .expect("append");
                }));
            }
            for t in tasks {
                t.await.expect("writer");
            }
        }
        let s = t.elapsed();
        let t = Instant::now();
        for _ in 0..PER_ROUND {
            let threads: Vec<_> = (0..writers)
                .map(|_| {
                    let bare = Arc::clone(&bare);
                    tokio::task::spawn_blocking(move || {
                        // Built per append, as the store's events are.
                        let records: Vec<Record> = (0..BATCH)
                            .map(|i| {
                                Record::new(i as i64, Bytes::from(vec![b'x'; 100]))
                                    .with_key("batch-0")
                            })
                            .collect();
                        bare.append(&records).expect("log append")
                    })
                })
                .collect();
            for t in threads {
                t.await.expect("log writer");
            }
        }
        let l = t.elapsed();
        ts += s;
        tl += l;
        ratios.push(l.as_secs_f64() / s.as_secs_f64());
    }
    let n = (ROUNDS * PER_ROUND * BATCH * writers) as f64;
    println!(
        "(a) batches of 1,000 x 100 B, {label}, {writers} writer(s): store {:.0} k events/s, \
         bare log {:.0} k records/s; store / log = {:.2} (median of {ROUNDS} rounds); {:.1} appends per fsync",
        n / ts.as_secs_f64() / 1e3,
        n / tl.as_secs_f64() / 1e3,
        median(ratios),
        (ROUNDS * PER_ROUND * writers) as f64 / store.sync_count().max(1) as f64,
    );
}

/// (b) 64 concurrent single-event appends, interleaved store / log phases.
async fn concurrent(root: &Path) {
    const WRITERS: usize = 64;
    const PHASE: Duration = Duration::from_millis(1500);
    const ROUNDS: usize = 4;
    let store = Arc::new(open(&root.join("b-store"), Durability::Always).await);
    let bare = log(&root.join("b-log"), Durability::Always);
    let versions: Arc<Vec<AtomicU64>> = Arc::new((0..WRITERS).map(|_| AtomicU64::new(0)).collect());
    let (mut ns, mut nl, mut ts, mut tl) = (0u64, 0u64, Duration::ZERO, Duration::ZERO);
    let mut ratios = Vec::new();
    for _ in 0..ROUNDS {
        let stop = Arc::new(AtomicBool::new(false));
        let done = Arc::new(AtomicU64::new(0));
        let t = Instant::now();
        let mut tasks = Vec::new();
        for w in 0..WRITERS {
            let (store, versions, stop, done) = (
                Arc::clone(&store),
                Arc::clone(&versions),
                Arc::clone(&stop),
                Arc::clone(&done),
            );
            tasks.push(tokio::spawn(async move {
                let stream = sid(&format!("writer-{w}"));
                while !stop.load(Ordering::Relaxed) {
                    let n = versions[w].load(Ordering::Relaxed);
                    let expected = match n {
                        0 => ExpectedVersion::NoStream,
                        n => ExpectedVersion::Exact(n - 1),
                    };
                    store
                        .append(&stream, expected, vec![event_100b()])
                        .await
                        .expect("append");
                    versions[w].store(n + 1, Ordering::Relaxed);
                    done.fetch_add(1, Ordering::Relaxed);
                }
            }));
        }
        tokio::time::sleep(PHASE).await;
        stop.store(true, Ordering::Relaxed);
        for t in tasks {
            t.await.expect("writer");
        }
        let (s, a) = (t.elapsed(), done.load(Ordering::Relaxed));
        let stop = Arc::new(AtomicBool::new(false));
        let done = Arc::new(AtomicU64::new(0));
        let t = Instant::now();
        let threads: Vec<_> = (0..WRITERS)
            .map(|_| {
                let (bare, stop, done) = (Arc::clone(&bare), Arc::clone(&stop), Arc::clone(&done));
                std::thread::spawn(move || {
                    let rec = [Record::new(0, Bytes::from(vec![b'x'; 100])).with_key("writer-0")];
                    while !stop.load(Ordering::Relaxed) {
                        bare.append(&rec).expect("log append");
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                })
            })
            .collect();
        tokio::time::sleep(PHASE).await;
        stop.store(true, Ordering::Relaxed);
        for t in threads {
            t.join().expect("thread");
        }
        let (l, b) = (t.elapsed(), done.load(Ordering::Relaxed));
        ns += a;
        nl += b;
        ts += s;
        tl += l;
        ratios.push((a as f64 / s.as_secs_f64()) / (b as f64 / l.as_secs_f64()));
    }
    println!(
        "(b) 64 writers x 1 event, Exact(n), fsync: store {:.1} k appends/s ({:.1} per fsync), \
         bare log 64 threads x 1 record {:.1} k/s ({:.1} per fsync); store / log = {:.2} (median of {ROUNDS})",
        ns as f64 / ts.as_secs_f64() / 1e3,
        ns as f64 / store.sync_count().max(1) as f64,
        nl as f64 / tl.as_secs_f64() / 1e3,
        nl as f64 / bare.sync_count().max(1) as f64,
        median(ratios),
    );
}

async fn tagged_store(dir: &Path, durability: Durability) -> EmbeddedStore {
    let s = open(dir, durability).await;
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
    s
}

/// (c) conditional vs plain, alternating one of each.
async fn conditional(root: &Path, durability: Durability, label: &str, ops: usize) {
    let s = tagged_store(&root.join(format!("c-{label}")), durability).await;
    let stream = sid("enrolment");
    let (mut tp, mut tc) = (Duration::ZERO, Duration::ZERO);
    let mut ratios = Vec::new();
    let query = Query::tags(["course:7", "student:123456"]).item(QueryItem {
        types: vec!["CourseClosed".into()],
        tags: vec!["course:7".into()],
    });
    for round in 0..10 {
        let t = Instant::now();
        for _ in 0..ops / 10 {
            let e = event_100b().with_tag("course:7").with_tag("student:123456");
            s.append(&stream, ExpectedVersion::Any, vec![e])
                .await
                .expect("plain");
        }
        let p = t.elapsed();
        let t = Instant::now();
        for _ in 0..ops / 10 {
            let head = s.head().await.expect("head");
            let e = event_100b().with_tag("course:7").with_tag("student:123456");
            s.append_with(
                AppendRequest::new(stream.clone(), ExpectedVersion::Any, vec![e]).condition(
                    AppendCondition::new(query.clone()).after(Position(head.value() - 1)),
                ),
            )
            .await
            .expect("conditional");
        }
        let c = t.elapsed();
        if round > 0 {
            tp += p;
            tc += c;
            ratios.push(c.as_secs_f64() / p.as_secs_f64());
        }
    }
    let n = (ops / 10 * 9) as f64;
    println!(
        "(c) 1 event, {label}: plain {:.1} µs, conditional (head read + check) {:.1} µs; \
         conditional / plain = {:.2} (median of 9 rounds)",
        tp.as_secs_f64() / n * 1e6,
        tc.as_secs_f64() / n * 1e6,
        median(ratios),
    );
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
enum CounterEvent {
    Added { n: u64 },
}

impl DomainEvent for CounterEvent {
    fn event_type(&self) -> &'static str {
        "Added"
    }
    fn encode(&self) -> Result<Bytes, CodecError> {
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

/// (d) aggregate load.
async fn aggregate(root: &Path) {
    const EVENTS: u64 = 10_000;
    const TAIL: u64 = 50;
    let s: Arc<dyn EventStore> = Arc::new(open(&root.join("d"), Durability::Always).await);
    let plain = Repository::<Counter>::new(Arc::clone(&s));
    let snap =
        Repository::<Counter>::new(Arc::clone(&s)).snapshot_every(100, JsonSnapshots::new(1));
    let stream = plain.stream_id("c1").expect("stream");
    for b in 0..EVENTS / 100 {
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
    let mut state = Counter::default();
    for n in 0..EVENTS - TAIL {
        state.apply(&CounterEvent::Added { n });
    }
    let data = EventData::new(SNAPSHOT_EVENT_TYPE, json::encode(&state).expect("encode"))
        .with_metadata(SNAPSHOT_VERSION_METADATA, (EVENTS - TAIL - 1).to_string());
    s.append(&stream.snapshot_of(), ExpectedVersion::Any, vec![data])
        .await
        .expect("snapshot");
    let time = |r: &Repository<Counter>| {
        let r = r.clone();
        async move {
            let mut v = Vec::new();
            let cpu = cpu_secs();
            for _ in 0..30 {
                let t = Instant::now();
                let l = r.load("c1").await.expect("load");
                v.push(t.elapsed().as_secs_f64());
                assert_eq!(l.state.count, EVENTS);
            }
            (median(v), (cpu_secs() - cpu) / 30.0)
        }
    };
    let ((with, with_cpu), (without, without_cpu)) = (time(&snap).await, time(&plain).await);
    println!(
        "(d) aggregate of 10k events: load from snapshot + 50 events {:.3} ms ({:.3} ms CPU), \
         full replay {:.2} ms ({:.2} ms CPU) (wall: medians of 30, CPU: means); full / snapshot = {:.0}",
        with * 1e3,
        with_cpu * 1e3,
        without * 1e3,
        without_cpu * 1e3,
        without / with
    );
}

/// (e) catch-up reads of the global log against the bare log.
async fn catch_up(root: &Path) {
    const EVENTS: u64 = 200_000;
    let dir = root.join("e");
    let s = open(&dir, Durability::Always).await;
    for b in 0..EVENTS / 1000 {
        let events: Vec<EventData> = (0..1000).map(|_| event_100b()).collect();
        s.append(
            &sid(&format!("log-{}", b % 50)),
            ExpectedVersion::Any,
            events,
        )
        .await
        .expect("fill");
    }
    let (mut ra, mut rs, mut rl) = (Vec::new(), Vec::new(), Vec::new());
    let (mut ca, mut cs, mut cl) = (0.0, 0.0, 0.0);
    let bare_dir = root.join("e-log");
    let bare = log(&bare_dir, Durability::Never);
    for _ in 0..EVENTS / 1000 {
        let recs: Vec<Record> = (0..1000)
            .map(|i| Record::new(i, Bytes::from(vec![b'x'; 100])).with_key("log-0"))
            .collect();
        bare.append(&recs).expect("fill log");
    }
    for _ in 0..5 {
        let cpu = cpu_secs();
        let t = Instant::now();
        let mut from = Position::START;
        let mut n = 0;
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
        assert_eq!(n, EVENTS);
        ra.push(EVENTS as f64 / t.elapsed().as_secs_f64());
        ca += cpu_secs() - cpu;
        let cpu = cpu_secs();
        let t = Instant::now();
        let mut sub = s
            .subscribe(SubscribeFrom::Start, GlobalFilter::all())
            .await
            .expect("subscribe");
        for _ in 0..EVENTS {
            sub.next().await.expect("event").expect("ok");
        }
        rs.push(EVENTS as f64 / t.elapsed().as_secs_f64());
        cs += cpu_secs() - cpu;
        let cpu = cpu_secs();
        let t = Instant::now();
        let mut off = 0;
        let mut n = 0u64;
        while off < bare.end_offset() {
            let rb = bare.read(off, 1 << 20).expect("read");
            for r in rb.records() {
                let r = r.expect("record");
                n += u64::from(!r.value.is_empty());
            }
            off = rb.next_offset();
        }
        assert_eq!(n, EVENTS);
        rl.push(EVENTS as f64 / t.elapsed().as_secs_f64());
        cl += cpu_secs() - cpu;
    }
    let per_cpu = |c: f64| 5.0 * EVENTS as f64 / c / 1e6;
    let (a, sub, l) = (median(ra), median(rs), median(rl));
    println!(
        "(e) catch-up over 200k x 100 B (wall, medians of 5): read_all {:.2} M events/s, subscription {:.2} M/s, \
         bare log read + decode to records {:.2} M/s; read_all / log = {:.2}, subscription / log = {:.2}",
        a / 1e6,
        sub / 1e6,
        l / 1e6,
        a / l,
        sub / l
    );
    println!(
        "    per CPU-second: read_all {:.2} M, subscription {:.2} M, bare log {:.2} M; read_all / log = {:.2}",
        per_cpu(ca),
        per_cpu(cs),
        per_cpu(cl),
        cl / ca
    );
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let root =
        tempfile::tempdir_in(std::env::var("WHARF_BENCH_DIR").unwrap_or_else(|_| ".".into()))
            .expect("temp dir");
    let only = std::env::var("WHARF_BENCH_ONLY").unwrap_or_else(|_| "abcde".into());
    rt.block_on(async {
        if only.contains('a') {
            if !only.contains('n') {
                batched(root.path(), 1, Durability::Always).await;
                batched(root.path(), 4, Durability::Always).await;
            }
            batched(root.path(), 1, Durability::Never).await;
        }
        if only.contains('b') {
            concurrent(root.path()).await;
        }
        if only.contains('c') {
            conditional(root.path(), Durability::Never, "no fsync", 20_000).await;
            conditional(root.path(), Durability::Always, "fsync", 500).await;
        }
        if only.contains('d') {
            aggregate(root.path()).await;
        }
        if only.contains('e') {
            catch_up(root.path()).await;
        }
    });
}
