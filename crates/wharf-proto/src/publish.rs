//! The publish request encoded straight from `wharf-core` messages, decoded
//! straight back into them, and the receipts read back from either form of
//! `PublishResponse`. The client sends [`PublishBatch`] instead of a
//! `v1::PublishRequest` so that a batch costs no `v1::Message` (and no copy
//! of each id into a buffer of its own) per message; the server reads the
//! same bytes with [`decode_publish`] into [`DecodedPublish`], whose payloads
//! and keys are slices of the request buffer.

use bytes::{BufMut, Bytes};
use prost::encoding::{
    decode_key, decode_varint, encoded_len_varint, skip_field, DecodeContext, WireType,
};
use wharf_core::{
    Error, HeaderIndex, Headers, Message, MessageId, PublishSource, Receipt, Timestamp,
};

use crate::convert::{id_from_wire, receipt_from_proto, timestamp_from_wire};
use crate::frame::{self, FrameError, GRPC_HEADER};
use crate::v1;

/// A `v1::PublishRequest` that owns `wharf-core` messages and encodes them
/// directly. Encode-only: decoding skips every field (servers decode
/// `v1::PublishRequest`).
#[derive(Debug, Default)]
pub struct PublishBatch {
    /// The topic.
    pub topic: String,
    /// The messages, in order.
    pub messages: Vec<Message>,
    /// Ask for the compact `PublishResponse` (see the proto).
    pub compact_receipts: bool,
}

/// Length of a length-delimited field (tags below 16 take one key byte).
fn ld_len(len: usize) -> usize {
    1 + encoded_len_varint(len as u64) + len
}

/// `encode_varint` with one `put_slice` instead of a `put_u8` (and its
/// capacity check) per byte.
#[inline]
fn put_varint(mut v: u64, buf: &mut impl BufMut) {
    if v < 0x80 {
        buf.put_u8(v as u8);
        return;
    }
    let mut tmp = [0u8; 10];
    let mut n = 0;
    while v >= 0x80 {
        tmp[n] = (v as u8) | 0x80;
        v >>= 7;
        n += 1;
    }
    tmp[n] = v as u8;
    buf.put_slice(&tmp[..=n]);
}

/// The key of a field below 16 (one byte).
#[inline]
fn put_key(tag: u32, wire_type: WireType, buf: &mut impl BufMut) {
    debug_assert!(tag < 16);
    buf.put_u8(((tag << 3) | wire_type as u32) as u8);
}

fn put_ld(tag: u32, bytes: &[u8], buf: &mut impl BufMut) {
    put_key(tag, WireType::LengthDelimited, buf);
    put_varint(bytes.len() as u64, buf);
    buf.put_slice(bytes);
}

fn header_len(name: &str, value: &str) -> usize {
    let n = if name.is_empty() {
        0
    } else {
        ld_len(name.len())
    };
    let v = if value.is_empty() {
        0
    } else {
        ld_len(value.len())
    };
    n + v
}

/// The encoded length of `m` as a `v1::Message` (without its own key and
/// length prefix), matching [`crate::convert::message_to_proto`].
fn message_len(m: &Message) -> usize {
    let mut len = ld_len(16);
    if let Some(k) = m.key() {
        len += ld_len(k.len());
    }
    for (name, value) in m.headers().iter() {
        len += ld_len(header_len(name, value));
    }
    if !m.payload().is_empty() {
        len += ld_len(m.payload().len());
    }
    let ts = m.timestamp().as_millis();
    if ts != 0 {
        len += 1 + encoded_len_varint(ts);
    }
    len
}

fn encode_message(m: &Message, buf: &mut impl BufMut) {
    put_ld(1, &m.id().to_bytes(), buf);
    if let Some(k) = m.key() {
        put_ld(2, k, buf);
    }
    for (name, value) in m.headers().iter() {
        put_key(3, WireType::LengthDelimited, buf);
        put_varint(header_len(name, value) as u64, buf);
        if !name.is_empty() {
            put_ld(1, name.as_bytes(), buf);
        }
        if !value.is_empty() {
            put_ld(2, value.as_bytes(), buf);
        }
    }
    if !m.payload().is_empty() {
        put_ld(4, m.payload(), buf);
    }
    let ts = m.timestamp().as_millis();
    if ts != 0 {
        put_key(5, WireType::Varint, buf);
        put_varint(ts, buf);
    }
}

impl PublishBatch {
    /// Appends this request to `buf` as one gRPC message: the 5-byte header,
    /// then the same bytes as [`prost::Message::encode_raw`]. One pass over
    /// the messages: the header's length is written last, so nothing walks
    /// the batch first for `encoded_len`.
    ///
    /// # Errors
    /// [`FrameError::TooLarge`] for a request over 4 GiB (`buf` is then
    /// left as it was).
    pub fn encode_framed(&self, buf: &mut Vec<u8>) -> Result<(), FrameError> {
        let start = buf.len();
        buf.extend_from_slice(&[0; GRPC_HEADER]);
        prost::Message::encode_raw(self, buf);
        let len = buf.len() - start - GRPC_HEADER;
        let header = &mut &mut buf[start..start + GRPC_HEADER];
        frame::put_header(header, len).inspect_err(|_| buf.truncate(start))
    }
}

impl prost::Message for PublishBatch {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        if !self.topic.is_empty() {
            put_ld(1, self.topic.as_bytes(), buf);
        }
        for m in &self.messages {
            put_key(2, WireType::LengthDelimited, buf);
            put_varint(message_len(m) as u64, buf);
            encode_message(m, buf);
        }
        if self.compact_receipts {
            put_key(3, WireType::Varint, buf);
            put_varint(1, buf);
        }
    }

    /// Encode-only: every field is skipped (servers decode `v1::PublishRequest`).
    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: WireType,
        buf: &mut impl bytes::Buf,
        ctx: prost::encoding::DecodeContext,
    ) -> Result<(), prost::DecodeError> {
        prost::encoding::skip_field(wire_type, tag, buf, ctx)
    }

    fn encoded_len(&self) -> usize {
        let topic = if self.topic.is_empty() {
            0
        } else {
            ld_len(self.topic.len())
        };
        let messages: usize = self.messages.iter().map(|m| ld_len(message_len(m))).sum();
        topic + messages + if self.compact_receipts { 2 } else { 0 }
    }

    fn clear(&mut self) {
        self.topic.clear();
        self.messages.clear();
        self.compact_receipts = false;
    }
}

