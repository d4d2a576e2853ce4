//! `wharf bench`: publish throughput and publish→consume latency against the
//! embedded broker and/or a server, measured in the same run so the remote
//! figure can be read as a ratio of the in-process one.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::{Args, ValueEnum};
use hdrhistogram::Histogram;
use serde_json::json;
use wharf_broker::{Broker, Durability, TopicConfig};
use wharf_client::proto as v1;
use wharf_core::{AckBatch, Backend, Capability, Message, StartPosition, SubscribeOptions};

use crate::Conn;

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum Workload {
    /// Batched publish throughput.
    Publish,
    /// Publish at --rate msgs/s while consuming; publish→consume latency.
    Latency,
    /// Drain a backlog of --count messages (published first, not measured)
    /// with a consumer group of --consumers members taking batches of up to
    /// --batch and acknowledging each batch with one batch ack.
    Consume,
}

#[derive(Args)]
pub(crate) struct BenchArgs {
    /// `embedded` (in-process broker in a temp dir), a `wharf serve` URL, or
    /// (built with `--features adapters`) a nats://, redis://, amqp:// or
    /// postgres:// URL (with `--features kafka` also kafka://, with
    /// `--features sqs` sqs://host:port?region=R, with `--features mqtt`
    /// mqtt://, with `--features pubsub` pubsub://host:port/project), or
    /// `bare+redis://…` (`bare+nats://…`, `bare+amqp://…`,
    /// `bare+postgres://…`, `bare+kafka://…`, `bare+sqs://…`,
    /// `bare+mqtt://…`, `bare+pubsub://…`) for the same load through the
    /// engine's own client (an adapter row is then also printed as a ratio
    /// of its bare row; `bare+nats://…#msg-id` adds the adapter's dedup id
    /// header, `bare+amqp://…#x-max-priority` uses a priority
    /// queue as the adapter does, `bare+kafka://…#detach` copies each
    /// consumed record out of librdkafka as the adapter must); repeat to
    /// compare in one run (ratios are printed
    /// against the first).
    #[arg(long = "backend", default_value = "embedded")]
    backends: Vec<String>,
    #[arg(long, value_enum, default_value = "publish")]
    workload: Workload,
    /// Payload size in bytes.
    #[arg(long, default_value_t = 100)]
    size: usize,
    /// Messages to publish in total (measured).
    #[arg(long, default_value_t = 200_000)]
    count: u64,
    /// Publish load: messages published first, not measured, so the
    /// measured part runs warm (default: a tenth of --count).
    #[arg(long)]
    warmup: Option<u64>,
    /// Messages per publish call.
    #[arg(long, default_value_t = 100)]
    batch: usize,
    /// Concurrent publishers.
    #[arg(long, default_value_t = 4)]
    producers: usize,
    /// Concurrent consumers (latency and consume workloads).
    #[arg(long, default_value_t = 1)]
    consumers: usize,
    /// Target publish rate for the latency workload (msgs/s).
    #[arg(long, default_value_t = 10_000)]
    rate: u64,
    /// Topic durability: always | never | interval:MS.
    #[arg(long, default_value = "always")]
    durability: String,
    /// Dedup window of the benchmark topic in ms; 0 turns dedup off. Default:
    /// the topic default a user gets (120 s), so headline figures include it.
    /// On redis:// it is the adapter's id window (0: `dedup(false)`), on
    /// nats:// the stream's duplicate window (0 keeps the default).
    #[arg(long)]
    dedup_window_ms: Option<u64>,
    /// Partitions of the benchmark topic.
    #[arg(long, default_value_t = 4)]
    partitions: u32,
    /// Latency workload: how the consumer acknowledges — `batch` (one
    /// `AckBatch` per batch taken, the way a consumer keeps up) or `each`
    /// (one `ack` per delivery).
    #[arg(long, value_enum, default_value = "batch")]
    ack: AckMode,
    /// Latency workload: time this many raw `write`+`fdatasync`s of one
    /// tick's bytes in --fsync-dir before each backend's load (0 = skip), so
    /// the latency can be read against the disk's own.
    #[arg(long, default_value_t = 2000)]
    fsync_probe: usize,
    /// Consume workload: make the group (subscribe, then drop the
    /// subscription) before publishing the backlog, so the drain reads
    /// messages routed to a group that existed when they were published
    /// rather than a backlog the new group starts from (on RabbitMQ, copies
    /// into the group's queue, which carry their topic in a header).
    #[arg(long)]
    group_first: bool,
    /// Where the fsync probe writes (put it on the server's data disk).
    #[arg(long, default_value_os_t = std::env::temp_dir())]
    fsync_dir: std::path::PathBuf,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum AckMode {
    /// One `AckBatch` per batch taken.
    Batch,
    /// One `ack` per delivery.
    Each,
}

fn durability(s: &str) -> anyhow::Result<Durability> {
    Ok(match s {
        "always" => Durability::Always,
        "never" => Durability::Never,
        _ => Durability::IntervalMs(
            s.trim_start_matches("interval:")
                .parse()
                .with_context(|| format!("--durability {s:?}"))?,
        ),
    })
}

struct Target {
    label: String,
    /// `None` for a bare-client target (`bare+redis://…`).
    backend: Option<Arc<dyn Backend>>,
    /// The engine's own client, for a `bare+…` target.
    #[cfg(feature = "adapters")]
    bare: Option<crate::adapters_bare::Bare>,
    topic: String,
    _dir: Option<tempfile_dir::Dir>,
    /// What the backend's acknowledgement means, for adapters.
    durability: Option<&'static str>,
    /// The benchmark topic's dedup window as the broker or server reports
    /// it after creating the topic (0 = off; `None` for adapters).
    dedup_window_ms: Option<u64>,
    /// The server that holds the benchmark topic (deleted after the run).
    server: Option<wharf_client::RawClient>,
    #[cfg(feature = "adapters")]
    cleanup: Option<crate::adapters::Cleanup>,
}

mod tempfile_dir {
    //! A directory removed on drop, for the embedded broker's data.
    pub(crate) struct Dir(pub(crate) std::path::PathBuf);
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

async fn open(conn: &Conn, spec: &str, a: &BenchArgs) -> anyhow::Result<Target> {
    // Unique per target and run: two runs started in the same millisecond
    // (or two targets of one run) on a shared service must not share a
    // topic, or one's cleanup deletes the other's data.
    static TARGETS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let topic = format!(
        "bench.t{}-{}-{}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis()),
        std::process::id(),
        TARGETS.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    );
    let mut cfg = TopicConfig::default()
        .partitions(a.partitions)
        .durability(durability(&a.durability)?);
    if let Some(ms) = a.dedup_window_ms {
        cfg = cfg.dedup_window((ms > 0).then(|| Duration::from_millis(ms)));
    }
    if spec == "embedded" {
        let dir =
            std::env::temp_dir().join(format!("wharf-bench-{}-{}", std::process::id(), topic));
        let broker = Broker::open(&dir).await?;
        broker.create_topic(&topic, cfg).await?;
        let dedup_window_ms = broker
            .topics()
            .into_iter()
            .find(|i| i.name == topic)
            .map(|i| i.config.dedup_window_ms.unwrap_or(0));
        return Ok(Target {
            dedup_window_ms,
            label: "embedded".into(),
            backend: Some(Arc::new(broker)),
            #[cfg(feature = "adapters")]
            bare: None,
            topic,
            _dir: Some(tempfile_dir::Dir(dir)),
            durability: None,
            server: None,
            #[cfg(feature = "adapters")]
            cleanup: None,
        });
    }
    #[cfg(feature = "adapters")]
    if let Some((bare, durability)) = crate::adapters_bare::open(spec, &topic, a.partitions).await?
    {
        announce(spec, &topic);
        return Ok(Target {
            label: spec.to_owned(),
            backend: None,
            bare: Some(bare),
            topic,
            _dir: None,
            durability: Some(durability),
            dedup_window_ms: None,
            server: None,
            cleanup: None,
        });
    }
    #[cfg(feature = "adapters")]
    if let Some((backend, cleanup, durability)) =
        crate::adapters::open(spec, &topic, a.dedup_window_ms, a.partitions).await?
    {
        announce(spec, &topic);
        if let Err(e) = backend.ensure_topic(&topic).await {
            cleanup.run().await;
            return Err(e.into());
        }
        return Ok(Target {
            label: spec.to_owned(),
            backend: Some(backend),
            bare: None,
            topic,
            _dir: None,
            durability: Some(durability),
            dedup_window_ms: None,
            server: None,
            cleanup: Some(cleanup),
        });
    }
    #[cfg(not(feature = "adapters"))]
    if let Some((scheme, _)) = spec.split_once("://") {
        if matches!(
            scheme.trim_start_matches("bare+"),
            "nats" | "redis" | "amqp" | "postgres" | "postgresql"
        ) {
            anyhow::bail!(
                "--backend {scheme}://… needs a wharf built with the `adapters` feature: cargo build --release -p wharf-cli --features adapters"
            );
        }
        if scheme.trim_start_matches("bare+") == "mqtt" {
            anyhow::bail!(
                "--backend {scheme}://… needs a wharf built with the `mqtt` feature: cargo build --release -p wharf-cli --features mqtt"
            );
        }
        if scheme.trim_start_matches("bare+") == "kafka" {
            anyhow::bail!(
                "--backend {scheme}://… needs a wharf built with the `kafka` feature: cargo build --release -p wharf-cli --features kafka"
            );
        }
        if scheme.trim_start_matches("bare+") == "sqs" {
            anyhow::bail!(
                "--backend {scheme}://… needs a wharf built with the `sqs` feature: cargo build --release -p wharf-cli --features sqs"
            );
        }
        if scheme.trim_start_matches("bare+") == "pubsub" {
            anyhow::bail!(
                "--backend {scheme}://… needs a wharf built with the `pubsub` feature: cargo build --release -p wharf-cli --features pubsub"
            );
        }
    }
    let ca = match &conn.ca_cert {
        Some(p) => Some(std::fs::read(p).with_context(|| format!("cannot read {}", p.display()))?),
        None => None,
    };
    let client = wharf_client::Client::connect_with(spec, conn.token.as_deref(), ca.as_deref())
        .await
        .map_err(|e| crate::connect_error(spec, e))?;
    let created = client
        .raw()
        .create_topic(v1::CreateTopicRequest {
            name: topic.clone(),
            partitions: Some(a.partitions),
            durability: Some(a.durability.clone()),
            dedup_window_ms: a.dedup_window_ms,
            ..Default::default()
        })
        .await
        .map_err(crate::admin::status_err)?
        .into_inner();
    Ok(Target {
        dedup_window_ms: created.config.map(|c| c.dedup_window_ms.unwrap_or(0)),
        label: spec.to_owned(),
        server: Some(client.raw()),
        backend: Some(Arc::new(client)),
        #[cfg(feature = "adapters")]
        bare: None,
        topic,
        _dir: None,
        durability: None,
        #[cfg(feature = "adapters")]
        cleanup: None,
    })
}

/// Names on stderr what a run creates on a shared service (an adapter's
/// namespace is the topic with `.`/`-` made `_`), so it can be found if even
/// the cleanup fails.
#[cfg(feature = "adapters")]
fn announce(spec: &str, topic: &str) {
    eprintln!("wharf bench: {spec}: topic {topic} (deleted after the run, also after a failure or an interrupt)");
}

fn pct(h: &Histogram<u64>, q: f64) -> f64 {
    h.value_at_quantile(q) as f64 / 1000.0
}

/// CPU seconds a wharf server has used so far (its `Info` call), if the
/// target is one and its platform reports it.
async fn server_cpu(t: &Target) -> Option<f64> {
    let mut server = t.server.clone()?;
    server
        .info(v1::InfoRequest {})
        .await
        .ok()?
        .into_inner()
        .cpu_seconds
}

/// CPU time used during a load: this process's (the producers, and for
/// `embedded` the broker too) and the server's, if known.
struct CpuMeter {
    bench: Option<Duration>,
    server: Option<f64>,
}

impl CpuMeter {
    async fn start(t: &Target) -> CpuMeter {
        CpuMeter {
            bench: wharf_server::process::cpu_time(),
            server: server_cpu(t).await,
        }
    }

