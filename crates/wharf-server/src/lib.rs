//! `wharf serve`: puts a network front on the embedded [`wharf_broker::Broker`].
//!
//! One TCP port serves both APIs: gRPC (`wharf.v1.Wharf`, with reflection)
//! for the Rust client and other gRPC users, and HTTP/JSON for everyone else
//! (publish, long-poll consume with explicit settlement, SSE and WebSocket
//! streams, admin, `/healthz`, `/readyz`, `/metrics`, `/openapi.json`).
//! Both also serve the embedded event store (`wharf.v1.EventStore`,
//! `/v1/eventstore/...`) kept in `<data_dir>/eventstore`, and hosts
//! projections that publish its events into topics (`<data_dir>/projections`).
//! Start with [`Server::bind`], then [`Server::serve`] until a shutdown
//! signal; shutdown ends every stream and closes the broker (flush, persist
//! group positions).

mod admin;
mod auth;
mod backoff;
mod config;
mod console;
mod error;
mod grpc;
mod http;
mod leases;
mod listen;
mod message_limit;
pub mod process;
mod projections;
mod route;
mod telemetry;
#[cfg(feature = "tls")]
mod tls;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use wharf_broker::Broker;
use wharf_core::Backend;
use wharf_eventstore::EventStore as _;

pub use auth::{Auth, Right, TokenConfig};
pub use config::{ConfigError, ServerConfig, DEFAULT_LISTEN};
pub use http::{fuzz_decode_http, openapi, ApiDoc};

