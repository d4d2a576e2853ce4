//! A consumer group's state on one topic: the queue-semantics engine.
//!
//! Per partition a group keeps a *floor* (every offset below it is settled),
//! the out-of-order settled offsets above it, and a bounded read-ahead of
//! pending messages, each `Ready`, `Delayed` until an instant, `Leased` to a
//! consumer (optionally until a deadline), or `Dead` (being copied to the
//! dead-letter topic). Consumers take ready messages (highest priority, then
//! lowest offset); acks settle them and advance the floor past contiguous
//! settled offsets; nacks, releases and expired leases make them ready (or
//! delayed) again, or dead once `max_deliveries` attempts failed.
//!
//! A pending message holds its decoded `Message` only until it is first
//! leased: the message then *moves* into the delivery (no clone, so no
//! reference-count traffic on the shared read buffer), and the rare paths
//! that need it again — redelivery and dead-lettering — read it back from
//! the log.
//!
//! In stream mode each partition has one owner among the members, assigned
//! stickily and handed over only once the previous owner's leases there
//! have ended (see [`Owner`]).
//!
//! Everything here is synchronous and runs under one mutex per group and
//! topic; time is passed in, so tests drive it directly.

use std::cmp::Reverse;
use std::collections::{BTreeSet, BinaryHeap, HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;
use wharf_core::{GroupMode, Message, Settlement, StartPosition};

use crate::clock::Clock;
use crate::codec::{from_record_ref, NotAMessage};
use crate::error::{log_error, storage_error, Error};
use crate::meta::Cursor;
use crate::topic::Topic;

/// Bytes read from the log per read-ahead step.
const READ_CHUNK: usize = 256 * 1024;

#[derive(Debug)]
enum PState {
    Ready,
    Delayed(Instant),
    Leased {
        lease: u64,
        deadline: Option<Instant>,
        /// The consumer (subscription) holding it.
        member: u64,
    },
    Dead,
}

#[derive(Debug)]
struct Pending {
    /// The decoded message until it is first leased; `None` afterwards (see
    /// the module docs).
    msg: Option<Message>,
    priority: u8,
    /// Deliveries made so far.
    attempts: u32,
    state: PState,
    first_failure_ms: Option<u64>,
    last_failure_ms: Option<u64>,
}

#[derive(Debug, Default)]
struct PartState {
    floor: u64,
    next: u64,
    settled: BTreeSet<u64>,
    pending: Window,
    ready: ReadyQueue,
    delayed: BTreeSet<(Instant, u64)>,
    leases: BTreeSet<(Instant, u64)>,
    /// Delays and attempt counts restored from the metadata:
    /// offset → (not-before ms, attempts).
    restored: U64Map<(u64, u32)>,
    /// Whether this partition's first delivery since the broker opened was
    /// made (see [`Taken::persist_first`]).
    first_taken: bool,
}

/// Ready offsets, highest priority then lowest offset first. Entries are
/// only ever added for `Ready` messages and checked again when popped.
///
/// Read-ahead adds offsets in increasing order and most messages have
/// priority 0 (stream mode ignores priorities), so those go to a FIFO that
/// pops in O(1); everything else (higher priorities, redeliveries below the
/// FIFO's tail) goes to a heap. `pop` takes the better of the two heads, so
/// the order is exactly the heap's alone.
#[derive(Debug, Default)]
struct ReadyQueue {
    fifo: VecDeque<u64>,
    heap: BinaryHeap<(u8, Reverse<u64>)>,
}

impl ReadyQueue {
    fn is_empty(&self) -> bool {
        self.fifo.is_empty() && self.heap.is_empty()
    }

    fn push(&mut self, priority: u8, offset: u64) {
        if priority == 0 && self.fifo.back().is_none_or(|&b| b < offset) {
            self.fifo.push_back(offset);
        } else {
            self.heap.push((priority, Reverse(offset)));
        }
    }

    fn pop(&mut self) -> Option<u64> {
        match (self.heap.peek(), self.fifo.front()) {
            (Some(&(p, Reverse(h))), Some(&f)) if p == 0 && f <= h => self.fifo.pop_front(),
            (Some(_), _) => self.heap.pop().map(|(_, Reverse(o))| o),
            (None, _) => self.fifo.pop_front(),
        }
    }

    fn retain(&mut self, keep: impl Fn(u64) -> bool) {
        self.fifo.retain(|&o| keep(o));
        self.heap.retain(|&(_, Reverse(o))| keep(o));
    }
}

/// The pending messages of a partition by offset: logical slot `i` holds
/// offset `base + i`, so read-ahead appends at the back and settling in
/// order empties the front — no hashing, and an entry is written once and
/// dropped in place (a `VecDeque` would move it out on every pop).
///
/// Offsets skipped by read-ahead (already settled, expired) leave empty
/// slots. One message held for long while later ones settle would stretch
/// the ring without bound, so entries further than [`Window::MAX_SPAN`]
/// behind the newest move to a hash map (`stragglers`), which only such
/// long-held messages ever use.
#[derive(Debug, Default)]
struct Window {
    /// Offset of logical slot 0.
    base: u64,
    /// Physical index of logical slot 0.
    head: usize,
    /// Logical slots in use (from `base`).
    span: usize,
    /// The ring; its length is zero or a power of two.
    ring: Vec<Option<Pending>>,
    stragglers: U64Map<Pending>,
    len: usize,
    /// Bytes of the decoded messages held ([`Message::size`] of each entry
    /// that still has its message): what the read-ahead byte budget limits.
    bytes: usize,
}

/// Bytes a pending entry holds for the read-ahead budget.
#[inline]
fn held(p: &Pending) -> usize {
    p.msg.as_ref().map_or(0, Message::size)
}

impl Window {
    /// Most slots the ring spans.
    const MAX_SPAN: usize = 16 * 1024;

    fn len(&self) -> usize {
        self.len
    }

    fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Bytes of the messages held (see [`Window::bytes`]).
    fn bytes(&self) -> usize {
        self.bytes
    }

    /// The physical index of `offset`, if it lies within the ring's span.
    #[inline]
    fn index(&self, offset: u64) -> Option<usize> {
        let i = usize::try_from(offset.checked_sub(self.base)?).ok()?;
        (i < self.span).then(|| (self.head + i) & (self.ring.len() - 1))
    }

    #[inline]
    fn get(&self, offset: u64) -> Option<&Pending> {
        match self.index(offset) {
            Some(i) => self.ring[i].as_ref(),
            None => self.stragglers.get(&offset),
        }
    }

    #[inline]
    fn get_mut(&mut self, offset: u64) -> Option<&mut Pending> {
        match self.index(offset) {
            Some(i) => self.ring[i].as_mut(),
            None => self.stragglers.get_mut(&offset),
        }
    }

    fn contains_key(&self, offset: u64) -> bool {
        self.get(offset).is_some()
    }

    /// Adds `p` at `offset`, which is not pending (read-ahead adds offsets
    /// in increasing order, so this is a push at the back).
    #[inline(always)]
    fn insert(&mut self, offset: u64, p: Pending) {
        self.bytes += held(&p);
        if self.span == 0 {
            self.base = offset;
            self.head = 0;
        }
        if offset < self.base {
            // Not reached by read-ahead; kept correct all the same.
            match self.stragglers.insert(offset, p) {
                None => self.len += 1,
                Some(old) => self.bytes -= held(&old),
            }
            return;
        }
        let mut i = usize::try_from(offset - self.base).expect("window span fits usize");
        if i >= Self::MAX_SPAN {
            // A jump far past the ring (messages in between expired, or a
            // restored settled set skipped them): what the ring holds
            // becomes stragglers and the ring restarts at `offset`, instead
            // of growing to span the gap.
            let mask = self.ring.len().wrapping_sub(1);
            for k in 0..self.span {
                if let Some(old) = self.ring[(self.head + k) & mask].take() {
                    self.stragglers.insert(self.base + k as u64, old);
                }
            }
            self.span = 0;
            self.head = 0;
            self.base = offset;
            i = 0;
        }
        if i >= self.span {
            self.grow(i + 1);
            self.span = i + 1;
        }
        let at = (self.head + i) & (self.ring.len() - 1);
        let slot = &mut self.ring[at];
        match slot {
            None => self.len += 1,
            Some(old) => self.bytes -= held(old),
        }
        *slot = Some(p);
        while self.span > Self::MAX_SPAN {
            if let Some(old) = self.ring[self.head].take() {
                self.stragglers.insert(self.base, old);
            }
            self.advance();
        }
        self.trim();
    }

    /// Makes the ring hold at least `span` slots.
    fn grow(&mut self, span: usize) {
        if span <= self.ring.len() {
            return;
        }
        let cap = span.next_power_of_two().max(64);
        let mut ring: Vec<Option<Pending>> = Vec::with_capacity(cap);
        let mask = self.ring.len().wrapping_sub(1);
        for k in 0..self.span {
            ring.push(self.ring[(self.head + k) & mask].take());
        }
        ring.resize_with(cap, || None);
        self.ring = ring;
        self.head = 0;
    }

    fn advance(&mut self) {
        self.head = (self.head + 1) & (self.ring.len() - 1);
        self.base += 1;
        self.span -= 1;
    }

    /// Removes the entry at `offset`; whether there was one.
    #[inline]
    fn remove(&mut self, offset: u64) -> bool {
        match self.index(offset) {
            Some(i) => {
                let Some(old) = self.ring[i].take() else {
                    return false;
                };
                self.bytes -= held(&old);
                self.trim();
            }
            None => {
                let Some(old) = self.stragglers.remove(&offset) else {
                    return false;
                };
                self.bytes -= held(&old);
            }
        }
        self.len -= 1;
        true
    }

    /// Removes the entry at `offset` if `check` accepts it (one lookup);
    /// returns what `check` returned.
    #[inline]
    fn remove_if<T>(
        &mut self,
        offset: u64,
        check: impl FnOnce(&Pending) -> Option<T>,
    ) -> Option<T> {
        match self.index(offset) {
            Some(i) => {
                let out = check(self.ring[i].as_ref()?)?;
                if let Some(old) = self.ring[i].take() {
                    self.bytes -= held(&old);
                }
                self.len -= 1;
                self.trim();
                Some(out)
            }
            None => {
                let out = check(self.stragglers.get(&offset)?)?;
                if let Some(old) = self.stragglers.remove(&offset) {
                    self.bytes -= held(&old);
                }
                self.len -= 1;
                Some(out)
            }
        }
    }

    /// Drops empty slots at the front.
    fn trim(&mut self) {
        while self.span > 0 && self.ring[self.head].is_none() {
            self.advance();
        }
    }

    fn retain(&mut self, mut keep: impl FnMut(u64, &Pending) -> bool) {
        for k in 0..self.span {
            let at = (self.head + k) & (self.ring.len() - 1);
            let offset = self.base + k as u64;
            if self.ring[at].as_ref().is_some_and(|p| !keep(offset, p)) {
                if let Some(old) = self.ring[at].take() {
                    self.bytes -= held(&old);
                }
                self.len -= 1;
            }
        }
        let before = self.stragglers.len();
        let mut dropped = 0;
        self.stragglers.retain(|&o, p| {
            let k = keep(o, p);
            if !k {
                dropped += held(p);
            }
            k
        });
        self.bytes -= dropped;
        self.len -= before - self.stragglers.len();
        self.trim();
    }

    fn iter(&self) -> impl Iterator<Item = (u64, &Pending)> {
        (0..self.span)
            .filter_map(move |k| {
                let at = (self.head + k) & (self.ring.len() - 1);
                self.ring[at].as_ref().map(|p| (self.base + k as u64, p))
            })
            .chain(self.stragglers.iter().map(|(&o, p)| (o, p)))
    }
}

impl PartState {
    fn at(offset: u64) -> Self {
        PartState {
            floor: offset,
            next: offset,
            ..Default::default()
        }
    }

    fn from_cursor(c: &Cursor) -> Self {
        PartState {
            floor: c.floor,
            next: c.floor,
            settled: c
                .settled
                .iter()
                .copied()
                .filter(|&o| o >= c.floor)
                .collect(),
            restored: c
                .delayed
                .iter()
                .map(|&(o, ms, a)| (o, (ms, a)))
                .chain(c.attempts.iter().map(|&(o, a)| (o, (0, a))))
                .collect(),
            ..Default::default()
        }
    }

    fn mark_settled(&mut self, offset: u64) {
        if offset == self.floor {
            self.floor += 1;
            while self.settled.remove(&self.floor) {
                self.floor += 1;
            }
            // Nothing pending or settled ahead: everything below `next` is
            // done. Never backwards: while a read fills a batch, `next` still
            // lags the offset just settled (an expired first record).
            if self.pending.is_empty() && self.settled.is_empty() {
                self.floor = self.floor.max(self.next);
            }
        } else if offset > self.floor {
            self.settled.insert(offset);
        }
    }

    /// Removes `offset` from whichever index its state puts it in.
    fn unindex(&mut self, offset: u64) {
        let Some(p) = self.pending.get(offset) else {
            return;
        };
        match p.state {
            // Left in the heap; `take` skips entries whose message is no longer ready.
            PState::Ready => {}
            PState::Delayed(at) => {
                self.delayed.remove(&(at, offset));
            }
            PState::Leased {
                deadline: Some(d), ..
            } => {
                self.leases.remove(&(d, offset));
            }
            PState::Leased { deadline: None, .. } | PState::Dead => {}
        }
    }

    fn set_state(&mut self, offset: u64, state: PState) {
        self.unindex(offset);
        let Some(p) = self.pending.get_mut(offset) else {
            return;
        };
        match state {
            PState::Ready => {
                self.ready.push(p.priority, offset);
            }
            PState::Delayed(at) => {
                self.delayed.insert((at, offset));
            }
            PState::Leased {
                deadline: Some(d), ..
            } => {
                self.leases.insert((d, offset));
            }
            PState::Leased { deadline: None, .. } | PState::Dead => {}
        }
        p.state = state;
    }

    fn next_wake(&self) -> Option<Instant> {
        let d = self.delayed.first().map(|(t, _)| *t);
        let l = self.leases.first().map(|(t, _)| *t);
        match (d, l) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

/// Per-subscription limits that apply when taking and failing messages.
#[derive(Debug, Clone)]
pub(crate) struct Policy {
    pub visibility_timeout: Option<Duration>,
    pub max_deliveries: Option<u32>,
    pub dead_letter_topic: String,
    pub read_ahead: usize,
    /// Bytes of decoded messages read ahead per partition (see
    /// [`crate::BrokerConfig::read_ahead_bytes`]).
    pub read_ahead_bytes: usize,
}

/// A message taken for delivery.
pub(crate) struct Taken {
    pub partition: u32,
    pub offset: u64,
    pub lease: u64,
    pub attempt: u32,
    pub msg: Message,
    /// The partition's first delivery since the broker opened, under a
    /// `max_deliveries` policy: its attempt is committed before the
    /// application gets it. A message that crashes its consumer process
    /// at once is the first one of its partition the next process is
    /// given, so its attempts are counted however quickly it kills.
    pub persist_first: bool,
}

/// Whether `msg` is past its own expiry (the `wharf-expires-at-ms` header)
/// or its topic's TTL (`ttl_ms` after its timestamp) at `now_ms`.
fn is_expired(msg: &Message, ttl_ms: Option<u64>, now_ms: u64) -> bool {
    (!msg.headers().is_empty() && msg.expires_at().is_some_and(|t| t.as_millis() <= now_ms))
        || ttl_ms.is_some_and(|ttl| msg.timestamp().as_millis().saturating_add(ttl) <= now_ms)
}

/// A message to copy to its dead-letter topic before it is settled.
pub(crate) struct DeadLetter {
    pub topic: String,
    pub msg: Message,
    pub partition: u32,
    pub offset: u64,
}

/// One group's state on one topic.
pub(crate) struct GroupTopic {
    /// The group's name; empty for a private subscription.
    pub group: Arc<str>,
    pub mode: GroupMode,
    pub topic: Arc<Topic>,
    state: Mutex<GtState>,
    watchers: Mutex<Vec<Weak<Notify>>>,
}

struct GtState {
    parts: Vec<PartState>,
    dirty: bool,
    rr: usize,
    /// Live consumers in join order.
    members: Vec<u64>,
    /// Stream mode: each partition's owner (see [`Owner`]).
    owners: Vec<Owner>,
    /// Per member, what its stream shares with the group.
    handed: U64Map<Arc<MemberState>>,
    /// When a consumer last took from or left the group: how long it has
    /// been idle once nothing holds it (see `Inner::unload_idle`).
    used: Instant,
}

/// What a consumer's stream shares with the groups it is a member of.
#[derive(Debug, Default)]
pub(crate) struct MemberState {
    /// The highest lease id handed to the application (leases above it sit
    /// unseen in the stream's buffer).
    pub handed: AtomicU64,
    /// Set when a rebalance took a partition from it: its stream gives back
    /// what it buffered from partitions it no longer owns, so the hand-off
    /// waits only for deliveries the application has.
    pub revoked: AtomicBool,
}

/// Who consumes a partition in stream mode. Assignment is sticky: a
/// rebalance moves only the partitions it must (from members that left, or
/// above their fair share to members below it). A move is a hand-off, as in
/// Kafka's cooperative protocol: the old owner is revoked at once (it takes
/// nothing more from the partition), and the new owner starts only once
/// every lease the old owner holds there has ended — settled, released
/// (its stream gives back what it buffered unseen), or expired — so one
/// key's messages are never in two consumers' hands at once.
#[derive(Debug, Clone, Copy, Default)]
struct Owner {
    member: Option<u64>,
    /// The previous owner, while it may still hold leases on the partition.
    from: Option<u64>,
}

impl GtState {
    /// Recomputes the stream-mode assignment after members or partitions
    /// changed (see [`Owner`]).
    fn rebalance(&mut self) {
        let n = self.parts.len();
        self.owners.resize(n, Owner::default());
        let m = self.members.len();
        let mut owners = std::mem::take(&mut self.owners);
        let handed = &self.handed;
        let mut revoke = |o: &mut Owner| {
            if let Some(old) = o.member.take() {
                if let Some(s) = handed.get(&old) {
                    s.revoked.store(true, Ordering::Release);
                }
                // A revoked owner that never completed its own hand-off
                // holds nothing there; the one before it still may.
                o.from = o.from.or(Some(old));
            }
        };
        if m == 0 {
            owners.iter_mut().for_each(&mut revoke);
            self.owners = owners;
            return;
        }
        // Fair shares: `n / m` each, one more for `n % m` members — those
        // that own the most now, so the fewest partitions move.
        let mut count: U64Map<usize> = self.members.iter().map(|&x| (x, 0)).collect();
        for o in owners.iter_mut() {
            match o.member {
                Some(x) if count.contains_key(&x) => *count.get_mut(&x).expect("present") += 1,
                Some(_) => revoke(o),
                None => {}
            }
        }
        let mut by_count: Vec<u64> = self.members.clone();
        by_count.sort_by_key(|x| std::cmp::Reverse(count[x]));
        let quota: U64Map<usize> = by_count
            .iter()
            .enumerate()
            .map(|(k, &x)| (x, n / m + usize::from(k < n % m)))
            .collect();
        let mut kept: U64Map<usize> = U64Map::default();
        for o in owners.iter_mut() {
            if let Some(x) = o.member {
                let k = kept.entry(x).or_default();
                if *k < quota[&x] {
                    *k += 1;
                } else {
                    revoke(o);
                }
            }
        }
        let mut takers = self.members.iter().copied();
        let mut cur = takers.next();
        for o in owners.iter_mut().filter(|o| o.member.is_none()) {
            while let Some(x) = cur {
                if kept.get(&x).copied().unwrap_or(0) < quota[&x] {
                    break;
                }
                cur = takers.next();
            }
            let Some(x) = cur else { break };
            *kept.entry(x).or_default() += 1;
            o.member = Some(x);
            if o.from == Some(x) {
                o.from = None;
            }
        }
        self.owners = owners;
    }

    /// Whether partition `p` waits for its previous owner's leases to end
    /// (so a settlement there may let the new owner start).
    fn handing_off(&self, p: u32) -> bool {
        self.owners
            .get(p as usize)
            .is_some_and(|o| o.from.is_some())
    }

    /// Whether `member` may take from partition `p` now: it owns it (always,
    /// outside stream mode) and the hand-off to it is complete.
    fn may_take(&mut self, mode: GroupMode, p: usize, member: u64) -> bool {
        if mode != GroupMode::Stream {
            return true;
        }
        let Some(o) = self.owners.get(p).copied() else {
            return false;
        };
        if o.member != Some(member) {
            return false;
        }
        let Some(old) = o.from else { return true };
        let held = self.parts[p].pending.iter().any(
            |(_, x)| matches!(x.state, PState::Leased { member: holder, .. } if holder == old),
        );
        if !held {
            self.owners[p].from = None;
        }
        !held
    }
}

impl GroupTopic {
    /// A group starting at `start`, or resuming from saved cursors (by partition).
    pub(crate) fn new(
        group: Arc<str>,
        mode: GroupMode,
        topic: Arc<Topic>,
        start: StartPosition,
        saved: &HashMap<u32, Cursor>,
    ) -> Result<GroupTopic, Error> {
        let mut parts = Vec::new();
        for (i, p) in topic.partitions().iter().enumerate() {
            let i = u32::try_from(i).expect("partition count fits u32");
            let st = match saved.get(&i) {
                // A cursor past the end: the partition was truncated (a
                // repair) after it was saved.
                Some(c) if c.floor > p.end_offset() => {
                    let mut c = c.clone();
                    c.clamp(p.end_offset());
                    PartState::from_cursor(&c)
                }
                Some(c) => PartState::from_cursor(c),
                None => PartState::at(p.start_position(start, topic.name(), i)?),
            };
            parts.push(st);
        }
        Ok(GroupTopic {
            group,
            mode,
            topic,
            state: Mutex::new(GtState {
                parts,
                dirty: false,
                rr: 0,
                members: Vec::new(),
                handed: U64Map::default(),
                owners: Vec::new(),
                used: Instant::now(),
            }),
            watchers: Mutex::new(Vec::new()),
        })
    }

    fn lock(&self) -> MutexGuard<'_, GtState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn watch(&self, n: &Arc<Notify>) {
        let mut w = self.watchers.lock().unwrap_or_else(|p| p.into_inner());
        w.retain(|x| x.strong_count() > 0);
        w.push(Arc::downgrade(n));
    }

    /// Adds a live consumer (rebalancing partitions in stream mode);
    /// `state` is what its stream shares with the group.
    pub(crate) fn join(&self, member: u64, state: Arc<MemberState>) {
        let mut st = self.lock();
        st.members.push(member);
        st.handed.insert(member, state);
        if self.mode == GroupMode::Stream {
            st.rebalance();
        }
        drop(st);
        self.wake_watchers();
    }

    /// Removes a consumer; its partitions go to the others.
    pub(crate) fn leave(&self, member: u64) {
        let mut st = self.lock();
        st.members.retain(|&m| m != member);
        st.handed.remove(&member);
        if self.mode == GroupMode::Stream {
            st.rebalance();
        }
        st.used = Instant::now();
        drop(st);
        self.wake_watchers();
    }

    /// When a consumer last took from the group or left it.
    pub(crate) fn last_used(&self) -> Instant {
        self.lock().used
    }

    /// Number of live consumers.
    pub(crate) fn member_count(&self) -> usize {
        self.lock().members.len()
    }

    /// Live consumers' ids, in join order.
    pub(crate) fn members(&self) -> Vec<u64> {
        self.lock().members.clone()
    }

    /// Each partition's owner in stream mode (by partition); empty in queue mode.
    pub(crate) fn owners(&self) -> Vec<Option<u64>> {
        if self.mode != GroupMode::Stream {
            return Vec::new();
        }
        let mut st = self.lock();
        let n = self.topic.partitions().len().max(st.parts.len());
        if st.owners.len() < n {
            while st.parts.len() < n {
                st.parts.push(PartState::at(0));
            }
            st.rebalance();
        }
        st.owners.iter().map(|o| o.member).collect()
    }

    /// Whether `member` may be given messages of `partition` (always
    /// outside stream mode).
    pub(crate) fn owns(&self, member: u64, partition: u32) -> bool {
        self.mode != GroupMode::Stream
            || self
                .lock()
                .owners
                .get(partition as usize)
                .is_some_and(|o| o.member == Some(member))
    }

    /// `(partition, owner)` for stream mode; empty in queue mode.
    pub(crate) fn assignment(&self) -> Vec<(u32, Option<u64>)> {
        if self.mode != GroupMode::Stream {
            return Vec::new();
        }
        self.owners()
            .into_iter()
            .enumerate()
            .map(|(p, owner)| (u32::try_from(p).expect("partition count fits u32"), owner))
            .collect()
    }

    fn wake_watchers(&self) {
        let w = self.watchers.lock().unwrap_or_else(|p| p.into_inner());
        for n in w.iter().filter_map(Weak::upgrade) {
            n.notify_one();
        }
    }

    /// Takes up to `max` deliverable messages, handing each to `out`. Returns when to look again if
    /// nothing more is ready (the earliest delay or lease deadline), and
    /// messages that exhausted their deliveries and must be dead-lettered.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn take(
        &self,
        member: u64,
        policy: &Policy,
        clock: &Clock,
        lease_ids: &std::sync::atomic::AtomicU64,
        max: usize,
        mut out: impl FnMut(Taken),
        dead: &mut Vec<DeadLetter>,
    ) -> Result<Option<Instant>, Error> {
        let now = clock.now();
        // One wall-clock reading per take, for the expiry checks below.
        let now_ms = clock.ms_at(now);
        let partitions = self.topic.partitions();
        let mut st = self.lock();
        st.used = now;
        while st.parts.len() < partitions.len() {
            st.parts.push(PartState::at(0));
        }
        if self.mode == GroupMode::Stream && st.owners.len() < st.parts.len() {
            st.rebalance();
        }
        let n = st.parts.len();
        let start = st.rr;
        st.rr = (st.rr + 1) % n.max(1);
        let mut wake: Option<Instant> = None;
        let mut changed = false;
        let mut taken = 0;
        let stream = self.mode == GroupMode::Stream;
        for k in 0..n {
            let i = (start + k) % n;
            // The owner (still waiting for a hand-off, or not) also runs
            // the partition's timers, so the old owner's expired leases end.
            if stream && st.owners.get(i).and_then(|o| o.member) != Some(member) {
                continue;
            }
            let pid = u32::try_from(i).expect("partition count fits u32");
            let part = &mut st.parts[i];
            // Leases that ran out: the consumer failed to settle in time.
            while let Some(&(deadline, off)) = part.leases.first() {
                if deadline > now {
                    break;
                }
                part.leases.pop_first();
                if let Some(p) = part.pending.get_mut(off) {
                    p.state = PState::Ready;
                }
                if let Some(dl) = fail(
                    part,
                    &partitions[i],
                    off,
                    Duration::ZERO,
                    "visibility timeout expired",
                    policy,
                    clock,
                    &self.topic,
                    &self.group,
                    pid,
                ) {
                    dead.push(dl);
                }
                changed = true;
            }
            while let Some(&(at, off)) = part.delayed.first() {
                if at > now {
                    break;
                }
                part.delayed.pop_first();
                if let Some(p) = part.pending.get_mut(off) {
                    p.state = PState::Ready;
                    part.ready.push(p.priority, off);
                }
            }
            // Not handed off yet: the previous owner still holds leases here.
            if !st.may_take(self.mode, i, member) {
                if let Some(w) = st.parts[i].next_wake() {
                    wake = Some(wake.map_or(w, |x: Instant| x.min(w)));
                }
                continue;
            }
            let part = &mut st.parts[i];
            if taken < max {
                match fill(part, &partitions[i], policy, clock, stream) {
                    Ok(c) => changed |= c,
                    // A damaged batch stops this partition only: what was
                    // read before it is still delivered below, and the
                    // other partitions go on. The log reported it.
                    Err(e) if is_damage(&e) => self.topic.on_damage(pid),
                    Err(e) => return Err(e),
                }
            }
            let deadline = policy
                .visibility_timeout
                .map(|vt| now.checked_add(vt.min(crate::clock::FAR)).unwrap_or(now));
            // Lease ids for this partition's takes, reserved at once (ids
            // left unused are skipped; they only need to be unique).
            let room = max - taken;
            let mut next_lease = if room > 0 && !part.ready.is_empty() {
                lease_ids.fetch_add(room as u64, std::sync::atomic::Ordering::Relaxed)
            } else {
                0
            };
            // Bytes of messages moved into deliveries, taken off the
            // window's count once the loop no longer borrows an entry.
            let mut freed = 0;
            while taken < max {
                let Some(off) = part.ready.pop() else {
                    break;
                };
                let Some(p) = part.pending.get_mut(off) else {
                    continue;
                };
                if !matches!(p.state, PState::Ready) {
                    continue;
                }
                if policy.max_deliveries.is_some_and(|max| p.attempts >= max) {
                    // Its attempts were used up by consumers that died holding
                    // it (counted before a crash, restored from the metadata):
                    // dead-lettered rather than delivered again.
                    let now_ms = clock.now_ms();
                    p.first_failure_ms.get_or_insert(now_ms);
                    p.last_failure_ms.get_or_insert(now_ms);
                    if let Some(dl) = dead_letter(
                        part,
                        &partitions[i],
                        off,
                        "max deliveries exceeded",
                        policy,
                        &self.topic,
                        &self.group,
                        pid,
                    ) {
                        dead.push(dl);
                    }
                    changed = true;
                    continue;
                }
                let msg = match p.msg.take() {
                    Some(m) => {
                        freed += m.size();
                        m
                    }
                    // A redelivery: the first lease took the message.
                    None => match reload(&partitions[i], off) {
                        Ok(Some(m)) => m,
                        Ok(None) => {
                            // Retention removed it meanwhile.
                            part.pending.remove(off);
                            part.mark_settled(off);
                            changed = true;
                            continue;
                        }
                        Err(e) => {
                            // Still ready: back in the queue, so a later take
                            // retries it rather than losing track of it.
                            let priority = p.priority;
                            part.ready.push(priority, off);
                            if is_damage(&e) {
                                // This partition waits for a repair; the
                                // others go on.
                                self.topic.on_damage(pid);
                                break;
                            }
                            part.pending.bytes -= freed;
                            return Err(e);
                        }
                    },
                };
                // Checked again at every take, not only when read: a message
                // nacked with a delay (or waiting for a hand-off) may outlive
                // its TTL before it comes round again.
                if is_expired(&msg, partitions[i].ttl_ms(), now_ms) {
                    part.pending.remove(off);
                    part.mark_settled(off);
                    changed = true;
                    continue;
                }
                let lease = next_lease;
                next_lease += 1;
                p.attempts += 1;
                p.state = PState::Leased {
                    lease,
                    deadline,
                    member,
                };
                if let Some(d) = deadline {
                    part.leases.insert((d, off));
                }
                taken += 1;
                let persist_first = policy.max_deliveries.is_some() && !part.first_taken;
                part.first_taken = true;
                out(Taken {
                    partition: pid,
                    offset: off,
                    lease,
                    attempt: p.attempts,
                    msg,
                    persist_first,
                });
            }
            part.pending.bytes -= freed;
            if let Some(w) = part.next_wake() {
                wake = Some(wake.map_or(w, |x: Instant| x.min(w)));
            }
        }
        // A lease changes the attempt counts the next commit persists.
        if changed || taken > 0 {
            st.dirty = true;
        }
        Ok(wake)
    }

    /// Forgets everything at or past `end` in `partition` (a repair
    /// truncated it there), so the group reads new messages from `end`.
    pub(crate) fn clamp(&self, partition: u32, end: u64) {
        let mut st = self.lock();
        let Some(part) = st.parts.get_mut(partition as usize) else {
            return;
        };
        part.pending.retain(|o, _| o < end);
        part.ready.retain(|o| o < end);
        part.delayed.retain(|&(_, o)| o < end);
        part.leases.retain(|&(_, o)| o < end);
        part.settled.retain(|&o| o < end);
        part.next = part.next.min(end);
        part.floor = part.floor.min(end);
        st.dirty = true;
    }

    /// Puts a message leased under `lease` back as never handed out (a
    /// stream's buffer held it unseen): ready again, the attempt its lease
    /// counted undone, so prefetching never uses up `max_deliveries`.
    pub(crate) fn return_unseen(
        &self,
        partition: u32,
        offset: u64,
        lease: u64,
    ) -> Result<(), Error> {
        let mut st = self.lock();
        let part = leased(&mut st, partition, offset, lease)?;
        if let Some(p) = part.pending.get_mut(offset) {
            p.attempts = p.attempts.saturating_sub(1);
        }
        part.set_state(offset, PState::Ready);
        drop(st);
        self.wake_watchers();
        Ok(())
    }

    /// Settles a leased message. `Ok(Some(dl))` asks the caller to copy `dl`
    /// to the dead-letter topic and then call [`GroupTopic::finish_dead`].
    pub(crate) fn settle(
        &self,
        partition: u32,
        offset: u64,
        lease: u64,
        settlement: Settlement,
        policy: &Policy,
        clock: &Clock,
    ) -> Result<Option<DeadLetter>, Error> {
        let mut st = self.lock();
        if matches!(settlement, Settlement::Ack) {
            ack(&mut st, partition, offset, lease)?;
            st.dirty = true;
            let handing_off = st.handing_off(partition);
            drop(st);
            if handing_off {
                self.wake_watchers();
            }
            return Ok(None);
        }
        let part = leased(&mut st, partition, offset, lease)?;
        // Only a failure may need the message back from the log.
        let log = || self.topic.partitions()[partition as usize].clone();
        let result = match settlement {
            // Acks return above through `ack`; this arm is not reached.
            Settlement::Ack => {
                part.unindex(offset);
                part.pending.remove(offset);
                part.mark_settled(offset);
                None
            }
            Settlement::Nack { delay } => {
                part.unindex(offset);
                if let Some(p) = part.pending.get_mut(offset) {
                    p.state = PState::Ready;
                }
                let dl = fail(
                    part,
                    &log(),
                    offset,
                    delay,
                    "max deliveries exceeded",
                    policy,
                    clock,
                    &self.topic,
                    &self.group,
                    partition,
                );
                drop(st);
                self.wake_watchers();
                return Ok(dl);
            }
            Settlement::Reject { reason } => {
                part.unindex(offset);
                let now_ms = clock.now_ms();
                let p = part.pending.get_mut(offset).expect("checked above");
                p.first_failure_ms.get_or_insert(now_ms);
                p.last_failure_ms = Some(now_ms);
                p.state = PState::Ready; // so a failed dead-lettering leaves it ready
                let dl = dead_letter(
                    part,
                    &log(),
                    offset,
                    &reason,
                    policy,
                    &self.topic,
                    &self.group,
                    partition,
                );
                if dl.is_none() {
                    // Not dead after all (see `dead_letter`): ready or settled.
                    st.dirty = true;
                    drop(st);
                    self.wake_watchers();
                    return Ok(None);
                }
                dl
            }
            _ => {
                return Err(Error::InvalidArgument {
                    name: "settlement",
                    reason: "unknown settlement".into(),
                })
            }
        };
        st.dirty = true;
        Ok(result)
    }

    /// Acknowledges `(partition, offset, lease)` triples under one lock;
    /// the ones whose lease is no longer held go to `failed`.
    pub(crate) fn ack_many(&self, acks: &[(u32, u64, u64)], failed: &mut Vec<(u64, Error)>) {
        let mut st = self.lock();
        let mut handing_off = false;
        for &(partition, offset, lease) in acks {
            if let Err(e) = ack(&mut st, partition, offset, lease) {
                failed.push((lease, e));
            }
            handing_off |= st.handing_off(partition);
        }
        st.dirty = true;
        drop(st);
        if handing_off {
            self.wake_watchers();
        }
    }

    /// Settles `offset` of `partition` as an ack would, without it being
    /// delivered (an operator settling one message, such as a replayed dead
    /// letter). Works on any offset of the log: one in the read-ahead leaves
    /// it (a lease on it is void, so its ack will report an unknown
    /// delivery), one beyond it is skipped when read. Returns `false` if it
    /// was already settled.
    pub(crate) fn settle_offset(&self, partition: u32, offset: u64) -> bool {
        let mut st = self.lock();
        while st.parts.len() <= partition as usize {
            st.parts.push(PartState::at(0));
        }
        let part = &mut st.parts[partition as usize];
        if offset < part.floor || part.settled.contains(&offset) {
            return false;
        }
        if part.pending.contains_key(offset) {
            part.unindex(offset);
            part.pending.remove(offset);
        } else if offset >= part.next && offset == part.floor {
            // Not read yet and next in line: the floor passes it, and reading
            // resumes after it.
            part.next = offset + 1;
        }
        part.mark_settled(offset);
        st.dirty = true;
        drop(st);
        self.wake_watchers();
        true
    }

    /// Settles a message once its dead-letter copy is stored.
    pub(crate) fn finish_dead(&self, partition: u32, offset: u64) {
        let mut st = self.lock();
        if let Some(part) = st.parts.get_mut(partition as usize) {
            if matches!(
                part.pending.get(offset),
                Some(Pending {
                    state: PState::Dead,
                    ..
                })
            ) {
                part.pending.remove(offset);
                part.mark_settled(offset);
            }
        }
        st.dirty = true;
        let handing_off = st.handing_off(partition);
        drop(st);
        if handing_off {
            self.wake_watchers();
        }
    }

    /// Makes a message whose dead-letter copy could not be stored ready again.
    pub(crate) fn abort_dead(&self, partition: u32, offset: u64) {
        let mut st = self.lock();
        if let Some(part) = st.parts.get_mut(partition as usize) {
            if matches!(
                part.pending.get(offset),
                Some(Pending {
                    state: PState::Dead,
                    ..
                })
            ) {
                part.set_state(offset, PState::Ready);
            }
        }
        drop(st);
        self.wake_watchers();
    }

    /// Moves a lease's deadline to `deadline`.
    pub(crate) fn extend(
        &self,
        partition: u32,
        offset: u64,
        lease: u64,
        deadline: Instant,
    ) -> Result<(), Error> {
        let mut st = self.lock();
        let part = leased(&mut st, partition, offset, lease)?;
        let member = match part.pending.get(offset).map(|p| &p.state) {
            Some(&PState::Leased { member, .. }) => member,
            _ => return Err(unknown(lease)),
        };
        part.set_state(
            offset,
            PState::Leased {
                lease,
                deadline: Some(deadline),
                member,
            },
        );
        Ok(())
    }

    /// The cursors to persist, if anything changed since the last call.
    pub(crate) fn take_dirty_cursors(&self, clock: &Clock) -> Option<Vec<(u32, Cursor)>> {
        let mut st = self.lock();
        if !st.dirty {
            return None;
        }
        st.dirty = false;
        Some(snapshot(&st, clock))
    }

    /// Marks the state as changed (a commit of it failed).
    pub(crate) fn mark_dirty(&self) {
        self.lock().dirty = true;
    }

    /// The cursors to persist, unconditionally.
    pub(crate) fn cursors(&self, clock: &Clock) -> Vec<(u32, Cursor)> {
        snapshot(&self.lock(), clock)
    }

    /// Messages not yet settled by the group: (partition, floor, end).
    pub(crate) fn lag(&self) -> u64 {
        let st = self.lock();
        let parts = self.topic.partitions();
        st.parts
            .iter()
            .zip(parts.iter())
            .map(|(s, p)| {
                p.end_offset()
                    .saturating_sub(s.floor)
                    .saturating_sub(s.settled.len() as u64)
            })
            .sum()
    }
}

fn snapshot(st: &GtState, clock: &Clock) -> Vec<(u32, Cursor)> {
    st.parts
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let mut delayed: Vec<(u64, u64, u32)> = p
                .pending
                .iter()
                .filter_map(|(o, x)| match x.state {
                    PState::Delayed(at) => Some((o, clock.ms_at(at), x.attempts)),
                    _ => None,
                })
                .collect();
            delayed.sort_unstable();
            // Attempts of the rest. A lease still unseen in its stream's
            // buffer is not counted: the application never had it, so a
            // crash then is no failed attempt of it.
            let mut attempts: Vec<(u64, u32)> = p
                .pending
                .iter()
                .filter_map(|(o, x)| {
                    let a = match x.state {
                        PState::Delayed(_) => return None,
                        PState::Leased { lease, member, .. }
                            if st
                                .handed
                                .get(&member)
                                .is_some_and(|h| h.handed.load(Ordering::Acquire) < lease) =>
                        {
                            x.attempts.saturating_sub(1)
                        }
                        _ => x.attempts,
                    };
                    (a > 0).then_some((o, a))
                })
                .collect();
            attempts.sort_unstable();
            (
                u32::try_from(i).expect("partition count fits u32"),
                Cursor {
                    floor: p.floor,
                    settled: p.settled.iter().copied().collect(),
                    delayed,
                    attempts,
                },
            )
        })
        .collect()
}

