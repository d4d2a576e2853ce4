//! Wharf on Redis Streams, through the `redis` crate (async, tokio).
//!
//! [`RedisBackend`] implements [`wharf_core::Backend`]; [`RedisDedupStore`]
//! is a `SET NX EX` dedup store for the router's dedup middleware.
//!
//! # Mapping
//!
//! | Wharf | Redis |
//! |---|---|
//! | backend namespace | key prefix: every key is `<prefix>:…` ([`RedisBackend::delete_all`] removes them) |
//! | topic `orders.created` | stream `<prefix>:s:orders.created`, created by the first XADD (or XGROUP CREATE … MKSTREAM); every published (or `ensure_topic`ed) topic is added to the set `<prefix>:topics` |
//! | pattern `orders.*`, `orders.>` | every stream whose topic (from `<prefix>:topics`) matches, read in one `XREADGROUP`/`XREAD`; the set is re-read every 200 ms, and streams found later are read from their beginning |
//! | publish | one Lua script: `GET` the dedup key, else `XADD … MAXLEN ~ n *` and `SET <prefix>:d:<id> <stream id> EX <window>`; a batch is one pipeline |
//! | offset | stream id `<ms>-<seq>` as `ms << 22 \| seq` (exact and ordered for ids made by `XADD *`; see `wire`) |
//! | consumer group | `XGROUP CREATE` + `XREADGROUP`; each subscription is one consumer `c-<uuid>` of the group |
//! | private subscription | `XREAD` from a position (`$` resolved to the newest id at subscribe) |
//! | `StartPosition::{Earliest, Latest, Offset}` | group/read start `0-0`, `$`, the id just before the offset |
//! | `ack` | `XACK` |
//! | `nack(delay)` / dropping a delivery | the entry id goes into the sorted set `<prefix>:r:<topic>:<group>`, scored by when it is due; a reader claims due ids with `XCLAIM` (which counts the delivery) |
//! | visibility timeout | entries idle longer than the lease are claimed with `XPENDING … IDLE` + `XCLAIM` (not `XAUTOCLAIM`, which cannot skip entries parked for a delayed nack); default 30 s |
//! | `extend(by)` | `XCLAIM … JUSTID` (resets idle time), repeated every lease/2 until `by` is covered |
//! | attempt | the entry's delivery count in the pending entries list |
//! | `max_deliveries` / `reject` | a nack (or drop, or lease expiry) on the last attempt, or a reject, `XADD`s a copy to `dlq.<topic>` with the `wharf-dlq-*` headers and `XACK`s the original |
//! | `max_in_flight` | client side: a subscription never reads more entries than it has free slots |
//! | message | entry fields `id`, `ts`, `k` (key), `h:<name>` per header (order kept), `p` (payload); all binary safe |
//! | TTL | checked when read: an expired entry is acked and never handed out |
//! | limit | [`MAX_MESSAGE_BYTES`] (1 MiB) of payload + key + headers |
//!
//! The scripts are loaded at connect and reloaded (same SHA1) when Redis
//! answers `NOSCRIPT` after a restart or `SCRIPT FLUSH`.
//!
//! A settlement of a stale delivery (its lease expired and the entry was
//! claimed again, or it was acked) is detected by the entry's owner and
//! delivery count and ignored, so it cannot cause a third delivery.
//!
//! # Not supported (not declared)
//! - `Persistence`: the Redis on this machine runs without RDB/AOF; with
//!   `appendonly yes` Redis streams and groups survive restarts, but this
//!   crate cannot tell how the server is configured.
//! - `ReplayFromTime`: stream ids carry the server's time, not the
//!   publisher's timestamp.
//! - `OrderingPerKey`: members of a group read concurrently and a nack
//!   reorders, so per-key order is not guaranteed for a group.
//! - `DelayedPublish`, `Priorities`, `Backpressure` (a stream accepts
//!   regardless of consumers; `MAXLEN ~` trims the oldest entries instead).
//!
//! # Durability
//! A publish returns once Redis has applied the XADD in memory; what
//! survives a crash depends on the server's `appendonly`/`appendfsync`.

#![warn(missing_docs)]

mod acker;
mod backend;
mod config;
mod dedup;
mod error;
mod scripts;
mod subscription;
mod wire;

pub use backend::RedisBackend;
pub use config::{RedisConfig, MAX_MESSAGE_BYTES};
pub use dedup::RedisDedupStore;
pub use error::RedisError;
