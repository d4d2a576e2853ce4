//! The embedded store's in-memory index, rebuilt from the log on open:
//! per stream the global position of each version and its metadata
//! history, per event type and per tag the positions of the events that
//! carry them, and per log record what it is. Everything is appended in
//! position order, so a cut-back of the log's unsynced tail is undone by
//! popping from the ends ([`Index::truncate`]).
//!
//! The writer decides expected versions and append conditions on the whole
//! index (including appends written but not yet synced: they are ahead of
//! any later append in the log, so if they are cut, so is it); readers see
//! only positions below the log's readable end.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use crate::embedded::codec::Kind;
use crate::types::{CurrentVersion, Query, StreamId, StreamMetadata};

const NO_TYPE: u32 = u32::MAX;
/// The stream of a hole: offsets of a void batch (a repaired log) that
/// hold no record.
const NO_STREAM: u32 = u32::MAX;

#[derive(Debug, Clone, Copy)]
struct Rec {
    stream: u32,
    type_id: u32,
    tags_at: u64,
    tags_len: u8,
    kind: Kind,
}

#[derive(Debug)]
pub(crate) struct StreamState {
    pub id: StreamId,
    system: bool,
    /// Global position of each version.
    positions: Vec<u64>,
    /// Metadata, soft-delete and tombstone records, in position order.
    records: Vec<(u64, Kind, StreamMetadata)>,
}

/// What readers (below `end`) or the writer (everything) see of a stream.
#[derive(Debug, Clone)]
pub(crate) struct StreamView {
    pub version: CurrentVersion,
    pub metadata: StreamMetadata,
    pub soft_deleted: bool,
    pub tombstoned: bool,
}

impl StreamState {
    fn count_below(&self, end: u64) -> usize {
        self.positions.partition_point(|&p| p < end)
    }

    /// The stream as of the records below `end`.
    pub fn view(&self, end: u64) -> StreamView {
        let n = self.count_below(end);
        let version = match n {
            0 => CurrentVersion::NoStream,
            n => CurrentVersion::Version(n as u64 - 1),
        };
        let last_event = n.checked_sub(1).map(|i| self.positions[i]);
        let recs = &self.records[..self.records.partition_point(|r| r.0 < end)];
        let tombstoned = recs.iter().any(|r| r.1 == Kind::Tombstone);
        let last_meta = recs
            .iter()
            .rev()
            .find(|r| matches!(r.1, Kind::Metadata | Kind::SoftDelete));
        let soft_deleted = recs
            .iter()
            .rev()
            .find(|r| r.1 == Kind::SoftDelete)
            .is_some_and(|r| last_event.is_none_or(|e| r.0 > e));
        StreamView {
            version,
            metadata: last_meta.map(|r| r.2).unwrap_or_default(),
            soft_deleted,
            tombstoned,
        }
    }

    /// Global positions of `versions` (all below the stream's count).
    pub fn positions_of(&self, versions: &[u64]) -> Vec<u64> {
        versions
            .iter()
            .map(|&v| self.positions[v as usize])
            .collect()
    }

    /// True when the stream has anything below `end` (listing).
    fn exists_below(&self, end: u64) -> bool {
        self.positions.first().is_some_and(|&p| p < end)
            || self.records.first().is_some_and(|r| r.0 < end)
    }
}

/// Why a record cannot go into the index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BadRecord {
    /// The stream name breaks the rules.
    StreamName,
    /// The version is not the stream's next.
    Version { expected: u64, found: u64 },
}

/// The index.
#[derive(Debug, Default)]
pub(crate) struct Index {
    /// Position of `records[0]`.
    start: u64,
    records: Vec<Rec>,
    tag_pool: Vec<u32>,
    streams: Vec<StreamState>,
    stream_ids: BTreeMap<Arc<str>, u32>,
    types: Vec<Vec<u64>>,
    type_ids: HashMap<Box<str>, u32>,
    tags: Vec<Vec<u64>>,
    tag_ids: HashMap<Box<str>, u32>,
}

impl Index {
    /// An empty index whose first record will be at `start`.
    pub fn new(start: u64) -> Index {
        Index {
            start,
            ..Index::default()
        }
    }

