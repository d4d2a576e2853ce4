//! Error types of the log: one enum for the public API ([`LogError`]) and
//! one for what can be wrong inside a stored batch or index ([`CorruptKind`]).
//! Variants carry typed data (paths, positions, offsets), never prose.

use std::io;
use std::path::PathBuf;

/// The file-system operation that failed, carried by [`LogError::Io`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum IoOp {
    /// Creating the log directory.
    CreateDir,
    /// Listing the log directory.
    List,
    /// Opening or creating a file.
    Open,
    /// Reading from a file.
    Read,
    /// Writing to a file.
    Write,
    /// `fdatasync` of a file.
    SyncData,
    /// `fsync` of the log directory.
    SyncDir,
    /// Changing a file's length (truncation).
    SetLen,
    /// Asking a file's length.
    Len,
    /// Removing a file.
    Remove,
    /// Renaming a file.
    Rename,
}

impl std::fmt::Display for IoOp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = match self {
            IoOp::CreateDir => "create directory",
            IoOp::List => "list directory",
            IoOp::Open => "open",
            IoOp::Read => "read",
            IoOp::Write => "write",
            IoOp::SyncData => "fdatasync",
            IoOp::SyncDir => "fsync directory",
            IoOp::SetLen => "set length",
            IoOp::Len => "stat",
            IoOp::Remove => "remove",
            IoOp::Rename => "rename",
        };
        f.write_str(s)
    }
}

/// What is wrong with stored bytes (a batch, an index file or the
/// clean-shutdown marker).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CorruptKind {
    /// The first four bytes are not the expected magic number.
    #[error("bad magic {found:#010x}")]
    BadMagic {
        /// The value found.
        found: u32,
    },
    /// The stored CRC32C does not match the bytes it covers.
    #[error("checksum mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    ChecksumMismatch {
        /// CRC stored in the header or trailer.
        stored: u32,
        /// CRC computed over the covered bytes.
        computed: u32,
    },
    /// A length field is impossible (smaller than a header, or larger than
    /// the bytes that hold it).
    #[error("invalid length {len} ({available} bytes available)")]
    BadLength {
        /// The length field's value.
        len: u64,
        /// Bytes actually available.
        available: u64,
    },
    /// The bytes end before the structure does.
    #[error("truncated: {needed} bytes needed, {available} available")]
    Truncated {
        /// Bytes the structure needs.
        needed: u64,
        /// Bytes actually available.
        available: u64,
    },
    /// Attribute bits this version does not know (e.g. an unknown codec).
    #[error("unknown attributes {attributes:#06x}")]
    UnknownAttributes {
        /// The attributes field.
        attributes: u16,
    },
    /// A batch header says it holds zero records.
    #[error("batch holds no records")]
    NoRecords,
    /// Offsets are not dense where they must be.
    #[error("offset mismatch: expected {expected}, found {found}")]
    OffsetMismatch {
        /// The offset that should be there.
        expected: u64,
        /// The offset that is there.
        found: u64,
    },
    /// A record inside a (checksum-valid) batch cannot be decoded.
    #[error("record {index} is malformed: {field} runs past the batch")]
    BadRecord {
        /// Index of the record inside its batch.
        index: u32,
        /// Which field failed.
        field: RecordField,
    },
    /// Bytes remain after the last record of a batch.
    #[error("{extra} trailing bytes after the last record")]
    TrailingBytes {
        /// How many bytes remain.
        extra: u64,
    },
    /// The compressed body does not decompress to its declared size.
    #[error("compressed body does not decompress to {declared} bytes")]
    Decompress {
        /// Uncompressed size declared in the header.
        declared: u32,
    },
}

/// The field of a record that failed to decode, carried by
/// [`CorruptKind::BadRecord`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum RecordField {
    /// The timestamp delta varint.
    Timestamp,
    /// The key length or key bytes.
    Key,
    /// The value length or value bytes.
    Value,
    /// The header count, a header name or a header value.
    Header,
}

impl std::fmt::Display for RecordField {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = match self {
            RecordField::Timestamp => "timestamp",
            RecordField::Key => "key",
            RecordField::Value => "value",
            RecordField::Header => "header",
        };
        f.write_str(s)
    }
}

