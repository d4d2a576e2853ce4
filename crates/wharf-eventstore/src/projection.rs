//! Projections: read models fed from the global log, each with a durable
//! checkpoint, run side by side, rebuilt from zero on demand, their lag
//! exported as metrics.
//!
//! A [`Projection`] owns both its read model and its checkpoint, so it can
//! store them **atomically**: [`Projection::apply`] receives a batch of
//! events and the checkpoint to record with them — in one database
//! transaction for a SQL read model, in one file written and renamed for a
//! small local one. After a crash the projection resumes from the
//! checkpoint it stored, so each event's effect is applied exactly once
//! when the two are atomic (at least once when they are not).
//!
//! A [`ProjectionRunner`] runs each projection on a task of its own:
//! it subscribes to the store from the projection's checkpoint
//! ([`EventStore::subscribe`]: catch-up, then live, no gap, no duplicate),
//! applies events in batches of whatever is ready (up to
//! [`ProjectionRunner::batch_size`]), and after a failed `apply` (or a
//! failed subscription) waits (100 ms doubling to 5 s) and resumes from the
//! stored checkpoint, so a failed batch is applied again, whole. One
//! projection failing never stops the others.
//!
//! Metrics (through the [`metrics`] facade, so they appear in
//! `wharf serve`'s `/metrics` or any Prometheus exporter the application
//! installs), labelled `projection`:
//! - `wharf_projection_lag` (gauge): log positions between the checkpoint
//!   and the store's head while events are waiting; 0 once the
//!   subscription has nothing ready;
//! - `wharf_projection_events_total` (counter): events applied;
//! - `wharf_projection_failures_total` (counter): failed batches.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::{Arc, Mutex};
//! use wharf_eventstore::projection::{Projection, ProjectionError, ProjectionRunner};
//! use wharf_eventstore::{EmbeddedStore, EventData, EventStore, ExpectedVersion, Position,
//!     RecordedEvent, StreamId};
//!
//! /// Orders counted per customer, in memory (so it starts from zero).
//! #[derive(Default)]
//! struct OrdersPerCustomer(Mutex<(std::collections::BTreeMap<String, u64>, Position)>);
//!
//! #[async_trait::async_trait]
//! impl Projection for OrdersPerCustomer {
//!     async fn checkpoint(&self) -> Result<Position, ProjectionError> {
//!         Ok(self.0.lock().unwrap().1)
//!     }
//!     async fn apply(&self, events: &[RecordedEvent], next: Position) -> Result<(), ProjectionError> {
//!         let mut m = self.0.lock().unwrap();
//!         for e in events {
//!             *m.0.entry(e.tags[0].clone()).or_default() += 1;
//!         }
//!         m.1 = next; // with the rows, atomically
//!         Ok(())
//!     }
//!     async fn reset(&self) -> Result<(), ProjectionError> {
//!         *self.0.lock().unwrap() = Default::default();
//!         Ok(())
//!     }
//! }
//!
//! let store: Arc<dyn EventStore> = Arc::new(EmbeddedStore::temporary().await?);
//! for (order, customer) in [("order-1", "c7"), ("order-2", "c7"), ("order-3", "c9")] {
//!     let e = EventData::new("OrderPlaced", "{}").with_tag(customer);
//!     store.append(&StreamId::new(order)?, ExpectedVersion::NoStream, vec![e]).await?;
//! }
//! let view = Arc::new(OrdersPerCustomer::default());
//! let handle = ProjectionRunner::new(store.clone()).start("orders_per_customer", view.clone());
//! handle.catch_up().await?; // everything committed before this call is applied
//! assert_eq!(view.0.lock().unwrap().0["c7"], 2);
//! assert_eq!(handle.status().lag, 0);
//! handle.stop().await;
//! # Ok(()) }
//! ```

use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use async_trait::async_trait;
use futures_core::Stream;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use crate::error::Result;
use crate::store::{EventStore, EventSubscription};
use crate::types::{GlobalFilter, Position, RecordedEvent, SubscribeFrom};

/// What a read model's own storage fails with (a database error, an I/O
/// error…).
pub type ProjectionError = Box<dyn std::error::Error + Send + Sync>;

