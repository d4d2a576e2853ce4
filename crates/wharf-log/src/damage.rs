//! Damaged batches in the middle of a log: what was found ([`Damage`]), how an
//! operator repairs it ([`RepairAction`], [`RepairReport`]) and the counters
//! of detections and repairs ([`IntegrityStats`]) that a server exports. The
//! detection itself is in the read and recovery paths (FORMAT.md, "Damage").

use std::ops::Range;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::error::CorruptKind;

/// A stored batch that fails validation with valid data after it: bytes
/// `[position, end_position)` of `path` should hold offsets
/// `[start_offset, end_offset)`, which cannot be read. Reads stop before it
/// and report it as [`LogError::Corrupt`](crate::LogError::Corrupt) until an
/// operator repairs it ([`Log::repair`](crate::Log::repair)).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Damage {
    /// The segment file.
    pub path: PathBuf,
    /// Byte position of the damaged batch in that file.
    pub position: u64,
    /// Byte position of the next valid batch (or the end of the segment).
    pub end_position: u64,
    /// First offset the damaged bytes held.
    pub start_offset: u64,
    /// Offset of the next valid record (exclusive end of the lost range).
    pub end_offset: u64,
    /// What is wrong with the bytes at `position`.
    pub reason: CorruptKind,
}

impl Damage {
    /// The offsets that cannot be read.
    pub fn offsets(&self) -> Range<u64> {
        self.start_offset..self.end_offset
    }
}

/// What an operator does about the first damaged batch of a log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum RepairAction {
    /// Replace the damaged bytes with a void batch covering the same
    /// offsets: readers skip them, every other record stays.
    SkipBatch,
    /// Drop every record from this offset on (default: the damaged batch's
    /// first offset); it may not lie past the start of the damage.
    TruncateAt(Option<u64>),
}

/// What a repair did, or with `dry_run` would do.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct RepairReport {
    /// The action.
    pub action: RepairAction,
    /// True when nothing was changed.
    pub dry_run: bool,
    /// The damaged batch repaired (`None`: the log has no damage, nothing
    /// to do).
    pub damage: Option<Damage>,
    /// Offsets that are (or would be) gone: the damaged batch's for a skip,
    /// everything from the cut to the end for a truncation.
    pub lost: Range<u64>,
    /// Damaged batches left after this one.
    pub remaining: usize,
}

impl RepairReport {
    /// How many offsets are (or would be) lost.
    pub fn lost_count(&self) -> u64 {
        self.lost.end - self.lost.start
    }
}

/// Counts of damage found and repaired, shared by every log that was given
/// the same `Arc` ([`LogConfigBuilder::integrity_stats`](crate::LogConfigBuilder::integrity_stats)).
#[derive(Debug, Default)]
pub struct IntegrityStats {
    detected: AtomicU64,
    torn_tails: AtomicU64,
    skipped: AtomicU64,
    truncated: AtomicU64,
}

/// A point-in-time copy of [`IntegrityStats`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct IntegrityStatsSnapshot {
    /// Damaged batches detected (each counted once per process).
    pub detected: u64,
    /// Torn tails truncated by recovery.
    pub torn_tails: u64,
    /// Repairs that voided a damaged batch.
    pub skipped: u64,
    /// Repairs that truncated a log at a damaged batch.
    pub truncated: u64,
}

impl IntegrityStats {
    /// The counters now.
    pub fn snapshot(&self) -> IntegrityStatsSnapshot {
        IntegrityStatsSnapshot {
            detected: self.detected.load(Ordering::Relaxed),
            torn_tails: self.torn_tails.load(Ordering::Relaxed),
            skipped: self.skipped.load(Ordering::Relaxed),
            truncated: self.truncated.load(Ordering::Relaxed),
        }
    }

    pub(crate) fn on_detected(&self) {
        self.detected.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn on_torn_tail(&self) {
        self.torn_tails.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn on_repair(&self, action: RepairAction) {
        match action {
            RepairAction::SkipBatch => &self.skipped,
            RepairAction::TruncateAt(_) => &self.truncated,
        }
        .fetch_add(1, Ordering::Relaxed);
    }
}
