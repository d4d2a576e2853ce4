//! Consuming: a group row with per-topic cursors, delivery-state rows claimed
//! with `FOR UPDATE SKIP LOCKED`, and the acker that settles them (ack deletes
//! the row, nack reschedules it, reject / max deliveries moves the message to
//! the dead-letter topic in the same transaction).
//!
//! Each subscription runs one fetcher task: it waits for in-flight room and a
//! wake-up (NOTIFY, a local publish or settlement, or the poll interval),
//! copies new messages into delivery rows ("materialises" them under the group
//! row lock, so per-topic cursors only move over committed offsets) and claims
//! a batch. [`DeliveryStream::next`] only reads a channel, so it is cancel safe.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use sqlx::postgres::PgRow;
use sqlx::Row;
use tokio::sync::{mpsc, oneshot, watch, Semaphore};
use tokio::task::JoinHandle;
use wharf_core::{
    name, Acker, DeadLetter, Delivery, DeliveryInfo, DeliveryStream, Error, Result, Settlement,
    StartPosition, Subscription,
};

use crate::backend::{start_code, Inner};
use crate::rows::{db_err, insert_batch, message_from_row};

/// Most rows claimed in one round trip (the free in-flight slots cap it
/// too). Each claim is a transaction of its own (a commit, so an fsync), so
/// a consumer taking batches of 1,000 paid eight of them per batch at 128;
/// 1,024 matches the ack batcher's `DELETE`.
const CLAIM_BATCH: usize = 1024;

/// What a subscription asked for, resolved.
pub(crate) struct GroupSpec {
    pub name: Option<String>,
    pub pattern: String,
    pub regex: String,
    pub start: StartPosition,
    pub max_in_flight: usize,
    pub lease: Duration,
    pub max_deliveries: Option<u32>,
    pub dead_letter_topic: Option<String>,
}

