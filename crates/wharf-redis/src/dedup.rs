//! A dedup store on `SET key 1 NX EX ttl`: the first caller for a key wins
//! for `ttl`, everyone else sees a duplicate. For the router's dedup middleware.

use std::time::Duration;

use async_trait::async_trait;
use redis::aio::MultiplexedConnection;
use wharf_core::{BoxError, DedupStore, Result};

use crate::error::map;

/// Remembers keys for a while in Redis, under `<prefix>:dedup:`.
///
/// ```no_run
/// # async fn f() -> wharf_core::Result<()> {
/// use std::time::Duration;
/// use wharf_redis::{RedisBackend, RedisConfig, RedisDedupStore};
/// let backend = RedisBackend::connect(RedisConfig::new("redis://127.0.0.1:6379")).await?;
/// let store = RedisDedupStore::new(backend.connection(), "wharf");
/// assert!(store.check_and_set("order-42", Duration::from_secs(60)).await?);
/// assert!(!store.check_and_set("order-42", Duration::from_secs(60)).await?);
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct RedisDedupStore {
    conn: MultiplexedConnection,
    prefix: String,
}

impl RedisDedupStore {
    /// A store using `conn`, keeping keys under `<prefix>:dedup:`.
    pub fn new(conn: MultiplexedConnection, prefix: impl Into<String>) -> Self {
        RedisDedupStore {
            conn,
            prefix: prefix.into(),
        }
    }

    /// Records `key` for `ttl` (at least one second; Redis `EX` counts whole
    /// seconds, so `ttl` is rounded up). Returns `true` if it was not
    /// recorded yet (first sight: process the message), `false` if it was
    /// (a duplicate).
    ///
    /// # Errors
    /// [`wharf_core::Error::Unavailable`] / [`wharf_core::Error::Timeout`]
    /// when Redis cannot be reached.
    pub async fn check_and_set(&self, key: &str, ttl: Duration) -> Result<bool> {
        let secs = ttl.as_secs() + u64::from(ttl.subsec_nanos() > 0);
        let set: Option<String> = redis::cmd("SET")
            .arg(format!("{}:dedup:{key}", self.prefix))
            .arg(1)
            .arg("NX")
            .arg("EX")
            .arg(secs.max(1))
            .query_async(&mut self.conn.clone())
            .await
            .map_err(|e| map("SET NX", e))?;
        Ok(set.is_some())
    }

    /// Forgets `key`, so the next [`RedisDedupStore::check_and_set`] for it
    /// succeeds (the router releases a key when its handler failed).
    ///
    /// # Errors
    /// As [`RedisDedupStore::check_and_set`].
    pub async fn release(&self, key: &str) -> Result<()> {
        let _: i64 = redis::cmd("DEL")
            .arg(format!("{}:dedup:{key}", self.prefix))
            .query_async(&mut self.conn.clone())
            .await
            .map_err(|e| map("DEL", e))?;
        Ok(())
    }
}

/// The router's dedup seam: `DedupLayer::new(Arc::new(store))`.
#[async_trait]
impl DedupStore for RedisDedupStore {
    async fn claim(&self, key: &str, ttl: Duration) -> std::result::Result<bool, BoxError> {
        Ok(self.check_and_set(key, ttl).await?)
    }

    async fn release(&self, key: &str) -> std::result::Result<(), BoxError> {
        Ok(RedisDedupStore::release(self, key).await?)
    }
}

impl std::fmt::Debug for RedisDedupStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisDedupStore")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}
