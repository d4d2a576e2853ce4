//! `wharf topic`, `wharf group` and `wharf dlq`: admin calls over gRPC,
//! printed as tables or JSON.

use anyhow::{anyhow, bail};
use clap::{Args, Subcommand};
use serde_json::json;
use wharf_client::proto as v1;

use wharf_core::StartPosition;

use crate::{table, Conn};

/// A gRPC failure as one readable line.
pub(crate) fn status_err(s: tonic::Status) -> anyhow::Error {
    // A bad-input message is already a sentence ("invalid argument
    // partitions: must be …"); print it as "invalid partitions: must be …"
    // rather than behind a second "invalid argument:".
    if s.code() == tonic::Code::InvalidArgument {
        let m = s.message();
        return match m.strip_prefix("invalid argument ") {
            Some(rest) => anyhow!("invalid {rest}"),
            None if m.starts_with("invalid ") => anyhow!("{m}"),
            None => anyhow!("invalid argument: {m}"),
        };
    }
    // "unknown topic \"x\"", "no dead letter …", "group … is in use …": a
    // sentence already, which a "not found:" in front only repeats.
    if matches!(
        s.code(),
        tonic::Code::NotFound | tonic::Code::FailedPrecondition
    ) {
        return anyhow!("{}", s.message());
    }
    let what = match s.code() {
        tonic::Code::Unauthenticated => "unauthenticated",
        tonic::Code::PermissionDenied => "permission denied",
        tonic::Code::InvalidArgument => "invalid argument",
        tonic::Code::ResourceExhausted => "too large",
        tonic::Code::Unavailable => "server unavailable",
        _ => "server error",
    };
    anyhow!("{what}: {}", s.message())
}

#[derive(Subcommand)]
pub(crate) enum TopicCmd {
    /// Create a topic. On an existing topic: nothing changes; the command
    /// succeeds if the settings given match, and fails naming each one
    /// that differs.
    Create(CreateArgs),
    /// List topics.
    List,
    /// Show a topic's settings and offsets.
    Describe {
        /// Topic name.
        name: String,
    },
    /// Delete a topic and its data.
    Delete {
        /// Topic name.
        name: String,
    },
    /// Repair a partition's first damaged batch (see `describe`): skip it or
    /// truncate there. Try --dry-run first: it reports what would be lost.
    Repair(RepairArgs),
}

#[derive(Args)]
#[command(group(clap::ArgGroup::new("action").required(true).args(["skip_batch", "truncate_at"])))]
pub(crate) struct RepairArgs {
    /// Topic name.
    topic: String,
    /// The damaged partition.
    partition: u32,
    /// Lose only the damaged batch's offsets; every other record stays.
    #[arg(long)]
    skip_batch: bool,
    /// Drop every record from OFFSET on (default: the damaged batch's first).
    #[arg(long, value_name = "OFFSET", num_args = 0..=1, default_missing_value = "damage")]
    truncate_at: Option<String>,
    /// Report what would be lost; change nothing.
    #[arg(long)]
    dry_run: bool,
}

/// `topic create`'s help for a setting: what it is and the default a new
/// topic gets, read from the broker's own `TopicConfig::default()` so help
/// and behaviour cannot drift.
mod defaults {
    use wharf_broker::TopicConfig;

    fn d() -> TopicConfig {
        TopicConfig::default()
    }

    fn or_none<T: std::fmt::Display>(v: Option<T>, none: &str) -> String {
        v.map_or_else(|| none.to_owned(), |v| v.to_string())
    }

