//! Turning async functions into handler services: [`handler_fn`] for raw
//! messages and [`typed`] for payloads decoded with a [`Codec`].
//!
//! Both are plain `tower::Service<Request>`s, so every middleware layer in
//! this crate wraps them.

use std::future::Future;
use std::marker::PhantomData;
use std::task::{Context, Poll};

use futures_util::future::{Either, Ready};
use tower::Service;
use wharf_core::Codec;

use crate::outcome::{HandlerError, HandlerResult};
use crate::request::Request;

/// A handler service made from an async function; see [`handler_fn`].
#[derive(Clone, Copy, Debug)]
pub struct HandlerFn<F> {
    f: F,
}

/// Makes a handler from `async fn(Request) -> Result<Outcome, HandlerError>`.
///
/// ```
/// use wharf_router::{handler_fn, Outcome, Request, HandlerError};
/// let handler = handler_fn(|req: Request| async move {
///     println!("got {} bytes", req.message().payload().len());
///     Ok::<_, HandlerError>(Outcome::Ack)
/// });
/// # let _ = handler;
/// ```
pub fn handler_fn<F, Fut>(f: F) -> HandlerFn<F>
where
    F: Fn(Request) -> Fut,
    Fut: Future<Output = HandlerResult>,
{
    HandlerFn { f }
}

impl<F, Fut> Service<Request> for HandlerFn<F>
where
    F: Fn(Request) -> Fut,
    Fut: Future<Output = HandlerResult>,
{
    type Response = crate::Outcome;
    type Error = HandlerError;
    type Future = Fut;

    #[inline]
    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), HandlerError>> {
        Poll::Ready(Ok(()))
    }

    #[inline]
    fn call(&mut self, req: Request) -> Fut {
        (self.f)(req)
    }
}

/// A handler that decodes payloads into `T`; see [`typed`].
pub struct Typed<T, C, F> {
    codec: C,
    f: F,
    _t: PhantomData<fn() -> T>,
}

impl<T, C: Clone, F: Clone> Clone for Typed<T, C, F> {
    fn clone(&self) -> Self {
        Typed {
            codec: self.codec.clone(),
            f: self.f.clone(),
            _t: PhantomData,
        }
    }
}

impl<T, C, F> std::fmt::Debug for Typed<T, C, F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Typed").finish_non_exhaustive()
    }
}

/// Makes a handler from `async fn(T, Request) -> Result<Outcome, HandlerError>`
/// that first decodes the payload with `codec`. A payload that does not
/// decode fails with [`HandlerError::Decode`] (permanent: dead-lettered by
/// [`crate::dead_letter`]) without calling `f`.
///
/// ```
/// use wharf_core::Json;
/// use wharf_router::{typed, Outcome, Request, HandlerError};
/// #[derive(serde::Serialize, serde::Deserialize)]
/// struct OrderPlaced { id: u64 }
/// let handler = typed(Json, |order: OrderPlaced, _req: Request| async move {
///     assert!(order.id > 0);
///     Ok::<_, HandlerError>(Outcome::Ack)
/// });
/// # let _ = handler;
/// ```
pub fn typed<T, C, F, Fut>(codec: C, f: F) -> Typed<T, C, F>
where
    C: Codec<T>,
    F: Fn(T, Request) -> Fut,
    Fut: Future<Output = HandlerResult>,
{
    Typed {
        codec,
        f,
        _t: PhantomData,
    }
}

impl<T, C, F, Fut> Service<Request> for Typed<T, C, F>
where
    C: Codec<T>,
    F: Fn(T, Request) -> Fut,
    Fut: Future<Output = HandlerResult>,
{
    type Response = crate::Outcome;
    type Error = HandlerError;
    type Future = Either<Ready<HandlerResult>, Fut>;

    #[inline]
    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), HandlerError>> {
        Poll::Ready(Ok(()))
    }

    #[inline]
    fn call(&mut self, req: Request) -> Self::Future {
        match self.codec.decode(req.message().payload()) {
            Ok(value) => Either::Right((self.f)(value, req)),
            Err(e) => Either::Left(futures_util::future::ready(Err(HandlerError::Decode(e)))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{call, ctx};
    use crate::Outcome;
    use wharf_core::{Json, Message};

    #[tokio::test]
    async fn typed_handler_decodes_payload_and_rejects_garbage_without_calling() {
        let svc = typed(Json, |n: u32, _req: Request| async move {
            if n == 7 {
                Ok(Outcome::Ack)
            } else {
                Ok(Outcome::reject("not seven"))
            }
        });
        let (c, _) = ctx();
        let r = call(
            svc.clone(),
            Request::test("t", Message::new("7"), c.clone()),
        )
        .await;
        assert_eq!(r.unwrap(), Outcome::Ack);
        let r = call(svc, Request::test("t", Message::new("{nope"), c)).await;
        assert!(matches!(r, Err(HandlerError::Decode(_))));
    }
}
