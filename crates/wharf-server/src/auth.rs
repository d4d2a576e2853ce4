//! Token auth: each configured token has publish / consume / admin rights on
//! topic patterns, read / append / admin rights on event store stream-name
//! prefixes, and optionally the metrics right (`/metrics`, which names
//! every topic). A missing or unknown token is `Unauthenticated` (401 /
//! `UNAUTHENTICATED`); a known token without the right is `Forbidden` (403 /
//! `PERMISSION_DENIED`). A presented token is compared with every configured
//! one in constant time (length included), so timing tells nothing about
//! which token, or how much of one, matched.

use serde::Deserialize;
use subtle::{ConditionallySelectable, ConstantTimeEq};
use wharf_core::TopicPattern;

use crate::config::ConfigError;

/// The field name in refusals for a message's `wharf-original-topic`
/// header: the one reserved header the server trusts to decide where to
/// write (a DLQ replay publishes the letter there), so a publish carrying
/// it needs the publish right on the topic it names.
pub(crate) const ORIGINAL_TOPIC_HEADER: &str = "header wharf-original-topic";

/// The field name in refusals for the original topic of a letter being
/// replayed.
pub(crate) const REPLAY_TARGET: &str = "the letter's wharf-original-topic";

/// A right a token can hold on a set of topics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Right {
    /// Publish to the topic.
    Publish,
    /// Subscribe to and settle deliveries of the topic.
    Consume,
    /// Create, delete and inspect topics, groups and dead letters.
    Admin,
    /// Read `/metrics` (every topic's name and counts). Held by tokens with
    /// `metrics = true` and by tokens with admin on every topic (`>`).
    Metrics,
    /// Read event store streams (stream reads and info, global reads and
    /// subscriptions, stream listings), by stream-name prefix.
    EventsRead,
    /// Append to event store streams, by stream-name prefix.
    EventsAppend,
    /// Set metadata of, delete and tombstone event store streams, by
    /// stream-name prefix.
    EventsAdmin,
}

impl Right {
    fn as_str(self) -> &'static str {
        match self {
            Right::Publish => "publish",
            Right::Consume => "consume",
            Right::Admin => "admin",
            Right::Metrics => "metrics",
            Right::EventsRead => "events_read",
            Right::EventsAppend => "events_append",
            Right::EventsAdmin => "events_admin",
        }
    }
}

/// One `[[tokens]]` entry of the config file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenConfig {
    /// The bearer token.
    pub token: String,
    /// A name for logs.
    #[serde(default)]
    pub name: Option<String>,
    /// Topic patterns this token may publish to.
    #[serde(default)]
    pub publish: Vec<String>,
    /// Topic patterns this token may consume from.
    #[serde(default)]
    pub consume: Vec<String>,
    /// Topic patterns this token may administer (`>` for everything).
    #[serde(default)]
    pub admin: Vec<String>,
    /// Whether this token may read `/metrics` (admin on `>` may too).
    #[serde(default)]
    pub metrics: bool,
    /// Event store stream-name prefixes this token may read (`*`: every
    /// stream, which global reads without a prefix and conditional appends
    /// need).
    #[serde(default)]
    pub events_read: Vec<String>,
    /// Stream-name prefixes this token may append to.
    #[serde(default)]
    pub events_append: Vec<String>,
    /// Stream-name prefixes whose metadata this token may set and which it
    /// may delete or tombstone.
    #[serde(default)]
    pub events_admin: Vec<String>,
}

/// What an event store right covers: every stream (`*`), or the streams
/// whose names start with a prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
enum StreamPrefix {
    All,
    Prefix(String),
}

/// The target of an event store check meaning "every stream" (a global
/// read without a prefix, a listing of all streams, an append condition).
pub(crate) const ALL_STREAMS: &str = "*";

impl StreamPrefix {
    fn parse(s: &str) -> StreamPrefix {
        if s == ALL_STREAMS || s.is_empty() {
            StreamPrefix::All
        } else {
            StreamPrefix::Prefix(s.to_owned())
        }
    }

    /// Whether this right covers `target`: a stream name, a stream-name
    /// prefix (every stream it can match), or [`ALL_STREAMS`]. A snapshot
    /// stream (`$snapshot-<name>`) is covered as `<name>` is.
    fn covers(&self, target: &str) -> bool {
        match self {
            StreamPrefix::All => true,
            StreamPrefix::Prefix(p) => {
                let target = target
                    .strip_prefix(wharf_eventstore::SNAPSHOT_PREFIX)
                    .unwrap_or(target);
                target != ALL_STREAMS && target.starts_with(p.as_str())
            }
        }
    }
}

