//! One segment: a `.log` file of batches plus its in-memory sparse indexes
//! and the lengths that the writer has written and that readers may see.
//! Also the sequential scanner that recovery, index rebuilds and
//! truncation use to walk a segment batch by batch, checking every CRC.

use std::io;
use std::path::PathBuf;
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use crate::batch::{BatchHeader, BATCH_MAGIC, HEADER_LEN};
use crate::error::CorruptKind;
use crate::index::SegmentIndex;
use crate::storage::{read_exact_at, StorageFile};

/// Name of the segment file starting at `base`.
pub(crate) fn log_name(base: u64) -> String {
    format!("{base:020}.log")
}

/// Name of the offset index of the segment starting at `base`.
pub(crate) fn index_name(base: u64) -> String {
    format!("{base:020}.index")
}

/// Name of the time index of the segment starting at `base`.
pub(crate) fn time_index_name(base: u64) -> String {
    format!("{base:020}.timeindex")
}

/// Parses `NNNNNNNNNNNNNNNNNNNN<suffix>` into the base offset.
pub(crate) fn parse_name(name: &str, suffix: &str) -> Option<u64> {
    let digits = name.strip_suffix(suffix)?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// Mutable state of a segment, guarded by the segment's lock.
#[derive(Debug)]
pub(crate) struct SegState {
    pub index: SegmentIndex,
    /// Bytes written to the file (all whole batches).
    pub written_len: u64,
    /// Offset after the last written record.
    pub written_end: u64,
    /// Bytes readers may see (whole batches; synced ones under `Always`).
    pub visible_len: u64,
    /// Offset after the last visible record.
    pub visible_end: u64,
    /// Clock reading when the segment became active.
    pub created_ms: i64,
}

/// A segment file with its state.
#[derive(Debug)]
pub(crate) struct Segment {
    pub base: u64,
    pub path: PathBuf,
    pub file: Arc<dyn StorageFile>,
    state: RwLock<SegState>,
}

impl Segment {
    pub(crate) fn new(
        base: u64,
        path: PathBuf,
        file: Arc<dyn StorageFile>,
        index: SegmentIndex,
        len: u64,
        end: u64,
        created_ms: i64,
    ) -> Segment {
        Segment {
            base,
            path,
            file,
            state: RwLock::new(SegState {
                index,
                written_len: len,
                written_end: end,
                visible_len: len,
                visible_end: end,
                created_ms,
            }),
        }
    }

    pub(crate) fn state(&self) -> RwLockReadGuard<'_, SegState> {
        // The state is plain data updated by whole assignments; a panic
        // elsewhere cannot leave it half-written.
        self.state
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub(crate) fn state_mut(&self) -> RwLockWriteGuard<'_, SegState> {
        self.state
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// What a scan of a segment found.
#[derive(Debug)]
pub(crate) struct ScanOutcome {
    pub index: SegmentIndex,
    /// Length of the prefix made of valid batches.
    pub valid_len: u64,
    /// Offset after the last valid batch.
    pub next_offset: u64,
    /// Position and cause of the first invalid byte, if any.
    pub error: Option<(u64, CorruptKind)>,
}

const SCAN_CHUNK: u64 = 1 << 20;

/// A forward reader over `[0, len)` of a file that keeps one chunk buffered.
struct Cursor<'a> {
    file: &'a dyn StorageFile,
    len: u64,
    buf: Vec<u8>,
    buf_pos: u64,
}

impl<'a> Cursor<'a> {
    fn new(file: &'a dyn StorageFile, len: u64) -> Self {
        Cursor {
            file,
            len,
            buf: Vec::new(),
            buf_pos: 0,
        }
    }

    /// Returns `[pos, pos + need)`, reading ahead a chunk when needed.
    fn get(&mut self, pos: u64, need: u64) -> io::Result<&[u8]> {
        let end_buf = self.buf_pos + self.buf.len() as u64;
        if pos < self.buf_pos || pos + need > end_buf {
            let n = need.max(SCAN_CHUNK.min(self.len - pos));
            self.buf.resize(n as usize, 0);
            read_exact_at(self.file, &mut self.buf, pos)?;
            self.buf_pos = pos;
        }
        let off = (pos - self.buf_pos) as usize;
        Ok(&self.buf[off..off + need as usize])
    }
}

/// Walks `[0, len)` of a segment starting at offset `base`, validating
/// every batch (header, length, CRC, dense offsets) and building indexes.
/// Stops at the first invalid batch.
pub(crate) fn scan(
    file: &dyn StorageFile,
    base: u64,
    len: u64,
    interval: u32,
) -> io::Result<ScanOutcome> {
    let mut cursor = Cursor::new(file, len);
    let mut index = SegmentIndex::new();
    let mut pos = 0u64;
    let mut expected = base;
    let mut error = None;
    while pos < len {
        let avail = len - pos;
        if avail < HEADER_LEN as u64 {
            error = Some((
                pos,
                CorruptKind::Truncated {
                    needed: HEADER_LEN as u64,
                    available: avail,
                },
            ));
            break;
        }
        let h = match BatchHeader::parse(cursor.get(pos, HEADER_LEN as u64)?) {
            Ok(h) => h,
            Err(e) => {
                error = Some((pos, e));
                break;
            }
        };
        if u64::from(h.len) > avail {
            error = Some((
                pos,
                CorruptKind::Truncated {
                    needed: u64::from(h.len),
                    available: avail,
                },
            ));
            break;
        }
        if let Err(e) = h.verify(cursor.get(pos, u64::from(h.len))?) {
            error = Some((pos, e));
            break;
        }
        if h.base_offset != expected {
            error = Some((
                pos,
                CorruptKind::OffsetMismatch {
                    expected,
                    found: h.base_offset,
                },
            ));
            break;
        }
        index.on_batch(base, h.base_offset, h.len, h.max_timestamp, pos, interval);
        expected = h.next_offset();
        pos += u64::from(h.len);
    }
    Ok(ScanOutcome {
        index,
        valid_len: pos,
        next_offset: expected,
        error,
    })
}

/// After an invalid batch at `bad_pos`, is there a valid batch later in
/// the file that continues the log (base offset >= `expected`)? If so the
/// damage is in the middle of acknowledged data, not a torn tail.
pub(crate) fn has_valid_batch_after(
    file: &dyn StorageFile,
    bad_pos: u64,
    len: u64,
    expected: u64,
) -> io::Result<bool> {
    let start = bad_pos + 1;
    if start >= len {
        return Ok(false);
    }
    let mut rest = vec![0u8; (len - start) as usize];
    read_exact_at(file, &mut rest, start)?;
    let magic = BATCH_MAGIC.to_le_bytes();
    let mut i = 0;
    while i + HEADER_LEN <= rest.len() {
        if rest[i..i + 4] == magic {
            if let Ok(h) = BatchHeader::parse(&rest[i..]) {
                let end = i + h.len as usize;
                if h.base_offset >= expected && end <= rest.len() && h.verify(&rest[i..end]).is_ok()
                {
                    return Ok(true);
                }
            }
        }
        i += 1;
    }
    Ok(false)
}
