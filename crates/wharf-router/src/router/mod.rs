//! The [`Router`]: binds handler services to subscriptions and runs them
//! until shutdown.
//!
//! Per route, one fetch task pulls deliveries in batches and hashes each
//! message's key to one of N ordered lanes (bounded channels; keyless
//! messages go round-robin); each lane is one task that handles its messages
//! in order and settles each as soon as its handler is done. In-flight work
//! is bounded by the subscription's `max_in_flight`. Shutdown stops fetching,
//! drains what was fetched up to a deadline, then drops the rest unsettled
//! so the backend redelivers it (what no handler saw goes back without
//! counting a delivery attempt).

mod lane;
mod report;

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tower::Service;
use wharf_core::{
    Backend, Capability, Delivery, Error, GroupMode, Result, StartPosition, SubscribeOptions,
    Subscription,
};

use crate::outcome::{HandlerError, Outcome};
use crate::request::{Context, Request};
pub(crate) use lane::{settle, At};
pub(crate) use report::{Counter, LaneCounters};
pub use report::{RouteReport, ShutdownReport};

/// Default number of ordered lanes per route.
pub const DEFAULT_LANES: usize = 16;
/// Default time in-flight work gets to finish after shutdown is requested.
pub const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(30);

/// Something that can pause a route's fetching, e.g. an open
/// [`crate::breaker::CircuitBreaker`]. The fetch task asks before every fetch.
pub trait FetchGate: Send + Sync + 'static {
    /// Whether fetching may go on now (fast path, called per fetch).
    fn may_fetch(&self) -> bool;
    /// Resolves once fetching may go on again.
    fn until_may_fetch(&self) -> Pin<Box<dyn Future<Output = ()> + Send + '_>>;
}

/// One handler bound to one subscription, with its concurrency settings.
///
/// ```
/// use wharf_core::{Capability, SubscribeOptions};
/// use wharf_router::{handler_fn, Outcome, Route, HandlerError, Request};
/// let route = Route::new(
///     SubscribeOptions::new("orders").group("billing"),
///     handler_fn(|_req: Request| async { Ok::<_, HandlerError>(Outcome::Ack) }),
/// )
/// .lanes(4)
/// .requires(Capability::NackWithDelay);
/// # let _ = route;
/// ```
#[must_use]
pub struct Route<S> {
    options: SubscribeOptions,
    service: S,
    lanes: usize,
    lane_capacity: usize,
    fetch_batch: usize,
    requires: Vec<Capability>,
    gate: Option<Arc<dyn FetchGate>>,
    keep_leases: bool,
}

impl<S> Route<S>
where
    S: Service<Request, Response = Outcome, Error = HandlerError> + Clone + Send + 'static,
    S::Future: Send,
{
    /// Routes deliveries of `options` to `service`, with [`DEFAULT_LANES`] lanes.
    pub fn new(options: SubscribeOptions, service: S) -> Self {
        Route {
            options,
            service,
            lanes: DEFAULT_LANES,
            lane_capacity: 4,
            fetch_batch: 64,
            requires: Vec::new(),
            gate: None,
            keep_leases: true,
        }
    }

    /// Whether to extend the lease of a delivery while its handler runs
    /// (every half visibility timeout). On by default; it applies only when
    /// the options set a visibility timeout and the backend has
    /// [`Capability::ExtendLease`].
    pub fn keep_leases(mut self, on: bool) -> Self {
        self.keep_leases = on;
        self
    }

    /// Number of ordered lanes (≥ 1): how many messages with different keys
    /// are handled at once. `1` handles the whole subscription in order.
    pub fn lanes(mut self, n: usize) -> Self {
        self.lanes = n.max(1);
        self
    }

    /// How many fetched batches may wait in each lane (≥ 1).
    pub fn lane_capacity(mut self, n: usize) -> Self {
        self.lane_capacity = n.max(1);
        self
    }

    /// Largest number of deliveries taken from the subscription at once (≥ 1).
    pub fn fetch_batch(mut self, n: usize) -> Self {
        self.fetch_batch = n.max(1);
        self
    }

    /// Refuse to start unless the backend has `capability` (for handlers or
    /// middleware that rely on it, e.g. [`Capability::NackWithDelay`]).
    pub fn requires(mut self, capability: Capability) -> Self {
        self.requires.push(capability);
        self
    }

    /// Pause fetching while `gate` says so (e.g. a circuit breaker).
    pub fn paused_by(mut self, gate: Arc<dyn FetchGate>) -> Self {
        self.gate = Some(gate);
        self
    }
}

