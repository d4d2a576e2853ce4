//! Reaching the shared PostgreSQL server from tests: the URL, skipping (or
//! failing under `WHARF_REQUIRE_SERVICES=1`) when it is down, and factories
//! whose backends live in a schema of their own (dropped on drop).

#![allow(dead_code)]

use wharf_core::Error;
use wharf_postgres::{PostgresBackend, PostgresConfig};
use wharf_testkit::service::ServiceFactory;

/// The test server's URL.
pub fn url() -> String {
    std::env::var("WHARF_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

/// A schema name unique to this call.
pub fn unique_schema(prefix: &str) -> String {
    wharf_testkit::unique_name(prefix).replace('-', "_")
}

/// The config of `schema` on the server at `url`, with a small pool and a
/// quick poll.
pub fn config_at(url: &str, schema: &str) -> PostgresConfig {
    PostgresConfig::new(url)
        .schema(schema)
        .max_connections(4)
        .poll_interval(std::time::Duration::from_millis(100))
}

/// A config for a fresh schema.
pub fn unique_config() -> PostgresConfig {
    config_at(&url(), &unique_schema("wpg"))
}

/// Handles an unreachable server: panics under `WHARF_REQUIRE_SERVICES=1`,
/// otherwise prints why the test is skipped.
pub fn skip_or_fail(e: &Error) {
    wharf_testkit::service::report_unreachable("postgres", &url(), e);
}

/// Drops `schemas` from a thread of its own, so it works in `Drop`, inside or
/// outside a runtime, even while a test unwinds.
pub fn drop_schemas_blocking(schemas: Vec<String>) {
    wharf_testkit::service::cleanup_blocking(move || async move {
        let pool = match sqlx::postgres::PgPoolOptions::new()
            .max_connections(1)
            .connect(&url())
            .await
        {
            Ok(p) => p,
            Err(_) => return,
        };
        for s in schemas {
            // Background tasks of the test's backends may still hold row
            // locks for a moment (a deadlock victim is retried).
            for attempt in 1..=5 {
                match sqlx::raw_sql(&format!("DROP SCHEMA IF EXISTS {s} CASCADE"))
                    .execute(&pool)
                    .await
                {
                    Ok(_) => break,
                    Err(e) if attempt == 5 => eprintln!("cleanup: dropping schema {s}: {e}"),
                    Err(_) => tokio::time::sleep(std::time::Duration::from_millis(200)).await,
                }
            }
        }
        pool.close().await;
    });
}

/// Drops the schema of `config`; works in `Drop`.
pub fn drop_schema_blocking(config: PostgresConfig) {
    drop_schemas_blocking(vec![config.schema_name().to_owned()]);
}

/// A backend in a schema of its own; the schema is dropped on drop.
pub type Namespace = wharf_testkit::service::Namespace<PostgresConfig, PostgresBackend>;

/// A fresh schema, or `None` when the test is skipped.
pub async fn namespace() -> Option<Namespace> {
    let ns = Namespace::new(
        "postgres",
        &url(),
        unique_config(),
        PostgresBackend::connect,
    )
    .await?;
    Some(ns.cleanup_on_drop(drop_schema_blocking))
}

/// The conformance factory: every `open` connects to the same schema, so
/// restart cases see their data again; the schema is dropped on drop. A
/// consumer process connects to the schema through a proxy. Topics with
/// settings are not provided: messages stay until the schema is dropped,
/// and an id is a duplicate for as long as its row exists.
pub async fn factory() -> Option<ServiceFactory<PostgresConfig>> {
    let schema = unique_schema("wpg");
    let factory = ServiceFactory::new(
        "postgres",
        &url(),
        config_at(&url(), &schema),
        PostgresBackend::connect,
    )
    .await?;
    Some(
        factory
            .cleanup_on_drop(drop_schema_blocking)
            .topics_with(|_, _| {
                Err(wharf_testkit::Unsupported::new(
                    "messages stay until the schema is dropped (no retention) and an id is a \
                     duplicate for as long as its row exists (no window)",
                ))
            })
            .consumer_processes(move |url| config_at(url, &schema)),
    )
}
