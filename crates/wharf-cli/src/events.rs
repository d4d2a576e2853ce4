//! `wharf events`: the event store of a `wharf serve` from the command
//! line, through `wharf_client::RemoteEventStore` (gRPC): append events to a
//! stream with an expected version, read a stream forwards or backwards,
//! list streams with their versions, and tail the global log (catch-up,
//! then live). Tables for humans, `--json` for scripts.

use anyhow::Context as _;
use base64::Engine as _;
use clap::{Args, Subcommand};
use serde_json::json;
use wharf_eventstore::{
    CurrentVersion, EventData, EventStore, ExpectedVersion, GlobalFilter, Position, Query,
    QueryItem, ReadStream, RecordedEvent, StreamFrom, StreamId, SubscribeFrom,
};

use crate::table;
use crate::Conn;

/// `wharf events` subcommands.
#[derive(Subcommand)]
pub(crate) enum EventsCmd {
    /// Append one event to STREAM (atomic; durable when the command returns).
    Append(AppendArgs),
    /// Read STREAM's events, oldest first (or newest first with --backwards).
    Read(ReadArgs),
    /// List streams (with events or metadata) and their last versions.
    Streams(StreamsArgs),
    /// Print the global log's events as they are committed: the stored
    /// ones from --from first, then each new one.
    Tail(TailArgs),
}

#[derive(Args)]
pub(crate) struct AppendArgs {
    /// The stream.
    stream: String,
    /// The event type.
    event_type: String,
    /// The payload (default `{}`).
    payload: Option<String>,
    /// What the stream must be at: any, no_stream, stream_exists, or the
    /// exact version of its last event.
    #[arg(long, default_value = "any", allow_hyphen_values = true)]
    expected: String,
    /// A tag (repeatable).
    #[arg(long = "tag")]
    tags: Vec<String>,
    /// A metadata entry NAME=VALUE (repeatable).
    #[arg(long = "meta")]
    metadata: Vec<String>,
    /// The payload's schema version.
    #[arg(long, default_value_t = 1)]
    schema_version: u32,
}

#[derive(Args)]
pub(crate) struct ReadArgs {
    /// The stream.
    stream: String,
    /// Newest first.
    #[arg(long)]
    backwards: bool,
    /// The version to start at (inclusive).
    #[arg(long)]
    from: Option<u64>,
    /// At most this many events.
    #[arg(long)]
    count: Option<usize>,
}

#[derive(Args)]
pub(crate) struct StreamsArgs {
    /// Only streams whose names start with this.
    #[arg(long, default_value = "")]
    prefix: String,
    /// At most this many streams.
    #[arg(long, default_value_t = 1000)]
    count: usize,
}

#[derive(Args)]
pub(crate) struct TailArgs {
    /// Only streams whose names start with this.
    #[arg(long)]
    prefix: Option<String>,
    /// Only events of this type (repeatable).
    #[arg(long = "type")]
    types: Vec<String>,
    /// Where to start: start, end, or a position.
    #[arg(long, default_value = "end")]
    from: String,
    /// Stop after this many events.
    #[arg(long)]
    count: Option<usize>,
}

fn parse_expected(s: &str) -> anyhow::Result<ExpectedVersion> {
    Ok(match s {
        "any" => ExpectedVersion::Any,
        "no_stream" => ExpectedVersion::NoStream,
        "stream_exists" => ExpectedVersion::StreamExists,
        n => ExpectedVersion::Exact(n.parse().map_err(|_| {
            anyhow::anyhow!(
                "--expected {n:?}: write any, no_stream, stream_exists or a version (an integer from 0)"
            )
        })?),
    })
}

fn payload_text(bytes: &[u8]) -> (String, &'static str) {
    match std::str::from_utf8(bytes) {
        Ok(s) => (s.to_owned(), "utf8"),
        Err(_) => (
            base64::engine::general_purpose::STANDARD.encode(bytes),
            "base64",
        ),
    }
}

fn event_json(e: &RecordedEvent) -> serde_json::Value {
    let (payload, encoding) = payload_text(&e.payload);
    json!({
        "stream": e.stream.as_str(),
        "version": e.version,
        "position": e.position.0,
        "timestamp_ms": e.timestamp_ms,
        "id": e.id.to_string(),
        "type": e.event_type,
        "schema_version": e.schema_version,
        "tags": e.tags,
        "metadata": e.metadata.iter().cloned().collect::<std::collections::BTreeMap<_, _>>(),
        "payload": payload,
        "encoding": encoding,
    })
}

fn event_row(e: &RecordedEvent) -> Vec<String> {
    vec![
        e.stream.as_str().to_owned(),
        e.version.to_string(),
        e.position.0.to_string(),
        e.event_type.clone(),
        if e.tags.is_empty() {
            "-".to_owned()
        } else {
            e.tags.join(",")
        },
        payload_text(&e.payload).0,
    ]
}

