//! Fault injection through `SimStorage`: fsync failures, ENOSPC and short
//! writes surface as typed errors, fail the log (fail-stop), and never cost
//! data that was acknowledged before the fault.

mod common;

use std::path::Path;
use std::sync::Arc;

use common::{read_all, rec, sim_config};
use wharf_log::{Durability, IoOp, Log, LogError, SimStorage};

const DIR: &str = "/log";

#[test]
fn fsync_failure_fails_the_append_refuses_later_ones_and_keeps_acknowledged_data() {
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
    let err = log.append(&[rec(11)]).expect_err("refused");
    assert!(matches!(err, LogError::Poisoned { .. }), "{err:?}");
    assert!(matches!(log.sync(), Err(LogError::Poisoned { .. })));
    assert!(matches!(log.close(), Err(LogError::Poisoned { .. })));
    assert!(
        !sim.file_names(Path::new(DIR))
            .contains(&"clean.shutdown".to_string()),
        "a failed log must not claim a clean shutdown"
    );
    let after = sim.crash(|_, _| 0);
    drop(log);
    let log = Log::open(DIR, sim_config(&after, Durability::Always, 1 << 20)).expect("reopen");
    let got = read_all(&log);
    assert_eq!(got.len(), 10);
    for (i, r) in got.iter().enumerate() {
        assert_eq!(r.to_record(), rec(i as u64));
    }
    assert_eq!(log.append(&[rec(99)]).expect("append").base_offset, 10);
}

#[test]
fn enospc_mid_batch_fails_the_log_and_recovery_drops_the_torn_batch() {
    let sim = SimStorage::new();
    let log = Log::open(DIR, sim_config(&sim, Durability::Always, 1 << 20)).expect("open");
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
    assert!(matches!(
        log.append(&[rec(12)]),
        Err(LogError::Poisoned { .. })
    ));
    // Reads still serve what was acknowledged.
    assert_eq!(read_all(&log).len(), 10);
    // Crash keeping the 20 torn bytes on disk.
    let after = sim.crash(|_, unsynced| unsynced);
    after.clear_faults();
    drop(log);
    let log = Log::open(DIR, sim_config(&after, Durability::Always, 1 << 20)).expect("reopen");
    assert_eq!(log.end_offset(), 10);
    assert_eq!(read_all(&log).len(), 10);
    assert_eq!(log.append(&[rec(10)]).expect("append").base_offset, 10);
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
fn waiters_sharing_a_failed_fsync_all_get_an_error() {
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
    // The first fsync fails; nobody may be acknowledged after it, and
    // appends that were waiting for it report failure.
    let after_fail_ok = log.append(&[rec(100)]).is_ok();
    assert!(
        !after_fail_ok,
        "log must refuse appends after a failed fsync"
    );
    assert!(oks.iter().filter(|&&ok| ok).count() < 8, "{oks:?}");
}

#[test]
fn under_always_a_batch_whose_sync_failed_is_never_readable() {
    let sim = SimStorage::new();
    let log = Log::open(DIR, sim_config(&sim, Durability::Always, 1 << 20)).expect("open");
    log.append(&[rec(0), rec(1)]).expect("append");
    sim.fail_next_syncs(1);
    assert!(log.append(&[rec(2)]).is_err());
    // Written to the file but never acknowledged: readers must not see it.
    assert_eq!(log.end_offset(), 3);
    assert_eq!(log.readable_end_offset(), 2);
    assert!(log.read(2, 1024).expect("read at readable end").is_empty());
    assert_eq!(read_all(&log).len(), 2);
}
