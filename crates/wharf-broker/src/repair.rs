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
    /// positioned past it go back to it (so new messages reach them).
    /// Consumers waiting on the topic are woken.
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
        let report = tokio::task::spawn_blocking(move || p.repair(action, dry_run))
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
