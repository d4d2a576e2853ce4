//! The record-batch format (see FORMAT.md): a 48-byte little-endian header
//! with a CRC32C over everything after the CRC field, followed by the
//! (optionally LZ4-compressed) records. Encoding happens outside the log's
//! lock; only the base offset and the CRC are patched in under it.

use bytes::{BufMut, Bytes};

use crate::config::Compression;
use crate::error::{CorruptKind, LogError, RecordField};
use crate::record::{Record, StoredRecord};

/// Magic number at the start of every batch ("WHB1" in little-endian bytes).
pub const BATCH_MAGIC: u32 = u32::from_le_bytes(*b"WHB1");
/// Size of the fixed batch header.
pub const HEADER_LEN: usize = 48;
/// Hard upper bound of an encoded batch and of a decompressed body.
pub const MAX_BATCH_BYTES: usize = 256 * 1024 * 1024;

/// The CRC covers bytes `[TAIL_START, len)` followed by `[8, TAIL_START)`,
/// so the appender can checksum the body outside the lock and fold in
/// `base_offset` (at 16..24) with a 16-byte `crc32c_append` under it.
const TAIL_START: usize = 24;

/// CRC32C of a batch as stored in its header: bytes `[24, len)` followed by
/// bytes `[8, 24)` (length, attributes, reserved, base offset).
///
/// # Panics
/// If `batch` is shorter than 24 bytes.
pub fn batch_crc(batch: &[u8]) -> u32 {
    crc32c::crc32c_append(crc32c::crc32c(&batch[TAIL_START..]), &batch[8..TAIL_START])
}
const ATTR_LZ4: u16 = 1;
/// A void batch: written by an operator's repair over a damaged batch's
/// bytes; it covers the lost offsets and holds no records (FORMAT.md).
const ATTR_VOID: u16 = 2;

/// The decoded fixed header of a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchHeader {
    /// Stored CRC32C (see [`batch_crc`]).
    pub crc: u32,
    /// Total length of the batch in bytes, header included.
    pub len: u32,
    /// Compression of the body.
    pub compression: Compression,
    /// Offset of the first record.
    pub base_offset: u64,
    /// Number of records (at least 1).
    pub record_count: u32,
    /// Length of the body once decompressed.
    pub raw_len: u32,
    /// Timestamp of the first record.
    pub first_timestamp: i64,
    /// Largest record timestamp in the batch.
    pub max_timestamp: i64,
    /// A void batch (written by a repair over a damaged batch): its
    /// offsets were lost and it yields no records.
    pub void: bool,
}

impl BatchHeader {
    /// Offset of the last record.
    pub fn last_offset(&self) -> u64 {
        self.base_offset + u64::from(self.record_count) - 1
    }

    /// Offset following the last record.
    pub fn next_offset(&self) -> u64 {
        self.base_offset + u64::from(self.record_count)
    }

    /// Parses and sanity-checks a header (not the CRC) from the first
    /// [`HEADER_LEN`] bytes of `buf`.
    ///
    /// # Errors
    /// A [`CorruptKind`] when the bytes cannot be a batch header.
    pub fn parse(buf: &[u8]) -> Result<BatchHeader, CorruptKind> {
        if buf.len() < HEADER_LEN {
            return Err(CorruptKind::Truncated {
                needed: HEADER_LEN as u64,
                available: buf.len() as u64,
            });
        }
        let magic = le_u32(buf, 0);
        if magic != BATCH_MAGIC {
            return Err(CorruptKind::BadMagic { found: magic });
        }
        let len = le_u32(buf, 8);
        if (len as usize) < HEADER_LEN || len as usize > MAX_BATCH_BYTES {
            return Err(CorruptKind::BadLength {
                len: u64::from(len),
                available: buf.len() as u64,
            });
        }
        let attributes = le_u16(buf, 12);
        let reserved = le_u16(buf, 14);
        let (compression, void) = match attributes {
            0 => (Compression::None, false),
            ATTR_LZ4 => (Compression::Lz4, false),
            ATTR_VOID => (Compression::None, true),
            _ => return Err(CorruptKind::UnknownAttributes { attributes }),
        };
        if reserved != 0 {
            return Err(CorruptKind::UnknownAttributes {
                attributes: reserved,
            });
        }
        let record_count = le_u32(buf, 24);
        if record_count == 0 {
            return Err(CorruptKind::NoRecords);
        }
        let base_offset = le_u64(buf, 16);
        if base_offset.checked_add(u64::from(record_count)).is_none() {
            return Err(CorruptKind::OffsetMismatch {
                expected: u64::MAX - u64::from(record_count),
                found: base_offset,
            });
        }
        let raw_len = le_u32(buf, 28);
        if raw_len as usize > MAX_BATCH_BYTES {
            return Err(CorruptKind::BadLength {
                len: u64::from(raw_len),
                available: MAX_BATCH_BYTES as u64,
            });
        }
        // LZ4 expands at most ~255:1; this bounds what a decoder allocates.
        let body_len = u64::from(len) - HEADER_LEN as u64;
        if compression == Compression::Lz4 && u64::from(raw_len) > body_len * 255 + 64 {
            return Err(CorruptKind::BadLength {
                len: u64::from(raw_len),
                available: body_len * 255 + 64,
            });
        }
        if compression == Compression::None && raw_len as usize != len as usize - HEADER_LEN {
            return Err(CorruptKind::BadLength {
                len: u64::from(raw_len),
                available: u64::from(len) - HEADER_LEN as u64,
            });
        }
        Ok(BatchHeader {
            crc: le_u32(buf, 4),
            len,
            compression,
            base_offset,
            record_count,
            raw_len,
            first_timestamp: le_i64(buf, 32),
            max_timestamp: le_i64(buf, 40),
            void,
        })
    }

