//! The event store through `wharf serve` (`RemoteEventStore` over gRPC on
//! loopback) against the embedded store it serves, opened directly in the
//! same process, measured in the same run: rounds alternate between the
//! two so both see the same disk and load. Prints absolute figures and the
//! ratio remote / embedded per round.
//!
//! ```text
//! cargo run --release -p wharf-cli --example eventstore_remote_bench
//! ```
//!
//! (a) 16 writers, each appending 1 event of 100 B at a time to its own
//!     stream with `Exact(n)`, fsync before ack (the store's default);
//! (b) 1 writer appending batches of 100 events of 100 B, fsync before ack;
//! (c) catching up on the global log: `read_all` pages of 10,000 over
//!     50,000 events.

use std::sync::Arc;
use std::time::{Duration, Instant};

use wharf_eventstore::{
    EmbeddedStore, EventData, EventStore, ExpectedVersion, GlobalFilter, Position, StreamId,
};

const WRITERS: usize = 16;
const APPENDS_PER_WRITER: u64 = 200;
const BATCHES: usize = 100;
const BATCH: usize = 100;
const CATCH_UP: usize = 50_000;
const ROUNDS: usize = 3;

fn event() -> EventData {
    EventData::new("Bench", vec![b'x'; 95])
}

/// Appends/s of (a) on `store`, streams named `{ns}-{w}`.
async fn concurrent_singles(store: Arc<dyn EventStore>, ns: &str) -> f64 {
    let started = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..WRITERS {
        let store = store.clone();
        let s = StreamId::new(format!("{ns}-{w}")).expect("name");
        tasks.push(tokio::spawn(async move {
            for n in 0..APPENDS_PER_WRITER {
                let expected = if n == 0 {
                    ExpectedVersion::NoStream
                } else {
                    ExpectedVersion::Exact(n - 1)
                };
                store
                    .append(&s, expected, vec![event()])
                    .await
                    .expect("append");
            }
        }));
    }
    for t in tasks {
        t.await.expect("writer");
    }
    (WRITERS as u64 * APPENDS_PER_WRITER) as f64 / started.elapsed().as_secs_f64()
}

/// Events/s of (b).
async fn batched(store: &dyn EventStore, ns: &str) -> f64 {
    let s = StreamId::new(format!("{ns}-batched")).expect("name");
    let started = Instant::now();
    for _ in 0..BATCHES {
        store
            .append(
                &s,
                ExpectedVersion::Any,
                (0..BATCH).map(|_| event()).collect(),
            )
            .await
            .expect("append");
    }
    (BATCHES * BATCH) as f64 / started.elapsed().as_secs_f64()
}

/// Events/s of (c), after filling `{ns}-catchup` with `CATCH_UP` events.
async fn catch_up(store: &dyn EventStore, ns: &str) -> f64 {
    let s = StreamId::new(format!("{ns}-catchup")).expect("name");
    for _ in 0..CATCH_UP / 1000 {
        store
            .append(
                &s,
                ExpectedVersion::Any,
                (0..1000).map(|_| event()).collect(),
            )
            .await
            .expect("fill");
    }
    let filter = GlobalFilter::all().stream_prefix(format!("{ns}-catchup"));
    let started = Instant::now();
    let mut from = Position::START;
    let mut n = 0;
    loop {
        let page = store.read_all(from, &filter, 10_000).await.expect("read");
        n += page.events.len();
        from = page.next;
        if page.is_end {
            break;
        }
    }
    assert_eq!(n, CATCH_UP);
    n as f64 / started.elapsed().as_secs_f64()
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let base = std::env::var("WHARF_BENCH_DIR").unwrap_or_else(|_| "/tmp".into());
    let server_dir = tempfile::tempdir_in(&base).expect("temp dir");
    let embedded_dir = tempfile::tempdir_in(&base).expect("temp dir");
    let mut cfg = wharf_server::ServerConfig::new(server_dir.path());
    cfg.listen = "127.0.0.1:0".parse().expect("address");
    let server = wharf_server::Server::bind(cfg).await.expect("bind");
    let url = format!("http://{}", server.local_addr().expect("address"));
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn(server.serve(async {
        let _ = stop_rx.await;
    }));
    let remote: Arc<dyn EventStore> = Arc::new(
        wharf_client::RemoteEventStore::connect(&url, None)
            .await
            .expect("connect"),
    );
    let embedded: Arc<dyn EventStore> = Arc::new(
        EmbeddedStore::open(embedded_dir.path())
            .await
            .expect("open"),
    );
    println!(
        "event store: remote (wharf serve on loopback, gRPC) vs embedded (same process), {ROUNDS} alternating rounds"
    );
    for round in 0..ROUNDS {
        let ns = format!("r{round}");
        let (e, r) = if round % 2 == 0 {
            let e = concurrent_singles(embedded.clone(), &ns).await;
            (e, concurrent_singles(remote.clone(), &ns).await)
        } else {
            let r = concurrent_singles(remote.clone(), &ns).await;
            (concurrent_singles(embedded.clone(), &ns).await, r)
        };
        println!(
            "round {round} (a) {WRITERS} writers x 1 event, Exact(n), fsync: embedded {e:>9.0}/s  remote {r:>9.0}/s  ratio {:.2}",
            r / e
        );
        let e = batched(embedded.as_ref(), &ns).await;
        let r = batched(remote.as_ref(), &ns).await;
        println!(
            "round {round} (b) 1 writer x batches of {BATCH}, fsync:         embedded {e:>9.0}/s  remote {r:>9.0}/s  ratio {:.2}",
            r / e
        );
        let e = catch_up(embedded.as_ref(), &ns).await;
        let r = catch_up(remote.as_ref(), &ns).await;
        println!(
            "round {round} (c) read_all catch-up of {CATCH_UP}:            embedded {e:>9.0}/s  remote {r:>9.0}/s  ratio {:.2}",
            r / e
        );
    }
    remote.close().await.expect("close");
    embedded.close().await.expect("close");
    let _ = stop_tx.send(());
    let _ = tokio::time::timeout(Duration::from_secs(10), serving).await;
}
