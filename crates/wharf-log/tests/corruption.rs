//! Torn writes and bit flips on real files: a damaged byte anywhere is
//! reported as `LogError::Corrupt` naming the file and the batch position
//! (never wrong data), and a torn tail is truncated on recovery.

mod common;

use std::path::{Path, PathBuf};

use common::{files_with_suffix, fs_config, rec};
use rand::{Rng, SeedableRng};
use wharf_log::batch::BatchHeader;
use wharf_log::{Durability, Log, LogError, Record, StoredRecord};

const SEGMENT: u64 = 4096;

fn build(dir: &Path, n: u64) -> Vec<Record> {
    let log = Log::open(dir, fs_config(Durability::Never, SEGMENT)).expect("open");
    let mut all = Vec::new();
    for i in 0..n {
        let batch: Vec<Record> = (0..(i % 3 + 1)).map(|j| rec(i * 10 + j)).collect();
        log.append(&batch).expect("append");
        all.extend(batch);
    }
    log.close().expect("close");
    all
}

/// Start positions of the batches in a segment file.
fn batch_starts(file: &Path) -> Vec<u64> {
    let bytes = std::fs::read(file).expect("read segment");
    let mut pos = 0usize;
    let mut starts = Vec::new();
    while pos < bytes.len() {
        let h = BatchHeader::parse(&bytes[pos..]).expect("pristine header");
        starts.push(pos as u64);
        pos += h.len as usize;
    }
    starts
}

/// Reads from the start until an error; returns records and the error.
fn read_until_error(log: &Log) -> (Vec<StoredRecord>, Option<LogError>) {
    let mut out = Vec::new();
    let mut next = log.start_offset();
    loop {
        match log.read(next, 1024) {
            Ok(rb) if rb.is_empty() => return (out, None),
            Ok(rb) => {
                for r in rb.records() {
                    match r {
                        Ok(r) => out.push(r),
                        Err(e) => return (out, Some(e)),
                    }
                }
                next = rb.next_offset();
            }
            Err(e) => return (out, Some(e)),
        }
    }
}

fn copy_dir(from: &Path, to: &Path) {
    for e in std::fs::read_dir(from).expect("list") {
        let p = e.expect("entry").path();
        std::fs::copy(&p, to.join(p.file_name().expect("name"))).expect("copy");
    }
}

fn flip(path: &PathBuf, pos: u64, mask: u8) {
    let mut b = std::fs::read(path).expect("read");
    b[pos as usize] ^= mask;
    std::fs::write(path, b).expect("write");
}

#[test]
fn bit_flip_anywhere_in_a_sealed_segment_is_reported_with_file_and_batch_position() {
    let pristine = tempfile::tempdir().expect("tempdir");
    let expected = build(pristine.path(), 120);
    let segments = files_with_suffix(pristine.path(), ".log");
    assert!(segments.len() >= 3);
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    for round in 0..40 {
        let seg_i = rng.gen_range(0..segments.len() - 1);
        let name = segments[seg_i].file_name().expect("name").to_owned();
        let len = std::fs::metadata(&segments[seg_i]).expect("meta").len();
        let pos = rng.gen_range(0..len);
        let starts = batch_starts(&segments[seg_i]);
        let batch_at = *starts.iter().rev().find(|&&s| s <= pos).expect("batch");

        let dir = tempfile::tempdir().expect("tempdir");
        copy_dir(pristine.path(), dir.path());
        let target = dir.path().join(&name);
        flip(&target, pos, 1 << (round % 8));

        let log = Log::open(dir.path(), fs_config(Durability::Never, SEGMENT)).expect("open");
        let (records, err) = read_until_error(&log);
        for r in &records {
            assert_eq!(
                r.to_record(),
                expected[r.offset as usize],
                "wrong data served"
            );
        }
        match err {
            Some(LogError::Corrupt { path, position, .. }) => {
                assert_eq!(path, target, "error names the damaged file");
                assert_eq!(position, batch_at, "error names the damaged batch");
            }
            other => panic!("flip at {pos} of {name:?}: expected Corrupt, got {other:?}"),
        }
    }
}

#[test]
fn bit_flip_in_the_middle_of_the_tail_after_a_crash_opens_and_reports_the_damaged_batch() {
    let dir = tempfile::tempdir().expect("tempdir");
    build(dir.path(), 120);
    std::fs::remove_file(dir.path().join("clean.shutdown")).expect("simulate crash");
    let last = files_with_suffix(dir.path(), ".log")
        .pop()
        .expect("segment");
    let starts = batch_starts(&last);
    assert!(starts.len() >= 3);
    let victim = starts[1];
    flip(&last, victim + 30, 0x04);
    let log = Log::open(dir.path(), fs_config(Durability::Never, SEGMENT)).expect("opens");
    let damage = log.damage();
    assert_eq!(damage.len(), 1, "{damage:?}");
    assert_eq!((&damage[0].path, damage[0].position), (&last, victim));
    assert_eq!(damage[0].end_position, starts[2]);
    let (_, err) = read_until_error(&log);
    assert!(
        matches!(&err, Some(LogError::Corrupt { path, position, .. }) if *path == last && *position == victim),
        "{err:?}"
    );
}

