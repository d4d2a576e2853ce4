//! Subscriptions: a consumer per subscription, the settled-prefix tracker
//! that turns out-of-order acks into Kafka offset commits, and the acker.

use std::collections::{BTreeSet, VecDeque};

// Keyed by topic names and partitions, looked up per record: a fast hash.
use foldhash::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use futures_util::FutureExt as _;
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::{ClientContext, Message as _};
use tokio::sync::watch;
use wharf_adapter::InFlight;
use wharf_core::{
    Acker, Capability, Delivery, DeliveryInfo, DeliveryStream, Error, GroupMode, Result,
    Settlement, StartPosition, SubscribeOptions, Subscription, TopicPattern,
};

use crate::backend::{base_config, Shared, NAME};
use crate::error::map;
use crate::wire;

/// A partition of a Kafka topic.
type Tp = (Arc<str>, i32);

/// What this consumer has handed out of one assigned partition.
struct Part {
    /// Changes each time the partition is (re)assigned: a delivery from an
    /// earlier assignment cannot commit.
    epoch: u64,
    /// Offsets handed out and not acked (settled by `nack`, dropped or
    /// refused settlements stay here: they are redelivered after the next
    /// assignment, so the commit point does not pass them).
    open: Open,
    /// Acked offsets past the commit point (carried in the commit's
    /// metadata, so a restart skips them).
    acked: BTreeSet<i64>,
    /// One past the highest offset handed out (or skipped).
    next: i64,
    /// The last commit: point and metadata.
    committed: (i64, String),
}

/// A partition's open offsets, ascending. Records are handed out in
/// offset order, so inserting appends, and in-order acks (the common case)
/// take from the front: no tree nodes to allocate per offset.
#[derive(Default)]
struct Open(VecDeque<i64>);

impl Open {
    fn first(&self) -> Option<i64> {
        self.0.front().copied()
    }

    fn insert(&mut self, offset: i64) {
        match self.0.back() {
            Some(&last) if last >= offset => {
                if let Err(i) = self.0.binary_search(&offset) {
                    self.0.insert(i, offset);
                }
            }
            _ => self.0.push_back(offset),
        }
    }

    fn remove(&mut self, offset: i64) {
        if self.0.front() == Some(&offset) {
            self.0.pop_front();
        } else if let Ok(i) = self.0.binary_search(&offset) {
            self.0.remove(i);
        }
    }
}

impl Part {
    /// A partition tracked from commit point `point` with its metadata
    /// (empty: nothing acked past it).
    fn new(epoch: u64, point: i64, meta: String) -> Self {
        Part {
            epoch,
            open: Open::default(),
            acked: metadata::decode(point, &meta),
            next: point,
            committed: (point, meta),
        }
    }

    /// The offset to commit: the lowest unsettled one, or one past everything.
    fn point(&self) -> i64 {
        self.open.first().unwrap_or(self.next)
    }

    /// The commit this partition needs now, if it differs from the last.
    fn pending(&mut self) -> Option<(i64, String)> {
        let point = self.point();
        self.acked = self.acked.split_off(&point);
        let commit = (point, metadata::encode(point, &self.acked));
        (commit != self.committed).then_some(commit)
    }
}

/// The commit metadata: which offsets past the commit point are acked
/// already, so a consumer that resumes from the point skips them.
///
/// `w1:` then comma-separated deltas from the point, single (`3`) or
/// ranges (`5-7`), cut before [`metadata::MAX`] bytes (an offset left out
/// is delivered again: a duplicate, never a loss).
pub(crate) mod metadata {
    use std::collections::BTreeSet;

    const TAG: &str = "w1:";
    /// Kafka's default `offset.metadata.max.bytes` is 4096.
    pub(crate) const MAX: usize = 4000;

    pub(crate) fn encode(point: i64, acked: &BTreeSet<i64>) -> String {
        use std::fmt::Write as _;
        let mut out = String::new();
        let mut iter = acked.iter().map(|o| o - point).peekable();
        while let Some(start) = iter.next() {
            let mut end = start;
            while iter.peek() == Some(&(end + 1)) {
                end += 1;
                iter.next();
            }
            let before = out.len();
            if !out.is_empty() {
                out.push(',');
            }
            if start == end {
                let _ = write!(out, "{start}");
            } else {
                let _ = write!(out, "{start}-{end}");
            }
            if TAG.len() + out.len() > MAX {
                out.truncate(before);
                break;
            }
        }
        if out.is_empty() {
            String::new()
        } else {
            format!("{TAG}{out}")
        }
    }

    /// The acked offsets in `meta` of a commit at `point`; nothing for
    /// metadata this adapter did not write.
    pub(crate) fn decode(point: i64, meta: &str) -> BTreeSet<i64> {
        let mut acked = BTreeSet::new();
        let Some(body) = meta.strip_prefix(TAG) else {
            return acked;
        };
        for part in body.split(',') {
            let (a, b) = part.split_once('-').unwrap_or((part, part));
            let (Ok(a), Ok(b)) = (a.parse::<i64>(), b.parse::<i64>()) else {
                return BTreeSet::new();
            };
            if a < 0 || b < a || b - a > 1_000_000 {
                return BTreeSet::new();
            }
            acked.extend((a..=b).map(|d| point + d));
        }
        acked
    }
}

/// The per-partition state of one consumer, shared by its reader, its acker
/// and its rebalance callbacks.
#[derive(Default)]
struct Tracker {
    parts: Mutex<HashMap<Tp, Part>>,
    epochs: AtomicUsize,
}