struct Token {
    /// The configured name, for `whoami`.
    name: Option<String>,
    /// The token's bytes, zero-padded to [`Auth::width`].
    secret: Box<[u8]>,
    /// The token's real length.
    len: u64,
    publish: Vec<TopicPattern>,
    consume: Vec<TopicPattern>,
    admin: Vec<TopicPattern>,
    metrics: bool,
    events_read: Vec<StreamPrefix>,
    events_append: Vec<StreamPrefix>,
    events_admin: Vec<StreamPrefix>,
}

/// Why a request was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Denied {
    /// No token, or one that is not configured.
    #[error("missing or invalid token")]
    Unauthenticated,
    /// The token lacks the right.
    #[error("token has no {right} right on {topic:?}")]
    Forbidden {
        /// The right needed.
        right: &'static str,
        /// The topic or pattern.
        topic: String,
    },
    /// The token lacks the right on a topic that a field of the request
    /// names (a dead-letter target, a header the broker trusts), as opposed
    /// to the topic the request is addressed to.
    #[error("token has no {right} right on {topic:?}, named by {field}")]
    ForbiddenField {
        /// The right needed.
        right: &'static str,
        /// The topic the field names.
        topic: String,
        /// The field (e.g. `dead_letter_topic`, header `wharf-original-topic`).
        field: &'static str,
    },
}

/// A token's rights as configured (see [`Auth::rights`]): topic patterns
/// per right, stream-name prefixes (`*`: every stream) per event store
/// right, and whether it may read `/metrics`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Rights {
    pub(crate) name: Option<String>,
    pub(crate) publish: Vec<String>,
    pub(crate) consume: Vec<String>,
    pub(crate) admin: Vec<String>,
    pub(crate) metrics: bool,
    pub(crate) events_read: Vec<String>,
    pub(crate) events_append: Vec<String>,
    pub(crate) events_admin: Vec<String>,
}

impl Rights {
    /// Every right: a server without tokens lets any request through.
    pub(crate) fn everything() -> Rights {
        let all = || vec![">".to_owned()];
        let streams = || vec![ALL_STREAMS.to_owned()];
        Rights {
            name: None,
            publish: all(),
            consume: all(),
            admin: all(),
            metrics: true,
            events_read: streams(),
            events_append: streams(),
            events_admin: streams(),
        }
    }
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Token")
            .field("publish", &self.publish)
            .field("consume", &self.consume)
            .field("admin", &self.admin)
            .field("metrics", &self.metrics)
            .field("events_read", &self.events_read)
            .field("events_append", &self.events_append)
            .field("events_admin", &self.events_admin)
            .finish_non_exhaustive()
    }
}

/// The configured tokens.
#[derive(Debug)]
pub struct Auth {
    tokens: Vec<Token>,
    /// The longest configured token's length: every comparison covers this
    /// many bytes.
    width: usize,
}

impl Auth {
    /// Parses the token entries.
    ///
    /// # Errors
    /// [`ConfigError::Token`] for an empty token or an invalid pattern.
    pub fn new(entries: &[TokenConfig]) -> Result<Auth, ConfigError> {
        let mut tokens = Vec::new();
        let width = entries.iter().map(|e| e.token.len()).max().unwrap_or(0);
        for (index, e) in entries.iter().enumerate() {
            if e.token.is_empty() {
                return Err(ConfigError::Token {
                    index,
                    reason: "empty token".into(),
                });
            }
            let parse = |list: &[String]| {
                list.iter()
                    .map(|p| {
                        TopicPattern::parse(p).map_err(|err| ConfigError::Token {
                            index,
                            reason: err.to_string(),
                        })
                    })
                    .collect::<Result<Vec<_>, _>>()
            };
            let mut secret = vec![0u8; width].into_boxed_slice();
            secret[..e.token.len()].copy_from_slice(e.token.as_bytes());
            tokens.push(Token {
                name: e.name.clone(),
                secret,
                len: e.token.len() as u64,
                publish: parse(&e.publish)?,
                consume: parse(&e.consume)?,
                admin: parse(&e.admin)?,
                metrics: e.metrics,
                events_read: e
                    .events_read
                    .iter()
                    .map(|p| StreamPrefix::parse(p))
                    .collect(),
                events_append: e
                    .events_append
                    .iter()
                    .map(|p| StreamPrefix::parse(p))
                    .collect(),
                events_admin: e
                    .events_admin
                    .iter()
                    .map(|p| StreamPrefix::parse(p))
                    .collect(),
            });
        }
        Ok(Auth { tokens, width })
    }

