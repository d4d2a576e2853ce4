//! `wharf bench --backend bare+redis://…` (cargo feature `adapters`): the
//! same load as the adapter row, through the engine's own Rust client with
//! no Wharf in between, so each adapter's figure reads as a ratio of what
//! its engine does on this machine in the same run.
//!
//! What each bare form does, and what its acknowledgement means (the same
//! as the adapter's for the same server):
//!
//! | form | publish (one batch of `--batch`) | consume-with-ack (one group) |
//! |---|---|---|
//! | `bare+redis://…` | one pipeline of `XADD <key> MAXLEN ~ 1000000 * p <payload>` on one multiplexed connection (the adapter's default trim) | `XREADGROUP … COUNT <batch> STREAMS <key> >` then one `XACK <key> <group> <ids…>` per batch |
//! | `bare+nats://…` | a JetStream publish per message into a file-store stream of its own (as the adapter's), every PubAck future of the batch awaited after all are sent | a durable pull consumer (explicit ack): `fetch` of `<batch>`, a `+ACK` per message (JetStream has no multi-message ack) |
//! | `bare+postgres://…` | one `INSERT … SELECT * FROM UNNEST($1::bytea[])` per batch into a table `(seq bigserial primary key, payload bytea, leased_until timestamptz)`, autocommit | claim: `UPDATE … SET leased_until = now() + 30 s WHERE seq IN (SELECT … ORDER BY seq LIMIT <batch> FOR UPDATE SKIP LOCKED) RETURNING`, then ack: one `DELETE … WHERE seq = ANY($1)` per batch |
//! | `bare+kafka://…` (feature `kafka`) | rdkafka alone: a `FutureProducer` with the adapter's settings (`acks=all`, `enable.idempotence=true`, `compression.type=lz4`, `linger.ms=5`, librdkafka's in-flight window of 5 requests per connection, which idempotence keeps), a record per message without a key into a topic of `--partitions`, every delivery future of the batch awaited after all are sent | a `StreamConsumer` per member in one group (`enable.auto.commit=false`, `auto.offset.reset=earliest`, `fetch.queue.backoff.ms=10` as the adapter; the first member joins and reads its first record before the timed drain, as the adapter's subscription is made and starts fetching before it): `recv` one record, take what has already arrived up to `<batch>`, then one synchronous commit of the batch's next offsets per partition |
//! | `bare+sqs://…` (feature `sqs`) | aws-sdk-sqs alone (the client `wharf_sqs` builds for the URL, no Wharf encoding: the payload is the body, no attributes): `SendMessageBatch` per 10 messages, one call after another, into a queue of its own | `ReceiveMessage` of up to min(`<batch>`, 10) with the URL's long-poll wait, then one `DeleteMessageBatch` per receive |
//! | `bare+mqtt://…` (feature `mqtt`) | rumqttc alone, MQTT 5: a QoS 1 publish per message on one connection with the adapter's in-flight window (256 publishes awaiting their PUBACK), then a wait until the connection has counted as many PUBACKs as publishes were queued up to the batch's last (one wake-up per batch; with several producers a batch may also wait for another's publishes queued before its last) | — (MQTT keeps nothing for a group that does not exist yet, and the consume workload publishes its backlog first) |
//! | `bare+pubsub://…` (feature `pubsub`) | gcloud-pubsub alone: its `Publisher` (3 workers, bundles of `<batch>`, so one `Publish` request per batch as the adapter's) into a topic with the adapter's 7-day retention, every awaiter of the batch awaited after all are queued | its high-level subscriber (one StreamingPull per member, `max_outstanding_messages` 4 × `<batch>` as the adapter's `max_in_flight`) on a subscription with message ordering as the adapter's (no dead-letter policy): wait for one message, take what has already arrived up to `<batch>`, then one `Acknowledge` of the batch's ack ids |
//! | `bare+amqp://…` | a persistent (`delivery_mode` 2) `basic.publish` per message to a durable queue through the default exchange, on one confirm-mode channel; every confirm of the batch awaited after all are sent | `basic.qos` of 4 × `<batch>`, `basic.consume`, one `basic.ack` with `multiple` per batch taken |
//!
//! Two variants isolate what an adapter's promise costs (their rows are not
//! paired with an adapter row; compare by hand): `bare+nats://…#msg-id`
//! publishes each message with a unique `Nats-Msg-Id` (JetStream's dedup
//! index, as the adapter's, which sends no other header for a message whose
//! timestamp is the time in its id);
//! `bare+amqp://…#x-max-priority` declares its queue with `x-max-priority = 9`
//! (a priority queue, as the adapter's with `amqp://…#priorities`); `bare+kafka://…#detach`
//! copies each record it consumes out of librdkafka (rdkafka's `detach`:
//! payload, key, headers), which any consumer keeping a record past the next
//! poll or handing it to another task must do, as the adapter does for
//! every delivery.
//!
//! The bare message carries the payload only; the adapter's also carries the
//! message id and timestamp (about 50 bytes more), headers, and the dedup
//! work its backend promises — part of what the adapter costs.

use anyhow::Context as _;
use async_nats::jetstream;
use bytes::Bytes;
use futures_util::StreamExt as _;
use redis::aio::MultiplexedConnection;
use redis::Value;

/// The adapter's default `MAXLEN ~` (see `wharf_redis::RedisConfig::max_len`).
const REDIS_MAX_LEN: u64 = 1_000_000;

