//! `wharf projection`: the projections a `wharf serve` hosts (each publishes
//! the event store's events into a topic), through the HTTP API
//! (`/v1/eventstore/projections`): create, delete, list, status, and
//! rebuild with progress (checkpoint against head) until caught up with
//! `--wait`. Tables for humans, `--json` for scripts; `https://` with the
//! CA given by `--ca-cert`.

use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, Subcommand};
use serde_json::{json, Value};

use crate::table;
use crate::Conn;

/// `wharf projection` subcommands.
#[derive(Subcommand)]
pub(crate) enum ProjectionCmd {
    /// Define a projection publishing each event (of streams under
    /// --prefix) to TOPIC, from the start of the log.
    Create(CreateArgs),
    /// Stop and forget a projection (its topic and messages stay).
    Delete {
        /// The projection.
        name: String,
    },
    /// List the projections with their state, checkpoint, head and lag.
    List,
    /// One projection's status.
    Status {
        /// The projection.
        name: String,
    },
    /// Reset a projection's checkpoint and publish the log again.
    Rebuild(RebuildArgs),
}

#[derive(Args)]
pub(crate) struct CreateArgs {
    /// The projection's name.
    name: String,
    /// The topic to publish to (it must exist).
    #[arg(long)]
    topic: String,
    /// Only streams whose names start with this.
    #[arg(long, default_value = "")]
    prefix: String,
}

#[derive(Args)]
pub(crate) struct RebuildArgs {
    /// The projection.
    name: String,
    /// Print progress until it has caught up with the store's head.
    #[arg(long)]
    wait: bool,
    /// With --wait: give up after this many seconds.
    #[arg(long, default_value_t = 600)]
    timeout_secs: u64,
}

struct Api<'a> {
    http: reqwest::Client,
    conn: &'a Conn,
    base: String,
}

