//! How a Wharf [`Message`] travels as an AMQP message: payload as the body,
//! id / priority / TTL in the basic properties, and key, ordered headers,
//! millisecond timestamp, topic and attempt count in `wharf-*` AMQP headers.

use std::sync::Arc;

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

/// Properties for publishing `m` on `topic` with routing key `routed_as`,
/// after `attempts` earlier failed deliveries (the first at
/// `first_failure_ms`). `None` when the message has already expired.
///
/// `wharf-topic` is sent only when the routing key is not the topic (a
/// copy sent straight to a queue), and `wharf-attempts` only when not 0:
/// a reader takes the routing key and 0 for a missing one (as every
/// version has), and each header costs the broker and the consumer's
/// frame parser on every message.
pub(crate) fn properties(
    topic: &str,
    routed_as: &str,
    m: &Message,
    attempts: u32,
    first_failure_ms: Option<u64>,
) -> Option<BasicProperties> {
    build(topic, routed_as, m, attempts, first_failure_ms, None)
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
    // Routed by the topic: the delay queue dead-letters it with the
    // routing key it came with.
    build(topic, topic, m, 0, None, Some(delay_ms))
}

fn build(
    topic: &str,
    routed_as: &str,
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
    if let Some(k) = m.key() {
        t.insert(
            H_KEY.into(),
            AMQPValue::LongString(LongString::from(k.to_vec())),
        );
    }
    if !m.timestamp_is_in_id() {
        t.insert(
            H_TS.into(),
            AMQPValue::LongLongInt(i64::try_from(m.timestamp().as_millis()).unwrap_or(i64::MAX)),
        );
    }
    // Sent straight to a queue (the default exchange routes by the queue's
    // name): the topic travels in the `type` property, which the reader of
    // that queue takes as the topic (see [`decode`]), rather than in a header
    // table. RabbitMQ delivers a message with a header table markedly slower:
    // a group's queue drained at 0.62 of a bare client when each message
    // carried `wharf-topic`, at 0.89-1.08 without. Longer than a short
    // string holds, it goes in `wharf-topic`.
    let topic_as_type = routed_as != topic && topic.len() <= usize::from(u8::MAX);
    if routed_as != topic && !topic_as_type {
        t.insert(
            H_TOPIC.into(),
            AMQPValue::LongString(LongString::from(topic.as_bytes().to_vec())),
        );
    }
    if attempts > 0 {
        t.insert(
            H_ATTEMPTS.into(),
            AMQPValue::LongInt(i32::try_from(attempts).unwrap_or(i32::MAX)),
        );
    }
    if let Some(ff) = first_failure_ms {
        t.insert(
            H_FIRST_FAILURE.into(),
            AMQPValue::LongLongInt(i64::try_from(ff).unwrap_or(i64::MAX)),
        );
    }
    // An empty `wharf-h` is left out when nothing else in the table is a
    // string: readers of every version then take the message as they would
    // with it (no headers; the id from `message_id`), and an empty table is
    // not sent at all. With a string in the table, `wharf-h` is what keeps
    // a reader from taking it for an application header.
    if !pairs.is_empty() || t.inner().values().any(|v| text_bytes(v).is_some()) {
        t.insert(
            H_HEADERS.into(),
            AMQPValue::FieldArray(FieldArray::from(pairs)),
        );
    }
    let mut p = BasicProperties::default()
        .with_delivery_mode(2)
        .with_message_id(ShortString::from(m.id().to_string()))
        .with_timestamp(m.timestamp().as_millis() / 1000)
        .with_priority(m.priority());
    if !t.inner().is_empty() {
        p = p.with_headers(t);
    }
    if topic_as_type {
        p = p.with_type(ShortString::from(topic.to_owned()));
    }
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
    text_bytes(v).map(|b| String::from_utf8_lossy(b).into_owned())
}

