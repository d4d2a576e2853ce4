//! How a Wharf [`Message`] travels as an MQTT 5 PUBLISH: the payload as
//! is, the id, key and timestamp as user properties of the adapter's own,
//! the headers as user properties in order (MQTT 5 keeps their order), a
//! TTL also as the Message Expiry Interval. Pure functions, no I/O.

use std::str::FromStr;

use base64::Engine;
use bytes::Bytes;
use rumqttc::v5::mqttbytes::v5::PublishProperties;
use wharf_core::{Error, Message, MessageId, NameKind, Timestamp};

/// The message id (UUID text).
pub(crate) const ID: &str = "wharf-id";
/// Key as raw UTF-8.
pub(crate) const KEY: &str = "wharf-key";
/// Key as standard base64, when it is not printable UTF-8.
pub(crate) const KEY_B64: &str = "wharf-key-b64";
/// Publisher timestamp, ms since the Unix epoch.
pub(crate) const TIMESTAMP: &str = "wharf-timestamp-ms";
/// On a redelivered copy: the attempt it is delivered as.
pub(crate) const ATTEMPT: &str = "wharf-attempt";
/// On a redelivered copy: the Wharf topic it was first published to.
pub(crate) const TOPIC: &str = "wharf-topic";

const INTERNAL: [&str; 6] = [ID, KEY, KEY_B64, TIMESTAMP, ATTEMPT, TOPIC];

/// The publish properties of `msg`; `extra` (attempt, topic of a
/// redelivered copy) come after the adapter's own.
///
/// # Errors
/// [`Error::InvalidName`] for a header name the adapter uses itself.
pub(crate) fn encode(msg: &Message, extra: &[(&str, String)]) -> Result<PublishProperties, Error> {
    let mut props = Vec::with_capacity(3 + extra.len() + msg.headers().len());
    props.push((ID.to_owned(), msg.id().to_string()));
    props.push((
        TIMESTAMP.to_owned(),
        msg.timestamp().as_millis().to_string(),
    ));
    if let Some(key) = msg.key() {
        match std::str::from_utf8(key) {
            Ok(s) if !s.chars().any(char::is_control) => props.push((KEY.to_owned(), s.to_owned())),
            _ => props.push((
                KEY_B64.to_owned(),
                base64::engine::general_purpose::STANDARD.encode(key),
            )),
        }
    }
    for (n, v) in extra {
        props.push(((*n).to_owned(), v.clone()));
    }
    for (name, v) in msg.headers().iter() {
        if INTERNAL.contains(&name) {
            return Err(Error::InvalidName {
                kind: NameKind::Header,
                name: name.to_owned(),
                reason: "reserved by the MQTT adapter",
            });
        }
        props.push((name.to_owned(), v.to_owned()));
    }
    Ok(PublishProperties {
        message_expiry_interval: msg.expires_at().map(expiry_interval),
        user_properties: props,
        ..PublishProperties::default()
    })
}

/// Seconds from now to `at`, rounded up, at least 1 (0 would mean "never").
fn expiry_interval(at: Timestamp) -> u32 {
    let left = at.as_millis().saturating_sub(Timestamp::now().as_millis());
    u32::try_from(left.div_ceil(1000))
        .unwrap_or(u32::MAX)
        .max(1)
}

/// What a received PUBLISH carried besides the message.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Extra {
    /// [`ATTEMPT`], on a redelivered copy.
    pub attempt: Option<u32>,
    /// [`TOPIC`], on a redelivered copy.
    pub topic: Option<String>,
}

/// The message a PUBLISH carries (one from a client that is not Wharf has
/// a fresh id and no key).
pub(crate) fn decode(props: Option<&PublishProperties>, payload: Bytes) -> (Message, Extra) {
    let mut b = Message::builder().payload(payload);
    let mut extra = Extra::default();
    for (n, v) in props.map(|p| p.user_properties.as_slice()).unwrap_or(&[]) {
        match n.as_str() {
            ID => {
                if let Ok(id) = MessageId::from_str(v) {
                    b = b.id(id);
                }
            }
            TIMESTAMP => {
                if let Ok(ms) = v.parse() {
                    b = b.timestamp(Timestamp::from_millis(ms));
                }
            }
            KEY => b = b.key(Bytes::copy_from_slice(v.as_bytes())),
            KEY_B64 => {
                if let Ok(k) = base64::engine::general_purpose::STANDARD.decode(v) {
                    b = b.key(k);
                }
            }
            ATTEMPT => extra.attempt = v.parse().ok(),
            TOPIC => extra.topic = Some(v.clone()),
            _ => b = b.header(n.as_str(), v.as_str()),
        }
    }
    (b.build(), extra)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn id_key_timestamp_and_headers_round_trip_in_order() {
        let m = Message::builder()
            .key("customer-7")
            .header("z-last", "1")
            .header("a-first", "two")
            .payload("p")
            .timestamp(Timestamp::from_millis(42))
            .build();
        let props = encode(&m, &[]).expect("encode");
        assert_eq!(props.message_expiry_interval, None);
        let (back, extra) = decode(Some(&props), m.payload().clone());
        assert_eq!(back, m);
        assert_eq!(extra, Extra::default());
        let names: Vec<&str> = back.headers().iter().map(|(n, _)| n).collect();
        assert_eq!(names, ["z-last", "a-first"]);
    }

    #[test]
    fn binary_key_travels_as_base64_and_extras_come_back() {
        let m = Message::builder()
            .key(Bytes::from_static(b"\x00\xff\n"))
            .build();
        let props = encode(&m, &[(ATTEMPT, "3".into()), (TOPIC, "a.b".into())]).expect("encode");
        assert!(props
            .user_properties
            .contains(&(KEY_B64.to_owned(), "AP8K".to_owned())));
        let (back, extra) = decode(Some(&props), Bytes::new());
        assert_eq!(back.key(), m.key());
        assert_eq!(extra.attempt, Some(3));
        assert_eq!(extra.topic.as_deref(), Some("a.b"));
    }

    #[test]
    fn a_ttl_becomes_the_message_expiry_interval_rounded_up() {
        let m = Message::builder().ttl(Duration::from_millis(1500)).build();
        let props = encode(&m, &[]).expect("encode");
        assert_eq!(props.message_expiry_interval, Some(2));
    }

    #[test]
    fn a_header_named_like_the_adapters_own_is_refused() {
        let m = Message::builder().header(ID, "x").build();
        assert!(matches!(
            encode(&m, &[]),
            Err(Error::InvalidName {
                kind: NameKind::Header,
                ..
            })
        ));
    }
}