/// Capabilities the subscription options themselves need.
pub(crate) fn needed_by_options(o: &SubscribeOptions) -> Vec<Capability> {
    let mut caps = Vec::new();
    if o.group_name().is_some() {
        caps.push(Capability::ConsumerGroups);
    }
    match o.start_position() {
        StartPosition::Offset(_) => caps.push(Capability::ReplayFromOffset),
        StartPosition::Time(_) => caps.push(Capability::ReplayFromTime),
        _ => {}
    }
    if o.pattern().contains('*') || o.pattern().contains('>') {
        caps.push(Capability::Wildcards);
    }
    if o.max_deliveries_limit().is_some() {
        caps.push(Capability::MaxDeliveries);
    }
    if o.visibility_timeout_value().is_some() {
        caps.push(Capability::VisibilityTimeout);
    }
    if o.group_mode() == GroupMode::Stream {
        caps.push(Capability::PartitionAssignment);
    }
    caps
}

/// Handles of one started route.
pub(crate) struct Running {
    pub(crate) pattern: String,
    /// Every task of the route (fetcher first); `None` once joined.
    pub(crate) tasks: Vec<Option<JoinHandle<()>>>,
    pub(crate) fetched: Arc<Counter>,
    pub(crate) fetch_errors: Arc<Counter>,
    pub(crate) counters: Vec<Arc<LaneCounters>>,
}

/// What a route needs to start.
pub(crate) struct StartEnv {
    pub(crate) ctx: Context,
    /// Cancelled when the router stops: fetching ends.
    pub(crate) stop: CancellationToken,
    /// Held by the fetch task until it ends, so the router sees when every
    /// route has ended on its own.
    pub(crate) done: mpsc::Sender<()>,
}

/// A route with its service type erased, so one router holds many.
pub(crate) trait AnyRoute: Send {
    fn options(&self) -> &SubscribeOptions;
    fn requirements(&self) -> Vec<Capability>;
    fn start(self: Box<Self>, sub: Subscription, env: StartEnv) -> Running;
}

impl<S> AnyRoute for Route<S>
where
    S: Service<Request, Response = Outcome, Error = HandlerError> + Clone + Send + 'static,
    S::Future: Send,
{
    fn options(&self) -> &SubscribeOptions {
        &self.options
    }

    fn requirements(&self) -> Vec<Capability> {
        let mut caps = needed_by_options(&self.options);
        caps.extend(self.requires.iter().copied());
        caps
    }

    fn start(self: Box<Self>, sub: Subscription, env: StartEnv) -> Running {
        let route = *self;
        let StartEnv { ctx, stop, done } = env;
        let mut senders = Vec::with_capacity(route.lanes);
        let mut lanes = Vec::with_capacity(route.lanes);
        let mut counters = Vec::with_capacity(route.lanes);
        // At most a quarter of the in-flight window per fetch, so several
        // fetched batches are in the lanes at once even with a small window.
        let batch = route
            .fetch_batch
            .min(route.options.max_in_flight_limit() / 4)
            .max(1);
        // The router's own in-flight window, the size of the subscription's:
        // the fetch task takes a whole batch of slots before fetching, so it
        // fetches full batches instead of one delivery per freed slot.
        let window_size = route.options.max_in_flight_limit().max(batch);
        let window = Arc::new(Semaphore::new(window_size));
        // Every lane's queued batches, the one it works on and the fetch
        // task's own per-lane batches.
        let spares = Arc::new(Spares::new(route.lanes * (route.lane_capacity + 2)));
        let lease = route
            .options
            .visibility_timeout_value()
            .filter(|_| route.keep_leases && ctx.capabilities().contains(Capability::ExtendLease));
        for _ in 0..route.lanes {
            let (tx, rx) = mpsc::channel(route.lane_capacity);
            let c = Arc::new(LaneCounters::default());
            lanes.push(tokio::spawn(lane::run_lane(
                rx,
                route.service.clone(),
                ctx.clone(),
                c.clone(),
                window.clone(),
                spares.clone(),
                lease,
            )));
            senders.push(tx);
            counters.push(c);
        }
        let fetched = Arc::new(Counter::default());
        let fetch_errors = Arc::new(Counter::default());
        let fetcher = tokio::spawn(fetch_loop(
            sub,
            Fetch {
                senders,
                batch,
                // As long as the window still spreads over every lane.
                keyless_run: (window_size / route.lanes).clamp(1, batch.min(KEYLESS_RUN)),
                window,
                gate: route.gate,
                stop,
                fetched: fetched.clone(),
                fetch_errors: fetch_errors.clone(),
                done,
                spares,
            },
        ));
        let mut tasks = vec![Some(fetcher)];
        tasks.extend(lanes.into_iter().map(Some));
        Running {
            pattern: route.options.pattern().to_owned(),
            tasks,
            fetched,
            fetch_errors,
            counters,
        }
    }
}

