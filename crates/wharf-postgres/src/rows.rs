//! Converting between [`Message`]s and table rows, and sqlx errors into
//! Wharf's [`Error`]: the only place that knows how columns encode a message.
//!
//! Headers are stored as a JSON array of `[name, value]` pairs so their order
//! survives; the key and payload are `bytea`; times are ms since the epoch.

use std::collections::HashMap;

use bytes::Bytes;
use sqlx::postgres::PgRow;
use sqlx::{PgConnection, Row};
use uuid::Uuid;
use wharf_core::{Error, Headers, Message, MessageId, Receipt, Result, Timestamp};

use crate::schema::Sql;

/// The backend name used in errors.
pub(crate) const NAME: &str = "postgres";

/// Maps a sqlx error: connection trouble is [`Error::Unavailable`], the rest [`Error::Backend`].
/// A transaction rolled back by the server for a cause that may pass on a
/// retry: a deadlock victim (`40P01`), a serialization failure (`40001`).
pub(crate) fn is_transaction_rollback(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(d) if d.code().is_some_and(|c| c.starts_with("40")))
}

pub(crate) fn db_err(e: sqlx::Error) -> Error {
    let unavailable = match &e {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => true,
        // Class 08 (connection exception), 57P (operator intervention:
        // shutdown), 40 (transaction rollback: a deadlock victim, a
        // serialization failure — the same call may pass when retried).
        sqlx::Error::Database(d) => d
            .code()
            .is_some_and(|c| c.starts_with("08") || c.starts_with("57P") || c.starts_with("40")),
        _ => false,
    };
    if unavailable {
        Error::Unavailable {
            backend: NAME,
            source: Box::new(e),
        }
    } else {
        Error::Backend {
            backend: NAME,
            source: Box::new(e),
        }
    }
}

fn corrupt(what: String) -> Error {
    Error::Backend {
        backend: NAME,
        source: what.into(),
    }
}

pub(crate) fn uuid_of(id: MessageId) -> Uuid {
    Uuid::from_bytes(id.to_bytes())
}

pub(crate) fn id_of(u: Uuid) -> MessageId {
    MessageId::from_bytes(*u.as_bytes())
}

/// Headers as the JSON text stored in the `headers` column.
pub(crate) fn headers_json(h: &Headers) -> String {
    let pairs: Vec<(&str, &str)> = h.iter().collect();
    serde_json::to_string(&pairs).expect("string pairs always serialise")
}

fn headers_from_json(s: &str) -> Result<Headers> {
    let pairs: Vec<(String, String)> =
        serde_json::from_str(s).map_err(|e| corrupt(format!("bad headers column: {e}")))?;
    Ok(pairs.into_iter().collect())
}

fn ms(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// Rebuilds a message from a row with `id, key, headers (text), payload, ts`.
pub(crate) fn message_from_row(row: &PgRow) -> Result<Message> {
    let id: Uuid = row.try_get("id").map_err(db_err)?;
    let key: Option<Vec<u8>> = row.try_get("key").map_err(db_err)?;
    let headers: String = row.try_get("headers").map_err(db_err)?;
    let payload: Vec<u8> = row.try_get("payload").map_err(db_err)?;
    let ts: i64 = row.try_get("ts").map_err(db_err)?;
    let mut b = Message::builder()
        .id(id_of(id))
        .headers(headers_from_json(&headers)?)
        .payload(Bytes::from(payload))
        .timestamp(Timestamp::from_millis(u64::try_from(ts).unwrap_or(0)));
    if let Some(k) = key {
        b = b.key(Bytes::from(k));
    }
    Ok(b.build())
}

/// A batch as the publish statements' array parameters.
struct Columns {
    ids: Vec<Uuid>,
    keys: Vec<Option<Vec<u8>>>,
    headers: Vec<String>,
    payloads: Vec<Vec<u8>>,
    ts: Vec<i64>,
    deliver_at: Vec<Option<i64>>,
    expires_at: Vec<Option<i64>>,
    priority: Vec<i16>,
}

impl Columns {
    fn new(msgs: &[Message]) -> Self {
        let n = msgs.len();
        let mut c = Columns {
            ids: Vec::with_capacity(n),
            keys: Vec::with_capacity(n),
            headers: Vec::with_capacity(n),
            payloads: Vec::with_capacity(n),
            ts: Vec::with_capacity(n),
            deliver_at: Vec::with_capacity(n),
            expires_at: Vec::with_capacity(n),
            priority: Vec::with_capacity(n),
        };
        for m in msgs {
            c.ids.push(uuid_of(m.id()));
            c.keys.push(m.key().map(|k| k.to_vec()));
            c.headers.push(headers_json(m.headers()));
            c.payloads.push(m.payload().to_vec());
            c.ts.push(ms(m.timestamp().as_millis()));
            c.deliver_at.push(m.deliver_at().map(|t| ms(t.as_millis())));
            c.expires_at.push(m.expires_at().map(|t| ms(t.as_millis())));
            c.priority.push(i16::from(m.priority()));
        }
        c
    }

    /// `statement` with `$1` = topic, `$2` = count and the arrays bound.
    fn bind<'q>(
        &'q self,
        statement: &'q str,
        topic: &'q str,
    ) -> sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments> {
        sqlx::query(statement)
            .bind(topic)
            .bind(i64::try_from(self.ids.len()).unwrap_or(i64::MAX))
            .bind(&self.ids)
            .bind(&self.keys)
            .bind(&self.headers)
            .bind(&self.payloads)
            .bind(&self.ts)
            .bind(&self.deliver_at)
            .bind(&self.expires_at)
            .bind(&self.priority)
    }
}

