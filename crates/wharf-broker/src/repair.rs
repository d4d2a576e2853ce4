//! Damaged partitions: what [`Broker::topics`] reports per partition, the
//! operator's [`Broker::repair`] (skip a damaged batch or truncate at it,
//! with a dry run) and the damage counters for metrics. A damaged partition
//! stops at the damage; every other partition and topic goes on serving.

use std::sync::Arc;

use wharf_log::{Damage, IntegrityStatsSnapshot, LogError, RepairAction, RepairReport};

use crate::error::{log_error, Error};
use crate::topic::Topic;
use crate::{Broker, Result};

impl Broker {
    /// Repairs the first damaged batch of `partition` of `topic` (lowest
    /// offsets), or with `dry_run` only reports what would be lost. With
    /// no damage known the partition is verified first (every CRC read),
    /// so damage nobody has read yet is found too. A skip keeps every other
    /// record; a truncation drops everything from the cut on, and groups
    /// positioned past it go back to it (so new messages reach them); a
    /// publish to the partition still in flight past the cut fails (nothing
    /// of it is stored, on any partition) rather than being acknowledged
    /// for removed offsets. Consumers waiting on the topic are woken.
    ///
    /// # Errors
    /// [`Error::UnknownTopic`], [`Error::InvalidArgument`] for a partition
    /// the topic lacks or an action that cannot apply (a cut past the
    /// damage, a stretch too short to void), storage failures.
    ///
    /// # Cancel safety
    /// The repair runs on a blocking thread and completes even if this
    /// future is dropped; it is idempotent, so calling again is safe.
    pub async fn repair(
        &self,
        topic: &str,
        partition: u32,
        action: RepairAction,
        dry_run: bool,
    ) -> Result<RepairReport> {
        self.inner.check_open()?;
        let t = self.inner.existing_topic(topic)?;
        let parts = t.partitions();
        let Some(p) = parts.get(partition as usize).cloned() else {
            return Err(Error::InvalidArgument {
                name: "partition",
                reason: format!("topic {topic:?} has {} partitions", parts.len()),
            });
        };
        let t2 = Arc::clone(&t);
        let report = tokio::task::spawn_blocking(move || t2.repair(partition, &p, action, dry_run))
            .await
            .map_err(|e| crate::error::storage_error("repair", e))?
            .map_err(repair_error)?;
        if !dry_run && report.damage.is_some() {
            if let RepairAction::TruncateAt(_) = action {
                self.after_truncate(&t, partition, report.lost.start);
            }
            t.wake();
        }
        Ok(report)
    }

    /// Damaged batches found and repaired, and torn tails truncated, by
    /// every partition's log since the broker opened.
    pub fn integrity_stats(&self) -> IntegrityStatsSnapshot {
        self.inner.stats.integrity.snapshot()
    }

    fn after_truncate(&self, t: &Arc<Topic>, partition: u32, end: u64) {
        t.forget_dedup_from(partition, end);
        let groups: Vec<_> = self
            .inner
            .groups
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter(|((_, topic), _)| topic == t.name())
            .map(|(_, g)| Arc::clone(g))
            .collect();
        for g in groups {
            g.clamp(partition, end);
        }
        let mut saved = self.inner.saved.lock().unwrap_or_else(|p| p.into_inner());
        for ((_, topic), cursors) in saved.iter_mut() {
            if topic == t.name() {
                if let Some(c) = cursors.get_mut(&partition) {
                    c.clamp(end);
                }
            }
        }
    }
}

impl Topic {
    /// Every partition's unrepaired damage.
    pub(crate) fn damage(&self) -> Vec<(u32, Damage)> {
        self.partitions()
            .iter()
            .enumerate()
            .flat_map(|(i, p)| {
                let i = u32::try_from(i).expect("partition count fits u32");
                p.damage().into_iter().map(move |d| (i, d))
            })
            .collect()
    }
}

fn repair_error(e: LogError) -> Error {
    match e {
        LogError::RepairRefused { why, .. } => Error::InvalidArgument {
            name: "repair",
            reason: why.to_owned(),
        },
        LogError::OffsetOutOfRange {
            requested,
            start,
            end,
        } => Error::InvalidArgument {
            name: "truncate_at",
            reason: format!("offset {requested} is outside {start}..={end}"),
        },
        e => log_error(e),
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::FileExt;

    use wharf_core::{Message, Publisher};
    use wharf_log::batch::BatchHeader;
    use wharf_log::{BatchBuilder, RepairAction};

    use crate::{Broker, Durability, PeekPosition, TopicConfig};

    /// A truncating repair that runs while a publish to the partition is
    /// written but not yet settled: the publish fails (nothing of it is
    /// stored) rather than being acknowledged for offsets the repair
    /// removed, and the partition's readable end never passes its log's.
    #[tokio::test]
    async fn a_truncating_repair_fails_a_publish_in_flight_past_the_cut() {
        let b = Broker::builder()
            .default_topic(TopicConfig::default().durability(Durability::Never))
            .temporary()
            .await
            .expect("broker");
        for i in 0..5 {
            b.publish("t", Message::new(format!("m{i}")))
                .await
                .expect("publish");
        }
        // Flip a body byte of the third batch (offset 2) on disk.
        let pdir = b.dir().join("topics").join("t").join("0");
        let seg = std::fs::read_dir(&pdir)
            .expect("partition dir")
            .map(|e| e.expect("entry").path())
            .find(|p| p.extension().is_some_and(|e| e == "log"))
            .expect("a segment");
        let bytes = std::fs::read(&seg).expect("read");
        let mut pos = 0usize;
        for _ in 0..2 {
            pos += BatchHeader::parse(&bytes[pos..]).expect("header").len as usize;
        }
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(&seg)
            .expect("open");
        f.write_at(&[bytes[pos + 60] ^ 0x20], (pos + 60) as u64)
            .expect("flip");

        // A publish written (at offset 5) and not yet settled...
        let t = b.inner.existing_topic("t").expect("topic");
        let msgs = [Message::new("in flight")];
        let mut batch = BatchBuilder::with_capacity(64);
        crate::codec::push_record(&msgs[..], 0, &mut batch, &mut Vec::new());
        let w = t.write_publish(vec![(0, vec![0], batch)]);
        assert!(w.failed.is_none());
        assert_eq!(w.written[0].2.info.base_offset, 5);

        // ...when the operator truncates at the damage.
        let report = b
            .repair("t", 0, RepairAction::TruncateAt(Some(2)), false)
            .await
            .expect("repair");
        assert_eq!(report.lost.start, 2);
        let part = t.partitions()[0].clone();
        assert_eq!(part.end_offset(), 2);

        assert!(
            !t.try_commit(w.id),
            "a publish the repair cut must not commit"
        );
        t.settle(w.id, Ok(()));
        let outcome = w.outcome.await.expect("an outcome");
        assert!(outcome.is_err(), "the cut publish fails: {outcome:?}");
        assert!(
            part.committed_raw() <= 2,
            "the readable end passed the log's end"
        );

        // The partition goes on from the cut.
        let r = b
            .publish("t", Message::new("after"))
            .await
            .expect("publish");
        assert_eq!(r.offset, Some(2));
        let page = b.peek("t", PeekPosition::START, 10).expect("peek");
        let got: Vec<_> = page
            .messages
            .iter()
            .map(|p| String::from_utf8_lossy(p.message.payload()).into_owned())
            .collect();
        assert_eq!(got, ["m0", "m1", "after"]);
    }
}
