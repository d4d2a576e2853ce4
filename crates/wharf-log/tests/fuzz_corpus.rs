//! Runs the committed fuzz corpus (`fuzz/corpus/batch_decode/`) through the
//! batch decoder so CI covers it without cargo-fuzz: `valid-*` inputs must
//! decode, `broken-*` inputs must be rejected with a typed error, and any
//! other input (added by fuzzing) must simply not panic.

use std::path::Path;

use bytes::Bytes;
use wharf_log::batch::{decode_all, decode_body_unchecked, BATCH_MAGIC, HEADER_LEN};
use wharf_log::CorruptKind;

#[test]
fn committed_corpus_decodes_valid_inputs_and_rejects_broken_ones() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/batch_decode");
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
    let crc = crc32c::crc32c(&v[8..]);
    v[4..8].copy_from_slice(&crc.to_le_bytes());
    let err = decode_all(Bytes::from(v)).expect_err("garbage body");
    assert_eq!(err, CorruptKind::Decompress { declared: 1000 });
}
