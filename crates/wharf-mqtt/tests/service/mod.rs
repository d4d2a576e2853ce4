//! Reaching the shared Mosquitto server from tests: the URL, skipping (or
//! failing under `WHARF_REQUIRE_SERVICES=1`) when it is down, and configs
//! under a topic prefix and client id of their own.

#![allow(dead_code)]

use std::time::Duration;

use wharf_mqtt::{MqttBackend, MqttConfig};
use wharf_testkit::service::ServiceFactory;

/// The test server's URL.
pub fn url() -> String {
    std::env::var("WHARF_TEST_MQTT_URL").unwrap_or_else(|_| "mqtt://127.0.0.1:1883".into())
}

/// A config at `url` under prefix and client id `ns`; sessions left behind
/// by a test expire after a minute.
pub fn config_at(url: &str, ns: &str) -> MqttConfig {
    MqttConfig::new(url)
        .topic_prefix(ns)
        .client_id(ns)
        .session_expiry(Duration::from_secs(60))
}

/// A config in a namespace unique to this call.
pub fn unique_config() -> MqttConfig {
    config_at(&url(), &wharf_testkit::unique_name("wm"))
}

/// A backend in a namespace of its own, or `None` when the test is skipped.
pub async fn backend() -> Option<MqttBackend> {
    backend_with(unique_config()).await
}

/// A backend with `config`, or `None` when the test is skipped.
pub async fn backend_with(config: MqttConfig) -> Option<MqttBackend> {
    wharf_testkit::service::connect_or_skip("mosquitto", &url(), MqttBackend::connect(config)).await
}

/// The conformance factory: a namespace of its own (nothing is stored
/// beyond sessions, which expire on their own).
pub async fn factory() -> Option<ServiceFactory<MqttConfig>> {
    ServiceFactory::new("mosquitto", &url(), unique_config(), MqttBackend::connect).await
}
