//! The tables one backend keeps in its PostgreSQL schema, and every SQL
//! statement run against them, with the schema name filled in once at connect.
//!
//! Layout: `topics` (next offset per topic), `messages` (the log), `groups`,
//! `cursors` (how far each group has read each topic) and `deliveries` (one
//! row per message a group still has to settle: lease, attempts, failures).
//!
//! A claim updates only columns no index covers (`leased_until`,
//! `attempts`, `token`), and `deliveries` leaves 60 % of each page free
//! (`fillfactor = 40`: a claimed row is 16 bytes wider than a fresh one, so
//! at 50 about one claim in seven found no room), so a claim is a heap-only
//! (HOT) update: no new index entries. Settlements find their row by
//! `(gid, seq)` and check `token`. A claim-and-ack loop over 300,000 rows
//! (psql, 1,024 a claim) wrote 307 bytes of WAL per message instead of 732
//! and took 2.9 s instead of 6.1 s. Up to session 22 a `deliveries_token`
//! index made every claim a full update; connecting drops it.

use wharf_core::{Error, Result};

/// Checks a schema (or table) name: `[a-z_][a-z0-9_]*`, at most 48 bytes, so
/// it can be spliced into SQL and into a NOTIFY channel name unquoted.
///
/// # Errors
/// [`Error::InvalidArgument`] naming the rule it breaks.
pub(crate) fn validate_ident(what: &'static str, name: &str) -> Result<()> {
    let ok_first = name
        .bytes()
        .next()
        .is_some_and(|b| b.is_ascii_lowercase() || b == b'_');
    let ok_rest = name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if !ok_first || !ok_rest || name.len() > 48 {
        return Err(Error::InvalidArgument {
            name: what,
            reason: format!("{name:?} must match [a-z_][a-z0-9_]* and be at most 48 bytes"),
        });
    }
    Ok(())
}

/// The NOTIFY channel publishes to this schema wake up.
pub(crate) fn channel(schema: &str) -> String {
    format!("wharf_{schema}")
}

/// DDL creating everything (idempotent; serialised by an advisory lock so
/// concurrent first connects don't race on the catalog).
pub(crate) fn ddl(s: &str) -> String {
    let chan = channel(s);
    format!(
        r#"
BEGIN;
SELECT pg_advisory_xact_lock(hashtext('wharf-schema-{s}'));
CREATE SCHEMA IF NOT EXISTS {s};
CREATE OR REPLACE FUNCTION {s}.now_ms() RETURNS bigint LANGUAGE sql VOLATILE
  AS $$ SELECT (extract(epoch FROM clock_timestamp()) * 1000)::bigint $$;
CREATE TABLE IF NOT EXISTS {s}.topics (
  topic text PRIMARY KEY,
  next_offset bigint NOT NULL
);
CREATE TABLE IF NOT EXISTS {s}.messages (
  seq bigserial PRIMARY KEY,
  topic text NOT NULL,
  "offset" bigint NOT NULL,
  id uuid NOT NULL,
  key bytea,
  headers jsonb NOT NULL,
  payload bytea NOT NULL,
  ts bigint NOT NULL,
  deliver_at bigint,
  expires_at bigint,
  priority smallint NOT NULL DEFAULT 0,
  UNIQUE (topic, "offset"),
  UNIQUE (topic, id)
);
CREATE TABLE IF NOT EXISTS {s}.groups (
  gid bigserial PRIMARY KEY,
  name text NOT NULL,
  pattern text NOT NULL,
  regex text NOT NULL,
  private boolean NOT NULL,
  UNIQUE (name, pattern)
);
CREATE TABLE IF NOT EXISTS {s}.cursors (
  gid bigint NOT NULL REFERENCES {s}.groups ON DELETE CASCADE,
  topic text NOT NULL,
  last_offset bigint NOT NULL,
  PRIMARY KEY (gid, topic)
);
CREATE TABLE IF NOT EXISTS {s}.deliveries (
  gid bigint NOT NULL REFERENCES {s}.groups ON DELETE CASCADE,
  seq bigint NOT NULL,
  priority smallint NOT NULL,
  available_at bigint NOT NULL,
  expires_at bigint,
  leased_until bigint,
  attempts int NOT NULL DEFAULT 0,
  first_failure_ms bigint,
  last_failure_ms bigint,
  token bigint,
  PRIMARY KEY (gid, seq)
) WITH (fillfactor = 40);
CREATE INDEX IF NOT EXISTS deliveries_ready ON {s}.deliveries (gid, priority DESC, seq);
DO $$ BEGIN
  IF NOT coalesce((SELECT 'fillfactor=40' = ANY(reloptions) FROM pg_class
                   WHERE oid = '{s}.deliveries'::regclass), false) THEN
    ALTER TABLE {s}.deliveries SET (fillfactor = 40);
  END IF;
END $$;
DROP INDEX IF EXISTS {s}.deliveries_token;
CREATE SEQUENCE IF NOT EXISTS {s}.tokens;
CREATE OR REPLACE FUNCTION {s}.notify() RETURNS trigger LANGUAGE plpgsql
  AS $$ BEGIN PERFORM pg_notify('{chan}', ''); RETURN NULL; END $$;
CREATE OR REPLACE TRIGGER messages_notify AFTER INSERT ON {s}.messages
  FOR EACH STATEMENT EXECUTE FUNCTION {s}.notify();
COMMIT;
"#
    )
}

