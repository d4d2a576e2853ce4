//! `wharf topic`, `wharf group` and `wharf dlq`: admin calls over gRPC,
//! printed as tables or JSON.

use anyhow::{anyhow, bail};
use clap::{Args, Subcommand};
use serde_json::json;
use wharf_client::proto as v1;

use crate::{table, Conn};

/// A gRPC failure as one readable line.
pub(crate) fn status_err(s: tonic::Status) -> anyhow::Error {
    let what = match s.code() {
        tonic::Code::Unauthenticated => "unauthenticated",
        tonic::Code::PermissionDenied => "permission denied",
        tonic::Code::NotFound => "not found",
        tonic::Code::InvalidArgument => "invalid argument",
        tonic::Code::ResourceExhausted => "too large",
        tonic::Code::Unavailable => "server unavailable",
        _ => "server error",
    };
    anyhow!("{what}: {}", s.message())
}

#[derive(Subcommand)]
pub(crate) enum TopicCmd {
    /// Create a topic (an existing topic keeps its settings).
    Create(CreateArgs),
    /// List topics.
    List,
    /// Show a topic's settings and offsets.
    Describe { name: String },
    /// Delete a topic and its data.
    Delete { name: String },
}

#[derive(Args)]
pub(crate) struct CreateArgs {
    name: String,
    #[arg(long)]
    partitions: Option<u32>,
    /// always | never | interval:MS
    #[arg(long)]
    durability: Option<String>,
    #[arg(long)]
    retention_bytes: Option<u64>,
    #[arg(long)]
    retention_ms: Option<u64>,
    #[arg(long)]
    max_message_bytes: Option<u64>,
    #[arg(long)]
    ttl_ms: Option<u64>,
    /// Dead-letter topic (default dlq.NAME).
    #[arg(long)]
    dead_letter_topic: Option<String>,
    /// Dead-letter a message after this many delivery attempts.
    #[arg(long)]
    max_deliveries: Option<u32>,
    #[arg(long)]
    visibility_timeout_ms: Option<u64>,
    /// Dedup window in ms (0 = off; default 120000).
    #[arg(long)]
    dedup_window_ms: Option<u64>,
}

fn topic_json(t: &v1::TopicInfo) -> serde_json::Value {
    let c = t.config.clone().unwrap_or_default();
    json!({
        "name": t.name,
        "partitions": c.partitions,
        "durability": c.durability,
        "retention_bytes": c.retention_bytes,
        "retention_ms": c.retention_ms,
        "max_message_bytes": c.max_message_bytes,
        "ttl_ms": c.ttl_ms,
        "dedup_window_ms": c.dedup_window_ms,
        "dead_letter_topic": c.dead_letter_topic,
        "max_deliveries": c.max_deliveries,
        "visibility_timeout_ms": c.visibility_timeout_ms,
        "offsets": t.partitions.iter().map(|p| json!({"partition": p.partition, "start": p.start_offset, "end": p.end_offset})).collect::<Vec<_>>(),
    })
}

fn messages(t: &v1::TopicInfo) -> u64 {
    t.partitions
        .iter()
        .map(|p| p.end_offset.saturating_sub(p.start_offset))
        .sum()
}

fn print_topics(conn: &Conn, topics: &[v1::TopicInfo]) {
    if conn.json {
        outln!(
            "{}",
            serde_json::Value::Array(topics.iter().map(topic_json).collect())
        );
        return;
    }
    let rows: Vec<Vec<String>> = topics
        .iter()
        .map(|t| {
            let c = t.config.clone().unwrap_or_default();
            vec![
                t.name.clone(),
                c.partitions.to_string(),
                c.durability,
                messages(t).to_string(),
                table::opt(c.retention_bytes),
                table::opt(c.retention_ms),
                table::opt(c.dead_letter_topic),
                table::opt(c.max_deliveries),
            ]
        })
        .collect();
    table::print(
        &[
            "topic",
            "partitions",
            "durability",
            "messages",
            "retention_bytes",
            "retention_ms",
            "dlq",
            "max_deliveries",
        ],
        &rows,
    );
}

