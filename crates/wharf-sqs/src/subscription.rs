//! Subscriptions: a reader task long-polls the topic's queue into a
//! [`ChannelStream`], and [`SqsAcker`] settles by receipt handle — delete
//! on ack (`DeleteMessageBatch` for an `AckBatch`), a visibility change for
//! nack, release and extend, a stamped copy to the dead-letter queue then
//! a delete for reject and the last attempt.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_sqs::types::{
    DeleteMessageBatchRequestEntry, MessageSystemAttributeName, QueueAttributeName,
};
use tokio::sync::watch;
use wharf_adapter::{ChannelStream, DeliverySender, InFlight};
use wharf_core::name::dead_letter_topic;
use wharf_core::{
    Acker, Capability, Delivery, DeliveryInfo, Error, GroupMode, Message, Result, Settlement,
    StartPosition, SubscribeOptions, Subscription, Timestamp,
};

use crate::backend::{ceil_secs, dead_letter_copy, Inner, SqsBackend, MAX_BATCH, NAME};
use crate::config::MAX_VISIBILITY;
use crate::error::{self, SqsError};
use crate::wire;

/// The queue tag that records where the queue's consumers start: Unix ms;
/// messages sent before it are skipped (deleted) when received.
pub const START_TAG: &str = "wharf-start-ms";

/// A delivery handed out and not settled.
struct Held {
    receipt: String,
    /// SQS's id of the message, to spot a redelivery of one still held.
    sqs_id: String,
    attempt: u32,
    first_receive_ms: u64,
    message: Message,
}

/// Settles the deliveries of one subscription.
#[derive(Clone)]
pub(crate) struct SqsAcker {
    inner: Arc<Inner>,
    url: Arc<str>,
    topic: Arc<str>,
    group: Option<Arc<str>>,
    dlq_topic: Arc<str>,
    max_deliveries: Option<u32>,
    in_flight: Arc<InFlight<Held>>,
    runtime: tokio::runtime::Handle,
}

fn unsupported(capability: Capability) -> Error {
    Error::Unsupported {
        backend: NAME,
        capability,
    }
}

fn check_visibility(name: &'static str, d: Duration) -> Result<i32> {
    if d > MAX_VISIBILITY {
        return Err(Error::InvalidArgument {
            name,
            reason: format!("{d:?} is longer than SQS's 12-hour visibility limit"),
        });
    }
    Ok(ceil_secs(d))
}

pub(crate) async fn subscribe(b: &SqsBackend, options: SubscribeOptions) -> Result<Subscription> {
    let pattern = options.validate()?;
    if !pattern.is_literal() {
        return Err(unsupported(Capability::Wildcards));
    }
    if options.group_mode() == GroupMode::Stream {
        return Err(unsupported(Capability::PartitionAssignment));
    }
    let start_ms = match options.start_position() {
        StartPosition::Earliest => 0,
        StartPosition::Latest => Timestamp::now().as_millis(),
        StartPosition::Offset(_) => return Err(unsupported(Capability::ReplayFromOffset)),
        StartPosition::Time(_) => return Err(unsupported(Capability::ReplayFromTime)),
        _ => return Err(unsupported(Capability::ReplayFromTime)),
    };
    let inner = b.inner.clone();
    let topic = options.pattern().to_owned();
    let vt = options
        .visibility_timeout_value()
        .unwrap_or(inner.config.visibility_timeout);
    let vt_secs = check_visibility("visibility_timeout", vt)?.max(1);
    let url = inner.queue_url(&topic).await?;
    let start_ms = queue_start(&inner, &url, start_ms).await?;
    let dlq_topic = options
        .dead_letter_topic_name()
        .map_or_else(|| dead_letter_topic(&topic), str::to_owned);
    if let Some(n) = options.max_deliveries_limit() {
        redrive(&inner, &url, &dlq_topic, n).await?;
    }
    let in_flight = Arc::new(InFlight::new(options.max_in_flight_limit()));
    let acker = SqsAcker {
        inner: inner.clone(),
        url: url.into(),
        topic: topic.into(),
        group: options.group_name().map(Arc::from),
        dlq_topic: dlq_topic.into(),
        max_deliveries: options.max_deliveries_limit(),
        in_flight,
        runtime: tokio::runtime::Handle::current(),
    };
    let (stream, tx, stop) = ChannelStream::new(inner.closed.subscribe());
    tokio::spawn(read(acker, tx, stop, start_ms, vt_secs));
    Ok(Subscription::new(stream))
}

