//! Subscriptions: a consumer per subscription, the settled-prefix tracker
//! that turns out-of-order acks into Kafka offset commits, and the acker.

use std::collections::BTreeSet;

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
use wharf_adapter::{ChannelStream, DeliverySender, InFlight};
use wharf_core::{
    Acker, Capability, Delivery, DeliveryInfo, Error, GroupMode, Result, Settlement, StartPosition,
    SubscribeOptions, Subscription, TopicPattern,
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
    open: BTreeSet<i64>,
    /// Acked offsets past the commit point (carried in the commit's
    /// metadata, so a restart skips them).
    acked: BTreeSet<i64>,
    /// One past the highest offset handed out (or skipped).
    next: i64,
    /// The last commit: point and metadata.
    committed: (i64, String),
}

impl Part {
    /// The offset to commit: the lowest unsettled one, or one past everything.
    fn point(&self) -> i64 {
        self.open.first().copied().unwrap_or(self.next)
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

/// What [`Tracker::admit`] decided for a record.
enum Admit {
    /// Hand it out; the partition's epoch.
    Hand(u64),
    /// Pass it over.
    Skip,
    /// The partition's committed offset must be looked up first.
    Unknown,
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
    /// without a commit, from `first`, the first offset read).
    fn start(&self, tp: &Tp, committed: Option<(i64, String)>, first: i64) {
        let mut parts = self.lock();
        let (point, meta) = committed.unwrap_or((first, String::new()));
        let acked = metadata::decode(point, &meta);
        parts.insert(
            tp.clone(),
            Part {
                epoch: self.epochs.fetch_add(1, Ordering::Relaxed) as u64,
                open: BTreeSet::new(),
                acked,
                next: point,
                committed: (point, meta),
            },
        );
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
        match self.admit(tp, offset, None, false) {
            Admit::Hand(epoch) => epoch,
            _ => unreachable!("not skipped, and tracked when not committing"),
        }
    }

    /// Decides, under one lock, what happens to `offset` of `tp`: handed
    /// out (returns the partition's epoch), passed over (below the start
    /// `floor`, or acked in an earlier session), or `Unknown` when
    /// `committing` and the partition is not tracked yet (the caller looks
    /// its committed offset up, [`Tracker::start`]s it and asks again).
    fn admit(&self, tp: &Tp, offset: i64, floor: Option<i64>, committing: bool) -> Admit {
        let mut parts = self.lock();
        if committing && !parts.contains_key(tp) {
            return Admit::Unknown;
        }
        let p = parts.entry(tp.clone()).or_insert_with(|| Part {
            epoch: self.epochs.fetch_add(1, Ordering::Relaxed) as u64,
            open: BTreeSet::new(),
            acked: BTreeSet::new(),
            next: offset,
            committed: (offset, String::new()),
        });
        p.next = p.next.max(offset + 1);
        if floor.is_some_and(|f| offset < f) || p.acked.contains(&offset) {
            return Admit::Skip;
        }
        p.open.insert(offset);
        Admit::Hand(p.epoch)
    }

    /// Marks acked offsets settled; returns the commits now needed.
    /// Records of another epoch (the partition was revoked since) are
    /// pushed to `stale`.
    fn settle(&self, acked: &[Record], stale: &mut Vec<u64>) -> Vec<(Tp, i64, String)> {
        let mut parts = self.lock();
        let mut moved: Vec<Tp> = Vec::new();
        let mut settled: Vec<&Record> = Vec::with_capacity(acked.len());
        for r in acked {
            match parts.get_mut(&r.tp) {
                Some(p) if p.epoch == r.epoch => {
                    p.open.remove(&r.offset);
                    settled.push(r);
                    if !moved.contains(&r.tp) {
                        moved.push(r.tp.clone());
                    }
                }
                _ => stale.push(r.token),
            }
        }
        // Only acks past the new commit point need remembering (in the
        // metadata); the point itself covers those below it — in-order
        // acks, the common case, record nothing.
        for r in settled {
            if let Some(p) = parts.get_mut(&r.tp) {
                if r.offset >= p.point() {
                    p.acked.insert(r.offset);
                }
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
    let (stream, tx, stop) = ChannelStream::new(shared.closed.subscribe());
    let reader = Reader {
        consumer,
        acker,
        tracker,
        floors,
        prefix: shared.config.prefix.clone(),
        subscribed: subscribes,
        names: HashMap::default(),
        tx,
        stop,
        closed: shared.closed.subscribe(),
    };
    tokio::spawn(reader.run());
    if subscribes {
        // Return once the group has assigned this member (possibly nothing),
        // so what is published next is seen by the group as it now stands.
        let _ = tokio::time::timeout(timeout, assigned_rx.wait_for(|n| *n > 0)).await;
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

/// How many records the reader takes per wake-up at most: the first is
/// waited for, the rest only as far as librdkafka has already fetched them.
const READ_BATCH: usize = 256;

/// The task reading one subscription's consumer.
struct Reader {
    consumer: Arc<KConsumer>,
    acker: Arc<KafkaAcker>,
    tracker: Arc<Tracker>,
    floors: HashMap<Tp, i64>,
    prefix: String,
    /// Whether the consumer joined a group (`subscribe`) rather than `assign`.
    subscribed: bool,
    /// Kafka topic name -> (Kafka name, Wharf name), shared per topic.
    names: HashMap<Box<str>, (Arc<str>, Arc<str>)>,
    tx: DeliverySender,
    stop: watch::Receiver<bool>,
    closed: watch::Receiver<bool>,
}

impl Reader {
    /// The shared Kafka and Wharf names of Kafka topic `kt`.
    fn names(&mut self, kt: &str) -> (Arc<str>, Arc<str>) {
        if let Some(n) = self.names.get(kt) {
            return n.clone();
        }
        let wharf = kt.strip_prefix(self.prefix.as_str()).unwrap_or(kt);
        let n = (Arc::from(kt), Arc::from(wharf));
        self.names.insert(Box::from(kt), n.clone());
        n
    }

    /// Reads until the subscription stops or the backend closes.
    ///
    /// # Cancel safety
    /// Spawned, and only dropped with its runtime. A batch's reserved slots
    /// and the records collected (across `recv` and the committed-offset
    /// lookup) are not yet registered: dropped there, nothing was handed
    /// out and nothing past them is committed, so those records are read
    /// again; the slots belong to this subscription's table, gone with it.
    async fn run(mut self) {
        let acker: Arc<dyn Acker> = self.acker.clone();
        // One read batch: the deliveries and their records, registered in
        // the in-flight table together (one lock) before they are sent.
        let mut out: Vec<(wharf_core::Message, DeliveryInfo)> = Vec::with_capacity(READ_BATCH);
        let mut records: Vec<Record> = Vec::with_capacity(READ_BATCH);
        loop {
            // Slots for up to a batch: the first record is waited for, the
            // rest taken only as far as they have already arrived.
            let reserved = tokio::select! {
                biased;
                _ = self.stop.wait_for(|s| *s) => break,
                _ = self.closed.wait_for(|c| *c) => break,
                r = self.acker.in_flight.reserve(READ_BATCH) => r,
            };
            let Some(mut slots) = reserved else {
                break;
            };
            let consumer = self.consumer.clone();
            let first = tokio::select! {
                biased;
                _ = self.stop.wait_for(|s| *s) => None,
                _ = self.closed.wait_for(|c| *c) => None,
                m = consumer.recv() => Some(m),
            };
            let Some(mut got) = first else {
                self.acker.in_flight.free(slots);
                break;
            };
            let mut failed = false;
            loop {
                let m = match got {
                    Ok(m) => m,
                    Err(e) => {
                        tracing::warn!(error = %e, "kafka consumer error");
                        failed = true;
                        break;
                    }
                };
                let (kt, topic) = self.names(m.topic());
                let tp: Tp = (kt, m.partition());
                let offset = m.offset();
                let message = wire::message(&m);
                drop(m);
                if let Some((info, record)) = self.admit(tp, topic, offset).await {
                    out.push((message, info));
                    records.push(record);
                    slots -= 1;
                    if slots == 0 {
                        break;
                    }
                }
                match consumer.recv().now_or_never() {
                    Some(next) => got = next,
                    None => break,
                }
            }
            let gone = !self.send(&mut out, &mut records, &acker);
            self.acker.in_flight.free(slots);
            if gone {
                break;
            }
            if failed {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        self.linger().await;
    }

    /// Whether the record at `offset` of `tp` is handed out (then its
    /// delivery info and record), or passed over (below the start, or
    /// acked in an earlier session).
    async fn admit(
        &mut self,
        tp: Tp,
        topic: Arc<str>,
        offset: i64,
    ) -> Option<(DeliveryInfo, Record)> {
        let floor = self.floors.get(&tp).copied();
        let commits = self.acker.commits;
        let epoch = match self.tracker.admit(&tp, offset, floor, commits) {
            Admit::Hand(epoch) => epoch,
            Admit::Skip => return None,
            Admit::Unknown => {
                let committed = self.committed(&tp).await;
                self.tracker.start(&tp, committed, offset);
                match self.tracker.admit(&tp, offset, floor, commits) {
                    Admit::Hand(epoch) => epoch,
                    _ => return None,
                }
            }
        };
        let info = DeliveryInfo {
            topic,
            partition: u32::try_from(tp.1).unwrap_or(0),
            offset: u64::try_from(offset).ok(),
            attempt: 1,
        };
        Some((
            info,
            Record {
                token: 0,
                tp,
                offset,
                epoch,
            },
        ))
    }

    /// Registers a read batch's records and sends its deliveries; `false`
    /// once the subscription is gone (the deliveries not sent are dropped,
    /// which releases them).
    fn send(
        &mut self,
        out: &mut Vec<(wharf_core::Message, DeliveryInfo)>,
        records: &mut Vec<Record>,
        acker: &Arc<dyn Acker>,
    ) -> bool {
        if out.is_empty() {
            return true;
        }
        self.acker.held.fetch_add(out.len(), Ordering::Relaxed);
        let first = self.acker.in_flight.register_all(records.drain(..));
        let mut open = true;
        for ((message, info), token) in out.drain(..).zip(first..) {
            let d = Delivery::new(message, info, acker.clone(), token);
            if open && self.tx.send(Ok(d)).is_err() {
                open = false;
            }
        }
        open
    }

    /// The group's committed offset and metadata for `tp`, if any (a
    /// failed lookup counts as none: the consumer then starts where Kafka
    /// resumes it, and acks past the point are redelivered, not lost).
    async fn committed(&self, tp: &Tp) -> Option<(i64, String)> {
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition(&tp.0, tp.1);
        let c = self.consumer.clone();
        let timeout = self.acker.timeout;
        let got = blocking("committed offsets", timeout, move || {
            c.committed_offsets(tpl, timeout)
        })
        .await;
        match got {
            Ok(tpl) => {
                let e = tpl.find_partition(&tp.0, tp.1)?;
                match e.offset() {
                    Offset::Offset(at) => Some((at, e.metadata().to_owned())),
                    _ => None,
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "reading the committed offset failed");
                None
            }
        }
    }

    /// After the stream ended: stays a member of the group (serving
    /// rebalances, fetching nothing) until every delivery handed out is
    /// settled or dropped, so those can still commit; then leaves.
    async fn linger(self) {
        if let Ok(assignment) = self.consumer.assignment() {
            let _ = self.consumer.pause(&assignment);
        }
        let mut closed = self.closed.clone();
        while self.acker.held.load(Ordering::Relaxed) > 0 && !*closed.borrow_and_update() {
            tokio::select! {
                _ = self.consumer.recv() => {}
                _ = tokio::time::sleep(Duration::from_millis(50)) => {}
                _ = closed.changed() => {}
            }
        }
        // Leave the group now: settled deliveries (or an `AckBatch`) may
        // keep the acker, and with it the consumer, alive for a long time,
        // and a member that no longer polls stalls the group's rebalances.
        if self.subscribed {
            self.consumer.unsubscribe();
        } else {
            let _ = self.consumer.unassign();
        }
        // Serve the revocation that follows.
        let _ = tokio::time::timeout(Duration::from_millis(200), self.consumer.recv()).await;
        // Closing the consumer blocks: not on a runtime thread.
        let Reader {
            consumer, acker, ..
        } = self;
        tokio::task::spawn_blocking(move || {
            drop(acker);
            drop(consumer);
        });
    }
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

    #[test]
    fn a_resumed_partition_skips_what_its_metadata_says_was_acked() {
        let t = Tracker::default();
        let tp: Tp = (Arc::from("t"), 0);
        t.start(&tp, Some((2, "w1:1,3-4".to_owned())), 2);
        let skipped: Vec<i64> = (2..8).filter(|o| t.acked_before(&tp, *o)).collect();
        assert_eq!(skipped, [3, 5, 6]);
    }
}
