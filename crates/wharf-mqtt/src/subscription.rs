//! A subscription: its own MQTT connection and persistent session, the
//! driver task that polls it, and the acker that sends each delivery's
//! PUBACK only when the handler settles it.
//!
//! MQTT redelivers an unacknowledged QoS 1 message only when a session is
//! resumed after a reconnect (MQTT 5 §4.4), never on request. So a nack
//! (and a dropped delivery) republishes the message to the subscription's
//! redelivery topic — `$wharf/redeliver/<hash>`, one per group and
//! pattern, which every member of the group subscribes to as a shared
//! subscription — with its next attempt number, and only then PUBACKs the
//! original: at least once, even if the process dies in between (the
//! session then still holds the unacknowledged original).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use bytes::Bytes;
use rumqttc::v5::mqttbytes::v5::{Filter, Packet, Publish, RetainForwardRule, SubscribeReasonCode};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, Event, EventLoop};
use rumqttc::Outgoing;
use tokio::sync::{oneshot, watch, Semaphore};
use wharf_adapter::{ChannelStream, DeliverySender};
use wharf_core::{
    name, Acker, Capability, Delivery, DeliveryInfo, DeliveryStream, Error, GroupMode, Message,
    MessageId, Result, Settlement, StartPosition, SubscribeOptions, Subscription, Timestamp,
};

use crate::backend::{handshake, options, Shared, NAME};
use crate::error::{client, unavailable, MqttError};
use crate::topics::{fnv1a, shared};
use crate::wire;

/// Opens a subscription of `shared`'s backend.
pub(crate) async fn subscribe(shared: Arc<Shared>, opts: SubscribeOptions) -> Result<Subscription> {
    shared.check_open()?;
    let pattern = opts.validate()?;
    let unsupported = |capability| {
        Err(Error::Unsupported {
            backend: NAME,
            capability,
        })
    };
    match opts.start_position() {
        StartPosition::Offset(_) => return unsupported(Capability::ReplayFromOffset),
        StartPosition::Time(_) => return unsupported(Capability::ReplayFromTime),
        _ => {}
    }
    if opts.visibility_timeout_value().is_some() {
        return unsupported(Capability::VisibilityTimeout);
    }
    if opts.group_mode() != GroupMode::Queue {
        return unsupported(Capability::PartitionAssignment);
    }
    let group = opts.group_name().map(str::to_owned);
    let filter = shared.topics.filter(&pattern);
    let pattern_hash = fnv1a(&[pattern.as_str().as_bytes()]) as u32;
    let key = format!("{}\0{}", group.as_deref().unwrap_or(""), pattern.as_str());
    let n = shared.next_member(&key);
    let client_id = match &group {
        Some(g) => format!("{}-{g}-{pattern_hash:08x}-{n}", shared.config.client_id),
        None => format!("{}-p{pattern_hash:08x}-{n}", shared.config.client_id),
    };
    let redelivery = match &group {
        Some(g) => shared.topics.redelivery_topic(g, pattern.as_str()),
        None => shared.topics.redelivery_topic(&client_id, ""),
    };
    let retained = if opts.start_position() == StartPosition::Earliest {
        RetainForwardRule::OnEverySubscribe
    } else {
        RetainForwardRule::Never
    };
    let filters = vec![
        filter_of(group.as_deref(), &filter, retained),
        filter_of(group.as_deref(), &redelivery, RetainForwardRule::Never),
    ];

    let mut o = options(&shared.config, client_id)?;
    o.set_clean_start(false);
    o.set_session_expiry_interval(Some(
        u32::try_from(shared.config.session_expiry.as_secs()).unwrap_or(u32::MAX),
    ));
    o.set_manual_acks(true);
    o.set_receive_maximum(Some(
        u16::try_from(opts.max_in_flight_limit()).unwrap_or(u16::MAX),
    ));
    let (mqtt, mut ev) = AsyncClient::new(o, 64);
    let resumed = handshake(&mut ev, shared.config.timeout).await?;
    tracing::debug!(resumed, %filter, "mqtt subscription connected");
    mqtt.subscribe_many(filters.clone())
        .await
        .map_err(|e| client("subscribe", e))?;

    let (stream, tx, _stop) = ChannelStream::new(shared.closed.subscribe());
    let permits = Arc::new(Semaphore::new(opts.max_in_flight_limit()));
    let acker = Arc::new_cyclic(|me| SubAcker {
        me: me.clone(),
        permits: permits.clone(),
        shared: shared.clone(),
        client: mqtt.clone(),
        held: Mutex::default(),
        next_token: AtomicU64::new(1),
        generation: AtomicU64::new(0),
        leaving: AtomicBool::new(false),
        disconnected: AtomicBool::new(false),
        last_incoming: Mutex::new(std::time::Instant::now()),
        regrouping: AtomicUsize::new(0),
        group,
        redelivery: redelivery.clone(),
        dead_letter_topic: opts.dead_letter_topic_name().map(str::to_owned),
        max_deliveries: opts.max_deliveries_limit(),
        runtime: tokio::runtime::Handle::current(),
        first_failures: Mutex::default(),
        filters: filters.iter().map(|f| f.path.clone()).collect(),
    });
    let (subscribed, subscribed_rx) = oneshot::channel();
    let leaving = acker.clone();
    let stream = Gated {
        inner: stream.on_end(move || leaving.leave()),
        permits,
        closed: shared.closed.subscribe(),
    };
    tokio::spawn(drive(acker, ev, tx, filters, subscribed));
    match tokio::time::timeout(shared.config.timeout, subscribed_rx).await {
        Ok(Ok(Ok(()))) => Ok(Subscription::new(stream)),
        Ok(Ok(Err(e))) => Err(e),
        Ok(Err(_)) => Err(unavailable(MqttError::ConnectionLost)),
        Err(_) => Err(Error::Timeout {
            operation: "waiting for the SUBACK",
            after: shared.config.timeout,
        }),
    }
}

