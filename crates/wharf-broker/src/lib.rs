//! Wharf's embedded durable broker: open a directory and publish, like SQLite.
//!
//! [`Broker`] implements the `wharf-core` traits in-process on top of
//! `wharf-log` (one log per partition) and `redb` (topic configs and group
//! positions). No server, no setup:
//!
//! ```
//! use wharf_broker::Broker;
//! use wharf_core::{Backend, Message, Publisher, Subscriber, SubscribeOptions};
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), wharf_core::Error> {
//! let dir = tempfile::tempdir().expect("temp dir");
//! let broker = Broker::open(dir.path()).await?;
//! broker.publish("orders.created", Message::new("order 1")).await?;
//! let mut sub = broker.subscribe(SubscribeOptions::new("orders.*").group("billing")).await?;
//! let d = sub.next().await.expect("open")?;
//! assert_eq!(&d.message().payload()[..], b"order 1");
//! d.ack().await?;
//! broker.close().await?;
//! # Ok(()) }
//! ```
//!
//! # Semantics
//! - **Topics** have N partitions; a message goes to `crc32c(key) % N`, or
//!   round-robin without a key (per batch: a batch's keyless messages go to
//!   one partition), so order per key holds within a partition.
//!   Topics are created on first use unless the builder turns that off.
//! - **Publish** is acknowledged once the log holds the message as durably
//!   as the topic's [`Durability`] promises (default `Always`: after
//!   `fdatasync`, shared by concurrent publishers through group commit).
//! - **Groups** (queue semantics): each message is leased to one consumer of
//!   the group; ack settles it; nack, release (dropping the delivery) and an
//!   expired visibility timeout make it deliverable again (after a delay for
//!   `nack_with_delay`); after `max_deliveries` attempts, and on `reject`, it
//!   is copied to the dead-letter topic with `wharf-*` headers and settled.
//!   Acks may arrive out of order: a group's persisted position is the floor
//!   below which everything is settled plus the settled offsets above it.
//! - **Priorities** order the messages within a group's read-ahead window
//!   ([`BrokerConfig::read_ahead`] per partition): among ready messages the
//!   highest priority goes first, then the lowest offset.
//! - **Delayed publish, TTL, dedup**: `deliver_at` messages are stored at once
//!   and become deliverable at their time; expired messages are skipped, also
//!   when one comes round again (a redelivery, a nack with a delay) past its
//!   TTL; a message id seen within the topic's dedup window is not stored
//!   again and the publish returns the original receipt — also when the first publish
//!   of it was cancelled (see *Cancel safety* on [`Broker::publish_from`]).
//! - **Restarts**: published messages, topic configs and group positions
//!   survive a clean close and `kill -9`. Group positions are committed every
//!   [`BrokerConfig::commit_interval`] (and at close), so after a crash a
//!   message acked within that interval before the crash can be delivered
//!   again — that is the at-least-once window. Delivery attempt counts are
//!   committed with the positions: a message a consumer held (had been
//!   handed) at a crash counts that attempt as failed, so one that keeps
//!   crashing its consumer process reaches `max_deliveries` and the
//!   dead-letter topic. Under a `max_deliveries` policy a partition's first
//!   delivery after the broker opens is committed before it is handed out,
//!   so a message that kills its consumer at once — the first one the next
//!   process is given — is counted every time; other deliveries are counted
//!   by the periodic commit, so one that kills its consumer within a commit
//!   interval of receiving it mid-stream goes uncounted that once.
//!   Deliveries still unseen in a subscription's buffer are never charged.

#![warn(missing_docs)]

#[cfg(test)]
mod cancel_tests;
mod clock;
mod codec;
mod config;
mod error;
mod group;
mod inspect;
mod meta;
mod repair;
mod reset;
mod subscription;
mod topic;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::{Notify, Semaphore};
use wharf_core::name::{dead_letter_topic, validate_topic};
use wharf_core::{
    header, Backend, Capabilities, Capability, Limits, Message, MessageId, Publisher, Receipt,
    StartPosition, SubscribeOptions, Subscriber, Subscription,
};

pub use config::{
    BrokerConfig, Durability, TopicConfig, DEFAULT_MAX_HEADERS, DEFAULT_MAX_HEADER_BYTES,
    MAX_MESSAGE_BYTES, MAX_PARTITIONS,
};
pub use error::StorageError;
pub use inspect::{GroupDetail, GroupPartition, PeekPage, PeekPosition, Peeked};
pub use reset::GroupReset;
pub use topic::DEDUP_CAPACITY;
pub use wharf_core::{Error, PublishSource};
use wharf_log::{BatchBuilder, Written};
pub use wharf_log::{
    Damage, IntegrityStatsSnapshot, RepairAction, RepairReport, SyncStats, SyncStatsSnapshot,
    SYNC_BUCKET_BOUNDS_MICROS,
};

use crate::clock::Clock;
use crate::error::storage_error;
use crate::group::{DeadLetter, GroupTopic, Policy};
use crate::meta::{Cursor, CursorKey, Meta};
use crate::subscription::{Binding, BrokerStream, SubShared};
use crate::topic::{DedupCheck, LogStats, Reservation, Topic, WrittenPublish};

type Result<T, E = Error> = std::result::Result<T, E>;

/// Name of the internal group that `redrive` uses on dead-letter topics.
pub const REDRIVE_GROUP: &str = "wharf.redrive";

/// Most bytes of letters [`Broker::redrive`] publishes back in one batch.
const REDRIVE_RUN_BYTES: usize = 4 * 1024 * 1024;

/// The embedded broker. Cheap to clone; all clones share one broker.
#[derive(Clone)]
pub struct Broker {
    inner: Arc<Inner>,
}

/// Builds a [`Broker`] with non-default settings.
#[derive(Debug, Clone, Default)]
#[must_use]
pub struct BrokerBuilder {
    config: BrokerConfig,
    storage: Option<Arc<dyn wharf_log::Storage>>,
}

impl BrokerBuilder {
    /// Settings for topics created on first use.
    pub fn default_topic(mut self, cfg: TopicConfig) -> Self {
        self.config.default_topic = cfg;
        self
    }

    /// Whether publish/subscribe create unknown topics (default `true`).
    pub fn auto_create_topics(mut self, on: bool) -> Self {
        self.config.auto_create_topics = on;
        self
    }

    /// How often group positions are persisted (default 100 ms).
    pub fn commit_interval(mut self, d: Duration) -> Self {
        self.config.commit_interval = d;
        self
    }

    /// Messages read ahead per group and partition (default 1,024).
    pub fn read_ahead(mut self, n: usize) -> Self {
        self.config.read_ahead = n.max(1);
        self
    }

    /// Most headers, and most bytes of header names and values, a published
    /// message may have (defaults [`DEFAULT_MAX_HEADERS`] and
    /// [`DEFAULT_MAX_HEADER_BYTES`]); past them a publish fails with
    /// [`Error::TooManyHeaders`] / [`Error::HeadersTooLarge`].
    pub fn header_limits(mut self, max_headers: usize, max_header_bytes: usize) -> Self {
        self.config.max_headers = max_headers;
        self.config.max_header_bytes = max_header_bytes;
        self
    }

    /// Bytes of messages read ahead per group and partition (default 1 MiB).
    pub fn read_ahead_bytes(mut self, n: usize) -> Self {
        self.config.read_ahead_bytes = n.max(1);
        self
    }

    /// How long a group with no consumer and no unsettled delivery stays
    /// loaded (default 60 s); see [`BrokerConfig::group_idle`].
    pub fn group_idle(mut self, d: Duration) -> Self {
        self.config.group_idle = d;
        self
    }

    /// Most groups loaded at once (default 10,000); see
    /// [`BrokerConfig::max_groups`].
    pub fn max_groups(mut self, n: usize) -> Self {
        self.config.max_groups = n.max(1);
        self
    }

    /// The storage seam the topics' logs read and write through: the file
    /// system by default. A [`wharf_log::SimStorage`] injects faults (a
    /// failed write or `fdatasync` at the n-th call, a full disk) for tests;
    /// the metadata store (topic settings, group positions) stays in the
    /// data directory's files either way.
    pub fn storage(mut self, storage: Arc<dyn wharf_log::Storage>) -> Self {
        self.storage = Some(storage);
        self
    }

    /// Opens (creating if needed) the broker in `dir`.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for a bad default topic config;
    /// [`Error::Backend`] if the directory, metadata or a log can't be opened
    /// (including when another broker has it open).
    ///
    /// # Cancel safety
    /// Cancel-safe: it has no await point, so once polled it runs to
    /// completion; dropped before that, it does nothing.
    pub async fn open(self, dir: impl AsRef<Path>) -> Result<Broker> {
        Broker::open_with(dir.as_ref().to_path_buf(), None, self.config, self.storage).await
    }

    /// Opens a broker in a new temporary directory, deleted when it is dropped.
    ///
    /// # Errors
    /// As [`BrokerBuilder::open`].
    ///
    /// # Cancel safety
    /// Cancel-safe: it has no await point, so once polled it runs to
    /// completion; dropped before that, it does nothing.
    pub async fn temporary(self) -> Result<Broker> {
        let tmp = tempfile::tempdir().map_err(|e| storage_error("create temp dir", e))?;
        Broker::open_with(
            tmp.path().to_path_buf(),
            Some(tmp),
            self.config,
            self.storage,
        )
        .await
    }
}

/// One topic as seen by [`Broker::topics`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct TopicInfo {
    /// The topic's name.
    pub name: String,
    /// Its settings.
    pub config: TopicConfig,
    /// `(first offset, next offset)` of each partition.
    pub partitions: Vec<(u64, u64)>,
    /// Bytes each partition's log holds in its segment files, in partition
    /// order: the log's running figure (kept by appends, roll, retention
    /// and truncation; no file is stat'ed), including bytes written but not
    /// yet synced, without the index files. Sum: [`TopicInfo::bytes`].
    pub partition_bytes: Vec<u64>,
    /// Damaged batches found and not repaired, with their partition: those
    /// partitions deliver nothing past the damage until
    /// [`Broker::repair`] (the others serve as usual).
    pub damage: Vec<(u32, Damage)>,
}

