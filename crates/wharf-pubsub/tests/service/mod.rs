//! Reaching the Pub/Sub emulator from tests: the URL, skipping (or failing
//! under `WHARF_REQUIRE_SERVICES=1`) when it is down, and factories whose
//! backends live under a prefix of their own (every topic and subscription
//! of it deleted on drop).

#![allow(dead_code)]

use wharf_pubsub::{PubSubBackend, PubSubConfig};
use wharf_testkit::service::ServiceFactory;

/// The emulator's URL (`scripts/ensure-pubsub.sh` starts it there).
pub fn url() -> String {
    std::env::var("WHARF_TEST_PUBSUB_URL")
        .unwrap_or_else(|_| "pubsub://127.0.0.1:18085/wharf-test".into())
}

/// The config of prefix `ns` on the emulator at `url`.
pub fn config_at(url: &str, ns: &str) -> PubSubConfig {
    PubSubConfig::new(url).expect("a pubsub:// URL").prefix(ns)
}

/// A config for a prefix unique to this call.
pub fn unique_config() -> PubSubConfig {
    config_at(&url(), &wharf_testkit::unique_name("wp"))
}

/// Deletes every topic and subscription of `config`'s prefix; works in `Drop`.
pub fn delete_all_blocking(config: PubSubConfig) {
    wharf_testkit::service::cleanup_blocking(move || async move {
        if let Ok(b) = PubSubBackend::connect(config).await {
            if let Err(e) = b.delete_all().await {
                eprintln!("cleanup: {e}");
            }
        }
    });
}

/// A backend under a prefix of its own; deleted on drop.
pub type Namespace = wharf_testkit::service::Namespace<PubSubConfig, PubSubBackend>;

/// A fresh namespace, or `None` when the test is skipped.
pub async fn namespace() -> Option<Namespace> {
    namespace_with(unique_config()).await
}

/// A namespace for `config` (its prefix should be unique), or `None` when skipped.
pub async fn namespace_with(config: PubSubConfig) -> Option<Namespace> {
    let ns = Namespace::new("pubsub", &url(), config, PubSubBackend::connect).await?;
    Some(ns.cleanup_on_drop(delete_all_blocking))
}

/// The conformance factory: every `open` uses the same prefix (restart
/// cases see their topics and groups again); everything is deleted on drop.
///
/// No consumer processes: the emulator hands a dead consumer's messages
/// back only after one or more stream deadlines of at least 10 s, past
/// the suite's wait (see the crate docs); `tests/pubsub.rs` checks that death
/// with a longer wait.
pub async fn factory() -> Option<ServiceFactory<PubSubConfig>> {
    let ns = wharf_testkit::unique_name("wp");
    let factory = ServiceFactory::new(
        "pubsub",
        &url(),
        config_at(&url(), &ns),
        PubSubBackend::connect,
    )
    .await?;
    Some(factory.cleanup_on_drop(delete_all_blocking))
}
