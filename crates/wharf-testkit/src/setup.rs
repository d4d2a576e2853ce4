//! What some cases need beyond the core `Backend` API — a topic with
//! retention or a short dedup window, a consumer process that dies — and
//! how a factory provides it: the hooks [`BackendFactory::open_topic_with`]
//! and [`BackendFactory::open_consumer_process`], which answer
//! [`Unsupported`] (with why) when the backend cannot. A case that needs a
//! [`Setup`] the factory does not provide prints `SKIPPED` with that reason;
//! what a factory provides is pinned like capabilities are
//! ([`assert_setups_pinned`], run by [`crate::conformance_tests!`] as
//! `provides_exactly_the_pinned_setups`), so a hook that stops working
//! fails instead of turning its cases into skips.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use wharf_core::Backend;

use crate::proxy::Proxy;
use crate::{unique_name, BackendFactory};

/// A set-up beyond the core API that some cases need.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Setup {
    /// A topic keeping about [`TopicSettings::retention_bytes`] per
    /// partition, dropping the oldest messages first.
    RetentionBySize,
    /// A topic dropping messages older than [`TopicSettings::retention_age`].
    RetentionByAge,
    /// A topic whose dedup window is [`TopicSettings::dedup_window`].
    DedupWindow,
    /// A second consumer of the backend in a "process" of its own that
    /// [`ConsumerProcess::kill`] ends without a clean close.
    ConsumerDeath,
}

impl Setup {
    /// Every set-up, in declaration order.
    pub const ALL: [Setup; 4] = [
        Setup::RetentionBySize,
        Setup::RetentionByAge,
        Setup::DedupWindow,
        Setup::ConsumerDeath,
    ];
}

/// Why a factory cannot provide a [`Setup`]: printed with the skip.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unsupported(String);

impl Unsupported {
    /// The reason, e.g. `"Redis streams trim by entry count, not by bytes"`.
    pub fn new(why: impl Into<String>) -> Self {
        Unsupported(why.into())
    }
}

impl fmt::Display for Unsupported {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Unsupported {}

/// Settings for a topic a case creates through
/// [`BackendFactory::open_topic_with`]; `None` is the backend's default.
/// A case sets one at a time.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct TopicSettings {
    /// Keep about this many bytes per partition (the newest), dropping the
    /// oldest messages first. Backends that drop whole segments should use
    /// small ones, so the case sees the effect within a few hundred KiB.
    pub retention_bytes: Option<u64>,
    /// Drop messages older than this (whole segments where the backend
    /// stores in segments: use small ones, as above).
    pub retention_age: Option<Duration>,
    /// Remember message ids for this long (a retry after it is stored again).
    pub dedup_window: Option<Duration>,
}

impl TopicSettings {
    /// Settings asking for `setup` (`None` for [`Setup::ConsumerDeath`],
    /// which is no topic setting), with the values the cases use.
    pub fn for_setup(setup: Setup) -> Option<Self> {
        let mut s = TopicSettings::default();
        match setup {
            Setup::RetentionBySize => s.retention_bytes = Some(RETENTION_BYTES),
            Setup::RetentionByAge => s.retention_age = Some(RETENTION_AGE),
            Setup::DedupWindow => s.dedup_window = Some(DEDUP_WINDOW),
            Setup::ConsumerDeath => return None,
        }
        Some(s)
    }

    /// The set-ups these settings ask for.
    pub fn setups(&self) -> Vec<Setup> {
        let mut v = Vec::new();
        if self.retention_bytes.is_some() {
            v.push(Setup::RetentionBySize);
        }
        if self.retention_age.is_some() {
            v.push(Setup::RetentionByAge);
        }
        if self.dedup_window.is_some() {
            v.push(Setup::DedupWindow);
        }
        v
    }

    /// `Err(Unsupported(why))` if these settings ask for a set-up outside
    /// `provided`: how a factory refuses the settings its backend lacks.
    ///
    /// # Errors
    /// [`Unsupported`] with `why`.
    pub fn only(&self, provided: &[Setup], why: &str) -> Result<(), Unsupported> {
        if self.setups().iter().all(|s| provided.contains(s)) {
            Ok(())
        } else {
            Err(Unsupported::new(why))
        }
    }
}

