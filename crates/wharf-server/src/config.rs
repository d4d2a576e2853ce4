//! Server settings: what `wharf serve` takes on the command line plus the
//! optional TOML config file (tokens and limits).
//!
//! ```toml
//! max_request_bytes = 16777216
//! max_headers = 256            # per message
//! max_header_bytes = 65536     # per message: names and values
//! max_groups = 10000           # consumer groups loaded at once (per topic)
//! max_pollers = 1000           # HTTP long-poll subscriptions at once
//! group_idle_ms = 60000        # unload a group this long without consumers
//! poller_idle_ms = 30000       # drop a long-poll subscription this long unpolled
//! read_ahead_bytes = 262144    # per group and partition
//! auto_create_topics = true    # false: publishing to an unknown topic is 404
//! max_connections = 10000
//! header_read_timeout_ms = 10000
//! body_read_timeout_ms = 60000
//! idle_timeout_ms = 60000
//! tls_handshake_timeout_ms = 10000
//! [[tokens]]
//! token = "s3cret"
//! publish = ["orders.>"]
//! consume = ["orders.>"]
//! admin = []
//! metrics = false     # /metrics (also allowed with admin = [">"])
//! ```

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::auth::{Auth, TokenConfig};

/// The default listen address: port 7420, which no common broker or
/// database uses.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:7420";

/// A config file that cannot be read or is invalid.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid TOML for this schema.
    #[error("invalid config file {path}: {source}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's error.
        #[source]
        source: toml::de::Error,
    },
    /// The TLS settings are incomplete or the files are unusable.
    #[error("TLS: {reason}")]
    Tls {
        /// What is wrong.
        reason: String,
    },
    /// A limit is out of its range (a timeout of zero, a cap of zero).
    #[error("invalid {key}: {reason}")]
    Limit {
        /// The config key (and `wharf serve` flag) of the limit.
        key: &'static str,
        /// What is wrong.
        reason: &'static str,
    },
    /// A token entry is invalid.
    #[error("invalid token entry {index}: {reason}")]
    Token {
        /// Position in the `tokens` list.
        index: usize,
        /// What is wrong.
        reason: String,
    },
}

/// The config file's contents.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// Largest request body (HTTP) or message (gRPC) accepted.
    pub max_request_bytes: Option<usize>,
    /// Lease length for HTTP long-poll deliveries, in ms.
    pub lease_ms: Option<u64>,
    /// Most headers a published message may have.
    pub max_headers: Option<usize>,
    /// Most bytes of header names and values a published message may have.
    pub max_header_bytes: Option<usize>,
    /// Most consumer groups loaded at once (per topic).
    pub max_groups: Option<usize>,
    /// Most HTTP long-poll subscriptions (one per topic and group) at once.
    pub max_pollers: Option<usize>,
    /// Unload a group after this many ms without consumers or unsettled deliveries.
    pub group_idle_ms: Option<u64>,
    /// Drop a long-poll subscription after this many ms without a poll.
    pub poller_idle_ms: Option<u64>,
    /// Bytes of messages read ahead per group and partition.
    pub read_ahead_bytes: Option<usize>,
    /// Whether an accepted publish (or a subscription) creates an unknown
    /// topic with the default settings.
    pub auto_create_topics: Option<bool>,
    /// Most connections open at once.
    pub max_connections: Option<usize>,
    /// Time for a request head to arrive, in ms.
    pub header_read_timeout_ms: Option<u64>,
    /// Time for a request body to arrive, in ms.
    pub body_read_timeout_ms: Option<u64>,
    /// Time a connection with no request in flight stays open, in ms.
    pub idle_timeout_ms: Option<u64>,
    /// Time for a TLS handshake, in ms.
    pub tls_handshake_timeout_ms: Option<u64>,
    /// Tokens; when non-empty, every endpoint except health needs one.
    #[serde(default)]
    pub tokens: Vec<TokenConfig>,
    /// PEM certificate chain for TLS (with `tls_key`).
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for TLS.
    pub tls_key: Option<PathBuf>,
}

