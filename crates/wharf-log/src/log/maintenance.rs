//! Deleting data: retention (whole sealed segments, oldest first) and
//! truncation to an offset (including re-encoding a partly kept batch).

use super::*;

impl Inner {
    pub(super) fn retain(&self, w: &Writer) -> Result<usize, LogError> {
        let r = self.config.retention;
        if r.max_bytes.is_none() && r.max_age.is_none() {
            return Ok(0);
        }
        let segs = self.segments_snapshot();
        let mut total: u64 = segs.iter().map(|s| s.state().written_len).sum();
        let now = self.config.clock.now_ms();
        let mut n = 0;
        for seg in &segs[..segs.len().saturating_sub(1)] {
            if Arc::ptr_eq(seg, &w.active) {
                break;
            }
            let (len, max_ts) = {
                let st = seg.state();
                (st.written_len, st.index.max_timestamp)
            };
            let by_size = r.max_bytes.is_some_and(|m| total - len >= m);
            let by_age = r.max_age.is_some_and(|a| {
                let a = i64::try_from(a.as_millis()).unwrap_or(i64::MAX);
                now.saturating_sub(max_ts) > a
            });
            if !(by_size || by_age) {
                break;
            }
            total -= len;
            n += 1;
        }
        if n == 0 {
            return Ok(0);
        }
        self.set_segments(|s| {
            s.drain(..n);
        });
        let gone: Vec<PathBuf> = segs[..n].iter().map(|s| s.path.clone()).collect();
        self.forget_damage(|d| gone.contains(&d.path));
        for seg in &segs[..n] {
            self.remove_segment_files(seg.base)?;
        }
        self.storage
            .sync_dir(&self.dir)
            .map_err(|e| LogError::io(&self.dir, IoOp::SyncDir, e))?;
        Ok(n)
    }

    /// Removes a segment's files, the `.log` first so a crash leaves only
    /// orphan indexes (which open deletes).
    pub(super) fn remove_segment_files(&self, base: u64) -> Result<(), LogError> {
        for name in [log_name(base), index_name(base), time_index_name(base)] {
            remove_if_exists(&*self.storage, &self.path(&name))?;
        }
        Ok(())
    }

    pub(super) fn truncate(&self, to: u64) -> Result<(), LogError> {
        let mut w = self.lock_writer()?;
        self.check_writable(&w)?;
        if to >= self.next_offset.load(Ordering::Acquire) {
            return Ok(());
        }
        // A failed flush cut the log back to its synced point (unless it
        // failed the log); the truncation then applies to what is left.
        if let Err(e) = self.flush_pending(&mut w) {
            if self.failed.get().is_some() {
                return Err(e);
            }
        }
        let end = self.next_offset.load(Ordering::Acquire);
        if to >= end {
            return Ok(());
        }
        let segs = self.segments_snapshot();
        let start = segs.first().map_or(0, |s| s.base);
        if to < start {
            return Err(LogError::OffsetOutOfRange {
                requested: to,
                start,
                end,
            });
        }
        let i = segs.partition_point(|s| s.base <= to).saturating_sub(1);
        let seg = Arc::clone(&segs[i]);
        let _exclusive = self
            .rewrite
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let (cut, partial) = self.find_cut(&seg, to)?;
        let r = self.truncate_files(&segs[i + 1..], &seg, cut, partial.as_ref());
        if let Err(LogError::Io { source, .. }) = &r {
            self.fail(source.kind());
        }
        r?;
        self.set_segments(|s| s.truncate(i + 1));
        let len = seg
            .file
            .size()
            .map_err(|e| LogError::io(&seg.path, IoOp::Len, e))?;
        // Damage before the cut stays known (and skipped by the index
        // rebuilt here); everything from the cut on is gone.
        self.forget_damage(|d| d.start_offset >= to);
        let out = scan_resync(&*seg.file, seg.base, len, self.config.index_interval_bytes)
            .map_err(|e| LogError::io(&seg.path, IoOp::Read, e))?;
        if let Some((pos, reason)) = out.tail {
            return Err(LogError::corrupt(&seg.path, pos, reason));
        }
        {
            let mut st = seg.state_mut();
            st.index = out.index;
            st.written_len = len;
            st.visible_len = len;
            st.written_end = to;
            st.visible_end = to;
            st.created_ms = self.config.clock.now_ms();
        }
        self.next_offset.store(to, Ordering::Release);
        w.active = seg;
        w.epoch += 1;
        w.visible_lsn = w.lsn;
        self.mark_synced(w.lsn);
        Ok(())
    }

