//! Capabilities a backend declares, so callers check them at start-up.
//!
//! A handler that needs delayed redelivery asks for
//! [`Capability::NackWithDelay`]; on a backend that lacks it,
//! [`Capabilities::require`] returns [`Error::Unsupported`] naming both.

use std::fmt;

use crate::error::Error;

/// One thing a backend may or may not be able to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
#[repr(u8)]
pub enum Capability {
    /// Published messages survive a restart of the backend.
    Persistence,
    /// Messages with the same key are delivered in publish order (per group).
    OrderingPerKey,
    /// Named consumer groups: each group gets every message once, shared among its consumers.
    ConsumerGroups,
    /// `nack_with_delay`: redelivery after a chosen delay.
    NackWithDelay,
    /// Unsettled deliveries are redelivered once a lease (visibility timeout) expires.
    VisibilityTimeout,
    /// `Delivery::extend` lengthens a lease.
    ExtendLease,
    /// Publishing a message to be delivered at or after a given time.
    DelayedPublish,
    /// Higher-priority messages are delivered first within a group.
    Priorities,
    /// Messages expire after a time to live and are not delivered.
    Ttl,
    /// Publishing the same message id twice within a window stores it once.
    Dedup,
    /// Subscribing from an explicit offset.
    ReplayFromOffset,
    /// Subscribing from a point in time.
    ReplayFromTime,
    /// Subscriptions with `*` / `>` patterns.
    Wildcards,
    /// `reject` and max deliveries move messages to a dead-letter topic.
    DeadLetter,
    /// A cap on delivery attempts per message (`SubscribeOptions::max_deliveries`).
    MaxDeliveries,
    /// Publishers wait (rather than fail or drop) when consumers fall behind.
    Backpressure,
    /// [`crate::GroupMode::Stream`]: partitions assigned to one consumer each, rebalanced on join/leave.
    PartitionAssignment,
    /// Messages are kept until consumed (or expired), not only passed on: one
    /// published while no subscription or group is there to take it reaches
    /// later subscribers (a new group starting at [`crate::StartPosition::Earliest`]
    /// gets the backlog). Without it — fire-and-forget pub/sub — a message
    /// reaches only the subscriptions live when it is published.
    Retention,
    /// Unacked deliveries come back (at-least-once): a `nack`, a delivery
    /// dropped unsettled, or one held by a consumer that went away is
    /// delivered again with the next attempt number. Without it delivery is
    /// at-most-once: a nack or a drop settles locally and the message is gone.
    Redelivery,
}

impl Capability {
    /// Every capability, in declaration order.
    pub const ALL: [Capability; 19] = [
        Capability::Persistence,
        Capability::OrderingPerKey,
        Capability::ConsumerGroups,
        Capability::NackWithDelay,
        Capability::VisibilityTimeout,
        Capability::ExtendLease,
        Capability::DelayedPublish,
        Capability::Priorities,
        Capability::Ttl,
        Capability::Dedup,
        Capability::ReplayFromOffset,
        Capability::ReplayFromTime,
        Capability::Wildcards,
        Capability::DeadLetter,
        Capability::MaxDeliveries,
        Capability::Backpressure,
        Capability::PartitionAssignment,
        Capability::Retention,
        Capability::Redelivery,
    ];

    const fn bit(self) -> u32 {
        1 << (self as u8)
    }

    /// Short stable name, e.g. `nack-with-delay`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Capability::Persistence => "persistence",
            Capability::OrderingPerKey => "ordering-per-key",
            Capability::ConsumerGroups => "consumer-groups",
            Capability::NackWithDelay => "nack-with-delay",
            Capability::VisibilityTimeout => "visibility-timeout",
            Capability::ExtendLease => "extend-lease",
            Capability::DelayedPublish => "delayed-publish",
            Capability::Priorities => "priorities",
            Capability::Ttl => "ttl",
            Capability::Dedup => "dedup",
            Capability::ReplayFromOffset => "replay-from-offset",
            Capability::ReplayFromTime => "replay-from-time",
            Capability::Wildcards => "wildcards",
            Capability::DeadLetter => "dead-letter",
            Capability::MaxDeliveries => "max-deliveries",
            Capability::Backpressure => "backpressure",
            Capability::PartitionAssignment => "partition-assignment",
            Capability::Retention => "retention",
            Capability::Redelivery => "redelivery",
        }
    }
}

