//! Admin operations shared by the gRPC and HTTP APIs: topic settings from
//! requests, and the dead-letter views: listing and finding letters reads
//! the dead-letter topic ([`Broker::peek_unsettled`], nothing is leased),
//! purging settles them for the broker's redrive group. Replay is
//! [`Broker::redrive`]; by id it finds the letter by reading too (then
//! settles that one offset for the redrive group), so it reaches letters
//! past the group's read-ahead window; [`replay_targets`] lists where a
//! replay would write, for the caller's publish right.

use std::collections::BTreeSet;
use std::time::Duration;

use wharf_broker::{
    Broker, Durability, PeekPage, PeekPosition, Peeked, Redrive, TopicConfig, REDRIVE_GROUP,
};
use wharf_core::{header, Error, MessageId};

/// Requested topic settings; `None` keeps the server default.
#[derive(Debug, Clone, Default)]
pub(crate) struct TopicSettings {
    pub(crate) partitions: Option<u32>,
    pub(crate) durability: Option<String>,
    pub(crate) retention_bytes: Option<u64>,
    pub(crate) retention_ms: Option<u64>,
    pub(crate) max_message_bytes: Option<u64>,
    pub(crate) ttl_ms: Option<u64>,
    pub(crate) dead_letter_topic: Option<String>,
    pub(crate) max_deliveries: Option<u32>,
    pub(crate) visibility_timeout_ms: Option<u64>,
    /// `Some(0)` turns dedup off.
    pub(crate) dedup_window_ms: Option<u64>,
    pub(crate) skip_damaged_batches: Option<bool>,
    pub(crate) segment_bytes: Option<u64>,
}

/// Parses `always`, `never` or `interval:<ms>` (also `<n>ms`).
pub(crate) fn parse_durability(s: &str) -> Result<Durability, Error> {
    let bad = || Error::InvalidArgument {
        name: "durability",
        reason: format!("{s:?} is not always, never or interval:<ms>"),
    };
    match s {
        "always" => Ok(Durability::Always),
        "never" => Ok(Durability::Never),
        other => {
            let ms = other
                .strip_prefix("interval:")
                .or_else(|| other.strip_suffix("ms"))
                .ok_or_else(bad)?;
            ms.parse().map(Durability::IntervalMs).map_err(|_| bad())
        }
    }
}

/// The text form of a durability.
pub(crate) fn durability_str(d: Durability) -> String {
    match d {
        Durability::Always => "always".into(),
        Durability::Never => "never".into(),
        Durability::IntervalMs(ms) => format!("interval:{ms}"),
        _ => "unknown".into(),
    }
}

impl TopicSettings {
    pub(crate) fn to_config(&self) -> Result<TopicConfig, Error> {
        let mut c = TopicConfig::default();
        if let Some(p) = self.partitions {
            c = c.partitions(p);
        }
        if let Some(d) = &self.durability {
            c = c.durability(parse_durability(d)?);
        }
        if self.retention_bytes.is_some() || self.retention_ms.is_some() {
            c = c.retention(
                self.retention_bytes,
                self.retention_ms.map(Duration::from_millis),
            );
        }
        if let Some(m) = self.max_message_bytes {
            c = c.max_message_bytes(usize::try_from(m).unwrap_or(usize::MAX));
        }
        if let Some(t) = self.ttl_ms {
            c = c.ttl(Duration::from_millis(t));
        }
        if let Some(t) = &self.dead_letter_topic {
            c = c.dead_letter_topic(t.clone());
        }
        if let Some(n) = self.max_deliveries {
            c = c.max_deliveries(n);
        }
        if let Some(v) = self.visibility_timeout_ms {
            c = c.visibility_timeout(Duration::from_millis(v));
        }
        if let Some(w) = self.dedup_window_ms {
            c = c.dedup_window((w > 0).then(|| Duration::from_millis(w)));
        }
        if let Some(on) = self.skip_damaged_batches {
            c = c.skip_damaged_batches(on);
        }
        if let Some(n) = self.segment_bytes {
            c = c.segment_bytes(n);
        }
        Ok(c)
    }
}

