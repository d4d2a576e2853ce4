//! The transactional outbox against the shared PostgreSQL server: rolled-back
//! rows never leave, committed ones are forwarded in order per key, at least
//! once, across a forwarder aborted between publish and delete and a forwarder
//! process killed with SIGKILL; two forwarders never publish at once.

mod service;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::Row;
use tokio::sync::{oneshot, Notify};
use wharf_core::{
    Backend, Message, Publisher, Receipt, Result, StartPosition, SubscribeOptions, Subscriber,
};
use wharf_postgres::outbox::{ForwarderStats, Outbox, OutboxForwarder};
use wharf_postgres::{PostgresBackend, PostgresConfig};

const KEYS: [&str; 3] = ["alpha", "beta", "gamma"];

/// A pool on the test server, or `None` when the test is skipped.
async fn pool_or_skip() -> Option<PgPool> {
    match PgPoolOptions::new()
        .max_connections(4)
        .acquire_timeout(Duration::from_secs(5))
        .connect(&service::url())
        .await
    {
        Ok(p) => Some(p),
        Err(e) => {
            service::skip_or_fail(&wharf_core::Error::Unavailable {
                backend: "postgres",
                source: Box::new(e),
            });
            None
        }
    }
}

/// Drops the listed schemas when the test ends, even when it fails.
struct Cleanup(Vec<String>);

impl Drop for Cleanup {
    fn drop(&mut self) {
        service::drop_schemas_blocking(std::mem::take(&mut self.0));
    }
}

/// Writes `txs` transactions of `per_tx` rows each (keys round-robin, payload
/// `key:seq`) plus one business row per transaction; every third transaction
/// rolls back (payload `rb-…`). Returns the committed payloads per key, in order.
async fn fill(
    pool: &PgPool,
    outbox: &Outbox,
    topic: &str,
    txs: usize,
    per_tx: usize,
) -> HashMap<String, Vec<String>> {
    let schema = outbox.schema();
    sqlx::raw_sql(&format!(
        "CREATE TABLE IF NOT EXISTS {schema}.orders (id int PRIMARY KEY)"
    ))
    .execute(pool)
    .await
    .expect("business table");
    let mut committed: HashMap<String, Vec<String>> = HashMap::new();
    let mut next: HashMap<&str, usize> = HashMap::new();
    let mut row = 0;
    for t in 0..txs {
        let rollback = t % 3 == 2;
        let mut tx = pool.begin().await.expect("begin");
        sqlx::query(&format!("INSERT INTO {schema}.orders (id) VALUES ($1)"))
            .bind(i32::try_from(t).expect("small"))
            .execute(&mut *tx)
            .await
            .expect("business row");
        let mut written = Vec::new();
        for _ in 0..per_tx {
            let key = KEYS[row % KEYS.len()];
            row += 1;
            let payload = if rollback {
                format!("rb-{key}:{t}")
            } else {
                let n = next.entry(key).or_default();
                *n += 1;
                format!("{key}:{}", *n - 1)
            };
            let m = Message::builder().key(key).payload(payload.clone()).build();
            outbox.enqueue(&mut tx, topic, m).await.expect("enqueue");
            written.push((key, payload));
        }
        if rollback {
            tx.rollback().await.expect("rollback");
        } else {
            tx.commit().await.expect("commit");
            for (k, p) in written {
                committed.entry(k.to_owned()).or_default().push(p);
            }
        }
    }
    let orders: i64 = sqlx::query_scalar(&format!("SELECT count(*) FROM {schema}.orders"))
        .fetch_one(pool)
        .await
        .expect("count orders");
    let committed_txs = (0..txs).filter(|t| t % 3 != 2).count();
    assert_eq!(
        usize::try_from(orders).expect("count"),
        committed_txs,
        "business rows and outbox rows commit together"
    );
    committed
}

/// Checks received payloads (in delivery order): no rolled-back row, and per
/// key the first occurrences are exactly the committed sequence. Returns how
/// many were repeats.
fn check_order(received: &[(String, String)], committed: &HashMap<String, Vec<String>>) -> usize {
    let mut firsts: HashMap<String, Vec<String>> = HashMap::new();
    let mut seen = std::collections::HashSet::new();
    let mut repeats = 0;
    for (key, payload) in received {
        assert!(
            !payload.starts_with("rb-"),
            "a rolled-back row was published: {payload}"
        );
        if seen.insert(payload.clone()) {
            firsts.entry(key.clone()).or_default().push(payload.clone());
        } else {
            repeats += 1;
        }
    }
    assert_eq!(&firsts, committed, "per-key order of first publishes");
    repeats
}

