//! What a handler receives: the [`Request`] (message plus where it came
//! from) and the route's [`Context`] for publishing follow-up messages.
//!
//! Publishing through [`Request::publish`] / [`Request::reply`] carries the
//! trace context and correlation id over from the consumed message.

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use wharf_core::{
    header, Backend, Capabilities, Codec, DeliveryInfo, Message, Publisher, Receipt, Result,
};

use crate::trace::TraceContext;

/// Shared, per-route facts and handles a handler may need (cheap to clone).
#[derive(Clone)]
pub struct Context {
    inner: Arc<ContextInner>,
}

struct ContextInner {
    publisher: Arc<dyn Publisher>,
    backend: &'static str,
    capabilities: Capabilities,
    group: Option<String>,
    dead_letter_topic: Option<String>,
}

/// Lets an `Arc<dyn Backend>` be used as an `Arc<dyn Publisher>`.
struct BackendPublisher(Arc<dyn Backend>);

#[async_trait]
impl Publisher for BackendPublisher {
    async fn publish(&self, topic: &str, message: Message) -> Result<Receipt> {
        self.0.publish(topic, message).await
    }
    async fn publish_batch(&self, topic: &str, messages: Vec<Message>) -> Result<Vec<Receipt>> {
        self.0.publish_batch(topic, messages).await
    }
}

impl Context {
    /// A context publishing through `publisher`, claiming every capability
    /// (for unit-testing handlers and middleware without a backend).
    pub fn new(publisher: Arc<dyn Publisher>) -> Self {
        Self::build(publisher, "custom", Capabilities::all(), None, None)
    }

    /// The context of a route on `backend`.
    pub fn for_backend(
        backend: Arc<dyn Backend>,
        group: Option<String>,
        dead_letter_topic: Option<String>,
    ) -> Self {
        let name = backend.name();
        let caps = backend.capabilities();
        Self::build(
            Arc::new(BackendPublisher(backend)),
            name,
            caps,
            group,
            dead_letter_topic,
        )
    }

    fn build(
        publisher: Arc<dyn Publisher>,
        backend: &'static str,
        capabilities: Capabilities,
        group: Option<String>,
        dead_letter_topic: Option<String>,
    ) -> Self {
        Context {
            inner: Arc::new(ContextInner {
                publisher,
                backend,
                capabilities,
                group,
                dead_letter_topic,
            }),
        }
    }

    /// The same context with different declared capabilities.
    #[must_use]
    pub fn with_capabilities(&self, capabilities: Capabilities) -> Self {
        Self::build(
            self.inner.publisher.clone(),
            self.inner.backend,
            capabilities,
            self.inner.group.clone(),
            self.inner.dead_letter_topic.clone(),
        )
    }

    /// The publisher of the route's backend.
    pub fn publisher(&self) -> &Arc<dyn Publisher> {
        &self.inner.publisher
    }

    /// The backend's name.
    pub fn backend_name(&self) -> &'static str {
        self.inner.backend
    }

    /// What the backend can do.
    pub fn capabilities(&self) -> Capabilities {
        self.inner.capabilities
    }

    /// The route's consumer group, if any.
    pub fn group(&self) -> Option<&str> {
        self.inner.group.as_deref()
    }

    /// The dead-letter topic for messages from `topic`: the route's
    /// configured one, else `dlq.<topic>`.
    pub fn dead_letter_topic(&self, topic: &str) -> String {
        match &self.inner.dead_letter_topic {
            Some(t) => t.clone(),
            None => wharf_core::name::dead_letter_topic(topic),
        }
    }
}

impl fmt::Debug for Context {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Context")
            .field("backend", &self.inner.backend)
            .field("capabilities", &self.inner.capabilities)
            .field("group", &self.inner.group)
            .finish_non_exhaustive()
    }
}

/// One message to handle, with its delivery facts and the route's context.
///
/// Cloning copies the message (payload and key are reference-counted; the
/// headers are copied).
#[derive(Clone, Debug)]
pub struct Request {
    message: Message,
    info: DeliveryInfo,
    ctx: Context,
    trace: Option<TraceContext>,
}

impl Request {
    /// A request for `message` delivered as `info` (the router makes these;
    /// tests of handlers can too).
    pub fn new(message: Message, info: DeliveryInfo, ctx: Context) -> Self {
        Request {
            message,
            info,
            ctx,
            trace: None,
        }
    }

