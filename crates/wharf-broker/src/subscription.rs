//! A broker subscription: the stream that takes messages from its group
//! bindings, and the acker that settles them.
//!
//! A subscription binds to one [`GroupTopic`] per matching topic (more appear
//! when a new topic matches its pattern). Taking happens in small batches
//! under each binding's mutex; deliveries wait in a local buffer, so
//! `try_next` is a pop. Waiting is on one `Notify` per subscription, woken by
//! appends to its topics, settlements in its groups, and broker shutdown.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::Notify;
use wharf_core::{
    Acker, Delivery, DeliveryInfo, DeliveryStream, Error, Result, Settlement, TopicPattern,
};

use crate::group::{DeadLetter, GroupTopic, MemberState, Policy, Taken};
use crate::Inner;

/// Most messages taken from a binding per lock acquisition.
const TAKE_BATCH: usize = 64;

pub(crate) struct Binding {
    pub gt: Arc<GroupTopic>,
    pub policy: Arc<Policy>,
}

/// State shared by a subscription's stream, its acker and the broker.
pub(crate) struct SubShared {
    /// Member id of this consumer in its groups.
    pub id: u64,
    pub pattern: TopicPattern,
    pub options: wharf_core::SubscribeOptions,
    pub bindings: Mutex<Vec<Binding>>,
    pub notify: Arc<Notify>,
    pub closed: AtomicBool,
    /// The highest lease id handed to the application (deliveries above it
    /// wait unseen in the stream's buffer), which its groups read when they
    /// persist attempt counts, and whether a rebalance revoked a partition.
    pub member: Arc<MemberState>,
}

impl SubShared {
    /// Ends the subscription: no more deliveries, and it leaves its groups
    /// (their partitions rebalance to the other members). Idempotent.
    pub(crate) fn end(&self) {
        if self.closed.swap(true, Ordering::AcqRel) {
            return;
        }
        for b in self
            .bindings
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
        {
            b.gt.leave(self.id);
        }
    }

    pub(crate) fn has_binding(&self, topic: &str) -> bool {
        self.bindings
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .any(|b| b.gt.topic.name() == topic)
    }
}

/// What a lease id stands for: a message of one of the acker's bindings.
struct LeaseRef {
    /// Index into [`Leases::bindings`].
    binding: u32,
    partition: u32,
    offset: u64,
}

/// A subscription's outstanding leases. Bindings are numbered once, so a
/// lease costs no reference counting of its group and policy.
#[derive(Default)]
struct Leases {
    map: LeaseTable,
    bindings: Vec<(Arc<GroupTopic>, Arc<Policy>)>,
}

/// Lease ids → what they stand for, in increasing lease order. Lease ids
/// come from one broker-wide counter and a subscription takes them in
/// order, so adding one is a push at the back, and acknowledging in
/// delivery order pops the front; any other lookup is a binary search.
/// Settled entries out of order become holes, compacted away once they
/// outnumber the live ones (so a delivery held for long costs no more than
/// the live ones around it).
#[derive(Default)]
struct LeaseTable {
    entries: VecDeque<(u64, Option<LeaseRef>)>,
    live: usize,
}

impl LeaseTable {
    fn insert(&mut self, lease: u64, r: LeaseRef) {
        match self.entries.back() {
            Some(&(last, _)) if last >= lease => {
                // Not reached (ids increase); kept correct all the same.
                match self.entries.binary_search_by_key(&lease, |e| e.0) {
                    Ok(i) => {
                        if self.entries[i].1.replace(r).is_none() {
                            self.live += 1;
                        }
                    }
                    Err(i) => {
                        self.entries.insert(i, (lease, Some(r)));
                        self.live += 1;
                    }
                }
            }
            _ => {
                self.entries.push_back((lease, Some(r)));
                self.live += 1;
            }
        }
    }

    fn position(&self, lease: u64) -> Option<usize> {
        match self.entries.front() {
            Some(&(first, _)) if first == lease => Some(0),
            _ => self.entries.binary_search_by_key(&lease, |e| e.0).ok(),
        }
    }

    fn get(&self, lease: u64) -> Option<&LeaseRef> {
        self.entries[self.position(lease)?].1.as_ref()
    }

    fn remove(&mut self, lease: u64) -> Option<LeaseRef> {
        let i = self.position(lease)?;
        let r = self.entries[i].1.take()?;
        self.live -= 1;
        while let Some((_, None)) = self.entries.front() {
            self.entries.pop_front();
        }
        if self.entries.len() > 2 * self.live + 64 {
            self.entries.retain(|e| e.1.is_some());
        }
        Some(r)
    }
}

