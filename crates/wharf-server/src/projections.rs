//! Projections hosted by `wharf serve`: each publishes the event store's
//! events (every stream, or those under a name prefix) into a broker topic
//! with [`PublishToTopic`], under a [`ProjectionRunner`] started at boot, so
//! any client consumes events through topics (groups, retry, dead letters).
//!
//! On disk, under `<data_dir>/projections/`: `projections.json` (the
//! definitions, replaced atomically: written to a temporary file, synced,
//! renamed over, the directory synced) and one `checkpoints/<name>.ckpt` per
//! projection (a [`FileCheckpoint`]). Crash table:
//!
//! | crash during / after            | on restart                                                    |
//! |---------------------------------|---------------------------------------------------------------|
//! | create, before the rename       | the projection does not exist; nothing was published          |
//! | create, after the rename        | it exists and starts from its checkpoint (a stale one was removed before the rename) |
//! | a publish, before its checkpoint| the batch is published again: same message ids, dropped by the topic's dedup window |
//! | delete, after the rename        | it no longer exists; a leftover `.ckpt` is removed by the next create of that name |

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;
use wharf_broker::Broker;
use wharf_eventstore::projection::{ProjectionHandle, ProjectionRunner, ProjectionState};
use wharf_eventstore::topic::{FileCheckpoint, PublishToTopic};
use wharf_eventstore::{EmbeddedStore, EventStore, GlobalFilter, Position};

/// The projections' directory under the data dir.
pub const PROJECTIONS_DIR: &str = "projections";
const SPECS_FILE: &str = "projections.json";
const CHECKPOINTS_DIR: &str = "checkpoints";
/// The longest projection name.
pub(crate) const MAX_NAME: usize = 128;

/// What a hosted projection publishes where.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Spec {
    pub(crate) name: String,
    pub(crate) topic: String,
    /// Only streams whose names start with this; empty for every stream.
    #[serde(default)]
    pub(crate) prefix: String,
}

/// Why a definition was refused or failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ProjectionsError {
    #[error("invalid projection {field} {value:?}: {requirement}")]
    Invalid {
        field: &'static str,
        value: String,
        requirement: &'static str,
    },
    #[error("projection {0:?} already exists")]
    Exists(String),
    #[error("no projection named {0:?}")]
    NotFound(String),
    #[error("topic {0:?} does not exist (create it first)")]
    NoTopic(String),
    #[error("projections file: {0}")]
    Io(#[from] std::io::Error),
    #[error("projection {name:?}: {reason}")]
    Failed { name: String, reason: String },
}

/// A projection's definition and progress.
#[derive(Debug, Clone)]
pub(crate) struct Report {
    pub(crate) spec: Spec,
    /// `starting`, `running`, `failed` or `stopped`.
    pub(crate) state: &'static str,
    /// The last failure, while `failed`.
    pub(crate) error: Option<String>,
    pub(crate) checkpoint: Position,
    /// The store's head now.
    pub(crate) head: Position,
    pub(crate) lag: u64,
    pub(crate) applied: u64,
    pub(crate) failures: u64,
    /// Whether every event under its prefix committed before this report
    /// has been published.
    pub(crate) caught_up: bool,
}

struct Hosted {
    spec: Spec,
    handle: ProjectionHandle,
}

/// The hosted projections.
pub(crate) struct Projections {
    dir: PathBuf,
    store: EmbeddedStore,
    broker: Broker,
    runner: ProjectionRunner,
    hosted: Mutex<BTreeMap<String, Hosted>>,
}

