//! A command bus over any Wharf backend: each [`Command`] type has exactly
//! one handler, reached through the router, and the sender gets its typed
//! answer back — the output, or the domain's typed rejection.
//!
//! A command `C` travels on the topic `commands.<C::NAME>`
//! ([`command_topic`]) as JSON, with `reply-to` naming the sending bus's
//! own reply topic and a `correlation-id`. The handler runs in a consumer
//! group (`command-handlers` unless [`CommandHandlers::group`] says
//! otherwise), so one instance of the service handles each command however
//! many run, with whatever middleware the router stack adds (retries,
//! timeouts, dead letters). It answers with `{"Ok": output}` or
//! `{"Err": rejection}`; a handler failure that is not a rejection
//! ([`CommandFailed::Failed`]) sends no answer and goes to the router's
//! retry and dead-letter middleware instead — the sender then times out.
//!
//! [`CommandHandlers`] refuses a second handler for the same command type.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//! use serde::{Deserialize, Serialize};
//! use wharf_core::Backend;
//! use wharf_router::command::{Command, CommandBus, CommandFailed, CommandHandlers, SendError};
//! use tokio_util::sync::CancellationToken;
//! use wharf_router::Router;
//!
//! #[derive(Serialize, Deserialize)]
//! struct Withdraw { account: String, cents: u64 }
//! #[derive(Serialize, Deserialize, Debug, PartialEq)]
//! enum Refused { InsufficientFunds { balance: u64 } }
//! impl Command for Withdraw {
//!     const NAME: &'static str = "bank.withdraw";
//!     type Output = u64; // the new balance
//!     type Rejection = Refused;
//! }
//!
//! let backend: Arc<dyn Backend> = Arc::new(wharf_memory::MemoryBackend::new());
//! let handlers = CommandHandlers::new().handle(|w: Withdraw| async move {
//!     let balance = 100;
//!     if w.cents > balance {
//!         return Err(CommandFailed::Rejected(Refused::InsufficientFunds { balance }));
//!     }
//!     Ok(balance - w.cents)
//! })?;
//! let stop = CancellationToken::new();
//! let router = handlers.register(Router::new(backend.clone()));
//! let running = tokio::spawn(router.run(stop.clone()));
//!
//! let bus = CommandBus::connect(backend.clone()).await?;
//! assert_eq!(bus.send(&Withdraw { account: "a-1".into(), cents: 30 }).await?, 70);
//! let refused = bus.send(&Withdraw { account: "a-1".into(), cents: 300 }).await;
//! assert!(matches!(refused, Err(SendError::Rejected(Refused::InsufficientFunds { balance: 100 }))));
//!
//! stop.cancel();
//! running.await??;
//! # Ok(()) }
//! ```

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::marker::PhantomData;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::future::BoxFuture;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tower::Service;
use wharf_core::header::{CORRELATION_ID, REPLY_TO};
use wharf_core::{Backend, Codec, Json, Message, MessageId, StartPosition, SubscribeOptions};

use crate::{HandlerError, Outcome, Request, Router};

/// A command: a request with one handler and a typed answer.
pub trait Command: Serialize + DeserializeOwned + Send + 'static {
    /// Its name, which names its topic (`commands.<NAME>`): a valid topic
    /// segment such as `bank.withdraw`.
    const NAME: &'static str;
    /// What the handler answers when it accepts the command.
    type Output: Serialize + DeserializeOwned + Send + 'static;
    /// What the handler answers when the domain refuses the command.
    type Rejection: Serialize + DeserializeOwned + Send + 'static;
}

/// The topic a command travels on: `commands.<name>`.
pub fn command_topic(name: &str) -> String {
    format!("commands.{name}")
}

/// Why a handler did not produce an output.
#[derive(Debug)]
pub enum CommandFailed<R> {
    /// The domain refused the command: answered to the sender, typed.
    Rejected(R),
    /// Something else failed (a store was down…): no answer; the router's
    /// middleware retries or dead-letters the command as for any handler
    /// error.
    Failed(HandlerError),
}

impl<R> From<HandlerError> for CommandFailed<R> {
    fn from(e: HandlerError) -> Self {
        CommandFailed::Failed(e)
    }
}

/// The answer on the wire.
#[derive(Serialize, Deserialize)]
enum Answer<O, R> {
    Ok(O),
    Err(R),
}

/// The router service running one command type's handler (see
/// [`command_service`]).
pub struct CommandService<C, F> {
    f: F,
    _c: PhantomData<fn() -> C>,
}

impl<C, F: Clone> Clone for CommandService<C, F> {
    fn clone(&self) -> Self {
        CommandService {
            f: self.f.clone(),
            _c: PhantomData,
        }
    }
}

