//! What a consumer group costs once its consumers are gone: an idle group
//! is unloaded after `group_idle` (position persisted, read-ahead freed)
//! and resumes where it was; a group with an unsettled delivery stays; the
//! `max_groups` cap refuses new groups with a typed error; the read-ahead
//! stops at its byte budget. Time is tokio's paused clock.

use std::time::Duration;

use wharf_broker::{Broker, BrokerBuilder, Durability, TopicConfig};
use wharf_core::{
    Backend, Error, Message, Publisher, StartPosition, SubscribeOptions, Subscriber, Subscription,
};

fn builder() -> BrokerBuilder {
    // No fsync, so publishing never leaves the runtime thread (a paused
    // clock auto-advances while the runtime is idle).
    Broker::builder().default_topic(TopicConfig::default().durability(Durability::Never))
}

fn group(topic: &str, g: &str) -> SubscribeOptions {
    SubscribeOptions::new(topic)
        .group(g)
        .start(StartPosition::Earliest)
}

fn loaded(b: &Broker, g: &str) -> bool {
    b.groups().iter().any(|i| i.group == g && i.loaded)
}

async fn next_text(sub: &mut Subscription) -> String {
    let d = tokio::time::timeout(Duration::from_secs(60), sub.next())
        .await
        .expect("a delivery within a minute of paused time")
        .expect("subscription open")
        .expect("delivery");
    let t = String::from_utf8_lossy(d.message().payload()).into_owned();
    d.ack().await.expect("ack");
    t
}

#[tokio::test(start_paused = true)]
async fn idle_group_is_unloaded_after_group_idle_and_resumes_where_it_was() {
    let dir = tempfile::tempdir().expect("temp dir");
    let b = builder()
        .group_idle(Duration::from_secs(10))
        .open(dir.path())
        .await
        .expect("open");
    for m in ["m1", "m2", "m3"] {
        b.publish("idle.t", Message::new(m)).await.expect("publish");
    }
    let mut sub = b.subscribe(group("idle.t", "g")).await.expect("subscribe");
    assert_eq!(next_text(&mut sub).await, "m1");
    drop(sub);
    assert!(loaded(&b, "g"));
    tokio::time::sleep(Duration::from_secs(9)).await;
    assert!(loaded(&b, "g"), "unloaded before group_idle passed");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(!loaded(&b, "g"), "still loaded after group_idle");

    // Loaded again from its saved position: m1 stays acked.
    let mut sub = b.subscribe(group("idle.t", "g")).await.expect("subscribe");
    assert_eq!(next_text(&mut sub).await, "m2");
    assert_eq!(next_text(&mut sub).await, "m3");
    drop(sub);
    b.close().await.expect("close");
}

#[tokio::test(start_paused = true)]
async fn group_with_an_unsettled_delivery_stays_loaded() {
    let dir = tempfile::tempdir().expect("temp dir");
    let b = builder()
        .group_idle(Duration::from_secs(1))
        .open(dir.path())
        .await
        .expect("open");
    b.publish("idle.held", Message::new("x"))
        .await
        .expect("publish");
    let mut sub = b
        .subscribe(group("idle.held", "g"))
        .await
        .expect("subscribe");
    let held = sub.next().await.expect("open").expect("delivery");
    drop(sub);
    tokio::time::sleep(Duration::from_secs(30)).await;
    assert!(loaded(&b, "g"), "unloaded while a delivery is unsettled");
    held.ack().await.expect("ack still works");
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(!loaded(&b, "g"), "still loaded once settled and idle");
    // The ack was persisted with it: nothing is delivered again.
    let mut sub = b
        .subscribe(group("idle.held", "g"))
        .await
        .expect("subscribe");
    assert!(
        tokio::time::timeout(Duration::from_secs(5), sub.next())
            .await
            .is_err(),
        "an acked message came back after the group was unloaded"
    );
}

#[tokio::test(start_paused = true)]
async fn max_groups_refuses_new_groups_with_resource_exhausted_until_idle_ones_unload() {
    let dir = tempfile::tempdir().expect("temp dir");
    let b = builder()
        .max_groups(2)
        .group_idle(Duration::from_secs(5))
        .open(dir.path())
        .await
        .expect("open");
    let s1 = b.subscribe(group("cap.t", "g1")).await.expect("g1");
    let s2 = b.subscribe(group("cap.t", "g2")).await.expect("g2");
    let Err(err) = b.subscribe(group("cap.t", "g3")).await else {
        panic!("subscribed past max_groups");
    };
    assert!(
        matches!(
            err,
            Error::ResourceExhausted {
                resource: "consumer groups",
                limit: 2
            }
        ),
        "{err}"
    );
    assert!(err.is_transient());
    // A loaded group takes more consumers.
    let s1b = b.subscribe(group("cap.t", "g1")).await.expect("g1 again");
    drop((s1, s1b));
    tokio::time::sleep(Duration::from_secs(6)).await;
    let _s3 = b
        .subscribe(group("cap.t", "g3"))
        .await
        .expect("g3 once g1 unloaded");
    drop(s2);
}

#[tokio::test(start_paused = true)]
async fn read_ahead_stops_at_its_byte_budget() {
    // The read-ahead is the window priorities are ordered within: with a
    // budget of ~3 messages, a high-priority message published after ten
    // others is not yet read when the first one is delivered.
    let dir = tempfile::tempdir().expect("temp dir");
    let b = builder()
        .read_ahead_bytes(1000)
        .open(dir.path())
        .await
        .expect("open");
    let body = "x".repeat(400);
    for i in 0..10 {
        b.publish("budget.t", Message::new(format!("{i}{body}")))
            .await
            .expect("publish");
    }
    b.publish(
        "budget.t",
        Message::builder().payload("urgent").priority(9).build(),
    )
    .await
    .expect("publish");
    let mut sub = b
        .subscribe(group("budget.t", "g"))
        .await
        .expect("subscribe");
    let first = next_text(&mut sub).await;
    assert!(first.starts_with('0'), "first delivery {first:.8}");

    // Without the budget the whole topic is read ahead and priority wins.
    let dir = tempfile::tempdir().expect("temp dir");
    let b = builder().open(dir.path()).await.expect("open");
    for i in 0..10 {
        b.publish("budget.t", Message::new(format!("{i}{body}")))
            .await
            .expect("publish");
    }
    b.publish(
        "budget.t",
        Message::builder().payload("urgent").priority(9).build(),
    )
    .await
    .expect("publish");
    let mut sub = b
        .subscribe(group("budget.t", "g"))
        .await
        .expect("subscribe");
    assert_eq!(next_text(&mut sub).await, "urgent");
}