async fn wait_until_drained(pool: &PgPool, outbox: &Outbox) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while outbox.pending(pool).await.expect("pending") > 0 {
        assert!(Instant::now() < deadline, "outbox not drained in time");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Publishes through to `inner` until `pass` publishes happened; then signals
/// `reached` and never completes another publish (so the forwarder is stuck
/// between publishing part of a batch and deleting it).
struct Gate {
    inner: Arc<dyn Publisher>,
    pass: u64,
    count: AtomicU64,
    reached: Arc<Notify>,
}

#[async_trait]
impl Publisher for Gate {
    async fn publish(&self, topic: &str, message: Message) -> Result<Receipt> {
        if self.count.fetch_add(1, Ordering::SeqCst) >= self.pass {
            self.reached.notify_one();
            std::future::pending::<()>().await;
        }
        self.inner.publish(topic, message).await
    }
}

fn spawn_forwarder(
    forwarder: OutboxForwarder,
) -> (
    oneshot::Sender<()>,
    tokio::task::JoinHandle<Result<ForwarderStats>>,
) {
    let (stop, stopped) = oneshot::channel::<()>();
    let handle = tokio::spawn(forwarder.run(async move {
        let _ = stopped.await;
    }));
    (stop, handle)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aborted_forwarder_is_resumed_without_losing_or_reordering_committed_rows() {
    let Some(pool) = pool_or_skip().await else {
        return;
    };
    let schema = service::unique_schema("wob");
    let _cleanup = Cleanup(vec![schema.clone()]);
    let outbox = Outbox::new(schema.clone()).expect("outbox");
    outbox.install(&pool).await.expect("install");
    let topic = "orders.events";
    let committed = fill(&pool, &outbox, topic, 12, 5).await;
    let total: usize = committed.values().map(Vec::len).sum();
    assert_eq!(total, 40);

    let target = Arc::new(wharf_memory::MemoryBackend::new());
    let opts = SubscribeOptions::new(topic)
        .group("g")
        .start(StartPosition::Earliest);
    let mut sub = target.subscribe(opts).await.expect("subscribe");

    // First forwarder: batches of 10; dies after 25 publishes, i.e. with
    // rows 21..=25 published but their batch not deleted.
    let reached = Arc::new(Notify::new());
    let gate = Arc::new(Gate {
        inner: target.clone(),
        pass: 25,
        count: AtomicU64::new(0),
        reached: reached.clone(),
    });
    let first = OutboxForwarder::new(pool.clone(), gate)
        .outbox(outbox.clone())
        .batch_size(10)
        .poll_interval(Duration::from_millis(50));
    let (_stop, handle) = spawn_forwarder(first);
    tokio::time::timeout(Duration::from_secs(20), reached.notified())
        .await
        .expect("first forwarder reached the gate");
    handle.abort();
    assert!(handle.await.expect_err("aborted").is_cancelled());
    assert_eq!(outbox.pending(&pool).await.expect("pending"), 20);

    // A new forwarder finishes the job.
    let second = OutboxForwarder::new(pool.clone(), target.clone())
        .outbox(outbox.clone())
        .batch_size(10)
        .poll_interval(Duration::from_millis(50));
    let (stop, handle) = spawn_forwarder(second);
    wait_until_drained(&pool, &outbox).await;
    stop.send(()).expect("forwarder still running");
    let stats = handle.await.expect("join").expect("run");
    assert_eq!(stats.published, 20);

    let mut received = Vec::new();
    while let Ok(Some(d)) = tokio::time::timeout(Duration::from_millis(500), sub.next()).await {
        let d = d.expect("delivery");
        let key = String::from_utf8_lossy(d.message().key().expect("key")).into_owned();
        received.push((
            key,
            String::from_utf8_lossy(d.message().payload()).into_owned(),
        ));
        d.ack().await.expect("ack");
    }
    let repeats = check_order(&received, &committed);
    assert_eq!(
        repeats, 5,
        "the 5 published-but-undeleted rows go out twice"
    );
    assert_eq!(received.len(), total + 5);
    target.close().await.expect("close target");
}

/// Under `WHARF_OUTBOX_CHILD=<outbox schema>,<target schema>` this test
/// process is the child: it forwards slowly until it is killed.
async fn child_forwarder(spec: &str) {
    let (outbox_schema, target_schema) = spec.split_once(',').expect("two schemas");
    let pool = pool_or_skip().await.expect("child reaches postgres");
    let target =
        PostgresBackend::connect(PostgresConfig::new(service::url()).schema(target_schema))
            .await
            .expect("child target");
    struct Slow(PostgresBackend);
    #[async_trait]
    impl Publisher for Slow {
        async fn publish(&self, topic: &str, message: Message) -> Result<Receipt> {
            tokio::time::sleep(Duration::from_millis(3)).await;
            self.0.publish(topic, message).await
        }
    }
    let f = OutboxForwarder::new(pool, Arc::new(Slow(target)))
        .outbox(Outbox::new(outbox_schema).expect("outbox"))
        .batch_size(16);
    let r = f.run(std::future::pending()).await;
    panic!("child forwarder stopped: {r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarder_killed_with_sigkill_is_resumed_by_a_new_one_in_order() {
    if let Ok(spec) = std::env::var("WHARF_OUTBOX_CHILD") {
        child_forwarder(&spec).await;
        return;
    }
    let Some(pool) = pool_or_skip().await else {
        return;
    };
    let outbox_schema = service::unique_schema("wok");
    let target_schema = service::unique_schema("wkt");
    let _cleanup = Cleanup(vec![outbox_schema.clone(), target_schema.clone()]);
    let outbox = Outbox::new(outbox_schema.clone()).expect("outbox");
    outbox.install(&pool).await.expect("install");
    let topic = "orders.events";
    let committed = fill(&pool, &outbox, topic, 60, 5).await;
    let total: usize = committed.values().map(Vec::len).sum();
    let target = PostgresBackend::connect(
        PostgresConfig::new(service::url())
            .schema(target_schema.clone())
            .max_connections(2),
    )
    .await
    .expect("target");
    target.ensure_topic(topic).await.expect("topic");

    let mut child = tokio::process::Command::new(std::env::current_exe().expect("test binary"))
        .args([
            "--exact",
            "forwarder_killed_with_sigkill_is_resumed_by_a_new_one_in_order",
            "--nocapture",
        ])
        .env(
            "WHARF_OUTBOX_CHILD",
            format!("{outbox_schema},{target_schema}"),
        )
        .kill_on_drop(true)
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("spawn the child forwarder");
    let count_sql = format!("SELECT count(*) FROM {target_schema}.messages");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let n: i64 = sqlx::query_scalar(&count_sql)
            .fetch_one(&pool)
            .await
            .expect("count");
        if n >= 50 {
            break;
        }
        assert!(Instant::now() < deadline, "child forwarded only {n} rows");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    child.start_kill().expect("SIGKILL the child");
    let status = child.wait().await.expect("reap the child");
    assert!(!status.success(), "the child was killed: {status:?}");
    let left = outbox.pending(&pool).await.expect("pending");
    assert!(left > 0, "the child was killed mid-stream");

    // The lock died with the child's session: a new forwarder takes over.
    let f = OutboxForwarder::new(pool.clone(), Arc::new(target.clone()))
        .outbox(outbox.clone())
        .batch_size(16)
        .poll_interval(Duration::from_millis(50));
    let (stop, handle) = spawn_forwarder(f);
    wait_until_drained(&pool, &outbox).await;
    stop.send(()).expect("forwarder still running");
    let stats = handle.await.expect("join").expect("run");
    println!(
        "child killed with {left} rows left; the new forwarder published {} ({} were duplicates)",
        stats.published, stats.duplicates
    );
    assert!(stats.published >= left);

    // The target dedups by id, so it holds each row once, in first-publish order.
    let rows = sqlx::query(&format!(
        r#"SELECT key, payload FROM {target_schema}.messages WHERE topic = $1 ORDER BY "offset""#
    ))
    .bind(topic)
    .fetch_all(&pool)
    .await
    .expect("read target");
    let received: Vec<(String, String)> = rows
        .iter()
        .map(|r| {
            let k: Vec<u8> = r.get("key");
            let p: Vec<u8> = r.get("payload");
            (
                String::from_utf8_lossy(&k).into_owned(),
                String::from_utf8_lossy(&p).into_owned(),
            )
        })
        .collect();
    assert_eq!(check_order(&received, &committed), 0);
    assert_eq!(received.len(), total);
    target.close().await.expect("close target");
}

/// Counts publishes in progress at once.
struct Overlap {
    inner: Arc<dyn Publisher>,
    now: AtomicUsize,
    max: AtomicUsize,
}

#[async_trait]
impl Publisher for Overlap {
    async fn publish(&self, topic: &str, message: Message) -> Result<Receipt> {
        let n = self.now.fetch_add(1, Ordering::SeqCst) + 1;
        self.max.fetch_max(n, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(2)).await;
        let r = self.inner.publish(topic, message).await;
        self.now.fetch_sub(1, Ordering::SeqCst);
        r
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_forwarders_on_one_outbox_never_publish_concurrently() {
    let Some(pool) = pool_or_skip().await else {
        return;
    };
    let schema = service::unique_schema("wo2");
    let _cleanup = Cleanup(vec![schema.clone()]);
    let outbox = Outbox::new(schema.clone()).expect("outbox");
    outbox.install(&pool).await.expect("install");
    let topic = "orders.events";
    let committed = fill(&pool, &outbox, topic, 15, 4).await;
    let total: usize = committed.values().map(Vec::len).sum();
    let target = Arc::new(wharf_memory::MemoryBackend::new());
    let opts = SubscribeOptions::new(topic)
        .group("g")
        .start(StartPosition::Earliest);
    let mut sub = target.subscribe(opts).await.expect("subscribe");
    let overlap = Arc::new(Overlap {
        inner: target.clone(),
        now: AtomicUsize::new(0),
        max: AtomicUsize::new(0),
    });
    let mut running = Vec::new();
    for _ in 0..2 {
        let f = OutboxForwarder::new(pool.clone(), overlap.clone())
            .outbox(outbox.clone())
            .batch_size(5)
            .poll_interval(Duration::from_millis(20));
        running.push(spawn_forwarder(f));
    }
    wait_until_drained(&pool, &outbox).await;
    let mut published = 0;
    for (stop, handle) in running {
        stop.send(()).expect("forwarder still running");
        published += handle.await.expect("join").expect("run").published;
    }
    assert_eq!(overlap.max.load(Ordering::SeqCst), 1);
    assert_eq!(published, u64::try_from(total).expect("small"));
    let mut received = Vec::new();
    while let Ok(Some(d)) = tokio::time::timeout(Duration::from_millis(300), sub.next()).await {
        let d = d.expect("delivery");
        let key = String::from_utf8_lossy(d.message().key().expect("key")).into_owned();
        received.push((
            key,
            String::from_utf8_lossy(d.message().payload()).into_owned(),
        ));
        d.ack().await.expect("ack");
    }
    assert_eq!(check_order(&received, &committed), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enqueue_rejects_bad_topics_and_oversized_messages() {
    let Some(pool) = pool_or_skip().await else {
        return;
    };
    let schema = service::unique_schema("wo3");
    let _cleanup = Cleanup(vec![schema.clone()]);
    let outbox = Outbox::new(schema).expect("outbox");
    outbox.install(&pool).await.expect("install");
    let mut tx = pool.begin().await.expect("begin");
    let r = outbox
        .enqueue(&mut tx, "bad topic", Message::new("x"))
        .await;
    assert!(
        matches!(r, Err(wharf_core::Error::InvalidName { .. })),
        "{r:?}"
    );
    let big = Message::new(vec![0u8; wharf_postgres::MAX_MESSAGE_BYTES + 1]);
    let r = outbox.enqueue(&mut tx, "ok.topic", big).await;
    assert!(
        matches!(r, Err(wharf_core::Error::MessageTooLarge { .. })),
        "{r:?}"
    );
    tx.commit().await.expect("commit");
    assert_eq!(outbox.pending(&pool).await.expect("pending"), 0);
    assert!(Outbox::new("Bad-Schema").is_err());
}
