//! How to reach SQS (an endpoint, a region, credentials) and which queues a
//! backend owns (a name prefix, standard or FIFO); [`SqsConfig::from_url`]
//! reads the `sqs://` URL form that `wharf bench --backend` takes.

use std::time::Duration;

use wharf_core::Error;

/// Largest [`Message::size`](wharf_core::Message::size) accepted: 190 KiB.
///
/// SQS refuses a message whose body and attributes pass 256 KiB (262,144
/// bytes). A payload that is not SQS text (see the crate docs) travels
/// base64-encoded, 4/3 of its size, so 190 KiB (194,560 bytes) of payload
/// is 259,414 bytes of body; the rest leaves room for up to
/// [`MAX_HEADERS`] headers' framing and Wharf's own attributes. A message
/// over it fails with [`Error::MessageTooLarge`] before anything is sent.
pub const MAX_MESSAGE_BYTES: usize = 190 * 1024;

/// Most headers a message may carry (their framing is not counted by
/// [`Message::size`](wharf_core::Message::size), so it is bounded here).
pub const MAX_HEADERS: usize = 128;

/// The longest delay SQS gives a message at send time (`DelaySeconds`).
/// A `deliver_at` further ahead is reached in hops of at most this long
/// (see the crate docs and [`SqsConfig::delay_hop`]).
pub const MAX_DELAY: Duration = Duration::from_secs(15 * 60);

/// The longest a message may stay invisible (visibility timeout, nack delay,
/// lease extension): 12 hours.
pub const MAX_VISIBILITY: Duration = Duration::from_secs(12 * 3600);

/// Connection and namespace settings for a [`crate::SqsBackend`].
///
/// ```
/// use wharf_sqs::SqsConfig;
/// let cfg = SqsConfig::from_url("sqs://127.0.0.1:15000?region=us-east-1&prefix=shop-").unwrap();
/// assert_eq!(cfg.endpoint(), Some("http://127.0.0.1:15000"));
/// assert_eq!(cfg.region_name(), "us-east-1");
/// assert_eq!(cfg.queue_prefix_value(), "shop-");
/// assert!(!cfg.is_fifo());
/// ```
#[derive(Debug, Clone)]
#[must_use]
pub struct SqsConfig {
    pub(crate) endpoint: Option<String>,
    pub(crate) region: String,
    pub(crate) prefix: String,
    pub(crate) fifo: bool,
    pub(crate) credentials: Option<(String, String, Option<String>)>,
    pub(crate) wait: Duration,
    pub(crate) visibility_timeout: Duration,
    pub(crate) timeout: Duration,
    pub(crate) delay_hop: Duration,
}

impl Default for SqsConfig {
    fn default() -> Self {
        SqsConfig::new("us-east-1")
    }
}

impl SqsConfig {
    /// Settings for Amazon SQS in `region` (the SDK's endpoint for it, over
    /// HTTPS), standard queues, no queue prefix.
    pub fn new(region: impl Into<String>) -> Self {
        SqsConfig {
            endpoint: None,
            region: region.into(),
            prefix: String::new(),
            fifo: false,
            credentials: None,
            wait: Duration::from_secs(20),
            visibility_timeout: Duration::from_secs(30),
            timeout: Duration::from_secs(30),
            delay_hop: MAX_DELAY,
        }
    }