impl TopicInfo {
    /// Bytes the topic holds on disk: the sum of
    /// [`partition_bytes`](TopicInfo::partition_bytes).
    pub fn bytes(&self) -> u64 {
        self.partition_bytes.iter().sum()
    }
}

/// One group's position on one topic, from [`Broker::groups`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct GroupInfo {
    /// The group's name.
    pub group: String,
    /// The topic.
    pub topic: String,
    /// Messages stored but not yet settled by the group.
    pub lag: u64,
    /// Queue or stream mode.
    pub mode: wharf_core::GroupMode,
    /// Live consumers.
    pub members: usize,
    /// Stream mode: each partition and the member id that owns it.
    pub assignment: Vec<(u32, Option<u64>)>,
    /// Whether the group's state is loaded (a consumer bound it since open
    /// and it was not unloaded when idle); otherwise `lag` is from its
    /// persisted position.
    pub loaded: bool,
}

/// Which dead letters [`Broker::redrive`] moves back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Redrive {
    /// Every dead letter currently in the topic.
    All,
    /// Only the message with this id.
    Id(MessageId),
}

pub(crate) struct Inner {
    dir: PathBuf,
    _temp: Option<tempfile::TempDir>,
    config: BrokerConfig,
    meta: Meta,
    topics: RwLock<HashMap<Arc<str>, Arc<Topic>>>,
    /// One lock per topic name being created or deleted (see
    /// [`Inner::name_lock`]): the file work runs under it, not under `topics`.
    name_locks: Mutex<HashMap<String, Arc<Mutex<()>>>>,
    groups: Mutex<HashMap<(String, String), Arc<GroupTopic>>>,
    saved: Mutex<HashMap<(String, String), HashMap<u32, Cursor>>>,
    subs: Mutex<Vec<Weak<SubShared>>>,
    closed: AtomicBool,
    pub(crate) clock: Clock,
    pub(crate) lease_ids: AtomicU64,
    publish_permits: Semaphore,
    /// Set while writes fail for lack of space (see [`Broker::storage_full`]).
    storage_full: AtomicBool,
    /// fsync durations (see [`Broker::fsync_stats`]) and damage counts (see
    /// [`Broker::integrity_stats`]) of every partition's log.
    stats: LogStats,
}

impl Broker {
    /// Opens (creating if needed) a broker in `dir` with default settings.
    ///
    /// # Errors
    /// As [`BrokerBuilder::open`].
    ///
    /// # Cancel safety
    /// Cancel-safe: it has no await point, so once polled it runs to
    /// completion; dropped before that, it does nothing.
    pub async fn open(dir: impl AsRef<Path>) -> Result<Broker> {
        Broker::builder().open(dir).await
    }

    /// A broker in a temporary directory, deleted when the broker is dropped.
    ///
    /// # Errors
    /// As [`BrokerBuilder::open`].
    ///
    /// # Cancel safety
    /// Cancel-safe: it has no await point, so once polled it runs to
    /// completion; dropped before that, it does nothing.
    pub async fn temporary() -> Result<Broker> {
        Broker::builder().temporary().await
    }

    /// Starts building a broker with non-default settings.
    pub fn builder() -> BrokerBuilder {
        BrokerBuilder::default()
    }

    async fn open_with(
        dir: PathBuf,
        temp: Option<tempfile::TempDir>,
        config: BrokerConfig,
        storage: Option<Arc<dyn wharf_log::Storage>>,
    ) -> Result<Broker> {
        config.default_topic.validate()?;
        std::fs::create_dir_all(dir.join("topics"))
            .map_err(|e| storage_error("create data dir", e))?;
        let meta = Meta::open(&dir.join("meta.redb"))?;
        let clock = Clock::new();
        let stats = LogStats {
            storage,
            ..LogStats::default()
        };
        let mut topics = HashMap::new();
        for (name, cfg) in meta.topics()? {
            let t = Topic::open(
                &name,
                dir.join("topics").join(&name),
                cfg.clone(),
                stats.clone(),
            )?;
            if let Some(w) = cfg.dedup_window_ms {
                t.rebuild_dedup(clock.now_ms(), w);
            }
            topics.insert(Arc::<str>::from(name.as_str()), Arc::new(t));
        }
        let mut saved: HashMap<(String, String), HashMap<u32, Cursor>> = HashMap::new();
        for (k, c) in meta.cursors()? {
            saved
                .entry((k.group, k.topic))
                .or_default()
                .insert(k.partition, c);
        }
        let inner = Arc::new(Inner {
            dir,
            _temp: temp,
            publish_permits: Semaphore::new(config.max_pending_publishes.max(1)),
            storage_full: AtomicBool::new(false),
            config,
            meta,
            topics: RwLock::new(topics),
            name_locks: Mutex::new(HashMap::new()),
            groups: Mutex::new(HashMap::new()),
            saved: Mutex::new(saved),
            subs: Mutex::new(Vec::new()),
            closed: AtomicBool::new(false),
            clock,
            lease_ids: AtomicU64::new(1),
            stats,
        });
        tokio::spawn(commit_loop(
            Arc::downgrade(&inner),
            inner.config.commit_interval,
        ));
        Ok(Broker { inner })
    }

