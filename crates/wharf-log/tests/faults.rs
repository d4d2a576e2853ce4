//! Fault injection through `SimStorage`: fsync failures, ENOSPC and short
//! writes surface as typed errors, store nothing of the failed append, and
//! never cost data acknowledged before the fault. Under `Always` the log
//! cuts its unacknowledged tail and goes on; an fsync failure under a
//! policy that had acknowledged unsynced data fails the log (fail-stop).

mod common;

use std::sync::Arc;

use common::{read_all, rec, sim_config};
use wharf_log::{Durability, IoOp, Log, LogError, SimStorage};

const DIR: &str = "/log";

#[test]
fn under_always_a_failed_fsync_fails_its_append_cuts_it_and_the_log_goes_on() {
    let sim = SimStorage::new();
    let log = Log::open(DIR, sim_config(&sim, Durability::Always, 1 << 20)).expect("open");
    for i in 0..10 {
        log.append(&[rec(i)]).expect("append");
    }
    sim.fail_next_syncs(1);
    let err = log.append(&[rec(10)]).expect_err("sync fails");
    assert!(
        matches!(&err, LogError::Io { op: IoOp::SyncData, path, .. } if path.ends_with("00000000000000000000.log")),
        "{err:?}"
    );
    // The unacknowledged batch was cut: its offset is given out again.
    assert_eq!(log.end_offset(), 10);
    assert_eq!(
        log.append(&[rec(11)]).expect("the log goes on").base_offset,
        10
    );
    log.close().expect("close");
    let after = sim.crash(|_, unsynced| unsynced);
    drop(log);
    let log = Log::open(DIR, sim_config(&after, Durability::Always, 1 << 20)).expect("reopen");
    let got: Vec<_> = read_all(&log).iter().map(|r| r.to_record()).collect();
    let want: Vec<_> = (0..10).chain([11]).map(rec).collect();
    assert_eq!(got, want);
}

#[test]
fn enospc_mid_batch_stores_nothing_of_it_and_appends_resume_once_space_is_back() {
    for durability in [Durability::Always, Durability::Never] {
        let sim = SimStorage::new();
        let log = Log::open(DIR, sim_config(&sim, durability, 1 << 20)).expect("open");
        for i in 0..10 {
            log.append(&[rec(i)]).expect("append");
        }
        sim.fail_writes_after(20);
        let err = log.append(&[rec(10), rec(11)]).expect_err("ENOSPC");
        match &err {
            LogError::Io { op, source, .. } => {
                assert_eq!(*op, IoOp::Write);
                assert_eq!(source.raw_os_error(), Some(28));
            }
            other => panic!("expected Io error, got {other:?}"),
        }
        assert!(err.is_storage_full(), "{err:?}");
        // Still full: a typed, retryable error again, not a failed log.
        let err = log.append(&[rec(12)]).expect_err("still full");
        assert!(err.is_storage_full(), "{err:?}");
        // Reads still serve what was acknowledged.
        assert_eq!(read_all(&log).len(), 10);
        assert_eq!(log.end_offset(), 10);
        sim.clear_faults();
        assert_eq!(
            log.append(&[rec(13)]).expect("space is back").base_offset,
            10
        );
        log.sync().expect("sync");
        // Crash keeping every byte written: nothing of the failed appends.
        let after = sim.crash(|_, unsynced| unsynced);
        drop(log);
        let log = Log::open(DIR, sim_config(&after, durability, 1 << 20)).expect("reopen");
        let got: Vec<_> = read_all(&log).iter().map(|r| r.to_record()).collect();
        let want: Vec<_> = (0..10).chain([13]).map(rec).collect();
        assert_eq!(got, want, "{durability:?}");
    }
}

