//! What [`crate::Router::run`] reports when it returns: per route, how many
//! deliveries were fetched and how each was settled or released.

use std::sync::atomic::{AtomicU64, Ordering};

/// Counters of one route, written by one task each (single-writer counters:
/// a plain load and store, no locked read-modify-write on the hot path).
#[derive(Debug, Default)]
pub(crate) struct Counter(AtomicU64);

impl Counter {
    /// Adds `n`; only ever called from the one task that owns the counter.
    pub(crate) fn add(&self, n: u64) {
        self.0
            .store(self.0.load(Ordering::Relaxed) + n, Ordering::Relaxed);
    }
    pub(crate) fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// One lane's settlement counters.
#[derive(Debug, Default)]
pub(crate) struct LaneCounters {
    pub(crate) handled: Counter,
    pub(crate) acked: Counter,
    pub(crate) nacked: Counter,
    pub(crate) rejected: Counter,
    pub(crate) dead_lettered: Counter,
    pub(crate) settle_errors: Counter,
    pub(crate) panics: Counter,
}

/// What happened on one route.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RouteReport {
    /// The subscription's topic or pattern.
    pub pattern: String,
    /// Deliveries received from the subscription.
    pub fetched: u64,
    /// Deliveries whose handler finished (with any result).
    pub handled: u64,
    /// Acknowledged.
    pub acked: u64,
    /// Nacked (with or without delay) for redelivery.
    pub nacked: u64,
    /// Rejected to the backend's dead-letter topic.
    pub rejected: u64,
    /// Published to a dead-letter topic by the router itself, on a backend
    /// without [`wharf_core::Capability::DeadLetter`], then acked (also counted in `acked`).
    pub dead_lettered: u64,
    /// Settlements the backend refused (the message will be redelivered
    /// when its lease expires).
    pub settle_errors: u64,
    /// Handler panics that reached the router (no [`crate::recover`] layer).
    pub panics: u64,
    /// Fetched but never settled: dropped unsettled at the shutdown
    /// deadline (or when the route ended), so the backend redelivers them.
    pub released: u64,
    /// Errors returned by the subscription while fetching.
    pub fetch_errors: u64,
}

/// What [`crate::Router::run`] did, returned when it stops.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ShutdownReport {
    /// One report per route, in registration order.
    pub routes: Vec<RouteReport>,
    /// Whether in-flight work was still running at the shutdown deadline
    /// (and was released rather than drained).
    pub deadline_exceeded: bool,
}

macro_rules! total {
    ($($name:ident),*) => {$(
        #[doc = concat!("Sum of [`RouteReport::", stringify!($name), "`] over all routes.")]
        pub fn $name(&self) -> u64 {
            self.routes.iter().map(|r| r.$name).sum()
        }
    )*};
}

impl ShutdownReport {
    total!(
        fetched,
        handled,
        acked,
        nacked,
        rejected,
        dead_lettered,
        settle_errors,
        released
    );
}
