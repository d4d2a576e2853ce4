//! Criterion benches of the gRPC publish codec, the per-message work the
//! remote path adds to an in-process publish: the client's encode of a
//! batch, the server's in-place decode, and the client's expansion of the
//! compact receipts. 1000 messages of 100 B, as `wharf bench` sends them.

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use wharf_core::{Message, PublishSource as _, Receipt};
use wharf_proto::publish::{
    compact_response, decode_publish, receipts_from_response, PublishBatch,
};

const BATCH: usize = 1000;

fn batch() -> PublishBatch {
    let payload = Bytes::from(vec![b'x'; 100]);
    PublishBatch {
        topic: "bench.topic".into(),
        messages: (0..BATCH).map(|_| Message::new(payload.clone())).collect(),
        compact_receipts: true,
    }
}

fn codec(c: &mut Criterion) {
    let batch = batch();
    let mut g = c.benchmark_group("publish_codec");
    g.throughput(Throughput::Elements(BATCH as u64));
    let mut buf = Vec::new();
    g.bench_function("encode_1000x100B", |b| {
        b.iter(|| {
            buf.clear();
            batch.encode_framed(&mut buf).expect("fits");
            buf.len()
        })
    });
    buf.clear();
    batch.encode_framed(&mut buf).expect("fits");
    let body = Bytes::from(buf[5..].to_vec());
    g.bench_function("decode_1000x100B", |b| {
        b.iter(|| {
            let d = decode_publish(&body).expect("valid");
            d.messages.expect("valid ids").len()
        })
    });
    let receipts: Vec<Receipt> = batch
        .messages
        .iter()
        .zip(1000u64..)
        .map(|(m, o)| Receipt::new(m.id(), 2, Some(o)))
        .collect();
    let resp = compact_response(&receipts).expect("compact");
    g.bench_function("compact_receipts_1000", |b| {
        b.iter(|| compact_response(&receipts).expect("compact").ranges.len())
    });
    g.bench_function("receipts_from_response_1000", |b| {
        b.iter(|| {
            receipts_from_response(&resp, &batch.messages)
                .expect("one per message")
                .len()
        })
    });
    g.finish();
}

criterion_group!(benches, codec);
criterion_main!(benches);