/// A write or fsync failure at every position of a run of appends that
/// roll segments: every append that returned `Ok` is stored, in order, and
/// nothing of an append that returned an error — also after a crash that
/// keeps every unsynced byte — and appends after the failure succeed.
#[test]
fn under_always_a_fault_at_any_write_or_fsync_stores_exactly_the_acknowledged_appends() {
    for sync_fault in [false, true] {
        for n in 0..40 {
            let sim = SimStorage::new();
            let log = Log::open(DIR, sim_config(&sim, Durability::Always, 4096)).expect("open");
            if sync_fault {
                sim.fail_sync_after_calls(n, 5);
            } else {
                sim.fail_write_after_calls(n, 28);
            }
            let mut acked = Vec::new();
            let mut failures = 0;
            for i in 0..100 {
                let batch = [rec(2 * i), rec(2 * i + 1)];
                match log.append(&batch) {
                    Ok(_) => acked.extend(batch),
                    Err(e) => {
                        assert!(
                            matches!(e, LogError::Io { .. }),
                            "n={n} sync={sync_fault}: {e:?}"
                        );
                        failures += 1;
                    }
                }
            }
            assert!(
                failures <= 1,
                "n={n} sync={sync_fault}: {failures} failures"
            );
            assert_eq!(
                read_all(&log)
                    .iter()
                    .map(|r| r.to_record())
                    .collect::<Vec<_>>(),
                acked,
                "n={n} sync={sync_fault}: readable before the crash"
            );
            let after = sim.crash(|_, unsynced| unsynced);
            drop(log);
            let log = Log::open(DIR, sim_config(&after, Durability::Always, 4096)).expect("reopen");
            let got: Vec<_> = read_all(&log).iter().map(|r| r.to_record()).collect();
            assert_eq!(got, acked, "n={n} sync={sync_fault}: after the crash");
        }
    }
}

#[test]
fn short_writes_are_completed_transparently() {
    let sim = SimStorage::new();
    sim.set_short_writes(Some(7));
    let log = Log::open(DIR, sim_config(&sim, Durability::Always, 8192)).expect("open");
    for i in 0..200 {
        log.append(&[rec(i)]).expect("append");
    }
    let after = sim.crash(|_, _| 0);
    drop(log);
    let log = Log::open(DIR, sim_config(&after, Durability::Always, 8192)).expect("reopen");
    let got = read_all(&log);
    assert_eq!(got.len(), 200);
    assert_eq!(got[199].to_record(), rec(199));
}