    /// Whether writes are failing because the storage is full: set by a
    /// publish, topic creation or group-position commit that failed with
    /// [`Error::StorageFull`]; cleared by the next write that succeeds or
    /// by a probe (every `commit_interval`) that finds space again. Reads
    /// keep working meanwhile, and so does deleting topics.
    pub fn storage_full(&self) -> bool {
        self.inner.storage_full.load(Ordering::Acquire)
    }

    /// The directory the broker stores its data in.
    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// Creates a topic with `config`; an existing topic keeps its config.
    ///
    /// # Errors
    /// [`Error::InvalidName`], [`Error::InvalidArgument`] for a bad config,
    /// storage failures.
    ///
    /// The partitions' files are made on a blocking thread, holding no
    /// lock other topics need: publishes, consumes and admin calls on other
    /// topics go on meanwhile. Calls naming this topic wait for it (a
    /// publish or subscribe that would create it finds it made).
    ///
    /// # Cancel safety
    /// Cancel-safe: once started, the creation finishes on its blocking
    /// thread even if this future is dropped (the topic then exists).
    pub async fn create_topic(&self, name: &str, config: TopicConfig) -> Result<()> {
        self.inner.check_open()?;
        validate_topic(name)?;
        config.validate()?;
        let inner = self.inner.clone();
        let name = name.to_owned();
        tokio::task::spawn_blocking(move || {
            let r = inner.create_topic(&name, config);
            inner.note_storage(&r);
            r.map(drop)
        })
        .await
        .map_err(|e| storage_error("create topic task", e))?
    }

    /// Raises a topic's partition count (it can never be lowered).
    ///
    /// # Errors
    /// [`Error::UnknownTopic`], [`Error::InvalidArgument`] when `n` is lower
    /// than the current count or above [`MAX_PARTITIONS`].
    ///
    /// # Cancel safety
    /// Cancel-safe: it has no await point, so once polled it runs to
    /// completion; dropped before that, it does nothing.
    pub async fn set_partitions(&self, name: &str, n: u32) -> Result<()> {
        self.inner.check_open()?;
        let t = self.inner.existing_topic(name)?;
        let cur = t.config().partitions;
        if n < cur || n > MAX_PARTITIONS {
            return Err(Error::InvalidArgument {
                name: "partitions",
                reason: format!("must be between the current {cur} and {MAX_PARTITIONS}"),
            });
        }
        let cfg = t.grow(n)?;
        self.inner.meta.put_topic(name, &cfg)
    }

    /// Deletes a topic, its data and every group position on it.
    ///
    /// # Errors
    /// [`Error::UnknownTopic`], storage failures.
    ///
    /// The files are removed on a blocking thread, under the topic name's
    /// own lock (so the name is not made again until they are gone) and
    /// no lock other topics need.
    ///
    /// # Cancel safety
    /// Cancel-safe: once started, the deletion finishes on its blocking
    /// thread even if this future is dropped.
    pub async fn delete_topic(&self, name: &str) -> Result<()> {
        self.inner.check_open()?;
        validate_topic(name)?;
        let inner = self.inner.clone();
        let name = name.to_owned();
        tokio::task::spawn_blocking(move || inner.delete_topic(&name))
            .await
            .map_err(|e| storage_error("delete topic task", e))?
    }

    /// Every topic with its config, offsets and bytes on disk.
    pub fn topics(&self) -> Vec<TopicInfo> {
        let topics = self.inner.topics.read().unwrap_or_else(|p| p.into_inner());
        let mut out: Vec<TopicInfo> = topics
            .values()
            .map(|t| {
                // One snapshot, so offsets and bytes cover the same partitions.
                let parts = t.partitions();
                TopicInfo {
                    name: t.name().to_owned(),
                    config: t.config(),
                    partitions: parts
                        .iter()
                        .map(|p| (p.start_offset(), p.end_offset()))
                        .collect(),
                    partition_bytes: parts.iter().map(|p| p.size_bytes()).collect(),
                    damage: t.damage(),
                }
            })
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    /// Every consumer group with a position on a topic, with its lag: the
    /// loaded ones, and those known only by their persisted position (no
    /// consumer since open, or unloaded when idle; shown in queue mode with
    /// no members, as their mode is known only while they are loaded).
    pub fn groups(&self) -> Vec<GroupInfo> {
        let mut out: Vec<GroupInfo> = self
            .inner
            .groups
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|((g, t), gt)| GroupInfo {
                group: g.clone(),
                topic: t.clone(),
                lag: gt.lag(),
                mode: gt.mode,
                members: gt.member_count(),
                assignment: gt.assignment(),
                loaded: true,
            })
            .collect();
        // Groups not loaded: their persisted position (see `group_details`).
        for ((group, topic), parts) in self.saved_positions() {
            out.push(GroupInfo {
                group,
                topic,
                lag: parts
                    .iter()
                    .map(|&(_, floor, above, end)| end.saturating_sub(floor).saturating_sub(above))
                    .sum(),
                mode: wharf_core::GroupMode::Queue,
                members: 0,
                assignment: Vec::new(),
                loaded: false,
            });
        }
        out.sort_by(|a, b| (&a.group, &a.topic).cmp(&(&b.group, &b.topic)));
        out
    }

    /// Moves dead letters from `dlq_topic` back to their original topics
    /// (from the `wharf-original-topic` header), keeping id, key, payload and
    /// the application's headers; the `wharf-dlq-*` bookkeeping headers are
    /// removed. Returns how many were moved. A moved dead letter is settled
    /// for the internal [`REDRIVE_GROUP`], so it is not moved twice.
    /// [`Redrive::Id`] finds its letter by reading the topic, so it reaches
    /// any letter not yet redriven or purged, however many come before it.
    ///
    /// # Errors
    /// [`Error::UnknownTopic`] if `dlq_topic` does not exist; publish failures.
    ///
    /// # Cancel safety
    /// Not atomic per letter: letters are published back, then settled.
    /// Cancelled in between, they stay in the DLQ and a later redrive moves
    /// them again (at-least-once, like a crash there).
    pub async fn redrive(&self, dlq_topic: &str, which: Redrive) -> Result<usize> {
        self.redrive_where(dlq_topic, which, &|_| true).await
    }

    /// As [`Broker::redrive`], moving only letters whose original topic
    /// `allow` accepts; the others stay in `dlq_topic`, not redriven. The
    /// header is whatever the letter's writer stored, so a caller acting
    /// for someone (`wharf serve`) passes that someone's publish right.
    ///
    /// # Errors
    /// As [`Broker::redrive`].
    pub async fn redrive_where(
        &self,
        dlq_topic: &str,
        which: Redrive,
        allow: &(dyn Fn(&str) -> bool + Sync),
    ) -> Result<usize> {
        self.inner.check_open()?;
        self.inner.existing_topic(dlq_topic)?;
        if let Redrive::Id(id) = which {
            return self.redrive_one(dlq_topic, id, allow).await;
        }
        // Read page by page rather than leased: every letter is reached
        // however many are refused or come before it, and nothing waits on
        // a timeout that a busy machine could outlast.
        let mut moved = 0;
        let mut from = PeekPosition::START;
        loop {
            let page = {
                let b = self.clone();
                let topic = dlq_topic.to_owned();
                tokio::task::spawn_blocking(move || {
                    b.peek_unsettled(&topic, REDRIVE_GROUP, from, 256)
                })
                .await
                .map_err(|e| storage_error("redrive", e))??
            };
            // Consecutive letters of one original topic go back in one
            // publish (of at most a few MiB), then each is settled.
            let mut run: Vec<Peeked> = Vec::new();
            let mut run_topic = String::new();
            let mut run_bytes = 0;
            for p in page.messages {
                let Some(original) = p.message.headers().get(header::ORIGINAL_TOPIC) else {
                    continue;
                };
                if !allow(original) {
                    continue;
                }
                if original != run_topic || run_bytes >= REDRIVE_RUN_BYTES {
                    moved += self.redrive_run(dlq_topic, &run_topic, &mut run).await?;
                    run_topic = original.to_owned();
                    run_bytes = 0;
                }
                run_bytes += p.message.size();
                run.push(p);
            }
            moved += self.redrive_run(dlq_topic, &run_topic, &mut run).await?;
            match page.next {
                Some(next) => from = next,
                None => return Ok(moved),
            }
        }
    }