impl Tracker {
    fn lock(&self) -> MutexGuard<'_, HashMap<Tp, Part>> {
        self.parts.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Starts tracking `tp` from its committed point and metadata (or,
    /// without a commit, from `first`, the first offset read), unless it
    /// is tracked already: the application's read and the keeper may both
    /// look a new partition up, and the first to finish starts it.
    fn start(&self, tp: &Tp, committed: Option<(i64, String)>, first: i64) {
        let mut parts = self.lock();
        parts.entry(tp.clone()).or_insert_with(|| {
            let (point, meta) = committed.unwrap_or((first, String::new()));
            Part::new(self.next_epoch(), point, meta)
        });
    }

    fn next_epoch(&self) -> u64 {
        self.epochs.fetch_add(1, Ordering::Relaxed) as u64
    }

    /// Whether `offset` was acked in an earlier session (past the commit
    /// point, in its metadata): then it is passed over.
    #[cfg(test)]
    fn acked_before(&self, tp: &Tp, offset: i64) -> bool {
        self.lock()
            .get(tp)
            .is_some_and(|p| p.acked.contains(&offset))
    }

    /// Records `offset` as handed out; returns the partition's epoch.
    #[cfg(test)]
    fn hand_out(&self, tp: &Tp, offset: i64) -> u64 {
        let mut parts = self.lock();
        let p = self.part(&mut parts, tp, offset, false).expect("tracked");
        Self::admit_in(p, offset, None).expect("not skipped")
    }

    /// The partition `tp` (tracked from `offset` when new, unless
    /// `committing`: then `None`, its committed offset is to be looked up).
    fn part<'a>(
        &self,
        parts: &'a mut HashMap<Tp, Part>,
        tp: &Tp,
        offset: i64,
        committing: bool,
    ) -> Option<&'a mut Part> {
        if !parts.contains_key(tp) {
            if committing {
                return None;
            }
            parts.insert(
                tp.clone(),
                Part::new(self.next_epoch(), offset, String::new()),
            );
        }
        parts.get_mut(tp)
    }

    /// Whether `offset` of `p` is handed out (then the partition's epoch)
    /// or passed over: below the start `floor`, or acked in an earlier
    /// session.
    fn admit_in(p: &mut Part, offset: i64, floor: Option<i64>) -> Option<u64> {
        p.next = p.next.max(offset + 1);
        if floor.is_some_and(|f| offset < f) || p.acked.contains(&offset) {
            return None;
        }
        p.open.insert(offset);
        Some(p.epoch)
    }

    /// Admits the records of `raw` from the front under one lock (see
    /// [`Tracker::admit_in`]): those handed out go to `out` with their
    /// epochs, those passed over are dropped. Stops at the first whose
    /// partition is not tracked yet when `committing` (left in `raw`, with
    /// those after it) and returns that partition: the caller looks its
    /// committed offset up, [`Tracker::start`]s it and admits again.
    /// Records come in runs of one partition: it is looked up once a run.
    fn admit_many(
        &self,
        raw: &mut VecDeque<Raw>,
        floors: &HashMap<Tp, i64>,
        committing: bool,
        out: &mut Vec<(Raw, u64)>,
    ) -> Option<Tp> {
        if raw.is_empty() {
            return None;
        }
        let mut parts = self.lock();
        while let Some(r) = raw.front() {
            let tp = r.tp.clone();
            let Some(p) = self.part(&mut parts, &tp, r.offset, committing) else {
                return Some(tp);
            };
            let floor = if floors.is_empty() {
                None
            } else {
                floors.get(&tp).copied()
            };
            while let Some(r) = raw.front() {
                if r.tp != tp {
                    break;
                }
                let admit = Self::admit_in(p, r.offset, floor);
                let Some(r) = raw.pop_front() else {
                    break;
                };
                if let Some(epoch) = admit {
                    out.push((r, epoch));
                }
            }
        }
        None
    }

    /// Marks acked offsets settled; returns the commits now needed.
    /// Records of another epoch (the partition was revoked since) are
    /// pushed to `stale`.
    fn settle(&self, acked: &[Record], stale: &mut Vec<u64>) -> Vec<(Tp, i64, String)> {
        let mut parts = self.lock();
        let mut moved: Vec<Tp> = Vec::new();
        // Acks come in runs of one partition: it is looked up once a run.
        let mut rest = acked;
        while let Some(first) = rest.first() {
            let run = rest.iter().take_while(|r| r.tp == first.tp).count();
            let (this, next) = rest.split_at(run);
            rest = next;
            let Some(p) = parts.get_mut(&first.tp) else {
                stale.extend(this.iter().map(|r| r.token));
                continue;
            };
            let mut any = false;
            for r in this {
                if p.epoch != r.epoch {
                    stale.push(r.token);
                    continue;
                }
                p.open.remove(r.offset);
                // Only acks past the commit point need remembering (in the
                // metadata); the point covers those below it — in-order
                // acks, the common case, record nothing. One recorded here
                // that a later ack of the batch passes is dropped by
                // `pending`.
                if r.offset >= p.point() {
                    p.acked.insert(r.offset);
                }
                any = true;
            }
            if any && !moved.contains(&first.tp) {
                moved.push(first.tp.clone());
            }
        }
        moved
            .into_iter()
            .filter_map(|tp| {
                let (at, meta) = parts.get_mut(&tp)?.pending()?;
                Some((tp, at, meta))
            })
            .collect()
    }

    /// Records that `commits` were made.
    fn committed(&self, commits: &[(Tp, i64, String)]) {
        let mut parts = self.lock();
        for (tp, at, meta) in commits {
            if let Some(p) = parts.get_mut(tp) {
                if *at >= p.committed.0 {
                    p.committed = (*at, meta.clone());
                }
            }
        }
    }

    /// Forgets the revoked partitions; returns the commits they need.
    fn revoke(&self, tpl: &TopicPartitionList) -> Vec<(Tp, i64, String)> {
        let mut parts = self.lock();
        let mut commits = Vec::new();
        for e in tpl.elements() {
            let tp: Tp = (Arc::from(e.topic()), e.partition());
            if let Some(mut p) = parts.remove(&tp) {
                if let Some((at, meta)) = p.pending() {
                    commits.push((tp, at, meta));
                }
            }
        }
        commits
    }
}

fn offsets(commits: &[(Tp, i64, String)]) -> TopicPartitionList {
    let mut tpl = TopicPartitionList::with_capacity(commits.len());
    for (tp, at, meta) in commits {
        // The only failure is an invalid offset, and these are real ones.
        if let Ok(()) = tpl.add_partition_offset(&tp.0, tp.1, Offset::Offset(*at)) {
            if let Some(mut e) = tpl.find_partition(&tp.0, tp.1) {
                e.set_metadata(meta.as_str());
            }
        }
    }
    tpl
}

/// The consumer's context: rebalance callbacks (run inside `recv`).
struct Ctx {
    tracker: Arc<Tracker>,
    /// Counts assignments received, for `subscribe` to wait for the first.
    assigned: watch::Sender<u64>,
    /// Whether this consumer commits (group subscriptions).
    commits: bool,
}

