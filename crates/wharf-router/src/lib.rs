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
//!
//! ```
//! use std::sync::Arc;
//! use std::time::Duration;
//! use tokio_util::sync::CancellationToken;
//! use tower::ServiceBuilder;
//! use wharf_core::{Backend, Message, StartPosition, SubscribeOptions};
//! use wharf_router::dead_letter::DeadLetterLayer;
//! use wharf_router::retry::RetryLayer;
//! use wharf_router::{handler_fn, DefaultLayer, HandlerError, Outcome, Request, Router};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), wharf_core::Error> {
//! let backend: Arc<dyn Backend> = Arc::new(wharf_memory::MemoryBackend::new());
//! backend.publish("greetings", Message::new("hello")).await?;
//!
//! let stop = CancellationToken::new();
//! let done = stop.clone();
//! let handler = handler_fn(move |req: Request| {
//!     let done = done.clone();
//!     async move {
//!         assert_eq!(&req.message().payload()[..], b"hello");
//!         done.cancel(); // one message is enough for this example
//!         Ok::<_, HandlerError>(Outcome::Ack)
//!     }
//! });
//! let service = ServiceBuilder::new()
//!     .layer(DefaultLayer::new()) // span, metrics, panic recovery
//!     .layer(DeadLetterLayer::new()) // permanent failures to dlq.greetings
//!     .layer(RetryLayer::new().max_attempts(3)) // retryable failures, with backoff
//!     .service(handler);
//!
//! let report = Router::new(backend)
//!     .shutdown_timeout(Duration::from_secs(5))
//!     .route(
//!         SubscribeOptions::new("greetings").group("greeter").start(StartPosition::Earliest),
//!         service,
//!     )
//!     .run(stop)
//!     .await?;
//! assert_eq!(report.acked(), 1);
//! # Ok(()) }
//! ```

#![warn(missing_docs)]

pub mod batch;
pub mod breaker;
pub mod command;
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
pub use stack::{DefaultFuture, DefaultLayer, DefaultService};
