//! `wharf bench --backend nats://… | redis://… | amqp://… | postgres://…`
//! (cargo feature `adapters`; `kafka://…`, `sqs://…`, `mqtt://…`,
//! `pubsub://…` with the features of those names): opens the adapter in a
//! namespace of its own (a JetStream stream, a Redis key prefix, a RabbitMQ
//! exchange, a PostgreSQL schema, a Kafka topic prefix, an SQS queue name
//! prefix, an MQTT topic prefix, a Pub/Sub prefix)
//! and deletes it after the run, so the shared servers keep nothing.

use std::sync::Arc;

use anyhow::Context;
use wharf_core::Backend;

/// What to delete once the run is over.
pub(crate) enum Cleanup {
    Nats(wharf_nats::NatsBackend),
    Redis(wharf_redis::RedisBackend),
    Amqp(wharf_amqp::AmqpBackend),
    Postgres(wharf_postgres::PostgresBackend),
    #[cfg(feature = "kafka")]
    Kafka(wharf_kafka::KafkaBackend),
    #[cfg(feature = "sqs")]
    Sqs(wharf_sqs::SqsBackend),
    /// Nothing is stored: the sessions expire on the server.
    #[cfg(feature = "mqtt")]
    Mqtt,
    #[cfg(feature = "pubsub")]
    PubSub(wharf_pubsub::PubSubBackend),
}

impl Cleanup {
    pub(crate) async fn run(self) {
        let r = match self {
            Cleanup::Nats(b) => b.delete_stream().await,
            Cleanup::Redis(b) => b.delete_all().await,
            Cleanup::Amqp(b) => b.delete_declared().await,
            Cleanup::Postgres(b) => b.drop_schema().await,
            #[cfg(feature = "kafka")]
            Cleanup::Kafka(b) => b.delete_all().await,
            #[cfg(feature = "sqs")]
            Cleanup::Sqs(b) => b.delete_all().await,
            #[cfg(feature = "mqtt")]
            Cleanup::Mqtt => Ok(()),
            #[cfg(feature = "pubsub")]
            Cleanup::PubSub(b) => b.delete_all().await,
        };
        if let Err(e) = r {
            eprintln!("warning: cleaning up after the bench: {e}");
        }
    }
}

