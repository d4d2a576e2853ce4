//! Subscriptions: a Pub/Sub subscription per group (or a private one per
//! subscription) and a task reading its StreamingPull.
//!
//! The stream asks the server for at most `max_in_flight` unsettled
//! messages (and the configured bytes) — Pub/Sub's flow control — and the
//! task hands a message out only on a free in-flight slot, so the
//! subscription never holds more than `max_in_flight` either way.
//! Deliveries go down a channel, so [`DeliveryStream::next`] is a channel
//! receive: cancel safe.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use gcloud_gax::grpc::Code;
use gcloud_googleapis::pubsub::v1::seek_request::Target;
use gcloud_googleapis::pubsub::v1::{
    DeadLetterPolicy, ExpirationPolicy, ReceivedMessage, SeekRequest, StreamingPullRequest,
    StreamingPullResponse, Subscription as PubSubSubscription,
};
use gcloud_pubsub::apiv1::conn_pool::ConnectionManager;
use tokio::sync::watch;
use wharf_adapter::{ChannelStream, DeliverySender, InFlight};
use wharf_core::{
    name, Capability, Delivery, DeliveryInfo, Error, GroupMode, Result, StartPosition,
    SubscribeOptions, Subscription, Timestamp,
};

use crate::acker::{deadline_secs, Pending, PubSubAcker, SharedAcker, MAX_ACK_DEADLINE};
use crate::backend::{duration, Shared, NAME};
use crate::wire;

/// Pub/Sub's bounds on a subscription's (and a stream's) ack deadline.
const MIN_STREAM_DEADLINE: i32 = 10;
/// Pub/Sub's bounds on a dead-letter policy's delivery attempts.
const MIN_DLQ_ATTEMPTS: u32 = 5;
const MAX_DLQ_ATTEMPTS: u32 = 100;
/// How long an ended subscription's stream must have received nothing
/// (and have nothing unsettled) before it is closed.
const DRAIN_QUIET: Duration = Duration::from_millis(200);
/// How often the stream sends a keep-alive request.
const PING: Duration = Duration::from_secs(10);
/// Private subscriptions left behind by a crashed process expire after this
/// long without a subscriber (Pub/Sub's shortest expiration).
const PRIVATE_EXPIRY: Duration = Duration::from_secs(24 * 3600);

/// The server-side dead-letter policy's attempt limit for a Wharf
/// `max_deliveries`: one more than Wharf's (so Wharf sees the attempt past
/// its limit and dead-letters it, stamped, itself), within Pub/Sub's 5..=100.
pub(crate) fn server_max_attempts(max_deliveries: Option<u32>) -> i32 {
    let n = max_deliveries.map_or(MAX_DLQ_ATTEMPTS, |m| m.saturating_add(1));
    i32::try_from(n.clamp(MIN_DLQ_ATTEMPTS, MAX_DLQ_ATTEMPTS)).unwrap_or(100)
}

fn private_id(shared: &Shared, topic: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() % 1_000_000_000_000);
    let unique = format!(
        "p-{}-{nanos}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    );
    let id = format!("{}.{topic}~{unique}", shared.config.prefix);
    if id.len() <= 255 {
        id
    } else {
        format!(
            "{}~{:016x}-{unique}",
            shared.config.prefix,
            crate::backend::fnv1a(&[topic])
        )
    }
}

