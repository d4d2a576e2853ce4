//! Dropping a backend's schema right after its subscriptions: the dropped
//! subscriptions' background work (returning unsettled deliveries, a claim
//! in flight) takes row locks that can meet the `DROP`'s table locks in the
//! other order — a deadlock PostgreSQL resolves by failing one side. CI saw
//! the guide's PostgreSQL page fail so (`40P01` from `drop_schema`).

mod service;

use std::time::Duration;

use wharf_core::{Backend, Message, Publisher, StartPosition, SubscribeOptions, Subscriber};
use wharf_postgres::PostgresBackend;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drop_schema_right_after_dropping_busy_subscriptions_succeeds() {
    for round in 0..15 {
        let config = service::unique_config();
        let schema = config.schema_name().to_owned();
        let backend = match PostgresBackend::connect(config).await {
            Ok(b) => b,
            Err(e) => return service::skip_or_fail(&e),
        };
        // Dropped by the test's own call below; this only cleans up after a failure.
        let _cleanup = Cleanup(vec![schema]);
        let mut subs = Vec::new();
        for g in ["billing", "audit"] {
            let opts = SubscribeOptions::new("orders.*")
                .group(g)
                .start(StartPosition::Earliest);
            subs.push(backend.subscribe(opts).await.expect("subscribe"));
        }
        let batch: Vec<Message> = (0..20).map(|i| Message::new(format!("m{i}"))).collect();
        backend
            .publish_batch("orders.created", batch)
            .await
            .expect("publish");
        // One delivery acked, the rest claimed and left unsettled.
        for s in &mut subs {
            let d = tokio::time::timeout(Duration::from_secs(10), s.next())
                .await
                .expect("delivered")
                .expect("open")
                .expect("delivery");
            d.ack().await.expect("ack");
        }
        drop(subs);
        backend
            .drop_schema()
            .await
            .unwrap_or_else(|e| panic!("round {round}: drop_schema failed: {e}"));
        backend.close().await.expect("close");
    }
}

struct Cleanup(Vec<String>);

impl Drop for Cleanup {
    fn drop(&mut self) {
        service::drop_schemas_blocking(std::mem::take(&mut self.0));
    }
}
