//! Settling stream entries: XACK, parking nacked entries in the retry
//! sorted set (scored by when they are due), XCLAIM to extend a lease, and
//! dead-lettering (XADD to the DLQ stream with `wharf-dlq-*` headers, then XACK).
//!
//! A private subscription (no group) has nothing to ack on the server: its
//! nacks go back to the subscription's own queue.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use async_trait::async_trait;
use redis::Value;
use tokio::sync::mpsc;
use wharf_adapter::InFlight;
use wharf_core::{name, Acker, Error, Message, Result, Settlement, Timestamp};

use crate::backend::Shared;
use crate::error::map;

/// A delivery handed out and not yet settled.
pub(crate) struct Pending {
    pub(crate) topic: Arc<str>,
    pub(crate) entry_id: String,
    pub(crate) message: Message,
    pub(crate) attempt: u32,
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
    /// The deliveries handed out, and the subscription's in-flight slots.
    pub(crate) in_flight: InFlight<Pending>,
    pub(crate) runtime: tokio::runtime::Handle,
    pub(crate) release_queue: Mutex<VecDeque<Pending>>,
    pub(crate) release_lock: tokio::sync::Mutex<()>,
    pub(crate) me: Weak<RedisAcker>,
}

fn now_ms() -> u64 {
    Timestamp::now().as_millis()
}

impl RedisAcker {
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

    /// `XCLAIM … JUSTID` of the entry to this consumer: resets its idle time.
    fn touch(&self, topic: &str, group: &str, consumer: &str, id: &str) -> redis::Cmd {
        let mut cmd = redis::cmd("XCLAIM");
        cmd.arg(self.shared.stream_key(topic))
            .arg(group)
            .arg(consumer)
            .arg(0)
            .arg(id)
            .arg("JUSTID");
        cmd
    }
}

#[async_trait]
impl Acker for RedisAcker {
    async fn settle(&self, token: u64, settlement: Settlement) -> Result<()> {
        let p = self.in_flight.take(token)?;
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
        let (topic, id) = self
            .in_flight
            .get(token, |p| (p.topic.clone(), p.entry_id.clone()))?;
        let Mode::Group { group, consumer } = &self.mode else {
            return Ok(());
        };
        let touch = self.touch(&topic, group, consumer, &id);
        let _: Value = touch
            .query_async(&mut self.shared.conn.clone())
            .await
            .map_err(|e| map("XCLAIM", e))?;
        // XCLAIM resets the idle time; keep doing so until `by` is covered.
        let conn = self.shared.conn.clone();
        let touch = move || {
            let (touch, mut conn) = (touch.clone(), conn.clone());
            async move {
                let _: redis::RedisResult<Value> = touch.query_async(&mut conn).await;
            }
        };
        self.in_flight
            .keep_lease(token, &self.runtime, self.lease, by, touch);
        Ok(())
    }

    fn release(&self, token: u64) {
        if let Ok(p) = self.in_flight.take(token) {
            self.requeue(p);
        }
    }

    /// One `XACK <stream> <group> <id…>` per topic in the batch (one round
    /// trip for all of them), instead of one per delivery; the batch leaves
    /// the in-flight table under one lock.
    async fn ack_many(&self, tokens: &[u64], failed: &mut Vec<(u64, Error)>) {
        let mut taken = Vec::with_capacity(tokens.len());
        self.in_flight.take_many(tokens, &mut taken, failed);
        {
            // First failures are only recorded for nacked deliveries: with
            // none recorded there is nothing to forget.
            let mut failures = self.failures();
            if !failures.is_empty() {
                for (_, p) in &taken {
                    failures.remove(&self.failure_key(p));
                }
            }
        }
        let mut by_topic: Vec<(Arc<str>, Vec<(u64, String)>)> = Vec::new();
        for (token, p) in taken {
            match by_topic.iter_mut().find(|(t, _)| *t == p.topic) {
                Some((_, ids)) => ids.push((token, p.entry_id)),
                None => {
                    let mut ids = Vec::with_capacity(tokens.len());
                    ids.push((token, p.entry_id));
                    by_topic.push((p.topic, ids));
                }
            }
        }
        let Mode::Group { group, .. } = &self.mode else {
            return;
        };
        if by_topic.is_empty() {
            return;
        }
        let mut pipe = redis::pipe();
        for (topic, ids) in &by_topic {
            pipe.cmd("XACK")
                .arg(self.shared.stream_key(topic))
                .arg(group)
                .arg(ids.iter().map(|(_, id)| id.as_str()).collect::<Vec<_>>())
                .ignore();
        }
        let r: redis::RedisResult<()> = pipe.query_async(&mut self.shared.conn.clone()).await;
        if let Err(e) = r {
            for (_, ids) in &by_topic {
                for (token, _) in ids {
                    failed.push((*token, map("XACK", e.clone())));
                }
            }
        }
    }
}