fn ms_i64(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// Creates (or finds) the group and starts its fetcher.
pub(crate) async fn open_subscription(inner: Arc<Inner>, spec: GroupSpec) -> Result<Subscription> {
    let private = spec.name.is_none();
    let group_name = spec
        .name
        .clone()
        .unwrap_or_else(|| format!("_private-{}", wharf_core::MessageId::new()));
    let mut tx = inner.pool.begin().await.map_err(db_err)?;
    let created: Option<i64> = sqlx::query_scalar(&inner.sql.create_group)
        .bind(&group_name)
        .bind(&spec.pattern)
        .bind(&spec.regex)
        .bind(private)
        .fetch_optional(&mut *tx)
        .await
        .map_err(db_err)?;
    let gid = match created {
        Some(gid) => {
            let (code, arg) = start_code(spec.start);
            sqlx::query(&inner.sql.init_cursors)
                .bind(gid)
                .bind(&spec.regex)
                .bind(code)
                .bind(arg)
                .execute(&mut *tx)
                .await
                .map_err(db_err)?;
            gid
        }
        None => sqlx::query_scalar(&inner.sql.find_group)
            .bind(&group_name)
            .bind(&spec.pattern)
            .fetch_one(&mut *tx)
            .await
            .map_err(db_err)?,
    };
    tx.commit().await.map_err(db_err)?;

    let sem = Arc::new(Semaphore::new(spec.max_in_flight));
    let leases = Leases::default();
    let acker = Arc::new(PgAcker {
        settler: Settler {
            inner: inner.clone(),
            gid,
            group: if private { None } else { Some(group_name) },
            dead_letter_topic: spec.dead_letter_topic,
            max_deliveries: spec.max_deliveries,
            sem: sem.clone(),
            acks: spawn_ack_batcher(inner.clone(), gid, leases.clone()),
            leases,
        },
        runtime: tokio::runtime::Handle::current(),
    });
    let (stop, _) = watch::channel(false);
    let (tx, rx) = mpsc::channel(spec.max_in_flight.max(1));
    let fetcher = Fetcher {
        inner: inner.clone(),
        gid,
        regex: spec.regex,
        lease_ms: ms_i64(spec.lease),
        sem,
        tx,
        stop: stop.subscribe(),
        closed: inner.closed.subscribe(),
        wake: inner.wake.subscribe(),
        rounds: 0,
        stats: Stats::default(),
        settler: acker.settler.clone(),
    };
    let handle = tokio::spawn(fetcher.run());
    Ok(Subscription::new(PgStream {
        rx,
        acker,
        stop,
        closed: inner.closed.subscribe(),
        fetcher: Some(handle),
        done: false,
    }))
}

/// One claimed row, not yet handed out.
struct Claimed {
    token: i64,
    seq: i64,
    attempts: i32,
    topic: String,
    offset: i64,
    row: PgRow,
}

struct Fetcher {
    inner: Arc<Inner>,
    gid: i64,
    regex: String,
    lease_ms: i64,
    sem: Arc<Semaphore>,
    tx: mpsc::Sender<Claimed>,
    stop: watch::Receiver<bool>,
    closed: watch::Receiver<bool>,
    wake: watch::Receiver<u64>,
    rounds: u64,
    stats: Stats,
    settler: Settler,
}

/// Rows materialised since the fetcher last refreshed the planner's
/// statistics of `deliveries`, and when that was.
#[derive(Default)]
struct Stats {
    rows: u64,
    at: Option<std::time::Instant>,
}

/// Rows materialised at once (or since the last refresh) after which the
/// fetcher runs `ANALYZE` on `deliveries` itself. Autovacuum analyses a
/// table only once a minute at most: until then a burst of rows leaves the
/// planner thinking the group has a few hundred, and it claims with a
/// bitmap scan of every row of the group and a sort (on disk, over 100,000
/// rows about 120 ms a claim) instead of walking `deliveries_ready` in
/// order up to the limit.
const ANALYZE_AFTER_ROWS: u64 = 10_000;
/// Least time between two such refreshes by one fetcher.
const ANALYZE_EVERY: Duration = Duration::from_secs(5);

impl Stats {
    /// Counts `rows` just materialised; true when the planner's statistics
    /// of `deliveries` are due for a refresh (see [`ANALYZE_AFTER_ROWS`]).
    fn stale(&mut self, rows: u64) -> bool {
        self.rows += rows;
        let due =
            self.rows >= ANALYZE_AFTER_ROWS && self.at.is_none_or(|t| t.elapsed() >= ANALYZE_EVERY);
        if due {
            *self = Stats {
                rows: 0,
                at: Some(std::time::Instant::now()),
            };
        }
        due
    }
}

impl Fetcher {
    fn stopping(&self) -> bool {
        *self.stop.borrow() || *self.closed.borrow()
    }

    async fn run(mut self) {
        'outer: loop {
            let first = tokio::select! {
                p = self.sem.clone().acquire_owned() => p,
                _ = self.stop.wait_for(|s| *s) => break,
                _ = self.closed.wait_for(|s| *s) => break,
            };
            let Ok(first) = first else { break };
            first.forget();
            let mut room = 1;
            while room < CLAIM_BATCH {
                match self.sem.try_acquire() {
                    Ok(p) => {
                        p.forget();
                        room += 1;
                    }
                    Err(_) => break,
                }
            }
            let mut backoff = Duration::from_millis(100);
            loop {
                if self.stopping() {
                    self.sem.add_permits(room);
                    break 'outer;
                }
                self.wake.borrow_and_update();
                match self.fetch(room).await {
                    Ok(rows) if !rows.is_empty() => {
                        self.sem.add_permits(room - rows.len());
                        let mut rows = rows.into_iter();
                        while let Some(c) = rows.next() {
                            if let Err(mpsc::error::SendError(c)) = self.tx.send(c).await {
                                let rest: Vec<_> = std::iter::once(c).chain(rows).collect();
                                self.settler.unclaim(rest).await;
                                return;
                            }
                        }
                        continue 'outer;
                    }
                    Ok(_) => backoff = Duration::from_millis(100),
                    Err(e) => {
                        tracing::warn!(error = %e, "postgres fetch failed; retrying");
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(Duration::from_secs(5));
                    }
                }
                let poll = self.inner.config.poll_interval;
                tokio::select! {
                    _ = self.wake.changed() => {}
                    _ = tokio::time::sleep(poll) => {}
                    _ = self.stop.wait_for(|s| *s) => {}
                    _ = self.closed.wait_for(|s| *s) => {}
                }
            }
        }
    }

    async fn fetch(&mut self, room: usize) -> Result<Vec<Claimed>> {
        let sql = &self.inner.sql;
        let mut tx = self.inner.pool.begin().await.map_err(db_err)?;
        let exists: bool = sqlx::query_scalar(&sql.lock_group)
            .bind(self.gid)
            .fetch_one(&mut *tx)
            .await
            .map_err(db_err)?;
        if !exists {
            return Err(Error::Closed {
                what: "consumer group (deleted)",
            });
        }
        sqlx::query(&sql.discover_topics)
            .bind(self.gid)
            .bind(&self.regex)
            .execute(&mut *tx)
            .await
            .map_err(db_err)?;
        let materialised: i64 = sqlx::query_scalar(&sql.materialize)
            .bind(self.gid)
            .fetch_one(&mut *tx)
            .await
            .map_err(db_err)?;
        self.rounds += 1;
        if (self.rounds - 1).is_multiple_of(64) {
            sqlx::query(&sql.sweep_expired)
                .bind(self.gid)
                .execute(&mut *tx)
                .await
                .map_err(db_err)?;
        }
        tx.commit().await.map_err(db_err)?;
        if self.stats.stale(u64::try_from(materialised).unwrap_or(0)) {
            // Best effort: without it claims are slower, not wrong.
            if let Err(e) = sqlx::query(&sql.analyze_deliveries)
                .execute(&self.inner.pool)
                .await
            {
                tracing::debug!(error = %e, "postgres: ANALYZE of deliveries failed");
            }
        }
        let limit = self
            .settler
            .max_deliveries
            .map_or(i32::MAX, |m| i32::try_from(m).unwrap_or(i32::MAX));
        if limit < i32::MAX {
            let stuck: Vec<(i64, i64)> = sqlx::query_as(&sql.expired_at_limit)
                .bind(self.gid)
                .bind(limit)
                .fetch_all(&self.inner.pool)
                .await
                .map_err(db_err)?;
            for (tok, seq) in stuck {
                let token = u64::try_from(tok).unwrap_or(0);
                let reason = "max deliveries exceeded (lease expired on the last attempt)";
                match self.settler.dead_letter(token, tok, seq, reason).await {
                    Ok(()) | Err(Error::UnknownDelivery { .. }) => {}
                    Err(e) => return Err(e),
                }
            }
        }
        let rows = sqlx::query(&sql.claim)
            .bind(self.gid)
            .bind(i64::try_from(room).unwrap_or(i64::MAX))
            .bind(self.lease_ms)
            .bind(limit)
            .fetch_all(&self.inner.pool)
            .await
            .map_err(db_err)?;
        let claimed = rows
            .into_iter()
            .map(|row| {
                Ok(Claimed {
                    token: row.try_get("token").map_err(db_err)?,
                    seq: row.try_get("seq").map_err(db_err)?,
                    attempts: row.try_get("attempts").map_err(db_err)?,
                    topic: row.try_get("topic").map_err(db_err)?,
                    offset: row.try_get("offset").map_err(db_err)?,
                    row,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        self.settler
            .leases
            .hold(claimed.iter().map(|c| (c.token, c.seq)));
        Ok(claimed)
    }
}

/// The row (`seq`) of every lease token a subscription holds. Settlements
/// find their delivery row by its primary key `(gid, seq)` and check the
/// token there, so no index covers `token` and a claim, which sets it, is a
/// heap-only update (see the [schema](crate::schema)).
#[derive(Clone, Default)]
struct Leases(Arc<Mutex<HashMap<i64, i64>>>);

impl Leases {
    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<i64, i64>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn hold(&self, leases: impl IntoIterator<Item = (i64, i64)>) {
        self.map().extend(leases);
    }

    /// The row of `token`, if this subscription holds it.
    fn seq(&self, token: i64) -> Option<i64> {
        self.map().get(&token).copied()
    }

    fn forget(&self, tokens: impl IntoIterator<Item = i64>) {
        let mut map = self.map();
        for t in tokens {
            map.remove(&t);
        }
    }
}

struct PgStream {
    rx: mpsc::Receiver<Claimed>,
    acker: Arc<PgAcker>,
    stop: watch::Sender<bool>,
    closed: watch::Receiver<bool>,
    fetcher: Option<JoinHandle<()>>,
    done: bool,
}

impl PgStream {
    fn deliver(&self, c: Claimed) -> Result<Delivery> {
        let message = match message_from_row(&c.row) {
            Ok(m) => m,
            Err(e) => {
                self.acker.release(u64::try_from(c.token).unwrap_or(0));
                return Err(e);
            }
        };
        let info = DeliveryInfo {
            topic: c.topic.into(),
            partition: 0,
            offset: u64::try_from(c.offset).ok(),
            attempt: u32::try_from(c.attempts).unwrap_or(1),
        };
        Ok(Delivery::new(
            message,
            info,
            self.acker.clone(),
            u64::try_from(c.token).unwrap_or(0),
        ))
    }

    /// Stops the fetcher and returns whatever it claimed but nobody took.
    async fn shut_down(&mut self) {
        if self.done {
            return;
        }
        self.done = true;
        self.stop.send_replace(true);
        if let Some(h) = self.fetcher.take() {
            let _ = h.await;
        }
        let mut rest = Vec::new();
        while let Ok(c) = self.rx.try_recv() {
            rest.push(c);
        }
        self.acker.settler.sem.add_permits(rest.len());
        self.acker.settler.unclaim(rest).await;
    }
}

#[async_trait]
impl DeliveryStream for PgStream {
    async fn next(&mut self) -> Option<Result<Delivery>> {
        if self.done {
            return None;
        }
        let mut closed = self.closed.clone();
        let got = tokio::select! {
            biased;
            _ = closed.wait_for(|c| *c) => None,
            c = self.rx.recv() => c,
        };
        match got {
            Some(c) => Some(self.deliver(c)),
            None => {
                self.shut_down().await;
                None
            }
        }
    }

    fn try_next(&mut self) -> Option<Result<Delivery>> {
        if self.done || *self.closed.borrow() {
            return None;
        }
        let c = self.rx.try_recv().ok()?;
        Some(self.deliver(c))
    }

    async fn close(&mut self) -> Result<()> {
        self.shut_down().await;
        Ok(())
    }
}

impl Drop for PgStream {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        self.stop.send_replace(true);
        let fetcher = self.fetcher.take();
        let (_, rx) = mpsc::channel(1);
        let mut rx = std::mem::replace(&mut self.rx, rx);
        let acker = self.acker.clone();
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                if let Some(h) = fetcher {
                    let _ = h.await;
                }
                let mut rest = Vec::new();
                while let Ok(c) = rx.try_recv() {
                    rest.push(c);
                }
                acker.settler.sem.add_permits(rest.len());
                acker.settler.unclaim(rest).await;
            });
        }
    }
}