/// The dead-letter topic an admin request naming `topic` acts on, as
/// `wharf dlq` maps it: a dead-letter topic (`dlq.<topic>`, or one that a
/// topic names as its `dead_letter_topic`) is itself; any other topic means
/// its dead letters: its configured dead-letter topic, else `dlq.<topic>`.
/// So `/v1/dlq/orders` and `/v1/dlq/dlq.orders` both act on `dlq.orders`,
/// never on `orders`' own messages.
pub(crate) fn dlq_topic(broker: &Broker, topic: &str) -> String {
    if topic.starts_with(wharf_core::name::DEAD_LETTER_PREFIX)
        || is_dead_letter_topic_of_a_topic(broker, topic)
    {
        return topic.to_owned();
    }
    broker
        .topics()
        .into_iter()
        .find(|t| t.name == topic)
        .and_then(|t| t.config.dead_letter_topic)
        .unwrap_or_else(|| wharf_core::name::dead_letter_topic(topic))
}

/// Most dead letters one listing returns.
pub(crate) const DLQ_PAGE_MAX: usize = 10_000;

/// A page of `topic`'s dead letters not yet replayed or purged (not settled
/// by the redrive group), from `cursor` (`PARTITION:OFFSET`, from a previous
/// page's `next`) or the beginning. Reads the topic: nothing is leased, so
/// no group's state or attempt count changes.
pub(crate) fn dlq_page(
    broker: &Broker,
    topic: &str,
    cursor: Option<&str>,
    limit: usize,
) -> Result<PeekPage, Error> {
    let from = match cursor {
        Some(c) => c.parse::<PeekPosition>()?,
        None => PeekPosition::START,
    };
    match broker.peek_unsettled(topic, REDRIVE_GROUP, from, limit.clamp(1, DLQ_PAGE_MAX)) {
        // Nothing dead-lettered yet: the DLQ topic is made by the first dead
        // letter. An empty list, not "unknown topic", for a topic that is the
        // dead-letter topic of an existing one.
        Err(Error::UnknownTopic { .. }) if is_dead_letter_topic_of_a_topic(broker, topic) => {
            Ok(PeekPage::default())
        }
        r => r,
    }
}

/// Replays dead letters of `topic` whose original topic `allow` accepts
/// ([`Broker::redrive_where`]); a dead-letter topic not created yet
/// (nothing dead-lettered so far) has none to replay, as `dlq_page` lists
/// none, rather than being an unknown topic.
pub(crate) async fn dlq_replay(
    broker: &Broker,
    topic: &str,
    which: wharf_broker::Redrive,
    allow: &(dyn Fn(&str) -> bool + Sync),
) -> Result<usize, Error> {
    match broker.redrive_where(topic, which, allow).await {
        Err(Error::UnknownTopic { .. }) if is_dead_letter_topic_of_a_topic(broker, topic) => Ok(0),
        r => r,
    }
}

/// Whether `dlq` is where some existing topic's dead letters go.
fn is_dead_letter_topic_of_a_topic(broker: &Broker, dlq: &str) -> bool {
    broker
        .topics()
        .iter()
        .any(|t| match &t.config.dead_letter_topic {
            Some(d) => d == dlq,
            None => wharf_core::name::dead_letter_topic(&t.name) == dlq,
        })
}

/// The dead letter with message id `id`, if it is not yet replayed or purged.
pub(crate) fn dlq_find(
    broker: &Broker,
    topic: &str,
    id: MessageId,
) -> Result<Option<Peeked>, Error> {
    broker.find_unsettled(topic, REDRIVE_GROUP, id)
}

/// The distinct original topics (`wharf-original-topic`) of the letters in
/// `topic` that replaying `which` would move: what the caller needs the
/// publish right on. Reads the topic page by page; nothing is leased.
pub(crate) fn replay_targets(
    broker: &Broker,
    topic: &str,
    which: Redrive,
) -> Result<BTreeSet<String>, Error> {
    let mut out = BTreeSet::new();
    let mut add = |p: &Peeked| {
        if let Some(t) = p.message.headers().get(header::ORIGINAL_TOPIC) {
            out.insert(t.to_owned());
        }
    };
    if let Redrive::Id(id) = which {
        if let Some(p) = dlq_find(broker, topic, id)? {
            add(&p);
        }
        return Ok(out);
    }
    let mut from = PeekPosition::START;
    loop {
        let page = match broker.peek_unsettled(topic, REDRIVE_GROUP, from, DLQ_PAGE_MAX) {
            // Nothing dead-lettered yet: nothing to replay (see dlq_replay).
            Err(Error::UnknownTopic { .. }) if is_dead_letter_topic_of_a_topic(broker, topic) => {
                return Ok(out)
            }
            r => r?,
        };
        page.messages.iter().for_each(&mut add);
        match page.next {
            Some(next) => from = next,
            None => return Ok(out),
        }
    }
}