/// The retention size the retention case asks for.
pub const RETENTION_BYTES: u64 = 64 * 1024;
/// The retention age the retention case asks for.
pub const RETENTION_AGE: Duration = Duration::from_millis(300);
/// The dedup window the dedup case asks for (Redis counts it in seconds).
pub const DEDUP_WINDOW: Duration = Duration::from_secs(1);

/// A consumer of the backend as a process of its own would be: its
/// `backend` is what the process uses, and [`ConsumerProcess::kill`] ends it
/// the way a `kill -9` would look to the server — nothing settled, nothing
/// closed, no goodbye.
pub struct ConsumerProcess {
    backend: Arc<dyn Backend>,
    death: Death,
}

enum Death {
    Forget,
    Cut(Proxy),
}

impl ConsumerProcess {
    /// For an in-process backend: the consumer shares `backend`, and its
    /// death forgets what it holds (subscription, deliveries) so that no
    /// destructor runs — none runs in a killed process. (The embedded
    /// broker's own test `kill -9`s a real process consuming from it, broker
    /// and all: `crates/wharf-broker/tests/kill9.rs`.)
    pub fn in_process(backend: Arc<dyn Backend>) -> Self {
        ConsumerProcess {
            backend,
            death: Death::Forget,
        }
    }

    /// For a networked backend: `backend` is connected through `proxy`
    /// (see [`Proxy::for_url`]), and its death cuts every connection of it
    /// and refuses new ones, so the server sees its connections drop and
    /// nothing the client does afterwards reaches it.
    pub fn through(backend: Arc<dyn Backend>, proxy: Proxy) -> Self {
        ConsumerProcess {
            backend,
            death: Death::Cut(proxy),
        }
    }

    /// The backend the consumer process uses.
    pub fn backend(&self) -> &Arc<dyn Backend> {
        &self.backend
    }

    /// How the death is played, for messages.
    pub fn how(&self) -> &'static str {
        match self.death {
            Death::Forget => {
                "in-process: its subscription and deliveries forgotten, no destructor run"
            }
            Death::Cut(_) => "its connections cut, no close sent",
        }
    }

    /// Kills the process holding `held` (its subscriptions and unsettled
    /// deliveries): nothing in `held` is settled, released or closed.
    pub async fn kill<T: Send + 'static>(self, held: T) {
        match self.death {
            Death::Forget => std::mem::forget(held),
            Death::Cut(proxy) => {
                proxy.cut().await;
                // Whatever their destructors send goes nowhere now.
                drop(held);
                drop(self.backend);
            }
        }
    }
}

/// Panics unless `f` provides exactly the set-ups in `pinned`: each is
/// probed through its hook (a topic with its settings; a consumer process,
/// killed at once). [`crate::conformance_tests!`] runs it as
/// `provides_exactly_the_pinned_setups`.
pub async fn assert_setups_pinned<F: BackendFactory>(f: &F, pinned: &[Setup]) {
    let mut provided = Vec::new();
    let mut reasons = Vec::new();
    for setup in Setup::ALL {
        let result = match TopicSettings::for_setup(setup) {
            Some(settings) => {
                let topic = format!("{}.probe", unique_name("wt"));
                f.open_topic_with(&topic, &settings).await.map(drop)
            }
            None => {
                let backend = f.open().await;
                match f.open_consumer_process(&backend).await {
                    Ok(p) => {
                        p.kill(()).await;
                        Ok(())
                    }
                    Err(e) => Err(e),
                }
            }
        };
        match result {
            Ok(()) => provided.push(setup),
            Err(why) => reasons.push(format!("{setup:?}: {why}")),
        }
    }
    let added: Vec<_> = provided.iter().filter(|s| !pinned.contains(s)).collect();
    let dropped: Vec<_> = pinned.iter().filter(|s| !provided.contains(s)).collect();
    assert!(
        added.is_empty() && dropped.is_empty(),
        "the factory provides {provided:?}, its test pins {pinned:?}: provided but not pinned \
         {added:?}, pinned but not provided {dropped:?} (why not: {reasons:?})"
    );
}