/// A bare-client target.
#[derive(Clone)]
pub(crate) enum Bare {
    Redis {
        conn: MultiplexedConnection,
        key: String,
    },
    Nats {
        js: jetstream::Context,
        stream: String,
        subject: String,
        /// `#msg-id`: the next `Nats-Msg-Id` number.
        msg_id: Option<std::sync::Arc<std::sync::atomic::AtomicU64>>,
    },
    Postgres {
        pool: sqlx::PgPool,
        table: String,
    },
    Amqp {
        conn: std::sync::Arc<lapin::Connection>,
        ch: lapin::Channel,
        queue: String,
    },
    #[cfg(feature = "kafka")]
    Kafka(kafka::BareKafka),
    #[cfg(feature = "sqs")]
    Sqs(sqs::BareSqs),
    #[cfg(feature = "mqtt")]
    Mqtt(mqtt::BareMqtt),
    #[cfg(feature = "pubsub")]
    PubSub(pubsub::BarePubSub),
}

/// The bare target for `spec` (`bare+<adapter url>`), with what its
/// acknowledgements mean; `None` when `spec` is not a bare form.
pub(crate) async fn open(
    spec: &str,
    ns: &str,
    #[cfg_attr(not(feature = "kafka"), allow(unused_variables))] partitions: u32,
) -> anyhow::Result<Option<(Bare, &'static str)>> {
    let Some(url) = spec.strip_prefix("bare+") else {
        return Ok(None);
    };
    let (url, variant) = match url.split_once('#') {
        Some((u, v)) => (u, Some(v)),
        None => (url, None),
    };
    match (variant, url.split_once("://").map(|(s, _)| s)) {
        (None, _)
        | (Some("msg-id"), Some("nats"))
        | (Some("x-max-priority"), Some("amqp"))
        | (Some("detach"), Some("kafka")) => {}
        (Some(v), _) => anyhow::bail!(
            "--backend {spec}: unknown variant #{v} (bare+nats://…#msg-id, bare+amqp://…#x-max-priority, bare+kafka://…#detach)"
        ),
    }
    let ns = ns.replace(['.', '-'], "_");
    let ctx = || format!("cannot use {spec}");
    if url.starts_with("redis://") {
        let client = redis::Client::open(url).with_context(ctx)?;
        let conn = client
            .get_multiplexed_async_connection()
            .await
            .with_context(ctx)?;
        return Ok(Some((
            Bare::Redis {
                conn,
                key: format!("wharfbench_bare:{ns}"),
            },
            "Redis XADD: as the server's appendfsync/persistence config says",
        )));
    }
    if url.starts_with("nats://") {
        let client = async_nats::connect(url).await.with_context(ctx)?;
        let js = jetstream::new(client);
        let stream = format!("BENCHBARE_{ns}");
        js.get_or_create_stream(jetstream::stream::Config {
            name: stream.clone(),
            subjects: vec![format!("benchbare_{ns}.>")],
            storage: jetstream::stream::StorageType::File,
            ..Default::default()
        })
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))
        .with_context(ctx)?;
        return Ok(Some((
            Bare::Nats {
                js,
                stream,
                subject: format!("benchbare_{ns}.t"),
                msg_id: variant.map(|_| std::sync::Arc::default()),
            },
            "JetStream publish: acked after the server's write, fsync per its sync interval",
        )));
    }
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        let pool = sqlx::postgres::PgPoolOptions::new()
            .max_connections(8)
            .connect(url)
            .await
            .with_context(ctx)?;
        let table = format!("wharfbench_bare_{ns}");
        sqlx::query(&format!(
            "CREATE TABLE {table} (seq bigserial PRIMARY KEY, payload bytea NOT NULL, leased_until timestamptz)"
        ))
        .execute(&pool)
        .await
        .with_context(ctx)?;
        return Ok(Some((
            Bare::Postgres { pool, table },
            "PostgreSQL INSERT: acked after COMMIT (synchronous_commit per server config)",
        )));
    }
    if url.starts_with("amqp://") {
        use lapin::options::{ConfirmSelectOptions, QueueDeclareOptions};
        let conn = lapin::Connection::connect(url, lapin::ConnectionProperties::default())
            .await
            .with_context(ctx)?;
        let ch = conn.create_channel().await?;
        ch.confirm_select(ConfirmSelectOptions::default()).await?;
        let queue = format!("wharfbench.bare.{ns}");
        let mut args = lapin::types::FieldTable::default();
        if variant.is_some() {
            args.insert("x-max-priority".into(), lapin::types::AMQPValue::LongInt(9));
        }
        ch.queue_declare(
            lapin::types::ShortString::from(queue.as_str()),
            QueueDeclareOptions {
                durable: true,
                ..QueueDeclareOptions::default()
            },
            args,
        )
        .await?;
        return Ok(Some((
            Bare::Amqp {
                conn: std::sync::Arc::new(conn),
                ch,
                queue,
            },
            "RabbitMQ basic.publish: persistent, publisher confirms (after fsync)",
        )));
    }
    #[cfg(feature = "kafka")]
    if url.starts_with("kafka://") {
        let k = kafka::BareKafka::open(
            url,
            &format!("benchbare_{ns}"),
            partitions,
            variant.is_some(),
        )
        .await
        .with_context(ctx)?;
        return Ok(Some((
            Bare::Kafka(k),
            "Kafka produce: idempotent producer, acks=all (in-sync replicas hold it; fsync per the broker's flush config)",
        )));
    }
    #[cfg(feature = "sqs")]
    if url.starts_with("sqs://") {
        let q = sqs::BareSqs::open(url, &format!("benchbare_{ns}"))
            .await
            .with_context(ctx)?;
        return Ok(Some((
            Bare::Sqs(q),
            "SQS SendMessageBatch accepted (stored redundantly by Amazon; the moto test server keeps it in memory)",
        )));
    }
    #[cfg(feature = "mqtt")]
    if url.starts_with("mqtt://") {
        let m = mqtt::BareMqtt::open(url, &format!("benchbare_{ns}"))
            .await
            .with_context(ctx)?;
        return Ok(Some((
            Bare::Mqtt(m),
            "Mosquitto QoS 1: PUBACK once the server holds it in memory (persistence saved every autosave_interval, 1800 s)",
        )));
    }
    #[cfg(feature = "pubsub")]
    if url.starts_with("pubsub://") {
        let p = pubsub::BarePubSub::open(url, &format!("benchbare_{ns}"))
            .await
            .with_context(ctx)?;
        return Ok(Some((
            Bare::PubSub(p),
            "Pub/Sub emulator publish: acked once held in the emulator's memory (nothing on disk)",
        )));
    }
    anyhow::bail!(
        "--backend {spec}: a bare client is available for redis://, nats://, postgres://, amqp:// and (features `kafka`, `sqs`, `mqtt`, `pubsub`) kafka://, sqs://, mqtt://, pubsub:// (bare+redis://…); not for this scheme"
    )
}

