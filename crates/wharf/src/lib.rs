//! Wharf: durable messaging for Rust — the one dependency a service adds.
//!
//! This facade re-exports the transport-agnostic model ([`wharf_core`]) at its
//! root and each backend behind a cargo feature:
//!
//! | feature | module | backend |
//! |---|---|---|
//! | `memory` (default) | [`memory`] | in-process, bounded, non-durable |
//! | `broker` (default) | [`broker`] | embedded durable broker on Wharf's own log |
//!
//! See `examples/quickstart.rs` for a publish/consume round trip.

pub use wharf_core::*;

/// The in-process backend ([`wharf_memory`]).
#[cfg(feature = "memory")]
pub mod memory {
    pub use wharf_memory::*;
}

/// The embedded durable broker ([`wharf_broker`]).
#[cfg(feature = "broker")]
pub mod broker {
    pub use wharf_broker::*;
}