/// The partition state of a message, if it is still leased under `lease`.
fn leased(
    st: &mut GtState,
    partition: u32,
    offset: u64,
    lease: u64,
) -> Result<&mut PartState, Error> {
    let part = st
        .parts
        .get_mut(partition as usize)
        .ok_or_else(|| unknown(lease))?;
    match part.pending.get(offset) {
        Some(Pending {
            state: PState::Leased { lease: l, .. },
            ..
        }) if *l == lease => Ok(part),
        _ => Err(unknown(lease)),
    }
}

/// Acknowledges a message leased under `lease`.
fn ack(st: &mut GtState, partition: u32, offset: u64, lease: u64) -> Result<(), Error> {
    let part = st
        .parts
        .get_mut(partition as usize)
        .ok_or_else(|| unknown(lease))?;
    let deadline = part
        .pending
        .remove_if(offset, |p| match p.state {
            PState::Leased {
                lease: l, deadline, ..
            } if l == lease => Some(deadline),
            _ => None,
        })
        .ok_or_else(|| unknown(lease))?;
    if let Some(d) = deadline {
        part.leases.remove(&(d, offset));
    }
    part.mark_settled(offset);
    Ok(())
}

fn unknown(lease: u64) -> Error {
    Error::UnknownDelivery {
        id: lease.to_string(),
    }
}