    /// `{"bench_seconds", "server_seconds", "us_per_msg"}` since `start`.
    async fn finish(self, t: &Target, messages: u64) -> serde_json::Value {
        let server = match (self.server, server_cpu(t).await) {
            (Some(a), Some(b)) => Some(b - a),
            _ => None,
        };
        let bench = self
            .bench
            .zip(wharf_server::process::cpu_time())
            .map(|(a, b)| b.saturating_sub(a).as_secs_f64());
        // Per message only when every process doing the work is counted.
        let whole = match (bench, t.server.is_some(), server) {
            (Some(b), false, _) if t.durability.is_none() => Some(b),
            (Some(b), true, Some(s)) => Some(b + s),
            _ => None,
        };
        json!({
            "bench_seconds": bench,
            "server_seconds": server,
            "us_per_msg": whole.map(|w| w * 1e6 / messages.max(1) as f64),
        })
    }
}

/// `per` messages from each of `--producers` concurrent publishers in
/// batches of `--batch`; the batch round-trip latencies. `done` counts the
/// messages published so far (for the progress bar).
async fn produce(
    t: &Target,
    a: &BenchArgs,
    per: u64,
    done: &Arc<AtomicU64>,
) -> anyhow::Result<Histogram<u64>> {
    // A JoinSet, so a load dropped on an interrupt stops its producers
    // before the cleanup deletes what they publish into.
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..a.producers.max(1) {
        let (b, topic, batch, size, done) = (
            t.backend.clone(),
            t.topic.clone(),
            a.batch.max(1),
            a.size,
            done.clone(),
        );
        #[cfg(feature = "adapters")]
        let bare = t.bare.clone();
        tasks.spawn(async move {
            let payload = bytes::Bytes::from(vec![b'x'; size]);
            let mut h = Histogram::<u64>::new(3).expect("valid histogram");
            let mut sent = 0u64;
            while sent < per {
                let n = (per - sent).min(batch as u64) as usize;
                let t0 = Instant::now();
                match &b {
                    Some(b) => {
                        let msgs: Vec<Message> =
                            (0..n).map(|_| Message::new(payload.clone())).collect();
                        let t0 = Instant::now();
                        b.publish_batch(&topic, msgs).await?;
                        h.record(t0.elapsed().as_micros() as u64).ok();
                    }
                    None => {
                        #[cfg(feature = "adapters")]
                        if let Some(bare) = &bare {
                            bare.publish(n, &payload).await?;
                        }
                        h.record(t0.elapsed().as_micros() as u64).ok();
                    }
                }
                sent += n as u64;
                done.fetch_add(n as u64, Ordering::Relaxed);
            }
            Ok::<_, anyhow::Error>(h)
        });
    }
    let mut h = Histogram::<u64>::new(3).expect("valid histogram");
    while let Some(task) = tasks.join_next().await {
        h.add(task??).ok();
    }
    Ok(h)
}

async fn publish_load(t: &Target, a: &BenchArgs) -> anyhow::Result<serde_json::Value> {
    let producers = a.producers.max(1) as u64;
    let per = a.count / producers;
    // Warm-up, not measured: the same load for a tenth of the messages, so
    // the measured part finds threads started, buffers allocated and
    // connections open, as a long-running service would (otherwise the
    // first backend of a run pays for that and the later ones do not).
    let warmup = a.warmup.unwrap_or(a.count / 10) / producers;
    let bar = indicatif::ProgressBar::new((warmup + per) * producers);
    let done = Arc::new(AtomicU64::new(0));
    let ticker = {
        let (bar, done) = (bar.clone(), done.clone());
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(200)).await;
                bar.set_position(done.load(Ordering::Relaxed));
            }
        })
    };
    if warmup > 0 {
        produce(t, a, warmup, &done).await?;
    }
    let cpu = CpuMeter::start(t).await;
    let started = Instant::now();
    let h = produce(t, a, per, &done).await;
    let secs = started.elapsed().as_secs_f64();
    ticker.abort();
    bar.finish_and_clear();
    let h = h?;
    let total = per * producers;
    let cpu = cpu.finish(t, total).await;
    Ok(json!({
        "cpu": cpu,
        "backend": t.label,
        "workload": "publish",
        "messages": total,
        "warmup_messages": warmup * producers,
        "seconds": secs,
        "msgs_per_sec": total as f64 / secs,
        "mb_per_sec": (total as f64 * a.size as f64) / secs / 1e6,
        "batch_latency_ms": {"p50": pct(&h, 0.5), "p99": pct(&h, 0.99), "p999": pct(&h, 0.999), "max": h.max() as f64 / 1000.0},
    }))
}

