//! Reaching the shared RabbitMQ broker from tests: the URL, skipping (or
//! failing under `WHARF_REQUIRE_SERVICES=1`) when it is down, and factories
//! whose backends live in a namespace of their own (deleted on drop).

#![allow(dead_code)]

use std::time::Duration;

use wharf_amqp::{AmqpBackend, AmqpConfig};
use wharf_core::Backend;
use wharf_testkit::service::ServiceFactory;

/// The test broker's URL.
pub fn url() -> String {
    std::env::var("WHARF_TEST_AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

/// The config of namespace `ns` on the broker at `url`; queues also expire
/// on their own after 10 unused minutes, in case a test dies before
/// cleaning up.
pub fn config_at(url: &str, ns: &str) -> AmqpConfig {
    AmqpConfig::new(url)
        .namespace(ns)
        .queue_expires(Duration::from_secs(600))
}

/// A config for a namespace unique to this call.
pub fn unique_config() -> AmqpConfig {
    config_at(&url(), &wharf_testkit::unique_name("wa"))
}

/// Deletes every queue and exchange declared through `config` (and its
/// clones), from a thread of its own so it works in `Drop`.
pub fn delete_declared_blocking(config: AmqpConfig) {
    wharf_testkit::service::cleanup_blocking(move || async move {
        if let Ok(b) = AmqpBackend::connect(config).await {
            if let Err(e) = b.delete_declared().await {
                eprintln!("cleanup: {e}");
            }
            let _ = b.close().await;
        }
    });
}

/// A backend in a namespace of its own; its queues and exchanges are
/// deleted on drop.
pub type Namespace = wharf_testkit::service::Namespace<AmqpConfig, AmqpBackend>;

/// A fresh namespace, or `None` when the test is skipped.
pub async fn namespace() -> Option<Namespace> {
    let ns = Namespace::new("rabbitmq", &url(), unique_config(), AmqpBackend::connect).await?;
    Some(ns.cleanup_on_drop(delete_declared_blocking))
}

/// The conformance factory: every `open` connects to the same namespace, so
/// restart cases see their queues again; everything is deleted on drop. A
/// consumer process connects to the namespace through a proxy. Topics with
/// settings are not provided: messages are kept per group queue, not per
/// topic, and there is no dedup.
pub async fn factory() -> Option<ServiceFactory<AmqpConfig>> {
    factory_of(false).await
}

/// [`factory`] with priority queues ([`AmqpConfig::priorities`]).
pub async fn factory_with_priorities() -> Option<ServiceFactory<AmqpConfig>> {
    factory_of(true).await
}

async fn factory_of(priorities: bool) -> Option<ServiceFactory<AmqpConfig>> {
    let ns = wharf_testkit::unique_name("wa");
    let factory = ServiceFactory::new(
        "rabbitmq",
        &url(),
        config_at(&url(), &ns).priorities(priorities),
        AmqpBackend::connect,
    )
    .await?;
    Some(
        factory
            .cleanup_on_drop(delete_declared_blocking)
            .topics_with(|_, _| {
                Err(wharf_testkit::Unsupported::new(
                    "RabbitMQ keeps messages in each group's queue, not per topic, and has no \
                     dedup",
                ))
            })
            .consumer_processes(move |url| config_at(url, &ns).priorities(priorities)),
    )
}