fn filter_of(group: Option<&str>, filter: &str, retain: RetainForwardRule) -> Filter {
    let mut f = Filter::new(
        match group {
            Some(g) => shared(g, filter),
            None => filter.to_owned(),
        },
        QoS::AtLeastOnce,
    );
    f.retain_forward_rule = retain;
    f
}

/// A delivery handed out and not yet settled.
struct Pending {
    /// The PUBLISH, for its packet id and QoS (payload dropped).
    publish: Publish,
    message: Message,
    topic: Arc<str>,
    attempt: u32,
    /// The session it came in: a PUBACK in a later session would ack another message.
    generation: u64,
}

#[derive(Default)]
struct Held {
    by_token: HashMap<u64, Pending>,
    /// Packet id → token of what is held in the current session.
    by_pkid: HashMap<u16, u64>,
}

/// Settles the deliveries of one subscription.
struct SubAcker {
    me: Weak<SubAcker>,
    /// Free in-flight slots of the subscription.
    permits: Arc<Semaphore>,
    shared: Arc<Shared>,
    client: AsyncClient,
    held: Mutex<Held>,
    next_token: AtomicU64,
    /// Bumped when a reconnect found the session gone.
    generation: AtomicU64,
    /// The subscription ended: unsubscribed, disconnecting once nothing is held.
    leaving: AtomicBool,
    disconnected: AtomicBool,
    /// When the last PUBLISH arrived (a leaving subscription waits for quiet).
    last_incoming: Mutex<std::time::Instant>,
    /// Messages that arrived after the end, being given back to the group.
    regrouping: AtomicUsize,
    group: Option<String>,
    redelivery: String,
    dead_letter_topic: Option<String>,
    max_deliveries: Option<u32>,
    runtime: tokio::runtime::Handle,
    first_failures: Mutex<HashMap<MessageId, u64>>,
    filters: Vec<String>,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

impl SubAcker {
    fn lock(&self) -> MutexGuard<'_, Held> {
        self.held.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn take(&self, token: u64) -> Result<Pending> {
        let mut held = self.lock();
        let p = held
            .by_token
            .remove(&token)
            .ok_or_else(|| Error::UnknownDelivery {
                id: token.to_string(),
            })?;
        if held.by_pkid.get(&p.publish.pkid) == Some(&token) {
            held.by_pkid.remove(&p.publish.pkid);
        }
        // Its slot is free again. (A delivery never handed out — dropped from
        // the buffer once the stream ended — frees one too; nothing takes
        // slots any more then.)
        self.permits.add_permits(1);
        Ok(p)
    }

