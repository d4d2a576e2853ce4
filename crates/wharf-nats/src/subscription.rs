//! Subscriptions: a pull consumer per subscription and a task that pulls no
//! more than the subscription has free in-flight slots for.
//!
//! The task sends `CONSUMER.MSG.NEXT` requests (batch = free slots, 1 s
//! expiry) to one inbox and forwards deliveries into a channel, so
//! [`DeliveryStream::next`] is a channel receive: cancel safe.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::consumer::{pull, AckPolicy, DeliverPolicy};
use async_nats::StatusCode;
use bytes::Bytes;
use futures_util::{FutureExt, StreamExt};
use tokio::sync::watch;
use wharf_adapter::{ChannelStream, DeliverySender, InFlight};
use wharf_core::{
    Acker, Capability, Delivery, DeliveryInfo, Error, Message, Result, StartPosition,
    SubscribeOptions, Subscription, Timestamp,
};

use crate::acker::{NatsAcker, Pending};
use crate::backend::{Shared, NAME};
use crate::error::{backend, unavailable, NatsError};
use crate::wire;

/// JetStream's default AckWait, used when no visibility timeout is set.
const DEFAULT_ACK_WAIT: Duration = Duration::from_secs(30);
/// How long one pull request waits on the server for messages.
const PULL_EXPIRES: Duration = Duration::from_secs(1);
/// Largest batch asked for in one pull request.
const MAX_PULL_BATCH: usize = 1024;
/// Ephemeral consumers of vanished subscriptions are removed by the server after this.
const EPHEMERAL_INACTIVE: Duration = Duration::from_secs(60);

/// A stable 64-bit FNV-1a hash (names must not change between releases).
fn fnv1a(parts: &[&str]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for b in part.bytes().chain(std::iter::once(0)) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    h
}

/// The durable consumer of `group` on `pattern`: the group (with `.` made
/// `_`, as consumer names cannot contain dots) and a hash of both.
pub(crate) fn durable_name(group: &str, pattern: &str) -> String {
    let readable: String = group
        .chars()
        .map(|c| if c == '.' { '_' } else { c })
        .collect();
    format!("{readable}-{:016x}", fnv1a(&[group, pattern]))
}

pub(crate) async fn open(shared: Arc<Shared>, opts: SubscribeOptions) -> Result<Subscription> {
    shared.check_open()?;
    let pattern = opts.validate()?;
    let deliver_policy = match opts.start_position() {
        StartPosition::Earliest => DeliverPolicy::All,
        StartPosition::Latest => DeliverPolicy::New,
        StartPosition::Offset(o) => DeliverPolicy::ByStartSequence {
            start_sequence: o.max(1),
        },
        _ => {
            return Err(Error::Unsupported {
                backend: NAME,
                capability: Capability::ReplayFromTime,
            })
        }
    };
    let ack_wait = opts.visibility_timeout_value().unwrap_or(DEFAULT_ACK_WAIT);
    if ack_wait < Duration::from_millis(1) {
        return Err(Error::InvalidArgument {
            name: "visibility_timeout",
            reason: "must be at least 1 ms".into(),
        });
    }
    let group = opts.group_name().map(str::to_owned);
    let config = pull::Config {
        durable_name: group.as_deref().map(|g| durable_name(g, pattern.as_str())),
        deliver_policy,
        ack_policy: AckPolicy::Explicit,
        ack_wait,
        max_deliver: opts.max_deliveries_limit().map_or(-1, i64::from),
        filter_subject: shared.subjects.subject(pattern.as_str()),
        max_ack_pending: -1,
        inactive_threshold: if group.is_some() {
            Duration::ZERO
        } else {
            EPHEMERAL_INACTIVE
        },
        ..Default::default()
    };
    let consumer_name = ensure_consumer(&shared, config).await?;
    let inbox = shared.client.new_inbox();
    let inbox_sub = shared
        .client
        .subscribe(inbox.clone())
        .await
        .map_err(|e| unavailable("subscribe", e))?;
    let acker: Arc<NatsAcker> = Arc::new_cyclic(|me| NatsAcker {
        shared: shared.clone(),
        consumer: consumer_name.clone(),
        group: group.clone(),
        dead_letter_topic: opts.dead_letter_topic_name().map(str::to_owned),
        max_deliveries: opts.max_deliveries_limit(),
        ack_wait,
        in_flight: InFlight::new(opts.max_in_flight_limit()),
        runtime: tokio::runtime::Handle::current(),
        release_queue: Mutex::new(std::collections::VecDeque::new()),
        release_lock: tokio::sync::Mutex::new(()),
        abandoned: std::sync::atomic::AtomicBool::new(false),
        request_until: Mutex::new(None),
        me: me.clone(),
    });
    let inbox_sub = Arc::new(Inbox {
        sub: Mutex::new(Some(inbox_sub)),
        acker: acker.clone(),
    });
    shared.register_inbox(&inbox_sub);
    let (stream, tx, stop) = ChannelStream::new(shared.closed.subscribe());
    let shut = inbox_sub.clone();
    // Unsubscribes the inbox synchronously whenever the stream ends or is dropped.
    let stream = stream.on_end(move || shut.shut());
    let puller = Puller {
        next_subject: format!(
            "$JS.API.CONSUMER.MSG.NEXT.{}.{}",
            shared.stream, consumer_name
        ),
        backend_closed: shared.closed.subscribe(),
        shared: shared.clone(),
        acker,
        consumer: consumer_name,
        ephemeral: group.is_none(),
        inbox,
        inbox_sub: inbox_sub.clone(),
        tx,
        stop,
        last_topic: None,
    };
    if let (Some(_), Some(max)) = (&group, opts.max_deliveries_limit()) {
        let subject = format!(
            "$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{}.{}",
            shared.stream, puller.consumer
        );
        let advisories = shared
            .client
            .subscribe(subject)
            .await
            .map_err(|e| unavailable("subscribe", e))?;
        tokio::spawn(dead_letter_lapsed(
            puller.acker.clone(),
            advisories,
            max,
            stream.stop_signal(),
            shared.closed.subscribe(),
        ));
    }
    tokio::spawn(puller.run());
    Ok(Subscription::new(stream))
}