/// The consume workload: `--count` messages published first (not measured,
/// by the same producers as the publish load), then drained by a group of
/// `--consumers` members, each taking batches of up to `--batch` with
/// `next_batch` and acknowledging every batch with one `AckBatch` — the way
/// a consumer catching up on a backlog runs. The drain is timed from the
/// first delivery: the group's join and first fetch (for Kafka, a group
/// rebalance, the committed-offset lookup and a fetch: 0.1–0.2 s on the test
/// broker) are a start-up cost printed apart as `first_delivery_ms`, as the
/// bare Kafka loop joins and reads its first record before its clock starts.
/// Subscribing is not timed either but printed as `subscribe_ms`: for
/// RabbitMQ, a group made after its backlog gets a copy of the backlog
/// there (seconds for 100,000 messages), which the drain does not show.
async fn consume_load(t: &Target, a: &BenchArgs) -> anyhow::Result<serde_json::Value> {
    let producers = a.producers.max(1) as u64;
    let per = a.count / producers;
    let total = per * producers;
    // The backlog is published before the group subscribes: a backend that
    // keeps nothing for a group that does not exist yet would wait for ever.
    if let Some(b) = &t.backend {
        if !b.capabilities().contains(Capability::Retention) {
            anyhow::bail!(
                "{}: the consume workload publishes its backlog before subscribing, which needs \
                 retention, and {} keeps nothing for a group that does not exist yet",
                t.label,
                b.name()
            );
        }
    }
    let done = Arc::new(AtomicU64::new(0));
    let group = format!("bench-consume-{}", std::process::id());
    if let (true, Some(b)) = (a.group_first, &t.backend) {
        let first = b
            .subscribe(
                SubscribeOptions::new(t.topic.clone())
                    .group(group.clone())
                    .start(StartPosition::Earliest),
            )
            .await?;
        drop(first);
    }
    produce(t, a, per, &done).await?;
    let taken = Arc::new(AtomicU64::new(0));
    #[cfg(feature = "adapters")]
    if let Some(bare) = &t.bare {
        return consume_bare(t, a, bare, &group, total).await;
    }
    let backend = t.backend.as_ref().context("no backend")?;
    let subscribing = Instant::now();
    let mut subs = Vec::new();
    for _ in 0..a.consumers.max(1) {
        subs.push(
            backend
                .subscribe(
                    SubscribeOptions::new(t.topic.clone())
                        .group(group.clone())
                        .start(StartPosition::Earliest)
                        .max_in_flight(a.batch.max(1) * 4),
                )
                .await?,
        );
    }
    let subscribe_ms = subscribing.elapsed().as_secs_f64() * 1e3;
    let cpu = CpuMeter::start(t).await;
    let started = Instant::now();
    let first = Arc::new(std::sync::OnceLock::<Instant>::new());
    let mut tasks = tokio::task::JoinSet::new();
    for mut sub in subs {
        let (taken, batch, first) = (taken.clone(), a.batch.max(1), first.clone());
        tasks.spawn(async move {
            let mut buf = Vec::with_capacity(batch);
            let mut acks = AckBatch::new();
            while taken.load(Ordering::Relaxed) < total {
                buf.clear();
                let got = sub.next_batch(batch, &mut buf).await?;
                first.get_or_init(Instant::now);
                if got == 0 {
                    anyhow::bail!(
                        "the subscription ended after {} messages",
                        taken.load(Ordering::Relaxed)
                    );
                }
                for d in buf.drain(..) {
                    acks.push(d);
                }
                let failed = acks.flush().await;
                anyhow::ensure!(failed.is_empty(), "{} acks failed", failed.len());
                taken.fetch_add(got as u64, Ordering::Relaxed);
            }
            Ok(())
        });
    }
    // The member that acknowledges the last message ends; the others are
    // waiting for more and are stopped (nothing of theirs is unsettled).
    let mut stopping = false;
    while let Some(r) = tasks.join_next().await {
        match r {
            Ok(r) => r?,
            Err(e) if e.is_cancelled() => {}
            Err(e) => return Err(e.into()),
        }
        if !stopping && taken.load(Ordering::Relaxed) >= total {
            stopping = true;
            tasks.abort_all();
        }
    }
    let from = first.get().copied().unwrap_or(started);
    let secs = from.elapsed().as_secs_f64();
    let mut row = consume_result(t, a, cpu, taken.load(Ordering::Relaxed), total, secs).await?;
    row["first_delivery_ms"] = json!(from.duration_since(started).as_secs_f64() * 1e3);
    row["subscribe_ms"] = json!(subscribe_ms);
    Ok(row)
}