    /// The configured token equal to `token`. Every configured token is
    /// compared over the same [`Auth::width`] bytes plus the length, with
    /// no early return, so the time taken depends only on the number of
    /// tokens, the width and the presented token's own length.
    fn find(&self, token: Option<&str>) -> Result<&Token, Denied> {
        let presented = token.ok_or(Denied::Unauthenticated)?.as_bytes();
        let mut padded = vec![0u8; self.width];
        let n = presented.len().min(self.width);
        padded[..n].copy_from_slice(&presented[..n]);
        let len = presented.len() as u64;
        let mut found = subtle::Choice::from(0);
        let mut index = 0u64;
        for (i, t) in self.tokens.iter().enumerate() {
            let eq = t.secret.ct_eq(&padded[..]) & t.len.ct_eq(&len);
            index.conditional_assign(&(i as u64), eq);
            found |= eq;
        }
        if bool::from(found) {
            self.tokens
                .get(usize::try_from(index).unwrap_or(usize::MAX))
                .ok_or(Denied::Unauthenticated)
        } else {
            Err(Denied::Unauthenticated)
        }
    }

    /// Checks that `token` is one of the configured tokens.
    ///
    /// # Errors
    /// `Denied::Unauthenticated`.
    pub fn authenticate(&self, token: Option<&str>) -> Result<(), Denied> {
        self.find(token).map(|_| ())
    }

    /// Checks that `token` holds `right` on `topic` (a topic or a pattern:
    /// a pattern needs a right pattern that covers all it can match).
    ///
    /// # Errors
    /// `Denied`.
    pub fn check(&self, token: Option<&str>, right: Right, topic: &str) -> Result<(), Denied> {
        let t = self.find(token)?;
        if let Some(prefixes) = t.stream_rights(right) {
            return if prefixes.iter().any(|p| p.covers(topic)) {
                Ok(())
            } else {
                Err(Denied::Forbidden {
                    right: right.as_str(),
                    topic: topic.to_owned(),
                })
            };
        }
        let list = match right {
            Right::Publish => &t.publish,
            Right::Consume => &t.consume,
            Right::Admin => &t.admin,
            _ => return Self::metrics_right(t),
        };
        if list.iter().any(|p| covers(p.as_str(), topic)) {
            Ok(())
        } else {
            Err(Denied::Forbidden {
                right: right.as_str(),
                topic: topic.to_owned(),
            })
        }
    }

    /// As [`Auth::check`] for a topic named by `field` of the request
    /// (every field that names a topic to write to is an authorization
    /// decision, not only the topic the request is addressed to).
    ///
    /// # Errors
    /// `Denied::Unauthenticated`, or `Denied::ForbiddenField` naming `field`.
    pub fn check_field(
        &self,
        token: Option<&str>,
        right: Right,
        topic: &str,
        field: &'static str,
    ) -> Result<(), Denied> {
        self.check(token, right, topic).map_err(|d| match d {
            Denied::Forbidden { right, topic } => Denied::ForbiddenField {
                right,
                topic,
                field,
            },
            other => other,
        })
    }

    /// Checks that `token` is valid and holds `right` on at least one pattern
    /// (for listings, which are then filtered with [`Auth::check`]).
    ///
    /// # Errors
    /// `Denied`.
    pub fn check_any(&self, token: Option<&str>, right: Right) -> Result<(), Denied> {
        let t = self.find(token)?;
        let empty = match right {
            Right::Publish => t.publish.is_empty(),
            Right::Consume => t.consume.is_empty(),
            Right::Admin => t.admin.is_empty(),
            Right::Metrics => return Self::metrics_right(t),
            _ => t
                .stream_rights(right)
                .is_none_or(<[StreamPrefix]>::is_empty),
        };
        if empty {
            Err(Denied::Forbidden {
                right: right.as_str(),
                topic: "*".into(),
            })
        } else {
            Ok(())
        }
    }

