//! The PostgreSQL event store against the shared server (feature
//! `postgres`): the whole conformance suite, each case in a schema of its
//! own (dropped afterwards), and the sequence-gap problem — a reader
//! tailing the global log never skips an event whose transaction commits
//! after a later one — with transactions held open while others commit.
//! Skips when the server is down, fails instead under
//! `WHARF_REQUIRE_SERVICES=1`.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use rand::Rng;
use sqlx::postgres::{PgPool, PgPoolOptions};
use wharf_eventstore::postgres::{PgEventStore, PgProjection, PgReadModel};
use wharf_eventstore::projection::{Projection, ProjectionError, ProjectionRunner};
use wharf_eventstore::{
    AppendCondition, AppendRequest, EventData, EventStore, EventStoreError, ExpectedVersion,
    GlobalFilter, ManualClock, Position, Query, ReadStream, RecordedEvent, StreamId,
    StreamMetadata,
};
use wharf_testkit::eventstore::EventStoreFactory;
use wharf_testkit::WAIT;

fn url() -> String {
    std::env::var("WHARF_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

/// Runs `f` on a runtime of its own on another thread (usable from sync
/// tests and from inside a runtime).
fn on_own_runtime<T: Send + 'static, Fut: std::future::Future<Output = T>>(
    f: impl FnOnce() -> Fut + Send + 'static,
) -> T {
    std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
            .block_on(f())
    })
    .join()
    .expect("helper thread")
}

/// A schema of its own on the shared server, dropped on drop; `None` (after
/// reporting) when the server is unreachable.
struct Schema(String);

impl Schema {
    fn new() -> Option<Schema> {
        let reachable = on_own_runtime(|| async {
            match PgPoolOptions::new()
                .max_connections(1)
                .acquire_timeout(Duration::from_secs(5))
                .connect(&url())
                .await
            {
                Ok(p) => {
                    p.close().await;
                    Ok(())
                }
                Err(e) => Err(e.to_string()),
            }
        });
        match reachable {
            Ok(()) => Some(Schema(wharf_testkit::unique_name("wes").replace('-', "_"))),
            Err(e) => {
                wharf_testkit::service::report_unreachable("postgres", &url(), &e);
                None
            }
        }
    }

    async fn store(&self) -> PgEventStore {
        PgEventStore::builder(url())
            .schema(&self.0)
            .max_connections(6)
            .connect()
            .await
            .expect("connect the store")
    }
}

impl Drop for Schema {
    fn drop(&mut self) {
        let schema = std::mem::take(&mut self.0);
        wharf_testkit::service::cleanup_blocking(move || async move {
            let Ok(pool) = PgPoolOptions::new()
                .max_connections(1)
                .connect(&url())
                .await
            else {
                return;
            };
            for attempt in 1..=5 {
                match sqlx::raw_sql(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))
                    .execute(&pool)
                    .await
                {
                    Ok(_) => break,
                    Err(e) if attempt == 5 => eprintln!("cleanup: dropping {schema}: {e}"),
                    Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
                }
            }
            pool.close().await;
        });
    }
}

#[async_trait]
impl EventStoreFactory for Schema {
    async fn open(&self) -> Arc<dyn EventStore> {
        Arc::new(self.store().await)
    }
}

mod conformance {
    use super::*;
    wharf_testkit::eventstore_tests!(match Schema::new() {
        Some(s) => s,
        None => return,
    });
}

fn stream(name: &str) -> StreamId {
    StreamId::new(name).expect("stream name")
}

/// Every event of `prefix` in the global log, page by page.
async fn read_all_of(store: &dyn EventStore, prefix: &str) -> Vec<RecordedEvent> {
    let filter = GlobalFilter::all().stream_prefix(prefix);
    let (mut out, mut from) = (Vec::new(), Position::START);
    loop {
        let page = store.read_all(from, &filter, 500).await.expect("read_all");
        out.extend(page.events);
        from = page.next;
        if page.is_end {
            return out;
        }
    }
}