pub(crate) async fn open(shared: Arc<Shared>, opts: SubscribeOptions) -> Result<Subscription> {
    shared.check_open()?;
    let pattern = opts.validate()?;
    if !pattern.is_literal() {
        return Err(Error::Unsupported {
            backend: NAME,
            capability: Capability::Wildcards,
        });
    }
    if opts.group_mode() == GroupMode::Stream {
        return Err(Error::Unsupported {
            backend: NAME,
            capability: Capability::PartitionAssignment,
        });
    }
    let start = opts.start_position();
    match start {
        StartPosition::Earliest | StartPosition::Latest => {}
        StartPosition::Offset(_) => {
            return Err(Error::Unsupported {
                backend: NAME,
                capability: Capability::ReplayFromOffset,
            })
        }
        _ => {
            return Err(Error::Unsupported {
                backend: NAME,
                capability: Capability::ReplayFromTime,
            })
        }
    }
    let lease = opts
        .visibility_timeout_value()
        .unwrap_or(shared.config.ack_deadline);
    if lease < Duration::from_millis(1) || lease > MAX_ACK_DEADLINE {
        return Err(Error::InvalidArgument {
            name: "visibility_timeout",
            reason: "Pub/Sub ack deadlines are 1 ms (rounded up to 1 s) to 10 minutes".into(),
        });
    }
    let topic = pattern.as_str().to_owned();
    let dead_letter_topic = opts
        .dead_letter_topic_name()
        .map_or_else(|| name::dead_letter_topic(&topic), str::to_owned);
    shared.ensure_topic(&topic).await?;
    shared.ensure_topic(&dead_letter_topic).await?;
    let group = opts.group_name().map(str::to_owned);
    let id = match &group {
        Some(g) => shared.group_subscription_id(&topic, g),
        None => private_id(&shared, &topic),
    };
    let sub_name = shared.subscription_name(&id);
    let stream_deadline = deadline_secs(lease).max(MIN_STREAM_DEADLINE);
    let config = PubSubSubscription {
        name: sub_name.clone(),
        topic: shared.topic_name(&topic),
        ack_deadline_seconds: stream_deadline,
        enable_message_ordering: shared.config.message_ordering,
        dead_letter_policy: Some(DeadLetterPolicy {
            dead_letter_topic: shared.topic_name(&dead_letter_topic),
            max_delivery_attempts: server_max_attempts(opts.max_deliveries_limit()),
        }),
        expiration_policy: group.is_none().then(|| ExpirationPolicy {
            ttl: Some(duration(PRIVATE_EXPIRY)),
        }),
        ..Default::default()
    };
    let created = match shared.subscriber.create_subscription(config, None).await {
        Ok(_) => true,
        Err(e) if e.code() == Code::AlreadyExists && group.is_some() => false,
        Err(e) => return Err(shared.status("create subscription", e)),
    };
    let mut skip_published_before = None;
    if created && shared.config.retention.is_some() {
        // A new group starts from what the topic still keeps (Earliest) or
        // from now (Latest): a seek of its new subscription.
        let now = now_timestamp();
        let time = match start {
            StartPosition::Earliest => prost_types::Timestamp {
                seconds: 0,
                nanos: 0,
            },
            _ => now,
        };
        let seek = SeekRequest {
            subscription: sub_name.clone(),
            target: Some(Target::Time(time)),
        };
        match shared.subscriber.seek(seek, None).await {
            Ok(_) => {}
            // The emulator implements no Seek on ordered subscriptions (see
            // the crate docs); it hands a new subscription the topic's
            // backlog anyway, so only Latest needs help: messages
            // published before now are acked, not handed out.
            Err(e) if e.code() == Code::Unimplemented => {
                tracing::debug!(subscription = %sub_name, "pubsub seek unimplemented");
                if start == StartPosition::Latest {
                    skip_published_before = Some(now);
                }
            }
            Err(e) => return Err(shared.status("seek", e)),
        }
    }
    let acker = Arc::new(PubSubAcker {
        shared: shared.clone(),
        subscription: sub_name.clone(),
        group,
        dead_letter_topic,
        max_deliveries: opts.max_deliveries_limit(),
        lease,
        in_flight: InFlight::new(opts.max_in_flight_limit()),
        runtime: tokio::runtime::Handle::current(),
        first_failures: Mutex::new(HashMap::new()),
        release_queue: Mutex::new(Vec::new()),
        release_lock: tokio::sync::Mutex::new(()),
        delete_on_drop: opts.group_name().is_none(),
    });
    let (stream, tx, stop) = ChannelStream::new(shared.closed.subscribe());
    let reader = Reader {
        shared: shared.clone(),
        settler: Arc::new(SharedAcker(acker.clone())),
        acker,
        topic: Arc::from(topic.as_str()),
        request: pull_request(
            sub_name,
            format!(
                "wharf-{}-{}",
                std::process::id(),
                STREAMS.fetch_add(1, Ordering::Relaxed)
            ),
            stream_deadline,
            opts.max_in_flight_limit(),
            shared.config.max_outstanding_bytes,
        ),
        short_lease: deadline_secs(lease) < stream_deadline,
        skip_published_before,
        attempts: HashMap::new(),
        received: 0,
        bytes: byte_budget(shared.config.max_outstanding_bytes),
        tx,
        stop,
        backend_closed: shared.closed.subscribe(),
    };
    tokio::spawn(reader.run());
    Ok(Subscription::new(stream))
}