    pub(super) fn partitions() -> String {
        format!(
            "Partitions: order holds per key within one (can be raised later, never lowered) [default: {}]",
            d().partitions
        )
    }
    pub(super) fn durability() -> String {
        "When a publish is acknowledged: always (after fdatasync) | never (once written) | interval:MS (background sync every MS) [default: always]".to_owned()
    }
    pub(super) fn retention_bytes() -> String {
        format!(
            "Delete the oldest segments beyond this many bytes per partition (whole sealed segments: see --segment-bytes) [default: {}]",
            or_none(d().retention_bytes, "none, keep everything")
        )
    }
    pub(super) fn retention_ms() -> String {
        format!(
            "Delete segments whose newest message is older than this many ms [default: {}]",
            or_none(d().retention_ms, "none, keep everything")
        )
    }
    pub(super) fn max_message_bytes() -> String {
        format!(
            "Largest message accepted, payload + key + headers, in bytes [default: {}]",
            d().max_message_bytes
        )
    }
    pub(super) fn ttl_ms() -> String {
        format!(
            "Messages older than this many ms are no longer delivered [default: {}]",
            or_none(d().ttl_ms, "none, no expiry")
        )
    }
    pub(super) fn dead_letter_topic() -> String {
        "Where rejected messages and those past --max-deliveries go [default: dlq.NAME]".to_owned()
    }
    pub(super) fn max_deliveries() -> String {
        format!(
            "Dead-letter a message after this many delivery attempts (groups may set their own) [default: {}]",
            or_none(d().max_deliveries, "none, redeliver without limit")
        )
    }
    pub(super) fn visibility_timeout_ms() -> String {
        format!(
            "Lease of a delivery in ms: unsettled after this, it is redelivered (groups may set their own) [default: {}]",
            or_none(
                d().visibility_timeout_ms,
                "none, leased until settled or its subscription ends"
            )
        )
    }
    pub(super) fn segment_bytes() -> String {
        format!(
            "Segment file size per partition, at least 4096; retention deletes whole sealed segments, so it acts in steps of this size [default: {}]",
            d().segment_bytes
        )
    }
    pub(super) fn dedup_window_ms() -> String {
        format!(
            "A publish of a message id seen within this many ms returns the first receipt; 0 = off [default: {}]",
            or_none(d().dedup_window_ms, "0")
        )
    }
}

#[derive(Args)]
pub(crate) struct CreateArgs {
    /// Topic name: dot-separated segments of A-Z a-z 0-9 _ -.
    name: String,
    #[arg(long, help = defaults::partitions())]
    partitions: Option<u32>,
    #[arg(long, help = defaults::durability())]
    durability: Option<String>,
    #[arg(long, help = defaults::retention_bytes())]
    retention_bytes: Option<u64>,
    #[arg(long, help = defaults::retention_ms())]
    retention_ms: Option<u64>,
    #[arg(long, help = defaults::max_message_bytes())]
    max_message_bytes: Option<u64>,
    #[arg(long, help = defaults::ttl_ms())]
    ttl_ms: Option<u64>,
    #[arg(long, help = defaults::dead_letter_topic())]
    dead_letter_topic: Option<String>,
    #[arg(long, help = defaults::max_deliveries())]
    max_deliveries: Option<u32>,
    #[arg(long, help = defaults::visibility_timeout_ms())]
    visibility_timeout_ms: Option<u64>,
    #[arg(long, help = defaults::dedup_window_ms())]
    dedup_window_ms: Option<u64>,
    #[arg(long, help = defaults::segment_bytes())]
    segment_bytes: Option<u64>,
    /// Skip a damaged stored batch at once (its messages are lost, logged
    /// and counted) instead of stopping its partition at the damage until
    /// `wharf topic repair` [default: off, stop and wait for a repair].
    #[arg(long)]
    skip_damaged_batches: bool,
}

