//! Metadata in redb: topic configs and consumer-group positions.
//!
//! Every change is one redb write transaction, committed with redb's default
//! (fsync'd, crash-safe) durability, so after a crash the metadata is exactly
//! as of the last commit: a topic exists with its config or not at all, and a
//! group's position is the last committed one (acks after it are redelivered).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{RwLock, RwLockReadGuard};

use redb::{Database, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

use crate::config::TopicConfig;
use crate::error::{storage_error, Error, StorageError, BACKEND};

const TOPICS: TableDefinition<&str, &[u8]> = TableDefinition::new("topics");
const CURSORS: TableDefinition<&str, &[u8]> = TableDefinition::new("cursors");

/// A group's persisted position in one partition.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Cursor {
    /// Every offset below this is settled.
    pub floor: u64,
    /// Settled offsets at or above `floor` (out-of-order acks).
    pub settled: Vec<u64>,
    /// Nacked messages waiting for a delay: (offset, not-before ms, attempts so far).
    pub delayed: Vec<(u64, u64, u32)>,
    /// Other unsettled messages with delivery attempts: (offset, attempts).
    /// A message leased (and handed to the application) at the commit counts
    /// that lease: if the process dies holding it, the attempt failed — so a
    /// message that keeps crashing its consumer reaches `max_deliveries`.
    /// Absent in metadata written before it existed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub attempts: Vec<(u64, u32)>,
}

impl Cursor {
    /// Keeps the cursor within a partition that now ends at `end` (it was
    /// truncated): nothing at or past `end` counts as settled.
    pub(crate) fn clamp(&mut self, end: u64) {
        self.floor = self.floor.min(end);
        self.settled.retain(|&o| o < end);
        self.delayed.retain(|&(o, _, _)| o < end);
    }
}

/// Key of a cursor: the group, topic and partition it belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct CursorKey {
    pub group: String,
    pub topic: String,
    pub partition: u32,
}

impl CursorKey {
    fn encode(&self) -> String {
        format!("{}\0{}\0{}", self.topic, self.group, self.partition)
    }

    fn decode(s: &str) -> Option<CursorKey> {
        let mut it = s.split('\0');
        let topic = it.next()?.to_owned();
        let group = it.next()?.to_owned();
        let partition = it.next()?.parse().ok()?;
        Some(CursorKey {
            group,
            topic,
            partition,
        })
    }
}

pub(crate) struct Meta {
    path: PathBuf,
    /// `None` only while a reopen failed (the next call tries again).
    db: RwLock<Option<Database>>,
    /// Set by an I/O error: redb then refuses every transaction
    /// (`PreviousIo`) until it is reopened, which the next call does.
    reopen: AtomicBool,
}

/// The open database, held for the length of one metadata call.
struct Db<'a>(RwLockReadGuard<'a, Option<Database>>);

impl std::ops::Deref for Db<'_> {
    type Target = Database;
    fn deref(&self) -> &Database {
        match self.0.as_ref() {
            Some(db) => db,
            None => unreachable!("Meta::db returns only an open database"),
        }
    }
}

fn json<T: Serialize>(v: &T) -> Vec<u8> {
    serde_json::to_vec(v).expect("metadata types serialize infallibly")
}

