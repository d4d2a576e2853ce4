//! One topic: its bounded window of messages and the consumer groups reading it.
//!
//! Everything here is synchronous and runs under the topic's mutex (never
//! held across an `.await`); the waiting — publishers for space, consumers
//! for messages — is done by the callers with the [`Notify`]s kept here.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;
use wharf_core::{name, Error, Message, Receipt, Settlement, StartPosition, Timestamp};

/// `at + d` with `d` capped at a century: delays and lease extensions are the
/// caller's input, and `Instant + Duration::MAX` panics (under a topic lock).
fn later(at: Instant, d: Duration) -> Instant {
    const FAR: Duration = Duration::from_secs(100 * 365 * 24 * 3600);
    at.checked_add(d.min(FAR)).unwrap_or(at)
}

/// Offsets occupy the low 48 bits of a delivery token, the attempt (mod 2^16) the high 16.
const OFFSET_BITS: u32 = 48;
const OFFSET_MASK: u64 = (1 << OFFSET_BITS) - 1;

/// The token handed to [`wharf_core::Delivery::new`]: offset plus attempt, so a
/// token from an earlier attempt of the same message is recognised as stale.
pub(crate) fn token(offset: u64, attempt: u32) -> u64 {
    (u64::from(attempt & 0xFFFF) << OFFSET_BITS) | (offset & OFFSET_MASK)
}

fn token_parts(token: u64) -> (u64, u32) {
    // The shift leaves at most 16 bits, so the conversion cannot fail.
    let attempt = u32::try_from(token >> OFFSET_BITS).unwrap_or(u32::MAX);
    (token & OFFSET_MASK, attempt)
}

/// `Instant::now()` taken at most once per locked pass, and only if needed.
#[derive(Default)]
pub(crate) struct LazyNow(Option<Instant>);

impl LazyNow {
    pub(crate) fn get(&mut self) -> Instant {
        *self.0.get_or_insert_with(Instant::now)
    }
}

/// A stored message with its delivery window translated to tokio time, so
/// the paused test clock drives delayed publish and TTL too.
pub(crate) struct Entry {
    message: Message,
    deliver_at: Option<Instant>,
    expires_at: Option<Instant>,
}

impl Entry {
    pub(crate) fn new(message: Message) -> Self {
        let deliver_at = message.deliver_at();
        let expires_at = message.expires_at();
        if deliver_at.is_none() && expires_at.is_none() {
            return Entry {
                message,
                deliver_at: None,
                expires_at: None,
            };
        }
        let wall = Timestamp::now().as_millis();
        let now = Instant::now();
        let at = |ts: Timestamp| now + Duration::from_millis(ts.as_millis().saturating_sub(wall));
        Entry {
            deliver_at: deliver_at.filter(|t| t.as_millis() > wall).map(at),
            expires_at: expires_at.map(at),
            message,
        }
    }

    fn expired(&self, now: &mut LazyNow) -> bool {
        self.expires_at.is_some_and(|t| t <= now.get())
    }
}

/// One subscription's side of the groups it belongs to: wake-ups and its in-flight count.
pub(crate) struct Consumer {
    pub(crate) id: u64,
    pub(crate) notify: Notify,
    pub(crate) in_flight: AtomicUsize,
    pub(crate) max_in_flight: usize,
    pub(crate) closed: AtomicBool,
    /// Topics joined after subscribing (pattern subscriptions), for the stream to adopt.
    pub(crate) pending: Mutex<Vec<Joined>>,
    pub(crate) has_pending: AtomicBool,
}

impl Consumer {
    pub(crate) fn new(id: u64, max_in_flight: usize) -> Self {
        Consumer {
            id,
            notify: Notify::new(),
            in_flight: AtomicUsize::new(0),
            max_in_flight,
            closed: AtomicBool::new(false),
            pending: Mutex::new(Vec::new()),
            has_pending: AtomicBool::new(false),
        }
    }

    pub(crate) fn can_take(&self) -> bool {
        self.in_flight.load(Ordering::Acquire) < self.max_in_flight
    }