    /// Publishes `run` (letters of `dlq_topic` from one original topic)
    /// back to `original` in one batch, then settles each for the redrive
    /// group; published first, so a crash in between repeats the publish
    /// rather than losing a letter. Returns how many it moved.
    async fn redrive_run(
        &self,
        dlq_topic: &str,
        original: &str,
        run: &mut Vec<Peeked>,
    ) -> Result<usize> {
        if run.is_empty() {
            return Ok(0);
        }
        let msgs: Vec<Message> = run
            .iter()
            .map(|p| {
                let mut msg = p.message.clone();
                wharf_core::dead_letter::unstamp(&mut msg);
                msg
            })
            .collect();
        self.inner.publish(original, &msgs[..], false, true).await?;
        for p in run.drain(..) {
            self.settle_offset(dlq_topic, REDRIVE_GROUP, p.partition, p.offset)?;
        }
        Ok(msgs.len())
    }

    /// Redrives the letter with id `id`. It is found by reading the topic
    /// page by page ([`Broker::peek_unsettled`]), so wherever it lies —
    /// leasing letters to look at them could not reach past the group's
    /// read-ahead window — and nothing else is touched. Published back
    /// first, then settled, so a crash in between repeats the publish rather
    /// than losing the letter.
    async fn redrive_one(
        &self,
        dlq_topic: &str,
        id: MessageId,
        allow: &(dyn Fn(&str) -> bool + Sync),
    ) -> Result<usize> {
        let Some(found) = self.find_unsettled(dlq_topic, REDRIVE_GROUP, id)? else {
            return Ok(0);
        };
        let Some(original) = found
            .message
            .headers()
            .get(header::ORIGINAL_TOPIC)
            .map(str::to_owned)
        else {
            return Ok(0);
        };
        if !allow(&original) {
            return Ok(0);
        }
        let mut msg = found.message;
        wharf_core::dead_letter::unstamp(&mut msg);
        self.inner
            .publish(&original, std::slice::from_ref(&msg), false, true)
            .await?;
        self.settle_offset(dlq_topic, REDRIVE_GROUP, found.partition, found.offset)?;
        Ok(1)
    }

    /// Settles the message at `partition`/`offset` of `topic` for `group`
    /// as an ack of it would, without delivering it: the group's position
    /// moves (out-of-order settlements included) and is persisted with the
    /// next commit, like any ack. A group with no position on the topic gets
    /// one, in queue mode from the earliest offset. A lease a consumer holds
    /// on that message becomes void (its ack reports an unknown delivery).
    /// Returns `false` if the message was already settled (or is gone by
    /// retention).
    ///
    /// # Errors
    /// [`Error::InvalidName`] for a bad group name, [`Error::UnknownTopic`],
    /// [`Error::InvalidArgument`] for a partition or offset the topic does
    /// not have.
    pub fn settle_offset(
        &self,
        topic: &str,
        group: &str,
        partition: u32,
        offset: u64,
    ) -> Result<bool> {
        self.inner.check_open()?;
        wharf_core::name::validate_group(group)?;
        let t = self.inner.existing_topic(topic)?;
        let parts = t.partitions();
        let Some(part) = parts.get(partition as usize) else {
            return Err(Error::InvalidArgument {
                name: "partition",
                reason: format!("{topic:?} has {} partitions", parts.len()),
            });
        };
        if offset >= part.end_offset() {
            return Err(Error::InvalidArgument {
                name: "offset",
                reason: format!(
                    "partition {partition} of {topic:?} ends at {}",
                    part.end_offset()
                ),
            });
        }
        if offset < part.start_offset() {
            return Ok(false);
        }
        let gt = self.inner.group_topic(
            group,
            &t,
            wharf_core::GroupMode::Queue,
            StartPosition::Earliest,
        )?;
        Ok(gt.settle_offset(partition, offset))
    }

    /// Persists every group position now (they are also committed every
    /// [`BrokerConfig::commit_interval`] and at close).
    ///
    /// # Errors
    /// Metadata write failures.
    ///
    /// # Cancel safety
    /// Cancel-safe: it has no await point, so once polled it runs to
    /// completion; dropped before that, it does nothing.
    pub async fn commit(&self) -> Result<()> {
        self.inner.commit(true)
    }
}

impl Inner {
    /// Tracks whether writes fail for lack of space: set by a
    /// [`Error::StorageFull`], cleared by a write that succeeds.
    fn note_storage<T>(&self, r: &Result<T>) {
        match r {
            Err(Error::StorageFull { .. }) => {
                if !self.storage_full.swap(true, Ordering::AcqRel) {
                    tracing::warn!(dir = %self.dir.display(), "storage is full: writes fail until space is freed");
                }
            }
            Ok(_) => {
                if self.storage_full.swap(false, Ordering::AcqRel) {
                    tracing::info!(dir = %self.dir.display(), "storage has space again: writes resume");
                }
            }
            Err(_) => {}
        }
    }

    /// While the storage is full, checks whether space is back by writing,
    /// syncing and removing a small file in the data directory, so
    /// readiness recovers even when no publish arrives to try.
    fn probe_space(&self) {
        if !self.storage_full.load(Ordering::Acquire) {
            return;
        }
        let path = self.dir.join(".space-probe");
        let r = (|| -> std::io::Result<()> {
            use std::io::Write;
            let mut f = std::fs::File::create(&path)?;
            f.write_all(&[0u8; 64 * 1024])?;
            f.sync_data()
        })();
        let _ = std::fs::remove_file(&path);
        let r = r.map_err(|e| storage_error("space probe", e));
        if r.is_ok() {
            self.note_storage(&r);
        }
    }

    fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    fn check_open(&self) -> Result<()> {
        if self.is_closed() {
            Err(Error::Closed { what: "broker" })
        } else {
            Ok(())
        }
    }

    fn existing_topic(&self, name: &str) -> Result<Arc<Topic>> {
        validate_topic(name)?;
        self.topics
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
            .cloned()
            .ok_or_else(|| Error::UnknownTopic { topic: name.into() })
    }

    /// The topic, created with the default config if allowed (or `force`d).
    fn topic(&self, name: &str, force: bool) -> Result<Arc<Topic>> {
        if let Some(t) = self
            .topics
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
        {
            return Ok(t.clone());
        }
        if !(self.config.auto_create_topics || force) {
            return Err(Error::UnknownTopic { topic: name.into() });
        }
        self.create_topic(name, self.config.default_topic.clone())
    }

