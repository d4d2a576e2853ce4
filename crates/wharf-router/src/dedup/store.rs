//! The in-process [`MemoryDedupStore`] with TTL (the [`DedupStore`] trait
//! itself lives in `wharf-core`, so adapters can implement it).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use tokio::time::Instant;
use wharf_core::{BoxError, DedupStore};

/// An in-memory [`DedupStore`]: keys expire after their TTL (tokio time, so
/// the paused test clock drives it). Expired keys are swept as new ones come.
#[derive(Debug, Default)]
pub struct MemoryDedupStore {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    keys: HashMap<String, Instant>,
    inserts_since_sweep: usize,
}

impl MemoryDedupStore {
    /// An empty store.
    pub fn new() -> Self {
        MemoryDedupStore::default()
    }

    /// Number of keys held (including expired ones not yet swept).
    pub fn len(&self) -> usize {
        self.lock().keys.len()
    }

    /// Whether no key is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[async_trait]
impl DedupStore for MemoryDedupStore {
    async fn claim(&self, key: &str, ttl: Duration) -> Result<bool, BoxError> {
        let now = Instant::now();
        let mut inner = self.lock();
        if let Some(expires) = inner.keys.get(key) {
            if *expires > now {
                return Ok(false);
            }
        }
        inner.keys.insert(key.to_owned(), now + ttl);
        inner.inserts_since_sweep += 1;
        if inner.inserts_since_sweep >= 1024 && inner.inserts_since_sweep >= inner.keys.len() / 2 {
            inner.keys.retain(|_, exp| *exp > now);
            inner.inserts_since_sweep = 0;
        }
        Ok(true)
    }

    async fn release(&self, key: &str) -> Result<(), BoxError> {
        self.lock().keys.remove(key);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn claim_is_true_once_until_the_ttl_expires() {
        let s = MemoryDedupStore::new();
        let ttl = Duration::from_secs(60);
        assert!(s.claim("a", ttl).await.unwrap());
        assert!(!s.claim("a", ttl).await.unwrap());
        assert!(s.claim("b", ttl).await.unwrap());
        tokio::time::advance(Duration::from_secs(61)).await;
        assert!(s.claim("a", ttl).await.unwrap());
    }

    #[tokio::test(start_paused = true)]
    async fn release_lets_the_key_be_claimed_again() {
        let s = MemoryDedupStore::new();
        assert!(s.claim("a", Duration::from_secs(60)).await.unwrap());
        s.release("a").await.unwrap();
        assert!(s.claim("a", Duration::from_secs(60)).await.unwrap());
    }

    #[tokio::test(start_paused = true)]
    async fn expired_keys_are_swept() {
        let s = MemoryDedupStore::new();
        for i in 0..1000 {
            s.claim(&format!("old{i}"), Duration::from_secs(1))
                .await
                .unwrap();
        }
        tokio::time::advance(Duration::from_secs(2)).await;
        for i in 0..1100 {
            s.claim(&format!("new{i}"), Duration::from_secs(60))
                .await
                .unwrap();
        }
        assert!(s.len() <= 1100, "{}", s.len());
    }
}
