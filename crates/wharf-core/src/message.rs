//! The message every backend carries: id, key, headers, payload, timestamp.

use std::cell::Cell;
use std::fmt;
use std::hash::{BuildHasher, Hasher};
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;

use crate::codec::{Codec, CodecError};
use crate::error::Error;
use crate::header;

/// A unique, time-sortable message id (a UUIDv7).
///
/// Ids made in one process sort in creation order; brokers use them for
/// deduplication, so a retried publish should reuse the same id.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MessageId(uuid::Uuid);

impl MessageId {
    /// A new id for the current time.
    pub fn new() -> Self {
        Self::new_with_millis().0
    }

    /// A new id and the Unix milliseconds inside it.
    ///
    /// The layout is RFC 9562's UUIDv7 with a 16-bit counter ("method 1"):
    /// 48 bits of Unix milliseconds, version, the counter's top 12 bits in
    /// `rand_a`, variant, the counter's low 4 bits, then 58 random bits. One
    /// process-wide atomic holds the last (milliseconds, counter), so ids of
    /// one process sort in creation order across threads; a clock that steps
    /// back, or more than 65,536 ids in one millisecond, borrows the next
    /// millisecond. The random bits come from a per-thread generator seeded
    /// from the OS: they make ids of different processes distinct, not
    /// unguessable (ids are not secrets). ~480 instructions fewer per id than
    /// `uuid::Uuid::now_v7` (callgrind), which matters at millions of
    /// messages a second.
    fn new_with_millis() -> (Self, u64) {
        static LAST: AtomicU64 = AtomicU64::new(0);
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() * 1000 + u64::from(d.subsec_millis()));
        let candidate = (now_ms & ((1 << 48) - 1)) << 16;
        let mut prev = LAST.load(Ordering::Relaxed);
        let packed = loop {
            let next = if candidate > prev {
                candidate
            } else {
                prev + 1
            };
            match LAST.compare_exchange_weak(prev, next, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => break next,
                Err(p) => prev = p,
            }
        };
        let (ms, seq) = (packed >> 16, packed & 0xFFFF);
        let hi = (ms << 16) | 0x7000 | (seq >> 4);
        let lo = (0b10 << 62) | ((seq & 0xF) << 58) | (random_u64() >> 6);
        (MessageId(uuid::Uuid::from_u64_pair(hi, lo)), ms)
    }

    /// Milliseconds since the Unix epoch at which the id was made.
    pub fn created_at(self) -> Timestamp {
        self.0.get_timestamp().map_or(Timestamp(0), |t| {
            let (secs, nanos) = t.to_unix();
            Timestamp(secs * 1000 + u64::from(nanos / 1_000_000))
        })
    }

    /// The Unix milliseconds a UUIDv7 id carries (for an id made by
    /// [`MessageId::new`], its creation time); `None` for any other kind of
    /// UUID, whose bits hold no such time.
    ///
    /// Wire formats use it to leave out a timestamp the id already holds
    /// (see [`Message::timestamp_is_in_id`]) and to read it back.
    pub fn unix_millis(self) -> Option<Timestamp> {
        let b = self.0.as_bytes();
        (b[6] >> 4 == 7 && b[8] >> 6 == 0b10).then(|| {
            Timestamp(u64::from_be_bytes([
                0, 0, b[0], b[1], b[2], b[3], b[4], b[5],
            ]))
        })
    }

    /// The id as 16 big-endian bytes (sorts like the id).
    pub fn to_bytes(self) -> [u8; 16] {
        *self.0.as_bytes()
    }

    /// Rebuilds an id from [`MessageId::to_bytes`].
    pub fn from_bytes(bytes: [u8; 16]) -> Self {
        MessageId(uuid::Uuid::from_bytes(bytes))
    }
}

/// 64 random bits from a per-thread xorshift64* generator seeded from the
/// OS (through `RandomState`), for the random part of message ids.
fn random_u64() -> u64 {
    thread_local! {
        static STATE: Cell<u64> = Cell::new({
            let mut h = std::collections::hash_map::RandomState::new().build_hasher();
            h.write_u64(0x9e37_79b9_7f4a_7c15);
            h.finish() | 1
        });
    }
    STATE.with(|c| {
        let mut x = c.get();
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        c.set(x);
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    })
}

impl Default for MessageId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0.hyphenated(), f)
    }
}

impl fmt::Debug for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MessageId({self})")
    }
}

