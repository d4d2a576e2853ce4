//! Token auth: each configured token has publish / consume / admin rights on
//! topic patterns. A missing or unknown token is `Unauthenticated` (401 /
//! `UNAUTHENTICATED`); a known token without the right is `Forbidden` (403 /
//! `PERMISSION_DENIED`).

use serde::Deserialize;
use wharf_core::TopicPattern;

use crate::config::ConfigError;

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
}

impl Right {
    fn as_str(self) -> &'static str {
        match self {
            Right::Publish => "publish",
            Right::Consume => "consume",
            Right::Admin => "admin",
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
}

#[derive(Debug)]
struct Token {
    token: String,
    publish: Vec<TopicPattern>,
    consume: Vec<TopicPattern>,
    admin: Vec<TopicPattern>,
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
}

/// The configured tokens.
#[derive(Debug)]
pub struct Auth {
    tokens: Vec<Token>,
}

impl Auth {
    /// Parses the token entries.
    ///
    /// # Errors
    /// [`ConfigError::Token`] for an empty token or an invalid pattern.
    pub fn new(entries: &[TokenConfig]) -> Result<Auth, ConfigError> {
        let mut tokens = Vec::new();
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
            tokens.push(Token {
                token: e.token.clone(),
                publish: parse(&e.publish)?,
                consume: parse(&e.consume)?,
                admin: parse(&e.admin)?,
            });
        }
        Ok(Auth { tokens })
    }

    fn find(&self, token: Option<&str>) -> Result<&Token, Denied> {
        let token = token.ok_or(Denied::Unauthenticated)?;
        self.tokens
            .iter()
            .find(|t| constant_time_eq(t.token.as_bytes(), token.as_bytes()))
            .ok_or(Denied::Unauthenticated)
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
        let list = match right {
            Right::Publish => &t.publish,
            Right::Consume => &t.consume,
            Right::Admin => &t.admin,
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

    /// Checks that `token` is valid and holds `right` on at least one pattern
    /// (for listings, which are then filtered with [`Auth::check`]).
    ///
    /// # Errors
    /// `Denied`.
    pub fn check_any(&self, token: Option<&str>, right: Right) -> Result<(), Denied> {
        let t = self.find(token)?;
        let list = match right {
            Right::Publish => &t.publish,
            Right::Consume => &t.consume,
            Right::Admin => &t.admin,
        };
        if list.is_empty() {
            Err(Denied::Forbidden {
                right: right.as_str(),
                topic: "*".into(),
            })
        } else {
            Ok(())
        }
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
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
        }])
        .expect("valid")
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