impl<C, F> std::fmt::Debug for CommandService<C, F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CommandService").finish_non_exhaustive()
    }
}

/// The service that decodes a `C`, runs `f` and answers the sender: use it
/// with [`Router::route`] and [`CommandHandlers::options`] to put
/// middleware around it. A payload that is not a `C` is a permanent
/// [`HandlerError::Decode`] (dead-lettered by the dead-letter layer).
pub fn command_service<C, F, Fut>(f: F) -> CommandService<C, F>
where
    C: Command,
    F: Fn(C) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<C::Output, CommandFailed<C::Rejection>>> + Send + 'static,
{
    CommandService { f, _c: PhantomData }
}

impl<C, F, Fut> Service<Request> for CommandService<C, F>
where
    C: Command,
    F: Fn(C) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<C::Output, CommandFailed<C::Rejection>>> + Send + 'static,
{
    type Response = Outcome;
    type Error = HandlerError;
    type Future = BoxFuture<'static, Result<Outcome, HandlerError>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), HandlerError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request) -> Self::Future {
        let f = self.f.clone();
        Box::pin(async move {
            let command: C = Json.decode(req.message().payload())?;
            let answer = match f(command).await {
                Ok(out) => Answer::<C::Output, C::Rejection>::Ok(out),
                Err(CommandFailed::Rejected(r)) => Answer::Err(r),
                Err(CommandFailed::Failed(e)) => return Err(e),
            };
            if req.message().headers().get(REPLY_TO).is_some() {
                let payload = Json.encode(&answer)?;
                req.reply(Message::builder().payload(payload).build())
                    .await
                    .map_err(HandlerError::from)?;
            }
            Ok(Outcome::Ack)
        })
    }
}

/// A second handler for a command type that already has one.
#[derive(Debug, thiserror::Error)]
#[error("command {name} already has a handler")]
pub struct DuplicateHandler {
    /// The command's name.
    pub name: &'static str,
}

type Register = Box<dyn FnOnce(Router, &str) -> Router + Send>;

/// The command handlers of a service, one per command type, added to a
/// [`Router`] by [`register`](Self::register).
pub struct CommandHandlers {
    names: HashSet<&'static str>,
    routes: Vec<Register>,
    group: String,
}

impl std::fmt::Debug for CommandHandlers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CommandHandlers")
            .field("commands", &self.names)
            .field("group", &self.group)
            .finish()
    }
}

impl Default for CommandHandlers {
    fn default() -> Self {
        CommandHandlers::new()
    }
}

impl CommandHandlers {
    /// No handlers yet; the consumer group is `command-handlers`.
    pub fn new() -> CommandHandlers {
        CommandHandlers {
            names: HashSet::new(),
            routes: Vec::new(),
            group: "command-handlers".into(),
        }
    }

    /// The consumer group the handlers consume in (one group per service).
    pub fn group(mut self, group: impl Into<String>) -> CommandHandlers {
        self.group = group.into();
        self
    }

    /// The subscription a handler of `C` consumes from, in `group`.
    pub fn options<C: Command>(group: &str) -> SubscribeOptions {
        SubscribeOptions::new(command_topic(C::NAME))
            .group(group)
            .start(StartPosition::Earliest)
    }

    /// Adds the handler of `C`.
    ///
    /// # Errors
    /// [`DuplicateHandler`] when `C` (or another command of the same name)
    /// has a handler already.
    pub fn handle<C, F, Fut>(mut self, f: F) -> Result<CommandHandlers, DuplicateHandler>
    where
        C: Command,
        F: Fn(C) -> Fut + Clone + Send + Sync + 'static,
        Fut: Future<Output = Result<C::Output, CommandFailed<C::Rejection>>> + Send + 'static,
    {
        if !self.names.insert(C::NAME) {
            return Err(DuplicateHandler { name: C::NAME });
        }
        self.routes
            .push(Box::new(move |router: Router, group: &str| {
                router.route(Self::options::<C>(group), command_service::<C, F, Fut>(f))
            }));
        Ok(self)
    }

    /// Adds a route per handler to `router`.
    pub fn register(self, mut router: Router) -> Router {
        for r in self.routes {
            router = r(router, &self.group);
        }
        router
    }
}

