//! Criterion benches for the hot paths: appending with `Never` and
//! `Always`, and sequential reads. `examples/log_bench.rs` prints the same
//! scenarios as ratios of a raw `write` + `fdatasync` baseline.

use std::time::Duration;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use wharf_log::{batch, Compression, Durability, Log, LogConfig, Record};

fn config(durability: Durability) -> LogConfig {
    LogConfig::builder()
        .durability(durability)
        .build()
        .expect("valid config")
}

fn records(n: usize, size: usize) -> Vec<Record> {
    (0..n)
        .map(|i| Record::new(i as i64, Bytes::from(vec![0x61u8; size])))
        .collect()
}

fn append(c: &mut Criterion) {
    let mut g = c.benchmark_group("append");
    g.measurement_time(Duration::from_secs(3));
    g.sample_size(20);

    let dir = tempfile::tempdir().expect("tempdir");
    let log = Log::open(dir.path(), config(Durability::Never)).expect("open");
    let batch = records(1000, 100);
    g.throughput(Throughput::Elements(1000));
    g.bench_function("never_1000x100B", |b| {
        b.iter(|| log.append(&batch).expect("append"))
    });

    let dir = tempfile::tempdir().expect("tempdir");
    let log = Log::open(dir.path(), config(Durability::Always)).expect("open");
    let batch = records(64, 1024);
    g.throughput(Throughput::Bytes(64 * 1024));
    g.bench_function("always_64x1KiB", |b| {
        b.iter(|| log.append(&batch).expect("append"))
    });
    g.finish();
}

fn encode(c: &mut Criterion) {
    let mut g = c.benchmark_group("encode");
    let batch = records(1000, 100);
    g.throughput(Throughput::Elements(1000));
    for (name, comp) in [("none", Compression::None), ("lz4", Compression::Lz4)] {
        g.bench_function(name, |b| {
            b.iter(|| batch::encode_batch(&batch, 0, comp).expect("encode"))
        });
    }
    g.finish();
}

fn read(c: &mut Criterion) {
    let mut g = c.benchmark_group("read");
    g.measurement_time(Duration::from_secs(3));
    g.sample_size(20);
    let dir = tempfile::tempdir().expect("tempdir");
    let log = Log::open(dir.path(), config(Durability::Never)).expect("open");
    let batch = records(1000, 100);
    for _ in 0..200 {
        log.append(&batch).expect("append");
    }
    let total = log.size_bytes();
    g.throughput(Throughput::Bytes(total));
    g.bench_function("sequential_batches", |b| {
        b.iter_batched(
            || 0u64,
            |mut next| loop {
                let rb = log.read(next, 1 << 20).expect("read");
                if rb.is_empty() {
                    break;
                }
                next = rb.next_offset();
            },
            BatchSize::SmallInput,
        )
    });
    g.throughput(Throughput::Elements(200_000));
    g.bench_function("sequential_records", |b| {
        b.iter(|| {
            let mut next = 0;
            let mut n = 0usize;
            loop {
                let rb = log.read(next, 1 << 20).expect("read");
                if rb.is_empty() {
                    break n;
                }
                n += rb.records().count();
                next = rb.next_offset();
            }
        })
    });
    g.finish();
}

criterion_group!(benches, append, encode, read);
criterion_main!(benches);
