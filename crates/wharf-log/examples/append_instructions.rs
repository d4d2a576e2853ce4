//! Fixed workload for counting instructions per appended record with
//! callgrind (repeatable on a noisy machine, unlike seconds):
//!
//! ```text
//! cargo build --release -p wharf-log --example append_instructions
//! valgrind --tool=callgrind --toggle-collect='*Log*append*' \
//!     target/release/examples/append_instructions
//! ```
//!
//! Divide the reported `Ir` by the record count printed. Pass `single` to
//! append 20,000 one-record batches instead of 2,000 batches of 100.

use bytes::Bytes;
use wharf_log::{Durability, Log, LogConfig, Record};

fn main() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = LogConfig::builder()
        .durability(Durability::Never)
        .build()
        .expect("config");
    let log = Log::open(dir.path(), config).expect("open");
    let batch: Vec<Record> = (0..100)
        .map(|i| Record::new(1_700_000_000_000 + i, Bytes::from(vec![0x61u8; 100])))
        .collect();
    let single = std::env::args().any(|a| a == "single");
    let (batch, batches) = if single {
        (&batch[..1], 20_000)
    } else {
        (&batch[..], 2_000)
    };
    for _ in 0..batches {
        log.append(batch).expect("append");
    }
    println!(
        "appended {} records of 100 B in {batches} batches",
        batches * batch.len()
    );
    log.close().expect("close");
}