    /// Checks the CRC of a whole batch (`bytes.len()` must equal `len`).
    ///
    /// # Errors
    /// [`CorruptKind::ChecksumMismatch`] or a length error.
    pub fn verify(&self, bytes: &[u8]) -> Result<(), CorruptKind> {
        if bytes.len() != self.len as usize {
            return Err(CorruptKind::Truncated {
                needed: u64::from(self.len),
                available: bytes.len() as u64,
            });
        }
        let computed = batch_crc(bytes);
        if computed != self.crc {
            return Err(CorruptKind::ChecksumMismatch {
                stored: self.crc,
                computed,
            });
        }
        Ok(())
    }
}

/// A validated batch: its header parsed and its CRC checked. Holds the
/// stored bytes (a zero-copy slice of the read buffer) so it can be sent
/// on as-is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch {
    header: BatchHeader,
    bytes: Bytes,
}

impl Batch {
    /// Validates `bytes` as exactly one batch.
    ///
    /// # Errors
    /// A [`CorruptKind`] describing the first problem found.
    pub fn decode(bytes: Bytes) -> Result<Batch, CorruptKind> {
        let header = BatchHeader::parse(&bytes)?;
        header.verify(&bytes)?;
        Ok(Batch { header, bytes })
    }

    pub(crate) fn from_parts(header: BatchHeader, bytes: Bytes) -> Batch {
        Batch { header, bytes }
    }

    /// The parsed header.
    pub fn header(&self) -> &BatchHeader {
        &self.header
    }

    /// Offset of the first record.
    pub fn base_offset(&self) -> u64 {
        self.header.base_offset
    }

    /// Offset of the last record.
    pub fn last_offset(&self) -> u64 {
        self.header.last_offset()
    }

    /// Number of records.
    pub fn record_count(&self) -> u32 {
        self.header.record_count
    }

    /// The stored bytes of the batch, header included.
    pub fn as_bytes(&self) -> &Bytes {
        &self.bytes
    }

    /// True for a void batch (a repair's stand-in for a damaged batch):
    /// it covers its offsets but yields no records.
    pub fn is_void(&self) -> bool {
        self.header.void
    }

    /// Decodes the records (decompressing the body first if needed). A
    /// void batch yields none.
    ///
    /// # Errors
    /// [`CorruptKind::Decompress`] when a compressed body is invalid; record
    /// level problems are reported by the iterator.
    pub fn records(&self) -> Result<RecordIter, CorruptKind> {
        Ok(RecordIter {
            body: if self.header.void {
                Bytes::new()
            } else {
                self.body()?
            },
            pos: 0,
            index: 0,
            header: self.header,
            done: self.header.void,
        })
    }