/// A read model fed from the global log. See the [module docs](self).
#[async_trait]
pub trait Projection: Send + Sync + 'static {
    /// Which events it reads (default: every event of a user stream).
    fn filter(&self) -> GlobalFilter {
        GlobalFilter::all()
    }

    /// Where to resume: the checkpoint stored by the last successful
    /// [`apply`](Projection::apply) (the position after its last event),
    /// [`Position::START`] for an empty read model.
    async fn checkpoint(&self) -> std::result::Result<Position, ProjectionError>;

    /// Applies `events` (in commit order, at least one) and stores `next`
    /// as the checkpoint — in the same transaction as the read model's
    /// rows wherever the storage allows, so after a crash either both or
    /// neither are there. On an error the runner resumes later from the
    /// stored checkpoint and hands the same events again.
    async fn apply(
        &self,
        events: &[RecordedEvent],
        next: Position,
    ) -> std::result::Result<(), ProjectionError>;

    /// Clears the read model and its checkpoint (a rebuild follows).
    async fn reset(&self) -> std::result::Result<(), ProjectionError>;
}

/// What a projection is doing.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ProjectionState {
    /// Starting, or resuming after a failure or a rebuild.
    Starting,
    /// Applying events (catching up or live).
    Running,
    /// The last batch (or the subscription) failed with this error; it
    /// resumes from its checkpoint after a pause.
    Failed(String),
    /// Stopped, or the store closed.
    Stopped,
}

/// A projection's progress, from [`ProjectionHandle::status`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ProjectionStatus {
    /// The name it was started with.
    pub name: String,
    /// What it is doing.
    pub state: ProjectionState,
    /// The checkpoint of the last applied batch.
    pub checkpoint: Position,
    /// The store's head when that batch was applied.
    pub head: Position,
    /// Positions between checkpoint and head while events were waiting; 0
    /// when the subscription had nothing ready.
    pub lag: u64,
    /// Events applied since it started (or was last rebuilt).
    pub applied: u64,
    /// Batches that failed since it started.
    pub failures: u64,
}

enum Control {
    Rebuild(oneshot::Sender<std::result::Result<(), String>>),
    Stop,
}

/// Runs [`Projection`]s against one store, each on a task of its own.
#[derive(Clone)]
pub struct ProjectionRunner {
    store: Arc<dyn EventStore>,
    batch_size: usize,
}

impl std::fmt::Debug for ProjectionRunner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProjectionRunner")
            .field("batch_size", &self.batch_size)
            .finish_non_exhaustive()
    }
}

impl ProjectionRunner {
    /// A runner on `store`, applying at most 512 events per batch.
    pub fn new(store: Arc<dyn EventStore>) -> ProjectionRunner {
        ProjectionRunner {
            store,
            batch_size: 512,
        }
    }

    /// The most events one [`Projection::apply`] receives (at least 1).
    pub fn batch_size(mut self, events: usize) -> ProjectionRunner {
        self.batch_size = events.max(1);
        self
    }

    /// Starts `projection` under `name` (the metrics label) on a task of
    /// its own; it runs until [`ProjectionHandle::stop`] (or the handle is
    /// dropped) or the store closes.
    ///
    /// # Panics
    /// Outside a tokio runtime.
    pub fn start(
        &self,
        name: impl Into<String>,
        projection: Arc<dyn Projection>,
    ) -> ProjectionHandle {
        let name = name.into();
        let (status, status_rx) = watch::channel(ProjectionStatus {
            name: name.clone(),
            state: ProjectionState::Starting,
            checkpoint: Position::START,
            head: Position::START,
            lag: 0,
            applied: 0,
            failures: 0,
        });
        let (control, control_rx) = mpsc::channel(4);
        let worker = Worker {
            store: self.store.clone(),
            projection: projection.clone(),
            batch_size: self.batch_size,
            status,
            control: control_rx,
            lag: metrics::gauge!("wharf_projection_lag", "projection" => name.clone()),
            events: metrics::counter!("wharf_projection_events_total", "projection" => name.clone()),
            failures: metrics::counter!("wharf_projection_failures_total", "projection" => name),
        };
        let task = tokio::spawn(worker.run());
        ProjectionHandle {
            store: self.store.clone(),
            filter: projection.filter(),
            status: status_rx,
            control,
            task: Some(task),
        }
    }
}

