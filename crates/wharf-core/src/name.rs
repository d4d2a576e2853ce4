//! Topic, pattern and group names: the rules and the wildcard matcher.
//!
//! A topic is one or more dot-separated segments of `[A-Za-z0-9_-]`, at most
//! [`MAX_TOPIC_LEN`] bytes (`orders.created`, `billing.invoice-paid`). A
//! pattern may use `*` for exactly one segment and, as its last segment only,
//! `>` for one or more segments (`orders.*`, `orders.>`), as in NATS. Group
//! names are `[A-Za-z0-9_.-]`, at most [`MAX_GROUP_LEN`] bytes.

use std::fmt;

use crate::error::{Error, NameKind};

/// Longest topic name accepted, in bytes.
pub const MAX_TOPIC_LEN: usize = 249;
/// Longest group name accepted, in bytes.
pub const MAX_GROUP_LEN: usize = 128;
/// Prefix of the default dead-letter topic: `dlq.<topic>`.
pub const DEAD_LETTER_PREFIX: &str = "dlq.";

fn invalid(kind: NameKind, name: &str, reason: &'static str) -> Error {
    Error::InvalidName {
        kind,
        name: name.to_owned(),
        reason,
    }
}

fn is_segment_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'-'
}

fn check_segments(kind: NameKind, name: &str, wildcards: bool) -> Result<(), Error> {
    if name.is_empty() {
        return Err(invalid(kind, name, "must not be empty"));
    }
    if name.len() > MAX_TOPIC_LEN + DEAD_LETTER_PREFIX.len() {
        return Err(invalid(kind, name, "longer than 249 bytes"));
    }
    let count = name.split('.').count();
    for (i, seg) in name.split('.').enumerate() {
        if seg.is_empty() {
            return Err(invalid(
                kind,
                name,
                "empty segment (leading, trailing or double '.')",
            ));
        }
        if wildcards && seg == "*" {
            continue;
        }
        if wildcards && seg == ">" {
            if i + 1 != count {
                return Err(invalid(
                    kind,
                    name,
                    "'>' is only allowed as the last segment",
                ));
            }
            continue;
        }
        if !seg.bytes().all(is_segment_char) {
            return Err(invalid(
                kind,
                name,
                if wildcards {
                    "segments are [A-Za-z0-9_-], '*' or a final '>'"
                } else {
                    "segments may only contain [A-Za-z0-9_-]"
                },
            ));
        }
    }
    Ok(())
}

/// Checks a topic name.
///
/// # Errors
/// [`Error::InvalidName`] with the rule it breaks.
///
/// ```
/// assert!(wharf_core::name::validate_topic("orders.created").is_ok());
/// assert!(wharf_core::name::validate_topic("orders..created").is_err());
/// assert!(wharf_core::name::validate_topic("orders.*").is_err());
/// ```
pub fn validate_topic(name: &str) -> Result<(), Error> {
    if name.len() > MAX_TOPIC_LEN && !name.starts_with(DEAD_LETTER_PREFIX) {
        return Err(invalid(NameKind::Topic, name, "longer than 249 bytes"));
    }
    check_segments(NameKind::Topic, name, false)
}

/// Checks a consumer group name.
///
/// # Errors
/// [`Error::InvalidName`] with the rule it breaks.
pub fn validate_group(name: &str) -> Result<(), Error> {
    if name.is_empty() {
        return Err(invalid(NameKind::Group, name, "must not be empty"));
    }
    if name.len() > MAX_GROUP_LEN {
        return Err(invalid(NameKind::Group, name, "longer than 128 bytes"));
    }
    if !name.bytes().all(|b| is_segment_char(b) || b == b'.') {
        return Err(invalid(
            NameKind::Group,
            name,
            "may only contain [A-Za-z0-9_.-]",
        ));
    }
    Ok(())
}

/// The default dead-letter topic of `topic`: `dlq.<topic>`.
pub fn dead_letter_topic(topic: &str) -> String {
    format!("{DEAD_LETTER_PREFIX}{topic}")
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(String),
    One,
    Rest,
}

/// A parsed subscription pattern: a topic name, or one with `*` / `>` wildcards.
///
/// ```
/// use wharf_core::TopicPattern;
/// let p = TopicPattern::parse("orders.*")?;
/// assert!(p.matches("orders.created"));
/// assert!(!p.matches("orders.created.eu"));
/// let p = TopicPattern::parse("orders.>")?;
/// assert!(p.matches("orders.created.eu"));
/// assert!(!p.matches("orders"));
/// # Ok::<(), wharf_core::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicPattern {
    raw: String,
    segments: Vec<Segment>,
}