    /// Calls `f` with each record decoded in place (see [`RecordRef`]), in
    /// offset order; stops at the first error, a record-level
    /// [`CorruptKind`] or `f`'s.
    ///
    /// # Errors
    /// [`CorruptKind::Decompress`] for an invalid compressed body, a
    /// record-level [`CorruptKind`] for a malformed record (converted with
    /// `From`), or what `f` returns.
    pub fn for_each_record<E: From<CorruptKind>>(
        &self,
        mut f: impl FnMut(RecordRef<'_>) -> Result<(), E>,
    ) -> Result<(), E> {
        if self.header.void {
            return Ok(());
        }
        let body = self.body()?;
        let mut pos = 0;
        for index in 0..self.header.record_count {
            let spans = decode_spans(&body, &mut pos, index)?;
            f(RecordRef::new(&body, &self.header, index, spans))?;
        }
        if pos != body.len() {
            return Err(CorruptKind::TrailingBytes {
                extra: (body.len() - pos) as u64,
            }
            .into());
        }
        Ok(())
    }

    /// The record bytes, decompressed if needed.
    fn body(&self) -> Result<Bytes, CorruptKind> {
        let body = self.bytes.slice(HEADER_LEN..);
        Ok(match self.header.compression {
            Compression::None => body,
            Compression::Lz4 => {
                let declared = self.header.raw_len;
                let out = lz4_flex::block::decompress(&body, declared as usize)
                    .map_err(|_| CorruptKind::Decompress { declared })?;
                if out.len() != declared as usize {
                    return Err(CorruptKind::Decompress { declared });
                }
                Bytes::from(out)
            }
        })
    }
}

/// Iterator over the records of one batch.
#[derive(Debug, Clone)]
pub struct RecordIter {
    body: Bytes,
    pos: usize,
    index: u32,
    header: BatchHeader,
    done: bool,
}

impl Iterator for RecordIter {
    type Item = Result<StoredRecord, CorruptKind>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        if self.index == self.header.record_count {
            self.done = true;
            if self.pos != self.body.len() {
                return Some(Err(CorruptKind::TrailingBytes {
                    extra: (self.body.len() - self.pos) as u64,
                }));
            }
            return None;
        }
        let r = self.decode_one();
        if r.is_err() {
            self.done = true;
        }
        self.index += 1;
        Some(r)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let left = (self.header.record_count - self.index) as usize;
        (0, Some(left + 1))
    }
}

impl RecordIter {
    fn decode_one(&mut self) -> Result<StoredRecord, CorruptKind> {
        let spans = decode_spans(&self.body, &mut self.pos, self.index)?;
        Ok(RecordRef::new(&self.body, &self.header, self.index, spans).to_stored())
    }
}

/// Where one record's fields lie in its batch body (byte ranges), decoded
/// and validated by [`decode_spans`] without creating any `Bytes`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RecordSpans {
    ts_delta: u64,
    key: Option<(usize, usize)>,
    value: (usize, usize),
    /// The encoded headers (count already read), validated.
    headers: (usize, usize),
    header_count: u32,
}

/// Decodes the record at `*pos` of `body` (record number `index` of its
/// batch), checking every length, and moves `*pos` past it.
#[inline]
pub(crate) fn decode_spans(
    body: &[u8],
    pos: &mut usize,
    index: u32,
) -> Result<RecordSpans, CorruptKind> {
    let bad = |field| CorruptKind::BadRecord { index, field };
    let mut cur = Cursor { body, pos: *pos };
    let ts_delta = cur.varint().ok_or(bad(RecordField::Timestamp))?;
    let key_tag = cur.varint().ok_or(bad(RecordField::Key))?;
    let key = if key_tag == 0 {
        None
    } else {
        Some(cur.take(key_tag - 1).ok_or(bad(RecordField::Key))?)
    };
    let value_len = cur.varint().ok_or(bad(RecordField::Value))?;
    let value = cur.take(value_len).ok_or(bad(RecordField::Value))?;
    let header_count = cur.varint().ok_or(bad(RecordField::Header))?;
    // Each header needs at least two bytes; this bounds the count (and the
    // allocation of callers that collect the headers).
    if header_count > ((body.len() - cur.pos) / 2) as u64 {
        return Err(bad(RecordField::Header));
    }
    let headers_start = cur.pos;
    for _ in 0..header_count {
        let nl = cur.varint().ok_or(bad(RecordField::Header))?;
        cur.take(nl).ok_or(bad(RecordField::Header))?;
        let vl = cur.varint().ok_or(bad(RecordField::Header))?;
        cur.take(vl).ok_or(bad(RecordField::Header))?;
    }
    *pos = cur.pos;
    Ok(RecordSpans {
        ts_delta,
        key,
        value,
        headers: (headers_start, cur.pos),
        header_count: u32::try_from(header_count).map_err(|_| bad(RecordField::Header))?,
    })
}

