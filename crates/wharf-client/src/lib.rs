//! A remote Wharf backend: [`Client`] implements the `wharf-core`
//! [`Publisher`], [`Subscriber`] and [`Backend`] traits over gRPC to a
//! `wharf serve` server, so code written against the embedded broker runs
//! unchanged against a remote one.
//!
//! ```no_run
//! # async fn demo() -> Result<(), wharf_core::Error> {
//! use wharf_core::{Message, Publisher, Subscriber, SubscribeOptions};
//! let client = wharf_client::Client::connect("http://127.0.0.1:7420", None).await?;
//! client.publish("orders.created", Message::new("order 1")).await?;
//! let mut sub = client.subscribe(SubscribeOptions::new("orders.created").group("billing")).await?;
//! if let Some(d) = sub.next().await { d?.ack().await?; }
//! # Ok(()) }
//! ```
//!
//! With the `eventstore` feature, [`RemoteEventStore`] (also
//! `Client::event_store`) implements `wharf_eventstore::EventStore` against
//! the server's event store.
//!
//! Consuming uses one bidirectional stream per subscription with
//! credit-based flow control: the client grants as many deliveries as its
//! `max_in_flight` and grants more as the application takes them. If the
//! stream breaks, the client resubscribes with exponential backoff; the
//! server redelivers whatever was unsettled (at-least-once), and settling a
//! delivery from the broken stream fails with `UnknownDelivery`.

mod conn;
#[cfg(feature = "eventstore")]
mod eventstore;
mod publish;
mod subscription;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};

use async_trait::async_trait;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use wharf_core::{
    Backend, Capabilities, Capability, Error, Limits, Message, Publisher, Receipt,
    SubscribeOptions, Subscriber, Subscription,
};
use wharf_proto::convert::error_from_status;
use wharf_proto::publish::{receipts_from_response, PublishBatch};
use wharf_proto::v1;
use wharf_proto::v1::wharf_client::WharfClient;

pub use wharf_proto::v1 as proto;

#[cfg(feature = "eventstore")]
pub use eventstore::{raw_event_store_client, RemoteEventStore};

/// The backend name in errors.
pub const BACKEND: &str = "remote";

/// Adds `authorization: Bearer <token>` to every call.
#[derive(Clone)]
pub struct AuthInterceptor(Option<MetadataValue<Ascii>>);

impl tonic::service::Interceptor for AuthInterceptor {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(t) = &self.0 {
            req.metadata_mut().insert("authorization", t.clone());
        }
        Ok(req)
    }
}

/// The client's HTTP/2 connection (see `conn.rs`), a tower service.
pub use conn::Conn;

/// The generated gRPC client with auth, for calls the traits don't cover.
pub type RawClient = WharfClient<AuthChannel>;

/// The connection with auth, as the generated client and the publish call use it.
pub type AuthChannel = InterceptedService<Conn, AuthInterceptor>;

pub(crate) struct Inner {
    pub(crate) raw: RawClient,
    /// The same channel for the publish call, which sends a prebuilt
    /// request ([`publish::call`]).
    channel: AuthChannel,
    /// Buffers for publish requests.
    publish_bufs: Arc<publish::BufPool>,
    caps: Capabilities,
    limits: Limits,
    pub(crate) closed: AtomicBool,
    pub(crate) subs: Mutex<Vec<Weak<subscription::SubAcker>>>,
}

/// A connection to a `wharf serve` server. Cheap to clone.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

pub(crate) fn from_status(s: &tonic::Status) -> Error {
    error_from_status(s, BACKEND)
}

/// A raw gRPC client for `url` without the `Info` handshake (for tools and
/// tests that call RPCs directly).
///
/// # Errors
/// As [`Client::connect`].
pub async fn raw_client(url: &str, token: Option<&str>) -> Result<RawClient, Error> {
    raw_client_with(url, token, None).await
}

/// As [`raw_client`], trusting the PEM CA certificate `ca_pem` for an
/// `https://` URL (needs the `tls` feature).
///
/// # Errors
/// As [`Client::connect`]; [`Error::InvalidArgument`] for a CA without TLS support.
pub async fn raw_client_with(
    url: &str,
    token: Option<&str>,
    ca_pem: Option<&[u8]>,
) -> Result<RawClient, Error> {
    Ok(raw_from(connect_channel(url, token, ca_pem).await?))
}

fn raw_from(channel: AuthChannel) -> RawClient {
    WharfClient::new(channel)
        .max_decoding_message_size(usize::MAX)
        .max_encoding_message_size(usize::MAX)
}