/// An adapter backend for `spec`, with what its acknowledgements mean;
/// `None` when `spec` is not an adapter URL. `dedup_window_ms` is
/// `--dedup-window-ms`: on Redis `0` turns dedup off and another value sets
/// how long ids are kept; on NATS it is the stream's duplicate window
/// (JetStream cannot turn it off; `0` leaves the adapter's default).
/// `partitions` is the topic's partition count where the adapter has
/// partitions (Kafka). `amqp://…#priorities` declares priority queues.
pub(crate) async fn open(
    spec: &str,
    ns: &str,
    dedup_window_ms: Option<u64>,
    #[cfg_attr(not(feature = "kafka"), allow(unused_variables))] partitions: u32,
) -> anyhow::Result<Option<(Arc<dyn Backend>, Cleanup, &'static str)>> {
    let ns = ns.replace(['.', '-'], "_");
    let ctx = || format!("cannot use {spec}");
    let opened: (Arc<dyn Backend>, Cleanup, &'static str) = if spec.starts_with("nats://") {
        let mut cfg = wharf_nats::NatsConfig::new(spec)
            .stream(format!("BENCH_{ns}"))
            .subject_prefix(ns.clone());
        if let Some(ms) = dedup_window_ms.filter(|ms| *ms > 0) {
            cfg = cfg.duplicate_window(std::time::Duration::from_millis(ms));
        }
        let b = wharf_nats::NatsBackend::connect(cfg)
            .await
            .with_context(ctx)?;
        (
            Arc::new(b.clone()),
            Cleanup::Nats(b),
            "JetStream file store: acked after the server's write, fsync per its sync interval",
        )
    } else if spec.starts_with("redis://") {
        let mut cfg = wharf_redis::RedisConfig::new(spec).key_prefix(ns.clone());
        match dedup_window_ms {
            Some(0) => cfg = cfg.dedup(false),
            Some(ms) => cfg = cfg.dedup_window(std::time::Duration::from_millis(ms)),
            None => {}
        }
        let b = wharf_redis::RedisBackend::connect(cfg)
            .await
            .with_context(ctx)?;
        (
            Arc::new(b.clone()),
            Cleanup::Redis(b),
            "Redis: as the server's appendfsync/persistence config says",
        )
    } else if spec.starts_with("amqp://") {
        // `amqp://…#priorities`: priority queues (`AmqpConfig::priorities`).
        let (url, priorities) = match spec.split_once('#') {
            Some((url, "priorities")) => (url, true),
            Some((_, other)) => {
                anyhow::bail!("--backend {spec}: unknown variant #{other} (amqp://…#priorities)")
            }
            None => (spec, false),
        };
        let cfg = wharf_amqp::AmqpConfig::new(url)
            .namespace(ns.clone())
            .priorities(priorities);
        let b = wharf_amqp::AmqpBackend::connect(cfg)
            .await
            .with_context(ctx)?;
        (
            Arc::new(b.clone()),
            Cleanup::Amqp(b),
            "RabbitMQ: persistent messages, publisher confirms (after fsync)",
        )
    } else if spec.starts_with("postgres://") || spec.starts_with("postgresql://") {
        let cfg = wharf_postgres::PostgresConfig::new(spec).schema(format!("bench_{ns}"));
        let b = wharf_postgres::PostgresBackend::connect(cfg)
            .await
            .with_context(ctx)?;
        (
            Arc::new(b.clone()),
            Cleanup::Postgres(b),
            "PostgreSQL: acked after COMMIT (synchronous_commit per server config)",
        )
    } else if spec.starts_with("mqtt://") {
        #[cfg(feature = "mqtt")]
        {
            let cfg = wharf_mqtt::MqttConfig::new(spec)
                .topic_prefix(format!("bench_{ns}"))
                .client_id(format!("bench_{ns}"))
                .session_expiry(std::time::Duration::from_secs(60));
            let b = wharf_mqtt::MqttBackend::connect(cfg)
                .await
                .with_context(ctx)?;
            (
                Arc::new(b),
                Cleanup::Mqtt,
                "Mosquitto: QoS 1 PUBACK once the server holds it in memory (persistence saved every autosave_interval, 1800 s)",
            )
        }
        #[cfg(not(feature = "mqtt"))]
        anyhow::bail!(
            "--backend {spec}: mqtt:// needs a wharf built with the `mqtt` feature: cargo build --release -p wharf-cli --features mqtt"
        )
    } else if spec.starts_with("kafka://") {
        #[cfg(feature = "kafka")]
        {
            let cfg = wharf_kafka::KafkaConfig::new(spec)
                .topic_prefix(format!("bench_{ns}."))
                .partitions(partitions);
            let b = wharf_kafka::KafkaBackend::connect(cfg)
                .await
                .with_context(ctx)?;
            (
                Arc::new(b.clone()),
                Cleanup::Kafka(b),
                "Kafka: idempotent producer, acks=all (in-sync replicas hold it; fsync per the broker's flush config)",
            )
        }
        #[cfg(not(feature = "kafka"))]
        anyhow::bail!(
            "--backend {spec}: kafka:// needs a wharf built with the `kafka` feature: cargo build --release -p wharf-cli --features kafka"
        )
    } else if spec.starts_with("sqs://") {
        #[cfg(feature = "sqs")]
        {
            let cfg = wharf_sqs::SqsConfig::from_url(spec)
                .with_context(ctx)?
                .queue_prefix(format!("bench_{ns}-"));
            let b = wharf_sqs::SqsBackend::connect(cfg)
                .await
                .with_context(ctx)?;
            (
                Arc::new(b.clone()),
                Cleanup::Sqs(b),
                "SQS: SendMessage(Batch) accepted (stored redundantly by Amazon; the moto test server keeps it in memory)",
            )
        }
        #[cfg(not(feature = "sqs"))]
        anyhow::bail!(
            "--backend {spec}: sqs:// needs a wharf built with the `sqs` feature: cargo build --release -p wharf-cli --features sqs"
        )
    } else if spec.starts_with("pubsub://") {
        #[cfg(feature = "pubsub")]
        {
            let cfg = wharf_pubsub::PubSubConfig::new(spec)
                .with_context(ctx)?
                .prefix(format!("bench_{ns}"));
            let b = wharf_pubsub::PubSubBackend::connect(cfg)
                .await
                .with_context(ctx)?;
            (
                Arc::new(b.clone()),
                Cleanup::PubSub(b),
                "Pub/Sub emulator: acked once held in the emulator's memory (nothing on disk)",
            )
        }
        #[cfg(not(feature = "pubsub"))]
        anyhow::bail!(
            "--backend {spec}: pubsub:// needs a wharf built with the `pubsub` feature: cargo build --release -p wharf-cli --features pubsub"
        )
    } else {
        return Ok(None);
    };
    Ok(Some(opened))
}