impl ClientContext for Ctx {}

impl ConsumerContext for Ctx {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(tpl) = rebalance {
            let points = self.tracker.revoke(tpl);
            if self.commits && !points.is_empty() {
                if let Err(e) = consumer.commit(&offsets(&points), CommitMode::Sync) {
                    tracing::warn!(error = %e, "commit on revoke failed; the new owner redelivers from the last commit");
                }
            }
        }
    }

    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(_) = rebalance {
            self.assigned.send_modify(|n| *n += 1);
        }
    }
}

type KConsumer = StreamConsumer<Ctx>;

/// One handed-out delivery.
#[derive(Clone)]
struct Record {
    token: u64,
    tp: Tp,
    offset: i64,
    epoch: u64,
}

/// Settles a subscription's deliveries.
struct KafkaAcker {
    consumer: Arc<KConsumer>,
    tracker: Arc<Tracker>,
    in_flight: InFlight<Record>,
    /// Deliveries handed out and not yet settled or released.
    held: AtomicUsize,
    commits: bool,
    /// Serializes commits so a lower point never lands after a higher one.
    commit_lock: tokio::sync::Mutex<()>,
    timeout: Duration,
}

impl KafkaAcker {
    fn take(&self, token: u64) -> Result<Record> {
        let mut r = self.in_flight.take(token)?;
        self.held.fetch_sub(1, Ordering::Relaxed);
        r.token = token;
        Ok(r)
    }

    /// Settles `records` as acked and commits the prefixes that moved.
    async fn ack(&self, records: &[Record], stale: &mut Vec<u64>) -> Result<()> {
        if !self.commits {
            return Ok(());
        }
        let _serial = self.commit_lock.lock().await;
        let points = self.tracker.settle(records, stale);
        if points.is_empty() {
            return Ok(());
        }
        let consumer = self.consumer.clone();
        let tpl = offsets(&points);
        tokio::task::spawn_blocking(move || consumer.commit(&tpl, CommitMode::Sync))
            .await
            .map_err(|e| Error::Backend {
                backend: NAME,
                source: Box::new(e),
            })?
            .map_err(|e| map("commit", e, self.timeout))?;
        self.tracker.committed(&points);
        Ok(())
    }
}

fn stale_error(token: u64) -> Error {
    Error::UnknownDelivery {
        id: token.to_string(),
    }
}

#[async_trait]
impl Acker for KafkaAcker {
    async fn settle(&self, token: u64, settlement: Settlement) -> Result<()> {
        let record = self.take(token)?;
        match settlement {
            Settlement::Ack => {
                let mut stale = Vec::new();
                self.ack(std::slice::from_ref(&record), &mut stale).await?;
                if stale.is_empty() {
                    Ok(())
                } else {
                    Err(stale_error(token))
                }
            }
            // The offset stays unsettled: nothing past it is committed, and
            // the partition's next assignment redelivers it.
            Settlement::Nack { delay } if delay.is_zero() => Ok(()),
            Settlement::Nack { .. } => Err(Error::Unsupported {
                backend: NAME,
                capability: Capability::NackWithDelay,
            }),
            Settlement::Reject { .. } => Err(Error::Unsupported {
                backend: NAME,
                capability: Capability::DeadLetter,
            }),
            _ => Err(Error::InvalidArgument {
                name: "settlement",
                reason: "not supported by the kafka backend".into(),
            }),
        }
    }

    async fn extend(&self, _token: u64, _by: Duration) -> Result<()> {
        Err(Error::Unsupported {
            backend: NAME,
            capability: Capability::ExtendLease,
        })
    }

    fn release(&self, token: u64) {
        // Unsettled: the offset stays open (see `Settlement::Nack`).
        let _ = self.take(token);
    }

    async fn ack_many(&self, tokens: &[u64], failed: &mut Vec<(u64, Error)>) {
        let mut taken = Vec::with_capacity(tokens.len());
        self.in_flight.take_many(tokens, &mut taken, failed);
        // Kafka deliveries have no lease: whatever was held was taken.
        self.held.fetch_sub(taken.len(), Ordering::Relaxed);
        let records: Vec<Record> = taken
            .into_iter()
            .map(|(token, mut r)| {
                r.token = token;
                r
            })
            .collect();
        let mut stale = Vec::new();
        if let Err(e) = self.ack(&records, &mut stale).await {
            for r in &records {
                failed.push((r.token, e.clone_shallow()));
            }
            return;
        }
        failed.extend(stale.into_iter().map(|t| (t, stale_error(t))));
    }
}

/// A copy of an error for each token of a failed batch.
trait CloneShallow {
    fn clone_shallow(&self) -> Error;
}

impl CloneShallow for Error {
    fn clone_shallow(&self) -> Error {
        match self {
            Error::Timeout { operation, after } => Error::Timeout {
                operation,
                after: *after,
            },
            other => Error::Backend {
                backend: NAME,
                source: other.to_string().into(),
            },
        }
    }
}

fn unsupported(capability: Capability) -> Error {
    Error::Unsupported {
        backend: NAME,
        capability,
    }
}

/// Refuses options this backend does not declare.
fn check_options(options: &SubscribeOptions) -> Result<()> {
    options.validate()?;
    if options.group_mode() == GroupMode::Stream {
        return Err(unsupported(Capability::PartitionAssignment));
    }
    if options.visibility_timeout_value().is_some() {
        return Err(unsupported(Capability::VisibilityTimeout));
    }
    if options.max_deliveries_limit().is_some() {
        return Err(unsupported(Capability::MaxDeliveries));
    }
    if options.dead_letter_topic_name().is_some() {
        return Err(unsupported(Capability::DeadLetter));
    }
    Ok(())
}

async fn blocking<T: Send + 'static>(
    what: &'static str,
    timeout: Duration,
    f: impl FnOnce() -> rdkafka::error::KafkaResult<T> + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::Backend {
            backend: NAME,
            source: Box::new(e),
        })?
        .map_err(|e| map(what, e, timeout))
}

