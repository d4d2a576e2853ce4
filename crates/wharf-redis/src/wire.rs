//! How a Wharf [`Message`] is laid out as a stream entry, how stream ids map
//! to `u64` offsets, and how replies are read back.
//!
//! Entry fields, in order: `id` (UUID text), `ts` (ms; only when the
//! timestamp is not the time inside the id, a UUIDv7, which is every message
//! made without an explicit timestamp), `k` (key, only when set), `h:<name>`
//! per header (in header order; stream entries keep field order), `p`
//! (payload). All binary safe.
//!
//! `ts` is left out when the id holds it because every field is two more
//! bulk strings for the consumer's RESP parser on every entry. A reader
//! takes a missing `ts` from a UUIDv7 id. Versions before 2026-12-07 always
//! wrote `ts` (still read) and took the read time for a missing one, so in
//! a fleet with such readers, upgrade consumers before producers.
//!
//! Offsets: stream id `<ms>-<seq>` is `ms << 22 | seq`. Ids made by `XADD *`
//! fit as long as one millisecond holds fewer than 4,194,304 entries, which
//! one Redis cannot write; the mapping is then exact and ordered.
//!
//! Pub/Sub carries one value per message, so there the same fields travel
//! as one frame: [`FRAME_MAGIC`], then per field a 4-byte big-endian name
//! length, the name, a 4-byte big-endian value length, the value.

use bytes::Bytes;
use redis::Value;
use wharf_core::{Headers, Message, MessageId, Result, Timestamp};

use crate::error::unexpected;

const SEQ_BITS: u32 = 22;
const SEQ_MASK: u64 = (1 << SEQ_BITS) - 1;

/// The XADD field/value arguments for `msg`.
pub(crate) fn fields(msg: &Message) -> Vec<(Vec<u8>, Bytes)> {
    let mut f = Vec::with_capacity(4 + msg.headers().len());
    f.push((b"id".to_vec(), Bytes::from(msg.id().to_string())));
    if !msg.timestamp_is_in_id() {
        f.push((
            b"ts".to_vec(),
            Bytes::from(msg.timestamp().as_millis().to_string()),
        ));
    }
    if let Some(k) = msg.key() {
        f.push((b"k".to_vec(), k.clone()));
    }
    for (n, v) in msg.headers().iter() {
        let mut name = b"h:".to_vec();
        name.extend_from_slice(n.as_bytes());
        f.push((name, Bytes::copy_from_slice(v.as_bytes())));
    }
    f.push((b"p".to_vec(), msg.payload().clone()));
    f
}

/// The first bytes of a framed message (a Pub/Sub payload).
pub(crate) const FRAME_MAGIC: &[u8] = b"wharf\x001";

/// `msg` as one Pub/Sub payload: its stream-entry [`fields`], framed.
pub(crate) fn frame(msg: &Message) -> Vec<u8> {
    let f = fields(msg);
    let len = f.iter().map(|(n, v)| 8 + n.len() + v.len()).sum::<usize>();
    let mut out = Vec::with_capacity(FRAME_MAGIC.len() + len);
    out.extend_from_slice(FRAME_MAGIC);
    for (n, v) in &f {
        for part in [n.as_slice(), v.as_ref()] {
            let n = u32::try_from(part.len()).expect("a message is at most MAX_MESSAGE_BYTES");
            out.extend_from_slice(&n.to_be_bytes());
            out.extend_from_slice(part);
        }
    }
    out
}

/// The message in a Pub/Sub payload made by [`frame`]; `None` for anything
/// else (a truncated frame, or a plain `PUBLISH` from another client).
pub(crate) fn unframe(payload: &[u8]) -> Option<Message> {
    let mut rest = payload.strip_prefix(FRAME_MAGIC)?;
    let mut flat = Vec::new();
    while !rest.is_empty() {
        let (len, tail) = rest.split_first_chunk::<4>()?;
        let len = usize::try_from(u32::from_be_bytes(*len)).ok()?;
        if tail.len() < len {
            return None;
        }
        let (part, tail) = tail.split_at(len);
        flat.push(Value::BulkString(part.to_vec()));
        rest = tail;
    }
    if flat.len() % 2 != 0 {
        return None;
    }
    let v = Value::Array(vec![Value::BulkString(b"0-0".to_vec()), Value::Array(flat)]);
    entry(v).ok().map(|e| e.message)
}

fn bytes_of(v: &Value) -> Option<&[u8]> {
    match v {
        Value::BulkString(b) => Some(b),
        Value::SimpleString(s) => Some(s.as_bytes()),
        _ => None,
    }
}

pub(crate) fn string_of(v: &Value) -> Option<String> {
    match v {
        Value::Int(i) => Some(i.to_string()),
        other => bytes_of(other).map(|b| String::from_utf8_lossy(b).into_owned()),
    }
}

pub(crate) fn int_of(v: &Value) -> Option<i64> {
    match v {
        Value::Int(i) => Some(*i),
        other => string_of(other).and_then(|s| s.parse().ok()),
    }
}

