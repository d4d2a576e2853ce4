//! How the embedded store lays an event (or a stream metadata record) into
//! one `wharf-log` record: the key is the stream name, the first header
//! (`\0e`) is a binary envelope (kind, id, stream version, schema version,
//! type, tags), the other headers are the event's metadata pairs, the value
//! is the payload. `FORMAT.md` in this crate has the byte layout.

use wharf_log::batch::BatchBuilder;
use wharf_log::RecordRef;

use crate::types::{EventData, EventId, Position, RecordedEvent, StreamId, StreamMetadata};

/// Name of the envelope header; a metadata name never starts with `\0`
/// (control characters are refused), so it cannot collide.
pub(crate) const ENVELOPE: &[u8] = b"\0e";
const FORMAT: u8 = 1;

/// What a log record is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Event = 0,
    Metadata = 1,
    SoftDelete = 2,
    Tombstone = 3,
}

impl Kind {
    fn from_u8(b: u8) -> Option<Kind> {
        Some(match b {
            0 => Kind::Event,
            1 => Kind::Metadata,
            2 => Kind::SoftDelete,
            3 => Kind::Tombstone,
            _ => return None,
        })
    }
}

/// Why a record could not be decoded.
#[derive(Debug, thiserror::Error)]
#[error("event record at position {position} is malformed: {what}")]
pub(crate) struct Malformed {
    pub position: u64,
    pub what: &'static str,
}

struct Headers<'a> {
    envelope: Option<&'a [u8]>,
    meta: std::slice::Iter<'a, (String, String)>,
}

impl<'a> Iterator for Headers<'a> {
    type Item = (&'a [u8], &'a [u8]);
    fn next(&mut self) -> Option<Self::Item> {
        if let Some(e) = self.envelope.take() {
            return Some((ENVELOPE, e));
        }
        self.meta.next().map(|(n, v)| (n.as_bytes(), v.as_bytes()))
    }
    fn size_hint(&self) -> (usize, Option<usize>) {
        let n = usize::from(self.envelope.is_some()) + self.meta.len();
        (n, Some(n))
    }
}

impl ExactSizeIterator for Headers<'_> {}

/// A bound on the encoded size of `e`, for `BatchBuilder::with_capacity`.
pub(crate) fn event_len_bound(stream: &StreamId, e: &EventData) -> usize {
    let envelope = 2 + 16 + 8 + 4 + 1 + e.event_type.len() + 1 + e.tags.len() + e.size();
    BatchBuilder::record_len_bound(
        stream.as_str().len(),
        e.payload.len(),
        1 + e.metadata.len(),
        envelope + ENVELOPE.len(),
    )
}

/// Appends event `e` of `stream` at `version` to `batch`; `scratch` is
/// reused for the envelope.
pub(crate) fn push_event(
    batch: &mut BatchBuilder,
    scratch: &mut Vec<u8>,
    stream: &StreamId,
    version: u64,
    timestamp_ms: i64,
    e: &EventData,
) {
    scratch.clear();
    scratch.push(FORMAT);
    scratch.push(Kind::Event as u8);
    scratch.extend_from_slice(&e.id.to_bytes());
    scratch.extend_from_slice(&version.to_le_bytes());
    scratch.extend_from_slice(&e.schema_version.to_le_bytes());
    // Names are at most 255 bytes and an event holds at most 255 tags
    // (validated), so one byte holds each length.
    scratch.push(e.event_type.len() as u8);
    scratch.extend_from_slice(e.event_type.as_bytes());
    scratch.push(e.tags.len() as u8);
    for t in &e.tags {
        scratch.push(t.len() as u8);
        scratch.extend_from_slice(t.as_bytes());
    }
    batch.push(
        timestamp_ms,
        Some(stream.as_str().as_bytes()),
        &e.payload,
        Headers {
            envelope: Some(scratch),
            meta: e.metadata.iter(),
        },
    );
}

#[derive(serde::Serialize, serde::Deserialize, Default)]
struct MetaJson {
    #[serde(skip_serializing_if = "Option::is_none")]
    max_age_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_count: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    truncate_before: Option<u64>,
}

/// Appends a stream record (metadata, soft delete or tombstone).
pub(crate) fn push_stream_record(
    batch: &mut BatchBuilder,
    stream: &StreamId,
    kind: Kind,
    timestamp_ms: i64,
    metadata: &StreamMetadata,
) {
    let json = MetaJson {
        max_age_ms: metadata
            .max_age
            .map(|a| u64::try_from(a.as_millis()).unwrap_or(u64::MAX)),
        max_count: metadata.max_count,
        truncate_before: metadata.truncate_before,
    };
    let value = serde_json::to_vec(&json).expect("a struct of integers always serializes");
    let envelope = [FORMAT, kind as u8];
    batch.push(
        timestamp_ms,
        Some(stream.as_str().as_bytes()),
        &value,
        Headers {
            envelope: Some(&envelope),
            meta: [].iter(),
        },
    );
}

/// The parts of a record the index needs, borrowed from the read buffer.
pub(crate) struct Envelope<'a> {
    pub kind: Kind,
    pub stream: &'a str,
    pub version: u64,
    pub schema_version: u32,
    pub event_type: &'a str,
    tags: &'a [u8],
    tag_count: u8,
}

impl<'a> Envelope<'a> {
    /// The tags, borrowed.
    pub fn tags(&self) -> TagIter<'a> {
        TagIter {
            rest: self.tags,
            left: self.tag_count,
        }
    }
}