#[derive(Debug, Clone)]
struct Cursor<'a> {
    body: &'a [u8],
    pos: usize,
}

impl Cursor<'_> {
    #[inline]
    fn varint(&mut self) -> Option<u64> {
        // Lengths and header counts are almost always below 128: one byte.
        let &first = self.body.get(self.pos)?;
        if first < 0x80 {
            self.pos += 1;
            return Some(u64::from(first));
        }
        let (v, n) = read_varint(self.body.get(self.pos..)?)?;
        self.pos += n;
        Some(v)
    }

    /// Skips `len` bytes, returning their range.
    #[inline]
    fn take(&mut self, len: u64) -> Option<(usize, usize)> {
        let len = usize::try_from(len).ok()?;
        let end = self.pos.checked_add(len)?;
        if end > self.body.len() {
            return None;
        }
        let start = self.pos;
        self.pos = end;
        Some((start, end))
    }
}

/// A record decoded in place: its fields are borrowed from the batch body,
/// so reading one creates no `Bytes` (no reference-count traffic) and
/// allocates nothing. Ask for owned [`Bytes`] only for what you keep
/// ([`RecordRef::value_bytes`], [`RecordRef::key_bytes`]). Handed out by
/// [`ReadBatches::for_each_record`](crate::ReadBatches::for_each_record).
#[derive(Debug, Clone, Copy)]
pub struct RecordRef<'a> {
    body: &'a Bytes,
    /// The record's offset in the log.
    pub offset: u64,
    /// Milliseconds since the Unix epoch.
    pub timestamp_ms: i64,
    spans: RecordSpans,
}

impl<'a> RecordRef<'a> {
    pub(crate) fn new(
        body: &'a Bytes,
        header: &BatchHeader,
        index: u32,
        spans: RecordSpans,
    ) -> Self {
        RecordRef {
            body,
            offset: header.base_offset + u64::from(index),
            timestamp_ms: header
                .first_timestamp
                .wrapping_add(unzigzag(spans.ts_delta)),
            spans,
        }
    }

    /// The key, if any.
    pub fn key(&self) -> Option<&'a [u8]> {
        self.spans.key.map(|(a, b)| &self.body[a..b])
    }

    /// The key as a zero-copy slice of the read buffer.
    #[inline]
    pub fn key_bytes(&self) -> Option<Bytes> {
        self.spans.key.map(|(a, b)| self.body.slice(a..b))
    }

    /// The payload.
    pub fn value(&self) -> &'a [u8] {
        &self.body[self.spans.value.0..self.spans.value.1]
    }

    /// The payload as a zero-copy slice of the read buffer.
    #[inline]
    pub fn value_bytes(&self) -> Bytes {
        self.body.slice(self.spans.value.0..self.spans.value.1)
    }

    /// Number of headers.
    #[inline]
    pub fn header_count(&self) -> usize {
        self.spans.header_count as usize
    }

    /// The headers as (name, value) byte strings, in order.
    #[inline]
    pub fn headers(&self) -> HeaderRefs<'a> {
        let body: &'a [u8] = self.body;
        HeaderRefs {
            cur: Cursor {
                body: &body[..self.spans.headers.1],
                pos: self.spans.headers.0,
            },
            left: self.spans.header_count,
        }
    }

    /// An owned copy whose fields are zero-copy slices of the read buffer.
    pub fn to_stored(&self) -> StoredRecord {
        let body = self.body;
        let mut headers = Vec::new();
        if self.spans.header_count > 0 {
            headers.reserve_exact(self.header_count());
            let mut it = self.headers();
            while let Some(((n0, n1), (v0, v1))) = it.next_spans() {
                headers.push((body.slice(n0..n1), body.slice(v0..v1)));
            }
        }
        StoredRecord {
            offset: self.offset,
            timestamp_ms: self.timestamp_ms,
            key: self.key_bytes(),
            headers,
            value: self.value_bytes(),
        }
    }
}

/// The headers of a [`RecordRef`], borrowed; see [`RecordRef::headers`].
#[derive(Debug, Clone)]
pub struct HeaderRefs<'a> {
    cur: Cursor<'a>,
    left: u32,
}

