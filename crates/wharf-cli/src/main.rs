//! `wharf`: one binary to run the server (`wharf serve`) and to operate it:
//! topics, publish/subscribe, groups, dead letters, the event store, its
//! projections and benchmarks. Tables for
//! humans, `--json` for scripts; errors print one line and exit non-zero.

/// `println!` that ends the command quietly when standard output is a
/// closed pipe (`wharf sub … | head -3`: no panic, and nothing more is
/// acknowledged), and with one error line for any other write error.
macro_rules! outln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        if let Err(e) = writeln!(std::io::stdout().lock(), $($arg)*) {
            $crate::stdout_failed(&e);
        }
    }};
}

#[cfg(feature = "adapters")]
mod adapters;
#[cfg(feature = "adapters")]
mod adapters_bare;
mod admin;
mod bench;
mod events;
mod projection;
mod pubsub;
mod serve_limits;
mod table;

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};

/// Durable messaging: server, admin and client in one command.
#[derive(Parser)]
#[command(name = "wharf", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// Options of the commands that talk to a running server (everything but
/// `serve`), accepted before or after a nested subcommand.
#[derive(Args)]
#[command(next_help_heading = "Server connection")]
struct ClientArgs {
    // No clap default: one would show `--url <URL>` as if required in the
    // usage line of every error.
    /// Server URL [default: http://127.0.0.1:7420].
    #[arg(long, env = "WHARF_URL", global = true)]
    url: Option<String>,
    #[command(flatten)]
    auth: AuthArgs,
}

/// Credentials and output format, shared by the client commands and `bench`.
#[derive(Args)]
#[command(next_help_heading = "Server connection")]
struct AuthArgs {
    /// Bearer token (the server's config lists tokens and their rights).
    #[arg(long, env = "WHARF_TOKEN", global = true, hide_env_values = true)]
    token: Option<String>,
    /// PEM CA certificate to trust for an https:// URL.
    #[arg(long, env = "WHARF_CA_CERT", global = true)]
    ca_cert: Option<PathBuf>,
    /// Print JSON instead of tables.
    #[arg(long, global = true)]
    json: bool,
}

