//! `wharf pub` and `wharf sub`: publish from arguments or standard input,
//! subscribe and print (acking each message once it is printed).

use std::time::Duration;

use anyhow::{anyhow, bail, Context as _};
use clap::Args;
use serde_json::json;
use tokio::io::AsyncBufReadExt;
use wharf_core::{Message, Publisher, StartPosition, SubscribeOptions, Subscriber, Timestamp};

use crate::Conn;

#[derive(Args)]
pub(crate) struct PubArgs {
    /// Topic to publish to (created on first publish if the server allows it).
    topic: String,
    /// Message text; without it, each line of standard input is one message.
    message: Option<String>,
    /// Partitioning / ordering key: messages with one key keep their order
    /// [default: none, spread round robin].
    #[arg(long)]
    key: Option<String>,
    /// Header as name=value (repeatable).
    #[arg(long = "header", value_name = "NAME=VALUE")]
    headers: Vec<String>,
    /// Lines per publish call when reading standard input.
    #[arg(long, default_value_t = 500)]
    batch: usize,
}

fn build(text: &str, key: Option<&String>, headers: &[(String, String)]) -> Message {
    let mut b = Message::builder().payload(text.to_owned());
    if let Some(k) = key {
        b = b.key(k.clone());
    }
    for (n, v) in headers {
        b = b.header(n.clone(), v.clone());
    }
    b.build()
}

pub(crate) async fn publish(conn: &Conn, a: PubArgs) -> anyhow::Result<()> {
    let headers = a
        .headers
        .iter()
        .map(|h| {
            h.split_once('=')
                .map(|(n, v)| (n.to_owned(), v.to_owned()))
                .ok_or_else(|| anyhow!("--header {h:?} is not NAME=VALUE"))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let client = conn.client().await?;
    if let Some(text) = &a.message {
        let r = client
            .publish(&a.topic, build(text, a.key.as_ref(), &headers))
            .await?;
        if conn.json {
            outln!(
                "{}",
                json!({"id": r.id.to_string(), "partition": r.partition, "offset": r.offset, "duplicate": r.duplicate})
            );
        } else {
            outln!(
                "published {} to {} partition {} offset {}",
                r.id,
                a.topic,
                r.partition,
                crate::table::opt(r.offset)
            );
        }
        return Ok(());
    }
    let bar = indicatif::ProgressBar::new_spinner();
    bar.set_message(format!("publishing to {}", a.topic));
    let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    let mut batch = Vec::new();
    let mut total = 0usize;
    loop {
        let line = lines.next_line().await.context("reading standard input")?;
        let done = line.is_none();
        if let Some(l) = line {
            batch.push(build(&l, a.key.as_ref(), &headers));
        }
        if batch.len() >= a.batch.max(1) || (done && !batch.is_empty()) {
            let n = batch.len();
            client
                .publish_batch(&a.topic, std::mem::take(&mut batch))
                .await?;
            total += n;
            bar.set_position(total as u64);
        }
        if done {
            break;
        }
    }
    bar.finish_and_clear();
    if conn.json {
        outln!("{}", json!({"published": total, "topic": a.topic}));
    } else {
        outln!("published {total} message(s) to {}", a.topic);
    }
    Ok(())
}

#[derive(Args)]
pub(crate) struct SubArgs {
    /// Topic or pattern (`orders.*`, `orders.>`).
    topic: String,
    /// Consumer group: each group gets every message once, shared among its
    /// consumers, and resumes where it left off. Without one the
    /// subscription is private and gets everything.
    #[arg(long)]
    group: Option<String>,
    /// Where to start: earliest | latest | OFFSET (in every partition) |
    /// PARTITION:OFFSET (that partition only, as `sub` prints `[P@O]`; no
    /// --group) | TIME (RFC 3339 like 2026-11-23T18:00:00Z, or ms since the
    /// epoch as @MS). Applies to a private subscription or a group's first
    /// subscription; a known group resumes where it left off. [default:
    /// earliest with --group, latest without]
    #[arg(long)]
    from: Option<String>,
    /// Exit after this many messages [default: run until Ctrl-C].
    #[arg(long)]
    count: Option<u64>,
    /// Exit with an error if a message takes longer than this to arrive, in
    /// seconds [default: wait forever].
    #[arg(long)]
    timeout: Option<f64>,
    /// Print each message's headers (text mode; --json always has them).
    #[arg(long)]
    headers: bool,
}

/// A parsed `--from`: a start position for every partition, or one
/// partition from an offset.
#[derive(Debug, PartialEq)]
pub(crate) enum From {
    /// Every partition from this position.
    All(StartPosition),
    /// `PARTITION:OFFSET`: only this partition, from this offset.
    Partition(u32, u64),
}

/// Parses a `--from` value, including the `PARTITION:OFFSET` form.
pub(crate) fn parse_from_arg(s: &str) -> anyhow::Result<From> {
    if let Some((p, o)) = s.split_once(':') {
        let digits = |t: &str| !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit());
        if digits(p) && digits(o) {
            return Ok(From::Partition(
                p.parse()
                    .with_context(|| format!("--from {s:?}: partition"))?,
                o.parse().with_context(|| format!("--from {s:?}: offset"))?,
            ));
        }
    }
    parse_from(s).map(From::All)
}

/// Parses a `--from` value.
pub(crate) fn parse_from(s: &str) -> anyhow::Result<StartPosition> {
    parse_position(
        "--from",
        s,
        "earliest, latest, an offset, PARTITION:OFFSET or a time",
    )
}

/// Parses a position given to `flag`: earliest | latest | an offset | a
/// time (`@MS` or RFC 3339); `forms` lists what `flag` accepts, for the
/// error.
pub(crate) fn parse_position(flag: &str, s: &str, forms: &str) -> anyhow::Result<StartPosition> {
    Ok(match s {
        "earliest" => StartPosition::Earliest,
        "latest" => StartPosition::Latest,
        _ if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) => {
            StartPosition::Offset(s.parse().with_context(|| format!("{flag} {s:?}: offset"))?)
        }
        _ if s.starts_with('@') => StartPosition::Time(Timestamp::from_millis(
            s[1..].parse().with_context(|| format!("{flag} {s:?}"))?,
        )),
        _ => StartPosition::Time(Timestamp::from_millis(
            parse_rfc3339_ms(s).ok_or_else(|| anyhow!("{flag} {s:?} is not {forms}"))?,
        )),
    })
}

