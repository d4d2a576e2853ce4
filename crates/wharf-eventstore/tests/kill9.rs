//! The real crash test of the embedded store: a child process (this same
//! binary, re-executed) appends to four streams with `Exact` expected
//! versions — one to four events per append, some of them conditional —
//! under `Durability::Always`, printing every acknowledged append; the
//! parent `kill -9`s it at a random moment, reopens the store and checks:
//! - no acknowledged append is lost: its events are at the versions the
//!   acknowledgement named;
//! - no append is partly visible: of every append found, all its events
//!   are there, at consecutive versions;
//! - each stream's versions are contiguous from 0 and the global log holds
//!   exactly the streams' events;
//! - the reopened store goes on (the next cycle appends at the next
//!   versions).
//!
//! Each cycle checks what it appended (the earlier cycles' events lie
//! below and were checked before); a last pass checks the whole store
//! against every acknowledgement of every cycle.
//!
//! Runs without the libtest harness so the child can be the same
//! executable. Cycles: 50 by default, `WHARF_EVENTSTORE_CRASH_CYCLES=n` for
//! more.

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::Rng;
use wharf_eventstore::{
    AppendCondition, AppendRequest, EmbeddedStore, EventData, EventStore, GlobalFilter, Position,
    Query, ReadStream, StreamFrom, StreamId,
};

const CHILD_DIR: &str = "WHARF_EVENTSTORE_KILL9_DIR";
const CHILD_CYCLE: &str = "WHARF_EVENTSTORE_KILL9_CYCLE";
const WRITERS: usize = 4;

fn emit(line: String) {
    let out = std::io::stdout();
    let mut lock = out.lock();
    lock.write_all(line.as_bytes()).expect("stdout");
    lock.flush().expect("flush");
}

fn stream(w: usize) -> StreamId {
    StreamId::new(format!("w{w}")).expect("stream name")
}