    /// The metrics right: `metrics = true`, or admin on every topic.
    /// The rights of the token presented, as configured: what `GET
    /// /v1/whoami` reports, so a client (the web console) shows only the
    /// actions the token may take. The server still checks every request.
    ///
    /// # Errors
    /// [`Denied::Unauthenticated`] for a missing or unknown token.
    pub(crate) fn rights(&self, token: Option<&str>) -> Result<Rights, Denied> {
        let t = self.find(token)?;
        let topics = |l: &[TopicPattern]| l.iter().map(|p| p.as_str().to_owned()).collect();
        let streams = |l: &[StreamPrefix]| {
            l.iter()
                .map(|p| match p {
                    StreamPrefix::All => ALL_STREAMS.to_owned(),
                    StreamPrefix::Prefix(s) => s.clone(),
                })
                .collect()
        };
        Ok(Rights {
            name: t.name.clone(),
            publish: topics(&t.publish),
            consume: topics(&t.consume),
            admin: topics(&t.admin),
            metrics: Self::metrics_right(t).is_ok(),
            events_read: streams(&t.events_read),
            events_append: streams(&t.events_append),
            events_admin: streams(&t.events_admin),
        })
    }

    fn metrics_right(t: &Token) -> Result<(), Denied> {
        if t.metrics || t.admin.iter().any(|p| covers(p.as_str(), ">")) {
            Ok(())
        } else {
            Err(Denied::Forbidden {
                right: Right::Metrics.as_str(),
                topic: ">".into(),
            })
        }
    }
}

impl Token {
    /// The stream-name prefixes of an event store right (`None` for a
    /// topic right).
    fn stream_rights(&self, right: Right) -> Option<&[StreamPrefix]> {
        match right {
            Right::EventsRead => Some(&self.events_read),
            Right::EventsAppend => Some(&self.events_append),
            Right::EventsAdmin => Some(&self.events_admin),
            _ => None,
        }
    }
}

