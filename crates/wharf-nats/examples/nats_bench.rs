//! Publish/consume load against the NATS JetStream backend: 100 B and 1 KiB
//! messages, pipelined batch publish, group consume with acks, and an
//! end-to-end latency run; prints msgs/s and p50/p99.
//!
//! `cargo run --release -p wharf-nats --example nats_bench -- [messages]`
//! (server from `WHARF_TEST_NATS_URL`, default nats://127.0.0.1:4222).
//! Durability: JetStream file store, acked after the write to the page
//! cache; NATS 2.9 fsyncs every 2 minutes by default, not before the ack.

use std::sync::Arc;

use wharf_nats::{NatsBackend, NatsConfig};
use wharf_testkit::load::run;

type BoxResult<T> = Result<T, wharf_core::BoxError>;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> BoxResult<()> {
    let n: usize = std::env::args()
        .nth(1)
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(100_000);
    let url =
        std::env::var("WHARF_TEST_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into());
    println!("wharf-nats bench: {n} messages per size, server {url}");
    println!("durability: JetStream file store, acked after write to page cache (NATS 2.9 fsyncs every 2 min)");
    for size in [100, 1024] {
        let ns = format!("bench{}", std::process::id());
        let cfg = NatsConfig::new(url.clone())
            .stream(format!("BENCH_{ns}_{size}"))
            .subject_prefix(format!("{ns}-{size}"));
        let backend = NatsBackend::connect(cfg).await?;
        let result = run(Arc::new(backend.clone()), size, n).await;
        backend.delete_stream().await?;
        result?;
    }
    Ok(())
}