fn text_bytes(v: &AMQPValue) -> Option<&[u8]> {
    match v {
        AMQPValue::LongString(s) => Some(s.as_bytes()),
        AMQPValue::ShortString(s) => Some(s.as_str().as_bytes()),
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

/// Headers RabbitMQ adds when it dead-letters a message (`x-death`, and
/// since 3.8 `x-first-death-*` / `x-last-death-*` as strings): never the
/// publisher's. A plain Wharf message carries no `wharf-h` and reads as a
/// foreign one; a queue policy of the operator's that dead-letters it must
/// not turn these into application headers.
fn is_broker_dead_letter_header(name: &str) -> bool {
    name == "x-death" || name.starts_with("x-first-death-") || name.starts_with("x-last-death-")
}

/// The `wharf-*` AMQP headers of a received message, borrowed from its
/// properties (one pass over the table, nothing copied).
#[derive(Default)]
struct Fields<'a> {
    table: Option<&'a FieldTable>,
    headers: Option<&'a FieldArray>,
    key: Option<&'a LongString>,
    ts: Option<i64>,
    topic: Option<&'a [u8]>,
    attempts: Option<i64>,
    first_failure: Option<i64>,
}

impl<'a> Fields<'a> {
    fn of(props: &'a BasicProperties) -> Self {
        let mut f = Fields::default();
        let Some(table) = props.headers().as_ref() else {
            return f;
        };
        f.table = Some(table);
        for (k, v) in table {
            match k.as_str() {
                H_HEADERS => {
                    if let AMQPValue::FieldArray(a) = v {
                        f.headers = Some(a);
                    }
                }
                H_KEY => {
                    if let AMQPValue::LongString(k) = v {
                        f.key = Some(k);
                    }
                }
                H_TS => f.ts = int(v),
                H_TOPIC => f.topic = text_bytes(v),
                H_ATTEMPTS => f.attempts = int(v),
                H_FIRST_FAILURE => f.first_failure = int(v),
                _ => {}
            }
        }
        f
    }

    /// The message headers: our ordered name/value array, or a foreign
    /// message's string-valued AMQP headers.
    fn headers(&self) -> Headers {
        let mut headers = Headers::new();
        if let Some(a) = self.headers {
            let mut it = a.as_slice().iter();
            while let (Some(n), Some(v)) = (it.next(), it.next()) {
                if let (Some(n), Some(v)) = (text(n), text(v)) {
                    headers.insert(n, v);
                }
            }
        } else if let Some(table) = self.table {
            for (k, v) in table {
                if is_broker_dead_letter_header(k.as_str()) {
                    continue;
                }
                if let Some(v) = text(v) {
                    headers.insert(k.as_str(), v);
                }
            }
        }
        headers
    }

    fn key(&self) -> Option<Bytes> {
        self.key.map(|k| Bytes::copy_from_slice(k.as_bytes()))
    }
}

/// What a received AMQP message carries for Wharf.
pub(crate) struct Decoded {
    pub topic: Arc<str>,
    pub message: Message,
    /// Failed deliveries before this one (from our header).
    pub attempts: u32,
    /// When the first of them failed, ms since the epoch.
    pub first_failure_ms: Option<u64>,
}

/// Rebuilds the Wharf message; foreign messages (not published by Wharf) get
/// a fresh id unless their `message-id` is a UUID, and their AMQP headers as
/// text where they are strings. The topic is `last_topic` again when it
/// names the same one (a queue's deliveries mostly do), else a new `Arc`
/// that `last_topic` then keeps. `queue` is the queue it was read from: a
/// message sent straight to it has its topic in `type`.
pub(crate) fn decode(
    routing_key: &str,
    queue: &str,
    props: &BasicProperties,
    body: Bytes,
    last_topic: &mut Option<Arc<str>>,
) -> Decoded {
    let f = Fields::of(props);
    let id = props
        .message_id()
        .as_ref()
        .and_then(|s| MessageId::parse_ascii(s.as_str().as_bytes()).ok());
    let ts =
        f.ts.and_then(|n| u64::try_from(n).ok())
            .map(Timestamp::from_millis)
            .or_else(|| timestamp_of(id, *props.timestamp()))
            .unwrap_or_else(Timestamp::now);
    let id = id.unwrap_or_default();
    // Sent straight to the queue it is read from: its topic is `type`.
    let direct = || {
        (routing_key == queue)
            .then(|| props.kind().as_ref().map(|k| k.as_str().as_bytes()))
            .flatten()
    };
    let name = f.topic.or_else(direct).unwrap_or(routing_key.as_bytes());
    let topic = match last_topic {
        Some(t) if t.as_bytes() == name => t.clone(),
        _ => {
            let t: Arc<str> = String::from_utf8_lossy(name).into();
            *last_topic = Some(t.clone());
            t
        }
    };
    let attempts = f.attempts.and_then(|n| u32::try_from(n).ok()).unwrap_or(0);
    let first_failure_ms = f.first_failure.and_then(|n| u64::try_from(n).ok());
    Decoded {
        topic,
        message: Message::from_parts(id, f.key(), f.headers(), body, ts),
        attempts,
        first_failure_ms,
    }
}

/// The timestamp of a message without `wharf-ts`: the time inside its id
/// (a UUIDv7) when the `timestamp` property (seconds) agrees or is missing,
/// as Wharf leaves `wharf-ts` out when the id holds it; else that property.
fn timestamp_of(id: Option<MessageId>, secs: Option<u64>) -> Option<Timestamp> {
    match (id.and_then(MessageId::unix_millis), secs) {
        (Some(t), Some(s)) if t.as_millis() / 1000 == s => Some(t),
        (_, Some(s)) => Some(Timestamp::from_millis(s.saturating_mul(1000))),
        (t, None) => t,
    }
}

/// The message [`decode`] made of `props` and `body`, again: its id and
/// timestamp are given (a foreign message's were made up on delivery).
pub(crate) fn rebuild(
    props: &BasicProperties,
    body: Bytes,
    id: MessageId,
    ts: Timestamp,
) -> Message {
    let f = Fields::of(props);
    Message::from_parts(id, f.key(), f.headers(), body, ts)
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
        let p = properties("a.b", "a-queue", &m, 3, Some(5)).expect("not expired");
        assert_eq!(p.priority(), &Some(7));
        assert!(p.expiration().is_some());
        let d = decode(
            "a-queue",
            "a-queue",
            &p,
            Bytes::from_static(b"body"),
            &mut None,
        );
        assert_eq!(&*d.topic, "a.b");
        assert_eq!(d.attempts, 3);
        assert_eq!(d.first_failure_ms, Some(5));
        assert_eq!(d.message.id(), m.id());
        assert_eq!(d.message.key(), m.key());
        assert_eq!(d.message.timestamp(), m.timestamp());
        let names: Vec<&str> = d.message.headers().iter().map(|(n, _)| n).collect();
        assert_eq!(&names[..2], ["z-first", "a-second"]);
        let again = rebuild(
            &p,
            Bytes::from_static(b"body"),
            d.message.id(),
            m.timestamp(),
        );
        assert_eq!(again, d.message);
    }

    #[test]
    fn topic_is_shared_while_it_repeats() {
        let m = Message::new("x");
        let mut last = None;
        let p = properties("a.b", "q", &m, 0, None).expect("not expired");
        let first = decode("q", "q", &p, Bytes::new(), &mut last).topic;
        let second = decode("q", "q", &p, Bytes::new(), &mut last).topic;
        assert!(Arc::ptr_eq(&first, &second));
        let other = properties("a.c", "q", &m, 0, None).expect("not expired");
        assert_eq!(
            &*decode("q", "q", &other, Bytes::new(), &mut last).topic,
            "a.c"
        );
        // No `wharf-topic`: the routing key.
        let bare = BasicProperties::default();
        assert_eq!(
            &*decode("r.k", "q", &bare, Bytes::new(), &mut last).topic,
            "r.k"
        );
    }

    #[test]
    fn foreign_message_keeps_its_string_headers_and_uuid_id() {
        let id = MessageId::new();
        let mut t = FieldTable::default();
        t.insert(
            "trace".into(),
            AMQPValue::LongString(b"abc".to_vec().into()),
        );
        t.insert("n".into(), AMQPValue::LongInt(3));
        let p = BasicProperties::default()
            .with_message_id(ShortString::from(id.to_string()))
            .with_timestamp(7)
            .with_headers(t);
        let d = decode("orders", "q", &p, Bytes::from_static(b"x"), &mut None);
        assert_eq!(d.message.id(), id);
        assert_eq!(d.message.timestamp(), Timestamp::from_millis(7000));
        assert_eq!(d.message.headers().get("trace"), Some("abc"));
        assert!(!d.message.headers().contains("n"));
        assert_eq!(&*d.topic, "orders");
        assert_eq!(d.attempts, 0);
        assert_eq!(d.first_failure_ms, None);
        // Not a UUID: a fresh id each time, so the acker keeps the first.
        let p = BasicProperties::default().with_message_id(ShortString::from("m-1"));
        let a = decode("orders", "q", &p, Bytes::new(), &mut None)
            .message
            .id();
        let b = decode("orders", "q", &p, Bytes::new(), &mut None)
            .message
            .id();
        assert_ne!(a, b);
    }

    /// The names in the AMQP header table of `p` (which must have one).
    fn header_names(p: &BasicProperties) -> Vec<&str> {
        let table = p.headers().as_ref().expect("headers");
        table.inner().keys().map(|k| k.as_str()).collect()
    }

    #[test]
    fn a_plain_message_carries_no_header_table_and_its_time_in_its_id() {
        let m = Message::new("x");
        let p = properties("a.b", "a.b", &m, 0, None).expect("not expired");
        assert!(p.headers().is_none(), "{:?}", p.headers());
        let d = decode("a.b", "q", &p, Bytes::from_static(b"x"), &mut None);
        assert_eq!(d.message, m);
        assert_eq!(&*d.topic, "a.b");
        // As a reader before 2026-12-07 saw it: no `wharf-h`, so foreign;
        // the same id and headers, the time to the second from `timestamp`.
        assert_eq!(
            p.message_id().as_ref().map(|s| s.as_str().to_owned()),
            Some(m.id().to_string())
        );
        assert_eq!(*p.timestamp(), Some(m.timestamp().as_millis() / 1000));
        // As sent before: `wharf-h` and `wharf-ts` even when plain.
        let mut t = FieldTable::default();
        t.insert(
            H_HEADERS.into(),
            AMQPValue::FieldArray(FieldArray::from(vec![])),
        );
        t.insert(
            H_TS.into(),
            AMQPValue::LongLongInt(i64::try_from(m.timestamp().as_millis()).unwrap()),
        );
        let old = p.clone().with_headers(t);
        assert_eq!(
            decode("a.b", "q", &old, Bytes::from_static(b"x"), &mut None).message,
            m
        );
        // Anything a string in the table needs `wharf-h`, so that no reader
        // takes it for an application header; a back-dated message keeps
        // `wharf-ts`.
        let keyed = Message::builder().key("k").build();
        let long_topic = "t".repeat(300);
        let retried =
            properties(&long_topic, "wharf.q", &Message::new("y"), 2, Some(1)).expect("p");
        let dated = Message::builder()
            .timestamp(Timestamp::from_millis(5))
            .build();
        for (p, m) in [
            (
                properties("a.b", "a.b", &keyed, 0, None).expect("p"),
                keyed.clone(),
            ),
            (
                delayed_properties("a.b", &keyed, 100).expect("p"),
                keyed.clone(),
            ),
            (retried, Message::new("y")),
        ] {
            let names = header_names(&p);
            assert!(names.contains(&H_HEADERS), "{names:?} for {m:?}");
        }
        // A retry's table holds only numbers (its topic is in `type`).
        let y = Message::new("y");
        let p = properties("a.b", "wharf.q", &y, 2, Some(1)).expect("p");
        assert_eq!(header_names(&p), [H_ATTEMPTS, H_FIRST_FAILURE]);
        let d = decode(
            "wharf.q",
            "wharf.q",
            &p,
            Bytes::from_static(b"y"),
            &mut None,
        );
        assert_eq!((&*d.topic, d.attempts, d.message), ("a.b", 2, y));
        let p = properties("a.b", "a.b", &dated, 0, None).expect("p");
        assert_eq!(header_names(&p), [H_TS]);
        assert_eq!(
            decode("a.b", "q", &p, Bytes::new(), &mut None).message,
            dated
        );
    }

    #[test]
    fn headers_rabbitmq_adds_when_dead_lettering_are_not_application_headers() {
        let m = Message::new("x");
        let mut p = properties("a.b", "a.b", &m, 0, None).expect("not expired");
        let mut t = FieldTable::default();
        for (n, v) in [
            ("x-first-death-queue", "q"),
            ("x-first-death-reason", "expired"),
            ("x-last-death-exchange", "e"),
            ("trace", "abc"),
        ] {
            t.insert(
                n.into(),
                AMQPValue::LongString(v.as_bytes().to_vec().into()),
            );
        }
        t.insert(
            "x-death".into(),
            AMQPValue::FieldArray(FieldArray::from(vec![])),
        );
        p = p.with_headers(t);
        let d = decode("a.b", "q", &p, Bytes::new(), &mut None);
        let names: Vec<&str> = d.message.headers().iter().map(|(n, _)| n).collect();
        assert_eq!(names, ["trace"]);
        assert_eq!(d.message.id(), m.id());
        assert_eq!(d.message.timestamp(), m.timestamp());
    }

    #[test]
    fn expired_message_gets_no_properties() {
        let m = Message::builder()
            .timestamp(Timestamp::from_millis(1))
            .ttl(Duration::from_millis(1))
            .build();
        assert!(properties("t", "t", &m, 0, None).is_none());
    }

    #[test]
    fn a_first_attempt_routed_by_its_topic_carries_neither_topic_nor_attempts() {
        let m = Message::builder().header("h", "v").build();
        let p = properties("a.b", "a.b", &m, 0, None).expect("not expired");
        let names = header_names(&p);
        assert!(names.contains(&H_HEADERS), "{names:?}");
        assert!(!names.contains(&H_TOPIC), "{names:?}");
        assert!(!names.contains(&H_ATTEMPTS), "{names:?}");
        let d = decode("a.b", "q", &p, Bytes::new(), &mut None);
        assert_eq!(&*d.topic, "a.b");
        assert_eq!(d.attempts, 0);
        assert_eq!(d.message.id(), m.id());
    }

    #[test]
    fn a_message_sent_straight_to_a_queue_carries_its_topic_in_type() {
        let m = Message::new("x");
        let q = "wharf.ns.g.x";
        let p = properties("a.b", q, &m, 0, None).expect("not expired");
        assert!(p.headers().is_none(), "no header table: {:?}", p.headers());
        assert_eq!(p.kind().as_ref().map(ShortString::as_str), Some("a.b"));
        assert_eq!(&*decode(q, q, &p, Bytes::new(), &mut None).topic, "a.b");
        // Routed by an exchange, `type` is the sender's business.
        assert_eq!(&*decode("c.d", q, &p, Bytes::new(), &mut None).topic, "c.d");
        // A copy made before `type` carried it still reads.
        let mut t = FieldTable::default();
        t.insert(
            H_TOPIC.into(),
            AMQPValue::LongString(LongString::from(b"a.b".to_vec())),
        );
        let old = BasicProperties::default().with_headers(t);
        assert_eq!(&*decode(q, q, &old, Bytes::new(), &mut None).topic, "a.b");
        // Longer than a short string: in the header.
        let long = "t".repeat(300);
        let p = properties(&long, q, &m, 0, None).expect("not expired");
        assert!(p.kind().is_none());
        assert!(header_names(&p).contains(&H_TOPIC));
        assert_eq!(&*decode(q, q, &p, Bytes::new(), &mut None).topic, long);
    }
}
