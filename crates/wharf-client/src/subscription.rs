//! One remote subscription: a bidirectional consume stream, the task that
//! reads it (and resubscribes with backoff when it breaks), and the acker
//! that sends settlements and waits for the server's result.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::UnboundedReceiverStream;
use tonic::Streaming;
use wharf_core::{
    Acker, Delivery, DeliveryInfo, DeliveryStream, Error, GroupMode, Settlement, StartPosition,
    SubscribeOptions, Subscription,
};
use wharf_proto::convert::{error_from_proto, message_from_proto};
use wharf_proto::v1::{self, consume_request, consume_response};

use crate::{from_status, Inner, BACKEND};

const GEN_SHIFT: u32 = 48;
const SETTLE_TIMEOUT: Duration = Duration::from_secs(30);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// What the server answered to a settlement: its error, or for `AckMany`
/// the deliveries that failed.
type Answer = (Option<v1::ErrorDetail>, Vec<v1::SettleFailure>);
type Pending = HashMap<u64, oneshot::Sender<Answer>>;
const ID_MASK: u64 = (1 << GEN_SHIFT) - 1;

#[derive(Default)]
struct AckState {
    generation: u64,
    tx: Option<mpsc::UnboundedSender<v1::ConsumeRequest>>,
    next_request: u64,
    pending: Pending,
    close_sent: bool,
}

/// Settles deliveries of one subscription over its current stream.
#[derive(Default)]
pub(crate) struct SubAcker {
    state: Mutex<AckState>,
}

impl SubAcker {
    fn lock(&self) -> std::sync::MutexGuard<'_, AckState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Uses `tx` from now on; deliveries of earlier streams become unknown.
    fn install(&self, tx: mpsc::UnboundedSender<v1::ConsumeRequest>) -> u64 {
        let mut st = self.lock();
        st.generation += 1;
        st.tx = Some(tx);
        st.pending.clear();
        st.close_sent = false;
        st.generation
    }

    fn generation(&self) -> u64 {
        self.lock().generation
    }

    fn send(&self, kind: consume_request::Kind) {
        if let Some(tx) = &self.lock().tx {
            let _ = tx.send(v1::ConsumeRequest { kind: Some(kind) });
        }
    }

    fn complete(&self, r: v1::SettleResult) {
        if let Some(waiter) = self.lock().pending.remove(&r.request_id) {
            let _ = waiter.send((r.error, r.failures));
        }
    }

    /// Sends `kind(request_id)` on the current stream of `generation` and
    /// returns where the answer will arrive; `None` if that stream is gone.
    fn start(
        &self,
        generation: u64,
        kind: impl FnOnce(u64) -> consume_request::Kind,
    ) -> Result<oneshot::Receiver<Answer>, StartError> {
        let mut st = self.lock();
        let tx = match &st.tx {
            Some(tx) if st.generation == generation => tx.clone(),
            _ => return Err(StartError::Unknown),
        };
        st.next_request += 1;
        let request_id = st.next_request;
        let (wtx, wrx) = oneshot::channel();
        st.pending.insert(request_id, wtx);
        if tx
            .send(v1::ConsumeRequest {
                kind: Some(kind(request_id)),
            })
            .is_err()
        {
            st.pending.remove(&request_id);
            return Err(StartError::Closed);
        }
        Ok(wrx)
    }

    /// Tells the server a delivery of the current stream is dropped
    /// (`kind` says whether it was handed out).
    fn send_release(&self, token: u64, kind: fn(u64) -> consume_request::Kind) {
        let st = self.lock();
        if token >> GEN_SHIFT == st.generation {
            if let Some(tx) = &st.tx {
                let _ = tx.send(v1::ConsumeRequest {
                    kind: Some(kind(token & ID_MASK)),
                });
            }
        }
    }

    /// Asks the server to stop new deliveries (settlements keep working).
    pub(crate) fn close_remote(&self) {
        let mut st = self.lock();
        if !st.close_sent {
            st.close_sent = true;
            if let Some(tx) = &st.tx {
                let _ = tx.send(v1::ConsumeRequest {
                    kind: Some(consume_request::Kind::Close(true)),
                });
            }
        }
    }

