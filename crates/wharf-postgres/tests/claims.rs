//! A burst of messages makes the planner's statistics of `deliveries`
//! stale (autovacuum analyses a table at most once a minute), and with them
//! every claim was a scan of all the group's rows and a sort on disk; so a
//! fetcher that materialises 10,000 rows or more runs `ANALYZE` on
//! `deliveries` itself, and a small one does not.

mod service;

use std::time::Duration;

use wharf_core::{Message, Publisher, StartPosition, SubscribeOptions, Subscriber};
use wharf_testkit::expect_delivery;

/// `ANALYZE` runs on the schema's `deliveries` so far (manual ones only:
/// autovacuum's are counted apart).
async fn analyze_count(b: &wharf_postgres::PostgresBackend) -> i64 {
    sqlx::query_scalar(
        "SELECT analyze_count FROM pg_stat_user_tables WHERE schemaname = $1 AND relname = 'deliveries'",
    )
    .bind(b.schema())
    .fetch_one(b.pool())
    .await
    .expect("pg_stat_user_tables")
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