    /// The subscription ended: unsubscribe now; disconnect once every
    /// delivery handed out is settled, every message the server had queued
    /// for it was given back to the group, and nothing arrived for a while
    /// (a DISCONNECT earlier would leave queued messages stranded in the
    /// session until it expires).
    fn leave(&self) {
        if self.leaving.swap(true, Ordering::AcqRel) {
            return;
        }
        let me = self.self_arc();
        self.runtime.spawn(async move {
            for f in &me.filters {
                if let Err(e) = me.client.unsubscribe(f.clone()).await {
                    tracing::warn!(error = %e, "mqtt: unsubscribing failed");
                }
            }
            loop {
                tokio::time::sleep(Duration::from_millis(100)).await;
                let quiet = me
                    .last_incoming
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .elapsed()
                    >= Duration::from_millis(300);
                if quiet
                    && me.regrouping.load(Ordering::Acquire) == 0
                    && me.lock().by_token.is_empty()
                {
                    break;
                }
            }
            me.disconnected.store(true, Ordering::Release);
            let _ = me.client.disconnect().await;
        });
    }

    /// Sends the PUBACK of `p` (nothing if its session is gone).
    async fn puback(&self, p: &Pending) -> Result<()> {
        if p.generation != self.generation.load(Ordering::Acquire) {
            return Ok(());
        }
        self.client
            .ack(&p.publish)
            .await
            .map_err(|e| client("ack", e))
    }

    /// Republishes `p` to the redelivery topic as attempt `attempt`, then
    /// PUBACKs the original; an expired message is only acked.
    async fn redeliver(&self, p: Pending, attempt: u32) -> Result<()> {
        let expired = p
            .message
            .expires_at()
            .is_some_and(|at| at <= Timestamp::now());
        if !expired {
            let extra = [
                (wire::ATTEMPT, attempt.to_string()),
                (wire::TOPIC, p.topic.to_string()),
            ];
            // On failure the original is not acked: the session keeps it,
            // and it comes back on the next reconnect.
            self.shared
                .republish(self.redelivery.clone(), &p.message, &extra)
                .await?;
        }
        self.puback(&p).await
    }

    /// Copies `p` to the dead-letter topic, then PUBACKs the original.
    async fn dead_letter(&self, p: Pending, reason: &str) -> Result<()> {
        let now = now_ms();
        let first = self
            .first_failures
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&p.message.id())
            .unwrap_or(now);
        let mut copy = p.message.clone();
        wharf_core::DeadLetter {
            reason,
            topic: &p.topic,
            partition: 0,
            offset: None,
            group: self.group.as_deref(),
            attempts: p.attempt,
            first_failure_ms: first,
            last_failure_ms: now,
        }
        .stamp(&mut copy);
        let dlq = self
            .dead_letter_topic
            .clone()
            .unwrap_or_else(|| name::dead_letter_topic(&p.topic));
        let t = self.shared.topics.topic_name(&dlq)?;
        self.shared.republish(t, &copy, &[]).await?;
        self.puback(&p).await
    }

    /// A failed attempt: dead-letter it on the last one, else redeliver
    /// after `delay`.
    async fn failed(self: Arc<Self>, p: Pending, delay: Duration) -> Result<()> {
        if self.max_deliveries.is_some_and(|max| p.attempt >= max) {
            return self.dead_letter(p, "max deliveries exceeded").await;
        }
        self.first_failures
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(p.message.id())
            .or_insert_with(now_ms);
        let attempt = p.attempt + 1;
        if delay.is_zero() {
            return self.redeliver(p, attempt).await;
        }
        // The original stays unacknowledged (holding its place in the
        // server's in-flight window) until the delay has passed.
        let runtime = self.runtime.clone();
        runtime.spawn(async move {
            tokio::time::sleep(delay).await;
            if let Err(e) = self.redeliver(p, attempt).await {
                tracing::warn!(error = %e, "mqtt: redelivering after a nack's delay failed");
            }
        });
        Ok(())
    }