impl CreateArgs {
    /// The settings given that an existing topic's `c` does not have, as
    /// "--flag asked (topic has current)".
    fn differences(&self, c: &v1::TopicConfig) -> Vec<String> {
        fn opt<T: std::fmt::Display>(v: Option<T>) -> String {
            v.map_or_else(|| "none".to_owned(), |v| v.to_string())
        }
        let mut out = Vec::new();
        let mut check = |flag: &str, asked: Option<String>, has: String| {
            if let Some(asked) = asked {
                if asked != has {
                    out.push(format!("--{flag} {asked} (the topic has {has})"));
                }
            }
        };
        check(
            "partitions",
            self.partitions.map(|v| v.to_string()),
            c.partitions.to_string(),
        );
        check("durability", self.durability.clone(), c.durability.clone());
        check(
            "retention-bytes",
            self.retention_bytes.map(|v| v.to_string()),
            opt(c.retention_bytes),
        );
        check(
            "retention-ms",
            self.retention_ms.map(|v| v.to_string()),
            opt(c.retention_ms),
        );
        check(
            "max-message-bytes",
            self.max_message_bytes.map(|v| v.to_string()),
            c.max_message_bytes.to_string(),
        );
        check("ttl-ms", self.ttl_ms.map(|v| v.to_string()), opt(c.ttl_ms));
        check(
            "dead-letter-topic",
            self.dead_letter_topic.clone(),
            effective_dlq(&self.name, c),
        );
        check(
            "max-deliveries",
            self.max_deliveries.map(|v| v.to_string()),
            opt(c.max_deliveries),
        );
        check(
            "visibility-timeout-ms",
            self.visibility_timeout_ms.map(|v| v.to_string()),
            opt(c.visibility_timeout_ms),
        );
        check(
            "dedup-window-ms",
            self.dedup_window_ms.map(|v| v.to_string()),
            c.dedup_window_ms.unwrap_or(0).to_string(),
        );
        check(
            "segment-bytes",
            self.segment_bytes.map(|v| v.to_string()),
            c.segment_bytes.to_string(),
        );
        check(
            "skip-damaged-batches",
            self.skip_damaged_batches.then(|| "skip".to_owned()),
            on_damage(c).to_owned(),
        );
        out
    }
}

/// What a damaged stored batch does to a partition of the topic.
fn on_damage(c: &v1::TopicConfig) -> &'static str {
    if c.skip_damaged_batches {
        "skip"
    } else {
        "stop"
    }
}

/// The dead-letter topic of `topic`: its own setting, or `dlq.<topic>`.
fn effective_dlq(topic: &str, c: &v1::TopicConfig) -> String {
    c.dead_letter_topic
        .clone()
        .unwrap_or_else(|| wharf_core::name::dead_letter_topic(topic))
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
        "skip_damaged_batches": c.skip_damaged_batches,
        "segment_bytes": c.segment_bytes,
        "offsets": t.partitions.iter().map(|p| json!({"partition": p.partition, "start": p.start_offset, "end": p.end_offset, "damage": p.damage.iter().map(damage_json).collect::<Vec<_>>(), "bytes": p.bytes})).collect::<Vec<_>>(),
        "bytes": t.bytes,
    })
}

fn damage_json(d: &v1::DamagedBatch) -> serde_json::Value {
    json!({
        "file": d.file,
        "position": d.position,
        "end_position": d.end_position,
        "start_offset": d.start_offset,
        "end_offset": d.end_offset,
        "reason": d.reason,
    })
}

fn damage_line(d: &v1::DamagedBatch) -> String {
    format!(
        "offsets {}..{} lost to a damaged batch at bytes {}..{} of {} ({})",
        d.start_offset, d.end_offset, d.position, d.end_position, d.file, d.reason
    )
}