/// A `v1::PublishRequest` decoded for the server (its side of
/// [`PublishBatch`]).
#[derive(Debug)]
pub struct DecodedPublish {
    /// The topic.
    pub topic: String,
    /// The client asked for the compact `PublishResponse`.
    pub compact_receipts: bool,
    /// Every message carried its own id (so a compact response, which names
    /// no ids, is enough for the client).
    pub all_ids: bool,
    /// The messages in order, or the error of the first message that is
    /// well-formed protobuf but not a valid message (an id that is not 16
    /// bytes). Kept apart from malformed protobuf, which fails the decode,
    /// so the server can report it after checking the caller's rights, as
    /// for any other bad input.
    pub messages: Result<WireMessages, Error>,
}

impl DecodedPublish {
    /// The same request from its generated form (for callers that already
    /// decoded one with prost).
    pub fn from_proto(req: v1::PublishRequest) -> Self {
        let data = Bytes::from(prost::Message::encode_to_vec(&req));
        decode_publish(&data).expect("what prost encodes is a valid PublishRequest")
    }
}

/// The messages of a decoded publish request, read in place: ids,
/// timestamps and sizes decoded, keys, payloads and headers kept as
/// positions in the request's bytes (header strings checked as UTF-8). A
/// server stores them from here without building a [`Message`] per message;
/// [`WireMessages::message`] builds one when it is needed.
#[derive(Debug, Clone)]
pub struct WireMessages {
    data: Bytes,
    messages: Vec<WireMessage>,
    /// (name, value) positions of every message's headers, each message's
    /// names unique as in [`Headers`] (a repeated name keeps its first
    /// place and its last value).
    headers: Vec<(Span, Span)>,
}

#[derive(Debug, Clone, Copy)]
struct Span {
    start: usize,
    end: usize,
}

#[derive(Debug, Clone)]
struct WireMessage {
    id: MessageId,
    key: Option<Span>,
    payload: Span,
    timestamp: Timestamp,
    /// Index range into `WireMessages::headers`.
    headers: (usize, usize),
    size: usize,
}

impl WireMessages {
    #[inline]
    fn at(&self, s: Span) -> &[u8] {
        &self.data[s.start..s.end]
    }

    fn text(&self, s: Span) -> &str {
        std::str::from_utf8(self.at(s)).expect("header strings are checked at decode")
    }

    /// Its headers, in order, each name once.
    #[inline]
    pub fn headers(&self, i: usize) -> impl ExactSizeIterator<Item = (&str, &str)> + '_ {
        let (from, to) = self.messages[i].headers;
        self.headers[from..to]
            .iter()
            .map(|&(n, v)| (self.text(n), self.text(v)))
    }

    /// The sum of every message's size.
    pub fn total_size(&self) -> usize {
        self.messages.iter().map(|m| m.size).sum()
    }

    /// Message `i` as a [`Message`] (key and payload are slices of the
    /// request's bytes).
    pub fn message(&self, i: usize) -> Message {
        let m = &self.messages[i];
        let headers: Headers = if m.headers.0 == m.headers.1 {
            Headers::new()
        } else {
            self.headers(i).collect()
        };
        Message::from_parts(
            m.id,
            m.key.map(|k| self.data.slice(k.start..k.end)),
            headers,
            self.data.slice(m.payload.start..m.payload.end),
            m.timestamp,
        )
    }

    /// Every message as a [`Message`].
    pub fn to_messages(&self) -> Vec<Message> {
        (0..self.len()).map(|i| self.message(i)).collect()
    }
}

/// The broker stores a decoded request from here: ids, timestamps and sizes
/// as decoded, keys, payloads and headers as slices of the request.
impl PublishSource for WireMessages {
    #[inline]
    fn len(&self) -> usize {
        self.messages.len()
    }

    /// The id of message `i` (a fresh one if the request had none).
    #[inline]
    fn id(&self, i: usize) -> MessageId {
        self.messages[i].id
    }

    #[inline]
    fn key(&self, i: usize) -> Option<&[u8]> {
        self.messages[i].key.map(|k| self.at(k))
    }

    #[inline]
    fn payload(&self, i: usize) -> &[u8] {
        self.at(self.messages[i].payload)
    }

    /// Its timestamp (the time of decoding if the request had none).
    #[inline]
    fn timestamp(&self, i: usize) -> Timestamp {
        self.messages[i].timestamp
    }

    /// As [`WireMessages::headers`] gives them, as bytes (no second UTF-8
    /// check).
    #[inline]
    fn headers<'a>(&'a self, i: usize, out: &mut Vec<(&'a [u8], &'a [u8])>) {
        let (from, to) = self.messages[i].headers;
        out.extend(
            self.headers[from..to]
                .iter()
                .map(|&(n, v)| (self.at(n), self.at(v))),
        );
    }

    #[inline]
    fn header_count(&self, i: usize) -> usize {
        let (from, to) = self.messages[i].headers;
        to - from
    }

    #[inline]
    fn size(&self, i: usize) -> usize {
        self.messages[i].size
    }
}

/// Why a publish request is not valid protobuf for `v1::PublishRequest`.
#[derive(Debug)]
#[non_exhaustive]
pub enum MalformedPublish {
    /// A varint, key or skipped field that prost rejects.
    Protobuf(prost::DecodeError),
    /// A length-delimited field longer than what is left of its message.
    Truncated {
        /// The field (`message`, `id`, `header.name`, …).
        field: &'static str,
    },
    /// A known field sent with another wire type than the schema's.
    WireType {
        /// The field.
        field: &'static str,
        /// The wire type received.
        got: WireType,
    },
    /// A string field that is not UTF-8.
    Utf8 {
        /// The field.
        field: &'static str,
    },
}