/// Most keyless messages in a row that go to one lane (fewer when the
/// in-flight window would not reach every lane).
const KEYLESS_RUN: usize = 32;

/// FNV-1a: a fast, stable hash for picking a key's lane.
pub(crate) fn lane_of(key: &[u8], lanes: usize) -> usize {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in key {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    (h % lanes as u64) as usize
}

/// What a route's fetch task works with.
struct Fetch {
    senders: Vec<mpsc::Sender<Unseen>>,
    batch: usize,
    keyless_run: usize,
    window: Arc<Semaphore>,
    gate: Option<Arc<dyn FetchGate>>,
    stop: CancellationToken,
    fetched: Arc<Counter>,
    fetch_errors: Arc<Counter>,
    done: mpsc::Sender<()>,
    spares: Arc<Spares>,
}

/// A lane batch: deliveries fetched and not yet handed to the handler, in
/// order. Dropped with some left (an aborted shutdown, a lane gone), it
/// gives them back with [`Delivery::release_unseen`]: no attempt is counted
/// for a message no handler saw, so `max_deliveries` is not used up.
#[derive(Default)]
pub(crate) struct Unseen(pub(crate) VecDeque<Delivery>);

impl Drop for Unseen {
    fn drop(&mut self) {
        for d in self.0.drain(..) {
            d.release_unseen();
        }
    }
}

/// Emptied lane batches, given back by the lanes for the fetch task to fill
/// again: a lane batch is then not allocated by one task and freed by
/// another each time (malloc's slow path for its size).
#[derive(Default)]
pub(crate) struct Spares {
    batches: std::sync::Mutex<Vec<Unseen>>,
    /// Most kept: as many batches as can exist at once.
    max: usize,
}

impl Spares {
    fn new(max: usize) -> Self {
        Spares {
            batches: std::sync::Mutex::new(Vec::with_capacity(max)),
            max,
        }
    }

    /// An empty batch with room for at least `capacity` deliveries.
    fn take(&self, capacity: usize) -> Unseen {
        let spare = self.batches.lock().ok().and_then(|mut b| b.pop());
        match spare {
            Some(mut v) => {
                v.0.reserve(capacity);
                v
            }
            None => Unseen(VecDeque::with_capacity(capacity)),
        }
    }

    /// Gives back an emptied batch.
    pub(crate) fn give(&self, batch: Unseen) {
        debug_assert!(batch.0.is_empty());
        if let Ok(mut b) = self.batches.lock() {
            if b.len() < self.max {
                b.push(batch);
            }
        }
    }
}

async fn fetch_loop(mut sub: Subscription, f: Fetch) {
    let Fetch {
        senders,
        batch,
        keyless_run,
        window,
        gate,
        stop,
        fetched,
        fetch_errors,
        done,
        spares,
    } = f;
    let _done = done;
    let lanes = senders.len();
    let mut buf: Vec<Delivery> = Vec::with_capacity(batch);
    let mut per_lane: Vec<Unseen> = (0..lanes).map(|_| spares.take(keyless_run)).collect();
    let mut next_keyless = 0usize;
    let mut keyless_in_run = 0usize;
    'fetch: loop {
        if let Some(g) = &gate {
            if !g.may_fetch() {
                tokio::select! {
                    biased;
                    () = stop.cancelled() => break 'fetch,
                    () = g.until_may_fetch() => {}
                }
                continue;
            }
        }
        let slots = tokio::select! {
            biased;
            () = stop.cancelled() => break 'fetch,
            p = window.acquire_many(batch as u32) => p,
        };
        match slots {
            Ok(p) => p.forget(),
            Err(_closed) => break 'fetch,
        }
        let r = tokio::select! {
            biased;
            () = stop.cancelled() => break 'fetch,
            r = sub.next_batch(batch, &mut buf) => r,
        };
        fetched.add(buf.len() as u64);
        // Give back the slots this fetch did not fill.
        window.add_permits(batch - buf.len());
        match r {
            Ok(0) if buf.is_empty() => break 'fetch,
            Ok(_) => {}
            Err(Error::Closed { .. }) if buf.is_empty() => break 'fetch,
            Err(e) => {
                fetch_errors.add(1);
                tracing::warn!(error = %e, "fetching deliveries failed");
                if buf.is_empty() {
                    tokio::select! {
                        biased;
                        () = stop.cancelled() => break 'fetch,
                        () = tokio::time::sleep(Duration::from_millis(100)) => {}
                    }
                    continue;
                }
            }
        }
        for d in buf.drain(..) {
            let lane = match d.message().key() {
                Some(k) => lane_of(k, lanes),
                None => {
                    // Keyless messages go round-robin in short runs: fewer
                    // channel sends and wake-ups than one lane per message,
                    // still spread over every lane.
                    keyless_in_run += 1;
                    if keyless_in_run > keyless_run {
                        keyless_in_run = 1;
                        next_keyless = (next_keyless + 1) % lanes;
                    }
                    next_keyless
                }
            };
            per_lane[lane].0.push_back(d);
        }
        for (tx, pending) in senders.iter().zip(per_lane.iter_mut()) {
            if pending.0.is_empty() {
                continue;
            }
            // The next batch for this lane: an emptied one the lanes gave
            // back, else a new one with room for a full run.
            let next = spares.take(keyless_run);
            if tx.send(std::mem::replace(pending, next)).await.is_err() {
                // The lane is gone (only at an aborted shutdown): what we hold
                // goes back unseen and is redelivered.
                break 'fetch;
            }
        }
    }
    // Stop new deliveries; those already handed out are still settled by
    // the lanes, which end once their channels drain.
    if let Err(e) = sub.close().await {
        tracing::debug!(error = %e, "closing the subscription failed");
    }
}

