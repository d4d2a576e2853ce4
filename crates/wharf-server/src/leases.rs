//! Deliveries handed out by HTTP long polls, held until the client settles
//! them by their opaque id or the lease expires (then they are dropped, so
//! the broker redelivers them).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use wharf_core::{Delivery, MessageId};

use crate::Shared;

struct Lease {
    delivery: Delivery,
    topic: String,
    deadline: Instant,
}

/// The held deliveries, keyed by opaque lease id.
#[derive(Default)]
pub(crate) struct Leases {
    map: Mutex<HashMap<String, Lease>>,
}

impl Leases {
    /// Holds `delivery` for `lease`; returns its opaque id.
    pub(crate) fn insert(&self, delivery: Delivery, lease: Duration) -> String {
        let id = MessageId::new().to_string();
        let topic = delivery.topic().to_owned();
        self.lock().insert(
            id.clone(),
            Lease {
                delivery,
                topic,
                deadline: Instant::now() + lease,
            },
        );
        id
    }

    /// The topic of a held delivery (for auth), if held.
    pub(crate) fn topic(&self, id: &str) -> Option<String> {
        self.lock().get(id).map(|l| l.topic.clone())
    }

    /// Takes a held delivery out to settle it.
    pub(crate) fn take(&self, id: &str) -> Option<Delivery> {
        self.lock().remove(id).map(|l| l.delivery)
    }

    /// Holds `delivery` again under an existing id (after an extend).
    pub(crate) fn put(&self, id: String, delivery: Delivery, lease: Duration) {
        let topic = delivery.topic().to_owned();
        self.lock().insert(
            id,
            Lease {
                delivery,
                topic,
                deadline: Instant::now() + lease,
            },
        );
    }

    /// Drops every held delivery (at shutdown).
    pub(crate) fn clear(&self) {
        let drained: Vec<Lease> = self.lock().drain().map(|(_, l)| l).collect();
        drop(drained);
    }

    fn expire(&self, now: Instant) -> usize {
        let expired: Vec<Lease> = {
            let mut map = self.lock();
            let ids: Vec<String> = map
                .iter()
                .filter(|(_, l)| l.deadline <= now)
                .map(|(id, _)| id.clone())
                .collect();
            ids.iter().filter_map(|id| map.remove(id)).collect()
        };
        expired.len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Lease>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Expires leases every 250 ms until the task is aborted.
pub(crate) async fn reap(shared: Arc<Shared>) {
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    loop {
        tick.tick().await;
        let n = shared.leases.expire(Instant::now());
        if n > 0 {
            tracing::debug!(
                expired = n,
                "HTTP leases expired; messages will be redelivered"
            );
        }
    }
}
