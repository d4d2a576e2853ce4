//! Moving an idle consumer group's position ([`Broker::reset_group`]): to
//! the earliest or latest offset, an offset, or a time, in every partition
//! of one topic. Like Kafka's offset reset, only a group nothing uses may
//! move: a bound subscription, an unsettled delivery or a call in progress
//! refuses the reset, so no consumer sees its position change under it.

use std::collections::HashMap;
use std::sync::Arc;

use wharf_core::StartPosition;

use crate::meta::{Cursor, CursorKey};
use crate::{Broker, Result};

/// What [`Broker::reset_group`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum GroupReset {
    /// The group's new position, `(partition, offset)` for every partition:
    /// everything below the offset counts as settled, nothing at or above
    /// it does (pending redeliveries and attempt counts are dropped).
    Moved(Vec<(u32, u64)>),
    /// The group is in use — a subscription (until it is dropped) is bound
    /// to it, a delivery of its is unsettled, or a call holds it — so
    /// nothing changed. Stop its
    /// consumers (an HTTP long poll's subscription ends after the server's
    /// poller idle time) and retry.
    InUse,
    /// The group has no position on the topic: nothing changed.
    Unknown,
}

impl Broker {
    /// Moves `group`'s position on `topic` to `to` in every partition
    /// (`Earliest`, `Latest`, `Offset` — which must lie in every
    /// partition's range — or `Time`), if nothing uses the group. The new
    /// position is persisted before this returns; the group is left
    /// unloaded, so its next consumer starts from it (in the mode that
    /// consumer asks for).
    ///
    /// ```
    /// use wharf_broker::{Broker, GroupReset};
    /// use wharf_core::{Message, Publisher, StartPosition, SubscribeOptions, Subscriber};
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), wharf_core::Error> {
    /// let broker = Broker::temporary().await?;
    /// for i in 0..3 {
    ///     broker.publish("jobs", Message::new(format!("j{i}"))).await?;
    /// }
    /// let mut sub = broker.subscribe(SubscribeOptions::new("jobs").group("workers")).await?;
    /// sub.next().await.expect("a delivery")?.ack().await?;
    /// assert_eq!(broker.reset_group("workers", "jobs", StartPosition::Earliest)?, GroupReset::InUse);
    /// drop(sub);
    /// assert_eq!(
    ///     broker.reset_group("workers", "jobs", StartPosition::Latest)?,
    ///     GroupReset::Moved(vec![(0, 3)])
    /// );
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// [`Error::InvalidName`](wharf_core::Error::InvalidName),
    /// [`Error::UnknownTopic`](wharf_core::Error::UnknownTopic),
    /// [`Error::InvalidOffset`](wharf_core::Error::InvalidOffset) for an
    /// offset outside a partition; metadata write failures (nothing
    /// changed then).
    pub fn reset_group(&self, group: &str, topic: &str, to: StartPosition) -> Result<GroupReset> {
        let inner = &self.inner;
        inner.check_open()?;
        wharf_core::name::validate_group(group)?;
        let t = inner.existing_topic(topic)?;
        let key = (group.to_owned(), topic.to_owned());
        // Held from the check to the swap, as unloading idle groups does:
        // no subscriber loads or binds the group meanwhile, and a commit
        // writing its rows holds a reference, which the check sees.
        let mut groups = inner.groups.lock().unwrap_or_else(|p| p.into_inner());
        let loaded = match groups.get(&key) {
            Some(gt) if Arc::strong_count(gt) > 1 => return Ok(GroupReset::InUse),
            Some(_) => true,
            None => false,
        };
        let mut saved = inner.saved.lock().unwrap_or_else(|p| p.into_inner());
        if !loaded && !saved.contains_key(&key) {
            return Ok(GroupReset::Unknown);
        }
        let mut moved = Vec::new();
        for (i, part) in t.partitions().iter().enumerate() {
            let i = u32::try_from(i).expect("partition count fits u32");
            moved.push((i, part.start_position(to, topic, i)?));
        }
        let cursors: HashMap<u32, Cursor> = moved
            .iter()
            .map(|&(p, floor)| {
                (
                    p,
                    Cursor {
                        floor,
                        ..Cursor::default()
                    },
                )
            })
            .collect();
        let rows: Vec<(CursorKey, Cursor)> = cursors
            .iter()
            .map(|(&partition, c)| {
                (
                    CursorKey {
                        group: group.to_owned(),
                        topic: topic.to_owned(),
                        partition,
                    },
                    c.clone(),
                )
            })
            .collect();
        inner.meta.commit_cursors(&rows)?;
        groups.remove(&key);
        saved.insert(key, cursors);
        Ok(GroupReset::Moved(moved))
    }
}