/// Binds handlers to subscriptions and runs them.
///
/// Per route, one fetch task pulls deliveries in batches and hashes each
/// message's key to one of N ordered lanes (keyless messages go round-robin);
/// each lane handles its messages in order and settles each as soon as its
/// handler is done. Shutdown stops fetching, drains what was fetched up to
/// [`Router::shutdown_timeout`], then drops the rest unsettled so the backend
/// redelivers it (messages no handler saw go back without counting a
/// delivery attempt, so `max_deliveries` is not used up by a shutdown), and
/// returns a [`ShutdownReport`].
///
/// ```no_run
/// # async fn demo(backend: std::sync::Arc<dyn wharf_core::Backend>) -> Result<(), wharf_core::Error> {
/// use tokio_util::sync::CancellationToken;
/// use wharf_core::SubscribeOptions;
/// use wharf_router::{handler_fn, Outcome, Router, HandlerError, Request};
///
/// let stop = CancellationToken::new();
/// let report = Router::new(backend)
///     .route(
///         SubscribeOptions::new("orders").group("billing"),
///         handler_fn(|_req: Request| async { Ok::<_, HandlerError>(Outcome::Ack) }),
///     )
///     .run(stop)
///     .await?;
/// println!("acked {}", report.acked());
/// # Ok(()) }
/// ```
#[must_use]
pub struct Router {
    backend: Arc<dyn Backend>,
    routes: Vec<Box<dyn AnyRoute>>,
    shutdown_timeout: Duration,
}

