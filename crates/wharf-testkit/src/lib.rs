//! The conformance suite: the contract every Wharf backend must honour.
//!
//! A backend crate supplies a [`BackendFactory`] and expands
//! [`conformance_tests!`] in one of its test files; that generates one
//! `#[tokio::test]` per case in [`cases`]. Each case first checks the
//! capabilities it needs against [`wharf_core::Backend::capabilities`] and,
//! if one is missing, prints `SKIPPED <case>: backend lacks <capability>` and
//! returns, so a backend is held to exactly what it declares. What it
//! declares is pinned in turn: the macro takes the backend's exact capability
//! set and generates `declares_exactly_the_pinned_capabilities`, so dropping
//! (or adding) a capability fails a test instead of silently turning cases
//! into passing skips.
//!
//! ```text
//! // crates/wharf-memory/tests/conformance.rs
//! struct Factory;
//! #[async_trait::async_trait]
//! impl wharf_testkit::BackendFactory for Factory {
//!     async fn open(&self) -> std::sync::Arc<dyn wharf_core::Backend> {
//!         std::sync::Arc::new(wharf_memory::MemoryBackend::new())
//!     }
//! }
//! wharf_testkit::conformance_tests!(
//!     Factory,
//!     capabilities: [ConsumerGroups, Wildcards],
//!     setups: [],
//! );
//! ```
//!
//! Some cases need more than the core API can express — a topic with
//! retention or a short dedup window, a consumer process that dies without
//! a clean close. A factory provides those through optional hooks
//! ([`BackendFactory::open_topic_with`],
//! [`BackendFactory::open_consumer_process`]) that answer [`Unsupported`]
//! with a reason when the backend cannot, and the case then prints
//! `SKIPPED <case>: <reason>`. Which [`Setup`]s a factory provides is pinned
//! too: the macro's `setups: [..]` list, checked by probing every hook in
//! `provides_exactly_the_pinned_setups`.
//!
//! Cases use real time (they must work against remote servers): waits for
//! expected messages are bounded by [`WAIT`], and "nothing arrives" checks
//! watch for [`QUIET`]. Every topic, pattern and group name is unique to the
//! case run ([`unique_name`]), so suites can share one server.
//!
//! Beside the suite, what the adapters' own tests share: [`service`]
//! (skip-or-fail on a missing service, cleanup, [`service::Namespace`] and
//! [`service::ServiceFactory`]), scenarios beyond the suite for
//! [`nondurable`] modes ([`nondurable_tests!`]) and for [`dead_letter`]ing
//! on the last attempt, and the bench [`load`]. The event store suite,
//! the contract of every `wharf_eventstore::EventStore`, is [`eventstore`]
//! ([`eventstore_tests!`]).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use wharf_core::{Backend, Capabilities, Capability, Delivery, Subscription};

pub mod cases;
pub mod dead_letter;
pub mod eventstore;
pub mod load;
pub mod nondurable;
pub mod proxy;
pub mod service;
pub mod setup;

pub use setup::{ConsumerProcess, Setup, TopicSettings, Unsupported};

/// How long a case waits for a message it expects.
pub const WAIT: Duration = Duration::from_secs(10);
/// How long a case watches to conclude that nothing arrives.
pub const QUIET: Duration = Duration::from_millis(300);