/// Errors returned by [`Log`](crate::Log).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LogError {
    /// A file-system operation failed.
    #[error("{op} {path:?} failed: {source}")]
    Io {
        /// The file or directory involved.
        path: PathBuf,
        /// What was being done.
        op: IoOp,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// Stored bytes failed validation; the log never serves them.
    #[error("corrupt data in {path:?} at byte {position}: {reason}")]
    Corrupt {
        /// The file holding the bad bytes.
        path: PathBuf,
        /// Byte position in that file where the bad structure starts.
        position: u64,
        /// What is wrong.
        #[source]
        reason: CorruptKind,
    },
    /// The requested offset is not in the log.
    #[error("offset {requested} is out of range [{start}, {end}]")]
    OffsetOutOfRange {
        /// The offset asked for.
        requested: u64,
        /// The first offset still stored.
        start: u64,
        /// The next offset to be assigned.
        end: u64,
    },
    /// An encoded batch is larger than `max_batch_bytes`.
    #[error("batch of {size} bytes exceeds the limit of {max} bytes")]
    BatchTooLarge {
        /// Encoded size of the batch.
        size: usize,
        /// Configured limit.
        max: usize,
    },
    /// `append` was called with no records.
    #[error("cannot append an empty batch")]
    EmptyBatch,
    /// A configuration value is out of its allowed range.
    #[error("invalid configuration: {field} must be {requirement}")]
    InvalidConfig {
        /// The option.
        field: &'static str,
        /// What it must satisfy.
        requirement: &'static str,
    },
    /// An earlier failure could not be cleaned up (cutting back a failed
    /// append failed too, or an fsync failed under a policy that had
    /// already acknowledged the unsynced records); the log refuses further
    /// appends (fail-stop). Data acknowledged before the failure is safe;
    /// reopen the log to recover.
    #[error("log is failed after an earlier {cause:?} I/O error; reopen it to recover")]
    Poisoned {
        /// Kind of the I/O error that failed the log.
        cause: io::ErrorKind,
    },
    /// A repair cannot apply to the damage it was asked about.
    #[error("cannot repair the damaged batch at byte {position} of {path:?}: {why}")]
    RepairRefused {
        /// The damaged segment file.
        path: PathBuf,
        /// Byte position of the damaged batch.
        position: u64,
        /// Why not.
        why: &'static str,
    },
    /// A write or `fdatasync` failed before this append was durable, so
    /// the log cut its unacknowledged tail (this batch included) back to
    /// the last synced point and goes on. Nothing of the batch is stored;
    /// retrying may succeed once the cause passes (space is freed).
    #[error(
        "append discarded after a {cause:?} I/O error; the log cut its unsynced tail and goes on"
    )]
    Discarded {
        /// Kind of the I/O error that failed the write or sync.
        cause: io::ErrorKind,
    },
    /// The log was closed.
    #[error("log is closed")]
    Closed,
}

impl LogError {
    /// The kind of the I/O error behind this error, if there is one.
    pub fn io_kind(&self) -> Option<io::ErrorKind> {
        match self {
            LogError::Io { source, .. } => Some(source.kind()),
            LogError::Poisoned { cause } | LogError::Discarded { cause } => Some(*cause),
            _ => None,
        }
    }

    /// Whether the storage is full (`ENOSPC`, or a quota: `EDQUOT`): the
    /// append stored nothing, and retrying once space is freed succeeds.
    /// False for [`LogError::Poisoned`]: a failed log needs a reopen.
    pub fn is_storage_full(&self) -> bool {
        !matches!(self, LogError::Poisoned { .. })
            && matches!(
                self.io_kind(),
                Some(io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded)
            )
    }

    pub(crate) fn io(path: impl Into<PathBuf>, op: IoOp, source: io::Error) -> Self {
        LogError::Io {
            path: path.into(),
            op,
            source,
        }
    }

    pub(crate) fn corrupt(path: impl Into<PathBuf>, position: u64, reason: CorruptKind) -> Self {
        LogError::Corrupt {
            path: path.into(),
            position,
            reason,
        }
    }
}