/// Subscriptions opened by this process: each stream's `client_id` (kept
/// across reconnects, as Pub/Sub asks, so it can tell a reconnecting
/// stream from another member).
static STREAMS: AtomicU64 = AtomicU64::new(0);

/// Raises its signal when dropped.
struct EndOnDrop(watch::Sender<bool>);

impl Drop for EndOnDrop {
    fn drop(&mut self) {
        self.0.send_replace(true);
    }
}

/// Opens a StreamingPull on `connection` whose request side sends `first`,
/// then a keep-alive every [`PING`], and half-closes once `stop` is raised.
/// The emulator ignores the half-close itself, but with the request side
/// done, dropping the response ends the HTTP/2 stream and dropping the
/// connection closes it, which is what takes the stream off the emulator.
/// (gcloud-pubsub's own `streaming_pull` pings for ever: the call, and so
/// the connection, never ends, and the emulator kept sending that stream
/// messages nobody read.)
async fn streaming_pull(
    connection: &ConnectionManager,
    first: StreamingPullRequest,
    stop: watch::Receiver<bool>,
) -> std::result::Result<
    gcloud_gax::grpc::Response<gcloud_gax::grpc::Streaming<StreamingPullResponse>>,
    gcloud_gax::grpc::Status,
> {
    let subscription = first.subscription.clone();
    let requests =
        futures_util::stream::unfold((Some(first), stop), |(first, mut stop)| async move {
            if let Some(first) = first {
                return Some((first, (None, stop)));
            }
            let stopped = tokio::select! {
                _ = stop.wait_for(|s| *s) => true,
                _ = tokio::time::sleep(PING) => false,
            };
            (!stopped).then(|| (StreamingPullRequest::default(), (None, stop)))
        });
    let mut request = gcloud_gax::grpc::Request::new(requests);
    if let Ok(v) = format!("subscription={subscription}").parse() {
        request.metadata_mut().insert("x-goog-request-params", v);
    }
    let mut client = StreamingClient::new(connection.conn())
        .max_decoding_message_size(crate::backend::PUBSUB_MAX_REQUEST_BYTES)
        .max_encoding_message_size(crate::backend::PUBSUB_MAX_REQUEST_BYTES);
    client.streaming_pull(request).await
}

type StreamingClient =
    gcloud_googleapis::pubsub::v1::subscriber_client::SubscriberClient<gcloud_gax::conn::Channel>;

fn now_timestamp() -> prost_types::Timestamp {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    prost_types::Timestamp {
        seconds: i64::try_from(now.as_secs()).unwrap_or(i64::MAX),
        nanos: i32::try_from(now.subsec_nanos()).unwrap_or(0),
    }
}

/// The first request of a subscription's StreamingPull: its ack deadline
/// and Pub/Sub's flow control, at most `max_in_flight` messages and
/// `max_bytes` bytes unsettled.
fn pull_request(
    subscription: String,
    client_id: String,
    stream_deadline: i32,
    max_in_flight: usize,
    max_bytes: i64,
) -> StreamingPullRequest {
    StreamingPullRequest {
        subscription,
        client_id,
        stream_ack_deadline_seconds: stream_deadline,
        max_outstanding_messages: i64::try_from(max_in_flight).unwrap_or(i64::MAX),
        max_outstanding_bytes: max_bytes,
        ..Default::default()
    }
}

