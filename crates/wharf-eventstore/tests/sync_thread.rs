//! Under `Durability::Always` each embedded store runs one sync thread
//! (`wharf-es-sync`); it ends when the store closes, and when the store is
//! dropped without closing, so no thread keeps a dropped store's log and
//! files open. (Alone in its test binary: it counts this process's threads.)

use wharf_eventstore::{EmbeddedStore, EventData, EventStore, ExpectedVersion, StreamId};

/// Threads of this process named `wharf-es-sync`.
fn sync_threads() -> usize {
    std::fs::read_dir("/proc/self/task")
        .expect("/proc/self/task")
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .filter(|name| name.trim() == "wharf-es-sync")
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sync_thread_ends_when_the_store_closes_or_is_dropped() {
    assert_eq!(sync_threads(), 0);
    let mut stores = Vec::new();
    for i in 0..3 {
        let s = EmbeddedStore::temporary().await.expect("store");
        s.append(
            &StreamId::new(format!("s-{i}")).unwrap(),
            ExpectedVersion::NoStream,
            vec![EventData::new("T", "x")],
        )
        .await
        .expect("append");
        stores.push(s);
    }
    assert_eq!(sync_threads(), 3, "one per store");

    stores.pop().unwrap().close().await.expect("close");
    assert_eq!(sync_threads(), 2, "closing ends it");

    let clone = stores[0].clone();
    drop(stores.remove(0));
    assert_eq!(sync_threads(), 2, "a clone keeps the store, and its thread");
    drop(clone);
    drop(stores);
    assert_eq!(sync_threads(), 0, "dropping the last handle ends it");
}