/// A stream entry: its id and the message it holds.
pub(crate) struct Entry {
    pub(crate) id: String,
    pub(crate) message: Message,
}

/// The bytes of a bulk or simple string, taken out of the reply.
fn into_bytes(v: Value) -> Option<Vec<u8>> {
    match v {
        Value::BulkString(b) => Some(b),
        Value::SimpleString(s) => Some(s.into_bytes()),
        _ => None,
    }
}

/// UTF-8 text, without a copy when it is valid.
fn into_string(b: Vec<u8>) -> String {
    String::from_utf8(b).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

/// Decodes `[id, [field, value, …]]` (see [`entry_of`]).
pub(crate) fn entry(v: Value) -> Result<Entry> {
    let Value::Array(parts) = v else {
        return Err(unexpected("stream entry", format!("{v:?}")));
    };
    let mut parts = parts.into_iter();
    let id = match parts.next() {
        Some(Value::Int(i)) => i.to_string(),
        Some(other) => into_bytes(other)
            .map(into_string)
            .ok_or_else(|| unexpected("stream entry", "no id"))?,
        None => return Err(unexpected("stream entry", "no id")),
    };
    let fields = match parts.next() {
        Some(Value::Array(f)) => f,
        Some(Value::Map(_)) | Some(_) | None => {
            return Err(unexpected("stream entry", format!("fields of {id}")))
        }
    };
    let mut pairs = Vec::with_capacity(fields.len() / 2);
    let mut fields = fields.iter();
    while let (Some(name), Some(value)) = (fields.next(), fields.next()) {
        if let (Some(name), Some(value)) = (bytes_of(name), bytes_of(value)) {
            pairs.push((name, value));
        }
    }
    Ok(entry_of(id, pairs))
}

/// The entry with stream id `id` and fields `pairs` (name, value), in
/// order; fields of other names are ignored. Only the key, payload and
/// header values are copied; no id or clock is made for an entry that
/// carries both.
pub(crate) fn entry_of(id: String, pairs: Vec<(&[u8], &[u8])>) -> Entry {
    let (mut msg_id, mut ts, mut key, mut payload) = (None, None, None, Bytes::new());
    let mut headers = Headers::new();
    for (name, value) in pairs {
        match name {
            b"id" => {
                if let Ok(parsed) = MessageId::parse_ascii(value) {
                    msg_id = Some(parsed);
                }
            }
            b"ts" => {
                if let Some(ms) = std::str::from_utf8(value).ok().and_then(|v| v.parse().ok()) {
                    ts = Some(Timestamp::from_millis(ms));
                }
            }
            b"k" => key = Some(Bytes::copy_from_slice(value)),
            b"p" => payload = Bytes::copy_from_slice(value),
            n if n.starts_with(b"h:") => {
                headers.insert(
                    String::from_utf8_lossy(&n[2..]),
                    String::from_utf8_lossy(value),
                );
            }
            _ => {}
        }
    }
    // No `ts`: the timestamp is the time inside the (UUIDv7) id.
    let ts = ts.or_else(|| msg_id.and_then(MessageId::unix_millis));
    let message = match (msg_id, ts) {
        (Some(msg_id), Some(ts)) => Message::from_parts(msg_id, key, headers, payload, ts),
        // Written by another client: a fresh id and the current time stand
        // in for what is missing, as `Message::builder` gives them.
        (msg_id, ts) => {
            let mut b = Message::builder().headers(headers).payload(payload);
            if let Some(msg_id) = msg_id {
                b = b.id(msg_id);
            }
            if let Some(ts) = ts {
                b = b.timestamp(ts);
            }
            if let Some(key) = key {
                b = b.key(key);
            }
            b.build()
        }
    };
    Entry { id, message }
}

/// Decodes the `[[entry, count], …]` that the claim scripts return.
pub(crate) fn claimed_reply(v: Value) -> Result<Vec<(Entry, u32)>> {
    let Value::Array(items) = v else {
        return Ok(Vec::new());
    };
    let mut out = Vec::with_capacity(items.len());
    for item in items {
        let Value::Array(pair) = item else {
            return Err(unexpected("claim script", format!("{item:?}")));
        };
        let count = pair.get(1).and_then(int_of);
        let (Some(e), Some(count)) = (pair.into_iter().next(), count) else {
            return Err(unexpected(
                "claim script",
                "an item without its entry or count",
            ));
        };
        out.push((entry(e)?, u32::try_from(count).unwrap_or(u32::MAX)));
    }
    Ok(out)
}

/// The offset of stream id `<ms>-<seq>`.
pub(crate) fn offset(id: &str) -> Option<u64> {
    let (ms, seq) = id.split_once('-')?;
    let ms: u64 = ms.parse().ok()?;
    let seq: u64 = seq.parse().ok()?;
    (seq <= SEQ_MASK && ms < (1 << (64 - SEQ_BITS))).then_some(ms << SEQ_BITS | seq)
}

/// The stream id just before `offset`, for reads that start *at* `offset`
/// (XREAD and XGROUP CREATE take the last id already seen).
pub(crate) fn id_before(offset: u64) -> String {
    let (ms, seq) = (offset >> SEQ_BITS, offset & SEQ_MASK);
    match (ms, seq) {
        (0, 0) => "0-0".into(),
        (ms, 0) => format!("{}-{}", ms - 1, u64::MAX),
        (ms, seq) => format!("{ms}-{}", seq - 1),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn as_value(f: &[(Vec<u8>, Bytes)], id: &str) -> Value {
        let mut flat = Vec::new();
        for (n, v) in f {
            flat.push(Value::BulkString(n.clone()));
            flat.push(Value::BulkString(v.to_vec()));
        }
        Value::Array(vec![
            Value::BulkString(id.as_bytes().to_vec()),
            Value::Array(flat),
        ])
    }

    /// A message with a binary key, headers out of name order and a binary payload.
    fn sample() -> Message {
        Message::builder()
            .key(Bytes::from_static(b"\x00bin"))
            .header("z", "1")
            .header("a", "2")
            .payload(Bytes::from_static(b"\xffdata"))
            .timestamp(Timestamp::from_millis(9))
            .build()
    }

    #[test]
    fn message_round_trips_through_entry_fields_in_header_order() {
        let m = sample();
        let e = entry(as_value(&fields(&m), "5-1")).expect("entry");
        assert_eq!(e.id, "5-1");
        assert_eq!(e.message, m);
        let names: Vec<&str> = e.message.headers().iter().map(|(n, _)| n).collect();
        assert_eq!(names, ["z", "a"]);
    }

    #[test]
    fn a_timestamp_the_id_holds_is_not_written_and_is_read_from_the_id() {
        let m = Message::builder()
            .key("k")
            .header("h", "v")
            .payload("p")
            .build();
        let f = fields(&m);
        let names: Vec<&[u8]> = f.iter().map(|(n, _)| n.as_slice()).collect();
        assert_eq!(names, [&b"id"[..], b"k", b"h:h", b"p"]);
        assert_eq!(entry(as_value(&f, "5-1")).expect("entry").message, m);
        // As written before: with `ts`, even when the id holds the same time.
        let mut old = f.clone();
        old.insert(
            1,
            (
                b"ts".to_vec(),
                Bytes::from(m.timestamp().as_millis().to_string()),
            ),
        );
        assert_eq!(entry(as_value(&old, "5-1")).expect("entry").message, m);
        // An id that holds no time (a UUIDv4 from another client) and no
        // `ts`: stamped when read.
        let v4 = vec![
            (
                b"id".to_vec(),
                Bytes::from_static(b"919108f7-52d1-4320-9bac-f847db4148a8"),
            ),
            (b"p".to_vec(), Bytes::from_static(b"body")),
        ];
        let before = Timestamp::now();
        let read = entry(as_value(&v4, "7-0")).expect("entry").message;
        assert_eq!(
            read.id().to_string(),
            "919108f7-52d1-4320-9bac-f847db4148a8"
        );
        assert!(read.timestamp() >= before && read.timestamp() <= Timestamp::now());
    }

    #[test]
    fn entries_written_by_other_clients_get_a_fresh_id_and_keep_the_rest() {
        let fields = vec![
            (b"p".to_vec(), Bytes::from_static(b"body")),
            (b"h:x".to_vec(), Bytes::from_static(b"1")),
            (b"ts".to_vec(), Bytes::from_static(b"not a number")),
        ];
        let a = entry(as_value(&fields, "7-0")).expect("entry").message;
        let b = entry(as_value(&fields, "7-0")).expect("entry").message;
        assert_ne!(a.id(), b.id(), "a fresh id each time");
        assert_eq!(a.timestamp(), a.id().created_at(), "stamped when read");
        assert_eq!(a.payload(), &Bytes::from_static(b"body"));
        assert_eq!(a.headers().get("x"), Some("1"));
        assert!(a.key().is_none());
    }

    #[test]
    fn message_round_trips_through_a_frame_and_other_payloads_are_not_frames() {
        let m = sample();
        let framed = frame(&m);
        let back = unframe(&framed).expect("a frame");
        assert_eq!(back, m);
        let names: Vec<&str> = back.headers().iter().map(|(n, _)| n).collect();
        assert_eq!(names, ["z", "a"]);
        assert_eq!(unframe(b"plain text"), None);
        assert_eq!(unframe(&framed[..framed.len() - 1]), None);
    }

    #[test]
    fn offsets_keep_stream_id_order_and_id_before_starts_at_the_offset() {
        let a = offset("1700000000000-0").expect("a");
        let b = offset("1700000000000-1").expect("b");
        let c = offset("1700000000001-0").expect("c");
        assert!(a < b && b < c);
        assert_eq!(id_before(b), "1700000000000-0");
        assert_eq!(id_before(c), format!("1700000000000-{}", u64::MAX));
        assert_eq!(id_before(0), "0-0");
        assert_eq!(offset("1-4194304"), None);
        assert_eq!(offset("nope"), None);
    }
}
