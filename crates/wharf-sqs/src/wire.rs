//! A Wharf message ↔ an SQS message: the body and the message attributes
//! that carry the id, key, headers and timestamp. The crate docs' mapping
//! table says what goes where; this module is its only implementation.

use std::collections::HashMap;

use aws_sdk_sqs::primitives::Blob;
use aws_sdk_sqs::types::MessageAttributeValue;
use base64::Engine as _;
use bytes::Bytes;
use wharf_core::{Headers, Message, MessageId, Timestamp};

/// The message attribute holding the Wharf message id (UUID text).
pub const ID_ATTRIBUTE: &str = "wharf-id";
/// The message attribute holding the publisher's timestamp (Unix ms).
pub const TIMESTAMP_ATTRIBUTE: &str = "wharf-ts";
/// The message attribute holding the key (binary).
pub const KEY_ATTRIBUTE: &str = "wharf-key";
/// The message attribute holding every header, in order (binary, see the crate docs).
pub const HEADERS_ATTRIBUTE: &str = "wharf-headers";
/// The message attribute saying how the body encodes the payload: absent for
/// the payload itself (SQS text), `base64`, or `empty`.
pub const BODY_ATTRIBUTE: &str = "wharf-body";

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// A message ready for `SendMessage`: its body, attributes and encoded size
/// (as SQS counts it: body plus each attribute's name, type and value).
pub struct Encoded {
    pub body: String,
    pub attributes: HashMap<String, MessageAttributeValue>,
    pub size: usize,
}

fn attr(data_type: &str, string: Option<String>, binary: Option<Vec<u8>>) -> MessageAttributeValue {
    MessageAttributeValue::builder()
        .data_type(data_type)
        .set_string_value(string)
        .set_binary_value(binary.map(Blob::new))
        .build()
        .expect("data_type is set")
}

/// Whether `s` is text SQS accepts in a body as it is (XML 1.0 characters:
/// tab, line feed, U+0020–U+D7FF, U+E000–U+FFFD, U+10000 and above; a
/// carriage return is left out too, as XML readers turn CR LF into LF).
fn is_sqs_text(s: &str) -> bool {
    s.chars().all(|c| {
        matches!(c, '\t' | '\n' | '\u{20}'..='\u{D7FF}' | '\u{E000}'..='\u{FFFD}' | '\u{10000}'..)
    })
}

/// Encodes `m` for SQS.
pub fn encode(m: &Message) -> Encoded {
    let mut attributes = HashMap::with_capacity(5);
    let mut size = 0;
    let mut put = |name: &str, value: MessageAttributeValue, len: usize| {
        size += name.len() + value.data_type().len() + len;
        attributes.insert(name.to_owned(), value);
    };
    let id = m.id().to_string();
    put(
        ID_ATTRIBUTE,
        attr("String", Some(id.clone()), None),
        id.len(),
    );
    let ts = m.timestamp().as_millis().to_string();
    put(
        TIMESTAMP_ATTRIBUTE,
        attr("Number", Some(ts.clone()), None),
        ts.len(),
    );
    if let Some(k) = m.key() {
        put(
            KEY_ATTRIBUTE,
            attr("Binary", None, Some(k.to_vec())),
            k.len(),
        );
    }
    if !m.headers().is_empty() {
        let framed = frame_headers(m.headers());
        let len = framed.len();
        put(HEADERS_ATTRIBUTE, attr("Binary", None, Some(framed)), len);
    }
    let payload = m.payload();
    let body = match std::str::from_utf8(payload) {
        Ok("") => {
            put(
                BODY_ATTRIBUTE,
                attr("String", Some("empty".into()), None),
                5,
            );
            "-".to_owned()
        }
        Ok(text) if is_sqs_text(text) => text.to_owned(),
        _ => {
            put(
                BODY_ATTRIBUTE,
                attr("String", Some("base64".into()), None),
                6,
            );
            B64.encode(payload)
        }
    };
    size += body.len();
    Encoded {
        body,
        attributes,
        size,
    }
}

/// Headers as `u32 BE name length, name, u32 BE value length, value`, in order.
fn frame_headers(h: &Headers) -> Vec<u8> {
    let mut out = Vec::with_capacity(h.byte_len() + 8 * h.len());
    for (n, v) in h.iter() {
        for part in [n, v] {
            let len = u32::try_from(part.len()).expect("a header fits a message");
            out.extend_from_slice(&len.to_be_bytes());
            out.extend_from_slice(part.as_bytes());
        }
    }
    out
}

