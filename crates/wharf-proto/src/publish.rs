//! The publish request encoded straight from `wharf-core` messages, and the
//! receipts read back from either form of `PublishResponse`. The client
//! sends [`PublishBatch`] instead of a `v1::PublishRequest` so that a batch
//! costs no `v1::Message` (and no copy of each id into a buffer of its own)
//! per message; the bytes on the wire are those of a `v1::PublishRequest`.

use bytes::BufMut;
use prost::encoding::{encode_key, encode_varint, encoded_len_varint, WireType};
use wharf_core::{Error, Message, MessageId, Receipt};

use crate::convert::receipt_from_proto;
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

fn put_ld(tag: u32, bytes: &[u8], buf: &mut impl BufMut) {
    encode_key(tag, WireType::LengthDelimited, buf);
    encode_varint(bytes.len() as u64, buf);
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
        encode_key(3, WireType::LengthDelimited, buf);
        encode_varint(header_len(name, value) as u64, buf);
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
        encode_key(5, WireType::Varint, buf);
        encode_varint(ts, buf);
    }
}

impl prost::Message for PublishBatch {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        if !self.topic.is_empty() {
            put_ld(1, self.topic.as_bytes(), buf);
        }
        for m in &self.messages {
            encode_key(2, WireType::LengthDelimited, buf);
            encode_varint(message_len(m) as u64, buf);
            encode_message(m, buf);
        }
        if self.compact_receipts {
            encode_key(3, WireType::Varint, buf);
            encode_varint(1, buf);
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

fn malformed(what: &str) -> Error {
    Error::Backend {
        backend: "remote",
        source: format!("malformed publish response: {what}").into(),
    }
}

/// The receipts of a publish of messages with `ids` (in request order),
/// from either form of the response.
///
/// # Errors
/// [`Error::Backend`] when the response does not have one receipt per
/// message; [`Error::InvalidArgument`] for a receipt id that is not 16 bytes.
pub fn receipts_from_response(
    resp: &v1::PublishResponse,
    ids: &[MessageId],
) -> Result<Vec<Receipt>, Error> {
    if !resp.receipts.is_empty() || ids.is_empty() {
        if resp.receipts.len() != ids.len() {
            return Err(malformed("receipt count differs from message count"));
        }
        return resp.receipts.iter().map(receipt_from_proto).collect();
    }
    if resp.partitions.len() != ids.len() || resp.offsets.len() != ids.len() {
        return Err(malformed("receipt count differs from message count"));
    }
    let mut out: Vec<Receipt> = ids
        .iter()
        .zip(resp.partitions.iter().zip(&resp.offsets))
        .map(|(&id, (&p, &o))| Receipt::new(id, p, Some(o)))
        .collect();
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
    let mut resp = v1::PublishResponse {
        receipts: Vec::new(),
        partitions: Vec::with_capacity(receipts.len()),
        offsets: Vec::with_capacity(receipts.len()),
        duplicates: Vec::new(),
    };
    for (i, r) in receipts.iter().enumerate() {
        resp.partitions.push(r.partition);
        resp.offsets.push(r.offset?);
        if r.duplicate {
            resp.duplicates.push(u32::try_from(i).ok()?);
        }
    }
    Some(resp)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::convert::{message_from_proto, message_to_proto};
    use prost::Message as _;
    use wharf_core::Timestamp;

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
    }

    #[test]
    fn compact_receipts_round_trip_with_duplicates() {
        let ids = [MessageId::new(), MessageId::new(), MessageId::new()];
        let mut receipts: Vec<Receipt> = ids
            .iter()
            .enumerate()
            .map(|(i, &id)| Receipt::new(id, i as u32 % 2, Some(10 + i as u64)))
            .collect();
        receipts[1].duplicate = true;
        let resp = compact_response(&receipts).expect("all have offsets");
        let wire = v1::PublishResponse::decode(&resp.encode_to_vec()[..]).expect("decodes");
        assert_eq!(
            receipts_from_response(&wire, &ids).expect("valid"),
            receipts
        );
    }

    #[test]
    fn a_short_compact_response_is_an_error() {
        let ids = [MessageId::new(), MessageId::new()];
        let resp = v1::PublishResponse {
            partitions: vec![0],
            offsets: vec![1],
            ..Default::default()
        };
        assert!(matches!(
            receipts_from_response(&resp, &ids),
            Err(Error::Backend { .. })
        ));
    }
}