impl Leases {
    /// The number of `gt`'s binding, added on first use (bindings are few
    /// and only ever added, like the subscription's).
    fn binding(&mut self, gt: &Arc<GroupTopic>, policy: &Arc<Policy>) -> u32 {
        let i = match self
            .bindings
            .iter()
            .position(|(g, p)| Arc::ptr_eq(g, gt) && Arc::ptr_eq(p, policy))
        {
            Some(i) => i,
            None => {
                self.bindings.push((gt.clone(), policy.clone()));
                self.bindings.len() - 1
            }
        };
        u32::try_from(i).expect("binding count fits u32")
    }
}

/// A removed lease: the group and policy to settle it with, and the message.
struct Held {
    gt: Arc<GroupTopic>,
    policy: Arc<Policy>,
    partition: u32,
    offset: u64,
}

/// Settles a subscription's deliveries by lease id.
pub(crate) struct SubAcker {
    inner: Weak<Inner>,
    leases: Mutex<Leases>,
    held: AtomicUsize,
    notify: Arc<Notify>,
}

impl SubAcker {
    fn remove(&self, lease: u64) -> Option<Held> {
        let r = {
            let mut leases = self.leases.lock().unwrap_or_else(|p| p.into_inner());
            leases.map.remove(lease).map(|r| {
                let (gt, policy) = &leases.bindings[r.binding as usize];
                Held {
                    gt: gt.clone(),
                    policy: policy.clone(),
                    partition: r.partition,
                    offset: r.offset,
                }
            })
        };
        if r.is_some() {
            self.held.fetch_sub(1, Ordering::AcqRel);
            self.notify.notify_one();
        }
        r
    }
}

#[async_trait]
impl Acker for SubAcker {
    async fn settle(&self, token: u64, settlement: Settlement) -> Result<()> {
        let r = self.remove(token).ok_or_else(|| Error::UnknownDelivery {
            id: token.to_string(),
        })?;
        let inner = self
            .inner
            .upgrade()
            .ok_or(Error::Closed { what: "broker" })?;
        let dead = r.gt.settle(
            r.partition,
            r.offset,
            token,
            settlement,
            &r.policy,
            &inner.clock,
        )?;
        if let Some(dl) = dead {
            inner.spawn_dead_letter(r.gt.clone(), dl).await?;
        }
        Ok(())
    }

    async fn ack_many(&self, tokens: &[u64], failed: &mut Vec<(u64, Error)>) {
        if self.inner.strong_count() == 0 {
            failed.extend(
                tokens
                    .iter()
                    .map(|&t| (t, Error::Closed { what: "broker" })),
            );
            return;
        }
        // One pass under the lease map's lock, then one lock per group.
        let mut groups: Vec<(Arc<GroupTopic>, Vec<(u32, u64, u64)>)> = Vec::new();
        {
            let mut leases = self.leases.lock().unwrap_or_else(|p| p.into_inner());
            let leases = &mut *leases;
            let mut last: Option<(u32, usize)> = None;
            for &token in tokens {
                let Some(r) = leases.map.remove(token) else {
                    failed.push((
                        token,
                        Error::UnknownDelivery {
                            id: token.to_string(),
                        },
                    ));
                    continue;
                };
                let ack = (r.partition, r.offset, token);
                let gt = &leases.bindings[r.binding as usize].0;
                let at = match last {
                    Some((b, at)) if b == r.binding => at,
                    _ => match groups.iter().position(|(g, _)| Arc::ptr_eq(g, gt)) {
                        Some(at) => at,
                        None => {
                            groups.push((gt.clone(), Vec::with_capacity(tokens.len())));
                            groups.len() - 1
                        }
                    },
                };
                last = Some((r.binding, at));
                groups[at].1.push(ack);
            }
        }
        let removed: usize = groups.iter().map(|(_, a)| a.len()).sum();
        if removed > 0 {
            self.held.fetch_sub(removed, Ordering::AcqRel);
            self.notify.notify_one();
        }
        for (gt, acks) in &groups {
            gt.ack_many(acks, failed);
        }
    }

    async fn extend(&self, token: u64, by: Duration) -> Result<()> {
        let inner = self
            .inner
            .upgrade()
            .ok_or(Error::Closed { what: "broker" })?;
        let (gt, partition, offset) = {
            let leases = self.leases.lock().unwrap_or_else(|p| p.into_inner());
            let r = leases
                .map
                .get(token)
                .ok_or_else(|| Error::UnknownDelivery {
                    id: token.to_string(),
                })?;
            let gt = &leases.bindings[r.binding as usize].0;
            (gt.clone(), r.partition, r.offset)
        };
        gt.extend(partition, offset, token, inner.clock.after(by))
    }

