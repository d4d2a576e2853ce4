//! How a Wharf [`Message`] travels as a Pub/Sub message: the payload as
//! `data`, the key as the ordering key, headers and Wharf's own fields as
//! attributes — and back.
//!
//! Pure functions, no I/O, so the mapping is unit-tested without a server.

use std::collections::HashMap;
use std::str::FromStr;

use base64::Engine;
use bytes::Bytes;
use gcloud_googleapis::pubsub::v1::PubsubMessage;
use wharf_core::{Error, Limits, Message, MessageId, NameKind, Timestamp};

/// The Wharf message id (Pub/Sub assigns its own `message_id` on publish).
pub(crate) const ID: &str = "wharf-id";
/// Publisher timestamp, ms since the Unix epoch.
pub(crate) const TIMESTAMP: &str = "wharf-timestamp-ms";
/// The key as standard base64 when it is not UTF-8 (the ordering key then
/// carries the same base64 text, so per-key order still holds).
pub(crate) const KEY_B64: &str = "wharf-key-b64";
/// Application header names in order, joined by `\n` (attributes are a map).
pub(crate) const ORDER: &str = "wharf-hdr-order";

/// Pub/Sub's limits on attributes (per message) and ordering keys.
pub(crate) const MAX_ATTRIBUTES: usize = 100;
pub(crate) const MAX_ATTRIBUTE_NAME_BYTES: usize = 256;
pub(crate) const MAX_ATTRIBUTE_VALUE_BYTES: usize = 1024;
pub(crate) const MAX_ORDERING_KEY_BYTES: usize = 1024;
/// Attributes this crate may add (id, timestamp, key, header order).
pub(crate) const INTERNAL_ATTRIBUTES: usize = 4;

fn is_internal(name: &str) -> bool {
    matches!(name, ID | TIMESTAMP | KEY_B64 | ORDER)
}

fn bad_header(name: &str, reason: &'static str) -> Error {
    Error::InvalidName {
        kind: NameKind::Header,
        name: name.to_owned(),
        reason,
    }
}

/// The Pub/Sub message for `msg`, after checking it against `limits` and
/// Pub/Sub's attribute rules.
///
/// # Errors
/// [`Error::MessageTooLarge`], [`Error::TooManyHeaders`]; [`Error::InvalidName`]
/// for a header name Pub/Sub cannot carry (empty, longer than 256 bytes,
/// starting with `goog`, containing a line feed, or one of this crate's own);
/// [`Error::InvalidArgument`] for a header value over 1024 bytes or a key
/// whose ordering key would be over 1024 bytes.
pub(crate) fn encode(msg: &Message, limits: &Limits) -> Result<PubsubMessage, Error> {
    let size = msg.size();
    if size > limits.max_message_bytes {
        return Err(Error::MessageTooLarge {
            size,
            max: limits.max_message_bytes,
        });
    }
    let count = msg.headers().len();
    if count > limits.max_headers {
        return Err(Error::TooManyHeaders {
            count,
            max: limits.max_headers,
        });
    }
    let mut attributes = HashMap::with_capacity(count + INTERNAL_ATTRIBUTES);
    attributes.insert(ID.to_owned(), msg.id().to_string());
    attributes.insert(
        TIMESTAMP.to_owned(),
        msg.timestamp().as_millis().to_string(),
    );
    let ordering_key = match msg.key() {
        None => String::new(),
        Some(key) => {
            let text = match std::str::from_utf8(key) {
                Ok(s) => s.to_owned(),
                Err(_) => {
                    let b64 = base64::engine::general_purpose::STANDARD.encode(key);
                    attributes.insert(KEY_B64.to_owned(), b64.clone());
                    b64
                }
            };
            if text.len() > MAX_ORDERING_KEY_BYTES {
                return Err(Error::InvalidArgument {
                    name: "key",
                    reason: format!(
                        "a Pub/Sub ordering key is at most {MAX_ORDERING_KEY_BYTES} bytes \
                         (this key takes {})",
                        text.len()
                    ),
                });
            }
            text
        }
    };
    if !msg.headers().is_empty() {
        let mut order = String::new();
        for (name, value) in msg.headers().iter() {
            if name.is_empty() {
                return Err(bad_header(name, "must not be empty"));
            }
            if name.len() > MAX_ATTRIBUTE_NAME_BYTES {
                return Err(bad_header(name, "longer than 256 bytes"));
            }
            if name.starts_with("goog") {
                return Err(bad_header(name, "names starting with `goog` are Pub/Sub's"));
            }
            if name.contains('\n') {
                return Err(bad_header(name, "must not contain a line feed"));
            }
            if is_internal(name) {
                return Err(bad_header(name, "reserved by the Pub/Sub adapter"));
            }
            if value.len() > MAX_ATTRIBUTE_VALUE_BYTES {
                return Err(Error::InvalidArgument {
                    name: "header value",
                    reason: format!(
                        "a Pub/Sub attribute value is at most {MAX_ATTRIBUTE_VALUE_BYTES} bytes \
                         ({name} has {})",
                        value.len()
                    ),
                });
            }
            attributes.insert(name.to_owned(), value.to_owned());
            if !order.is_empty() {
                order.push('\n');
            }
            order.push_str(name);
        }
        attributes.insert(ORDER.to_owned(), order);
    }
    Ok(PubsubMessage {
        data: msg.payload().clone(),
        attributes,
        ordering_key,
        ..Default::default()
    })
}