impl Bare {
    /// Publishes `n` messages of `payload` as one batch, returning when the
    /// engine has acknowledged all of them.
    pub(crate) async fn publish(&self, n: usize, payload: &Bytes) -> anyhow::Result<()> {
        match self {
            Bare::Redis { conn, key } => {
                let mut pipe = redis::pipe();
                for _ in 0..n {
                    pipe.cmd("XADD")
                        .arg(key)
                        .arg("MAXLEN")
                        .arg("~")
                        .arg(REDIS_MAX_LEN)
                        .arg("*")
                        .arg("p")
                        .arg(payload.as_ref())
                        .ignore();
                }
                let () = pipe.query_async(&mut conn.clone()).await?;
                Ok(())
            }
            Bare::Nats {
                js,
                subject,
                msg_id,
                ..
            } => {
                let mut acks = Vec::with_capacity(n);
                for _ in 0..n {
                    acks.push(match msg_id {
                        None => js.publish(subject.clone(), payload.clone()).await?,
                        Some(next) => {
                            let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            let mut h = async_nats::HeaderMap::new();
                            h.insert("Nats-Msg-Id", format!("{i:036}:{subject}").as_str());
                            js.publish_with_headers(subject.clone(), h, payload.clone())
                                .await?
                        }
                    });
                }
                for ack in acks {
                    ack.await?;
                }
                Ok(())
            }
            Bare::Amqp { ch, queue, .. } => {
                let mut confirms = Vec::with_capacity(n);
                for _ in 0..n {
                    confirms.push(
                        ch.basic_publish(
                            lapin::types::ShortString::from(""),
                            lapin::types::ShortString::from(queue.as_str()),
                            lapin::options::BasicPublishOptions::default(),
                            payload,
                            lapin::BasicProperties::default().with_delivery_mode(2),
                        )
                        .await?,
                    );
                }
                for c in confirms {
                    anyhow::ensure!(!c.await?.is_nack(), "the broker nacked a publish");
                }
                Ok(())
            }
            #[cfg(feature = "kafka")]
            Bare::Kafka(k) => k.publish(n, payload).await,
            #[cfg(feature = "sqs")]
            Bare::Sqs(q) => q.publish(n, payload).await,
            #[cfg(feature = "mqtt")]
            Bare::Mqtt(m) => m.publish(n, payload).await,
            #[cfg(feature = "pubsub")]
            Bare::PubSub(p) => p.publish(n, payload).await,
            Bare::Postgres { pool, table } => {
                let rows: Vec<&[u8]> = (0..n).map(|_| payload.as_ref()).collect();
                sqlx::query(&format!(
                    "INSERT INTO {table} (payload) SELECT * FROM UNNEST($1::bytea[])"
                ))
                .bind(rows)
                .execute(pool)
                .await?;
                Ok(())
            }
        }
    }

