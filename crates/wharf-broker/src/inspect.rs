//! Read-only views for operators: reading stored messages without consuming
//! them ([`Broker::peek`], [`Broker::peek_unsettled`]), each group's
//! per-partition positions and members ([`Broker::group_details`]), and the
//! logs' fsync latency ([`Broker::fsync_stats`]). Nothing here changes a
//! group: group state is only copied out under its mutex, and messages are
//! read from the logs directly, so no delivery attempt is counted.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use wharf_core::{Error, GroupMode, Message, MessageId};

use crate::codec::from_record;
use crate::error::{log_error, storage_error};
use crate::group::GroupTopic;
use crate::meta::Cursor;
use crate::topic::Partition;
use crate::{Broker, Result};

/// Bytes read from a log per step while peeking.
const PEEK_CHUNK: usize = 256 * 1024;

/// Where a [`Broker::peek`] starts: an offset in a partition. Partitions
/// are read in order, so a position also means "and every later partition
/// from its first retained message". Written as `PARTITION:OFFSET`.
///
/// ```
/// use wharf_broker::PeekPosition;
/// let p: PeekPosition = "2:41".parse().expect("valid");
/// assert_eq!(p, PeekPosition::new(2, 41));
/// assert_eq!(p.to_string(), "2:41");
/// assert!("41".parse::<PeekPosition>().is_err());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
#[non_exhaustive]
pub struct PeekPosition {
    /// The partition.
    pub partition: u32,
    /// The first offset to read in it (earlier offsets no longer retained
    /// are skipped).
    pub offset: u64,
}

impl PeekPosition {
    /// The beginning of a topic: partition 0, offset 0.
    pub const START: PeekPosition = PeekPosition {
        partition: 0,
        offset: 0,
    };

    /// A position in `partition` at `offset`.
    pub fn new(partition: u32, offset: u64) -> Self {
        PeekPosition { partition, offset }
    }
}

impl fmt::Display for PeekPosition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.partition, self.offset)
    }
}

impl FromStr for PeekPosition {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        let bad = || Error::InvalidArgument {
            name: "cursor",
            reason: format!("{s:?} is not PARTITION:OFFSET"),
        };
        let (p, o) = s.split_once(':').ok_or_else(bad)?;
        Ok(PeekPosition {
            partition: p.parse().map_err(|_| bad())?,
            offset: o.parse().map_err(|_| bad())?,
        })
    }
}

/// A stored message read by [`Broker::peek`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Peeked {
    /// Its partition.
    pub partition: u32,
    /// Its offset there.
    pub offset: u64,
    /// The message as stored.
    pub message: Message,
}

/// One page of [`Broker::peek`].
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct PeekPage {
    /// The messages, by partition then offset.
    pub messages: Vec<Peeked>,
    /// Where the next page starts; `None` when this page reached the end
    /// of every partition (as readable when it was read).
    pub next: Option<PeekPosition>,
}

/// One partition of a [`GroupDetail`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct GroupPartition {
    /// The partition.
    pub partition: u32,
    /// The group's floor: every offset below it is settled (in queue mode
    /// acks may arrive out of order, so some offsets above it may be
    /// settled too). This is what the group resumes from after a restart;
    /// it is persisted every [`commit_interval`](crate::BrokerBuilder::commit_interval).
    pub committed_offset: u64,
    /// Offsets at or above `committed_offset` already settled (out-of-order acks).
    pub settled_above: u64,
    /// The partition's next offset.
    pub end_offset: u64,
    /// Messages stored but not settled by the group.
    pub lag: u64,
    /// Stream mode: the member the partition is assigned to (none without
    /// members). Queue mode: `None` (every member takes from every partition).
    pub member: Option<u64>,
}