/// Opens a subscription (see the crate docs for what each option maps to).
pub(crate) async fn open(shared: Arc<Shared>, options: SubscribeOptions) -> Result<Subscription> {
    shared.check_open()?;
    check_options(&options)?;
    let pattern = TopicPattern::parse(options.pattern())?;
    let literal = pattern.is_literal();
    let timeout = shared.config.timeout;
    // The Kafka topics the subscription reads now: the one it names
    // (created if missing, to be assigned), or those its pattern matches.
    let topics: Vec<Arc<str>> = if literal {
        shared.check_topic(pattern.as_str())?;
        shared.ensure(pattern.as_str()).await?;
        vec![Arc::from(shared.kafka_topic(pattern.as_str()))]
    } else {
        shared
            .list_kafka_topics()
            .await?
            .into_iter()
            .filter(|kt| {
                kt.strip_prefix(shared.config.prefix.as_str())
                    .is_some_and(|t| pattern.matches(t))
            })
            .map(Arc::from)
            .collect()
    };
    let group = options.group_name().map(|g| shared.kafka_topic(g));
    let commits = group.is_some();

    let tracker = Arc::new(Tracker::default());
    let (assigned, mut assigned_rx) = watch::channel(0u64);
    let ctx = Ctx {
        tracker: tracker.clone(),
        assigned,
        commits,
    };
    let mut cc = base_config(&shared.config);
    let group_id = group.clone().unwrap_or_else(|| {
        shared.kafka_topic(&format!("wharf-private-{}", uuid::Uuid::new_v4().simple()))
    });
    cc.set("group.id", &group_id)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("session.timeout.ms", "6000")
        .set("heartbeat.interval.ms", "500")
        .set("enable.partition.eof", "false")
        // Incremental rebalancing: a member joining or leaving moves only
        // the partitions that change owner, so the deliveries in flight on
        // the others (every topic subscribed under this group, see the
        // crate docs) keep their partition and still commit.
        .set("partition.assignment.strategy", "cooperative-sticky")
        // When librdkafka's prefetch queue is over its threshold
        // (`queued.min.messages`, 100,000) it stops fetching for
        // `fetch.queue.backoff.ms`, 1 s by default: a consumer slower than
        // the fetcher then stalls for most of that second once its queue
        // drains (measured: 0.7–0.9 s pauses draining a 300,000 backlog).
        // Checking again every 10 ms keeps the queue fed.
        .set("fetch.queue.backoff.ms", "10");
    if !literal {
        // How soon a new matching topic is noticed.
        cc.set("topic.metadata.refresh.interval.ms", "1000");
    }
    let consumer: Arc<KConsumer> =
        Arc::new(
            cc.create_with_context(ctx)
                .map_err(|e| Error::InvalidArgument {
                    name: "config",
                    reason: e.to_string(),
                })?,
        );

    // Where the subscription starts in each partition of each topic.
    let mut starts: Vec<(Arc<str>, i32, i64)> = Vec::new();
    let mut counts: Vec<(Arc<str>, u32)> = Vec::new();
    for kt in &topics {
        // A topic just created may take a moment to show its partitions.
        let deadline = tokio::time::Instant::now() + timeout;
        let partitions = loop {
            let n = shared.partitions_of(kt).await?;
            if n > 0 || tokio::time::Instant::now() >= deadline {
                break n;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        counts.push((kt.clone(), partitions));
        let at =
            start_offsets(&consumer, kt, partitions, options.start_position(), timeout).await?;
        starts.extend(at.into_iter().map(|(p, o)| (kt.clone(), p, o)));
    }
    let mut floors: HashMap<Tp, i64> = HashMap::default();
    if group.is_some() && !starts.is_empty() {
        // A new group starts there: offsets below each partition's start
        // are passed over where the group has no committed offset yet.
        let mut tpl = TopicPartitionList::new();
        for (kt, p, _) in &starts {
            tpl.add_partition(kt, *p);
        }
        let c = consumer.clone();
        let committed = blocking("committed offsets", timeout, move || {
            c.committed_offsets(tpl, timeout)
        })
        .await?;
        for (kt, p, at) in &starts {
            let has = committed
                .find_partition(kt, *p)
                .is_some_and(|e| matches!(e.offset(), Offset::Offset(_)));
            if !has {
                floors.insert((kt.clone(), *p), *at);
            }
        }
    } else {
        floors.extend(starts.iter().map(|(kt, p, at)| ((kt.clone(), *p), *at)));
    }
    let subscribes = group.is_some() || !literal;
    if subscribes {
        let target = if literal {
            topics[0].to_string()
        } else {
            kafka_regex(&shared.config.prefix, &pattern)
        };
        consumer
            .subscribe(&[target.as_str()])
            .map_err(|e| map("subscribe", e, timeout))?;
    } else {
        let mut tpl = TopicPartitionList::new();
        for (kt, n) in &counts {
            for p in 0..i32::try_from(*n).unwrap_or(i32::MAX) {
                let at = floors
                    .get(&(kt.clone(), p))
                    .map_or(Offset::Beginning, |o| Offset::Offset(*o));
                tpl.add_partition_offset(kt, p, at)
                    .map_err(|e| map("assign", e, timeout))?;
            }
        }
        consumer
            .assign(&tpl)
            .map_err(|e| map("assign", e, timeout))?;
    }

    let acker = Arc::new(KafkaAcker {
        consumer: consumer.clone(),
        tracker: tracker.clone(),
        in_flight: InFlight::new(options.max_in_flight_limit()),
        held: AtomicUsize::new(0),
        commits,
        commit_lock: tokio::sync::Mutex::new(()),
        timeout,
    });
    let settles: Arc<dyn Acker> = acker.clone();
    let reader = Reader {
        consumer,
        acker,
        settles,
        tracker,
        floors,
        prefix: shared.config.prefix.clone(),
        subscribed: subscribes,
        names: HashMap::default(),
        last: None,
        slots: 0,
        raw: VecDeque::new(),
        ready: VecDeque::new(),
        admitted: Vec::with_capacity(READ_BATCH),
    };
    let lent: Lent = Arc::new(Mutex::new(Some(Box::new(reader))));
    let (stop, stop_rx) = watch::channel(false);
    let mut stream = KafkaStream {
        lent: lent.clone(),
        closed: shared.closed.subscribe(),
        stop,
        ended: false,
    };
    tokio::spawn(keep(lent, stop_rx, shared.closed.subscribe()));
    if subscribes {
        // Return once the group has assigned this member (possibly nothing),
        // so what is published next is seen by the group as it now stands.
        stream.assigned(&mut assigned_rx, timeout).await;
    }
    Ok(Subscription::new(stream))
}

/// The Kafka regex subscription of `pattern` under `prefix`: `*` is one
/// segment (`[^.]+`), `>` one or more (`.+`), literal dots escaped. Names
/// are `[A-Za-z0-9._-]` (checked when parsed), so nothing else needs it.
pub(crate) fn kafka_regex(prefix: &str, pattern: &TopicPattern) -> String {
    let mut re = String::from("^");
    re.push_str(&prefix.replace('.', "\\."));
    for (i, seg) in pattern.as_str().split('.').enumerate() {
        if i > 0 {
            re.push_str("\\.");
        }
        match seg {
            "*" => re.push_str("[^.]+"),
            ">" => re.push_str(".+"),
            lit => re.push_str(lit),
        }
    }
    re.push('$');
    re
}

/// Where `start` begins in each partition of `kt`: nothing for
/// `Earliest` (the beginning), else an offset per partition — the high
/// watermark now for `Latest`, the offset itself, or the first offset
/// whose timestamp is at or after the time (the high watermark when there
/// is none).
async fn start_offsets(
    consumer: &Arc<KConsumer>,
    kt: &Arc<str>,
    partitions: u32,
    start: StartPosition,
    timeout: Duration,
) -> Result<Vec<(i32, i64)>> {
    let partitions = 0..i32::try_from(partitions).unwrap_or(i32::MAX);
    let high = |p: i32| {
        let c = consumer.clone();
        let t = kt.clone();
        async move {
            let (_, high) = blocking("watermarks", timeout, move || {
                c.fetch_watermarks(&t, p, timeout)
            })
            .await?;
            Ok::<i64, Error>(high)
        }
    };
    let mut starts = Vec::new();
    match start {
        StartPosition::Offset(n) => {
            let n = i64::try_from(n).unwrap_or(i64::MAX);
            starts.extend(partitions.map(|p| (p, n)));
        }
        StartPosition::Time(ts) => {
            let ms = i64::try_from(ts.as_millis()).unwrap_or(i64::MAX);
            let mut tpl = TopicPartitionList::new();
            for p in partitions.clone() {
                tpl.add_partition_offset(kt, p, Offset::Offset(ms))
                    .map_err(|e| map("offsets for time", e, timeout))?;
            }
            let c = consumer.clone();
            let found = blocking("offsets for time", timeout, move || {
                c.offsets_for_times(tpl, timeout)
            })
            .await?;
            for p in partitions {
                match found.find_partition(kt, p).map(|e| e.offset()) {
                    Some(Offset::Offset(at)) => starts.push((p, at)),
                    _ => starts.push((p, high(p).await?)),
                }
            }
        }
        StartPosition::Latest => {
            for p in partitions {
                starts.push((p, high(p).await?));
            }
        }
        _ => {}
    }
    Ok(starts)
}

/// How many records one read takes at most: the first is waited for, the
/// rest only as far as librdkafka has already fetched them.
const READ_BATCH: usize = 256;

/// How often the keeper serves the consumer while the application is not
/// reading (see [`keep`]).
const KEEP_EVERY: Duration = Duration::from_millis(100);

/// A record read from librdkafka and not yet admitted.
struct Raw {
    message: wharf_core::Message,
    /// The Wharf topic name.
    topic: Arc<str>,
    tp: Tp,
    offset: i64,
}

/// What one read produced.
enum Read {
    /// Records were read (some may have been passed over).
    Some,
    /// Nothing was ready (or no slot was free).
    Nothing,
    /// librdkafka reported an error: logged, read again after a pause.
    Failed,
}

/// A subscription's reading state: the consumer, the slots reserved, the
/// records read and the deliveries made of them, not yet handed out.
///
/// The application's task reads through it in [`KafkaStream::next`] and
/// [`KafkaStream::try_next`] — no reader task and no channel between
/// librdkafka and the application. While the application is not reading
/// (not calling `next`, or gone), the [`keep`] task serves the consumer
/// instead, so rebalances do not wait for a slow handler. Both read only
/// into free in-flight slots (librdkafka's queue carries the group's events
/// between the records): with every slot held, nothing is served until a
/// delivery is settled.
struct Reader {
    consumer: Arc<KConsumer>,
    acker: Arc<KafkaAcker>,
    /// The same acker, as the deliveries carry it.
    settles: Arc<dyn Acker>,
    tracker: Arc<Tracker>,
    floors: HashMap<Tp, i64>,
    prefix: String,
    /// Whether the consumer joined a group (`subscribe`) rather than `assign`.
    subscribed: bool,
    /// Kafka topic name -> (Kafka name, Wharf name), shared per topic.
    names: HashMap<Box<str>, (Arc<str>, Arc<str>)>,
    /// The last topic's names: records mostly come in runs of one topic.
    last: Option<(Arc<str>, Arc<str>)>,
    /// In-flight slots reserved and not used yet.
    slots: usize,
    /// Records read and not yet admitted, oldest first: a record whose
    /// partition's committed offset is still to be looked up waits here,
    /// with every record read after it.
    raw: VecDeque<Raw>,
    /// Deliveries registered and not yet handed out, oldest first.
    ready: VecDeque<Delivery>,
    /// Scratch for [`Reader::admit`].
    admitted: Vec<(Raw, u64)>,
}

impl Reader {
    /// The shared Kafka and Wharf names of Kafka topic `kt`.
    fn names(&mut self, kt: &str) -> (Arc<str>, Arc<str>) {
        if let Some(last) = &self.last {
            if &*last.0 == kt {
                return last.clone();
            }
        }
        let n = if let Some(n) = self.names.get(kt) {
            n.clone()
        } else {
            let wharf = kt.strip_prefix(self.prefix.as_str()).unwrap_or(kt);
            let n = (Arc::<str>::from(kt), Arc::<str>::from(wharf));
            self.names.insert(Box::from(kt), n.clone());
            n
        };
        self.last = Some(n.clone());
        n
    }

    /// Keeps a record read from librdkafka (copied out of it) in `raw`.
    fn keep_raw(&mut self, m: &rdkafka::message::BorrowedMessage<'_>) {
        let (kt, topic) = self.names(m.topic());
        let raw = Raw {
            message: wire::message(m),
            topic,
            tp: (kt, m.partition()),
            offset: m.offset(),
        };
        self.raw.push_back(raw);
    }

    /// Takes a reserved slot's worth of records librdkafka already has,
    /// after `first` (a record just read), without waiting.
    fn drain_now(
        &mut self,
        first: rdkafka::error::KafkaResult<rdkafka::message::BorrowedMessage<'_>>,
        more: &mut rdkafka::consumer::MessageStream<'_, Ctx>,
    ) -> Read {
        use futures_util::StreamExt as _;
        let mut got = first;
        loop {
            match got {
                Ok(m) => self.keep_raw(&m),
                Err(e) => {
                    tracing::warn!(error = %e, "kafka consumer error");
                    return Read::Failed;
                }
            }
            if self.raw.len() >= self.slots {
                return Read::Some;
            }
            match more.next().now_or_never() {
                Some(Some(next)) => got = next,
                _ => return Read::Some,
            }
        }
    }

    /// Reads what librdkafka has now (serving its events on the way),
    /// without waiting: a free slot is needed to read a record.
    fn read_now(&mut self) -> Read {
        if !self.raw.is_empty() {
            return Read::Some;
        }
        if self.slots == 0 {
            match self.acker.in_flight.reserve(READ_BATCH).now_or_never() {
                Some(Some(n)) => self.slots = n,
                _ => return Read::Nothing,
            }
        }
        let consumer = self.consumer.clone();
        let mut stream = consumer.stream();
        match futures_util::StreamExt::next(&mut stream).now_or_never() {
            Some(Some(first)) => self.drain_now(first, &mut stream),
            _ => Read::Nothing,
        }
    }

    /// Admits the records in `raw` from the front, under one tracker lock,
    /// registers those handed out and queues their deliveries in `ready`.
    /// Stops at a record whose partition's committed offset must be
    /// looked up first; returns that partition.
    fn admit(&mut self) -> Option<Tp> {
        let commits = self.acker.commits;
        let unknown =
            self.tracker
                .admit_many(&mut self.raw, &self.floors, commits, &mut self.admitted);
        if !self.admitted.is_empty() {
            let n = self.admitted.len();
            self.slots -= n;
            self.acker.held.fetch_add(n, Ordering::Relaxed);
            let first =
                self.acker
                    .in_flight
                    .register_all(self.admitted.iter().map(|(raw, epoch)| Record {
                        token: 0,
                        tp: raw.tp.clone(),
                        offset: raw.offset,
                        epoch: *epoch,
                    }));
            for ((raw, _), token) in self.admitted.drain(..).zip(first..) {
                let info = DeliveryInfo {
                    topic: raw.topic,
                    partition: u32::try_from(raw.tp.1).unwrap_or(0),
                    offset: u64::try_from(raw.offset).ok(),
                    attempt: 1,
                };
                self.ready.push_back(Delivery::new(
                    raw.message,
                    info,
                    self.settles.clone(),
                    token,
                ));
            }
        }
        unknown
    }

    /// Starts tracking `tp` from the group's committed offset (see
    /// [`committed_of`]), unless something else started it meanwhile.
    ///
    /// # Cancel safety
    /// Cancel safe: nothing changes unless it completes.
    async fn start(&self, tp: &Tp, first: i64) {
        let committed = committed_of(&self.consumer, tp, self.acker.timeout).await;
        self.tracker.start(tp, committed, first);
    }

    /// Serves the consumer without waiting: reads what is ready into
    /// `ready` (within the free slots), and with it the rebalance events
    /// queued before those records. Returns a partition whose committed
    /// offset must be looked up before its records can be admitted (with
    /// what the lookup needs).
    fn serve(&mut self) -> Option<Lookup> {
        if self.raw.is_empty() {
            let _ = self.read_now();
        }
        let tp = self.admit()?;
        Some(Lookup {
            consumer: self.consumer.clone(),
            tracker: self.tracker.clone(),
            first: self.raw.front().map_or(0, |raw| raw.offset),
            tp,
            timeout: self.acker.timeout,
        })
    }

    /// Gives back what is read and not handed out: the deliveries are
    /// released and the records dropped (neither is committed past), and
    /// the reserved slots freed.
    fn clear(&mut self) {
        self.ready.clear();
        self.raw.clear();
        self.acker.in_flight.free(std::mem::take(&mut self.slots));
    }
}

/// The group's committed offset and metadata for `tp`, if any (a failed
/// lookup counts as none: the consumer then starts where Kafka resumes it,
/// and acks past the point are redelivered, not lost).
async fn committed_of(
    consumer: &Arc<KConsumer>,
    tp: &Tp,
    timeout: Duration,
) -> Option<(i64, String)> {
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition(&tp.0, tp.1);
    let c = consumer.clone();
    let got = blocking("committed offsets", timeout, move || {
        c.committed_offsets(tpl, timeout)
    })
    .await;
    match got {
        Ok(tpl) => tpl
            .find_partition(&tp.0, tp.1)
            .and_then(|e| match e.offset() {
                Offset::Offset(at) => Some((at, e.metadata().to_owned())),
                _ => None,
            }),
        Err(e) => {
            tracing::warn!(error = %e, "reading the committed offset failed");
            None
        }
    }
}

/// A partition's committed offset to look up (by the keeper), and what
/// the lookup needs.
struct Lookup {
    consumer: Arc<KConsumer>,
    tracker: Arc<Tracker>,
    tp: Tp,
    /// The first offset read of it.
    first: i64,
    timeout: Duration,
}

/// The reading state, lent to whichever of the application's task and the
/// keeper is reading: `None` while the application's `next` has it.
type Lent = Arc<Mutex<Option<Box<Reader>>>>;

fn lock_lent(lent: &Lent) -> MutexGuard<'_, Option<Box<Reader>>> {
    lent.lock().unwrap_or_else(|e| e.into_inner())
}

/// The [`Reader`] while `next` has it; back in its place when dropped (the
/// future completed or was cancelled).
struct Borrowed<'a> {
    lent: &'a Lent,
    reader: Option<Box<Reader>>,
}