impl HeaderRefs<'_> {
    /// The byte ranges of the next header's name and value in the body.
    #[inline]
    fn next_spans(&mut self) -> Option<((usize, usize), (usize, usize))> {
        if self.left == 0 {
            return None;
        }
        self.left -= 1;
        // The region was validated by `decode_spans`, so these cannot fail;
        // if they did, the iterator would just end.
        let nl = self.cur.varint()?;
        let name = self.cur.take(nl)?;
        let vl = self.cur.varint()?;
        let value = self.cur.take(vl)?;
        Some((name, value))
    }
}

impl<'a> Iterator for HeaderRefs<'a> {
    type Item = (&'a [u8], &'a [u8]);

    #[inline]
    fn next(&mut self) -> Option<Self::Item> {
        let ((n0, n1), (v0, v1)) = self.next_spans()?;
        let body = self.cur.body;
        Some((&body[n0..n1], &body[v0..v1]))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.left as usize, Some(self.left as usize))
    }
}

/// A batch encoded outside the log's lock; [`EncodedBatch::seal`] patches
/// in the base offset and the CRC.
#[derive(Debug)]
pub(crate) struct EncodedBatch {
    pub(crate) buf: Vec<u8>,
    tail_crc: u32,
    pub(crate) record_count: u32,
    pub(crate) max_timestamp: i64,
}

impl EncodedBatch {
    pub(crate) fn len(&self) -> usize {
        self.buf.len()
    }

    /// Writes `base_offset` into the header and computes the final CRC.
    pub(crate) fn seal(&mut self, base_offset: u64) {
        self.buf[16..24].copy_from_slice(&base_offset.to_le_bytes());
        let crc = crc32c::crc32c_append(self.tail_crc, &self.buf[8..TAIL_START]);
        self.buf[4..8].copy_from_slice(&crc.to_le_bytes());
    }
}

/// A void batch of exactly `len` bytes covering `record_count` offsets from
/// `base_offset`: what a repair writes over a damaged batch's bytes
/// (`len` >= [`HEADER_LEN`]; the body is zeros). `timestamp_ms` is stored
/// as both timestamps.
pub(crate) fn encode_void(
    len: usize,
    base_offset: u64,
    record_count: u32,
    timestamp_ms: i64,
) -> Vec<u8> {
    let mut buf = vec![0u8; len];
    buf[0..4].copy_from_slice(&BATCH_MAGIC.to_le_bytes());
    buf[8..12].copy_from_slice(&(len as u32).to_le_bytes());
    buf[12..14].copy_from_slice(&ATTR_VOID.to_le_bytes());
    buf[16..24].copy_from_slice(&base_offset.to_le_bytes());
    buf[24..28].copy_from_slice(&record_count.to_le_bytes());
    buf[28..32].copy_from_slice(&((len - HEADER_LEN) as u32).to_le_bytes());
    buf[32..40].copy_from_slice(&timestamp_ms.to_le_bytes());
    buf[40..48].copy_from_slice(&timestamp_ms.to_le_bytes());
    let crc = batch_crc(&buf);
    buf[4..8].copy_from_slice(&crc.to_le_bytes());
    buf
}

/// Records encoded one at a time into a batch body, so a caller can append
/// what it holds in any form (a message, a slice of a request) without
/// building [`Record`]s first. [`crate::Log::append_built`] seals and
/// writes it; [`crate::Log::append`] is this over `&[Record]`.
///
/// ```
/// use wharf_log::batch::BatchBuilder;
///
/// let mut b = BatchBuilder::with_capacity(64);
/// let headers: [(&[u8], &[u8]); 1] = [(b"h", b"v")];
/// b.push(1_700_000_000_000, Some(b"key"), b"value", headers);
/// assert_eq!(b.len(), 1);
/// ```
#[derive(Debug, Clone)]
pub struct BatchBuilder {
    /// `HEADER_LEN` reserved bytes, then the raw (uncompressed) records.
    buf: Vec<u8>,
    record_count: u32,
    first_ts: i64,
    max_ts: i64,
}

impl Default for BatchBuilder {
    fn default() -> Self {
        BatchBuilder::with_capacity(0)
    }
}