/// A group's state on one topic, from [`Broker::group_details`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct GroupDetail {
    /// The group's name.
    pub group: String,
    /// The topic.
    pub topic: String,
    /// Queue or stream mode.
    pub mode: GroupMode,
    /// Live consumers' ids (one per subscription), in join order.
    pub members: Vec<u64>,
    /// Every partition of the topic, in order.
    pub partitions: Vec<GroupPartition>,
    /// The sum of the partitions' lag.
    pub lag: u64,
    /// Whether the group's state is loaded; otherwise this is its persisted
    /// position (no consumer since open, or unloaded when idle).
    pub loaded: bool,
}

/// A group known only by its persisted position: (group, topic) and per
/// partition (partition, floor, settled above the floor, end offset).
pub(crate) type SavedPosition = ((String, String), Vec<(u32, u64, u64, u64)>);

/// A group's settled offsets in one partition.
#[derive(Default)]
struct Settled {
    floor: u64,
    above: HashSet<u64>,
}

impl Settled {
    fn contains(&self, offset: u64) -> bool {
        offset < self.floor || self.above.contains(&offset)
    }
}

impl From<&Cursor> for Settled {
    fn from(c: &Cursor) -> Self {
        Settled {
            floor: c.floor,
            above: c
                .settled
                .iter()
                .copied()
                .filter(|&o| o >= c.floor)
                .collect(),
        }
    }
}

