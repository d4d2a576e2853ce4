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
    let mut index = SegmentIndex::new();
    let mut out = scan_from(file, base, 0, base, len, interval, &mut index)?;
    out.index = index;
    Ok(out)
}

/// [`scan`] from byte `start` (where a batch with base offset `expected`
/// starts), adding the batches it validates to `index`. The returned
/// outcome's own index is empty.
fn scan_from(
    file: &dyn StorageFile,
    base: u64,
    start: u64,
    mut expected: u64,
    len: u64,
    interval: u32,
    index: &mut SegmentIndex,
) -> io::Result<ScanOutcome> {
    let mut cursor = Cursor::new(file, len);
    let mut pos = start;
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
        index: SegmentIndex::new(),
        valid_len: pos,
        next_offset: expected,
        error,
    })
}

/// A damaged stretch found by [`scan_resync`]: bytes `[pos, end_pos)`
/// that should hold offsets `[start, end)`.
#[derive(Debug, Clone)]
pub(crate) struct Damaged {
    pub pos: u64,
    pub end_pos: u64,
    pub start: u64,
    pub end: u64,
    pub reason: CorruptKind,
}

/// What [`scan_resync`] found: the valid batches (indexed), the damaged
/// stretches between them, and an invalid tail after the last valid batch.
#[derive(Debug)]
pub(crate) struct FullScan {
    pub index: SegmentIndex,
    /// End of the last valid batch.
    pub valid_len: u64,
    /// Offset after the last valid batch.
    pub next_offset: u64,
    pub damaged: Vec<Damaged>,
    /// Position and cause of invalid bytes after the last valid batch.
    pub tail: Option<(u64, CorruptKind)>,
}

/// Walks `[0, len)` like [`scan`], but on an invalid batch looks for the
/// next valid one that continues the log ([`find_resume`]): the stretch in
/// between is recorded as damaged and the walk goes on from there. Invalid
/// bytes with no valid batch after them are the `tail`.
pub(crate) fn scan_resync(
    file: &dyn StorageFile,
    base: u64,
    len: u64,
    interval: u32,
) -> io::Result<FullScan> {
    let mut out = FullScan {
        index: SegmentIndex::new(),
        valid_len: 0,
        next_offset: base,
        damaged: Vec::new(),
        tail: None,
    };
    let mut pos = 0;
    loop {
        let step = scan_from(
            file,
            base,
            pos,
            out.next_offset,
            len,
            interval,
            &mut out.index,
        )?;
        out.valid_len = step.valid_len;
        out.next_offset = step.next_offset;
        let Some((bad, reason)) = step.error else {
            return Ok(out);
        };
        match find_resume(file, bad, len, out.next_offset)? {
            Some((resume, h)) => {
                out.damaged.push(Damaged {
                    pos: bad,
                    end_pos: resume,
                    start: out.next_offset,
                    end: h.base_offset,
                    reason,
                });
                pos = resume;
                out.next_offset = h.base_offset;
            }
            None => {
                out.tail = Some((bad, reason));
                return Ok(out);
            }
        }
    }
}

/// The first position after `bad_pos` (within `[0, len)`) where a whole,
/// CRC-valid batch with base offset >= `expected` starts, with its header:
/// where the log resumes after damage. Reads the file in chunks (looking
/// for the magic), so memory stays bounded by one batch.
pub(crate) fn find_resume(
    file: &dyn StorageFile,
    bad_pos: u64,
    len: u64,
    expected: u64,
) -> io::Result<Option<(u64, BatchHeader)>> {
    let magic = BATCH_MAGIC.to_le_bytes();
    let mut chunk_pos = bad_pos + 1;
    let mut buf = Vec::new();
    while chunk_pos + HEADER_LEN as u64 <= len {
        let n = SCAN_CHUNK.min(len - chunk_pos) as usize;
        buf.resize(n, 0);
        read_exact_at(file, &mut buf, chunk_pos)?;
        for i in 0..n.saturating_sub(3) {
            if buf[i..i + 4] != magic {
                continue;
            }
            let p = chunk_pos + i as u64;
            if p + HEADER_LEN as u64 > len {
                break;
            }
            let mut head = [0u8; HEADER_LEN];
            read_exact_at(file, &mut head, p)?;
            let Ok(h) = BatchHeader::parse(&head) else {
                continue;
            };
            if h.base_offset < expected || p + u64::from(h.len) > len {
                continue;
            }
            let mut whole = vec![0u8; h.len as usize];
            read_exact_at(file, &mut whole, p)?;
            if h.verify(&whole).is_ok() {
                return Ok(Some((p, h)));
            }
        }
        // Overlap by three bytes so a magic split across chunks is seen.
        chunk_pos += (n - 3) as u64;
    }
    Ok(None)
}
