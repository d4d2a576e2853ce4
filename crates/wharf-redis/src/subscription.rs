//! Subscriptions: one reader task per subscription, reading its streams on
//! a connection of its own ([`ReadConn`]: its blocking `XREADGROUP`/`XREAD`
//! would stall a shared one, and it keeps each reply whole for the decoder)
//! and sending everything else over the backend's shared connection,
//! reading no more entries than the subscription has free in-flight slots
//! for.
//!
//! Each round a group reader first claims due nacked entries (retry sorted
//! set), then entries whose lease expired (`XPENDING IDLE` + `XCLAIM`), then
//! reads new ones (`XREADGROUP … >`, blocking up to 100 ms). A wildcard
//! subscription reads every stream whose topic matches, re-reading the topic
//! registry every 200 ms to pick up new topics. Deliveries go through a
//! channel, so [`DeliveryStream::next`] is a channel receive: cancel safe.
//!
//! A group's new entries are decoded, registered in flight and handed out
//! by a second task, the decoder, so the reader's next `XREADGROUP` is on
//! the wire (and the server at work on it) while the last reply is
//! decoded: a drain is bound by the slower of the
//! two, not their sum. The reader reserves in-flight slots for what it
//! reads, returns at once those the reply did not fill, and the decoder the
//! ones of entries it does not hand out (expired, dead-lettered). Every
//! read goes through the decoder in order, so deliveries keep read order.

