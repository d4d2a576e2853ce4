//! With the `eventstore` and `postgres` features, the PostgreSQL event
//! store is reachable as `wharf::eventstore::postgres` (one dependency for a
//! newcomer): an append and a read through those paths against the shared
//! server, in a schema of its own. Skips (or fails under
//! `WHARF_REQUIRE_SERVICES=1`) when PostgreSQL is down.

#![cfg(all(feature = "eventstore", feature = "postgres"))]

use wharf::eventstore::postgres::PgEventStore;
use wharf::eventstore::{EventData, EventStore, ExpectedVersion, ReadStream, StreamId};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_postgres_event_store_through_the_facade() {
    let url = std::env::var("WHARF_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    let schema = wharf_testkit::unique_name("wfes").replace('-', "_");
    let store = match PgEventStore::builder(url.as_str())
        .schema(&schema)
        .max_connections(2)
        .connect()
        .await
    {
        Ok(s) => s,
        Err(e @ wharf::eventstore::EventStoreError::Unavailable { .. }) => {
            wharf_testkit::service::report_unreachable("postgres", &url, &e);
            return;
        }
        Err(e) => panic!("connect: {e}"),
    };
    let s = StreamId::new("order-1").expect("stream");
    let result = async {
        store
            .append(
                &s,
                ExpectedVersion::NoStream,
                vec![EventData::new("OrderPlaced", "{}")],
            )
            .await?;
        store.read_stream(&s, ReadStream::forwards()).await
    }
    .await;
    store.close().await.expect("close");
    // The store's pool is closed; drop the schema on a pool of its own.
    let cleanup = wharf::postgres::sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect(&url)
        .await
        .expect("cleanup pool");
    wharf::postgres::sqlx::raw_sql(&format!("DROP SCHEMA {schema} CASCADE"))
        .execute(&cleanup)
        .await
        .expect("drop schema");
    let events = result.expect("append and read");
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].event_type, "OrderPlaced");
}
