//! How a Wharf [`Message`] travels as a NATS message, and how a JetStream
//! ack subject is read back into a stream sequence and delivery count.
//!
//! Pure functions, no I/O, so the mapping is unit-tested without a server.

use std::str::FromStr;

use async_nats::header::{HeaderMap, HeaderName, HeaderValue, NATS_MESSAGE_ID};
use base64::Engine;
use bytes::Bytes;
use wharf_core::{Error, Headers, Message, MessageId, NameKind, Timestamp};

/// Key as raw UTF-8.
pub(crate) const KEY: &str = "wharf-key";
/// Key as standard base64, when it is not printable UTF-8.
pub(crate) const KEY_B64: &str = "wharf-key-b64";
/// Publisher timestamp, ms since the Unix epoch; sent only when it is not
/// the time inside the message id (a UUIDv7), from which a reader takes a
/// missing one. Versions before 2026-12-07 always sent it and took the read
/// time for a missing one: upgrade their consumers before the producers.
pub(crate) const TIMESTAMP: &str = "wharf-timestamp-ms";
/// `Nats-Msg-Id` ([`NATS_MESSAGE_ID`]) as text, to match while reading headers.
const MSG_ID: &str = "Nats-Msg-Id";
/// Application header names in order, joined by `:` (never part of a name).
pub(crate) const ORDER: &str = "wharf-hdr-order";

fn is_internal(name: &str) -> bool {
    name == KEY
        || name == KEY_B64
        || name == TIMESTAMP
        || name == ORDER
        || name.eq_ignore_ascii_case(NATS_MESSAGE_ID.as_ref())
        || name.starts_with("Nats-")
}

fn bad_header(name: &str, reason: &'static str) -> Error {
    Error::InvalidName {
        kind: NameKind::Header,
        name: name.to_owned(),
        reason,
    }
}

fn value(name: &'static str, v: &str) -> Result<HeaderValue, Error> {
    HeaderValue::from_str(v).map_err(|_| Error::InvalidArgument {
        name,
        reason: "header values may not contain CR or LF".into(),
    })
}

/// NATS headers for `msg`, with `msg_id` as `Nats-Msg-Id`.
///
/// # Errors
/// [`Error::InvalidName`] for a header name NATS cannot carry (empty, not
/// printable ASCII, containing `:`, or starting with `Nats-`);
/// [`Error::InvalidArgument`] for a value containing CR or LF.
pub(crate) fn encode_headers(msg: &Message, msg_id: &str) -> Result<HeaderMap, Error> {
    let mut h = HeaderMap::new();
    h.insert(NATS_MESSAGE_ID, value("message id", msg_id)?);
    // Each header costs async-nats a parse and an allocation per message on
    // every consumer: the timestamp goes only when the id does not hold it.
    if !msg.timestamp_is_in_id() {
        h.insert(TIMESTAMP, msg.timestamp().as_millis().to_string().as_str());
    }
    if let Some(key) = msg.key() {
        match std::str::from_utf8(key) {
            Ok(s) if !s.chars().any(char::is_control) => h.insert(KEY, value("key", s)?),
            _ => h.insert(
                KEY_B64,
                base64::engine::general_purpose::STANDARD
                    .encode(key)
                    .as_str(),
            ),
        }
    }
    if msg.headers().is_empty() {
        return Ok(h);
    }
    let mut order = String::new();
    for (name, v) in msg.headers().iter() {
        if name.is_empty() {
            return Err(bad_header(name, "must not be empty"));
        }
        if is_internal(name) {
            return Err(bad_header(name, "reserved by the NATS adapter"));
        }
        let hn = HeaderName::from_str(name)
            .map_err(|_| bad_header(name, "must be printable ASCII without ':'"))?;
        h.insert(hn, value("header value", v)?);
        if !order.is_empty() {
            order.push(':');
        }
        order.push_str(name);
    }
    h.insert(ORDER, order.as_str());
    Ok(h)
}

/// Bytes the headers take on the wire (`NATS/1.0\r\n`, `name: value\r\n` each, final `\r\n`).
pub(crate) fn headers_wire_len(h: &HeaderMap) -> usize {
    let mut n = "NATS/1.0\r\n\r\n".len();
    for (name, values) in h.iter() {
        let name: &str = name.as_ref();
        for v in values {
            n += name.len() + 4 + v.as_str().len();
        }
    }
    n
}

