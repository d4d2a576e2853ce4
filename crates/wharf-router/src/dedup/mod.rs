//! Idempotent consumer: [`DedupLayer`] skips (acks without handling) a
//! message whose key was already processed within a TTL, using a pluggable
//! [`DedupStore`].
//!
//! The key defaults to the message id (publishers reuse the id when they
//! retry a publish); [`DedupLayer::key_fn`] can pick a business key instead,
//! e.g. an `idempotency-key` header. The key is claimed before the handler
//! runs and released again if the handler fails or asks for a retry, so a
//! redelivery of a failed message is processed again.

mod redb_store;
mod store;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tower::{Layer, Service};

pub use redb_store::RedbDedupStore;
pub use store::MemoryDedupStore;
pub use wharf_core::DedupStore;

use crate::outcome::{HandlerError, HandlerResult, Outcome};
use crate::request::Request;

/// Picks the deduplication key of a request (`None` = don't deduplicate).
pub type KeyFn = Arc<dyn Fn(&Request) -> Option<String> + Send + Sync>;

/// Skips already-processed messages; see the [module docs](self).
#[derive(Clone)]
pub struct DedupLayer {
    store: Arc<dyn DedupStore>,
    ttl: Duration,
    key: KeyFn,
}

impl std::fmt::Debug for DedupLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DedupLayer")
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

impl DedupLayer {
    /// Deduplicates by message id, remembering ids for `ttl`.
    pub fn new(store: Arc<dyn DedupStore>, ttl: Duration) -> Self {
        DedupLayer {
            store,
            ttl,
            key: Arc::new(|req: &Request| Some(req.message().id().to_string())),
        }
    }

    /// Deduplicates by the key `f` returns instead.
    #[must_use]
    pub fn key_fn(
        mut self,
        f: impl Fn(&Request) -> Option<String> + Send + Sync + 'static,
    ) -> Self {
        self.key = Arc::new(f);
        self
    }
}

impl<S> Layer<S> for DedupLayer {
    type Service = Dedup<S>;
    fn layer(&self, inner: S) -> Dedup<S> {
        Dedup {
            inner,
            layer: self.clone(),
        }
    }
}

/// The service made by [`DedupLayer`].
#[derive(Clone, Debug)]
pub struct Dedup<S> {
    inner: S,
    layer: DedupLayer,
}

impl<S> Service<Request> for Dedup<S>
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
        let Some(key) = (self.layer.key)(&req) else {
            return Box::pin(inner.call(req));
        };
        let store = self.layer.store.clone();
        let ttl = self.layer.ttl;
        Box::pin(async move {
            match store.claim(&key, ttl).await {
                Ok(true) => {}
                Ok(false) => {
                    tracing::debug!(%key, "duplicate message skipped");
                    return Ok(Outcome::Ack);
                }
                Err(source) => return Err(HandlerError::Retryable { source }),
            }
            let result = inner.call(req).await;
            if matches!(result, Err(_) | Ok(Outcome::Retry { .. })) {
                if let Err(e) = store.release(&key).await {
                    tracing::warn!(%key, error = %e, "could not release a dedup key");
                }
            }
            result
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use wharf_core::Message;

    use super::*;
    use crate::handler_fn;
    use crate::testing::{call, ctx};

    fn counting(
        fail_first: bool,
    ) -> (
        impl Service<Request, Response = Outcome, Error = HandlerError, Future = impl Send>
            + Clone
            + Send
            + 'static,
        Arc<AtomicU32>,
    ) {
        let n = Arc::new(AtomicU32::new(0));
        let n2 = n.clone();
        let svc = handler_fn(move |_req: Request| {
            let k = n2.fetch_add(1, Ordering::SeqCst);
            async move {
                if fail_first && k == 0 {
                    Err(HandlerError::retryable("flaky"))
                } else {
                    Ok(Outcome::Ack)
                }
            }
        });
        (svc, n)
    }

    #[tokio::test(start_paused = true)]
    async fn duplicate_message_id_is_acked_without_calling_the_handler() {
        let (svc, calls) = counting(false);
        let svc =
            DedupLayer::new(Arc::new(MemoryDedupStore::new()), Duration::from_secs(60)).layer(svc);
        let (c, _) = ctx();
        let m = Message::new("pay 10");
        for _ in 0..3 {
            let r = call(svc.clone(), Request::test("t", m.clone(), c.clone())).await;
            assert_eq!(r.unwrap(), Outcome::Ack);
        }
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        // A different message is processed.
        call(svc, Request::test("t", Message::new("pay 10"), c))
            .await
            .unwrap();
        assert_eq!(calls.load(Ordering::SeqCst), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn failed_attempt_releases_the_key_so_the_redelivery_is_processed() {
        let (svc, calls) = counting(true);
        let svc =
            DedupLayer::new(Arc::new(MemoryDedupStore::new()), Duration::from_secs(60)).layer(svc);
        let (c, _) = ctx();
        let m = Message::new("x");
        let r = call(svc.clone(), Request::test("t", m.clone(), c.clone())).await;
        assert!(r.is_err());
        let r = call(svc, Request::test("t", m, c)).await;
        assert_eq!(r.unwrap(), Outcome::Ack);
        assert_eq!(calls.load(Ordering::SeqCst), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn key_fn_dedups_by_business_key_and_ttl_expiry_allows_it_again() {
        let (svc, calls) = counting(false);
        let svc = DedupLayer::new(Arc::new(MemoryDedupStore::new()), Duration::from_secs(10))
            .key_fn(|r: &Request| {
                r.message()
                    .headers()
                    .get("idempotency-key")
                    .map(str::to_owned)
            })
            .layer(svc);
        let (c, _) = ctx();
        let keyed = || {
            Message::builder()
                .header("idempotency-key", "order-7")
                .build()
        };
        call(svc.clone(), Request::test("t", keyed(), c.clone()))
            .await
            .unwrap();
        call(svc.clone(), Request::test("t", keyed(), c.clone()))
            .await
            .unwrap();
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        // No key: never deduplicated.
        call(
            svc.clone(),
            Request::test("t", Message::new("a"), c.clone()),
        )
        .await
        .unwrap();
        assert_eq!(calls.load(Ordering::SeqCst), 2);
        tokio::time::advance(Duration::from_secs(11)).await;
        call(svc, Request::test("t", keyed(), c)).await.unwrap();
        assert_eq!(calls.load(Ordering::SeqCst), 3);
    }
}
