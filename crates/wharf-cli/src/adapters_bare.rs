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
//! | `bare+amqp://…` | a persistent (`delivery_mode` 2) `basic.publish` per message to a durable queue through the default exchange, on one confirm-mode channel; every confirm of the batch awaited after all are sent | `basic.qos` of 4 × `<batch>`, `basic.consume`, one `basic.ack` with `multiple` per batch taken |
//!
//! Two variants isolate what an adapter's promise costs (their rows are not
//! paired with an adapter row; compare by hand): `bare+nats://…#msg-id`
//! publishes each message with a unique `Nats-Msg-Id` (JetStream's dedup
//! index, as the adapter's) and a 13-digit `Wharf-Ts` header;
//! `bare+amqp://…#x-max-priority` declares its queue with `x-max-priority = 9`
//! (a priority queue, as every queue of the adapter).
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
}

/// The bare target for `spec` (`bare+<adapter url>`), with what its
/// acknowledgements mean; `None` when `spec` is not a bare form.
pub(crate) async fn open(spec: &str, ns: &str) -> anyhow::Result<Option<(Bare, &'static str)>> {
    let Some(url) = spec.strip_prefix("bare+") else {
        return Ok(None);
    };
    let (url, variant) = match url.split_once('#') {
        Some((u, v)) => (u, Some(v)),
        None => (url, None),
    };
    match (variant, url.split_once("://").map(|(s, _)| s)) {
        (None, _) | (Some("msg-id"), Some("nats")) | (Some("x-max-priority"), Some("amqp")) => {}
        (Some(v), _) => anyhow::bail!(
            "--backend {spec}: unknown variant #{v} (bare+nats://…#msg-id, bare+amqp://…#x-max-priority)"
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
    anyhow::bail!(
        "--backend {spec}: a bare client is available for redis://, nats://, postgres:// and amqp:// (bare+redis://…); not for this scheme"
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
                            h.insert("Wharf-Ts", "1796563738742");
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