impl MessageId {
    /// Parses the text form (what `Display` writes, or any UUID text) from
    /// bytes, as a wire header or field carries it: no UTF-8 pass, no copy.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] when `text` is not a UUID.
    pub fn parse_ascii(text: &[u8]) -> Result<Self, Error> {
        uuid::Uuid::try_parse_ascii(text)
            .map(MessageId)
            .map_err(|_| Error::InvalidArgument {
                name: "message id",
                reason: format!("{:?} is not a UUID", String::from_utf8_lossy(text)),
            })
    }
}

impl FromStr for MessageId {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        Self::parse_ascii(s.as_bytes())
    }
}

/// Milliseconds since the Unix epoch.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Default)]
pub struct Timestamp(u64);

impl Timestamp {
    /// The current wall-clock time.
    pub fn now() -> Self {
        Self::from(SystemTime::now())
    }

    /// A timestamp from milliseconds since the Unix epoch.
    pub const fn from_millis(ms: u64) -> Self {
        Timestamp(ms)
    }

    /// Milliseconds since the Unix epoch.
    pub const fn as_millis(self) -> u64 {
        self.0
    }

    /// This timestamp plus `d` (saturating).
    #[must_use]
    pub fn saturating_add(self, d: Duration) -> Self {
        Timestamp(
            self.0
                .saturating_add(u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
        )
    }
}

impl From<SystemTime> for Timestamp {
    fn from(t: SystemTime) -> Self {
        let ms = t
            .duration_since(UNIX_EPOCH)
            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
            .unwrap_or(0);
        Timestamp(ms)
    }
}

impl From<Timestamp> for SystemTime {
    fn from(t: Timestamp) -> Self {
        UNIX_EPOCH + Duration::from_millis(t.0)
    }
}

/// Highest message priority.
pub const MAX_PRIORITY: u8 = 9;

/// Message headers: string pairs that keep insertion order, one value per name.
///
/// Inserting, reading and replacing by name cost O(1) on average however
/// many headers a message has (past a few, names are indexed), so building
/// a message header by header is linear overall.
#[derive(Default)]
pub struct Headers {
    list: Vec<(String, String)>,
    index: HeaderIndex<String>,
}

impl Headers {
    /// No headers.
    pub const fn new() -> Self {
        Headers {
            list: Vec::new(),
            index: HeaderIndex { by_name: None },
        }
    }

    /// Sets `name` to `value`, replacing (in place) any earlier value.
    pub fn insert(&mut self, name: impl Into<String>, value: impl Into<String>) {
        self.index.insert(&mut self.list, name.into(), value.into());
    }

    /// The value of `name`.
    pub fn get(&self, name: &str) -> Option<&str> {
        let i = self.index.position(&self.list, name)?;
        Some(self.list[i].1.as_str())
    }

    /// Removes `name`, returning its value (O(n): later headers move up).
    pub fn remove(&mut self, name: &str) -> Option<String> {
        let i = self.index.position(&self.list, name)?;
        let (_, value) = self.list.remove(i);
        // Positions after `i` moved; the index is rebuilt when next needed.
        self.index = HeaderIndex::default();
        Some(value)
    }

    /// Whether `name` is set.
    pub fn contains(&self, name: &str) -> bool {
        self.get(name).is_some()
    }

    /// Number of headers.
    pub fn len(&self) -> usize {
        self.list.len()
    }

    /// Whether there are no headers.
    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    /// The headers in insertion order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = (&str, &str)> {
        self.list.iter().map(|(n, v)| (n.as_str(), v.as_str()))
    }

    /// Bytes of all names and values.
    pub fn byte_len(&self) -> usize {
        self.list.iter().map(|(n, v)| n.len() + v.len()).sum()
    }
}

impl Clone for Headers {
    /// Clones the headers; the copy indexes its names again when it needs to.
    fn clone(&self) -> Self {
        Headers {
            list: self.list.clone(),
            index: HeaderIndex::default(),
        }
    }
}

impl PartialEq for Headers {
    fn eq(&self, other: &Self) -> bool {
        self.list == other.list
    }
}

impl Eq for Headers {}

impl fmt::Debug for Headers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

/// [`Headers`]' rule for a repeated name — it keeps its first place and
/// takes the new value — over a list of (name, value) pairs of any type, so
/// code that holds headers in another form (a server's decoded request)
/// keeps the same rule. Names are found by a linear scan while the list is
/// short and through an index past that, so many headers cost n, not n².
#[derive(Debug)]
pub struct HeaderIndex<K> {
    // Boxed: a map is 48 bytes inline and most messages never index, so
    // every `Headers` (in every `Message`) stays one word larger, not six.
    #[allow(clippy::box_collection)]
    by_name: Option<Box<std::collections::HashMap<K, usize>>>,
}

