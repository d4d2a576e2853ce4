//! Prints what the router costs over a bare subscribe+ack loop on the
//! in-memory backend: messages per second for both, measured in the same
//! run, and their ratio.
//!
//! ```text
//! cargo run --release -p wharf-router --example router_overhead
//! ```

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use tower::ServiceBuilder;
use wharf_core::{Backend, Message, StartPosition, SubscribeOptions};
use wharf_memory::MemoryBackend;
use wharf_router::metrics::MetricsLayer;
use wharf_router::{handler_fn, DefaultLayer, HandlerError, Outcome, Request, Route, Router};

const N: u64 = 200_000;

async fn filled(n: u64) -> Arc<dyn Backend> {
    let b: Arc<dyn Backend> = Arc::new(
        MemoryBackend::builder()
            .topic_capacity(n as usize + 1)
            .build(),
    );
    let batch: Vec<Message> = (0..n).map(|i| Message::new(i.to_string())).collect();
    b.publish_batch("bench", batch).await.expect("publish");
    b
}

fn mode_n() -> u64 {
    std::env::var("N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000)
}

fn fetch_batch() -> usize {
    std::env::var("FETCH")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(64)
}

fn opts() -> SubscribeOptions {
    SubscribeOptions::new("bench")
        .group("g")
        .start(StartPosition::Earliest)
        .max_in_flight(
            std::env::var("INFLIGHT")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(256),
        )
}

/// Time to consume and ack `n` messages with `sub.next()` + `ack()`.
async fn bare(n: u64) -> Duration {
    let b = filled(n).await;
    let start = Instant::now();
    let mut sub = b.subscribe(opts()).await.expect("subscribe");
    for _ in 0..n {
        let d = sub.next().await.expect("open").expect("delivery");
        d.ack().await.expect("ack");
    }
    start.elapsed()
}

/// Time for a router with the default stack and a no-op handler to handle `n`.
async fn routed(n: u64, lanes: usize, stack: Option<DefaultLayer>) -> Duration {
    let b = filled(n).await;
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
    let router = if let Some(layer) = stack {
        let svc = ServiceBuilder::new().layer(layer).service(handler);
        router.add_route(
            Route::new(opts(), svc)
                .lanes(lanes)
                .fetch_batch(fetch_batch()),
        )
    } else {
        router.add_route(
            Route::new(opts(), handler)
                .lanes(lanes)
                .fetch_batch(fetch_batch()),
        )
    };
    let start = Instant::now();
    let report = router.run(stop).await.expect("run");
    let t = start.elapsed();
    assert_eq!(report.acked(), n);
    t
}

/// Like `routed`, with one given layer around the no-op handler.
macro_rules! routed_with {
    ($n:expr, $layer:expr) => {{
        let n: u64 = $n;
        let b = filled(n).await;
        let stop = CancellationToken::new();
        let c = Arc::new(AtomicU64::new(0));
        let s = stop.clone();
        let handler = handler_fn(move |_req: Request| {
            if c.fetch_add(1, Ordering::Relaxed) + 1 == n {
                s.cancel();
            }
            std::future::ready(Ok::<_, HandlerError>(Outcome::Ack))
        });
        let svc = tower::Layer::layer(&$layer, handler);
        let start = Instant::now();
        Router::new(b)
            .add_route(Route::new(opts(), svc))
            .run(stop)
            .await
            .expect("run");
        start.elapsed()
    }};
}

fn main() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let rate = |d: Duration| N as f64 / d.as_secs_f64();
    let full = || Some(DefaultLayer::new());
    let lean = || {
        Some(DefaultLayer::with_metrics(
            MetricsLayer::new().durations(false),
        ))
    };
    // For instruction counts under callgrind: one mode, one run.
    if let Ok(mode) = std::env::var("MODE") {
        let d = match mode.as_str() {
            "bare" => rt.block_on(bare(mode_n())),
            "setup" => {
                let start = Instant::now();
                drop(rt.block_on(filled(mode_n())));
                start.elapsed()
            }
            "stack" => rt.block_on(routed(mode_n(), 16, full())),
            "lean" => rt.block_on(routed(mode_n(), 16, lean())),
            "trace" => rt
                .block_on(async { routed_with!(mode_n(), wharf_router::trace::TraceLayer::new()) }),
            "metrics" => rt.block_on(async { routed_with!(mode_n(), MetricsLayer::new()) }),
            "three" => rt.block_on(async {
                routed_with!(
                    mode_n(),
                    ServiceBuilder::new()
                        .layer(wharf_router::trace::TraceLayer::new())
                        .layer(MetricsLayer::new())
                        .layer(wharf_router::recover::RecoverLayer::new())
                )
            }),
            "recover" => rt.block_on(async {
                routed_with!(mode_n(), wharf_router::recover::RecoverLayer::new())
            }),
            _ => rt.block_on(routed(mode_n(), 16, None)),
        };
        println!("{mode}: {d:?}");
        return;
    }
    // Warm up, then take the best of 5 runs of each, interleaved.
    rt.block_on(bare(N / 10));
    rt.block_on(routed(N / 10, 16, full()));
    let mut best = [Duration::MAX; 5];
    for _ in 0..5 {
        let runs = [
            rt.block_on(bare(N)),
            rt.block_on(routed(N, 16, full())),
            rt.block_on(routed(N, 1, full())),
            rt.block_on(routed(N, 16, lean())),
            rt.block_on(routed(N, 16, None)),
        ];
        for (b, r) in best.iter_mut().zip(runs) {
            *b = (*b).min(r);
        }
    }
    let names = [
        "bare subscribe+ack",
        "router, default stack, 16 lanes",
        "router, default stack, 1 lane",
        "router, default stack without durations, 16 lanes",
        "router, no middleware, 16 lanes",
    ];
    println!("messages per run: {N} (current-thread runtime, best of 5)");
    for (name, d) in names.iter().zip(best) {
        println!(
            "{name:<50} {:>10.0} msg/s   cost {:.2}x bare",
            rate(d),
            d.as_secs_f64() / best[0].as_secs_f64()
        );
    }
}