    /// One of its deliveries was settled or taken back.
    fn unhold(&self) {
        self.unhold_n(1);
    }

    fn unhold_n(&self, n: usize) {
        let prev = self.in_flight.fetch_sub(n, Ordering::AcqRel);
        if prev >= self.max_in_flight {
            self.notify.notify_one();
        }
    }

    pub(crate) fn add_pending(&self, joined: Joined) {
        lock(&self.pending).push(joined);
        self.has_pending.store(true, Ordering::Release);
        self.notify.notify_one();
    }
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // State behind our mutexes is updated without panicking paths; a poisoned
    // lock still holds consistent data.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Per-group settings taken from the subscription options (the latest joiner's win).
#[derive(Clone, Debug)]
pub(crate) struct Policy {
    /// Stream mode: only the group's longest-standing consumer receives
    /// (one partition, assigned to one consumer). Fixed when the group is created.
    pub(crate) stream: bool,
    pub(crate) visibility_timeout: Option<Duration>,
    pub(crate) max_deliveries: Option<u32>,
    pub(crate) dead_letter_topic: Option<Arc<str>>,
}

/// A group joined on a topic: where to find it again.
#[derive(Clone)]
pub(crate) struct Joined {
    pub(crate) topic: Arc<Topic>,
    pub(crate) gidx: usize,
    pub(crate) gid: u64,
}

/// A message copy to append to a dead-letter topic once the source lock is released.
pub(crate) struct DeadLetter {
    pub(crate) topic: String,
    pub(crate) message: Message,
}

/// What a consumer took from a group.
pub(crate) struct Taken {
    pub(crate) offset: u64,
    pub(crate) attempt: u32,
    pub(crate) message: Message,
}

/// Outcome of one consumer poll of one group.
#[derive(Default)]
pub(crate) struct Polled {
    pub(crate) taken: Option<Taken>,
    /// When something time-based (lease, delay) next needs attention.
    pub(crate) deadline: Option<Instant>,
}

pub(crate) enum Append {
    Done,
    Full,
    Closed,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum SlotState {
    Settled,
    InFlight,
    Ready,
    Delayed,
}

/// A group's state for one offset in `[low, cursor)`.
#[derive(Clone, Copy)]
struct Slot {
    state: SlotState,
    attempt: u32,
    holder: u64,
    lease: Option<Instant>,
    first_failure_ms: u64,
    last_failure_ms: u64,
}

const FRESH: Slot = Slot {
    state: SlotState::Settled,
    attempt: 0,
    holder: 0,
    lease: None,
    first_failure_ms: 0,
    last_failure_ms: 0,
};

/// Read access to the topic's window for a group.
struct Window<'a> {
    name: &'a str,
    base: u64,
    log: &'a VecDeque<Entry>,
}

impl Window<'_> {
    fn end(&self) -> u64 {
        self.base + self.log.len() as u64
    }

    fn get(&self, offset: u64) -> &Entry {
        let i = usize::try_from(offset - self.base).unwrap_or(usize::MAX);
        &self.log[i]
    }
}

/// A consumer group on one topic: cursor plus the state of every message it
/// still needs (in flight, waiting for redelivery, delayed).
struct Group {
    id: u64,
    name: Option<Arc<str>>,
    policy: Policy,
    stream: bool,
    /// Next offset never handed to this group.
    cursor: u64,
    /// Oldest offset the group still needs; `slots[0]` is its state.
    low: u64,
    slots: VecDeque<Slot>,
    ready: BinaryHeap<Reverse<u64>>,
    delayed: BinaryHeap<Reverse<(Instant, u64)>>,
    /// No in-flight lease expires before this (a lower bound).
    lease_check: Option<Instant>,
    in_flight: usize,
    consumers: Vec<Arc<Consumer>>,
    /// A private group whose subscription is gone, kept until its deliveries settle.
    orphaned: bool,
}

impl Group {
    fn slot(&mut self, offset: u64) -> Option<&mut Slot> {
        if offset < self.low || offset >= self.cursor {
            return None;
        }
        let i = usize::try_from(offset - self.low).ok()?;
        self.slots.get_mut(i)
    }