    /// One consumer of `group`: takes up to `batch` entries at a time and
    /// acknowledges each batch with one command, until `done` (given the
    /// count of each batch acknowledged) says the whole backlog was taken or
    /// nothing is left to hand out. Returns the messages this consumer
    /// acknowledged.
    pub(crate) async fn consume(
        &self,
        group: &str,
        consumer: usize,
        batch: usize,
        done: impl Fn(u64) -> bool,
    ) -> anyhow::Result<u64> {
        match self {
            Bare::Redis { conn, key } => {
                let mut conn = conn.clone();
                let name = format!("c{consumer}");
                let mut taken = 0u64;
                loop {
                    let v: Value = redis::cmd("XREADGROUP")
                        .arg("GROUP")
                        .arg(group)
                        .arg(&name)
                        .arg("COUNT")
                        .arg(batch)
                        .arg("STREAMS")
                        .arg(key)
                        .arg(">")
                        .query_async(&mut conn)
                        .await?;
                    let ids = entry_ids(&v);
                    if ids.is_empty() {
                        // Every entry was handed out: the other members
                        // hold the rest (the caller checks the total).
                        return Ok(taken);
                    }
                    let n = ids.len() as u64;
                    let acked: u64 = redis::cmd("XACK")
                        .arg(key)
                        .arg(group)
                        .arg(&ids)
                        .query_async(&mut conn)
                        .await?;
                    anyhow::ensure!(acked == n, "XACK settled {acked} of {n}");
                    taken += n;
                    if done(n) {
                        return Ok(taken);
                    }
                }
            }
            Bare::Nats { js, stream, .. } => {
                let consumer: jetstream::consumer::PullConsumer = js
                    .get_stream(stream)
                    .await?
                    .get_consumer(group)
                    .await
                    .map_err(|e| anyhow::anyhow!("{e}"))?;
                let mut taken = 0u64;
                loop {
                    let mut msgs = consumer
                        .fetch()
                        .max_messages(batch)
                        .messages()
                        .await
                        .map_err(|e| anyhow::anyhow!("{e}"))?;
                    let mut n = 0u64;
                    while let Some(m) = msgs.next().await {
                        m.map_err(|e| anyhow::anyhow!("{e}"))?
                            .ack()
                            .await
                            .map_err(|e| anyhow::anyhow!("{e}"))?;
                        n += 1;
                    }
                    if n == 0 {
                        return Ok(taken);
                    }
                    taken += n;
                    if done(n) {
                        return Ok(taken);
                    }
                }
            }
            Bare::Amqp { conn, queue, .. } => {
                use futures_util::FutureExt as _;
                let ch = conn.create_channel().await?;
                let prefetch = u16::try_from(batch * 4).unwrap_or(u16::MAX);
                ch.basic_qos(prefetch, lapin::options::BasicQosOptions::default())
                    .await?;
                let mut deliveries = ch
                    .basic_consume(
                        lapin::types::ShortString::from(queue.as_str()),
                        lapin::types::ShortString::from(format!("c{consumer}").as_str()),
                        lapin::options::BasicConsumeOptions::default(),
                        lapin::types::FieldTable::default(),
                    )
                    .await?;
                let mut taken = 0u64;
                loop {
                    // Wait for one, then take what has already arrived.
                    let Some(first) = deliveries.next().await else {
                        return Ok(taken);
                    };
                    let mut last = first?.delivery_tag;
                    let mut n = 1u64;
                    while n < batch as u64 {
                        match deliveries.next().now_or_never() {
                            Some(Some(d)) => {
                                last = d?.delivery_tag;
                                n += 1;
                            }
                            _ => break,
                        }
                    }
                    ch.basic_ack(last, lapin::options::BasicAckOptions { multiple: true })
                        .await?;
                    taken += n;
                    if done(n) {
                        return Ok(taken);
                    }
                }
            }
            #[cfg(feature = "kafka")]
            Bare::Kafka(k) => k.consume(group, batch, done).await,
            #[cfg(feature = "sqs")]
            Bare::Sqs(q) => q.consume(batch, done).await,
            #[cfg(feature = "mqtt")]
            Bare::Mqtt(_) => {
                let _ = (group, consumer, batch, done);
                Err(mqtt::no_backlog())
            }
            #[cfg(feature = "pubsub")]
            Bare::PubSub(p) => p.consume(group, batch, done).await,
            Bare::Postgres { pool, table } => {
                let claim = format!(
                    "UPDATE {table} SET leased_until = now() + interval '30 seconds' WHERE seq IN \
                     (SELECT seq FROM {table} WHERE leased_until IS NULL ORDER BY seq LIMIT $1 \
                     FOR UPDATE SKIP LOCKED) RETURNING seq, payload"
                );
                let ack = format!("DELETE FROM {table} WHERE seq = ANY($1)");
                let mut taken = 0u64;
                loop {
                    let rows: Vec<(i64, Vec<u8>)> = sqlx::query_as(&claim)
                        .bind(i64::try_from(batch).unwrap_or(i64::MAX))
                        .fetch_all(pool)
                        .await?;
                    if rows.is_empty() {
                        return Ok(taken);
                    }
                    let seqs: Vec<i64> = rows.iter().map(|(s, _)| *s).collect();
                    let n = seqs.len() as u64;
                    let deleted = sqlx::query(&ack).bind(seqs).execute(pool).await?;
                    anyhow::ensure!(
                        deleted.rows_affected() == n,
                        "acked {} of {n}",
                        deleted.rows_affected()
                    );
                    taken += n;
                    if done(n) {
                        return Ok(taken);
                    }
                }
            }
        }
    }

    /// Prepares `group` to read from the beginning (before the backlog is
    /// drained).
    pub(crate) async fn create_group(&self, group: &str) -> anyhow::Result<()> {
        match self {
            Bare::Redis { conn, key } => {
                let () = redis::cmd("XGROUP")
                    .arg("CREATE")
                    .arg(key)
                    .arg(group)
                    .arg("0")
                    .arg("MKSTREAM")
                    .query_async(&mut conn.clone())
                    .await?;
                Ok(())
            }
            Bare::Nats { js, stream, .. } => {
                js.get_stream(stream)
                    .await?
                    .create_consumer(jetstream::consumer::pull::Config {
                        durable_name: Some(group.to_owned()),
                        ack_policy: jetstream::consumer::AckPolicy::Explicit,
                        max_ack_pending: -1,
                        ..Default::default()
                    })
                    .await?;
                Ok(())
            }
            Bare::Postgres { .. } | Bare::Amqp { .. } => Ok(()),
            // A new group starts at the beginning (`auto.offset.reset`).
            #[cfg(feature = "kafka")]
            Bare::Kafka(k) => k.join(group).await,
            // A queue is one group: nothing to prepare.
            #[cfg(feature = "sqs")]
            Bare::Sqs(_) => Ok(()),
            #[cfg(feature = "mqtt")]
            Bare::Mqtt(_) => Err(mqtt::no_backlog()),
            // A subscription created now gets the topic's retained backlog.
            #[cfg(feature = "pubsub")]
            Bare::PubSub(p) => p.create_group(group).await,
        }
    }