    async fn request(
        &self,
        token: u64,
        action: v1::SettleAction,
        duration: Duration,
        reason: String,
    ) -> Result<(), Error> {
        let generation = token >> GEN_SHIFT;
        let delivery_id = token & ID_MASK;
        let rx = self
            .start(generation, |request_id| {
                consume_request::Kind::Settle(v1::Settle {
                    request_id,
                    delivery_id,
                    action: action as i32,
                    duration_ms: u64::try_from(duration.as_millis()).unwrap_or(u64::MAX),
                    reason,
                })
            })
            .map_err(|e| e.error(delivery_id))?;
        match wait(rx).await? {
            (None, _) => Ok(()),
            (Some(e), _) => Err(error_from_proto(e, BACKEND)),
        }
    }
}

enum StartError {
    /// The delivery came from an earlier stream (or none is open).
    Unknown,
    /// The stream's sender is gone.
    Closed,
}

impl StartError {
    fn error(&self, delivery_id: u64) -> Error {
        match self {
            StartError::Unknown => Error::UnknownDelivery {
                id: delivery_id.to_string(),
            },
            StartError::Closed => Error::Unavailable {
                backend: BACKEND,
                source: "consume stream closed".into(),
            },
        }
    }
}

/// Waits for the server's answer to a settlement.
async fn wait(rx: oneshot::Receiver<Answer>) -> Result<Answer, Error> {
    match tokio::time::timeout(SETTLE_TIMEOUT, rx).await {
        Ok(Ok(answer)) => Ok(answer),
        Ok(Err(_)) => Err(Error::Unavailable {
            backend: BACKEND,
            source: "consume stream broke before the server answered".into(),
        }),
        Err(_) => Err(Error::Timeout {
            operation: "settle",
            after: SETTLE_TIMEOUT,
        }),
    }
}

#[async_trait]
impl Acker for SubAcker {
    async fn settle(&self, token: u64, settlement: Settlement) -> Result<(), Error> {
        let (action, duration, reason) = match settlement {
            Settlement::Ack => (v1::SettleAction::SettleAck, Duration::ZERO, String::new()),
            Settlement::Nack { delay } => (v1::SettleAction::SettleNack, delay, String::new()),
            Settlement::Reject { reason } => {
                (v1::SettleAction::SettleReject, Duration::ZERO, reason)
            }
            _ => {
                return Err(Error::InvalidArgument {
                    name: "settlement",
                    reason: "unknown settlement".into(),
                })
            }
        };
        self.request(token, action, duration, reason).await
    }

    /// One `AckMany` on the stream for the tokens of its generation, one
    /// answer for all of them.
    async fn ack_many(&self, tokens: &[u64], failed: &mut Vec<(u64, Error)>) {
        let generation = self.generation();
        let mut ids = Vec::with_capacity(tokens.len());
        for &t in tokens {
            if t >> GEN_SHIFT == generation {
                ids.push(t & ID_MASK);
            } else {
                failed.push((t, StartError::Unknown.error(t & ID_MASK)));
            }
        }
        if ids.is_empty() {
            return;
        }
        let token = |id: u64| (generation << GEN_SHIFT) | id;
        let rx = self.start(generation, |request_id| {
            consume_request::Kind::AckMany(v1::AckMany {
                request_id,
                delivery_ids: ids.clone(),
            })
        });
        let answer = match rx {
            Ok(rx) => wait(rx).await,
            Err(e) => {
                failed.extend(ids.iter().map(|&id| (token(id), e.error(id))));
                return;
            }
        };
        match answer {
            Ok((None, failures)) => {
                failed.extend(failures.into_iter().map(|f| {
                    let e = f.error.unwrap_or_default();
                    (token(f.delivery_id), error_from_proto(e, BACKEND))
                }));
            }
            Ok((Some(e), _)) => {
                // The whole request failed: every delivery failed the same way.
                failed.extend(
                    ids.iter()
                        .map(|&id| (token(id), error_from_proto(e.clone(), BACKEND))),
                );
            }
            Err(e) => {
                // `wait` fails only by timing out or by the stream breaking.
                let timed_out = matches!(e, Error::Timeout { .. });
                failed.extend(ids.iter().map(|&id| {
                    let e = if timed_out {
                        Error::Timeout {
                            operation: "settle",
                            after: SETTLE_TIMEOUT,
                        }
                    } else {
                        Error::Unavailable {
                            backend: BACKEND,
                            source: "consume stream broke before the server answered".into(),
                        }
                    };
                    (token(id), e)
                }));
            }
        }
    }

    async fn extend(&self, token: u64, by: Duration) -> Result<(), Error> {
        self.request(token, v1::SettleAction::SettleExtend, by, String::new())
            .await
    }