    /// Deletes a topic: out of the map at once (new calls find no topic),
    /// then its groups, positions and files, all under the name's lock.
    /// Blocking: called on a blocking thread.
    fn delete_topic(&self, name: &str) -> Result<()> {
        let lock = self.name_lock(name);
        let _held = lock.lock().unwrap_or_else(|p| p.into_inner());
        let t = self
            .topics
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(name)
            .ok_or_else(|| Error::UnknownTopic { topic: name.into() })?;
        self.groups
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|(_, topic), _| topic != name);
        // Positions of unloaded groups too, so a topic made again under the
        // name starts afresh.
        self.saved
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|(_, topic), _| topic != name);
        // Data first, so a full disk has room for the metadata change. The
        // logs are abandoned, not closed: nothing is synced of files about
        // to be removed (closing synced each partition four times, which
        // made deleting a topic of thousands of partitions take seconds).
        t.abandon();
        let partitions = t.partitions().len();
        // Its open files hold their space until the last handle goes.
        drop(t);
        let dir = self.dir.join("topics").join(name);
        if let Some(storage) = &self.stats.storage {
            // Logs behind a storage seam of the caller's: remove their files
            // through it (the directory below is then only what the file
            // system holds of it, if anything).
            for p in 0..partitions {
                let pdir = dir.join(p.to_string());
                for f in storage.list(&pdir).unwrap_or_default() {
                    storage
                        .remove(&pdir.join(f))
                        .map_err(|e| storage_error("delete topic file", e))?;
                }
            }
        }
        match std::fs::remove_dir_all(&dir) {
            Err(e)
                if !(e.kind() == std::io::ErrorKind::NotFound && self.stats.storage.is_some()) =>
            {
                return Err(storage_error("delete topic dir", e));
            }
            _ => {}
        }
        self.meta.delete_topic(name)
    }

    /// The lock of one topic name, held while the topic's files are made or
    /// removed; entries no one holds are dropped as others are taken.
    fn name_lock(&self, name: &str) -> Arc<Mutex<()>> {
        let mut locks = self.name_locks.lock().unwrap_or_else(|p| p.into_inner());
        locks.retain(|_, l| Arc::strong_count(l) > 1);
        locks.entry(name.to_owned()).or_default().clone()
    }

    /// Creates a topic, or returns the existing one. The partitions' files
    /// are made under the name's lock only; the map of topics is locked
    /// just to look and to insert, so other topics are served meanwhile.
    /// Blocking for a topic with many partitions: async callers run it on a
    /// blocking thread ([`Broker::create_topic`]).
    fn create_topic(&self, name: &str, cfg: TopicConfig) -> Result<Arc<Topic>> {
        let lookup = || {
            self.topics
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .get(name)
                .cloned()
        };
        if let Some(t) = lookup() {
            return Ok(t);
        }
        let topic = {
            let lock = self.name_lock(name);
            let _held = lock.lock().unwrap_or_else(|p| p.into_inner());
            // Made (or its deletion finished) while this waited.
            if let Some(t) = lookup() {
                return Ok(t);
            }
            let t = Arc::new(Topic::open(
                name,
                self.dir.join("topics").join(name),
                cfg.clone(),
                self.stats.clone(),
            )?);
            self.meta.put_topic(name, &cfg)?;
            self.topics
                .write()
                .unwrap_or_else(|p| p.into_inner())
                .insert(t.name_arc(), t.clone());
            t
        };
        // Bind pattern subscriptions that match the new topic.
        for s in self.live_subscriptions() {
            if s.pattern.matches(name) && !s.has_binding(name) {
                if let Err(e) = self.bind(&s, topic.clone()) {
                    tracing::warn!(topic = name, error = %e, "could not bind subscription to new topic");
                }
            }
        }
        Ok(topic)
    }

    fn bind(&self, sub: &Arc<SubShared>, topic: Arc<Topic>) -> Result<()> {
        let opts = &sub.options;
        let cfg = topic.config();
        let gt = match opts.group_name() {
            Some(g) => {
                let gt = self.group_topic(g, &topic, opts.group_mode(), opts.start_position())?;
                if gt.mode != opts.group_mode() {
                    return Err(Error::InvalidArgument {
                        name: "mode",
                        reason: format!(
                            "group {g:?} already consumes {:?} in {:?} mode",
                            topic.name(),
                            gt.mode
                        ),
                    });
                }
                gt
            }
            None => Arc::new(GroupTopic::new(
                "".into(),
                wharf_core::GroupMode::Queue,
                topic.clone(),
                opts.start_position(),
                &HashMap::new(),
            )?),
        };
        let policy = Arc::new(Policy {
            visibility_timeout: opts
                .visibility_timeout_value()
                .or(cfg.visibility_timeout_ms.map(Duration::from_millis)),
            max_deliveries: opts.max_deliveries_limit().or(cfg.max_deliveries),
            dead_letter_topic: opts
                .dead_letter_topic_name()
                .map(str::to_owned)
                .or(cfg.dead_letter_topic.clone())
                .unwrap_or_else(|| dead_letter_topic(topic.name())),
            read_ahead: self.config.read_ahead,
            read_ahead_bytes: self.config.read_ahead_bytes,
        });
        {
            // Check and push under one lock: a topic created while the
            // subscription scans existing ones must not be bound twice.
            let mut bindings = sub.bindings.lock().unwrap_or_else(|p| p.into_inner());
            if bindings.iter().any(|b| b.gt.topic.name() == topic.name()) {
                return Ok(());
            }
            gt.watch(&sub.notify);
            gt.join(sub.id, sub.member.clone());
            topic.watch(&sub.notify);
            bindings.push(Binding { gt, policy });
        }
        sub.notify.notify_one();
        Ok(())
    }

    /// `group`'s state on `topic`: the live one, else made (in `mode`, from
    /// the position saved before a restart or else from `start`).
    fn group_topic(
        &self,
        group: &str,
        topic: &Arc<Topic>,
        mode: wharf_core::GroupMode,
        start: StartPosition,
    ) -> Result<Arc<GroupTopic>> {
        let key = (group.to_owned(), topic.name().to_owned());
        let mut groups = self.groups.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(gt) = groups.get(&key) {
            return Ok(gt.clone());
        }
        if groups.len() >= self.config.max_groups {
            return Err(Error::ResourceExhausted {
                resource: "consumer groups",
                limit: self.config.max_groups as u64,
            });
        }
        let saved = self
            .saved
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&key)
            .unwrap_or_default();
        let gt = Arc::new(GroupTopic::new(
            group.into(),
            mode,
            topic.clone(),
            start,
            &saved,
        )?);
        groups.insert(key, gt.clone());
        Ok(gt)
    }

    fn live_subscriptions(&self) -> Vec<Arc<SubShared>> {
        self.subs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter_map(Weak::upgrade)
            .collect()
    }

    pub(crate) fn forget_subscription(&self, sub: &Arc<SubShared>) {
        self.subs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|w| w.strong_count() > 0 && !std::ptr::eq(w.as_ptr(), Arc::as_ptr(sub)));
    }

    /// Copies a dead letter to its topic, then settles it. Runs as its own
    /// task so a cancelled caller can't leave the message half-moved.
    pub(crate) fn spawn_dead_letter(
        self: &Arc<Self>,
        gt: Arc<GroupTopic>,
        dl: DeadLetter,
    ) -> impl std::future::Future<Output = Result<()>> {
        let inner = self.clone();
        let task = tokio::spawn(async move {
            let (p, o) = (dl.partition, dl.offset);
            match inner
                .publish(&dl.topic, std::slice::from_ref(&dl.msg), false, true)
                .await
            {
                Ok(_) => {
                    gt.finish_dead(p, o);
                    Ok(())
                }
                Err(e) => {
                    tracing::warn!(topic = %dl.topic, error = %e, "dead-lettering failed; message will be redelivered");
                    gt.abort_dead(p, o);
                    Err(e)
                }
            }
        });
        async move {
            task.await.unwrap_or_else(|e| {
                Err(Error::Backend {
                    backend: error::BACKEND,
                    source: Box::new(e),
                })
            })
        }
    }

    /// The publish path. `dedup` applies the topic's dedup window; `force`
    /// creates the topic even when auto-create is off (dead letters, redrive).
    async fn publish<S: PublishSource + Sync + ?Sized>(
        &self,
        topic_name: &str,
        msgs: &S,
        dedup: bool,
        force: bool,
    ) -> Result<Vec<Receipt>> {
        self.check_open()?;
        validate_topic(topic_name)?;
        if msgs.is_empty() {
            return Ok(Vec::new());
        }
        // Dead letters and replays (`force`) carry `wharf-*` headers the
        // broker added, so the header limits apply to what clients publish.
        let (max_headers, max_header_bytes) = if force {
            (usize::MAX, usize::MAX)
        } else {
            (self.config.max_headers, self.config.max_header_bytes)
        };
        // Only an accepted publish creates a topic: an unknown topic's batch
        // is checked against the config it would get before it is created.
        let topic = match self.existing_topic(topic_name) {
            Ok(t) => t,
            Err(_) => {
                if !(self.config.auto_create_topics || force) {
                    return Err(Error::UnknownTopic {
                        topic: topic_name.into(),
                    });
                }
                let default = &self.config.default_topic;
                check_batch(
                    msgs,
                    default.max_message_bytes,
                    max_headers,
                    max_header_bytes,
                )?;
                self.topic(topic_name, force)?
            }
        };
        let cfg = topic.config();
        let total_size = check_batch(msgs, cfg.max_message_bytes, max_headers, max_header_bytes)?;
        let n = msgs.len();
        let mut receipts: Vec<Option<Receipt>> = vec![None; n];
        let mut same_as: Vec<(usize, usize)> = Vec::new();
        let mut reservation = None;
        if let Some(window_ms) = cfg.dedup_window_ms.filter(|_| dedup) {
            let mut checks = Vec::with_capacity(n);
            let r = loop {
                let mut r = Reservation::new(topic.clone());
                match r.reserve(msgs, self.clock.now_ms(), window_ms, &mut checks) {
                    Ok(()) => break r,
                    // Another publish has one of the ids in flight; this one
                    // holds nothing while it waits for that one to finish
                    // (or be cancelled), then checks the whole batch again.
                    Err(mut other) => {
                        drop(r);
                        let _ = other.changed().await;
                    }
                }
            };
            for (i, c) in checks.into_iter().enumerate() {
                match c {
                    DedupCheck::New => {}
                    DedupCheck::SameAs(j) => same_as.push((i, j)),
                    DedupCheck::Duplicate { partition, offset } => {
                        receipts[i] = Some(Receipt {
                            id: msgs.id(i),
                            partition,
                            offset: Some(offset),
                            duplicate: true,
                        });
                    }
                }
            }
            reservation = Some(r).filter(|r| !r.is_empty());
        }
        let appended = self
            .append(
                &topic,
                &cfg,
                msgs,
                total_size,
                &mut receipts,
                &same_as,
                reservation,
            )
            .await;
        self.note_storage(&appended);
        appended?;
        for (i, j) in same_as {
            let mut r = receipts[j].expect("first occurrence has a receipt");
            r.duplicate = true;
            receipts[i] = Some(r);
        }
        topic.wake();
        Ok(receipts
            .into_iter()
            .map(|r| r.expect("every message has a receipt"))
            .collect())
    }

    /// Appends the messages that have no receipt yet, one batch per partition.
    /// `total_size` is the sum of the messages' sizes (for the batches'
    /// capacity). `reservation` holds the batch's new ids in the dedup
    /// window; it records where they were stored once the appends are done,
    /// even if this future is cancelled while they run (they are on blocking
    /// threads and finish regardless, so the record of them must too).
    #[allow(clippy::too_many_arguments)]
    async fn append<S: PublishSource + Sync + ?Sized>(
        &self,
        topic: &Arc<Topic>,
        cfg: &TopicConfig,
        msgs: &S,
        total_size: usize,
        receipts: &mut [Option<Receipt>],
        same_as: &[(usize, usize)],
        reservation: Option<Reservation>,
    ) -> Result<()> {
        // Taken before encoding, so publishes waiting their turn hold only
        // their messages, not an encoded copy as well. (Cancelled here, the
        // reservation drops and abandons its ids.)
        let _permit = self
            .publish_permits
            .acquire()
            .await
            .map_err(|_| Error::Closed { what: "broker" })?;
        let skip: std::collections::HashSet<usize> = same_as.iter().map(|&(i, _)| i).collect();
        let parts = topic.partitions();
        let nparts = u32::try_from(parts.len()).expect("partition count fits u32");
        // (partition, (message indexes, batch)), found through `slot`
        // (partition → position) rather than by hashing every message.
        type Indexed = (Vec<usize>, BatchBuilder);
        let mut by_part: Vec<(u32, Indexed)> = Vec::new();
        let mut slot = vec![usize::MAX; parts.len()];
        let mut scratch = Vec::new();
        // Keyless messages of one batch all go to one partition (the next
        // in round robin, per batch): one append and, under `Always`, one
        // fdatasync instead of one per partition, the batch waiting for the
        // slowest (Kafka's sticky partitioner does the same).
        let mut sticky = None;
        let total = codec::batch_len_estimate(total_size, msgs.len());
        for (i, receipt) in receipts.iter().enumerate() {
            if receipt.is_some() || skip.contains(&i) {
                continue;
            }
            // A one-partition topic needs no round robin.
            let p = match msgs.key(i) {
                _ if nparts == 1 => 0,
                Some(k) => topic.partition_for(Some(k), nparts),
                None => *sticky.get_or_insert_with(|| topic.partition_for(None, nparts)),
            };
            if slot[p as usize] == usize::MAX {
                slot[p as usize] = by_part.len();
                // Room for the whole batch where it all goes to one
                // partition (one partition, keyless), an even share for
                // keyed messages; grown by doubling past that.
                let cap = if nparts == 1 || msgs.key(i).is_none() {
                    total
                } else {
                    total / nparts as usize
                };
                by_part.push((p, (Vec::new(), BatchBuilder::with_capacity(cap))));
            }
            let e = &mut by_part[slot[p as usize]].1;
            e.0.push(i);
            codec::push_record(msgs, i, &mut e.1, &mut scratch);
        }
        // Written under the topic's commit order, readable only once the
        // whole publish succeeded: a publish that fails stores nothing.
        let batches = by_part
            .into_iter()
            .map(|(p, (idx, batch))| (p, idx, batch))
            .collect();
        let WrittenPublish {
            id,
            outcome,
            written,
            failed,
        } = topic.write_publish(batches);
        let durable = cfg.durability == Durability::Always;
        let mut fill = |written: &[(u32, Vec<usize>, Written)]| {
            for (p, idx, w) in written {
                let base = w.info.base_offset;
                for (k, &i) in idx.iter().enumerate() {
                    receipts[i] = Some(Receipt::new(msgs.id(i), *p, Some(base + k as u64)));
                }
            }
        };
        // The common case without a sync to wait for: settled at once.
        if !durable && failed.is_none() && topic.try_commit(id) {
            let mut outcome = outcome;
            if let Ok(r) = outcome.try_recv() {
                let stored = r.is_ok().then(|| stored_at(&written)).into_iter().flatten();
                if let Some(res) = reservation {
                    res.finish(stored, self.clock.now_ms());
                }
                r?;
                fill(&written);
                return Ok(());
            }
            return self
                .finish_publish(topic, None, id, outcome, written, reservation, &mut fill)
                .await;
        }
        let settle = (durable || failed.is_some()).then_some(failed);
        self.finish_publish(topic, settle, id, outcome, written, reservation, &mut fill)
            .await
    }

    /// The rest of a publish after its writes, on a task of its own (so a
    /// cancelled caller still settles it, and still records its ids in the
    /// dedup window): `settle` = `Some(first write error)` waits for the
    /// writes to be durable and settles the publish; `None` means it was
    /// settled already. Then waits for its outcome (every earlier publish
    /// of the topic settled) and fills the receipts.
    #[allow(clippy::too_many_arguments)]
    async fn finish_publish(
        &self,
        topic: &Arc<Topic>,
        settle: Option<Option<Error>>,
        id: u64,
        outcome: tokio::sync::oneshot::Receiver<Result<()>>,
        written: Vec<(u32, Vec<usize>, Written)>,
        reservation: Option<Reservation>,
        fill: &mut impl FnMut(&[(u32, Vec<usize>, Written)]),
    ) -> Result<()> {
        let topic = topic.clone();
        let clock = self.clock;
        let parts = topic.partitions();
        let task = tokio::spawn(async move {
            if let Some(failed) = settle {
                let mut result = failed.map_or(Ok(()), Err);
                if result.is_ok() {
                    // One blocking wait per partition, all started before any
                    // is awaited: a batch that spans N partitions waits for
                    // about one fsync, not N in a row.
                    let waits: Vec<_> = written
                        .iter()
                        .filter_map(|(p, _, w)| {
                            let part = parts.get(*p as usize)?.clone();
                            let w = *w;
                            Some(tokio::task::spawn_blocking(move || part.wait_durable(&w)))
                        })
                        .collect();
                    for wait in waits {
                        let r = wait
                            .await
                            .unwrap_or_else(|e| Err(storage_error("append task", e)));
                        if let Err(e) = r {
                            if result.is_ok() {
                                result = Err(e);
                            }
                        }
                    }
                }
                if !(result.is_ok() && topic.try_commit(id)) {
                    let t = topic.clone();
                    let settled = tokio::task::spawn_blocking(move || t.settle(id, result)).await;
                    if let Err(e) = settled {
                        tracing::error!(error = %e, "settling a publish failed");
                    }
                }
            }
            let r = outcome
                .await
                .unwrap_or_else(|_| Err(Error::Closed { what: "topic" }));
            if let Some(res) = reservation {
                let stored = r.is_ok().then(|| stored_at(&written)).into_iter().flatten();
                res.finish(stored, clock.now_ms());
            }
            r.map(|()| written)
        });
        let written = task.await.map_err(|e| storage_error("append task", e))??;
        fill(&written);
        Ok(())
    }

    /// Applies every partition's retention limits (of topics that have
    /// any) now; failures are logged and retried at the next check.
    fn apply_retention(&self) {
        let topics: Vec<Arc<Topic>> = self
            .topics
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .filter(|t| {
                let c = t.config();
                c.retention_bytes.is_some() || c.retention_ms.is_some()
            })
            .cloned()
            .collect();
        for t in topics {
            for (p, part) in t.partitions().iter().enumerate() {
                match part.apply_retention() {
                    // Deleted (or the broker closing) meanwhile: nothing to keep.
                    Ok(0) | Err(Error::Closed { .. }) => {}
                    Ok(n) => tracing::debug!(
                        topic = t.name(),
                        partition = p,
                        segments = n,
                        "retention deleted segments"
                    ),
                    Err(e) => {
                        tracing::warn!(topic = t.name(), partition = p, error = %e, "applying retention failed; will retry")
                    }
                }
            }
        }
    }

    /// Unloads groups that nothing holds (no subscription is bound, no
    /// delivery of theirs is unsettled, no caller is using one) and that
    /// have been unused for [`BrokerConfig::group_idle`]: each one's
    /// position is persisted and kept among the saved positions, from which
    /// the next subscriber loads it, and its read-ahead is freed. Held
    /// under the groups lock from check to persist, so no subscriber binds
    /// a group while it is being unloaded, nor loads it before its position
    /// is stored. Returns how many were unloaded.
    fn unload_idle(&self) -> Result<usize> {
        let now = self.clock.now();
        let idle = self.config.group_idle;
        let mut groups = self.groups.lock().unwrap_or_else(|p| p.into_inner());
        // Only the map holds it: nothing can reach it but through the map,
        // whose lock this holds.
        let unused = |gt: &Arc<GroupTopic>| {
            Arc::strong_count(gt) == 1 && now.saturating_duration_since(gt.last_used()) >= idle
        };
        if !groups.values().any(unused) {
            return Ok(0);
        }
        let keys: Vec<(String, String)> = groups
            .iter()
            .filter(|(_, gt)| unused(gt))
            .map(|(k, _)| k.clone())
            .collect();
        let mut rows = Vec::new();
        let mut unloaded = Vec::with_capacity(keys.len());
        for key in keys {
            let Some(gt) = groups.remove(&key) else {
                continue;
            };
            let cursors = gt.cursors(&self.clock);
            for (partition, c) in &cursors {
                rows.push((
                    CursorKey {
                        group: key.0.clone(),
                        topic: key.1.clone(),
                        partition: *partition,
                    },
                    c.clone(),
                ));
            }
            unloaded.push((key, gt, cursors));
        }
        if let Err(e) = self.meta.commit_cursors(&rows) {
            // Not stored: keep them loaded, to be persisted by a later commit.
            for (key, gt, _) in unloaded {
                gt.mark_dirty();
                groups.insert(key, gt);
            }
            return Err(e);
        }
        let n = unloaded.len();
        let mut saved = self.saved.lock().unwrap_or_else(|p| p.into_inner());
        for (key, _, cursors) in unloaded {
            saved.insert(key, cursors.into_iter().collect());
        }
        Ok(n)
    }

    fn commit(&self, all: bool) -> Result<()> {
        let groups: Vec<Arc<GroupTopic>> = self
            .groups
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect();
        let mut rows = Vec::new();
        let mut touched = Vec::new();
        for gt in groups {
            let cursors = if all {
                Some(gt.cursors(&self.clock))
            } else {
                gt.take_dirty_cursors(&self.clock)
            };
            if let Some(cs) = cursors {
                for (partition, c) in cs {
                    rows.push((
                        CursorKey {
                            group: gt.group.to_string(),
                            topic: gt.topic.name().to_owned(),
                            partition,
                        },
                        c,
                    ));
                }
                touched.push(gt);
            }
        }
        let r = self.meta.commit_cursors(&rows);
        if r.is_err() {
            for gt in touched {
                gt.mark_dirty();
            }
        }
        r
    }
}