    /// Deletes what the run created.
    pub(crate) async fn cleanup(&self) {
        let r: anyhow::Result<()> = match self {
            Bare::Redis { conn, key } => redis::cmd("DEL")
                .arg(key)
                .query_async::<i64>(&mut conn.clone())
                .await
                .map(drop)
                .map_err(Into::into),
            Bare::Nats { js, stream, .. } => js
                .delete_stream(stream)
                .await
                .map(drop)
                .map_err(|e| anyhow::anyhow!("{e}")),
            Bare::Amqp { ch, queue, .. } => ch
                .queue_delete(
                    lapin::types::ShortString::from(queue.as_str()),
                    lapin::options::QueueDeleteOptions::default(),
                )
                .await
                .map(drop)
                .map_err(Into::into),
            #[cfg(feature = "kafka")]
            Bare::Kafka(k) => k.cleanup().await,
            #[cfg(feature = "sqs")]
            Bare::Sqs(q) => q.cleanup().await,
            // Nothing is stored: a publish without subscribers is dropped.
            #[cfg(feature = "mqtt")]
            Bare::Mqtt(_) => Ok(()),
            #[cfg(feature = "pubsub")]
            Bare::PubSub(p) => p.cleanup().await,
            Bare::Postgres { pool, table } => sqlx::query(&format!("DROP TABLE IF EXISTS {table}"))
                .execute(pool)
                .await
                .map(drop)
                .map_err(Into::into),
        };
        if let Err(e) = r {
            eprintln!("warning: cleaning up after the bench: {e}");
        }
    }
}

/// The entry ids of an `XREADGROUP` reply (RESP2 arrays or a RESP3 map).
fn entry_ids(v: &Value) -> Vec<Vec<u8>> {
    let streams: Vec<&Value> = match v {
        Value::Array(s) => s
            .iter()
            .filter_map(|kv| match kv {
                Value::Array(kv) => kv.get(1),
                _ => None,
            })
            .collect(),
        Value::Map(m) => m.iter().map(|(_, v)| v).collect(),
        _ => Vec::new(),
    };
    let mut ids = Vec::new();
    for entries in streams {
        if let Value::Array(es) = entries {
            for e in es {
                if let Value::Array(parts) = e {
                    if let Some(Value::BulkString(id)) = parts.first() {
                        ids.push(id.clone());
                    }
                }
            }
        }
    }
    ids
}

#[cfg(feature = "mqtt")]
mod mqtt {
    //! rumqttc alone: QoS 1 publishes on one connection whose event loop
    //! counts PUBACKs.

    use std::collections::BTreeMap;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use bytes::Bytes;
    use rumqttc::v5::mqttbytes::v5::Packet;
    use rumqttc::v5::mqttbytes::QoS;
    use rumqttc::v5::{AsyncClient, Event, MqttOptions};
    use tokio::sync::oneshot;

    /// The adapter's publish window (`wharf_mqtt::MqttConfig::publish_window`).
    const WINDOW: u16 = 256;

    /// Why the consume workload cannot run on MQTT.
    pub(super) fn no_backlog() -> anyhow::Error {
        anyhow::anyhow!(
            "MQTT keeps nothing for a group that does not exist yet, and the consume workload \
             publishes its backlog first: use --workload publish or latency"
        )
    }

    #[derive(Clone)]
    pub(crate) struct BareMqtt {
        client: AsyncClient,
        topic: String,
        /// Publishes queued so far.
        queued: Arc<AtomicU64>,
        acks: Arc<Mutex<Acks>>,
    }

    /// PUBACKs counted so far, and the batches waiting for the count to
    /// reach their last publish (each woken once, when it does).
    #[derive(Default)]
    struct Acks {
        count: u64,
        waiting: BTreeMap<u64, Vec<oneshot::Sender<()>>>,
    }

    impl BareMqtt {
        pub(crate) async fn open(url: &str, topic: &str) -> anyhow::Result<Self> {
            let rest = url.strip_prefix("mqtt://").unwrap_or(url);
            let authority = rest.split('/').next().unwrap_or_default();
            let (host, port) = match authority.rsplit_once(':') {
                Some((h, p)) => (h.to_owned(), p.parse()?),
                None => (authority.to_owned(), 1883),
            };
            let mut o = MqttOptions::new(format!("{topic}-pub"), host, port);
            o.set_outgoing_inflight_upper_limit(WINDOW);
            let (client, mut ev) = AsyncClient::new(o, usize::from(WINDOW) + 8);
            // Connect before the timed part, as the adapter does.
            loop {
                match tokio::time::timeout(Duration::from_secs(10), ev.poll()).await? {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => break,
                    Ok(_) => {}
                    Err(e) => anyhow::bail!("connect: {e}"),
                }
            }
            let acks: Arc<Mutex<Acks>> = Arc::default();
            let counter = acks.clone();
            tokio::spawn(async move {
                loop {
                    match ev.poll().await {
                        Ok(Event::Incoming(Packet::PubAck(_))) => {
                            let mut a = counter.lock().expect("acks lock");
                            a.count += 1;
                            let count = a.count;
                            while let Some(e) = a.waiting.first_entry() {
                                if *e.key() > count {
                                    break;
                                }
                                for tx in e.remove() {
                                    let _ = tx.send(());
                                }
                            }
                        }
                        Ok(_) => {}
                        Err(e) => {
                            eprintln!("bare mqtt: connection ended: {e}");
                            return;
                        }
                    }
                }
            });
            Ok(Self {
                client,
                topic: topic.to_owned(),
                queued: Arc::default(),
                acks,
            })
        }