/// Reads on from `cursor` to the current end, as a tailing reader does.
async fn tail(
    store: &dyn EventStore,
    prefix: &str,
    cursor: &mut Position,
    seen: &mut Vec<RecordedEvent>,
) {
    let filter = GlobalFilter::all().stream_prefix(prefix);
    loop {
        let page = store.read_all(*cursor, &filter, 7).await.expect("tail");
        seen.extend(page.events);
        *cursor = page.next;
        if page.is_end {
            return;
        }
    }
}

/// Waits until a statement on `schema`'s head row waits for a lock (the
/// second writer queued behind the open transaction).
async fn wait_for_lock_waiter(pool: &PgPool, schema: &str) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let waiting: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity \
             WHERE wait_event_type = 'Lock' AND query LIKE '%' || $1 || '.es_head%'",
        )
        .bind(schema)
        .fetch_one(pool)
        .await
        .expect("pg_stat_activity");
        if waiting > 0 {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the second writer never queued behind the open transaction"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Writer A takes a position inside a transaction it keeps open; writer B
/// appends meanwhile. B cannot commit a later position while A is open (it
/// queues on the head lock), so a reader tailing the log does not move past
/// A's position; once A commits, the reader gets A's event and then B's,
/// each once, in position order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tailing_reader_never_skips_an_event_whose_transaction_commits_late() {
    let Some(schema) = Schema::new() else { return };
    let store = schema.store().await;
    let ns = wharf_testkit::unique_name("gap");
    store
        .append(
            &stream(&format!("{ns}-seed")),
            ExpectedVersion::NoStream,
            vec![EventData::new("Seed", "{}")],
        )
        .await
        .expect("seed");
    let (mut cursor, mut seen) = (Position::START, Vec::new());
    tail(&store, &ns, &mut cursor, &mut seen).await;
    assert_eq!(seen.len(), 1);

    let mut tx_a = store.pool().begin().await.expect("begin A");
    let a = store
        .append_in(
            &mut tx_a,
            &AppendRequest::new(
                stream(&format!("{ns}-a")),
                ExpectedVersion::NoStream,
                vec![EventData::new("A", "{}")],
            ),
        )
        .await
        .expect("A appends in its open transaction");
    let b = {
        let store = store.clone();
        let s = stream(&format!("{ns}-b"));
        tokio::spawn(async move {
            store
                .append(
                    &s,
                    ExpectedVersion::NoStream,
                    vec![EventData::new("B", "{}")],
                )
                .await
        })
    };
    wait_for_lock_waiter(store.pool(), store.schema()).await;
    assert!(!b.is_finished(), "B committed while A held its position");
    tail(&store, &ns, &mut cursor, &mut seen).await;
    assert_eq!(seen.len(), 1, "nothing uncommitted is visible");
    assert!(
        cursor <= a.first_position,
        "the reader moved past A's uncommitted position {} to {cursor}",
        a.first_position
    );

    tx_a.commit().await.expect("commit A");
    let b = b.await.expect("B task").expect("B appends after A");
    assert!(b.first_position > a.last_position);
    tail(&store, &ns, &mut cursor, &mut seen).await;
    let types: Vec<&str> = seen.iter().map(|e| e.event_type.as_str()).collect();
    assert_eq!(
        types,
        ["Seed", "A", "B"],
        "each event once, in position order"
    );
    assert_eq!(seen, read_all_of(&store, &ns).await);
}

