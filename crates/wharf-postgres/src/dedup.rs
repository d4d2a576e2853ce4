//! [`PgDedupStore`]: remembers processed message keys in a table with a
//! unique key, for the router's idempotent-consumer (dedup) middleware.
//!
//! A claim is one `INSERT … ON CONFLICT` that succeeds for a new key or an
//! expired one, so concurrent consumers on many machines agree on who claimed.

use std::time::Duration;

use async_trait::async_trait;
use sqlx::PgPool;
use wharf_core::{BoxError, DedupStore, Result};

use crate::rows::db_err;
use crate::schema::validate_ident;

const NOW_MS: &str = "(extract(epoch FROM clock_timestamp()) * 1000)::bigint";

/// A dedup store on a PostgreSQL table `<schema>.dedup (key text primary key, expires_at)`.
#[derive(Debug, Clone)]
pub struct PgDedupStore {
    pool: PgPool,
    claim_sql: String,
    release_sql: String,
    sweep_sql: String,
}

impl PgDedupStore {
    /// Uses (creating if missing) `<schema>.dedup`.
    ///
    /// # Errors
    /// [`wharf_core::Error::InvalidArgument`] for a bad schema name; transport errors.
    pub async fn new(pool: PgPool, schema: &str) -> Result<Self> {
        validate_ident("schema", schema)?;
        let ddl = format!(
            "BEGIN; SELECT pg_advisory_xact_lock(hashtext('wharf-schema-{schema}')); \
             CREATE SCHEMA IF NOT EXISTS {schema}; \
             CREATE TABLE IF NOT EXISTS {schema}.dedup (key text PRIMARY KEY, expires_at bigint NOT NULL); \
             COMMIT;"
        );
        sqlx::raw_sql(&ddl).execute(&pool).await.map_err(db_err)?;
        let t = format!("{schema}.dedup");
        Ok(PgDedupStore {
            pool,
            claim_sql: format!(
                "INSERT INTO {t} AS d (key, expires_at) VALUES ($1, {NOW_MS} + $2) \
                 ON CONFLICT (key) DO UPDATE SET expires_at = EXCLUDED.expires_at \
                 WHERE d.expires_at <= {NOW_MS} RETURNING key"
            ),
            release_sql: format!("DELETE FROM {t} WHERE key = $1"),
            sweep_sql: format!("DELETE FROM {t} WHERE expires_at <= {NOW_MS}"),
        })
    }

    /// Claims `key` for `ttl`: `true` if it was not seen (or its claim
    /// expired), `false` if it is a duplicate.
    ///
    /// # Errors
    /// Transport errors.
    pub async fn check_and_set(&self, key: &str, ttl: Duration) -> Result<bool> {
        let ttl_ms = i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX / 2);
        let row: Option<String> = sqlx::query_scalar(&self.claim_sql)
            .bind(key)
            .bind(ttl_ms)
            .fetch_optional(&self.pool)
            .await
            .map_err(db_err)?;
        Ok(row.is_some())
    }

    /// Forgets `key`, so it can be claimed again (after a failed attempt).
    ///
    /// # Errors
    /// Transport errors.
    pub async fn release(&self, key: &str) -> Result<()> {
        sqlx::query(&self.release_sql)
            .bind(key)
            .execute(&self.pool)
            .await
            .map_err(db_err)?;
        Ok(())
    }

    /// Deletes expired keys; returns how many.
    ///
    /// # Errors
    /// Transport errors.
    pub async fn sweep(&self) -> Result<u64> {
        let done = sqlx::query(&self.sweep_sql)
            .execute(&self.pool)
            .await
            .map_err(db_err)?;
        Ok(done.rows_affected())
    }
}

/// The router's dedup seam: `DedupLayer::new(Arc::new(store))`.
#[async_trait]
impl DedupStore for PgDedupStore {
    async fn claim(&self, key: &str, ttl: Duration) -> std::result::Result<bool, BoxError> {
        Ok(self.check_and_set(key, ttl).await?)
    }

    async fn release(&self, key: &str) -> std::result::Result<(), BoxError> {
        Ok(PgDedupStore::release(self, key).await?)
    }
}