        pub(crate) async fn publish(&self, n: usize, payload: &Bytes) -> anyhow::Result<()> {
            for _ in 0..n {
                self.client
                    .publish(self.topic.clone(), QoS::AtLeastOnce, false, payload.clone())
                    .await?;
            }
            let last = self.queued.fetch_add(n as u64, Ordering::AcqRel) + n as u64;
            let rx = {
                let mut a = self.acks.lock().expect("acks lock");
                if a.count >= last {
                    return Ok(());
                }
                let (tx, rx) = oneshot::channel();
                a.waiting.entry(last).or_default().push(tx);
                rx
            };
            tokio::time::timeout(Duration::from_secs(10), rx)
                .await
                .map_err(|_| anyhow::anyhow!("no PUBACK within 10 s"))?
                .map_err(|_| anyhow::anyhow!("the connection ended"))
        }
    }
}

#[cfg(feature = "kafka")]
mod kafka {
    //! `bare+kafka://…`: the same load through rdkafka alone.

    use std::sync::Arc;
    use std::time::Duration;

    use bytes::Bytes;
    use futures_util::FutureExt as _;
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    use rdkafka::client::DefaultClientContext;
    use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
    use rdkafka::producer::{FutureProducer, FutureRecord};
    use rdkafka::{ClientConfig, Message as _, Offset, TopicPartitionList};

    const TIMEOUT: Duration = Duration::from_secs(10);

    #[derive(Clone)]
    pub(crate) struct BareKafka {
        bootstrap: String,
        topic: String,
        producer: FutureProducer,
        admin: Arc<AdminClient<DefaultClientContext>>,
        /// A member that joined before the drain is timed (as the adapter's
        /// subscription does), with the first record it read.
        joined: Arc<std::sync::Mutex<Option<Joined>>>,
        /// `#detach`: copy every consumed record out of librdkafka.
        detach: bool,
    }

    /// A consumer in the group, assigned, and the partition and offset of
    /// the first record it received (not yet committed).
    type Joined = (Arc<StreamConsumer>, i32, i64);

    fn config(bootstrap: &str) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", bootstrap)
            .set("log_level", "3")
            .set("allow.auto.create.topics", "false");
        c
    }

    impl BareKafka {
        /// Connects to `url` and creates `topic` with `partitions`.
        pub(crate) async fn open(
            url: &str,
            topic: &str,
            partitions: u32,
            detach: bool,
        ) -> anyhow::Result<Self> {
            let bootstrap = wharf_kafka::KafkaConfig::new(url)
                .bootstrap_servers()
                .to_owned();
            // The adapter's producer settings (wharf-kafka's backend.rs).
            let producer: FutureProducer = config(&bootstrap)
                .set("acks", "all")
                .set("enable.idempotence", "true")
                .set("compression.type", "lz4")
                .set("linger.ms", "5")
                .set("max.in.flight.requests.per.connection", "5")
                .set("message.timeout.ms", "10000")
                .create()?;
            let admin: AdminClient<DefaultClientContext> = config(&bootstrap).create()?;
            let partitions = i32::try_from(partitions.max(1))?;
            let created = admin
                .create_topics(
                    &[NewTopic::new(topic, partitions, TopicReplication::Fixed(1))],
                    &AdminOptions::new().operation_timeout(Some(TIMEOUT)),
                )
                .await?;
            for r in created {
                r.map_err(|(t, e)| anyhow::anyhow!("creating {t}: {e}"))?;
            }
            Ok(Self {
                bootstrap,
                topic: topic.to_owned(),
                producer,
                admin: Arc::new(admin),
                joined: Arc::default(),
                detach,
            })
        }

        pub(crate) async fn publish(&self, n: usize, payload: &Bytes) -> anyhow::Result<()> {
            let mut reports = Vec::with_capacity(n);
            for _ in 0..n {
                let record: FutureRecord<'_, (), [u8]> =
                    FutureRecord::to(&self.topic).payload(payload.as_ref());
                let report = self
                    .producer
                    .send_result(record)
                    .map_err(|(e, _)| anyhow::anyhow!("produce: {e}"))?;
                reports.push(report);
            }
            for r in reports {
                r.await
                    .map_err(|_| anyhow::anyhow!("the producer went away"))?
                    .map_err(|(e, _)| anyhow::anyhow!("produce: {e}"))?;
            }
            Ok(())
        }

        /// A member of `group` reading the topic from the beginning.
        fn member(&self, group: &str) -> anyhow::Result<Arc<StreamConsumer>> {
            let consumer: Arc<StreamConsumer> = Arc::new(
                config(&self.bootstrap)
                    .set("group.id", group)
                    .set("enable.auto.commit", "false")
                    .set("enable.auto.offset.store", "false")
                    .set("auto.offset.reset", "earliest")
                    .set("enable.partition.eof", "false")
                    // As the adapter: a fetcher paused by a full prefetch
                    // queue checks again after 10 ms, not librdkafka's 1 s.
                    .set("fetch.queue.backoff.ms", "10")
                    .create()?,
            );
            consumer.subscribe(&[&self.topic])?;
            Ok(consumer)
        }

        /// Joins `group` with one member before the timed drain: it returns
        /// once the member is assigned and has read its first record.
        pub(crate) async fn join(&self, group: &str) -> anyhow::Result<()> {
            let consumer = self.member(group)?;
            let first = tokio::time::timeout(TIMEOUT, consumer.recv())
                .await
                .map_err(|_| anyhow::anyhow!("no record within {TIMEOUT:?} of joining"))??;
            let (p, at) = (first.partition(), first.offset());
            drop(first);
            *self.joined.lock().expect("joined lock") = Some((consumer, p, at));
            Ok(())
        }

        pub(crate) async fn consume(
            &self,
            group: &str,
            batch: usize,
            done: impl Fn(u64) -> bool,
        ) -> anyhow::Result<u64> {
            let joined = self.joined.lock().expect("joined lock").take();
            let (consumer, mut first) = match joined {
                Some((c, p, at)) => (c, Some((p, at))),
                None => (self.member(group)?, None),
            };
            let mut taken = 0u64;
            let mut kept = Vec::with_capacity(if self.detach { batch } else { 0 });
            loop {
                let mut next: std::collections::BTreeMap<i32, i64> = Default::default();
                match first.take() {
                    Some((p, at)) => {
                        next.insert(p, at + 1);
                    }
                    None => {
                        let m = consumer.recv().await?;
                        next.insert(m.partition(), m.offset() + 1);
                        if self.detach {
                            kept.push(m.detach());
                        }
                    }
                }
                let mut n = 1u64;
                while n < batch as u64 {
                    match consumer.recv().now_or_never() {
                        Some(m) => {
                            let m = m?;
                            next.insert(m.partition(), m.offset() + 1);
                            if self.detach {
                                kept.push(m.detach());
                            }
                            n += 1;
                        }
                        None => break,
                    }
                }
                // The batch's copies live until it is committed, as a
                // handler's messages do.
                kept.clear();
                let mut tpl = TopicPartitionList::with_capacity(next.len());
                for (p, at) in next {
                    tpl.add_partition_offset(&self.topic, p, Offset::Offset(at))?;
                }
                // As the adapter: a synchronous commit, off the runtime.
                let c = consumer.clone();
                tokio::task::spawn_blocking(move || c.commit(&tpl, CommitMode::Sync)).await??;
                taken += n;
                if done(n) {
                    return Ok(taken);
                }
            }
        }

        pub(crate) async fn cleanup(&self) -> anyhow::Result<()> {
            for r in self
                .admin
                .delete_topics(
                    &[&self.topic],
                    &AdminOptions::new().operation_timeout(Some(TIMEOUT)),
                )
                .await?
            {
                r.map_err(|(t, e)| anyhow::anyhow!("deleting {t}: {e}"))?;
            }
            Ok(())
        }
    }
}

