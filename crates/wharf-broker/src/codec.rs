//! How a [`Message`] is stored as a [`wharf_log::Record`] and read back.
//!
//! The log knows keys, headers, values and timestamps; the message id rides
//! as the first header under the name `\0id` (16 bytes), which no valid
//! header name collides with because it starts with a NUL byte.

use std::sync::Mutex;

use bytes::Bytes;
use wharf_core::{Headers, Message, MessageId, Timestamp};
use wharf_log::{Record, RecordRef, StoredRecord};

const ID_HEADER: &[u8] = b"\0id";

/// The ids of a batch of messages in one buffer, so that storing a
/// message's id costs a slice of it rather than an allocation.
pub(crate) struct IdBuffer(Bytes);

impl IdBuffer {
    pub(crate) fn new(msgs: &[Message]) -> Self {
        let mut buf = Vec::with_capacity(msgs.len() * 16);
        for m in msgs {
            buf.extend_from_slice(&m.id().to_bytes());
        }
        IdBuffer(Bytes::from(buf))
    }

    /// The id of message `i` of the batch, as stored.
    pub(crate) fn id(&self, i: usize) -> Bytes {
        self.0.slice(i * 16..i * 16 + 16)
    }
}

/// Header vectors of appended records, kept for the next publishes: every
/// record carries at least the id header, so without reuse storing a
/// message costs an allocation and a free (a quarter of the publish path's
/// instructions for small messages).
#[derive(Default)]
pub(crate) struct HeaderPool(Mutex<Vec<RecordHeaders>>);

type RecordHeaders = Vec<(Bytes, Bytes)>;

/// Most vectors the pool keeps (a few batches' worth).
const HEADER_POOL_MAX: usize = 8192;

impl HeaderPool {
    /// Up to `n` empty vectors.
    pub(crate) fn take(&self, n: usize) -> Vec<RecordHeaders> {
        let mut pool = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let at = pool.len().saturating_sub(n);
        pool.split_off(at)
    }

    /// Takes back the header vectors of appended records.
    pub(crate) fn give(&self, records: Vec<Record>) {
        let mut spare: Vec<RecordHeaders> = records
            .into_iter()
            .map(|r| {
                let mut h = r.headers;
                h.clear();
                h
            })
            .collect();
        let mut pool = self.0.lock().unwrap_or_else(|p| p.into_inner());
        spare.truncate(HEADER_POOL_MAX.saturating_sub(pool.len()));
        pool.append(&mut spare);
    }
}

/// The record for `msg`; `id` is its id's 16 bytes (see [`IdBuffer`]),
/// `headers` an empty vector to fill (see [`HeaderPool`]).
pub(crate) fn to_record(msg: &Message, id: Bytes, mut headers: RecordHeaders) -> Record {
    debug_assert_eq!(&id[..], &msg.id().to_bytes()[..]);
    headers.reserve(msg.headers().len() + 1);
    headers.push((Bytes::from_static(ID_HEADER), id));
    for (n, v) in msg.headers().iter() {
        headers.push((
            Bytes::copy_from_slice(n.as_bytes()),
            Bytes::copy_from_slice(v.as_bytes()),
        ));
    }
    Record {
        timestamp_ms: i64::try_from(msg.timestamp().as_millis()).unwrap_or(i64::MAX),
        key: msg.key().cloned(),
        headers,
        value: msg.payload().clone(),
    }
}

/// Why a stored record is not a valid message (only a bug or a foreign
/// writer could cause it: the log checks CRCs before this runs).
#[derive(Debug, thiserror::Error)]
#[error("record at offset {offset} is not a Wharf message: {reason}")]
pub(crate) struct NotAMessage {
    pub offset: u64,
    pub reason: &'static str,
}

pub(crate) fn from_record(rec: StoredRecord) -> Result<Message, NotAMessage> {
    decode(
        rec.offset,
        rec.timestamp_ms,
        rec.key,
        rec.headers.iter().map(|(n, v)| (&n[..], &v[..])),
        rec.value,
    )
}