/// A subscription's inbox: the puller reads it, and closing (the stream's
/// `close`/drop or the backend's `close`) unsubscribes it *synchronously*,
/// so the UNSUB reaches the server before any nak sent afterwards; those
/// naks also wait until the last pull request sent to the inbox has expired
/// (see [`NatsAcker::abandoned`]), so the server never redelivers into it.
pub(crate) struct Inbox {
    sub: Mutex<Option<async_nats::Subscriber>>,
    acker: Arc<NatsAcker>,
}

impl Inbox {
    /// Unsubscribes now; messages already received but not yet handed out
    /// are nacked (after the UNSUB, in order).
    pub(crate) fn shut(&self) {
        let taken = {
            let mut slot = self.sub.lock().unwrap_or_else(|e| e.into_inner());
            self.acker
                .abandoned
                .store(true, std::sync::atomic::Ordering::Release);
            slot.take()
        };
        let Some(mut sub) = taken else { return };
        let mut unread = Vec::new();
        while let Some(Some(m)) = sub.next().now_or_never() {
            unread.push(m);
        }
        drop(sub);
        for m in unread {
            let Some(reply) = m.reply else {
                continue;
            };
            let Some(ack) = wire::parse_ack_subject(&reply) else {
                continue;
            };
            self.acker.requeue(Pending {
                reply,
                message: wire::decode(m.headers.as_ref(), m.payload),
                topic: Arc::from(self.acker.shared.subjects.topic_of(m.subject.as_str())),
                seq: ack.stream_seq,
                attempt: ack.delivered,
            });
        }
    }

    /// Records that a pull request is about to be sent; `false` if the inbox
    /// is already shut (then nothing may be sent). Done under the inbox lock,
    /// so a release after [`Inbox::shut`] always sees the last request.
    ///
    /// The server starts a request's expiry when it receives it, which under
    /// load can be well after sending: this first assumes the worst (2 s
    /// late), and [`Inbox::request_received`] tightens it once a flush has
    /// proven the server got the request.
    fn note_request(&self) -> bool {
        let slot = self.sub.lock().unwrap_or_else(|e| e.into_inner());
        if slot.is_none() {
            return false;
        }
        *self
            .acker
            .request_until
            .lock()
            .unwrap_or_else(|e| e.into_inner()) =
            Some(tokio::time::Instant::now() + PULL_EXPIRES + Duration::from_secs(2));
        true
    }

    /// The server has the last request (a flush after it returned).
    fn request_received(&self) {
        *self
            .acker
            .request_until
            .lock()
            .unwrap_or_else(|e| e.into_inner()) =
            Some(tokio::time::Instant::now() + PULL_EXPIRES + Duration::from_millis(100));
    }

