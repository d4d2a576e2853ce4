//! [`RemoteEventStore`]: `wharf_eventstore::EventStore` over gRPC
//! (`wharf.v1.EventStore`) to the event store of a `wharf serve`, on the
//! client's one HTTP/2 connection. Requests are validated here against the
//! server's limits first (the server checks again), errors come back typed
//! from the status details, long reads are paged, and a subscription
//! whose stream breaks resumes after the last event it delivered, so it
//! stays gap-free and duplicate-free across reconnects.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::watch;
use wharf_eventstore::{
    AllSlice, AppendRequest, AppendResult, Direction, EventStore, EventStoreError,
    EventSubscription, GlobalFilter, Limits, Position, ReadStream, RecordedEvent, Result,
    StreamFrom, StreamId, StreamInfo, StreamMetadata, SubscribeFrom, SubscriptionSender,
};
use wharf_proto::eventstore as conv;
use wharf_proto::v1;
use wharf_proto::v1::event_store_client::EventStoreClient;

use crate::{connect_channel, AuthChannel, Client};

/// Events asked for per page of a long stream read or listing.
const PAGE: usize = 10_000;

type Raw = EventStoreClient<AuthChannel>;

fn from_status(s: &tonic::Status) -> EventStoreError {
    conv::es_error_from_status(s)
}

/// The event store of a remote `wharf serve`, as an
/// [`EventStore`]. Cheap to clone; [`EventStore::close`] closes every
/// clone (not the server's store) and ends their subscriptions.
///
/// ```no_run
/// # async fn demo() -> Result<(), wharf_eventstore::EventStoreError> {
/// use wharf_eventstore::{EventData, EventStore, ExpectedVersion, StreamId};
/// let store = wharf_client::RemoteEventStore::connect("http://127.0.0.1:7420", None).await?;
/// let order = StreamId::new("order-1")?;
/// store.append(&order, ExpectedVersion::NoStream, vec![EventData::new("OrderPlaced", "{}")]).await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct RemoteEventStore {
    inner: Arc<Inner>,
}

struct Inner {
    raw: Raw,
    limits: Limits,
    closed: AtomicBool,
    /// Set to true on close: subscriptions end.
    stop: watch::Sender<bool>,
}