/// Where the queue's consumers start: the queue's [`START_TAG`], or — for
/// the first subscription ever, which makes the group — `start_ms`, tagged.
async fn queue_start(inner: &Inner, url: &str, start_ms: u64) -> Result<u64> {
    let tags = inner
        .client
        .list_queue_tags()
        .queue_url(url)
        .send()
        .await
        .map_err(|e| error::sdk("ListQueueTags", e))?;
    if let Some(v) = tags.tags().and_then(|t| t.get(START_TAG)) {
        if let Ok(ms) = v.parse() {
            return Ok(ms);
        }
    }
    inner
        .client
        .tag_queue()
        .queue_url(url)
        .tags(START_TAG, start_ms.to_string())
        .send()
        .await
        .map_err(|e| error::sdk("TagQueue", e))?;
    Ok(start_ms)
}

/// Sets the queue's redrive policy: to the dead-letter topic's queue after
/// `n + 1` receives. The subscription dead-letters (with the Wharf headers)
/// on receive `n + 1` itself; SQS's redrive is the backstop one receive
/// later, for a consumer that dies before it can.
async fn redrive(inner: &Inner, url: &str, dlq_topic: &str, n: u32) -> Result<()> {
    let dlq_url = inner.queue_url(dlq_topic).await?;
    let attrs = inner
        .client
        .get_queue_attributes()
        .queue_url(&dlq_url)
        .attribute_names(QueueAttributeName::QueueArn)
        .send()
        .await
        .map_err(|e| error::sdk("GetQueueAttributes", e))?;
    let arn = attrs
        .attributes()
        .and_then(|a| a.get(&QueueAttributeName::QueueArn))
        .cloned()
        .unwrap_or_default();
    let policy = serde_json::json!({
        "deadLetterTargetArn": arn,
        "maxReceiveCount": (u64::from(n) + 1).to_string(),
    });
    inner
        .client
        .set_queue_attributes()
        .queue_url(url)
        .attributes(QueueAttributeName::RedrivePolicy, policy.to_string())
        .send()
        .await
        .map_err(|e| error::sdk("SetQueueAttributes", e))?;
    Ok(())
}

fn attr_u64(m: &aws_sdk_sqs::types::Message, name: &MessageSystemAttributeName) -> Option<u64> {
    m.attributes()?.get(name)?.parse().ok()
}