impl Projections {
    /// Reads the definitions under `data_dir` and starts each.
    pub(crate) async fn open(
        data_dir: &Path,
        store: EmbeddedStore,
        broker: Broker,
    ) -> Result<Projections, ProjectionsError> {
        let dir = data_dir.join(PROJECTIONS_DIR);
        std::fs::create_dir_all(dir.join(CHECKPOINTS_DIR))?;
        let specs: Vec<Spec> = match std::fs::read(dir.join(SPECS_FILE)) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
                std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("{}: {e}", dir.join(SPECS_FILE).display()),
                )
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(e.into()),
        };
        let runner = ProjectionRunner::new(Arc::new(store.clone()));
        let p = Projections {
            dir,
            store,
            broker,
            runner,
            hosted: Mutex::new(BTreeMap::new()),
        };
        {
            let mut hosted = p.hosted.lock().await;
            for spec in specs {
                let handle = p.start(&spec);
                hosted.insert(spec.name.clone(), Hosted { spec, handle });
            }
        }
        Ok(p)
    }

    fn start(&self, spec: &Spec) -> ProjectionHandle {
        let mut bridge = PublishToTopic::new(
            Arc::new(self.broker.clone()),
            spec.topic.clone(),
            FileCheckpoint::new(self.checkpoint_path(&spec.name)),
        );
        if !spec.prefix.is_empty() {
            bridge = bridge.filter(GlobalFilter::all().stream_prefix(spec.prefix.clone()));
        }
        self.runner.start(spec.name.clone(), Arc::new(bridge))
    }

    fn checkpoint_path(&self, name: &str) -> PathBuf {
        // In a directory of their own: a checkpoint's temporary file
        // (`<name>.tmp`) never meets `projections.json.tmp`.
        self.dir.join(CHECKPOINTS_DIR).join(format!("{name}.ckpt"))
    }

    /// Checks a definition: its name, its topic's name and existence, its prefix.
    pub(crate) fn validate(&self, spec: &Spec) -> Result<(), ProjectionsError> {
        validate_name(&spec.name)?;
        if wharf_core::name::validate_topic(&spec.topic).is_err() {
            return Err(ProjectionsError::Invalid {
                field: "topic",
                value: spec.topic.chars().take(64).collect(),
                requirement: "must be a topic name (dot-separated segments, no wildcards)",
            });
        }
        if spec.prefix.chars().count() > 255 || spec.prefix.chars().any(char::is_control) {
            return Err(ProjectionsError::Invalid {
                field: "prefix",
                value: spec.prefix.chars().take(64).collect(),
                requirement: "must be at most 255 characters without control characters",
            });
        }
        if !self.broker.topics().iter().any(|t| t.name == spec.topic) {
            return Err(ProjectionsError::NoTopic(spec.topic.clone()));
        }
        Ok(())
    }

    /// Defines and starts a projection (from the start of the log).
    pub(crate) async fn create(&self, spec: Spec) -> Result<Report, ProjectionsError> {
        self.validate(&spec)?;
        let mut hosted = self.hosted.lock().await;
        if hosted.contains_key(&spec.name) {
            return Err(ProjectionsError::Exists(spec.name));
        }
        // A checkpoint left by a deleted projection of this name must not
        // carry over.
        match std::fs::remove_file(self.checkpoint_path(&spec.name)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e.into()),
            _ => {}
        }
        let mut specs: Vec<Spec> = hosted.values().map(|h| h.spec.clone()).collect();
        specs.push(spec.clone());
        self.persist(&specs).await?;
        let handle = self.start(&spec);
        hosted.insert(spec.name.clone(), Hosted { spec, handle });
        let h = &hosted[specs.last().map_or("", |s| s.name.as_str())];
        Ok(self.report(h).await)
    }

    /// Stops and forgets a projection (the topic and its messages stay).
    pub(crate) async fn delete(&self, name: &str) -> Result<Spec, ProjectionsError> {
        let mut hosted = self.hosted.lock().await;
        let Some(h) = hosted.remove(name) else {
            return Err(ProjectionsError::NotFound(name.to_owned()));
        };
        let specs: Vec<Spec> = hosted.values().map(|h| h.spec.clone()).collect();
        if let Err(e) = self.persist(&specs).await {
            hosted.insert(name.to_owned(), h);
            return Err(e);
        }
        let spec = h.spec.clone();
        h.handle.stop().await;
        let _ = std::fs::remove_file(self.checkpoint_path(name));
        Ok(spec)
    }

    /// The definition of `name`.
    pub(crate) async fn spec(&self, name: &str) -> Result<Spec, ProjectionsError> {
        let hosted = self.hosted.lock().await;
        hosted
            .get(name)
            .map(|h| h.spec.clone())
            .ok_or_else(|| ProjectionsError::NotFound(name.to_owned()))
    }

    /// Every projection's report, by name.
    pub(crate) async fn list(&self) -> Vec<Report> {
        let hosted = self.hosted.lock().await;
        let mut out = Vec::with_capacity(hosted.len());
        for h in hosted.values() {
            out.push(self.report(h).await);
        }
        out
    }

    /// One projection's report.
    pub(crate) async fn status(&self, name: &str) -> Result<Report, ProjectionsError> {
        let hosted = self.hosted.lock().await;
        let h = hosted
            .get(name)
            .ok_or_else(|| ProjectionsError::NotFound(name.to_owned()))?;
        Ok(self.report(h).await)
    }

    /// Resets `name`'s checkpoint and replays the log into its topic.
    pub(crate) async fn rebuild(&self, name: &str) -> Result<Report, ProjectionsError> {
        let hosted = self.hosted.lock().await;
        let h = hosted
            .get(name)
            .ok_or_else(|| ProjectionsError::NotFound(name.to_owned()))?;
        h.handle
            .rebuild()
            .await
            .map_err(|e| ProjectionsError::Failed {
                name: name.to_owned(),
                reason: e.to_string(),
            })?;
        Ok(self.report(h).await)
    }

    /// Stops every projection (before the store and broker close).
    pub(crate) async fn stop(&self) {
        let mut hosted = self.hosted.lock().await;
        for (_, h) in std::mem::take(&mut *hosted) {
            h.handle.stop().await;
        }
    }

    async fn report(&self, h: &Hosted) -> Report {
        let s = h.handle.status();
        let head = self.store.head().await.unwrap_or(s.head);
        let caught_up = !self
            .pending(&h.spec, s.checkpoint, head)
            .await
            .unwrap_or(true);
        let (state, error) = match s.state {
            ProjectionState::Starting => ("starting", None),
            ProjectionState::Running => ("running", None),
            ProjectionState::Failed(e) => ("failed", Some(e)),
            _ => ("stopped", None),
        };
        Report {
            spec: h.spec.clone(),
            state,
            error,
            checkpoint: s.checkpoint,
            head,
            lag: s.lag,
            applied: s.applied,
            failures: s.failures,
            caught_up,
        }
    }

    /// Whether an event under `spec`'s prefix lies in `[from, head)`.
    async fn pending(
        &self,
        spec: &Spec,
        mut from: Position,
        head: Position,
    ) -> wharf_eventstore::Result<bool> {
        let filter = if spec.prefix.is_empty() {
            GlobalFilter::all()
        } else {
            GlobalFilter::all().stream_prefix(spec.prefix.clone())
        };
        while from < head {
            let page = self.store.read_all(from, &filter, 1).await?;
            if let Some(e) = page.events.first() {
                return Ok(e.position < head);
            }
            if page.is_end || page.next <= from {
                return Ok(false);
            }
            from = page.next;
        }
        Ok(false)
    }

    async fn persist(&self, specs: &[Spec]) -> Result<(), ProjectionsError> {
        let dir = self.dir.clone();
        let bytes = serde_json::to_vec_pretty(specs).map_err(std::io::Error::other)?;
        tokio::task::spawn_blocking(move || -> std::io::Result<()> {
            let tmp = dir.join(format!("{SPECS_FILE}.tmp"));
            let mut f = std::fs::File::create(&tmp)?;
            std::io::Write::write_all(&mut f, &bytes)?;
            f.sync_all()?;
            std::fs::rename(&tmp, dir.join(SPECS_FILE))?;
            std::fs::File::open(&dir)?.sync_all()
        })
        .await
        .map_err(std::io::Error::other)??;
        Ok(())
    }
}

/// A projection name: 1 to 128 ASCII letters, digits, `-`, `_` or `.`,
/// not starting with `.` (it names a file under the data dir).
pub(crate) fn validate_name(name: &str) -> Result<(), ProjectionsError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(ProjectionsError::Invalid {
            field: "name",
            value: name.chars().take(64).collect(),
            requirement:
                "must be 1 to 128 ASCII letters, digits, '-', '_' or '.', not starting with '.'",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::validate_name;

    #[test]
    fn projection_names_are_safe_file_names() {
        for ok in ["orders", "orders-to-topic", "a.b_c-1", &"x".repeat(128)] {
            assert!(validate_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", ".hidden", "..", "a/b", "a b", "ü", &"x".repeat(129)] {
            assert!(validate_name(bad).is_err(), "{bad:?}");
        }
    }
}
