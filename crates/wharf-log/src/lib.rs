//! `wharf-log`: the crash-safe segmented log under Wharf's embedded broker.
//!
//! One [`Log`] is one append-only sequence of records with dense `u64`
//! offsets, stored as segment files of CRC32C-checked record batches with
//! sparse offset and time indexes. It knows bytes, offsets and timestamps —
//! never topics or messages. The byte layout and the recovery walkthrough
//! are in `FORMAT.md`.
//!
//! ```
//! use wharf_log::{Durability, Log, LogConfig, Record};
//!
//! let dir = tempfile::tempdir()?;
//! let config = LogConfig::builder().durability(Durability::Always).build()?;
//! let log = Log::open(dir.path(), config)?;
//!
//! // Returns once an fdatasync covers the batch.
//! let info = log.append(&[
//!     Record::new(1_700_000_000_000, "first").with_key("k"),
//!     Record::new(1_700_000_000_001, "second").with_header("trace", "abc"),
//! ])?;
//! assert_eq!((info.base_offset, info.last_offset), (0, 1));
//!
//! let read = log.read(1, 64 * 1024)?;
//! let records: Vec<_> = read.records().collect::<Result<_, _>>()?;
//! assert_eq!(records.len(), 1);
//! assert_eq!(records[0].offset, 1);
//! assert_eq!(&records[0].value[..], b"second");
//! assert_eq!(log.offset_for_timestamp(1_700_000_000_001)?, Some(1));
//! log.close()?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! Invariants: a batch whose CRC fails is never served, and is skipped only
//! by an explicit [`Log::repair`]; an `Always` append returns only after
//! `fdatasync` covers it; an append that returns an error stores nothing
//! (a failed write or, under `Always`, a failed sync cuts the
//! unacknowledged tail back and the log goes on — a full disk is
//! [`LogError::is_storage_full`], retryable); only when that cut is not
//! possible does the log refuse appends (fail-stop), and data acknowledged
//! before stays readable after reopen.

#![warn(missing_docs)]

pub mod batch;
mod commit;
mod config;
mod damage;
mod error;
mod index;
mod log;
mod read;
mod record;
mod segment;
pub mod sim;
mod stats;
pub mod storage;

pub use crate::batch::{Batch, BatchBuilder, BatchHeader, HeaderRefs, RecordIter, RecordRef};
pub use crate::config::{
    Clock, Compression, Durability, LogConfig, LogConfigBuilder, ManualClock, Retention,
    SystemClock,
};
pub use crate::damage::{
    Damage, IntegrityStats, IntegrityStatsSnapshot, RepairAction, RepairReport,
};
pub use crate::error::{CorruptKind, IoOp, LogError, RecordField};
pub use crate::log::{AppendInfo, Log, Written};
pub use crate::read::{ReadBatches, Records};
pub use crate::record::{Record, StoredRecord};
pub use crate::sim::{SimStats, SimStorage};
pub use crate::stats::{SyncStats, SyncStatsSnapshot, SYNC_BUCKET_BOUNDS_MICROS};
pub use crate::storage::{FsStorage, Storage, StorageFile};