    /// Reads the URL form `sqs://[host[:port]][?key=value&…]`:
    ///
    /// | part | meaning |
    /// |---|---|
    /// | `host:port` | an SQS-compatible endpoint (`http://host:port`, or `https://` with `tls=true`); none: Amazon SQS's own endpoint for the region |
    /// | `region=R` | the signing region (default `us-east-1`) |
    /// | `prefix=P` | [`queue_prefix`](Self::queue_prefix) |
    /// | `fifo=true` | [`fifo`](Self::fifo) |
    /// | `wait=S` | [`wait`](Self::wait), whole seconds 0–20 |
    /// | `tls=true` | HTTPS to `host:port` |
    ///
    /// Credentials never travel in the URL: they come from
    /// `AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY` (and
    /// `AWS_SESSION_TOKEN`) when set, or [`credentials`](Self::credentials);
    /// with an explicit endpoint and neither, dummy static ones are used
    /// (emulators such as moto accept any).
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] naming `url` for another scheme, an
    /// unknown key or a bad value.
    pub fn from_url(url: &str) -> Result<Self, Error> {
        let bad = |reason: String| Error::InvalidArgument {
            name: "url",
            reason,
        };
        let rest = url
            .strip_prefix("sqs://")
            .ok_or_else(|| bad(format!("{url:?} does not start with sqs://")))?;
        let (authority, query) = rest.split_once('?').unwrap_or((rest, ""));
        let authority = authority.trim_end_matches('/');
        let mut cfg = SqsConfig::new("us-east-1");
        let mut tls = false;
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            match k {
                "region" if !v.is_empty() => cfg.region = v.to_owned(),
                "prefix" => cfg.prefix = v.to_owned(),
                "fifo" => cfg.fifo = parse_bool(v).ok_or_else(|| bad(format!("fifo={v}")))?,
                "tls" => tls = parse_bool(v).ok_or_else(|| bad(format!("tls={v}")))?,
                "wait" => {
                    let s: u64 = v
                        .parse()
                        .ok()
                        .filter(|s| *s <= 20)
                        .ok_or_else(|| bad(format!("wait={v}: whole seconds 0-20")))?;
                    cfg.wait = Duration::from_secs(s);
                }
                _ => {
                    return Err(bad(format!(
                        "unknown or empty parameter {pair:?} in {url:?}"
                    )))
                }
            }
        }
        if !authority.is_empty() {
            let scheme = if tls { "https" } else { "http" };
            cfg.endpoint = Some(format!("{scheme}://{authority}"));
        }
        Ok(cfg)
    }

    /// An SQS-compatible endpoint URL (`http://127.0.0.1:15000`) instead of
    /// Amazon's for the region.
    pub fn endpoint_url(mut self, url: impl Into<String>) -> Self {
        self.endpoint = Some(url.into());
        self
    }

    /// The signing region.
    pub fn region(mut self, region: impl Into<String>) -> Self {
        self.region = region.into();
        self
    }

    /// Prepended to every queue name this backend makes or uses, so several
    /// applications (or test runs) share an account without sharing queues.
    /// `[A-Za-z0-9_-]`, at most 50 characters (SQS names are at most 80).
    pub fn queue_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// FIFO queues (`.fifo`): ordered per key (the message group), deduplicated
    /// by message id for 5 minutes, no per-message delay. See the crate docs.
    pub fn fifo(mut self, fifo: bool) -> Self {
        self.fifo = fifo;
        self
    }

    /// Static credentials (the access key id, the secret, and a session
    /// token for temporary ones), used instead of the environment's.
    pub fn credentials(
        mut self,
        access_key_id: impl Into<String>,
        secret_access_key: impl Into<String>,
        session_token: Option<String>,
    ) -> Self {
        self.credentials = Some((
            access_key_id.into(),
            secret_access_key.into(),
            session_token,
        ));
        self
    }

    /// How long one `ReceiveMessage` long poll waits for messages (default
    /// and maximum 20 s, whole seconds). A closed subscription finishes the
    /// poll under way and gives back what it brings, so shorter waits end
    /// subscriptions sooner at the price of more empty receives.
    pub fn wait(mut self, wait: Duration) -> Self {
        self.wait = wait.min(Duration::from_secs(20));
        self
    }

    /// The lease of a subscription that sets no visibility timeout of its
    /// own (default 30 s, SQS's own default).
    pub fn visibility_timeout(mut self, timeout: Duration) -> Self {
        self.visibility_timeout = timeout;
        self
    }

    /// How long one API call may take, long polls excluded (default 30 s).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The longest `DelaySeconds` one send asks for (default and maximum
    /// [`MAX_DELAY`], 15 minutes; at least 1 s). A message due later is
    /// sent delayed by this much, and whichever subscription receives it
    /// before it is due sends it again, delayed by what is left (at most
    /// this much), then deletes what it received: one hop per this
    /// interval, each a fresh SQS message. Shorter hops cost more calls
    /// and buy nothing but quicker tests.
    pub fn delay_hop(mut self, hop: Duration) -> Self {
        self.delay_hop = hop.clamp(Duration::from_secs(1), MAX_DELAY);
        self
    }

    /// The explicit endpoint, if any.
    pub fn endpoint(&self) -> Option<&str> {
        self.endpoint.as_deref()
    }

    /// The signing region.
    pub fn region_name(&self) -> &str {
        &self.region
    }

    /// The queue name prefix.
    pub fn queue_prefix_value(&self) -> &str {
        &self.prefix
    }

    /// How long one long poll waits.
    pub fn wait_value(&self) -> Duration {
        self.wait
    }

    /// Whether queues are FIFO queues.
    pub fn is_fifo(&self) -> bool {
        self.fifo
    }
}

fn parse_bool(v: &str) -> Option<bool> {
    match v {
        "true" | "1" | "yes" => Some(true),
        "false" | "0" | "no" => Some(false),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_without_host_means_amazon_in_the_region() {
        let c = SqsConfig::from_url("sqs://?region=eu-west-1&fifo=true&wait=5").unwrap();
        assert_eq!(c.endpoint(), None);
        assert_eq!(c.region_name(), "eu-west-1");
        assert!(c.is_fifo());
        assert_eq!(c.wait, Duration::from_secs(5));
    }

    #[test]
    fn url_with_host_is_an_http_endpoint_unless_tls() {
        let c = SqsConfig::from_url("sqs://localhost:4566/").unwrap();
        assert_eq!(c.endpoint(), Some("http://localhost:4566"));
        assert_eq!(c.region_name(), "us-east-1");
        let c = SqsConfig::from_url("sqs://sqs.example:443?tls=true").unwrap();
        assert_eq!(c.endpoint(), Some("https://sqs.example:443"));
    }

    #[test]
    fn url_errors_are_typed() {
        for bad in [
            "nats://x",
            "sqs://h?colour=red",
            "sqs://h?wait=21",
            "sqs://h?fifo=maybe",
        ] {
            assert!(
                matches!(
                    SqsConfig::from_url(bad),
                    Err(Error::InvalidArgument { name: "url", .. })
                ),
                "{bad}"
            );
        }
    }
}
