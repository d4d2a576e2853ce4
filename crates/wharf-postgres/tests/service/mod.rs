//! Reaching the shared PostgreSQL server from tests: the URL, skipping (or
//! failing under `WHARF_REQUIRE_SERVICES=1`) when it is down, and a factory
//! whose backends live in a schema of their own that is dropped afterwards.

#![allow(dead_code)]

use std::sync::Arc;

use wharf_core::{Backend, Error};
use wharf_postgres::{PostgresBackend, PostgresConfig};

/// The test server's URL.
pub fn url() -> String {
    std::env::var("WHARF_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

/// A schema name unique to this call.
pub fn unique_schema(prefix: &str) -> String {
    wharf_testkit::unique_name(prefix).replace('-', "_")
}

/// A config for a fresh schema, with a small pool and a quick poll.
pub fn unique_config() -> PostgresConfig {
    PostgresConfig::new(url())
        .schema(unique_schema("wpg"))
        .max_connections(4)
        .poll_interval(std::time::Duration::from_millis(100))
}

/// Handles an unreachable server: panics under `WHARF_REQUIRE_SERVICES=1`,
/// otherwise prints why the test is skipped.
pub fn skip_or_fail(e: &Error) {
    wharf_testkit::service::report_unreachable("postgres", &url(), e);
}

/// Connects with `config`, or returns `None` when the test is skipped.
pub async fn connect_or_skip(config: PostgresConfig) -> Option<PostgresBackend> {
    wharf_testkit::service::connect_or_skip("postgres", &url(), PostgresBackend::connect(config))
        .await
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

/// A backend in a schema of its own; the schema is dropped on drop.
pub struct Namespace {
    pub config: PostgresConfig,
    pub backend: PostgresBackend,
}

impl Namespace {
    /// A fresh schema, or `None` when the test is skipped.
    pub async fn new() -> Option<Self> {
        let config = unique_config();
        let backend = connect_or_skip(config.clone()).await?;
        Some(Namespace { config, backend })
    }
}

impl Drop for Namespace {
    fn drop(&mut self) {
        drop_schemas_blocking(vec![self.config.schema_name().to_owned()]);
    }
}

/// The conformance factory: every `open` connects to the same schema, so
/// restart cases see their data again; the schema is dropped on drop.
pub struct PgFactory {
    config: PostgresConfig,
}

impl PgFactory {
    /// A factory for a fresh schema, or `None` when the test is skipped.
    pub async fn new() -> Option<Self> {
        let config = unique_config();
        let probe = connect_or_skip(config.clone()).await?;
        wharf_core::Backend::close(&probe)
            .await
            .expect("close the probe");
        Some(PgFactory { config })
    }
}

#[async_trait::async_trait]
impl wharf_testkit::BackendFactory for PgFactory {
    async fn open(&self) -> Arc<dyn Backend> {
        Arc::new(
            PostgresBackend::connect(self.config.clone())
                .await
                .expect("connect to postgres"),
        )
    }
}

impl Drop for PgFactory {
    fn drop(&mut self) {
        drop_schemas_blocking(vec![self.config.schema_name().to_owned()]);
    }
}