/// One partition's append: the partition, the batch indexes of its
/// messages in order, and the base offset they were stored at.
/// `(batch index, partition, offset)` of every message a publish wrote.
fn stored_at(
    written: &[(u32, Vec<usize>, Written)],
) -> impl Iterator<Item = (usize, u32, u64)> + '_ {
    written.iter().flat_map(|(p, idx, w)| {
        let base = w.info.base_offset;
        idx.iter()
            .enumerate()
            .map(move |(k, &i)| (i, *p, base + k as u64))
    })
}

/// How often every topic's retention is applied besides at each segment
/// roll, so a topic that stops receiving writes still drops its sealed
/// segments once they pass their age.
const RETENTION_CHECK_EVERY: Duration = Duration::from_secs(1);

async fn commit_loop(inner: Weak<Inner>, every: Duration) {
    let mut retention_due = tokio::time::Instant::now() + RETENTION_CHECK_EVERY;
    loop {
        tokio::time::sleep(every).await;
        let Some(i) = inner.upgrade() else { return };
        if i.is_closed() {
            return;
        }
        let retention = tokio::time::Instant::now() >= retention_due;
        if retention {
            retention_due = tokio::time::Instant::now() + RETENTION_CHECK_EVERY;
        }
        let r = tokio::task::spawn_blocking(move || {
            if retention {
                i.apply_retention();
            }
            i.probe_space();
            let r = i.commit(false);
            if matches!(r, Err(Error::StorageFull { .. })) {
                i.note_storage(&r);
            }
            r?;
            let n = i.unload_idle()?;
            if n > 0 {
                tracing::debug!(groups = n, "unloaded idle consumer groups");
            }
            Ok::<(), Error>(())
        })
        .await;
        match r {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "committing group positions failed; will retry")
            }
            Err(e) => tracing::warn!(error = %e, "commit task failed"),
        }
    }
}