    /// Waits for a message, then also takes every one already received,
    /// up to `max` in all, into `out` (under one lock); `false` once the
    /// inbox is shut or closed and nothing was taken.
    ///
    /// # Cancel safety
    /// Cancel safe: it completes as soon as it has taken a message.
    async fn next_batch(&self, max: usize, out: &mut Vec<async_nats::Message>) -> bool {
        use std::task::Poll;
        std::future::poll_fn(|cx| {
            let mut g = self.sub.lock().unwrap_or_else(|e| e.into_inner());
            let Some(s) = g.as_mut() else {
                return Poll::Ready(!out.is_empty());
            };
            while out.len() < max {
                match s.poll_next_unpin(cx) {
                    Poll::Ready(Some(m)) => {
                        let ends = m.status.is_some_and(|s| {
                            s != StatusCode::OK && s != StatusCode::IDLE_HEARTBEAT
                        });
                        out.push(m);
                        if ends {
                            // What follows belongs to no request still open.
                            break;
                        }
                    }
                    Poll::Ready(None) => return Poll::Ready(!out.is_empty()),
                    Poll::Pending if out.is_empty() => return Poll::Pending,
                    Poll::Pending => break,
                }
            }
            Poll::Ready(true)
        })
        .await
    }
}

/// Creates the consumer, or reuses an existing durable one with the same
/// AckWait and MaxDeliver untouched: re-sending the config of a live durable
/// makes NATS 2.9 reload it, which redelivers its pending messages out of order.
async fn ensure_consumer(shared: &Shared, config: pull::Config) -> Result<String> {
    if let Some(durable) = &config.durable_name {
        let existing: std::result::Result<async_nats::jetstream::consumer::PullConsumer, _> =
            shared
                .js
                .get_consumer_from_stream(durable, shared.stream.as_str())
                .await;
        if let Ok(mut c) = existing {
            let same = {
                let info = c.cached_info();
                info.config.ack_wait == config.ack_wait
                    && info.config.max_deliver == config.max_deliver
                    && info.config.filter_subject == config.filter_subject
            };
            if same {
                return Ok(c
                    .info()
                    .await
                    .map_err(|e| backend("consumer info", e))?
                    .name
                    .clone());
            }
        }
    }
    let mut consumer = shared
        .js
        .create_consumer_on_stream(config, shared.stream.as_str())
        .await
        .map_err(|e| backend("create consumer", e))?;
    Ok(consumer
        .info()
        .await
        .map_err(|e| backend("consumer info", e))?
        .name
        .clone())
}

/// Dead-letters messages whose last allowed attempt lapsed (AckWait expired):
/// JetStream only stops redelivering them and says so in a MAX_DELIVERIES
/// advisory. Every member of the group sees the advisory; the copies share
/// one Msg-Id, so the dead-letter topic stores it once.
async fn dead_letter_lapsed(
    acker: Arc<NatsAcker>,
    mut advisories: async_nats::Subscriber,
    max: u32,
    mut stop: watch::Receiver<bool>,
    mut closed: watch::Receiver<bool>,
) {
    loop {
        let advisory = tokio::select! {
            _ = stopped(&mut stop, &mut closed) => break,
            m = advisories.next() => m,
        };
        let Some(advisory) = advisory else { break };
        let Ok(v) = serde_json::from_slice::<serde_json::Value>(&advisory.payload) else {
            continue;
        };
        let (Some(seq), Some(deliveries)) = (
            v.get("stream_seq").and_then(serde_json::Value::as_u64),
            v.get("deliveries").and_then(serde_json::Value::as_u64),
        ) else {
            continue;
        };
        let shared = &acker.shared;
        let raw = match shared.js.get_stream_no_info(&shared.stream).await {
            Ok(stream) => stream.get_raw_message(seq).await,
            Err(e) => {
                tracing::warn!(error = %e, "nats stream lookup for a lapsed message failed");
                continue;
            }
        };
        let raw = match raw {
            Ok(raw) => raw,
            Err(e) => {
                tracing::warn!(error = %e, seq, "reading a lapsed nats message failed");
                continue;
            }
        };
        let p = Pending {
            reply: async_nats::Subject::from_static(""),
            message: wire::decode(Some(&raw.headers), raw.payload),
            topic: Arc::from(shared.subjects.topic_of(raw.subject.as_str())),
            seq,
            attempt: u32::try_from(deliveries).unwrap_or(u32::MAX),
        };
        let reason = format!("max deliveries ({max}) exceeded: lease expired");
        if let Err(e) = acker.dead_letter(p, &reason).await {
            tracing::warn!(error = %e, seq, "dead-lettering a lapsed nats message failed");
        }
    }
}