/// Decodes a record read in place: the id and headers are parsed from the
/// borrowed buffer, and only the payload (and key) become `Bytes` slices of
/// it — one reference-count increment per message on the consume path.
#[inline]
pub(crate) fn from_record_ref(rec: &RecordRef<'_>) -> Result<Message, NotAMessage> {
    decode(
        rec.offset,
        rec.timestamp_ms,
        rec.key_bytes(),
        rec.headers(),
        rec.value_bytes(),
    )
}

#[inline]
fn decode<'a>(
    offset: u64,
    timestamp_ms: i64,
    key: Option<Bytes>,
    mut headers: impl Iterator<Item = (&'a [u8], &'a [u8])>,
    value: Bytes,
) -> Result<Message, NotAMessage> {
    let bad = |reason| NotAMessage { offset, reason };
    let id = match headers.next() {
        Some((n, v)) if n == ID_HEADER => {
            let bytes: [u8; 16] = v.try_into().map_err(|_| bad("id is not 16 bytes"))?;
            MessageId::from_bytes(bytes)
        }
        _ => return Err(bad("no id header")),
    };
    let mut out = Headers::new();
    for (n, v) in headers {
        let n = std::str::from_utf8(n).map_err(|_| bad("header name is not UTF-8"))?;
        let v = std::str::from_utf8(v).map_err(|_| bad("header value is not UTF-8"))?;
        out.insert(n, v);
    }
    let timestamp = Timestamp::from_millis(u64::try_from(timestamp_ms).unwrap_or(0));
    Ok(Message::from_parts(id, key, out, value, timestamp))
}

/// Stable partition for a key: CRC32C of the key modulo the partition count.
pub(crate) fn partition_for_key(key: &[u8], partitions: u32) -> u32 {
    crc32c::crc32c(key) % partitions.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_survives_record_round_trip() {
        let m = Message::builder()
            .key("k")
            .header("a", "1")
            .header("b", "2")
            .payload("body")
            .timestamp(Timestamp::from_millis(1234))
            .build();
        let r = to_record(
            &m,
            IdBuffer::new(std::slice::from_ref(&m)).id(0),
            Vec::new(),
        );
        let stored = StoredRecord {
            offset: 7,
            timestamp_ms: r.timestamp_ms,
            key: r.key.clone(),
            headers: r.headers.clone(),
            value: r.value.clone(),
        };
        assert_eq!(from_record(stored).unwrap(), m);
        let batch = wharf_log::Batch::decode(
            wharf_log::batch::encode_batch(&[r], 7, wharf_log::Compression::None).unwrap(),
        )
        .unwrap();
        let mut decoded = Vec::new();
        batch
            .for_each_record(|rec| {
                decoded.push(from_record_ref(&rec).unwrap());
                Ok::<(), wharf_log::CorruptKind>(())
            })
            .unwrap();
        assert_eq!(decoded, vec![m]);
    }

    #[test]
    fn header_pool_hands_back_empty_vectors_and_stays_bounded() {
        let pool = HeaderPool::default();
        let m = Message::builder().header("a", "1").payload("x").build();
        let ids = IdBuffer::new(std::slice::from_ref(&m));
        let records: Vec<Record> = (0..HEADER_POOL_MAX + 10)
            .map(|_| to_record(&m, ids.id(0), Vec::new()))
            .collect();
        pool.give(records);
        let spare = pool.take(HEADER_POOL_MAX + 10);
        assert_eq!(spare.len(), HEADER_POOL_MAX);
        assert!(spare.iter().all(|h| h.is_empty() && h.capacity() >= 2));
        assert!(pool.take(1).is_empty());
        let r = to_record(&m, ids.id(0), spare.into_iter().next().unwrap());
        assert_eq!(r.headers.len(), 2);
    }

    #[test]
    fn partition_for_key_is_stable_and_in_range() {
        assert_eq!(
            partition_for_key(b"customer-7", 8),
            partition_for_key(b"customer-7", 8)
        );
        assert_eq!(
            partition_for_key(b"customer-7", 8),
            crc32c::crc32c(b"customer-7") % 8
        );
        for k in 0..100u32 {
            assert!(partition_for_key(&k.to_be_bytes(), 3) < 3);
        }
    }
}
