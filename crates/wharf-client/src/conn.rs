//! The HTTP/2 connection every call of a [`crate::Client`] shares.
//!
//! hyper's `SendRequest` is used directly: it is cloneable, and a request
//! goes from the caller's task straight to the connection task. tonic's
//! `Channel` puts a `tower::Buffer` worker task between the two, one more
//! task hand-off (and, on this kind of 2-vCPU VM, often one more wake-up of
//! an idle CPU) per call. After the connection breaks, the next call
//! connects again; calls on the broken connection fail with a transient
//! `Error::Unavailable` (the subscription resubscribes with backoff,
//! publishers retry).

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tonic::body::Body;
use tonic::codegen::http::{self, uri::Authority, uri::Scheme, Uri};
use wharf_core::Error;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const KEEP_ALIVE: Duration = Duration::from_secs(20);

/// Where and how to connect.
struct Target {
    scheme: Scheme,
    authority: Authority,
    #[cfg(feature = "tls")]
    tls: Option<(
        tokio_rustls::TlsConnector,
        rustls_pki_types::ServerName<'static>,
    )>,
}

struct Shared {
    target: Target,
    /// The current connection, if one was made and has not closed.
    sender: Mutex<Option<SendRequest<Body>>>,
    /// Held while connecting, so concurrent calls after a break make one
    /// connection, not one each.
    connecting: tokio::sync::Mutex<()>,
}

/// A cheap-to-clone handle on one HTTP/2 connection to a `wharf serve`; a
/// tower service for generated gRPC clients and the hand-built publish
/// request.
#[derive(Clone)]
pub struct Conn(Arc<Shared>);

fn invalid(name: &'static str, reason: impl ToString) -> Error {
    Error::InvalidArgument {
        name,
        reason: reason.to_string(),
    }
}

impl Conn {
    /// Connects to `url` (`http://host:port`, or `https://` trusting the
    /// PEM CA certificate `ca_pem`). Usable under any tonic-generated
    /// client (e.g. gRPC reflection) as well as [`crate::Client`].
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for a bad URL or CA certificate,
    /// [`Error::Unavailable`] if the server cannot be reached.
    pub async fn connect(url: &str, ca_pem: Option<&[u8]>) -> Result<Conn, Error> {
        let uri: Uri = url.parse().map_err(|e| invalid("url", e))?;
        let scheme = uri.scheme().cloned().unwrap_or(Scheme::HTTP);
        let authority = uri
            .authority()
            .cloned()
            .ok_or_else(|| invalid("url", format!("{url}: no host")))?;
        if scheme != Scheme::HTTP && scheme != Scheme::HTTPS {
            return Err(invalid("url", format!("{url}: not http:// or https://")));
        }
        let target = Target {
            #[cfg(feature = "tls")]
            tls: if scheme == Scheme::HTTPS {
                Some(tls::connector(&authority, ca_pem)?)
            } else {
                None
            },
            scheme,
            authority,
        };
        #[cfg(not(feature = "tls"))]
        if target.scheme == Scheme::HTTPS || ca_pem.is_some() {
            return Err(invalid(
                "ca_cert",
                "wharf-client was built without the `tls` feature",
            ));
        }
        let conn = Conn(Arc::new(Shared {
            target,
            sender: Mutex::new(None),
            connecting: tokio::sync::Mutex::new(()),
        }));
        conn.sender().await.map_err(|source| Error::Unavailable {
            backend: crate::BACKEND,
            source,
        })?;
        Ok(conn)
    }

    fn current(&self) -> Option<SendRequest<Body>> {
        let g = self.0.sender.lock().unwrap_or_else(|p| p.into_inner());
        g.as_ref().filter(|s| !s.is_closed()).cloned()
    }

    /// The open connection, connecting first if there is none.
    async fn sender(&self) -> Result<SendRequest<Body>, BoxError> {
        if let Some(s) = self.current() {
            return Ok(s);
        }
        let _one = self.0.connecting.lock().await;
        if let Some(s) = self.current() {
            return Ok(s);
        }
        let s = tokio::time::timeout(CONNECT_TIMEOUT, self.0.target.connect())
            .await
            .map_err(|_| format!("connecting to {} timed out", self.0.target.authority))??;
        *self.0.sender.lock().unwrap_or_else(|p| p.into_inner()) = Some(s.clone());
        Ok(s)
    }
}

impl Target {
    async fn connect(&self) -> Result<SendRequest<Body>, BoxError> {
        let host = self.authority.host();
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let port = self
            .authority
            .port_u16()
            .unwrap_or(if self.scheme == Scheme::HTTPS {
                443
            } else {
                80
            });
        let tcp = tokio::net::TcpStream::connect((host, port)).await?;
        tcp.set_nodelay(true)?;
        #[cfg(feature = "tls")]
        if let Some((connector, name)) = &self.tls {
            let tls = connector.connect(name.clone(), tcp).await?;
            return handshake(tls).await;
        }
        handshake(tcp).await
    }
}

async fn handshake<IO>(io: IO) -> Result<SendRequest<Body>, BoxError>
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    let (sender, connection) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .initial_stream_window_size(4 << 20)
        .initial_connection_window_size(16 << 20)
        .keep_alive_interval(KEEP_ALIVE)
        .keep_alive_while_idle(true)
        .handshake(TokioIo::new(io))
        .await?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "connection to the server ended");
        }
    });
    Ok(sender)
}

impl tower_service::Service<http::Request<Body>> for Conn {
    type Response = http::Response<hyper::body::Incoming>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut req: http::Request<Body>) -> Self::Future {
        // HTTP/2 needs :scheme and :authority; callers give the path only.
        let mut parts = std::mem::take(req.uri_mut()).into_parts();
        parts.scheme = Some(self.0.target.scheme.clone());
        parts.authority = Some(self.0.target.authority.clone());
        match Uri::from_parts(parts) {
            Ok(uri) => *req.uri_mut() = uri,
            Err(e) => return Box::pin(std::future::ready(Err(e.into()))),
        }
        let conn = self.clone();
        Box::pin(async move {
            let mut sender = conn.sender().await?;
            Ok(sender.send_request(req).await?)
        })
    }
}

#[cfg(feature = "tls")]
mod tls {
    use std::sync::Arc;

    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, ServerName};
    use tokio_rustls::rustls;
    use tokio_rustls::TlsConnector;
    use tonic::codegen::http::uri::Authority;
    use wharf_core::Error;

    use super::invalid;

    /// A connector offering HTTP/2 that trusts `ca_pem` (or, without one,
    /// nothing: a CA is required for `https://`).
    pub(super) fn connector(
        authority: &Authority,
        ca_pem: Option<&[u8]>,
    ) -> Result<(TlsConnector, ServerName<'static>), Error> {
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(ca_pem.unwrap_or_default()) {
            let cert = cert.map_err(|e| invalid("ca_cert", e))?;
            roots.add(cert).map_err(|e| invalid("ca_cert", e))?;
        }
        let mut cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| invalid("ca_cert", e))?
        .with_root_certificates(roots)
        .with_no_client_auth();
        cfg.alpn_protocols = vec![b"h2".to_vec()];
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']');
        let name = ServerName::try_from(host.to_owned()).map_err(|e| invalid("url", e))?;
        Ok((TlsConnector::from(Arc::new(cfg)), name))
    }
}