impl std::fmt::Debug for RemoteEventStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteEventStore")
            .field("limits", &self.inner.limits)
            .field("closed", &self.inner.closed.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

/// A raw `wharf.v1.EventStore` gRPC client for `url`, sending `token` if
/// given, without the limits handshake (for tools and tests that call the
/// RPCs directly).
///
/// # Errors
/// As [`Client::connect`].
pub async fn raw_event_store_client(
    url: &str,
    token: Option<&str>,
) -> std::result::Result<EventStoreClient<AuthChannel>, wharf_core::Error> {
    Ok(
        EventStoreClient::new(connect_channel(url, token, None).await?)
            .max_decoding_message_size(usize::MAX)
            .max_encoding_message_size(usize::MAX),
    )
}

impl Client {
    /// The server's event store, on this client's connection.
    ///
    /// # Errors
    /// As [`RemoteEventStore::connect`].
    pub async fn event_store(&self) -> Result<RemoteEventStore> {
        RemoteEventStore::from_channel(self.inner.channel.clone()).await
    }
}

impl RemoteEventStore {
    /// Connects to the event store of the `wharf serve` at `url`, sending
    /// `token` if given, and reads its limits.
    ///
    /// # Errors
    /// [`EventStoreError::Unavailable`] if the server cannot be reached,
    /// [`EventStoreError::PermissionDenied`] for an unknown token,
    /// [`EventStoreError::InvalidArgument`] for a bad URL or token.
    pub async fn connect(url: &str, token: Option<&str>) -> Result<RemoteEventStore> {
        RemoteEventStore::connect_with(url, token, None).await
    }

    /// As [`RemoteEventStore::connect`], trusting the PEM CA certificate
    /// `ca_pem` for an `https://` URL (needs the `tls` feature).
    ///
    /// # Errors
    /// As [`RemoteEventStore::connect`].
    pub async fn connect_with(
        url: &str,
        token: Option<&str>,
        ca_pem: Option<&[u8]>,
    ) -> Result<RemoteEventStore> {
        let channel = connect_channel(url, token, ca_pem)
            .await
            .map_err(|e| match e {
                wharf_core::Error::InvalidArgument { name, reason } => {
                    EventStoreError::InvalidArgument {
                        field: name,
                        value: String::new(),
                        requirement: wharf_proto::convert::intern(&reason),
                    }
                }
                other => EventStoreError::Unavailable {
                    source: Box::new(other),
                },
            })?;
        RemoteEventStore::from_channel(channel).await
    }

    async fn from_channel(channel: AuthChannel) -> Result<RemoteEventStore> {
        let mut raw = EventStoreClient::new(channel)
            .max_decoding_message_size(usize::MAX)
            .max_encoding_message_size(usize::MAX);
        let limits = raw
            .limits(v1::Empty {})
            .await
            .map_err(|s| from_status(&s))?
            .into_inner();
        let (stop, _) = watch::channel(false);
        Ok(RemoteEventStore {
            inner: Arc::new(Inner {
                raw,
                limits: conv::limits_from_proto(&limits),
                closed: AtomicBool::new(false),
                stop,
            }),
        })
    }

    fn raw(&self) -> Result<Raw> {
        if self.inner.closed.load(Ordering::Acquire) {
            return Err(EventStoreError::Closed);
        }
        Ok(self.inner.raw.clone())
    }
}

#[async_trait]
impl EventStore for RemoteEventStore {
    fn limits(&self) -> Limits {
        self.inner.limits
    }

    async fn append_with(&self, request: AppendRequest) -> Result<AppendResult> {
        let mut raw = self.raw()?;
        request.validate(&self.inner.limits)?;
        let r = raw
            .append(conv::append_to_proto(&request))
            .await
            .map_err(|s| from_status(&s))?
            .into_inner();
        Ok(conv::append_result_from_proto(&r))
    }

    async fn read_stream(
        &self,
        stream: &StreamId,
        options: ReadStream,
    ) -> Result<Vec<RecordedEvent>> {
        let mut raw = self.raw()?;
        let mut out: Vec<RecordedEvent> = Vec::new();
        let mut remaining = options.max_count;
        let mut page = options;
        loop {
            let ask = remaining.min(PAGE);
            let r = raw
                .read_stream(conv::read_stream_to_proto(stream, &page.max_count(ask)))
                .await
                .map_err(|s| from_status(&s))?
                .into_inner();
            let got = conv::events_from_proto(r.events)?;
            let n = got.len();
            out.extend(got);
            remaining -= n.min(remaining);
            if n < ask || remaining == 0 {
                return Ok(out);
            }
            // Page on from the version after (before) the last one read.
            let last = out.last().map_or(0, |e| e.version);
            let next = match options.direction {
                Direction::Forwards => last.checked_add(1),
                Direction::Backwards => last.checked_sub(1),
            };
            match next {
                Some(v) => page = page.from(StreamFrom::Version(v)),
                None => return Ok(out),
            }
        }
    }

    async fn read_all(
        &self,
        from: Position,
        filter: &GlobalFilter,
        max_count: usize,
    ) -> Result<AllSlice> {
        let mut raw = self.raw()?;
        filter.validate()?;
        let r = raw
            .read_all(v1::EsReadAllRequest {
                from: from.0,
                filter: Some(conv::filter_to_proto(filter)),
                max_count: u32::try_from(max_count.min(PAGE)).unwrap_or(u32::MAX),
            })
            .await
            .map_err(|s| from_status(&s))?
            .into_inner();
        Ok(AllSlice {
            events: conv::events_from_proto(r.events)?,
            next: Position(r.next),
            is_end: r.is_end,
        })
    }

    async fn subscribe(
        &self,
        from: SubscribeFrom,
        filter: GlobalFilter,
    ) -> Result<EventSubscription> {
        let mut raw = self.raw()?;
        filter.validate()?;
        // `End` is pinned to a position now, so a resume after a break
        // neither skips what was committed meanwhile nor repeats anything.
        let from = match from {
            SubscribeFrom::End => SubscribeFrom::Position(self.head().await?),
            other => other,
        };
        let proto_filter = conv::filter_to_proto(&filter);
        let first = open_stream(&mut raw, from, &proto_filter)
            .await
            .map_err(|s| from_status(&s))?;
        let (tx, rx) = EventSubscription::channel(16);
        let stop = self.inner.stop.subscribe();
        tokio::spawn(pump(raw, first, from, proto_filter, tx, stop));
        Ok(EventSubscription::from_channel(rx))
    }

    async fn stream_info(&self, stream: &StreamId) -> Result<StreamInfo> {
        let mut raw = self.raw()?;
        let r = raw
            .stream_info(v1::EsStreamName {
                stream: stream.as_str().to_owned(),
            })
            .await
            .map_err(|s| from_status(&s))?
            .into_inner();
        conv::info_from_proto(r)
    }

    async fn set_stream_metadata(
        &self,
        stream: &StreamId,
        metadata: StreamMetadata,
    ) -> Result<Position> {
        let mut raw = self.raw()?;
        metadata.validate()?;
        let r = raw
            .set_stream_metadata(v1::EsSetMetadataRequest {
                stream: stream.as_str().to_owned(),
                metadata: Some(conv::metadata_to_proto(&metadata)),
            })
            .await
            .map_err(|s| from_status(&s))?
            .into_inner();
        Ok(Position(r.position))
    }

    async fn delete_stream(
        &self,
        stream: &StreamId,
        expected: wharf_eventstore::ExpectedVersion,
    ) -> Result<Position> {
        self.delete(stream, expected, false).await
    }

    async fn tombstone_stream(
        &self,
        stream: &StreamId,
        expected: wharf_eventstore::ExpectedVersion,
    ) -> Result<Position> {
        self.delete(stream, expected, true).await
    }

    async fn list_streams(
        &self,
        prefix: &str,
        after: Option<&StreamId>,
        max_count: usize,
    ) -> Result<Vec<StreamId>> {
        let mut raw = self.raw()?;
        let mut out: Vec<StreamId> = Vec::new();
        let mut after = after.map(|a| a.as_str().to_owned());
        let mut remaining = max_count;
        loop {
            let ask = remaining.min(PAGE);
            let r = raw
                .list_streams(v1::EsListStreamsRequest {
                    prefix: prefix.to_owned(),
                    after: after.clone(),
                    max_count: u32::try_from(ask).unwrap_or(u32::MAX),
                })
                .await
                .map_err(|s| from_status(&s))?
                .into_inner();
            let n = r.streams.len();
            for s in r.streams {
                out.push(StreamId::new(s)?);
            }
            remaining -= n.min(remaining);
            if n < ask || remaining == 0 {
                return Ok(out);
            }
            after = out.last().map(|s| s.as_str().to_owned());
        }
    }

    async fn head(&self) -> Result<Position> {
        let mut raw = self.raw()?;
        let r = raw
            .head(v1::Empty {})
            .await
            .map_err(|s| from_status(&s))?
            .into_inner();
        Ok(Position(r.position))
    }

    async fn close(&self) -> Result<()> {
        self.inner.closed.store(true, Ordering::Release);
        self.inner.stop.send_replace(true);
        Ok(())
    }
}

impl RemoteEventStore {
    async fn delete(
        &self,
        stream: &StreamId,
        expected: wharf_eventstore::ExpectedVersion,
        tombstone: bool,
    ) -> Result<Position> {
        let mut raw = self.raw()?;
        let (kind, version) = conv::expected_to_proto(expected);
        let r = raw
            .delete_stream(v1::EsDeleteRequest {
                stream: stream.as_str().to_owned(),
                expected: kind,
                expected_version: version,
                tombstone,
            })
            .await
            .map_err(|s| from_status(&s))?
            .into_inner();
        Ok(Position(r.position))
    }
}

async fn open_stream(
    raw: &mut Raw,
    from: SubscribeFrom,
    filter: &v1::EsFilter,
) -> Result<tonic::Streaming<v1::EsEvents>, tonic::Status> {
    let (kind, position) = conv::subscribe_from_to_proto(from);
    Ok(raw
        .subscribe(v1::EsSubscribeRequest {
            from: kind,
            position,
            filter: Some(filter.clone()),
        })
        .await?
        .into_inner())
}

/// Resolves once the store is closed (never if every handle was dropped
/// without closing: the subscription lives on until dropped).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    if stop.wait_for(|s| *s).await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// Whether a subscription error may pass by resubscribing: the connection
/// or the server went away, not a refusal of the request itself.
fn transient(e: &EventStoreError) -> bool {
    matches!(
        e,
        EventStoreError::Unavailable { .. } | EventStoreError::Closed
    )
}

/// Forwards a subscription's batches to its [`EventSubscription`]; when the
/// stream breaks or ends (a server restart), subscribes again from the
/// position after the last event forwarded, with backoff, until the store
/// is closed or the subscription dropped.
async fn pump(
    mut raw: Raw,
    mut stream: tonic::Streaming<v1::EsEvents>,
    mut from: SubscribeFrom,
    filter: v1::EsFilter,
    tx: SubscriptionSender,
    mut stop: watch::Receiver<bool>,
) {
    let mut backoff = Duration::from_millis(50);
    loop {
        loop {
            let msg = tokio::select! {
                m = stream.message() => m,
                () = stopped(&mut stop) => return,
                () = tx.closed() => return,
            };
            match msg {
                Ok(Some(batch)) => {
                    backoff = Duration::from_millis(50);
                    let events = match conv::events_from_proto(batch.events) {
                        Ok(e) => e,
                        Err(e) => {
                            let _ = tx.send(Err(e)).await;
                            return;
                        }
                    };
                    if let Some(last) = events.last() {
                        from = SubscribeFrom::Position(last.position.next());
                    }
                    if tx.send(Ok(events)).await.is_err() {
                        return;
                    }
                }
                Ok(None) => break,
                Err(s) => {
                    let e = from_status(&s);
                    if !transient(&e) {
                        let _ = tx.send(Err(e)).await;
                        return;
                    }
                    break;
                }
            }
        }
        // Resubscribe after the last event forwarded.
        loop {
            tokio::select! {
                () = tokio::time::sleep(backoff) => {}
                () = stopped(&mut stop) => return,
                () = tx.closed() => return,
            }
            backoff = (backoff * 2).min(Duration::from_secs(5));
            match open_stream(&mut raw, from, &filter).await {
                Ok(s) => {
                    stream = s;
                    break;
                }
                Err(s) => {
                    let e = from_status(&s);
                    if !transient(&e) {
                        let _ = tx.send(Err(e)).await;
                        return;
                    }
                }
            }
        }
    }
}