impl std::fmt::Display for MalformedPublish {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MalformedPublish::Protobuf(e) => write!(f, "{e}"),
            MalformedPublish::Truncated { field } => {
                write!(
                    f,
                    "PublishRequest.{field}: length past the end of the buffer"
                )
            }
            MalformedPublish::WireType { field, got } => {
                write!(f, "PublishRequest.{field}: unexpected wire type {got:?}")
            }
            MalformedPublish::Utf8 { field } => {
                write!(f, "PublishRequest.{field}: string is not UTF-8")
            }
        }
    }
}

impl std::error::Error for MalformedPublish {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            MalformedPublish::Protobuf(e) => Some(e),
            _ => None,
        }
    }
}

impl From<prost::DecodeError> for MalformedPublish {
    fn from(e: prost::DecodeError) -> Self {
        MalformedPublish::Protobuf(e)
    }
}

fn want(got: WireType, expected: WireType, field: &'static str) -> Result<(), MalformedPublish> {
    if got == expected {
        Ok(())
    } else {
        Err(MalformedPublish::WireType { field, got })
    }
}

/// The body of a length-delimited field (its length prefix is next in `cur`).
fn take<'a>(cur: &mut &'a [u8], field: &'static str) -> Result<&'a [u8], MalformedPublish> {
    let len = varint(cur)?;
    if len > cur.len() as u64 {
        return Err(MalformedPublish::Truncated { field });
    }
    let (body, rest) = cur.split_at(len as usize);
    *cur = rest;
    Ok(body)
}

/// A varint: one byte inline; up to eight bytes (every length and
/// timestamp of a publish) from one little-endian word, see [`in_word`];
/// prost's decoder for a longer or truncated one (and its errors).
#[inline(always)]
fn varint(cur: &mut &[u8]) -> Result<u64, prost::DecodeError> {
    let bytes = *cur;
    match bytes.first() {
        Some(&b) if b < 0x80 => {
            *cur = &bytes[1..];
            return Ok(u64::from(b));
        }
        None => return decode_varint(cur),
        Some(_) => {}
    }
    if let Some(word) = bytes.first_chunk::<8>() {
        if let Some((v, len)) = in_word(u64::from_le_bytes(*word), 8) {
            *cur = &bytes[len..];
            return Ok(v);
        }
    }
    decode_varint(cur)
}

/// [`varint`] for the last field of a message, where fewer than eight
/// bytes are left: the word is read from the end of `whole` (which `cur`
/// is the end of) and shifted down to `cur`'s first byte.
#[inline(always)]
fn last_varint(cur: &mut &[u8], whole: &[u8]) -> Result<u64, prost::DecodeError> {
    let bytes = *cur;
    debug_assert_eq!(bytes.as_ptr_range().end, whole.as_ptr_range().end);
    if (2..8).contains(&bytes.len()) && bytes[0] >= 0x80 {
        if let Some(word) = whole.last_chunk::<8>() {
            let w = u64::from_le_bytes(*word) >> (8 * (8 - bytes.len()));
            if let Some((v, len)) = in_word(w, bytes.len()) {
                *cur = &bytes[len..];
                return Ok(v);
            }
        }
    }
    varint(cur)
}

/// The varint at the start of little-endian word `w`, and its length, if
/// it ends within the first `avail` bytes: the first byte without its high
/// bit ends it, and its seven-bit groups are packed together in three
/// steps (no loop; eight bytes hold 56 bits, so nothing overflows).
#[inline(always)]
fn in_word(w: u64, avail: usize) -> Option<(u64, usize)> {
    let stop = !w & 0x8080_8080_8080_8080;
    let len = stop.trailing_zeros() as usize / 8 + 1;
    if stop == 0 || len > avail {
        return None;
    }
    let x = w & (u64::MAX >> (64 - 8 * len)) & 0x7f7f_7f7f_7f7f_7f7f;
    let x = ((x & 0x7f00_7f00_7f00_7f00) >> 1) | (x & 0x007f_007f_007f_007f);
    let x = ((x & 0x3fff_0000_3fff_0000) >> 2) | (x & 0x0000_3fff_0000_3fff);
    let x = ((x & 0x0fff_ffff_0000_0000) >> 4) | (x & 0x0000_0000_0fff_ffff);
    Some((x, len))
}

/// A field key: [`varint`]'s fast path for one-byte keys of a valid field
/// number and wire type, prost's `decode_key` (and its errors) otherwise.
#[inline(always)]
fn field_key(cur: &mut &[u8]) -> Result<(u32, WireType), prost::DecodeError> {
    if let Some(&b) = cur.first() {
        // Field numbers 1..=15; wire types 0..=5.
        if b < 0x80 && b >> 3 != 0 {
            if let Ok(wt) = WireType::try_from(u64::from(b & 7)) {
                *cur = &cur[1..];
                return Ok((u32::from(b >> 3), wt));
            }
        }
    }
    decode_key(cur)
}

fn utf8(b: &[u8], field: &'static str) -> Result<String, MalformedPublish> {
    std::str::from_utf8(b)
        .map(str::to_owned)
        .map_err(|_| MalformedPublish::Utf8 { field })
}

/// Where `part` (a slice of `data`, or any empty slice) lies in `data`.
fn span(data: &[u8], part: &[u8]) -> Span {
    if part.is_empty() {
        return Span { start: 0, end: 0 };
    }
    let start = part.as_ptr() as usize - data.as_ptr() as usize;
    debug_assert!(start + part.len() <= data.len());
    Span {
        start,
        end: start + part.len(),
    }
}

/// A string field's bytes, checked as UTF-8.
fn text<'a>(cur: &mut &'a [u8], field: &'static str) -> Result<&'a [u8], MalformedPublish> {
    let b = take(cur, field)?;
    std::str::from_utf8(b).map_err(|_| MalformedPublish::Utf8 { field })?;
    Ok(b)
}

/// A `v1::Header`'s name and value.
fn decode_header(mut cur: &[u8]) -> Result<(&[u8], &[u8]), MalformedPublish> {
    let (mut name, mut value): (&[u8], &[u8]) = (&[], &[]);
    while !cur.is_empty() {
        let (tag, wt) = field_key(&mut cur)?;
        match tag {
            1 => {
                want(wt, WireType::LengthDelimited, "header.name")?;
                name = text(&mut cur, "header.name")?;
            }
            2 => {
                want(wt, WireType::LengthDelimited, "header.value")?;
                value = text(&mut cur, "header.value")?;
            }
            _ => skip_field(wt, tag, &mut cur, DecodeContext::default())?,
        }
    }
    Ok((name, value))
}

