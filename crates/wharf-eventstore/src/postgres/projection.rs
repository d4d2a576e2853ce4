//! [`PgProjection`]: a [`Projection`] whose read model lives in PostgreSQL
//! and whose checkpoint is written **in the same transaction** as the read
//! model's rows, so after a crash at any point (a `kill -9` mid-batch
//! included) either a batch's rows and its checkpoint are both there or
//! neither is: each event's effect exactly once.
//!
//! The application writes its rows in a [`PgReadModel`]; `PgProjection`
//! wraps each batch in a transaction that first locks the projection's
//! checkpoint row (`es_checkpoints`, in a schema of the caller's), skips
//! events below the stored checkpoint (so a second runner of the same
//! projection, or a stale retry, never applies an event twice), lets the
//! model write, stores the new checkpoint, and commits.

use async_trait::async_trait;
use sqlx::postgres::{PgConnection, PgPool};

use crate::error::Result;
use crate::projection::{Projection, ProjectionError};
use crate::types::{GlobalFilter, Position, RecordedEvent};

use super::{db_err, to_i64, to_u64, validate_schema};

/// A read model kept in PostgreSQL, written inside the transaction that
/// also stores its checkpoint (see [`PgProjection`]).
#[async_trait]
pub trait PgReadModel: Send + Sync + 'static {
    /// Which events it reads (default: every event of a user stream).
    fn filter(&self) -> GlobalFilter {
        GlobalFilter::all()
    }

    /// Writes the effect of `events` (in commit order, at least one)
    /// through `tx`, a connection inside the batch's transaction. An error
    /// rolls the whole batch back, checkpoint included; the runner hands
    /// the same events again later.
    async fn apply(
        &self,
        tx: &mut PgConnection,
        events: &[RecordedEvent],
    ) -> std::result::Result<(), ProjectionError>;

    /// Clears the read model's rows through `tx` (a rebuild follows; the
    /// checkpoint is cleared in the same transaction).
    async fn reset(&self, tx: &mut PgConnection) -> std::result::Result<(), ProjectionError>;
}

/// A [`Projection`] on PostgreSQL: `model`'s rows and the checkpoint of
/// `name` committed together. Run it with a
/// [`ProjectionRunner`](crate::projection::ProjectionRunner) like any
/// projection.
///
/// ```no_run
/// # async fn demo(pool: sqlx::PgPool, store: std::sync::Arc<dyn wharf_eventstore::EventStore>)
/// # -> Result<(), Box<dyn std::error::Error>> {
/// use std::sync::Arc;
/// use wharf_eventstore::postgres::{PgProjection, PgReadModel};
/// use wharf_eventstore::projection::{ProjectionError, ProjectionRunner};
/// use wharf_eventstore::RecordedEvent;
///
/// struct OrderCount;
///
/// #[async_trait::async_trait]
/// impl PgReadModel for OrderCount {
///     async fn apply(&self, tx: &mut sqlx::PgConnection, events: &[RecordedEvent])
///         -> Result<(), ProjectionError> {
///         sqlx::query("UPDATE app.order_count SET n = n + $1")
///             .bind(events.len() as i64)
///             .execute(&mut *tx)
///             .await?;
///         Ok(())
///     }
///     async fn reset(&self, tx: &mut sqlx::PgConnection) -> Result<(), ProjectionError> {
///         sqlx::query("UPDATE app.order_count SET n = 0").execute(&mut *tx).await?;
///         Ok(())
///     }
/// }
///
/// let view = PgProjection::new(pool, "app", "order_count", OrderCount).await?;
/// let handle = ProjectionRunner::new(store).start("order_count", Arc::new(view));
/// handle.catch_up().await?;
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct PgProjection<M> {
    pool: PgPool,
    name: String,
    checkpoint: String,
    lock: String,
    store: String,
    clear: String,
    model: M,
}

impl<M: PgReadModel> PgProjection<M> {
    /// The projection `name` of `model`, its checkpoint in
    /// `schema.es_checkpoints` (schema and table created if missing).
    ///
    /// # Errors
    /// [`EventStoreError::InvalidArgument`](crate::EventStoreError::InvalidArgument) for a bad schema name (see
    /// [`PgEventStoreBuilder::schema`](super::PgEventStoreBuilder::schema)),
    /// database errors.
    pub async fn new(
        pool: PgPool,
        schema: &str,
        name: impl Into<String>,
        model: M,
    ) -> Result<PgProjection<M>> {
        validate_schema(schema)?;
        let s = schema;
        sqlx::raw_sql(&format!(
            "SELECT pg_advisory_xact_lock(hashtext('wharf_es_{s}'));
             CREATE SCHEMA IF NOT EXISTS {s};
             CREATE TABLE IF NOT EXISTS {s}.es_checkpoints (
               name text PRIMARY KEY,
               next_position bigint NOT NULL)"
        ))
        .execute(&pool)
        .await
        .map_err(db_err)?;
        Ok(PgProjection {
            pool,
            name: name.into(),
            checkpoint: format!("SELECT next_position FROM {s}.es_checkpoints WHERE name = $1"),
            lock: format!(
                "INSERT INTO {s}.es_checkpoints (name, next_position) VALUES ($1, 0)
                 ON CONFLICT (name) DO UPDATE SET next_position = {s}.es_checkpoints.next_position
                 RETURNING next_position"
            ),
            store: format!("UPDATE {s}.es_checkpoints SET next_position = $2 WHERE name = $1"),
            clear: format!("DELETE FROM {s}.es_checkpoints WHERE name = $1"),
            model,
        })
    }

    /// The read model.
    pub fn model(&self) -> &M {
        &self.model
    }
}

#[async_trait]
impl<M: PgReadModel> Projection for PgProjection<M> {
    fn filter(&self) -> GlobalFilter {
        self.model.filter()
    }

    async fn checkpoint(&self) -> std::result::Result<Position, ProjectionError> {
        let p: Option<i64> = sqlx::query_scalar(&self.checkpoint)
            .bind(&self.name)
            .fetch_optional(&self.pool)
            .await?;
        Ok(Position(p.map(to_u64).transpose()?.unwrap_or(0)))
    }

    async fn apply(
        &self,
        events: &[RecordedEvent],
        next: Position,
    ) -> std::result::Result<(), ProjectionError> {
        let mut tx = self.pool.begin().await?;
        // Locks the checkpoint row to commit: a second runner of the same
        // projection waits here, then sees what this one stored.
        let stored: i64 = sqlx::query_scalar(&self.lock)
            .bind(&self.name)
            .fetch_one(&mut *tx)
            .await?;
        let stored = to_u64(stored)?;
        if next.value() <= stored {
            // Already applied (by another runner, or before a lost reply).
            return Ok(());
        }
        let fresh = events.partition_point(|e| e.position.value() < stored);
        if fresh < events.len() {
            self.model.apply(&mut tx, &events[fresh..]).await?;
        }
        sqlx::query(&self.store)
            .bind(&self.name)
            .bind(to_i64(next.value()))
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn reset(&self) -> std::result::Result<(), ProjectionError> {
        let mut tx = self.pool.begin().await?;
        self.model.reset(&mut tx).await?;
        sqlx::query(&self.clear)
            .bind(&self.name)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }
}