impl Broker {
    /// Publishes the messages `src` describes, with the same checks and
    /// receipts as [`Publisher::publish_batch`]. For callers that hold
    /// messages in another form than [`Message`] (a server's decoded
    /// request): each message is encoded from `src` into the log's batch
    /// directly.
    ///
    /// # Errors
    /// As [`Publisher::publish_batch`].
    ///
    /// # Cancel safety
    /// Cancelled before its append started (waiting for a publish permit,
    /// or for another publish of one of its ids), it stores nothing and
    /// its ids are free at once. Cancelled during the append, the append
    /// completes on blocking threads and the topic's dedup window records
    /// it, so a retry with the same ids returns the original receipts
    /// (marked duplicate) rather than storing the messages twice — which
    /// is what a client retrying after a disconnect or deadline needs.
    /// (Without a dedup window, such a retry may store a second copy.)
    pub async fn publish_from<S: PublishSource + Sync + ?Sized>(
        &self,
        topic: &str,
        src: &S,
    ) -> Result<Vec<Receipt>> {
        self.inner.publish(topic, src, true, false).await
    }
}

#[async_trait]
impl Publisher for Broker {
    /// Publishes one message; see [`Broker::publish_from`] for the checks.
    ///
    /// # Cancel safety
    /// Cancelled before its append started (waiting for a publish permit,
    /// or for another publish of one of its ids), it stores nothing and
    /// its ids are free at once. Cancelled during the append, the append
    /// completes on blocking threads and the topic's dedup window records
    /// it, so a retry with the same ids returns the original receipts
    /// (marked duplicate) rather than storing the messages twice — which
    /// is what a client retrying after a disconnect or deadline needs.
    /// (Without a dedup window, such a retry may store a second copy.)
    async fn publish(&self, topic: &str, message: Message) -> Result<Receipt> {
        let mut r = self
            .inner
            .publish(topic, std::slice::from_ref(&message), true, false)
            .await?;
        Ok(r.pop().expect("one receipt per message"))
    }