/// The error for a known field of `v1::Message` sent with another wire type
/// than its own (`key`: field number << 3 | wire type, as decoded).
#[cold]
fn wrong_wire_type(key: u8) -> MalformedPublish {
    const FIELDS: [&str; 5] = [
        "message.id",
        "message.key",
        "message.headers",
        "message.payload",
        "message.timestamp_ms",
    ];
    MalformedPublish::WireType {
        field: FIELDS[usize::from(key >> 3) - 1],
        got: WireType::try_from(u64::from(key & 7)).expect("a wire type prost decoded"),
    }
}

/// The request being decoded: the parts of [`WireMessages`] plus the time
/// given to messages without a timestamp (read once per request).
struct Decoder<'d> {
    data: &'d [u8],
    messages: Vec<WireMessage>,
    headers: Vec<(Span, Span)>,
    /// The current message's headers, kept by `Headers`' rule.
    scratch: Vec<(&'d [u8], &'d [u8])>,
    now: Option<Timestamp>,
    /// Every message had an id.
    all_ids: bool,
    /// The error of the first message with an invalid id.
    bad_id: Option<Error>,
}

impl<'d> Decoder<'d> {
    /// One `v1::Message` from `cur` (a slice of `data`): `Err` for
    /// malformed protobuf; a well-formed message with an invalid id is kept
    /// out and its error noted in `bad_id` (if it is the first).
    #[inline]
    fn message(&mut self, body: &'d [u8]) -> Result<(), MalformedPublish> {
        let mut cur = body;
        let mut id: &[u8] = &[];
        let mut key_field = None;
        let mut payload: &[u8] = &[];
        let mut ts = 0;
        self.scratch.clear();
        let mut index = HeaderIndex::default();
        // One field of the schema, by its one-byte key (field number << 3 |
        // wire type), its key already read. A macro rather than a closure:
        // with a literal key the match folds away where it is expanded.
        macro_rules! field {
            ($key:expr) => {
                match $key {
                    0x0a => id = take(&mut cur, "message.id")?,
                    0x12 => key_field = Some(take(&mut cur, "message.key")?),
                    0x1a => {
                        let (n, v) = decode_header(take(&mut cur, "message.headers")?)?;
                        index.insert(&mut self.scratch, n, v);
                    }
                    0x22 => payload = take(&mut cur, "message.payload")?,
                    0x28 => ts = last_varint(&mut cur, body)?,
                    other => return Err(wrong_wire_type(other)),
                }
            };
        }
        // The fields as encoders write them, in field order, each key
        // tested once (no dispatch); whatever is left (fields out of order
        // or repeated, unknown fields, other encodings) goes through the
        // loop below, which gives the same result for any order.
        if cur.first() == Some(&0x0a) {
            cur = &cur[1..];
            field!(0x0a);
        }
        if cur.first() == Some(&0x12) {
            cur = &cur[1..];
            field!(0x12);
        }
        while cur.first() == Some(&0x1a) {
            cur = &cur[1..];
            field!(0x1a);
        }
        if cur.first() == Some(&0x22) {
            cur = &cur[1..];
            field!(0x22);
        }
        if cur.first() == Some(&0x28) {
            cur = &cur[1..];
            field!(0x28);
        }
        while !cur.is_empty() {
            // Read in place when it is one of the schema's one-byte keys,
            // through prost's key decoder otherwise (a longer encoding, an
            // unknown field, which is skipped, or an invalid key).
            let k = match cur[0] {
                b @ (0x0a | 0x12 | 0x1a | 0x22 | 0x28) => {
                    cur = &cur[1..];
                    b
                }
                _ => {
                    let (tag, wt) = field_key(&mut cur)?;
                    if !(1..=5).contains(&tag) {
                        skip_field(wt, tag, &mut cur, DecodeContext::default())?;
                        continue;
                    }
                    ((tag as u8) << 3) | wt as u8
                }
            };
            field!(k);
        }
        let key = key_field;
        let id = match <[u8; 16]>::try_from(id) {
            Ok(bytes) => MessageId::from_bytes(bytes),
            Err(_) => match self.other_id(id) {
                Some(id) => id,
                None => return Ok(()),
            },
        };
        let timestamp = if ts == 0 {
            *self.now.get_or_insert_with(|| timestamp_from_wire(0))
        } else {
            timestamp_from_wire(ts)
        };
        let first_header = self.headers.len();
        let mut header_bytes = 0;
        if !self.scratch.is_empty() {
            let data = self.data;
            self.headers.extend(self.scratch.drain(..).map(|(n, v)| {
                header_bytes += n.len() + v.len();
                (span(data, n), span(data, v))
            }));
        }
        self.messages.push(WireMessage {
            id,
            key: key.map(|k| span(self.data, k)),
            payload: span(self.data, payload),
            timestamp,
            headers: (first_header, self.headers.len()),
            size: payload.len() + key.map_or(0, <[u8]>::len) + header_bytes,
        });
        Ok(())
    }

    /// The id of a message sent with an id that is not 16 bytes: a fresh
    /// one for none, `None` (and the error noted) for any other length.
    #[cold]
    fn other_id(&mut self, id: &[u8]) -> Option<MessageId> {
        self.all_ids &= !id.is_empty();
        match id_from_wire(id) {
            Ok(id) => Some(id),
            Err(e) => {
                self.bad_id.get_or_insert(e);
                None
            }
        }
    }
}