impl Borrowed<'_> {
    fn get(&mut self) -> &mut Reader {
        self.reader.as_mut().expect("held until dropped")
    }
}

impl Drop for Borrowed<'_> {
    fn drop(&mut self) {
        *lock_lent(self.lent) = self.reader.take();
    }
}

/// A Kafka subscription's deliveries.
struct KafkaStream {
    lent: Lent,
    closed: watch::Receiver<bool>,
    /// Raised when the stream ends or is dropped: the keeper then lingers.
    stop: watch::Sender<bool>,
    ended: bool,
}

impl KafkaStream {
    fn end(&mut self) {
        self.ended = true;
        if let Some(r) = lock_lent(&self.lent).as_mut() {
            r.clear();
        }
        self.stop.send_replace(true);
    }

    /// Waits for the first assignment of a group subscription (possibly
    /// nothing), serving the consumer meanwhile and keeping any record read.
    ///
    /// # Cancel safety
    /// Cancel safe: the reader (with the records read into `raw`) goes
    /// back in its place when the [`Borrowed`] guard is dropped; then the
    /// dropped stream's keeper lingers with it.
    async fn assigned(&mut self, rx: &mut watch::Receiver<u64>, timeout: Duration) {
        use futures_util::StreamExt as _;
        let reader = lock_lent(&self.lent).take();
        let mut borrowed = Borrowed {
            lent: &self.lent,
            reader,
        };
        let Some(reader) = borrowed.reader.as_mut() else {
            return;
        };
        let consumer = reader.consumer.clone();
        let mut stream = consumer.stream();
        let _ = tokio::time::timeout(timeout, async {
            loop {
                tokio::select! {
                    biased;
                    _ = rx.wait_for(|n| *n > 0) => break,
                    m = stream.next() => match m {
                        Some(Ok(m)) => reader.keep_raw(&m),
                        Some(Err(e)) => tracing::warn!(error = %e, "kafka consumer error"),
                        None => break,
                    },
                }
            }
        })
        .await;
    }
}

