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

/// CPU time (user + system) used by this process so far, in seconds. On a
/// shared 2-core machine "records per CPU-second" is far steadier than
/// records per wall-clock second.
#[allow(unsafe_code)] // audited: one libc call, see SAFETY
fn cpu_secs() -> f64 {
    let mut ru = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage writes a full `rusage` into the pointer we pass.
    let rc = unsafe { libc::getrusage(libc::RUSAGE_SELF, ru.as_mut_ptr()) };
    if rc != 0 {
        return f64::NAN;
    }
    // SAFETY: initialised by the successful call above.
    let ru = unsafe { ru.assume_init() };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// (a): raw 64 KiB append+fdatasync and the log's 64 x 1 KiB `Always`
/// appends, interleaved 4 operations at a time so both see the same disk
/// (fsync latency on a shared VM drifts by 10x within seconds). Returns
/// total MB/s of each and the median over rounds of (raw time / log time).
fn scenario_a(root: &Path) -> (f64, f64, f64) {
    let records: Vec<Record> = (0..64)
        .map(|i| Record::new(i, Bytes::from(vec![0x42u8; 1024])))
        .collect();
    let dir = root.join("a");
    let log = Log::open(&dir, config(Durability::Always)).expect("open");
    let raw_path = root.join("raw-a.bin");
    let mut raw = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&raw_path)
        .expect("open raw file");
    let chunk = vec![0x5au8; 64 * 1024];
    let (mut raw_time, mut log_time) = (Duration::ZERO, Duration::ZERO);
    let (mut raw_ops, mut log_ops) = (0u64, 0u64);
    let mut ratios = Vec::new();
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(8) {
        let t = Instant::now();
        for _ in 0..4 {
            raw.write_all(&chunk).expect("raw write");
            raw.sync_data().expect("raw fdatasync");
        }
        let r = t.elapsed();
        let t = Instant::now();
        for _ in 0..4 {
            log.append(&records).expect("append");
        }
        let l = t.elapsed();
        raw_time += r;
        log_time += l;
        raw_ops += 4;
        log_ops += 4;
        ratios.push(r.as_secs_f64() / l.as_secs_f64());
    }
    ratios.sort_by(|a, b| a.total_cmp(b));
    let median_ratio = ratios[ratios.len() / 2];
    log.close().expect("close");
    drop(log);
    drop(raw);
    std::fs::remove_dir_all(&dir).expect("cleanup");
    std::fs::remove_file(&raw_path).expect("cleanup");
    let mb = |ops: u64, t: Duration| (ops * 64 * 1024) as f64 / t.as_secs_f64() / 1e6;
    (mb(raw_ops, raw_time), mb(log_ops, log_time), median_ratio)
}

struct B {
    append_wall: f64,
    append_cpu: f64,
    read_wall: f64,
    read_cpu: f64,
    decode_wall: f64,
}