    /// Drops settled slots from the front; true if `low` moved.
    fn trim(&mut self) -> bool {
        let before = self.low;
        while self
            .slots
            .front()
            .is_some_and(|s| s.state == SlotState::Settled)
        {
            self.slots.pop_front();
            self.low += 1;
        }
        self.low != before
    }

    fn wake_consumers(&self) {
        for c in &self.consumers {
            c.notify.notify_one();
        }
    }

    fn deadline(&self) -> Option<Instant> {
        let delayed = self.delayed.peek().map(|Reverse((t, _))| *t);
        match (self.lease_check, delayed) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Expires due leases and releases due delays; true if `low` moved.
    fn maintain(&mut self, w: &Window<'_>, now: &mut LazyNow, dead: &mut Vec<DeadLetter>) -> bool {
        let mut freed = false;
        if self.lease_check.is_some_and(|t| t <= now.get()) {
            freed |= self.expire_leases(w, now, dead);
        }
        while let Some(Reverse((t, offset))) = self.delayed.peek().copied() {
            if t > now.get() {
                break;
            }
            self.delayed.pop();
            if let Some(slot) = self.slot(offset) {
                if slot.state == SlotState::Delayed {
                    slot.state = SlotState::Ready;
                    self.ready.push(Reverse(offset));
                }
            }
        }
        freed
    }

    fn expire_leases(
        &mut self,
        w: &Window<'_>,
        now: &mut LazyNow,
        dead: &mut Vec<DeadLetter>,
    ) -> bool {
        let t = now.get();
        let mut next: Option<Instant> = None;
        let mut expired = Vec::new();
        for (i, s) in self.slots.iter().enumerate() {
            if s.state != SlotState::InFlight {
                continue;
            }
            match s.lease {
                Some(l) if l <= t => expired.push((self.low + i as u64, s.holder)),
                Some(l) => next = Some(next.map_or(l, |n| n.min(l))),
                None => {}
            }
        }
        self.lease_check = next;
        for (offset, holder) in expired {
            if let Some(c) = self.consumers.iter().find(|c| c.id == holder) {
                c.unhold();
            }
            tracing::debug!(topic = w.name, offset, "lease expired; redelivering");
            self.fail(w, offset, Duration::ZERO, now, dead);
        }
        self.trim()
    }

    /// A delivery of `offset` failed (nack, release, lease expiry): schedule
    /// the redelivery, or dead-letter it once `max_deliveries` is reached.
    fn fail(
        &mut self,
        w: &Window<'_>,
        offset: u64,
        delay: Duration,
        now: &mut LazyNow,
        dead: &mut Vec<DeadLetter>,
    ) {
        let max = self.policy.max_deliveries;
        let orphaned = self.orphaned;
        let ms = Timestamp::now().as_millis();
        let Some(slot) = self.slot(offset) else {
            return;
        };
        if slot.first_failure_ms == 0 {
            slot.first_failure_ms = ms;
        }
        slot.last_failure_ms = ms;
        slot.lease = None;
        let slot = *slot;
        self.in_flight -= 1;
        if max.is_some_and(|m| slot.attempt >= m) {
            dead.push(self.dead_letter(w, offset, &slot, "max deliveries exceeded"));
            self.set_state(offset, SlotState::Settled);
        } else if orphaned {
            self.set_state(offset, SlotState::Settled);
        } else if delay.is_zero() {
            self.set_state(offset, SlotState::Ready);
            self.ready.push(Reverse(offset));
            self.wake_consumers();
        } else {
            self.set_state(offset, SlotState::Delayed);
            let at = later(now.get(), delay);
            let earliest = self.delayed.peek().is_none_or(|Reverse((t, _))| at < *t);
            self.delayed.push(Reverse((at, offset)));
            if earliest {
                // Waiting consumers must recompute their wake-up time.
                self.wake_consumers();
            }
        }
    }

    fn set_state(&mut self, offset: u64, state: SlotState) {
        if let Some(s) = self.slot(offset) {
            s.state = state;
        }
    }

    fn dead_letter(&self, w: &Window<'_>, offset: u64, slot: &Slot, reason: &str) -> DeadLetter {
        let mut message = w.get(offset).message.clone();
        wharf_core::DeadLetter {
            reason,
            topic: w.name,
            partition: 0,
            offset: Some(offset),
            group: self.name.as_deref(),
            attempts: slot.attempt,
            first_failure_ms: slot.first_failure_ms,
            last_failure_ms: slot.last_failure_ms,
        }
        .stamp(&mut message);
        let topic = match &self.policy.dead_letter_topic {
            Some(t) => t.to_string(),
            None => name::dead_letter_topic(w.name),
        };
        DeadLetter { topic, message }
    }

    /// Hands out the next message: redeliveries first (lowest offset first), then new ones.
    fn take(
        &mut self,
        w: &Window<'_>,
        consumer: &Consumer,
        now: &mut LazyNow,
    ) -> (Option<Taken>, bool) {
        let mut freed = false;
        if self.stream && self.consumers.first().is_some_and(|c| c.id != consumer.id) {
            return (None, freed);
        }
        while let Some(Reverse(offset)) = self.ready.pop() {
            if self
                .slot(offset)
                .is_none_or(|s| s.state != SlotState::Ready)
            {
                continue;
            }
            if w.get(offset).expired(now) {
                self.set_state(offset, SlotState::Settled);
                freed |= self.trim();
                continue;
            }
            return (Some(self.hand_out(w, offset, consumer, now)), freed);
        }
        let end = w.end();
        while self.cursor < end {
            let offset = self.cursor;
            self.cursor += 1;
            self.slots.push_back(FRESH);
            let entry = w.get(offset);
            if entry.expired(now) {
                freed |= self.trim();
                continue;
            }
            if let Some(at) = entry.deliver_at.filter(|at| *at > now.get()) {
                self.set_state(offset, SlotState::Delayed);
                self.delayed.push(Reverse((at, offset)));
                continue;
            }
            return (Some(self.hand_out(w, offset, consumer, now)), freed);
        }
        (None, freed)
    }

    fn hand_out(
        &mut self,
        w: &Window<'_>,
        offset: u64,
        consumer: &Consumer,
        now: &mut LazyNow,
    ) -> Taken {
        let lease = self.policy.visibility_timeout.map(|d| now.get() + d);
        let Some(slot) = self.slot(offset) else {
            unreachable!("hand_out is only called for offsets in [low, cursor)")
        };
        slot.state = SlotState::InFlight;
        slot.attempt = slot.attempt.saturating_add(1);
        slot.holder = consumer.id;
        slot.lease = lease;
        let attempt = slot.attempt;
        if let Some(l) = lease {
            if self.lease_check.is_none_or(|t| l < t) {
                self.lease_check = Some(l);
                if self.consumers.len() > 1 {
                    self.wake_consumers();
                }
            }
        }
        self.in_flight += 1;
        consumer.in_flight.fetch_add(1, Ordering::AcqRel);
        Taken {
            offset,
            attempt,
            message: w.get(offset).message.clone(),
        }
    }
}

struct State {
    base: u64,
    log: VecDeque<Entry>,
    groups: Vec<Option<Group>>,
    closed: bool,
}

impl State {
    fn end(&self) -> u64 {
        self.base + self.log.len() as u64
    }

