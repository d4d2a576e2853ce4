//! [`Subjects`]: one connection's subject prefix and size limits, shared by
//! both modes: topic ↔ subject, and the checks a message passes (name,
//! size, headers) before anything is sent.

use async_nats::header::HeaderMap;
use async_nats::{Client, ConnectOptions};
use wharf_core::{name, Error, Limits, Message, Result};

use crate::config::{NatsConfig, HEADER_ROOM};
use crate::error::unavailable;
use crate::wire;

/// Topics as subjects under a prefix, within the server's `max_payload`.
pub(crate) struct Subjects {
    prefix: String,
    max_payload: usize,
    limits: Limits,
}

/// Checks the config's subject prefix and connects a client with its URL
/// and timeouts.
///
/// # Errors
/// [`Error::InvalidName`] for a bad subject prefix; [`Error::Unavailable`]
/// when the server cannot be reached.
pub(crate) async fn connect(config: &NatsConfig) -> Result<(Client, Subjects)> {
    name::validate_topic(&config.prefix)?;
    let client = ConnectOptions::new()
        .connection_timeout(config.connect_timeout)
        .request_timeout(Some(config.request_timeout))
        .connect(config.url.as_str())
        .await
        .map_err(|e| unavailable("connect", e))?;
    let max_payload = client.server_info().max_payload;
    let subjects = Subjects {
        prefix: config.prefix.clone(),
        max_payload,
        limits: Limits::new(max_payload.saturating_sub(HEADER_ROOM)),
    };
    Ok((client, subjects))
}

impl Subjects {
    /// The subject prefix.
    pub(crate) fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The backend's limits: `max_payload` less [`HEADER_ROOM`].
    pub(crate) fn limits(&self) -> Limits {
        self.limits
    }

    /// The NATS subject of a topic or pattern.
    pub(crate) fn subject(&self, topic: &str) -> String {
        format!("{}.{topic}", self.prefix)
    }

    /// The topic of a subject under this prefix.
    pub(crate) fn topic_of<'a>(&self, subject: &'a str) -> &'a str {
        subject
            .strip_prefix(self.prefix.as_str())
            .and_then(|s| s.strip_prefix('.'))
            .unwrap_or(subject)
    }

    /// Validates `message` for `topic` and returns its subject and headers
    /// (`msg_id` as `Nats-Msg-Id`).
    ///
    /// # Errors
    /// [`Error::InvalidName`] for a bad topic or header name,
    /// [`Error::MessageTooLarge`] past the limits or the server's
    /// `max_payload` with headers, [`Error::InvalidArgument`] for a bad
    /// header value.
    pub(crate) fn prepare(
        &self,
        topic: &str,
        message: &Message,
        msg_id: &str,
    ) -> Result<(String, HeaderMap)> {
        name::validate_topic(topic)?;
        let max = self.limits.max_message_bytes;
        if message.size() > max {
            return Err(Error::MessageTooLarge {
                size: message.size(),
                max,
            });
        }
        let headers = wire::encode_headers(message, msg_id)?;
        let wire_size = wire::headers_wire_len(&headers) + message.payload().len();
        if wire_size > self.max_payload {
            return Err(Error::MessageTooLarge {
                size: wire_size,
                max: self.max_payload,
            });
        }
        Ok((self.subject(topic), headers))
    }
}
