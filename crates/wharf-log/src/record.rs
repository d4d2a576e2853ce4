//! The record types: [`Record`] is what callers append, [`StoredRecord`] is
//! what reads decode. Both hold `Bytes`, so building and reading records
//! shares buffers instead of copying them.

use bytes::Bytes;

/// One record to append: a timestamp, an optional key, headers and a value.
///
/// Cloning is cheap (`Bytes` are reference counted).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Record {
    /// Milliseconds since the Unix epoch, chosen by the caller.
    pub timestamp_ms: i64,
    /// Optional key.
    pub key: Option<Bytes>,
    /// Headers as (name, value) byte strings, in order.
    pub headers: Vec<(Bytes, Bytes)>,
    /// The payload.
    pub value: Bytes,
}

impl Record {
    /// A record with only a timestamp and a value.
    pub fn new(timestamp_ms: i64, value: impl Into<Bytes>) -> Self {
        Record {
            timestamp_ms,
            key: None,
            headers: Vec::new(),
            value: value.into(),
        }
    }

    /// Sets the key.
    pub fn with_key(mut self, key: impl Into<Bytes>) -> Self {
        self.key = Some(key.into());
        self
    }

    /// Adds a header.
    pub fn with_header(mut self, name: impl Into<Bytes>, value: impl Into<Bytes>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }
}

/// A record decoded from the log. `key`, header bytes and `value` are
/// slices of the buffer the batch was read into (no copy).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredRecord {
    /// The record's offset in the log.
    pub offset: u64,
    /// Milliseconds since the Unix epoch.
    pub timestamp_ms: i64,
    /// Optional key.
    pub key: Option<Bytes>,
    /// Headers as (name, value) byte strings, in order.
    pub headers: Vec<(Bytes, Bytes)>,
    /// The payload.
    pub value: Bytes,
}

impl StoredRecord {
    /// The record without its offset (what was appended).
    pub fn to_record(&self) -> Record {
        Record {
            timestamp_ms: self.timestamp_ms,
            key: self.key.clone(),
            headers: self.headers.clone(),
            value: self.value.clone(),
        }
    }
}