    /// Oldest offset any group still needs.
    fn needed(&self) -> u64 {
        self.groups
            .iter()
            .flatten()
            .map(|g| g.low)
            .min()
            .unwrap_or(u64::MAX)
    }

    fn split<'a>(
        &'a mut self,
        name: &'a str,
        gidx: usize,
        gid: u64,
    ) -> Option<(Window<'a>, &'a mut Group)> {
        let State {
            base, log, groups, ..
        } = self;
        let g = groups.get_mut(gidx)?.as_mut().filter(|g| g.id == gid)?;
        Some((
            Window {
                name,
                base: *base,
                log,
            },
            g,
        ))
    }
}

/// A topic: one partition, a bounded window of messages, its groups.
pub(crate) struct Topic {
    pub(crate) name: Arc<str>,
    capacity: usize,
    state: Mutex<State>,
    /// Publishers waiting for room in the window.
    pub(crate) space: Notify,
}

fn unknown(topic: &str, token: u64) -> Error {
    let (offset, attempt) = token_parts(token);
    Error::UnknownDelivery {
        id: format!("{topic}/0/{offset}#{attempt}"),
    }
}

impl Topic {
    pub(crate) fn new(name: Arc<str>, capacity: usize) -> Self {
        Topic {
            name,
            capacity,
            state: Mutex::new(State {
                base: 0,
                log: VecDeque::new(),
                groups: Vec::new(),
                closed: false,
            }),
            space: Notify::new(),
        }
    }

