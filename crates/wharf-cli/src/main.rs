//! `wharf`: one binary to run the server (`wharf serve`) and to operate it:
//! topics, publish/subscribe, groups, dead letters and benchmarks. Tables for
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
mod admin;
mod bench;
mod pubsub;
mod table;

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Parser, Subcommand};

/// Durable messaging: server, admin and client in one command.
#[derive(Parser)]
#[command(name = "wharf", version, about)]
struct Cli {
    /// Server URL for client commands.
    #[arg(
        long,
        env = "WHARF_URL",
        default_value = "http://127.0.0.1:7420",
        global = true
    )]
    url: String,
    /// Bearer token for client commands.
    #[arg(long, env = "WHARF_TOKEN", global = true, hide_env_values = true)]
    token: Option<String>,
    /// PEM CA certificate to trust for an https:// URL.
    #[arg(long, env = "WHARF_CA_CERT", global = true)]
    ca_cert: Option<PathBuf>,
    /// Print JSON instead of tables.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server: gRPC and HTTP on one port (default 127.0.0.1:7420).
    /// Logs go to stderr at the level in WHARF_LOG (default info).
    Serve {
        /// Where the broker stores its data.
        #[arg(long, default_value = "wharf-data")]
        data_dir: PathBuf,
        /// Address to listen on (HTTP and gRPC).
        #[arg(long, default_value = wharf_server::DEFAULT_LISTEN)]
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
    },
    /// Create, list, describe and delete topics.
    #[command(subcommand)]
    Topic(admin::TopicCmd),
    /// Publish MESSAGE, or one message per line of standard input.
    Pub(pubsub::PubArgs),
    /// Subscribe and print messages (acking each once printed).
    Sub(pubsub::SubArgs),
    /// Consumer groups and their lag.
    #[command(subcommand)]
    Group(admin::GroupCmd),
    /// Dead letters: list, show, replay, purge.
    #[command(subcommand)]
    Dlq(admin::DlqCmd),
    /// Publish/consume load test; prints throughput and latency percentiles.
    Bench(bench::BenchArgs),
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
        wharf_client::Client::connect_with(&self.url, self.token.as_deref(), ca.as_deref())
            .await
            .with_context(|| format!("cannot use the server at {}", self.url))
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
    let conn = Conn {
        url: cli.url,
        ca_cert: cli.ca_cert,
        token: cli.token,
        json: cli.json,
    };
    match cli.command {
        Command::Serve {
            data_dir,
            listen,
            config,
            tls_cert,
            tls_key,
        } => serve(data_dir, listen, config, tls_cert.zip(tls_key)).await,
        Command::Topic(c) => admin::topic(&conn, c).await,
        Command::Pub(a) => pubsub::publish(&conn, a).await,
        Command::Sub(a) => pubsub::subscribe(&conn, a).await,
        Command::Group(c) => admin::group(&conn, c).await,
        Command::Dlq(c) => admin::dlq(&conn, c).await,
        Command::Bench(a) => bench::run(&conn, a).await,
    }
}

async fn serve(
    data_dir: PathBuf,
    listen: SocketAddr,
    config: Option<PathBuf>,
    tls: Option<(PathBuf, PathBuf)>,
) -> anyhow::Result<()> {
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
    let auth = if cfg.tokens.is_empty() { "off" } else { "on" };
    let server = wharf_server::Server::bind(cfg).await?;
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