/// Settles every dead letter of `topic` for the redrive group, so it is
/// neither listed nor replayed again; returns how many. Reads the letters
/// page by page (as listing does) and settles each by offset, so every one
/// is reached, whatever the group's read-ahead window.
pub(crate) async fn dlq_purge(broker: &Broker, topic: &str) -> Result<usize, Error> {
    if !broker.topics().iter().any(|t| t.name == topic) {
        // Nothing dead-lettered yet, as in `dlq_page`: nothing to purge.
        if is_dead_letter_topic_of_a_topic(broker, topic) {
            return Ok(0);
        }
        return Err(Error::UnknownTopic {
            topic: topic.to_owned(),
        });
    }
    let (broker, topic) = (broker.clone(), topic.to_owned());
    tokio::task::spawn_blocking(move || {
        let mut n = 0;
        let mut from = PeekPosition::START;
        loop {
            let page = broker.peek_unsettled(&topic, REDRIVE_GROUP, from, DLQ_PAGE_MAX)?;
            for p in &page.messages {
                // False: replayed by id meanwhile, settled already.
                if broker.settle_offset(&topic, REDRIVE_GROUP, p.partition, p.offset)? {
                    n += 1;
                }
            }
            match page.next {
                Some(next) => from = next,
                None => return Ok(n),
            }
        }
    })
    .await
    .map_err(|e| Error::Backend {
        backend: "wharf",
        source: Box::new(e),
    })?
}

#[cfg(test)]
mod tests {
    use super::*;
    use wharf_core::{StartPosition, SubscribeOptions, Subscriber};

    #[test]
    fn durability_parses_all_forms_and_rejects_others() {
        assert_eq!(parse_durability("always").unwrap(), Durability::Always);
        assert_eq!(parse_durability("never").unwrap(), Durability::Never);
        assert_eq!(
            parse_durability("interval:25").unwrap(),
            Durability::IntervalMs(25)
        );
        assert_eq!(
            parse_durability("25ms").unwrap(),
            Durability::IntervalMs(25)
        );
        assert!(matches!(
            parse_durability("sometimes"),
            Err(Error::InvalidArgument {
                name: "durability",
                ..
            })
        ));
        assert_eq!(durability_str(Durability::IntervalMs(7)), "interval:7");
    }

    #[test]
    fn topic_settings_override_only_what_is_given() {
        let cfg = TopicSettings {
            partitions: Some(3),
            dedup_window_ms: Some(0),
            max_deliveries: Some(2),
            ..Default::default()
        }
        .to_config()
        .expect("valid");
        let default = TopicConfig::default();
        assert_eq!(cfg.partitions, 3);
        assert_eq!(cfg.dedup_window_ms, None);
        assert_eq!(cfg.max_deliveries, Some(2));
        assert_eq!(cfg.durability, default.durability);
        assert_eq!(cfg.max_message_bytes, default.max_message_bytes);
    }

    #[tokio::test]
    async fn dlq_listing_does_not_consume_and_purge_empties_it() {
        let broker = Broker::temporary().await.expect("broker");
        let err = dlq_page(&broker, "dlq.none", None, 10).expect_err("unknown topic");
        assert!(matches!(err, Error::UnknownTopic { .. }));
        // A topic with nothing dead-lettered yet has an empty DLQ listing.
        wharf_core::Backend::ensure_topic(&broker, "quiet")
            .await
            .expect("topic");
        let page = dlq_page(&broker, "dlq.quiet", None, 10).expect("empty listing");
        assert!(page.messages.is_empty() && page.next.is_none());
        let mut sub = broker
            .subscribe(
                SubscribeOptions::new("jobs")
                    .group("g")
                    .start(StartPosition::Earliest),
            )
            .await
            .expect("subscribe");
        let id = wharf_core::Publisher::publish(&broker, "jobs", wharf_core::Message::new("j"))
            .await
            .expect("publish")
            .id;
        let d = sub.next().await.expect("open").expect("delivery");
        d.reject("bad").await.expect("reject");
        for _ in 0..2 {
            let page = dlq_page(&broker, "dlq.jobs", None, 10).expect("list");
            assert_eq!(page.messages.len(), 1);
            assert_eq!(page.messages[0].message.id(), id);
            assert!(page.next.is_none());
        }
        assert_eq!(
            dlq_find(&broker, "dlq.jobs", id)
                .expect("find")
                .map(|p| p.offset),
            Some(0)
        );
        assert!(matches!(
            dlq_page(&broker, "dlq.jobs", Some("zero"), 10),
            Err(Error::InvalidArgument { name: "cursor", .. })
        ));
        assert_eq!(dlq_purge(&broker, "dlq.jobs").await.expect("purge"), 1);
        assert!(dlq_page(&broker, "dlq.jobs", None, 10)
            .expect("list")
            .messages
            .is_empty());
        assert!(dlq_find(&broker, "dlq.jobs", id).expect("find").is_none());
    }

