//! Shared helpers for the router's integration tests: a backend wrapper
//! that hides capabilities, and small publish/collect helpers.

#![allow(dead_code)]

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use wharf_core::{
    Backend, Capabilities, Capability, Delivery, Limits, Message, Publisher, Receipt, Result,
    SubscribeOptions, Subscriber, Subscription,
};
use wharf_memory::MemoryBackend;

/// A backend that delegates to another but declares fewer capabilities.
pub struct Restricted {
    inner: Arc<dyn Backend>,
    caps: Capabilities,
}

impl Restricted {
    pub fn wrap(inner: Arc<dyn Backend>, without: &[Capability]) -> Arc<dyn Backend> {
        let caps = without
            .iter()
            .fold(inner.capabilities(), |c, x| c.without(*x));
        Arc::new(Restricted { inner, caps })
    }
}

#[async_trait]
impl Publisher for Restricted {
    async fn publish(&self, topic: &str, message: Message) -> Result<Receipt> {
        self.inner.publish(topic, message).await
    }
}

#[async_trait]
impl Subscriber for Restricted {
    async fn subscribe(&self, options: SubscribeOptions) -> Result<Subscription> {
        self.inner.subscribe(options).await
    }
}

#[async_trait]
impl Backend for Restricted {
    fn name(&self) -> &'static str {
        "restricted"
    }
    fn capabilities(&self) -> Capabilities {
        self.caps
    }
    fn limits(&self) -> Limits {
        self.inner.limits()
    }
    async fn close(&self) -> Result<()> {
        self.inner.close().await
    }
}

pub fn memory() -> Arc<dyn Backend> {
    Arc::new(MemoryBackend::new())
}

/// An embedded broker in a temporary directory (deleted when dropped).
pub async fn broker() -> Arc<dyn Backend> {
    Arc::new(
        wharf_broker::Broker::temporary()
            .await
            .expect("temporary broker"),
    )
}

/// Runs each listed `async fn(Arc<dyn Backend>)` as a paused-clock test on
/// the in-memory backend and on the embedded broker.
#[macro_export]
macro_rules! on_every_backend {
    ($($name:ident),* $(,)?) => {
        mod on_memory {
            $(
                #[tokio::test(start_paused = true)]
                async fn $name() {
                    super::$name(super::support::memory()).await;
                }
            )*
        }
        mod on_broker {
            $(
                #[tokio::test(start_paused = true)]
                async fn $name() {
                    super::$name(super::support::broker().await).await;
                }
            )*
        }
    };
}

/// Publishes `n` messages `0..n` (payload = the number) to `topic`, keyed by `key(i)`.
pub async fn publish_n(
    b: &Arc<dyn Backend>,
    topic: &str,
    n: usize,
    key: impl Fn(usize) -> Option<String>,
) {
    for i in 0..n {
        let mut m = Message::builder().payload(i.to_string());
        if let Some(k) = key(i) {
            m = m.key(k);
        }
        b.publish(topic, m.build()).await.unwrap();
    }
}

/// Next delivery within 10 s of (possibly paused) time.
pub async fn next(sub: &mut Subscription) -> Delivery {
    next_within(sub, Duration::from_secs(10)).await
}

/// Next delivery within `d` of (possibly paused) time.
pub async fn next_within(sub: &mut Subscription, d: Duration) -> Delivery {
    tokio::time::timeout(d, sub.next())
        .await
        .expect("a delivery in time")
        .expect("subscription open")
        .expect("delivery ok")
}

/// Whether nothing arrives within `d`.
pub async fn quiet(sub: &mut Subscription, d: Duration) -> bool {
    tokio::time::timeout(d, sub.next()).await.is_err()
}

pub fn payload_num(m: &Message) -> usize {
    std::str::from_utf8(m.payload()).unwrap().parse().unwrap()
}

/// A token that cancels itself after `d` (e.g. to stop a router mid-run).
pub fn cancelled_after(d: Duration) -> tokio_util::sync::CancellationToken {
    let stop = tokio_util::sync::CancellationToken::new();
    let trigger = stop.clone();
    tokio::spawn(async move {
        tokio::time::sleep(d).await;
        trigger.cancel();
    });
    stop
}