/// A running projection: its status, a rebuild, a stop. Dropping it stops
/// the projection.
pub struct ProjectionHandle {
    store: Arc<dyn EventStore>,
    filter: GlobalFilter,
    status: watch::Receiver<ProjectionStatus>,
    control: mpsc::Sender<Control>,
    task: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for ProjectionHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProjectionHandle")
            .field("status", &*self.status.borrow())
            .finish_non_exhaustive()
    }
}

impl ProjectionHandle {
    /// Its progress now.
    pub fn status(&self) -> ProjectionStatus {
        self.status.borrow().clone()
    }

    /// Waits until every event passing the projection's filter that was
    /// committed before this call has been applied, and returns the
    /// checkpoint then. Waits for ever while the projection keeps failing
    /// (wrap it in a timeout).
    ///
    /// # Errors
    /// The store's errors; [`EventStoreError::Closed`](crate::EventStoreError::Closed)
    /// once the projection stopped short of the target.
    pub async fn catch_up(&self) -> Result<Position> {
        let target = self.store.head().await?;
        let mut status = self.status.clone();
        loop {
            let (checkpoint, stopped) = {
                let s = status.borrow_and_update();
                (s.checkpoint, s.state == ProjectionState::Stopped)
            };
            if !self.pending_below(checkpoint, target).await? {
                return Ok(checkpoint);
            }
            if stopped || status.changed().await.is_err() {
                return Err(crate::EventStoreError::Closed);
            }
        }
    }

    /// Whether an event passing the filter lies in `[from, target)`.
    async fn pending_below(&self, mut from: Position, target: Position) -> Result<bool> {
        while from < target {
            let page = self.store.read_all(from, &self.filter, 1).await?;
            if let Some(e) = page.events.first() {
                return Ok(e.position < target);
            }
            if page.is_end || page.next <= from {
                return Ok(false);
            }
            from = page.next;
        }
        Ok(false)
    }

