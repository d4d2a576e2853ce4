//! Circuit breaker that pauses consumption instead of burning retries.
//!
//! [`CircuitBreaker`] opens after N consecutive failures (or an error rate
//! over a window of recent calls), stays open for a cool-down, then goes
//! half-open and lets one probe call through: success closes it, failure
//! opens it again. While it is not closed, handler calls *wait* (the message
//! is held, no retry is spent) and — with [`crate::Route::paused_by`] and
//! [`CircuitBreaker::gate`] — the route stops fetching.
//!
//! Only retryable errors count as failures: a poison message (permanent
//! error) says nothing about the health of what the handler depends on.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;
use tower::{Layer, Service};

use crate::outcome::{HandlerError, HandlerResult, Outcome};
use crate::request::Request;
use crate::router::FetchGate;

/// The breaker's state, as reported by [`CircuitBreaker::state`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum BreakerState {
    /// Calls flow.
    Closed,
    /// Calls wait until the cool-down ends.
    Open,
    /// One probe call decides whether to close or open again.
    HalfOpen,
}

/// When the breaker opens and for how long.
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub struct BreakerConfig {
    /// Open after this many consecutive failures.
    pub consecutive_failures: u32,
    /// Also open when the failure rate over the last `window` calls reaches
    /// `rate` (with at least `window` calls seen); `None` disables it.
    pub error_rate: Option<(f64, usize)>,
    /// How long to stay open before probing.
    pub open_for: Duration,
}

impl BreakerConfig {
    /// Opens after `consecutive_failures`, stays open for `open_for`.
    pub fn new(consecutive_failures: u32, open_for: Duration) -> Self {
        BreakerConfig {
            consecutive_failures: consecutive_failures.max(1),
            error_rate: None,
            open_for,
        }
    }

    /// Also opens when `rate` (0..=1) of the last `window` calls failed.
    #[must_use]
    pub fn error_rate(mut self, rate: f64, window: usize) -> Self {
        self.error_rate = Some((rate, window.max(1)));
        self
    }
}

#[derive(Debug)]
enum State {
    Closed {
        consecutive: u32,
        recent: VecDeque<bool>,
    },
    Open {
        until: Instant,
    },
    HalfOpen {
        probing: bool,
    },
}

#[derive(Debug)]
struct Shared {
    config: BreakerConfig,
    state: Mutex<State>,
    changed: Notify,
}

/// A circuit breaker shared by a layer and a fetch gate; see the [module docs](self).
///
/// ```
/// use std::time::Duration;
/// use wharf_router::breaker::{BreakerConfig, CircuitBreaker};
/// let breaker = CircuitBreaker::new(BreakerConfig::new(5, Duration::from_secs(30)));
/// let layer = breaker.layer();      // wrap the handler
/// let gate = breaker.gate();        // Route::paused_by(gate)
/// # let _ = (layer, gate);
/// ```
#[derive(Debug, Clone)]
pub struct CircuitBreaker {
    shared: Arc<Shared>,
}

/// What a caller was allowed to do.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Pass {
    Normal,
    Probe,
}

