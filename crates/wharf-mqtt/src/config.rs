//! [`MqttConfig`]: where the server is and how the adapter uses it.

use std::time::Duration;

use crate::error::{unavailable, MqttError};

/// Settings of an [`MqttBackend`](crate::MqttBackend); build with
/// [`MqttConfig::new`].
///
/// ```
/// use std::time::Duration;
/// use wharf_mqtt::MqttConfig;
/// let config = MqttConfig::new("mqtt://127.0.0.1:1883")
///     .client_id("billing-1")
///     .topic_prefix("prod")
///     .session_expiry(Duration::from_secs(3600));
/// assert_eq!(config.client_id_value(), "billing-1");
/// ```
#[derive(Debug, Clone)]
#[must_use]
pub struct MqttConfig {
    pub(crate) url: String,
    pub(crate) client_id: String,
    pub(crate) topic_prefix: Option<String>,
    pub(crate) session_expiry: Duration,
    pub(crate) keep_alive: Duration,
    pub(crate) max_message_bytes: usize,
    pub(crate) publish_window: u16,
    pub(crate) timeout: Duration,
}

impl MqttConfig {
    /// A config for the server at `url` (`mqtt://host[:port]`, port 1883 by
    /// default), with a random client id.
    pub fn new(url: impl Into<String>) -> Self {
        let n = wharf_core::MessageId::new().to_string();
        MqttConfig {
            url: url.into(),
            client_id: format!("wharf-{}", &n[n.len() - 12..]),
            topic_prefix: None,
            session_expiry: Duration::from_secs(3600),
            keep_alive: Duration::from_secs(30),
            max_message_bytes: 1024 * 1024,
            publish_window: 256,
            timeout: Duration::from_secs(10),
        }
    }

    /// The stem of every MQTT client id this backend uses: the publisher
    /// connects as `<id>-pub`, and the `n`-th subscription of group `g` on
    /// a pattern as `<id>-<g>-<hash of the pattern>-<n>`. Give each process
    /// a stable id of its own to resume its group sessions after a restart
    /// (two live connections with one client id make the server drop the
    /// older one).
    pub fn client_id(mut self, id: impl Into<String>) -> Self {
        self.client_id = id.into();
        self
    }

    /// The client id stem.
    pub fn client_id_value(&self) -> &str {
        &self.client_id
    }

    /// Put every Wharf topic under `prefix` (a topic name: `a.b` → `a/b/…`).
    pub fn topic_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.topic_prefix = Some(prefix.into());
        self
    }

    /// How long the server keeps a subscription's session — its
    /// subscriptions, unacknowledged deliveries and queued messages — after
    /// its connection is lost (MQTT 5 Session Expiry Interval; default 1 h).
    pub fn session_expiry(mut self, expiry: Duration) -> Self {
        self.session_expiry = expiry;
        self
    }

    /// MQTT keep-alive (default 30 s; at least 5 s).
    pub fn keep_alive(mut self, keep_alive: Duration) -> Self {
        self.keep_alive = keep_alive.max(Duration::from_secs(5));
        self
    }

    /// Largest message accepted ([`wharf_core::Message::size`]; default 1 MiB).
    pub fn max_message_bytes(mut self, n: usize) -> Self {
        self.max_message_bytes = n;
        self
    }

    /// Publishes awaiting their PUBACK at once on the publishing connection
    /// (default 256; the server's Receive Maximum may lower it).
    pub fn publish_window(mut self, n: u16) -> Self {
        self.publish_window = n.max(1);
        self
    }

    /// How long connecting and each publish's PUBACK may take (default 10 s).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The server's host and port.
    pub(crate) fn host_port(&self) -> wharf_core::Result<(String, u16)> {
        let bad = |reason| {
            unavailable(MqttError::InvalidUrl {
                url: self.url.clone(),
                reason,
            })
        };
        let rest = self
            .url
            .strip_prefix("mqtt://")
            .ok_or_else(|| bad("the scheme must be mqtt://"))?;
        let authority = rest.split(['/', '?']).next().unwrap_or_default();
        let authority = authority.rsplit('@').next().unwrap_or_default();
        match authority.rsplit_once(':') {
            Some((host, port)) => Ok((
                host.to_owned(),
                port.parse().map_err(|_| bad("the port is not a number"))?,
            )),
            None if authority.is_empty() => Err(bad("no host")),
            None => Ok((authority.to_owned(), 1883)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_give_host_and_port() {
        let hp = |u: &str| MqttConfig::new(u).host_port().ok();
        assert_eq!(
            hp("mqtt://127.0.0.1:1884"),
            Some(("127.0.0.1".into(), 1884))
        );
        assert_eq!(hp("mqtt://broker/x"), Some(("broker".into(), 1883)));
        assert_eq!(hp("tcp://broker"), None);
        assert_eq!(hp("mqtt://broker:x"), None);
    }
}