impl<K> Default for HeaderIndex<K> {
    fn default() -> Self {
        HeaderIndex { by_name: None }
    }
}

impl<K: Eq + std::hash::Hash + Clone> HeaderIndex<K> {
    /// Headers found by a linear scan; more are indexed by name.
    const SCAN_MAX: usize = 16;

    /// Sets `name` to `value` in `list` (which holds only what this index
    /// was given, in order).
    pub fn insert<V>(&mut self, list: &mut Vec<(K, V)>, name: K, value: V) {
        if self.by_name.is_none() && list.len() >= Self::SCAN_MAX {
            self.by_name = Some(Box::new(
                list.iter()
                    .enumerate()
                    .map(|(i, (n, _))| (n.clone(), i))
                    .collect(),
            ));
        }
        let found = match &self.by_name {
            Some(map) => map.get(&name).copied(),
            None => list.iter().position(|(n, _)| *n == name),
        };
        match found {
            Some(i) => list[i].1 = value,
            None => {
                if let Some(map) = &mut self.by_name {
                    map.insert(name.clone(), list.len());
                }
                list.push((name, value));
            }
        }
    }

    /// Where `name` is in `list` (which holds only what this index was
    /// given, in order).
    pub fn position<V, Q>(&self, list: &[(K, V)], name: &Q) -> Option<usize>
    where
        K: std::borrow::Borrow<Q>,
        Q: Eq + std::hash::Hash + ?Sized,
    {
        match &self.by_name {
            Some(map) => map.get(name).copied(),
            None => list.iter().position(|(n, _)| n.borrow() == name),
        }
    }
}

impl<N: Into<String>, V: Into<String>> FromIterator<(N, V)> for Headers {
    /// As [`Headers::insert`] for each pair in turn.
    fn from_iter<I: IntoIterator<Item = (N, V)>>(iter: I) -> Self {
        let mut h = Headers::new();
        for (n, v) in iter {
            h.insert(n, v);
        }
        h
    }
}

impl IntoIterator for Headers {
    type Item = (String, String);
    type IntoIter = std::vec::IntoIter<(String, String)>;
    fn into_iter(self) -> Self::IntoIter {
        self.list.into_iter()
    }
}

/// A message: what a publisher sends and a consumer receives.
///
/// Cloning is cheap for the payload and key (reference-counted [`Bytes`]).
#[derive(Clone, PartialEq, Eq)]
pub struct Message {
    id: MessageId,
    key: Option<Bytes>,
    headers: Headers,
    payload: Bytes,
    timestamp: Timestamp,
}

impl Message {
    /// A message with `payload`, a fresh id, the current time and nothing else.
    pub fn new(payload: impl Into<Bytes>) -> Self {
        // One clock read: the timestamp is the one inside the UUIDv7.
        let (id, ms) = MessageId::new_with_millis();
        Message {
            id,
            key: None,
            headers: Headers::new(),
            payload: payload.into(),
            timestamp: Timestamp(ms),
        }
    }

    /// A message from stored or received parts, as backends decode it (no
    /// id is generated and no clock is read).
    pub fn from_parts(
        id: MessageId,
        key: Option<Bytes>,
        headers: Headers,
        payload: Bytes,
        timestamp: Timestamp,
    ) -> Self {
        Message {
            id,
            key,
            headers,
            payload,
            timestamp,
        }
    }

    /// Starts building a message.
    pub fn builder() -> MessageBuilder {
        MessageBuilder {
            msg: Message::new(Bytes::new()),
        }
    }

    /// The message id.
    pub fn id(&self) -> MessageId {
        self.id
    }

    /// The partitioning / ordering key, if any.
    pub fn key(&self) -> Option<&Bytes> {
        self.key.as_ref()
    }

    /// The headers.
    pub fn headers(&self) -> &Headers {
        &self.headers
    }

    /// The headers, for changing (middleware adds trace and retry headers).
    pub fn headers_mut(&mut self) -> &mut Headers {
        &mut self.headers
    }

    /// The payload bytes.
    pub fn payload(&self) -> &Bytes {
        &self.payload
    }

    /// When the message was created (by the publisher, not the broker).
    pub fn timestamp(&self) -> Timestamp {
        self.timestamp
    }