/// The settling logic of a subscription, cheap to clone into a release task.
#[derive(Clone)]
struct Settler {
    inner: Arc<Inner>,
    gid: i64,
    /// `None` for a private subscription.
    group: Option<String>,
    dead_letter_topic: Option<String>,
    max_deliveries: Option<u32>,
    sem: Arc<Semaphore>,
    acks: mpsc::UnboundedSender<PendingAck>,
    leases: Leases,
}

/// In-flight slots of settlements under way, given back when dropped: when
/// the settlement finishes, and also when its future is dropped before
/// that (a caller's timeout), so the subscription's window never shrinks.
///
/// # Cancel safety
/// What a dropped settlement already sent still happens (the ack batcher
/// commits it, or the lease expires); only its answer is lost.
struct Slots<'a> {
    sem: &'a Semaphore,
    n: usize,
}

impl Drop for Slots<'_> {
    fn drop(&mut self) {
        self.sem.add_permits(self.n);
    }
}

/// An ack waiting for its batch: the lease token, its row's `seq`, and who
/// to tell whether it was held.
type PendingAck = (i64, i64, oneshot::Sender<Result<bool>>);

/// Acks of one subscription are coalesced: whatever queued up while the
/// previous `DELETE … WHERE token = ANY(…)` committed goes in the next one,
/// so many concurrent acks share one commit (and one fsync). Each ack still
/// returns only after its own row is deleted and committed.
fn spawn_ack_batcher(
    inner: Arc<Inner>,
    gid: i64,
    leases: Leases,
) -> mpsc::UnboundedSender<PendingAck> {
    let (tx, mut rx) = mpsc::unbounded_channel::<PendingAck>();
    tokio::spawn(async move {
        let mut batch = Vec::new();
        while let Some(first) = rx.recv().await {
            batch.push(first);
            while batch.len() < 1024 {
                match rx.try_recv() {
                    Ok(a) => batch.push(a),
                    Err(_) => break,
                }
            }
            let tokens: Vec<i64> = batch.iter().map(|(t, _, _)| *t).collect();
            let seqs: Vec<i64> = batch.iter().map(|(_, s, _)| *s).collect();
            let result: Result<Vec<i64>> = sqlx::query_scalar(&inner.sql.ack)
                .bind(gid)
                .bind(&tokens)
                .bind(&seqs)
                .fetch_all(&inner.pool)
                .await
                .map_err(db_err);
            match result {
                Ok(deleted) => {
                    // Held or not, none of these leases is this subscription's any more.
                    leases.forget(tokens);
                    let deleted: std::collections::HashSet<i64> = deleted.into_iter().collect();
                    for (t, _, reply) in batch.drain(..) {
                        let _ = reply.send(Ok(deleted.contains(&t)));
                    }
                }
                Err(e) => {
                    let msg = e.to_string();
                    let transient = e.is_transient();
                    for (_, _, reply) in batch.drain(..) {
                        let err = if transient {
                            Error::Unavailable {
                                backend: "postgres",
                                source: msg.clone().into(),
                            }
                        } else {
                            Error::Backend {
                                backend: "postgres",
                                source: msg.clone().into(),
                            }
                        };
                        let _ = reply.send(Err(err));
                    }
                }
            }
        }
    });
    tx
}

