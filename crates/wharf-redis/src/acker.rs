//! Settling stream entries: XACK, parking nacked entries in the retry
//! sorted set (scored by when they are due), XCLAIM to extend a lease, and
//! dead-lettering (XADD to the DLQ stream with `wharf-dlq-*` headers, then XACK).
//!
//! A private subscription (no group) has nothing to ack on the server: its
//! nacks go back to the subscription's own queue.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use async_trait::async_trait;
use redis::Value;
use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinHandle;
use wharf_core::{name, Acker, Error, Message, Result, Settlement, Timestamp};

use crate::backend::Shared;
use crate::error::map;

/// A delivery handed out and not yet settled.
pub(crate) struct Pending {
    pub(crate) topic: Arc<str>,
    pub(crate) entry_id: String,
    pub(crate) message: Message,
    pub(crate) attempt: u32,
    pub(crate) keeper: Option<JoinHandle<()>>,
}

/// Group subscriptions settle on the server; private ones locally.
pub(crate) enum Mode {
    Group {
        group: String,
        consumer: String,
    },
    Private {
        requeue: mpsc::UnboundedSender<(Pending, Duration)>,
    },
}

/// Settles the deliveries of one subscription.
pub(crate) struct RedisAcker {
    pub(crate) shared: Arc<Shared>,
    pub(crate) mode: Mode,
    pub(crate) dead_letter_topic: Option<String>,
    pub(crate) max_deliveries: Option<u32>,
    pub(crate) lease: Duration,
    pub(crate) permits: Arc<Semaphore>,
    pub(crate) pending: Mutex<HashMap<u64, Pending>>,
    pub(crate) next_token: AtomicU64,
    pub(crate) runtime: tokio::runtime::Handle,
    pub(crate) release_queue: Mutex<VecDeque<Pending>>,
    pub(crate) release_lock: tokio::sync::Mutex<()>,
    pub(crate) me: Weak<RedisAcker>,
}

fn now_ms() -> u64 {
    Timestamp::now().as_millis()
}

