//! Comparison benchmark for wharf-log: measures a raw `write` + `fdatasync`
//! baseline in the same run and prints the log's figures as ratios of it.
//!
//! ```text
//! cargo run --release -p wharf-log --example log_bench
//! WHARF_BENCH_OPEN_GB=10 cargo run --release -p wharf-log --example log_bench
//! ```
//!
//! Scenarios: (a) 1 KiB records in ~64 KiB batches with `Always` vs raw
//! 64 KiB write+fdatasync; (b) 100 B records with `Never`: append rate and
//! sequential read throughput; (c) 64 threads each appending one record with
//! `Always` vs raw one-record-per-fdatasync; (d) open time of a large log
//! after a clean close and after a simulated crash.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use wharf_log::{Durability, Log, LogConfig, Record};

fn config(durability: Durability) -> LogConfig {
    LogConfig::builder()
        .durability(durability)
        .build()
        .expect("valid config")
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// Raw baseline: append `chunk` bytes + fdatasync in a loop for about
/// `secs` seconds. Returns (MB/s, ops/s).
fn raw_write_sync(dir: &Path, chunk: usize, secs: f64) -> (f64, f64) {
    let path = dir.join("raw.bin");
    let _ = std::fs::remove_file(&path);
    let mut f = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .expect("open raw file");
    let buf = vec![0x5au8; chunk];
    let t = Instant::now();
    let mut n = 0usize;
    while n < 16 || t.elapsed().as_secs_f64() < secs {
        f.write_all(&buf).expect("raw write");
        f.sync_data().expect("raw fdatasync");
        n += 1;
    }
    let secs = t.elapsed().as_secs_f64();
    drop(f);
    let _ = std::fs::remove_file(&path);
    ((chunk * n) as f64 / secs / 1e6, n as f64 / secs)
}

fn scenario_a(root: &Path) -> (f64, f64) {
    let batches = 1500;
    let records: Vec<Record> = (0..64)
        .map(|i| Record::new(i, Bytes::from(vec![0x42u8; 1024])))
        .collect();
    let mut raw = Vec::new();
    let mut ours = Vec::new();
    for round in 0..3 {
        raw.push(raw_write_sync(root, 64 * 1024, 1.5).0);
        let dir = root.join(format!("a{round}"));
        let log = Log::open(&dir, config(Durability::Always)).expect("open");
        let t = Instant::now();
        let mut n = 0usize;
        while n < batches && (n < 16 || t.elapsed().as_secs_f64() < 1.5) {
            log.append(&records).expect("append");
            n += 1;
        }
        let secs = t.elapsed().as_secs_f64();
        ours.push((n * 64 * 1024) as f64 / secs / 1e6);
        log.close().expect("close");
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }
    (median(raw), median(ours))
}

fn scenario_b(root: &Path) -> (f64, f64, f64) {
    let dir = root.join("b");
    let log = Log::open(&dir, config(Durability::Never)).expect("open");
    let batch: Vec<Record> = (0..1000)
        .map(|i| Record::new(1_700_000_000_000 + i, Bytes::from(vec![0x61u8; 100])))
        .collect();
    let rounds = 5000; // 5M records, ~0.5 GB
    let t = Instant::now();
    for _ in 0..rounds {
        log.append(&batch).expect("append");
    }
    let append_rate = (rounds * batch.len()) as f64 / t.elapsed().as_secs_f64();

    // Sequential read: whole CRC-checked batches, 1 MiB per call.
    let mut best_read = 0f64;
    let mut decode_rate = 0f64;
    for _ in 0..3 {
        let t = Instant::now();
        let mut next = 0;
        let mut bytes = 0usize;
        loop {
            let rb = log.read(next, 1 << 20).expect("read");
            if rb.is_empty() {
                break;
            }
            bytes += rb.total_bytes();
            next = rb.next_offset();
        }
        best_read = best_read.max(bytes as f64 / t.elapsed().as_secs_f64() / 1e9);
    }
    {
        let t = Instant::now();
        let mut next = 0;
        let mut n = 0u64;
        loop {
            let rb = log.read(next, 1 << 20).expect("read");
            if rb.is_empty() {
                break;
            }
            for r in rb.records() {
                let r = r.expect("record");
                n += r.value.len() as u64 / 100;
            }
            next = rb.next_offset();
        }
        decode_rate = decode_rate.max(n as f64 / t.elapsed().as_secs_f64());
    }
    log.close().expect("close");
    drop(log);
    std::fs::remove_dir_all(&dir).expect("cleanup");
    (append_rate, best_read, decode_rate)
}

fn scenario_c(root: &Path) -> (f64, f64, f64) {
    // The raw baseline runs just before and just after the log's window.
    let raw_before = raw_write_sync(root, 110, 1.5).1;
    let dir = root.join("c");
    let log = Arc::new(Log::open(&dir, config(Durability::Always)).expect("open"));
    let stop = Arc::new(AtomicBool::new(false));
    let count = Arc::new(AtomicU64::new(0));
    let threads: Vec<_> = (0..64)
        .map(|t| {
            let (log, stop, count) = (Arc::clone(&log), Arc::clone(&stop), Arc::clone(&count));
            std::thread::spawn(move || {
                let rec = [Record::new(t, Bytes::from(vec![0x63u8; 100]))];
                while !stop.load(Ordering::Relaxed) {
                    log.append(&rec).expect("append");
                    count.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(200));
    let (c0, s0) = (count.load(Ordering::Relaxed), log.sync_count());
    let t = Instant::now();
    std::thread::sleep(Duration::from_secs(3));
    let (c1, s1) = (count.load(Ordering::Relaxed), log.sync_count());
    let secs = t.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().expect("join");
    }
    let raw_after = raw_write_sync(root, 110, 1.5).1;
    let raw = median(vec![raw_before, raw_after, (raw_before + raw_after) / 2.0]);
    let ours = (c1 - c0) as f64 / secs;
    let per_sync = (c1 - c0) as f64 / (s1 - s0).max(1) as f64;
    log.close().expect("close");
    drop(log);
    std::fs::remove_dir_all(&dir).expect("cleanup");
    (raw, ours, per_sync)
}

fn tail_len(dir: &Path) -> u64 {
    let mut logs: Vec<_> = std::fs::read_dir(dir)
        .expect("list")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "log"))
        .collect();
    logs.sort();
    logs.last()
        .and_then(|p| std::fs::metadata(p).ok())
        .map_or(0, |m| m.len())
}

fn scenario_d(root: &Path, gb: u64) -> (f64, f64, u64) {
    let dir = root.join("d");
    let batch: Vec<Record> = (0..256)
        .map(|i| Record::new(i, Bytes::from(vec![0x64u8; 1024])))
        .collect();
    let target = gb << 30;
    {
        let log = Log::open(&dir, config(Durability::Never)).expect("open");
        // Fill to the target, then until the tail segment is ~90% of its
        // maximum (the worst case for recovery, which scans the tail).
        while log.size_bytes() < target || tail_len(&dir) < 230 << 20 {
            log.append(&batch).expect("append");
        }
        log.close().expect("close");
    }
    let t = Instant::now();
    let log = Log::open(&dir, config(Durability::Never)).expect("clean open");
    let clean = t.elapsed().as_secs_f64();
    let end = log.end_offset();
    let size = log.size_bytes();
    log.close().expect("close");
    drop(log);
    // A kill -9 leaves no clean-shutdown marker: the tail must be scanned.
    std::fs::remove_file(dir.join("clean.shutdown")).expect("remove marker");
    let t = Instant::now();
    let log = Log::open(&dir, config(Durability::Never)).expect("recovery open");
    let crash = t.elapsed().as_secs_f64();
    assert_eq!(log.end_offset(), end);
    log.close().expect("close");
    drop(log);
    std::fs::remove_dir_all(&dir).expect("cleanup");
    (clean, crash, size)
}

fn verdict(ok: bool) -> &'static str {
    if ok {
        "goal met"
    } else {
        "goal MISSED"
    }
}

fn main() {
    let base = std::env::var_os("WHARF_BENCH_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    let root = tempfile::tempdir_in(base).expect("tempdir");
    let gb: u64 = std::env::var("WHARF_BENCH_OPEN_GB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2);
    println!("wharf-log comparison bench (dir {:?})", root.path());
    let only = std::env::var("WHARF_BENCH_ONLY").unwrap_or_else(|_| "abcd".into());

    if only.contains('a') {
        let (raw, ours) = scenario_a(root.path());
        let r = ours / raw;
        println!(
        "(a) 1 KiB x 64 per batch, Always: {ours:.0} MB/s payload vs raw 64 KiB write+fdatasync {raw:.0} MB/s = {:.0}% ({}: >= 85%)",
        r * 100.0,
        verdict(r >= 0.85)
    );
    }
    if only.contains('b') {
        let (append, read, decode) = scenario_b(root.path());
        println!(
        "(b) 100 B records, Never: append {:.2} M records/s ({}: >= 3M/s); sequential read {read:.2} GB/s of CRC-checked batches ({}: >= 1 GB/s); record decode {:.1} M records/s",
        append / 1e6,
        verdict(append >= 3e6),
        verdict(read >= 1.0),
        decode / 1e6
    );
    }
    if only.contains('c') {
        let (raw_ops, ours_ops, per_sync) = scenario_c(root.path());
        let ratio = ours_ops / raw_ops;
        println!(
            "(c) 64 threads x 1 record, Always: {ours_ops:.0} records/s vs raw 1-record write+fdatasync {raw_ops:.0}/s = {ratio:.1}x ({}: >= 20x); {per_sync:.1} records per fdatasync",
            verdict(ratio >= 20.0)
        );
    }
    if only.contains('d') {
        let (clean, crash, size) = scenario_d(root.path(), gb);
        println!(
        "(d) open of a {:.2} GB log: after clean close {:.3} s ({}: < 1 s), after simulated crash (no marker, ~240 MB tail segment scanned) {:.3} s ({}: < 2 s) [page cache warm]",
        size as f64 / 1e9,
        clean,
        verdict(clean < 1.0),
        crash,
        verdict(crash < 2.0)
    );
    }
}