/// Rebuilds the Wharf message from a Pub/Sub message.
///
/// A message without `wharf-id` (published by another Pub/Sub client) gets
/// a fresh id, its ordering key as key, and its attributes as headers,
/// sorted by name.
pub(crate) fn decode(m: PubsubMessage) -> Message {
    let PubsubMessage {
        data,
        mut attributes,
        ordering_key,
        publish_time,
        ..
    } = m;
    let mut b = Message::builder().payload(data);
    if let Some(id) = attributes
        .remove(ID)
        .and_then(|v| MessageId::from_str(&v).ok())
    {
        b = b.id(id);
    }
    let ts = attributes
        .remove(TIMESTAMP)
        .and_then(|v| v.parse().ok())
        .or_else(|| {
            publish_time.and_then(|t| {
                let ms = t.seconds * 1000 + i64::from(t.nanos / 1_000_000);
                u64::try_from(ms).ok()
            })
        });
    if let Some(ts) = ts {
        b = b.timestamp(Timestamp::from_millis(ts));
    }
    if let Some(k) = attributes
        .remove(KEY_B64)
        .and_then(|v| base64::engine::general_purpose::STANDARD.decode(v).ok())
    {
        b = b.key(k);
    } else if !ordering_key.is_empty() {
        b = b.key(Bytes::from(ordering_key));
    }
    if let Some(order) = attributes.remove(ORDER) {
        for name in order.split('\n') {
            if let Some(v) = attributes.remove(name) {
                b = b.header(name, v);
            }
        }
    }
    // Attributes set by other Pub/Sub clients (not in the order list) follow, sorted.
    let mut rest: Vec<(String, String)> = attributes.into_iter().collect();
    rest.sort_unstable();
    for (n, v) in rest {
        b = b.header(n, v);
    }
    b.build()
}