    fn release_unseen(&self, token: u64) {
        if let Some(r) = self.remove(token) {
            // An error means the lease is gone already (expired, or the
            // group was deleted): nothing to give back.
            let _ = r.gt.return_unseen(r.partition, r.offset, token);
        }
    }

    fn release(&self, token: u64) {
        let Some(r) = self.remove(token) else {
            return;
        };
        let Some(inner) = self.inner.upgrade() else {
            return;
        };
        let nack = Settlement::Nack {
            delay: Duration::ZERO,
        };
        if let Ok(Some(dl)) =
            r.gt.settle(r.partition, r.offset, token, nack, &r.policy, &inner.clock)
        {
            match tokio::runtime::Handle::try_current() {
                Ok(_) => {
                    drop(inner.spawn_dead_letter(r.gt.clone(), dl));
                }
                Err(_) => r.gt.abort_dead(dl.partition, dl.offset),
            }
        }
    }
}

/// The [`DeliveryStream`] of a broker subscription.
pub(crate) struct BrokerStream {
    inner: Arc<Inner>,
    shared: Arc<SubShared>,
    acker: Arc<SubAcker>,
    /// Deliveries taken but not handed out yet, with their lease ids (in
    /// increasing order).
    buf: VecDeque<(u64, Delivery)>,
    /// The lease of a buffered delivery to commit before handing it out
    /// (see [`Taken::persist_first`](crate::group::Taken)), at most one
    /// per partition and broker life.
    persist_first: Vec<u64>,
    rr: usize,
    dead: Vec<DeadLetter>,
}

impl BrokerStream {
    pub(crate) fn new(inner: Arc<Inner>, shared: Arc<SubShared>) -> Self {
        let acker = Arc::new(SubAcker {
            inner: Arc::downgrade(&inner),
            leases: Mutex::new(Leases::default()),
            held: AtomicUsize::new(0),
            notify: shared.notify.clone(),
        });
        BrokerStream {
            inner,
            shared,
            acker,
            buf: VecDeque::new(),
            persist_first: Vec::new(),
            rr: 0,
            dead: Vec::new(),
        }
    }

    fn ended(&self) -> bool {
        self.shared.closed.load(Ordering::Acquire) || self.inner.is_closed()
    }

    /// Gives back what the buffer holds: never handed out, so no attempt
    /// is counted for it.
    fn return_unseen(&mut self) {
        self.persist_first.clear();
        for (_, d) in self.buf.drain(..) {
            d.release_unseen();
        }
    }

    fn front_needs_persist(&self) -> bool {
        !self.persist_first.is_empty()
            && self
                .buf
                .front()
                .is_some_and(|(l, _)| self.persist_first.contains(l))
    }

