//! The result of [`Log::read`](crate::Log::read): whole, CRC-checked
//! batches as zero-copy `Bytes` slices of one read buffer, plus an iterator
//! that decodes their records from the requested offset on.

use std::path::PathBuf;
use std::sync::Arc;

use crate::batch::{Batch, RecordIter, RecordRef};
use crate::error::LogError;
use crate::record::StoredRecord;

/// Batches returned by one read, in offset order, dense.
#[derive(Debug, Clone)]
pub struct ReadBatches {
    pub(crate) batches: Vec<Batch>,
    pub(crate) positions: Vec<u64>,
    pub(crate) path: Option<Arc<PathBuf>>,
    pub(crate) from_offset: u64,
}

impl ReadBatches {
    pub(crate) fn empty(from_offset: u64) -> Self {
        ReadBatches {
            batches: Vec::new(),
            positions: Vec::new(),
            path: None,
            from_offset,
        }
    }

    /// The batches (the first may start before the requested offset).
    pub fn batches(&self) -> &[Batch] {
        &self.batches
    }

    /// Consumes the result, returning the batches.
    pub fn into_batches(self) -> Vec<Batch> {
        self.batches
    }

    /// True when nothing was read (the offset is at the readable end).
    pub fn is_empty(&self) -> bool {
        self.batches.is_empty()
    }

    /// Drops the batches that start at or after `end`, so a caller that
    /// exposes a log only up to an offset of its own (a publish committed
    /// across several logs) never hands out a record past it.
    pub fn truncate_at(&mut self, end: u64) {
        let keep = self.batches.partition_point(|b| b.base_offset() < end);
        self.batches.truncate(keep);
        self.positions.truncate(keep);
    }

    /// Total stored size of the batches.
    pub fn total_bytes(&self) -> usize {
        self.batches.iter().map(|b| b.as_bytes().len()).sum()
    }

    /// Offset to read from next: after the last batch, or the requested
    /// offset when empty.
    pub fn next_offset(&self) -> u64 {
        self.batches
            .last()
            .map_or(self.from_offset, |b| b.last_offset() + 1)
    }

    /// Calls `f` with each record at or after the requested offset, decoded
    /// in place: a [`RecordRef`] borrows the read buffer, so nothing is
    /// allocated or reference-counted unless `f` asks for owned `Bytes`
    /// (the cheap way to scan; [`ReadBatches::records`] makes a
    /// [`StoredRecord`] with `Bytes` for every field).
    ///
    /// # Errors
    /// Stops at the first error: [`LogError::Corrupt`] for a malformed
    /// record (as [`ReadBatches::records`] reports it), or what `f` returns.
    pub fn for_each_record<E: From<LogError>>(
        &self,
        mut f: impl FnMut(RecordRef<'_>) -> Result<(), E>,
    ) -> Result<(), E> {
        enum Stop<E> {
            Corrupt(crate::error::CorruptKind),
            Caller(E),
        }
        impl<E> From<crate::error::CorruptKind> for Stop<E> {
            fn from(k: crate::error::CorruptKind) -> Self {
                Stop::Corrupt(k)
            }
        }
        for (i, b) in self.batches.iter().enumerate() {
            if b.last_offset() < self.from_offset {
                continue;
            }
            let r = b.for_each_record(|rec| {
                if rec.offset < self.from_offset {
                    return Ok(());
                }
                f(rec).map_err(Stop::Caller)
            });
            match r {
                Ok(()) => {}
                Err(Stop::Caller(e)) => return Err(e),
                Err(Stop::Corrupt(reason)) => {
                    return Err(LogError::Corrupt {
                        path: self.path.as_deref().cloned().unwrap_or_default(),
                        position: self.positions.get(i).copied().unwrap_or(0),
                        reason,
                    }
                    .into())
                }
            }
        }
        Ok(())
    }

    /// Decodes the records at or after the requested offset.
    pub fn records(&self) -> Records<'_> {
        Records {
            read: self,
            batch: 0,
            iter: None,
            failed: false,
        }
    }
}

/// Iterator over the records of a [`ReadBatches`]; see
/// [`ReadBatches::records`].
#[derive(Debug)]
pub struct Records<'a> {
    read: &'a ReadBatches,
    batch: usize,
    iter: Option<RecordIter>,
    failed: bool,
}

impl Records<'_> {
    fn corrupt(&mut self, reason: crate::error::CorruptKind) -> LogError {
        self.failed = true;
        let i = self.batch.saturating_sub(1);
        LogError::Corrupt {
            path: self.read.path.as_deref().cloned().unwrap_or_default(),
            position: self.read.positions.get(i).copied().unwrap_or(0),
            reason,
        }
    }
}

impl Iterator for Records<'_> {
    type Item = Result<StoredRecord, LogError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if self.failed {
                return None;
            }
            if let Some(it) = &mut self.iter {
                match it.next() {
                    Some(Ok(r)) if r.offset < self.read.from_offset => continue,
                    Some(Ok(r)) => return Some(Ok(r)),
                    Some(Err(e)) => return Some(Err(self.corrupt(e))),
                    None => self.iter = None,
                }
            }
            let b = self.read.batches.get(self.batch)?;
            self.batch += 1;
            match b.records() {
                Ok(it) => self.iter = Some(it),
                Err(e) => return Some(Err(self.corrupt(e))),
            }
        }
    }
}
