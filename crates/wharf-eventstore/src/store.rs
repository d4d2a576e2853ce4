//! The [`EventStore`] trait — object-safe and async, so an application holds
//! an `Arc<dyn EventStore>` and runs unchanged on the embedded store, on
//! PostgreSQL or against a remote `wharf serve` — and [`EventSubscription`],
//! the catch-up-then-live stream a subscription returns.

use std::collections::VecDeque;
use std::pin::Pin;
use std::task::{Context, Poll};

use async_trait::async_trait;
use futures_core::Stream;
use tokio::sync::mpsc;

use crate::error::{EventStoreError, Result};
use crate::types::{
    AllSlice, AppendRequest, AppendResult, EventData, ExpectedVersion, GlobalFilter, Limits,
    Position, ReadStream, RecordedEvent, StreamId, StreamInfo, StreamMetadata, SubscribeFrom,
};

/// An event store: streams of events with optimistic concurrency, one
/// global log in commit order, conditional appends across streams, and
/// subscriptions.
///
/// Every implementation passes the conformance suite in
/// `wharf_testkit::eventstore`; the guarantees below are what it checks.
///
/// - An append is atomic: all its events are stored, contiguous in their
///   stream, or none is. A failed append (conflict, bad input, a storage
///   error) stores nothing.
/// - The expected version and the condition are decided on the latest
///   state: two appends never both succeed on the same expectation.
/// - An append returns only once durable (the embedded store: after an
///   `fdatasync` covers it; concurrent appends share one).
/// - The global log is read in commit order; positions only grow.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), wharf_eventstore::EventStoreError> {
/// use std::sync::Arc;
/// use wharf_eventstore::{EmbeddedStore, EventData, EventStore, ExpectedVersion, ReadStream, StreamId};
///
/// let store: Arc<dyn EventStore> = Arc::new(EmbeddedStore::in_memory().await?);
/// let order = StreamId::new("order-1")?;
/// let r = store
///     .append(&order, ExpectedVersion::NoStream, vec![EventData::new("OrderPlaced", "{}")])
///     .await?;
/// assert_eq!(r.last_version, 0);
/// let events = store.read_stream(&order, ReadStream::forwards()).await?;
/// assert_eq!(events[0].event_type, "OrderPlaced");
/// # Ok(()) }
/// ```
#[async_trait]
pub trait EventStore: Send + Sync + 'static {
    /// The size limits this store enforces.
    fn limits(&self) -> Limits;

    /// Appends `request.events` to `request.stream` if the stream is at
    /// `request.expected` and (when given) no event matching
    /// `request.condition` was written after its position — both decided
    /// together, on the latest state.
    ///
    /// # Errors
    /// [`EventStoreError::WrongExpectedVersion`] naming the stream, the
    /// expected and the actual version; [`EventStoreError::ConditionFailed`]
    /// naming a conflicting position; [`EventStoreError::StreamDeleted`]
    /// for a tombstoned stream; [`EventStoreError::InvalidArgument`] and
    /// [`EventStoreError::TooLarge`] for bad input (see
    /// [`AppendRequest::validate`]); storage errors. Nothing is stored on
    /// any error.
    ///
    /// # Cancel safety
    /// Not cancel safe in the sense that dropping the future after the
    /// append was decided does not undo it: the events may be stored
    /// although the caller never saw the result (as with a lost reply).
    /// Retry with the same event ids and [`ExpectedVersion::Exact`] to find
    /// out: a conflict whose stream holds those ids means it was stored.
    async fn append_with(&self, request: AppendRequest) -> Result<AppendResult>;

    /// Appends `events` to `stream` expecting `expected` (no condition).
    ///
    /// # Errors
    /// As [`EventStore::append_with`].
    async fn append(
        &self,
        stream: &StreamId,
        expected: ExpectedVersion,
        events: Vec<EventData>,
    ) -> Result<AppendResult> {
        self.append_with(AppendRequest::new(stream.clone(), expected, events))
            .await
    }

    /// Reads events of one stream, forwards or backwards from a version.
    /// Only versions the stream's metadata still shows are returned
    /// (truncate-before, max-count, max-age).
    ///
    /// # Errors
    /// [`EventStoreError::StreamNotFound`] for a stream with no events (or
    /// soft-deleted), [`EventStoreError::StreamDeleted`] for a tombstoned
    /// one, [`EventStoreError::InvalidArgument`] for a version above
    /// [`MAX_VERSION`](crate::MAX_VERSION), storage errors.
    async fn read_stream(
        &self,
        stream: &StreamId,
        options: ReadStream,
    ) -> Result<Vec<RecordedEvent>>;

    /// Reads the global log in commit order from `from` (inclusive): at
    /// most `max_count` events passing `filter`. A page may hold fewer
    /// events than asked even before the end (a filtered read stops after
    /// scanning a bounded amount); continue from [`AllSlice::next`].
    ///
    /// # Errors
    /// [`EventStoreError::InvalidArgument`] for a position above
    /// [`MAX_VERSION`](crate::MAX_VERSION) or a bad filter, storage errors.
    async fn read_all(
        &self,
        from: Position,
        filter: &GlobalFilter,
        max_count: usize,
    ) -> Result<AllSlice>;

    /// Subscribes to the global log: first every stored event from `from`
    /// passing `filter` (catch-up), then each new one as it is committed
    /// (live), in commit order, with no gap and no duplicate across the
    /// switch. The subscription ends when the store closes.
    ///
    /// # Errors
    /// As [`EventStore::read_all`].
    async fn subscribe(
        &self,
        from: SubscribeFrom,
        filter: GlobalFilter,
    ) -> Result<EventSubscription>;

    /// A stream's version, metadata and deletion state. A stream never
    /// written reports [`CurrentVersion::NoStream`](crate::CurrentVersion::NoStream).
    ///
    /// # Errors
    /// [`EventStoreError::StreamDeleted`] for a tombstoned stream, storage
    /// errors.
    async fn stream_info(&self, stream: &StreamId) -> Result<StreamInfo>;

    /// Replaces a stream's metadata (last writer wins). Allowed before the
    /// stream's first event.
    ///
    /// # Errors
    /// [`EventStoreError::StreamDeleted`], [`EventStoreError::InvalidArgument`]
    /// (see [`StreamMetadata::validate`]), storage errors.
    async fn set_stream_metadata(
        &self,
        stream: &StreamId,
        metadata: StreamMetadata,
    ) -> Result<Position>;

    /// Soft-deletes a stream: its events are no longer read (its
    /// truncate-before moves past the last version) and it reads as not
    /// found, until an append recreates it, numbering on from the last
    /// version. Its events stay in the global log.
    ///
    /// # Errors
    /// [`EventStoreError::StreamNotFound`] for a stream without events,
    /// [`EventStoreError::WrongExpectedVersion`], [`EventStoreError::StreamDeleted`],
    /// storage errors.
    async fn delete_stream(&self, stream: &StreamId, expected: ExpectedVersion)
        -> Result<Position>;

    /// Tombstones (hard-deletes) a stream: every later read, append or
    /// metadata change of it fails with [`EventStoreError::StreamDeleted`],
    /// for ever. Its events stay in the global log.
    ///
    /// # Errors
    /// [`EventStoreError::WrongExpectedVersion`], [`EventStoreError::StreamDeleted`]
    /// if it already was, storage errors.
    async fn tombstone_stream(
        &self,
        stream: &StreamId,
        expected: ExpectedVersion,
    ) -> Result<Position>;

    /// Names of streams with at least one event or metadata, in byte order,
    /// starting with `prefix` and after `after`, at most `max_count`.
    ///
    /// # Errors
    /// Storage errors.
    async fn list_streams(
        &self,
        prefix: &str,
        after: Option<&StreamId>,
        max_count: usize,
    ) -> Result<Vec<StreamId>>;

    /// The position the next committed record will get at least: every
    /// event already committed is below it.
    ///
    /// # Errors
    /// Storage errors, [`EventStoreError::Closed`].
    async fn head(&self) -> Result<Position>;

    /// Closes the store: later calls fail with [`EventStoreError::Closed`]
    /// and subscriptions end.
    ///
    /// # Errors
    /// Storage errors while closing.
    async fn close(&self) -> Result<()>;
}

