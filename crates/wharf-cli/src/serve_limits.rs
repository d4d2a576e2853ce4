//! `wharf serve`'s limit flags, one block flattened into the command: each
//! overrides the config file's key of the same name (and the server's
//! default when neither is given), so defaults live in one place,
//! `wharf_server::ServerConfig::new`.

use wharf_server::ServerConfig;

/// Limits of what one client may send (defaults in the README's security section).
#[derive(clap::Args, Debug, Default)]
pub(crate) struct ServeLimits {
    /// Most headers per published message [default: 256].
    #[arg(long, value_name = "N")]
    max_headers: Option<usize>,
    /// Most bytes of header names and values per published message [default: 65536].
    #[arg(long, value_name = "BYTES")]
    max_header_bytes: Option<usize>,
    /// Most consumer groups loaded at once, counted per topic [default:
    /// 10000]; past it a new group is refused until idle ones unload.
    #[arg(long, value_name = "N")]
    max_groups: Option<usize>,
    /// Most HTTP long-poll subscriptions (one per topic and group) at once
    /// [default: 1000].
    #[arg(long, value_name = "N")]
    max_pollers: Option<usize>,
    /// Most connections open at once (lowered to stay below the open-files limit) [default: 10000].
    #[arg(long, value_name = "N")]
    max_connections: Option<usize>,
    /// Time for a request head to arrive, also after accept [default: 10000].
    #[arg(long, value_name = "MS")]
    header_read_timeout_ms: Option<u64>,
    /// Time for a request body to arrive [default: 60000].
    #[arg(long, value_name = "MS")]
    body_read_timeout_ms: Option<u64>,
    /// Close a connection with no request in flight after this long (streams and long polls are in flight) [default: 60000].
    #[arg(long, value_name = "MS")]
    idle_timeout_ms: Option<u64>,
    /// Time for a TLS handshake [default: 10000].
    #[arg(long, value_name = "MS")]
    tls_handshake_timeout_ms: Option<u64>,
}

impl ServeLimits {
    /// Applies the flags that were given on top of `cfg`.
    pub(crate) fn apply(&self, cfg: &mut ServerConfig) {
        if let Some(n) = self.max_headers {
            cfg.max_headers = n;
        }
        if let Some(n) = self.max_header_bytes {
            cfg.max_header_bytes = n;
        }
        if let Some(n) = self.max_groups {
            cfg.max_groups = n;
        }
        if let Some(n) = self.max_pollers {
            cfg.max_pollers = n;
        }
        if let Some(n) = self.max_connections {
            cfg.max_connections = n;
        }
        let ms = std::time::Duration::from_millis;
        for (flag, slot) in [
            (self.header_read_timeout_ms, &mut cfg.header_read_timeout),
            (self.body_read_timeout_ms, &mut cfg.body_read_timeout),
            (self.idle_timeout_ms, &mut cfg.idle_timeout),
            (
                self.tls_handshake_timeout_ms,
                &mut cfg.tls_handshake_timeout,
            ),
        ] {
            if let Some(t) = flag {
                *slot = ms(t);
            }
        }
    }
}