async fn connect_channel(
    url: &str,
    token: Option<&str>,
    ca_pem: Option<&[u8]>,
) -> Result<AuthChannel, Error> {
    let channel = Conn::connect(url, ca_pem).await?;
    let token = match token {
        None => None,
        Some(t) => Some(
            format!("Bearer {t}")
                .parse::<MetadataValue<Ascii>>()
                .map_err(|e| Error::InvalidArgument {
                    name: "token",
                    reason: e.to_string(),
                })?,
        ),
    };
    Ok(InterceptedService::new(channel, AuthInterceptor(token)))
}

impl Client {
    /// Connects to `url` (`http://host:port`), sending `token` if given, and
    /// fetches the server's capabilities and limits.
    ///
    /// # Errors
    /// [`Error::Unavailable`] if the server cannot be reached;
    /// [`Error::InvalidArgument`] for a bad URL or token.
    pub async fn connect(url: &str, token: Option<&str>) -> Result<Client, Error> {
        Client::connect_with(url, token, None).await
    }

    /// As [`Client::connect`], trusting the PEM CA certificate `ca_pem` for
    /// an `https://` URL (needs the `tls` feature).
    ///
    /// # Errors
    /// As [`Client::connect`].
    pub async fn connect_with(
        url: &str,
        token: Option<&str>,
        ca_pem: Option<&[u8]>,
    ) -> Result<Client, Error> {
        let channel = connect_channel(url, token, ca_pem).await?;
        let mut raw = raw_from(channel.clone());
        let info = raw
            .info(v1::InfoRequest {})
            .await
            .map_err(|s| from_status(&s))?
            .into_inner();
        let caps = info
            .capabilities
            .iter()
            .filter_map(|n| Capability::ALL.iter().find(|c| c.as_str() == n).copied())
            .collect();
        let limits = Limits::new(usize::try_from(info.max_message_bytes).unwrap_or(usize::MAX));
        Ok(Client {
            inner: Arc::new(Inner {
                raw,
                channel,
                publish_bufs: Arc::default(),
                caps,
                limits,
                closed: AtomicBool::new(false),
                subs: Mutex::new(Vec::new()),
            }),
        })
    }

    /// The raw gRPC client (admin and DLQ calls).
    pub fn raw(&self) -> RawClient {
        self.inner.raw.clone()
    }

    fn check_open(&self) -> Result<(), Error> {
        if self.inner.closed.load(Ordering::Acquire) {
            Err(Error::Closed {
                what: "remote client",
            })
        } else {
            Ok(())
        }
    }
}

#[async_trait]
impl Publisher for Client {
    async fn publish(&self, topic: &str, message: Message) -> Result<Receipt, Error> {
        let mut r = self.publish_batch(topic, vec![message]).await?;
        r.pop().ok_or_else(|| Error::Backend {
            backend: BACKEND,
            source: "server returned no receipt".into(),
        })
    }

    async fn publish_batch(
        &self,
        topic: &str,
        messages: Vec<Message>,
    ) -> Result<Vec<Receipt>, Error> {
        self.check_open()?;
        wharf_core::name::validate_topic(topic)?;
        let batch = PublishBatch {
            topic: topic.to_owned(),
            messages,
            compact_receipts: true,
        };
        let resp = publish::call(&self.inner.channel, &self.inner.publish_bufs, &batch)
            .await
            .map_err(|s| from_status(&s))?;
        // The batch is still here: the receipts take their ids from it.
        receipts_from_response(&resp, &batch.messages)
    }
}

#[async_trait]
impl Subscriber for Client {
    async fn subscribe(&self, options: SubscribeOptions) -> Result<Subscription, Error> {
        self.check_open()?;
        options.validate()?;
        subscription::subscribe(self.inner.clone(), options).await
    }
}

#[async_trait]
impl Backend for Client {
    fn name(&self) -> &'static str {
        BACKEND
    }

    fn capabilities(&self) -> Capabilities {
        self.inner.caps
    }

    fn limits(&self) -> Limits {
        self.inner.limits
    }

    async fn ensure_topic(&self, topic: &str) -> Result<(), Error> {
        self.check_open()?;
        wharf_core::name::validate_topic(topic)?;
        self.inner
            .raw
            .clone()
            .ensure_topic(v1::TopicName {
                name: topic.to_owned(),
            })
            .await
            .map_err(|s| from_status(&s))?;
        Ok(())
    }

    async fn close(&self) -> Result<(), Error> {
        if self.inner.closed.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        let subs: Vec<_> = self
            .inner
            .subs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain(..)
            .filter_map(|w| w.upgrade())
            .collect();
        for s in subs {
            s.close_remote();
        }
        Ok(())
    }
}
