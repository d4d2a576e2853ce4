//! Publish/consume load against the Redis Streams backend: 100 B and 1 KiB
//! messages, pipelined batch publish, group consume with acks, and an
//! end-to-end latency run; prints msgs/s and p50/p99.
//!
//! `cargo run --release -p wharf-redis --example redis_bench -- [messages]`
//! (server from `WHARF_TEST_REDIS_URL`, default redis://127.0.0.1:6379).
//! Durability: whatever the server is configured for; the bench prints its
//! `appendonly`/`save` settings (on this machine: none, never durable).

use std::sync::Arc;

use wharf_redis::{RedisBackend, RedisConfig};
use wharf_testkit::load::run;

type BoxResult<T> = Result<T, wharf_core::BoxError>;

async fn durability(b: &RedisBackend) -> String {
    let mut conn = b.connection();
    let aof: Vec<String> = redis::cmd("CONFIG")
        .arg("GET")
        .arg("appendonly")
        .query_async(&mut conn)
        .await
        .unwrap_or_default();
    let save: Vec<String> = redis::cmd("CONFIG")
        .arg("GET")
        .arg("save")
        .query_async(&mut conn)
        .await
        .unwrap_or_default();
    format!(
        "appendonly={:?} save={:?} (no AOF and no RDB: nothing survives a restart)",
        aof.get(1).map_or("?", String::as_str),
        save.get(1).map_or("?", String::as_str)
    )
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> BoxResult<()> {
    let n: usize = std::env::args()
        .nth(1)
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(100_000);
    let url =
        std::env::var("WHARF_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    println!("wharf-redis bench: {n} messages per size, server {url}");
    for size in [100, 1024] {
        let cfg = RedisConfig::new(url.clone())
            .key_prefix(format!("bench{}-{size}", std::process::id()))
            .max_len(None);
        let backend = RedisBackend::connect(cfg).await?;
        if size == 100 {
            println!("durability: {}", durability(&backend).await);
        }
        let result = run(Arc::new(backend.clone()), size, n).await;
        let cleanup = backend.delete_all().await;
        result?;
        cleanup?;
    }
    Ok(())
}