/// Records a failed attempt of a `Ready` message: redeliver after `delay`,
/// or mark it dead when `max_deliveries` attempts are used up.
#[allow(clippy::too_many_arguments)]
fn fail(
    part: &mut PartState,
    log: &crate::topic::Partition,
    offset: u64,
    delay: Duration,
    reason: &str,
    policy: &Policy,
    clock: &Clock,
    topic: &Topic,
    group: &str,
    partition: u32,
) -> Option<DeadLetter> {
    let now_ms = clock.now_ms();
    let p = part.pending.get_mut(offset)?;
    p.first_failure_ms.get_or_insert(now_ms);
    p.last_failure_ms = Some(now_ms);
    if policy.max_deliveries.is_some_and(|max| p.attempts >= max) {
        p.state = PState::Ready;
        return dead_letter(part, log, offset, reason, policy, topic, group, partition);
    }
    let state = if delay.is_zero() {
        PState::Ready
    } else {
        PState::Delayed(clock.after(delay))
    };
    p.state = PState::Ready; // so set_state's unindex finds nothing stale
    part.set_state(offset, state);
    None
}

/// Marks a `Ready` pending message dead and builds its dead letter. `None`
/// when there is nothing to copy: retention removed the message (it is
/// settled), or it could not be read back (it stays ready, so a later
/// attempt dead-letters it).
#[allow(clippy::too_many_arguments)]
fn dead_letter(
    part: &mut PartState,
    log: &crate::topic::Partition,
    offset: u64,
    reason: &str,
    policy: &Policy,
    topic: &Topic,
    group: &str,
    partition: u32,
) -> Option<DeadLetter> {
    let p = part.pending.get_mut(offset)?;
    let mut msg = match p.msg.clone() {
        Some(m) => m,
        None => match reload(log, offset) {
            Ok(Some(m)) => m,
            Ok(None) => {
                part.pending.remove(offset);
                part.mark_settled(offset);
                return None;
            }
            Err(e) => {
                tracing::warn!(topic = topic.name(), partition, offset, error = %e, "reading a message back to dead-letter it failed; it stays ready");
                part.set_state(offset, PState::Ready);
                return None;
            }
        },
    };
    let p = part.pending.get_mut(offset)?;
    p.state = PState::Dead;
    let last = p.last_failure_ms.unwrap_or(0);
    wharf_core::DeadLetter {
        reason,
        topic: topic.name(),
        partition,
        offset: Some(offset),
        group: (!group.is_empty()).then_some(group),
        attempts: p.attempts,
        first_failure_ms: p.first_failure_ms.unwrap_or(last),
        last_failure_ms: last,
    }
    .stamp(&mut msg);
    Some(DeadLetter {
        topic: policy.dead_letter_topic.clone(),
        msg,
        partition,
        offset,
    })
}

