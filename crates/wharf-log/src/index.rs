//! Sparse per-segment indexes, kept in memory and persisted when a segment
//! is sealed (and for the active segment at clean close): the offset index
//! (`.index`: relative offset → byte position) and the time index
//! (`.timeindex`: max timestamp so far → relative offset). Each file ends in
//! a trailer with a CRC32C and the segment length it describes, so a torn
//! or stale index is detected and rebuilt. Also the clean-shutdown marker.

use crate::batch::{le_i64, le_u16, le_u32, le_u64};

/// Magic of the `.index` trailer.
pub const INDEX_MAGIC: u32 = u32::from_le_bytes(*b"WIX1");
/// Magic of the `.timeindex` trailer.
pub const TIME_INDEX_MAGIC: u32 = u32::from_le_bytes(*b"WTX1");
/// Magic of the clean-shutdown marker.
pub const MARKER_MAGIC: u32 = u32::from_le_bytes(*b"WCS1");

const OFFSET_ENTRY: usize = 8;
const TIME_ENTRY: usize = 12;
const INDEX_TRAILER: usize = 48;
const TIME_TRAILER: usize = 32;
const MARKER_LEN: usize = 36;

/// In-memory sparse indexes of one segment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct SegmentIndex {
    /// (offset - base, byte position), ascending.
    pub offsets: Vec<(u32, u32)>,
    /// (max timestamp up to and including the batch, base offset of that
    /// batch - segment base), both ascending.
    pub times: Vec<(i64, u32)>,
    /// Largest record timestamp in the segment (`i64::MIN` when empty).
    pub max_timestamp: i64,
    since_offset_entry: u64,
    since_time_entry: u64,
}

impl SegmentIndex {
    pub(crate) fn new() -> Self {
        SegmentIndex {
            offsets: Vec::new(),
            times: Vec::new(),
            max_timestamp: i64::MIN,
            since_offset_entry: 0,
            since_time_entry: 0,
        }
    }

    /// Records that a batch of `len` bytes starting at offset
    /// `batch_base` with largest timestamp `max_ts` was written at byte
    /// `pos` of a segment starting at offset `base`.
    pub(crate) fn on_batch(
        &mut self,
        base: u64,
        batch_base: u64,
        len: u32,
        max_ts: i64,
        pos: u64,
        interval: u32,
    ) {
        let rel = (batch_base - base) as u32;
        if pos > 0 && self.since_offset_entry >= u64::from(interval) {
            self.offsets.push((rel, pos as u32));
            self.since_offset_entry = 0;
        }
        self.since_offset_entry += u64::from(len);
        if max_ts > self.max_timestamp {
            self.max_timestamp = max_ts;
            if self.times.is_empty() || self.since_time_entry >= u64::from(interval) {
                self.times.push((max_ts, rel));
                self.since_time_entry = 0;
            }
        }
        self.since_time_entry += u64::from(len);
    }

    /// Forgets every batch at byte `pos` or later (relative offset `rel`
    /// or later), after the segment was cut back there. `max_timestamp`
    /// is kept: an overestimate only makes time searches scan more.
    pub(crate) fn cut(&mut self, pos: u64, rel: u64) {
        self.offsets.retain(|&(_, p)| u64::from(p) < pos);
        self.times.retain(|&(_, r)| u64::from(r) < rel);
        self.since_offset_entry = 0;
        self.since_time_entry = 0;
    }

    /// Byte position from which to scan for relative offset `rel`.
    pub(crate) fn position_for(&self, rel: u64) -> u64 {
        let i = self.offsets.partition_point(|&(o, _)| u64::from(o) <= rel);
        if i == 0 {
            0
        } else {
            u64::from(self.offsets[i - 1].1)
        }
    }

    /// The last entry at or before byte `pos`: (relative offset, position)
    /// of a batch start from which to walk forward to `pos`.
    pub(crate) fn entry_at_or_before(&self, pos: u64) -> (u64, u64) {
        let i = self.offsets.partition_point(|&(_, p)| u64::from(p) <= pos);
        if i == 0 {
            (0, 0)
        } else {
            let (rel, p) = self.offsets[i - 1];
            (u64::from(rel), u64::from(p))
        }
    }

    /// Relative offset from which to scan for the first record with a
    /// timestamp >= `ts`: every batch before it has timestamps < `ts`.
    pub(crate) fn scan_start_for_time(&self, ts: i64) -> u32 {
        let i = self.times.partition_point(|&(t, _)| t < ts);
        if i == 0 {
            0
        } else {
            self.times[i - 1].1
        }
    }