impl CircuitBreaker {
    /// A closed breaker.
    pub fn new(config: BreakerConfig) -> Self {
        CircuitBreaker {
            shared: Arc::new(Shared {
                config,
                state: Mutex::new(State::Closed {
                    consecutive: 0,
                    recent: VecDeque::new(),
                }),
                changed: Notify::new(),
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.shared
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// The current state (an open breaker whose cool-down has ended reports
    /// [`BreakerState::HalfOpen`]).
    pub fn state(&self) -> BreakerState {
        match &*self.lock() {
            State::Closed { .. } => BreakerState::Closed,
            State::Open { until } if Instant::now() < *until => BreakerState::Open,
            State::Open { .. } | State::HalfOpen { .. } => BreakerState::HalfOpen,
        }
    }

    /// The layer that guards handler calls with this breaker.
    pub fn layer(&self) -> CircuitBreakerLayer {
        CircuitBreakerLayer {
            breaker: self.clone(),
        }
    }

    /// A gate for [`crate::Route::paused_by`]: fetching pauses while open.
    pub fn gate(&self) -> Arc<dyn FetchGate> {
        Arc::new(self.clone())
    }

    /// Waits until a call may go through; returns whether it is the probe.
    async fn acquire(&self) -> Pass {
        loop {
            let changed = self.shared.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let wait_until = {
                let mut st = self.lock();
                match &mut *st {
                    State::Closed { .. } => return Pass::Normal,
                    State::Open { until } => {
                        if Instant::now() >= *until {
                            *st = State::HalfOpen { probing: true };
                            return Pass::Probe;
                        }
                        Some(*until)
                    }
                    State::HalfOpen { probing } => {
                        if !*probing {
                            *probing = true;
                            return Pass::Probe;
                        }
                        None
                    }
                }
            };
            match wait_until {
                Some(t) => {
                    tokio::select! {
                        () = tokio::time::sleep_until(t) => {}
                        () = changed => {}
                    }
                }
                None => changed.await,
            }
        }
    }

    fn record(&self, pass: Pass, failed: bool) {
        let cfg = self.shared.config;
        let mut st = self.lock();
        let open = State::Open {
            until: Instant::now() + cfg.open_for,
        };
        match (&mut *st, pass) {
            (State::HalfOpen { .. }, Pass::Probe) => {
                *st = if failed {
                    tracing::warn!("circuit breaker probe failed; open again");
                    open
                } else {
                    tracing::info!("circuit breaker closed");
                    State::Closed {
                        consecutive: 0,
                        recent: VecDeque::new(),
                    }
                };
                drop(st);
                self.shared.changed.notify_waiters();
            }
            (
                State::Closed {
                    consecutive,
                    recent,
                },
                Pass::Normal,
            ) => {
                *consecutive = if failed { *consecutive + 1 } else { 0 };
                let mut trip = *consecutive >= cfg.consecutive_failures;
                if let Some((rate, window)) = cfg.error_rate {
                    recent.push_back(failed);
                    if recent.len() > window {
                        recent.pop_front();
                    }
                    let failures = recent.iter().filter(|f| **f).count();
                    trip |= recent.len() == window && failures as f64 >= rate * window as f64;
                }
                if trip {
                    tracing::warn!("circuit breaker opened");
                    *st = open;
                    drop(st);
                    self.shared.changed.notify_waiters();
                }
            }
            // Results of calls that started before the state changed.
            _ => {}
        }
    }

    /// A probe that ended without a result (cancelled): let another probe go.
    fn abandon_probe(&self) {
        let mut st = self.lock();
        if let State::HalfOpen { probing } = &mut *st {
            *probing = false;
        }
        drop(st);
        self.shared.changed.notify_waiters();
    }

    fn may_fetch_now(&self) -> Option<Option<Instant>> {
        match &*self.lock() {
            State::Closed { .. } | State::HalfOpen { probing: false } => None,
            State::Open { until } if Instant::now() >= *until => None,
            State::Open { until } => Some(Some(*until)),
            State::HalfOpen { probing: true } => Some(None),
        }
    }
}

impl FetchGate for CircuitBreaker {
    fn may_fetch(&self) -> bool {
        self.may_fetch_now().is_none()
    }

    fn until_may_fetch(&self) -> Pin<Box<dyn Future<Output = ()> + Send + '_>> {
        Box::pin(async move {
            loop {
                let changed = self.shared.changed.notified();
                tokio::pin!(changed);
                changed.as_mut().enable();
                match self.may_fetch_now() {
                    None => return,
                    Some(Some(t)) => {
                        tokio::select! {
                            () = tokio::time::sleep_until(t) => {}
                            () = changed => {}
                        }
                    }
                    Some(None) => changed.await,
                }
            }
        })
    }
}

/// Guards handler calls with a [`CircuitBreaker`].
#[derive(Debug, Clone)]
pub struct CircuitBreakerLayer {
    breaker: CircuitBreaker,
}

impl<S> Layer<S> for CircuitBreakerLayer {
    type Service = Breaker<S>;
    fn layer(&self, inner: S) -> Breaker<S> {
        Breaker {
            inner,
            breaker: self.breaker.clone(),
        }
    }
}

/// The service made by [`CircuitBreakerLayer`].
#[derive(Debug, Clone)]
pub struct Breaker<S> {
    inner: S,
    breaker: CircuitBreaker,
}

struct ProbeGuard<'a> {
    breaker: &'a CircuitBreaker,
    armed: bool,
}

impl Drop for ProbeGuard<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.breaker.abandon_probe();
        }
    }
}

