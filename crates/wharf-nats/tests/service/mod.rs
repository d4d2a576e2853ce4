//! Reaching the shared NATS server from tests: the URL, skipping (or failing
//! under `WHARF_REQUIRE_SERVICES=1`) when it is down, and factories whose
//! backends live in a namespace of their own (deleted on drop).

#![allow(dead_code)]

use wharf_nats::{NatsBackend, NatsConfig, NatsCoreBackend};
use wharf_testkit::service::ServiceFactory;
use wharf_testkit::Setup;

/// The test server's URL.
pub fn url() -> String {
    std::env::var("WHARF_TEST_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into())
}

/// The config of namespace `ns` on the server at `url`: stream `WT_<ns>`,
/// prefix `<ns>`.
pub fn config_at(url: &str, ns: &str) -> NatsConfig {
    NatsConfig::new(url)
        .stream(format!("WT_{ns}"))
        .subject_prefix(ns)
}

/// A config for a namespace unique to this call.
pub fn unique_config() -> NatsConfig {
    config_at(&url(), &wharf_testkit::unique_name("wn"))
}

/// Deletes the stream of `config`; works in `Drop`.
pub fn delete_stream_blocking(config: NatsConfig) {
    wharf_testkit::service::cleanup_blocking(move || async move {
        if let Ok(b) = NatsBackend::connect(config).await {
            if let Err(e) = b.delete_stream().await {
                eprintln!("cleanup: deleting {}: {e}", b.stream_name());
            }
        }
    });
}

/// A backend in a namespace of its own; the stream is deleted on drop.
pub type Namespace<B = NatsBackend> = wharf_testkit::service::Namespace<NatsConfig, B>;

/// A fresh namespace, or `None` when the test is skipped.
pub async fn namespace() -> Option<Namespace> {
    let ns = Namespace::new("nats", &url(), unique_config(), NatsBackend::connect).await?;
    Some(ns.cleanup_on_drop(delete_stream_blocking))
}

/// A core NATS backend under a subject prefix of its own (nothing to delete).
pub async fn core_namespace() -> Option<Namespace<NatsCoreBackend>> {
    Namespace::new("nats", &url(), unique_config(), NatsCoreBackend::connect).await
}

/// The conformance factory: every `open` connects to the same namespace, so
/// restart cases see their data again; the stream is deleted on drop. A
/// topic with retention or a dedup window gets a namespace of its own (a
/// stream's limits are set when it is created and cover all its topics); a
/// consumer process connects to the namespace through a proxy.
pub async fn factory() -> Option<ServiceFactory<NatsConfig>> {
    let ns = wharf_testkit::unique_name("wn");
    let factory =
        ServiceFactory::new("nats", &url(), config_at(&url(), &ns), NatsBackend::connect).await?;
    Some(
        factory
            .cleanup_on_drop(delete_stream_blocking)
            .topics_with(|_, settings| {
                settings.only(
                    &[
                        Setup::RetentionBySize,
                        Setup::RetentionByAge,
                        Setup::DedupWindow,
                    ],
                    "not a JetStream stream limit",
                )?;
                let mut config = unique_config();
                if let Some(bytes) = settings.retention_bytes {
                    config = config.max_bytes(bytes);
                }
                if let Some(age) = settings.retention_age {
                    config = config.max_age(age);
                }
                if let Some(window) = settings.dedup_window {
                    config = config.duplicate_window(window);
                }
                Ok(config)
            })
            .consumer_processes(move |url| config_at(url, &ns)),
    )
}

/// The factory of the core NATS mode: a subject prefix of its own; nothing
/// is stored, so there is nothing to delete.
pub async fn core_factory() -> Option<ServiceFactory<NatsConfig>> {
    ServiceFactory::new("nats", &url(), unique_config(), NatsCoreBackend::connect).await
}