async fn repair(conn: &Conn, a: RepairArgs) -> anyhow::Result<()> {
    use v1::repair_partition_request::Action;
    let action = match (&a.truncate_at, a.skip_batch) {
        (None, _) => Action::SkipBatch(v1::Empty {}),
        (Some(at), _) if at == "damage" => Action::TruncateAt(v1::TruncateAt { offset: None }),
        (Some(at), _) => Action::TruncateAt(v1::TruncateAt {
            offset: Some(
                at.parse()
                    .map_err(|_| anyhow!("--truncate-at takes an offset"))?,
            ),
        }),
    };
    let r = conn
        .client()
        .await?
        .raw()
        .repair_partition(v1::RepairPartitionRequest {
            topic: a.topic.clone(),
            partition: a.partition,
            action: Some(action),
            dry_run: a.dry_run,
        })
        .await
        .map_err(status_err)?
        .into_inner();
    let lost = r.lost_to.saturating_sub(r.lost_from);
    if conn.json {
        outln!(
            "{}",
            json!({
                "dry_run": r.dry_run,
                "damage": r.damage.as_ref().map(damage_json),
                "lost_from": r.lost_from,
                "lost_to": r.lost_to,
                "lost_count": lost,
                "remaining": r.remaining,
            })
        );
        return Ok(());
    }
    let Some(d) = &r.damage else {
        outln!(
            "{} partition {}: no damage found (every batch's CRC checked)",
            a.topic,
            a.partition
        );
        return Ok(());
    };
    outln!("{} partition {}: {}", a.topic, a.partition, damage_line(d));
    let verb = if r.dry_run { "would lose" } else { "lost" };
    outln!("{verb} {lost} offsets: {}..{}", r.lost_from, r.lost_to);
    if r.remaining > 0 {
        outln!("{} more damaged batches in this partition", r.remaining);
    }
    Ok(())
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
                c.durability.clone(),
                messages(t).to_string(),
                t.bytes.to_string(),
                table::opt(c.retention_bytes),
                table::opt(c.retention_ms),
                effective_dlq(&t.name, &c),
                table::opt(c.max_deliveries),
                on_damage(&c).to_owned(),
            ]
        })
        .collect();
    table::print(
        &[
            "topic",
            "partitions",
            "durability",
            "messages",
            "bytes",
            "retention_bytes",
            "retention_ms",
            "dlq",
            "max_deliveries",
            "on_damage",
        ],
        &rows,
    );
}