impl TopicPattern {
    /// Parses and validates a pattern.
    ///
    /// # Errors
    /// [`Error::InvalidName`] with kind [`NameKind::Pattern`].
    pub fn parse(pattern: &str) -> Result<Self, Error> {
        check_segments(NameKind::Pattern, pattern, true)?;
        // A pattern without wildcards names one topic: the topic rules
        // (its length limit too) apply, as subscribing may create it.
        if pattern.len() > MAX_TOPIC_LEN
            && !pattern.starts_with(DEAD_LETTER_PREFIX)
            && !pattern.split('.').any(|s| s == "*" || s == ">")
        {
            return Err(invalid(NameKind::Pattern, pattern, "longer than 249 bytes"));
        }
        let segments = pattern
            .split('.')
            .map(|s| match s {
                "*" => Segment::One,
                ">" => Segment::Rest,
                lit => Segment::Literal(lit.to_owned()),
            })
            .collect();
        Ok(TopicPattern {
            raw: pattern.to_owned(),
            segments,
        })
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.raw
    }

    /// Whether the pattern names exactly one topic (no wildcard).
    pub fn is_literal(&self) -> bool {
        self.segments
            .iter()
            .all(|s| matches!(s, Segment::Literal(_)))
    }

    /// Whether `topic` matches the pattern.
    pub fn matches(&self, topic: &str) -> bool {
        let mut parts = topic.split('.');
        for seg in &self.segments {
            match seg {
                Segment::Rest => return parts.next().is_some(),
                Segment::One => {
                    if parts.next().is_none() {
                        return false;
                    }
                }
                Segment::Literal(lit) => {
                    if parts.next() != Some(lit.as_str()) {
                        return false;
                    }
                }
            }
        }
        parts.next().is_none()
    }
}

impl fmt::Display for TopicPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.raw)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_rules_reject_bad_names_with_reason() {
        for bad in [
            "",
            ".a",
            "a.",
            "a..b",
            "a b",
            "a/b",
            "ä",
            "a.*",
            "a.>",
            &"x".repeat(250),
        ] {
            let err = validate_topic(bad).unwrap_err();
            assert!(
                matches!(
                    err,
                    Error::InvalidName {
                        kind: NameKind::Topic,
                        ..
                    }
                ),
                "{bad:?}: {err}"
            );
        }
        for good in ["a", "orders.created", "A-b_c.9", &"x".repeat(249)] {
            assert!(validate_topic(good).is_ok(), "{good}");
        }
        assert!(validate_topic(&dead_letter_topic(&"x".repeat(249))).is_ok());
    }

    #[test]
    fn group_rules_reject_bad_names() {
        assert!(validate_group("billing.v2-eu_1").is_ok());
        for bad in ["", "a b", "a*", &"g".repeat(129)] {
            assert!(validate_group(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn star_matches_exactly_one_segment() {
        let p = TopicPattern::parse("a.*.c").unwrap();
        assert!(p.matches("a.b.c"));
        assert!(!p.matches("a.c"));
        assert!(!p.matches("a.b.b.c"));
        assert!(!p.is_literal());
    }

    #[test]
    fn gt_matches_one_or_more_trailing_segments() {
        let p = TopicPattern::parse(">").unwrap();
        assert!(p.matches("a"));
        assert!(p.matches("a.b.c"));
        let p = TopicPattern::parse("a.>").unwrap();
        assert!(!p.matches("a"));
        assert!(p.matches("a.b"));
        assert!(!p.matches("b.a"));
    }

    #[test]
    fn literal_pattern_matches_only_itself() {
        let p = TopicPattern::parse("orders.created").unwrap();
        assert!(p.is_literal());
        assert!(p.matches("orders.created"));
        assert!(!p.matches("orders.created.x"));
        assert!(!p.matches("orders"));
    }

    #[test]
    fn a_literal_pattern_keeps_the_topic_length_limit() {
        let long = "a".repeat(MAX_TOPIC_LEN + 1);
        assert!(TopicPattern::parse(&long).is_err());
        assert!(TopicPattern::parse(&"a".repeat(MAX_TOPIC_LEN)).is_ok());
        assert!(TopicPattern::parse(&format!(
            "{DEAD_LETTER_PREFIX}{}",
            "a".repeat(MAX_TOPIC_LEN)
        ))
        .is_ok());
    }

    #[test]
    fn misplaced_wildcards_are_rejected() {
        for bad in ["a.>.b", "a*", "a.b*", ">x", "a..*"] {
            assert!(
                matches!(
                    TopicPattern::parse(bad),
                    Err(Error::InvalidName {
                        kind: NameKind::Pattern,
                        ..
                    })
                ),
                "{bad}"
            );
        }
    }
}