    fn release(&self, token: u64) {
        self.send_release(token, consume_request::Kind::Release);
    }

    fn release_unseen(&self, token: u64) {
        self.send_release(token, consume_request::Kind::ReleaseUnseen);
    }
}

fn subscribe_request(o: &SubscribeOptions) -> v1::SubscribeRequest {
    let (start, start_value) = match o.start_position() {
        StartPosition::Earliest => (v1::StartKind::StartEarliest, 0),
        StartPosition::Latest => (v1::StartKind::StartLatest, 0),
        StartPosition::Offset(n) => (v1::StartKind::StartOffset, n),
        StartPosition::Time(t) => (v1::StartKind::StartTime, t.as_millis()),
        _ => (v1::StartKind::StartDefault, 0),
    };
    v1::SubscribeRequest {
        pattern: o.pattern().to_owned(),
        group: o.group_name().map(str::to_owned),
        start: start as i32,
        start_value,
        max_in_flight: u32::try_from(o.max_in_flight_limit()).unwrap_or(u32::MAX),
        visibility_timeout_ms: o
            .visibility_timeout_value()
            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
        max_deliveries: o.max_deliveries_limit(),
        dead_letter_topic: o.dead_letter_topic_name().map(str::to_owned),
        mode: if o.group_mode() == GroupMode::Stream {
            v1::GroupMode::Stream as i32
        } else {
            v1::GroupMode::Queue as i32
        },
    }
}

fn credit_for(o: &SubscribeOptions) -> u32 {
    u32::try_from(o.max_in_flight_limit())
        .unwrap_or(u32::MAX)
        .max(1)
}

async fn open_stream(
    inner: &Inner,
    acker: &SubAcker,
    opts: &SubscribeOptions,
) -> Result<Streaming<v1::ConsumeResponse>, Error> {
    let (tx, rx) = mpsc::unbounded_channel();
    let _ = tx.send(v1::ConsumeRequest {
        kind: Some(consume_request::Kind::Subscribe(subscribe_request(opts))),
    });
    let _ = tx.send(v1::ConsumeRequest {
        kind: Some(consume_request::Kind::Credit(credit_for(opts))),
    });
    acker.install(tx);
    let mut stream = inner
        .raw
        .clone()
        .consume(UnboundedReceiverStream::new(rx))
        .await
        .map_err(|s| from_status(&s))?
        .into_inner();
    match stream.message().await {
        Ok(Some(v1::ConsumeResponse {
            kind: Some(consume_response::Kind::Subscribed(_)),
        })) => Ok(stream),
        Ok(Some(v1::ConsumeResponse {
            kind: Some(consume_response::Kind::Error(e)),
        })) => Err(error_from_proto(e, BACKEND)),
        Ok(_) => Err(Error::Unavailable {
            backend: BACKEND,
            source: "consume stream ended before the subscription started".into(),
        }),
        Err(s) => Err(from_status(&s)),
    }
}

/// Opens a remote subscription.
pub(crate) async fn subscribe(
    inner: Arc<Inner>,
    opts: SubscribeOptions,
) -> Result<Subscription, Error> {
    let acker = Arc::new(SubAcker::default());
    let stream = open_stream(&inner, &acker, &opts).await?;
    inner
        .subs
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .push(Arc::downgrade(&acker));
    let (dtx, drx) = mpsc::unbounded_channel();
    let credit = credit_for(&opts);
    tokio::spawn(read(inner, Arc::downgrade(&acker), opts, stream, dtx));
    Ok(Subscription::new(RemoteStream {
        rx: drx,
        acker,
        taken: 0,
        threshold: (credit / 4).max(1),
        closed: false,
    }))
}

type DeliveryTx = mpsc::UnboundedSender<Result<Delivery, Error>>;