/// Bytes a message takes on the wire beyond [`Message::size`]: the
/// attributes this crate adds. Used for the limits' headroom test.
#[cfg(test)]
pub(crate) fn overhead(p: &PubsubMessage, msg: &Message) -> usize {
    let all: usize = p
        .attributes
        .iter()
        .map(|(k, v)| k.len() + v.len())
        .sum::<usize>()
        + p.ordering_key.len()
        + p.data.len();
    all.saturating_sub(msg.size())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits::new(1024).with_header_limits(MAX_ATTRIBUTES - INTERNAL_ATTRIBUTES, usize::MAX)
    }

    fn round_trip(m: &Message) -> Message {
        decode(encode(m, &limits()).expect("encode"))
    }

    #[test]
    fn utf8_key_headers_and_timestamp_round_trip_in_order() {
        let m = Message::builder()
            .key("customer-7")
            .header("z-last", "1")
            .header("a-first", "two")
            .header("with:colon", "")
            .payload("p")
            .timestamp(Timestamp::from_millis(42))
            .build();
        let p = encode(&m, &limits()).expect("encode");
        assert_eq!(p.ordering_key, "customer-7");
        let back = decode(p);
        assert_eq!(back, m);
        let names: Vec<&str> = back.headers().iter().map(|(n, _)| n).collect();
        assert_eq!(names, ["z-last", "a-first", "with:colon"]);
    }

    #[test]
    fn binary_key_travels_as_base64_and_orders_by_it() {
        let m = Message::builder()
            .key(Bytes::from_static(b"\x00\xff\n"))
            .build();
        let p = encode(&m, &limits()).expect("encode");
        assert_eq!(p.ordering_key, "AP8K");
        assert_eq!(p.attributes.get(KEY_B64).map(String::as_str), Some("AP8K"));
        assert_eq!(round_trip(&m).key(), m.key());
    }

    #[test]
    fn a_foreign_message_gets_its_ordering_key_and_sorted_attributes() {
        let p = PubsubMessage {
            data: Bytes::from_static(b"x"),
            attributes: [("b", "2"), ("a", "1")]
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect(),
            ordering_key: "k".into(),
            ..Default::default()
        };
        let m = decode(p);
        assert_eq!(m.key().map(|k| k.as_ref()), Some(&b"k"[..]));
        let h: Vec<(&str, &str)> = m.headers().iter().collect();
        assert_eq!(h, [("a", "1"), ("b", "2")]);
    }

    #[test]
    fn names_and_values_pubsub_cannot_carry_are_refused() {
        let long = "n".repeat(MAX_ATTRIBUTE_NAME_BYTES + 1);
        for bad in ["", "goog-x", "a\nb", ID, ORDER, long.as_str()] {
            let m = Message::builder().header(bad, "v").build();
            let r = encode(&m, &limits());
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
        let m = Message::builder()
            .header("ok", "v".repeat(MAX_ATTRIBUTE_VALUE_BYTES + 1))
            .build();
        let r = encode(&m, &Limits::new(1 << 20));
        assert!(matches!(r, Err(Error::InvalidArgument { .. })), "{r:?}");
        let m = Message::builder()
            .key("k".repeat(MAX_ORDERING_KEY_BYTES + 1))
            .build();
        let r = encode(&m, &Limits::new(1 << 20));
        assert!(
            matches!(r, Err(Error::InvalidArgument { name: "key", .. })),
            "{r:?}"
        );
    }

    #[test]
    fn size_and_header_count_are_checked_against_the_limits() {
        let r = encode(&Message::new(vec![0u8; 1025]), &limits());
        assert!(
            matches!(
                r,
                Err(Error::MessageTooLarge {
                    size: 1025,
                    max: 1024
                })
            ),
            "{r:?}"
        );
        let mut b = Message::builder();
        for i in 0..=limits().max_headers {
            b = b.header(format!("h{i}"), "");
        }
        let r = encode(&b.build(), &limits());
        assert!(matches!(r, Err(Error::TooManyHeaders { .. })), "{r:?}");
    }

    #[test]
    fn the_added_attributes_fit_in_the_header_room() {
        let mut b = Message::builder()
            .key(Bytes::from(vec![0xffu8; 700]))
            .payload("x");
        for i in 0..limits().max_headers {
            b = b.header(format!("header-name-{i:03}"), "v");
        }
        let m = b.build();
        let p =
            encode(&m, &Limits::new(1 << 20).with_header_limits(96, usize::MAX)).expect("encode");
        assert!(
            overhead(&p, &m) <= crate::config::HEADER_ROOM,
            "{}",
            overhead(&p, &m)
        );
    }
}