/// `23505`: a unique index refused a row.
fn is_unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(d) if d.code().is_some_and(|c| c == "23505"))
}

/// [`insert_batch`] for a statement that is its own transaction (a pool
/// connection, autocommit): first as one plain `INSERT` that returns only
/// the first offset, which stores the whole batch when none of its ids is
/// in the topic yet (the receipts are then `base + i`, none a duplicate);
/// when one is (`23505`, the statement stored nothing), as
/// [`insert_batch`]. Not for a caller's transaction: the failed attempt
/// would abort it.
pub(crate) async fn insert_batch_autocommit(
    sql: &Sql,
    conn: &mut PgConnection,
    topic: &str,
    msgs: &[Message],
) -> Result<Vec<Receipt>> {
    let cols = Columns::new(msgs);
    match cols
        .bind(&sql.publish_fresh, topic)
        .fetch_one(&mut *conn)
        .await
    {
        Ok(row) => {
            let base: i64 = row.try_get("base").map_err(db_err)?;
            Ok(msgs
                .iter()
                .zip(base..)
                .map(|(m, offset)| Receipt {
                    id: m.id(),
                    partition: 0,
                    offset: u64::try_from(offset).ok(),
                    duplicate: false,
                })
                .collect())
        }
        Err(e) if is_unique_violation(&e) => insert_columns(sql, conn, topic, msgs, &cols).await,
        Err(e) => Err(db_err(e)),
    }
}

/// Inserts `msgs` into `topic` in order on `conn` (pool connection or
/// transaction), skipping ids the topic already holds (`duplicate` receipts
/// carry the stored offset).
pub(crate) async fn insert_batch(
    sql: &Sql,
    conn: &mut PgConnection,
    topic: &str,
    msgs: &[Message],
) -> Result<Vec<Receipt>> {
    insert_columns(sql, conn, topic, msgs, &Columns::new(msgs)).await
}

async fn insert_columns(
    sql: &Sql,
    conn: &mut PgConnection,
    topic: &str,
    msgs: &[Message],
    cols: &Columns,
) -> Result<Vec<Receipt>> {
    let n = msgs.len();
    let ids = &cols.ids;
    let rows = cols
        .bind(&sql.publish, topic)
        .fetch_all(&mut *conn)
        .await
        .map_err(db_err)?;
    let mut stored: HashMap<Uuid, i64> = HashMap::with_capacity(rows.len());
    for r in &rows {
        stored.insert(
            r.try_get("id").map_err(db_err)?,
            r.try_get("offset").map_err(db_err)?,
        );
    }
    let mut existing: HashMap<Uuid, i64> = HashMap::new();
    if stored.len() < n {
        let missing: Vec<Uuid> = ids
            .iter()
            .filter(|id| !stored.contains_key(id))
            .copied()
            .collect();
        let rows = sqlx::query(&sql.lookup_ids)
            .bind(topic)
            .bind(&missing)
            .fetch_all(&mut *conn)
            .await
            .map_err(db_err)?;
        for r in &rows {
            existing.insert(
                r.try_get("id").map_err(db_err)?,
                r.try_get("offset").map_err(db_err)?,
            );
        }
    }
    let mut seen = std::collections::HashSet::with_capacity(n);
    let mut receipts = Vec::with_capacity(n);
    for (m, id) in msgs.iter().zip(ids) {
        let first = seen.insert(*id);
        let (offset, duplicate) = match stored.get(id) {
            Some(o) if first => (Some(*o), false),
            Some(o) => (Some(*o), true),
            None => (existing.get(id).copied(), true),
        };
        receipts.push(Receipt {
            id: m.id(),
            partition: 0,
            offset: offset.and_then(|o| u64::try_from(o).ok()),
            duplicate,
        });
    }
    Ok(receipts)
}