    pub(super) fn truncate_files(
        &self,
        newer: &[Arc<Segment>],
        seg: &Segment,
        cut: u64,
        partial: Option<&EncodedBatch>,
    ) -> Result<(), LogError> {
        for s in newer.iter().rev() {
            self.remove_segment_files(s.base)?;
        }
        for name in [index_name(seg.base), time_index_name(seg.base)] {
            remove_if_exists(&*self.storage, &self.path(&name))?;
        }
        self.storage
            .sync_dir(&self.dir)
            .map_err(|e| LogError::io(&self.dir, IoOp::SyncDir, e))?;
        seg.file
            .set_len(cut)
            .map_err(|e| LogError::io(&seg.path, IoOp::SetLen, e))?;
        if let Some(p) = partial {
            write_all_at(&*seg.file, &p.buf, cut)
                .map_err(|e| LogError::io(&seg.path, IoOp::Write, e))?;
        }
        seg.file
            .sync_data()
            .map_err(|e| LogError::io(&seg.path, IoOp::SyncData, e))
    }

    /// Finds where to cut `seg` so that `to` is the next offset: the start
    /// of the batch holding `to`, plus a re-encoded batch of that batch's
    /// records before `to` when `to` falls inside it.
    pub(super) fn find_cut(
        &self,
        seg: &Segment,
        to: u64,
    ) -> Result<(u64, Option<EncodedBatch>), LogError> {
        let (mut pos, len) = {
            let st = seg.state();
            (st.index.position_for(to - seg.base), st.written_len)
        };
        let known = self.damage_in(&seg.path);
        let mut head = [0u8; HEADER_LEN];
        while pos < len {
            if let Some(d) = known.iter().find(|d| d.position == pos) {
                if d.start_offset >= to {
                    // Cutting at (or before) a damaged batch: its bytes
                    // need not be read.
                    return Ok((pos, None));
                }
                if d.end_offset <= to {
                    pos = d.end_position;
                    continue;
                }
                return Err(LogError::corrupt(&d.path, d.position, d.reason.clone()));
            }
            read_exact_at(&*seg.file, &mut head, pos)
                .map_err(|e| LogError::io(&seg.path, IoOp::Read, e))?;
            let h = BatchHeader::parse(&head).map_err(|e| LogError::corrupt(&seg.path, pos, e))?;
            if h.next_offset() <= to {
                pos += u64::from(h.len);
                continue;
            }
            if h.base_offset >= to {
                return Ok((pos, None));
            }
            let bytes = read_bytes(&*seg.file, &seg.path, pos, u64::from(h.len))?;
            let b = Batch::decode(bytes).map_err(|e| LogError::corrupt(&seg.path, pos, e))?;
            let mut keep = Vec::with_capacity((to - h.base_offset) as usize);
            let it = b
                .records()
                .map_err(|e| LogError::corrupt(&seg.path, pos, e))?;
            for r in it {
                let r = r.map_err(|e| LogError::corrupt(&seg.path, pos, e))?;
                if r.offset >= to {
                    break;
                }
                keep.push(r.to_record());
            }
            let mut enc = batch::encode(&keep, h.compression, batch::MAX_BATCH_BYTES)?;
            enc.seal(h.base_offset);
            return Ok((pos, Some(enc)));
        }
        Ok((len, None))
    }
}