/// Opens the backend under test.
///
/// One factory value is made per case, so a factory can give each case its
/// own directory or namespace.
#[async_trait]
pub trait BackendFactory: Send + Sync + 'static {
    /// Opens the backend. For persistent backends, a second call after the
    /// first backend was closed and dropped must open the *same* data (the
    /// restart cases rely on it); in-memory backends return a fresh one.
    async fn open(&self) -> Arc<dyn Backend>;

    /// Opens a backend on which `topic` exists with `settings` (a case
    /// then publishes to and consumes from `topic` only, through the
    /// backend returned). It may be the backend [`open`](Self::open) gives
    /// or another one — a fresh namespace, a second broker directory —
    /// whatever the settings need; the factory cleans it up with its own.
    ///
    /// # Errors
    /// [`Unsupported`], saying why, when the backend cannot honour one of
    /// the settings ([`TopicSettings::only`] helps); the default refuses all.
    async fn open_topic_with(
        &self,
        topic: &str,
        settings: &TopicSettings,
    ) -> Result<Arc<dyn Backend>, Unsupported> {
        let _ = topic;
        settings.only(&[], "the factory has no open_topic_with hook")?;
        Err(Unsupported::new("the factory has no open_topic_with hook"))
    }

    /// A second consumer of the data `backend` (opened by
    /// [`open`](Self::open)) serves, in a "process" of its own that
    /// [`ConsumerProcess::kill`] ends without settling or closing anything:
    /// [`ConsumerProcess::through`] a [`proxy::Proxy`] for a networked
    /// backend, [`ConsumerProcess::in_process`] for one in this process.
    ///
    /// # Errors
    /// [`Unsupported`], saying why; the default refuses.
    async fn open_consumer_process(
        &self,
        backend: &Arc<dyn Backend>,
    ) -> Result<ConsumerProcess, Unsupported> {
        let _ = backend;
        Err(Unsupported::new(
            "the factory has no open_consumer_process hook",
        ))
    }
}

/// What a case concluded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Every assertion held.
    Passed,
    /// The backend does not declare a capability the case needs.
    Skipped(String),
}