    /// Every letter of `topic` the listing shows, page by page.
    fn list_all(broker: &Broker, topic: &str) -> Vec<Peeked> {
        let mut out = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let page = dlq_page(broker, topic, cursor.as_deref(), 500).expect("list");
            out.extend(page.messages);
            match page.next {
                Some(next) => cursor = Some(next.to_string()),
                None => return out,
            }
        }
    }

    /// Replay by id (what `POST /v1/dlq/{topic}/replay {"id": ..}` and the
    /// gRPC `DlqReplay` call) reaches a letter behind more than the redrive
    /// group's read-ahead window of 1,024 others.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn replay_by_id_reaches_the_last_of_more_than_a_read_ahead_of_letters() {
        const N: usize = 1_101;
        let broker = Broker::temporary().await.expect("broker");
        let jobs: Vec<wharf_core::Message> = (0..N)
            .map(|i| wharf_core::Message::new(format!("job-{i}")))
            .collect();
        wharf_core::Publisher::publish_batch(&broker, "jobs", jobs.clone())
            .await
            .expect("publish");
        let mut workers = broker
            .subscribe(
                SubscribeOptions::new("jobs")
                    .group("workers")
                    .start(StartPosition::Earliest),
            )
            .await
            .expect("subscribe");
        for _ in 0..N {
            let d = workers.next().await.expect("open").expect("delivery");
            d.reject("cannot parse job").await.expect("reject");
        }
        let letters = list_all(&broker, "dlq.jobs");
        assert_eq!(letters.len(), N);
        let last = letters[N - 1].message.id();
        assert_eq!(last, jobs[N - 1].id());

        let redrive = |id| broker.redrive("dlq.jobs", wharf_broker::Redrive::Id(id));
        assert_eq!(redrive(last).await.expect("replay"), 1);
        let d = tokio::time::timeout(Duration::from_secs(10), workers.next())
            .await
            .expect("the replayed job in time")
            .expect("open")
            .expect("delivery");
        assert_eq!(d.message().id(), last);
        assert_eq!(
            &d.message().payload()[..],
            format!("job-{}", N - 1).as_bytes()
        );
        assert_eq!(d.message().headers().get("wharf-dlq-reason"), None);
        assert_eq!(d.info().attempt, 1);
        d.ack().await.expect("ack");

        // Re-published once: a second replay finds nothing, and nothing else
        // comes back to the topic.
        assert_eq!(redrive(last).await.expect("replay again"), 0);
        let more = tokio::time::timeout(Duration::from_millis(300), workers.next()).await;
        assert!(more.is_err(), "only the replayed letter comes back");
        assert!(dlq_find(&broker, "dlq.jobs", last).expect("find").is_none());
        let left = list_all(&broker, "dlq.jobs");
        let left_ids: Vec<MessageId> = left.iter().map(|p| p.message.id()).collect();
        let want: Vec<MessageId> = letters[..N - 1].iter().map(|p| p.message.id()).collect();
        assert_eq!(left_ids, want, "the other letters are untouched");

        // The others still replay (and purge) as before.
        assert_eq!(redrive(want[0]).await.expect("replay first"), 1);
        assert_eq!(dlq_purge(&broker, "dlq.jobs").await.expect("purge"), N - 2);
        assert!(list_all(&broker, "dlq.jobs").is_empty());
        wharf_core::Backend::close(&broker).await.expect("close");
    }
}
