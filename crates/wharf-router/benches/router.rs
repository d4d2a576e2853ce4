//! Router dispatch cost: N messages through a router with a no-op handler
//! and the default stack vs. a bare `subscribe` + `ack` loop, on the
//! in-memory backend, in the same run.
//!
//! ```text
//! CARGO_TARGET_DIR=target-router cargo bench -p wharf-router --bench router
//! ```
//! Only consuming is timed; filling the topic is setup.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use tokio_util::sync::CancellationToken;
use tower::ServiceBuilder;
use wharf_core::{Backend, Message, StartPosition, SubscribeOptions};
use wharf_memory::MemoryBackend;
use wharf_router::metrics::MetricsLayer;
use wharf_router::{handler_fn, DefaultLayer, HandlerError, Outcome, Request, Route, Router};

const N: u64 = 50_000;

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

fn opts() -> SubscribeOptions {
    SubscribeOptions::new("bench")
        .group("g")
        .start(StartPosition::Earliest)
}

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

async fn routed(n: u64, stack: Option<DefaultLayer>) -> Duration {
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
    let router = match stack {
        Some(layer) => router.add_route(Route::new(
            opts(),
            ServiceBuilder::new().layer(layer).service(handler),
        )),
        None => router.add_route(Route::new(opts(), handler)),
    };
    let start = Instant::now();
    let report = router.run(stop).await.expect("run");
    let t = start.elapsed();
    assert_eq!(report.acked(), n);
    t
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let mut g = c.benchmark_group("consume_memory");
    g.throughput(Throughput::Elements(N));
    g.sample_size(10);
    g.warm_up_time(Duration::from_secs(1));
    g.measurement_time(Duration::from_secs(5));
    g.bench_function("bare_subscribe_ack", |b| {
        b.iter_custom(|iters| (0..iters).map(|_| rt.block_on(bare(N))).sum())
    });
    g.bench_function("router_default_stack", |b| {
        b.iter_custom(|iters| {
            (0..iters)
                .map(|_| rt.block_on(routed(N, Some(DefaultLayer::new()))))
                .sum()
        })
    });
    g.bench_function("router_default_stack_no_durations", |b| {
        b.iter_custom(|iters| {
            let layer = DefaultLayer::with_metrics(MetricsLayer::new().durations(false));
            (0..iters)
                .map(|_| rt.block_on(routed(N, Some(layer.clone()))))
                .sum()
        })
    });
    g.bench_function("router_no_middleware", |b| {
        b.iter_custom(|iters| (0..iters).map(|_| rt.block_on(routed(N, None))).sum())
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