use std::collections::{HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::Value;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use wharf_adapter::{ChannelStream, DeliverySender, InFlight};
use wharf_core::{
    Acker, Capability, Delivery, DeliveryInfo, Error, MessageId, Result, StartPosition,
    SubscribeOptions, Subscription, Timestamp, TopicPattern,
};

use crate::acker::{Mode, Pending, RedisAcker};
use crate::backend::{Shared, NAME};
use crate::error::map;
use crate::resp::{self, ReadConn, Reply};
use crate::wire::{self, Entry};

/// Lease (visibility timeout) when none is set.
const DEFAULT_LEASE: Duration = Duration::from_secs(30);
/// Longest a read blocks, which bounds how late a due retry is noticed.
const BLOCK_MS: u64 = 100;
/// Largest number of entries read at once.
const MAX_READ: usize = 1024;
/// How often a wildcard subscription looks for new matching topics.
const RESCAN_EVERY: Duration = Duration::from_millis(200);

pub(crate) async fn open(shared: Arc<Shared>, opts: SubscribeOptions) -> Result<Subscription> {
    shared.check_open()?;
    let pattern = opts.validate()?;
    let lease = opts.visibility_timeout_value().unwrap_or(DEFAULT_LEASE);
    if lease < Duration::from_millis(1) {
        return Err(Error::InvalidArgument {
            name: "visibility_timeout",
            reason: "must be at least 1 ms".into(),
        });
    }
    let start = match opts.start_position() {
        StartPosition::Earliest => "0-0".to_owned(),
        StartPosition::Latest => "$".to_owned(),
        StartPosition::Offset(o) => wire::id_before(o),
        _ => {
            return Err(Error::Unsupported {
                backend: NAME,
                capability: Capability::ReplayFromTime,
            })
        }
    };
    let (requeue_tx, requeue_rx) = mpsc::unbounded_channel();
    let mode = match opts.group_name() {
        Some(group) => Mode::Group {
            group: group.to_owned(),
            consumer: format!("c-{}", MessageId::new()),
        },
        None => Mode::Private {
            requeue: requeue_tx,
        },
    };
    let read_name = format!(
        "{}:read:{}",
        shared.prefix,
        match &mode {
            Mode::Group { consumer, .. } => consumer.as_str(),
            Mode::Private { .. } => "private",
        }
    );
    let reads = ReadConn::connect(shared.client.get_connection_info(), &read_name).await?;
    let acker = Arc::new_cyclic(|me| RedisAcker {
        shared: shared.clone(),
        mode,
        dead_letter_topic: opts.dead_letter_topic_name().map(str::to_owned),
        max_deliveries: opts.max_deliveries_limit(),
        lease,
        in_flight: InFlight::new(opts.max_in_flight_limit()),
        runtime: tokio::runtime::Handle::current(),
        release_queue: Mutex::new(VecDeque::new()),
        release_lock: tokio::sync::Mutex::new(()),
        me: me.clone(),
    });
    let (stream, tx, stop) = ChannelStream::new(shared.closed.subscribe());
    let (jobs, jobs_rx) = mpsc::unbounded_channel();
    let decoder = Decoder {
        shared: shared.clone(),
        acker: acker.clone(),
        tx: tx.clone(),
    };
    let mut reader = Reader {
        backend_closed: shared.closed.subscribe(),
        shared: shared.clone(),
        acker,
        conn: shared.conn.clone(),
        reads: Some(reads),
        read_name,
        pattern: (!pattern.is_literal()).then_some(pattern.clone()),
        streams: Vec::new(),
        requeue: requeue_rx,
        parked: Vec::new(),
        tx,
        jobs,
        sent: 0,
        stop,
        next_reclaim: Instant::now(),
        reclaim_every: (lease / 4).clamp(Duration::from_millis(50), Duration::from_secs(1)),
        next_rescan: Instant::now() + RESCAN_EVERY,
    };
    // Streams that exist now start at `start`; ones found later at their beginning.
    let topics = if pattern.is_literal() {
        vec![pattern.as_str().to_owned()]
    } else {
        reader.matching_topics().await?
    };
    for t in topics {
        reader.add_stream(&t, &start).await?;
    }
    tokio::spawn(decoder.run(jobs_rx));
    tokio::spawn(reader.run());
    Ok(Subscription::new(stream))
}

/// The id of the newest entry of `key`, or `0-0`.
async fn last_id(conn: &mut MultiplexedConnection, key: &str) -> Result<String> {
    let v: Value = redis::cmd("XREVRANGE")
        .arg(key)
        .arg("+")
        .arg("-")
        .arg("COUNT")
        .arg(1)
        .query_async(conn)
        .await
        .map_err(|e| map("XREVRANGE", e))?;
    Ok(match v {
        Value::Array(es) => es
            .into_iter()
            .next()
            .map(wire::entry)
            .transpose()?
            .map_or_else(|| "0-0".to_owned(), |e| e.id),
        _ => "0-0".to_owned(),
    })
}

/// One stream a subscription reads.
struct Stream {
    topic: Arc<str>,
    key: String,
    /// Last id read (private subscriptions).
    cursor: String,
}

/// The task reading one subscription's entries.
struct Reader {
    shared: Arc<Shared>,
    acker: Arc<RedisAcker>,
    /// For everything but the stream reads (shared with the backend).
    conn: MultiplexedConnection,
    /// For the stream reads, which block; `None` after a failure, until
    /// the next read connects again.
    reads: Option<ReadConn>,
    /// The read connection's name (`CLIENT SETNAME`).
    read_name: String,
    /// The wildcard pattern, if the subscription has one.
    pattern: Option<TopicPattern>,
    streams: Vec<Stream>,
    requeue: mpsc::UnboundedReceiver<(Pending, Duration)>,
    /// Nacked deliveries of a private subscription, waiting for their time.
    parked: Vec<(Instant, Pending)>,
    /// Only to notice a dropped subscription: the decoder hands out.
    tx: DeliverySender,
    /// What was read, in read order, for the decoder, with the number of
    /// entries (of reserved slots) in it.
    jobs: mpsc::UnboundedSender<(usize, Job)>,
    /// Entries passed to the decoder in the current round.
    sent: usize,
    stop: watch::Receiver<bool>,
    backend_closed: watch::Receiver<bool>,
    next_reclaim: Instant,
    reclaim_every: Duration,
    next_rescan: Instant,
}

impl Reader {
    fn stopped(&self) -> bool {
        *self.stop.borrow() || *self.backend_closed.borrow() || self.tx.is_closed()
    }

    async fn run(mut self) {
        loop {
            let acker = self.acker.clone();
            let n = tokio::select! {
                biased;
                _ = self.stop.wait_for(|s| *s) => break,
                _ = self.backend_closed.wait_for(|s| *s) => break,
                n = acker.in_flight.reserve(MAX_READ) => n,
            };
            let Some(n) = n else { break };
            self.sent = 0;
            if let Err(e) = self.round(n).await {
                tracing::warn!(error = %e, "redis subscription read failed");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            // What was read before a failure is with the decoder and
            // holds its slots; only the rest comes back.
            acker.in_flight.free(n - self.sent.min(n));
            if self.stopped() {
                break;
            }
        }
        if let Mode::Group { group, consumer } = &self.acker.mode {
            for s in &self.streams {
                forget_consumer(&self.shared, &s.key, group, consumer).await;
            }
        }
    }

    /// Topics in the registry that match the pattern.
    async fn matching_topics(&mut self) -> Result<Vec<String>> {
        let Some(pattern) = &self.pattern else {
            return Ok(Vec::new());
        };
        let all: Vec<String> = redis::cmd("SMEMBERS")
            .arg(self.shared.topics_key())
            .query_async(&mut self.conn)
            .await
            .map_err(|e| map("SMEMBERS", e))?;
        Ok(all.into_iter().filter(|t| pattern.matches(t)).collect())
    }

    /// Starts reading `topic` from `start` (creating the group there).
    async fn add_stream(&mut self, topic: &str, start: &str) -> Result<()> {
        let key = self.shared.stream_key(topic);
        let cursor = match &self.acker.mode {
            Mode::Group { group, .. } => {
                let created: redis::RedisResult<Value> = redis::cmd("XGROUP")
                    .arg("CREATE")
                    .arg(&key)
                    .arg(group)
                    .arg(start)
                    .arg("MKSTREAM")
                    .query_async(&mut self.conn)
                    .await;
                if let Err(e) = created {
                    if e.code() != Some("BUSYGROUP") {
                        return Err(map("XGROUP CREATE", e));
                    }
                }
                String::new()
            }
            Mode::Private { .. } if start == "$" => last_id(&mut self.conn, &key).await?,
            Mode::Private { .. } => start.to_owned(),
        };
        self.streams.push(Stream {
            topic: Arc::from(topic),
            key,
            cursor,
        });
        Ok(())
    }

    /// Picks up topics created since the last look (wildcard subscriptions).
    async fn rescan(&mut self) -> Result<()> {
        if self.pattern.is_none() || Instant::now() < self.next_rescan {
            return Ok(());
        }
        self.next_rescan = Instant::now() + RESCAN_EVERY;
        for t in self.matching_topics().await? {
            if !self.streams.iter().any(|s| *s.topic == *t) {
                self.add_stream(&t, "0-0").await?;
            }
        }
        Ok(())
    }

    /// Sends a stream read on the read connection (connecting it first if
    /// the last one failed) and returns its whole reply.
    async fn read(&mut self, cmd: &redis::Cmd, name: &'static str) -> Result<Reply> {
        let conn = match &mut self.reads {
            Some(conn) => conn,
            None => self.reads.insert(
                ReadConn::connect(self.shared.client.get_connection_info(), &self.read_name)
                    .await?,
            ),
        };
        let reply = conn.query(cmd, name).await;
        if reply.is_err() {
            self.reads = None;
        }
        reply
    }

    /// Passes `job` to the decoder; returns the entries in it (each holds
    /// one of the slots reserved for the round until the decoder hands it
    /// out or frees it).
    fn send(&mut self, job: Job) -> usize {
        let n = job.len();
        if self.jobs.send((n, job)).is_err() {
            // The decoder is gone only once the subscription is: nothing
            // read is handed out, and the reserved slots come back.
            self.acker.in_flight.free(n);
        }
        self.sent += n;
        n
    }

    /// One round of reads for up to `n` deliveries, each entry read passed
    /// to the decoder (and counted in `sent`).
    async fn round(&mut self, n: usize) -> Result<()> {
        self.rescan().await?;
        if self.streams.is_empty() {
            tokio::time::sleep(Duration::from_millis(BLOCK_MS)).await;
            return Ok(());
        }
        let mut used = 0;
        match &self.acker.mode {
            Mode::Group { group, consumer } => {
                let (group, consumer) = (group.clone(), consumer.clone());
                let reclaim = Instant::now() >= self.next_reclaim;
                if reclaim {
                    self.next_reclaim = Instant::now() + self.reclaim_every;
                }
                let lease_ms = u64::try_from(self.acker.lease.as_millis()).unwrap_or(u64::MAX);
                for i in 0..self.streams.len() {
                    if used >= n {
                        break;
                    }
                    let (topic, key) = (self.streams[i].topic.clone(), self.streams[i].key.clone());
                    let retry = self.shared.retry_key(&topic, &group);
                    let mut cmd = redis::cmd("EVALSHA");
                    cmd.arg(&self.shared.shas.claim_due)
                        .arg(2)
                        .arg(&key)
                        .arg(&retry)
                        .arg(&group)
                        .arg(&consumer)
                        .arg(Timestamp::now().as_millis())
                        .arg(n - used);
                    let due: Value = self.shared.eval(&mut self.conn, &cmd, "claim due").await?;
                    used += self.send(Job::Entries {
                        topic: topic.clone(),
                        key: key.clone(),
                        entries: wire::claimed_reply(due)?,
                        lapsed: false,
                        read_at: Instant::now(),
                    });
                    if used < n && reclaim {
                        let mut cmd = redis::cmd("EVALSHA");
                        cmd.arg(&self.shared.shas.claim_expired)
                            .arg(2)
                            .arg(&key)
                            .arg(&retry)
                            .arg(&group)
                            .arg(&consumer)
                            .arg(lease_ms)
                            .arg(n - used);
                        let expired: Value = self
                            .shared
                            .eval(&mut self.conn, &cmd, "claim expired")
                            .await?;
                        used += self.send(Job::Entries {
                            topic: topic.clone(),
                            key: key.clone(),
                            entries: wire::claimed_reply(expired)?,
                            lapsed: true,
                            read_at: Instant::now(),
                        });
                    }
                }
                if used < n {
                    let mut cmd = redis::cmd("XREADGROUP");
                    cmd.arg("GROUP")
                        .arg(&group)
                        .arg(&consumer)
                        .arg("COUNT")
                        .arg(n - used);
                    if used == 0 {
                        cmd.arg("BLOCK").arg(BLOCK_MS);
                    }
                    cmd.arg("STREAMS");
                    for s in &self.streams {
                        cmd.arg(&s.key);
                    }
                    for _ in &self.streams {
                        cmd.arg(">");
                    }
                    let reply = self.read(&cmd, "XREADGROUP").await?;
                    let streams = self
                        .streams
                        .iter()
                        .map(|s| (s.key.clone(), s.topic.clone()))
                        .collect();
                    self.send(Job::Read {
                        reply,
                        streams,
                        read_at: Instant::now(),
                    });
                }
            }
            Mode::Private { .. } => {
                while let Ok((p, delay)) = self.requeue.try_recv() {
                    self.parked.push((Instant::now() + delay, p));
                }
                let now = Instant::now();
                let mut i = 0;
                while i < self.parked.len() && used < n {
                    if self.parked[i].0 <= now {
                        let (_, p) = self.parked.swap_remove(i);
                        let topic = p.topic.clone();
                        let e = Entry {
                            id: p.entry_id,
                            message: p.message,
                        };
                        let key = self.shared.stream_key(&topic);
                        used += self.send(Job::Entries {
                            topic,
                            key,
                            entries: vec![(e, p.attempt + 1)],
                            lapsed: false,
                            read_at: Instant::now(),
                        });
                    } else {
                        i += 1;
                    }
                }
                if used < n {
                    let mut cmd = redis::cmd("XREAD");
                    cmd.arg("COUNT").arg(n - used);
                    if used == 0 {
                        cmd.arg("BLOCK").arg(BLOCK_MS);
                    }
                    cmd.arg("STREAMS");
                    for s in &self.streams {
                        cmd.arg(&s.key);
                    }
                    for s in &self.streams {
                        cmd.arg(&s.cursor);
                    }
                    let reply = self.read(&cmd, "XREAD").await?;
                    for (key, entries) in resp::read_reply(&reply, "XREAD")? {
                        let Some(s) = self.streams.iter_mut().find(|s| s.key == key) else {
                            continue;
                        };
                        let Some(last) = entries.last() else {
                            continue;
                        };
                        s.cursor.clone_from(&last.id);
                        let topic = s.topic.clone();
                        let entries = entries.into_iter().map(|e| (e, 1)).collect();
                        self.send(Job::Entries {
                            topic,
                            key,
                            entries,
                            lapsed: false,
                            read_at: Instant::now(),
                        });
                    }
                }
            }
        }
        Ok(())
    }
}

/// What the reader read, for the decoder. `read_at`: when the reply came,
/// which is when the server started the entries' leases; the decoder
/// gives each delivery what is left of its lease by then, so a delivery
/// that waited in the decoder never outlives the server's lease.
enum Job {
    /// Decoded entries of `topic` (stream `key`), each with its attempt;
    /// `lapsed`: claimed after their leases expired.
    Entries {
        topic: Arc<str>,
        key: String,
        entries: Vec<(Entry, u32)>,
        lapsed: bool,
        read_at: Instant,
    },
    /// An `XREADGROUP` reply (first attempts), not yet decoded, with the
    /// topic of each stream key read.
    Read {
        reply: Reply,
        streams: Vec<(String, Arc<str>)>,
        read_at: Instant,
    },
}

impl Job {
    /// The entries in the job, each holding one reserved slot.
    fn len(&self) -> usize {
        match self {
            Job::Entries { entries, .. } => entries.len(),
            Job::Read { reply, .. } => reply.entries(),
        }
    }
}

/// The task that decodes what the reader read, registers it in flight and
/// hands it out, in read order.
struct Decoder {
    shared: Arc<Shared>,
    acker: Arc<RedisAcker>,
    tx: DeliverySender,
}

impl Decoder {
    async fn run(self, mut jobs: mpsc::UnboundedReceiver<(usize, Job)>) {
        while let Some((held, job)) = jobs.recv().await {
            let used = match job {
                Job::Entries {
                    topic,
                    key,
                    entries,
                    lapsed: true,
                    read_at,
                } => self.expired_leases(&topic, &key, entries, read_at).await,
                Job::Entries {
                    topic,
                    key,
                    entries,
                    read_at,
                    ..
                } => self.deliver_all(&topic, &key, entries, read_at).await,
                Job::Read {
                    reply,
                    streams,
                    read_at,
                } => self.read(reply, &streams, read_at).await,
            };
            // Slots of entries not handed out (expired, dead-lettered,
            // undecodable) come back.
            self.acker.in_flight.free(held - used.min(held));
        }
    }

    /// Decodes and hands out an `XREADGROUP` reply; returns how many
    /// deliveries were handed out.
    async fn read(&self, reply: Reply, streams: &[(String, Arc<str>)], read_at: Instant) -> usize {
        let read = match resp::read_reply(&reply, "XREADGROUP") {
            Ok(read) => read,
            Err(e) => {
                // Left pending: the entries come back once their leases expire.
                tracing::warn!(error = %e, "redis subscription read an undecodable reply");
                return 0;
            }
        };
        let mut used = 0;
        for (key, entries) in read {
            let Some((_, topic)) = streams.iter().find(|(k, _)| *k == key) else {
                continue;
            };
            let entries = entries.into_iter().map(|e| (e, 1));
            used += self.deliver_all(topic, &key, entries, read_at).await;
        }
        used
    }

    /// Entries claimed after their leases expired: delivered again, or
    /// dead-lettered when the lapsed attempt was the last one allowed.
    async fn expired_leases(
        &self,
        topic: &Arc<str>,
        key: &str,
        claimed: Vec<(Entry, u32)>,
        read_at: Instant,
    ) -> usize {
        let Some(max) = self.acker.max_deliveries else {
            return self.deliver_all(topic, key, claimed, read_at).await;
        };
        let (dead, again): (Vec<_>, Vec<_>) =
            claimed.into_iter().partition(|(_, count)| *count > max);
        for (e, count) in dead {
            let p = Pending {
                topic: topic.clone(),
                entry_id: e.id,
                message: e.message,
                attempt: count - 1,
            };
            let reason = format!("max deliveries ({max}) exceeded: lease expired");
            if let Err(err) = self.acker.dead_letter(p, &reason).await {
                tracing::warn!(error = %err, "dead-lettering an expired redis delivery failed");
            }
        }
        self.deliver_all(topic, key, again, read_at).await
    }

    /// Hands out entries of `topic` (stream `key`), each with its attempt,
    /// in order; returns how many were handed out. An expired entry is
    /// acked, not handed out. The batch is registered in flight under one
    /// lock and one clock read.
    async fn deliver_all(
        &self,
        topic: &Arc<str>,
        key: &str,
        entries: impl IntoIterator<Item = (Entry, u32)>,
        read_at: Instant,
    ) -> usize {
        let entries = entries.into_iter();
        let group = match &self.acker.mode {
            Mode::Group { group, .. } => Some(group),
            Mode::Private { .. } => None,
        };
        let mut now = None;
        let mut expired = Vec::new();
        let mut redelivered = HashSet::new();
        let mut out = Vec::with_capacity(entries.size_hint().0);
        let mut records = Vec::with_capacity(entries.size_hint().0);
        for (e, attempt) in entries {
            if let Some(at) = e.message.expires_at() {
                if at <= *now.get_or_insert_with(Timestamp::now) {
                    expired.push(e.id);
                    continue;
                }
            }
            if group.is_some() && attempt > 1 {
                redelivered.insert(e.id.clone());
            }
            out.push((
                e.message.clone(),
                DeliveryInfo {
                    topic: topic.clone(),
                    partition: 0,
                    offset: wire::offset(&e.id),
                    attempt,
                },
            ));
            records.push(Pending {
                topic: topic.clone(),
                entry_id: e.id,
                message: e.message,
                attempt,
            });
        }
        if let (Some(group), false) = (group, expired.is_empty()) {
            let _: redis::RedisResult<i64> = redis::cmd("XACK")
                .arg(key)
                .arg(group)
                .arg(&expired)
                .query_async(&mut self.shared.conn.clone())
                .await;
        }
        if out.is_empty() {
            return 0;
        }
        // A group's entries are leased on the server: one claimed again
        // supersedes an earlier delivery of it still held here, whose ack
        // would otherwise settle this one.
        if !redelivered.is_empty() {
            self.acker
                .in_flight
                .supersede(|p| p.topic == *topic && redelivered.contains(&p.entry_id));
        }
        let lease = group.map(|_| self.acker.lease.saturating_sub(read_at.elapsed()));
        let first = self
            .acker
            .in_flight
            .register_all_leased(records.into_iter(), lease);
        let acker: Arc<dyn Acker> = self.acker.clone();
        let n = out.len();
        for ((message, info), token) in out.into_iter().zip(first..) {
            // On a closed channel the delivery comes back in the error and
            // is dropped, which releases it.
            let _ = self
                .tx
                .send(Ok(Delivery::new(message, info, acker.clone(), token)));
        }
        n
    }
}

/// Removes a group consumer that holds nothing (best effort), so groups do
/// not collect one consumer per subscription ever made.
async fn forget_consumer(shared: &Shared, key: &str, group: &str, consumer: &str) {
    let mut conn = shared.conn.clone();
    let pending: redis::RedisResult<Value> = redis::cmd("XPENDING")
        .arg(key)
        .arg(group)
        .arg("-")
        .arg("+")
        .arg(1)
        .arg(consumer)
        .query_async(&mut conn)
        .await;
    if matches!(pending, Ok(Value::Array(ref v)) if v.is_empty()) {
        let _: redis::RedisResult<i64> = redis::cmd("XGROUP")
            .arg("DELCONSUMER")
            .arg(key)
            .arg(group)
            .arg(consumer)
            .query_async(&mut conn)
            .await;
    }
}
