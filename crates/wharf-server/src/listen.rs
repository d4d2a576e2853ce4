//! The accept loop for the one port: plain TCP or TLS, each connection
//! served by hyper's auto builder (HTTP/1.1 and HTTP/2 — gRPC needs h2 —
//! with WebSocket upgrades), with large HTTP/2 windows so batched publishes
//! are not throttled by the 64 KiB default, and a graceful drain at stop.

use std::future::Future;
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;

use crate::route::Api;
use crate::Acceptor;

/// How long stop waits for open connections to finish.
const DRAIN: Duration = Duration::from_secs(5);

fn builder() -> Builder<TokioExecutor> {
    let mut b = Builder::new(TokioExecutor::new());
    b.http2()
        .initial_stream_window_size(4 << 20)
        .initial_connection_window_size(16 << 20)
        .max_frame_size(1 << 20)
        .max_send_buf_size(4 << 20);
    b
}

/// Serves `app` on `listener` until `stop` resolves, then stops accepting and
/// drains open connections for up to five seconds.
pub(crate) async fn serve(
    listener: tokio::net::TcpListener,
    tls: Option<Acceptor>,
    app: Api,
    stop: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let graceful = GracefulShutdown::new();
    let builder = builder();
    tokio::pin!(stop);
    loop {
        let (tcp, _) = tokio::select! {
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    // Out of file descriptors and the like: back off, keep serving.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut stop => break,
        };
        let _ = tcp.set_nodelay(true);
        let svc = TowerToHyperService::new(app.clone());
        let builder = builder.clone();
        let watcher = graceful.watcher();
        match &tls {
            None => {
                tokio::spawn(async move {
                    let conn = builder.serve_connection_with_upgrades(TokioIo::new(tcp), svc);
                    if let Err(e) = watcher.watch(conn.into_owned()).await {
                        tracing::debug!(error = %e, "connection ended with an error");
                    }
                });
            }
            #[cfg(feature = "tls")]
            Some(acceptor) => {
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let stream = match acceptor.accept(tcp).await {
                        Ok(s) => s,
                        Err(e) => {
                            tracing::debug!(error = %e, "TLS handshake failed");
                            return;
                        }
                    };
                    let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), svc);
                    if let Err(e) = watcher.watch(conn.into_owned()).await {
                        tracing::debug!(error = %e, "TLS connection ended with an error");
                    }
                });
            }
            #[cfg(not(feature = "tls"))]
            Some(never) => match *never {},
        }
    }
    drop(listener);
    if tokio::time::timeout(DRAIN, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("connections still open after {DRAIN:?}; closing anyway");
    }
    Ok(())
}
