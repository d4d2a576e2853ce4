//! [`RedbDedupStore`]: an embedded, durable [`DedupStore`] in a redb file, for
//! services that run the embedded broker (or any backend) on one machine and
//! want deduplication to survive a restart without a Redis or PostgreSQL.

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use redb::{Database, ReadableTable, TableDefinition};
use wharf_core::BoxError;

use super::DedupStore;

/// Key → expiry in milliseconds since the Unix epoch.
const KEYS: TableDefinition<&str, u64> = TableDefinition::new("dedup_keys");
/// Claims between two sweeps of expired keys.
const SWEEP_EVERY: usize = 1024;

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// A [`DedupStore`] in a redb database file. Each claim and release is one
/// fsync'd write transaction, so a claimed key survives a crash; expiry uses
/// wall-clock time, so it also holds across restarts. Expired keys are swept
/// every 1,024 claims.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// use std::time::Duration;
/// use wharf_router::dedup::{DedupStore, RedbDedupStore};
/// let dir = tempfile::tempdir().unwrap();
/// let store = RedbDedupStore::open(dir.path().join("dedup.redb")).unwrap();
/// assert!(store.claim("order-7", Duration::from_secs(60)).await.unwrap());
/// assert!(!store.claim("order-7", Duration::from_secs(60)).await.unwrap());
/// # }
/// ```
#[derive(Clone)]
pub struct RedbDedupStore {
    db: Arc<Database>,
    claims: Arc<AtomicUsize>,
}

impl std::fmt::Debug for RedbDedupStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedbDedupStore").finish_non_exhaustive()
    }
}

impl RedbDedupStore {
    /// Opens (creating if needed) the store at `path`.
    ///
    /// # Errors
    /// The file cannot be created or opened (also when another process has it open).
    pub fn open(path: impl AsRef<Path>) -> Result<Self, BoxError> {
        let db = Database::create(path.as_ref())?;
        let txn = db.begin_write()?;
        txn.open_table(KEYS)?;
        txn.commit()?;
        Ok(RedbDedupStore {
            db: Arc::new(db),
            claims: Arc::new(AtomicUsize::new(0)),
        })
    }

    /// Runs a blocking redb operation off the async runtime.
    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Database) -> Result<T, BoxError> + Send + 'static,
    ) -> Result<T, BoxError> {
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || f(&db)).await?
    }

    fn sweep(db: &Database, now: u64) -> Result<(), BoxError> {
        let txn = db.begin_write()?;
        {
            let mut t = txn.open_table(KEYS)?;
            t.retain(|_, expires| expires > now)?;
        }
        txn.commit()?;
        Ok(())
    }
}

#[async_trait]
impl DedupStore for RedbDedupStore {
    async fn claim(&self, key: &str, ttl: Duration) -> Result<bool, BoxError> {
        let key = key.to_owned();
        let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
        let sweep = self.claims.fetch_add(1, Ordering::Relaxed) % SWEEP_EVERY == SWEEP_EVERY - 1;
        self.blocking(move |db| {
            let now = now_ms();
            if sweep {
                Self::sweep(db, now)?;
            }
            let txn = db.begin_write()?;
            let fresh = {
                let mut t = txn.open_table(KEYS)?;
                let live = t.get(key.as_str())?.is_some_and(|v| v.value() > now);
                if !live {
                    t.insert(key.as_str(), now.saturating_add(ttl_ms))?;
                }
                !live
            };
            txn.commit()?;
            Ok(fresh)
        })
        .await
    }

    async fn release(&self, key: &str) -> Result<(), BoxError> {
        let key = key.to_owned();
        self.blocking(move |db| {
            let txn = db.begin_write()?;
            txn.open_table(KEYS)?.remove(key.as_str())?;
            txn.commit()?;
            Ok(())
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn claim_is_exclusive_until_released() {
        let dir = tempfile::tempdir().unwrap();
        let s = RedbDedupStore::open(dir.path().join("d.redb")).unwrap();
        let ttl = Duration::from_secs(60);
        assert!(s.claim("a", ttl).await.unwrap());
        assert!(!s.claim("a", ttl).await.unwrap());
        assert!(s.claim("b", ttl).await.unwrap());
        s.release("a").await.unwrap();
        assert!(s.claim("a", ttl).await.unwrap());
    }

    #[tokio::test]
    async fn an_expired_claim_can_be_claimed_again() {
        let dir = tempfile::tempdir().unwrap();
        let s = RedbDedupStore::open(dir.path().join("d.redb")).unwrap();
        assert!(s.claim("a", Duration::ZERO).await.unwrap());
        assert!(
            s.claim("a", Duration::ZERO).await.unwrap(),
            "expired at once"
        );
        assert!(s.claim("b", Duration::from_secs(60)).await.unwrap());
        // A sweep removes expired keys and keeps live ones.
        RedbDedupStore::sweep(&s.db, now_ms() + 1).unwrap();
        assert!(!s.claim("b", Duration::from_secs(60)).await.unwrap());
    }

    #[tokio::test]
    async fn claims_survive_reopening_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.redb");
        {
            let s = RedbDedupStore::open(&path).unwrap();
            assert!(s.claim("order-1", Duration::from_secs(60)).await.unwrap());
        }
        let s = RedbDedupStore::open(&path).unwrap();
        assert!(!s.claim("order-1", Duration::from_secs(60)).await.unwrap());
    }
}
