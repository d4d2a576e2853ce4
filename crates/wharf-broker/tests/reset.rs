//! Resetting a consumer group's position (`Broker::reset_group`): to
//! earliest, latest, an offset or a time, persisted across a reopen; a
//! group in use (bound subscription, unsettled delivery) or unknown is left
//! alone.

use std::time::Duration;

use wharf_broker::{Broker, GroupReset};
use wharf_core::{
    Backend, Error, Message, Publisher, StartPosition, SubscribeOptions, Subscriber, Subscription,
    Timestamp,
};

fn group(topic: &str, g: &str) -> SubscribeOptions {
    SubscribeOptions::new(topic)
        .group(g)
        .start(StartPosition::Earliest)
}

async fn next_text(sub: &mut Subscription) -> String {
    let d = tokio::time::timeout(Duration::from_secs(10), sub.next())
        .await
        .expect("a delivery")
        .expect("subscription open")
        .expect("delivery");
    let t = String::from_utf8_lossy(d.message().payload()).into_owned();
    d.ack().await.expect("ack");
    t
}

/// Publishes m0..m(n-1) to `topic` and consumes them all as group `g`.
async fn consumed(b: &Broker, topic: &str, g: &str, n: usize) {
    for i in 0..n {
        b.publish(topic, Message::new(format!("m{i}")))
            .await
            .expect("publish");
    }
    let mut sub = b.subscribe(group(topic, g)).await.expect("subscribe");
    for i in 0..n {
        assert_eq!(next_text(&mut sub).await, format!("m{i}"));
    }
    sub.close().await.expect("close");
    drop(sub);
}

fn lag(b: &Broker, g: &str, topic: &str) -> u64 {
    b.groups()
        .iter()
        .find(|i| i.group == g && i.topic == topic)
        .expect("group listed")
        .lag
}

#[tokio::test]
async fn reset_to_earliest_redelivers_everything_and_survives_a_reopen() {
    let dir = tempfile::tempdir().expect("temp dir");
    let b = Broker::open(dir.path()).await.expect("open");
    consumed(&b, "reset.t", "g", 4).await;
    assert_eq!(lag(&b, "g", "reset.t"), 0);
    let r = b
        .reset_group("g", "reset.t", StartPosition::Earliest)
        .expect("reset");
    assert_eq!(r, GroupReset::Moved(vec![(0, 0)]));
    assert_eq!(lag(&b, "g", "reset.t"), 4, "every message unsettled again");
    b.close().await.expect("close");
    drop(b);

    let b = Broker::open(dir.path()).await.expect("reopen");
    assert_eq!(lag(&b, "g", "reset.t"), 4, "the reset was persisted");
    let mut sub = b.subscribe(group("reset.t", "g")).await.expect("subscribe");
    assert_eq!(next_text(&mut sub).await, "m0");
    sub.close().await.expect("close");
    b.close().await.expect("close");
}

#[tokio::test]
async fn reset_to_latest_an_offset_or_a_time_moves_to_that_offset() {
    let b = Broker::temporary().await.expect("broker");
    consumed(&b, "reset.t", "g", 3).await;
    b.reset_group("g", "reset.t", StartPosition::Offset(1))
        .expect("to an offset");
    assert_eq!(lag(&b, "g", "reset.t"), 2);
    let mut sub = b.subscribe(group("reset.t", "g")).await.expect("subscribe");
    assert_eq!(next_text(&mut sub).await, "m1");
    sub.close().await.expect("close");
    drop(sub);

    assert_eq!(
        b.reset_group("g", "reset.t", StartPosition::Latest)
            .expect("to latest"),
        GroupReset::Moved(vec![(0, 3)])
    );
    assert_eq!(lag(&b, "g", "reset.t"), 0);

    // Time: the first message stored at or after it.
    tokio::time::sleep(Duration::from_millis(20)).await;
    let cut = Timestamp::now();
    tokio::time::sleep(Duration::from_millis(20)).await;
    b.publish("reset.t", Message::new("late"))
        .await
        .expect("publish");
    assert_eq!(
        b.reset_group("g", "reset.t", StartPosition::Time(cut))
            .expect("to a time"),
        GroupReset::Moved(vec![(0, 3)])
    );
    assert_eq!(
        b.reset_group(
            "g",
            "reset.t",
            StartPosition::Time(Timestamp::from_millis(0))
        )
        .expect("to the epoch"),
        GroupReset::Moved(vec![(0, 0)])
    );
    let out_of_range = b.reset_group("g", "reset.t", StartPosition::Offset(99));
    assert!(
        matches!(out_of_range, Err(Error::InvalidOffset { offset: 99, .. })),
        "{out_of_range:?}"
    );
}

#[tokio::test]
async fn a_group_in_use_or_unknown_is_left_alone() {
    let b = Broker::temporary().await.expect("broker");
    consumed(&b, "reset.t", "g", 2).await;
    let mut sub = b.subscribe(group("reset.t", "g")).await.expect("subscribe");
    b.publish("reset.t", Message::new("m2"))
        .await
        .expect("publish");
    let held = tokio::time::timeout(Duration::from_secs(10), sub.next())
        .await
        .expect("a delivery")
        .expect("open")
        .expect("delivery");
    assert_eq!(
        b.reset_group("g", "reset.t", StartPosition::Earliest)
            .expect("reset"),
        GroupReset::InUse,
        "a bound subscription"
    );
    drop(sub);
    assert_eq!(
        b.reset_group("g", "reset.t", StartPosition::Earliest)
            .expect("reset"),
        GroupReset::InUse,
        "an unsettled delivery"
    );
    assert_eq!(lag(&b, "g", "reset.t"), 1, "nothing moved");
    held.ack().await.expect("ack");
    assert_eq!(
        b.reset_group("g", "reset.t", StartPosition::Earliest)
            .expect("reset"),
        GroupReset::Moved(vec![(0, 0)])
    );
    assert_eq!(
        b.reset_group("nobody", "reset.t", StartPosition::Earliest)
            .expect("reset"),
        GroupReset::Unknown
    );
    assert!(matches!(
        b.reset_group("g", "no.such.topic", StartPosition::Earliest),
        Err(Error::UnknownTopic { .. })
    ));
}
