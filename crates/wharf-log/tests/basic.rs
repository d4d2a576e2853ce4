//! Behaviour of the log through its public API on the real file system and
//! on `SimStorage`: append/read, reopen, indexes, timestamps, truncation,
//! retention, compression, group commit and the closed state.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use common::{files_with_suffix, fs_config, read_all, rec, sim_config};
use wharf_log::{
    BatchBuilder, Compression, Durability, Log, LogConfig, LogError, ManualClock, Record,
    Retention, SimStorage,
};

#[test]
fn appended_records_read_back_identical_with_dense_offsets() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = Log::open(dir.path(), fs_config(Durability::Never, 8192)).expect("open");
    let mut expected = Vec::new();
    for b in 0..50u64 {
        let batch: Vec<Record> = (0..(b % 7 + 1)).map(|i| rec(b * 10 + i)).collect();
        let info = log.append(&batch).expect("append");
        assert_eq!(info.base_offset, expected.len() as u64);
        assert_eq!(info.last_offset, (expected.len() + batch.len() - 1) as u64);
        expected.extend(batch);
    }
    assert!(log.segment_count() > 1, "small segments must roll");
    let got: Vec<Record> = read_all(&log).iter().map(|r| r.to_record()).collect();
    assert_eq!(got, expected);
    assert_eq!(log.end_offset(), expected.len() as u64);
}

#[test]
fn batches_built_from_parts_read_back_like_appended_records() {
    for compression in [Compression::None, Compression::Lz4] {
        let dir = tempfile::tempdir().expect("tempdir");
        let cfg = LogConfig::builder()
            .durability(Durability::Always)
            .compression(compression)
            .build()
            .expect("config");
        let log = Log::open(dir.path(), cfg).expect("open");
        let mut expected = Vec::new();
        for b in 0..5u64 {
            let records: Vec<Record> = (0..(b + 1))
                .map(|i| {
                    let r = Record::new(1_000 + (b * 10 + i) as i64, vec![b as u8; 40])
                        .with_header("h", format!("{b}-{i}"))
                        .with_header("\0id", vec![i as u8; 16]);
                    if i % 2 == 0 {
                        r.with_key(format!("k{i}"))
                    } else {
                        r
                    }
                })
                .collect();
            let mut built = BatchBuilder::with_capacity(0);
            for r in &records {
                let headers = r.headers.iter().map(|(n, v)| (&n[..], &v[..]));
                built.push(r.timestamp_ms, r.key.as_deref(), &r.value, headers);
            }
            assert_eq!(built.len(), records.len());
            // Built and plain appends interleave on one offset sequence.
            let info = if b % 2 == 0 {
                log.append_built(built).expect("append built")
            } else {
                log.append(&records).expect("append")
            };
            assert_eq!(info.base_offset, expected.len() as u64);
            expected.extend(records);
        }
        let got: Vec<Record> = read_all(&log).iter().map(|r| r.to_record()).collect();
        assert_eq!(got, expected, "{compression:?}");
        assert!(matches!(
            log.append_built(BatchBuilder::default()),
            Err(LogError::EmptyBatch)
        ));
    }
}

#[test]
fn reading_from_the_middle_of_a_batch_starts_at_that_offset() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = Log::open(dir.path(), fs_config(Durability::Never, 1 << 20)).expect("open");
    log.append(&(0..10).map(rec).collect::<Vec<_>>())
        .expect("append");
    let rb = log.read(4, 1 << 20).expect("read");
    assert_eq!(rb.batches()[0].base_offset(), 0, "whole batch is returned");
    let offsets: Vec<u64> = rb.records().map(|r| r.expect("rec").offset).collect();
    assert_eq!(offsets, (4..10).collect::<Vec<_>>());
}

#[test]
fn reading_at_end_is_empty_and_past_end_or_below_start_is_out_of_range() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = Log::open(dir.path(), fs_config(Durability::Always, 1 << 20)).expect("open");
    log.append(&[rec(0), rec(1)]).expect("append");
    assert!(log.read(2, 100).expect("read at end").is_empty());
    let err = log.read(3, 100).expect_err("past end");
    assert!(matches!(
        err,
        LogError::OffsetOutOfRange {
            requested: 3,
            start: 0,
            end: 2
        }
    ));
}

