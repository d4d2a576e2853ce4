//! `PgProjection` under `kill -9`: a child process (this same binary,
//! re-executed) runs a projection whose read model writes one row per event
//! and then lingers inside the batch's transaction; the parent kills it with
//! SIGKILL a random moment (0–40 ms) after it committed a batch of the
//! cycle's events, then checks, in one snapshot, that the rows
//! are exactly the events below the stored checkpoint — each once, none
//! from a batch whose checkpoint was not stored. New events arrive before
//! every cycle; after the last one the parent runs the projection to the
//! end itself and checks every event's row is there once.
//!
//! Runs without the libtest harness so the child can be the same
//! executable. Skips when PostgreSQL is unreachable (fails under
//! `WHARF_REQUIRE_SERVICES=1`). Cycles: 10 by default,
//! `WHARF_PG_PROJECTION_KILL_CYCLES=n` for more.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use rand::Rng;
use sqlx::postgres::{PgPool, PgPoolOptions};
use wharf_eventstore::postgres::{PgEventStore, PgProjection, PgReadModel};
use wharf_eventstore::projection::{ProjectionError, ProjectionRunner};
use wharf_eventstore::{
    EventData, EventStore, ExpectedVersion, GlobalFilter, RecordedEvent, StreamId,
};

const CHILD_SCHEMA: &str = "WHARF_PG_PROJECTION_KILL9_SCHEMA";
const PREFIX: &str = "acct-";

