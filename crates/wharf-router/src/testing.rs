//! Helpers for unit-testing handlers and middleware without a backend: a
//! [`RecordingPublisher`] that keeps what was published, and [`call`] to
//! drive one request through a service.

use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use tower::Service;
use wharf_core::{Message, Publisher, Receipt, Result};

use crate::outcome::{HandlerError, HandlerResult, Outcome};
use crate::request::{Context, Request};

/// A publisher that stores every published `(topic, message)` in memory.
#[derive(Default, Debug)]
pub struct RecordingPublisher {
    published: Mutex<Vec<(String, Message)>>,
    fail: Mutex<Option<u32>>,
}

impl RecordingPublisher {
    /// Everything published so far, in order.
    pub fn published(&self) -> Vec<(String, Message)> {
        self.published
            .lock()
            .expect("recording publisher lock poisoned")
            .clone()
    }

    /// Makes the next `n` publishes fail with [`wharf_core::Error::Unavailable`].
    pub fn fail_next(&self, n: u32) {
        *self.fail.lock().expect("recording publisher lock poisoned") = Some(n);
    }
}

#[async_trait]
impl Publisher for RecordingPublisher {
    async fn publish(&self, topic: &str, message: Message) -> Result<Receipt> {
        {
            let mut fail = self.fail.lock().expect("recording publisher lock poisoned");
            if let Some(n) = fail.as_mut() {
                if *n > 0 {
                    *n -= 1;
                    return Err(wharf_core::Error::Unavailable {
                        backend: "recording",
                        source: "injected failure".into(),
                    });
                }
            }
        }
        let id = message.id();
        let mut p = self
            .published
            .lock()
            .expect("recording publisher lock poisoned");
        p.push((topic.to_owned(), message));
        Ok(Receipt::new(id, 0, Some(p.len() as u64 - 1)))
    }
}

/// A [`Context`] over a fresh [`RecordingPublisher`], which is returned too.
pub fn ctx() -> (Context, Arc<RecordingPublisher>) {
    let p = Arc::new(RecordingPublisher::default());
    (Context::new(p.clone()), p)
}

/// Waits for `svc` to be ready and calls it with `req`.
///
/// # Errors
/// Whatever the service returns.
pub async fn call<S>(mut svc: S, req: Request) -> HandlerResult
where
    S: Service<Request, Response = Outcome, Error = HandlerError>,
{
    futures_util::future::poll_fn(|cx| svc.poll_ready(cx)).await?;
    svc.call(req).await
}
