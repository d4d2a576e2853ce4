//! Fuzz target for the batch decoder: arbitrary bytes must never panic,
//! loop or over-allocate. Three paths: the input as a batch (header, CRC,
//! body); the input with its CRC fixed up so header checks, LZ4
//! decompression and record decoding are reached; and the record decoder
//! on its own.

#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use wharf_log::batch::{batch_crc, decode_all, decode_body_unchecked, BATCH_MAGIC, HEADER_LEN};

fuzz_target!(|data: &[u8]| {
    let _ = decode_all(Bytes::copy_from_slice(data));

    if data.len() >= HEADER_LEN {
        let mut v = data.to_vec();
        v[0..4].copy_from_slice(&BATCH_MAGIC.to_le_bytes());
        let len = v.len() as u32;
        v[8..12].copy_from_slice(&len.to_le_bytes());
        let crc = batch_crc(&v);
        v[4..8].copy_from_slice(&crc.to_le_bytes());
        if let Ok(records) = decode_all(Bytes::from(v)) {
            assert!(!records.is_empty());
        }
    }

    if let Some((&count, body)) = data.split_first() {
        let _ = decode_body_unchecked(Bytes::copy_from_slice(body), u32::from(count));
    }
});
