//! Recovery from damaged bytes, by byte position class (batch header,
//! record body, index files, the clean-shutdown marker, truncated files),
//! after a clean close and after a crash: the log opens, every record outside
//! the damaged batch is served, the damage is reported with its file, byte
//! and offset range, and a repair (dry run first) makes the log whole again.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use common::{files_with_suffix, rec};
use wharf_log::batch::BatchHeader;
use wharf_log::{
    Damage, Durability, IntegrityStats, Log, LogConfig, LogError, Record, RepairAction,
    StoredRecord,
};

const SEGMENT: u64 = 4096;

fn config(stats: &Arc<IntegrityStats>) -> LogConfig {
    LogConfig::builder()
        .durability(Durability::Never)
        .segment_max_bytes(SEGMENT)
        .index_interval_bytes(256)
        .integrity_stats(Arc::clone(stats))
        .build()
        .expect("config")
}

fn build(dir: &Path) -> Vec<Record> {
    let log = Log::open(dir, config(&Arc::default())).expect("open");
    let mut all = Vec::new();
    for i in 0..120u64 {
        let batch: Vec<Record> = (0..(i % 3 + 1)).map(|j| rec(i * 10 + j)).collect();
        log.append(&batch).expect("append");
        all.extend(batch);
    }
    log.close().expect("close");
    all
}

/// (position, base offset, next offset) of every batch of a segment file.
fn batches(file: &Path) -> Vec<(u64, u64, u64)> {
    let bytes = std::fs::read(file).expect("read segment");
    let mut pos = 0usize;
    let mut out = Vec::new();
    while pos < bytes.len() {
        let h = BatchHeader::parse(&bytes[pos..]).expect("pristine header");
        out.push((pos as u64, h.base_offset, h.next_offset()));
        pos += h.len as usize;
    }
    out
}

fn flip(path: &PathBuf, pos: u64) {
    let mut b = std::fs::read(path).expect("read");
    b[pos as usize] ^= 0x10;
    std::fs::write(path, b).expect("write");
}

/// Reads everything a consumer can: on a damaged batch it steps to the
/// damage's end (as a consumer of other offsets would). Returns the
/// records and the damage it ran into.
fn read_around_damage(log: &Log) -> (Vec<StoredRecord>, Vec<Damage>) {
    let mut out = Vec::new();
    let mut seen = Vec::new();
    let mut next = log.start_offset();
    loop {
        match log.read(next, 1024) {
            Ok(rb) if rb.is_empty() => return (out, seen),
            Ok(rb) => {
                for r in rb.records() {
                    out.push(r.expect("a served batch decodes"));
                }
                next = rb.next_offset();
            }
            Err(LogError::Corrupt { path, position, .. }) => {
                let d = log
                    .damage()
                    .into_iter()
                    .find(|d| d.path == path && d.position == position)
                    .expect("a reported corruption is listed as damage");
                assert!(d.offsets().contains(&next), "{d:?} covers {next}");
                next = d.end_offset;
                seen.push(d);
            }
            Err(e) => panic!("unexpected error {e:?}"),
        }
    }
}

fn assert_served_all_but(records: &[StoredRecord], expected: &[Record], lost: &[(u64, u64)]) {
    let lost_in = |o: u64| lost.iter().any(|&(s, e)| (s..e).contains(&o));
    let want: Vec<u64> = (0..expected.len() as u64)
        .filter(|&o| !lost_in(o))
        .collect();
    let got: Vec<u64> = records.iter().map(|r| r.offset).collect();
    assert_eq!(got, want, "served exactly the offsets outside {lost:?}");
    for r in records {
        assert_eq!(
            r.to_record(),
            expected[r.offset as usize],
            "wrong data served"
        );
    }
}

#[derive(Clone, Copy, Debug)]
enum Where {
    /// A sealed segment (its index files are trusted on open).
    Sealed,
    /// The active segment (trusted after a clean close, scanned after a crash).
    Active,
}