    /// Whether the timestamp is the time inside the id (a UUIDv7), as for
    /// every message made by [`Message::new`] or the builder without
    /// [`MessageBuilder::timestamp`]. A wire format may then leave the
    /// timestamp out and read it back with [`MessageId::unix_millis`].
    pub fn timestamp_is_in_id(&self) -> bool {
        self.id.unix_millis() == Some(self.timestamp)
    }

    /// Size counted against message size limits: payload + key + header
    /// names and values. The id and timestamp (24 bytes) and a backend's own
    /// framing are not counted; backends leave room for them.
    pub fn size(&self) -> usize {
        self.payload.len() + self.key.as_ref().map_or(0, Bytes::len) + self.headers.byte_len()
    }

    /// Decodes the payload with `codec`.
    ///
    /// # Errors
    /// [`Error::Codec`] if the payload is not a valid `T`.
    pub fn decode<T, C: Codec<T>>(&self, codec: &C) -> Result<T, Error> {
        Ok(codec.decode(&self.payload)?)
    }

    /// When the message may first be delivered, from [`header::DELIVER_AT_MS`].
    pub fn deliver_at(&self) -> Option<Timestamp> {
        self.ms_header(header::DELIVER_AT_MS)
    }

    /// When the message expires, from [`header::EXPIRES_AT_MS`].
    pub fn expires_at(&self) -> Option<Timestamp> {
        self.ms_header(header::EXPIRES_AT_MS)
    }

    /// Priority 0..=9 from [`header::PRIORITY`]; 0 when unset or unparsable.
    pub fn priority(&self) -> u8 {
        self.headers
            .get(header::PRIORITY)
            .and_then(|v| v.parse::<u8>().ok())
            .map_or(0, |p| p.min(MAX_PRIORITY))
    }

    fn ms_header(&self, name: &str) -> Option<Timestamp> {
        self.headers
            .get(name)
            .and_then(|v| v.parse().ok())
            .map(Timestamp::from_millis)
    }

    /// Returns a builder holding a copy of this message (same id and timestamp).
    pub fn to_builder(&self) -> MessageBuilder {
        MessageBuilder { msg: self.clone() }
    }
}

impl fmt::Debug for Message {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Message")
            .field("id", &self.id)
            .field("key", &self.key)
            .field("headers", &self.headers)
            .field("payload_len", &self.payload.len())
            .field("timestamp", &self.timestamp)
            .finish()
    }
}

/// Builds a [`Message`]; see [`Message::builder`].
#[derive(Debug, Clone)]
#[must_use]
pub struct MessageBuilder {
    msg: Message,
}

impl MessageBuilder {
    /// Sets the id (reuse one id when retrying a publish, so dedup can work).
    pub fn id(mut self, id: MessageId) -> Self {
        self.msg.id = id;
        self
    }

    /// Sets the key: messages with one key keep their order.
    pub fn key(mut self, key: impl Into<Bytes>) -> Self {
        self.msg.key = Some(key.into());
        self
    }