/// `YYYY-MM-DDTHH:MM:SS[.fff]Z` (UTC) to ms since the epoch.
fn parse_rfc3339_ms(s: &str) -> Option<u64> {
    let s = s.strip_suffix('Z').unwrap_or(s);
    let (date, time) = s.split_once(['T', ' '])?;
    let mut d = date.split('-').map(|p| p.parse::<i64>().ok());
    let (y, m, day) = (d.next()??, d.next()??, d.next()??);
    let (hms, frac) = time.split_once('.').unwrap_or((time, "0"));
    let mut t = hms.split(':').map(|p| p.parse::<i64>().ok());
    let (hh, mm, ss) = (t.next()??, t.next()??, t.next().flatten().unwrap_or(0));
    if !(1..=12).contains(&m) || !(1..=31).contains(&day) {
        return None;
    }
    // Days from civil (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let ms_frac: i64 = format!("{frac:0<3}")[..3].parse().ok()?;
    let ms = ((days * 86_400 + hh * 3600 + mm * 60 + ss) * 1000) + ms_frac;
    u64::try_from(ms).ok()
}

pub(crate) async fn subscribe(conn: &Conn, a: SubArgs) -> anyhow::Result<()> {
    let from = a.from.as_deref().map(parse_from_arg).transpose()?;
    // `P:O`: the whole topic from its start, showing only partition P from
    // offset O (a start position names one offset for every partition).
    let only = match from {
        Some(From::Partition(p, o)) => {
            if a.group.is_some() {
                bail!(
                    "--from PARTITION:OFFSET reads one partition, which a group cannot (it shares all partitions); leave out --group, or use --from OFFSET"
                );
            }
            Some((p, o))
        }
        _ => None,
    };
    let client = conn.client().await?;
    let partitions = check_topic(&client, &a.topic).await;
    if let (Some((p, o)), Some(n)) = (only, partitions) {
        if p >= n {
            let range = match n {
                1 => "only partition 0".to_owned(),
                _ => format!("partitions 0 to {}", n - 1),
            };
            bail!(
                "--from {p}:{o}: topic {} has {range} (`wharf topic describe {}` shows them)",
                a.topic,
                a.topic
            );
        }
    }
    let mut opts = SubscribeOptions::new(&a.topic);
    if let Some(g) = &a.group {
        opts = opts.group(g.clone());
    }
    match from {
        Some(From::All(start)) => opts = opts.start(start),
        Some(From::Partition(..)) => opts = opts.start(StartPosition::Earliest),
        None => {}
    }
    if a.count.is_some() {
        // One at a time, and the last one acknowledged only after the
        // subscription is closed: otherwise an ack frees a slot the server
        // fills at once, and that message, fetched past the count and never
        // shown, would be released (an attempt against max deliveries).
        opts = opts.max_in_flight(1);
    }
    let mut sub = client.subscribe(opts).await?;
    let mut seen = 0u64;
    while a.count.is_none_or(|n| seen < n) {
        let next = match a.timeout {
            Some(secs) => {
                match tokio::time::timeout(Duration::from_secs_f64(secs), sub.next()).await {
                    Ok(n) => n,
                    Err(_) => bail!("no message within {secs} s ({seen} received)"),
                }
            }
            None => tokio::select! {
                n = sub.next() => n,
                _ = tokio::signal::ctrl_c() => break,
            },
        };
        let Some(d) = next else {
            bail!("the subscription ended after {seen} message(s)");
        };
        let d = d?;
        if let Some((p, o)) = only {
            if d.info().partition != p || d.info().offset.is_none_or(|off| off < o) {
                // A private subscription: settling skips it for nobody else.
                d.ack().await?;
                continue;
            }
        }
        let m = d.message();
        let payload = String::from_utf8_lossy(m.payload());
        if conn.json {
            let headers: serde_json::Map<String, serde_json::Value> = m
                .headers()
                .iter()
                .map(|(k, v)| (k.to_owned(), json!(v)))
                .collect();
            outln!(
                "{}",
                json!({
                    "topic": d.topic(),
                    "partition": d.info().partition,
                    "offset": d.info().offset,
                    "attempt": d.attempt(),
                    "id": m.id().to_string(),
                    "key": m.key().map(|k| String::from_utf8_lossy(k).into_owned()),
                    "headers": headers,
                    "payload": payload,
                })
            );
        } else {
            let key = m
                .key()
                .map(|k| format!(" key={}", String::from_utf8_lossy(k)))
                .unwrap_or_default();
            outln!(
                "{} [{}@{}]{key} {payload}",
                d.topic(),
                d.info().partition,
                crate::table::opt(d.info().offset)
            );
            if a.headers {
                for (k, v) in m.headers().iter() {
                    outln!("  {k}: {v}");
                }
            }
        }
        seen += 1;
        if a.count == Some(seen) {
            let _ = sub.close().await;
        }
        d.ack().await?;
    }
    let _ = sub.close().await;
    Ok(())
}