impl BatchBuilder {
    /// An empty batch with room for about `bytes` of encoded records.
    pub fn with_capacity(bytes: usize) -> Self {
        let mut buf = Vec::with_capacity(HEADER_LEN + bytes.min(MAX_BATCH_BYTES));
        buf.resize(HEADER_LEN, 0);
        BatchBuilder {
            buf,
            record_count: 0,
            first_ts: 0,
            max_ts: i64::MIN,
        }
    }

    /// How many bytes a record of these parts takes at most, for
    /// [`BatchBuilder::with_capacity`].
    pub fn record_len_bound(
        key: usize,
        value: usize,
        headers: usize,
        header_bytes: usize,
    ) -> usize {
        // Four varints (timestamp, key length, value length, header count)
        // and two per header, each at most 10 bytes.
        40 + key + value + 20 * headers + header_bytes
    }

    /// Appends one record: timestamp (ms since the epoch), optional key,
    /// value and headers (name, value), in the order given.
    pub fn push<'h, H>(&mut self, timestamp_ms: i64, key: Option<&[u8]>, value: &[u8], headers: H)
    where
        H: IntoIterator<Item = (&'h [u8], &'h [u8])>,
        H::IntoIter: ExactSizeIterator,
    {
        let headers = headers.into_iter();
        if self.record_count == 0 {
            self.first_ts = timestamp_ms;
        }
        self.record_count = self.record_count.saturating_add(1);
        self.max_ts = self.max_ts.max(timestamp_ms);
        let out = &mut self.buf;
        put_varint(out, zigzag(timestamp_ms.wrapping_sub(self.first_ts)));
        match key {
            None => put_varint(out, 0),
            Some(k) => {
                put_varint(out, k.len() as u64 + 1);
                out.put_slice(k);
            }
        }
        put_varint(out, value.len() as u64);
        out.put_slice(value);
        put_varint(out, headers.len() as u64);
        for (name, value) in headers {
            put_varint(out, name.len() as u64);
            out.put_slice(name);
            put_varint(out, value.len() as u64);
            out.put_slice(value);
        }
    }

    /// Records pushed so far.
    pub fn len(&self) -> usize {
        self.record_count as usize
    }

    /// No record pushed yet.
    pub fn is_empty(&self) -> bool {
        self.record_count == 0
    }

    /// Bytes of encoded records so far (uncompressed, without the batch
    /// header).
    pub fn body_len(&self) -> usize {
        self.buf.len() - HEADER_LEN
    }

    /// The batch with its header filled in, a zero base offset and no CRC
    /// yet (see [`EncodedBatch::seal`]); compressed when that is smaller.
    pub(crate) fn finish(
        self,
        compression: Compression,
        max_batch_bytes: usize,
    ) -> Result<EncodedBatch, LogError> {
        if self.record_count == 0 {
            return Err(LogError::EmptyBatch);
        }
        // `push` saturates: a count that reached u32::MAX is too large.
        if self.record_count == u32::MAX {
            return Err(LogError::BatchTooLarge {
                size: usize::MAX,
                max: max_batch_bytes,
            });
        }
        let BatchBuilder {
            mut buf,
            record_count,
            first_ts,
            max_ts,
        } = self;
        let raw_len = buf.len() - HEADER_LEN;
        let mut attributes = 0u16;
        if compression == Compression::Lz4 && raw_len <= MAX_BATCH_BYTES {
            let raw = &buf[HEADER_LEN..];
            let bound = lz4_flex::block::get_maximum_output_size(raw.len());
            let mut out = vec![0u8; HEADER_LEN + bound];
            if let Ok(n) = lz4_flex::block::compress_into(raw, &mut out[HEADER_LEN..]) {
                if n < raw_len {
                    out.truncate(HEADER_LEN + n);
                    buf = out;
                    attributes = ATTR_LZ4;
                }
            }
        }
        if buf.len() > max_batch_bytes || raw_len > MAX_BATCH_BYTES {
            return Err(LogError::BatchTooLarge {
                size: buf.len().max(raw_len),
                max: max_batch_bytes,
            });
        }
        let len = buf.len() as u32;
        buf[0..4].copy_from_slice(&BATCH_MAGIC.to_le_bytes());
        buf[8..12].copy_from_slice(&len.to_le_bytes());
        buf[12..14].copy_from_slice(&attributes.to_le_bytes());
        buf[24..28].copy_from_slice(&record_count.to_le_bytes());
        buf[28..32].copy_from_slice(&(raw_len as u32).to_le_bytes());
        buf[32..40].copy_from_slice(&first_ts.to_le_bytes());
        buf[40..48].copy_from_slice(&max_ts.to_le_bytes());
        let tail_crc = crc32c::crc32c(&buf[TAIL_START..]);
        Ok(EncodedBatch {
            buf,
            tail_crc,
            record_count,
            max_timestamp: max_ts,
        })
    }
}