    /// Hands out a received PUBLISH, or settles it at once (a resend of a
    /// held delivery, a foreign topic, an expired message, one arriving after
    /// the subscription ended).
    fn on_publish(self: &Arc<Self>, mut publish: Publish, tx: &DeliverySender) {
        *self.last_incoming.lock().unwrap_or_else(|e| e.into_inner()) = std::time::Instant::now();
        let generation = self.generation.load(Ordering::Acquire);
        if publish.dup && self.lock().by_pkid.contains_key(&publish.pkid) {
            // The session was resumed and the server resent what we hold:
            // the held delivery's ack will answer it.
            return;
        }
        let payload = std::mem::take(&mut publish.payload);
        let (message, extra) = wire::decode(publish.properties.as_ref(), payload);
        publish.properties = None;
        let mqtt_topic = String::from_utf8_lossy(&publish.topic).into_owned();
        let topic = if mqtt_topic == self.redelivery {
            extra.topic.clone().ok_or(MqttError::UnmappableTopic {
                topic: mqtt_topic.clone(),
            })
        } else {
            self.shared.topics.wharf_topic(&mqtt_topic)
        };
        let mut attempt = extra.attempt.unwrap_or(1);
        if publish.dup {
            attempt += 1;
        }
        let pending = |topic: &str| Pending {
            publish: Publish {
                payload: Bytes::new(),
                ..publish.clone()
            },
            message: message.clone(),
            topic: Arc::from(topic),
            attempt,
            generation,
        };
        let topic = match topic {
            Ok(t) => t,
            Err(e) => {
                // Another subscription's redelivery (matched by a root `>`)
                // is not a foreign message: drop it quietly.
                if !mqtt_topic.starts_with(crate::topics::REDELIVERY_ROOT) {
                    tracing::warn!(error = %e, "mqtt: acknowledging and dropping a message");
                }
                let p = pending("");
                let me = self.clone();
                self.runtime.spawn(async move { me.puback(&p).await });
                return;
            }
        };
        let p = pending(&topic);
        let expired = message
            .expires_at()
            .is_some_and(|at| at <= Timestamp::now());
        if expired || self.leaving.load(Ordering::Acquire) {
            // Never seen by the consumer: a group gets it back uncounted.
            let me = self.clone();
            let regroup = !expired && self.group.is_some();
            self.regrouping.fetch_add(1, Ordering::AcqRel);
            self.runtime.spawn(async move {
                let r = if regroup {
                    me.redeliver(p, attempt).await
                } else {
                    me.puback(&p).await
                };
                me.regrouping.fetch_sub(1, Ordering::AcqRel);
                r
            });
            return;
        }
        let token = self.next_token.fetch_add(1, Ordering::Relaxed);
        {
            let mut held = self.lock();
            held.by_pkid.insert(p.publish.pkid, token);
            held.by_token.insert(token, p);
        }
        let info = DeliveryInfo {
            topic: Arc::from(topic.as_str()),
            partition: 0,
            offset: None,
            attempt,
        };
        let d = Delivery::new(message, info, self.clone(), token);
        if let Err(unsent) = tx.send(Ok(d)) {
            // The stream is gone: the delivery drops here and is released.
            drop(unsent);
        }
    }

    /// A reconnect found no session: what is held belongs to a session
    /// that is gone (its acks would hit other messages' packet ids).
    fn session_lost(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
        self.lock().by_pkid.clear();
    }
}

#[async_trait]
impl Acker for SubAcker {
    async fn settle(&self, token: u64, settlement: Settlement) -> Result<()> {
        let p = self.take(token)?;
        let me = self.self_arc();
        match settlement {
            Settlement::Ack => {
                self.first_failures
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(&p.message.id());
                self.puback(&p).await
            }
            Settlement::Nack { delay } => me.failed(p, delay).await,
            Settlement::Reject { reason } => self.dead_letter(p, &reason).await,
            _ => {
                let r = self.puback(&p).await;
                r.and(Err(Error::Unsupported {
                    backend: NAME,
                    capability: Capability::DeadLetter,
                }))
            }
        }
    }

    async fn extend(&self, _token: u64, _by: Duration) -> Result<()> {
        Err(Error::Unsupported {
            backend: NAME,
            capability: Capability::ExtendLease,
        })
    }

    fn release(&self, token: u64) {
        let Ok(p) = self.take(token) else {
            return;
        };
        let me = self.self_arc();
        self.runtime.spawn(async move {
            if let Err(e) = me.failed(p, Duration::ZERO).await {
                tracing::warn!(error = %e, "mqtt: redelivering a dropped delivery failed");
            }
        });
    }