impl<S> Service<Request> for Breaker<S>
where
    S: Service<Request, Response = Outcome, Error = HandlerError> + Clone + Send + 'static,
    S::Future: Send,
{
    type Response = Outcome;
    type Error = HandlerError;
    type Future = Pin<Box<dyn Future<Output = HandlerResult> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), HandlerError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request) -> Self::Future {
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let breaker = self.breaker.clone();
        Box::pin(async move {
            let pass = breaker.acquire().await;
            let mut guard = ProbeGuard {
                breaker: &breaker,
                armed: pass == Pass::Probe,
            };
            // The service was made ready before the wait; check again.
            futures_util::future::poll_fn(|cx| inner.poll_ready(cx)).await?;
            let result = inner.call(req).await;
            let failed = matches!(&result, Err(e) if e.is_retryable());
            guard.armed = false;
            breaker.record(pass, failed);
            result
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

    use wharf_core::Message;

    use super::*;
    use crate::handler_fn;
    use crate::testing::{call, ctx};

    /// A handler that fails while `healthy` is false, counting calls.
    fn dependency(
        breaker: &CircuitBreaker,
    ) -> (
        impl Service<Request, Response = Outcome, Error = HandlerError, Future = impl Send>
            + Clone
            + Send
            + 'static,
        Arc<AtomicBool>,
        Arc<AtomicU32>,
    ) {
        let healthy = Arc::new(AtomicBool::new(false));
        let calls = Arc::new(AtomicU32::new(0));
        let (h, c) = (healthy.clone(), calls.clone());
        let svc = breaker.layer().layer(handler_fn(move |_req: Request| {
            c.fetch_add(1, Ordering::SeqCst);
            let ok = h.load(Ordering::SeqCst);
            async move {
                if ok {
                    Ok(Outcome::Ack)
                } else {
                    Err(HandlerError::retryable("db down"))
                }
            }
        }));
        (svc, healthy, calls)
    }

    fn req() -> Request {
        Request::test("t", Message::new("x"), ctx().0)
    }

    #[tokio::test(start_paused = true)]
    async fn opens_after_consecutive_failures_and_holds_calls_instead_of_failing_them() {
        let breaker = CircuitBreaker::new(BreakerConfig::new(3, Duration::from_secs(30)));
        let (svc, healthy, calls) = dependency(&breaker);
        for _ in 0..3 {
            assert!(call(svc.clone(), req()).await.is_err());
        }
        assert_eq!(breaker.state(), BreakerState::Open);
        assert!(!breaker.may_fetch());
        // The next call waits for the cool-down instead of failing now.
        healthy.store(true, Ordering::SeqCst);
        let start = Instant::now();
        let r = call(svc.clone(), req()).await;
        assert_eq!(r.unwrap(), Outcome::Ack);
        assert_eq!(start.elapsed(), Duration::from_secs(30));
        assert_eq!(calls.load(Ordering::SeqCst), 4);
        // The probe succeeded: closed.
        assert_eq!(breaker.state(), BreakerState::Closed);
        assert!(breaker.may_fetch());
    }

    #[tokio::test(start_paused = true)]
    async fn failed_probe_opens_again_and_only_one_probe_runs_at_a_time() {
        let breaker = CircuitBreaker::new(BreakerConfig::new(1, Duration::from_secs(10)));
        let (svc, healthy, calls) = dependency(&breaker);
        assert!(call(svc.clone(), req()).await.is_err());
        assert_eq!(breaker.state(), BreakerState::Open);
        // Probe at t=10s fails: open until t=20s.
        assert!(call(svc.clone(), req()).await.is_err());
        assert_eq!(breaker.state(), BreakerState::Open);
        assert_eq!(calls.load(Ordering::SeqCst), 2);
        // Three callers wait; one probes at t=20s, the others follow once it closed.
        healthy.store(true, Ordering::SeqCst);
        let start = Instant::now();
        let waiters: Vec<_> = (0..3)
            .map(|_| tokio::spawn(call(svc.clone(), req())))
            .collect();
        for w in waiters {
            assert_eq!(w.await.unwrap().unwrap(), Outcome::Ack);
        }
        assert_eq!(start.elapsed(), Duration::from_secs(10));
        assert_eq!(calls.load(Ordering::SeqCst), 5);
        assert_eq!(breaker.state(), BreakerState::Closed);
    }

    #[tokio::test(start_paused = true)]
    async fn error_rate_over_the_window_opens_without_consecutive_failures() {
        let breaker =
            CircuitBreaker::new(BreakerConfig::new(100, Duration::from_secs(5)).error_rate(0.5, 4));
        let (svc, healthy, _) = dependency(&breaker);
        for ok in [true, false, true, false] {
            healthy.store(ok, Ordering::SeqCst);
            let _ = call(svc.clone(), req()).await;
        }
        assert_eq!(breaker.state(), BreakerState::Open);
    }

    #[tokio::test(start_paused = true)]
    async fn permanent_errors_do_not_open_the_breaker() {
        let breaker = CircuitBreaker::new(BreakerConfig::new(1, Duration::from_secs(5)));
        let svc = breaker.layer().layer(handler_fn(|_r: Request| async {
            Err(HandlerError::permanent("poison"))
        }));
        for _ in 0..3 {
            assert!(call(svc.clone(), req()).await.is_err());
        }
        assert_eq!(breaker.state(), BreakerState::Closed);
    }

    #[tokio::test(start_paused = true)]
    async fn gate_waits_until_the_cool_down_ends() {
        let breaker = CircuitBreaker::new(BreakerConfig::new(1, Duration::from_secs(7)));
        let (svc, _, _) = dependency(&breaker);
        let _ = call(svc, req()).await;
        let gate = breaker.gate();
        assert!(!gate.may_fetch());
        let start = Instant::now();
        gate.until_may_fetch().await;
        assert_eq!(start.elapsed(), Duration::from_secs(7));
        assert!(gate.may_fetch());
    }
}
