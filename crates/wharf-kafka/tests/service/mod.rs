//! Reaching the test Kafka broker: the URL, skipping (or failing under
//! `WHARF_REQUIRE_SERVICES=1`) when it is down, and factories whose
//! backends live under a topic prefix of their own (deleted on drop).

#![allow(dead_code)]

use wharf_kafka::{KafkaBackend, KafkaConfig};
use wharf_testkit::service::ServiceFactory;

/// The test broker's URL (`scripts/ensure-kafka.sh` starts it there).
pub fn url() -> String {
    std::env::var("WHARF_TEST_KAFKA_URL").unwrap_or_else(|_| "kafka://127.0.0.1:19092".into())
}

/// A config for a topic prefix unique to this call.
pub fn unique_config() -> KafkaConfig {
    KafkaConfig::new(url())
        .topic_prefix(format!("{}.", wharf_testkit::unique_name("wk")))
        .timeout(std::time::Duration::from_secs(10))
}

/// Deletes every topic of `config`'s prefix from a thread of its own, so it
/// works in `Drop`, inside or outside a runtime, even while a test unwinds.
pub fn delete_all_blocking(config: KafkaConfig) {
    wharf_testkit::service::cleanup_blocking(move || async move {
        if let Ok(b) = KafkaBackend::connect(config).await {
            if let Err(e) = b.delete_all().await {
                eprintln!("cleanup: {e}");
            }
        }
    });
}

/// A backend under a prefix of its own; its topics are deleted on drop.
pub type Namespace = wharf_testkit::service::Namespace<KafkaConfig, KafkaBackend>;

/// A fresh namespace, or `None` when the test is skipped.
pub async fn namespace() -> Option<Namespace> {
    let ns = Namespace::new("kafka", &url(), unique_config(), KafkaBackend::connect).await?;
    Some(ns.cleanup_on_drop(delete_all_blocking))
}

/// The conformance factory: every `open` uses the same prefix; its topics
/// are deleted on drop.
pub async fn factory() -> Option<ServiceFactory<KafkaConfig>> {
    let factory =
        ServiceFactory::new("kafka", &url(), unique_config(), KafkaBackend::connect).await?;
    Some(factory.cleanup_on_drop(delete_all_blocking))
}