/// The client-side byte budget for `max_outstanding_bytes` (`<= 0`: none,
/// as for Pub/Sub's own field).
fn byte_budget(max: i64) -> Option<(Arc<tokio::sync::Semaphore>, usize)> {
    let max = usize::try_from(max)
        .ok()
        .filter(|m| *m > 0)?
        .min(tokio::sync::Semaphore::MAX_PERMITS)
        .min(u32::MAX as usize);
    Some((Arc::new(tokio::sync::Semaphore::new(max)), max))
}

/// Reads one subscription's StreamingPull and hands out deliveries.
struct Reader {
    shared: Arc<Shared>,
    acker: Arc<PubSubAcker>,
    settler: Arc<SharedAcker>,
    topic: Arc<str>,
    request: StreamingPullRequest,
    /// The lease is shorter than a stream's shortest deadline (10 s): each
    /// message's deadline is cut to it on arrival.
    short_lease: bool,
    /// Messages published before this are acked, not handed out (a Latest
    /// start where the server could not seek).
    skip_published_before: Option<prost_types::Timestamp>,
    /// Deliveries seen per Pub/Sub message id, for a server that reports
    /// no delivery attempt.
    attempts: HashMap<String, u32>,
    /// The outstanding-bytes budget (`max_outstanding_bytes`, at most
    /// `max` permits a message), `None` without a limit.
    bytes: Option<(Arc<tokio::sync::Semaphore>, usize)>,
    /// Messages received so far: the receive order of a [`Pending`].
    received: u64,
    tx: DeliverySender,
    stop: watch::Receiver<bool>,
    backend_closed: watch::Receiver<bool>,
}

async fn stopped(stop: &mut watch::Receiver<bool>, closed: &mut watch::Receiver<bool>) {
    tokio::select! {
        _ = stop.wait_for(|s| *s) => {}
        _ = closed.wait_for(|c| *c) => {}
    }
}

enum Next {
    Go,
    Stop,
}