const EVENT_HEADERS: [&str; 6] = ["stream", "version", "position", "type", "tags", "payload"];

/// Runs a `wharf events` command.
pub(crate) async fn run(conn: &Conn, cmd: EventsCmd) -> anyhow::Result<()> {
    let store = conn
        .client()
        .await?
        .event_store()
        .await
        .with_context(|| format!("cannot open the event store of {}", conn.url))?;
    match cmd {
        EventsCmd::Append(a) => {
            let stream = StreamId::new(a.stream)?;
            let expected = parse_expected(&a.expected)?;
            let mut e = EventData::new(a.event_type, a.payload.unwrap_or_else(|| "{}".into()))
                .with_schema_version(a.schema_version);
            for t in a.tags {
                e = e.with_tag(t);
            }
            for m in a.metadata {
                let (n, v) = m
                    .split_once('=')
                    .ok_or_else(|| anyhow::anyhow!("--meta {m:?}: write NAME=VALUE"))?;
                e = e.with_metadata(n, v);
            }
            let id = e.id;
            let r = store.append(&stream, expected, vec![e]).await?;
            if conn.json {
                outln!(
                    "{}",
                    json!({"stream": stream.as_str(), "id": id.to_string(), "version": r.last_version, "position": r.last_position.0})
                );
            } else {
                table::print(
                    &["stream", "version", "position", "id"],
                    &[vec![
                        stream.as_str().to_owned(),
                        r.last_version.to_string(),
                        r.last_position.0.to_string(),
                        id.to_string(),
                    ]],
                );
            }
        }
        EventsCmd::Read(a) => {
            let stream = StreamId::new(a.stream)?;
            let mut o = if a.backwards {
                ReadStream::backwards()
            } else {
                ReadStream::forwards()
            };
            if let Some(v) = a.from {
                o = o.from(StreamFrom::Version(v));
            }
            if let Some(n) = a.count {
                o = o.max_count(n);
            }
            let events = store.read_stream(&stream, o).await?;
            if conn.json {
                outln!(
                    "{}",
                    serde_json::Value::Array(events.iter().map(event_json).collect())
                );
            } else {
                let rows: Vec<_> = events.iter().map(event_row).collect();
                table::print(&EVENT_HEADERS, &rows);
            }
        }
        EventsCmd::Streams(a) => {
            let names = store.list_streams(&a.prefix, None, a.count).await?;
            let mut rows = Vec::new();
            let mut out = Vec::new();
            for n in &names {
                let info = store.stream_info(n).await;
                let (version, state) = match &info {
                    Ok(i) => (
                        match i.version {
                            CurrentVersion::NoStream => None,
                            CurrentVersion::Version(v) => Some(v),
                        },
                        if i.soft_deleted { "deleted" } else { "live" },
                    ),
                    Err(wharf_eventstore::EventStoreError::StreamDeleted { .. }) => {
                        (None, "tombstoned")
                    }
                    Err(e) => anyhow::bail!("stream {n}: {e}"),
                };
                out.push(json!({"stream": n.as_str(), "version": version, "state": state}));
                rows.push(vec![
                    n.as_str().to_owned(),
                    table::opt(version),
                    state.to_owned(),
                ]);
            }
            if conn.json {
                outln!("{}", serde_json::Value::Array(out));
            } else {
                table::print(&["stream", "version", "state"], &rows);
            }
        }
        EventsCmd::Tail(a) => {
            let from = match a.from.as_str() {
                "start" => SubscribeFrom::Start,
                "end" => SubscribeFrom::End,
                n => SubscribeFrom::Position(Position(n.parse().map_err(|_| {
                    anyhow::anyhow!("--from {n:?}: write start, end or a position")
                })?)),
            };
            let mut filter = GlobalFilter::all();
            if let Some(p) = a.prefix {
                filter = filter.stream_prefix(p);
            }
            if !a.types.is_empty() {
                filter = filter.query(Query::new().item(QueryItem {
                    types: a.types,
                    tags: Vec::new(),
                }));
            }
            let mut sub = store.subscribe(from, filter).await?;
            if !conn.json {
                table::print(&EVENT_HEADERS, &[]);
            }
            let mut seen = 0usize;
            while a.count.is_none_or(|n| seen < n) {
                let next = tokio::select! {
                    e = sub.next() => e,
                    _ = tokio::signal::ctrl_c() => None,
                };
                let Some(e) = next else { break };
                let e = e?;
                if conn.json {
                    outln!("{}", event_json(&e));
                } else {
                    outln!("{}", event_row(&e).join("  "));
                }
                seen += 1;
            }
        }
    }
    Ok(())
}