/// What a subscription's producer sends: a batch of events in commit
/// order, or the error that ends it.
pub type SubscriptionSender = mpsc::Sender<Result<Vec<RecordedEvent>>>;
/// The receiving end of a [`SubscriptionSender`].
pub type SubscriptionReceiver = mpsc::Receiver<Result<Vec<RecordedEvent>>>;

/// The events of a subscription, in commit order. Also a
/// [`Stream`](futures_core::Stream) of them.
///
/// Dropping it stops the subscription.
#[derive(Debug)]
pub struct EventSubscription {
    rx: SubscriptionReceiver,
    buf: VecDeque<RecordedEvent>,
    failed: bool,
}

impl EventSubscription {
    /// A subscription fed by a producer through `rx`: batches of events in
    /// commit order, or an error that ends it (for store implementations).
    pub fn from_channel(rx: SubscriptionReceiver) -> EventSubscription {
        EventSubscription {
            rx,
            buf: VecDeque::new(),
            failed: false,
        }
    }

    /// A channel pair for [`EventSubscription::from_channel`] with room
    /// for `batches` batches in flight.
    pub fn channel(batches: usize) -> (SubscriptionSender, SubscriptionReceiver) {
        mpsc::channel(batches.max(1))
    }

    /// The next event; `None` once the store closed (or the producer
    /// stopped). An error ends the subscription.
    ///
    /// # Cancel safety
    /// Cancel safe: an event is removed only when returned.
    pub async fn next(&mut self) -> Option<Result<RecordedEvent>> {
        std::future::poll_fn(|cx| self.poll_next_event(cx)).await
    }

    /// Whether no event is ready now (none buffered, none sent): a reader
    /// that drained it is as far as the producer has got.
    pub fn is_idle(&self) -> bool {
        self.buf.is_empty() && self.rx.is_empty()
    }

    fn poll_next_event(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<RecordedEvent>>> {
        loop {
            if let Some(e) = self.buf.pop_front() {
                return Poll::Ready(Some(Ok(e)));
            }
            if self.failed {
                return Poll::Ready(None);
            }
            match self.rx.poll_recv(cx) {
                Poll::Ready(Some(Ok(batch))) => self.buf.extend(batch),
                Poll::Ready(Some(Err(e))) => {
                    self.failed = true;
                    return Poll::Ready(Some(Err(e)));
                }
                Poll::Ready(None) => return Poll::Ready(None),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

impl Stream for EventSubscription {
    type Item = Result<RecordedEvent, EventStoreError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.get_mut().poll_next_event(cx)
    }
}