/// Whether `e` is a damaged batch in a partition's log (reported by the
/// log, repaired by an operator), rather than a failure of the call.
fn is_damage(e: &Error) -> bool {
    matches!(e, Error::Backend { source, .. }
        if matches!(source.downcast_ref::<wharf_log::LogError>(), Some(wharf_log::LogError::Corrupt { .. })))
}

/// Reads the message at `offset` back from the log (its first lease moved
/// it out of the read-ahead). `Ok(None)` when retention removed it.
fn reload(log: &crate::topic::Partition, offset: u64) -> Result<Option<Message>, Error> {
    if offset < log.start_offset() {
        return Ok(None);
    }
    let batches = match log.read(offset, 1) {
        Ok(b) => b,
        Err(_) if offset < log.start_offset() => return Ok(None),
        Err(e) => return Err(log_error(e)),
    };
    let mut found = None;
    batches
        .for_each_record(|rec| {
            if rec.offset == offset {
                found = Some(from_record_ref(&rec));
            }
            Ok::<(), wharf_log::LogError>(())
        })
        .map_err(log_error)?;
    found
        .transpose()
        .map_err(|e| storage_error("decode message", e))
}

/// Why reading ahead stopped early.
enum FillError {
    Log(wharf_log::LogError),
    Decode(NotAMessage),
}