    fn release_unseen(&self, token: u64) {
        let Ok(p) = self.take(token) else {
            return;
        };
        let me = self.self_arc();
        self.runtime.spawn(async move {
            let attempt = p.attempt;
            if let Err(e) = me.redeliver(p, attempt).await {
                tracing::warn!(error = %e, "mqtt: giving back an unseen delivery failed");
            }
        });
    }
}

impl SubAcker {
    /// This acker as an `Arc` (the trait methods get `&self`).
    fn self_arc(&self) -> Arc<Self> {
        self.me
            .upgrade()
            .expect("a SubAcker is only reached through its Arc")
    }
}

/// The subscription's stream: hands out a delivery only on a free
/// in-flight slot, besides the Receive Maximum asked of the server; the
/// rest wait in the channel, unacknowledged. The server's window alone is
/// not enough: Mosquitto 2.0.11, asked for a Receive Maximum of 2, sent a
/// third unacknowledged message after the first ack (the conformance case
/// `max_in_flight_is_respected` fails without these slots), and it also
/// counts a nacked message until its redelivered copy is published.
struct Gated {
    inner: ChannelStream,
    permits: Arc<Semaphore>,
    closed: watch::Receiver<bool>,
}

#[async_trait]
impl DeliveryStream for Gated {
    async fn next(&mut self) -> Option<Result<Delivery>> {
        // Cancel safe: a slot taken while waiting for the delivery is given
        // back when the future is dropped.
        let permit = tokio::select! {
            biased;
            _ = self.closed.wait_for(|c| *c) => return None,
            p = self.permits.clone().acquire_owned() => p.ok()?,
        };
        let item = self.inner.next().await;
        if let Some(Ok(_)) = &item {
            permit.forget();
        }
        item
    }

    fn try_next(&mut self) -> Option<Result<Delivery>> {
        let permit = self.permits.clone().try_acquire_owned().ok()?;
        let item = self.inner.try_next();
        if let Some(Ok(_)) = &item {
            permit.forget();
        }
        item
    }

    async fn close(&mut self) -> Result<()> {
        self.inner.close().await
    }
}

/// Polls the subscription's connection until it has disconnected after
/// the subscription ended.
async fn drive(
    acker: Arc<SubAcker>,
    mut ev: EventLoop,
    tx: DeliverySender,
    filters: Vec<Filter>,
    subscribed: oneshot::Sender<Result<()>>,
) {
    let mut subscribed = Some(subscribed);
    let mut backoff = Duration::from_millis(100);
    loop {
        match ev.poll().await {
            Ok(Event::Incoming(Packet::Publish(p))) => acker.on_publish(p, &tx),
            Ok(Event::Incoming(Packet::SubAck(ack))) => {
                backoff = Duration::from_millis(100);
                let refused = ack
                    .return_codes
                    .iter()
                    .find(|c| !matches!(c, SubscribeReasonCode::Success(_)));
                if let Some(code) = refused {
                    tracing::warn!(?code, "mqtt: the server refused a subscription");
                }
                if let Some(s) = subscribed.take() {
                    let r = match refused {
                        None => Ok(()),
                        Some(code) => Err(Error::Backend {
                            backend: NAME,
                            source: Box::new(MqttError::SubscribeRefused {
                                reason: format!("{code:?}"),
                            }),
                        }),
                    };
                    let failed = r.is_err();
                    let _ = s.send(r);
                    if failed {
                        return;
                    }
                }
            }
            Ok(Event::Incoming(Packet::ConnAck(c))) => {
                // The first CONNACK was the handshake's: this is a reconnect.
                if !c.session_present {
                    tracing::warn!("mqtt: the session was gone after a reconnect; resubscribing");
                    acker.session_lost();
                    if !acker.leaving.load(Ordering::Acquire) {
                        let _ = acker.client.try_subscribe_many(filters.clone());
                    }
                }
            }
            Ok(Event::Outgoing(Outgoing::Disconnect)) => return,
            Ok(_) => {}
            Err(e) => {
                if acker.disconnected.load(Ordering::Acquire) {
                    return;
                }
                tracing::warn!(error = %e, "mqtt subscription connection lost; reconnecting");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
            }
        }
    }
}
