//! Reaching the SQS test server (moto, `scripts/ensure-moto.sh`): the URL,
//! skipping (or failing under `WHARF_REQUIRE_SERVICES=1`) when it is down,
//! and factories whose backends live under a queue prefix of their own
//! (every queue of it deleted on drop).

#![allow(dead_code)]

use wharf_sqs::{SqsBackend, SqsConfig};
use wharf_testkit::service::ServiceFactory;

/// The test server's URL; `wait=1` keeps closed subscriptions' last long
/// polls short.
pub fn url() -> String {
    std::env::var("WHARF_TEST_SQS_URL")
        .unwrap_or_else(|_| "sqs://127.0.0.1:15000?region=us-east-1&wait=1".into())
}

/// A config for a queue prefix unique to this call.
pub fn unique_config() -> SqsConfig {
    let prefix = wharf_testkit::unique_name("ws");
    SqsConfig::from_url(&url())
        .expect("WHARF_TEST_SQS_URL is an sqs:// URL")
        .queue_prefix(format!("{prefix}-"))
}

/// The same, with FIFO queues.
pub fn unique_fifo_config() -> SqsConfig {
    unique_config().fifo(true)
}

/// Deletes every queue of `config`'s prefix from a thread of its own, so it
/// works in `Drop`, inside or outside a runtime, even while a test unwinds.
pub fn delete_all_blocking(config: SqsConfig) {
    wharf_testkit::service::cleanup_blocking(move || async move {
        if let Ok(b) = SqsBackend::connect(config).await {
            if let Err(e) = b.delete_all().await {
                eprintln!("cleanup: {e}");
            }
        }
    });
}

/// A backend under a prefix of its own; its queues are deleted on drop.
pub type Namespace = wharf_testkit::service::Namespace<SqsConfig, SqsBackend>;

/// A fresh namespace with `config`, or `None` when the test is skipped.
pub async fn namespace_with(config: SqsConfig) -> Option<Namespace> {
    let ns = Namespace::new("sqs (moto)", &url(), config, SqsBackend::connect).await?;
    Some(ns.cleanup_on_drop(delete_all_blocking))
}

/// A fresh namespace of standard queues, or `None` when the test is skipped.
pub async fn namespace() -> Option<Namespace> {
    namespace_with(unique_config()).await
}

/// The conformance factory: every `open` uses the same prefix; its queues
/// are deleted on drop.
pub async fn factory_with(config: SqsConfig) -> Option<ServiceFactory<SqsConfig>> {
    let factory = ServiceFactory::new("sqs (moto)", &url(), config, SqsBackend::connect).await?;
    Some(factory.cleanup_on_drop(delete_all_blocking))
}