impl RedisAcker {
    pub(crate) fn register(&self, p: Pending) -> u64 {
        let token = self.next_token.fetch_add(1, Ordering::Relaxed);
        self.lock().insert(token, p);
        token
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Pending>> {
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn take(&self, token: u64) -> Result<Pending> {
        let mut p = self.lock().remove(&token).ok_or(Error::UnknownDelivery {
            id: token.to_string(),
        })?;
        if let Some(k) = p.keeper.take() {
            k.abort();
        }
        self.permits.add_permits(1);
        Ok(p)
    }

    fn group(&self) -> Option<&str> {
        match &self.mode {
            Mode::Group { group, .. } => Some(group),
            Mode::Private { .. } => None,
        }
    }

    fn failures(&self) -> std::sync::MutexGuard<'_, HashMap<(String, String), u64>> {
        self.shared
            .first_failures
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    fn failure_key(&self, p: &Pending) -> (String, String) {
        (
            format!("{}/{}", p.topic, self.group().unwrap_or("")),
            p.entry_id.clone(),
        )
    }

    async fn xack(&self, topic: &str, id: &str) -> Result<()> {
        let Mode::Group { group, .. } = &self.mode else {
            return Ok(());
        };
        let _: i64 = redis::cmd("XACK")
            .arg(self.shared.stream_key(topic))
            .arg(group)
            .arg(id)
            .query_async(&mut self.shared.conn.clone())
            .await
            .map_err(|e| map("XACK", e))?;
        Ok(())
    }

    /// A failed attempt: redeliver after `delay`, or dead-letter on the last one.
    /// `Ok(false)` when the delivery was stale (acked or redelivered since).
    async fn fail(&self, p: Pending, delay: Duration) -> Result<bool> {
        let key = self.failure_key(&p);
        self.failures().entry(key).or_insert_with(now_ms);
        if let Some(max) = self.max_deliveries.filter(|m| p.attempt >= *m) {
            self.dead_letter(p, &format!("max deliveries ({max}) exceeded"))
                .await?;
            return Ok(true);
        }
        match &self.mode {
            Mode::Private { requeue } => {
                let _ = requeue.send((p, delay));
                Ok(true)
            }
            Mode::Group { group, consumer } => {
                let due =
                    now_ms().saturating_add(u64::try_from(delay.as_millis()).unwrap_or(u64::MAX));
                let mut cmd = redis::cmd("EVALSHA");
                cmd.arg(&self.shared.shas.park)
                    .arg(2)
                    .arg(self.shared.stream_key(&p.topic))
                    .arg(self.shared.retry_key(&p.topic, group))
                    .arg(group)
                    .arg(consumer)
                    .arg(&p.entry_id)
                    .arg(p.attempt)
                    .arg(due);
                let parked: i64 = self
                    .shared
                    .eval(&mut self.shared.conn.clone(), &cmd, "nack")
                    .await?;
                Ok(parked == 1)
            }
        }
    }

    pub(crate) async fn dead_letter(&self, p: Pending, reason: &str) -> Result<()> {
        let now = now_ms();
        let first = self.failures().remove(&self.failure_key(&p)).unwrap_or(now);
        let mut copy = p.message.clone();
        wharf_core::DeadLetter {
            reason,
            topic: &p.topic,
            partition: 0,
            offset: crate::wire::offset(&p.entry_id),
            group: self.group(),
            attempts: p.attempt,
            first_failure_ms: first,
            last_failure_ms: now,
        }
        .stamp(&mut copy);
        let topic = self
            .dead_letter_topic
            .clone()
            .unwrap_or_else(|| name::dead_letter_topic(&p.topic));
        self.shared.append(&topic, &copy).await?;
        self.xack(&p.topic, &p.entry_id).await
    }

    /// Nacks `p` after every earlier release, in drop order.
    pub(crate) fn requeue(&self, p: Pending) {
        self.release_queue
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push_back(p);
        if let Some(me) = self.me.upgrade() {
            self.runtime.spawn(async move { me.drain_releases().await });
        }
    }

    async fn drain_releases(&self) {
        let _order = self.release_lock.lock().await;
        loop {
            let next = self
                .release_queue
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .pop_front();
            let Some(p) = next else { break };
            if let Err(e) = self.fail(p, Duration::ZERO).await {
                tracing::warn!(error = %e, "releasing a dropped redis delivery failed");
            }
        }
    }

    async fn touch(
        shared: &Shared,
        topic: &str,
        group: &str,
        consumer: &str,
        id: &str,
    ) -> Result<()> {
        let _: Value = redis::cmd("XCLAIM")
            .arg(shared.stream_key(topic))
            .arg(group)
            .arg(consumer)
            .arg(0)
            .arg(id)
            .arg("JUSTID")
            .query_async(&mut shared.conn.clone())
            .await
            .map_err(|e| map("XCLAIM", e))?;
        Ok(())
    }
}

#[async_trait]
impl Acker for RedisAcker {
    async fn settle(&self, token: u64, settlement: Settlement) -> Result<()> {
        let p = self.take(token)?;
        match settlement {
            Settlement::Ack => {
                self.failures().remove(&self.failure_key(&p));
                self.xack(&p.topic, &p.entry_id).await
            }
            Settlement::Nack { delay } => {
                let id = p.entry_id.clone();
                if self.fail(p, delay).await? {
                    Ok(())
                } else {
                    Err(Error::UnknownDelivery { id })
                }
            }
            Settlement::Reject { reason } => {
                let key = self.failure_key(&p);
                self.failures().entry(key).or_insert_with(now_ms);
                self.dead_letter(p, &reason).await
            }
            _ => Err(Error::Unsupported {
                backend: crate::backend::NAME,
                capability: wharf_core::Capability::DeadLetter,
            }),
        }
    }

    async fn extend(&self, token: u64, by: Duration) -> Result<()> {
        let (topic, id) = match self.lock().get(&token) {
            Some(p) => (p.topic.clone(), p.entry_id.clone()),
            None => {
                return Err(Error::UnknownDelivery {
                    id: token.to_string(),
                })
            }
        };
        let Mode::Group { group, consumer } = &self.mode else {
            return Ok(());
        };
        Self::touch(&self.shared, &topic, group, consumer, &id).await?;
        if by <= self.lease {
            return Ok(());
        }
        // XCLAIM resets the idle time; keep doing so until `by` is covered.
        let (shared, group, consumer) = (self.shared.clone(), group.clone(), consumer.clone());
        let every = (self.lease / 2).max(Duration::from_millis(10));
        let lease = self.lease;
        let until = tokio::time::Instant::now() + by;
        let keeper = self.runtime.spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                let _ = Self::touch(&shared, &topic, &group, &consumer, &id).await;
                if tokio::time::Instant::now() + lease >= until {
                    break;
                }
            }
        });
        match self.lock().get_mut(&token) {
            Some(p) => {
                if let Some(old) = p.keeper.replace(keeper) {
                    old.abort();
                }
            }
            None => keeper.abort(),
        }
        Ok(())
    }

    fn release(&self, token: u64) {
        if let Ok(p) = self.take(token) {
            self.requeue(p);
        }
    }
}