/// Says on standard error when `topic` (not a pattern) does not exist:
/// the subscription waits for it, which looks like a hang after a typo.
/// The partition count of `topic` when it exists (`None` for a pattern, or
/// when it cannot be told); notes on standard error when it does not exist.
async fn check_topic(client: &wharf_client::Client, topic: &str) -> Option<u32> {
    if topic.contains(['*', '>']) {
        return None;
    }
    let r = client
        .raw()
        .describe_topic(wharf_client::proto::TopicName {
            name: topic.to_owned(),
        })
        .await;
    match r {
        Ok(info) => u32::try_from(info.into_inner().partitions.len()).ok(),
        Err(s) if s.code() == tonic::Code::NotFound => {
            eprintln!(
                "note: topic {topic} does not exist; waiting for it to be created (`wharf topic create {topic}`) or published to"
            );
            None
        }
        Err(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn from_parses_positions_offsets_and_times() {
        assert_eq!(parse_from("earliest").unwrap(), StartPosition::Earliest);
        assert_eq!(parse_from("42").unwrap(), StartPosition::Offset(42));
        assert_eq!(
            parse_from("@1000").unwrap(),
            StartPosition::Time(Timestamp::from_millis(1000))
        );
        assert_eq!(
            parse_from("1970-01-02T00:00:01Z").unwrap(),
            StartPosition::Time(Timestamp::from_millis(86_401_000))
        );
        assert_eq!(
            parse_from("2026-11-23T18:00:00.5Z").unwrap(),
            StartPosition::Time(Timestamp::from_millis(1_795_456_800_500))
        );
        assert!(parse_from("yesterday").is_err());
        let e = parse_position("--to", "soon", "earliest or latest").unwrap_err();
        assert_eq!(e.to_string(), "--to \"soon\" is not earliest or latest");
        assert_eq!(parse_from_arg("2:15").unwrap(), From::Partition(2, 15));
        assert_eq!(
            parse_from_arg("15").unwrap(),
            From::All(StartPosition::Offset(15))
        );
        assert!(parse_from_arg("2:x").is_err());
    }
}
