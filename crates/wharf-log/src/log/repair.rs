//! Damaged batches: locating one a read ran into (where it ends, which
//! offsets it held), a full verification pass, and the operator's repairs
//! (void the batch, or truncate at it), each logged and counted.

use super::recovery::log_detected;
use super::*;

impl Log {
    /// Damaged batches found so far (by recovery, reads or
    /// [`Log::verify`]) and not yet repaired, by offset.
    pub fn damage(&self) -> Vec<Damage> {
        if !self.inner.has_damage.load(Ordering::Acquire) {
            return Vec::new();
        }
        relock(&self.inner.damage).clone()
    }

    /// Reads every batch of every segment and checks its CRC, recording
    /// damage not known yet; returns all known damage. A clean open trusts
    /// the active segment without reading it, so this is how damage in data
    /// nobody has read since is found.
    ///
    /// # Errors
    /// [`LogError::Io`], [`LogError::Closed`].
    pub fn verify(&self) -> Result<Vec<Damage>, LogError> {
        self.inner.check_open()?;
        let _guard = self.inner.read_guard();
        self.inner.verify_all()?;
        Ok(self.damage())
    }

    /// Repairs the first damaged batch (lowest offsets), or with `dry_run`
    /// only reports what that would lose. When no damage is known the log is
    /// verified first. [`RepairAction::SkipBatch`] writes a void batch over
    /// the damaged bytes (same length, same offsets; readers skip it), so no
    /// other record is touched; [`RepairAction::TruncateAt`] drops every
    /// record from the cut on. Both are durable when this returns, logged
    /// and counted in [`IntegrityStats`](crate::IntegrityStats).
    ///
    /// # Errors
    /// [`LogError::RepairRefused`] when the action cannot apply to this
    /// damage (a cut past its start, a stretch too short for a void batch),
    /// [`LogError::OffsetOutOfRange`] for a cut below the start,
    /// [`LogError::Io`], [`LogError::Poisoned`], [`LogError::Closed`].
    pub fn repair(&self, action: RepairAction, dry_run: bool) -> Result<RepairReport, LogError> {
        let inner = &*self.inner;
        let w = inner.lock_writer()?;
        inner.check_writable(&w)?;
        if !inner.has_damage.load(Ordering::Acquire) {
            let _guard = inner.read_guard();
            inner.verify_all()?;
        }
        let list = self.damage();
        let end = inner.next_offset.load(Ordering::Acquire);
        let Some(d) = list.first().cloned() else {
            return Ok(RepairReport {
                action,
                dry_run,
                damage: None,
                lost: end..end,
                remaining: 0,
            });
        };
        let refuse = |why| LogError::RepairRefused {
            path: d.path.clone(),
            position: d.position,
            why,
        };
        let report = |lost| RepairReport {
            action,
            dry_run,
            damage: Some(d.clone()),
            lost,
            remaining: list.len() - 1,
        };
        match action {
            RepairAction::SkipBatch => {
                let len = d.end_position - d.position;
                let count = d.end_offset.saturating_sub(d.start_offset);
                if len < HEADER_LEN as u64 || len > batch::MAX_BATCH_BYTES as u64 {
                    return Err(refuse("the damaged stretch cannot hold a void batch"));
                }
                let Ok(count) = u32::try_from(count) else {
                    return Err(refuse("the damaged stretch covers too many offsets"));
                };
                if count == 0 {
                    return Err(refuse("the damaged stretch covers no offset"));
                }
                if dry_run {
                    return Ok(report(d.offsets()));
                }
                let mut w = w;
                inner.flush_pending(&mut w)?;
                let seg = inner
                    .segments_snapshot()
                    .into_iter()
                    .find(|s| s.path == d.path)
                    .ok_or_else(|| refuse("the damaged segment is gone"))?;
                let _exclusive = inner
                    .rewrite
                    .write()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                let void = batch::encode_void(len as usize, d.start_offset, count, i64::MIN);
                write_all_at(&*seg.file, &void, d.position)
                    .map_err(|e| LogError::io(&seg.path, IoOp::Write, e))?;
                seg.file
                    .sync_data()
                    .map_err(|e| LogError::io(&seg.path, IoOp::SyncData, e))?;
                inner.forget_damage(|x| x.path == d.path && x.position == d.position);
                inner.repaired(&d, action, d.offsets());
                Ok(report(d.offsets()))
            }
            RepairAction::TruncateAt(at) => {
                let to = at.unwrap_or(d.start_offset);
                if to > d.start_offset {
                    return Err(refuse("the cut lies past the start of the damage"));
                }
                let start = self.start_offset();
                if to < start {
                    return Err(LogError::OffsetOutOfRange {
                        requested: to,
                        start,
                        end,
                    });
                }
                if dry_run {
                    return Ok(report(to..end));
                }
                drop(w);
                inner.truncate(to)?;
                inner.repaired(&d, action, to..end);
                Ok(report(to..end))
            }
        }
    }
}