/// `wharf serve`'s options.
#[derive(Args)]
struct ServeArgs {
    /// Where the broker stores its data.
    #[arg(long, default_value = "wharf-data")]
    data_dir: PathBuf,
    /// Address to listen on (HTTP and gRPC): HOST:PORT, where HOST is an IP
    /// address or a name such as localhost (port 0 picks a free port).
    #[arg(long, default_value = wharf_server::DEFAULT_LISTEN, value_parser = parse_listen)]
    listen: SocketAddr,
    /// TOML config file (tokens, limits, TLS).
    #[arg(long)]
    config: Option<PathBuf>,
    /// PEM certificate chain: serve HTTPS and gRPC over TLS (with --tls-key).
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// PEM private key for --tls-cert.
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    #[command(flatten)]
    limits: serve_limits::ServeLimits,
    /// Create topics only explicitly (`wharf topic create`): publishing to
    /// an unknown topic fails with "unknown topic" instead of creating it
    /// (config file: auto_create_topics = false).
    #[arg(long)]
    no_auto_create_topics: bool,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server: gRPC and HTTP on one port (default 127.0.0.1:7420).
    /// Logs go to stderr at the level in WHARF_LOG (default info).
    Serve(ServeArgs),
    /// Create, list, describe and delete topics.
    Topic {
        #[command(flatten)]
        client: ClientArgs,
        #[command(subcommand)]
        cmd: admin::TopicCmd,
    },
    /// Publish MESSAGE, or one message per line of standard input.
    Pub {
        #[command(flatten)]
        args: pubsub::PubArgs,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Subscribe and print messages (acking each once printed).
    Sub {
        #[command(flatten)]
        args: pubsub::SubArgs,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Consumer groups and their lag.
    Group {
        #[command(flatten)]
        client: ClientArgs,
        #[command(subcommand)]
        cmd: admin::GroupCmd,
    },
    /// Dead letters: list, show, replay, purge.
    Dlq {
        #[command(flatten)]
        client: ClientArgs,
        #[command(subcommand)]
        cmd: admin::DlqCmd,
    },
    /// The event store: append, read, list streams, tail the global log.
    Events {
        #[command(flatten)]
        client: ClientArgs,
        #[command(subcommand)]
        cmd: events::EventsCmd,
    },
    /// Projections hosted by the server (the event store published into
    /// topics): create, delete, list, status, rebuild.
    Projection {
        #[command(flatten)]
        client: ClientArgs,
        #[command(subcommand)]
        cmd: projection::ProjectionCmd,
    },
    /// Publish/consume load test; prints throughput and latency percentiles.
    Bench {
        #[command(flatten)]
        args: bench::BenchArgs,
        #[command(flatten)]
        auth: AuthArgs,
    },
}

/// Where client commands look for a server without --url or WHARF_URL.
const DEFAULT_URL: &str = "http://127.0.0.1:7420";

/// `--listen`: `IP:PORT`, or `NAME:PORT` resolved to its first address.
fn parse_listen(s: &str) -> Result<SocketAddr, String> {
    use std::net::ToSocketAddrs as _;
    if let Ok(a) = s.parse() {
        return Ok(a);
    }
    if !s.contains(':') {
        return Err(format!(
            "{s:?} has no port: write HOST:PORT, e.g. localhost:7420"
        ));
    }
    match s.to_socket_addrs() {
        Ok(mut addrs) => addrs
            .next()
            .ok_or_else(|| format!("{s:?} resolves to no address")),
        Err(e) => Err(format!(
            "cannot resolve {s:?} ({e}): write HOST:PORT, e.g. 127.0.0.1:7420"
        )),
    }
}

impl ClientArgs {
    fn conn(self) -> Conn {
        Conn {
            url: self.url.unwrap_or_else(|| DEFAULT_URL.to_owned()),
            ..self.auth.conn()
        }
    }
}

impl AuthArgs {
    fn conn(self) -> Conn {
        Conn {
            url: String::new(),
            ca_cert: self.ca_cert,
            token: self.token,
            json: self.json,
        }
    }
}

/// Connection settings shared by client commands.
pub(crate) struct Conn {
    pub(crate) url: String,
    pub(crate) ca_cert: Option<PathBuf>,
    pub(crate) token: Option<String>,
    pub(crate) json: bool,
}

impl Conn {
    pub(crate) async fn client(&self) -> anyhow::Result<wharf_client::Client> {
        let ca = match &self.ca_cert {
            Some(p) => {
                Some(std::fs::read(p).with_context(|| format!("cannot read {}", p.display()))?)
            }
            None => None,
        };
        match wharf_client::Client::connect_with(&self.url, self.token.as_deref(), ca.as_deref())
            .await
        {
            Ok(c) => Ok(c),
            Err(e) => Err(connect_error(&self.url, e)),
        }
    }
}

/// A failed connect as a sentence that says what to do. Transport errors
/// arrive as `Unavailable` with the stack's own words (rustls, hyper), so
/// the common causes are told apart by those words.
pub(crate) fn connect_error(url: &str, e: wharf_core::Error) -> anyhow::Error {
    let unavailable = matches!(e, wharf_core::Error::Unavailable { .. });
    let text = one_line(&anyhow::Error::new(e));
    let e = anyhow::anyhow!("{text}");
    // Something answered, but not in HTTP/2 (a web server, another service).
    let not_h2 = ["h2 protocol error", "http2 error", "operation was canceled"]
        .iter()
        .any(|w| text.contains(w));
    if !unavailable && !not_h2 {
        return e.context(format!("cannot use the server at {url}"));
    }
    let https = url.starts_with("https://");
    if https && (text.contains("InvalidContentType") || text.contains("corrupt message")) {
        anyhow::anyhow!(
            "the server at {url} does not use TLS: use http:// in the URL (or start `wharf serve` with --tls-cert and --tls-key)"
        )
    } else if text.contains("Connection refused") {
        anyhow::anyhow!(
            "nothing is listening at {url}: start `wharf serve`, or point --url (or WHARF_URL) at a running server"
        )
    } else if text.contains("certificate") || text.contains("UnknownIssuer") {
        e.context(format!(
            "cannot verify the TLS certificate of {url}: pass the CA that signed it with --ca-cert"
        ))
    } else if text.contains("dns error") || text.contains("failed to lookup") {
        e.context(format!(
            "cannot resolve the host of {url}: check --url (or WHARF_URL)"
        ))
    } else if text.contains("timed out") {
        e.context(format!("the server at {url} did not answer in time"))
    } else {
        anyhow::anyhow!(
            "the server at {url} did not answer as a Wharf server (gRPC over HTTP/2{}): check that --url (or WHARF_URL) names a `wharf serve` ({text})",
            if https { "" } else { "; if it uses TLS, the URL starts with https://" }
        )
    }
}

fn main() {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            std::process::exit(1);
        }
    };
    if let Err(e) = rt.block_on(run(cli)) {
        eprintln!("error: {}", one_line(&e));
        std::process::exit(1);
    }
}