#[test]
fn a_flipped_byte_in_a_batch_header_or_body_is_isolated_reported_and_repairable() {
    // Header fields: magic, crc, len, attributes, base offset, record count,
    // raw length, timestamps; then three body positions.
    let positions: &[u64] = &[0, 5, 9, 13, 17, 25, 29, 33, 41, 48, 55, 70];
    let pristine = tempfile::tempdir().expect("tempdir");
    let expected = build(pristine.path());
    let segments = files_with_suffix(pristine.path(), ".log");
    assert!(segments.len() >= 3);
    for place in [Where::Sealed, Where::Active] {
        for crash in [false, true] {
            for &at in positions {
                let case = format!("{place:?} crash={crash} byte {at}");
                let dir = tempfile::tempdir().expect("tempdir");
                for e in std::fs::read_dir(pristine.path()).expect("list") {
                    let p = e.expect("entry").path();
                    std::fs::copy(&p, dir.path().join(p.file_name().expect("name"))).expect("copy");
                }
                let seg_name = match place {
                    Where::Sealed => segments[1].file_name(),
                    Where::Active => segments[segments.len() - 1].file_name(),
                }
                .expect("name")
                .to_owned();
                let seg = dir.path().join(&seg_name);
                let all = batches(&seg);
                assert!(all.len() >= 3, "{case}");
                let (victim, first, next) = all[1];
                if crash {
                    std::fs::remove_file(dir.path().join("clean.shutdown")).expect("crash");
                }
                flip(&seg, victim + at);

                let stats = Arc::new(IntegrityStats::default());
                let log = Log::open(dir.path(), config(&stats))
                    .expect("one damaged batch never fails open");
                let (records, seen) = read_around_damage(&log);
                assert_served_all_but(&records, &expected, &[(first, next)]);
                assert_eq!(seen.len(), 1, "{case}: {seen:?}");
                let d = &seen[0];
                assert_eq!(
                    (
                        &d.path,
                        d.position,
                        d.end_position,
                        d.start_offset,
                        d.end_offset
                    ),
                    (&seg, victim, all[2].0, first, next),
                    "{case}"
                );
                assert_eq!(log.damage(), seen, "{case}");
                assert_eq!(stats.snapshot().detected, 1, "{case}: counted once");

                let dry = log.repair(RepairAction::SkipBatch, true).expect("dry run");
                assert_eq!(
                    (dry.lost.clone(), dry.dry_run),
                    (first..next, true),
                    "{case}"
                );
                let cut = log
                    .repair(RepairAction::TruncateAt(None), true)
                    .expect("dry run");
                assert_eq!(cut.lost, first..log.end_offset(), "{case}");
                assert_eq!(log.damage().len(), 1, "{case}: a dry run changes nothing");

                let done = log.repair(RepairAction::SkipBatch, false).expect("skip");
                assert_eq!((done.lost, done.remaining), (first..next, 0), "{case}");
                assert!(log.damage().is_empty(), "{case}");
                assert_eq!(stats.snapshot().skipped, 1, "{case}");
                let (records, seen) = read_around_damage(&log);
                assert!(seen.is_empty(), "{case}: the void batch reads cleanly");
                assert_served_all_but(&records, &expected, &[(first, next)]);
                let end = log.end_offset();
                assert_eq!(log.append(&[rec(9_999)]).expect("append").base_offset, end);
                log.close().expect("close");

                // Reopened after a clean close and after a crash alike.
                for reopen_crash in [false, true] {
                    if reopen_crash {
                        let _ = std::fs::remove_file(dir.path().join("clean.shutdown"));
                    }
                    let log = Log::open(dir.path(), config(&stats)).expect("reopen");
                    assert!(log.verify().expect("verify").is_empty(), "{case}");
                    let (records, seen) = read_around_damage(&log);
                    assert!(seen.is_empty(), "{case}");
                    assert_eq!(records.last().map(|r| r.offset), Some(end), "{case}");
                    assert_served_all_but(
                        &records[..records.len() - 1],
                        &expected,
                        &[(first, next)],
                    );
                    log.close().expect("close");
                }
            }
        }
    }
}