/// The task pulling one subscription's messages.
struct Puller {
    shared: Arc<Shared>,
    acker: Arc<NatsAcker>,
    consumer: String,
    ephemeral: bool,
    next_subject: String,
    inbox: String,
    inbox_sub: Arc<Inbox>,
    tx: DeliverySender,
    stop: watch::Receiver<bool>,
    backend_closed: watch::Receiver<bool>,
    /// The subject of the last message and its topic.
    last_topic: Option<(async_nats::Subject, Arc<str>)>,
}

/// Resolves once the subscription is closed or dropped, or the backend is closed.
async fn stopped(stop: &mut watch::Receiver<bool>, backend: &mut watch::Receiver<bool>) {
    tokio::select! {
        _ = stop.wait_for(|s| *s) => {}
        _ = backend.wait_for(|s| *s) => {}
    }
}

enum PullEnd {
    /// The request is done (filled, expired, or the server ended it).
    Done,
    /// Stop the subscription.
    Stop,
}

impl Puller {
    async fn run(mut self) {
        loop {
            let acker = self.acker.clone();
            let n = tokio::select! {
                biased;
                _ = stopped(&mut self.stop, &mut self.backend_closed) => break,
                n = acker.in_flight.reserve(MAX_PULL_BATCH) => n,
            };
            let Some(n) = n else { break };
            let (left, end) = self.pull(n).await;
            acker.in_flight.free(left);
            if matches!(end, PullEnd::Stop) {
                break;
            }
        }
        drop(self.tx);
        self.inbox_sub.shut();
        if self.ephemeral {
            let _ = self
                .shared
                .js
                .delete_consumer_from_stream(&self.consumer, &self.shared.stream)
                .await;
        }
    }

