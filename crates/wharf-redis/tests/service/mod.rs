//! Reaching the shared Redis server from tests: the URL, skipping (or
//! failing under `WHARF_REQUIRE_SERVICES=1`) when it is down, and a factory
//! whose backends live under a key prefix of their own, deleted on drop.

#![allow(dead_code)]

use std::sync::Arc;

use wharf_core::Backend;
use wharf_redis::{RedisBackend, RedisConfig, RedisPubSubBackend};

/// The test server's URL.
pub fn url() -> String {
    std::env::var("WHARF_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// A config for a key prefix unique to this call.
pub fn unique_config() -> RedisConfig {
    RedisConfig::new(url()).key_prefix(wharf_testkit::unique_name("wr"))
}

/// Connects with `config`, or returns `None` after printing why the test is
/// skipped (panics instead under `WHARF_REQUIRE_SERVICES=1`).
pub async fn connect_or_skip(config: RedisConfig) -> Option<RedisBackend> {
    wharf_testkit::service::connect_or_skip("redis", &url(), RedisBackend::connect(config)).await
}

/// Deletes every key of `config`'s prefix from a thread of its own, so it
/// works in `Drop`, inside or outside a runtime, even while a test unwinds.
pub fn delete_all_blocking(config: RedisConfig) {
    wharf_testkit::service::cleanup_blocking(move || async move {
        if let Ok(b) = RedisBackend::connect(config).await {
            // Readers may still be finishing a blocking read: sweep twice.
            for _ in 0..2 {
                if let Err(e) = b.delete_all().await {
                    eprintln!("cleanup: {e}");
                }
                tokio::time::sleep(std::time::Duration::from_millis(150)).await;
            }
        }
    });
}

/// A backend under a prefix of its own; its keys are deleted on drop.
pub struct Namespace {
    pub config: RedisConfig,
    pub backend: RedisBackend,
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
        delete_all_blocking(self.config.clone());
    }
}

/// The conformance factory: every `open` uses the same prefix; its keys
/// are deleted on drop.
pub struct RedisFactory {
    config: RedisConfig,
}

impl RedisFactory {
    /// A factory for a fresh prefix, or `None` when the test is skipped.
    pub async fn new() -> Option<Self> {
        let config = unique_config();
        connect_or_skip(config.clone()).await?;
        Some(RedisFactory { config })
    }
}

#[async_trait::async_trait]
impl wharf_testkit::BackendFactory for RedisFactory {
    async fn open(&self) -> Arc<dyn Backend> {
        Arc::new(
            RedisBackend::connect(self.config.clone())
                .await
                .expect("connect to redis"),
        )
    }
}

impl Drop for RedisFactory {
    fn drop(&mut self) {
        delete_all_blocking(self.config.clone());
    }
}

/// The conformance factory of the Pub/Sub mode: channels under a prefix of
/// its own; nothing is stored, so there is nothing to delete.
pub struct RedisPubSubFactory {
    config: RedisConfig,
}

impl RedisPubSubFactory {
    /// A factory for a fresh prefix, or `None` when the test is skipped.
    pub async fn new() -> Option<Self> {
        let config = unique_config();
        wharf_testkit::service::connect_or_skip(
            "redis",
            &url(),
            RedisPubSubBackend::connect(config.clone()),
        )
        .await?;
        Some(RedisPubSubFactory { config })
    }
}

#[async_trait::async_trait]
impl wharf_testkit::BackendFactory for RedisPubSubFactory {
    async fn open(&self) -> Arc<dyn Backend> {
        Arc::new(
            RedisPubSubBackend::connect(self.config.clone())
                .await
                .expect("connect to redis"),
        )
    }
}
