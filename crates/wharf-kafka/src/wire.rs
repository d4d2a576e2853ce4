//! How a Wharf [`Message`] is laid out as a Kafka record and read back.
//!
//! Record key = message key; value = payload; timestamp (CreateTime) =
//! message timestamp; headers: `wharf-id` (the id as UUID text) first, then
//! the message's headers in order. A record without a `wharf-id` header (from
//! a non-Wharf producer) gets a fresh id when read.

use bytes::Bytes;
use rdkafka::message::{BorrowedMessage, Header, Headers as _, OwnedHeaders};
use rdkafka::Message as _;
use wharf_core::{Headers, Message, MessageId, Timestamp};

/// The record header carrying the message id.
pub const ID_HEADER: &str = "wharf-id";

/// The record headers of `msg`.
pub(crate) fn headers(msg: &Message) -> OwnedHeaders {
    let id = msg.id().to_string();
    let mut h = OwnedHeaders::new_with_capacity(1 + msg.headers().len()).insert(Header {
        key: ID_HEADER,
        value: Some(id.as_bytes()),
    });
    for (n, v) in msg.headers().iter() {
        h = h.insert(Header {
            key: n,
            value: Some(v.as_bytes()),
        });
    }
    h
}

/// The message in a consumed record.
pub(crate) fn message(m: &BorrowedMessage<'_>) -> Message {
    let mut id = None;
    let mut headers = Headers::new();
    if let Some(hs) = m.headers() {
        for h in hs.iter() {
            if id.is_none() && h.key == ID_HEADER {
                // Parsed from the bytes: no UTF-8 pass and no copy.
                id = h.value.and_then(|v| MessageId::parse_ascii(v).ok());
                if id.is_some() {
                    continue;
                }
            }
            let value = h.value.map(String::from_utf8_lossy).unwrap_or_default();
            headers.insert(h.key, value.into_owned());
        }
    }
    let timestamp = m
        .timestamp()
        .to_millis()
        .and_then(|ms| u64::try_from(ms).ok())
        .map_or_else(Timestamp::now, Timestamp::from_millis);
    Message::from_parts(
        id.unwrap_or_default(),
        m.key().map(Bytes::copy_from_slice),
        headers,
        m.payload().map(Bytes::copy_from_slice).unwrap_or_default(),
        timestamp,
    )
}
