//! The in-flight registry per delivery: a batch of 1,000 registered with a
//! lease and settled with one `take_many`, in order and in reverse, and
//! one at a time (`register_leased` + `take`). The record is 192 bytes,
//! about what an adapter keeps per delivery.
//!
//! `cargo bench -p wharf-adapter --bench in_flight`

use std::time::Duration;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use wharf_adapter::InFlight;

type Record = [u64; 24];

const BATCH: usize = 1000;

fn batches(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("runtime");
    let _guard = rt.enter();
    let lease = Some(Duration::from_secs(30));
    let mut g = c.benchmark_group("in_flight");
    g.throughput(Throughput::Elements(BATCH as u64));
    let f: InFlight<Record> = InFlight::new(BATCH);
    let (mut taken, mut failed) = (Vec::with_capacity(BATCH), Vec::new());
    g.bench_function("batch_in_order", |b| {
        b.iter(|| {
            let first = f.register_all_leased((0..BATCH as u32).map(|i| [u64::from(i); 24]), lease);
            let tokens: Vec<u64> = (first..first + BATCH as u64).collect();
            taken.clear();
            f.take_many(&tokens, &mut taken, &mut failed);
            assert_eq!(taken.len(), BATCH);
        })
    });
    g.bench_function("batch_reversed", |b| {
        b.iter(|| {
            let first = f.register_all_leased((0..BATCH as u32).map(|i| [u64::from(i); 24]), lease);
            let tokens: Vec<u64> = (first..first + BATCH as u64).rev().collect();
            taken.clear();
            f.take_many(&tokens, &mut taken, &mut failed);
            assert_eq!(taken.len(), BATCH);
        })
    });
    g.bench_function("one_at_a_time", |b| {
        b.iter_batched(
            || (),
            |()| {
                for i in 0..BATCH as u64 {
                    let t = f.register_leased([i; 24], lease);
                    f.take(t).expect("held");
                }
            },
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

criterion_group!(benches, batches);
criterion_main!(benches);
