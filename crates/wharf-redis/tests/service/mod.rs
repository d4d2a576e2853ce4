//! Reaching the shared Redis server from tests: the URL, skipping (or
//! failing under `WHARF_REQUIRE_SERVICES=1`) when it is down, and factories
//! whose backends live under a key prefix of their own (deleted on drop).

#![allow(dead_code)]

use wharf_redis::{RedisBackend, RedisConfig, RedisPubSubBackend};
use wharf_testkit::service::ServiceFactory;
use wharf_testkit::Setup;

/// The test server's URL.
pub fn url() -> String {
    std::env::var("WHARF_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// The config of key prefix `prefix` on the server at `url`.
pub fn config_at(url: &str, prefix: &str) -> RedisConfig {
    RedisConfig::new(url).key_prefix(prefix)
}

/// A config for a key prefix unique to this call.
pub fn unique_config() -> RedisConfig {
    config_at(&url(), &wharf_testkit::unique_name("wr"))
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
pub type Namespace<B = RedisBackend> = wharf_testkit::service::Namespace<RedisConfig, B>;

/// A fresh namespace, or `None` when the test is skipped.
pub async fn namespace() -> Option<Namespace> {
    let ns = Namespace::new("redis", &url(), unique_config(), RedisBackend::connect).await?;
    Some(ns.cleanup_on_drop(delete_all_blocking))
}

/// A Pub/Sub backend under a prefix of its own (nothing to delete).
pub async fn pubsub_namespace() -> Option<Namespace<RedisPubSubBackend>> {
    Namespace::new(
        "redis",
        &url(),
        unique_config(),
        RedisPubSubBackend::connect,
    )
    .await
}

/// The conformance factory: every `open` uses the same prefix; its keys
/// are deleted on drop. The dedup window is the client's setting (the
/// expiry its publish script gives the id key), so a topic with a short one
/// is the same prefix through a backend configured so; a consumer process
/// connects to the prefix through a proxy.
pub async fn factory() -> Option<ServiceFactory<RedisConfig>> {
    let prefix = wharf_testkit::unique_name("wr");
    let factory = ServiceFactory::new(
        "redis",
        &url(),
        config_at(&url(), &prefix),
        RedisBackend::connect,
    )
    .await?;
    Some(
        factory
            .cleanup_on_drop(delete_all_blocking)
            .topics_with(|config, settings| {
                settings.only(
                    &[Setup::DedupWindow],
                    "Redis streams are trimmed by entry count (MAXLEN), not by bytes or age",
                )?;
                let window = settings.dedup_window.expect("only the dedup window");
                Ok(config.clone().dedup_window(window))
            })
            .consumer_processes(move |url| config_at(url, &prefix)),
    )
}

/// The factory of the Pub/Sub mode: channels under a prefix of its own;
/// nothing is stored, so there is nothing to delete.
pub async fn pubsub_factory() -> Option<ServiceFactory<RedisConfig>> {
    ServiceFactory::new(
        "redis",
        &url(),
        unique_config(),
        RedisPubSubBackend::connect,
    )
    .await
}
