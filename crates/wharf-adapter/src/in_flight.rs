//! [`InFlight`]: what a subscription has handed out and not yet settled.
//!
//! An adapter's acker keeps its own per-delivery record `P` (a reply
//! subject, a stream entry id, …) here under the token the `Delivery`
//! carries; settling takes it back out, which also stops the delivery's
//! lease keeper and frees its in-flight slot. A delivery whose lease ran out
//! (or whose message the server handed out again) settles nothing: an ack
//! there would settle the new lease of the redelivery.

use foldhash::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use wharf_core::{Error, Result};

/// A delivery handed out: the adapter's record and the task, if any,
/// keeping its lease alive.
struct Held<P> {
    record: P,
    keeper: Option<JoinHandle<()>>,
    /// When the server's lease ends, if it has one: settling after it fails.
    deadline: Option<Instant>,
}

impl<P> Held<P> {
    fn expired(&self) -> bool {
        self.deadline.is_some_and(|d| d <= Instant::now())
    }
}

/// The unsettled deliveries of one subscription, by token, and its
/// in-flight slots (a semaphore with one permit per slot).
///
/// The reader task takes slots with [`InFlight::reserve`] before it reads,
/// forgets one per delivery it hands out and returns the unused ones with
/// [`InFlight::free`]; [`InFlight::take`] returns a delivery's slot.
pub struct InFlight<P> {
    permits: Arc<Semaphore>,
    held: Mutex<HashMap<u64, Held<P>>>,
    next_token: AtomicU64,
}