impl From<wharf_log::LogError> for FillError {
    fn from(e: wharf_log::LogError) -> Self {
        FillError::Log(e)
    }
}

/// Reads ahead from the log into `pending`. Returns whether settled state
/// changed (expired or out-of-retention messages skipped).
/// In stream mode priorities are ignored: a partition is delivered in offset order.
fn fill(
    part: &mut PartState,
    log: &crate::topic::Partition,
    policy: &Policy,
    clock: &Clock,
    stream: bool,
) -> Result<bool, Error> {
    let mut changed = false;
    let start = log.start_offset();
    if part.next < start {
        // Retention removed messages the group had not settled: skip them.
        part.pending.retain(|o, _| o >= start);
        part.ready.retain(|o| o >= start);
        part.delayed.retain(|&(_, o)| o >= start);
        part.leases.retain(|&(_, o)| o >= start);
        part.settled.retain(|&o| o >= start);
        part.next = start;
        part.floor = part.floor.max(start);
        changed = true;
    }
    let end = log.readable_end();
    while part.pending.len() < policy.read_ahead
        && part.pending.bytes() < policy.read_ahead_bytes
        && part.next < end
    {
        // Never read much past the byte budget: a read returns at least
        // one batch, so the window holds at most the budget plus one batch.
        let room = policy.read_ahead_bytes - part.pending.bytes();
        let batches = log
            .read(part.next, READ_CHUNK.min(room))
            .map_err(log_error)?;
        if batches.is_empty() {
            break;
        }
        let now_ms = clock.now_ms();
        let ttl_ms = log.ttl_ms();
        let result = batches.for_each_record(|rec| {
            let off = rec.offset;
            if off < part.next || part.settled.contains(&off) {
                return Ok(());
            }
            let msg = from_record_ref(&rec).map_err(FillError::Decode)?;
            // Expiry, delay and priority travel as headers; most messages have none.
            let plain = msg.headers().is_empty();
            if is_expired(&msg, ttl_ms, now_ms) {
                part.mark_settled(off);
                changed = true;
                return Ok(());
            }
            let (attempts, not_before_ms) = match (!part.restored.is_empty())
                .then(|| part.restored.remove(&off))
                .flatten()
            {
                Some((ms, a)) => (a, Some(ms)),
                None if plain => (0, None),
                None => (0, msg.deliver_at().map(|t| t.as_millis())),
            };
            let state = match not_before_ms {
                Some(ms) if ms > now_ms => PState::Delayed(clock.instant_at_ms(ms)),
                _ => PState::Ready,
            };
            let priority = if stream || plain { 0 } else { msg.priority() };
            match state {
                PState::Ready => part.ready.push(priority, off),
                PState::Delayed(at) => {
                    part.delayed.insert((at, off));
                }
                PState::Leased { .. } | PState::Dead => {}
            }
            part.pending.insert(
                off,
                Pending {
                    msg: Some(msg),
                    priority,
                    attempts,
                    state,
                    first_failure_ms: None,
                    last_failure_ms: None,
                },
            );
            Ok(())
        });
        match result {
            Ok(()) => {}
            Err(FillError::Log(e)) => return Err(log_error(e)),
            Err(FillError::Decode(e)) => return Err(storage_error("decode message", e)),
        }
        part.next = batches.next_offset().max(part.next);
        // A void batch (a repair skipped a damaged batch): its offsets hold
        // no message, so they count as settled and the floor passes them.
        for b in batches.batches().iter().filter(|b| b.is_void()) {
            for off in b.base_offset()..=b.last_offset() {
                if !part.settled.contains(&off) && !part.pending.contains_key(off) {
                    part.mark_settled(off);
                    changed = true;
                }
            }
        }
    }
    Ok(changed)
}