/// The control: the same tailing reader over a plain `bigserial` table does
/// skip a late commit — the problem the store's head lock prevents (and
/// proof that the tail above would notice it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_tail_over_a_bigserial_table_skips_a_late_commit() {
    let Some(schema) = Schema::new() else { return };
    let pool = PgPoolOptions::new()
        .max_connections(3)
        .connect(&url())
        .await
        .expect("pool");
    let s = &schema.0;
    sqlx::raw_sql(&format!(
        "CREATE SCHEMA {s}; CREATE TABLE {s}.log (position bigserial PRIMARY KEY, what text)"
    ))
    .execute(&pool)
    .await
    .expect("table");
    let insert = format!("INSERT INTO {s}.log (what) VALUES ($1)");
    let read = format!("SELECT position, what FROM {s}.log WHERE position > $1 ORDER BY position");
    let mut tx_a = pool.begin().await.expect("begin A");
    sqlx::query(&insert)
        .bind("A")
        .execute(&mut *tx_a)
        .await
        .expect("A takes position 1 and stays open");
    sqlx::query(&insert)
        .bind("B")
        .execute(&pool)
        .await
        .expect("B takes position 2 and commits");
    // The reader sees B (position 2) and moves its cursor there ...
    let rows: Vec<(i64, String)> = sqlx::query_as(&read)
        .bind(0i64)
        .fetch_all(&pool)
        .await
        .expect("tail");
    let cursor = rows.last().map_or(0, |r| r.0);
    let mut seen: Vec<String> = rows.into_iter().map(|(_, w)| w).collect();
    // ... then A commits position 1, behind the cursor.
    tx_a.commit().await.expect("commit A");
    let rows: Vec<(i64, String)> = sqlx::query_as(&read)
        .bind(cursor)
        .fetch_all(&pool)
        .await
        .expect("tail after A");
    seen.extend(rows.into_iter().map(|(_, w)| w));
    assert_eq!(
        seen,
        ["B"],
        "A committed behind the reader's cursor and was skipped"
    );
    let all: i64 = sqlx::query_scalar(&format!("SELECT count(*) FROM {s}.log"))
        .fetch_one(&pool)
        .await
        .expect("count");
    assert_eq!(all, 2, "both are stored");
    pool.close().await;
}

/// Many writers whose commits interleave — half of them append inside a
/// transaction they keep open for a random moment before committing, some
/// of those roll back — while a reader tails the global log and a
/// subscription follows it: both see every committed event exactly once,
/// in position order, and nothing rolled back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tailing_readers_see_every_event_once_in_order_under_interleaved_commits() {
    let Some(schema) = Schema::new() else { return };
    let store = schema.store().await;
    let ns = wharf_testkit::unique_name("gapmix");
    let start = store.head().await.expect("head");
    let mut sub = store
        .subscribe(
            wharf_eventstore::SubscribeFrom::Position(start),
            GlobalFilter::all().stream_prefix(&ns),
        )
        .await
        .expect("subscribe");
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let tailer = {
        let store = store.clone();
        let ns = ns.clone();
        let done = Arc::clone(&done);
        tokio::spawn(async move {
            let (mut cursor, mut seen) = (start, Vec::new());
            while !done.load(std::sync::atomic::Ordering::Acquire) {
                tail(&store, &ns, &mut cursor, &mut seen).await;
                tokio::task::yield_now().await;
            }
            tail(&store, &ns, &mut cursor, &mut seen).await;
            seen
        })
    };
    const WRITERS: usize = 4;
    const PER_WRITER: usize = 30;
    let mut writers = Vec::new();
    for w in 0..WRITERS {
        let store = store.clone();
        let s = stream(&format!("{ns}-w{w}"));
        writers.push(tokio::spawn(async move {
            let mut committed = 0usize;
            for i in 0..PER_WRITER {
                let (hold_ms, roll_back) = {
                    let mut rng = rand::thread_rng();
                    (rng.gen_range(0..4u64), rng.gen_bool(0.2))
                };
                let req = AppendRequest::new(
                    s.clone(),
                    ExpectedVersion::Any,
                    (0..1 + i % 3)
                        .map(|k| EventData::new("E", format!("{w}/{i}/{k}")))
                        .collect(),
                );
                if w % 2 == 0 {
                    let mut tx = store.pool().begin().await.expect("begin");
                    store.append_in(&mut tx, &req).await.expect("append in");
                    // The application's own work with the position taken.
                    tokio::time::sleep(Duration::from_millis(hold_ms)).await;
                    if roll_back {
                        tx.rollback().await.expect("rollback");
                    } else {
                        tx.commit().await.expect("commit");
                        committed += req.events.len();
                    }
                } else {
                    store.append_with(req.clone()).await.expect("append");
                    committed += req.events.len();
                }
            }
            committed
        }));
    }
    let mut committed = 0;
    for w in writers {
        committed += w.await.expect("writer");
    }
    done.store(true, std::sync::atomic::Ordering::Release);
    let tailed = tailer.await.expect("tailer");
    let all = read_all_of(&store, &ns).await;
    assert_eq!(
        all.len(),
        committed,
        "every committed event, none rolled back"
    );
    assert!(all.windows(2).all(|w| w[0].position < w[1].position));
    assert_eq!(
        tailed, all,
        "the tailing reader saw each event once, in order"
    );
    let mut subscribed = Vec::new();
    while subscribed.len() < all.len() {
        match tokio::time::timeout(WAIT, sub.next()).await {
            Ok(Some(Ok(e))) => subscribed.push(e),
            other => panic!("subscription after {}: {other:?}", subscribed.len()),
        }
    }
    assert_eq!(
        subscribed, all,
        "the subscription saw each event once, in order"
    );
}

