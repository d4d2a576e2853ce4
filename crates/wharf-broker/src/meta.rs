//! Metadata in redb: topic configs and consumer-group positions.
//!
//! Every change is one redb write transaction, committed with redb's default
//! (fsync'd, crash-safe) durability, so after a crash the metadata is exactly
//! as of the last commit: a topic exists with its config or not at all, and a
//! group's position is the last committed one (acks after it are redelivered).

use std::collections::HashMap;
use std::path::Path;

use redb::{Database, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

use crate::config::TopicConfig;
use crate::error::{storage_error, Error};

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
    db: Database,
}

fn json<T: Serialize>(v: &T) -> Vec<u8> {
    serde_json::to_vec(v).expect("metadata types serialize infallibly")
}

impl Meta {
    pub(crate) fn open(path: &Path) -> Result<Meta, Error> {
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
        Ok(Meta { db })
    }

    pub(crate) fn topics(&self) -> Result<Vec<(String, TopicConfig)>, Error> {
        let err = |e: &dyn std::fmt::Display| storage_error("read topics", e.to_string());
        let txn = self.db.begin_read().map_err(|e| err(&e))?;
        let table = txn.open_table(TOPICS).map_err(|e| err(&e))?;
        let mut out = Vec::new();
        for row in table.iter().map_err(|e| err(&e))? {
            let (k, v) = row.map_err(|e| err(&e))?;
            let cfg: TopicConfig = serde_json::from_slice(v.value()).map_err(|e| err(&e))?;
            out.push((k.value().to_owned(), cfg));
        }
        Ok(out)
    }

    pub(crate) fn put_topic(&self, name: &str, cfg: &TopicConfig) -> Result<(), Error> {
        let err = |e: &dyn std::fmt::Display| storage_error("write topic", e.to_string());
        let txn = self.db.begin_write().map_err(|e| err(&e))?;
        {
            let mut t = txn.open_table(TOPICS).map_err(|e| err(&e))?;
            t.insert(name, json(cfg).as_slice()).map_err(|e| err(&e))?;
        }
        txn.commit().map_err(|e| err(&e))
    }

    /// Removes a topic and every group position on it.
    pub(crate) fn delete_topic(&self, name: &str) -> Result<(), Error> {
        let err = |e: &dyn std::fmt::Display| storage_error("delete topic", e.to_string());
        let txn = self.db.begin_write().map_err(|e| err(&e))?;
        {
            let mut t = txn.open_table(TOPICS).map_err(|e| err(&e))?;
            t.remove(name).map_err(|e| err(&e))?;
            let mut c = txn.open_table(CURSORS).map_err(|e| err(&e))?;
            let prefix = format!("{name}\0");
            let keys: Vec<String> = c
                .range(prefix.as_str()..)
                .map_err(|e| err(&e))?
                .map_while(|row| {
                    let (k, _) = row.ok()?;
                    let k = k.value().to_owned();
                    k.starts_with(&prefix).then_some(k)
                })
                .collect();
            for k in keys {
                c.remove(k.as_str()).map_err(|e| err(&e))?;
            }
        }
        txn.commit().map_err(|e| err(&e))
    }

    pub(crate) fn cursors(&self) -> Result<HashMap<CursorKey, Cursor>, Error> {
        let err = |e: &dyn std::fmt::Display| storage_error("read cursors", e.to_string());
        let txn = self.db.begin_read().map_err(|e| err(&e))?;
        let table = txn.open_table(CURSORS).map_err(|e| err(&e))?;
        let mut out = HashMap::new();
        for row in table.iter().map_err(|e| err(&e))? {
            let (k, v) = row.map_err(|e| err(&e))?;
            let Some(key) = CursorKey::decode(k.value()) else {
                continue;
            };
            let c: Cursor = serde_json::from_slice(v.value()).map_err(|e| err(&e))?;
            out.insert(key, c);
        }
        Ok(out)
    }

    /// Writes the given cursors in one transaction.
    pub(crate) fn commit_cursors(&self, cursors: &[(CursorKey, Cursor)]) -> Result<(), Error> {
        if cursors.is_empty() {
            return Ok(());
        }
        let err = |e: &dyn std::fmt::Display| storage_error("commit cursors", e.to_string());
        let txn = self.db.begin_write().map_err(|e| err(&e))?;
        {
            let mut t = txn.open_table(CURSORS).map_err(|e| err(&e))?;
            for (k, c) in cursors {
                t.insert(k.encode().as_str(), json(c).as_slice())
                    .map_err(|e| err(&e))?;
            }
        }
        txn.commit().map_err(|e| err(&e))
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