impl<P> InFlight<P> {
    /// A registry with `max_in_flight` free slots; tokens start at 1.
    pub fn new(max_in_flight: usize) -> Self {
        InFlight {
            permits: Arc::new(Semaphore::new(max_in_flight)),
            held: Mutex::new(HashMap::default()),
            next_token: AtomicU64::new(1),
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<u64, Held<P>>> {
        self.held.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits for a free slot, then also takes every other free one, up to
    /// `max` in all, and returns how many it took (the caller now holds
    /// them). `None` if the slots were closed.
    ///
    /// # Cancel safety
    /// Cancel safe: no slot is taken unless the future completes.
    pub async fn reserve(&self, max: usize) -> Option<usize> {
        let first = self.permits.acquire().await.ok()?;
        first.forget();
        let mut n = 1;
        let extra = self.permits.available_permits().min(max.saturating_sub(1));
        if extra > 0 {
            if let Ok(p) = self
                .permits
                .try_acquire_many(u32::try_from(extra).unwrap_or(0))
            {
                p.forget();
                n += extra;
            }
        }
        Some(n)
    }

    /// Returns `n` slots taken with [`InFlight::reserve`] and not used.
    pub fn free(&self, n: usize) {
        self.permits.add_permits(n);
    }

    /// Records a delivery handed out on a reserved slot; returns its token.
    pub fn register(&self, record: P) -> u64 {
        self.register_leased(record, None)
    }

    /// Records deliveries handed out on reserved slots, under one lock;
    /// returns the first one's token (the others follow it: `first + i`
    /// is the token of the `i`th record).
    pub fn register_all(&self, records: impl ExactSizeIterator<Item = P>) -> u64 {
        self.register_all_leased(records, None)
    }

    /// [`InFlight::register_all`] of deliveries whose leases on the server
    /// run for `lease` from now (`None`: no lease), with one clock read for
    /// the batch; as [`InFlight::register_leased`] for each, settling one
    /// fails once its lease has run out.
    pub fn register_all_leased(
        &self,
        records: impl ExactSizeIterator<Item = P>,
        lease: Option<Duration>,
    ) -> u64 {
        let n = records.len() as u64;
        let first = self.next_token.fetch_add(n, Ordering::Relaxed);
        let deadline = lease.map(|l| Instant::now() + l);
        let mut held = self.lock();
        held.reserve(records.len());
        for (token, record) in (first..).zip(records) {
            held.insert(
                token,
                Held {
                    record,
                    keeper: None,
                    deadline,
                },
            );
        }
        first
    }

    /// Records a delivery whose lease on the server runs for `lease` from
    /// now (`None`: no lease); returns its token. Once the lease has run
    /// out, [`InFlight::take`] and [`InFlight::get`] fail for it: the server
    /// may have handed the message out again.
    pub fn register_leased(&self, record: P, lease: Option<Duration>) -> u64 {
        let token = self.next_token.fetch_add(1, Ordering::Relaxed);
        self.lock().insert(
            token,
            Held {
                record,
                keeper: None,
                deadline: lease.map(|l| Instant::now() + l),
            },
        );
        token
    }

    /// Ends the lease of every held delivery `stale` matches, because the
    /// server handed its message out again: settling those fails from now on
    /// (releasing them only frees their slot).
    pub fn supersede(&self, stale: impl Fn(&P) -> bool) {
        let now = Instant::now();
        for h in self.lock().values_mut().filter(|h| stale(&h.record)) {
            h.deadline = Some(now);
        }
    }

    /// Removes a delivery, stops its lease keeper and frees its slot.
    ///
    /// # Errors
    /// [`Error::UnknownDelivery`] when `token` is not held (already
    /// settled), or its lease ran out (it is removed all the same).
    pub fn take(&self, token: u64) -> Result<P> {
        let mut held = self.lock().remove(&token).ok_or_else(|| unknown(token))?;
        if let Some(k) = held.keeper.take() {
            k.abort();
        }
        self.permits.add_permits(1);
        if held.expired() {
            return Err(unknown(token));
        }
        Ok(held.record)
    }

    /// [`InFlight::take`] of each of `tokens` under one lock: the records
    /// taken go to `taken` with their tokens, the failures to `failed`.
    pub fn take_many(
        &self,
        tokens: &[u64],
        taken: &mut Vec<(u64, P)>,
        failed: &mut Vec<(u64, Error)>,
    ) {
        let mut freed = 0;
        {
            let mut held = self.lock();
            for &token in tokens {
                let Some(mut h) = held.remove(&token) else {
                    failed.push((token, unknown(token)));
                    continue;
                };
                freed += 1;
                if let Some(k) = h.keeper.take() {
                    k.abort();
                }
                if h.expired() {
                    failed.push((token, unknown(token)));
                } else {
                    taken.push((token, h.record));
                }
            }
        }
        self.permits.add_permits(freed);
    }

    /// Reads the record of a delivery still held.
    ///
    /// # Errors
    /// [`Error::UnknownDelivery`] when `token` is not held or its lease ran out.
    pub fn get<R>(&self, token: u64, read: impl FnOnce(&P) -> R) -> Result<R> {
        self.lock()
            .get(&token)
            .filter(|h| !h.expired())
            .map(|h| read(&h.record))
            .ok_or_else(|| unknown(token))
    }

    /// Keeps the lease of `token` alive until `by` from now: a task on
    /// `runtime` runs `touch` (which restarts a lease of length `lease` on
    /// the server) every `lease / 2`, at least every 10 ms, until a lease
    /// started then would cover `by`. It replaces an earlier keeper of the
    /// same delivery and stops when the delivery is settled; if the
    /// delivery is already gone it is stopped at once.
    ///
    /// The caller touches once itself first; this only spawns when `by`
    /// is longer than one lease.
    pub fn keep_lease<F, Fut>(
        &self,
        token: u64,
        runtime: &tokio::runtime::Handle,
        lease: Duration,
        by: Duration,
        mut touch: F,
    ) where
        F: FnMut() -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send,
    {
        if let Some(h) = self.lock().get_mut(&token) {
            if h.deadline.is_some() {
                h.deadline = Some(Instant::now() + by.max(lease));
            }
        }
        if by <= lease {
            return;
        }
        let every = (lease / 2).max(Duration::from_millis(10));
        let until = tokio::time::Instant::now() + by;
        let keeper = runtime.spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                touch().await;
                if tokio::time::Instant::now() + lease >= until {
                    break;
                }
            }
        });
        match self.lock().get_mut(&token) {
            Some(h) => {
                if let Some(old) = h.keeper.replace(keeper) {
                    old.abort();
                }
            }
            None => keeper.abort(),
        }
    }
}