    /// Serialises the offset index for a segment of `segment_len` bytes
    /// ending before `next_offset`.
    pub(crate) fn encode_offsets(&self, base: u64, segment_len: u64, next_offset: u64) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.offsets.len() * OFFSET_ENTRY + INDEX_TRAILER);
        for &(rel, pos) in &self.offsets {
            out.extend_from_slice(&rel.to_le_bytes());
            out.extend_from_slice(&pos.to_le_bytes());
        }
        out.extend_from_slice(&INDEX_MAGIC.to_le_bytes());
        out.extend_from_slice(&1u16.to_le_bytes());
        out.extend_from_slice(&0u16.to_le_bytes());
        out.extend_from_slice(&base.to_le_bytes());
        out.extend_from_slice(&segment_len.to_le_bytes());
        out.extend_from_slice(&next_offset.to_le_bytes());
        out.extend_from_slice(&self.max_timestamp.to_le_bytes());
        out.extend_from_slice(&(self.offsets.len() as u32).to_le_bytes());
        let crc = crc32c::crc32c(&out);
        out.extend_from_slice(&crc.to_le_bytes());
        out
    }

    /// Serialises the time index.
    pub(crate) fn encode_times(&self, base: u64, segment_len: u64) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.times.len() * TIME_ENTRY + TIME_TRAILER);
        for &(ts, rel) in &self.times {
            out.extend_from_slice(&ts.to_le_bytes());
            out.extend_from_slice(&rel.to_le_bytes());
        }
        out.extend_from_slice(&TIME_INDEX_MAGIC.to_le_bytes());
        out.extend_from_slice(&1u16.to_le_bytes());
        out.extend_from_slice(&0u16.to_le_bytes());
        out.extend_from_slice(&base.to_le_bytes());
        out.extend_from_slice(&segment_len.to_le_bytes());
        out.extend_from_slice(&(self.times.len() as u32).to_le_bytes());
        let crc = crc32c::crc32c(&out);
        out.extend_from_slice(&crc.to_le_bytes());
        out
    }

    /// Parses both index files; `None` when either is torn, corrupt, or
    /// describes a different segment base or length (stale).
    pub(crate) fn decode(
        offsets: &[u8],
        times: &[u8],
        base: u64,
        segment_len: u64,
    ) -> Option<(SegmentIndex, u64)> {
        let (entries, next_offset, max_ts) = decode_offsets(offsets, base, segment_len)?;
        let times = decode_times(times, base, segment_len)?;
        let mut idx = SegmentIndex::new();
        idx.offsets = entries;
        idx.times = times;
        idx.max_timestamp = max_ts;
        // New appends to a segment loaded this way start a fresh interval.
        idx.since_offset_entry = 0;
        idx.since_time_entry = 0;
        Some((idx, next_offset))
    }
}

fn check_trailer(buf: &[u8], trailer: usize, magic: u32, entry: usize) -> Option<usize> {
    if buf.len() < trailer || !(buf.len() - trailer).is_multiple_of(entry) {
        return None;
    }
    let t = buf.len() - trailer;
    if le_u32(buf, t) != magic || le_u16(buf, t + 4) != 1 {
        return None;
    }
    let crc_at = buf.len() - 4;
    if crc32c::crc32c(&buf[..crc_at]) != le_u32(buf, crc_at) {
        return None;
    }
    let count = le_u32(buf, crc_at - 4) as usize;
    if count * entry != t {
        return None;
    }
    Some(t)
}

type OffsetIndexFile = (Vec<(u32, u32)>, u64, i64);

fn decode_offsets(buf: &[u8], base: u64, segment_len: u64) -> Option<OffsetIndexFile> {
    let t = check_trailer(buf, INDEX_TRAILER, INDEX_MAGIC, OFFSET_ENTRY)?;
    if le_u64(buf, t + 8) != base || le_u64(buf, t + 16) != segment_len {
        return None;
    }
    let next_offset = le_u64(buf, t + 24);
    let max_ts = le_i64(buf, t + 32);
    let mut entries = Vec::with_capacity(t / OFFSET_ENTRY);
    let mut prev: Option<(u32, u32)> = None;
    for chunk in buf[..t].chunks_exact(OFFSET_ENTRY) {
        let e = (le_u32(chunk, 0), le_u32(chunk, 4));
        if u64::from(e.1) >= segment_len || prev.is_some_and(|p| p.0 >= e.0 || p.1 >= e.1) {
            return None;
        }
        prev = Some(e);
        entries.push(e);
    }
    if next_offset < base {
        return None;
    }
    Some((entries, next_offset, max_ts))
}