/// The consume workload's result row, once `consumed` of `total` messages
/// were drained in `secs`; an error unless every message was.
async fn consume_result(
    t: &Target,
    a: &BenchArgs,
    cpu: CpuMeter,
    consumed: u64,
    total: u64,
    secs: f64,
) -> anyhow::Result<serde_json::Value> {
    anyhow::ensure!(consumed == total, "drained {consumed} of {total}");
    let cpu = cpu.finish(t, consumed).await;
    Ok(json!({
        "cpu": cpu,
        "backend": t.label,
        "workload": "consume",
        "messages": consumed,
        "seconds": secs,
        "msgs_per_sec": consumed as f64 / secs,
        "mb_per_sec": (consumed as f64 * a.size as f64) / secs / 1e6,
    }))
}

/// The consume workload through an engine's own client: `--consumers`
/// members of one group drain the backlog of `total`, each acknowledging
/// every batch it takes with one command.
#[cfg(feature = "adapters")]
async fn consume_bare(
    t: &Target,
    a: &BenchArgs,
    bare: &crate::adapters_bare::Bare,
    group: &str,
    total: u64,
) -> anyhow::Result<serde_json::Value> {
    let subscribing = Instant::now();
    bare.create_group(group).await?;
    let subscribe_ms = subscribing.elapsed().as_secs_f64() * 1e3;
    let taken = Arc::new(AtomicU64::new(0));
    let cpu = CpuMeter::start(t).await;
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..a.consumers.max(1) {
        let (bare, group, taken, batch) = (
            bare.clone(),
            group.to_owned(),
            taken.clone(),
            a.batch.max(1),
        );
        tasks.spawn(async move {
            bare.consume(&group, i, batch, |n| {
                taken.fetch_add(n, Ordering::Relaxed) + n >= total
            })
            .await
        });
    }
    // A member waiting for more (a push consumer) is stopped once the whole
    // backlog was acknowledged.
    let mut secs = None;
    while let Some(r) = tasks.join_next().await {
        match r {
            Ok(r) => {
                r?;
            }
            Err(e) if e.is_cancelled() => {}
            Err(e) => return Err(e.into()),
        }
        if secs.is_none() && taken.load(Ordering::Relaxed) >= total {
            secs = Some(started.elapsed().as_secs_f64());
            tasks.abort_all();
        }
    }
    let secs = secs.unwrap_or_else(|| started.elapsed().as_secs_f64());
    let mut row = consume_result(t, a, cpu, taken.load(Ordering::Relaxed), total, secs).await?;
    row["subscribe_ms"] = json!(subscribe_ms);
    Ok(row)
}

