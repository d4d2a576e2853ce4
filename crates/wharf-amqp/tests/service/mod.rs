//! Reaching the shared RabbitMQ broker from tests: the URL, skipping (or
//! failing under `WHARF_REQUIRE_SERVICES=1`) when it is down, and a factory
//! whose backends live in a namespace of their own, deleted afterwards.

#![allow(dead_code)]

use std::sync::Arc;
use std::time::Duration;

use wharf_amqp::{AmqpBackend, AmqpConfig};
use wharf_core::Backend;

/// The test broker's URL.
pub fn url() -> String {
    std::env::var("WHARF_TEST_AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

/// A config for a namespace unique to this call; queues also expire on
/// their own after 10 unused minutes, in case a test dies before cleaning up.
pub fn unique_config() -> AmqpConfig {
    AmqpConfig::new(url())
        .namespace(wharf_testkit::unique_name("wa"))
        .queue_expires(Duration::from_secs(600))
}

/// Connects with `config`, or returns `None` after printing why the test is
/// skipped (panics instead under `WHARF_REQUIRE_SERVICES=1`).
pub async fn connect_or_skip(config: AmqpConfig) -> Option<AmqpBackend> {
    wharf_testkit::service::connect_or_skip("rabbitmq", &url(), AmqpBackend::connect(config)).await
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

/// A backend in a namespace of its own, deleted on drop.
pub struct Namespace {
    pub config: AmqpConfig,
    pub backend: AmqpBackend,
}

impl Namespace {
    /// A fresh namespace, or `None` when the test is skipped.
    pub async fn new() -> Option<Self> {
        let config = unique_config();
        let backend = connect_or_skip(config.clone()).await?;
        Some(Namespace { config, backend })
    }
}

impl Drop for Namespace {
    fn drop(&mut self) {
        delete_declared_blocking(self.config.clone());
    }
}

/// The conformance factory: every `open` connects to the same namespace, so
/// restart cases see their queues again; everything is deleted on drop.
pub struct AmqpFactory {
    config: AmqpConfig,
}

impl AmqpFactory {
    /// A factory for a fresh namespace, or `None` when the test is skipped.
    pub async fn new() -> Option<Self> {
        let config = unique_config();
        let probe = connect_or_skip(config.clone()).await?;
        probe.close().await.expect("close the probe");
        Some(AmqpFactory { config })
    }
}

#[async_trait::async_trait]
impl wharf_testkit::BackendFactory for AmqpFactory {
    async fn open(&self) -> Arc<dyn Backend> {
        Arc::new(
            AmqpBackend::connect(self.config.clone())
                .await
                .expect("connect to rabbitmq"),
        )
    }
}

impl Drop for AmqpFactory {
    fn drop(&mut self) {
        delete_declared_blocking(self.config.clone());
    }
}