impl Inner {
    /// Known damage in the segment file `path` (none without taking a lock
    /// when the log has no damage).
    pub(super) fn damage_in(&self, path: &Path) -> Vec<Damage> {
        if !self.has_damage.load(Ordering::Acquire) {
            return Vec::new();
        }
        relock(&self.damage)
            .iter()
            .filter(|d| d.path == path)
            .cloned()
            .collect()
    }

    /// Drops the damage entries `gone` matches (repaired, truncated or
    /// removed by retention).
    pub(super) fn forget_damage(&self, gone: impl Fn(&Damage) -> bool) {
        let mut list = relock(&self.damage);
        list.retain(|d| !gone(d));
        self.has_damage.store(!list.is_empty(), Ordering::Release);
    }

    fn add_damage(&self, d: Damage) -> Damage {
        let mut list = relock(&self.damage);
        if let Some(known) = list
            .iter()
            .find(|x| x.path == d.path && x.position == d.position)
        {
            return known.clone();
        }
        log_detected(&self.config, &d);
        let at = list.partition_point(|x| x.start_offset <= d.start_offset);
        list.insert(at, d.clone());
        self.has_damage.store(true, Ordering::Release);
        d
    }

    fn repaired(&self, d: &Damage, action: RepairAction, lost: std::ops::Range<u64>) {
        self.config.integrity_stats.on_repair(action);
        tracing::warn!(
            path = %d.path.display(),
            position = d.position,
            end_position = d.end_position,
            first_offset = d.start_offset,
            end_offset = d.end_offset,
            ?action,
            lost_from = lost.start,
            lost_to = lost.end,
            "damaged batch repaired"
        );
    }

    /// A read found invalid bytes at `pos` of `seg`: works out which
    /// offsets they held (walking headers from the nearest index entry) and
    /// where valid data resumes, and records the damage (once).
    pub(super) fn locate_damage(
        &self,
        seg: &Segment,
        pos: u64,
        reason: CorruptKind,
    ) -> Result<Damage, LogError> {
        if let Some(d) = self
            .damage_in(&seg.path)
            .into_iter()
            .find(|d| d.position == pos)
        {
            return Ok(d);
        }
        let (rel, mut p, vis_len, vis_end) = {
            let st = seg.state();
            let (rel, p) = st.index.entry_at_or_before(pos);
            (rel, p, st.visible_len, st.visible_end)
        };
        let (mut pos, mut reason) = (pos, reason);
        let mut expected = seg.base + rel;
        let mut head = [0u8; HEADER_LEN];
        while p < pos {
            read_exact_at(&*seg.file, &mut head, p)
                .map_err(|e| LogError::io(&seg.path, IoOp::Read, e))?;
            match BatchHeader::parse(&head) {
                Ok(h) => {
                    expected = h.next_offset();
                    p += u64::from(h.len);
                }
                Err(e) => {
                    (pos, reason) = (p, e);
                    break;
                }
            }
        }
        let resume = find_resume(&*seg.file, pos, vis_len, expected)
            .map_err(|e| LogError::io(&seg.path, IoOp::Read, e))?;
        let (end_position, end_offset) = match resume {
            Some((q, h)) => (q, h.base_offset),
            None => (vis_len, vis_end),
        };
        Ok(self.add_damage(Damage {
            path: seg.path.clone(),
            position: pos,
            end_position,
            start_offset: expected,
            end_offset,
            reason,
        }))
    }

    /// Scans every segment's readable bytes, recording damage not known yet.
    fn verify_all(&self) -> Result<(), LogError> {
        for seg in self.segments_snapshot() {
            let (len, end) = {
                let st = seg.state();
                (st.visible_len, st.visible_end)
            };
            let out = scan_resync(&*seg.file, seg.base, len, self.config.index_interval_bytes)
                .map_err(|e| LogError::io(&seg.path, IoOp::Read, e))?;
            let mut found = out.damaged;
            if let Some((pos, reason)) = out.tail {
                found.push(Damaged {
                    pos,
                    end_pos: len,
                    start: out.next_offset,
                    end,
                    reason,
                });
            }
            for d in found {
                self.add_damage(Damage {
                    path: seg.path.clone(),
                    position: d.pos,
                    end_position: d.end_pos,
                    start_offset: d.start,
                    end_offset: d.end,
                    reason: d.reason,
                });
            }
        }
        Ok(())
    }
}