impl fmt::Display for Capability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A set of [`Capability`] values.
///
/// ```
/// use wharf_core::{Capabilities, Capability};
/// let caps = Capabilities::empty().with(Capability::ConsumerGroups);
/// assert!(caps.contains(Capability::ConsumerGroups));
/// let err = caps.require("memory", &[Capability::Persistence]).unwrap_err();
/// assert_eq!(err.to_string(), "backend memory does not support persistence");
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Capabilities(u32);

impl Capabilities {
    /// No capability.
    pub const fn empty() -> Self {
        Capabilities(0)
    }

    /// Every capability.
    pub const fn all() -> Self {
        let mut bits = 0;
        let mut i = 0;
        while i < Capability::ALL.len() {
            bits |= Capability::ALL[i].bit();
            i += 1;
        }
        Capabilities(bits)
    }

    /// This set plus `cap`.
    #[must_use]
    pub const fn with(self, cap: Capability) -> Self {
        Capabilities(self.0 | cap.bit())
    }

    /// This set minus `cap`.
    #[must_use]
    pub const fn without(self, cap: Capability) -> Self {
        Capabilities(self.0 & !cap.bit())
    }

    /// Whether `cap` is in the set.
    pub const fn contains(self, cap: Capability) -> bool {
        self.0 & cap.bit() != 0
    }

    /// The members of the set, in declaration order.
    pub fn iter(self) -> impl Iterator<Item = Capability> {
        Capability::ALL
            .into_iter()
            .filter(move |c| self.contains(*c))
    }

    /// Checks that every capability in `needed` is present.
    ///
    /// # Errors
    /// [`Error::Unsupported`] naming `backend` and the first missing capability.
    pub fn require(self, backend: &'static str, needed: &[Capability]) -> Result<(), Error> {
        match needed.iter().find(|c| !self.contains(**c)) {
            Some(&capability) => Err(Error::Unsupported {
                backend,
                capability,
            }),
            None => Ok(()),
        }
    }
}

impl FromIterator<Capability> for Capabilities {
    fn from_iter<I: IntoIterator<Item = Capability>>(iter: I) -> Self {
        iter.into_iter()
            .fold(Capabilities::empty(), Capabilities::with)
    }
}

impl fmt::Debug for Capabilities {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.iter()).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_contains_every_capability_and_empty_none() {
        for cap in Capability::ALL {
            assert!(Capabilities::all().contains(cap), "{cap}");
            assert!(!Capabilities::empty().contains(cap), "{cap}");
        }
        assert_eq!(Capabilities::all().iter().count(), Capability::ALL.len());
    }

    #[test]
    fn all_lists_each_capability_once_in_declaration_order_with_a_distinct_name() {
        // The set is a `u32` of `1 << discriminant`.
        assert!(Capability::ALL.len() <= 32);
        let mut names = std::collections::HashSet::new();
        for (i, cap) in Capability::ALL.into_iter().enumerate() {
            assert_eq!(cap as usize, i, "{cap}");
            assert!(names.insert(cap.as_str()), "{cap} named twice");
        }
    }

    #[test]
    fn require_names_the_first_missing_capability() {
        let caps: Capabilities = [Capability::Wildcards, Capability::Dedup]
            .into_iter()
            .collect();
        assert!(caps.require("x", &[Capability::Dedup]).is_ok());
        let err = caps
            .require(
                "x",
                &[Capability::Dedup, Capability::Ttl, Capability::Priorities],
            )
            .unwrap_err();
        assert!(matches!(
            err,
            Error::Unsupported {
                backend: "x",
                capability: Capability::Ttl
            }
        ));
        assert!(!caps.without(Capability::Dedup).contains(Capability::Dedup));
    }
}