fn unframe_headers(mut b: &[u8]) -> Option<Headers> {
    let mut h = Headers::new();
    let take = |b: &mut &[u8]| -> Option<String> {
        let len = u32::from_be_bytes(b.get(..4)?.try_into().ok()?) as usize;
        let s = std::str::from_utf8(b.get(4..4 + len)?).ok()?.to_owned();
        *b = &b[4 + len..];
        Some(s)
    };
    while !b.is_empty() {
        let n = take(&mut b)?;
        let v = take(&mut b)?;
        h.insert(n, v);
    }
    Some(h)
}

/// Why a received SQS message could not be read as a Wharf message.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// A `wharf-*` attribute is there but not readable.
    #[error("message attribute {attribute} is malformed")]
    Malformed {
        /// The attribute's name.
        attribute: &'static str,
    },
}

/// Decodes a received message. A message without Wharf's attributes (sent
/// by another producer) gets a fresh id, the server's `sent_ms` as its
/// timestamp and its body as the payload.
pub fn decode(
    body: &str,
    attributes: Option<&HashMap<String, MessageAttributeValue>>,
    sent_ms: u64,
) -> Result<Message, DecodeError> {
    let empty = HashMap::new();
    let a = attributes.unwrap_or(&empty);
    let string = |name: &'static str| a.get(name).and_then(MessageAttributeValue::string_value);
    let binary = |name: &'static str| {
        a.get(name)
            .and_then(MessageAttributeValue::binary_value)
            .map(|b| b.as_ref().to_vec())
    };
    let malformed = |attribute| DecodeError::Malformed { attribute };
    let id = match string(ID_ATTRIBUTE) {
        Some(s) => s
            .parse::<MessageId>()
            .map_err(|_| malformed(ID_ATTRIBUTE))?,
        None => MessageId::new(),
    };
    let ts = match string(TIMESTAMP_ATTRIBUTE) {
        Some(s) => s
            .parse::<u64>()
            .map_err(|_| malformed(TIMESTAMP_ATTRIBUTE))?,
        None => sent_ms,
    };
    let key = binary(KEY_ATTRIBUTE).map(Bytes::from);
    let headers = match binary(HEADERS_ATTRIBUTE) {
        Some(b) => unframe_headers(&b).ok_or(malformed(HEADERS_ATTRIBUTE))?,
        None => Headers::new(),
    };
    let payload = match string(BODY_ATTRIBUTE) {
        None => Bytes::from(body.to_owned()),
        Some("empty") => Bytes::new(),
        Some("base64") => Bytes::from(B64.decode(body).map_err(|_| malformed(BODY_ATTRIBUTE))?),
        Some(_) => return Err(malformed(BODY_ATTRIBUTE)),
    };
    Ok(Message::from_parts(
        id,
        key,
        headers,
        payload,
        Timestamp::from_millis(ts),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(m: &Message) -> Message {
        let e = encode(m);
        decode(&e.body, Some(&e.attributes), 0).expect("decodes")
    }

    #[test]
    fn text_binary_and_empty_payloads_round_trip_with_key_and_ordered_headers() {
        for payload in [&b"{\"a\":1}"[..], b"\x00bin\xff", b"", b"cr\r\n"] {
            let m = Message::builder()
                .key(&b"k\x00"[..])
                .header("z", "1")
                .header("a", "")
                .payload(Bytes::copy_from_slice(payload))
                .build();
            let got = round_trip(&m);
            assert_eq!(got.id(), m.id());
            assert_eq!(got.key(), m.key());
            assert_eq!(got.payload(), m.payload());
            assert_eq!(got.timestamp(), m.timestamp());
            let names: Vec<_> = got.headers().iter().collect();
            assert_eq!(names, [("z", "1"), ("a", "")]);
        }
    }

    #[test]
    fn text_stays_readable_and_the_size_counts_what_sqs_counts() {
        let m = Message::new("hello");
        let e = encode(&m);
        assert_eq!(e.body, "hello");
        assert!(!e.attributes.contains_key(BODY_ATTRIBUTE));
        // body + "wharf-id" "String" <36> + "wharf-ts" "Number" <13 digits>
        let ts_len = m.timestamp().as_millis().to_string().len();
        assert_eq!(e.size, 5 + 8 + 6 + 36 + 8 + 6 + ts_len);
    }

    #[test]
    fn a_foreign_message_gets_a_fresh_id_and_the_sent_time() {
        let m = decode("plain", None, 42).expect("decodes");
        assert_eq!(m.payload().as_ref(), b"plain");
        assert_eq!(m.timestamp().as_millis(), 42);
    }
}