    /// A first delivery of `message` from `topic`, for tests.
    pub fn test(topic: &str, message: Message, ctx: Context) -> Self {
        let info = DeliveryInfo {
            topic: topic.into(),
            partition: 0,
            offset: None,
            attempt: 1,
        };
        Self::new(message, info, ctx)
    }

    /// The message.
    pub fn message(&self) -> &Message {
        &self.message
    }

    /// The message, for middleware that adds headers.
    pub fn message_mut(&mut self) -> &mut Message {
        &mut self.message
    }

    /// Takes the message out.
    pub fn into_message(self) -> Message {
        self.message
    }

    /// Decodes the payload with `codec`.
    ///
    /// # Errors
    /// [`wharf_core::CodecError::Decode`] if the payload is not a valid `T`.
    pub fn decode<T, C: Codec<T>>(
        &self,
        codec: &C,
    ) -> std::result::Result<T, wharf_core::CodecError> {
        codec.decode(self.message.payload())
    }

    /// Topic, partition, offset and attempt.
    pub fn info(&self) -> &DeliveryInfo {
        &self.info
    }

    /// The topic the message was published to.
    pub fn topic(&self) -> &str {
        &self.info.topic
    }

    /// The backend's delivery attempt, starting at 1.
    pub fn attempt(&self) -> u32 {
        self.info.attempt
    }

    /// The route's context.
    pub fn context(&self) -> &Context {
        &self.ctx
    }

    /// The trace this message belongs to: set by [`crate::trace`], or parsed
    /// from the message's `traceparent` header.
    pub fn trace(&self) -> Option<TraceContext> {
        self.trace
            .or_else(|| TraceContext::from_message(&self.message))
    }

    /// Sets the trace context used for published messages.
    pub fn set_trace(&mut self, trace: TraceContext) {
        self.trace = Some(trace);
    }

    /// Adds the trace context and correlation id of this request to an
    /// outgoing message, unless the message already has its own.
    ///
    /// The `traceparent` written is this request's trace: the handling
    /// span's context when [`crate::trace::TraceLayer`] set one (so the
    /// outgoing message's parent is the consumer span), else the incoming
    /// header passed through unchanged.
    pub fn propagate_to(&self, outgoing: &mut Message) {
        let headers = outgoing.headers_mut();
        if !headers.contains(header::TRACEPARENT) {
            if let Some(tc) = self.trace() {
                headers.insert(header::TRACEPARENT, tc.to_string());
                if let Some(state) = self.message.headers().get(header::TRACESTATE) {
                    headers.insert(header::TRACESTATE, state);
                }
            }
        }
        if !headers.contains(header::CORRELATION_ID) {
            if let Some(c) = self.message.headers().get(header::CORRELATION_ID) {
                headers.insert(header::CORRELATION_ID, c);
            }
        }
    }

    /// Publishes a follow-up message, carrying trace and correlation over.
    ///
    /// # Errors
    /// As [`Publisher::publish`].
    pub async fn publish(&self, topic: &str, mut message: Message) -> Result<Receipt> {
        self.propagate_to(&mut message);
        self.ctx.publisher().publish(topic, message).await
    }

    /// Publishes `message` to this request's `reply-to` topic with
    /// `correlation-id` set to the request's correlation id (or, without
    /// one, its message id).
    ///
    /// # Errors
    /// [`wharf_core::Error::InvalidArgument`] when the request has no
    /// `reply-to` header; otherwise as [`Publisher::publish`].
    pub async fn reply(&self, mut message: Message) -> Result<Receipt> {
        let Some(topic) = self.message.headers().get(header::REPLY_TO) else {
            return Err(wharf_core::Error::InvalidArgument {
                name: "reply-to",
                reason: format!("message {} has no reply-to header", self.message.id()),
            });
        };
        let correlation = self
            .message
            .headers()
            .get(header::CORRELATION_ID)
            .map_or_else(|| self.message.id().to_string(), str::to_owned);
        message
            .headers_mut()
            .insert(header::CORRELATION_ID, correlation);
        self.propagate_to(&mut message);
        self.ctx.publisher().publish(topic, message).await
    }
}