/// `max_age` hides events by the store's clock (a manual one here).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_age_hides_events_older_than_the_clock_allows() {
    let Some(schema) = Schema::new() else { return };
    let clock = Arc::new(ManualClock::new(1_000_000));
    let store = PgEventStore::builder(url())
        .schema(&schema.0)
        .max_connections(2)
        .clock(clock.clone())
        .connect()
        .await
        .expect("connect");
    let s = stream("aged");
    store
        .append(
            &s,
            ExpectedVersion::NoStream,
            vec![EventData::new("Old", "")],
        )
        .await
        .expect("old");
    clock.advance(Duration::from_secs(5));
    store
        .append(
            &s,
            ExpectedVersion::Exact(0),
            vec![EventData::new("New", "")],
        )
        .await
        .expect("new");
    store
        .set_stream_metadata(
            &s,
            StreamMetadata::new().with_max_age(Duration::from_secs(3)),
        )
        .await
        .expect("max age");
    let read = |store: PgEventStore| {
        let s = s.clone();
        async move {
            store
                .read_stream(&s, ReadStream::forwards())
                .await
                .expect("read")
                .iter()
                .map(|e| e.event_type.clone())
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(read(store.clone()).await, ["New"]);
    clock.advance(Duration::from_secs(3));
    assert_eq!(
        read(store.clone()).await,
        ["New"],
        "exactly 3 s old: still read"
    );
    clock.advance(Duration::from_millis(1));
    assert!(read(store.clone()).await.is_empty());
    assert_eq!(
        read_all_of(&store, "aged").await.len(),
        2,
        "the global log keeps both"
    );
}

/// A bad schema name is refused before anything is created.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_schema_name_is_a_typed_error() {
    for bad in ["", "Upper", "a;drop table x", "1abc"] {
        assert!(matches!(
            PgEventStore::builder(url()).schema(bad).connect().await,
            Err(wharf_eventstore::EventStoreError::InvalidArgument {
                field: "schema",
                ..
            })
        ));
    }
}

/// A read model in PostgreSQL for the projection tests: one row per event
/// applied (no key, so a second application would show as a duplicate),
/// failing its first `fail_first` batches after writing their rows.
struct Seen {
    schema: String,
    prefix: String,
    fail_first: std::sync::atomic::AtomicUsize,
}

#[async_trait]
impl PgReadModel for Seen {
    fn filter(&self) -> GlobalFilter {
        GlobalFilter::all().stream_prefix(&self.prefix)
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
        let failing = self
            .fail_first
            .fetch_update(
                std::sync::atomic::Ordering::AcqRel,
                std::sync::atomic::Ordering::Acquire,
                |n| n.checked_sub(1),
            )
            .is_ok();
        if failing {
            return Err("the read model failed after writing its rows".into());
        }
        Ok(())
    }

    async fn reset(&self, tx: &mut sqlx::PgConnection) -> Result<(), ProjectionError> {
        sqlx::query(&format!("DELETE FROM {}.seen", self.schema))
            .execute(&mut *tx)
            .await?;
        Ok(())
    }
}

async fn seen_rows(pool: &PgPool, schema: &str) -> Vec<i64> {
    sqlx::query_scalar(&format!(
        "SELECT position FROM {schema}.seen ORDER BY position"
    ))
    .fetch_all(pool)
    .await
    .expect("seen rows")
}

