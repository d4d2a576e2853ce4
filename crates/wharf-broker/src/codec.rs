//! How a [`Message`] is stored as a [`wharf_log::Record`] and read back.
//!
//! The log knows keys, headers, values and timestamps; the message id rides
//! as the first header under the name `\0id` (16 bytes), which no valid
//! header name collides with because it starts with a NUL byte.

use bytes::Bytes;
use wharf_core::{Headers, Message, MessageId, PublishSource, Timestamp};
use wharf_log::{BatchBuilder, RecordRef, StoredRecord};

const ID_HEADER: &[u8] = b"\0id";

/// Appends message `i` of `src` to `batch` as a record: the id's 16 bytes
/// as the first header, then the message's headers. `scratch` is an empty
/// vector reused between calls (left empty).
pub(crate) fn push_record<'a, S: PublishSource + ?Sized>(
    src: &'a S,
    i: usize,
    batch: &mut BatchBuilder,
    scratch: &mut Vec<(&'a [u8], &'a [u8])>,
) {
    let id = src.id(i).to_bytes();
    src.headers(i, scratch);
    let headers = IdThen {
        id: Some((ID_HEADER, &id[..])),
        rest: scratch.iter(),
    };
    batch.push(
        timestamp_ms(src.timestamp(i)),
        src.key(i),
        src.payload(i),
        headers,
    );
    scratch.clear();
}

/// The id header, then the message's headers (an exact-size iterator,
/// which `std::iter::Chain` is not).
struct IdThen<'s> {
    id: Option<(&'s [u8], &'s [u8])>,
    rest: std::slice::Iter<'s, (&'s [u8], &'s [u8])>,
}

impl<'s> Iterator for IdThen<'s> {
    type Item = (&'s [u8], &'s [u8]);

    fn next(&mut self) -> Option<Self::Item> {
        self.id.take().or_else(|| self.rest.next().copied())
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let n = usize::from(self.id.is_some()) + self.rest.len();
        (n, Some(n))
    }
}

impl ExactSizeIterator for IdThen<'_> {}

/// A record's timestamp for `t` (the log keeps signed milliseconds).
fn timestamp_ms(t: Timestamp) -> i64 {
    i64::try_from(t.as_millis()).unwrap_or(i64::MAX)
}

/// About how many bytes `count` messages of `total_size` (the sum of their
/// [`PublishSource::size`]) take in a batch, for its capacity.
pub(crate) fn batch_len_estimate(total_size: usize, count: usize) -> usize {
    // Per record, the id header (name, 16 bytes, two length varints) and the
    // record's own varints; header names and values are in the sizes.
    total_size + count * BatchBuilder::record_len_bound(0, 0, 1, ID_HEADER.len() + 16)
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
    let out = headers
        .map(|(n, v)| {
            let n = std::str::from_utf8(n).map_err(|_| bad("header name is not UTF-8"))?;
            let v = std::str::from_utf8(v).map_err(|_| bad("header value is not UTF-8"))?;
            Ok((n, v))
        })
        .collect::<Result<Headers, NotAMessage>>()?;
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
        let plain = Message::new("no key, no headers");
        let msgs = [m, plain];
        let mut builder = BatchBuilder::with_capacity(0);
        let mut scratch = Vec::new();
        for i in 0..msgs.len() {
            push_record(&msgs[..], i, &mut builder, &mut scratch);
        }
        let dir = tempfile::tempdir().unwrap();
        let log = wharf_log::Log::open(dir.path(), wharf_log::LogConfig::default()).unwrap();
        let total: usize = msgs.iter().map(Message::size).sum();
        assert!(batch_len_estimate(total, msgs.len()) >= builder.body_len());
        log.append_built(builder).unwrap();
        let read = log.read(0, 1 << 20).unwrap();
        let mut owned = Vec::new();
        let mut in_place = Vec::new();
        for batch in read.batches() {
            for rec in batch.records().unwrap() {
                owned.push(from_record(rec.unwrap()).unwrap());
            }
            batch
                .for_each_record(|rec| {
                    in_place.push(from_record_ref(&rec).unwrap());
                    Ok::<(), wharf_log::CorruptKind>(())
                })
                .unwrap();
        }
        assert_eq!(owned, msgs);
        assert_eq!(in_place, msgs);
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
