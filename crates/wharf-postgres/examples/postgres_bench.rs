//! Publish/consume load against the PostgreSQL backend: 100 B and 1 KiB
//! messages; concurrent single publishes, batch publishes, group consume
//! with acks, and an end-to-end latency run; prints msgs/s and p50/p99.
//!
//! `cargo run --release -p wharf-postgres --example postgres_bench -- [messages]`
//! (server from `WHARF_TEST_POSTGRES_URL`, default
//! postgres://postgres@127.0.0.1:5432/test; a schema of its own, dropped after).
//! Durability: a publish is acknowledged after its transaction commits with
//! the server's `synchronous_commit` (printed; `on` = WAL fsynced first).

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
    let url = std::env::var("WHARF_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    println!("wharf-postgres bench: {n} messages per size, server {url}");
    for size in [100, 1024] {
        let cfg = wharf_postgres::PostgresConfig::new(url.clone())
            .schema(format!("bench_{}_{size}", std::process::id()))
            .max_connections(16);
        let backend = wharf_postgres::PostgresBackend::connect(cfg).await?;
        if size == 100 {
            let sc: String = sqlx::query_scalar("SHOW synchronous_commit")
                .fetch_one(backend.pool())
                .await?;
            let fsync: String = sqlx::query_scalar("SHOW fsync")
                .fetch_one(backend.pool())
                .await?;
            println!("durability: acked after COMMIT with synchronous_commit={sc}, fsync={fsync} (group commit across concurrent transactions)");
        }
        let result = run(Arc::new(backend.clone()), size, n).await;
        backend.close().await?;
        backend.drop_schema().await?;
        result?;
    }
    Ok(())
}
