//! How a Wharf [`Message`] travels as an AMQP message: payload as the body,
//! id / priority / TTL in the basic properties, and key, ordered headers,
//! millisecond timestamp, topic and attempt count in `wharf-*` AMQP headers.

use bytes::Bytes;
use lapin::types::{AMQPValue, FieldArray, FieldTable, LongString, ShortString};
use lapin::BasicProperties;
use wharf_core::{Headers, Message, MessageId, Timestamp};

const H_HEADERS: &str = "wharf-h";
const H_KEY: &str = "wharf-key";
const H_TS: &str = "wharf-ts";
const H_TOPIC: &str = "wharf-topic";
const H_ATTEMPTS: &str = "wharf-attempts";
const H_FIRST_FAILURE: &str = "wharf-first-failure";
/// Header the delayed-publish headers exchange routes on: the delay bucket in ms.
pub(crate) const H_DELAY: &str = "wharf-delay";

/// Properties for publishing `m` on `topic`, after `attempts` earlier failed
/// deliveries (the first at `first_failure_ms`). `None` when the message has
/// already expired.
pub(crate) fn properties(
    topic: &str,
    m: &Message,
    attempts: u32,
    first_failure_ms: Option<u64>,
) -> Option<BasicProperties> {
    build(topic, m, attempts, first_failure_ms, None)
}

/// Properties for a delayed publish through the delay queue of `delay_ms`:
/// no `expiration` (a queue TTL and a message TTL would race, and RabbitMQ
/// drops `expiration` when it dead-letters anyway; consumers skip expired
/// messages instead).
pub(crate) fn delayed_properties(
    topic: &str,
    m: &Message,
    delay_ms: u64,
) -> Option<BasicProperties> {
    build(topic, m, 0, None, Some(delay_ms))
}

fn build(
    topic: &str,
    m: &Message,
    attempts: u32,
    first_failure_ms: Option<u64>,
    delay_ms: Option<u64>,
) -> Option<BasicProperties> {
    let mut t = FieldTable::default();
    if let Some(d) = delay_ms {
        t.insert(
            H_DELAY.into(),
            AMQPValue::LongString(LongString::from(d.to_string().into_bytes())),
        );
    }
    let pairs: Vec<AMQPValue> = m
        .headers()
        .iter()
        .flat_map(|(n, v)| {
            [
                AMQPValue::LongString(LongString::from(n.as_bytes().to_vec())),
                AMQPValue::LongString(LongString::from(v.as_bytes().to_vec())),
            ]
        })
        .collect();
    t.insert(
        H_HEADERS.into(),
        AMQPValue::FieldArray(FieldArray::from(pairs)),
    );
    if let Some(k) = m.key() {
        t.insert(
            H_KEY.into(),
            AMQPValue::LongString(LongString::from(k.to_vec())),
        );
    }
    t.insert(
        H_TS.into(),
        AMQPValue::LongLongInt(i64::try_from(m.timestamp().as_millis()).unwrap_or(i64::MAX)),
    );
    t.insert(
        H_TOPIC.into(),
        AMQPValue::LongString(LongString::from(topic.as_bytes().to_vec())),
    );
    t.insert(
        H_ATTEMPTS.into(),
        AMQPValue::LongInt(i32::try_from(attempts).unwrap_or(i32::MAX)),
    );
    if let Some(ff) = first_failure_ms {
        t.insert(
            H_FIRST_FAILURE.into(),
            AMQPValue::LongLongInt(i64::try_from(ff).unwrap_or(i64::MAX)),
        );
    }
    let mut p = BasicProperties::default()
        .with_delivery_mode(2)
        .with_message_id(ShortString::from(m.id().to_string()))
        .with_timestamp(m.timestamp().as_millis() / 1000)
        .with_priority(m.priority())
        .with_headers(t);
    if let Some(exp) = m.expires_at() {
        let now = Timestamp::now().as_millis();
        if exp.as_millis() <= now {
            return None;
        }
        if delay_ms.is_none() {
            p = p.with_expiration(ShortString::from((exp.as_millis() - now).to_string()));
        }
    }
    Some(p)
}

fn text(v: &AMQPValue) -> Option<String> {
    match v {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.as_str().to_owned()),
        _ => None,
    }
}