/// What the ack batcher's answer for `token` means.
fn ack_outcome(
    token: u64,
    answer: std::result::Result<Result<bool>, oneshot::error::RecvError>,
) -> Result<()> {
    match answer {
        Ok(Ok(true)) => Ok(()),
        Ok(Ok(false)) => Err(unknown(token)),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(Error::Closed { what: "acker" }),
    }
}

fn unknown(token: u64) -> Error {
    Error::UnknownDelivery {
        id: token.to_string(),
    }
}

impl Settler {
    /// Hands `tok` to the subscription's ack batcher; the receiver says
    /// whether its row was still held once the batch committed.
    fn queue_ack(&self, token: u64) -> Result<oneshot::Receiver<Result<bool>>> {
        let (tok, seq) = self.lease(token)?;
        let (done, acked) = oneshot::channel();
        self.acks
            .send((tok, seq, done))
            .map_err(|_| Error::Closed { what: "acker" })?;
        Ok(acked)
    }

    /// Acks `tokens` together: all are queued before any is awaited, so they
    /// share the batcher's `DELETE` and commits (one per up to 1,024) rather
    /// than one commit each.
    async fn ack_many(&self, tokens: &[u64], failed: &mut Vec<(u64, Error)>) {
        let _slots = Slots {
            sem: &self.sem,
            n: tokens.len(),
        };
        let mut waiting = Vec::with_capacity(tokens.len());
        for &token in tokens {
            match self.queue_ack(token) {
                Ok(acked) => waiting.push((token, acked)),
                Err(e) => failed.push((token, e)),
            }
        }
        for (token, acked) in waiting {
            if let Err(e) = ack_outcome(token, acked.await) {
                failed.push((token, e));
            }
        }
    }