    /// Appends as many `entries` as fit, evicting messages no group needs.
    /// With `force` (dead letters) the window may overflow rather than wait.
    pub(crate) fn append<I: Iterator<Item = Entry>>(
        &self,
        entries: &mut std::iter::Peekable<I>,
        on_receipt: &mut impl FnMut(Receipt),
        force: bool,
    ) -> Append {
        let mut st = lock(&self.state);
        if st.closed && !force {
            return Append::Closed;
        }
        let old_end = st.end();
        let mut needed: Option<u64> = None;
        while entries.peek().is_some() {
            if st.log.len() >= self.capacity {
                let limit = *needed.get_or_insert_with(|| st.needed());
                if st.base < limit {
                    st.log.pop_front();
                    st.base += 1;
                } else if !force {
                    break;
                }
            }
            let Some(entry) = entries.next() else { break };
            on_receipt(Receipt::new(entry.message.id(), 0, Some(st.end())));
            st.log.push_back(entry);
        }
        if st.end() > old_end {
            for g in st.groups.iter().flatten() {
                if g.cursor == old_end {
                    g.wake_consumers();
                }
            }
        }
        if entries.peek().is_none() {
            Append::Done
        } else {
            Append::Full
        }
    }

    /// A group's `low` moved. Waiting publishers are woken once a sizeable
    /// part of the window is free, or when the group has caught up (then no
    /// further progress would come to wake them), not on every ack.
    fn group_progressed(&self, st: &State, low: u64, cursor: u64) {
        let batch = (self.capacity / 16).max(1) as u64;
        if low.saturating_sub(st.base) >= batch || cursor == st.end() {
            self.notify_space(st);
        }
    }

    fn notify_space(&self, st: &State) {
        if st.log.len() >= self.capacity {
            self.space.notify_waiters();
        }
    }

    /// Adds `consumer` to group `group` (a new private group when `None`),
    /// creating it at `start` if it does not exist yet.
    pub(crate) fn join(
        self: &Arc<Self>,
        consumer: &Arc<Consumer>,
        group: Option<&Arc<str>>,
        policy: &Policy,
        start: StartPosition,
        next_id: u64,
    ) -> Result<Joined, Error> {
        let mut st = lock(&self.state);
        if let Some(name) = group {
            let found = st.groups.iter_mut().enumerate().find_map(|(i, g)| {
                g.as_mut()
                    .filter(|g| g.name.as_deref() == Some(&**name))
                    .map(|g| (i, g))
            });
            if let Some((gidx, g)) = found {
                g.consumers.push(consumer.clone());
                g.policy = Policy {
                    stream: g.stream,
                    ..policy.clone()
                };
                return Ok(Joined {
                    topic: self.clone(),
                    gidx,
                    gid: g.id,
                });
            }
        }
        let (base, end) = (st.base, st.end());
        let cursor = match start {
            StartPosition::Latest => end,
            StartPosition::Offset(o) if (base..=end).contains(&o) => o,
            StartPosition::Offset(offset) => {
                return Err(Error::InvalidOffset {
                    topic: self.name.to_string(),
                    partition: 0,
                    offset,
                    start: base,
                    end,
                })
            }
            StartPosition::Time(ts) => st
                .log
                .iter()
                .position(|e| e.message.timestamp() >= ts)
                .map_or(end, |i| base + i as u64),
            // Earliest, and any position added to the core later.
            _ => base,
        };
        let g = Group {
            id: next_id,
            name: group.cloned(),
            policy: policy.clone(),
            stream: policy.stream,
            cursor,
            low: cursor,
            slots: VecDeque::new(),
            ready: BinaryHeap::new(),
            delayed: BinaryHeap::new(),
            lease_check: None,
            in_flight: 0,
            consumers: vec![consumer.clone()],
            orphaned: false,
        };
        tracing::debug!(
            topic = &*self.name,
            group = group.map(|g| &**g),
            cursor,
            "group created"
        );
        let gidx = match st.groups.iter().position(Option::is_none) {
            Some(i) => {
                st.groups[i] = Some(g);
                i
            }
            None => {
                st.groups.push(Some(g));
                st.groups.len() - 1
            }
        };
        Ok(Joined {
            topic: self.clone(),
            gidx,
            gid: next_id,
        })
    }