/// Everything the server needs to start.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Where the broker keeps its data.
    pub data_dir: PathBuf,
    /// Address for HTTP and gRPC (one port).
    pub listen: SocketAddr,
    /// Largest request body or gRPC message, in bytes.
    pub max_request_bytes: usize,
    /// Lease length for HTTP long-poll deliveries.
    pub lease: Duration,
    /// Most headers a published message may have (`400 too_many_headers`,
    /// gRPC `INVALID_ARGUMENT` past it).
    pub max_headers: usize,
    /// Most bytes of header names and values a published message may have
    /// (`413 headers_too_large`, gRPC `RESOURCE_EXHAUSTED` past it).
    pub max_header_bytes: usize,
    /// Whether an accepted publish (or a subscription) creates an unknown
    /// topic with the default settings (default `true`); when off, only
    /// `POST /v1/topics` / `wharf topic create` do, and publishing to an
    /// unknown topic is `404 unknown_topic` (gRPC `NOT_FOUND`).
    pub auto_create_topics: bool,
    /// Most connections open at once; more wait in the listen backlog. The
    /// server lowers it to stay below its open-files limit.
    pub max_connections: usize,
    /// Time from accept (or from the previous response) to a complete
    /// request head; a connection that sends no request in this time after
    /// accept is closed too (silent or slowloris clients).
    pub header_read_timeout: Duration,
    /// Time from a request's start to the end of its body (`408
    /// body_timeout` past it); not for the gRPC consume stream.
    pub body_read_timeout: Duration,
    /// A connection with no request in flight is closed after this long;
    /// open streams (gRPC consume, SSE, WebSocket) and long polls waiting
    /// are requests in flight.
    pub idle_timeout: Duration,
    /// Time from accept to a finished TLS handshake.
    pub tls_handshake_timeout: Duration,
    /// Tokens; empty means no auth.
    pub tokens: Vec<TokenConfig>,
    /// TLS certificate chain and private key (PEM files); `None` serves plain text.
    pub tls: Option<(PathBuf, PathBuf)>,
    /// Most consumer groups loaded at once, counted per topic; a new one
    /// past it is refused (HTTP 429 `resource_exhausted`, gRPC
    /// `RESOURCE_EXHAUSTED`) until idle ones unload.
    pub max_groups: usize,
    /// Most HTTP long-poll subscriptions (one per topic and group) at once;
    /// refused like `max_groups` past it.
    pub max_pollers: usize,
    /// A group with no consumer and no unsettled delivery for this long is
    /// unloaded (position persisted, read-ahead freed).
    pub group_idle: Duration,
    /// A long-poll subscription not polled for this long is dropped (its
    /// consumer leaves the group).
    pub poller_idle: Duration,
    /// Bytes of messages a group reads ahead per partition.
    pub read_ahead_bytes: usize,
}

