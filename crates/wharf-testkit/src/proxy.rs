//! A TCP proxy whose connections a test can cut at once: a client
//! connected through it dies, as far as the server can tell, the way a
//! killed process does — its connections close with nothing more sent, and
//! it never reconnects. [`crate::ConsumerProcess::through`] uses it for
//! networked backends.

use std::io;
use std::net::SocketAddr;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};

/// A proxy on a local port forwarding every connection to one target.
pub struct Proxy {
    addr: SocketAddr,
    cut: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl Proxy {
    /// Starts a proxy to `target` (`host:port`) on a free local port.
    ///
    /// # Errors
    /// When no local port can be bound.
    pub async fn start(target: String) -> io::Result<Proxy> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (cut, mut on_cut) = watch::channel(false);
        let task = tokio::spawn(async move {
            let mut conns = JoinSet::new();
            loop {
                tokio::select! {
                    _ = on_cut.changed() => break,
                    accepted = listener.accept() => {
                        let Ok((client, _)) = accepted else { continue };
                        let target = target.clone();
                        conns.spawn(async move {
                            if let Ok(server) = TcpStream::connect(&target).await {
                                forward(client, server).await;
                            }
                        });
                    }
                    Some(_) = conns.join_next(), if !conns.is_empty() => {}
                }
            }
            // Dropping the listener refuses new connections; aborting the
            // forwarders drops (closes) both ends of every connection.
            drop(listener);
            conns.shutdown().await;
        });
        Ok(Proxy { addr, cut, task })
    }

    /// A proxy to the server of `url` (`scheme://[user@]host:port/…`) and
    /// the same URL pointing at the proxy instead.
    ///
    /// # Errors
    /// `InvalidInput` for a URL without an explicit `host:port`; as
    /// [`Proxy::start`].
    pub async fn for_url(url: &str) -> io::Result<(Proxy, String)> {
        let bad = || {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("no host:port in {url}"),
            )
        };
        let (scheme, rest) = url.split_once("://").ok_or_else(bad)?;
        let end = rest.find(['/', '?']).unwrap_or(rest.len());
        let (authority, path) = rest.split_at(end);
        let (user, host_port) = match authority.rsplit_once('@') {
            Some((user, hp)) => (format!("{user}@"), hp),
            None => (String::new(), authority),
        };
        if host_port
            .rsplit_once(':')
            .is_none_or(|(_, p)| p.parse::<u16>().is_err())
        {
            return Err(bad());
        }
        let proxy = Proxy::start(host_port.to_owned()).await?;
        let proxied = format!("{scheme}://{user}{}{path}", proxy.addr);
        Ok((proxy, proxied))
    }

    /// The proxy's local address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Closes every connection through the proxy and stops accepting new
    /// ones (they are refused); returns once all are closed.
    pub async fn cut(self) {
        let _ = self.cut.send(true);
        let _ = self.task.await;
    }
}

/// Copies both ways until either side closes.
async fn forward(mut client: TcpStream, mut server: TcpStream) {
    let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    #[test]
    fn a_url_is_pointed_at_the_proxy_keeping_user_and_path() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async {
            let (p, url) = Proxy::for_url("amqp://guest:guest@127.0.0.1:5672/%2f")
                .await
                .expect("proxy");
            assert_eq!(url, format!("amqp://guest:guest@{}/%2f", p.addr()));
            let (p2, url) = Proxy::for_url("nats://127.0.0.1:4222")
                .await
                .expect("proxy");
            assert_eq!(url, format!("nats://{}", p2.addr()));
            assert!(Proxy::for_url("redis://localhost/0").await.is_err());
            p.cut().await;
            p2.cut().await;
        });
    }

    #[tokio::test]
    async fn a_cut_closes_open_connections_and_refuses_new_ones() {
        let upstream = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let target = upstream.local_addr().expect("addr").to_string();
        let proxy = Proxy::start(target).await.expect("proxy");
        let mut client = TcpStream::connect(proxy.addr()).await.expect("connect");
        let (mut server, _) = upstream.accept().await.expect("accept");
        client.write_all(b"ping").await.expect("write");
        let mut buf = [0u8; 4];
        server.read_exact(&mut buf).await.expect("forwarded");
        assert_eq!(&buf, b"ping");
        let addr = proxy.addr();
        proxy.cut().await;
        // The server sees the connection end; the client can't come back.
        assert_eq!(server.read(&mut buf).await.expect("eof"), 0);
        assert!(TcpStream::connect(addr).await.is_err());
    }
}