impl Meta {
    /// The database, reopened first if an I/O error (a full disk) left it
    /// refusing transactions, so metadata writes resume once the cause
    /// passes instead of failing until a restart.
    fn db(&self) -> Result<Db<'_>, Error> {
        if self.reopen.load(Ordering::Acquire) {
            let mut g = self.db.write().unwrap_or_else(|p| p.into_inner());
            if self.reopen.swap(false, Ordering::AcqRel) || g.is_none() {
                // The old handle must be closed before the file is opened again.
                *g = None;
                match Database::create(&self.path) {
                    Ok(db) => *g = Some(db),
                    Err(e) => return Err(self.fail("reopen metadata", e.into())),
                }
            }
        }
        let g = self.db.read().unwrap_or_else(|p| p.into_inner());
        if g.is_none() {
            return Err(storage_error("metadata", "not open after a failed reopen"));
        }
        Ok(Db(g))
    }

    /// A redb failure during `what`: a full disk becomes
    /// [`Error::StorageFull`]; any I/O error schedules a reopen.
    fn fail(&self, what: &'static str, e: redb::Error) -> Error {
        let full = match &e {
            redb::Error::Io(io) => {
                self.reopen.store(true, Ordering::Release);
                matches!(
                    io.kind(),
                    std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded
                )
            }
            redb::Error::PreviousIo => {
                self.reopen.store(true, Ordering::Release);
                false
            }
            _ => false,
        };
        if full {
            return Error::StorageFull {
                backend: BACKEND,
                source: Box::new(StorageError {
                    what,
                    detail: e.to_string(),
                }),
            };
        }
        storage_error(what, e)
    }

    /// Opens the store and reads it once through. Damaged bytes in it are
    /// an error naming the file (the store's own checks, or a panic inside
    /// it caught here): the server refuses to start rather than crash, and
    /// the topics' data under `topics/` is untouched.
    pub(crate) fn open(path: &Path) -> Result<Meta, Error> {
        let checked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let m = Self::open_unchecked(path)?;
            m.topics()?;
            m.cursors()?;
            Ok(m)
        }));
        checked.unwrap_or_else(|_| {
            Err(storage_error(
                "open metadata",
                format!(
                    "{} is damaged (reading it failed its own consistency checks); restore it from a backup",
                    path.display()
                ),
            ))
        })
    }

    fn open_unchecked(path: &Path) -> Result<Meta, Error> {
        let db = Database::create(path).map_err(|e| storage_error("open metadata", e))?;
        let txn = db
            .begin_write()
            .map_err(|e| storage_error("open metadata", e))?;
        txn.open_table(TOPICS)
            .map_err(|e| storage_error("open metadata", e))?;
        txn.open_table(CURSORS)
            .map_err(|e| storage_error("open metadata", e))?;
        txn.commit()
            .map_err(|e| storage_error("open metadata", e))?;
        Ok(Meta {
            path: path.to_owned(),
            db: RwLock::new(Some(db)),
            reopen: AtomicBool::new(false),
        })
    }

    pub(crate) fn topics(&self) -> Result<Vec<(String, TopicConfig)>, Error> {
        let what = "read topics";
        let err = |e: redb::Error| self.fail(what, e);
        let db = self.db()?;
        let txn = db.begin_read().map_err(|e| err(e.into()))?;
        let table = txn.open_table(TOPICS).map_err(|e| err(e.into()))?;
        let mut out = Vec::new();
        for row in table.iter().map_err(|e| err(e.into()))? {
            let (k, v) = row.map_err(|e| err(e.into()))?;
            let cfg: TopicConfig =
                serde_json::from_slice(v.value()).map_err(|e| storage_error(what, e))?;
            out.push((k.value().to_owned(), cfg));
        }
        Ok(out)
    }

    pub(crate) fn put_topic(&self, name: &str, cfg: &TopicConfig) -> Result<(), Error> {
        let what = "write topic";
        let err = |e: redb::Error| self.fail(what, e);
        let db = self.db()?;
        let txn = db.begin_write().map_err(|e| err(e.into()))?;
        {
            let mut t = txn.open_table(TOPICS).map_err(|e| err(e.into()))?;
            t.insert(name, json(cfg).as_slice())
                .map_err(|e| err(e.into()))?;
        }
        txn.commit().map_err(|e| err(e.into()))
    }

    /// Removes a topic and every group position on it.
    pub(crate) fn delete_topic(&self, name: &str) -> Result<(), Error> {
        let what = "delete topic";
        let err = |e: redb::Error| self.fail(what, e);
        let db = self.db()?;
        let txn = db.begin_write().map_err(|e| err(e.into()))?;
        {
            let mut t = txn.open_table(TOPICS).map_err(|e| err(e.into()))?;
            t.remove(name).map_err(|e| err(e.into()))?;
            let mut c = txn.open_table(CURSORS).map_err(|e| err(e.into()))?;
            let prefix = format!("{name}\0");
            let keys: Vec<String> = c
                .range(prefix.as_str()..)
                .map_err(|e| err(e.into()))?
                .map_while(|row| {
                    let (k, _) = row.ok()?;
                    let k = k.value().to_owned();
                    k.starts_with(&prefix).then_some(k)
                })
                .collect();
            for k in keys {
                c.remove(k.as_str()).map_err(|e| err(e.into()))?;
            }
        }
        txn.commit().map_err(|e| err(e.into()))
    }

    pub(crate) fn cursors(&self) -> Result<HashMap<CursorKey, Cursor>, Error> {
        let what = "read cursors";
        let err = |e: redb::Error| self.fail(what, e);
        let db = self.db()?;
        let txn = db.begin_read().map_err(|e| err(e.into()))?;
        let table = txn.open_table(CURSORS).map_err(|e| err(e.into()))?;
        let mut out = HashMap::new();
        for row in table.iter().map_err(|e| err(e.into()))? {
            let (k, v) = row.map_err(|e| err(e.into()))?;
            let Some(key) = CursorKey::decode(k.value()) else {
                continue;
            };
            let c: Cursor =
                serde_json::from_slice(v.value()).map_err(|e| storage_error(what, e))?;
            out.insert(key, c);
        }
        Ok(out)
    }

    /// Writes the given cursors in one transaction.
    pub(crate) fn commit_cursors(&self, cursors: &[(CursorKey, Cursor)]) -> Result<(), Error> {
        if cursors.is_empty() {
            return Ok(());
        }
        let what = "commit cursors";
        let err = |e: redb::Error| self.fail(what, e);
        let db = self.db()?;
        let txn = db.begin_write().map_err(|e| err(e.into()))?;
        {
            let mut t = txn.open_table(CURSORS).map_err(|e| err(e.into()))?;
            for (k, c) in cursors {
                t.insert(k.encode().as_str(), json(c).as_slice())
                    .map_err(|e| err(e.into()))?;
            }
        }
        txn.commit().map_err(|e| err(e.into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics_and_cursors_survive_reopen_and_delete_removes_both() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("meta.redb");
        let key = CursorKey {
            group: "g".into(),
            topic: "a.b".into(),
            partition: 3,
        };
        let other = CursorKey {
            topic: "a.bc".into(),
            ..key.clone()
        };
        let cur = Cursor {
            floor: 10,
            settled: vec![12, 14],
            delayed: vec![(11, 99, 2)],
            attempts: vec![(13, 3)],
        };
        {
            let m = Meta::open(&path).unwrap();
            m.put_topic("a.b", &TopicConfig::default().partitions(4))
                .unwrap();
            m.commit_cursors(&[
                (key.clone(), cur.clone()),
                (other.clone(), Cursor::default()),
            ])
            .unwrap();
        }
        let m = Meta::open(&path).unwrap();
        assert_eq!(m.topics().unwrap()[0].1.partitions, 4);
        assert_eq!(m.cursors().unwrap().get(&key), Some(&cur));
        m.delete_topic("a.b").unwrap();
        assert!(m.topics().unwrap().is_empty());
        let left = m.cursors().unwrap();
        assert!(!left.contains_key(&key));
        assert!(
            left.contains_key(&other),
            "prefix delete must not touch a.bc"
        );
    }
}
