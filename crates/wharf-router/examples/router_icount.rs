//! Fixed workload for the instruction-count gate (`scripts/icount.sh`): the
//! router's dispatch path, counted by callgrind inside one named function
//! (`--toggle-collect`).
//!
//! `router_icount dispatch|stack N`: a router on the in-memory backend
//! handles N pre-published messages with a no-op handler that acks —
//! `dispatch` with no middleware, `stack` with the default stack minus the
//! duration histogram (its clock calibrates for a varying number of
//! instructions under valgrind) — on a current-thread runtime.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio::runtime::Runtime;
use tokio_util::sync::CancellationToken;
use tower::ServiceBuilder;
use wharf_core::{Backend, Message, StartPosition, SubscribeOptions};
use wharf_memory::MemoryBackend;
use wharf_router::metrics::MetricsLayer;
use wharf_router::{handler_fn, DefaultLayer, HandlerError, Outcome, Request, Route, Router};

fn opts() -> SubscribeOptions {
    SubscribeOptions::new("icount")
        .group("g")
        .start(StartPosition::Earliest)
        .max_in_flight(256)
}

/// Runs the router until it has acknowledged `n` messages.
#[inline(never)]
fn route_phase(rt: &Runtime, b: Arc<dyn Backend>, n: u64, stack: bool) {
    rt.block_on(async {
        let stop = CancellationToken::new();
        let count = Arc::new(AtomicU64::new(0));
        let (c, s) = (count.clone(), stop.clone());
        let handler = handler_fn(move |_req: Request| {
            if c.fetch_add(1, Ordering::Relaxed) + 1 == n {
                s.cancel();
            }
            std::future::ready(Ok::<_, HandlerError>(Outcome::Ack))
        });
        let router = Router::new(b);
        let router = if stack {
            let layer = DefaultLayer::with_metrics(MetricsLayer::new().durations(false));
            let svc = ServiceBuilder::new().layer(layer).service(handler);
            router.add_route(Route::new(opts(), svc).lanes(16))
        } else {
            router.add_route(Route::new(opts(), handler).lanes(16))
        };
        let report = router.run(stop).await.expect("run");
        assert_eq!(report.acked(), n);
    });
}

fn main() {
    let mut args = std::env::args().skip(1);
    let mode = args.next().unwrap_or_default();
    let n: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(20_000);
    let stack = match mode.as_str() {
        "dispatch" => false,
        "stack" => true,
        other => panic!("mode {other:?}: expected dispatch or stack"),
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let b: Arc<dyn Backend> = Arc::new(
        MemoryBackend::builder()
            .topic_capacity(n as usize + 1)
            .build(),
    );
    let batch: Vec<Message> = (0..n).map(|i| Message::new(i.to_string())).collect();
    rt.block_on(b.publish_batch("icount", batch))
        .expect("publish");
    route_phase(&rt, b, n, stack);
    println!("{mode}: {n} messages");
}