/// Hasher for maps keyed by offsets and lease ids: sequential `u64`s, so a
/// multiplicative hash spreads them well at a fraction of SipHash's cost
/// (the keys are chosen by the broker, never by a client).
#[derive(Default, Clone, Copy)]
pub(crate) struct U64Hasher(u64);

impl std::hash::Hasher for U64Hasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

/// A `HashMap` keyed by broker-chosen `u64`s.
pub(crate) type U64Map<V> = HashMap<u64, V, std::hash::BuildHasherDefault<U64Hasher>>;

#[cfg(test)]
mod tests {
    use super::*;

    /// The FIFO fast path must pop in exactly the heap's order (highest
    /// priority, then lowest offset), whatever mix of pushes and pops.
    #[test]
    fn ready_queue_pops_in_priority_then_offset_order_like_a_heap() {
        let mut seed = 0x2545_f491_4f6c_dd1d_u64;
        let mut rand = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for _ in 0..200 {
            let mut q = ReadyQueue::default();
            let mut model: BinaryHeap<(u8, Reverse<u64>)> = BinaryHeap::new();
            let mut next = 0u64;
            for _ in 0..300 {
                match rand() % 4 {
                    // Read-ahead: increasing offsets, mostly priority 0.
                    0 | 1 => {
                        let prio = if rand() % 5 == 0 {
                            (rand() % 10) as u8
                        } else {
                            0
                        };
                        q.push(prio, next);
                        model.push((prio, Reverse(next)));
                        next += 1;
                    }
                    // A redelivery: an older offset comes back.
                    2 if next > 0 => {
                        let off = rand() % next;
                        let prio = if rand() % 2 == 0 {
                            0
                        } else {
                            (rand() % 10) as u8
                        };
                        q.push(prio, off);
                        model.push((prio, Reverse(off)));
                    }
                    _ => {
                        assert_eq!(q.pop(), model.pop().map(|(_, Reverse(o))| o));
                    }
                }
            }
            while let Some((_, Reverse(o))) = model.pop() {
                assert_eq!(q.pop(), Some(o));
            }
            assert_eq!(q.pop(), None);
        }
    }