/// Encodes `records` into a batch with a zero base offset and no CRC yet.
pub(crate) fn encode(
    records: &[Record],
    compression: Compression,
    max_batch_bytes: usize,
) -> Result<EncodedBatch, LogError> {
    let estimate: usize = records
        .iter()
        .map(|r| {
            let hb: usize = r.headers.iter().map(|(a, b)| a.len() + b.len()).sum();
            BatchBuilder::record_len_bound(
                r.key.as_ref().map_or(0, Bytes::len),
                r.value.len(),
                r.headers.len(),
                hb,
            )
        })
        .sum();
    let mut b = BatchBuilder::with_capacity(estimate.min(max_batch_bytes + 64));
    for r in records {
        let headers = r.headers.iter().map(|(n, v)| (&n[..], &v[..]));
        b.push(r.timestamp_ms, r.key.as_deref(), &r.value, headers);
    }
    b.finish(compression, max_batch_bytes)
}

/// Encodes `records` as one complete batch starting at `base_offset`.
/// Used to build test inputs and fuzz corpora.
///
/// # Errors
/// [`LogError::EmptyBatch`] or [`LogError::BatchTooLarge`].
pub fn encode_batch(
    records: &[Record],
    base_offset: u64,
    compression: Compression,
) -> Result<Bytes, LogError> {
    let mut e = encode(records, compression, MAX_BATCH_BYTES)?;
    e.seal(base_offset);
    Ok(Bytes::from(e.buf))
}

/// Validates `bytes` as a batch and decodes every record; what the fuzz
/// target drives. Never panics.
///
/// # Errors
/// The first [`CorruptKind`] found.
pub fn decode_all(bytes: Bytes) -> Result<Vec<StoredRecord>, CorruptKind> {
    let batch = Batch::decode(bytes)?;
    batch.records()?.collect()
}

/// Decodes a record body without a valid header or CRC (so a fuzzer can
/// reach the record decoder). Never panics.
///
/// # Errors
/// The first [`CorruptKind`] found.
pub fn decode_body_unchecked(
    body: Bytes,
    record_count: u32,
) -> Result<Vec<StoredRecord>, CorruptKind> {
    let header = BatchHeader {
        crc: 0,
        len: 0,
        compression: Compression::None,
        base_offset: 0,
        record_count,
        raw_len: 0,
        first_timestamp: 0,
        max_timestamp: 0,
        void: false,
    };
    RecordIter {
        body,
        pos: 0,
        index: 0,
        header,
        done: record_count == 0,
    }
    .collect()
}

#[inline]
fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

fn unzigzag(v: u64) -> i64 {
    ((v >> 1) as i64) ^ -((v & 1) as i64)
}

#[inline]
fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn read_varint(buf: &[u8]) -> Option<(u64, usize)> {
    let mut v = 0u64;
    for (i, &b) in buf.iter().enumerate().take(10) {
        let part = u64::from(b & 0x7f);
        if i == 9 && b > 1 {
            return None;
        }
        v |= part << (7 * i);
        if b & 0x80 == 0 {
            return Some((v, i + 1));
        }
    }
    None
}

pub(crate) fn le_u16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

pub(crate) fn le_u32(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(a)
}

pub(crate) fn le_u64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