#[test]
fn clean_reopen_keeps_everything_and_continues_offsets() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let log = Log::open(dir.path(), fs_config(Durability::Never, 4096)).expect("open");
        for i in 0..100 {
            log.append(&[rec(i)]).expect("append");
        }
        log.close().expect("close");
    }
    let log = Log::open(dir.path(), fs_config(Durability::Never, 4096)).expect("reopen");
    assert_eq!(log.end_offset(), 100);
    let info = log.append(&[rec(100)]).expect("append");
    assert_eq!(info.base_offset, 100);
    let got = read_all(&log);
    assert_eq!(got.len(), 101);
    assert_eq!(got[57].to_record(), rec(57));
}

#[test]
fn clean_reopen_reads_only_indexes_not_segment_data() {
    let sim = SimStorage::new();
    let dir = Path::new("/log");
    {
        let log = Log::open(dir, sim_config(&sim, Durability::Never, 64 * 1024)).expect("open");
        for i in 0..4000 {
            log.append(&[rec(i)]).expect("append");
        }
        log.close().expect("close");
    }
    let total: u64 = sim
        .file_names(dir)
        .iter()
        .filter(|n| n.ends_with(".log"))
        .map(|n| sim.contents(&dir.join(n)).map_or(0, |c| c.len() as u64))
        .sum();
    sim.reset_stats();
    let log = Log::open(dir, sim_config(&sim, Durability::Never, 64 * 1024)).expect("reopen");
    let read = sim.stats().bytes_read;
    assert_eq!(log.end_offset(), 4000);
    assert!(
        read * 10 < total,
        "clean open read {read} bytes of a {total}-byte log"
    );
}

#[test]
fn unclean_reopen_scans_only_the_last_segment() {
    let sim = SimStorage::new();
    let dir = Path::new("/log");
    let log = Log::open(dir, sim_config(&sim, Durability::Always, 64 * 1024)).expect("open");
    for i in 0..4000 {
        log.append(&[rec(i)]).expect("append");
    }
    let after = sim.crash(|_, unsynced| unsynced);
    drop(log);
    after.reset_stats();
    let log = Log::open(dir, sim_config(&after, Durability::Always, 64 * 1024)).expect("reopen");
    assert_eq!(log.end_offset(), 4000);
    let read = after.stats().bytes_read;
    assert!(read <= 64 * 1024 + 64 * 1024, "scanned {read} bytes");
}

#[test]
fn missing_and_stale_indexes_are_rebuilt_on_open() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let log = Log::open(dir.path(), fs_config(Durability::Never, 4096)).expect("open");
        for i in 0..300 {
            log.append(&[rec(i)]).expect("append");
        }
        log.close().expect("close");
    }
    let indexes = files_with_suffix(dir.path(), ".index");
    assert!(indexes.len() > 3);
    std::fs::remove_file(&indexes[0]).expect("remove index");
    // A stale index: valid CRC but written for a different segment length.
    let other = std::fs::read(&indexes[2]).expect("read");
    std::fs::write(&indexes[1], other).expect("overwrite");
    std::fs::remove_file(&files_with_suffix(dir.path(), ".timeindex")[3]).expect("rm");

    let log = Log::open(dir.path(), fs_config(Durability::Never, 4096)).expect("reopen");
    let got = read_all(&log);
    assert_eq!(got.len(), 300);
    for (i, r) in got.iter().enumerate() {
        assert_eq!(r.to_record(), rec(i as u64));
    }
    assert!(indexes[0].exists(), "rebuilt index is written back");
    assert_eq!(
        log.offset_for_timestamp(1_000 + 150).expect("ts"),
        Some(150)
    );
}