/// Why the server failed to start or run.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServerError {
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The broker could not be opened or closed cleanly.
    #[error("broker: {0}")]
    Broker(#[from] wharf_core::Error),
    /// Serving failed.
    #[error("serving failed: {0}")]
    Io(#[from] std::io::Error),
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The event store could not be opened or closed cleanly.
    #[error("event store: {0}")]
    EventStore(#[from] wharf_eventstore::EventStoreError),
    /// The projection definitions could not be read.
    #[error("projections: {0}")]
    Projections(String),
}

impl From<projections::ProjectionsError> for ServerError {
    fn from(e: projections::ProjectionsError) -> Self {
        ServerError::Projections(e.to_string())
    }
}

/// State shared by every request handler.
pub(crate) struct Shared {
    pub(crate) broker: Broker,
    /// The event store, in `<data_dir>/eventstore`.
    pub(crate) events: wharf_eventstore::EmbeddedStore,
    /// The projections publishing the event store into topics.
    pub(crate) projections: projections::Projections,
    pub(crate) auth: Option<Auth>,
    pub(crate) config: ServerConfig,
    pub(crate) leases: leases::Leases,
    pub(crate) pollers: http::Pollers,
    pub(crate) shutdown: watch::Receiver<bool>,
    pub(crate) metrics: telemetry::Metrics,
}

impl Shared {
    /// Resolves once shutdown has begun.
    pub(crate) async fn stopping(&self) {
        let mut rx = self.shutdown.clone();
        let _ = rx.wait_for(|s| *s).await;
    }
}

/// A bound server, ready to [`serve`](Server::serve).
pub struct Server {
    listener: tokio::net::TcpListener,
    shared: Arc<Shared>,
    stop: watch::Sender<bool>,
    tls: Option<Acceptor>,
}

#[cfg(feature = "tls")]
type Acceptor = tokio_rustls::TlsAcceptor;
#[cfg(not(feature = "tls"))]
type Acceptor = std::convert::Infallible;

impl Server {
    /// Opens the broker in `config.data_dir` and binds `config.listen`.
    ///
    /// # Errors
    /// [`ServerError::Broker`] if the data dir cannot be opened,
    /// [`ServerError::Bind`] if the address is taken.
    pub async fn bind(config: ServerConfig) -> Result<Server, ServerError> {
        config.validate()?;
        let auth = config.auth()?;
        let tls: Option<Acceptor> = match &config.tls {
            None => None,
            #[cfg(feature = "tls")]
            Some((cert, key)) => Some(tls::acceptor(cert, key)?),
            #[cfg(not(feature = "tls"))]
            Some(_) => {
                return Err(ServerError::Config(ConfigError::Tls {
                    reason: "this build has no TLS support (enable the `tls` feature)".into(),
                }))
            }
        };
        let broker = Broker::builder()
            .header_limits(config.max_headers, config.max_header_bytes)
            .max_groups(config.max_groups)
            .group_idle(config.group_idle)
            .read_ahead_bytes(config.read_ahead_bytes)
            .auto_create_topics(config.auto_create_topics)
            .open(&config.data_dir)
            .await?;
        let events = wharf_eventstore::EmbeddedStore::builder()
            .limits(event_limits(config.max_request_bytes))
            .open(config.data_dir.join(EVENTSTORE_DIR))
            .await?;
        let listener = listen::bind(config.listen).map_err(|source| ServerError::Bind {
            addr: config.listen,
            source,
        })?;
        let (stop, shutdown) = watch::channel(false);
        // The exporter first, so the projections' metrics reach it.
        let metrics = telemetry::Metrics::install();
        let projections =
            projections::Projections::open(&config.data_dir, events.clone(), broker.clone())
                .await?;
        let shared = Arc::new(Shared {
            broker,
            events,
            projections,
            auth,
            leases: leases::Leases::default(),
            pollers: http::Pollers::default(),
            shutdown,
            metrics,
            config,
        });
        Ok(Server {
            listener,
            shared,
            stop,
            tls,
        })
    }

    /// Whether connections are served over TLS.
    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// The address actually bound (useful with port 0).
    ///
    /// # Errors
    /// The OS error if the socket has no local address.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until `signal` resolves, then shuts down gracefully: stops
    /// accepting, ends consume streams, waits up to 5 s for requests in
    /// flight, and closes the broker.
    ///
    /// # Errors
    /// I/O failures of the listener; broker close failures.
    pub async fn serve(
        self,
        signal: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), ServerError> {
        let Server {
            listener,
            shared,
            stop,
            tls,
        } = self;
        let app = route::Api::new(http::router(shared.clone()), grpc::routes(shared.clone()));
        let reaper = tokio::spawn(leases::reap(shared.clone()));
        let poll_reaper = tokio::spawn(http::reap_pollers(shared.clone()));
        let mut done = shared.shutdown.clone();
        let stop = Arc::new(stop);
        let stop2 = stop.clone();
        tokio::spawn(async move {
            signal.await;
            tracing::info!("shutdown requested: draining connections, then closing the broker");
            let _ = stop2.send(true);
        });
        let stopped = async move {
            let _ = done.wait_for(|s| *s).await;
        };
        let limits = listen::ConnLimits {
            max_connections: connection_cap(shared.config.max_connections),
            header_read: shared.config.header_read_timeout,
            body_read: shared.config.body_read_timeout,
            idle: shared.config.idle_timeout,
            tls_handshake: shared.config.tls_handshake_timeout,
        };
        let server = listen::serve(listener, tls, app, limits, stopped, shared.shutdown.clone());
        let mut server = std::pin::pin!(server);
        let result = tokio::select! {
            r = &mut server => r,
            () = async {
                shared.stopping().await;
                tokio::time::sleep(Duration::from_secs(6)).await;
            } => Ok(()),
        };
        let _ = stop.send(true);
        reaper.abort();
        poll_reaper.abort();
        shared.leases.clear();
        shared.pollers.clear();
        shared.projections.stop().await;
        let events = shared.events.close().await;
        shared.broker.close().await?;
        events?;
        result?;
        Ok(())
    }
}

/// The event store's directory under the data dir.
pub const EVENTSTORE_DIR: &str = "eventstore";

pub use projections::PROJECTIONS_DIR;

/// The event store's size limits: its defaults, lowered so that one append
/// fits in a request of `max_request_bytes` (so an oversized event is the
/// store's typed `too_large`, not only the transport's refusal).
fn event_limits(max_request_bytes: usize) -> wharf_eventstore::Limits {
    let d = wharf_eventstore::Limits::default();
    let append = d.max_append_bytes.min(max_request_bytes / 2).max(1);
    d.with_max_append_bytes(append)
        .with_max_event_bytes(d.max_event_bytes.min(append))
}

/// `configured`, lowered to stay below the open-files limit (raised to its
/// hard limit first where allowed): a quarter of the limit, at least 256
/// descriptors, stays for the broker's files and the listener.
fn connection_cap(configured: usize) -> usize {
    let Some(fds) = process::raise_fd_limit() else {
        return configured;
    };
    let room = connection_room(usize::try_from(fds).unwrap_or(usize::MAX));
    if configured > room {
        tracing::warn!(
            configured,
            cap = room,
            open_files_limit = fds,
            "max_connections lowered to stay below the open-files limit"
        );
    }
    configured.min(room)
}

/// How many connections fit under an open-files limit of `fds`: a quarter
/// of it, at least 256, stays for the broker's files and the listener —
/// but never more than half, so a low limit (256 where it cannot be
/// raised) still serves 128 clients, not one.
fn connection_room(fds: usize) -> usize {
    fds.saturating_sub((fds / 4).max(256)).max(fds / 2).max(1)
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
}

#[cfg(test)]
mod connection_room_tests {
    use super::connection_room;

    #[test]
    fn connections_keep_a_share_of_low_and_high_open_file_limits() {
        assert_eq!(connection_room(256), 128, "a limit that cannot be raised");
        assert_eq!(connection_room(1024), 768);
        assert_eq!(connection_room(20_000), 15_000);
        assert_eq!(connection_room(1), 1);
    }
}