/// A topic/group-safe name unique to this process and call: `<prefix>-<time>-<n>`.
pub fn unique_name(prefix: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() % 1_000_000_000_000);
    format!(
        "{prefix}-{}-{nanos}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// The next delivery within [`WAIT`], panicking with `what` if none comes or the stream ends.
pub async fn expect_delivery(sub: &mut Subscription, what: &str) -> Delivery {
    match tokio::time::timeout(WAIT, sub.next()).await {
        Ok(Some(Ok(d))) => d,
        Ok(Some(Err(e))) => panic!("{what}: subscription failed: {e}"),
        Ok(None) => panic!("{what}: subscription ended"),
        Err(_) => panic!("{what}: nothing delivered within {WAIT:?}"),
    }
}

/// Panics if a delivery arrives within `window`; returns normally otherwise.
pub async fn expect_quiet(sub: &mut Subscription, window: Duration, what: &str) {
    if let Ok(Some(item)) = tokio::time::timeout(window, sub.next()).await {
        match item {
            Ok(d) => panic!("{what}: unexpected delivery {:?}", d.message()),
            Err(e) => panic!("{what}: subscription failed: {e}"),
        }
    }
}

/// Panics unless the backend `f` opens declares exactly `pinned`, naming
/// what was added and what was dropped. [`conformance_tests!`] runs it as
/// `declares_exactly_the_pinned_capabilities`.
pub async fn assert_capabilities_pinned<F: BackendFactory>(f: &F, pinned: &[Capability]) {
    let backend = f.open().await;
    let declared = backend.capabilities();
    let pinned: Capabilities = pinned.iter().copied().collect();
    let added: Vec<Capability> = declared.iter().filter(|c| !pinned.contains(*c)).collect();
    let dropped: Vec<Capability> = pinned.iter().filter(|c| !declared.contains(*c)).collect();
    assert!(
        added.is_empty() && dropped.is_empty(),
        "the backend declares {declared:?}, its test pins {pinned:?}: declared but not pinned \
         {added:?}, pinned but no longer declared {dropped:?} (change the pin only together \
         with the backend's docs)"
    );
}

#[doc(hidden)]
pub mod __macro_support {
    pub use crate::setup::Setup;
    pub use wharf_core::Capability;
}

/// Expands to one `#[tokio::test]` per conformance case, each opening a
/// backend from a fresh `$factory` value, plus
/// `declares_exactly_the_pinned_capabilities`, which fails unless the
/// backend declares exactly the listed [`Capability`] variants, and
/// `provides_exactly_the_pinned_setups`, which fails unless the factory's
/// hooks provide exactly the listed [`Setup`] variants.
///
/// `$factory` is an expression evaluated once per case (e.g. a struct
/// literal or a constructor call) whose type implements [`BackendFactory`].
#[macro_export]
macro_rules! conformance_tests {
    (
        $factory:expr,
        capabilities: [$($cap:ident),* $(,)?],
        setups: [$($setup:ident),* $(,)?] $(,)?
    ) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn declares_exactly_the_pinned_capabilities() {
            let factory = $factory;
            $crate::assert_capabilities_pinned(
                &factory,
                &[$($crate::__macro_support::Capability::$cap),*],
            )
            .await;
        }
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn provides_exactly_the_pinned_setups() {
            let factory = $factory;
            $crate::setup::assert_setups_pinned(
                &factory,
                &[$($crate::__macro_support::Setup::$setup),*],
            )
            .await;
        }
        $crate::conformance_tests!(@cases $factory;
            round_trip_preserves_id_key_headers_and_payload,
            batch_publish_is_delivered_in_order,
            fan_out_delivers_every_message_to_each_group,
            competing_consumers_get_each_message_once,
            ordering_per_key_is_kept,
            acked_message_is_not_redelivered,
            batch_ack_settles_every_delivery,
            nack_redelivers_with_next_attempt,
            nack_with_delay_waits_before_redelivery,
            reject_dead_letters_with_reason_headers,
            max_deliveries_moves_message_to_dead_letter_topic,
            lease_expiry_on_last_attempt_dead_letters,
            dropped_delivery_is_redelivered,
            dropped_consumer_messages_go_to_another_group_member,
            lease_expiry_redelivers_unsettled_message,
            extend_keeps_lease,
            max_in_flight_is_respected,
            star_pattern_matches_one_segment_including_new_topics,
            gt_pattern_matches_remaining_segments,
            invalid_names_are_rejected_with_typed_error,
            oversized_message_is_rejected_and_not_stored,
            start_latest_skips_backlog,
            replay_from_offset_starts_there,
            replay_from_time_starts_there,
            delayed_publish_is_not_delivered_early,
            expired_message_is_not_delivered,
            higher_priority_is_delivered_first,
            duplicate_id_is_stored_once,
            same_id_on_two_topics_is_stored_on_both,
            closed_subscription_ends_and_keeps_settling,
            close_ends_subscriptions_and_rejects_publishes,
            restart_keeps_published_messages,
            restart_keeps_group_position_and_unacked_messages,
            stream_mode_gives_each_key_to_one_consumer_and_rebalances,
            message_of_exactly_the_maximum_size_is_delivered_whole,
            duplicate_id_within_one_batch_is_stored_once,
            concurrent_publishers_of_one_id_store_it_once,
            duplicate_id_is_detected_across_a_restart,
            each_failure_dead_letters_exactly_once,
            settling_after_the_lease_expired_leaves_the_new_lease,
            ttl_expires_during_nack_delay,
            order_per_key_holds_with_concurrent_publishers_and_consumers,
            publisher_blocked_by_backpressure_resumes_after_acks,
            stream_mode_join_with_work_in_flight_loses_nothing,
            retention_by_size_drops_the_oldest_messages,
            retention_by_age_drops_old_messages,
            duplicate_id_after_the_dedup_window_is_stored_again,
            consumer_process_death_redelivers_its_unsettled_messages,
        );
    };
    (@cases $factory:expr; $($case:ident),+ $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let factory = $factory;
                match $crate::cases::$case(&factory).await {
                    $crate::Outcome::Passed => {}
                    $crate::Outcome::Skipped(why) => {
                        println!("SKIPPED {}: {}", stringify!($case), why);
                    }
                }
            }
        )+
    };
}