    async fn settle(&self, token: u64, settlement: Settlement) -> Result<()> {
        let _slot = Slots {
            sem: &self.sem,
            n: 1,
        };
        // An ack makes nothing new available: no need to wake the fetchers.
        let wake = !matches!(settlement, Settlement::Ack);
        let r = self.settle_inner(token, settlement).await;
        if wake {
            self.inner.bump();
        }
        r
    }

    /// The lease token as stored, and its row; `UnknownDelivery` when this
    /// subscription does not hold it (settled already, or never its own).
    fn lease(&self, token: u64) -> Result<(i64, i64)> {
        let tok = i64::try_from(token).map_err(|_| unknown(token))?;
        let seq = self.leases.seq(tok).ok_or_else(|| unknown(token))?;
        Ok((tok, seq))
    }

    /// Puts claimed-but-never-handed-out rows back, not counting the attempt.
    async fn unclaim(&self, rows: Vec<Claimed>) {
        if rows.is_empty() {
            return;
        }
        let tokens: Vec<i64> = rows.iter().map(|c| c.token).collect();
        let seqs: Vec<i64> = rows.iter().map(|c| c.seq).collect();
        if let Err(e) = sqlx::query(&self.inner.sql.unclaim)
            .bind(self.gid)
            .bind(&tokens)
            .bind(&seqs)
            .execute(&self.inner.pool)
            .await
        {
            tracing::warn!(error = %e, "could not return unclaimed deliveries; their leases will expire");
        }
        self.leases.forget(tokens);
        self.inner.bump();
    }