/// Rows and checkpoint commit together: batches that fail after writing
/// their rows leave neither behind, two runners of the same projection
/// never apply an event twice, and a rebuild ends where the live run did.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_projection_applies_each_event_once_with_its_checkpoint() {
    let Some(schema) = Schema::new() else { return };
    let store = schema.store().await;
    let ns = wharf_testkit::unique_name("proj");
    sqlx::raw_sql(&format!(
        "CREATE TABLE {}.seen (position bigint NOT NULL)",
        schema.0
    ))
    .execute(store.pool())
    .await
    .expect("read model table");
    let append_events = |from: u64| {
        let store = store.clone();
        let ns = ns.clone();
        async move {
            let mut positions = Vec::new();
            for n in from..from + 60 {
                let r = store
                    .append(
                        &stream(&format!("{ns}-{}", n % 5)),
                        ExpectedVersion::Any,
                        vec![EventData::new("E", format!("{n}"))],
                    )
                    .await
                    .expect("append");
                positions.push(r.first_position.value() as i64);
                if n % 20 == 0 {
                    // Noise outside the filter.
                    store
                        .append(
                            &stream("other"),
                            ExpectedVersion::Any,
                            vec![EventData::new("X", "")],
                        )
                        .await
                        .expect("noise");
                }
            }
            positions
        }
    };
    let make = |fail_first: usize| {
        let model = Seen {
            schema: schema.0.clone(),
            prefix: ns.clone(),
            fail_first: std::sync::atomic::AtomicUsize::new(fail_first),
        };
        PgProjection::new(store.pool().clone(), &schema.0, "seen", model)
    };
    let shared: Arc<dyn EventStore> = Arc::new(store.clone());
    let runner = ProjectionRunner::new(shared).batch_size(7);

    // One runner whose first two batches fail after writing their rows.
    let mut positions = append_events(0).await;
    let a = Arc::new(make(2).await.expect("projection a"));
    let ha = runner.start("seen-a", a.clone());
    let done = tokio::time::timeout(WAIT, ha.catch_up())
        .await
        .expect("caught up in time")
        .expect("a catches up");
    assert_eq!(
        seen_rows(store.pool(), &schema.0).await,
        positions,
        "each event's row once, none of the failed batches' rows"
    );
    assert_eq!(ha.status().failures, 2, "the failed batches were retried");
    assert_eq!(a.checkpoint().await.expect("checkpoint"), done);
    assert!(done.value() as i64 > *positions.last().expect("events"));

    // A second runner of the same projection (same checkpoint) joins while
    // events keep coming: still each event once.
    let b = Arc::new(make(1).await.expect("projection b"));
    let hb = runner.start("seen-b", b.clone());
    positions.extend(append_events(60).await);
    tokio::time::timeout(WAIT, async {
        ha.catch_up().await.expect("a catches up");
        hb.catch_up().await.expect("b catches up");
    })
    .await
    .expect("both caught up in time");
    assert_eq!(seen_rows(store.pool(), &schema.0).await, positions);

    hb.stop().await;
    tokio::time::timeout(WAIT, ha.rebuild())
        .await
        .expect("rebuild in time")
        .expect("rebuild");
    tokio::time::timeout(WAIT, ha.catch_up())
        .await
        .expect("caught up again in time")
        .expect("catch up after rebuild");
    assert_eq!(seen_rows(store.pool(), &schema.0).await, positions);
    ha.stop().await;
}