    /// Publishes a batch; see [`Broker::publish_from`] for the checks.
    ///
    /// # Cancel safety
    /// Cancelled before its append started (waiting for a publish permit,
    /// or for another publish of one of its ids), it stores nothing and
    /// its ids are free at once. Cancelled during the append, the append
    /// completes on blocking threads and the topic's dedup window records
    /// it, so a retry with the same ids returns the original receipts
    /// (marked duplicate) rather than storing the messages twice — which
    /// is what a client retrying after a disconnect or deadline needs.
    /// (Without a dedup window, such a retry may store a second copy.)
    async fn publish_batch(&self, topic: &str, messages: Vec<Message>) -> Result<Vec<Receipt>> {
        self.inner.publish(topic, &messages[..], true, false).await
    }
}

#[async_trait]
impl Subscriber for Broker {
    /// Subscribes (binding every matching topic; see the trait).
    ///
    /// # Cancel safety
    /// Cancel-safe: it has no await point, so once polled it runs to
    /// completion; dropped before that, it does nothing.
    async fn subscribe(&self, options: SubscribeOptions) -> Result<Subscription> {
        self.inner.check_open()?;
        let pattern = options.validate()?;
        let shared = Arc::new(SubShared {
            id: self.inner.lease_ids.fetch_add(1, Ordering::Relaxed),
            pattern: pattern.clone(),
            options,
            bindings: Mutex::new(Vec::new()),
            notify: Arc::new(Notify::new()),
            closed: AtomicBool::new(false),
            member: Arc::default(),
        });
        // Register first so a topic created meanwhile binds too.
        self.inner
            .subs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(Arc::downgrade(&shared));
        let result = (|| {
            if pattern.is_literal() {
                let t = self.inner.topic(pattern.as_str(), false)?;
                if !shared.has_binding(t.name()) {
                    self.inner.bind(&shared, t)?;
                }
            } else {
                let matching: Vec<Arc<Topic>> = self
                    .inner
                    .topics
                    .read()
                    .unwrap_or_else(|p| p.into_inner())
                    .values()
                    .filter(|t| pattern.matches(t.name()))
                    .cloned()
                    .collect();
                for t in matching {
                    if !shared.has_binding(t.name()) {
                        self.inner.bind(&shared, t)?;
                    }
                }
            }
            Ok(())
        })();
        if let Err(e) = result {
            self.inner.forget_subscription(&shared);
            return Err(e);
        }
        Ok(Subscription::new(BrokerStream::new(
            self.inner.clone(),
            shared,
        )))
    }
}

#[async_trait]
impl Backend for Broker {
    fn name(&self) -> &'static str {
        error::BACKEND
    }

    fn capabilities(&self) -> Capabilities {
        [
            Capability::Persistence,
            Capability::OrderingPerKey,
            Capability::ConsumerGroups,
            Capability::NackWithDelay,
            Capability::VisibilityTimeout,
            Capability::ExtendLease,
            Capability::DelayedPublish,
            Capability::Priorities,
            Capability::Ttl,
            Capability::Dedup,
            Capability::ReplayFromOffset,
            Capability::ReplayFromTime,
            Capability::Wildcards,
            Capability::DeadLetter,
            Capability::MaxDeliveries,
            Capability::PartitionAssignment,
            Capability::Retention,
            Capability::Redelivery,
        ]
        .into_iter()
        .collect()
    }

    fn limits(&self) -> Limits {
        let c = &self.inner.config;
        Limits::new(c.default_topic.max_message_bytes)
            .with_header_limits(c.max_headers, c.max_header_bytes)
    }

    /// Creates `topic` with the default config if it does not exist.
    ///
    /// # Cancel safety
    /// Cancel-safe: it has no await point.
    async fn ensure_topic(&self, topic: &str) -> Result<()> {
        self.inner.check_open()?;
        validate_topic(topic)?;
        self.inner.topic(topic, true).map(|_| ())
    }

    /// Closes the broker: subscriptions end, group positions are committed
    /// and the logs closed.
    ///
    /// # Cancel safety
    /// The broker is closed from the first poll; the commit and the closing
    /// of the logs run on a blocking thread and complete even if this
    /// future is dropped.
    async fn close(&self) -> Result<()> {
        if self.inner.closed.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        for s in self.inner.live_subscriptions() {
            s.notify.notify_one();
        }
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || {
            let committed = inner.commit(true);
            let topics: Vec<Arc<Topic>> = inner
                .topics
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .values()
                .cloned()
                .collect();
            let mut closed = Ok(());
            for t in topics {
                if let Err(e) = t.close() {
                    closed = Err(e);
                }
            }
            committed.and(closed)
        })
        .await
        .map_err(|e| storage_error("close task", e))?
    }
}

/// Checks every message of a batch against the size and header limits;
/// returns the batch's total size.
fn check_batch<S: PublishSource + Sync + ?Sized>(
    msgs: &S,
    max_message_bytes: usize,
    max_headers: usize,
    max_header_bytes: usize,
) -> Result<usize> {
    let mut total_size = 0;
    for i in 0..msgs.len() {
        let size = msgs.size(i);
        if size > max_message_bytes {
            return Err(Error::MessageTooLarge {
                size,
                max: max_message_bytes,
            });
        }
        let count = msgs.header_count(i);
        if count > max_headers {
            return Err(Error::TooManyHeaders {
                count,
                max: max_headers,
            });
        }
        let header_bytes = size
            .saturating_sub(msgs.payload(i).len())
            .saturating_sub(msgs.key(i).map_or(0, <[u8]>::len));
        if header_bytes > max_header_bytes {
            return Err(Error::HeadersTooLarge {
                size: header_bytes,
                max: max_header_bytes,
            });
        }
        total_size += size;
    }
    Ok(total_size)
}
