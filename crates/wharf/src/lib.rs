//! Wharf: durable messaging for Rust — the one dependency a service adds.
//!
//! This facade re-exports the transport-agnostic model ([`wharf_core`]) at its
//! root and each backend behind a cargo feature:
//!
//! | feature | module | backend |
//! |---|---|---|
//! | `memory` (default) | [`memory`] | in-process, bounded, non-durable |
//!
//! See `examples/quickstart.rs` for a publish/consume round trip.

pub use wharf_core::*;

/// The in-process backend ([`wharf_memory`]).
#[cfg(feature = "memory")]
pub mod memory {
    pub use wharf_memory::*;
}