/// Raw `fdatasync` latency of the disk holding `dir`, for context next to
/// the publish→consume figures: `n` times, append `size` bytes to a file and
/// `fdatasync` it (timed together, as a log append under `Always`), one per
/// millisecond like the latency workload's ticks.
fn fsync_probe(dir: &std::path::Path, n: usize, size: usize) -> std::io::Result<Histogram<u64>> {
    use std::io::Write as _;
    let path = dir.join(format!("wharf-bench-fsync-{}", std::process::id()));
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)?;
    let buf = vec![b'x'; size.max(1)];
    let mut h = Histogram::<u64>::new(3).expect("valid histogram");
    let result = (|| {
        for _ in 0..n {
            let t0 = Instant::now();
            f.write_all(&buf)?;
            f.sync_data()?;
            h.record(t0.elapsed().as_micros() as u64).ok();
            std::thread::sleep(Duration::from_millis(1));
        }
        Ok(())
    })();
    drop(f);
    let _ = std::fs::remove_file(&path);
    result.map(|()| h)
}

fn quantiles(h: &Histogram<u64>) -> serde_json::Value {
    json!({"p50": pct(h, 0.5), "p99": pct(h, 0.99), "p999": pct(h, 0.999), "max": h.max() as f64 / 1000.0})
}