fn unknown(token: u64) -> Error {
    Error::UnknownDelivery {
        id: token.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use super::*;

    #[tokio::test]
    async fn reserve_takes_what_is_free_and_take_returns_one_slot() {
        let f = InFlight::new(3);
        assert_eq!(f.reserve(2).await, Some(2));
        let t = f.register("a");
        assert_eq!(f.reserve(8).await, Some(1));
        f.free(1);
        assert_eq!(f.get(t, |r| *r).expect("held"), "a");
        assert_eq!(f.take(t).expect("held"), "a");
        assert!(matches!(f.take(t), Err(Error::UnknownDelivery { .. })));
        // One slot freed by `free`, one by `take`; one is still reserved.
        assert_eq!(f.reserve(8).await, Some(2));
    }

    #[tokio::test]
    async fn batches_register_consecutive_tokens_and_take_many_frees_each_slot_once() {
        let f = InFlight::new(4);
        assert_eq!(f.reserve(4).await, Some(4));
        let first = f.register_all(["a", "b", "c"].into_iter());
        let lone = f.register("d");
        assert_eq!(lone, first + 3, "tokens stay unique across the two forms");
        assert_eq!(f.get(first + 1, |r| *r).expect("held"), "b");
        let (mut taken, mut failed) = (Vec::new(), Vec::new());
        // `first + 1` twice: the second take fails, and frees nothing more.
        f.take_many(
            &[first + 2, first + 1, first + 1, 999],
            &mut taken,
            &mut failed,
        );
        assert_eq!(taken, [(first + 2, "c"), (first + 1, "b")]);
        let failed: Vec<u64> = failed.iter().map(|(t, _)| *t).collect();
        assert_eq!(failed, [first + 1, 999]);
        assert_eq!(f.reserve(8).await, Some(2), "two slots came back");
        assert_eq!(f.take(first).expect("still held"), "a");
    }

    #[tokio::test(start_paused = true)]
    async fn settling_after_the_lease_ran_out_or_was_superseded_fails_and_frees_the_slot() {
        let f = InFlight::new(2);
        assert_eq!(f.reserve(2).await, Some(2));
        let lease = Duration::from_secs(10);
        let late = f.register_leased("late", Some(lease));
        let redelivered = f.register_leased("again", Some(lease));
        tokio::time::sleep(lease / 2).await;
        f.keep_lease(
            late,
            &tokio::runtime::Handle::current(),
            lease,
            lease,
            || async {},
        );
        f.supersede(|r| *r == "again");
        assert!(matches!(
            f.get(redelivered, |r| *r),
            Err(Error::UnknownDelivery { .. })
        ));
        assert!(matches!(
            f.take(redelivered),
            Err(Error::UnknownDelivery { .. })
        ));
        // Extended at 5 s to 15 s: still held at 12 s, gone at 16 s.
        tokio::time::sleep(Duration::from_secs(7)).await;
        assert_eq!(f.get(late, |r| *r).expect("extended"), "late");
        tokio::time::sleep(Duration::from_secs(4)).await;
        assert!(matches!(f.take(late), Err(Error::UnknownDelivery { .. })));
        // Both slots came back.
        assert_eq!(f.reserve(8).await, Some(2));
    }

    #[tokio::test(start_paused = true)]
    async fn a_batch_registered_with_a_lease_expires_together() {
        let f = InFlight::new(3);
        assert_eq!(f.reserve(3).await, Some(3));
        let lease = Duration::from_secs(10);
        let first = f.register_all_leased(["a", "b", "c"].into_iter(), Some(lease));
        tokio::time::sleep(lease / 2).await;
        assert_eq!(f.take(first).expect("within the lease"), "a");
        tokio::time::sleep(lease).await;
        assert!(matches!(
            f.get(first + 1, |r| *r),
            Err(Error::UnknownDelivery { .. })
        ));
        let (mut taken, mut failed) = (Vec::new(), Vec::new());
        f.take_many(&[first + 1, first + 2], &mut taken, &mut failed);
        assert!(taken.is_empty(), "both leases ran out");
        assert_eq!(failed.len(), 2);
        assert_eq!(f.reserve(8).await, Some(3), "every slot came back");
    }

    /// A `touch` that only counts its calls in `touches`.
    fn counting(touches: &Arc<AtomicUsize>) -> impl FnMut() -> std::future::Ready<()> + Send {
        let touches = touches.clone();
        move || {
            touches.fetch_add(1, Ordering::Relaxed);
            std::future::ready(())
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_lease_keeper_touches_until_covered_and_stops_when_settled() {
        let f = InFlight::new(1);
        let t = f.register(());
        let touches = Arc::new(AtomicUsize::new(0));
        let rt = tokio::runtime::Handle::current();
        let lease = Duration::from_secs(10);
        f.keep_lease(t, &rt, lease, lease * 3, counting(&touches));
        tokio::time::sleep(Duration::from_secs(60)).await;
        // Touches at 5, 10, 15 and 20 s: a lease from 20 s reaches 30 s.
        assert_eq!(touches.load(Ordering::Relaxed), 4);

        f.keep_lease(t, &rt, lease, lease * 100, counting(&touches));
        tokio::time::sleep(Duration::from_secs(6)).await;
        f.take(t).expect("held");
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert_eq!(
            touches.load(Ordering::Relaxed),
            5,
            "stopped by the settlement"
        );
    }
}