impl Broker {
    /// Reads up to `max` (at least 1) stored messages of `topic` from
    /// `from`, by partition then offset, without consuming them: no group
    /// is touched and no delivery attempt is counted, so peeking twice
    /// returns the same messages. Messages removed by retention are
    /// skipped; messages past their TTL are included (the log still holds
    /// them). Page with [`PeekPage::next`].
    ///
    /// ```
    /// use wharf_broker::{Broker, PeekPosition};
    /// use wharf_core::{Message, Publisher};
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), wharf_core::Error> {
    /// let broker = Broker::temporary().await?;
    /// for i in 0..3 {
    ///     broker.publish("audit", Message::new(format!("m{i}"))).await?;
    /// }
    /// let page = broker.peek("audit", PeekPosition::START, 2)?;
    /// assert_eq!(page.messages.len(), 2);
    /// let rest = broker.peek("audit", page.next.expect("more"), 2)?;
    /// assert_eq!(&rest.messages[0].message.payload()[..], b"m2");
    /// assert!(rest.next.is_none());
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// [`Error::InvalidName`], [`Error::UnknownTopic`]; storage failures.
    pub fn peek(&self, topic: &str, from: PeekPosition, max: usize) -> Result<PeekPage> {
        self.peek_filtered(topic, from, max, None)
    }

    /// The first offset of `partition` in `topic` whose message was stored
    /// at or after `time` (by the log's time index), or the partition's end
    /// offset when none was: where [`Broker::peek`] starts to browse a
    /// partition by time, as a subscription from `StartPosition::Time`
    /// would.
    ///
    /// ```
    /// use wharf_broker::Broker;
    /// use wharf_core::{Message, Publisher, Timestamp};
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), wharf_core::Error> {
    /// let broker = Broker::temporary().await?;
    /// broker.publish("audit", Message::new("m0")).await?;
    /// assert_eq!(broker.offset_at_time("audit", 0, Timestamp::from_millis(0))?, 0);
    /// let later = Timestamp::from_millis(u64::MAX / 2);
    /// assert_eq!(broker.offset_at_time("audit", 0, later)?, 1);
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// [`Error::InvalidName`], [`Error::UnknownTopic`],
    /// [`Error::InvalidArgument`] for a partition the topic does not have;
    /// storage failures.
    pub fn offset_at_time(
        &self,
        topic: &str,
        partition: u32,
        time: wharf_core::Timestamp,
    ) -> Result<u64> {
        let t = self.inner.existing_topic(topic)?;
        let parts = t.partitions();
        let part = parts
            .get(partition as usize)
            .ok_or_else(|| Error::InvalidArgument {
                name: "partition",
                reason: format!("{topic:?} has {} partitions", parts.len()),
            })?;
        part.start_position(wharf_core::StartPosition::Time(time), topic, partition)
    }

    /// As [`Broker::peek`], leaving out the messages `group` has already
    /// settled (its floor and out-of-order acks, including a position saved
    /// before a restart that no consumer has resumed yet). The group is
    /// only read, never changed. A dead-letter listing is
    /// `peek_unsettled(dlq_topic, REDRIVE_GROUP, ..)`: the letters not yet
    /// redriven or purged.
    ///
    /// # Errors
    /// As [`Broker::peek`].
    pub fn peek_unsettled(
        &self,
        topic: &str,
        group: &str,
        from: PeekPosition,
        max: usize,
    ) -> Result<PeekPage> {
        self.peek_filtered(topic, from, max, Some(group))
    }

    /// The message with id `id` in `topic` that `group` has not settled,
    /// if any (a scan of [`Broker::peek_unsettled`] pages; e.g. one dead
    /// letter by id for `REDRIVE_GROUP`).
    ///
    /// # Errors
    /// As [`Broker::peek`].
    pub fn find_unsettled(
        &self,
        topic: &str,
        group: &str,
        id: MessageId,
    ) -> Result<Option<Peeked>> {
        let mut from = PeekPosition::START;
        loop {
            let page = self.peek_unsettled(topic, group, from, 1024)?;
            if let Some(p) = page.messages.into_iter().find(|p| p.message.id() == id) {
                return Ok(Some(p));
            }
            match page.next {
                Some(next) => from = next,
                None => return Ok(None),
            }
        }
    }

    /// Every group with a position on a topic (since open): mode, members
    /// and, per partition, the committed offset, end offset, lag and (in
    /// stream mode) the member it is assigned to.
    pub fn group_details(&self) -> Vec<GroupDetail> {
        let groups: Vec<((String, String), Arc<GroupTopic>)> = self
            .inner
            .groups
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(k, gt)| (k.clone(), gt.clone()))
            .collect();
        let mut out: Vec<GroupDetail> = groups
            .into_iter()
            .map(|((group, topic), gt)| {
                let cursors = gt.cursors(&self.inner.clock);
                let members = gt.members();
                let owners = gt.owners();
                let partitions: Vec<GroupPartition> = gt
                    .topic
                    .partitions()
                    .iter()
                    .enumerate()
                    .map(|(i, part)| {
                        let partition = u32::try_from(i).expect("partition count fits u32");
                        let (floor, settled_above) = cursors
                            .get(i)
                            .map_or((0, 0), |(_, c)| (c.floor, c.settled.len() as u64));
                        let end_offset = part.end_offset();
                        let member = owners.get(i).copied().flatten();
                        GroupPartition {
                            partition,
                            committed_offset: floor,
                            settled_above,
                            end_offset,
                            lag: end_offset
                                .saturating_sub(floor)
                                .saturating_sub(settled_above),
                            member,
                        }
                    })
                    .collect();
                GroupDetail {
                    group,
                    topic,
                    mode: gt.mode,
                    members,
                    lag: partitions.iter().map(|p| p.lag).sum(),
                    partitions,
                    loaded: true,
                }
            })
            .collect();
        // Groups not loaded (nobody consumed since the broker opened, or
        // unloaded when idle) keep their persisted position: their lag is
        // what a stalled consumer leaves behind, and shows exactly then.
        for ((group, topic), parts) in self.saved_positions() {
            let partitions: Vec<GroupPartition> = parts
                .into_iter()
                .map(
                    |(partition, floor, settled_above, end_offset)| GroupPartition {
                        partition,
                        committed_offset: floor,
                        settled_above,
                        end_offset,
                        lag: end_offset
                            .saturating_sub(floor)
                            .saturating_sub(settled_above),
                        member: None,
                    },
                )
                .collect();
            out.push(GroupDetail {
                group,
                topic,
                mode: GroupMode::Queue,
                members: Vec::new(),
                lag: partitions.iter().map(|p| p.lag).sum(),
                partitions,
                loaded: false,
            });
        }
        out.sort_by(|a, b| (&a.group, &a.topic).cmp(&(&b.group, &b.topic)));
        out
    }

    /// The persisted positions of groups that are not loaded, on topics
    /// that exist: per partition (partition, floor, settled above the
    /// floor, end offset).
    pub(crate) fn saved_positions(&self) -> Vec<SavedPosition> {
        let saved: Vec<((String, String), HashMap<u32, Cursor>)> = {
            let live = self.inner.groups.lock().unwrap_or_else(|p| p.into_inner());
            self.inner
                .saved
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .iter()
                .filter(|(k, _)| !live.contains_key(*k))
                .map(|(k, c)| (k.clone(), c.clone()))
                .collect()
        };
        saved
            .into_iter()
            .filter_map(|(key, cursors)| {
                let topic = self.inner.existing_topic(&key.1).ok()?;
                let parts = topic
                    .partitions()
                    .iter()
                    .enumerate()
                    .map(|(i, part)| {
                        let partition = u32::try_from(i).expect("partition count fits u32");
                        let (floor, above) = cursors.get(&partition).map_or((0, 0), |c| {
                            (
                                c.floor,
                                c.settled.iter().filter(|&&o| o >= c.floor).count() as u64,
                            )
                        });
                        (partition, floor, above, part.end_offset())
                    })
                    .collect();
                Some((key, parts))
            })
            .collect()
    }

    /// How long the `fdatasync`s of every partition's log took since the
    /// broker opened (group commits, the `Interval` flusher, segment rolls
    /// and closes), for latency metrics.
    pub fn fsync_stats(&self) -> crate::SyncStatsSnapshot {
        self.inner.stats.sync.snapshot()
    }

    fn peek_filtered(
        &self,
        topic: &str,
        from: PeekPosition,
        max: usize,
        group: Option<&str>,
    ) -> Result<PeekPage> {
        let t = self.inner.existing_topic(topic)?;
        let settled = match group {
            Some(g) => self.settled_by(g, topic),
            None => HashMap::new(),
        };
        let none = Settled::default();
        let max = max.max(1);
        let mut out = Vec::new();
        let parts = t.partitions();
        for (i, part) in parts.iter().enumerate().skip(from.partition as usize) {
            let partition = u32::try_from(i).expect("partition count fits u32");
            let first = if partition == from.partition {
                from.offset
            } else {
                0
            };
            let done = settled.get(&partition).unwrap_or(&none);
            if let Some(next) = peek_partition(part, partition, first, done, max, &mut out)? {
                return Ok(PeekPage {
                    messages: out,
                    next: Some(next),
                });
            }
        }
        Ok(PeekPage {
            messages: out,
            next: None,
        })
    }

    /// What `group` has settled on `topic`, by partition: from its live
    /// state, else from the position saved before a restart.
    fn settled_by(&self, group: &str, topic: &str) -> HashMap<u32, Settled> {
        let key = (group.to_owned(), topic.to_owned());
        let live = self
            .inner
            .groups
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&key)
            .cloned();
        if let Some(gt) = live {
            return gt
                .cursors(&self.inner.clock)
                .iter()
                .map(|(p, c)| (*p, Settled::from(c)))
                .collect();
        }
        self.inner
            .saved
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&key)
            .map(|saved| saved.iter().map(|(p, c)| (*p, Settled::from(c))).collect())
            .unwrap_or_default()
    }
}