    async fn settle_inner(&self, token: u64, settlement: Settlement) -> Result<()> {
        match settlement {
            Settlement::Ack => ack_outcome(token, self.queue_ack(token)?.await),
            Settlement::Nack { delay } => {
                let (tok, seq) = self.lease(token)?;
                let limit = self
                    .max_deliveries
                    .map_or(i32::MAX, |m| i32::try_from(m).unwrap_or(i32::MAX));
                let done = sqlx::query(&self.inner.sql.nack)
                    .bind(self.gid)
                    .bind(tok)
                    .bind(ms_i64(delay))
                    .bind(limit)
                    .bind(seq)
                    .execute(&self.inner.pool)
                    .await
                    .map_err(db_err)?;
                if done.rows_affected() == 1 {
                    self.leases.forget([tok]);
                    return Ok(());
                }
                // Either at the attempt limit (dead-letter it) or not held.
                self.dead_letter(token, tok, seq, "max deliveries exceeded")
                    .await
            }
            Settlement::Reject { reason } => {
                let (tok, seq) = self.lease(token)?;
                self.dead_letter(token, tok, seq, &reason).await
            }
            // Settlement is non-exhaustive.
            _ => Err(Error::InvalidArgument {
                name: "settlement",
                reason: "unknown settlement kind".into(),
            }),
        }
    }

