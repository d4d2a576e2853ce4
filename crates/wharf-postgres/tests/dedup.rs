//! The PostgreSQL dedup store against the shared server: a key is claimed
//! once until its TTL passes or it is released.

mod service;

use std::time::Duration;

use wharf_postgres::PgDedupStore;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_is_claimed_once_until_released_or_expired() {
    let Some(ns) = service::namespace().await else {
        return;
    };
    let store = PgDedupStore::new(ns.backend.pool().clone(), ns.config.schema_name())
        .await
        .expect("dedup table");
    let ttl = Duration::from_secs(60);
    assert!(store.check_and_set("order-1", ttl).await.expect("first"));
    assert!(!store
        .check_and_set("order-1", ttl)
        .await
        .expect("duplicate"));
    assert!(store
        .check_and_set("order-2", ttl)
        .await
        .expect("other key"));
    store.release("order-1").await.expect("release");
    assert!(store
        .check_and_set("order-1", ttl)
        .await
        .expect("after release"));

    let short = Duration::from_millis(100);
    assert!(store.check_and_set("brief", short).await.expect("brief"));
    assert!(!store
        .check_and_set("brief", short)
        .await
        .expect("brief again"));
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(store.sweep().await.expect("sweep"), 1);
    assert!(store
        .check_and_set("brief", short)
        .await
        .expect("after expiry"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_claims_of_one_key_have_one_winner() {
    let Some(ns) = service::namespace().await else {
        return;
    };
    let store = PgDedupStore::new(ns.backend.pool().clone(), ns.config.schema_name())
        .await
        .expect("dedup table");
    let claims = (0..8).map(|_| {
        let s = store.clone();
        tokio::spawn(async move { s.check_and_set("contended", Duration::from_secs(60)).await })
    });
    let mut winners = 0;
    for c in claims {
        if c.await.expect("join").expect("claim") {
            winners += 1;
        }
    }
    assert_eq!(winners, 1);
}