/// Reads one subscription's responses; resubscribes with backoff if the
/// stream breaks while the subscription is still wanted.
async fn read(
    inner: Arc<Inner>,
    acker: Weak<SubAcker>,
    opts: SubscribeOptions,
    mut stream: Streaming<v1::ConsumeResponse>,
    dtx: DeliveryTx,
) {
    let mut dtx = Some(dtx);
    loop {
        let msg = stream.message().await;
        let kind = match msg {
            Ok(Some(r)) => r.kind,
            Ok(None) | Err(_) => {
                // Stream over: done unless the subscription is still wanted.
                let wanted = dtx.as_ref().is_some_and(|t| !t.is_closed())
                    && acker.strong_count() > 0
                    && !inner.closed.load(Ordering::Acquire);
                if !wanted {
                    return;
                }
                match reconnect(&inner, &acker, &opts, &mut dtx).await {
                    Some(s) => {
                        stream = s;
                        continue;
                    }
                    None => return,
                }
            }
        };
        match kind {
            Some(consume_response::Kind::Delivery(d)) => {
                let Some(a) = acker.upgrade() else { return };
                let Some(tx) = &dtx else { continue };
                let generation = a.generation();
                let item = match d.message.map(message_from_proto) {
                    Some(Ok(m)) => {
                        let info = DeliveryInfo {
                            topic: d.topic.into(),
                            partition: d.partition,
                            offset: d.offset,
                            attempt: d.attempt,
                        };
                        let token = (generation << GEN_SHIFT) | d.delivery_id;
                        Ok(Delivery::new(m, info, a, token))
                    }
                    Some(Err(e)) => Err(e),
                    None => Err(Error::Backend {
                        backend: BACKEND,
                        source: "delivery without a message".into(),
                    }),
                };
                // The stream was closed meanwhile: this one was never
                // handed out.
                if let Err(mpsc::error::SendError(Ok(d))) = tx.send(item) {
                    d.release_unseen();
                }
            }
            Some(consume_response::Kind::Result(r)) => {
                if let Some(a) = acker.upgrade() {
                    a.complete(r);
                }
            }
            Some(consume_response::Kind::Ended(_)) => dtx = None,
            Some(consume_response::Kind::Error(e)) => {
                if let Some(tx) = &dtx {
                    let _ = tx.send(Err(error_from_proto(e, BACKEND)));
                }
            }
            Some(consume_response::Kind::Subscribed(_)) | None => {}
        }
    }
}

async fn reconnect(
    inner: &Arc<Inner>,
    acker: &Weak<SubAcker>,
    opts: &SubscribeOptions,
    dtx: &mut Option<DeliveryTx>,
) -> Option<Streaming<v1::ConsumeResponse>> {
    let mut backoff = Duration::from_millis(100);
    loop {
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
        let wanted =
            dtx.as_ref().is_some_and(|t| !t.is_closed()) && !inner.closed.load(Ordering::Acquire);
        let a = acker.upgrade()?;
        if !wanted {
            return None;
        }
        match open_stream(inner, &a, opts).await {
            Ok(s) => {
                tracing::info!(
                    pattern = opts.pattern(),
                    "resubscribed after the stream broke"
                );
                return Some(s);
            }
            Err(e) if e.is_transient() => {
                tracing::debug!(error = %e, "resubscribe failed; retrying");
            }
            Err(e) => {
                if let Some(tx) = dtx.take() {
                    let _ = tx.send(Err(e));
                }
                return None;
            }
        }
    }
}

struct RemoteStream {
    rx: mpsc::UnboundedReceiver<Result<Delivery, Error>>,
    acker: Arc<SubAcker>,
    taken: u32,
    threshold: u32,
    closed: bool,
}

impl RemoteStream {
    fn took(&mut self, item: &Result<Delivery, Error>) {
        if item.is_ok() {
            self.taken += 1;
            if self.taken >= self.threshold {
                self.acker
                    .send(consume_request::Kind::Credit(std::mem::take(
                        &mut self.taken,
                    )));
            }
        }
    }
}

#[async_trait]
impl DeliveryStream for RemoteStream {
    async fn next(&mut self) -> Option<Result<Delivery, Error>> {
        if self.closed {
            return None;
        }
        let item = self.rx.recv().await?;
        self.took(&item);
        Some(item)
    }

    fn try_next(&mut self) -> Option<Result<Delivery, Error>> {
        if self.closed {
            return None;
        }
        let item = self.rx.try_recv().ok()?;
        self.took(&item);
        Some(item)
    }

    async fn close(&mut self) -> Result<(), Error> {
        self.closed = true;
        self.acker.close_remote();
        self.return_unseen();
        Ok(())
    }
}

impl RemoteStream {
    /// Gives back what was received but never handed out: the server
    /// redelivers it without counting an attempt.
    fn return_unseen(&mut self) {
        self.rx.close();
        while let Ok(item) = self.rx.try_recv() {
            if let Ok(d) = item {
                d.release_unseen();
            }
        }
    }
}

impl Drop for RemoteStream {
    fn drop(&mut self) {
        self.acker.close_remote();
        self.return_unseen();
    }
}