impl std::fmt::Debug for Router {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Router")
            .field("backend", &self.backend.name())
            .field(
                "routes",
                &self
                    .routes
                    .iter()
                    .map(|r| r.options().pattern().to_owned())
                    .collect::<Vec<_>>(),
            )
            .field("shutdown_timeout", &self.shutdown_timeout)
            .finish()
    }
}

impl Router {
    /// A router with no routes on `backend`.
    pub fn new(backend: Arc<dyn Backend>) -> Self {
        Router {
            backend,
            routes: Vec::new(),
            shutdown_timeout: DEFAULT_SHUTDOWN_TIMEOUT,
        }
    }

    /// How long in-flight work may take to finish after shutdown is
    /// requested before it is released for redelivery.
    pub fn shutdown_timeout(mut self, timeout: Duration) -> Self {
        self.shutdown_timeout = timeout;
        self
    }

    /// Routes `options` to `service` with default settings.
    pub fn route<S>(self, options: SubscribeOptions, service: S) -> Self
    where
        S: Service<Request, Response = Outcome, Error = HandlerError> + Clone + Send + 'static,
        S::Future: Send,
    {
        self.add_route(Route::new(options, service))
    }

    /// Adds a configured [`Route`].
    pub fn add_route<S>(mut self, route: Route<S>) -> Self
    where
        S: Service<Request, Response = Outcome, Error = HandlerError> + Clone + Send + 'static,
        S::Future: Send,
    {
        self.routes.push(Box::new(route));
        self
    }

    /// Adds a batch route; see [`crate::batch`].
    pub fn batch_route<S>(mut self, route: crate::batch::BatchRoute<S>) -> Self
    where
        S: Service<crate::batch::Batch, Response = Vec<Outcome>, Error = HandlerError>
            + Send
            + 'static,
        S::Future: Send,
    {
        self.routes.push(Box::new(route));
        self
    }

    /// Checks every route's capabilities, subscribes, and runs until `stop`
    /// is cancelled (or every subscription has ended), then shuts down
    /// gracefully and reports.
    ///
    /// # Errors
    /// Before anything is consumed: [`Error::Unsupported`] when a route needs
    /// a capability the backend lacks (derived from its subscribe options,
    /// plus [`Route::requires`]); option validation and subscribe errors.
    pub async fn run(self, stop: CancellationToken) -> Result<ShutdownReport> {
        // Our own token, so ending by ourselves never cancels the caller's.
        let stop = stop.child_token();
        let caps = self.backend.capabilities();
        let name = self.backend.name();
        for r in &self.routes {
            r.options().validate()?;
            caps.require(name, &r.requirements())?;
        }
        let options: Vec<SubscribeOptions> =
            self.routes.iter().map(|r| r.options().clone()).collect();
        let mut subs = Vec::with_capacity(options.len());
        for o in options {
            match self.backend.subscribe(o).await {
                Ok(s) => subs.push(s),
                Err(e) => {
                    for mut s in subs {
                        let _ = s.close().await;
                    }
                    return Err(e);
                }
            }
        }
        let (done, mut all_done) = mpsc::channel::<()>(1);
        let mut running: Vec<Running> = Vec::with_capacity(self.routes.len());
        for (route, sub) in self.routes.into_iter().zip(subs) {
            let o = route.options();
            let ctx = Context::for_backend(
                self.backend.clone(),
                o.group_name().map(str::to_owned),
                o.dead_letter_topic_name().map(str::to_owned),
            );
            let env = StartEnv {
                ctx,
                stop: stop.clone(),
                done: done.clone(),
            };
            running.push(route.start(sub, env));
        }
        drop(done);
        tracing::info!(routes = running.len(), backend = name, "router started");

        // Run until asked to stop, or until every fetcher ended on its own
        // (the channel closes when the last fetcher drops its sender).
        tokio::select! {
            () = stop.cancelled() => {}
            _ = all_done.recv() => {}
        }
        stop.cancel();
        let deadline = tokio::time::Instant::now() + self.shutdown_timeout;
        let drained = tokio::time::timeout_at(deadline, join_all(&mut running))
            .await
            .is_ok();
        if !drained {
            tracing::warn!("shutdown deadline passed; releasing in-flight deliveries");
            for h in running.iter().flat_map(|r| r.tasks.iter().flatten()) {
                h.abort();
            }
            join_all(&mut running).await;
        }
        let routes = running.iter().map(Running::report).collect();
        Ok(ShutdownReport {
            routes,
            deadline_exceeded: !drained,
        })
    }