impl Drop for KafkaStream {
    fn drop(&mut self) {
        self.stop.send_replace(true);
    }
}

#[async_trait]
impl DeliveryStream for KafkaStream {
    /// # Cancel safety
    /// Cancel safe: what is read stays in the [`Reader`] (`raw`, `ready`,
    /// the reserved slots), which the [`Borrowed`] guard puts back when
    /// the future is dropped; the committed-offset lookup changes nothing
    /// until it completes.
    async fn next(&mut self) -> Option<Result<Delivery>> {
        use futures_util::StreamExt as _;
        if self.ended {
            return None;
        }
        if *self.closed.borrow() {
            self.end();
            return None;
        }
        // One lock: a delivery already made, or the reader to read with.
        let reader = {
            let mut lent = lock_lent(&self.lent);
            if let Some(d) = lent.as_mut().and_then(|r| r.ready.pop_front()) {
                return Some(Ok(d));
            }
            lent.take()
        };
        let mut borrowed = Borrowed {
            lent: &self.lent,
            reader,
        };
        if borrowed.reader.is_none() {
            // Only the keeper takes it, and only after the stream ended.
            drop(borrowed);
            self.end();
            return None;
        }
        let mut closed = self.closed.clone();
        let ended = loop {
            let r = borrowed.get();
            if let Some(d) = r.ready.pop_front() {
                break Some(d);
            }
            if let Some(tp) = r.admit() {
                let first = r.raw.front().map_or(0, |raw| raw.offset);
                tokio::select! {
                    biased;
                    _ = closed.wait_for(|c| *c) => break None,
                    () = r.start(&tp, first) => {}
                }
                continue;
            }
            if !r.ready.is_empty() {
                continue;
            }
            if r.slots == 0 {
                let reserved = tokio::select! {
                    biased;
                    _ = closed.wait_for(|c| *c) => None,
                    n = r.acker.in_flight.reserve(READ_BATCH) => n,
                };
                match reserved {
                    Some(n) => r.slots = n,
                    None => break None,
                }
            }
            let consumer = r.consumer.clone();
            let mut stream = consumer.stream();
            let first = tokio::select! {
                biased;
                _ = closed.wait_for(|c| *c) => None,
                m = stream.next() => m,
            };
            let Some(first) = first else {
                break None;
            };
            if let Read::Failed = r.drain_now(first, &mut stream) {
                drop(stream);
                tokio::select! {
                    biased;
                    _ = closed.wait_for(|c| *c) => break None,
                    () = tokio::time::sleep(Duration::from_millis(100)) => {}
                }
            }
        };
        drop(borrowed);
        match ended {
            Some(d) => Some(Ok(d)),
            None => {
                self.end();
                None
            }
        }
    }