#[test]
fn fsync_failure_while_rolling_a_segment_fails_the_log() {
    let sim = SimStorage::new();
    let log = Log::open(DIR, sim_config(&sim, Durability::Never, 4096)).expect("open");
    let mut acked = 0;
    while log.segment_count() == 1 {
        log.append(&[rec(acked)]).expect("append");
        acked += 1;
        if log.size_bytes() > 3900 {
            break;
        }
    }
    sim.fail_next_syncs(1);
    let mut failed = None;
    for i in 0..100 {
        match log.append(&[rec(acked + i)]) {
            Ok(_) => {}
            Err(e) => {
                failed = Some(e);
                break;
            }
        }
    }
    let err = failed.expect("the roll's fsync must fail an append");
    assert!(
        matches!(
            err,
            LogError::Io {
                op: IoOp::SyncData,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(matches!(
        log.append(&[rec(0)]),
        Err(LogError::Poisoned { .. })
    ));
}

#[test]
fn waiters_sharing_a_failed_fsync_get_an_error_and_only_acknowledged_appends_are_kept() {
    let sim = SimStorage::new();
    let log =
        Arc::new(Log::open(DIR, sim_config(&sim, Durability::Always, 1 << 20)).expect("open"));
    sim.fail_next_syncs(1);
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let log = Arc::clone(&log);
            std::thread::spawn(move || log.append(&[rec(t)]).is_ok())
        })
        .collect();
    let oks: Vec<bool> = threads
        .into_iter()
        .map(|t| t.join().expect("join"))
        .collect();
    // The first fsync fails: the appends it covered report failure and are
    // cut; the ones acknowledged are exactly the ones readable.
    assert!(oks.iter().filter(|&&ok| ok).count() < 8, "{oks:?}");
    let mut got: Vec<_> = read_all(&log).iter().map(|r| r.to_record()).collect();
    let mut want: Vec<_> = (0..8).filter(|&t| oks[t as usize]).map(rec).collect();
    got.sort_by(|a, b| a.value.cmp(&b.value));
    want.sort_by(|a, b| a.value.cmp(&b.value));
    assert_eq!(got, want);
    log.append(&[rec(100)])
        .expect("the log goes on after a cut");
}

#[test]
fn under_always_a_batch_whose_sync_failed_is_never_readable() {
    let sim = SimStorage::new();
    let log = Log::open(DIR, sim_config(&sim, Durability::Always, 1 << 20)).expect("open");
    log.append(&[rec(0), rec(1)]).expect("append");
    sim.fail_next_syncs(1);
    assert!(log.append(&[rec(2)]).is_err());
    // Written to the file but never acknowledged: readers must not see it,
    // and the log cut it.
    assert_eq!(log.end_offset(), 2);
    assert_eq!(log.readable_end_offset(), 2);
    assert!(log.read(2, 1024).expect("read at readable end").is_empty());
    assert_eq!(read_all(&log).len(), 2);
}

/// `write_built` + `try_durable` + `sync_written`: the waiting-elsewhere
/// path the event store's sync thread uses. A write is pending until a sync
/// round covers it; a write cut by a failed round reports the failure even
/// though the synced sequence number moved past it; a later write is synced
/// by the next round; under `Never` everything is durable at once.
#[test]
fn try_durable_reports_pending_synced_and_cut_writes_and_sync_written_covers_all_written() {
    use wharf_log::batch::BatchBuilder;
    let one = |n: u8| {
        let mut b = BatchBuilder::with_capacity(64);
        b.push(0, None, &[n; 8], std::iter::empty());
        b
    };
    let sim = SimStorage::new();
    let log = Log::open(DIR, sim_config(&sim, Durability::Always, 1 << 20)).expect("open");
    let a = log.write_built(one(1)).expect("write a");
    let b = log.write_built(one(2)).expect("write b");
    assert!(log.try_durable(&a).is_none(), "a waits for a sync");
    assert_eq!(sim.stats().syncs, 0);
    log.sync_written().expect("sync");
    assert!(matches!(log.try_durable(&a), Some(Ok(()))));
    assert!(
        matches!(log.try_durable(&b), Some(Ok(()))),
        "one round covers both"
    );
    let syncs = sim.stats().syncs;
    log.sync_written().expect("nothing to sync");
    assert_eq!(sim.stats().syncs, syncs, "no round when all is synced");

    // A failed round cuts c; d, written after the cut, is synced next.
    let c = log.write_built(one(3)).expect("write c");
    sim.fail_next_syncs(1);
    assert!(log.sync_written().is_err());
    assert!(
        matches!(log.try_durable(&c), Some(Err(LogError::Discarded { .. }))),
        "{:?}",
        log.try_durable(&c)
    );
    let d = log.write_built(one(4)).expect("write d");
    assert_eq!(
        d.info.base_offset, c.info.base_offset,
        "c's offset is given out again"
    );
    assert!(log.try_durable(&d).is_none());
    log.sync_written().expect("sync d");
    assert!(matches!(log.try_durable(&d), Some(Ok(()))));
    assert!(
        matches!(log.try_durable(&c), Some(Err(LogError::Discarded { .. }))),
        "c stays failed"
    );
    log.close().expect("close");

    let sim = SimStorage::new();
    let log = Log::open(DIR, sim_config(&sim, Durability::Never, 1 << 20)).expect("open");
    let e = log.write_built(one(5)).expect("write");
    assert!(matches!(log.try_durable(&e), Some(Ok(()))));
}