    /// The position the next record gets.
    pub fn next_position(&self) -> u64 {
        self.start + self.records.len() as u64
    }

    pub fn stream(&self, id: &str) -> Option<&StreamState> {
        self.stream_ids.get(id).map(|&i| &self.streams[i as usize])
    }

    /// The stream's number, interning it (validating the name) if new.
    fn intern_stream(&mut self, name: &str) -> Option<u32> {
        if let Some(&i) = self.stream_ids.get(name) {
            return Some(i);
        }
        let id = StreamId::new(name).ok()?;
        let i = u32::try_from(self.streams.len()).expect("fewer than 2^32 streams");
        self.streams.push(StreamState {
            id: id.clone(),
            system: id.is_system(),
            positions: Vec::new(),
            records: Vec::new(),
        });
        self.stream_ids.insert(Arc::from(name), i);
        Some(i)
    }

    fn intern(ids: &mut HashMap<Box<str>, u32>, lists: &mut Vec<Vec<u64>>, name: &str) -> u32 {
        if let Some(&i) = ids.get(name) {
            return i;
        }
        let i = u32::try_from(lists.len()).expect("fewer than 2^32 names");
        lists.push(Vec::new());
        ids.insert(name.into(), i);
        i
    }

    /// Records event `version` of `stream` at the next position.
    ///
    /// # Errors
    /// [`BadRecord`] when the name is not a valid stream name or `version`
    /// is not the stream's next one (a log whose versions do not line up:
    /// corrupt or written by something else).
    pub fn push_event<'t>(
        &mut self,
        stream: &str,
        version: u64,
        event_type: &str,
        tags: impl Iterator<Item = &'t str>,
    ) -> Result<(), BadRecord> {
        let pos = self.next_position();
        let s = self.intern_stream(stream).ok_or(BadRecord::StreamName)?;
        let st = &mut self.streams[s as usize];
        if st.positions.len() as u64 != version {
            return Err(BadRecord::Version {
                expected: st.positions.len() as u64,
                found: version,
            });
        }
        st.positions.push(pos);
        let t = Self::intern(&mut self.type_ids, &mut self.types, event_type);
        self.types[t as usize].push(pos);
        let tags_at = self.tag_pool.len() as u64;
        for tag in tags {
            let g = Self::intern(&mut self.tag_ids, &mut self.tags, tag);
            self.tags[g as usize].push(pos);
            self.tag_pool.push(g);
        }
        let tags_len = (self.tag_pool.len() as u64 - tags_at) as u8;
        self.records.push(Rec {
            stream: s,
            type_id: t,
            tags_at,
            tags_len,
            kind: Kind::Event,
        });
        Ok(())
    }

    /// Records a metadata, soft-delete or tombstone record of `stream` at
    /// the next position.
    ///
    /// # Errors
    /// [`BadRecord::StreamName`].
    pub fn push_stream_record(
        &mut self,
        stream: &str,
        kind: Kind,
        metadata: StreamMetadata,
    ) -> Result<(), BadRecord> {
        let pos = self.next_position();
        let s = self.intern_stream(stream).ok_or(BadRecord::StreamName)?;
        self.streams[s as usize].records.push((pos, kind, metadata));
        self.records.push(Rec {
            stream: s,
            type_id: NO_TYPE,
            tags_at: self.tag_pool.len() as u64,
            tags_len: 0,
            kind,
        });
        Ok(())
    }

    /// Leaves the positions up to `pos` empty (a void batch of a repaired
    /// log holds no records).
    pub fn skip_to(&mut self, pos: u64) {
        while self.next_position() < pos {
            self.records.push(Rec {
                stream: NO_STREAM,
                type_id: NO_TYPE,
                tags_at: self.tag_pool.len() as u64,
                tags_len: 0,
                kind: Kind::Metadata,
            });
        }
    }

    /// Forgets every record at or after `pos` (the log cut them).
    pub fn truncate(&mut self, pos: u64) {
        while self.next_position() > pos.max(self.start) {
            let r = self.records.pop().expect("next_position > start");
            let at = self.next_position();
            if r.stream == NO_STREAM {
                continue;
            }
            let st = &mut self.streams[r.stream as usize];
            if r.kind == Kind::Event {
                let p = st.positions.pop();
                debug_assert_eq!(p, Some(at));
                let p = self.types[r.type_id as usize].pop();
                debug_assert_eq!(p, Some(at));
                let tags = self.tag_pool.split_off(r.tags_at as usize);
                debug_assert_eq!(tags.len(), usize::from(r.tags_len));
                for g in tags {
                    let p = self.tags[g as usize].pop();
                    debug_assert_eq!(p, Some(at));
                }
            } else {
                let p = st.records.pop();
                debug_assert_eq!(p.map(|p| p.0), Some(at));
            }
        }
    }

    fn record(&self, pos: u64) -> Option<&Rec> {
        pos.checked_sub(self.start)
            .and_then(|i| self.records.get(i as usize))
    }

    fn rec_has_tag(&self, r: &Rec, tag: u32) -> bool {
        let at = r.tags_at as usize;
        self.tag_pool[at..at + usize::from(r.tags_len)].contains(&tag)
    }

    /// The latest position after `after` (`None`: anywhere) of an event of
    /// a user stream matching `query`, if any.
    pub fn find_conflict(&self, query: &Query, after: Option<u64>) -> Option<u64> {
        let above = |p: u64| after.is_none_or(|a| p > a);
        let mut found: Option<u64> = None;
        for item in query.items() {
            // Resolve names; a type or tag never seen matches nothing.
            let types: Option<Vec<u32>> = if item.types.is_empty() {
                None
            } else {
                let ids: Vec<u32> = item
                    .types
                    .iter()
                    .filter_map(|t| self.type_ids.get(t.as_str()).copied())
                    .collect();
                if ids.is_empty() {
                    continue;
                }
                Some(ids)
            };
            let mut tags = Vec::with_capacity(item.tags.len());
            let mut unknown_tag = false;
            for t in &item.tags {
                match self.tag_ids.get(t.as_str()) {
                    Some(&g) => tags.push(g),
                    None => unknown_tag = true,
                }
            }
            if unknown_tag {
                continue;
            }
            let matches = |pos: u64| -> bool {
                let Some(r) = self.record(pos) else {
                    return false;
                };
                r.kind == Kind::Event
                    && !self.streams[r.stream as usize].system
                    && types.as_ref().is_none_or(|ts| ts.contains(&r.type_id))
                    && tags.iter().all(|&g| self.rec_has_tag(r, g))
            };
            // Walk the shortest candidate list from its end down to `after`.
            let candidates: Option<&Vec<u64>> = tags
                .iter()
                .map(|&g| &self.tags[g as usize])
                .min_by_key(|l| l.len());
            let hit = match (candidates, &types) {
                (Some(list), _) => list
                    .iter()
                    .rev()
                    .take_while(|&&p| above(p))
                    .find(|&&p| matches(p))
                    .copied(),
                (None, Some(ts)) => ts
                    .iter()
                    .filter_map(|&t| {
                        self.types[t as usize]
                            .iter()
                            .rev()
                            .take_while(|&&p| above(p))
                            .find(|&&p| matches(p))
                            .copied()
                    })
                    .max(),
                (None, None) => (0..self.records.len())
                    .rev()
                    .map(|i| self.start + i as u64)
                    .take_while(|&p| above(p))
                    .find(|&p| matches(p)),
            };
            found = found.max(hit);
        }
        found
    }

    /// Stream names (with something below `end`) starting with `prefix`,
    /// after `after`, at most `max`.
    pub fn list_streams(
        &self,
        prefix: &str,
        after: Option<&str>,
        max: usize,
        end: u64,
    ) -> Vec<StreamId> {
        use std::ops::Bound;
        let lower: Bound<&str> = match after {
            Some(a) if a >= prefix => Bound::Excluded(a),
            _ => Bound::Included(prefix),
        };
        self.stream_ids
            .range::<str, _>((lower, Bound::Unbounded))
            .take_while(|(name, _)| name.starts_with(prefix))
            .map(|(_, &i)| &self.streams[i as usize])
            .filter(|s| s.exists_below(end))
            .take(max)
            .map(|s| s.id.clone())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::QueryItem;

    #[test]
    fn conflicts_are_found_by_type_tag_and_position() {
        let mut ix = Index::new(0);
        ix.push_event("a", 0, "Opened", ["course:1"].into_iter())
            .unwrap(); // 0
        ix.push_event("b", 0, "Joined", ["course:1", "student:9"].into_iter())
            .unwrap(); // 1
        ix.push_stream_record("b", Kind::Metadata, StreamMetadata::new())
            .unwrap(); // 2
        ix.push_event("c", 0, "Joined", ["course:2"].into_iter())
            .unwrap(); // 3
        let joined_c1 = Query::new().item(QueryItem {
            types: vec!["Joined".into()],
            tags: vec!["course:1".into()],
        });
        assert_eq!(ix.find_conflict(&joined_c1, None), Some(1));
        assert_eq!(ix.find_conflict(&joined_c1, Some(0)), Some(1));
        assert_eq!(ix.find_conflict(&joined_c1, Some(1)), None);
        assert_eq!(
            ix.find_conflict(&Query::types(["Joined"]), Some(1)),
            Some(3)
        );
        assert_eq!(ix.find_conflict(&Query::types(["Nope"]), None), None);
        assert_eq!(ix.find_conflict(&Query::tags(["nope"]), None), None);
        assert_eq!(ix.find_conflict(&Query::all(), Some(2)), Some(3));
        assert_eq!(ix.find_conflict(&Query::all(), Some(3)), None);
        assert_eq!(ix.find_conflict(&Query::new(), None), None);
    }

    #[test]
    fn truncate_undoes_records_in_order() {
        let mut ix = Index::new(0);
        ix.push_event("a", 0, "T", ["x"].into_iter()).unwrap();
        ix.push_event("a", 1, "T", ["x", "y"].into_iter()).unwrap();
        ix.push_stream_record("a", Kind::SoftDelete, StreamMetadata::new())
            .unwrap();
        ix.truncate(1);
        assert_eq!(ix.next_position(), 1);
        let v = ix.stream("a").unwrap().view(u64::MAX);
        assert_eq!(v.version, CurrentVersion::Version(0));
        assert!(!v.soft_deleted);
        assert_eq!(ix.find_conflict(&Query::tags(["y"]), None), None);
        assert_eq!(ix.find_conflict(&Query::tags(["x"]), None), Some(0));
        ix.push_event("a", 1, "T", [].into_iter()).unwrap();
        assert_eq!(
            ix.stream("a").unwrap().view(u64::MAX).version,
            CurrentVersion::Version(1)
        );
    }

    #[test]
    fn views_respect_the_readable_end_and_soft_delete() {
        let mut ix = Index::new(0);
        ix.push_event("a", 0, "T", [].into_iter()).unwrap(); // 0
        ix.push_stream_record(
            "a",
            Kind::SoftDelete,
            StreamMetadata::new().with_truncate_before(1),
        )
        .unwrap(); // 1
        assert!(ix.stream("a").unwrap().view(2).soft_deleted);
        assert!(!ix.stream("a").unwrap().view(1).soft_deleted);
        ix.push_event("a", 1, "T", [].into_iter()).unwrap(); // 2
        let v = ix.stream("a").unwrap().view(3);
        assert!(!v.soft_deleted);
        assert_eq!(v.metadata.truncate_before, Some(1));
        assert_eq!(
            ix.push_event("a", 5, "T", [].into_iter()),
            Err(BadRecord::Version {
                expected: 2,
                found: 5
            })
        );
    }

    #[test]
    fn listing_by_prefix_and_cursor() {
        let mut ix = Index::new(0);
        for s in ["a-1", "a-2", "b-1", "a-3"] {
            ix.push_event(s, 0, "T", [].into_iter()).unwrap();
        }
        let names = |v: Vec<StreamId>| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            names(ix.list_streams("a-", None, 10, 9)),
            ["a-1", "a-2", "a-3"]
        );
        assert_eq!(names(ix.list_streams("a-", Some("a-1"), 1, 9)), ["a-2"]);
        assert_eq!(names(ix.list_streams("", None, 10, 2)), ["a-1", "a-2"]);
    }
}