async fn latency_load(t: &Target, a: &BenchArgs) -> anyhow::Result<serde_json::Value> {
    let Some(backend) = &t.backend else {
        anyhow::bail!(
            "{}: a bare client runs the publish and consume workloads only",
            t.label
        );
    };
    // The disk's own floor, measured right before this backend's load.
    let fsync = if a.fsync_probe > 0 {
        let (dir, n, size) = (
            a.fsync_dir.clone(),
            a.fsync_probe,
            a.size * (a.rate / 1000).max(1) as usize,
        );
        Some(tokio::task::spawn_blocking(move || fsync_probe(&dir, n, size)).await??)
    } else {
        None
    };
    let origin = Instant::now();
    let mut consumers = Vec::new();
    for _ in 0..a.consumers.max(1) {
        let sub = backend
            .subscribe(
                SubscribeOptions::new(&t.topic)
                    .group("bench")
                    .start(StartPosition::Earliest)
                    .max_in_flight(1024),
            )
            .await?;
        consumers.push(sub);
    }
    let received = Arc::new(AtomicU64::new(0));
    let total = a.count;
    let ack_each = a.ack == AckMode::Each;
    let mut readers = Vec::new();
    for mut sub in consumers {
        let received = received.clone();
        readers.push(tokio::spawn(async move {
            let mut h = Histogram::<u64>::new(3).expect("valid histogram");
            let mut acks = tokio::task::JoinSet::new();
            let mut buf = Vec::with_capacity(256);
            let join_err = |e: tokio::task::JoinError| wharf_core::Error::Backend {
                backend: "bench",
                source: e.into(),
            };
            while received.load(Ordering::Relaxed) < total {
                let got =
                    tokio::time::timeout(Duration::from_secs(5), sub.next_batch(256, &mut buf))
                        .await;
                let n = match got {
                    Ok(Ok(0)) | Err(_) => break,
                    Ok(Ok(n)) => n,
                    Ok(Err(e)) => return Err(e),
                };
                let now = origin.elapsed().as_micros() as u64;
                let mut batch = AckBatch::new();
                for d in buf.drain(..) {
                    let p = d.message().payload();
                    if p.len() >= 8 {
                        let sent = u64::from_le_bytes(p[..8].try_into().expect("8 bytes"));
                        h.record(now.saturating_sub(sent)).ok();
                    }
                    if ack_each {
                        acks.spawn(async move { d.ack().await });
                    } else {
                        batch.push(d);
                    }
                }
                // Settle without stalling the read loop (a remote ack is a
                // round trip); the latency measured is publish → delivery.
                if !batch.is_empty() {
                    acks.spawn(async move {
                        match batch.flush().await.into_iter().next() {
                            Some((_, e)) => Err(e),
                            None => Ok(()),
                        }
                    });
                }
                while let Some(r) = acks.try_join_next() {
                    r.map_err(join_err)??;
                }
                received.fetch_add(n as u64, Ordering::Relaxed);
            }
            while let Some(r) = acks.join_next().await {
                r.map_err(join_err)??;
            }
            Ok::<_, wharf_core::Error>(h)
        }));
    }
    // Publish `rate` msgs/s as one small batch per millisecond tick; each
    // payload starts with its creation time, and each batch's publish→ack
    // time (which includes the fsync under `always`) is recorded too.
    let per_tick = (a.rate / 1000).max(1);
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let bar = indicatif::ProgressBar::new(total);
    let mut sent = 0u64;
    let mut inflight = tokio::task::JoinSet::new();
    let mut acked = Histogram::<u64>::new(3).expect("valid histogram");
    let started = Instant::now();
    while sent < total {
        tick.tick().await;
        let n = per_tick.min(total - sent);
        let created = origin.elapsed().as_micros() as u64;
        let msgs: Vec<Message> = (0..n)
            .map(|_| {
                let mut p = vec![b'x'; a.size.max(8)];
                p[..8].copy_from_slice(&created.to_le_bytes());
                Message::new(p)
            })
            .collect();
        let (b, topic) = (backend.clone(), t.topic.clone());
        inflight.spawn(async move {
            b.publish_batch(&topic, msgs).await?;
            Ok::<_, wharf_core::Error>(
                (origin.elapsed().as_micros() as u64).saturating_sub(created),
            )
        });
        while let Some(r) = inflight.try_join_next() {
            acked.record(r??).ok();
        }
        sent += n;
        bar.set_position(received.load(Ordering::Relaxed));
    }
    while let Some(r) = inflight.join_next().await {
        acked.record(r??).ok();
    }
    let publish_secs = started.elapsed().as_secs_f64();
    let mut h = Histogram::<u64>::new(3).expect("valid histogram");
    for r in readers {
        h.add(r.await??).ok();
    }
    bar.finish_and_clear();
    let mut out = json!({
        "backend": t.label,
        "workload": "latency",
        "messages": h.len(),
        "offered_msgs_per_sec": total as f64 / publish_secs,
        "e2e_latency_ms": quantiles(&h),
        "publish_ack_ms": quantiles(&acked),
    });
    if let Some(f) = fsync {
        out["raw_fdatasync_ms"] = quantiles(&f);
    }
    Ok(out)
}