    fn try_next(&mut self) -> Option<Result<Delivery>> {
        if self.ended || *self.closed.borrow() {
            return None;
        }
        let mut lent = lock_lent(&self.lent);
        let r = lent.as_mut()?;
        if let Some(d) = r.ready.pop_front() {
            return Some(Ok(d));
        }
        if r.raw.is_empty() {
            match r.read_now() {
                Read::Some => {}
                Read::Nothing | Read::Failed => return None,
            }
        }
        // A partition to look up waits for `next`.
        let _ = r.admit();
        r.ready.pop_front().map(Ok)
    }

    async fn close(&mut self) -> Result<()> {
        self.end();
        Ok(())
    }
}

/// Serves the consumer while the application is not reading: every
/// [`KEEP_EVERY`] it reads what is ready, if the application's task does
/// not hold the reader (then that task is reading). Once the stream ends
/// (or the backend closes), it [`linger`]s.
///
/// # Cancel safety
/// Spawned, and only dropped with its runtime; it holds the reader's lock
/// only in synchronous stretches.
async fn keep(lent: Lent, mut stop: watch::Receiver<bool>, mut closed: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(KEEP_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            biased;
            _ = stop.wait_for(|s| *s) => break,
            _ = closed.wait_for(|c| *c) => break,
            _ = tick.tick() => {}
        }
        let lookup = lock_lent(&lent).as_mut().and_then(|r| r.serve());
        if let Some(Lookup {
            consumer,
            tracker,
            tp,
            first,
            timeout,
        }) = lookup
        {
            // Not under the lock: the application may read meanwhile (and
            // start the partition itself; then this start is passed over).
            let committed = tokio::select! {
                biased;
                _ = stop.wait_for(|s| *s) => break,
                _ = closed.wait_for(|c| *c) => break,
                c = committed_of(&consumer, &tp, timeout) => c,
            };
            tracker.start(&tp, committed, first);
        }
    }
    // The stream is gone or closing: its `next` cannot hold the reader any
    // more, or gives it back as it returns.
    let reader = loop {
        if let Some(r) = lock_lent(&lent).take() {
            break r;
        }
        if Arc::strong_count(&lent) == 1 {
            // The stream is gone and took the reader with it (a `next`
            // future leaked rather than dropped): nothing to linger for.
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    linger(reader, closed).await;
}

/// After the stream ended: stays a member of the group (serving
/// rebalances, fetching nothing) until every delivery handed out is
/// settled or dropped, so those can still commit; then leaves.
async fn linger(mut reader: Box<Reader>, mut closed: watch::Receiver<bool>) {
    reader.clear();
    let Reader {
        consumer,
        acker,
        subscribed,
        ..
    } = *reader;
    if let Ok(assignment) = consumer.assignment() {
        let _ = consumer.pause(&assignment);
    }
    while acker.held.load(Ordering::Relaxed) > 0 && !*closed.borrow_and_update() {
        tokio::select! {
            _ = consumer.recv() => {}
            _ = tokio::time::sleep(Duration::from_millis(50)) => {}
            _ = closed.changed() => {}
        }
    }
    // Leave the group now: settled deliveries (or an `AckBatch`) may keep
    // the acker, and with it the consumer, alive for a long time, and a
    // member that no longer polls stalls the group's rebalances.
    if subscribed {
        consumer.unsubscribe();
    } else {
        let _ = consumer.unassign();
    }
    // Serve the revocation that follows.
    let _ = tokio::time::timeout(Duration::from_millis(200), consumer.recv()).await;
    // Closing the consumer blocks: not on a runtime thread.
    tokio::task::spawn_blocking(move || {
        drop(acker);
        drop(consumer);
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(tp: &Tp, offset: i64, epoch: u64) -> Record {
        Record {
            token: u64::try_from(offset).expect("test offsets are positive"),
            tp: tp.clone(),
            offset,
            epoch,
        }
    }

    #[test]
    fn patterns_become_anchored_regexes_with_one_segment_stars() {
        let re = |p: &str| kafka_regex("pre.", &TopicPattern::parse(p).expect("pattern"));
        assert_eq!(re("a.*.c"), "^pre\\.a\\.[^.]+\\.c$");
        assert_eq!(re("a.>"), "^pre\\.a\\..+$");
    }

    #[test]
    fn metadata_round_trips_ranges_relative_to_the_point() {
        let acked: BTreeSet<i64> = [12, 13, 14, 17, 20, 21].into_iter().collect();
        let meta = metadata::encode(10, &acked);
        assert_eq!(meta, "w1:2-4,7,10-11");
        assert_eq!(metadata::decode(10, &meta), acked);
        assert_eq!(metadata::encode(10, &BTreeSet::new()), "");
        // Metadata another client wrote means nothing to us.
        assert!(metadata::decode(10, "some-app-state").is_empty());
        assert!(metadata::decode(10, "w1:3-1").is_empty());
    }

    #[test]
    fn metadata_is_cut_below_kafkas_limit_dropping_the_highest_offsets() {
        let acked: BTreeSet<i64> = (0..10_000).map(|i| i * 2).collect();
        let meta = metadata::encode(0, &acked);
        assert!(meta.len() <= metadata::MAX, "{}", meta.len());
        let back = metadata::decode(0, &meta);
        assert!(!back.is_empty() && back.len() < acked.len());
        assert!(back.iter().all(|o| acked.contains(o)));
        assert_eq!(back.first(), Some(&0), "the lowest are kept");
    }

    #[test]
    fn out_of_order_acks_move_the_point_only_over_a_settled_prefix() {
        let t = Tracker::default();
        let tp: Tp = (Arc::from("t"), 0);
        t.start(&tp, None, 0);
        let epoch = (0..5).map(|o| t.hand_out(&tp, o)).last().expect("five");
        let mut stale = Vec::new();
        // 3 acked first: the point stays at 0, 3 goes into the metadata.
        let c = t.settle(&[record(&tp, 3, epoch)], &mut stale);
        assert_eq!(c, [(tp.clone(), 0, "w1:3".to_owned())]);
        t.committed(&c);
        // 0 and 1: the point moves to 2; 3 is still remembered.
        let c = t.settle(&[record(&tp, 1, epoch), record(&tp, 0, epoch)], &mut stale);
        assert_eq!(c, [(tp.clone(), 2, "w1:1".to_owned())]);
        t.committed(&c);
        // 2: the point passes 3 and stops at 4, the one still open.
        let c = t.settle(&[record(&tp, 2, epoch)], &mut stale);
        assert_eq!(c, [(tp.clone(), 4, String::new())]);
        t.committed(&c);
        assert!(stale.is_empty());
        // After a revocation the partition's deliveries are stale.
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition("t", 0);
        assert!(
            t.revoke(&tpl).is_empty(),
            "4 is open: nothing new to commit"
        );
        assert!(t.settle(&[record(&tp, 4, epoch)], &mut stale).is_empty());
        assert_eq!(stale, [4]);
    }

    proptest::proptest! {
        /// The open set against a `BTreeSet` model: offsets handed out
        /// mostly ascending (some again or lower, as after a seek), removed
        /// in any order, present or not.
        #[test]
        fn open_offsets_behave_as_a_sorted_set(
            ops in proptest::collection::vec((proptest::bool::ANY, 0i64..64), 0..200)
        ) {
            let mut open = Open::default();
            let mut model = BTreeSet::new();
            for (insert, offset) in ops {
                if insert {
                    open.insert(offset);
                    model.insert(offset);
                } else {
                    open.remove(offset);
                    model.remove(&offset);
                }
                proptest::prop_assert_eq!(open.first(), model.first().copied());
                proptest::prop_assert!(open.0.iter().copied().eq(model.iter().copied()));
            }
        }
    }

    #[test]
    fn a_resumed_partition_skips_what_its_metadata_says_was_acked() {
        let t = Tracker::default();
        let tp: Tp = (Arc::from("t"), 0);
        t.start(&tp, Some((2, "w1:1,3-4".to_owned())), 2);
        let skipped: Vec<i64> = (2..8).filter(|o| t.acked_before(&tp, *o)).collect();
        assert_eq!(skipped, [3, 5, 6]);
    }
}