fn decode_times(buf: &[u8], base: u64, segment_len: u64) -> Option<Vec<(i64, u32)>> {
    let t = check_trailer(buf, TIME_TRAILER, TIME_INDEX_MAGIC, TIME_ENTRY)?;
    if le_u64(buf, t + 8) != base || le_u64(buf, t + 16) != segment_len {
        return None;
    }
    let mut out = Vec::with_capacity(t / TIME_ENTRY);
    for chunk in buf[..t].chunks_exact(TIME_ENTRY) {
        out.push((le_i64(chunk, 0), le_u32(chunk, 8)));
    }
    Some(out)
}

/// Contents of the clean-shutdown marker: what the active segment looked
/// like when the log was closed cleanly.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct CleanMarker {
    pub active_base: u64,
    pub active_len: u64,
    pub next_offset: u64,
}

impl CleanMarker {
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(MARKER_LEN);
        out.extend_from_slice(&MARKER_MAGIC.to_le_bytes());
        out.extend_from_slice(&1u16.to_le_bytes());
        out.extend_from_slice(&0u16.to_le_bytes());
        out.extend_from_slice(&self.active_base.to_le_bytes());
        out.extend_from_slice(&self.active_len.to_le_bytes());
        out.extend_from_slice(&self.next_offset.to_le_bytes());
        let crc = crc32c::crc32c(&out);
        out.extend_from_slice(&crc.to_le_bytes());
        out
    }

    pub(crate) fn decode(buf: &[u8]) -> Option<CleanMarker> {
        if buf.len() != MARKER_LEN || le_u32(buf, 0) != MARKER_MAGIC || le_u16(buf, 4) != 1 {
            return None;
        }
        if crc32c::crc32c(&buf[..32]) != le_u32(buf, 32) {
            return None;
        }
        Some(CleanMarker {
            active_base: le_u64(buf, 8),
            active_len: le_u64(buf, 16),
            next_offset: le_u64(buf, 24),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn built() -> SegmentIndex {
        let mut idx = SegmentIndex::new();
        let mut pos = 0;
        for i in 0..100u64 {
            idx.on_batch(1000, 1000 + i * 2, 100, i as i64 * 10, pos, 250);
            pos += 100;
        }
        idx
    }

    #[test]
    fn offset_index_points_at_or_before_the_batch_holding_the_offset() {
        let idx = built();
        assert!(!idx.offsets.is_empty());
        for rel in 0..200u64 {
            let pos = idx.position_for(rel);
            // batch i holds rel 2i, 2i+1 and starts at 100*i.
            assert!(pos <= rel / 2 * 100);
            assert!(
                rel / 2 * 100 - pos <= 300,
                "scan distance bounded by interval"
            );
        }
    }

    #[test]
    fn index_files_round_trip_and_reject_stale_or_torn_copies() {
        let idx = built();
        let o = idx.encode_offsets(1000, 10_000, 1200);
        let t = idx.encode_times(1000, 10_000);
        let (back, next) = SegmentIndex::decode(&o, &t, 1000, 10_000).expect("valid");
        assert_eq!(next, 1200);
        assert_eq!(back.offsets, idx.offsets);
        assert_eq!(back.times, idx.times);
        assert_eq!(back.max_timestamp, 990);
        assert!(
            SegmentIndex::decode(&o, &t, 1000, 10_001).is_none(),
            "stale length"
        );
        assert!(SegmentIndex::decode(&o[..o.len() - 1], &t, 1000, 10_000).is_none());
        let mut flipped = o.clone();
        flipped[3] ^= 0x10;
        assert!(SegmentIndex::decode(&flipped, &t, 1000, 10_000).is_none());
    }

    #[test]
    fn time_index_scan_start_skips_only_batches_older_than_the_target() {
        let idx = built();
        for ts in [0i64, 5, 10, 500, 989, 990, 2000] {
            let rel = idx.scan_start_for_time(ts);
            // batch with base rel r has max ts (r/2)*10; all batches before
            // the start must have ts < target.
            let start_batch_ts = i64::from(rel / 2) * 10;
            assert!(rel == 0 || start_batch_ts < ts);
        }
    }

    #[test]
    fn marker_round_trips_and_rejects_any_flip() {
        let m = CleanMarker {
            active_base: 5,
            active_len: 77,
            next_offset: 9,
        };
        let b = m.encode();
        assert_eq!(CleanMarker::decode(&b), Some(m));
        for i in 0..b.len() {
            let mut c = b.clone();
            c[i] ^= 1;
            assert_eq!(CleanMarker::decode(&c), None);
        }
    }
}