/// Many concurrent conditional appends guarded by the same query (the
/// uniqueness pattern), queued behind a held head lock so the writer task
/// decides all of them in one group, each on what the earlier ones in the
/// group appended: exactly one succeeds, every other fails naming the
/// winner's position. (Without the in-group check two of them win.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_guarded_appends_in_one_group_have_exactly_one_winner() {
    let Some(schema) = Schema::new() else { return };
    let store = schema.store().await;
    let ns = wharf_testkit::unique_name("uniq");
    let tag = format!("{ns}:username=ada");
    let after = store
        .head()
        .await
        .expect("head")
        .value()
        .checked_sub(1)
        .map(Position);
    // Hold the head lock in an open transaction and let one append block
    // the writer task on it, so the 40 guarded appends queue up and are
    // decided together in the next group.
    let mut hold = store.pool().begin().await.expect("begin");
    store
        .append_in(
            &mut hold,
            &AppendRequest::new(
                stream(&format!("zz-{ns}")),
                ExpectedVersion::Any,
                vec![EventData::new("Hold", "")],
            ),
        )
        .await
        .expect("hold the lock");
    let blocked = {
        let store = store.clone();
        let s = stream(&format!("zz-{ns}-b"));
        tokio::spawn(async move {
            store
                .append(&s, ExpectedVersion::Any, vec![EventData::new("B", "")])
                .await
        })
    };
    wait_for_lock_waiter(store.pool(), store.schema()).await;
    let go = Arc::new(tokio::sync::Barrier::new(41));
    let tasks: Vec<_> = (0..40)
        .map(|i| {
            let (store, tag, go) = (store.clone(), tag.clone(), Arc::clone(&go));
            let s = stream(&format!("{ns}-user-{i}"));
            tokio::spawn(async move {
                go.wait().await;
                store
                    .append_with(
                        AppendRequest::new(
                            s,
                            ExpectedVersion::NoStream,
                            vec![EventData::new("Registered", "{}").with_tag(tag.clone())],
                        )
                        .condition(AppendCondition {
                            query: Query::tags([tag]),
                            after,
                        }),
                    )
                    .await
            })
        })
        .collect();
    go.wait().await;
    // Let the released tasks queue their appends behind the blocked one.
    tokio::time::sleep(Duration::from_millis(100)).await;
    hold.commit().await.expect("release the lock");
    blocked.await.expect("task").expect("blocked append");
    let mut winners = Vec::new();
    let mut conflicts = Vec::new();
    for t in tasks {
        match t.await.expect("task") {
            Ok(r) => winners.push(r.first_position),
            Err(EventStoreError::ConditionFailed { conflict, .. }) => conflicts.push(conflict),
            Err(e) => panic!("unexpected error {e}"),
        }
    }
    assert_eq!(winners.len(), 1, "exactly one registration");
    assert_eq!(conflicts.len(), 39);
    assert!(
        conflicts.iter().all(|c| *c == winners[0]),
        "each names the winner"
    );
    assert_eq!(read_all_of(&store, &ns).await.len(), 1);
}

/// A store on the application's pool: `close` ends subscriptions and
/// refuses appends, and leaves the pool open for the application.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closing_a_store_on_the_applications_pool_leaves_the_pool_open() {
    let Some(schema) = Schema::new() else { return };
    let pool = PgPoolOptions::new()
        .max_connections(4)
        .connect(&url())
        .await
        .expect("pool");
    let store = PgEventStore::with_pool(pool.clone())
        .schema(&schema.0)
        .connect()
        .await
        .expect("store");
    let s = stream("c");
    store
        .append(&s, ExpectedVersion::NoStream, vec![EventData::new("A", "")])
        .await
        .expect("append");
    let mut sub = store
        .subscribe(wharf_eventstore::SubscribeFrom::Start, GlobalFilter::all())
        .await
        .expect("subscribe");
    assert_eq!(
        tokio::time::timeout(WAIT, sub.next())
            .await
            .expect("in time")
            .expect("an event")
            .expect("ok")
            .event_type,
        "A"
    );
    store.close().await.expect("close");
    assert!(matches!(
        tokio::time::timeout(WAIT, sub.next()).await,
        Ok(None)
    ));
    assert!(matches!(
        store
            .append(&s, ExpectedVersion::Any, vec![EventData::new("B", "")])
            .await,
        Err(EventStoreError::Closed)
    ));
    let one: i32 = sqlx::query_scalar("SELECT 1")
        .fetch_one(&pool)
        .await
        .expect("the application's pool still works");
    assert_eq!(one, 1);
    let stored: i64 = sqlx::query_scalar(&format!("SELECT count(*) FROM {}.es_events", schema.0))
        .fetch_one(&pool)
        .await
        .expect("count");
    assert_eq!(stored, 1, "nothing appended after close");
    pool.close().await;
}