/// Every statement the backend runs, with the schema spliced in.
#[derive(Debug)]
pub(crate) struct Sql {
    pub ensure_topic: String,
    pub publish: String,
    pub publish_fresh: String,
    pub lookup_ids: String,
    pub create_group: String,
    pub find_group: String,
    pub init_cursors: String,
    pub lock_group: String,
    pub discover_topics: String,
    pub materialize: String,
    pub sweep_expired: String,
    pub analyze_deliveries: String,
    pub claim: String,
    pub expired_at_limit: String,
    pub ack: String,
    pub nack: String,
    pub take_for_dead_letter: String,
    pub message_by_seq: String,
    pub extend: String,
    pub unclaim: String,
    pub delete_group: String,
}

impl Sql {
    pub(crate) fn new(s: &str) -> Self {
        Sql {
            ensure_topic: format!(
                "INSERT INTO {s}.topics (topic, next_offset) VALUES ($1, 0) ON CONFLICT DO NOTHING"
            ),
            // One statement per batch: the topic row lock (held to commit)
            // serialises publishers per topic, so offsets become visible in order.
            publish: format!(
                r#"WITH tp AS (
  INSERT INTO {s}.topics AS t (topic, next_offset) VALUES ($1, $2)
  ON CONFLICT (topic) DO UPDATE SET next_offset = t.next_offset + $2
  RETURNING next_offset - $2 AS base
), ins AS (
  INSERT INTO {s}.messages (topic, "offset", id, key, headers, payload, ts, deliver_at, expires_at, priority)
  SELECT $1, tp.base + u.ord - 1, u.id, u.key, u.headers::jsonb, u.payload, u.ts, u.deliver_at, u.expires_at, u.priority
  FROM tp, UNNEST($3::uuid[], $4::bytea[], $5::text[], $6::bytea[], $7::int8[], $8::int8[], $9::int8[], $10::int2[])
    WITH ORDINALITY AS u(id, key, headers, payload, ts, deliver_at, expires_at, priority, ord)
  ON CONFLICT (topic, id) DO NOTHING
  RETURNING id, "offset"
)
SELECT id, "offset" FROM ins"#
            ),
            // The same insert without `ON CONFLICT` or `RETURNING`, for a
            // batch on its own autocommit statement: one whose ids are all new
            // (the common case) skips the speculative-insertion pre-check of
            // every row and the per-row result set; offsets are `base + i`. A
            // duplicate id fails it with `23505` (nothing stored) and the
            // batch is retried with `publish`.
            publish_fresh: format!(
                r#"WITH tp AS (
  INSERT INTO {s}.topics AS t (topic, next_offset) VALUES ($1, $2)
  ON CONFLICT (topic) DO UPDATE SET next_offset = t.next_offset + $2
  RETURNING next_offset - $2 AS base
), ins AS (
  INSERT INTO {s}.messages (topic, "offset", id, key, headers, payload, ts, deliver_at, expires_at, priority)
  SELECT $1, tp.base + u.ord - 1, u.id, u.key, u.headers::jsonb, u.payload, u.ts, u.deliver_at, u.expires_at, u.priority
  FROM tp, UNNEST($3::uuid[], $4::bytea[], $5::text[], $6::bytea[], $7::int8[], $8::int8[], $9::int8[], $10::int2[])
    WITH ORDINALITY AS u(id, key, headers, payload, ts, deliver_at, expires_at, priority, ord)
)
SELECT base FROM tp"#
            ),
            lookup_ids: format!(
                r#"SELECT id, "offset" FROM {s}.messages WHERE topic = $1 AND id = ANY($2)"#
            ),
            create_group: format!(
                "INSERT INTO {s}.groups (name, pattern, regex, private) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT (name, pattern) DO NOTHING RETURNING gid"
            ),
            find_group: format!("SELECT gid FROM {s}.groups WHERE name = $1 AND pattern = $2"),
            // $3: 0 = earliest, 1 = latest, 2 = offset $4, 3 = time $4.
            init_cursors: format!(
                r#"INSERT INTO {s}.cursors (gid, topic, last_offset)
SELECT $1, t.topic, CASE $3::int
  WHEN 0 THEN -1
  WHEN 1 THEN t.next_offset - 1
  WHEN 2 THEN $4 - 1
  ELSE coalesce((SELECT min(m."offset") FROM {s}.messages m WHERE m.topic = t.topic AND m.ts >= $4) - 1,
                t.next_offset - 1)
END
FROM {s}.topics t WHERE t.topic ~ $2
ON CONFLICT DO NOTHING"#
            ),
            // A transaction-scoped advisory lock (no row lock, so no WAL write
            // and no fsync when there is nothing new) serialises materialising.
            lock_group: format!(
                "SELECT EXISTS (SELECT 1 FROM {s}.groups WHERE gid = $1) \
                 FROM (SELECT pg_advisory_xact_lock(hashtext('{s}'), $1::int)) AS l"
            ),
            discover_topics: format!(
                "INSERT INTO {s}.cursors (gid, topic, last_offset) \
                 SELECT $1, topic, -1 FROM {s}.topics WHERE topic ~ $2 ON CONFLICT DO NOTHING"
            ),
            materialize: format!(
                r#"WITH new AS (
  SELECT m.seq, m.topic, m."offset", m.priority, m.deliver_at, m.expires_at
  FROM {s}.cursors c JOIN {s}.messages m ON m.topic = c.topic AND m."offset" > c.last_offset
  WHERE c.gid = $1
), ins AS (
  INSERT INTO {s}.deliveries (gid, seq, priority, available_at, expires_at)
  SELECT $1, seq, priority, coalesce(deliver_at, 0), expires_at FROM new
  WHERE expires_at IS NULL OR expires_at > {s}.now_ms()
  ON CONFLICT DO NOTHING
), upd AS (
  UPDATE {s}.cursors c SET last_offset = x.mx
  FROM (SELECT topic, max("offset") AS mx FROM new GROUP BY topic) x
  WHERE c.gid = $1 AND c.topic = x.topic
)
SELECT count(*) FROM new"#
            ),
            analyze_deliveries: format!("ANALYZE {s}.deliveries"),
            sweep_expired: format!(
                "DELETE FROM {s}.deliveries WHERE gid = $1 AND leased_until IS NULL \
                 AND expires_at <= {s}.now_ms()"
            ),
            claim: format!(
                r#"WITH c AS (
  SELECT seq FROM {s}.deliveries
  WHERE gid = $1 AND available_at <= {s}.now_ms()
    AND (leased_until IS NULL OR (leased_until <= {s}.now_ms() AND attempts < $4))
    AND (expires_at IS NULL OR expires_at > {s}.now_ms())
  ORDER BY priority DESC, seq
  LIMIT $2
  FOR UPDATE SKIP LOCKED
), u AS (
  UPDATE {s}.deliveries d
  SET leased_until = {s}.now_ms() + $3, attempts = d.attempts + 1, token = nextval('{s}.tokens')
  WHERE d.gid = $1 AND d.seq = ANY(ARRAY(SELECT seq FROM c))
  RETURNING d.seq, d.attempts, d.token, d.priority
)
SELECT u.seq, u.attempts, u.token, m.topic, m."offset", m.id, m.key, m.headers::text AS headers, m.payload, m.ts
FROM u JOIN {s}.messages m ON m.seq = u.seq
ORDER BY u.priority DESC, u.seq"#
            ),
            // Leases that ran out on the last allowed attempt: dead-lettered, not re-claimed.
            expired_at_limit: format!(
                "SELECT token, seq FROM {s}.deliveries WHERE gid = $1 AND leased_until IS NOT NULL \
                 AND leased_until <= {s}.now_ms() AND attempts >= $2"
            ),
            // $2 = tokens, $3 = their rows' seqs (the key; the token checks the lease).
            ack: format!(
                "DELETE FROM {s}.deliveries WHERE gid = $1 AND seq = ANY($3) AND token = ANY($2) \
                 RETURNING token"
            ),
            // $3 = delay ms, $4 = attempts limit (rows at the limit go to the
            // DLQ instead), $5 = seq.
            nack: format!(
                "UPDATE {s}.deliveries SET leased_until = NULL, token = NULL, \
                 available_at = {s}.now_ms() + $3, \
                 first_failure_ms = coalesce(first_failure_ms, {s}.now_ms()), \
                 last_failure_ms = {s}.now_ms() \
                 WHERE gid = $1 AND seq = $5 AND token = $2 AND attempts < $4 RETURNING attempts"
            ),
            take_for_dead_letter: format!(
                "DELETE FROM {s}.deliveries WHERE gid = $1 AND seq = $3 AND token = $2 \
                 RETURNING seq, attempts, coalesce(first_failure_ms, {s}.now_ms()) AS first_ms, \
                 {s}.now_ms() AS last_ms"
            ),
            message_by_seq: format!(
                r#"SELECT topic, "offset", id, key, headers::text AS headers, payload, ts FROM {s}.messages WHERE seq = $1"#
            ),
            extend: format!(
                "UPDATE {s}.deliveries SET leased_until = {s}.now_ms() + $3 \
                 WHERE gid = $1 AND seq = $4 AND token = $2"
            ),
            unclaim: format!(
                "UPDATE {s}.deliveries SET leased_until = NULL, token = NULL, \
                 attempts = greatest(attempts - 1, 0) \
                 WHERE gid = $1 AND seq = ANY($3) AND token = ANY($2)"
            ),
            delete_group: format!("DELETE FROM {s}.groups WHERE gid = $1"),
        }
    }
}
