//! Property test: random appends, reads, syncs, truncations, retention,
//! clean reopens and simulated crashes (unsynced bytes dropped at a random
//! cut) against a `Vec` model. After every step the log's contents match
//! the model, and a crash never loses a record acknowledged as durable.

use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use proptest::prelude::*;
use wharf_log::{Compression, Durability, Log, LogConfig, Record, Retention, SimStorage};

#[derive(Debug, Clone)]
enum Op {
    Append(Vec<(i64, Option<u8>, usize)>),
    Read { from_pct: u8, max_bytes: usize },
    Sync,
    Truncate { to_pct: u8 },
    Retention,
    Reopen,
    Crash { keep_pct: u8 },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => prop::collection::vec((0i64..1_000_000, proptest::option::of(any::<u8>()), 0usize..300), 1..6)
            .prop_map(Op::Append),
        3 => (0u8..=100, 1usize..3000).prop_map(|(from_pct, max_bytes)| Op::Read { from_pct, max_bytes }),
        1 => Just(Op::Sync),
        1 => (0u8..=100).prop_map(|to_pct| Op::Truncate { to_pct }),
        1 => Just(Op::Retention),
        1 => Just(Op::Reopen),
        2 => (0u8..=100).prop_map(|keep_pct| Op::Crash { keep_pct }),
    ]
}

struct Model {
    start: u64,
    records: Vec<Record>,
    /// Every offset below this is known to be durable.
    durable_end: u64,
}

impl Model {
    fn end(&self) -> u64 {
        self.start + self.records.len() as u64
    }
    fn get(&self, offset: u64) -> &Record {
        &self.records[(offset - self.start) as usize]
    }
    fn set_start(&mut self, start: u64) {
        assert!(start >= self.start, "start offset moved backwards");
        assert!(start <= self.end());
        self.records.drain(..(start - self.start) as usize);
        self.start = start;
    }
}

fn make_record(n: u64, (ts, key, len): &(i64, Option<u8>, usize)) -> Record {
    let mut value = n.to_le_bytes().to_vec();
    value.resize(8 + len, (n % 251) as u8);
    let mut r = Record::new(*ts, value);
    if let Some(k) = key {
        r = r
            .with_key(vec![*k; 3])
            .with_header(Bytes::from_static(b"n"), n.to_string());
    }
    r
}

fn config(
    sim: &SimStorage,
    durability: Durability,
    compression: Compression,
    retention: bool,
) -> LogConfig {
    LogConfig::builder()
        .storage(Arc::new(sim.clone()))
        .durability(durability)
        .compression(compression)
        .segment_max_bytes(4096)
        .index_interval_bytes(300)
        .retention(Retention {
            max_bytes: retention.then_some(12 * 1024),
            max_age: None,
        })
        .build()
        .expect("config")
}

fn check_contents(log: &Log, model: &Model) {
    assert_eq!(log.start_offset(), model.start);
    assert_eq!(log.end_offset(), model.end());
    let mut next = model.start;
    while next < model.end() {
        let rb = log.read(next, 2048).expect("read");
        assert!(
            !rb.is_empty(),
            "read at {next} below end {} returned nothing",
            model.end()
        );
        for r in rb.records() {
            let r = r.expect("decode");
            assert_eq!(r.offset, next);
            assert_eq!(&r.to_record(), model.get(next), "content at offset {next}");
            next += 1;
        }
        assert_eq!(rb.next_offset(), next);
    }
}

fn run(
    ops: Vec<Op>,
    durability: Durability,
    compression: Compression,
    retention: bool,
    short: bool,
) {
    let dir = Path::new("/p");
    let mut sim = SimStorage::new();
    if short {
        sim.set_short_writes(Some(13));
    }
    let mut log = Log::open(dir, config(&sim, durability, compression, retention)).expect("open");
    let mut model = Model {
        start: 0,
        records: Vec::new(),
        durable_end: 0,
    };
    let mut counter = 0u64;
    for op in ops {
        match op {
            Op::Append(specs) => {
                let batch: Vec<Record> = specs
                    .iter()
                    .map(|s| {
                        counter += 1;
                        make_record(counter, s)
                    })
                    .collect();
                let info = log.append(&batch).expect("append");
                assert_eq!(info.base_offset, model.end());
                assert_eq!(info.last_offset, model.end() + batch.len() as u64 - 1);
                model.records.extend(batch);
                if durability == Durability::Always {
                    model.durable_end = model.end();
                }
                model.set_start(log.start_offset());
            }
            Op::Read {
                from_pct,
                max_bytes,
            } => {
                let span = model.end() - model.start;
                let from = model.start + span * u64::from(from_pct) / 100;
                let rb = log.read(from, max_bytes).expect("read");
                assert_eq!(rb.is_empty(), from == model.end());
                for (expect, r) in (from..).zip(rb.records()) {
                    let r = r.expect("decode");
                    assert_eq!(r.offset, expect);
                    assert_eq!(&r.to_record(), model.get(expect));
                }
            }
            Op::Sync => {
                log.sync().expect("sync");
                model.durable_end = model.end();
            }
            Op::Truncate { to_pct } => {
                let span = model.end() - model.start;
                let to = model.start + span * u64::from(to_pct) / 100;
                log.truncate(to).expect("truncate");
                if to < model.end() {
                    // Truncation syncs the cut segment; earlier ones were
                    // synced when they rolled.
                    model.records.truncate((to - model.start) as usize);
                    model.durable_end = to;
                }
            }
            Op::Retention => {
                log.apply_retention().expect("retention");
                model.set_start(log.start_offset());
            }
            Op::Reopen => {
                log.close().expect("close");
                drop(log);
                log = Log::open(dir, config(&sim, durability, compression, retention))
                    .expect("reopen");
                model.durable_end = model.end();
            }
            Op::Crash { keep_pct } => {
                let after = sim.crash(|_, unsynced| unsynced * u64::from(keep_pct) / 100);
                drop(log);
                sim = after;
                if short {
                    sim.set_short_writes(Some(13));
                }
                log = Log::open(dir, config(&sim, durability, compression, retention))
                    .expect("recover");
                let end = log.end_offset();
                assert_eq!(log.start_offset(), model.start, "retention is durable");
                assert!(
                    end >= model.durable_end,
                    "crash lost durable records: end {end} < durable {}",
                    model.durable_end
                );
                assert!(end <= model.end(), "recovery invented records");
                model.records.truncate((end - model.start) as usize);
                model.durable_end = end;
            }
        }
        check_contents(&log, &model);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn log_matches_model_through_appends_truncation_retention_reopen_and_crash(
        ops in prop::collection::vec(op(), 1..50),
        always in any::<bool>(),
        lz4 in any::<bool>(),
        retention in any::<bool>(),
        short in any::<bool>(),
    ) {
        let durability = if always { Durability::Always } else { Durability::Never };
        let compression = if lz4 { Compression::Lz4 } else { Compression::None };
        run(ops, durability, compression, retention, short);
    }
}
