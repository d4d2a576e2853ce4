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
//! each rate and the ratio store / baseline; then, with one writer, a plain
//! append against a conditional one, and the rate of a catch-up
//! `read_all` over everything written. Uses (and drops) a schema of
//! its own on `WHARF_TEST_POSTGRES_URL` (default
//! `postgres://postgres@127.0.0.1:5432/test`).

use std::time::{Duration, Instant};

use sqlx::postgres::PgPoolOptions;
use wharf_eventstore::postgres::PgEventStore;
use wharf_eventstore::{
    AppendCondition, AppendRequest, EventData, EventId, EventStore, ExpectedVersion, GlobalFilter,
    Position, Query, StreamId,
};

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
    println!(
        "writers {writers}, {per_writer} each, 100 B: plain INSERT {baseline:.0}/s, \
         PgEventStore append {appends:.0}/s, ratio {:.2}",
        appends / baseline
    );

    // One writer: a plain append against a conditional one (nothing tagged
    // like this after the head read just before), alternating.
    let s = StreamId::new("cond").expect("stream");
    let (mut plain, mut conditional) = (Duration::ZERO, Duration::ZERO);
    let rounds = 200;
    for i in 0..rounds {
        let tag = format!("order:{i}");
        let e = EventData::new("Placed", payload.clone()).with_tag(tag.clone());
        let t = Instant::now();
        store
            .append(&s, ExpectedVersion::Any, vec![e.clone()])
            .await
            .expect("plain");
        plain += t.elapsed();
        let t = Instant::now();
        let head = store.head().await.expect("head");
        let req = AppendRequest::new(
            s.clone(),
            ExpectedVersion::Any,
            vec![e.with_id(EventId::new())],
        )
        .condition(
            AppendCondition::new(Query::tags([format!("order:{i}-other")]))
                .after(Position(head.value().saturating_sub(1))),
        );
        store.append_with(req).await.expect("conditional");
        conditional += t.elapsed();
    }
    println!(
        "1 writer: plain append {:.0} µs, conditional append (with its head read) {:.0} µs, ratio {:.2}",
        plain.as_secs_f64() * 1e6 / f64::from(rounds),
        conditional.as_secs_f64() * 1e6 / f64::from(rounds),
        conditional.as_secs_f64() / plain.as_secs_f64()
    );

    // Catch-up read of everything written, pages of 1,000.
    let t = Instant::now();
    let (mut from, mut n) = (Position::START, 0usize);
    loop {
        let page = store
            .read_all(from, &GlobalFilter::all(), 1000)
            .await
            .expect("read_all");
        n += page.events.len();
        from = page.next;
        if page.is_end {
            break;
        }
    }
    println!(
        "read_all: {n} events at {:.0} events/s",
        rate(n, t.elapsed())
    );
    store.close().await.expect("close");
    sqlx::raw_sql(&format!("DROP SCHEMA {schema} CASCADE"))
        .execute(&pool)
        .await
        .expect("drop schema");
}

fn rate(n: usize, d: Duration) -> f64 {
    n as f64 / d.as_secs_f64()
}