    /// Commits the attempt of the front delivery before it is handed out,
    /// if it must be (counted as handed: a crash from now on is a failed
    /// attempt of it). Cancel safe: the delivery stays buffered until the
    /// commit is done.
    async fn persist_front(&mut self) {
        if !self.front_needs_persist() {
            return;
        }
        let Some(&(lease, _)) = self.buf.front() else {
            return;
        };
        self.shared.member.handed.store(lease, Ordering::Release);
        for b in self
            .shared
            .bindings
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
        {
            b.gt.mark_dirty();
        }
        let inner = self.inner.clone();
        match tokio::task::spawn_blocking(move || inner.commit(false)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "committing a delivery attempt failed; delivering it anyway")
            }
            Err(e) => tracing::warn!(error = %e, "commit task failed"),
        }
        self.persist_first.retain(|&l| l != lease);
    }

    /// The next buffered delivery, now handed to the application.
    fn pop(&mut self) -> Option<Delivery> {
        if self.shared.member.revoked.load(Ordering::Acquire) {
            self.give_back_revoked();
        }
        let (lease, d) = self.buf.pop_front()?;
        self.shared.member.handed.store(lease, Ordering::Release);
        Some(d)
    }

    /// Gives back, unseen, the buffered deliveries of partitions a
    /// rebalance moved to another member (stream mode), so their hand-off
    /// does not wait for this consumer to work through its buffer.
    fn give_back_revoked(&mut self) {
        self.shared.member.revoked.store(false, Ordering::Release);
        let bindings: Vec<Arc<GroupTopic>> = self
            .shared
            .bindings
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|b| b.gt.clone())
            .collect();
        let id = self.shared.id;
        let (keep, give): (VecDeque<_>, VecDeque<_>) =
            self.buf.drain(..).partition(|(_, d): &(u64, Delivery)| {
                let info = d.info();
                bindings
                    .iter()
                    .find(|gt| *gt.topic.name() == *info.topic)
                    .is_none_or(|gt| gt.owns(id, info.partition))
            });
        self.buf = keep;
        for (_, d) in give {
            d.release_unseen();
        }
    }

    /// Takes what is ready into the buffer; returns when to look again.
    fn fill(&mut self) -> Result<Option<tokio::time::Instant>> {
        let max = self.shared.options.max_in_flight_limit();
        let held = self.acker.held.load(Ordering::Acquire);
        let mut room = max.saturating_sub(held).min(TAKE_BATCH);
        let bindings: Vec<(Arc<GroupTopic>, Arc<Policy>)> = self
            .shared
            .bindings
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|b| (b.gt.clone(), b.policy.clone()))
            .collect();
        let n = bindings.len();
        let mut wake: Option<tokio::time::Instant> = None;
        self.rr = self.rr.wrapping_add(1);
        for k in 0..n {
            let (gt, policy) = &bindings[(self.rr + k) % n];
            // Deliveries are built as the group hands messages out (no
            // intermediate vector); the lease map's lock is taken first,
            // as everywhere else, and no group lock ever takes it.
            let mut leases = self.acker.leases.lock().unwrap_or_else(|p| p.into_inner());
            let binding = leases.binding(gt, policy);
            let topic = gt.topic.name_arc();
            let acker = &self.acker;
            let buf = &mut self.buf;
            let persist_first = &mut self.persist_first;
            let mut count = 0;
            let w = gt.take(
                self.shared.id,
                policy,
                &self.inner.clock,
                &self.inner.lease_ids,
                room,
                |t: Taken| {
                    count += 1;
                    leases.map.insert(
                        t.lease,
                        LeaseRef {
                            binding,
                            partition: t.partition,
                            offset: t.offset,
                        },
                    );
                    let info = DeliveryInfo {
                        topic: topic.clone(),
                        partition: t.partition,
                        offset: Some(t.offset),
                        attempt: t.attempt,
                    };
                    if t.persist_first {
                        persist_first.push(t.lease);
                    }
                    let acker: Arc<dyn Acker> = acker.clone();
                    buf.push_back((t.lease, Delivery::new(t.msg, info, acker, t.lease)));
                },
                &mut self.dead,
            );
            drop(leases);
            if count > 0 {
                self.acker.held.fetch_add(count, Ordering::AcqRel);
                room -= count;
            }
            let w = w?;
            if let Some(w) = w {
                wake = Some(wake.map_or(w, |x| x.min(w)));
            }
            for dl in self.dead.drain(..) {
                drop(self.inner.spawn_dead_letter(gt.clone(), dl));
            }
            if room == 0 {
                break;
            }
        }
        Ok(wake)
    }
}

#[async_trait]
impl DeliveryStream for BrokerStream {
    async fn next(&mut self) -> Option<Result<Delivery>> {
        loop {
            if self.ended() {
                self.return_unseen();
                return None;
            }
            self.persist_front().await;
            if let Some(d) = self.pop() {
                return Some(Ok(d));
            }
            let wake = match self.fill() {
                Ok(w) => w,
                Err(e) => return Some(Err(e)),
            };
            if !self.buf.is_empty() {
                continue;
            }
            let notified = self.shared.notify.notified();
            match wake {
                Some(at) => {
                    tokio::select! {
                        _ = notified => {}
                        _ = tokio::time::sleep_until(at) => {}
                    }
                }
                None => notified.await,
            }
        }
    }

    fn try_next(&mut self) -> Option<Result<Delivery>> {
        if self.ended() {
            return None;
        }
        if self.buf.is_empty() {
            if let Err(e) = self.fill() {
                return Some(Err(e));
            }
        }
        if self.front_needs_persist() {
            // Handed out by `next`, which can wait for the commit.
            return None;
        }
        self.pop().map(Ok)
    }

    async fn close(&mut self) -> Result<()> {
        self.shared.end();
        self.return_unseen();
        Ok(())
    }
}

impl Drop for BrokerStream {
    fn drop(&mut self) {
        self.shared.end();
        self.return_unseen();
        self.inner.forget_subscription(&self.shared);
    }
}