pub(crate) async fn topic(conn: &Conn, cmd: TopicCmd) -> anyhow::Result<()> {
    if let TopicCmd::Repair(a) = cmd {
        return repair(conn, a).await;
    }
    let mut raw = conn.client().await?.raw();
    match cmd {
        TopicCmd::Create(a) => {
            // `create` never changes an existing topic; say so instead of
            // printing the old settings as if the new ones had been applied.
            let existing = match raw
                .describe_topic(v1::TopicName {
                    name: a.name.clone(),
                })
                .await
            {
                Ok(t) => Some(t.into_inner()),
                // A token that may create but not describe: let create decide.
                Err(s)
                    if matches!(
                        s.code(),
                        tonic::Code::NotFound | tonic::Code::PermissionDenied
                    ) =>
                {
                    None
                }
                Err(s) => return Err(status_err(s)),
            };
            if let Some(t) = existing {
                let c = t.config.clone().unwrap_or_default();
                let diff = a.differences(&c);
                if !diff.is_empty() {
                    bail!(
                        "topic {} already exists and was not changed: {}; `topic create` never changes an existing topic (to change these, delete it, which deletes its messages, and create it again)",
                        a.name,
                        diff.join(", ")
                    );
                }
                eprintln!(
                    "topic {} already exists with these settings; nothing changed",
                    a.name
                );
                print_topics(conn, &[t]);
                return Ok(());
            }
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
                    skip_damaged_batches: a.skip_damaged_batches.then_some(true),
                    segment_bytes: a.segment_bytes,
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
                for p in &t.partitions {
                    for d in &p.damage {
                        outln!("DAMAGED partition {}: {}", p.partition, damage_line(d));
                        outln!("  repair: wharf topic repair {} {} --skip-batch|--truncate-at --dry-run", t.name, p.partition);
                    }
                }
            }
        }
        TopicCmd::Repair(_) => {}
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
        /// Group name.
        group: String,
        /// Only this topic (default: every topic the group consumes).
        topic: Option<String>,
    },
    /// Move GROUP's position on TOPIC, in every partition: what lies below
    /// it counts as consumed, what lies at or above it is delivered again
    /// (pending redeliveries and attempt counts are dropped). Only a group
    /// nothing uses may move: stop its consumers first.
    Reset {
        /// Group name.
        group: String,
        /// Topic name.
        topic: String,
        /// earliest | latest | OFFSET (in every partition's range) | TIME
        /// (RFC 3339 like 2026-11-23T18:00:00Z, or ms since the epoch as
        /// @MS: the first message stored at or after it, per partition).
        #[arg(long)]
        to: String,
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

/// `wharf group reset`: moves the group, prints each partition's new offset.
async fn group_reset(conn: &Conn, group: String, topic: String, to: &str) -> anyhow::Result<()> {
    let (kind, value) =
        match crate::pubsub::parse_position("--to", to, "earliest, latest, an offset or a time")? {
            StartPosition::Earliest => (v1::StartKind::StartEarliest, 0),
            StartPosition::Latest => (v1::StartKind::StartLatest, 0),
            StartPosition::Offset(o) => (v1::StartKind::StartOffset, o),
            StartPosition::Time(t) => (v1::StartKind::StartTime, t.as_millis()),
            _ => bail!("--to {to:?} is not earliest, latest, an offset or a time"),
        };
    let mut raw = conn.client().await?.raw();
    let moved = raw
        .reset_group(v1::ResetGroupRequest {
            group: group.clone(),
            topic: topic.clone(),
            to: kind as i32,
            value,
        })
        .await
        .map_err(status_err)?
        .into_inner();
    if conn.json {
        outln!(
            "{}",
            json!({
                "group": group,
                "topic": topic,
                "partitions": moved.partitions.iter().map(|p| json!({
                    "partition": p.partition,
                    "offset": p.offset,
                })).collect::<Vec<_>>(),
            })
        );
        return Ok(());
    }
    let rows: Vec<Vec<String>> = moved
        .partitions
        .iter()
        .map(|p| vec![p.partition.to_string(), p.offset.to_string()])
        .collect();
    table::print(&["partition", "offset"], &rows);
    Ok(())
}

pub(crate) async fn group(conn: &Conn, cmd: GroupCmd) -> anyhow::Result<()> {
    let (filter, topic) = match cmd {
        GroupCmd::List => (None, None),
        GroupCmd::Describe {
            ref group,
            ref topic,
        } => (Some(group.clone()), topic.clone()),
        GroupCmd::Reset { group, topic, to } => return group_reset(conn, group, topic, &to).await,
    };
    let mut raw = conn.client().await?.raw();
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
        /// The topic whose dead letters to list (or its dead-letter topic, dlq.TOPIC).
        topic: String,
        /// Most dead letters to print in one page.
        #[arg(long, default_value_t = 100)]
        limit: u32,
        /// Start at PARTITION:OFFSET (the cursor a previous page printed).
        #[arg(long)]
        cursor: Option<String>,
    },
    /// Show one dead letter with all its headers.
    Show {
        /// The topic (or its dead-letter topic).
        topic: String,
        /// Message id, as `dlq list` prints it.
        id: String,
    },
    /// Move dead letters back to their original topic: one (--id) or every
    /// one (--all).
    #[command(group(clap::ArgGroup::new("which").required(true).args(["id", "all"])))]
    Replay {
        /// The topic (or its dead-letter topic).
        topic: String,
        /// Replay only this dead letter (its message id, as `dlq list` prints it).
        #[arg(long)]
        id: Option<String>,
        /// Replay every dead letter of TOPIC.
        #[arg(long)]
        all: bool,
    },
    /// Discard every dead letter of TOPIC.
    Purge {
        /// The topic (or its dead-letter topic).
        topic: String,
    },
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