    /// Removes the delivery row and publishes the message, with the dead-letter
    /// headers, to the dead-letter topic: one transaction.
    async fn dead_letter(&self, token: u64, tok: i64, seq: i64, reason: &str) -> Result<()> {
        let sql = &self.inner.sql;
        let mut tx = self.inner.pool.begin().await.map_err(db_err)?;
        let Some(taken) = sqlx::query(&sql.take_for_dead_letter)
            .bind(self.gid)
            .bind(tok)
            .bind(seq)
            .fetch_optional(&mut *tx)
            .await
            .map_err(db_err)?
        else {
            self.leases.forget([tok]);
            return Err(unknown(token));
        };
        let seq: i64 = taken.try_get("seq").map_err(db_err)?;
        let attempts: i32 = taken.try_get("attempts").map_err(db_err)?;
        let first_ms: i64 = taken.try_get("first_ms").map_err(db_err)?;
        let last_ms: i64 = taken.try_get("last_ms").map_err(db_err)?;
        let row = sqlx::query(&sql.message_by_seq)
            .bind(seq)
            .fetch_one(&mut *tx)
            .await
            .map_err(db_err)?;
        let topic: String = row.try_get("topic").map_err(db_err)?;
        let offset: i64 = row.try_get("offset").map_err(db_err)?;
        let mut msg = message_from_row(&row)?;
        DeadLetter {
            reason,
            topic: &topic,
            partition: 0,
            offset: u64::try_from(offset).ok(),
            group: self.group.as_deref(),
            attempts: u32::try_from(attempts).unwrap_or(0),
            first_failure_ms: u64::try_from(first_ms).unwrap_or(0),
            last_failure_ms: u64::try_from(last_ms).unwrap_or(0),
        }
        .stamp(&mut msg);
        let dlq = self
            .dead_letter_topic
            .clone()
            .unwrap_or_else(|| name::dead_letter_topic(&topic));
        insert_batch(sql, &mut tx, &dlq, std::slice::from_ref(&msg)).await?;
        tx.commit().await.map_err(db_err)?;
        self.leases.forget([tok]);
        Ok(())
    }
}

/// Settles deliveries of one subscription by their lease token; deletes a
/// private subscription's group once the last delivery and the stream are gone.
struct PgAcker {
    settler: Settler,
    runtime: tokio::runtime::Handle,
}

#[async_trait]
impl Acker for PgAcker {
    async fn settle(&self, token: u64, settlement: Settlement) -> Result<()> {
        self.settler.settle(token, settlement).await
    }

    async fn ack_many(&self, tokens: &[u64], failed: &mut Vec<(u64, Error)>) {
        self.settler.ack_many(tokens, failed).await;
    }

    async fn extend(&self, token: u64, by: Duration) -> Result<()> {
        let s = &self.settler;
        let (tok, seq) = s.lease(token)?;
        let done = sqlx::query(&s.inner.sql.extend)
            .bind(s.gid)
            .bind(tok)
            .bind(ms_i64(by))
            .bind(seq)
            .execute(&s.inner.pool)
            .await
            .map_err(db_err)?;
        if done.rows_affected() == 0 {
            // Expired and claimed again: the lease is gone for good.
            s.leases.forget([tok]);
            return Err(unknown(token));
        }
        Ok(())
    }

    fn release(&self, token: u64) {
        // Not awaited: runs on the subscription's runtime. If it never runs
        // (runtime gone), the lease expires and the message comes back anyway.
        let settler = self.settler.clone();
        self.runtime.spawn(async move {
            let nack = Settlement::Nack {
                delay: Duration::ZERO,
            };
            if let Err(e) = settler.settle(token, nack).await {
                if !matches!(e, Error::UnknownDelivery { .. }) {
                    tracing::warn!(error = %e, "releasing a dropped delivery failed");
                }
            }
        });
    }
}

impl Drop for PgAcker {
    fn drop(&mut self) {
        if self.settler.group.is_some() {
            return;
        }
        // A private subscription's position is forgotten once nothing of it is left.
        let inner = self.settler.inner.clone();
        let gid = self.settler.gid;
        self.runtime.spawn(async move {
            if let Err(e) = sqlx::query(&inner.sql.delete_group)
                .bind(gid)
                .execute(&inner.pool)
                .await
            {
                tracing::warn!(error = %e, "could not delete a private subscription's group");
            }
        });
    }
}