fn int(v: &AMQPValue) -> Option<i64> {
    match v {
        AMQPValue::LongLongInt(n) => Some(*n),
        AMQPValue::LongInt(n) => Some(i64::from(*n)),
        AMQPValue::ShortInt(n) => Some(i64::from(*n)),
        AMQPValue::LongUInt(n) => Some(i64::from(*n)),
        AMQPValue::Timestamp(n) => i64::try_from(*n).ok(),
        _ => None,
    }
}

/// What a received AMQP message carries for Wharf.
pub(crate) struct Decoded {
    pub topic: String,
    pub message: Message,
    /// Failed deliveries before this one (from our header).
    pub attempts: u32,
    /// When the first of them failed, ms since the epoch.
    pub first_failure_ms: Option<u64>,
}

/// Rebuilds the Wharf message; foreign messages (not published by Wharf) get
/// a fresh id unless their `message-id` is a UUID, and their AMQP headers as
/// text where they are strings.
pub(crate) fn decode(routing_key: &str, props: &BasicProperties, body: Vec<u8>) -> Decoded {
    let table = props.headers().clone().unwrap_or_default();
    let get = |k: &str| table.inner().get(k);
    let mut headers = Headers::new();
    match get(H_HEADERS) {
        Some(AMQPValue::FieldArray(a)) => {
            let mut it = a.as_slice().iter();
            while let (Some(n), Some(v)) = (it.next(), it.next()) {
                if let (Some(n), Some(v)) = (text(n), text(v)) {
                    headers.insert(n, v);
                }
            }
        }
        _ => {
            for (k, v) in &table {
                if let Some(v) = text(v) {
                    headers.insert(k.as_str(), v);
                }
            }
        }
    }
    let id = props
        .message_id()
        .as_ref()
        .and_then(|s| s.as_str().parse::<MessageId>().ok())
        .unwrap_or_default();
    let ts = get(H_TS)
        .and_then(int)
        .and_then(|n| u64::try_from(n).ok())
        .map(Timestamp::from_millis)
        .or_else(|| props.timestamp().map(|s| Timestamp::from_millis(s * 1000)))
        .unwrap_or_else(Timestamp::now);
    let mut b = Message::builder()
        .id(id)
        .headers(headers)
        .payload(Bytes::from(body))
        .timestamp(ts);
    if let Some(AMQPValue::LongString(k)) = get(H_KEY) {
        b = b.key(Bytes::from(k.as_bytes().to_vec()));
    }
    let topic = get(H_TOPIC)
        .and_then(text)
        .unwrap_or_else(|| routing_key.to_owned());
    let attempts = get(H_ATTEMPTS)
        .and_then(int)
        .and_then(|n| u32::try_from(n).ok())
        .unwrap_or(0);
    let first_failure_ms = get(H_FIRST_FAILURE)
        .and_then(int)
        .and_then(|n| u64::try_from(n).ok());
    Decoded {
        topic,
        message: b.build(),
        attempts,
        first_failure_ms,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn message_round_trips_through_properties_with_header_order() {
        let m = Message::builder()
            .key(&b"\x00k"[..])
            .header("z-first", "1")
            .header("a-second", "2")
            .payload("body")
            .priority(7)
            .ttl(Duration::from_secs(60))
            .build();
        let p = properties("a.b", &m, 3, Some(5)).expect("not expired");
        assert_eq!(p.priority(), &Some(7));
        assert!(p.expiration().is_some());
        let d = decode("ignored", &p, b"body".to_vec());
        assert_eq!(d.topic, "a.b");
        assert_eq!(d.attempts, 3);
        assert_eq!(d.first_failure_ms, Some(5));
        assert_eq!(d.message.id(), m.id());
        assert_eq!(d.message.key(), m.key());
        assert_eq!(d.message.timestamp(), m.timestamp());
        let names: Vec<&str> = d.message.headers().iter().map(|(n, _)| n).collect();
        assert_eq!(&names[..2], ["z-first", "a-second"]);
    }

    #[test]
    fn expired_message_gets_no_properties() {
        let m = Message::builder()
            .timestamp(Timestamp::from_millis(1))
            .ttl(Duration::from_millis(1))
            .build();
        assert!(properties("t", &m, 0, None).is_none());
    }
}