/// Rebuilds the Wharf message from a NATS message's headers and payload.
///
/// A message without `Nats-Msg-Id` (published by a plain NATS client) gets a
/// fresh id; only the first 36 characters of the id are read, so dead-letter
/// copies (`<id>:dlq:<consumer>`) keep their original id.
///
/// One pass over the headers finds Wharf's own (no header name is built to
/// look them up); application headers follow `wharf-hdr-order`.
pub(crate) fn decode(headers: Option<&HeaderMap>, payload: Bytes) -> Message {
    let Some(h) = headers else {
        return Message::builder().payload(payload).build();
    };
    let (mut id, mut ts, mut key, mut key_b64, mut order) = (None, None, None, None, None);
    let mut others = 0usize;
    for (name, values) in h.iter() {
        let Some(v) = values.first().map(HeaderValue::as_str) else {
            continue;
        };
        match <HeaderName as AsRef<str>>::as_ref(name) {
            MSG_ID => id = Some(v),
            TIMESTAMP => ts = Some(v),
            KEY => key = Some(v),
            KEY_B64 => key_b64 = Some(v),
            ORDER => order = Some(v),
            n if is_internal(n) => {}
            _ => others += 1,
        }
    }
    let id = id
        .and_then(|v| v.get(..36))
        .and_then(|v| MessageId::from_str(v).ok());
    // No timestamp header: the timestamp is the time inside the (UUIDv7) id.
    let ts = ts
        .and_then(|v| v.parse().ok())
        .map(Timestamp::from_millis)
        .or_else(|| id.and_then(MessageId::unix_millis));
    let key = match (key, key_b64) {
        (Some(k), _) => Some(Bytes::copy_from_slice(k.as_bytes())),
        (None, Some(k)) => base64::engine::general_purpose::STANDARD
            .decode(k)
            .ok()
            .map(Bytes::from),
        (None, None) => None,
    };
    let mut app = Headers::new();
    if others > 0 {
        let get = |n: &str| {
            HeaderName::from_str(n)
                .ok()
                .and_then(|n| h.get(n))
                .map(HeaderValue::as_str)
        };
        let mut seen = Vec::new();
        if let Some(order) = order {
            for name in order.split(':') {
                if let Some(v) = get(name) {
                    app.insert(name, v);
                    seen.push(name);
                }
            }
        }
        // Headers added by other NATS clients (not in the order list) follow, sorted.
        let mut rest: Vec<(&str, &str)> = h
            .iter()
            .map(|(n, v)| (n.as_ref(), v))
            .filter(|(n, _)| !is_internal(n) && !seen.contains(n))
            .filter_map(|(n, v)| v.last().map(|v| (n, v.as_str())))
            .collect();
        rest.sort_unstable();
        for (n, v) in rest {
            app.insert(n, v);
        }
    }
    match (id, ts) {
        (Some(id), Some(ts)) => Message::from_parts(id, key, app, payload, ts),
        // Not published by Wharf: a fresh id and the current time stand in
        // for what is missing, as `Message::builder` gives them.
        (id, ts) => {
            let mut b = Message::builder().payload(payload).headers(app);
            if let Some(id) = id {
                b = b.id(id);
            }
            if let Some(ts) = ts {
                b = b.timestamp(ts);
            }
            if let Some(key) = key {
                b = b.key(key);
            }
            b.build()
        }
    }
}

/// What a JetStream ack subject tells about a delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct AckInfo {
    /// Delivery count, starting at 1.
    pub delivered: u32,
    /// Stream sequence of the message.
    pub stream_seq: u64,
}

