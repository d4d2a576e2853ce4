//! The consumer side: a subscription's delivery stream and its acker.
//!
//! A stream polls the groups it joined (one per matching topic) under each
//! topic's lock, takes a message only synchronously after waking (so `next`
//! is cancel safe), and otherwise sleeps on its [`Consumer`]'s `Notify`,
//! bounded by the earliest lease or delay deadline of its groups.

use std::pin::pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio::time::Instant;
use wharf_core::{Acker, Delivery, DeliveryInfo, DeliveryStream, Result, Settlement};

use crate::topic::{lock, token, Consumer, DeadLetter, Joined, LazyNow};
use crate::Shared;

/// Settles deliveries of one subscription on one topic; shared by all of them.
pub(crate) struct MemoryAcker {
    shared: Arc<Shared>,
    joined: Joined,
    consumer: Arc<Consumer>,
}

impl MemoryAcker {
    fn settle_now(&self, token: u64, settlement: Settlement) -> Result<()> {
        let j = &self.joined;
        let dead = j
            .topic
            .settle(j.gidx, j.gid, &self.consumer, token, settlement)?;
        if let Some(d) = dead {
            self.shared.dead_letter(d);
        }
        Ok(())
    }
}

#[async_trait]
impl Acker for MemoryAcker {
    async fn settle(&self, token: u64, settlement: Settlement) -> Result<()> {
        self.settle_now(token, settlement)
    }

    async fn extend(&self, token: u64, by: Duration) -> Result<()> {
        let j = &self.joined;
        j.topic.extend(j.gidx, j.gid, &self.consumer, token, by)
    }

    async fn ack_many(&self, tokens: &[u64], failed: &mut Vec<(u64, wharf_core::Error)>) {
        let j = &self.joined;
        j.topic
            .ack_many(j.gidx, j.gid, &self.consumer, tokens, failed);
    }

    fn release(&self, token: u64) {
        // An unknown token here means the lease already expired and the
        // message was redelivered: nothing left to release.
        let _ = self.settle_now(
            token,
            Settlement::Nack {
                delay: Duration::ZERO,
            },
        );
    }
}

struct Attachment {
    joined: Joined,
    acker: Arc<dyn Acker>,
}

/// The [`DeliveryStream`] behind every memory [`wharf_core::Subscription`].
pub(crate) struct MemoryStream {
    shared: Arc<Shared>,
    consumer: Arc<Consumer>,
    attachments: Vec<Attachment>,
    next_index: usize,
    closed: bool,
    dead: Vec<DeadLetter>,
}

impl MemoryStream {
    pub(crate) fn new(shared: Arc<Shared>, consumer: Arc<Consumer>, joined: Vec<Joined>) -> Self {
        let mut s = MemoryStream {
            shared,
            consumer,
            attachments: Vec::with_capacity(joined.len()),
            next_index: 0,
            closed: false,
            dead: Vec::new(),
        };
        for j in joined {
            s.attach(j);
        }
        s
    }

    fn attach(&mut self, joined: Joined) {
        let acker: Arc<dyn Acker> = Arc::new(MemoryAcker {
            shared: self.shared.clone(),
            joined: joined.clone(),
            consumer: self.consumer.clone(),
        });
        self.attachments.push(Attachment { joined, acker });
    }

    fn adopt_pending(&mut self) {
        if self.consumer.has_pending.swap(false, Ordering::AcqRel) {
            let pending = std::mem::take(&mut *lock(&self.consumer.pending));
            for j in pending {
                self.attach(j);
            }
        }
    }

    fn ended(&self) -> bool {
        self.closed
            || self.consumer.closed.load(Ordering::Acquire)
            || self.shared.closed.load(Ordering::Acquire)
    }

    /// One pass over the joined groups: a delivery, or when to look again.
    fn poll_once(&mut self) -> (Option<Delivery>, Option<Instant>) {
        let n = self.attachments.len();
        let mut now = LazyNow::default();
        let mut deadline: Option<Instant> = None;
        for k in 0..n {
            let i = (self.next_index + k) % n;
            let a = &self.attachments[i];
            let j = &a.joined;
            let polled = j
                .topic
                .poll(j.gidx, j.gid, &self.consumer, &mut now, &mut self.dead);
            if !self.dead.is_empty() {
                for d in self.dead.drain(..) {
                    self.shared.dead_letter(d);
                }
            }
            if let Some(t) = polled.taken {
                self.next_index = (i + 1) % n;
                let info = DeliveryInfo {
                    topic: j.topic.name.clone(),
                    partition: 0,
                    offset: Some(t.offset),
                    attempt: t.attempt,
                };
                let d = Delivery::new(t.message, info, a.acker.clone(), token(t.offset, t.attempt));
                return (Some(d), None);
            }
            if let Some(t) = polled.deadline {
                deadline = Some(deadline.map_or(t, |d| d.min(t)));
            }
        }
        (None, deadline)
    }

    fn detach(&mut self, end_private: bool) {
        self.adopt_pending();
        self.shared.forget_consumer(self.consumer.id);
        for a in &self.attachments {
            let j = &a.joined;
            j.topic.leave(j.gidx, j.gid, self.consumer.id, end_private);
        }
    }
}

#[async_trait]
impl DeliveryStream for MemoryStream {
    async fn next(&mut self) -> Option<Result<Delivery>> {
        loop {
            if self.ended() {
                return None;
            }
            self.adopt_pending();
            // Fast path: something is ready, no need to register for a wake-up.
            if let (Some(d), _) = self.poll_once() {
                return Some(Ok(d));
            }
            let consumer = self.consumer.clone();
            let mut notified = pin!(consumer.notify.notified());
            notified.as_mut().enable();
            self.adopt_pending();
            let (delivery, deadline) = self.poll_once();
            if let Some(d) = delivery {
                return Some(Ok(d));
            }
            if self.ended() {
                return None;
            }
            match deadline {
                Some(t) => {
                    let _ = tokio::time::timeout_at(t, notified).await;
                }
                None => notified.await,
            }
        }
    }

    fn try_next(&mut self) -> Option<Result<Delivery>> {
        if self.ended() {
            return None;
        }
        self.adopt_pending();
        self.poll_once().0.map(Ok)
    }

    async fn close(&mut self) -> Result<()> {
        if !self.closed {
            self.closed = true;
            self.consumer.closed.store(true, Ordering::Release);
            self.detach(false);
        }
        Ok(())
    }
}

impl Drop for MemoryStream {
    fn drop(&mut self) {
        self.consumer.closed.store(true, Ordering::Release);
        self.detach(true);
    }
}
