//! Group commit: appenders that need durability wait here. Whoever finds
//! no sync in progress becomes the leader and runs one sync round covering
//! everything written so far; waiters it covers are woken individually
//! (one `unpark` each, no thundering herd on a shared mutex), and if some
//! waiters arrived too late to be covered, leadership is handed to one of
//! them so the next round starts at once.

use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::Thread;

const WAITING: u8 = 0;
const DONE: u8 = 1;
const LEAD: u8 = 2;

#[derive(Debug)]
struct Waiter {
    target: u64,
    thread: Thread,
    state: AtomicU8,
}

#[derive(Debug, Default)]
struct State {
    syncing: bool,
    waiters: Vec<Arc<Waiter>>,
}

/// Shared durability progress of one log, in log sequence numbers (bytes
/// written by this process).
#[derive(Debug, Default)]
pub(crate) struct GroupCommit {
    synced: AtomicU64,
    rounds: AtomicU64,
    state: Mutex<State>,
}

impl GroupCommit {
    fn lock(&self) -> MutexGuard<'_, State> {
        // Only plain pushes and removals happen under this lock.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Sync rounds run by group-commit leaders.
    pub(crate) fn rounds(&self) -> u64 {
        self.rounds.load(Ordering::Relaxed)
    }

    /// Highest LSN known durable.
    pub(crate) fn synced(&self) -> u64 {
        self.synced.load(Ordering::Acquire)
    }

    /// Returns once `synced() >= target`, running sync rounds as leader
    /// when needed. `sync` makes everything written so far durable and
    /// returns the LSN it covered; `failed` reports a failed log.
    pub(crate) fn wait<E>(
        &self,
        target: u64,
        sync: impl Fn() -> Result<u64, E>,
        failed: impl Fn() -> Option<E>,
    ) -> Result<(), E> {
        loop {
            if let Some(e) = failed() {
                return Err(e);
            }
            if self.synced() >= target {
                return Ok(());
            }
            let mut st = self.lock();
            if self.synced() >= target {
                return Ok(());
            }
            if let Some(e) = failed() {
                return Err(e);
            }
            if !st.syncing {
                st.syncing = true;
                drop(st);
                return self.lead(&sync, &failed);
            }
            let me = Arc::new(Waiter {
                target,
                thread: std::thread::current(),
                state: AtomicU8::new(WAITING),
            });
            st.waiters.push(Arc::clone(&me));
            drop(st);
            loop {
                std::thread::park();
                match me.state.load(Ordering::Acquire) {
                    DONE => break,
                    LEAD => return self.lead(&sync, &failed),
                    _ => {}
                }
            }
        }
    }

    fn lead<E>(
        &self,
        sync: &impl Fn() -> Result<u64, E>,
        failed: &impl Fn() -> Option<E>,
    ) -> Result<(), E> {
        let res = match failed() {
            Some(e) => Err(e),
            None => sync(),
        };
        self.rounds.fetch_add(1, Ordering::Relaxed);
        if let Ok(lsn) = &res {
            self.synced.fetch_max(*lsn, Ordering::AcqRel);
        }
        let ok = res.is_ok() && failed().is_none();
        let synced = self.synced();
        let mut wake = Vec::new();
        let next = {
            let mut st = self.lock();
            st.waiters.retain(|w| {
                let covered = !ok || w.target <= synced;
                if covered {
                    wake.push(Arc::clone(w));
                }
                !covered
            });
            let next = st.waiters.pop();
            if next.is_none() {
                st.syncing = false;
            }
            next
        };
        for w in wake {
            w.state.store(DONE, Ordering::Release);
            w.thread.unpark();
        }
        if let Some(n) = next {
            n.state.store(LEAD, Ordering::Release);
            n.thread.unpark();
        }
        // A successful round answers the leader as its waiters are answered:
        // a cut-back (a failed roll while this round's fdatasync ran) may
        // have removed the leader's own write, and syncing the shorter file
        // does not make that write durable. A failed round keeps its error.
        match res {
            Err(e) => Err(e),
            Ok(_) => failed().map_or(Ok(()), Err),
        }
    }

    /// Records that everything up to `lsn` is durable (a roll, truncation
    /// or close synced it) and wakes the waiters it covers.
    pub(crate) fn mark_synced(&self, lsn: u64) {
        self.synced.fetch_max(lsn, Ordering::AcqRel);
        let synced = self.synced();
        self.wake_where(|w| w.target <= synced);
    }

    /// Wakes every waiter (the log failed; they will see it).
    pub(crate) fn wake_all(&self) {
        self.wake_where(|_| true);
    }

    fn wake_where(&self, pred: impl Fn(&Waiter) -> bool) {
        let mut wake = Vec::new();
        {
            let mut st = self.lock();
            st.waiters.retain(|w| {
                let hit = pred(w);
                if hit {
                    wake.push(Arc::clone(w));
                }
                !hit
            });
        }
        for w in wake {
            w.state.store(DONE, Ordering::Release);
            w.thread.unpark();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    #[test]
    fn concurrent_waiters_share_sync_rounds_and_all_return_covered() {
        let gc = Arc::new(GroupCommit::default());
        let written = Arc::new(AtomicU64::new(0));
        let rounds = Arc::new(AtomicUsize::new(0));
        let threads: Vec<_> = (0..16)
            .map(|_| {
                let (gc, written, rounds) =
                    (Arc::clone(&gc), Arc::clone(&written), Arc::clone(&rounds));
                std::thread::spawn(move || {
                    for _ in 0..100 {
                        let target = written.fetch_add(1, Ordering::SeqCst) + 1;
                        gc.wait(
                            target,
                            || {
                                rounds.fetch_add(1, Ordering::SeqCst);
                                std::thread::sleep(std::time::Duration::from_micros(200));
                                Ok::<u64, ()>(written.load(Ordering::SeqCst))
                            },
                            || None,
                        )
                        .expect("no failure");
                        assert!(gc.synced() >= target);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().expect("join");
        }
        let rounds = rounds.load(Ordering::SeqCst);
        assert!(rounds < 1600, "{rounds} sync rounds for 1600 waits");
    }

    #[test]
    fn a_failed_round_wakes_every_waiter_with_the_error() {
        let gc = GroupCommit::default();
        let r = gc.wait(5, || Err::<u64, &str>("eio"), || None);
        assert_eq!(r, Err("eio"));
        let r = gc.wait(5, || Ok::<u64, &str>(9), || Some("failed"));
        assert_eq!(r, Err("failed"));
        assert_eq!(gc.synced(), 0);
    }

    /// While the leader's fdatasync runs, a failed roll may cut the log back
    /// past the leader's own write: its sync succeeds on the shorter file,
    /// but its append is gone, so it must fail as its waiters do.
    #[test]
    fn a_leader_whose_write_was_cut_during_its_sync_fails() {
        let gc = GroupCommit::default();
        let cut = AtomicUsize::new(0);
        let r = gc.wait(
            5,
            || {
                cut.store(1, Ordering::SeqCst);
                Ok::<u64, &str>(9)
            },
            || (cut.load(Ordering::SeqCst) == 1).then_some("discarded"),
        );
        assert_eq!(r, Err("discarded"));
    }
}