pub(crate) fn le_i64(b: &[u8], at: usize) -> i64 {
    le_u64(b, at) as i64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<Record> {
        vec![
            Record::new(1_000, "a").with_key("k1").with_header("h", "v"),
            Record::new(999, Bytes::new()),
            Record::new(i64::MAX, vec![7u8; 300]).with_key(Bytes::new()),
            Record::new(i64::MIN, "z"),
        ]
    }

    #[test]
    fn encoded_batch_decodes_to_the_same_records_with_dense_offsets() {
        for c in [Compression::None, Compression::Lz4] {
            let bytes = encode_batch(&sample(), 42, c).expect("encode");
            let decoded = decode_all(bytes).expect("decode");
            let back: Vec<Record> = decoded.iter().map(StoredRecord::to_record).collect();
            assert_eq!(back, sample());
            let offsets: Vec<u64> = decoded.iter().map(|r| r.offset).collect();
            assert_eq!(offsets, vec![42, 43, 44, 45]);
        }
    }

    #[test]
    fn records_decoded_in_place_match_the_owned_decoding() {
        for c in [Compression::None, Compression::Lz4] {
            let batch = Batch::decode(encode_batch(&sample(), 42, c).expect("encode")).expect("ok");
            let owned: Vec<StoredRecord> = batch
                .records()
                .expect("body")
                .collect::<Result<_, _>>()
                .expect("decode");
            let mut in_place = Vec::new();
            batch
                .for_each_record(|r| {
                    let headers: Vec<(&[u8], &[u8])> = r.headers().collect();
                    assert_eq!(headers.len(), r.header_count());
                    assert_eq!(r.value(), &r.value_bytes()[..]);
                    assert_eq!(r.key(), r.key_bytes().as_deref());
                    in_place.push(r.to_stored());
                    Ok::<(), CorruptKind>(())
                })
                .expect("decode in place");
            assert_eq!(in_place, owned);
        }
    }

    #[test]
    fn in_place_decoding_reports_what_the_owned_decoding_reports() {
        let batch = encode(&sample(), Compression::None, MAX_BATCH_BYTES).expect("encode");
        let body = batch.buf[HEADER_LEN..].to_vec();
        for cut in 0..body.len() {
            let truncated = Bytes::copy_from_slice(&body[..cut]);
            let owned = decode_body_unchecked(truncated.clone(), 4).expect_err("truncated");
            let mut pos = 0;
            let mut in_place = Ok(());
            for index in 0..4 {
                if let Err(e) = decode_spans(&truncated, &mut pos, index) {
                    in_place = Err(e);
                    break;
                }
            }
            assert_eq!(in_place, Err(owned), "cut at {cut}");
        }
    }

    #[test]
    fn every_single_bit_flip_is_rejected() {
        let bytes = encode_batch(&sample(), 7, Compression::None).expect("encode");
        for i in 0..bytes.len() {
            for bit in 0..8 {
                let mut v = bytes.to_vec();
                v[i] ^= 1 << bit;
                assert!(
                    Batch::decode(Bytes::from(v)).is_err(),
                    "flip of bit {bit} in byte {i} went unnoticed"
                );
            }
        }
    }

    #[test]
    fn lz4_shrinks_compressible_batches_and_keeps_incompressible_ones_raw() {
        let compressible = vec![Record::new(0, vec![b'x'; 4096])];
        let b = encode_batch(&compressible, 0, Compression::Lz4).expect("encode");
        assert!(b.len() < 1024);
        assert_eq!(
            BatchHeader::parse(&b).expect("header").compression,
            Compression::Lz4
        );
        let random: Vec<u8> = (0..256u32).map(|i| (i * 7919 % 251) as u8).collect();
        let b = encode_batch(&[Record::new(0, random)], 0, Compression::Lz4).expect("encode");
        let h = BatchHeader::parse(&b).expect("header");
        assert_eq!(h.raw_len as usize, b.len() - HEADER_LEN);
    }

    #[test]
    fn varints_round_trip_at_the_edges() {
        for v in [0u64, 1, 127, 128, 16383, 16384, u64::MAX - 1, u64::MAX] {
            let mut out = Vec::new();
            put_varint(&mut out, v);
            assert_eq!(read_varint(&out), Some((v, out.len())));
        }
        for v in [0i64, -1, 1, i64::MIN, i64::MAX] {
            assert_eq!(unzigzag(zigzag(v)), v);
        }
    }

    #[test]
    fn oversized_batch_is_refused_with_its_size() {
        let r = vec![Record::new(0, vec![0u8; 1000])];
        let err = encode(&r, Compression::None, 500).expect_err("must refuse");
        assert!(matches!(err, LogError::BatchTooLarge { max: 500, size } if size > 1000));
    }

    #[test]
    fn truncated_body_reports_the_failing_field() {
        let err =
            decode_body_unchecked(Bytes::from_static(&[0, 0, 5, b'a']), 1).expect_err("must fail");
        assert_eq!(
            err,
            CorruptKind::BadRecord {
                index: 0,
                field: RecordField::Value
            }
        );
    }
}
