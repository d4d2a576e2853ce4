//! Wharf's router: bind handlers to subscriptions, run them concurrently
//! with per-key ordering, shut down gracefully, and compose reliability
//! middleware as `tower` layers.
//!
//! A handler is any `tower::Service<Request, Response = Outcome, Error =
//! HandlerError>`; [`handler_fn`] and [`typed`] make one from an async fn.
//! The [`Router`] settles every delivery from the handler's result: `Ack`
//! acks, `Retry` nacks (with delay where the backend can), `Reject` and
//! permanent errors dead-letter, retryable errors nack.
//!
//! Middleware, one module each: [`retry`] (in-process, backoff with full
//! jitter), [`retry_topics`] (non-blocking leveled retry topics then DLQ),
//! [`dead_letter`], [`timeout`], [`dedup`] (idempotent consumer),
//! [`rate_limit`], [`concurrency`], [`breaker`], [`recover`], [`trace`]
//! (spans + W3C `traceparent`), [`metrics`].
//!
//! The router and middleware only see `wharf-core` traits: they never name
//! a concrete backend.

#![warn(missing_docs)]

pub mod batch;
pub mod breaker;
pub mod concurrency;
pub mod dead_letter;
pub mod dedup;
mod handler;
pub mod metrics;
mod outcome;
pub mod rate_limit;
pub mod recover;
mod request;
pub mod retry;
pub mod retry_topics;
mod router;
mod stack;
pub mod testing;
pub mod timeout;
pub mod trace;

pub use batch::{batch_fn, Batch, BatchFn, BatchRoute};
pub use handler::{handler_fn, typed, HandlerFn, Typed};
pub use outcome::{HandlerError, HandlerResult, Outcome, ResultExt};
pub use request::{Context, Request};
pub use router::{
    FetchGate, Route, RouteReport, Router, ShutdownReport, DEFAULT_LANES, DEFAULT_SHUTDOWN_TIMEOUT,
};
pub use stack::DefaultLayer;