    fn pending_at(attempts: u32) -> Pending {
        Pending {
            msg: None,
            priority: 0,
            attempts,
            state: PState::Ready,
            first_failure_ms: None,
            last_failure_ms: None,
        }
    }

    /// The offset window must behave as the map it replaced, including
    /// entries left far behind (stragglers) and gaps left by read-ahead.
    #[test]
    fn pending_window_matches_a_map_model() {
        let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
        let mut rand = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for _ in 0..50 {
            let mut w = Window::default();
            let mut model: std::collections::BTreeMap<u64, u32> = Default::default();
            let mut next = rand() % 1000;
            for _ in 0..(3 * Window::MAX_SPAN) {
                match rand() % 8 {
                    0..=3 => {
                        // Now and then a jump far past the ring's span.
                        next += if rand() % 512 == 0 {
                            2 * Window::MAX_SPAN as u64
                        } else {
                            1 + rand() % 3
                        };
                        let a = (rand() % 100) as u32;
                        w.insert(next, pending_at(a));
                        model.insert(next, a);
                    }
                    4 | 5 => {
                        // Settle the oldest most of the time, else any.
                        let off = if rand() % 4 != 0 {
                            model.keys().next().copied()
                        } else {
                            let k: Vec<u64> = model.keys().copied().collect();
                            (!k.is_empty()).then(|| k[(rand() % k.len() as u64) as usize])
                        };
                        if let Some(off) = off {
                            assert!(w.remove(off));
                            model.remove(&off);
                            assert!(!w.remove(off));
                        }
                    }
                    6 => {
                        let off = next.saturating_sub(rand() % 64);
                        assert_eq!(w.get(off).map(|p| p.attempts), model.get(&off).copied());
                        if let Some(p) = w.get_mut(off) {
                            p.attempts += 1;
                            *model.get_mut(&off).unwrap() += 1;
                        }
                    }
                    _ => {
                        if rand() % 64 == 0 {
                            let cut = next.saturating_sub(rand() % 128);
                            w.retain(|o, _| o >= cut);
                            model.retain(|&o, _| o >= cut);
                        }
                    }
                }
                assert_eq!(w.len(), model.len());
                assert!(w.span <= Window::MAX_SPAN);
                assert!(w.ring.len() <= Window::MAX_SPAN.next_power_of_two());
            }
            let mut got: Vec<(u64, u32)> = w.iter().map(|(o, p)| (o, p.attempts)).collect();
            got.sort_unstable();
            let want: Vec<(u64, u32)> = model.into_iter().collect();
            assert_eq!(got, want);
        }
    }
}