    /// Like [`Router::run`], stopping when `signal` completes (e.g.
    /// `tokio::signal::ctrl_c()` mapped to `()`).
    ///
    /// # Errors
    /// As [`Router::run`].
    pub async fn run_until(
        self,
        signal: impl Future<Output = ()> + Send,
    ) -> Result<ShutdownReport> {
        let stop = CancellationToken::new();
        let trigger = stop.clone();
        let run = self.run(stop);
        tokio::pin!(run);
        tokio::select! {
            r = &mut run => return r,
            () = signal => trigger.cancel(),
        }
        run.await
    }
}

/// Awaits every task not yet joined, marking each joined one (so a timed-out
/// join can be resumed without polling a finished handle again).
async fn join_all(running: &mut [Running]) {
    for slot in running.iter_mut().flat_map(|r| r.tasks.iter_mut()) {
        if let Some(h) = slot {
            if let Err(e) = h.await {
                if e.is_panic() {
                    tracing::error!(error = %e, "a router task panicked");
                }
            }
            *slot = None;
        }
    }
}

impl Running {
    fn report(&self) -> RouteReport {
        let mut r = RouteReport {
            pattern: self.pattern.clone(),
            fetched: self.fetched.get(),
            fetch_errors: self.fetch_errors.get(),
            ..RouteReport::default()
        };
        for c in &self.counters {
            r.handled += c.handled.get();
            r.acked += c.acked.get();
            r.nacked += c.nacked.get();
            r.rejected += c.rejected.get();
            r.dead_lettered += c.dead_lettered.get();
            r.settle_errors += c.settle_errors.get();
            r.panics += c.panics.get();
        }
        let settled = r.acked + r.nacked + r.rejected + r.settle_errors;
        r.released = r.fetched.saturating_sub(settled);
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_key_always_maps_to_one_lane_and_keys_spread() {
        assert_eq!(lane_of(b"customer-7", 16), lane_of(b"customer-7", 16));
        let used: std::collections::HashSet<usize> = (0..200)
            .map(|i| lane_of(format!("k{i}").as_bytes(), 16))
            .collect();
        assert_eq!(used.len(), 16);
    }

    #[test]
    fn options_imply_the_capabilities_they_need() {
        let o = SubscribeOptions::new("orders.*")
            .group("g")
            .start(StartPosition::Offset(3))
            .max_deliveries(2);
        let caps = needed_by_options(&o);
        for c in [
            Capability::ConsumerGroups,
            Capability::ReplayFromOffset,
            Capability::Wildcards,
            Capability::MaxDeliveries,
        ] {
            assert!(caps.contains(&c), "{c}");
        }
        assert!(needed_by_options(&SubscribeOptions::new("orders")).is_empty());
        let stream = SubscribeOptions::new("orders")
            .group("g")
            .mode(GroupMode::Stream);
        assert!(needed_by_options(&stream).contains(&Capability::PartitionAssignment));
    }
}