/// The reader: reserve free slots, long-poll for at most that many
/// messages (10 at most), hand them out. It stops at the stop signal or the
/// backend's close, after the poll under way, giving back what that brings.
async fn read(
    acker: SqsAcker,
    tx: DeliverySender,
    mut stop: watch::Receiver<bool>,
    start_ms: u64,
    vt_secs: i32,
) {
    let acker = Arc::new(acker);
    let lease = Duration::from_secs(u64::try_from(vt_secs).unwrap_or(0));
    let wait = i32::try_from(acker.inner.config.wait.as_secs()).unwrap_or(20);
    let mut closed = acker.inner.closed.subscribe();
    loop {
        if *stop.borrow() || *closed.borrow() {
            break;
        }
        let n = tokio::select! {
            n = acker.in_flight.reserve(MAX_BATCH) => n,
            _ = stop.changed() => continue,
            _ = closed.changed() => continue,
        };
        let Some(n) = n else { break };
        let polled = acker
            .inner
            .client
            .receive_message()
            .queue_url(acker.url.as_ref())
            .max_number_of_messages(i32::try_from(n).unwrap_or(10))
            .visibility_timeout(vt_secs)
            .wait_time_seconds(wait)
            .message_system_attribute_names(MessageSystemAttributeName::All)
            .message_attribute_names("All")
            .send()
            .await;
        let messages = match polled {
            Ok(out) => out.messages.unwrap_or_default(),
            Err(e) => {
                acker.in_flight.free(n);
                if *stop.borrow() || *closed.borrow() {
                    break;
                }
                tracing::warn!(queue = %acker.url, error = %error::sdk("ReceiveMessage", e), "receive failed; retrying in 1 s");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        acker.in_flight.free(n.saturating_sub(messages.len()));
        let mut stopping = *stop.borrow() || *closed.borrow();
        for m in messages {
            // Each message holds one reserved slot until it is handed out
            // (the delivery's token then owns it) or set aside here.
            let receipt = m.receipt_handle().unwrap_or_default().to_owned();
            if stopping {
                acker.in_flight.free(1);
                acker.spawn_visibility(receipt, 0);
                continue;
            }
            if let Some(d) = acker.delivery(&m, receipt, start_ms, lease).await {
                if let Err(unsent) = tx.send(Ok(d)) {
                    // The stream is gone: dropping the delivery releases
                    // it, and the rest of the batch is given back.
                    drop(unsent);
                    stopping = true;
                }
            }
        }
        if stopping || tx.is_closed() {
            break;
        }
    }
}

impl SqsAcker {
    /// Turns a received message into a delivery, or settles it here and
    /// frees its slot: skipped by the start position, expired (TTL),
    /// received past `max_deliveries` (the lease ran out on the last
    /// attempt: dead-lettered), or undecodable (left for redelivery and, in
    /// the end, SQS's redrive).
    async fn delivery(
        self: &Arc<Self>,
        m: &aws_sdk_sqs::types::Message,
        receipt: String,
        start_ms: u64,
        lease: Duration,
    ) -> Option<Delivery> {
        let sent_ms = attr_u64(m, &MessageSystemAttributeName::SentTimestamp).unwrap_or(0);
        let attempt = attr_u64(m, &MessageSystemAttributeName::ApproximateReceiveCount)
            .map_or(1, |c| u32::try_from(c).unwrap_or(u32::MAX));
        let first_receive_ms = attr_u64(
            m,
            &MessageSystemAttributeName::ApproximateFirstReceiveTimestamp,
        )
        .unwrap_or_else(|| Timestamp::now().as_millis());
        let message = match wire::decode(
            m.body().unwrap_or_default(),
            m.message_attributes(),
            sent_ms,
        ) {
            Ok(msg) => msg,
            Err(e) => {
                self.in_flight.free(1);
                tracing::warn!(queue = %self.url, error = %SqsError::from(e), "undecodable message left for redelivery");
                return None;
            }
        };
        let now = Timestamp::now();
        let expired = message.expires_at().is_some_and(|at| at <= now);
        if sent_ms < start_ms || expired {
            self.in_flight.free(1);
            if let Err(e) = self.delete(&receipt).await {
                tracing::warn!(queue = %self.url, error = %e, "deleting a skipped message failed");
            }
            return None;
        }
        // Due later than one send could delay it (`SqsConfig::delay_hop`):
        // send it again for what is left, then delete this copy. A crash
        // in between leaves both (at least once); a failed send leaves
        // this one to come back after its lease and hop then.
        if !self.inner.config.fifo && message.deliver_at().is_some_and(|at| at > now) {
            self.in_flight.free(1);
            match self.inner.hop(&self.topic, &message).await {
                Ok(_) => {
                    if let Err(e) = self.delete(&receipt).await {
                        tracing::warn!(queue = %self.url, error = %e, "deleting a hopped message failed; its copy is already sent");
                    }
                }
                Err(e) => {
                    tracing::warn!(queue = %self.url, error = %e, "re-sending a message not yet due failed; it returns after its lease");
                }
            }
            return None;
        }
        if let Some(max) = self.max_deliveries.filter(|max| attempt > *max) {
            self.in_flight.free(1);
            let held = Held {
                receipt,
                sqs_id: String::new(),
                attempt: max,
                first_receive_ms,
                message,
            };
            let reason = format!("lease expired on the last of {max} deliveries");
            if let Err(e) = self.dead_letter(held, &reason).await {
                tracing::warn!(queue = %self.url, error = %e, "dead-lettering failed; SQS's redrive is the backstop");
            }
            return None;
        }
        // SQS handed the message out again: an earlier delivery of it, still
        // held here, lost its lease (settling it must not touch this one).
        let sqs_id = m.message_id().unwrap_or_default().to_owned();
        self.in_flight.supersede(|h| h.sqs_id == sqs_id);
        let token = self.in_flight.register_leased(
            Held {
                receipt,
                sqs_id,
                attempt,
                first_receive_ms,
                message: message.clone(),
            },
            Some(lease),
        );
        let info = DeliveryInfo {
            topic: self.topic.clone(),
            partition: 0,
            offset: None,
            attempt,
        };
        Some(Delivery::new(message, info, self.clone(), token))
    }

    async fn delete(&self, receipt: &str) -> Result<()> {
        self.inner
            .client
            .delete_message()
            .queue_url(self.url.as_ref())
            .receipt_handle(receipt)
            .send()
            .await
            .map(drop)
            .map_err(|e| stale_or(e, "DeleteMessage", receipt))
    }

    async fn change_visibility(&self, receipt: &str, secs: i32) -> Result<()> {
        self.inner
            .client
            .change_message_visibility()
            .queue_url(self.url.as_ref())
            .receipt_handle(receipt)
            .visibility_timeout(secs)
            .send()
            .await
            .map(drop)
            .map_err(|e| stale_or(e, "ChangeMessageVisibility", receipt))
    }

    fn spawn_visibility(&self, receipt: String, secs: i32) {
        let this = self.clone();
        self.runtime.spawn(async move {
            if let Err(e) = this.change_visibility(&receipt, secs).await {
                tracing::debug!(queue = %this.url, error = %e, "giving a message back failed; it returns when its lease ends");
            }
        });
    }

    /// A failed attempt: back to the queue after `delay`, or to the
    /// dead-letter queue when it was the last one.
    async fn nack_held(&self, held: Held, delay: Duration) -> Result<()> {
        match self.max_deliveries {
            Some(max) if held.attempt >= max => {
                let reason = format!("max deliveries ({max}) exceeded");
                self.dead_letter(held, &reason).await
            }
            _ => {
                let secs = check_visibility("delay", delay)?;
                self.change_visibility(&held.receipt, secs).await
            }
        }
    }

    /// Sends the stamped copy to the dead-letter topic's queue, then
    /// deletes the original (a crash in between leaves both: at least once).
    async fn dead_letter(&self, held: Held, reason: &str) -> Result<()> {
        let copy = dead_letter_copy(
            &held.message,
            reason,
            &self.topic,
            self.group.as_deref(),
            held.attempt,
            held.first_receive_ms,
        );
        self.inner.send_dead_letter(&self.dlq_topic, &copy).await?;
        self.delete(&held.receipt).await
    }
}

/// An SDK error for a call by receipt handle: a handle SQS no longer
/// honours is [`Error::UnknownDelivery`].
fn stale_or<E, R>(
    e: aws_sdk_sqs::error::SdkError<E, R>,
    context: &'static str,
    receipt: &str,
) -> Error
where
    E: aws_sdk_sqs::error::ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    R: std::fmt::Debug + Send + Sync + 'static,
{
    match error::code(&e) {
        Some(
            "ReceiptHandleIsInvalid"
            | "InvalidParameterValue"
            | "AWS.SimpleQueueService.MessageNotInflight"
            | "MessageNotInflight",
        ) => Error::UnknownDelivery {
            id: receipt.chars().take(16).collect(),
        },
        _ => error::sdk(context, e),
    }
}

#[async_trait]
impl Acker for SqsAcker {
    async fn settle(&self, token: u64, settlement: Settlement) -> Result<()> {
        match settlement {
            Settlement::Ack => {
                let held = self.in_flight.take(token)?;
                self.delete(&held.receipt).await
            }
            Settlement::Nack { delay } => {
                check_visibility("delay", delay)?;
                let held = self.in_flight.take(token)?;
                self.nack_held(held, delay).await
            }
            Settlement::Reject { reason } => {
                let held = self.in_flight.take(token)?;
                self.dead_letter(held, &reason).await
            }
            _ => Err(Error::InvalidArgument {
                name: "settlement",
                reason: "unknown settlement".into(),
            }),
        }
    }

    async fn extend(&self, token: u64, by: Duration) -> Result<()> {
        let secs = check_visibility("by", by)?;
        let receipt = self.in_flight.get(token, |h| h.receipt.clone())?;
        self.change_visibility(&receipt, secs).await?;
        self.in_flight
            .keep_lease(token, &self.runtime, by, by, || async {});
        Ok(())
    }

    fn release(&self, token: u64) {
        let Ok(held) = self.in_flight.take(token) else {
            return;
        };
        let this = self.clone();
        self.runtime.spawn(async move {
            if let Err(e) = this.nack_held(held, Duration::ZERO).await {
                tracing::debug!(queue = %this.url, error = %e, "releasing a delivery failed; it returns when its lease ends");
            }
        });
    }

    async fn ack_many(&self, tokens: &[u64], failed: &mut Vec<(u64, Error)>) {
        let mut held = Vec::with_capacity(tokens.len());
        for &t in tokens {
            match self.in_flight.take(t) {
                Ok(h) => held.push((t, h.receipt)),
                Err(e) => failed.push((t, e)),
            }
        }
        for chunk in held.chunks(MAX_BATCH) {
            let entries = chunk
                .iter()
                .enumerate()
                .map(|(i, (_, receipt))| {
                    DeleteMessageBatchRequestEntry::builder()
                        .id(i.to_string())
                        .receipt_handle(receipt)
                        .build()
                        .expect("id and receipt handle are set")
                })
                .collect();
            let out = self
                .inner
                .client
                .delete_message_batch()
                .queue_url(self.url.as_ref())
                .set_entries(Some(entries))
                .send()
                .await;
            match out {
                Ok(out) => {
                    let by_index: HashMap<usize, (String, String)> = out
                        .failed()
                        .iter()
                        .filter_map(|f| {
                            let i = f.id().parse().ok()?;
                            Some((
                                i,
                                (
                                    f.code().to_owned(),
                                    f.message().unwrap_or_default().to_owned(),
                                ),
                            ))
                        })
                        .collect();
                    for (i, (t, _)) in chunk.iter().enumerate() {
                        if let Some((code, message)) = by_index.get(&i) {
                            let e = if code == "ReceiptHandleIsInvalid" {
                                Error::UnknownDelivery { id: t.to_string() }
                            } else {
                                error::backend(SqsError::BatchEntry {
                                    context: "DeleteMessageBatch",
                                    entry: i,
                                    code: code.clone(),
                                    message: message.clone(),
                                })
                            };
                            failed.push((*t, e));
                        }
                    }
                }
                Err(e) => {
                    let e = error::sdk("DeleteMessageBatch", e);
                    for (t, _) in chunk {
                        failed.push((
                            *t,
                            Error::Unavailable {
                                backend: NAME,
                                source: e.to_string().into(),
                            },
                        ));
                    }
                }
            }
        }
    }
}
