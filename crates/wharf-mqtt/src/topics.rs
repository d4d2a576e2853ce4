//! Wharf names ↔ MQTT topic names and filters, and the topics the adapter
//! keeps for itself (redelivery). Pure functions, no I/O.
//!
//! `.` ↔ `/`, `*` ↔ `+`, and `>` ↔ `+/#` (MQTT's `#` alone would also match
//! the parent level: `orders/#` matches `orders`, which Wharf's `orders.>`
//! must not). Every valid Wharf name maps (segments are `[A-Za-z0-9_-]`);
//! an MQTT topic maps back only when each level is a valid Wharf segment.

use wharf_core::{name, Error, TopicPattern};

use crate::error::MqttError;

/// Where the adapter republishes a nacked message for its group: a root
/// level no Wharf topic can name (`~` is not in a Wharf segment). Not a
/// `$` topic, though no application wildcard would match one: Mosquitto
/// 2.0 does not deliver `$` topics to shared subscriptions.
pub(crate) const REDELIVERY_ROOT: &str = "wharf~redeliver";

/// The mapping of one backend: Wharf topics under an optional prefix.
#[derive(Debug, Clone)]
pub(crate) struct Topics {
    /// `<prefix>/`, or empty.
    root: String,
}

impl Topics {
    /// Topics under `prefix` (a Wharf topic name, mapped as one is).
    ///
    /// # Errors
    /// [`Error::InvalidName`] for a prefix that is not a valid topic name.
    pub(crate) fn new(prefix: Option<&str>) -> Result<Self, Error> {
        let root = match prefix {
            Some(p) => {
                name::validate_topic(p)?;
                format!("{}/", p.replace('.', "/"))
            }
            None => String::new(),
        };
        Ok(Topics { root })
    }

    /// The MQTT topic name of Wharf topic `topic`.
    ///
    /// # Errors
    /// [`Error::InvalidName`] when `topic` is not a valid Wharf topic (so
    /// `/`, `+`, `#`, a leading `$` and empty segments never reach MQTT).
    pub(crate) fn topic_name(&self, topic: &str) -> Result<String, Error> {
        name::validate_topic(topic)?;
        Ok(format!("{}{}", self.root, topic.replace('.', "/")))
    }

    /// The MQTT topic filter of a validated Wharf pattern.
    pub(crate) fn filter(&self, pattern: &TopicPattern) -> String {
        let mut out = self.root.clone();
        for (i, seg) in pattern.as_str().split('.').enumerate() {
            if i > 0 {
                out.push('/');
            }
            match seg {
                "*" => out.push('+'),
                ">" => out.push_str("+/#"),
                s => out.push_str(s),
            }
        }
        out
    }

    /// The Wharf topic of a received MQTT topic name.
    ///
    /// # Errors
    /// [`MqttError::UnmappableTopic`] for a topic outside the prefix, or
    /// with a level that is not a Wharf segment (empty, or containing `.`,
    /// a space, …) — published by a client that is not Wharf.
    pub(crate) fn wharf_topic(&self, mqtt: &str) -> Result<String, MqttError> {
        let unmappable = || MqttError::UnmappableTopic {
            topic: mqtt.to_owned(),
        };
        let rest = mqtt
            .strip_prefix(self.root.as_str())
            .ok_or_else(unmappable)?;
        if rest.contains('.') {
            return Err(unmappable());
        }
        let topic = rest.replace('/', ".");
        name::validate_topic(&topic).map_err(|_| unmappable())?;
        Ok(topic)
    }

    /// The redelivery topic of a consumer group on a pattern, or of one
    /// private subscription (`owner` = its client id): one topic per
    /// (prefix, group, pattern), so members of a group of the same name on
    /// another pattern never receive its redeliveries.
    pub(crate) fn redelivery_topic(&self, owner: &str, pattern: &str) -> String {
        let h = fnv1a(&[self.root.as_bytes(), owner.as_bytes(), pattern.as_bytes()]);
        format!("{REDELIVERY_ROOT}/{h:016x}")
    }
}

/// The shared-subscription filter of `filter` for `group`.
pub(crate) fn shared(group: &str, filter: &str) -> String {
    format!("$share/{group}/{filter}")
}

/// FNV-1a over the parts (a `0xff` byte between them): stable across
/// processes and Rust versions, which a durable session's topic must be.
pub(crate) fn fnv1a(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for (i, part) in parts.iter().enumerate() {
        if i > 0 {
            h ^= 0xff;
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        for &b in *part {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filter(t: &Topics, p: &str) -> String {
        t.filter(&TopicPattern::parse(p).expect("pattern"))
    }

    #[test]
    fn patterns_map_to_filters_and_gt_does_not_match_the_parent() {
        let t = Topics::new(None).expect("no prefix");
        assert_eq!(filter(&t, "orders.created"), "orders/created");
        assert_eq!(filter(&t, "orders.*.eu"), "orders/+/eu");
        assert_eq!(filter(&t, "orders.>"), "orders/+/#");
        assert_eq!(filter(&t, ">"), "+/#");
        let p = Topics::new(Some("bench.x")).expect("prefix");
        assert_eq!(filter(&p, "a.*"), "bench/x/a/+");
        assert_eq!(p.topic_name("a.b").expect("valid"), "bench/x/a/b");
    }

    #[test]
    fn names_that_cannot_map_are_refused_with_typed_errors() {
        let t = Topics::new(Some("ns")).expect("prefix");
        for bad in ["a/b", "a+b", "a#", "$SYS.x", "a..b", "", "a b"] {
            assert!(
                matches!(t.topic_name(bad), Err(Error::InvalidName { .. })),
                "{bad}"
            );
        }
        assert!(matches!(
            Topics::new(Some("$share")),
            Err(Error::InvalidName { .. })
        ));
        assert_eq!(t.wharf_topic("ns/orders/eu").expect("maps"), "orders.eu");
        for foreign in [
            "other/x",
            "ns/a.b",
            "ns/a//b",
            "ns/a b",
            "ns/",
            "wharf~redeliver/1",
        ] {
            assert!(
                matches!(
                    t.wharf_topic(foreign),
                    Err(MqttError::UnmappableTopic { .. })
                ),
                "{foreign}"
            );
        }
    }

    #[test]
    fn redelivery_topics_differ_per_group_and_pattern_and_are_stable() {
        let t = Topics::new(None).expect("no prefix");
        let a = t.redelivery_topic("g", "orders.*");
        assert_eq!(a, t.redelivery_topic("g", "orders.*"));
        assert_ne!(a, t.redelivery_topic("g", "orders.>"));
        assert_ne!(a, t.redelivery_topic("h", "orders.*"));
        assert!(a.starts_with("wharf~redeliver/"));
        // FNV-1a of "a": the published test vector.
        assert_eq!(fnv1a(&[b"a"]), 0xaf63_dc4c_8601_ec8c);
    }
}