/// Appends the messages of one partition from `first` not in `done` to
/// `out`. Returns where to continue if `out` filled up before the end.
fn peek_partition(
    part: &Partition,
    partition: u32,
    first: u64,
    done: &Settled,
    max: usize,
    out: &mut Vec<Peeked>,
) -> Result<Option<PeekPosition>> {
    let end = part.readable_end();
    let mut at = first.max(part.start_offset()).max(done.floor);
    while at < end {
        let batches = match part.read(at, PEEK_CHUNK) {
            Ok(b) => b,
            // Retention removed the segment between the check and the read.
            Err(_) if part.start_offset() > at => {
                at = part.start_offset();
                continue;
            }
            Err(e) => return Err(log_error(e)),
        };
        if batches.is_empty() {
            break;
        }
        for rec in batches.records() {
            let rec = rec.map_err(log_error)?;
            let offset = rec.offset;
            if offset < at || offset >= end || done.contains(offset) {
                continue;
            }
            if out.len() >= max {
                return Ok(Some(PeekPosition { partition, offset }));
            }
            let message = from_record(rec).map_err(|e| storage_error("decode message", e))?;
            out.push(Peeked {
                partition,
                offset,
                message,
            });
        }
        let next = batches.next_offset();
        if next <= at {
            break;
        }
        at = next;
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use wharf_core::{Backend, Message, Publisher, StartPosition, SubscribeOptions, Subscriber};

    use super::*;
    use crate::{TopicConfig, REDRIVE_GROUP};

    fn payloads(page: &PeekPage) -> Vec<String> {
        page.messages
            .iter()
            .map(|p| String::from_utf8_lossy(p.message.payload()).into_owned())
            .collect()
    }

    #[tokio::test]
    async fn peek_pages_by_partition_then_offset() {
        let broker = Broker::temporary().await.expect("broker");
        broker
            .create_topic("peek.order", TopicConfig::default().partitions(2))
            .await
            .expect("create");
        // Keyless messages go round-robin: even ones to partition 0.
        for i in 0..6 {
            broker
                .publish("peek.order", Message::new(format!("m{i}")))
                .await
                .expect("publish");
        }
        let all = broker
            .peek("peek.order", PeekPosition::START, 100)
            .expect("peek");
        assert_eq!(payloads(&all), ["m0", "m2", "m4", "m1", "m3", "m5"]);
        assert!(all.next.is_none());
        let positions: Vec<(u32, u64)> = all
            .messages
            .iter()
            .map(|p| (p.partition, p.offset))
            .collect();
        assert_eq!(positions, [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2)]);

        // Pages of 4 then 2 cover the same messages; the cursor crosses
        // into partition 1.
        let first = broker
            .peek("peek.order", PeekPosition::START, 4)
            .expect("page 1");
        assert_eq!(payloads(&first), ["m0", "m2", "m4", "m1"]);
        assert_eq!(first.next, Some(PeekPosition::new(1, 1)));
        let second = broker
            .peek("peek.order", first.next.expect("more"), 4)
            .expect("page 2");
        assert_eq!(payloads(&second), ["m3", "m5"]);
        assert!(second.next.is_none());

        // A full last page learns there is nothing more on the next call.
        let exact = broker
            .peek("peek.order", PeekPosition::new(1, 0), 3)
            .expect("exact");
        assert_eq!(payloads(&exact), ["m1", "m3", "m5"]);
        assert!(exact.next.is_none());
        assert!(broker
            .peek("peek.order", PeekPosition::new(7, 0), 3)
            .expect("past the last partition")
            .messages
            .is_empty());
    }

    #[tokio::test]
    async fn peek_rejects_unknown_topics_and_bad_names() {
        let broker = Broker::temporary().await.expect("broker");
        assert!(matches!(
            broker.peek("no.such.topic", PeekPosition::START, 10),
            Err(Error::UnknownTopic { topic }) if topic == "no.such.topic"
        ));
        assert!(matches!(
            broker.peek("bad topic!", PeekPosition::START, 10),
            Err(Error::InvalidName { .. })
        ));
        assert!(broker.topics().is_empty(), "peek does not create the topic");
        assert!(matches!(
            "x:1".parse::<PeekPosition>(),
            Err(Error::InvalidArgument { name: "cursor", .. })
        ));
    }

    #[tokio::test]
    async fn peek_does_not_touch_groups_and_unsettled_skips_what_a_group_settled() {
        let broker = Broker::temporary().await.expect("broker");
        for i in 0..4 {
            broker
                .publish("peek.groups", Message::new(format!("m{i}")))
                .await
                .expect("publish");
        }
        let mut sub = broker
            .subscribe(
                SubscribeOptions::new("peek.groups")
                    .group("g")
                    .start(StartPosition::Earliest),
            )
            .await
            .expect("subscribe");
        let d0 = sub.next().await.expect("open").expect("m0");
        let d1 = sub.next().await.expect("open").expect("m1");
        assert_eq!(d1.info().attempt, 1);
        d1.ack().await.expect("ack m1 out of order");
        let before = broker.group_details();

        for _ in 0..2 {
            let page = broker
                .peek("peek.groups", PeekPosition::START, 10)
                .expect("peek");
            assert_eq!(payloads(&page), ["m0", "m1", "m2", "m3"]);
            let unsettled = broker
                .peek_unsettled("peek.groups", "g", PeekPosition::START, 10)
                .expect("peek unsettled");
            assert_eq!(payloads(&unsettled), ["m0", "m2", "m3"]);
        }
        assert_eq!(broker.group_details(), before, "peeking changed a group");
        assert!(
            !broker.groups().iter().any(|g| g.group == REDRIVE_GROUP),
            "peeking created a group"
        );
        // The group's next deliveries are untouched: m2 on its first attempt.
        d0.ack().await.expect("ack m0");
        let d2 = sub.next().await.expect("open").expect("m2");
        assert_eq!(&d2.message().payload()[..], b"m2");
        assert_eq!(d2.info().attempt, 1);
        d2.ack().await.expect("ack");
        assert_eq!(
            payloads(
                &broker
                    .peek_unsettled("peek.groups", "g", PeekPosition::START, 10)
                    .expect("peek")
            ),
            ["m3"]
        );
        // A group that never consumed has settled nothing.
        assert_eq!(
            broker
                .peek_unsettled("peek.groups", "other", PeekPosition::START, 10)
                .expect("peek")
                .messages
                .len(),
            4
        );
        broker.close().await.expect("close");
    }

    #[tokio::test]
    async fn group_details_show_members_and_committed_offsets_per_partition() {
        let broker = Broker::temporary().await.expect("broker");
        broker
            .create_topic("detail.t", TopicConfig::default().partitions(2))
            .await
            .expect("create");
        for i in 0..4 {
            broker
                .publish("detail.t", Message::new(format!("m{i}")))
                .await
                .expect("publish");
        }
        let opts = || {
            SubscribeOptions::new("detail.t")
                .group("s")
                .mode(GroupMode::Stream)
                .start(StartPosition::Earliest)
        };
        let mut a = broker.subscribe(opts()).await.expect("a");
        let b = broker.subscribe(opts()).await.expect("b");
        let find = |broker: &Broker| {
            broker
                .group_details()
                .into_iter()
                .find(|g| g.group == "s")
                .expect("group s")
        };
        let g = find(&broker);
        assert_eq!(g.mode, GroupMode::Stream);
        assert_eq!(g.members.len(), 2);
        assert_eq!(g.partitions[0].member, Some(g.members[0]));
        assert_eq!(g.partitions[1].member, Some(g.members[1]));
        assert_eq!(g.lag, 4);
        assert_eq!(
            (g.partitions[0].committed_offset, g.partitions[0].end_offset),
            (0, 2)
        );
        let d = tokio::time::timeout(Duration::from_secs(5), a.next())
            .await
            .expect("in time")
            .expect("open")
            .expect("delivery");
        assert_eq!(d.info().partition, 0);
        d.ack().await.expect("ack");
        let g = find(&broker);
        assert_eq!(g.partitions[0].committed_offset, 1);
        assert_eq!(g.partitions[0].lag, 1);
        assert_eq!(g.lag, 3);
        drop(b);
        let g = find(&broker);
        assert_eq!(g.members.len(), 1, "a dropped subscription leaves");
        assert_eq!(g.partitions[1].member, Some(g.members[0]));
        assert!(broker.fsync_stats().count > 0, "Always topics fsync");
        broker.close().await.expect("close");
    }
}