pub(crate) async fn topic(conn: &Conn, cmd: TopicCmd) -> anyhow::Result<()> {
    let mut raw = conn.client().await?.raw();
    match cmd {
        TopicCmd::Create(a) => {
            let t = raw
                .create_topic(v1::CreateTopicRequest {
                    name: a.name,
                    partitions: a.partitions,
                    durability: a.durability,
                    retention_bytes: a.retention_bytes,
                    retention_ms: a.retention_ms,
                    max_message_bytes: a.max_message_bytes,
                    ttl_ms: a.ttl_ms,
                    dead_letter_topic: a.dead_letter_topic,
                    max_deliveries: a.max_deliveries,
                    visibility_timeout_ms: a.visibility_timeout_ms,
                    dedup_window_ms: a.dedup_window_ms,
                })
                .await
                .map_err(status_err)?
                .into_inner();
            print_topics(conn, &[t]);
        }
        TopicCmd::List => {
            let r = raw
                .list_topics(v1::ListTopicsRequest {})
                .await
                .map_err(status_err)?
                .into_inner();
            print_topics(conn, &r.topics);
        }
        TopicCmd::Describe { name } => {
            let t = raw
                .describe_topic(v1::TopicName { name })
                .await
                .map_err(status_err)?
                .into_inner();
            if conn.json {
                outln!("{}", topic_json(&t));
            } else {
                print_topics(conn, std::slice::from_ref(&t));
                outln!();
                let rows: Vec<Vec<String>> = t
                    .partitions
                    .iter()
                    .map(|p| {
                        vec![
                            p.partition.to_string(),
                            p.start_offset.to_string(),
                            p.end_offset.to_string(),
                        ]
                    })
                    .collect();
                table::print(&["partition", "start_offset", "end_offset"], &rows);
            }
        }
        TopicCmd::Delete { name } => {
            raw.delete_topic(v1::TopicName { name: name.clone() })
                .await
                .map_err(status_err)?;
            if conn.json {
                outln!("{}", json!({"deleted": name}));
            } else {
                outln!("deleted topic {name}");
            }
        }
    }
    Ok(())
}

#[derive(Subcommand)]
pub(crate) enum GroupCmd {
    /// List consumer groups with their mode, members and lag per topic.
    List,
    /// One group's members and, per partition, committed offset, end
    /// offset, lag and (stream mode) assigned member.
    Describe {
        group: String,
        /// Only this topic (default: every topic the group consumes).
        topic: Option<String>,
    },
}

fn mode_str(g: &v1::GroupInfo) -> &'static str {
    if g.mode == v1::GroupMode::Stream as i32 {
        "stream"
    } else {
        "queue"
    }
}

fn members_str(members: &[u64]) -> String {
    if members.is_empty() {
        "-".to_owned()
    } else {
        members
            .iter()
            .map(u64::to_string)
            .collect::<Vec<_>>()
            .join(",")
    }
}

fn group_json(g: &v1::GroupInfo) -> serde_json::Value {
    json!({
        "group": g.group,
        "topic": g.topic,
        "mode": mode_str(g),
        "lag": g.lag,
        "members": g.members,
        "partitions": g.partitions.iter().map(|p| json!({
            "partition": p.partition,
            "committed_offset": p.committed_offset,
            "settled_above": p.settled_above,
            "end_offset": p.end_offset,
            "lag": p.lag,
            "member": p.member,
        })).collect::<Vec<_>>(),
    })
}