#[test]
fn offset_for_timestamp_finds_the_first_record_at_or_after_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = Log::open(dir.path(), fs_config(Durability::Never, 4096)).expect("open");
    for i in 0..500u64 {
        log.append(&[Record::new(10 * i as i64, vec![1u8; 40])])
            .expect("append");
    }
    assert_eq!(log.offset_for_timestamp(0).expect("ts"), Some(0));
    assert_eq!(log.offset_for_timestamp(2500).expect("ts"), Some(250));
    assert_eq!(log.offset_for_timestamp(2501).expect("ts"), Some(251));
    assert_eq!(log.offset_for_timestamp(4990).expect("ts"), Some(499));
    assert_eq!(log.offset_for_timestamp(4991).expect("ts"), None);
}

#[test]
fn truncate_inside_a_batch_keeps_the_records_before_the_cut() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = Log::open(dir.path(), fs_config(Durability::Never, 4096)).expect("open");
    for b in 0..40u64 {
        log.append(&(0..5).map(|i| rec(b * 5 + i)).collect::<Vec<_>>())
            .expect("append");
    }
    let segments = log.segment_count();
    log.truncate(63).expect("truncate");
    assert_eq!(log.end_offset(), 63);
    assert!(log.segment_count() < segments);
    let info = log.append(&[rec(1000)]).expect("append");
    assert_eq!(info.base_offset, 63);
    let got = read_all(&log);
    assert_eq!(got.len(), 64);
    assert_eq!(got[62].to_record(), rec(62));
    assert_eq!(got[63].to_record(), rec(1000));
    log.close().expect("close");
    let log = Log::open(dir.path(), fs_config(Durability::Never, 4096)).expect("reopen");
    assert_eq!(read_all(&log).len(), 64);
}

#[test]
fn truncate_below_start_is_out_of_range() {
    let sim = SimStorage::new();
    let config = LogConfig::builder()
        .storage(Arc::new(sim.clone()))
        .durability(Durability::Never)
        .segment_max_bytes(4096)
        .retention(Retention {
            max_bytes: Some(8192),
            max_age: None,
        })
        .build()
        .expect("config");
    let log = Log::open("/log", config).expect("open");
    for i in 0..500 {
        log.append(&[rec(i)]).expect("append");
    }
    let start = log.start_offset();
    assert!(start > 0, "size retention must have deleted old segments");
    assert!(log.size_bytes() < 8192 + 4096 + 4096);
    let err = log.truncate(start - 1).expect_err("below start");
    assert!(matches!(err, LogError::OffsetOutOfRange { requested, .. } if requested == start - 1));
    let err = log.read(start - 1, 10).expect_err("below start");
    assert!(matches!(err, LogError::OffsetOutOfRange { start: s, .. } if s == start));
}

#[test]
fn age_retention_deletes_segments_whose_newest_record_is_too_old() {
    let clock = Arc::new(ManualClock::new(1_000_000));
    let sim = SimStorage::new();
    let config = LogConfig::builder()
        .storage(Arc::new(sim.clone()))
        .durability(Durability::Never)
        .segment_max_bytes(1 << 20)
        .segment_max_age(Duration::from_secs(60))
        .retention(Retention {
            max_bytes: None,
            max_age: Some(Duration::from_secs(3600)),
        })
        .clock(clock.clone())
        .build()
        .expect("config");
    let log = Log::open("/log", config).expect("open");
    log.append(&[Record::new(1_000_000, "old")])
        .expect("append");
    clock.advance(Duration::from_secs(61));
    // Age-based roll: this append starts a new segment.
    log.append(&[Record::new(1_061_000, "new")])
        .expect("append");
    assert_eq!(log.segment_count(), 2);
    assert_eq!(log.apply_retention().expect("retention"), 0);
    clock.advance(Duration::from_secs(3600));
    assert_eq!(log.apply_retention().expect("retention"), 1);
    assert_eq!(log.start_offset(), 1);
    let rb = log.read(1, 100).expect("read");
    let v: Vec<_> = rb.records().map(|r| r.expect("rec").value).collect();
    assert_eq!(v, vec![bytes::Bytes::from_static(b"new")]);
}

