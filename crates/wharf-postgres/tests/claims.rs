//! A burst of messages makes the planner's statistics of `deliveries`
//! stale (autovacuum analyses a table at most once a minute), and with them
//! every claim was a scan of all the group's rows and a sort on disk; so a
//! fetcher that materialises 10,000 rows or more runs `ANALYZE` on
//! `deliveries` itself, and a small one does not. Claims are heap-only
//! updates, also on a schema made before they were.

mod service;

use std::future::Future;
use std::time::Duration;

use wharf_core::{Backend, Message, Publisher, StartPosition, SubscribeOptions, Subscriber};
use wharf_testkit::expect_delivery;

/// The server's statistics of the schema's `deliveries` so far: manual
/// `ANALYZE` runs (autovacuum's are counted apart), updates, and how many of
/// those were heap-only (no new index entries).
async fn deliveries_stats(pool: &sqlx::PgPool, schema: &str) -> (i64, i64, i64) {
    sqlx::query_as(
        "SELECT analyze_count, n_tup_upd, n_tup_hot_upd FROM pg_stat_user_tables \
         WHERE schemaname = $1 AND relname = 'deliveries'",
    )
    .bind(schema)
    .fetch_one(pool)
    .await
    .expect("pg_stat_user_tables")
}

async fn analyze_count(b: &wharf_postgres::PostgresBackend) -> i64 {
    deliveries_stats(b.pool(), b.schema()).await.0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_rows_refreshes_the_statistics_of_deliveries_and_a_few_do_not() {
    let Some(ns) = service::namespace().await else {
        return;
    };
    let b = &ns.backend;
    let group = |g: &str| {
        SubscribeOptions::new("burst")
            .group(g)
            .start(StartPosition::Earliest)
    };
    b.publish_batch(
        "burst",
        (0..100).map(|i| Message::new(format!("m{i}"))).collect(),
    )
    .await
    .expect("publish");
    let mut few = b.subscribe(group("few")).await.expect("subscribe");
    expect_delivery(&mut few, "a first delivery")
        .await
        .ack()
        .await
        .expect("ack");
    assert_eq!(analyze_count(b).await, 0, "100 rows: no ANALYZE");
    drop(few);

    for chunk in 0..12 {
        let batch = (0..1000)
            .map(|i| Message::new(format!("b{chunk}-{i}")))
            .collect();
        b.publish_batch("burst", batch).await.expect("publish");
    }
    let mut burst = b.subscribe(group("burst")).await.expect("subscribe");
    expect_delivery(&mut burst, "a first delivery")
        .await
        .ack()
        .await
        .expect("ack");
    // The statistics view is updated when the analysing session reports.
    let mut n = 0;
    for _ in 0..50 {
        n = analyze_count(b).await;
        if n > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(n >= 1, "12,100 rows: ANALYZE");
}

/// A claim sets the lease's token and time, which no index covers, on a
/// table that leaves room in each page: a heap-only update. Until session
/// 22 an index on `token` made each claim a full update, writing an entry
/// into every index of `deliveries` (about 45 % more WAL per message).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claims_are_heap_only_updates() {
    let Some(ns) = service::namespace().await else {
        return;
    };
    let b = &ns.backend;
    let schema = b.schema().to_owned();
    b.publish_batch(
        "hot",
        (0..300).map(|i| Message::new(format!("m{i}"))).collect(),
    )
    .await
    .expect("publish");
    let mut sub = b
        .subscribe(
            SubscribeOptions::new("hot")
                .group("g")
                .start(StartPosition::Earliest)
                .max_in_flight(100),
        )
        .await
        .expect("subscribe");
    for _ in 0..300 {
        expect_delivery(&mut sub, "a delivery")
            .await
            .ack()
            .await
            .expect("ack");
    }
    drop(sub);
    // Server processes report their statistics when they exit at the latest.
    b.close().await.expect("close");
    let pool = sqlx::PgPool::connect(&service::url())
        .await
        .expect("connect");
    let mut seen = (0, 0);
    for _ in 0..100 {
        let (_, all, hot) = deliveries_stats(&pool, &schema).await;
        seen = (all, hot);
        if seen.0 >= 300 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (all, hot) = seen;
    assert!(all >= 300, "300 claims: {all} updates counted");
    assert_eq!(hot, all, "every claim a heap-only update");
    pool.close().await;
}

/// A schema made before session 23 has an index on `token` and full pages:
/// connecting drops the one and sets the other, and its deliveries still
/// settle.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connecting_to_an_older_schema_drops_the_token_index() {
    let Some(ns) = service::namespace().await else {
        return;
    };
    let schema = ns.backend.schema().to_owned();
    let pool = ns.backend.pool().clone();
    sqlx::raw_sql(&format!(
        "CREATE INDEX deliveries_token ON {schema}.deliveries (token); \
         ALTER TABLE {schema}.deliveries RESET (fillfactor)"
    ))
    .execute(&pool)
    .await
    .expect("the older layout");
    ns.backend
        .publish("older", Message::new("before"))
        .await
        .expect("publish");

    let again =
        wharf_postgres::PostgresBackend::connect(service::config_at(&service::url(), &schema))
            .await
            .expect("connect again");
    let indexes: Vec<String> = sqlx::query_scalar(
        "SELECT indexname::text FROM pg_indexes WHERE schemaname = $1 AND tablename = 'deliveries' \
         ORDER BY 1",
    )
    .bind(&schema)
    .fetch_all(&pool)
    .await
    .expect("pg_indexes");
    assert_eq!(indexes, ["deliveries_pkey", "deliveries_ready"]);
    let options: Option<Vec<String>> = sqlx::query_scalar(
        "SELECT reloptions FROM pg_class WHERE oid = ($1 || '.deliveries')::regclass",
    )
    .bind(&schema)
    .fetch_one(&pool)
    .await
    .expect("pg_class");
    assert_eq!(options, Some(vec!["fillfactor=40".to_owned()]));

    let mut sub = again
        .subscribe(
            SubscribeOptions::new("older")
                .group("g")
                .start(StartPosition::Earliest),
        )
        .await
        .expect("subscribe");
    let d = expect_delivery(&mut sub, "the older message").await;
    assert_eq!(d.message().payload().as_ref(), b"before");
    d.ack().await.expect("ack");
    again.close().await.expect("close");
}

/// An ack whose future is dropped before it finishes (a caller's timeout)
/// still gives its in-flight slot back: with room for one delivery, the
/// next message arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_ack_future_gives_its_slot_back() {
    let Some(ns) = service::namespace().await else {
        return;
    };
    let b = &ns.backend;
    b.publish_batch("slots", vec![Message::new("a"), Message::new("b")])
        .await
        .expect("publish");
    let mut sub = b
        .subscribe(
            SubscribeOptions::new("slots")
                .group("g")
                .start(StartPosition::Earliest)
                .max_in_flight(1),
        )
        .await
        .expect("subscribe");
    let first = expect_delivery(&mut sub, "the first message").await;
    // Polled once (the ack is queued; its commit is a round trip away),
    // then dropped.
    let mut ack = Box::pin(first.ack());
    let polled = std::future::poll_fn(|cx| std::task::Poll::Ready(ack.as_mut().poll(cx))).await;
    assert!(polled.is_pending(), "the ack finished at its first poll");
    drop(ack);
    let second = expect_delivery(&mut sub, "the second message").await;
    assert_eq!(second.message().payload().as_ref(), b"b");
    second.ack().await.expect("ack");
}