pub(crate) async fn group(conn: &Conn, cmd: GroupCmd) -> anyhow::Result<()> {
    let mut raw = conn.client().await?.raw();
    let (filter, topic) = match &cmd {
        GroupCmd::List => (None, None),
        GroupCmd::Describe { group, topic } => (Some(group.clone()), topic.clone()),
    };
    let groups: Vec<v1::GroupInfo> = raw
        .list_groups(v1::ListGroupsRequest {
            group: filter.clone(),
        })
        .await
        .map_err(status_err)?
        .into_inner()
        .groups
        .into_iter()
        .filter(|g| topic.as_ref().is_none_or(|t| *t == g.topic))
        .collect();
    if let (Some(g), true) = (&filter, groups.is_empty()) {
        match &topic {
            Some(t) => bail!("group {g:?} has no position on {t:?} since the server started"),
            None => bail!("no group {g:?} has a position on any topic since the server started"),
        }
    }
    if conn.json {
        outln!(
            "{}",
            serde_json::Value::Array(groups.iter().map(group_json).collect())
        );
        return Ok(());
    }
    if matches!(cmd, GroupCmd::List) {
        let rows: Vec<Vec<String>> = groups
            .iter()
            .map(|g| {
                vec![
                    g.group.clone(),
                    g.topic.clone(),
                    mode_str(g).to_owned(),
                    g.members.len().to_string(),
                    g.lag.to_string(),
                ]
            })
            .collect();
        table::print(&["group", "topic", "mode", "members", "lag"], &rows);
        return Ok(());
    }
    for (i, g) in groups.iter().enumerate() {
        if i > 0 {
            outln!();
        }
        outln!("group:    {}", g.group);
        outln!("topic:    {}", g.topic);
        outln!("mode:     {}", mode_str(g));
        outln!("members:  {}", members_str(&g.members));
        outln!("lag:      {}", g.lag);
        let rows: Vec<Vec<String>> = g
            .partitions
            .iter()
            .map(|p| {
                vec![
                    p.partition.to_string(),
                    p.committed_offset.to_string(),
                    p.end_offset.to_string(),
                    p.lag.to_string(),
                    table::opt(p.member),
                ]
            })
            .collect();
        table::print(
            &[
                "partition",
                "committed_offset",
                "end_offset",
                "lag",
                "member",
            ],
            &rows,
        );
    }
    Ok(())
}

#[derive(Subcommand)]
pub(crate) enum DlqCmd {
    /// List the dead letters of TOPIC (or of the dead-letter topic itself)
    /// not yet replayed or purged. Reads them without consuming; when more
    /// remain, the cursor for the next page is printed on stderr.
    List {
        topic: String,
        #[arg(long, default_value_t = 100)]
        limit: u32,
        /// Start at PARTITION:OFFSET (the cursor a previous page printed).
        #[arg(long)]
        cursor: Option<String>,
    },
    /// Show one dead letter with all its headers.
    Show { topic: String, id: String },
    /// Move dead letters back to their original topic.
    Replay {
        topic: String,
        #[arg(long, conflicts_with = "all", required_unless_present = "all")]
        id: Option<String>,
        #[arg(long)]
        all: bool,
    },
    /// Discard every dead letter of TOPIC.
    Purge { topic: String },
}

fn dlq_topic(t: &str) -> String {
    if t.starts_with(wharf_core::name::DEAD_LETTER_PREFIX) {
        t.to_owned()
    } else {
        wharf_core::name::dead_letter_topic(t)
    }
}

fn dead_letter_json(d: &v1::DeadLetter) -> serde_json::Value {
    let m = d.message.clone().unwrap_or_default();
    let id = id_string(&m.id);
    let headers: serde_json::Map<String, serde_json::Value> = m
        .headers
        .iter()
        .map(|h| (h.name.clone(), json!(h.value)))
        .collect();
    json!({
        "id": id,
        "partition": d.partition,
        "offset": d.offset,
        "key": m.key.map(|k| String::from_utf8_lossy(&k).into_owned()),
        "headers": headers,
        "payload": String::from_utf8_lossy(&m.payload),
    })
}

