//! Appends/s of the PostgreSQL event store next to a plain `INSERT` loop on
//! the same server, in the same run (feature `postgres`):
//!
//! ```text
//! cargo run --release -p wharf-eventstore --features postgres --example pg_bench -- [writers] [appends per writer]
//! ```
//!
//! Both sides use `writers` concurrent tasks on a pool of `writers`
//! connections, each writing one 100-byte event per transaction (autocommit
//! for the baseline; the store: one stream per writer, `Exact(n)`). Prints
//! each rate and the ratio store / baseline. Uses (and drops) a schema of
//! its own on `WHARF_TEST_POSTGRES_URL` (default
//! `postgres://postgres@127.0.0.1:5432/test`).

use std::time::{Duration, Instant};

use sqlx::postgres::PgPoolOptions;
use wharf_eventstore::postgres::PgEventStore;
use wharf_eventstore::{EventData, EventStore, ExpectedVersion, StreamId};

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let writers: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(16);
    let per_writer: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(300);
    let url = std::env::var("WHARF_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    let schema = format!("wes_bench_{}", std::process::id());
    let pool = PgPoolOptions::new()
        .max_connections(u32::try_from(writers).expect("writers") + 1)
        .connect(&url)
        .await
        .expect("connect");
    sqlx::raw_sql(&format!(
        "CREATE SCHEMA {schema};
         CREATE TABLE {schema}.plain (id bigserial PRIMARY KEY, stream text NOT NULL, payload bytea NOT NULL)"
    ))
    .execute(&pool)
    .await
    .expect("baseline table");
    let payload = vec![b'x'; 100];

    // Baseline: a plain INSERT per row, autocommit.
    let insert = format!("INSERT INTO {schema}.plain (stream, payload) VALUES ($1, $2)");
    let t = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..writers {
        let (pool, insert, payload) = (pool.clone(), insert.clone(), payload.clone());
        tasks.push(tokio::spawn(async move {
            for _ in 0..per_writer {
                sqlx::query(&insert)
                    .bind(format!("w{w}"))
                    .bind(&payload[..])
                    .execute(&pool)
                    .await
                    .expect("insert");
            }
        }));
    }
    for t in tasks {
        t.await.expect("baseline writer");
    }
    let baseline = rate(writers * per_writer, t.elapsed());

    // The store: one stream per writer, each append Exact(n).
    let store = PgEventStore::with_pool(pool.clone())
        .schema(&schema)
        .connect()
        .await
        .expect("store");
    let t = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..writers {
        let (store, payload) = (store.clone(), payload.clone());
        tasks.push(tokio::spawn(async move {
            let s = StreamId::new(format!("bench-{w}")).expect("stream");
            let mut expected = ExpectedVersion::NoStream;
            for _ in 0..per_writer {
                let r = store
                    .append(&s, expected, vec![EventData::new("Bench", payload.clone())])
                    .await
                    .expect("append");
                expected = ExpectedVersion::Exact(r.last_version);
            }
        }));
    }
    for t in tasks {
        t.await.expect("store writer");
    }
    let appends = rate(writers * per_writer, t.elapsed());
    store.close().await.expect("close");

    println!(
        "writers {writers}, {per_writer} each, 100 B: plain INSERT {baseline:.0}/s, \
         PgEventStore append {appends:.0}/s, ratio {:.2}",
        appends / baseline
    );
    sqlx::raw_sql(&format!("DROP SCHEMA {schema} CASCADE"))
        .execute(&pool)
        .await
        .expect("drop schema");
}

fn rate(n: usize, d: Duration) -> f64 {
    n as f64 / d.as_secs_f64()
}