/// Decodes the bytes of a `v1::PublishRequest` in place into
/// [`WireMessages`], with the same results as prost's decode followed by
/// [`message_from_proto`](crate::convert::message_from_proto) for each message: unknown fields are skipped, a
/// repeated scalar field keeps its last value, a repeated header name its
/// first place and last value, an empty id gets a fresh one and a zero
/// timestamp the current time.
///
/// # Errors
/// [`MalformedPublish`] when `data` is not a valid `v1::PublishRequest`.
/// A message with an id that is neither empty nor 16 bytes is not an error
/// of the decode: it is the `Err` of [`DecodedPublish::messages`].
pub fn decode_publish(data: &Bytes) -> Result<DecodedPublish, MalformedPublish> {
    let mut cur: &[u8] = data;
    let mut topic = String::new();
    let mut compact_receipts = false;
    let mut d = Decoder {
        data,
        messages: Vec::new(),
        headers: Vec::new(),
        scratch: Vec::new(),
        now: None,
        all_ids: true,
        bad_id: None,
    };
    while !cur.is_empty() {
        let (tag, wt) = field_key(&mut cur)?;
        match tag {
            1 => {
                want(wt, WireType::LengthDelimited, "topic")?;
                topic = utf8(take(&mut cur, "topic")?, "topic")?;
            }
            2 => {
                want(wt, WireType::LengthDelimited, "messages")?;
                let body = take(&mut cur, "messages")?;
                if d.messages.capacity() == 0 {
                    // As many more as fit if they are all this long (exact
                    // for the usual batch of like messages; grows otherwise).
                    d.messages.reserve(1 + cur.len() / (body.len() + 2));
                }
                d.message(body)?;
            }
            3 => {
                want(wt, WireType::Varint, "compact_receipts")?;
                compact_receipts = varint(&mut cur)? != 0;
            }
            _ => skip_field(wt, tag, &mut cur, DecodeContext::default())?,
        }
    }
    let messages = match d.bad_id {
        Some(e) => Err(e),
        None => Ok(WireMessages {
            data: data.clone(),
            messages: d.messages,
            headers: d.headers,
        }),
    };
    Ok(DecodedPublish {
        topic,
        compact_receipts,
        all_ids: d.all_ids,
        messages,
    })
}

fn malformed(what: &str) -> Error {
    Error::Backend {
        backend: "remote",
        source: format!("malformed publish response: {what}").into(),
    }
}

/// What the id of a compact receipt is read from: the message sent (the
/// client still holds its batch) or its id.
pub trait SentId {
    /// The id the message was sent with.
    fn sent_id(&self) -> MessageId;
}

impl SentId for MessageId {
    fn sent_id(&self) -> MessageId {
        *self
    }
}

impl SentId for Message {
    fn sent_id(&self) -> MessageId {
        self.id()
    }
}

/// The receipts of a publish of `ids` (the messages or their ids, in
/// request order), from either form of the response.
///
/// # Errors
/// [`Error::Backend`] when the response does not have one receipt per
/// message; [`Error::InvalidArgument`] for a receipt id that is not 16 bytes.
pub fn receipts_from_response<T: SentId>(
    resp: &v1::PublishResponse,
    ids: &[T],
) -> Result<Vec<Receipt>, Error> {
    if !resp.receipts.is_empty() || ids.is_empty() {
        if resp.receipts.len() != ids.len() {
            return Err(malformed("receipt count differs from message count"));
        }
        return resp.receipts.iter().map(receipt_from_proto).collect();
    }
    let mut out = Vec::with_capacity(ids.len());
    for r in &resp.ranges {
        let next = ids
            .get(out.len()..out.len() + r.count as usize)
            .ok_or_else(|| malformed("receipt count differs from message count"))?;
        if r.base_offset.checked_add(u64::from(r.count)).is_none() {
            return Err(malformed("offset range past the largest offset"));
        }
        out.extend(
            next.iter()
                .zip(r.base_offset..)
                .map(|(sent, o)| Receipt::new(sent.sent_id(), r.partition, Some(o))),
        );
    }
    if out.len() != ids.len() {
        return Err(malformed("receipt count differs from message count"));
    }
    for &i in &resp.duplicates {
        out.get_mut(i as usize)
            .ok_or_else(|| malformed("duplicate index out of range"))?
            .duplicate = true;
    }
    Ok(out)
}