/// Ends the process after a failed write to standard output: quietly (as a
/// successful run) when the reader has gone, with an error line otherwise.
fn stdout_failed(e: &std::io::Error) -> ! {
    if e.kind() == std::io::ErrorKind::BrokenPipe {
        std::process::exit(0);
    }
    eprintln!("error: cannot write to standard output: {e}");
    std::process::exit(1);
}

/// `e` and its causes on one line, skipping a cause whose text an outer
/// error already includes (core errors such as `Unavailable` print their
/// source and also return it from `source()`).
fn one_line(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if out.contains(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    out
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve(a) => serve(a).await,
        Command::Topic { client, cmd } => admin::topic(&client.conn(), cmd).await,
        Command::Pub { client, args } => pubsub::publish(&client.conn(), args).await,
        Command::Sub { client, args } => pubsub::subscribe(&client.conn(), args).await,
        Command::Group { client, cmd } => admin::group(&client.conn(), cmd).await,
        Command::Dlq { client, cmd } => admin::dlq(&client.conn(), cmd).await,
        Command::Events { client, cmd } => events::run(&client.conn(), cmd).await,
        Command::Projection { client, cmd } => projection::run(&client.conn(), cmd).await,
        Command::Bench { auth, args } => bench::run(&auth.conn(), args).await,
    }
}

async fn serve(a: ServeArgs) -> anyhow::Result<()> {
    let ServeArgs {
        data_dir,
        listen,
        config,
        tls_cert,
        tls_key,
        limits,
        no_auto_create_topics,
    } = a;
    let tls = tls_cert.zip(tls_key);
    let level = std::env::var("WHARF_LOG")
        .ok()
        .and_then(|l| l.parse::<tracing_subscriber::filter::LevelFilter>().ok())
        .unwrap_or(tracing_subscriber::filter::LevelFilter::INFO);
    let _ = tracing_subscriber::fmt()
        .with_max_level(level)
        .with_writer(std::io::stderr)
        .try_init();
    let mut cfg = wharf_server::ServerConfig::new(&data_dir);
    cfg.listen = listen;
    if let Some(path) = &config {
        cfg = cfg.with_file(path)?;
    }
    if tls.is_some() {
        cfg.tls = tls;
    }
    limits.apply(&mut cfg);
    if no_auto_create_topics {
        cfg.auto_create_topics = false;
    }
    let auth = if cfg.tokens.is_empty() { "off" } else { "on" };
    // A serve that fails to start leaves no data dir it created behind.
    let existed = data_dir.exists();
    let server = match wharf_server::Server::bind(cfg).await {
        Ok(s) => s,
        Err(e) => {
            if !existed {
                let _ = std::fs::remove_dir_all(&data_dir);
            }
            let text = one_line(&anyhow::Error::new(e));
            if text.contains("already open") || text.contains("Cannot acquire lock") {
                anyhow::bail!(
                    "the data dir {} is in use by another running `wharf serve` (one data dir serves one server): stop that server, or pass another --data-dir",
                    data_dir.display()
                );
            }
            anyhow::bail!("{text}");
        }
    };
    let addr = server.local_addr()?;
    let scheme = if server.is_tls() { "https" } else { "http" };
    outln!(
        "wharf listening on {scheme}://{addr} (HTTP/JSON and gRPC), data in {}, auth {auth}",
        data_dir.display()
    );
    server.serve(wharf_server::shutdown_signal()).await?;
    outln!("wharf stopped cleanly");
    Ok(())
}
