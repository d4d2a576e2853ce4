//! Helpers shared by the integration tests: record generators and a
//! "read everything" function that checks density on the way.
#![allow(dead_code)]

use std::path::Path;
use std::sync::Arc;

use wharf_log::{Durability, Log, LogConfig, Record, SimStorage, StoredRecord};

/// A record whose value encodes `n` so tests can check identity.
pub fn rec(n: u64) -> Record {
    let mut value = format!("value-{n}-").into_bytes();
    value.resize(value.len() + (n % 37) as usize, b'x');
    let r = Record::new(1_000 + n as i64, value);
    if n.is_multiple_of(3) {
        r.with_key(format!("key-{n}"))
            .with_header("h", format!("{n}"))
    } else {
        r
    }
}

/// Reads every record from the start to the readable end, asserting that
/// offsets are dense.
pub fn read_all(log: &Log) -> Vec<StoredRecord> {
    let mut out: Vec<StoredRecord> = Vec::new();
    let mut next = log.start_offset();
    loop {
        let rb = log.read(next, 4096).expect("read");
        if rb.is_empty() {
            break;
        }
        for r in rb.records() {
            let r = r.expect("decode");
            assert_eq!(r.offset, next, "offsets must be dense");
            next += 1;
            out.push(r);
        }
        next = rb.next_offset();
    }
    out
}

pub fn sim_config(sim: &SimStorage, durability: Durability, segment: u64) -> LogConfig {
    LogConfig::builder()
        .storage(Arc::new(sim.clone()))
        .durability(durability)
        .segment_max_bytes(segment)
        .index_interval_bytes(256)
        .build()
        .expect("config")
}

pub fn fs_config(durability: Durability, segment: u64) -> LogConfig {
    LogConfig::builder()
        .durability(durability)
        .segment_max_bytes(segment)
        .index_interval_bytes(256)
        .build()
        .expect("config")
}

pub fn files_with_suffix(dir: &Path, suffix: &str) -> Vec<std::path::PathBuf> {
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .expect("list")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.to_string_lossy().ends_with(suffix))
        .collect();
    v.sort();
    v
}