/// Prints a result's CPU per message, when every process doing the work was counted.
fn cpu_line(r: &serde_json::Value) {
    let c = &r["cpu"];
    if let Some(us) = c["us_per_msg"].as_f64() {
        let split = match c["server_seconds"].as_f64() {
            Some(s) => format!(
                "client {:.2} s + server {s:.2} s",
                c["bench_seconds"].as_f64().unwrap_or(0.0)
            ),
            None => format!("{:.2} s", c["bench_seconds"].as_f64().unwrap_or(0.0)),
        };
        outln!(
            "{:<28} CPU {us:.3} µs/msg ({split})  ratio {:>5.2}",
            "",
            c["ratio_to_first"].as_f64().unwrap_or(1.0),
        );
    }
}

/// Sets `ratio_to_first` beside `field` of the object at JSON pointer
/// `parent` in each result: its value over the first result's.
fn ratio_to_first(results: &mut [serde_json::Value], parent: &str, field: &str) {
    let value = |r: &serde_json::Value| r.pointer(parent)?.get(field)?.as_f64();
    let Some(base) = results.first().and_then(value) else {
        return;
    };
    for r in results {
        if let Some(v) = value(r) {
            if let Some(obj) = r.pointer_mut(parent) {
                obj["ratio_to_first"] = json!(v / base);
            }
        }
    }
}

/// Sets `ratio_to_bare` (its msgs/s over the bare row's) and `bare_baseline`
/// on each result whose engine also ran bare in this run: the row of
/// `redis://X` against the row of `bare+redis://X`.
fn ratio_to_bare(results: &mut [serde_json::Value]) {
    let bare: Vec<(String, f64)> = results
        .iter()
        .filter_map(|r| {
            let label = r["backend"].as_str()?.strip_prefix("bare+")?;
            Some((label.to_owned(), r["msgs_per_sec"].as_f64()?))
        })
        .collect();
    for r in results {
        let Some(label) = r["backend"].as_str().map(str::to_owned) else {
            continue;
        };
        if let (Some((_, base)), Some(v)) = (
            bare.iter().find(|(l, _)| *l == label),
            r["msgs_per_sec"].as_f64(),
        ) {
            r["ratio_to_bare"] = json!(v / base);
            r["bare_baseline"] = json!(format!("bare+{label}"));
        }
    }
}

/// SIGINT (Ctrl-C) and SIGTERM, caught from the start of the run, so one
/// arriving at any point after that ends the load and runs the cleanup.
struct Interrupts {
    #[cfg(unix)]
    int: tokio::signal::unix::Signal,
    #[cfg(unix)]
    term: tokio::signal::unix::Signal,
}

impl Interrupts {
    fn catch() -> anyhow::Result<Interrupts> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            Ok(Interrupts {
                int: signal(SignalKind::interrupt())?,
                term: signal(SignalKind::terminate())?,
            })
        }
        #[cfg(not(unix))]
        Ok(Interrupts {})
    }

    /// Resolves with the name of the next signal caught.
    async fn recv(&mut self) -> &'static str {
        #[cfg(unix)]
        {
            tokio::select! {
                _ = self.int.recv() => "SIGINT",
                _ = self.term.recv() => "SIGTERM",
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
            "SIGINT"
        }
    }
}

/// Deletes what the run created on `t`'s server or service (the adapter's
/// namespace, the bare client's stream/queue/table/key, the server's
/// topic), whether the load succeeded or not, then closes the backend.
async fn clean_up(t: &mut Target) -> anyhow::Result<()> {
    #[cfg(feature = "adapters")]
    if let Some(c) = t.cleanup.take() {
        c.run().await;
    }
    #[cfg(feature = "adapters")]
    if let Some(bare) = &t.bare {
        bare.cleanup().await;
    }
    if let Some(mut server) = t.server.take() {
        let name = v1::TopicName {
            name: t.topic.clone(),
        };
        if let Err(e) = server.delete_topic(name).await {
            eprintln!(
                "warning: cannot delete the benchmark topic {}: {}",
                t.topic,
                e.message()
            );
        }
    }
    if let Some(b) = &t.backend {
        b.close().await?;
    }
    Ok(())
}