/// The tags of an [`Envelope`].
pub(crate) struct TagIter<'a> {
    rest: &'a [u8],
    left: u8,
}

impl<'a> Iterator for TagIter<'a> {
    type Item = &'a str;
    fn next(&mut self) -> Option<&'a str> {
        if self.left == 0 {
            return None;
        }
        self.left -= 1;
        let (&len, rest) = self.rest.split_first()?;
        let (t, rest) = rest.split_at_checked(usize::from(len))?;
        self.rest = rest;
        std::str::from_utf8(t).ok()
    }
}

fn malformed(position: u64, what: &'static str) -> Malformed {
    Malformed { position, what }
}

fn take<'a>(buf: &mut &'a [u8], n: usize, position: u64) -> Result<&'a [u8], Malformed> {
    let (a, b) = buf
        .split_at_checked(n)
        .ok_or_else(|| malformed(position, "envelope too short"))?;
    *buf = b;
    Ok(a)
}

fn utf8<'a>(b: &'a [u8], position: u64, what: &'static str) -> Result<&'a str, Malformed> {
    std::str::from_utf8(b).map_err(|_| malformed(position, what))
}

/// Decodes the envelope (and the stream from the key) of `r`.
pub(crate) fn envelope<'a>(r: &RecordRef<'a>) -> Result<(Envelope<'a>, &'a [u8]), Malformed> {
    let pos = r.offset;
    let key = r.key().ok_or_else(|| malformed(pos, "no stream key"))?;
    let stream = utf8(key, pos, "stream name is not UTF-8")?;
    let (name, value) = r
        .headers()
        .next()
        .ok_or_else(|| malformed(pos, "no envelope"))?;
    if name != ENVELOPE {
        return Err(malformed(pos, "first header is not the envelope"));
    }
    let mut b = value;
    let head = take(&mut b, 2, pos)?;
    if head[0] != FORMAT {
        return Err(malformed(pos, "unknown envelope format"));
    }
    let kind = Kind::from_u8(head[1]).ok_or_else(|| malformed(pos, "unknown record kind"))?;
    if kind != Kind::Event {
        return Ok((
            Envelope {
                kind,
                stream,
                version: 0,
                schema_version: 0,
                event_type: "",
                tags: &[],
                tag_count: 0,
            },
            &[],
        ));
    }
    let id = take(&mut b, 16, pos)?;
    let version = u64::from_le_bytes(take(&mut b, 8, pos)?.try_into().expect("8 bytes"));
    let schema_version = u32::from_le_bytes(take(&mut b, 4, pos)?.try_into().expect("4 bytes"));
    let tlen = take(&mut b, 1, pos)?[0];
    let event_type = utf8(
        take(&mut b, usize::from(tlen), pos)?,
        pos,
        "type is not UTF-8",
    )?;
    let tag_count = take(&mut b, 1, pos)?[0];
    let tags = b;
    // Check the tags decode now, so later iteration cannot stop short.
    let env = Envelope {
        kind,
        stream,
        version,
        schema_version,
        event_type,
        tags,
        tag_count,
    };
    if env.tags().count() != usize::from(tag_count) {
        return Err(malformed(pos, "tags cut short or not UTF-8"));
    }
    Ok((env, id))
}

/// Decodes a whole event record; `stream` is the already-known stream id
/// (shared, so a read of one stream allocates its name once).
pub(crate) fn decode_event(
    r: &RecordRef<'_>,
    stream: Option<&StreamId>,
) -> Result<RecordedEvent, Malformed> {
    let (env, id) = envelope(r)?;
    decode_event_with(r, &env, id, stream)
}

/// [`decode_event`] for a record whose envelope was decoded already.
pub(crate) fn decode_event_with(
    r: &RecordRef<'_>,
    env: &Envelope<'_>,
    id: &[u8],
    stream: Option<&StreamId>,
) -> Result<RecordedEvent, Malformed> {
    let pos = r.offset;
    let stream = match stream {
        Some(s) if s.as_str() == env.stream => s.clone(),
        _ => StreamId::new(env.stream).map_err(|_| malformed(pos, "invalid stream name"))?,
    };
    let id: [u8; 16] = id.try_into().map_err(|_| malformed(pos, "bad id"))?;
    let mut metadata = Vec::new();
    if r.header_count() > 1 {
        metadata.reserve_exact(r.header_count() - 1);
        for (n, v) in r.headers().skip(1) {
            metadata.push((
                utf8(n, pos, "metadata name is not UTF-8")?.to_owned(),
                utf8(v, pos, "metadata value is not UTF-8")?.to_owned(),
            ));
        }
    }
    let data = EventData {
        id: EventId::from_bytes(id),
        event_type: env.event_type.to_owned(),
        schema_version: env.schema_version,
        tags: env.tags().map(str::to_owned).collect(),
        metadata,
        payload: r.value_bytes(),
    };
    Ok(RecordedEvent::new(
        stream,
        env.version,
        Position(pos),
        r.timestamp_ms,
        data,
    ))
}

/// Decodes the metadata carried by a stream record.
pub(crate) fn decode_metadata(r: &RecordRef<'_>) -> Result<StreamMetadata, Malformed> {
    let m: MetaJson = serde_json::from_slice(r.value())
        .map_err(|_| malformed(r.offset, "stream metadata is not valid JSON"))?;
    let mut out = StreamMetadata::new();
    out.max_age = m.max_age_ms.map(std::time::Duration::from_millis);
    out.max_count = m.max_count;
    out.truncate_before = m.truncate_before;
    Ok(out)
}