fn url() -> String {
    std::env::var("WHARF_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

/// One row per event, then a pause inside the transaction (the window the
/// kill aims at).
struct Rows {
    schema: String,
    linger: Duration,
}

#[async_trait]
impl PgReadModel for Rows {
    fn filter(&self) -> GlobalFilter {
        GlobalFilter::all().stream_prefix(PREFIX)
    }

    async fn apply(
        &self,
        tx: &mut sqlx::PgConnection,
        events: &[RecordedEvent],
    ) -> Result<(), ProjectionError> {
        let positions: Vec<i64> = events.iter().map(|e| e.position.value() as i64).collect();
        sqlx::query(&format!(
            "INSERT INTO {}.seen (position) SELECT unnest($1::bigint[])",
            self.schema
        ))
        .bind(positions)
        .execute(&mut *tx)
        .await?;
        sqlx::query("SELECT pg_sleep($1)")
            .bind(self.linger.as_secs_f64())
            .execute(&mut *tx)
            .await?;
        Ok(())
    }

    async fn reset(&self, tx: &mut sqlx::PgConnection) -> Result<(), ProjectionError> {
        sqlx::query(&format!("DELETE FROM {}.seen", self.schema))
            .execute(&mut *tx)
            .await?;
        Ok(())
    }
}

async fn store(schema: &str) -> PgEventStore {
    PgEventStore::builder(url())
        .schema(schema)
        .max_connections(3)
        .connect()
        .await
        .expect("connect the store")
}

async fn projection(pool: PgPool, schema: &str, linger: Duration) -> Arc<PgProjection<Rows>> {
    let model = Rows {
        schema: schema.to_owned(),
        linger,
    };
    Arc::new(
        PgProjection::new(pool, schema, "rows", model)
            .await
            .expect("projection"),
    )
}

/// The child: run the projection until killed.
async fn child(schema: String) {
    let store = store(&schema).await;
    let view = projection(store.pool().clone(), &schema, Duration::from_millis(4)).await;
    let runner = ProjectionRunner::new(Arc::new(store)).batch_size(8);
    let _handle = runner.start("rows", view);
    println!("started");
    std::future::pending::<()>().await;
}

/// The checkpoint and the read model's rows, in one snapshot.
async fn snapshot(pool: &PgPool, schema: &str) -> (i64, Vec<i64>) {
    sqlx::query_as(&format!(
        "SELECT coalesce((SELECT next_position FROM {schema}.es_checkpoints WHERE name = 'rows'), 0),
                array(SELECT position FROM {schema}.seen ORDER BY position)"
    ))
    .fetch_one(pool)
    .await
    .expect("snapshot")
}

async fn append_events(store: &PgEventStore, n: usize, cycle: usize) -> Vec<i64> {
    let mut out = Vec::new();
    for i in 0..n {
        let s = StreamId::new(format!("{PREFIX}{}", i % 7)).expect("stream");
        let r = store
            .append(
                &s,
                ExpectedVersion::Any,
                vec![EventData::new("Deposited", format!("{cycle}/{i}"))],
            )
            .await
            .expect("append");
        out.push(r.first_position.value() as i64);
        if i % 10 == 0 {
            let other = StreamId::new("other").expect("stream");
            store
                .append(
                    &other,
                    ExpectedVersion::Any,
                    vec![EventData::new("Noise", "")],
                )
                .await
                .expect("noise");
        }
    }
    out
}

async fn parent() {
    let reachable = PgPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(Duration::from_secs(5))
        .connect(&url())
        .await;
    if let Err(e) = reachable {
        wharf_testkit::service::report_unreachable("postgres", &url(), &e);
        return;
    }
    let schema = wharf_testkit::unique_name("wk9").replace('-', "_");
    let store = store(&schema).await;
    let pool = store.pool().clone();
    let result = tokio::spawn(run_cycles(store, schema.clone())).await;
    let _ = sqlx::raw_sql(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))
        .execute(&pool)
        .await;
    if let Err(e) = result {
        std::panic::resume_unwind(e.into_panic());
    }
}

async fn run_cycles(store: PgEventStore, schema: String) {
    let cycles: usize = std::env::var("WHARF_PG_PROJECTION_KILL_CYCLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10);
    sqlx::raw_sql(&format!(
        "CREATE TABLE {schema}.seen (position bigint NOT NULL)"
    ))
    .execute(store.pool())
    .await
    .expect("read model table");
    // Creates the checkpoint table before the first snapshot.
    projection(store.pool().clone(), &schema, Duration::ZERO).await;
    let exe = std::env::current_exe().expect("current exe");
    let mut positions: Vec<i64> = Vec::new();
    let mut mid_run = 0;
    for cycle in 0..cycles {
        let before = snapshot(store.pool(), &schema).await.0;
        positions.extend(append_events(&store, 120, cycle).await);
        let mut child = Command::new(&exe)
            .env(CHILD_SCHEMA, &schema)
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn the child");
        let stdout = child.stdout.take().expect("stdout");
        let started = tokio::task::spawn_blocking(move || {
            let mut line = String::new();
            BufReader::new(stdout).read_line(&mut line).expect("read");
            line
        })
        .await
        .expect("reader");
        assert_eq!(started.trim(), "started", "the child started");
        // Once the child committed a batch of this cycle's events, kill it
        // a random moment later (most of a batch's time is spent inside its
        // transaction, after its rows were written).
        let deadline = tokio::time::Instant::now() + wharf_testkit::WAIT;
        while snapshot(store.pool(), &schema).await.0 <= before {
            assert!(
                tokio::time::Instant::now() < deadline,
                "cycle {cycle}: the child made no progress"
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let wait = rand::thread_rng().gen_range(0..40);
        tokio::time::sleep(Duration::from_millis(wait)).await;
        child.kill().expect("SIGKILL the child");
        child.wait().expect("reap the child");

        let (checkpoint, rows) = snapshot(store.pool(), &schema).await;
        let below: Vec<i64> = positions
            .iter()
            .copied()
            .filter(|&p| p < checkpoint)
            .collect();
        assert_eq!(
            rows, below,
            "cycle {cycle}: the rows are exactly the events below the checkpoint {checkpoint}"
        );
        if below.len() < positions.len() {
            mid_run += 1;
        }
        println!(
            "cycle {cycle}: killed {wait} ms after a commit, checkpoint {checkpoint}, {} of {} events applied",
            below.len(),
            positions.len()
        );
    }
    assert!(
        mid_run > 0,
        "no kill landed while the projection had events left (the test would prove nothing)"
    );
    // The rest, in this process: every event's row once.
    let view = projection(store.pool().clone(), &schema, Duration::ZERO).await;
    let runner = ProjectionRunner::new(Arc::new(store.clone()));
    let handle = runner.start("rows", view);
    tokio::time::timeout(wharf_testkit::WAIT, handle.catch_up())
        .await
        .expect("caught up in time")
        .expect("catch up");
    handle.stop().await;
    let (checkpoint, rows) = snapshot(store.pool(), &schema).await;
    assert_eq!(rows, positions, "every event's row, each once");
    assert!(checkpoint > *positions.last().expect("events"));
    println!("pg_projection_kill9: {cycles} cycles ({mid_run} mid-run), ok");
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    match std::env::var(CHILD_SCHEMA) {
        Ok(schema) => rt.block_on(child(schema)),
        Err(_) => rt.block_on(parent()),
    }
}