/// Whether right pattern `right` matches every topic that `target` (a topic
/// or pattern) can match.
fn covers(right: &str, target: &str) -> bool {
    let mut t = target.split('.');
    for r in right.split('.') {
        match (r, t.next()) {
            (">", Some(_)) => return true,
            (_, None) => return false,
            ("*", Some(seg)) => {
                if seg == ">" {
                    return false;
                }
            }
            (lit, Some(seg)) => {
                if lit != seg {
                    return false;
                }
            }
        }
    }
    t.next().is_none()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth() -> Auth {
        Auth::new(&[TokenConfig {
            token: "tok".into(),
            publish: vec!["orders.>".into()],
            consume: vec!["orders.*".into()],
            admin: vec![],
            name: None,
            metrics: false,
            ..Default::default()
        }])
        .expect("valid")
    }

    #[test]
    fn rights_report_the_configured_patterns_and_derived_metrics_right() {
        let a = Auth::new(&[
            TokenConfig {
                token: "reader".into(),
                name: Some("ops-ro".into()),
                consume: vec!["orders.*".into()],
                events_read: vec!["order-".into()],
                ..Default::default()
            },
            TokenConfig {
                token: "root".into(),
                admin: vec![">".into()],
                events_admin: vec!["*".into()],
                ..Default::default()
            },
        ])
        .expect("valid");
        let r = a.rights(Some("reader")).expect("known token");
        assert_eq!(r.name.as_deref(), Some("ops-ro"));
        assert_eq!(r.consume, vec!["orders.*".to_owned()]);
        assert!(r.publish.is_empty() && r.admin.is_empty());
        assert!(!r.metrics);
        assert_eq!(r.events_read, vec!["order-".to_owned()]);
        let root = a.rights(Some("root")).expect("known token");
        assert!(root.metrics, "admin on > implies the metrics right");
        assert_eq!(root.events_admin, vec!["*".to_owned()]);
        assert_eq!(a.rights(Some("nope")), Err(Denied::Unauthenticated));
        assert_eq!(a.rights(None), Err(Denied::Unauthenticated));
    }

    #[test]
    fn missing_or_unknown_token_is_unauthenticated() {
        let a = auth();
        assert_eq!(
            a.check(None, Right::Publish, "orders.x"),
            Err(Denied::Unauthenticated)
        );
        assert_eq!(
            a.check(Some("nope"), Right::Publish, "orders.x"),
            Err(Denied::Unauthenticated)
        );
    }

    #[test]
    fn only_the_exact_token_authenticates_whatever_the_lengths() {
        let entry = |token: &str, publish: &str| TokenConfig {
            token: token.into(),
            publish: vec![publish.into()],
            ..Default::default()
        };
        let a = Auth::new(&[
            entry("long-token-one", "one.>"),
            entry("short", "two.>"),
            entry("long-token-three", "three.>"),
        ])
        .expect("valid");
        for wrong in [
            "",
            "s",
            "shor",
            "short ",
            "short\0",
            "long-token",
            "long-token-one\0",
            "long-token-threeX",
            "long-token-three-and-more-than-the-width",
        ] {
            assert_eq!(
                a.authenticate(Some(wrong)),
                Err(Denied::Unauthenticated),
                "{wrong:?}"
            );
        }
        // Each token finds its own rights, not a neighbour's.
        assert!(a
            .check(Some("long-token-one"), Right::Publish, "one.x")
            .is_ok());
        assert!(a.check(Some("short"), Right::Publish, "two.x").is_ok());
        assert!(a.check(Some("short"), Right::Publish, "one.x").is_err());
        assert!(a
            .check(Some("long-token-three"), Right::Publish, "three.x")
            .is_ok());
        assert!(a
            .check(Some("long-token-three"), Right::Publish, "one.x")
            .is_err());
    }

    #[test]
    fn metrics_need_the_flag_or_admin_on_everything() {
        let entry = |token: &str, admin: &[&str], metrics: bool| TokenConfig {
            token: token.into(),
            admin: admin.iter().map(|s| (*s).to_owned()).collect(),
            metrics,
            ..Default::default()
        };
        let a = Auth::new(&[
            entry("flag", &[], true),
            entry("root", &[">"], false),
            entry("some", &["orders.>"], false),
        ])
        .expect("valid");
        for (token, ok) in [("flag", true), ("root", true), ("some", false)] {
            assert_eq!(
                a.check_any(Some(token), Right::Metrics).is_ok(),
                ok,
                "{token}"
            );
            assert_eq!(
                a.check(Some(token), Right::Metrics, ">").is_ok(),
                ok,
                "{token}"
            );
        }
        // The flag grants nothing else.
        assert!(a.check(Some("flag"), Right::Admin, "orders.x").is_err());
    }

    #[test]
    fn event_store_rights_cover_streams_by_prefix_and_snapshots_as_their_stream() {
        let a = Auth::new(&[
            TokenConfig {
                token: "orders".into(),
                events_read: vec!["order-".into()],
                events_append: vec!["order-".into()],
                ..Default::default()
            },
            TokenConfig {
                token: "all".into(),
                events_read: vec!["*".into()],
                ..Default::default()
            },
        ])
        .expect("valid");
        let t = Some("orders");
        assert!(a.check(t, Right::EventsRead, "order-1").is_ok());
        assert!(
            a.check(t, Right::EventsRead, "order-").is_ok(),
            "a prefix it covers"
        );
        assert!(a.check(t, Right::EventsAppend, "$snapshot-order-1").is_ok());
        assert!(
            a.check(t, Right::EventsRead, "orde").is_err(),
            "a wider prefix"
        );
        assert!(a.check(t, Right::EventsRead, "invoice-1").is_err());
        assert!(a.check(t, Right::EventsRead, ALL_STREAMS).is_err());
        assert!(a.check(t, Right::EventsAdmin, "order-1").is_err());
        assert!(
            a.check(t, Right::Publish, "order-1").is_err(),
            "no topic right"
        );
        assert!(a.check(Some("all"), Right::EventsRead, ALL_STREAMS).is_ok());
        assert!(a.check(Some("all"), Right::EventsAppend, "x").is_err());
        assert!(matches!(
            a.check(t, Right::EventsRead, "invoice-1"),
            Err(Denied::Forbidden {
                right: "events_read",
                ..
            })
        ));
    }

    #[test]
    fn rights_are_checked_per_topic_pattern() {
        let a = auth();
        assert!(a
            .check(Some("tok"), Right::Publish, "orders.eu.new")
            .is_ok());
        assert!(a.check(Some("tok"), Right::Publish, "payments.x").is_err());
        assert!(a.check(Some("tok"), Right::Consume, "orders.x").is_ok());
        assert!(a.check(Some("tok"), Right::Consume, "orders.*").is_ok());
        assert!(a.check(Some("tok"), Right::Consume, "orders.>").is_err());
        assert!(a
            .check(Some("tok"), Right::Consume, "orders.eu.new")
            .is_err());
        assert!(matches!(
            a.check(Some("tok"), Right::Admin, "orders.x"),
            Err(Denied::Forbidden { right: "admin", .. })
        ));
    }
}