    /// Removes `consumer` from the group. With `end_private`, a private group
    /// is orphaned: its waiting redeliveries are dropped and it is removed
    /// once its outstanding deliveries are settled.
    pub(crate) fn leave(&self, gidx: usize, gid: u64, consumer: u64, end_private: bool) {
        let mut st = lock(&self.state);
        let Some(g) = st
            .groups
            .get_mut(gidx)
            .and_then(Option::as_mut)
            .filter(|g| g.id == gid)
        else {
            return;
        };
        g.consumers.retain(|c| c.id != consumer);
        if g.stream {
            // The partition passes to the next consumer.
            g.wake_consumers();
        }
        if g.name.is_some() || !end_private {
            return;
        }
        g.orphaned = true;
        for s in &mut g.slots {
            if matches!(s.state, SlotState::Ready | SlotState::Delayed) {
                s.state = SlotState::Settled;
            }
        }
        g.ready.clear();
        g.delayed.clear();
        if g.in_flight == 0 {
            st.groups[gidx] = None;
        } else {
            g.trim();
        }
        self.notify_space(&st);
    }

    /// Expires due leases and delays, then takes one message if `consumer` has room.
    pub(crate) fn poll(
        &self,
        gidx: usize,
        gid: u64,
        consumer: &Consumer,
        now: &mut LazyNow,
        dead: &mut Vec<DeadLetter>,
    ) -> Polled {
        let mut st = lock(&self.state);
        let Some((w, g)) = st.split(&self.name, gidx, gid) else {
            return Polled::default();
        };
        let mut freed = g.maintain(&w, now, dead);
        let mut polled = Polled::default();
        if consumer.can_take() {
            let (taken, f) = g.take(&w, consumer, now);
            freed |= f;
            polled.taken = taken;
        }
        if polled.taken.is_none() {
            polled.deadline = g.deadline();
        }
        let (low, cursor) = (g.low, g.cursor);
        if freed {
            self.group_progressed(&st, low, cursor);
        }
        polled
    }

    /// Settles the delivery `token` held by `consumer`.
    pub(crate) fn settle(
        &self,
        gidx: usize,
        gid: u64,
        consumer: &Consumer,
        token: u64,
        settlement: Settlement,
    ) -> Result<Option<DeadLetter>, Error> {
        let mut st = lock(&self.state);
        let (offset, attempt) = token_parts(token);
        let mut now = LazyNow::default();
        let mut dead = Vec::new();
        {
            let Some((w, g)) = st.split(&self.name, gidx, gid) else {
                return Err(unknown(&self.name, token));
            };
            let slot = match g.slot(offset) {
                Some(s)
                    if s.state == SlotState::InFlight
                        && s.attempt & 0xFFFF == attempt
                        && s.holder == consumer.id =>
                {
                    s
                }
                _ => return Err(unknown(&self.name, token)),
            };
            match settlement {
                Settlement::Ack => {
                    slot.state = SlotState::Settled;
                    g.in_flight -= 1;
                }
                Settlement::Nack { delay } => g.fail(&w, offset, delay, &mut now, &mut dead),
                Settlement::Reject { reason } => {
                    let ms = Timestamp::now().as_millis();
                    if slot.first_failure_ms == 0 {
                        slot.first_failure_ms = ms;
                    }
                    slot.last_failure_ms = ms;
                    slot.state = SlotState::Settled;
                    let snapshot = *slot;
                    g.in_flight -= 1;
                    dead.push(g.dead_letter(&w, offset, &snapshot, &reason));
                }
                _ => {
                    return Err(Error::InvalidArgument {
                        name: "settlement",
                        reason: "not supported by the memory backend".into(),
                    })
                }
            }
            consumer.unhold();
            self.after_settle(&mut st, gidx);
        }
        Ok(dead.pop())
    }