#[test]
fn truncate_corrupt_tail_option_recovers_the_prefix_before_the_damage() {
    let dir = tempfile::tempdir().expect("tempdir");
    let expected = build(dir.path(), 120);
    std::fs::remove_file(dir.path().join("clean.shutdown")).expect("simulate crash");
    let last = files_with_suffix(dir.path(), ".log")
        .pop()
        .expect("segment");
    let starts = batch_starts(&last);
    flip(&last, starts[2] + 49, 0x02);
    let config = wharf_log::LogConfig::builder()
        .durability(Durability::Never)
        .segment_max_bytes(SEGMENT)
        .index_interval_bytes(256)
        .truncate_corrupt_tail(true)
        .build()
        .expect("config");
    let log = Log::open(dir.path(), config).expect("open truncates");
    assert_eq!(std::fs::metadata(&last).expect("meta").len(), starts[2]);
    let (records, err) = read_until_error(&log);
    assert!(err.is_none(), "{err:?}");
    assert_eq!(records.len() as u64, log.end_offset());
    for r in &records {
        assert_eq!(r.to_record(), expected[r.offset as usize]);
    }
}

#[test]
fn bit_flip_in_the_tail_with_a_clean_marker_is_reported_at_read_time() {
    let dir = tempfile::tempdir().expect("tempdir");
    let expected = build(dir.path(), 120);
    let last = files_with_suffix(dir.path(), ".log")
        .pop()
        .expect("segment");
    let starts = batch_starts(&last);
    flip(&last, starts[1] + 50, 0x80);
    let log = Log::open(dir.path(), fs_config(Durability::Never, SEGMENT)).expect("open");
    let (records, err) = read_until_error(&log);
    for r in &records {
        assert_eq!(r.to_record(), expected[r.offset as usize]);
    }
    assert!(
        matches!(&err, Some(LogError::Corrupt { path, position, .. }) if *path == last && *position == starts[1]),
        "{err:?}"
    );
}

#[test]
fn torn_tail_at_any_cut_is_truncated_on_recovery_keeping_whole_batches() {
    let pristine = tempfile::tempdir().expect("tempdir");
    let expected = build(pristine.path(), 60);
    let last = files_with_suffix(pristine.path(), ".log")
        .pop()
        .expect("segment");
    let name = last.file_name().expect("name").to_owned();
    let starts = batch_starts(&last);
    let len = std::fs::metadata(&last).expect("meta").len();
    let first_in_tail = {
        let base: u64 = name.to_str().expect("utf8")[..20].parse().expect("base");
        base
    };
    let last_batch = *starts.last().expect("batch");
    let mut cuts: Vec<u64> = (last_batch..len).step_by(7).collect();
    cuts.push(starts[starts.len() / 2] + 1);
    for cut in cuts {
        let dir = tempfile::tempdir().expect("tempdir");
        copy_dir(pristine.path(), dir.path());
        std::fs::remove_file(dir.path().join("clean.shutdown")).expect("crash");
        let seg = dir.path().join(&name);
        let mut bytes = std::fs::read(&seg).expect("read");
        bytes.truncate(cut as usize);
        // Some torn writes leave zeroed blocks behind the cut.
        if cut.is_multiple_of(2) {
            bytes.extend_from_slice(&[0u8; 100]);
        }
        std::fs::write(&seg, &bytes).expect("write");
        let whole = starts.iter().filter(|&&s| s <= cut).count() - 1;
        let keep_len = starts[whole];

        let log = Log::open(dir.path(), fs_config(Durability::Never, SEGMENT)).expect("recover");
        let (records, err) = read_until_error(&log);
        assert!(err.is_none(), "cut {cut}: {err:?}");
        for r in &records {
            assert_eq!(r.to_record(), expected[r.offset as usize]);
        }
        assert_eq!(
            std::fs::metadata(&seg).expect("meta").len(),
            keep_len,
            "file truncated to its last whole batch"
        );
        assert!(log.end_offset() >= first_in_tail);
        let info = log.append(&[rec(7)]).expect("append after recovery");
        assert_eq!(info.base_offset, records.len() as u64);
    }
}

#[test]
fn corrupt_index_or_marker_falls_back_to_scanning_and_serves_correct_data() {
    let dir = tempfile::tempdir().expect("tempdir");
    let expected = build(dir.path(), 120);
    let idx = files_with_suffix(dir.path(), ".index");
    flip(&idx[1], 2, 0x01);
    flip(&dir.path().join("clean.shutdown"), 9, 0x01);
    let log = Log::open(dir.path(), fs_config(Durability::Never, SEGMENT)).expect("open");
    let (records, err) = read_until_error(&log);
    assert!(err.is_none(), "{err:?}");
    assert_eq!(records.len(), expected.len());
    for r in &records {
        assert_eq!(r.to_record(), expected[r.offset as usize]);
    }
}
