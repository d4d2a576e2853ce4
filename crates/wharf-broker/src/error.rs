//! Mapping storage failures onto [`wharf_core::Error`].
//!
//! The broker reports everything through the core error type so it is a
//! drop-in backend; log and metadata failures become
//! [`Error::Backend`](wharf_core::Error::Backend) carrying the original error.

pub(crate) use wharf_core::Error;

pub(crate) const BACKEND: &str = "broker";

/// A metadata or log failure during `what`.
#[derive(Debug, thiserror::Error)]
#[error("{what}: {detail}")]
pub struct StorageError {
    /// What the broker was doing.
    pub what: &'static str,
    /// The underlying failure.
    pub detail: String,
}

pub(crate) fn storage_error(what: &'static str, e: impl std::fmt::Display) -> Error {
    Error::Backend {
        backend: BACKEND,
        source: Box::new(StorageError {
            what,
            detail: e.to_string(),
        }),
    }
}

pub(crate) fn log_error(e: wharf_log::LogError) -> Error {
    match e {
        // The broker is shutting down under a concurrent publish.
        wharf_log::LogError::Closed => Error::Closed { what: "broker" },
        // Nothing was stored and the log goes on: retry once space is freed.
        e if e.is_storage_full() => Error::StorageFull {
            backend: BACKEND,
            source: Box::new(e),
        },
        e => Error::Backend {
            backend: BACKEND,
            source: Box::new(e),
        },
    }
}