#[test]
fn lz4_log_round_trips_and_stores_fewer_bytes() {
    let sizes: Vec<u64> = [Compression::None, Compression::Lz4]
        .iter()
        .map(|&c| {
            let dir = tempfile::tempdir().expect("tempdir");
            let config = LogConfig::builder()
                .durability(Durability::Never)
                .compression(c)
                .build()
                .expect("config");
            let log = Log::open(dir.path(), config).expect("open");
            let batch: Vec<Record> = (0..100)
                .map(|i| Record::new(i, format!("{{\"user\":{i},\"event\":\"click\"}}")))
                .collect();
            log.append(&batch).expect("append");
            let got: Vec<Record> = read_all(&log).iter().map(|r| r.to_record()).collect();
            assert_eq!(got, batch);
            log.size_bytes()
        })
        .collect();
    assert!(
        sizes[1] < sizes[0] / 2,
        "lz4 {} vs raw {}",
        sizes[1],
        sizes[0]
    );
}

#[test]
fn concurrent_always_appenders_share_fsyncs_and_all_land() {
    let sim = SimStorage::new();
    let log =
        Arc::new(Log::open("/log", sim_config(&sim, Durability::Always, 1 << 20)).expect("open"));
    sim.reset_stats();
    let threads: Vec<_> = (0..16)
        .map(|t| {
            let log = Arc::clone(&log);
            std::thread::spawn(move || {
                for i in 0..50u64 {
                    log.append(&[rec(t * 1000 + i)]).expect("append");
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("join");
    }
    assert_eq!(log.end_offset(), 800);
    assert_eq!(read_all(&log).len(), 800);
    let syncs = sim.stats().syncs;
    assert!(syncs <= 800, "at most one sync per append, got {syncs}");
}

#[test]
fn always_append_is_durable_when_it_returns() {
    let sim = SimStorage::new();
    let log = Log::open("/log", sim_config(&sim, Durability::Always, 1 << 20)).expect("open");
    for i in 0..10 {
        log.append(&[rec(i)]).expect("append");
    }
    // Crash dropping every unsynced byte: all ten must survive.
    let after = sim.crash(|_, _| 0);
    drop(log);
    let log = Log::open("/log", sim_config(&after, Durability::Always, 1 << 20)).expect("reopen");
    assert_eq!(read_all(&log).len(), 10);
}

#[test]
fn operations_after_close_report_closed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = Log::open(dir.path(), fs_config(Durability::Never, 4096)).expect("open");
    log.append(&[rec(0)]).expect("append");
    log.close().expect("close");
    assert!(matches!(log.append(&[rec(1)]), Err(LogError::Closed)));
    assert!(matches!(log.read(0, 10), Err(LogError::Closed)));
    assert!(log.close().is_ok(), "close is idempotent");
}

#[test]
fn empty_and_oversized_batches_are_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = LogConfig::builder()
        .max_batch_bytes(1024)
        .build()
        .expect("config");
    let log = Log::open(dir.path(), config).expect("open");
    assert!(matches!(log.append(&[]), Err(LogError::EmptyBatch)));
    let err = log
        .append(&[Record::new(0, vec![0u8; 2000])])
        .expect_err("too large");
    assert!(matches!(err, LogError::BatchTooLarge { max: 1024, .. }));
    assert_eq!(log.end_offset(), 0);
}

#[test]
fn interval_durability_syncs_in_the_background() {
    let sim = SimStorage::new();
    let config = LogConfig::builder()
        .storage(Arc::new(sim.clone()))
        .durability(Durability::Interval(Duration::from_millis(5)))
        .build()
        .expect("config");
    let log = Log::open("/log", config).expect("open");
    sim.reset_stats();
    log.append(&[rec(0)]).expect("append");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while sim.stats().syncs == 0 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(sim.stats().syncs > 0, "background flusher never synced");
}

#[test]
fn invalid_config_is_rejected_naming_the_field() {
    let err = LogConfig::builder()
        .segment_max_bytes(10)
        .build()
        .expect_err("too small");
    assert!(matches!(
        err,
        LogError::InvalidConfig {
            field: "segment_max_bytes",
            ..
        }
    ));
}

#[test]
fn a_tailing_reader_sees_dense_intact_records_while_segments_roll() {
    for durability in [Durability::Never, Durability::Always] {
        let sim = SimStorage::new();
        let log = Arc::new(Log::open("/log", sim_config(&sim, durability, 4096)).expect("open"));
        let writer = {
            let log = Arc::clone(&log);
            std::thread::spawn(move || {
                for i in 0..600u64 {
                    log.append(&[rec(i)]).expect("append");
                }
            })
        };
        let mut next = 0u64;
        while next < 600 {
            let rb = log.read(next, 700).expect("read while writing");
            if rb.is_empty() {
                assert!(next <= log.end_offset());
                std::thread::yield_now();
                continue;
            }
            for r in rb.records() {
                let r = r.expect("decode");
                assert_eq!(r.offset, next);
                assert_eq!(r.to_record(), rec(next));
                next += 1;
            }
        }
        writer.join().expect("writer");
        assert!(log.segment_count() > 3);
        assert_eq!(log.readable_end_offset(), 600);
    }
}

#[test]
fn readers_racing_truncation_never_see_errors_or_wrong_records() {
    let sim = SimStorage::new();
    let log = Arc::new(Log::open("/log", sim_config(&sim, Durability::Never, 4096)).expect("open"));
    for b in 0..60u64 {
        log.append(&(0..5).map(|i| rec(b * 5 + i)).collect::<Vec<_>>())
            .expect("append");
    }
    // Tiny writes stretch each rewrite so the reader overlaps it.
    sim.set_short_writes(Some(3));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reader = {
        let (log, stop) = (Arc::clone(&log), Arc::clone(&stop));
        std::thread::spawn(move || {
            let mut checked = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let mut next = 0;
                loop {
                    let rb = match log.read(next, 600) {
                        Ok(rb) => rb,
                        // Truncation can move the end below `next`.
                        Err(LogError::OffsetOutOfRange { .. }) => break,
                        Err(e) => panic!("read failed during truncation: {e}"),
                    };
                    if rb.is_empty() {
                        break;
                    }
                    for r in rb.records() {
                        let r = r.expect("decode");
                        assert_eq!(r.to_record(), rec(r.offset), "offset {}", r.offset);
                        checked += 1;
                    }
                    next = rb.next_offset();
                }
            }
            checked
        })
    };
    // Truncate inside batches and re-append the same content, so every
    // offset always holds rec(offset) whenever it exists.
    for round in 0..40u64 {
        let to = (round * 37) % 300;
        log.truncate(to).expect("truncate");
        let mut n = to;
        while n < 300 {
            let k = (300 - n).min(1 + round % 7);
            log.append(&(n..n + k).map(rec).collect::<Vec<_>>())
                .expect("append");
            n += k;
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let checked = reader.join().expect("reader must not panic");
    assert!(checked > 0);
    assert_eq!(read_all(&log).len(), 300);
}

#[test]
fn open_removes_leftover_temp_files_and_orphan_indexes() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let log = Log::open(dir.path(), fs_config(Durability::Never, 4096)).expect("open");
        for i in 0..100 {
            log.append(&[rec(i)]).expect("append");
        }
        log.close().expect("close");
    }
    let orphan = dir.path().join("00000000000099999999.index");
    let tmp = dir.path().join("clean.shutdown.tmp");
    let foreign = dir.path().join("README.txt");
    for p in [&orphan, &tmp, &foreign] {
        std::fs::write(p, b"junk").expect("write");
    }
    let log = Log::open(dir.path(), fs_config(Durability::Never, 4096)).expect("reopen");
    assert!(!orphan.exists(), "orphan index removed");
    assert!(!tmp.exists(), "temp file removed");
    assert!(
        foreign.exists(),
        "files the log does not own are left alone"
    );
    assert!(
        !dir.path().join("clean.shutdown").exists(),
        "marker removed while open"
    );
    assert_eq!(read_all(&log).len(), 100);
}

#[test]
fn offset_for_timestamp_matches_a_linear_scan_with_unordered_timestamps() {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    let sim = SimStorage::new();
    let log = Log::open("/log", sim_config(&sim, Durability::Never, 4096)).expect("open");
    let mut stamps = Vec::new();
    for _ in 0..300 {
        let n = rng.gen_range(1..6);
        let batch: Vec<Record> = (0..n)
            .map(|_| {
                // Mostly rising, with stragglers from the past.
                let ts = stamps.len() as i64 * 10 + rng.gen_range(-200..50);
                stamps.push(ts);
                Record::new(ts, vec![0u8; rng.gen_range(0..120)])
            })
            .collect();
        log.append(&batch).expect("append");
    }
    assert!(log.segment_count() > 5);
    let check = |log: &Log, rng: &mut rand::rngs::StdRng| {
        for _ in 0..150 {
            let t = rng.gen_range(-300..stamps.len() as i64 * 10 + 100);
            let expected = stamps.iter().position(|&s| s >= t).map(|p| p as u64);
            assert_eq!(
                log.offset_for_timestamp(t).expect("lookup"),
                expected,
                "t = {t}"
            );
        }
    };
    // Indexes built while appending, then loaded from the index files.
    check(&log, &mut rng);
    log.close().expect("close");
    drop(log);
    let log = Log::open("/log", sim_config(&sim, Durability::Never, 4096)).expect("reopen");
    check(&log, &mut rng);
}

#[test]
fn log_and_its_results_can_be_shared_across_threads() {
    use std::marker::PhantomData;
    fn send_sync<T: Send + Sync>(_: PhantomData<T>) -> bool {
        true
    }
    assert!(send_sync(PhantomData::<Log>));
    assert!(send_sync(PhantomData::<wharf_log::ReadBatches>));
    assert!(send_sync(PhantomData::<LogError>));
    assert!(send_sync(PhantomData::<SimStorage>));
}

#[test]
fn fsync_durations_are_counted_in_shared_sync_stats() {
    let stats = Arc::new(wharf_log::SyncStats::default());
    let dir = tempfile::tempdir().expect("tempdir");
    let config = |d| {
        LogConfig::builder()
            .durability(d)
            .sync_stats(Arc::clone(&stats))
            .build()
            .expect("config")
    };
    let never = Log::open(dir.path().join("never"), config(Durability::Never)).expect("open");
    never.append(&[rec(1)]).expect("append");
    assert_eq!(stats.snapshot().count, 0, "Never does not sync on append");

    let always = Log::open(dir.path().join("always"), config(Durability::Always)).expect("open");
    for i in 0..3 {
        always.append(&[rec(i)]).expect("append");
    }
    let s = stats.snapshot();
    assert_eq!(s.count, 3, "one fdatasync per sequential Always append");
    assert!(s.total_nanos > 0);
    assert!(std::ptr::eq(always.sync_stats(), never.sync_stats()));

    never.close().expect("close");
    assert_eq!(stats.snapshot().count, 4, "close syncs the active segment");
}

#[test]
fn records_decoded_in_place_are_the_records_read_from_the_middle_of_a_batch() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = Log::open(dir.path(), fs_config(Durability::Never, 1 << 20)).expect("open");
    log.append(&(0..10).map(rec).collect::<Vec<_>>())
        .expect("append");
    log.append(&(10..20).map(rec).collect::<Vec<_>>())
        .expect("append");
    let rb = log.read(4, 1 << 20).expect("read");
    let owned: Vec<_> = rb.records().map(|r| r.expect("rec")).collect();
    let mut in_place = Vec::new();
    rb.for_each_record(|r| {
        in_place.push(r.to_stored());
        Ok::<(), LogError>(())
    })
    .expect("decode in place");
    assert_eq!(in_place.first().map(|r| r.offset), Some(4));
    assert_eq!(in_place, owned);
}
