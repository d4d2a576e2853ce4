//! The read path: finding the segment for an offset and returning whole,
//! CRC-checked batches from it as zero-copy slices of one read buffer.

use super::*;

impl Inner {
    pub(super) fn segment_for(&self, from: u64) -> Result<Arc<Segment>, LogError> {
        let segs = self
            .segments
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let start = segs.first().map_or(0, |s| s.base);
        let end = self.next_offset.load(Ordering::Acquire);
        if from < start || from > end {
            return Err(LogError::OffsetOutOfRange {
                requested: from,
                start,
                end,
            });
        }
        let i = segs.partition_point(|s| s.base <= from);
        Ok(Arc::clone(&segs[i.saturating_sub(1)]))
    }

    pub(super) fn read_segment(
        &self,
        seg: &Segment,
        from: u64,
        max_bytes: usize,
    ) -> Result<ReadBatches, LogError> {
        let (start_pos, vis_len, vis_end) = {
            let st = seg.state();
            (
                st.index.position_for(from.saturating_sub(seg.base)),
                st.visible_len,
                st.visible_end,
            )
        };
        if from >= vis_end {
            return Ok(ReadBatches::empty(from));
        }
        let mut known = self.damage_in(&seg.path);
        let budget = max_bytes.max(1) as u64;
        let slack = u64::from(self.config.index_interval_bytes) + HEADER_LEN as u64;
        let mut batches = Vec::new();
        let mut positions = Vec::new();
        let mut total = 0u64;
        let mut expected: Option<u64> = None;
        let mut buf = Bytes::new();
        let mut buf_pos = 0u64;
        let mut cur = start_pos;
        let in_buf = |pos: u64, n: u64, buf: &Bytes, buf_pos: u64| {
            pos >= buf_pos && pos + n <= buf_pos + buf.len() as u64
        };
        'walk: while cur < vis_len {
            if let Some(d) = known.iter().find(|d| d.position == cur) {
                if d.end_offset <= from && d.end_position > cur {
                    // Damage before the offset asked for: step over it.
                    cur = d.end_position;
                    continue;
                }
                if !batches.is_empty() {
                    break;
                }
                return Err(LogError::corrupt(&d.path, d.position, d.reason.clone()));
            }
            let avail = vis_len - cur;
            let reason = 'bad: {
                if avail < HEADER_LEN as u64 {
                    break 'bad CorruptKind::Truncated {
                        needed: HEADER_LEN as u64,
                        available: avail,
                    };
                }
                if !in_buf(cur, HEADER_LEN as u64, &buf, buf_pos) {
                    let want = (budget.saturating_sub(total) + slack).min(avail);
                    buf = read_bytes(&*seg.file, &seg.path, cur, want)?;
                    buf_pos = cur;
                }
                let off = (cur - buf_pos) as usize;
                let h = match BatchHeader::parse(&buf[off..]) {
                    Ok(h) => h,
                    Err(e) => break 'bad e,
                };
                let blen = u64::from(h.len);
                if blen > avail {
                    break 'bad CorruptKind::Truncated {
                        needed: blen,
                        available: avail,
                    };
                }
                if h.next_offset() <= from {
                    cur += blen;
                    continue 'walk;
                }
                if !batches.is_empty() && total + blen > budget {
                    break 'walk;
                }
                if !in_buf(cur, blen, &buf, buf_pos) {
                    let want = blen
                        .max(budget.saturating_sub(total) + HEADER_LEN as u64)
                        .min(avail);
                    buf = read_bytes(&*seg.file, &seg.path, cur, want)?;
                    buf_pos = cur;
                }
                let off = (cur - buf_pos) as usize;
                let bytes = buf.slice(off..off + h.len as usize);
                if let Err(e) = h.verify(&bytes) {
                    break 'bad e;
                }
                let want_base = expected.unwrap_or(from);
                let dense = match expected {
                    None => h.base_offset <= from,
                    Some(e) => h.base_offset == e,
                };
                if !dense {
                    break 'bad CorruptKind::OffsetMismatch {
                        expected: want_base,
                        found: h.base_offset,
                    };
                }
                expected = Some(h.next_offset());
                batches.push(Batch::from_parts(h, bytes));
                positions.push(cur);
                total += blen;
                cur += blen;
                if total >= budget {
                    break 'walk;
                }
                continue 'walk;
            };
            if !batches.is_empty() {
                // Serve what precedes the damage; the next read reports it.
                break;
            }
            let d = self.locate_damage(seg, cur, reason)?;
            if d.position == cur && d.end_offset <= from && d.end_position > cur {
                cur = d.end_position;
                known.push(d);
                continue;
            }
            return Err(LogError::corrupt(&d.path, d.position, d.reason));
        }
        Ok(ReadBatches {
            batches,
            positions,
            path: Some(Arc::new(seg.path.clone())),
            from_offset: from,
        })
    }
}