/// Why [`CommandBus::send`] got no output.
#[derive(Debug, thiserror::Error)]
pub enum SendError<R> {
    /// The handler refused the command, typed.
    #[error("the command was rejected")]
    Rejected(R),
    /// No answer within the bus's timeout (the handler may be down, failing
    /// and retrying, or slow; the command may still be handled).
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// The backend refused or failed the publish.
    #[error(transparent)]
    Backend(#[from] wharf_core::Error),
    /// The command or its answer did not encode or decode.
    #[error(transparent)]
    Codec(#[from] wharf_core::CodecError),
    /// The bus was closed (its reply subscription ended).
    #[error("the command bus is closed")]
    Closed,
}

type Pending = Arc<Mutex<HashMap<String, oneshot::Sender<Message>>>>;

/// Sends commands and waits for their answers on a reply topic of its own.
pub struct CommandBus {
    backend: Arc<dyn Backend>,
    reply_topic: String,
    pending: Pending,
    timeout: Duration,
    listener: JoinHandle<()>,
}

impl std::fmt::Debug for CommandBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CommandBus")
            .field("reply_topic", &self.reply_topic)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl CommandBus {
    /// A bus on `backend` with a reply topic of its own
    /// (`commands.replies.<uuid>`) and a 30 s timeout.
    ///
    /// # Errors
    /// The backend's, subscribing to the reply topic.
    pub async fn connect(backend: Arc<dyn Backend>) -> wharf_core::Result<CommandBus> {
        let topic = format!(
            "commands.replies.{}",
            MessageId::new().to_string().replace('-', "")
        );
        CommandBus::connect_with_reply_topic(backend, topic).await
    }

    /// A bus whose answers come to `reply_topic` (one per instance: answers
    /// to another bus's commands on it are ignored).
    ///
    /// # Errors
    /// The backend's, subscribing to the reply topic.
    pub async fn connect_with_reply_topic(
        backend: Arc<dyn Backend>,
        reply_topic: impl Into<String>,
    ) -> wharf_core::Result<CommandBus> {
        let reply_topic = reply_topic.into();
        let mut replies = backend
            .subscribe(SubscribeOptions::new(reply_topic.clone()).start(StartPosition::Latest))
            .await?;
        let pending: Pending = Arc::default();
        let waiting = pending.clone();
        let listener = tokio::spawn(async move {
            while let Some(d) = replies.next().await {
                let Ok(d) = d else { continue };
                let waiter = d
                    .message()
                    .headers()
                    .get(CORRELATION_ID)
                    .and_then(|c| waiting.lock().expect("not poisoned").remove(c));
                let (message, _, settler) = d.into_parts();
                if let Some(w) = waiter {
                    let _ = w.send(message);
                }
                let _ = settler.ack().await;
            }
            waiting.lock().expect("not poisoned").clear();
        });
        Ok(CommandBus {
            backend,
            reply_topic,
            pending,
            timeout: Duration::from_secs(30),
            listener,
        })
    }

    /// How long [`send`](Self::send) waits for an answer.
    pub fn timeout(mut self, timeout: Duration) -> CommandBus {
        self.timeout = timeout;
        self
    }

    /// Sends `command` to its handler and waits for the answer.
    ///
    /// # Errors
    /// [`SendError::Rejected`] with the handler's typed rejection;
    /// [`SendError::Timeout`] without an answer in time; the backend's and
    /// codec errors.
    pub async fn send<C: Command>(
        &self,
        command: &C,
    ) -> Result<C::Output, SendError<C::Rejection>> {
        let payload = Json.encode(command)?;
        let id = MessageId::new();
        let correlation = id.to_string();
        let (tx, rx) = oneshot::channel();
        self.pending
            .lock()
            .expect("not poisoned")
            .insert(correlation.clone(), tx);
        // Removed on every way out, answered or not.
        let _forget = Forget {
            pending: &self.pending,
            correlation: &correlation,
        };
        let message = Message::builder()
            .id(id)
            .header(REPLY_TO, self.reply_topic.as_str())
            .header(CORRELATION_ID, correlation.as_str())
            .payload(payload)
            .build();
        self.backend
            .publish(&command_topic(C::NAME), message)
            .await?;
        let answer = match tokio::time::timeout(self.timeout, rx).await {
            Ok(Ok(m)) => m,
            Ok(Err(_)) => return Err(SendError::Closed),
            Err(_) => return Err(SendError::Timeout(self.timeout)),
        };
        match Json.decode(answer.payload())? {
            Answer::<C::Output, C::Rejection>::Ok(out) => Ok(out),
            Answer::Err(r) => Err(SendError::Rejected(r)),
        }
    }
}

impl Drop for CommandBus {
    fn drop(&mut self) {
        self.listener.abort();
    }
}

struct Forget<'a> {
    pending: &'a Pending,
    correlation: &'a str,
}

impl Drop for Forget<'_> {
    fn drop(&mut self) {
        self.pending
            .lock()
            .expect("not poisoned")
            .remove(self.correlation);
    }
}