impl ServerConfig {
    /// Defaults: [`DEFAULT_LISTEN`], 16 MiB requests, 30 s leases, 256
    /// headers and 64 KiB of headers per message, 10,000 connections,
    /// 10 s to send a request head, 60 s for a body, 60 s idle, 10 s for a
    /// TLS handshake, no auth, 10,000 groups, 1,000 pollers, groups
    /// unloaded after 60 s idle, pollers dropped after 30 s unpolled,
    /// 256 KiB read-ahead.
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        ServerConfig {
            data_dir: data_dir.into(),
            listen: DEFAULT_LISTEN.parse().expect("valid default address"),
            max_request_bytes: 16 * 1024 * 1024,
            lease: Duration::from_secs(30),
            max_headers: wharf_broker::DEFAULT_MAX_HEADERS,
            max_header_bytes: wharf_broker::DEFAULT_MAX_HEADER_BYTES,
            auto_create_topics: true,
            max_connections: 10_000,
            header_read_timeout: Duration::from_secs(10),
            body_read_timeout: Duration::from_secs(60),
            idle_timeout: Duration::from_secs(60),
            tls_handshake_timeout: Duration::from_secs(10),
            tokens: Vec::new(),
            tls: None,
            max_groups: 10_000,
            max_pollers: 1_000,
            group_idle: Duration::from_secs(60),
            poller_idle: Duration::from_secs(30),
            read_ahead_bytes: 256 * 1024,
        }
    }

    /// Applies a TOML config file on top of these settings.
    ///
    /// # Errors
    /// [`ConfigError::Read`] / [`ConfigError::Parse`].
    pub fn with_file(mut self, path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let file: FileConfig = toml::from_str(&text).map_err(|source| ConfigError::Parse {
            path: path.to_owned(),
            source,
        })?;
        if let Some(n) = file.max_request_bytes {
            self.max_request_bytes = n;
        }
        if let Some(ms) = file.lease_ms {
            self.lease = Duration::from_millis(ms);
        }
        if let Some(n) = file.max_headers {
            self.max_headers = n;
        }
        if let Some(n) = file.max_header_bytes {
            self.max_header_bytes = n;
        }
        if let Some(n) = file.max_groups {
            self.max_groups = n;
        }
        if let Some(n) = file.max_pollers {
            self.max_pollers = n;
        }
        if let Some(ms) = file.group_idle_ms {
            self.group_idle = Duration::from_millis(ms);
        }
        if let Some(ms) = file.poller_idle_ms {
            self.poller_idle = Duration::from_millis(ms);
        }
        if let Some(n) = file.read_ahead_bytes {
            self.read_ahead_bytes = n;
        }
        if let Some(on) = file.auto_create_topics {
            self.auto_create_topics = on;
        }
        if let Some(n) = file.max_connections {
            self.max_connections = n;
        }
        let ms = Duration::from_millis;
        if let Some(t) = file.header_read_timeout_ms {
            self.header_read_timeout = ms(t);
        }
        if let Some(t) = file.body_read_timeout_ms {
            self.body_read_timeout = ms(t);
        }
        if let Some(t) = file.idle_timeout_ms {
            self.idle_timeout = ms(t);
        }
        if let Some(t) = file.tls_handshake_timeout_ms {
            self.tls_handshake_timeout = ms(t);
        }
        self.tokens = file.tokens;
        match (file.tls_cert, file.tls_key) {
            (Some(c), Some(k)) => self.tls = Some((c, k)),
            (None, None) => {}
            _ => {
                return Err(ConfigError::Tls {
                    reason: "tls_cert and tls_key must be given together".into(),
                })
            }
        }
        Ok(self)
    }

    /// Checks the connection limits: no zero cap or timeout (which would
    /// refuse every connection).
    ///
    /// # Errors
    /// [`ConfigError::Limit`] naming the key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let zero = |key| {
            Err(ConfigError::Limit {
                key,
                reason: "must be above zero",
            })
        };
        if self.max_connections == 0 {
            return zero("max_connections");
        }
        for (key, t) in [
            ("header_read_timeout_ms", self.header_read_timeout),
            ("body_read_timeout_ms", self.body_read_timeout),
            ("idle_timeout_ms", self.idle_timeout),
            ("tls_handshake_timeout_ms", self.tls_handshake_timeout),
        ] {
            if t.is_zero() {
                return zero(key);
            }
        }
        Ok(())
    }

    /// The auth checker, or `None` when no token is configured.
    ///
    /// # Errors
    /// [`ConfigError::Token`] for an empty token or a bad pattern.
    pub fn auth(&self) -> Result<Option<Auth>, ConfigError> {
        if self.tokens.is_empty() {
            return Ok(None);
        }
        Auth::new(&self.tokens).map(Some)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_file_sets_limits_and_tokens() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("wharf.toml");
        std::fs::write(
            &path,
            "max_request_bytes = 1000\nmax_headers = 7\nmax_header_bytes = 99\nmax_groups = 7\npoller_idle_ms = 250\n[[tokens]]\ntoken = \"t1\"\npublish = [\"a.>\"]\n",
        )
        .expect("write");
        let cfg = ServerConfig::new("/tmp/x").with_file(&path).expect("valid");
        assert_eq!(cfg.max_request_bytes, 1000);
        assert_eq!((cfg.max_headers, cfg.max_header_bytes), (7, 99));
        assert_eq!(cfg.max_groups, 7);
        assert_eq!(cfg.poller_idle, Duration::from_millis(250));
        assert_eq!(cfg.tokens.len(), 1);
        assert!(cfg.auth().expect("valid tokens").is_some());
    }

    #[test]
    fn config_file_sets_connection_limits_and_zero_is_refused() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("wharf.toml");
        std::fs::write(
            &path,
            "max_connections = 5\nheader_read_timeout_ms = 1\nbody_read_timeout_ms = 2\n\
             idle_timeout_ms = 3\ntls_handshake_timeout_ms = 4\n",
        )
        .expect("write");
        let cfg = ServerConfig::new("/tmp/x").with_file(&path).expect("valid");
        assert_eq!(cfg.max_connections, 5);
        assert_eq!(
            [
                cfg.header_read_timeout,
                cfg.body_read_timeout,
                cfg.idle_timeout,
                cfg.tls_handshake_timeout
            ],
            [1, 2, 3, 4].map(Duration::from_millis)
        );
        assert!(cfg.validate().is_ok());
        std::fs::write(&path, "idle_timeout_ms = 0\n").expect("write");
        let cfg = ServerConfig::new("/tmp/x")
            .with_file(&path)
            .expect("parses");
        let err = cfg.validate().unwrap_err();
        assert!(
            matches!(
                err,
                ConfigError::Limit {
                    key: "idle_timeout_ms",
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn unknown_keys_in_config_file_are_rejected() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("wharf.toml");
        std::fs::write(&path, "max_requets_bytes = 1000\n").expect("write");
        let err = ServerConfig::new("/tmp/x").with_file(&path).unwrap_err();
        assert!(matches!(err, ConfigError::Parse { .. }), "{err}");
    }
}