fn scenario_b(root: &Path) -> B {
    let dir = root.join("b");
    let log = Log::open(&dir, config(Durability::Never)).expect("open");
    let batch: Vec<Record> = (0..1000)
        .map(|i| Record::new(1_700_000_000_000 + i, Bytes::from(vec![0x61u8; 100])))
        .collect();
    let rounds = 5000; // 5M records, ~0.5 GB
    let (t, c) = (Instant::now(), cpu_secs());
    for _ in 0..rounds {
        log.append(&batch).expect("append");
    }
    let n = (rounds * batch.len()) as f64;
    let append_wall = n / t.elapsed().as_secs_f64();
    let append_cpu = n / (cpu_secs() - c);

    // Sequential read: whole CRC-checked batches, 1 MiB per call.
    let mut best_read = 0f64;
    let mut read_cpu = 0f64;
    let mut decode_rate = 0f64;
    for _ in 0..3 {
        let (t, c) = (Instant::now(), cpu_secs());
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
        read_cpu = read_cpu.max(bytes as f64 / (cpu_secs() - c) / 1e9);
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
    B {
        append_wall,
        append_cpu,
        read_wall: best_read,
        read_cpu,
        decode_wall: decode_rate,
    }
}

/// (c): 64 appender threads, one `Always` record each per call, against
/// a raw loop of one 110-byte write + fdatasync. Windows of 0.5 s
/// alternate between the two (the appenders wait on a gate during raw
/// windows) so both see the same disk.
fn scenario_c(root: &Path) -> (f64, f64, f64) {
    let dir = root.join("c");
    let log = Arc::new(Log::open(&dir, config(Durability::Always)).expect("open"));
    let gate = Arc::new((std::sync::Mutex::new(false), std::sync::Condvar::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let count = Arc::new(AtomicU64::new(0));
    let threads: Vec<_> = (0..64)
        .map(|t| {
            let (log, gate, stop, count) = (
                Arc::clone(&log),
                Arc::clone(&gate),
                Arc::clone(&stop),
                Arc::clone(&count),
            );
            std::thread::spawn(move || {
                let rec = [Record::new(t, Bytes::from(vec![0x63u8; 100]))];
                while !stop.load(Ordering::Relaxed) {
                    {
                        let (m, cv) = &*gate;
                        let mut open = m.lock().expect("gate");
                        while !*open && !stop.load(Ordering::Relaxed) {
                            open = cv.wait(open).expect("gate");
                        }
                    }
                    log.append(&rec).expect("append");
                    count.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    let set_gate = |open: bool| {
        let (m, cv) = &*gate;
        *m.lock().expect("gate") = open;
        cv.notify_all();
    };
    let raw_path = root.join("raw-c.bin");
    let mut raw = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&raw_path)
        .expect("open raw file");
    let rec = vec![0x5au8; 110];
    let (mut raw_time, mut log_time) = (Duration::ZERO, Duration::ZERO);
    let (mut raw_ops, mut log_recs, mut log_syncs) = (0u64, 0u64, 0u64);
    for _ in 0..6 {
        let t = Instant::now();
        while t.elapsed() < Duration::from_millis(500) {
            raw.write_all(&rec).expect("raw write");
            raw.sync_data().expect("raw fdatasync");
            raw_ops += 1;
        }
        raw_time += t.elapsed();
        set_gate(true);
        std::thread::sleep(Duration::from_millis(50)); // let appenders spin up
        let (c0, s0, t) = (
            count.load(Ordering::Relaxed),
            log.sync_count(),
            Instant::now(),
        );
        std::thread::sleep(Duration::from_millis(500));
        let (c1, s1) = (count.load(Ordering::Relaxed), log.sync_count());
        log_time += t.elapsed();
        log_recs += c1 - c0;
        log_syncs += s1 - s0;
        set_gate(false);
        std::thread::sleep(Duration::from_millis(20)); // drain in-flight appends
    }
    stop.store(true, Ordering::Relaxed);
    set_gate(true);
    for t in threads {
        t.join().expect("join");
    }
    log.close().expect("close");
    drop(log);
    drop(raw);
    std::fs::remove_dir_all(&dir).expect("cleanup");
    std::fs::remove_file(&raw_path).expect("cleanup");
    let raw_rate = raw_ops as f64 / raw_time.as_secs_f64();
    let ours = log_recs as f64 / log_time.as_secs_f64();
    (raw_rate, ours, log_recs as f64 / log_syncs.max(1) as f64)
}

/// Evicts this log's files from the page cache (POSIX_FADV_DONTNEED on
/// each file, after syncing it) so the next open reads from the device;
/// other processes' cached data is untouched.
#[allow(unsafe_code)] // audited: an advisory libc call, see SAFETY
fn evict(dir: &Path) {
    for e in std::fs::read_dir(dir).expect("list").flatten() {
        let f = std::fs::File::open(e.path()).expect("open for evict");
        f.sync_all().expect("sync before evict");
        use std::os::fd::AsRawFd;
        // SAFETY: plain advisory call on a valid open descriptor.
        unsafe {
            libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED);
        }
    }
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

fn scenario_d(root: &Path, gb: u64) -> D {
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
    // Each open is timed twice: page cache warm, then with this log's
    // files evicted from the page cache (cold).
    let timed_open = |what: &str| {
        let t = Instant::now();
        let log = Log::open(&dir, config(Durability::Never)).expect(what);
        let secs = t.elapsed().as_secs_f64();
        (log, secs)
    };
    let (log, clean_warm) = timed_open("clean open");
    let end = log.end_offset();
    let size = log.size_bytes();
    log.close().expect("close");
    drop(log);
    evict(&dir);
    let (log, clean_cold) = timed_open("clean open, cold");
    log.close().expect("close");
    drop(log);
    // A kill -9 leaves no clean-shutdown marker: the tail must be scanned.
    let crash = |cold: bool| {
        std::fs::remove_file(dir.join("clean.shutdown")).expect("remove marker");
        if cold {
            evict(&dir);
        }
        let (log, secs) = timed_open("recovery open");
        assert_eq!(log.end_offset(), end);
        log.close().expect("close");
        secs
    };
    let crash_cold = crash(true);
    let crash_warm = crash(false);
    std::fs::remove_dir_all(&dir).expect("cleanup");
    D {
        size,
        clean_warm,
        clean_cold,
        crash_warm,
        crash_cold,
    }
}

struct D {
    size: u64,
    clean_warm: f64,
    clean_cold: f64,
    crash_warm: f64,
    crash_cold: f64,
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
        let (raw, ours, ratio) = scenario_a(root.path());
        println!(
            "(a) 1 KiB x 64 per batch, Always: {ours:.0} MB/s payload vs raw 64 KiB write+fdatasync {raw:.0} MB/s (interleaved); median per-round ratio {:.0}% ({}: >= 85%)",
            ratio * 100.0,
            verdict(ratio >= 0.85)
        );
    }
    if only.contains('b') {
        let b = scenario_b(root.path());
        println!(
            "(b) 100 B records x 1000 per batch, Never: append {:.2} M records/s wall, {:.2} M per CPU-second ({}: >= 3M/s); sequential read {:.2} GB/s wall, {:.2} GB per CPU-second, of CRC-checked batches ({}: >= 1 GB/s); record decode {:.1} M records/s",
            b.append_wall / 1e6,
            b.append_cpu / 1e6,
            verdict(b.append_wall >= 3e6),
            b.read_wall,
            b.read_cpu,
            verdict(b.read_wall >= 1.0),
            b.decode_wall / 1e6
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
        let d = scenario_d(root.path(), gb);
        println!(
            "(d) open of a {:.2} GB log: after clean close {:.3} s warm / {:.3} s cold ({}: < 1 s); after simulated crash (no marker, ~240 MB tail segment scanned) {:.3} s warm / {:.3} s cold ({}: < 2 s)",
            d.size as f64 / 1e9,
            d.clean_warm,
            d.clean_cold,
            verdict(d.clean_cold.max(d.clean_warm) < 1.0),
            d.crash_warm,
            d.crash_cold,
            verdict(d.crash_cold.max(d.crash_warm) < 2.0)
        );
    }
}