#[cfg(feature = "sqs")]
mod sqs {
    //! `bare+sqs://…`: the same load through aws-sdk-sqs alone.

    use aws_sdk_sqs::types::{DeleteMessageBatchRequestEntry, SendMessageBatchRequestEntry};
    use aws_sdk_sqs::Client;
    use bytes::Bytes;

    #[derive(Clone)]
    pub(crate) struct BareSqs {
        client: Client,
        url: String,
        wait: i32,
    }

    impl BareSqs {
        /// The client `wharf_sqs` builds for `url` (endpoint, region,
        /// credentials, rustls), and a standard queue `queue` of its own.
        pub(crate) async fn open(url: &str, queue: &str) -> anyhow::Result<Self> {
            let cfg = wharf_sqs::SqsConfig::from_url(url)?;
            let wait = i32::try_from(cfg.wait_value().as_secs())?;
            let client = wharf_sqs::SqsBackend::connect(cfg).await?.client().clone();
            let created = client.create_queue().queue_name(queue).send().await?;
            Ok(Self {
                client,
                url: created.queue_url().unwrap_or_default().to_owned(),
                wait,
            })
        }

        pub(crate) async fn publish(&self, n: usize, payload: &Bytes) -> anyhow::Result<()> {
            // The bench's payload is text (`x` bytes): the body as it is.
            let body = String::from_utf8_lossy(payload).into_owned();
            let mut left = n;
            while left > 0 {
                let k = left.min(10);
                let entries = (0..k)
                    .map(|i| {
                        SendMessageBatchRequestEntry::builder()
                            .id(i.to_string())
                            .message_body(body.clone())
                            .build()
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                let out = self
                    .client
                    .send_message_batch()
                    .queue_url(&self.url)
                    .set_entries(Some(entries))
                    .send()
                    .await?;
                anyhow::ensure!(
                    out.failed().is_empty(),
                    "SendMessageBatch: {:?}",
                    out.failed()
                );
                left -= k;
            }
            Ok(())
        }

        pub(crate) async fn consume(
            &self,
            batch: usize,
            done: impl Fn(u64) -> bool,
        ) -> anyhow::Result<u64> {
            let max = i32::try_from(batch.clamp(1, 10))?;
            let mut taken = 0u64;
            loop {
                let out = self
                    .client
                    .receive_message()
                    .queue_url(&self.url)
                    .max_number_of_messages(max)
                    .wait_time_seconds(self.wait)
                    .send()
                    .await?;
                let messages = out.messages.unwrap_or_default();
                if messages.is_empty() {
                    // Nothing visible: the other members hold the rest.
                    return Ok(taken);
                }
                let entries = messages
                    .iter()
                    .enumerate()
                    .map(|(i, m)| {
                        DeleteMessageBatchRequestEntry::builder()
                            .id(i.to_string())
                            .receipt_handle(m.receipt_handle().unwrap_or_default())
                            .build()
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                let out = self
                    .client
                    .delete_message_batch()
                    .queue_url(&self.url)
                    .set_entries(Some(entries))
                    .send()
                    .await?;
                anyhow::ensure!(
                    out.failed().is_empty(),
                    "DeleteMessageBatch: {:?}",
                    out.failed()
                );
                let n = messages.len() as u64;
                taken += n;
                if done(n) {
                    return Ok(taken);
                }
            }
        }

        pub(crate) async fn cleanup(&self) -> anyhow::Result<()> {
            self.client
                .delete_queue()
                .queue_url(&self.url)
                .send()
                .await?;
            Ok(())
        }
    }
}

#[cfg(feature = "pubsub")]
mod pubsub {
    //! `bare+pubsub://…`: the same load through gcloud-pubsub alone.

    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use bytes::Bytes;
    use futures_util::FutureExt as _;
    use futures_util::StreamExt as _;
    use gcloud_gax::conn::Environment;
    use gcloud_googleapis::pubsub::v1::PubsubMessage;
    use gcloud_pubsub::client::{Client, ClientConfig};
    use gcloud_pubsub::publisher::{Publisher, PublisherConfig};
    use gcloud_pubsub::subscriber::SubscriberConfig;
    use gcloud_pubsub::subscription::{SubscribeConfig, SubscriptionConfig};
    use gcloud_pubsub::topic::TopicConfig;

    /// The adapter's default topic retention (`wharf_pubsub::DEFAULT_RETENTION`).
    const RETENTION: Duration = wharf_pubsub::DEFAULT_RETENTION;

    #[derive(Clone)]
    pub(crate) struct BarePubSub {
        client: Client,
        topic: String,
        /// One publisher per bundle size (`--batch`), made on first use.
        publisher: Arc<Mutex<Option<(usize, Publisher)>>>,
        /// Subscriptions made for groups, deleted with the topic.
        subscriptions: Arc<Mutex<Vec<String>>>,
    }

    impl BarePubSub {
        /// Connects to the emulator of `url` and creates `topic`.
        pub(crate) async fn open(url: &str, topic: &str) -> anyhow::Result<Self> {
            let cfg = wharf_pubsub::PubSubConfig::new(url)?;
            let client = Client::new(ClientConfig {
                project_id: Some(cfg.project().to_owned()),
                environment: Environment::Emulator(cfg.host().to_owned()),
                ..Default::default()
            })
            .await?;
            let retention = TopicConfig {
                message_retention_duration: Some(RETENTION),
                ..Default::default()
            };
            client.create_topic(topic, Some(retention), None).await?;
            Ok(Self {
                client,
                topic: topic.to_owned(),
                publisher: Arc::default(),
                subscriptions: Arc::default(),
            })
        }

        fn publisher(&self, bundle: usize) -> Publisher {
            let mut p = self.publisher.lock().expect("publisher lock");
            match &*p {
                Some((size, publisher)) if *size == bundle => publisher.clone(),
                _ => {
                    let config = PublisherConfig {
                        bundle_size: bundle,
                        ..Default::default()
                    };
                    let publisher = self.client.topic(&self.topic).new_publisher(Some(config));
                    *p = Some((bundle, publisher.clone()));
                    publisher
                }
            }
        }

        pub(crate) async fn publish(&self, n: usize, payload: &Bytes) -> anyhow::Result<()> {
            let messages = (0..n).map(|_| message(payload.clone())).collect();
            for awaiter in self.publisher(n.max(1)).publish_bulk(messages).await {
                awaiter.get().await?;
            }
            Ok(())
        }

        /// Creates the subscription of `group` (ordered, as the adapter's).
        pub(crate) async fn create_group(&self, group: &str) -> anyhow::Result<()> {
            let id = format!("{}~{group}", self.topic);
            let cfg = SubscriptionConfig {
                ack_deadline_seconds: 30,
                enable_message_ordering: true,
                ..Default::default()
            };
            self.client
                .create_subscription(&id, &self.topic, cfg, None)
                .await?;
            self.subscriptions
                .lock()
                .expect("subscriptions lock")
                .push(id);
            Ok(())
        }

        pub(crate) async fn consume(
            &self,
            group: &str,
            batch: usize,
            done: impl Fn(u64) -> bool,
        ) -> anyhow::Result<u64> {
            let subscription = self.client.subscription(&format!("{}~{group}", self.topic));
            let config = SubscribeConfig::default().with_subscriber_config(SubscriberConfig {
                stream_ack_deadline_seconds: 30,
                max_outstanding_messages: i64::try_from(batch * 4).unwrap_or(i64::MAX),
                ..Default::default()
            });
            let mut stream = subscription.subscribe(Some(config)).await?;
            let mut taken = 0u64;
            loop {
                // Wait for one, then take what has already arrived.
                let Some(first) = stream.next().await else {
                    return Ok(taken);
                };
                let mut ids = vec![first.ack_id().to_owned()];
                while ids.len() < batch {
                    match stream.next().now_or_never() {
                        Some(Some(m)) => ids.push(m.ack_id().to_owned()),
                        _ => break,
                    }
                }
                let n = ids.len() as u64;
                subscription.ack(ids).await?;
                taken += n;
                if done(n) {
                    stream.dispose().await;
                    return Ok(taken);
                }
            }
        }

        pub(crate) async fn cleanup(&self) -> anyhow::Result<()> {
            if let Some((_, mut p)) = self.publisher.lock().expect("publisher lock").take() {
                // Stops its workers (nothing is left to send).
                tokio::spawn(async move { p.shutdown().await });
            }
            let subs = std::mem::take(&mut *self.subscriptions.lock().expect("subscriptions lock"));
            for id in subs {
                self.client.subscription(&id).delete(None).await?;
            }
            self.client.topic(&self.topic).delete(None).await?;
            Ok(())
        }
    }

    /// A Pub/Sub message carrying `payload` only.
    fn message(payload: Bytes) -> PubsubMessage {
        PubsubMessage {
            data: payload,
            ..Default::default()
        }
    }
}
