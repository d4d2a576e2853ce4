//! Dead-lettering on the last attempt, as the adapters that count attempts
//! on the server (JetStream's MaxDeliver, Redis delivery counts) check it
//! beyond the suite: the attempt ends by a dropped delivery or by a lapsed
//! lease rather than a nack, which is the path a crashing consumer takes.
//!
//! Each scenario takes a [`BackendFactory`] whose backend declares
//! `MaxDeliveries` and `DeadLetter`, and panics on failure;
//! [`dead_letter_tests!`](crate::dead_letter_tests) expands them into tests.

use std::time::Duration;

use wharf_core::{header, name::dead_letter_topic, Backend, StartPosition, SubscribeOptions};

use crate::{expect_delivery, unique_name, BackendFactory};

/// Subscribes group `ops` to the dead-letter topic of `topic`, from the start.
async fn dead_letters(b: &dyn Backend, topic: &str) -> wharf_core::Subscription {
    let opts = SubscribeOptions::new(dead_letter_topic(topic))
        .group("ops")
        .start(StartPosition::Earliest);
    b.subscribe(opts).await.expect("subscribe dlq")
}

/// Dropping the only allowed attempt (`max_deliveries(1)`) dead-letters
/// the message, stamped with the attempt count, the group and the offset.
pub async fn dropping_on_the_last_attempt_dead_letters_the_message(factory: &dyn BackendFactory) {
    let b = &*factory.open().await;
    let topic = unique_name("jobs");
    let mut dead = dead_letters(b, &topic).await;
    let mut sub = b
        .subscribe(SubscribeOptions::new(&topic).group("g").max_deliveries(1))
        .await
        .expect("subscribe");
    let r = b
        .publish(&topic, wharf_core::Message::new("crashes"))
        .await
        .expect("publish");
    drop(expect_delivery(&mut sub, "the only attempt").await);
    let dl = expect_delivery(&mut dead, "the dead letter").await;
    assert_eq!(dl.message().id(), r.id);
    let headers = dl.message().headers();
    assert_eq!(headers.get(header::ATTEMPTS), Some("1"));
    assert_eq!(headers.get(header::DLQ_GROUP), Some("g"));
    assert_eq!(
        headers.get(header::ORIGINAL_OFFSET),
        r.offset.map(|o| o.to_string()).as_deref()
    );
    dl.ack().await.expect("ack");
}

/// A lease of `lease` that lapses on the only allowed attempt dead-letters
/// the message, and the held delivery is not handed out again (watched for
/// `lease` + 400 ms after the dead letter).
pub async fn lease_expiry_on_the_last_attempt_dead_letters_the_message(
    factory: &dyn BackendFactory,
    lease: Duration,
) {
    let b = &*factory.open().await;
    let topic = unique_name("slow");
    let mut dead = dead_letters(b, &topic).await;
    let opts = SubscribeOptions::new(&topic)
        .group("g")
        .max_deliveries(1)
        .visibility_timeout(lease);
    let mut sub = b.subscribe(opts).await.expect("subscribe");
    let r = b
        .publish(&topic, wharf_core::Message::new("hangs"))
        .await
        .expect("publish");
    let held = expect_delivery(&mut sub, "the only attempt").await;
    let dl = expect_delivery(&mut dead, "the dead letter").await;
    assert_eq!(dl.message().id(), r.id);
    assert_eq!(dl.message().headers().get(header::ATTEMPTS), Some("1"));
    dl.ack().await.expect("ack");
    let again = tokio::time::timeout(lease + Duration::from_millis(400), sub.next()).await;
    assert!(again.is_err(), "redelivered past max_deliveries");
    drop(held);
}

/// Expands to one `#[tokio::test]` per scenario in
/// [`dead_letter`](crate::dead_letter), each with a fresh `$factory` value
/// (as for [`conformance_tests!`](crate::conformance_tests)); `lease` is the
/// visibility timeout of the lapsing attempt.
#[macro_export]
macro_rules! dead_letter_tests {
    ($factory:expr, lease: $lease:expr) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn dropping_on_the_last_attempt_dead_letters_the_message() {
            let factory = $factory;
            $crate::dead_letter::dropping_on_the_last_attempt_dead_letters_the_message(&factory)
                .await;
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn lease_expiry_on_the_last_attempt_dead_letters_the_message() {
            let factory = $factory;
            let lease = $lease;
            $crate::dead_letter::lease_expiry_on_the_last_attempt_dead_letters_the_message(
                &factory, lease,
            )
            .await;
        }
    };
}