impl<'a> Api<'a> {
    fn new(conn: &'a Conn) -> anyhow::Result<Api<'a>> {
        let base = if conn.url.contains("://") {
            conn.url.trim_end_matches('/').to_owned()
        } else {
            format!("http://{}", conn.url.trim_end_matches('/'))
        };
        let http = client_builder(&base, conn)?;
        Ok(Api {
            http: http.build().context("cannot set up the HTTP client")?,
            conn,
            base,
        })
    }

    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<Value> {
        let url = format!("{}/v1/eventstore/projections{path}", self.base);
        let mut r = self.http.request(method, &url);
        if let Some(t) = &self.conn.token {
            r = r.bearer_auth(t);
        }
        if let Some(b) = body {
            r = r.json(&b);
        }
        let resp = r.send().await.map_err(|e| {
            let text = crate::one_line(&anyhow::Error::new(e));
            if text.contains("certificate") || text.contains("UnknownIssuer") {
                anyhow::anyhow!(
                    "cannot verify the TLS certificate of {}: pass the CA that signed it with --ca-cert ({text})",
                    self.conn.url
                )
            } else {
                anyhow::anyhow!("cannot reach the server at {}: {text}", self.conn.url)
            }
        })?;
        let status = resp.status();
        let text = resp.text().await.unwrap_or_default();
        if !status.is_success() {
            let v: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
            let message = v["error"]["message"]
                .as_str()
                .map_or_else(|| text.clone(), str::to_owned);
            anyhow::bail!("{} ({status})", message);
        }
        if text.is_empty() {
            return Ok(Value::Null);
        }
        serde_json::from_str(&text).context("the server's answer is not JSON")
    }
}

/// The HTTP client: over https, trusting only the CA given by `--ca-cert`.
#[cfg(feature = "tls")]
fn client_builder(base: &str, conn: &Conn) -> anyhow::Result<reqwest::ClientBuilder> {
    let mut http = reqwest::Client::builder();
    if let (true, Some(p)) = (base.starts_with("https://"), &conn.ca_cert) {
        let pem = std::fs::read(p).with_context(|| format!("cannot read {}", p.display()))?;
        for cert in reqwest::Certificate::from_pem_bundle(&pem)
            .with_context(|| format!("{} holds no PEM certificate", p.display()))?
        {
            http = http.add_root_certificate(cert);
        }
    }
    Ok(http)
}

/// The HTTP client (this build has no TLS).
#[cfg(not(feature = "tls"))]
fn client_builder(base: &str, conn: &Conn) -> anyhow::Result<reqwest::ClientBuilder> {
    if base.starts_with("https://") {
        anyhow::bail!(
            "{} is https, and this build has no TLS support (the `tls` feature)",
            conn.url
        );
    }
    Ok(reqwest::Client::builder())
}

fn row(p: &Value) -> Vec<String> {
    let s = |k: &str| p[k].as_str().unwrap_or("").to_owned();
    let n = |k: &str| p[k].as_u64().map_or_else(|| "-".into(), |v| v.to_string());
    let state = match p["error"].as_str() {
        Some(e) => format!("failed: {e}"),
        None => s("state"),
    };
    vec![
        s("name"),
        s("topic"),
        if s("prefix").is_empty() {
            "*".into()
        } else {
            s("prefix")
        },
        state,
        n("checkpoint"),
        n("head"),
        n("lag"),
        n("applied"),
        n("failures"),
        if p["caught_up"].as_bool() == Some(true) {
            "yes".into()
        } else {
            "no".into()
        },
    ]
}

const HEADERS: [&str; 10] = [
    "name",
    "topic",
    "prefix",
    "state",
    "checkpoint",
    "head",
    "lag",
    "applied",
    "failures",
    "caught up",
];

fn print(conn: &Conn, projections: &[Value]) {
    if conn.json {
        for p in projections {
            outln!("{p}");
        }
    } else {
        table::print(&HEADERS, &projections.iter().map(row).collect::<Vec<_>>());
    }
}

fn segment(name: &str) -> String {
    // Names are ASCII letters, digits, '-', '_' and '.'; anything else is
    // the server's to refuse, but must stay inside the path segment.
    name.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.') {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// Runs a `wharf projection` command.
pub(crate) async fn run(conn: &Conn, cmd: ProjectionCmd) -> anyhow::Result<()> {
    let api = Api::new(conn)?;
    match cmd {
        ProjectionCmd::Create(a) => {
            let p = api
                .call(
                    reqwest::Method::POST,
                    "",
                    Some(json!({"name": a.name, "topic": a.topic, "prefix": a.prefix})),
                )
                .await?;
            print(conn, &[p]);
        }
        ProjectionCmd::Delete { name } => {
            api.call(
                reqwest::Method::DELETE,
                &format!("/{}", segment(&name)),
                None,
            )
            .await?;
            if conn.json {
                outln!("{}", json!({"deleted": name}));
            } else {
                outln!("deleted projection {name}");
            }
        }
        ProjectionCmd::List => {
            let v = api.call(reqwest::Method::GET, "", None).await?;
            let list = v["projections"].as_array().cloned().unwrap_or_default();
            print(conn, &list);
        }
        ProjectionCmd::Status { name } => {
            let p = api
                .call(reqwest::Method::GET, &format!("/{}", segment(&name)), None)
                .await?;
            print(conn, &[p]);
        }
        ProjectionCmd::Rebuild(a) => {
            let path = format!("/{}", segment(&a.name));
            let p = api
                .call(reqwest::Method::POST, &format!("{path}/rebuild"), None)
                .await?;
            if !a.wait {
                print(conn, &[p]);
                return Ok(());
            }
            let deadline = tokio::time::Instant::now() + Duration::from_secs(a.timeout_secs);
            let mut last = None;
            loop {
                let p = api.call(reqwest::Method::GET, &path, None).await?;
                let progress = (p["checkpoint"].as_u64(), p["head"].as_u64());
                let done = p["caught_up"].as_bool() == Some(true);
                if last != Some(progress) || done {
                    if conn.json {
                        outln!(
                            "{}",
                            json!({"name": a.name, "state": p["state"], "checkpoint": p["checkpoint"], "head": p["head"], "caught_up": done})
                        );
                    } else {
                        outln!(
                            "{}: {} checkpoint {} / head {}{}",
                            a.name,
                            p["state"].as_str().unwrap_or("?"),
                            progress.0.unwrap_or(0),
                            progress.1.unwrap_or(0),
                            if done { " (caught up)" } else { "" }
                        );
                    }
                    last = Some(progress);
                }
                if done {
                    return Ok(());
                }
                if tokio::time::Instant::now() >= deadline {
                    anyhow::bail!(
                        "projection {} has not caught up after {} s",
                        a.name,
                        a.timeout_secs
                    );
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
    Ok(())
}