pub(crate) async fn run(conn: &Conn, a: BenchArgs) -> anyhow::Result<()> {
    let mut results = Vec::new();
    let mut interrupts = Interrupts::catch()?;
    for spec in &a.backends {
        let mut t = open(conn, spec, &a).await?;
        let load = async {
            match a.workload {
                Workload::Publish => publish_load(&t, &a).await,
                Workload::Latency => latency_load(&t, &a).await,
                Workload::Consume => consume_load(&t, &a).await,
            }
        };
        // An interrupt ends the load (dropping it stops its tasks), then
        // cleans up like a failure does: the shared servers keep nothing.
        let r = tokio::select! {
            r = load => r,
            signal = interrupts.recv() => Err(anyhow::anyhow!("interrupted by {signal}")),
        };
        let closed = clean_up(&mut t).await;
        let mut r = r?;
        closed?;
        if let Some(d) = t.durability {
            r["durability"] = json!(d);
        }
        if let Some(w) = t.dedup_window_ms {
            r["dedup_window_ms"] = json!(w);
        }
        #[cfg(feature = "adapters")]
        if t.bare.is_some() {
            r["bare"] = json!(true);
        }
        results.push(r);
    }
    ratio_to_first(&mut results, "", "msgs_per_sec");
    ratio_to_bare(&mut results);
    ratio_to_first(&mut results, "/cpu", "us_per_msg");
    if conn.json {
        outln!("{}", serde_json::Value::Array(results));
        return Ok(());
    }
    let dedup = match a.dedup_window_ms {
        Some(0) => "off".to_owned(),
        Some(ms) => format!("{ms} ms"),
        None => match TopicConfig::default().dedup_window_ms {
            Some(ms) => format!("{} s (the default)", ms / 1000),
            None => "off (the default)".to_owned(),
        },
    };
    outln!(
        "topic: {} partitions, durability {}, dedup window {dedup}",
        a.partitions,
        a.durability
    );
    for r in &results {
        if let Some(d) = r["durability"].as_str() {
            outln!("{:<28} ({d})", r["backend"].as_str().unwrap_or("?"));
        }
        if let Some(x) = r["ratio_to_bare"].as_f64() {
            outln!(
                "{:<28} {x:.2} of {} in this run",
                r["backend"].as_str().unwrap_or("?"),
                r["bare_baseline"].as_str().unwrap_or("?"),
            );
        }
        match a.workload {
            Workload::Consume => {
                outln!(
                    "{:<28} {:>10.0} msgs/s {:>8.1} MB/s  ratio {:>5.2}  (drained {} msgs with batch acks)",
                    r["backend"].as_str().unwrap_or("?"),
                    r["msgs_per_sec"].as_f64().unwrap_or(0.0),
                    r["mb_per_sec"].as_f64().unwrap_or(0.0),
                    r["ratio_to_first"].as_f64().unwrap_or(1.0),
                    r["messages"],
                );
                if let Some(ms) = r["subscribe_ms"].as_f64() {
                    outln!(
                        "{:<28} subscribing took {ms:.1} ms (not in the rate){}",
                        r["backend"].as_str().unwrap_or("?"),
                        r["first_delivery_ms"]
                            .as_f64()
                            .map(|f| format!(", then the first delivery {f:.1} ms"))
                            .unwrap_or_default(),
                    );
                }
                cpu_line(r);
            }
            Workload::Publish => {
                outln!(
                    "{:<28} {:>10.0} msgs/s {:>8.1} MB/s  ratio {:>5.2}  batch p50 {:.2} ms p99 {:.2} ms p99.9 {:.2} ms",
                    r["backend"].as_str().unwrap_or("?"),
                    r["msgs_per_sec"].as_f64().unwrap_or(0.0),
                    r["mb_per_sec"].as_f64().unwrap_or(0.0),
                    r["ratio_to_first"].as_f64().unwrap_or(1.0),
                    r["batch_latency_ms"]["p50"].as_f64().unwrap_or(0.0),
                    r["batch_latency_ms"]["p99"].as_f64().unwrap_or(0.0),
                    r["batch_latency_ms"]["p999"].as_f64().unwrap_or(0.0),
                );
                cpu_line(r);
            }
            Workload::Latency => {
                let q = |k: &str, p: &str| r[k][p].as_f64().unwrap_or(0.0);
                outln!(
                    "{:<28} {:>8.0} msgs/s offered  e2e p50 {:.2} ms p99 {:.2} ms p99.9 {:.2} ms max {:.2} ms ({} msgs)",
                    r["backend"].as_str().unwrap_or("?"),
                    r["offered_msgs_per_sec"].as_f64().unwrap_or(0.0),
                    q("e2e_latency_ms", "p50"),
                    q("e2e_latency_ms", "p99"),
                    q("e2e_latency_ms", "p999"),
                    q("e2e_latency_ms", "max"),
                    r["messages"],
                );
                outln!(
                    "{:<28} publish→ack p50 {:.2} ms p99 {:.2} ms",
                    "",
                    q("publish_ack_ms", "p50"),
                    q("publish_ack_ms", "p99"),
                );
                if r.get("raw_fdatasync_ms").is_some() {
                    outln!(
                        "{:<28} raw fdatasync (same disk, just before) p50 {:.2} ms p99 {:.2} ms p99.9 {:.2} ms",
                        "",
                        q("raw_fdatasync_ms", "p50"),
                        q("raw_fdatasync_ms", "p99"),
                        q("raw_fdatasync_ms", "p999"),
                    );
                }
            }
        }
    }
    Ok(())
}