    /// Acknowledges the deliveries `tokens` held by `consumer` under one
    /// lock; the unknown ones go to `failed`.
    pub(crate) fn ack_many(
        &self,
        gidx: usize,
        gid: u64,
        consumer: &Consumer,
        tokens: &[u64],
        failed: &mut Vec<(u64, Error)>,
    ) {
        let mut st = lock(&self.state);
        let Some((_, g)) = st.split(&self.name, gidx, gid) else {
            failed.extend(tokens.iter().map(|&t| (t, unknown(&self.name, t))));
            return;
        };
        let mut acked = 0;
        for &token in tokens {
            let (offset, attempt) = token_parts(token);
            match g.slot(offset) {
                Some(s)
                    if s.state == SlotState::InFlight
                        && s.attempt & 0xFFFF == attempt
                        && s.holder == consumer.id =>
                {
                    s.state = SlotState::Settled;
                    g.in_flight -= 1;
                    acked += 1;
                }
                _ => failed.push((token, unknown(&self.name, token))),
            }
        }
        if acked == 0 {
            return;
        }
        consumer.unhold_n(acked);
        self.after_settle(&mut st, gidx);
    }

    /// After settlements in group `gidx`: an orphaned group goes once nothing
    /// is in flight; otherwise its low mark moves past what is settled.
    fn after_settle(&self, st: &mut State, gidx: usize) {
        let Some(g) = st.groups.get_mut(gidx).and_then(Option::as_mut) else {
            return;
        };
        if g.orphaned && g.in_flight == 0 {
            st.groups[gidx] = None;
            self.notify_space(st);
        } else if g.trim() {
            let (low, cursor) = (g.low, g.cursor);
            self.group_progressed(st, low, cursor);
        }
    }

    /// Moves the lease of `token` to `now + by`.
    pub(crate) fn extend(
        &self,
        gidx: usize,
        gid: u64,
        consumer: &Consumer,
        token: u64,
        by: Duration,
    ) -> Result<(), Error> {
        let mut st = lock(&self.state);
        let (offset, attempt) = token_parts(token);
        let Some((_, g)) = st.split(&self.name, gidx, gid) else {
            return Err(unknown(&self.name, token));
        };
        let at = later(Instant::now(), by);
        match g.slot(offset) {
            Some(s)
                if s.state == SlotState::InFlight
                    && s.attempt & 0xFFFF == attempt
                    && s.holder == consumer.id =>
            {
                if s.lease.is_some() {
                    s.lease = Some(at);
                    if g.lease_check.is_none_or(|t| at < t) {
                        g.lease_check = Some(at);
                    }
                }
                Ok(())
            }
            _ => Err(unknown(&self.name, token)),
        }
    }

    /// Stops publishes and wakes everyone waiting on this topic.
    pub(crate) fn close(&self) {
        let mut st = lock(&self.state);
        st.closed = true;
        for g in st.groups.iter().flatten() {
            g.wake_consumers();
        }
        drop(st);
        self.space.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_round_trips_offset_and_attempt_mod_2_16() {
        assert_eq!(token_parts(token(0, 1)), (0, 1));
        assert_eq!(
            token_parts(token(OFFSET_MASK, 0xFFFF)),
            (OFFSET_MASK, 0xFFFF)
        );
        assert_eq!(token_parts(token(42, 0x1_0002)), (42, 2));
        assert_ne!(token(7, 1), token(7, 2), "attempts make tokens distinct");
    }
}