async fn open(dir: &Path) -> EmbeddedStore {
    let mut last = None;
    for _ in 0..100 {
        match EmbeddedStore::open(dir).await {
            Ok(s) => return s,
            Err(e) => last = Some(e),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("open the store: {last:?}");
}

async fn child(dir: String, cycle: u64) {
    let store = open(Path::new(&dir)).await;
    emit("R\n".into());
    let mut tasks = Vec::new();
    for w in 0..WRITERS {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let s = stream(w);
            let tag = format!("writer:{w}");
            let mut expected = store
                .stream_info(&s)
                .await
                .expect("info")
                .version
                .expected();
            for j in 0u64.. {
                let k = (j % 4 + 1) as usize;
                let events: Vec<EventData> = (0..k)
                    .map(|i| {
                        EventData::new("Step", format!("c{cycle}-w{w}-a{j}-{i}/{k}"))
                            .with_tag(tag.clone())
                    })
                    .collect();
                let ids: Vec<String> = events.iter().map(|e| e.id.to_string()).collect();
                let mut req = AppendRequest::new(s.clone(), expected, events);
                if j % 3 == 0 {
                    // Only this writer tags `writer:w`, so the condition holds.
                    let head = store.head().await.expect("head");
                    let after = head.value().checked_sub(1).map(Position);
                    req = req.condition(AppendCondition {
                        query: Query::tags([tag.clone()]),
                        after,
                    });
                }
                let r = store.append_with(req).await.expect("append");
                emit(format!(
                    "A {w} {} {} {}\n",
                    r.first_version,
                    r.last_version,
                    ids.join(",")
                ));
                expected = wharf_eventstore::ExpectedVersion::Exact(r.last_version);
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
}

/// An acknowledged append: writer, first and last version, event ids.
type Ack = (usize, u64, u64, Vec<String>);

fn run_cycle(dir: &Path, cycle: u64) -> Vec<Ack> {
    let exe = std::env::current_exe().expect("current exe");
    let mut child = Command::new(exe)
        .env(CHILD_DIR, dir)
        .env(CHILD_CYCLE, cycle.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn child");
    let stdout = child.stdout.take().expect("child stdout");
    let acks = Arc::new(Mutex::new(Vec::new()));
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let reader = {
        let acks = acks.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let parts: Vec<&str> = line.split_whitespace().collect();
                match parts.as_slice() {
                    ["R"] => {
                        let _ = ready_tx.send(());
                    }
                    ["A", w, first, last, ids] => acks.lock().unwrap().push((
                        w.parse().expect("writer"),
                        first.parse().expect("first"),
                        last.parse().expect("last"),
                        ids.split(',').map(str::to_owned).collect(),
                    )),
                    _ => {}
                }
            }
        })
    };
    ready_rx
        .recv_timeout(Duration::from_secs(30))
        .expect("the child opened the store");
    let wait = rand::thread_rng().gen_range(30..300);
    std::thread::sleep(Duration::from_millis(wait));
    child.kill().expect("kill -9");
    child.wait().expect("reap child");
    reader.join().expect("reader thread");
    let done = std::mem::take(&mut *acks.lock().unwrap());
    done
}

/// Checks the reopened store from `from` (per stream, the event count
/// already checked; the previous cycles' appends all lie below it) and
/// `from_position` in the global log; returns the event count per stream
/// and where the global log ends.
async fn check(
    store: &EmbeddedStore,
    cycle: u64,
    acks: &[Ack],
    from: &[usize],
    from_position: Position,
) -> (Vec<usize>, Position) {
    let mut counts = Vec::new();
    let mut by_stream: Vec<HashMap<String, u64>> = Vec::new();
    for (w, &start) in from.iter().enumerate() {
        let options = ReadStream::forwards().from(StreamFrom::Version(start as u64));
        let events = match store.read_stream(&stream(w), options).await {
            Ok(e) => e,
            Err(wharf_eventstore::EventStoreError::StreamNotFound { .. }) => Vec::new(),
            Err(e) => panic!("cycle {cycle}: read w{w}: {e}"),
        };
        for (i, e) in events.iter().enumerate() {
            assert_eq!(
                e.version,
                (start + i) as u64,
                "cycle {cycle}: w{w} versions contiguous"
            );
        }
        // No partial append: group events by the append marker in the
        // payload ("c{cycle}-w{w}-a{j}-{i}/{k}").
        let mut appends: BTreeMap<String, Vec<(u64, usize, usize)>> = BTreeMap::new();
        for e in &events {
            let p = String::from_utf8_lossy(&e.payload).into_owned();
            let (head, k) = p.rsplit_once('/').expect("payload k");
            let (marker, i) = head.rsplit_once('-').expect("payload i");
            appends.entry(marker.to_owned()).or_default().push((
                e.version,
                i.parse().expect("i"),
                k.parse().expect("k"),
            ));
        }
        for (marker, parts) in &appends {
            let k = parts[0].2;
            assert_eq!(
                parts.len(),
                k,
                "cycle {cycle}: append {marker} is partly visible: {parts:?}"
            );
            for (n, (v, i, _)) in parts.iter().enumerate() {
                assert_eq!(*i, n, "cycle {cycle}: {marker} in order");
                assert_eq!(
                    *v,
                    parts[0].0 + n as u64,
                    "cycle {cycle}: {marker} contiguous"
                );
            }
        }
        counts.push(start + events.len());
        by_stream.push(
            events
                .iter()
                .map(|e| (e.id.to_string(), e.version))
                .collect(),
        );
    }
    for (w, first, last, ids) in acks {
        for (n, id) in ids.iter().enumerate() {
            assert_eq!(
                by_stream[*w].get(id),
                Some(&(first + n as u64)),
                "cycle {cycle}: acknowledged append w{w} {first}..={last} lost"
            );
        }
    }
    let mut total = 0;
    let mut at = from_position;
    loop {
        let page = store
            .read_all(at, &GlobalFilter::all(), 10_000)
            .await
            .expect("read_all");
        total += page.events.len();
        at = page.next;
        if page.is_end {
            break;
        }
    }
    assert_eq!(
        total,
        counts.iter().sum::<usize>() - from.iter().sum::<usize>(),
        "cycle {cycle}: the global log holds exactly the streams' events"
    );
    (counts, at)
}

fn main() {
    if let (Ok(dir), Ok(cycle)) = (std::env::var(CHILD_DIR), std::env::var(CHILD_CYCLE)) {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(child(dir, cycle.parse().expect("cycle")));
        return;
    }
    let cycles: u64 = std::env::var("WHARF_EVENTSTORE_CRASH_CYCLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(50);
    let dir = tempfile::tempdir().expect("temp dir");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let (mut acked, mut cycles_with_acks) = (0usize, 0u64);
    let mut counts = vec![0; WRITERS];
    let mut position = Position::START;
    let mut all_acks = Vec::new();
    for cycle in 0..cycles {
        let acks = run_cycle(dir.path(), cycle);
        acked += acks.len();
        cycles_with_acks += u64::from(!acks.is_empty());
        rt.block_on(async {
            let store = open(dir.path()).await;
            // This cycle's appends (earlier ones were checked already; a
            // final pass re-checks everything).
            let (now, end) = check(&store, cycle, &acks, &counts, position).await;
            counts = now;
            position = end;
            store.close().await.expect("close");
        });
        all_acks.extend(acks);
    }
    rt.block_on(async {
        let store = open(dir.path()).await;
        let (all, _) = check(&store, cycles, &all_acks, &[0; WRITERS], Position::START).await;
        assert_eq!(all, counts, "every cycle's events are still there");
        store.close().await.expect("close");
    });
    assert!(
        cycles_with_acks * 2 > cycles,
        "most cycles acknowledged appends before the kill ({cycles_with_acks} of {cycles})"
    );
    println!(
        "kill9: {cycles} cycles, {acked} acknowledged appends, none lost, none partial; \
         streams at {counts:?} events"
    );
    println!("1 passed, 0 failed");
}
