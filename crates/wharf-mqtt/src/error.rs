//! Failures specific to the MQTT adapter, carried as the `source` of
//! [`wharf_core::Error::Backend`] / [`wharf_core::Error::Unavailable`].

/// What went wrong inside the MQTT adapter.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MqttError {
    /// A received MQTT topic has no Wharf name: outside the backend's
    /// prefix, or a level that is not a Wharf segment (`a.b`, an empty
    /// level). Such messages are acknowledged and dropped with a warning.
    #[error("MQTT topic {topic:?} has no Wharf name")]
    UnmappableTopic {
        /// The topic as received.
        topic: String,
    },
    /// The URL is not `mqtt://host[:port]`.
    #[error("invalid MQTT URL {url:?}: {reason}")]
    InvalidUrl {
        /// The URL given.
        url: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The server refused or failed a publish with this PUBACK reason code.
    #[error("the server answered the publish with PUBACK {reason}")]
    PublishRefused {
        /// The PUBACK reason, as rumqttc names it.
        reason: String,
    },
    /// The server refused a subscription with this SUBACK reason code.
    #[error("the server answered the subscription with SUBACK {reason}")]
    SubscribeRefused {
        /// The SUBACK reason, as rumqttc names it.
        reason: String,
    },
    /// The connection was lost or replaced while the publish waited for its
    /// PUBACK: it may or may not have been delivered.
    #[error("connection lost before the PUBACK")]
    ConnectionLost,
    /// Any error reported by the rumqttc client.
    #[error("{context}: {source}")]
    Client {
        /// What was being done.
        context: &'static str,
        /// The client's error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync + 'static>,
    },
}

/// `wharf_core::Error::Unavailable` wrapping `e`.
pub(crate) fn unavailable(e: MqttError) -> wharf_core::Error {
    wharf_core::Error::Unavailable {
        backend: crate::backend::NAME,
        source: Box::new(e),
    }
}

/// `wharf_core::Error::Unavailable` for a client error.
pub(crate) fn client(
    context: &'static str,
    e: impl std::error::Error + Send + Sync + 'static,
) -> wharf_core::Error {
    unavailable(MqttError::Client {
        context,
        source: Box::new(e),
    })
}