impl Reader {
    async fn run(mut self) {
        let mut backoff = Duration::from_millis(50);
        // The stream open when the subscription ended, kept for the drain.
        let mut last = None;
        'connect: loop {
            // Ends this call's request side when it is dropped.
            let (ended, ended_rx) = watch::channel(false);
            let end_call = EndOnDrop(ended);
            let connection = match self.shared.streaming_connection().await {
                Ok(c) => c,
                Err(e) => {
                    tracing::debug!(error = %e, "pubsub streaming connection failed; retrying");
                    tokio::select! {
                        biased;
                        _ = stopped(&mut self.stop, &mut self.backend_closed) => break,
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                    continue;
                }
            };
            let call = streaming_pull(&connection, self.request.clone(), ended_rx);
            let response = tokio::select! {
                biased;
                _ = stopped(&mut self.stop, &mut self.backend_closed) => break,
                r = call => r,
            };
            let mut stream = match response {
                Ok(r) => r.into_inner(),
                Err(e) if self.fatal(&e) => break,
                Err(e) => {
                    tracing::debug!(error = %e, "pubsub streaming pull failed; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                    continue;
                }
            };
            loop {
                let msg = tokio::select! {
                    biased;
                    _ = stopped(&mut self.stop, &mut self.backend_closed) => {
                        last = Some((stream, end_call, connection));
                        break 'connect;
                    }
                    m = stream.message() => m,
                };
                match msg {
                    Ok(Some(r)) => {
                        backoff = Duration::from_millis(50);
                        let mut received = r.received_messages.into_iter();
                        while let Some(m) = received.next() {
                            if let Next::Stop = self.deliver(m).await {
                                // Not handed out: back to the server at once.
                                for rest in received {
                                    self.nack_unseen(rest.ack_id).await;
                                }
                                last = Some((stream, end_call, connection));
                                break 'connect;
                            }
                        }
                    }
                    Ok(None) => continue 'connect,
                    Err(e) if self.fatal(&e) => break 'connect,
                    Err(e) => {
                        tracing::debug!(error = %e, "pubsub streaming pull ended; reconnecting");
                        continue 'connect;
                    }
                }
            }
        }
        // The subscription has ended: nothing more is handed out.
        drop(std::mem::replace(
            &mut self.tx,
            tokio::sync::mpsc::unbounded_channel().0,
        ));
        if let Some((mut stream, end_call, connection)) = last {
            self.drain(&mut stream).await;
            drop(end_call);
            drop(stream);
            drop(connection);
        }
    }

    /// Keeps the ended subscription's stream open while deliveries it
    /// handed out are unsettled, and then until it has neither received
    /// nor released anything for [`DRAIN_QUIET`] (at most one lease, at
    /// least 1 s), nacking whatever the server still sends it. On the
    /// emulator a message whose stream has closed comes back only after
    /// its ack deadline, even when nacked (and it redelivers a nacked
    /// message to the same stream at once); see the crate docs.
    async fn drain(&mut self, stream: &mut gcloud_gax::grpc::Streaming<StreamingPullResponse>) {
        let until = tokio::time::Instant::now() + self.acker.lease.max(Duration::from_secs(1));
        let mut quiet_since = tokio::time::Instant::now();
        loop {
            let now = tokio::time::Instant::now();
            if !self.settled() {
                // The quiet counts from the last nack sent: the server
                // redelivers a nacked message to this stream at once.
                quiet_since = now;
            } else if now >= quiet_since + DRAIN_QUIET {
                return;
            }
            let msg = tokio::select! {
                _ = tokio::time::sleep_until(until) => return,
                _ = tokio::time::sleep(Duration::from_millis(20)) => continue,
                m = stream.message() => m,
            };
            match msg {
                Ok(Some(r)) => {
                    for m in r.received_messages {
                        self.nack_unseen(m.ack_id).await;
                    }
                    quiet_since = tokio::time::Instant::now();
                }
                _ => return,
            }
        }
    }

    /// Whether every delivery handed out has been settled (or released and
    /// its nack sent).
    fn settled(&self) -> bool {
        Arc::strong_count(&self.settler) == 1
            && self
                .acker
                .release_queue
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .is_empty()
            && self.acker.release_lock.try_lock().is_ok()
    }

    /// Whether a stream error ends the subscription (it is reported on it).
    fn fatal(&self, e: &gcloud_gax::grpc::Status) -> bool {
        if !matches!(
            e.code(),
            Code::NotFound | Code::InvalidArgument | Code::PermissionDenied
        ) {
            return false;
        }
        let _ = self
            .tx
            .send(Err(self.shared.status("streaming pull", e.clone())));
        true
    }

    /// Returns a message that was not handed out to the server at once.
    async fn nack_unseen(&self, ack_id: String) {
        if let Err(e) = self.acker.modify_deadline(&ack_id, 0).await {
            tracing::debug!(error = %e, "returning an unseen pubsub message failed");
        }
    }

    /// Hands one message out on a free slot; `Stop` once nobody listens.
    async fn deliver(&mut self, rm: ReceivedMessage) -> Next {
        let Some(m) = rm.message else {
            return Next::Go;
        };
        let free = tokio::select! {
            biased;
            _ = stopped(&mut self.stop, &mut self.backend_closed) => None,
            n = self.acker.in_flight.reserve(1) => n,
        };
        if free.is_none() {
            self.nack_unseen(rm.ack_id).await;
            return Next::Stop;
        }
        // And room within the outstanding bytes (a message larger than the
        // whole budget waits until nothing else is held).
        let bytes = match &self.bytes {
            None => None,
            Some((budget, max)) => {
                let n = u32::try_from(m.data.len().min(*max)).unwrap_or(u32::MAX);
                let permit = tokio::select! {
                    biased;
                    _ = stopped(&mut self.stop, &mut self.backend_closed) => None,
                    p = budget.clone().acquire_many_owned(n) => p.ok(),
                };
                if permit.is_none() {
                    self.acker.in_flight.free(1);
                    self.nack_unseen(rm.ack_id).await;
                    return Next::Stop;
                }
                permit
            }
        };
        let a = &self.acker;
        if self.short_lease {
            if let Err(e) = a.modify_deadline(&rm.ack_id, deadline_secs(a.lease)).await {
                tracing::debug!(error = %e, "shortening a pubsub lease failed");
            }
        }
        if let (Some(before), Some(at)) = (&self.skip_published_before, &m.publish_time) {
            if (at.seconds, at.nanos) < (before.seconds, before.nanos) {
                a.in_flight.free(1);
                if let Err(e) = a.acknowledge(vec![rm.ack_id]).await {
                    tracing::debug!(error = %e, "acking a pubsub message before the start failed");
                }
                return Next::Go;
            }
        }
        let pubsub_id = m.message_id.clone();
        let seen = self.attempts.entry(pubsub_id.clone()).or_insert(0);
        *seen += 1;
        let attempt = u32::try_from(rm.delivery_attempt)
            .ok()
            .filter(|n| *n > 0)
            .unwrap_or(*seen);
        let message = wire::decode(m);
        if self.attempts.len() > 100_000 {
            self.attempts.clear();
        }
        self.received += 1;
        let pending = Pending {
            seq: self.received,
            _bytes: bytes,
            ack_id: rm.ack_id,
            pubsub_id,
            message,
            topic: self.topic.clone(),
            attempt,
        };
        if pending
            .message
            .expires_at()
            .is_some_and(|at| at <= Timestamp::now())
        {
            // Expired: never handed out.
            a.in_flight.free(1);
            if let Err(e) = a.acknowledge(vec![pending.ack_id]).await {
                tracing::debug!(error = %e, "acking an expired pubsub message failed");
            }
            return Next::Go;
        }
        if let Some(max) = a.max_deliveries.filter(|m| attempt > *m) {
            // The lease of its last allowed attempt lapsed: dead-letter it
            // now rather than hand it out again.
            a.in_flight.free(1);
            let reason = format!("max deliveries ({max}) exceeded");
            if let Err(e) = a.dead_letter(pending, &reason, Some(max)).await {
                tracing::warn!(error = %e, "dead-lettering a pubsub message failed");
            }
            return Next::Go;
        }
        if attempt > 1 {
            // A redelivery: an earlier delivery of it still held here has
            // lost its lease, and settling it would settle nothing.
            let id = pending.pubsub_id.clone();
            a.in_flight.supersede(|p| p.pubsub_id == id);
        }
        let info = DeliveryInfo {
            topic: self.topic.clone(),
            partition: 0,
            offset: None,
            attempt,
        };
        let message = pending.message.clone();
        let token = a.in_flight.register_leased(pending, Some(a.lease));
        let delivery = Delivery::new(message, info, self.settler.clone(), token);
        // On a closed channel the delivery comes back inside the error and is
        // dropped, which releases it for redelivery.
        if self.tx.send(Ok(delivery)).is_ok() {
            Next::Go
        } else {
            Next::Stop
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stream_asks_for_max_in_flight_messages_and_the_configured_bytes() {
        let r = pull_request("projects/p/subscriptions/s".into(), "c".into(), 10, 3, 4096);
        assert_eq!(r.subscription, "projects/p/subscriptions/s");
        assert_eq!(r.client_id, "c");
        assert_eq!(r.stream_ack_deadline_seconds, 10);
        assert_eq!(r.max_outstanding_messages, 3);
        assert_eq!(r.max_outstanding_bytes, 4096);
    }

    #[test]
    fn a_byte_budget_exists_only_for_a_positive_limit() {
        assert!(byte_budget(0).is_none());
        assert!(byte_budget(-1).is_none());
        let (budget, max) = byte_budget(10).expect("a budget");
        assert_eq!((budget.available_permits(), max), (10, 10));
    }

    #[test]
    fn the_server_policy_allows_one_attempt_past_wharfs_within_pubsubs_range() {
        assert_eq!(server_max_attempts(None), 100);
        assert_eq!(server_max_attempts(Some(1)), 5);
        assert_eq!(server_max_attempts(Some(7)), 8);
        assert_eq!(server_max_attempts(Some(99)), 100);
        assert_eq!(server_max_attempts(Some(500)), 100);
    }
}