#[test]
fn truncating_at_a_damaged_batch_drops_it_and_everything_after_and_nothing_before() {
    let dir = tempfile::tempdir().expect("tempdir");
    let expected = build(dir.path());
    let segments = files_with_suffix(dir.path(), ".log");
    let all = batches(&segments[1]);
    let (victim, first, _) = all[2];
    flip(&segments[1], victim + 60);
    let stats = Arc::new(IntegrityStats::default());
    let log = Log::open(dir.path(), config(&stats)).expect("open");
    // Nobody read it yet: a clean open trusts sealed segments' indexes, so
    // the repair's verification pass finds it.
    assert!(log.damage().is_empty());
    let dry = log
        .repair(RepairAction::TruncateAt(None), true)
        .expect("dry run");
    assert_eq!(dry.lost, first..expected.len() as u64);
    assert_eq!(dry.damage.as_ref().map(|d| d.position), Some(victim));
    let past = log.repair(RepairAction::TruncateAt(Some(first + 1)), false);
    assert!(
        matches!(past, Err(LogError::RepairRefused { .. })),
        "{past:?}"
    );
    log.repair(RepairAction::TruncateAt(None), false)
        .expect("truncate");
    assert_eq!(stats.snapshot().truncated, 1);
    assert_eq!(log.end_offset(), first);
    let (records, seen) = read_around_damage(&log);
    assert!(seen.is_empty());
    assert_served_all_but(&records, &expected[..first as usize], &[]);
    assert_eq!(log.append(&[rec(1)]).expect("append").base_offset, first);
}

#[test]
fn damage_in_an_index_file_or_the_marker_loses_nothing_and_reports_no_damage() {
    for (suffix, at) in [
        (".index", 0),
        (".index", 3),
        (".timeindex", 1),
        ("clean.shutdown", 12),
    ] {
        for crash in [false, true] {
            let dir = tempfile::tempdir().expect("tempdir");
            let expected = build(dir.path());
            let files = files_with_suffix(dir.path(), suffix);
            let target = files.last().expect("file").clone();
            if crash && suffix != "clean.shutdown" {
                std::fs::remove_file(dir.path().join("clean.shutdown")).expect("crash");
            }
            flip(&target, at);
            let stats = Arc::new(IntegrityStats::default());
            let log = Log::open(dir.path(), config(&stats)).expect("open");
            let (records, seen) = read_around_damage(&log);
            assert!(seen.is_empty(), "{suffix} byte {at}");
            assert_served_all_but(&records, &expected, &[]);
            assert!(log.verify().expect("verify").is_empty());
            assert_eq!(stats.snapshot().detected, 0);
        }
    }
}

#[test]
fn a_truncated_sealed_segment_is_damage_and_a_truncated_active_one_a_logged_torn_tail() {
    let dir = tempfile::tempdir().expect("tempdir");
    let expected = build(dir.path());
    let segments = files_with_suffix(dir.path(), ".log");
    // Sealed: its last 10 bytes gone; the next segment's base ends the damage.
    let sealed = &segments[1];
    let all = batches(sealed);
    let &(last_pos, last_first, last_next) = all.last().expect("batch");
    let len = std::fs::metadata(sealed).expect("meta").len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(sealed)
        .and_then(|f| f.set_len(len - 10))
        .expect("cut");
    // Active: cut inside its last batch, after a crash.
    let active = segments.last().expect("active");
    let act = batches(active);
    let &(tail_pos, tail_first, _) = act.last().expect("batch");
    std::fs::OpenOptions::new()
        .write(true)
        .open(active)
        .and_then(|f| f.set_len(tail_pos + 20))
        .expect("cut");
    std::fs::remove_file(dir.path().join("clean.shutdown")).expect("crash");

    let stats = Arc::new(IntegrityStats::default());
    let log = Log::open(dir.path(), config(&stats)).expect("open");
    assert_eq!(stats.snapshot().torn_tails, 1, "the torn tail is counted");
    assert_eq!(std::fs::metadata(active).expect("meta").len(), tail_pos);
    assert_eq!(log.end_offset(), tail_first);
    let (records, seen) = read_around_damage(&log);
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(
        (seen[0].position, seen[0].start_offset, seen[0].end_offset),
        (last_pos, last_first, last_next)
    );
    assert_served_all_but(
        &records,
        &expected[..tail_first as usize],
        &[(last_first, last_next)],
    );
    log.repair(RepairAction::SkipBatch, false).expect("skip");
    let (records, seen) = read_around_damage(&log);
    assert!(seen.is_empty());
    assert_served_all_but(
        &records,
        &expected[..tail_first as usize],
        &[(last_first, last_next)],
    );
}
