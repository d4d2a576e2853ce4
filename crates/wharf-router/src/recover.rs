//! Recoverer: a panic inside a handler (while creating or polling its
//! future) becomes [`HandlerError::Panicked`], so outer layers (retry,
//! dead-letter, metrics) see an ordinary permanent error instead of a dead
//! lane. The router also catches panics that escape every layer.

use std::any::Any;
use std::future::Future;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::Pin;
use std::task::{Context, Poll};

use futures_util::future::CatchUnwind;
use futures_util::FutureExt;
use pin_project_lite::pin_project;
use tower::{Layer, Service};

use crate::outcome::{HandlerError, Outcome};
use crate::request::Request;

/// The text of a panic payload (`&str` or `String`), else a placeholder.
pub(crate) fn panic_message(payload: &(dyn Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-string panic payload".to_owned()
    }
}

/// Turns handler panics into errors; see the [module docs](self).
#[derive(Clone, Copy, Debug, Default)]
pub struct RecoverLayer {
    _priv: (),
}

impl RecoverLayer {
    /// The layer.
    pub fn new() -> Self {
        RecoverLayer { _priv: () }
    }
}

impl<S> Layer<S> for RecoverLayer {
    type Service = Recover<S>;
    #[inline]
    fn layer(&self, inner: S) -> Recover<S> {
        Recover { inner }
    }
}

/// The service made by [`RecoverLayer`].
#[derive(Clone, Debug)]
pub struct Recover<S> {
    inner: S,
}

impl<S> Service<Request> for Recover<S>
where
    S: Service<Request, Response = Outcome, Error = HandlerError>,
{
    type Response = Outcome;
    type Error = HandlerError;
    type Future = RecoverFuture<S::Future>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), HandlerError>> {
        self.inner.poll_ready(cx)
    }

    #[inline]
    fn call(&mut self, req: Request) -> Self::Future {
        match call_catching(&mut self.inner, req) {
            Ok(fut) => RecoverFuture {
                inner: Some(AssertUnwindSafe(fut).catch_unwind()),
                early: None,
            },
            Err(message) => RecoverFuture {
                inner: None,
                early: Some(message),
            },
        }
    }
}

/// Calls `svc`, turning a panic in `call` itself into its message.
#[inline]
pub(crate) fn call_catching<S: Service<Request>>(
    svc: &mut S,
    req: Request,
) -> Result<S::Future, String> {
    catch_unwind(AssertUnwindSafe(|| svc.call(req))).map_err(|panic| panic_message(&*panic))
}

/// The error a panic while polling a handler's future becomes (logged).
pub(crate) fn panicked(panic: &(dyn Any + Send)) -> HandlerError {
    let message = panic_message(panic);
    tracing::error!(%message, "handler panicked");
    HandlerError::Panicked { message }
}

pin_project! {
    /// Future of [`Recover`].
    pub struct RecoverFuture<F> {
        #[pin]
        inner: Option<CatchUnwind<AssertUnwindSafe<F>>>,
        early: Option<String>,
    }
}

impl<F: Future<Output = Result<Outcome, HandlerError>>> Future for RecoverFuture<F> {
    type Output = F::Output;
    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        match this.inner.as_pin_mut() {
            Some(f) => f
                .poll(cx)
                .map(|r| r.unwrap_or_else(|panic| Err(panicked(&*panic)))),
            None => Poll::Ready(Err(HandlerError::Panicked {
                message: this.early.take().unwrap_or_default(),
            })),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::handler_fn;
    use crate::testing::{call, ctx};
    use wharf_core::Message;

    #[tokio::test]
    async fn panic_inside_the_handler_future_becomes_a_permanent_error() {
        let (c, _) = ctx();
        let svc = RecoverLayer::new().layer(handler_fn(|req: Request| async move {
            if req.message().payload().as_ref() == b"boom" {
                panic!("exploded on {}", "boom");
            }
            Ok(Outcome::Ack)
        }));
        let err = call(
            svc.clone(),
            Request::test("t", Message::new("boom"), c.clone()),
        )
        .await
        .unwrap_err();
        assert!(
            matches!(&err, HandlerError::Panicked { message } if message == "exploded on boom")
        );
        assert!(!err.is_retryable());
        // The service still works afterwards.
        let ok = call(svc, Request::test("t", Message::new("fine"), c)).await;
        assert_eq!(ok.unwrap(), Outcome::Ack);
    }

    #[tokio::test]
    async fn panic_while_creating_the_future_is_caught_too() {
        let (c, _) = ctx();
        #[allow(clippy::unused_async)]
        async fn never() -> Result<Outcome, HandlerError> {
            Ok(Outcome::Ack)
        }
        let svc = RecoverLayer::new().layer(handler_fn(|_req: Request| {
            panic!("in call");
            #[allow(unreachable_code)]
            never()
        }));
        let err = call(svc, Request::test("t", Message::new("x"), c))
            .await
            .unwrap_err();
        assert!(matches!(err, HandlerError::Panicked { message } if message == "in call"));
    }
}
