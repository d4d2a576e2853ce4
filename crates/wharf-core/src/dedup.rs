//! [`DedupStore`]: where an idempotent consumer remembers which messages it
//! has processed. Defined here, next to the other backend-facing traits, so
//! an adapter crate can implement it for its own engine without depending on
//! the router that uses it.

use std::time::Duration;

use async_trait::async_trait;

use crate::error::BoxError;

/// Remembers which message keys were claimed, for a time to live.
///
/// Implementations live with their storage: the router has an in-memory one
/// with TTL and an embedded durable one (redb); adapter crates implement it
/// on their engine (e.g. `SET key 1 NX EX ttl` / `DEL`, or a unique key with
/// `INSERT … ON CONFLICT DO NOTHING` / `DELETE`). The router's dedup layer
/// takes any of them.
#[async_trait]
pub trait DedupStore: Send + Sync + 'static {
    /// Records `key` for `ttl` unless it is already recorded. Returns `true`
    /// if this call recorded it (first time seen), `false` for a duplicate.
    ///
    /// # Errors
    /// The store could not be reached (the message is then retried).
    async fn claim(&self, key: &str, ttl: Duration) -> Result<bool, BoxError>;

    /// Forgets `key`, so a redelivery is processed again (called when the
    /// handler failed after claiming it).
    ///
    /// # Errors
    /// The store could not be reached.
    async fn release(&self, key: &str) -> Result<(), BoxError>;
}