    /// Runs one pull request for `n` messages; returns the unused slots.
    async fn pull(&mut self, n: usize) -> (usize, PullEnd) {
        let nanos = PULL_EXPIRES.as_nanos();
        let body = format!("{{\"batch\":{n},\"expires\":{nanos}}}");
        if !self.inbox_sub.note_request() {
            return (n, PullEnd::Stop);
        }
        let sent = self
            .shared
            .client
            .publish_with_reply(self.next_subject.clone(), self.inbox.clone(), body.into())
            .await;
        if let Err(e) = sent {
            tracing::warn!(error = %e, "nats pull request failed");
            tokio::time::sleep(Duration::from_millis(200)).await;
            return (n, PullEnd::Done);
        }
        if self.shared.client.flush().await.is_ok() {
            self.inbox_sub.request_received();
        }
        let deadline = tokio::time::Instant::now() + PULL_EXPIRES + Duration::from_secs(2);
        let mut left = n;
        let mut received = Vec::new();
        let mut batch = Vec::new();
        while left > 0 {
            let open = tokio::select! {
                biased;
                _ = stopped(&mut self.stop, &mut self.backend_closed) => return (left, PullEnd::Stop),
                _ = tokio::time::sleep_until(deadline) => return (left, PullEnd::Done),
                open = self.inbox_sub.next_batch(left, &mut received) => open,
            };
            if !open {
                return (left, PullEnd::Stop);
            }
            // `next_batch` takes nothing past a status that ends the
            // request, so that one can only be the last.
            let mut end = None;
            for msg in received.drain(..) {
                match msg.status {
                    None | Some(StatusCode::OK) => {
                        left -= 1;
                        batch.push(msg);
                    }
                    Some(StatusCode::IDLE_HEARTBEAT) => {}
                    Some(StatusCode::TIMEOUT) | Some(StatusCode::NOT_FOUND) => {
                        end = Some(RequestEnd::Done);
                    }
                    Some(status) => {
                        let description = msg.description.unwrap_or_default();
                        end = Some(if description.to_ascii_lowercase().contains("deleted") {
                            RequestEnd::Failed(Error::Backend {
                                backend: NAME,
                                source: Box::new(NatsError::PullStatus {
                                    status: status.as_u16(),
                                    description,
                                }),
                            })
                        } else {
                            tracing::debug!(%status, %description, "nats pull request ended");
                            RequestEnd::Pause
                        });
                    }
                }
            }
            if !self.deliver_all(&mut batch) {
                return (left, PullEnd::Stop);
            }
            match end {
                None => {}
                Some(RequestEnd::Done) => return (left, PullEnd::Done),
                Some(RequestEnd::Pause) => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    return (left, PullEnd::Done);
                }
                Some(RequestEnd::Failed(e)) => {
                    let _ = self.tx.send(Err(e));
                    return (left, PullEnd::Stop);
                }
            }
        }
        (0, PullEnd::Done)
    }

    /// The topic of `subject`, reusing the last one's `Arc` when it repeats.
    fn topic_of(&mut self, subject: &async_nats::Subject) -> Arc<str> {
        if let Some((s, topic)) = &self.last_topic {
            if s == subject {
                return topic.clone();
            }
        }
        let topic: Arc<str> = Arc::from(self.shared.subjects.topic_of(subject.as_str()));
        self.last_topic = Some((subject.clone(), topic.clone()));
        topic
    }

    /// Hands the messages in `batch` to the subscription, in order, and
    /// empties it; `false` once nobody listens. Each delivery runs of
    /// `batch` is registered in flight under one lock and one clock read.
    fn deliver_all(&mut self, batch: &mut Vec<async_nats::Message>) -> bool {
        let mut unused = 0;
        let mut now = None;
        let mut out = Vec::with_capacity(batch.len());
        let mut records = Vec::with_capacity(batch.len());
        let mut open = true;
        for msg in batch.drain(..) {
            let Some(reply) = msg.reply else {
                tracing::warn!(subject = %msg.subject, "nats message without ack subject");
                unused += 1;
                continue;
            };
            let Some(ack) = wire::parse_ack_subject(&reply) else {
                tracing::warn!(%reply, "unparsable nats ack subject");
                unused += 1;
                continue;
            };
            let message = wire::decode(msg.headers.as_ref(), msg.payload);
            if let Some(at) = message.expires_at() {
                if at <= *now.get_or_insert_with(Timestamp::now) {
                    // Expired: never handed out.
                    let client = self.shared.client.clone();
                    tokio::spawn(async move {
                        let _ = client.publish(reply, Bytes::from_static(b"+ACK")).await;
                    });
                    unused += 1;
                    continue;
                }
            }
            if ack.delivered > 1 {
                // A redelivery: an earlier delivery of it still held here
                // has lost its lease, and acking it would settle this one.
                // What came before it is registered first, as it may be
                // that earlier delivery.
                open &= self.hand_out(&mut out, &mut records);
                self.acker.in_flight.supersede(|p| p.seq == ack.stream_seq);
            }
            let topic = self.topic_of(&msg.subject);
            out.push((
                message.clone(),
                DeliveryInfo {
                    topic: topic.clone(),
                    partition: 0,
                    offset: Some(ack.stream_seq),
                    attempt: ack.delivered,
                },
            ));
            records.push(Pending {
                reply,
                message,
                topic,
                seq: ack.stream_seq,
                attempt: ack.delivered,
            });
        }
        if unused > 0 {
            self.acker.in_flight.free(unused);
        }
        open &= self.hand_out(&mut out, &mut records);
        open
    }

    /// Registers `records` in flight under one lock and sends their
    /// deliveries (`out`, in the same order); `false` once nobody listens.
    fn hand_out(&self, out: &mut Vec<(Message, DeliveryInfo)>, records: &mut Vec<Pending>) -> bool {
        if out.is_empty() {
            return true;
        }
        let first = self
            .acker
            .in_flight
            .register_all_leased(records.drain(..), Some(self.acker.ack_wait));
        let acker: Arc<dyn Acker> = self.acker.clone();
        let mut open = true;
        for ((message, info), token) in out.drain(..).zip(first..) {
            // On a closed channel the delivery comes back inside the error
            // and is dropped, which releases it for redelivery.
            open &= self
                .tx
                .send(Ok(Delivery::new(message, info, acker.clone(), token)))
                .is_ok();
        }
        open
    }
}

/// How a pull request ended, seen in a status message.
enum RequestEnd {
    /// Expired or nothing to deliver: send the next one.
    Done,
    /// Another status: wait a little before the next one.
    Pause,
    /// The consumer or stream is gone: the subscription ends with this.
    Failed(Error),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durable_names_are_valid_and_differ_per_pattern() {
        let a = durable_name("billing.v2", "orders.*");
        let b = durable_name("billing.v2", "orders.>");
        let c = durable_name("billing_v2", "orders.*");
        assert!(!a.contains('.'), "{a}");
        assert!(a.starts_with("billing_v2-"));
        assert_ne!(a, b);
        assert_ne!(a, c);
        assert_eq!(a, durable_name("billing.v2", "orders.*"));
    }
}