    /// Adds (or replaces) a header.
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.msg.headers.insert(name, value);
        self
    }

    /// Replaces all headers.
    pub fn headers(mut self, headers: Headers) -> Self {
        self.msg.headers = headers;
        self
    }

    /// Sets the raw payload.
    pub fn payload(mut self, payload: impl Into<Bytes>) -> Self {
        self.msg.payload = payload.into();
        self
    }

    /// Encodes `value` as the payload with `codec` and sets `content-type`.
    ///
    /// # Errors
    /// [`Error::Codec`] if `value` cannot be encoded.
    pub fn encode<T, C: Codec<T>>(mut self, codec: &C, value: &T) -> Result<Self, CodecError> {
        self.msg.payload = codec.encode(value)?;
        self.msg
            .headers
            .insert(header::CONTENT_TYPE, codec.content_type());
        Ok(self)
    }

    /// Sets the creation time.
    pub fn timestamp(mut self, ts: Timestamp) -> Self {
        self.msg.timestamp = ts;
        self
    }

    /// Delivers the message no earlier than `at` (delayed publish).
    pub fn deliver_at(self, at: Timestamp) -> Self {
        self.header(header::DELIVER_AT_MS, at.as_millis().to_string())
    }

    /// Delivers the message no earlier than `delay` from now.
    pub fn deliver_after(self, delay: Duration) -> Self {
        self.deliver_at(Timestamp::now().saturating_add(delay))
    }

    /// Drops the message undelivered once `ttl` has passed since the message's timestamp.
    pub fn ttl(self, ttl: Duration) -> Self {
        let at = self.msg.timestamp.saturating_add(ttl);
        self.header(header::EXPIRES_AT_MS, at.as_millis().to_string())
    }

    /// Sets the priority, 0 (lowest, the default) to [`MAX_PRIORITY`]; higher values are clamped.
    pub fn priority(self, priority: u8) -> Self {
        self.header(header::PRIORITY, priority.min(MAX_PRIORITY).to_string())
    }

    /// Finishes the message.
    pub fn build(self) -> Message {
        self.msg
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_behave_as_a_scanned_list_below_and_past_the_index_threshold() {
        // The slow, obvious twin: a list searched from the front.
        fn model_insert(m: &mut Vec<(String, String)>, k: &str, v: &str) {
            match m.iter_mut().find(|(n, _)| n == k) {
                Some(slot) => slot.1 = v.to_owned(),
                None => m.push((k.to_owned(), v.to_owned())),
            }
        }
        for n in [3usize, 16, 17, 200] {
            // Names repeat (every seventh pair reuses an earlier name).
            let pairs: Vec<(String, String)> = (0..n)
                .map(|i| {
                    let name = if i % 7 == 6 { i / 3 } else { i };
                    (format!("h{name}"), format!("v{i}"))
                })
                .collect();
            let mut model = Vec::new();
            let mut h = Headers::new();
            for (i, (k, v)) in pairs.iter().enumerate() {
                model_insert(&mut model, k, v);
                h.insert(k.clone(), v.clone());
                // Removing (which drops the index) then inserting again.
                if i % 11 == 10 {
                    let victim = model[model.len() / 2].0.clone();
                    let want = model
                        .iter()
                        .position(|(n, _)| *n == victim)
                        .map(|p| model.remove(p).1);
                    assert_eq!(h.remove(&victim), want);
                }
            }
            let got: Vec<(String, String)> = h
                .iter()
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect();
            assert_eq!(got, model, "{n} pairs");
            for (k, v) in &model {
                assert_eq!(h.get(k), Some(v.as_str()));
            }
            assert_eq!(h.get("absent"), None);
            let collected: Headers = pairs.into_iter().collect();
            let mut clone = collected.clone();
            clone.insert("h0", "again");
            assert_eq!(
                clone.len(),
                collected.len(),
                "{n} pairs: a clone finds its names"
            );
        }
    }

    #[test]
    fn inserting_many_headers_one_by_one_is_linear() {
        // 200k distinct names: a scan per insert would take ~2·10¹⁰
        // comparisons (minutes); the index takes well under a second.
        let started = std::time::Instant::now();
        let mut h = Headers::new();
        for i in 0..200_000u32 {
            h.insert(i.to_string(), "v");
        }
        h.insert("7", "w");
        assert_eq!(h.len(), 200_000);
        assert_eq!(h.get("7"), Some("w"));
        assert!(
            started.elapsed() < std::time::Duration::from_secs(20),
            "{:?}",
            started.elapsed()
        );
    }

    #[test]
    fn ids_are_unique_and_sort_in_creation_order() {
        let ids: Vec<MessageId> = (0..1000).map(|_| MessageId::new()).collect();
        let mut sorted = ids.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted, ids);
    }

    #[test]
    fn ids_are_valid_v7_and_sort_in_creation_order_across_threads() {
        let per_thread: Vec<Vec<MessageId>> = std::thread::scope(|s| {
            let hs: Vec<_> = (0..4)
                .map(|_| s.spawn(|| (0..20_000).map(|_| MessageId::new()).collect::<Vec<_>>()))
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        for ids in &per_thread {
            assert!(ids.windows(2).all(|w| w[0] < w[1]), "per-thread order");
        }
        let mut all: Vec<MessageId> = per_thread.into_iter().flatten().collect();
        let n = all.len();
        all.sort();
        all.dedup();
        assert_eq!(all.len(), n, "ids are unique");
        let u = all[0].0;
        assert_eq!(u.get_version_num(), 7);
        assert_eq!(u.get_variant(), uuid::Variant::RFC4122);
        let now = Timestamp::now().as_millis();
        let at = all[n - 1].created_at().as_millis();
        assert!(at <= now + 1 && at + 60_000 > now, "{at} vs {now}");
    }

    #[test]
    fn ids_made_in_order_by_different_threads_keep_that_order() {
        // One process-wide counter: an id made after another (happens-before
        // through the join) sorts after it, whichever thread made it.
        let a = std::thread::spawn(MessageId::new).join().unwrap();
        let b = MessageId::new();
        let c = std::thread::spawn(MessageId::new).join().unwrap();
        assert!(a < b && b < c);
    }

    #[test]
    fn new_message_timestamp_is_the_ids_creation_time() {
        let before = Timestamp::now();
        let m = Message::new("x");
        let after = Timestamp::now();
        assert_eq!(m.timestamp(), m.id().created_at());
        assert!(before <= m.timestamp() && m.timestamp() <= after);
    }

    #[test]
    fn the_time_in_an_id_is_read_only_from_a_uuidv7() {
        let m = Message::new("x");
        assert_eq!(m.id().unix_millis(), Some(m.timestamp()));
        assert!(m.timestamp_is_in_id());
        let built = Message::builder().payload("y").build();
        assert!(built.timestamp_is_in_id());
        let later = Timestamp::from_millis(m.timestamp().as_millis() + 1);
        assert!(!Message::builder()
            .id(m.id())
            .timestamp(later)
            .build()
            .timestamp_is_in_id());
        // RFC 9562's UUIDv7 example: 0x017F22E279B0 ms.
        let v7: MessageId = "017f22e2-79b0-7cc3-98c4-dc0c0c07398f".parse().unwrap();
        assert_eq!(
            v7.unix_millis(),
            Some(Timestamp::from_millis(0x017F_22E2_79B0))
        );
        // A v4 id holds no time, nor does a v7-looking one of another variant.
        let v4: MessageId = "919108f7-52d1-4320-9bac-f847db4148a8".parse().unwrap();
        assert_eq!(v4.unix_millis(), None);
        let ncs: MessageId = "017f22e2-79b0-7cc3-18c4-dc0c0c07398f".parse().unwrap();
        assert_eq!(ncs.unix_millis(), None);
        let foreign = Message::builder().id(v4).build();
        assert!(!foreign.timestamp_is_in_id());
    }

    #[test]
    fn id_round_trips_through_string_and_bytes() {
        let id = MessageId::new();
        assert_eq!(id.to_string().parse::<MessageId>().unwrap(), id);
        assert_eq!(MessageId::from_bytes(id.to_bytes()), id);
        assert!("nope".parse::<MessageId>().is_err());
        assert_eq!(
            MessageId::parse_ascii(id.to_string().as_bytes()).unwrap(),
            id
        );
        assert!(MessageId::parse_ascii(b"\xff-not-a-uuid").is_err());
    }

    #[test]
    fn headers_keep_insertion_order_and_replace_in_place() {
        let mut h = Headers::new();
        h.insert("b", "1");
        h.insert("a", "2");
        h.insert("b", "3");
        assert_eq!(h.iter().collect::<Vec<_>>(), vec![("b", "3"), ("a", "2")]);
        assert_eq!(h.remove("b").as_deref(), Some("3"));
        assert_eq!(h.get("b"), None);
        assert_eq!(h.len(), 1);
    }

    #[test]
    fn builder_sets_every_field_and_size_counts_them() {
        let id = MessageId::new();
        let m = Message::builder()
            .id(id)
            .key("k1")
            .header("h", "vv")
            .payload("12345")
            .timestamp(Timestamp::from_millis(7))
            .build();
        assert_eq!(m.id(), id);
        assert_eq!(m.key().map(|k| &k[..]), Some(&b"k1"[..]));
        assert_eq!(m.headers().get("h"), Some("vv"));
        assert_eq!(&m.payload()[..], b"12345");
        assert_eq!(m.timestamp().as_millis(), 7);
        assert_eq!(m.size(), 5 + 2 + 3);
    }

    #[test]
    fn scheduling_options_are_carried_in_reserved_headers() {
        let m = Message::builder()
            .timestamp(Timestamp::from_millis(1_000))
            .deliver_at(Timestamp::from_millis(5_000))
            .ttl(Duration::from_secs(2))
            .priority(200)
            .build();
        assert_eq!(m.deliver_at(), Some(Timestamp::from_millis(5_000)));
        assert_eq!(m.expires_at(), Some(Timestamp::from_millis(3_000)));
        assert_eq!(m.priority(), MAX_PRIORITY);
        assert_eq!(Message::new("x").priority(), 0);
        assert_eq!(Message::new("x").deliver_at(), None);
    }
}