/// Parses `$JS.ACK.<stream>.<consumer>.<delivered>.<sseq>.<cseq>.<ts>.<pending>`
/// (and the v2 form with domain and account hash in front, plus a token after).
pub(crate) fn parse_ack_subject(subject: &str) -> Option<AckInfo> {
    // The first 8 tokens and how many there are, without collecting them.
    let mut t = [""; 8];
    let mut n = 0;
    for token in subject.split('.') {
        if let Some(slot) = t.get_mut(n) {
            *slot = token;
        }
        n += 1;
    }
    if n < 9 || t[0] != "$JS" || t[1] != "ACK" {
        return None;
    }
    let base = if n == 9 { 4 } else { 6 };
    Some(AckInfo {
        delivered: t[base].parse().ok()?,
        stream_seq: t[base + 1].parse().ok()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(m: &Message) -> Message {
        let h = encode_headers(m, &m.id().to_string()).expect("encode");
        decode(Some(&h), m.payload().clone())
    }

    #[test]
    fn utf8_key_headers_and_timestamp_round_trip_in_order() {
        let m = Message::builder()
            .key("customer-7")
            .header("z-last", "1")
            .header("a-first", "two")
            .payload("p")
            .timestamp(Timestamp::from_millis(42))
            .build();
        let back = round_trip(&m);
        assert_eq!(back, m);
        let names: Vec<&str> = back.headers().iter().map(|(n, _)| n).collect();
        assert_eq!(names, ["z-last", "a-first"]);
    }

    #[test]
    fn a_timestamp_the_id_holds_is_not_sent_and_is_read_from_the_id() {
        let m = Message::builder().header("h", "v").payload("p").build();
        let h = encode_headers(&m, &m.id().to_string()).expect("encode");
        assert!(h.get(TIMESTAMP).is_none());
        assert_eq!(decode(Some(&h), m.payload().clone()), m);
        // As sent before: with the header, even when the id holds the same time.
        let mut old = h.clone();
        old.insert(TIMESTAMP, m.timestamp().as_millis().to_string().as_str());
        assert_eq!(decode(Some(&old), m.payload().clone()), m);
        // A back-dated message keeps its header.
        let dated = Message::builder()
            .timestamp(Timestamp::from_millis(42))
            .build();
        let h = encode_headers(&dated, &dated.id().to_string()).expect("encode");
        assert_eq!(h.get(TIMESTAMP).map(HeaderValue::as_str), Some("42"));
        // An id that holds no time (another client's UUIDv4) and no header:
        // stamped when read.
        let mut v4 = HeaderMap::new();
        v4.insert(NATS_MESSAGE_ID, "919108f7-52d1-4320-9bac-f847db4148a8");
        let before = Timestamp::now();
        let read = decode(Some(&v4), Bytes::new());
        assert_eq!(
            read.id().to_string(),
            "919108f7-52d1-4320-9bac-f847db4148a8"
        );
        assert!(read.timestamp() >= before && read.timestamp() <= Timestamp::now());
    }

    #[test]
    fn binary_key_travels_as_base64() {
        let m = Message::builder()
            .key(Bytes::from_static(b"\x00\xff\n"))
            .build();
        let h = encode_headers(&m, &m.id().to_string()).expect("encode");
        assert!(h.get(KEY).is_none());
        assert_eq!(h.get(KEY_B64).map(HeaderValue::as_str), Some("AP8K"));
        assert_eq!(round_trip(&m).key(), m.key());
    }

    #[test]
    fn header_names_nats_cannot_carry_are_invalid_names() {
        for bad in ["", "has space", "a:b", "Nats-Expected-Stream", ORDER] {
            let m = Message::builder().header(bad, "v").build();
            let r = encode_headers(&m, "id");
            assert!(
                matches!(
                    r,
                    Err(Error::InvalidName {
                        kind: NameKind::Header,
                        ..
                    })
                ),
                "{bad:?}: {r:?}"
            );
        }
        let m = Message::builder().header("ok", "line\nbreak").build();
        assert!(matches!(
            encode_headers(&m, "id"),
            Err(Error::InvalidArgument { .. })
        ));
    }

    #[test]
    fn dead_letter_msg_id_decodes_to_the_original_id() {
        let m = Message::new("x");
        let h = encode_headers(&m, &format!("{}:dlq:g", m.id())).expect("encode");
        assert_eq!(decode(Some(&h), Bytes::new()).id(), m.id());
    }

    #[test]
    fn the_msg_id_name_is_nats_own() {
        assert_eq!(MSG_ID, <HeaderName as AsRef<str>>::as_ref(&NATS_MESSAGE_ID));
    }

    #[test]
    fn messages_from_other_clients_keep_their_headers_and_get_an_id() {
        let mut h = HeaderMap::new();
        h.insert("b-other", "2");
        h.insert("a-other", "1");
        h.insert("Nats-Expected-Stream", "S");
        let m = decode(Some(&h), Bytes::from_static(b"x"));
        let names: Vec<(&str, &str)> = m.headers().iter().collect();
        assert_eq!(names, [("a-other", "1"), ("b-other", "2")]);
        assert_eq!(m.payload(), &Bytes::from_static(b"x"));
        assert_ne!(m.id(), decode(Some(&h), Bytes::new()).id(), "fresh ids");
        assert!(m.key().is_none());
    }

    #[test]
    fn ack_subjects_of_both_forms_are_parsed() {
        assert_eq!(
            parse_ack_subject("$JS.ACK.S.C.3.17.9.1700000000000000000.0"),
            Some(AckInfo {
                delivered: 3,
                stream_seq: 17
            })
        );
        assert_eq!(
            parse_ack_subject("$JS.ACK.dom.HASH.S.C.2.5.4.1700000000000000000.0.tok"),
            Some(AckInfo {
                delivered: 2,
                stream_seq: 5
            })
        );
        assert_eq!(parse_ack_subject("_INBOX.x"), None);
        assert_eq!(parse_ack_subject("$JS.ACK.S.C.3.17.9.1"), None, "too short");
        assert_eq!(
            parse_ack_subject("$JS.ACK.dom.HASH.S.C.2.5.4.1700000000000000000"),
            Some(AckInfo {
                delivered: 2,
                stream_seq: 5
            }),
            "v2 without the token after"
        );
    }

    #[test]
    fn wire_length_counts_every_header_line() {
        let mut h = HeaderMap::new();
        h.insert("ab", "cd");
        assert_eq!(headers_wire_len(&h), "NATS/1.0\r\nab: cd\r\n\r\n".len());
    }
}