    /// Rebuilds the read model from zero: stops applying, calls
    /// [`Projection::reset`], then replays the whole log from
    /// [`Position::START`] and goes on live. Returns once the reset is done;
    /// follow the replay with [`status`](Self::status) (checkpoint against
    /// head) or wait for it with [`catch_up`](Self::catch_up).
    ///
    /// # Errors
    /// [`EventStoreError::Closed`](crate::EventStoreError::Closed) when the
    /// projection stopped; [`EventStoreError::Projection`](crate::EventStoreError::Projection)
    /// when the reset failed (the projection then resumes from the
    /// checkpoint it has).
    pub async fn rebuild(&self) -> Result<()> {
        let (tx, rx) = oneshot::channel();
        self.control
            .send(Control::Rebuild(tx))
            .await
            .map_err(|_| crate::EventStoreError::Closed)?;
        match rx.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(crate::EventStoreError::Projection(e)),
            Err(_) => Err(crate::EventStoreError::Closed),
        }
    }

    /// Stops the projection after the batch it is applying, and waits for
    /// it.
    pub async fn stop(mut self) {
        let _ = self.control.send(Control::Stop).await;
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for ProjectionHandle {
    fn drop(&mut self) {
        if self.task.is_some() {
            let _ = self.control.try_send(Control::Stop);
        }
    }
}

struct Worker {
    store: Arc<dyn EventStore>,
    projection: Arc<dyn Projection>,
    batch_size: usize,
    status: watch::Sender<ProjectionStatus>,
    control: mpsc::Receiver<Control>,
    lag: metrics::Gauge,
    events: metrics::Counter,
    failures: metrics::Counter,
}

/// How a run from the checkpoint ended.
enum Ended {
    /// Stop: the handle asked, was dropped, or the store closed.
    Stop,
    /// Start over from the (new) checkpoint.
    Resume,
    /// Failed: pause, then start over.
    Failed(String),
}

const FIRST_PAUSE: Duration = Duration::from_millis(100);
const MAX_PAUSE: Duration = Duration::from_secs(5);

impl Worker {
    async fn run(mut self) {
        let mut pause = FIRST_PAUSE;
        loop {
            match self.run_from_checkpoint().await {
                Ended::Stop => break,
                Ended::Resume => pause = FIRST_PAUSE,
                Ended::Failed(e) => {
                    tracing::warn!(error = %e, "projection failed; resuming from its checkpoint");
                    self.failures.increment(1);
                    self.status.send_modify(|s| {
                        s.state = ProjectionState::Failed(e);
                        s.failures += 1;
                    });
                    tokio::select! {
                        () = tokio::time::sleep(pause) => {}
                        c = self.control.recv() => match c {
                            Some(Control::Rebuild(reply)) => {
                                self.rebuild(reply).await;
                                pause = FIRST_PAUSE;
                                continue;
                            }
                            Some(Control::Stop) | None => break,
                        },
                    }
                    pause = (pause * 2).min(MAX_PAUSE);
                }
            }
        }
        self.status
            .send_modify(|s| s.state = ProjectionState::Stopped);
    }

    async fn rebuild(&mut self, reply: oneshot::Sender<std::result::Result<(), String>>) {
        match self.projection.reset().await {
            Ok(()) => {
                self.status.send_modify(|s| {
                    s.state = ProjectionState::Starting;
                    s.checkpoint = Position::START;
                    s.applied = 0;
                });
                let _ = reply.send(Ok(()));
            }
            Err(e) => {
                let _ = reply.send(Err(e.to_string()));
            }
        }
    }

    async fn run_from_checkpoint(&mut self) -> Ended {
        let from = match self.projection.checkpoint().await {
            Ok(p) => p,
            Err(e) => return Ended::Failed(format!("reading the checkpoint: {e}")),
        };
        let mut sub = match self
            .store
            .subscribe(SubscribeFrom::Position(from), self.projection.filter())
            .await
        {
            Ok(s) => s,
            Err(crate::EventStoreError::Closed) => return Ended::Stop,
            Err(e) => return Ended::Failed(format!("subscribing: {e}")),
        };
        self.status.send_modify(|s| {
            s.state = ProjectionState::Running;
            s.checkpoint = from;
        });
        let mut batch = Vec::with_capacity(self.batch_size);
        loop {
            tokio::select! {
                biased;
                c = self.control.recv() => match c {
                    Some(Control::Rebuild(reply)) => {
                        drop(sub);
                        self.rebuild(reply).await;
                        return Ended::Resume;
                    }
                    Some(Control::Stop) | None => return Ended::Stop,
                },
                first = sub.next() => match first {
                    None => return Ended::Stop,
                    Some(Err(crate::EventStoreError::Closed)) => return Ended::Stop,
                    Some(Err(e)) => return Ended::Failed(format!("subscription: {e}")),
                    Some(Ok(e)) => batch.push(e),
                },
            }
            // Whatever else is ready, up to the batch size.
            let mut closed = false;
            while batch.len() < self.batch_size {
                match ready(&mut sub) {
                    Some(Some(Ok(e))) => batch.push(e),
                    Some(Some(Err(e))) => return Ended::Failed(format!("subscription: {e}")),
                    Some(None) => {
                        closed = true;
                        break;
                    }
                    None => break,
                }
            }
            let next = batch.last().map_or(from, |e| e.position.next());
            if let Err(e) = self.projection.apply(&batch, next).await {
                return Ended::Failed(format!(
                    "applying positions {}..{}: {e}",
                    batch[0].position, next
                ));
            }
            let n = batch.len() as u64;
            batch.clear();
            self.events.increment(n);
            let head = self.store.head().await.unwrap_or(next);
            let lag = if sub.is_idle() {
                0
            } else {
                head.0.saturating_sub(next.0)
            };
            self.lag.set(lag as f64);
            self.status.send_modify(|s| {
                s.state = ProjectionState::Running;
                s.checkpoint = next;
                s.head = head;
                s.lag = lag;
                s.applied += n;
            });
            if closed {
                return Ended::Stop;
            }
        }
    }
}

/// The subscription's next event if one is ready now: `None` when it would
/// wait, `Some(None)` when it ended.
fn ready(sub: &mut EventSubscription) -> Option<Option<Result<RecordedEvent>>> {
    let waker = std::task::Waker::noop();
    let mut cx = std::task::Context::from_waker(waker);
    match Pin::new(sub).poll_next(&mut cx) {
        Poll::Ready(x) => Some(x),
        Poll::Pending => None,
    }
}
