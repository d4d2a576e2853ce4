//! The real crash test: a child process (this same binary, re-executed)
//! appends with `Durability::Always` from several threads and prints every
//! acknowledged offset range; the parent `kill -9`s it at a random moment,
//! reopens the log, and checks that every acknowledged record is present
//! and intact, offsets are dense and nothing is duplicated.
//!
//! Runs without the libtest harness (`harness = false`) so the child can be
//! the same executable. Cycles: 50 by default, `WHARF_CRASH_CYCLES=n` for
//! more.

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::Rng;
use wharf_log::{Durability, Log, LogConfig, Record};

const CHILD_DIR: &str = "WHARF_KILL9_CHILD_DIR";
const CHILD_CYCLE: &str = "WHARF_KILL9_CYCLE";
const THREADS: u64 = 4;

fn config() -> LogConfig {
    LogConfig::builder()
        .durability(Durability::Always)
        .segment_max_bytes(32 * 1024)
        .index_interval_bytes(512)
        .build()
        .expect("valid config")
}

fn value(cycle: u64, tid: u64, seq: u64, i: u64) -> Vec<u8> {
    let mut v = format!("c{cycle}-t{tid}-s{seq}-i{i}-").into_bytes();
    v.resize(v.len() + ((seq * 7 + i) % 200) as usize, b'p');
    v
}

fn child(dir: &str, cycle: u64) {
    let log = Arc::new(Log::open(dir, config()).expect("child open"));
    let threads: Vec<_> = (0..THREADS)
        .map(|tid| {
            let log = Arc::clone(&log);
            std::thread::spawn(move || {
                let out = std::io::stdout();
                for seq in 0.. {
                    let n = seq % 5 + 1;
                    let batch: Vec<Record> = (0..n)
                        .map(|i| Record::new(seq as i64, value(cycle, tid, seq, i)))
                        .collect();
                    let info = log.append(&batch).expect("child append");
                    // One write per line: atomic on a pipe.
                    let line = format!(
                        "ack {} {} {cycle} {tid} {seq} {n}\n",
                        info.base_offset, info.last_offset
                    );
                    let mut lock = out.lock();
                    lock.write_all(line.as_bytes()).expect("stdout");
                    lock.flush().expect("flush");
                }
            })
        })
        .collect();
    for t in threads {
        // Never returns normally: the parent kills us.
        let _ = t.join();
    }
}

fn verify(dir: &Path, acked: &HashMap<u64, Vec<u8>>) -> u64 {
    let log = Log::open(dir, config()).expect("reopen after kill -9");
    let mut next = log.start_offset();
    assert_eq!(next, 0);
    let mut seen = HashSet::new();
    loop {
        let rb = log.read(next, 64 * 1024).expect("read");
        if rb.is_empty() {
            break;
        }
        for r in rb.records() {
            let r = r.expect("record decodes");
            assert_eq!(r.offset, next, "offsets are dense");
            assert!(
                r.value.starts_with(b"c"),
                "record {} is not one the child wrote",
                r.offset
            );
            assert!(
                seen.insert(r.value.clone()),
                "record {} duplicates an earlier one",
                r.offset
            );
            if let Some(v) = acked.get(&r.offset) {
                assert_eq!(
                    &r.value[..],
                    &v[..],
                    "acknowledged record {} changed",
                    r.offset
                );
            }
            next += 1;
        }
        next = rb.next_offset();
    }
    assert_eq!(next, log.end_offset());
    let missing: Vec<_> = acked.keys().filter(|&&o| o >= next).collect();
    assert!(
        missing.is_empty(),
        "{} acknowledged records lost, e.g. offset {:?}",
        missing.len(),
        missing.first()
    );
    log.close().expect("close");
    next
}

fn parent(cycles: u64) {
    let dir = tempfile::tempdir().expect("tempdir");
    let exe = std::env::current_exe().expect("current exe");
    let mut rng = rand::thread_rng();
    let mut acked: HashMap<u64, Vec<u8>> = HashMap::new();
    let started = Instant::now();
    let mut total_acks = 0u64;
    for cycle in 0..cycles {
        let mut child = Command::new(&exe)
            .env(CHILD_DIR, dir.path())
            .env(CHILD_CYCLE, cycle.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn child");
        let stdout = child.stdout.take().expect("piped stdout");
        let reader = std::thread::spawn(move || {
            BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
                .collect::<Vec<String>>()
        });
        std::thread::sleep(Duration::from_millis(rng.gen_range(5..80)));
        child.kill().expect("kill -9");
        child.wait().expect("reap");
        let lines = reader.join().expect("reader");
        for line in &lines {
            let f: Vec<u64> = line
                .split(' ')
                .skip(1)
                .map(|x| x.parse().expect("number"))
                .collect();
            assert_eq!(f.len(), 6, "bad ack line {line:?}");
            let (base, last, c, tid, seq, n) = (f[0], f[1], f[2], f[3], f[4], f[5]);
            assert_eq!(last - base + 1, n);
            for i in 0..n {
                let prev = acked.insert(base + i, value(c, tid, seq, i));
                assert!(prev.is_none(), "offset {} acknowledged twice", base + i);
            }
            total_acks += 1;
        }
        verify(dir.path(), &acked);
    }
    assert!(total_acks > 0, "the child never acknowledged anything");
    eprintln!(
        "kill9: {cycles} cycles, {total_acks} acknowledged appends, {} records, {:?}",
        acked.len(),
        started.elapsed()
    );
}

fn main() {
    if let Ok(dir) = std::env::var(CHILD_DIR) {
        let cycle = std::env::var(CHILD_CYCLE)
            .ok()
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        child(&dir, cycle);
        return;
    }
    if std::env::args().any(|a| a == "--list") {
        println!("kill9_acknowledged_records_survive_sigkill: test");
        return;
    }
    let cycles = std::env::var("WHARF_CRASH_CYCLES")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(50);
    println!("\nrunning 1 test");
    parent(cycles);
    println!("test kill9_acknowledged_records_survive_sigkill ... ok");
    println!("\ntest result: ok. 1 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out\n");
}