pub(crate) fn id_string(bytes: &[u8]) -> String {
    <[u8; 16]>::try_from(bytes)
        .map(|b| wharf_core::MessageId::from_bytes(b).to_string())
        .unwrap_or_default()
}

fn header<'a>(m: &'a v1::Message, name: &str) -> &'a str {
    m.headers
        .iter()
        .find(|h| h.name == name)
        .map_or("-", |h| h.value.as_str())
}

pub(crate) async fn dlq(conn: &Conn, cmd: DlqCmd) -> anyhow::Result<()> {
    let mut raw = conn.client().await?.raw();
    match cmd {
        DlqCmd::List {
            topic,
            limit,
            cursor,
        } => {
            let r = raw
                .dlq_list(v1::DlqListRequest {
                    topic: dlq_topic(&topic),
                    limit,
                    cursor,
                })
                .await
                .map_err(status_err)?
                .into_inner();
            if let Some(next) = &r.next_cursor {
                eprintln!("more dead letters: continue with --cursor {next}");
            }
            if conn.json {
                outln!(
                    "{}",
                    serde_json::Value::Array(r.messages.iter().map(dead_letter_json).collect())
                );
            } else {
                let rows: Vec<Vec<String>> = r
                    .messages
                    .iter()
                    .map(|d| {
                        let m = d.message.clone().unwrap_or_default();
                        let mut payload = String::from_utf8_lossy(&m.payload).into_owned();
                        if payload.chars().count() > 40 {
                            payload = payload.chars().take(37).collect::<String>() + "...";
                        }
                        vec![
                            id_string(&m.id),
                            header(&m, wharf_core::header::ORIGINAL_TOPIC).to_owned(),
                            header(&m, wharf_core::header::ATTEMPTS).to_owned(),
                            header(&m, wharf_core::header::DLQ_REASON).to_owned(),
                            payload,
                        ]
                    })
                    .collect();
                table::print(
                    &["id", "original_topic", "attempts", "reason", "payload"],
                    &rows,
                );
            }
        }
        DlqCmd::Show { topic, id } => {
            let d = &raw
                .dlq_show(v1::DlqShowRequest {
                    topic: dlq_topic(&topic),
                    id,
                })
                .await
                .map_err(status_err)?
                .into_inner();
            if conn.json {
                outln!("{}", dead_letter_json(d));
            } else {
                let m = d.message.clone().unwrap_or_default();
                outln!("id:        {}", id_string(&m.id));
                outln!(
                    "position:  partition {} offset {}",
                    d.partition,
                    table::opt(d.offset)
                );
                if let Some(k) = &m.key {
                    outln!("key:       {}", String::from_utf8_lossy(k));
                }
                for h in &m.headers {
                    outln!("header:    {} = {}", h.name, h.value);
                }
                outln!("payload:   {}", String::from_utf8_lossy(&m.payload));
            }
        }
        DlqCmd::Replay { topic, id, all } => {
            let _ = all;
            let n = raw
                .dlq_replay(v1::DlqReplayRequest {
                    topic: dlq_topic(&topic),
                    id: id.clone(),
                })
                .await
                .map_err(status_err)?
                .into_inner()
                .count;
            if id.is_some() && n == 0 {
                bail!(
                    "no dead letter {} in {}",
                    id.unwrap_or_default(),
                    dlq_topic(&topic)
                );
            }
            if conn.json {
                outln!("{}", json!({"replayed": n}));
            } else {
                outln!("replayed {n} message(s)");
            }
        }
        DlqCmd::Purge { topic } => {
            let n = raw
                .dlq_purge(v1::TopicName {
                    name: dlq_topic(&topic),
                })
                .await
                .map_err(status_err)?
                .into_inner()
                .count;
            if conn.json {
                outln!("{}", json!({"purged": n}));
            } else {
                outln!("purged {n} message(s)");
            }
        }
    }
    Ok(())
}