/// The compact response for `receipts`, or `None` when a receipt has no
/// offset (the full form is needed then).
pub fn compact_response(receipts: &[Receipt]) -> Option<v1::PublishResponse> {
    let mut resp = v1::PublishResponse::default();
    for (i, r) in receipts.iter().enumerate() {
        let offset = r.offset?;
        if r.duplicate {
            resp.duplicates.push(u32::try_from(i).ok()?);
        }
        match resp.ranges.last_mut() {
            Some(run)
                if run.partition == r.partition
                    && run.base_offset.checked_add(u64::from(run.count)) == Some(offset)
                    && run.count < u32::MAX =>
            {
                run.count += 1;
            }
            _ => resp.ranges.push(v1::ReceiptRange {
                partition: r.partition,
                base_offset: offset,
                count: 1,
            }),
        }
    }
    Some(resp)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::convert::{message_from_proto, message_to_proto};
    use prost::Message as _;

    #[test]
    fn a_publish_batch_encodes_as_the_generated_request() {
        let messages = vec![
            Message::builder()
                .key("k")
                .header("a", "1")
                .header("empty", "")
                .payload("hello")
                .timestamp(Timestamp::from_millis(42))
                .build(),
            Message::new(""),
            Message::builder().key("").payload(vec![7u8; 300]).build(),
        ];
        let generated = v1::PublishRequest {
            topic: "orders".into(),
            messages: messages.iter().map(message_to_proto).collect(),
            compact_receipts: true,
        };
        let batch = PublishBatch {
            topic: "orders".into(),
            messages: messages.clone(),
            compact_receipts: true,
        };
        let bytes = batch.encode_to_vec();
        assert_eq!(bytes.len(), batch.encoded_len());
        assert_eq!(bytes, generated.encode_to_vec());
        let back = v1::PublishRequest::decode(&bytes[..]).expect("decodes");
        let back: Vec<Message> = back
            .messages
            .into_iter()
            .map(|m| message_from_proto(m).expect("valid"))
            .collect();
        assert_eq!(back, messages);

        let mut framed = b"kept".to_vec();
        batch.encode_framed(&mut framed).expect("fits");
        assert_eq!(&framed[..4], b"kept", "appends");
        let data = bytes::Bytes::from(framed.split_off(4));
        let message = crate::frame::unary_message(&data, usize::MAX).expect("one message");
        assert_eq!(&message[..], &bytes[..]);
    }

    #[test]
    fn varint_reads_what_prost_reads() {
        let mut values = vec![0, 1, 127, 128, 300, 16_383, 16_384, u64::MAX];
        values.extend((0..64).map(|b| 1u64 << b));
        values.extend((1..64).map(|b| (1u64 << b) - 1));
        values.extend((0..64).map(|b| 0x9e37_79b9_7f4a_7c15u64 >> b));
        for v in values {
            let mut enc = Vec::new();
            prost::encoding::encode_varint(v, &mut enc);
            // Alone, followed by other bytes, and cut short at every length.
            for tail in [&[][..], &[0x05][..], &[0xff; 12][..]] {
                let mut buf = enc.clone();
                buf.extend_from_slice(tail);
                for end in 0..=buf.len() {
                    let mut theirs = &buf[..end];
                    let b = decode_varint(&mut theirs);
                    // At the end of a longer slice (as a message's last field).
                    let mut whole = vec![0xaa; 9];
                    whole.extend_from_slice(&buf[..end]);
                    let mut last = &whole[9..];
                    let mut ours = &buf[..end];
                    for (a, rest) in [
                        (varint(&mut ours), ours),
                        (last_varint(&mut last, &whole), last),
                    ] {
                        assert_eq!(a.is_ok(), b.is_ok(), "{v} {buf:02x?}[..{end}]");
                        if let (Ok(a), Ok(b)) = (a, &b) {
                            assert_eq!(a, *b, "{v} {buf:02x?}[..{end}]");
                            assert_eq!(rest.len(), theirs.len(), "{v} {buf:02x?}[..{end}]");
                        }
                    }
                }
            }
        }
        // Non-minimal encodings (a zero group with its high bit set) too.
        for buf in [&[0x80, 0x00][..], &[0xff, 0x80, 0x80, 0x00, 0x07][..]] {
            let (mut ours, mut theirs) = (buf, buf);
            assert_eq!(varint(&mut ours).ok(), decode_varint(&mut theirs).ok());
            assert_eq!(ours.len(), theirs.len());
        }
    }

    #[test]
    fn put_varint_writes_what_prost_writes() {
        let mut values = vec![0, 1, 127, 128, 300, 16_383, 16_384, u64::MAX];
        values.extend((0..64).map(|b| 1u64 << b));
        values.extend((1..64).map(|b| (1u64 << b) - 1));
        for v in values {
            let (mut ours, mut theirs) = (Vec::new(), Vec::new());
            put_varint(v, &mut ours);
            prost::encoding::encode_varint(v, &mut theirs);
            assert_eq!(ours, theirs, "{v}");
        }
    }

    fn generated(req: &v1::PublishRequest) -> Vec<u8> {
        req.encode_to_vec()
    }

    #[test]
    fn decode_publish_reads_what_the_client_encodes() {
        let messages = vec![
            Message::builder()
                .key("k")
                .header("a", "1")
                .header("a", "2")
                .header("empty", "")
                .payload("hello")
                .timestamp(Timestamp::from_millis(42))
                .build(),
            Message::new(""),
            Message::builder().key("").payload(vec![7u8; 300]).build(),
        ];
        let batch = PublishBatch {
            topic: "orders".into(),
            messages: messages.clone(),
            compact_receipts: true,
        };
        let d = decode_publish(&Bytes::from(batch.encode_to_vec())).expect("well-formed");
        assert_eq!(d.topic, "orders");
        assert!(d.compact_receipts);
        assert!(d.all_ids);
        let wire = d.messages.expect("valid ids");
        assert_eq!(wire.to_messages(), messages);
        for (i, m) in messages.iter().enumerate() {
            assert_eq!(wire.id(i), m.id());
            assert_eq!(wire.key(i), m.key().map(|k| &k[..]));
            assert_eq!(wire.payload(i), &m.payload()[..]);
            assert_eq!(wire.timestamp(i), m.timestamp());
            assert_eq!(wire.size(i), m.size());
            assert!(wire.headers(i).eq(m.headers().iter()));
        }
        assert_eq!(
            wire.total_size(),
            messages.iter().map(Message::size).sum::<usize>()
        );
    }

    #[test]
    fn decode_publish_fills_in_missing_ids_and_timestamps_like_the_generated_path() {
        let req = v1::PublishRequest {
            topic: "t".into(),
            messages: vec![v1::Message {
                payload: Bytes::from_static(b"p"),
                ..Default::default()
            }],
            compact_receipts: true,
        };
        let d = decode_publish(&Bytes::from(generated(&req))).expect("well-formed");
        assert!(
            !d.all_ids,
            "a message without id: the compact answer is not enough"
        );
        let m = d
            .messages
            .expect("an empty id gets a fresh one")
            .to_messages();
        assert_eq!(m.len(), 1);
        assert_ne!(m[0].timestamp().as_millis(), 0);
        assert_eq!(m[0].payload(), &Bytes::from_static(b"p"));
    }

    #[test]
    fn a_repeated_header_name_keeps_its_place_and_its_last_value_as_in_headers() {
        let header = |n: &str, v: &str| v1::Header {
            name: n.into(),
            value: v.into(),
        };
        let req = v1::PublishRequest {
            topic: "t".into(),
            messages: vec![
                v1::Message {
                    id: Bytes::copy_from_slice(&MessageId::new().to_bytes()),
                    headers: vec![header("h", "v"), header("x", "1"), header("h", "longer")],
                    payload: Bytes::from_static(b"p"),
                    ..Default::default()
                },
                v1::Message {
                    id: Bytes::copy_from_slice(&MessageId::new().to_bytes()),
                    headers: vec![header("h", "own")],
                    ..Default::default()
                },
                // Past the linear scan: names found through the index.
                v1::Message {
                    id: Bytes::copy_from_slice(&MessageId::new().to_bytes()),
                    headers: (0..40)
                        .map(|j| header(&format!("n{j}"), "first"))
                        .chain([
                            header("n5", "again"),
                            header("n39", "again"),
                            header("", ""),
                        ])
                        .chain((0..3).map(|j| header(&format!("n{}", j * 20), "third")))
                        .collect(),
                    ..Default::default()
                },
            ],
            compact_receipts: false,
        };
        let wire = decode_publish(&Bytes::from(generated(&req)))
            .expect("well-formed")
            .messages
            .expect("valid ids");
        // What the broker stores reads these directly, not through `Headers`.
        let first: Vec<_> = wire.headers(0).collect();
        assert_eq!(first, vec![("h", "longer"), ("x", "1")]);
        assert_eq!(wire.headers(1).collect::<Vec<_>>(), vec![("h", "own")]);
        assert_eq!(wire.headers(2).len(), 42); // n0..n39, "", n40
        let via_prost: Vec<Message> = req
            .messages
            .into_iter()
            .map(|m| message_from_proto(m).expect("valid"))
            .collect();
        for (i, m) in via_prost.iter().enumerate() {
            assert!(wire.headers(i).eq(m.headers().iter()));
            let mut bytes = Vec::new();
            PublishSource::headers(&wire, i, &mut bytes);
            assert!(bytes.into_iter().eq(m
                .headers()
                .iter()
                .map(|(n, v)| (n.as_bytes(), v.as_bytes()))));
            assert_eq!(wire.size(i), m.size());
        }
    }

    #[test]
    fn from_proto_reads_a_generated_request_like_the_wire_decode() {
        let messages = vec![
            Message::builder()
                .key("k")
                .header("h", "v")
                .payload("p")
                .timestamp(Timestamp::from_millis(9))
                .build(),
            Message::new(""),
        ];
        let req = v1::PublishRequest {
            topic: "t".into(),
            messages: messages.iter().map(message_to_proto).collect(),
            compact_receipts: true,
        };
        let d = DecodedPublish::from_proto(req);
        assert_eq!(
            (d.topic.as_str(), d.compact_receipts, d.all_ids),
            ("t", true, true)
        );
        assert_eq!(d.messages.expect("valid").to_messages(), messages);
    }

    #[test]
    fn decode_publish_reports_a_short_id_as_invalid_argument_not_malformed() {
        let req = v1::PublishRequest {
            topic: "t".into(),
            messages: vec![v1::Message {
                id: Bytes::from_static(b"short"),
                ..Default::default()
            }],
            compact_receipts: false,
        };
        let d = decode_publish(&Bytes::from(generated(&req))).expect("well-formed protobuf");
        assert!(matches!(
            d.messages,
            Err(Error::InvalidArgument { name: "id", .. })
        ));
    }

    #[test]
    fn decode_publish_rejects_malformed_protobuf() {
        // messages field claiming more bytes than there are
        assert!(matches!(
            decode_publish(&Bytes::from_static(&[0x12, 0x05, 0x0a])),
            Err(MalformedPublish::Truncated { field: "messages" })
        ));
        // topic sent as a varint
        assert!(matches!(
            decode_publish(&Bytes::from_static(&[0x08, 0x01])),
            Err(MalformedPublish::WireType { field: "topic", .. })
        ));
        // a header name that is not UTF-8
        let bad = [0x12, 0x06, 0x1a, 0x04, 0x0a, 0x02, 0xff, 0xfe];
        assert!(matches!(
            decode_publish(&Bytes::copy_from_slice(&bad)),
            Err(MalformedPublish::Utf8 {
                field: "header.name"
            })
        ));
        // field number 0
        assert!(matches!(
            decode_publish(&Bytes::from_static(&[0x00])),
            Err(MalformedPublish::Protobuf(_))
        ));
    }

    /// Seeded mutations of valid requests (bytes flipped, truncated, fields
    /// appended): the direct decoder accepts exactly what prost accepts, and
    /// reads the same messages.
    #[test]
    fn fields_out_of_order_repeated_or_with_long_keys_decode_as_prost_does() {
        let id = MessageId::new().to_bytes();
        let mut body = Vec::new();
        body.extend_from_slice(&[0x28, 0xe8, 0x07]); // timestamp_ms = 1000, first
        body.extend_from_slice(&[0x22, 2, b'p', b'1']); // payload "p1"
        body.extend_from_slice(&[0x0a, 16]);
        body.extend_from_slice(&id);
        body.extend_from_slice(&[0x22, 2, b'p', b'2']); // payload again: "p2" wins
        body.extend_from_slice(&[0x92, 0x00, 1, b'k']); // key, two-byte field key
        body.extend_from_slice(&[0x48, 0x01]); // unknown field 9
        body.extend_from_slice(&[0xa8, 0x00, 0xd0, 0x0f]); // timestamp_ms = 2000, long key
        body.extend_from_slice(&[0x1a, 5, 0x0a, 1, b'a', 0x12, 0]); // header a=""
        let mut req = vec![0x12, body.len() as u8];
        req.extend_from_slice(&body);
        let direct = decode_publish(&Bytes::from(req.clone())).expect("valid");
        let p = v1::PublishRequest::decode(&req[..]).expect("valid");
        let b = message_from_proto(p.messages[0].clone()).expect("valid");
        let a = direct.messages.expect("valid id").to_messages().remove(0);
        assert_eq!(a, b);
        assert_eq!(a.payload(), &b"p2"[..]);
        assert_eq!(a.key().map(|k| &k[..]), Some(&b"k"[..]));
        assert_eq!(a.timestamp(), Timestamp::from_millis(2000));
        assert_eq!(a.id(), MessageId::from_bytes(id));

        // A known field with another wire type, as a one- and a two-byte key.
        for bad in [&[0x20, 0x01][..], &[0xa0, 0x00, 0x01][..]] {
            let mut req = vec![0x12, bad.len() as u8];
            req.extend_from_slice(bad);
            assert!(v1::PublishRequest::decode(&req[..]).is_err());
            match decode_publish(&Bytes::from(req)) {
                Err(MalformedPublish::WireType { field, got }) => {
                    assert_eq!((field, got), ("message.payload", WireType::Varint));
                }
                other => panic!("{bad:02x?}: {other:?}"),
            }
        }
    }

    #[test]
    fn decode_publish_agrees_with_prost_on_mutated_requests() {
        let req = v1::PublishRequest {
            topic: "orders.created".into(),
            messages: vec![
                v1::Message {
                    id: Bytes::copy_from_slice(&MessageId::new().to_bytes()),
                    key: Some(Bytes::from_static(b"key")),
                    headers: vec![
                        v1::Header {
                            name: "h".into(),
                            value: "v".into(),
                        },
                        v1::Header {
                            name: "h".into(),
                            value: "w".into(),
                        },
                    ],
                    payload: Bytes::from_static(b"payload bytes"),
                    timestamp_ms: 1_700_000_000_000,
                },
                v1::Message {
                    id: Bytes::copy_from_slice(&MessageId::new().to_bytes()),
                    payload: Bytes::from(vec![1u8; 200]),
                    timestamp_ms: 5,
                    ..Default::default()
                },
            ],
            compact_receipts: true,
        };
        let valid = generated(&req);
        let mut seed = 0x9E37_79B9_7F4A_7C15u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let mut accepted = 0;
        for _ in 0..20_000 {
            let mut data = valid.clone();
            for _ in 0..1 + next() % 3 {
                match next() % 4 {
                    0 => {
                        let i = (next() % data.len() as u64) as usize;
                        data[i] = next() as u8;
                    }
                    1 => data.truncate((next() % data.len() as u64) as usize),
                    2 => data.extend_from_slice(&next().to_le_bytes()[..(next() % 9) as usize]),
                    _ => {
                        let i = (next() % data.len() as u64) as usize;
                        data[i] ^= 1 << (next() % 8);
                    }
                }
                if data.is_empty() {
                    break;
                }
            }
            let direct = decode_publish(&Bytes::from(data.clone()));
            let via_prost = v1::PublishRequest::decode(&data[..]);
            assert_eq!(direct.is_ok(), via_prost.is_ok(), "input {data:02x?}");
            let (Ok(direct), Ok(p)) = (direct, via_prost) else {
                continue;
            };
            accepted += 1;
            assert_eq!(direct.topic, p.topic);
            assert_eq!(direct.compact_receipts, p.compact_receipts);
            assert_eq!(direct.all_ids, p.messages.iter().all(|m| !m.id.is_empty()));
            let p: Result<Vec<Message>, Error> =
                p.messages.into_iter().map(message_from_proto).collect();
            match (direct.messages.map(|w| w.to_messages()), p) {
                (Ok(a), Ok(b)) => {
                    assert_eq!(a.len(), b.len());
                    for (a, b) in a.iter().zip(&b) {
                        assert_eq!(a.key(), b.key());
                        assert_eq!(a.headers(), b.headers());
                        assert_eq!(a.payload(), b.payload());
                    }
                }
                (Err(a), Err(b)) => assert_eq!(a.to_string(), b.to_string()),
                (a, b) => panic!("direct {a:?} vs prost {b:?} for {data:02x?}"),
            }
        }
        assert!(accepted > 100, "the mutations kept some inputs valid");
    }

    #[test]
    fn compact_receipts_round_trip_with_duplicates() {
        let ids: Vec<MessageId> = (0..7).map(|_| MessageId::new()).collect();
        // partition, offset, duplicate: a run, a duplicate of an earlier
        // message (its old offset), the run going on, another partition,
        // a gap in the offsets, a run of one.
        let layout = [
            (1, 10, false),
            (1, 11, false),
            (1, 3, true),
            (1, 12, false),
            (0, 12, false),
            (0, 14, false),
            (2, 0, false),
        ];
        let receipts: Vec<Receipt> = ids
            .iter()
            .zip(layout)
            .map(|(&id, (p, o, dup))| {
                let mut r = Receipt::new(id, p, Some(o));
                r.duplicate = dup;
                r
            })
            .collect();
        let resp = compact_response(&receipts).expect("all have offsets");
        let runs: Vec<_> = resp
            .ranges
            .iter()
            .map(|r| (r.partition, r.base_offset, r.count))
            .collect();
        assert_eq!(
            runs,
            [
                (1, 10, 2),
                (1, 3, 1),
                (1, 12, 1),
                (0, 12, 1),
                (0, 14, 1),
                (2, 0, 1)
            ]
        );
        assert_eq!(resp.duplicates, [2]);
        let wire = v1::PublishResponse::decode(&resp.encode_to_vec()[..]).expect("decodes");
        assert_eq!(
            receipts_from_response(&wire, &ids).expect("valid"),
            receipts
        );
    }

    #[test]
    fn a_batch_kept_together_is_one_range() {
        let ids: Vec<MessageId> = (0..1000).map(|_| MessageId::new()).collect();
        let receipts: Vec<Receipt> = ids
            .iter()
            .zip(500..)
            .map(|(&id, o)| Receipt::new(id, 3, Some(o)))
            .collect();
        let resp = compact_response(&receipts).expect("all have offsets");
        assert_eq!(resp.ranges.len(), 1);
        assert!(resp.encoded_len() < 16, "a few bytes for 1000 receipts");
        assert_eq!(
            receipts_from_response(&resp, &ids).expect("valid"),
            receipts
        );
    }

    #[test]
    fn a_receipt_without_offset_needs_the_full_form() {
        let receipts = [Receipt::new(MessageId::new(), 0, None)];
        assert!(compact_response(&receipts).is_none());
    }

    #[test]
    fn a_compact_response_that_does_not_cover_every_message_is_an_error() {
        let ids = [MessageId::new(), MessageId::new()];
        let ranges = |counts: &[u32]| v1::PublishResponse {
            ranges: counts
                .iter()
                .map(|&count| v1::ReceiptRange {
                    partition: 0,
                    base_offset: 1,
                    count,
                })
                .collect(),
            ..Default::default()
        };
        for bad in [&[1][..], &[3], &[1, 2], &[2, 1], &[]] {
            assert!(
                matches!(
                    receipts_from_response(&ranges(bad), &ids),
                    Err(Error::Backend { .. })
                ),
                "ranges {bad:?} for 2 messages"
            );
        }
        let out_of_range = v1::PublishResponse {
            duplicates: vec![2],
            ..ranges(&[2])
        };
        assert!(receipts_from_response(&out_of_range, &ids).is_err());
        let mut overflow = ranges(&[2]);
        overflow.ranges[0].base_offset = u64::MAX - 1;
        assert!(receipts_from_response(&overflow, &ids).is_err());
        assert!(receipts_from_response(&ranges(&[1, 1]), &ids).is_ok());
    }
}
