//! Runs the committed fuzz corpus (`fuzz/corpus/batch_decode/`) through the
//! batch decoder so CI covers it without cargo-fuzz: `valid-*` inputs must
//! decode, `broken-*` inputs must be rejected with a typed error, and any
//! other input (added by fuzzing) must simply not panic. The corpus files
//! double as golden files of the batch format: `WHARF_REGEN_CORPUS=1`
//! rewrites them from the encoder.

use std::path::Path;

use bytes::Bytes;
use wharf_log::batch::encode_batch;
use wharf_log::batch::{batch_crc, decode_all, decode_body_unchecked, BATCH_MAGIC, HEADER_LEN};
use wharf_log::{Compression, CorruptKind, Record};

fn corpus_dir() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/batch_decode")
}

/// The committed corpus, regenerated from the encoder.
fn expected_corpus() -> Vec<(&'static str, Vec<u8>)> {
    let small = vec![Record::new(1_700_000_000_000, "hello")];
    let rich = vec![
        Record::new(5, "v1")
            .with_key("k")
            .with_header("trace", "abc")
            .with_header("", ""),
        Record::new(-3, Vec::new()),
        Record::new(i64::MAX, vec![9u8; 200]).with_key(Vec::new()),
    ];
    let many: Vec<Record> = (0..50)
        .map(|i| Record::new(i, format!("{{\"n\":{i}}}")))
        .collect();
    let s = encode_batch(&small, 0, Compression::None)
        .expect("encode")
        .to_vec();
    let r = encode_batch(&rich, 42, Compression::None)
        .expect("encode")
        .to_vec();
    let m = encode_batch(&many, 1000, Compression::Lz4)
        .expect("encode")
        .to_vec();
    let mut flipped = r.clone();
    flipped[60] ^= 0x10;
    let mut magic = s.clone();
    magic[0] = b'X';
    let mut extra = s.clone();
    extra.extend_from_slice(b"junk");
    let mut lz = m.clone();
    let n = lz.len();
    lz[n - 3] ^= 0xff;
    vec![
        ("valid-single-record.bin", s.clone()),
        ("valid-keys-headers.bin", r.clone()),
        ("valid-lz4-50-records.bin", m.clone()),
        ("broken-bit-flip-in-body.bin", flipped),
        ("broken-truncated.bin", r[..r.len() - 5].to_vec()),
        ("broken-bad-magic.bin", magic),
        ("broken-trailing-junk.bin", extra),
        ("broken-lz4-body.bin", lz),
        ("broken-empty.bin", Vec::new()),
        ("broken-header-only.bin", s[..48].to_vec()),
    ]
}

#[test]
fn committed_corpus_matches_the_encoder_byte_for_byte() {
    let regen = std::env::var_os("WHARF_REGEN_CORPUS").is_some();
    for (name, bytes) in expected_corpus() {
        let path = corpus_dir().join(name);
        if regen {
            std::fs::write(&path, &bytes).expect("write corpus file");
        }
        let on_disk = std::fs::read(&path).expect("corpus file exists");
        assert_eq!(on_disk, bytes, "{name} differs: the batch format changed");
    }
}

#[test]
fn committed_corpus_decodes_valid_inputs_and_rejects_broken_ones() {
    let dir = corpus_dir();
    let mut valid = 0;
    let mut broken = 0;
    for entry in std::fs::read_dir(&dir).expect("corpus directory") {
        let path = entry.expect("entry").path();
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("")
            .to_owned();
        let data = std::fs::read(&path).expect("read corpus file");
        let result = decode_all(Bytes::from(data.clone()));
        if name.starts_with("valid-") {
            let records = result.unwrap_or_else(|e| panic!("{name} must decode: {e}"));
            assert!(!records.is_empty(), "{name}");
            valid += 1;
        } else if name.starts_with("broken-") {
            assert!(result.is_err(), "{name} must be rejected");
            broken += 1;
        }
        if let Some((&n, body)) = data.split_first() {
            let _ = decode_body_unchecked(Bytes::copy_from_slice(body), u32::from(n));
        }
    }
    assert!(
        valid >= 3 && broken >= 5,
        "corpus too small: {valid} valid, {broken} broken"
    );
}

#[test]
fn crc_valid_batch_with_garbage_lz4_body_is_a_decompress_error() {
    let mut v = vec![0u8; HEADER_LEN + 16];
    v[0..4].copy_from_slice(&BATCH_MAGIC.to_le_bytes());
    let len = v.len() as u32;
    v[8..12].copy_from_slice(&len.to_le_bytes());
    v[12] = 1; // lz4
    v[24] = 1; // one record
    v[28..32].copy_from_slice(&1000u32.to_le_bytes());
    for (i, b) in v[HEADER_LEN..].iter_mut().enumerate() {
        *b = 0xf0 | i as u8;
    }
    let crc = batch_crc(&v);
    v[4..8].copy_from_slice(&crc.to_le_bytes());
    let err = decode_all(Bytes::from(v)).expect_err("garbage body");
    assert_eq!(err, CorruptKind::Decompress { declared: 1000 });
}
