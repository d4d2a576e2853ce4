//! Publish/consume load against the RabbitMQ backend: 100 B and 1 KiB
//! messages; concurrent single publishes, batch publishes, group consume
//! with acks, and an end-to-end latency run; prints msgs/s and p50/p99.
//!
//! `cargo run --release -p wharf-amqp --example amqp_bench -- [messages]`
//! (broker from `WHARF_TEST_AMQP_URL`, default amqp://guest:guest@127.0.0.1:5672/%2f;
//! a namespace of its own, deleted after).
//! Durability: persistent messages on durable classic queues, and a publish
//! returns after the publisher confirm, which RabbitMQ sends once the message
//! is fsynced to its message store (grouped across publishes).

use std::sync::Arc;

use wharf_core::Backend;
use wharf_testkit::load::run;

type BoxResult<T> = Result<T, wharf_core::BoxError>;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> BoxResult<()> {
    let n: usize = std::env::args()
        .nth(1)
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(20_000);
    let url = std::env::var("WHARF_TEST_AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into());
    println!("wharf-amqp bench: {n} messages per size, broker {url}");
    println!("durability: persistent messages, durable classic queues, publisher confirms (confirm after fsync)");
    for size in [100, 1024] {
        let cfg = wharf_amqp::AmqpConfig::new(url.clone())
            .namespace(format!("bench-{}-{size}", std::process::id()));
        let backend = wharf_amqp::AmqpBackend::connect(cfg.clone()).await?;
        let result = run(Arc::new(backend.clone()), size, n).await;
        backend.delete_declared().await?;
        backend.close().await?;
        result?;
    }
    Ok(())
}
