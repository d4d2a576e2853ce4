//! Conversions between `wharf-core` types and their protobuf forms, shared
//! by the server and the client so both sides agree on every field: messages,
//! receipts and typed errors (carried in gRPC status details, so a remote
//! `InvalidName` is still an `InvalidName`).

use std::collections::HashSet;
use std::sync::Mutex;
use std::time::Duration;

use bytes::Bytes;
use prost::Message as _;
use tonic::{Code, Status};
use wharf_core::{
    Capability, CodecError, Error, Headers, Message, MessageId, NameKind, Receipt, Timestamp,
};

use crate::v1;
use crate::v1::error_detail::Kind;

/// The protobuf form of `m`.
pub fn message_to_proto(m: &Message) -> v1::Message {
    v1::Message {
        id: Bytes::copy_from_slice(&m.id().to_bytes()),
        key: m.key().cloned(),
        headers: m
            .headers()
            .iter()
            .map(|(name, value)| v1::Header {
                name: name.to_owned(),
                value: value.to_owned(),
            })
            .collect(),
        payload: m.payload().clone(),
        timestamp_ms: m.timestamp().as_millis(),
    }
}

/// A message from its protobuf form; an empty id gets a fresh one, a zero
/// timestamp the current time.
///
/// # Errors
/// [`Error::InvalidArgument`] for an id that is not 16 bytes.
pub fn message_from_proto(p: v1::Message) -> Result<Message, Error> {
    let id = id_from_wire(&p.id)?;
    let timestamp = timestamp_from_wire(p.timestamp_ms);
    let headers: Headers = p.headers.into_iter().map(|h| (h.name, h.value)).collect();
    Ok(Message::from_parts(
        id, p.key, headers, p.payload, timestamp,
    ))
}

/// A message id from its wire form: empty means "assign one".
///
/// # Errors
/// [`Error::InvalidArgument`] for an id that is neither empty nor 16 bytes.
pub(crate) fn id_from_wire(id: &[u8]) -> Result<MessageId, Error> {
    if id.is_empty() {
        return Ok(MessageId::new());
    }
    let bytes: [u8; 16] = id.try_into().map_err(|_| Error::InvalidArgument {
        name: "id",
        reason: format!("must be 16 bytes, got {}", id.len()),
    })?;
    Ok(MessageId::from_bytes(bytes))
}

/// A message timestamp from its wire form: 0 means "now".
pub(crate) fn timestamp_from_wire(ms: u64) -> Timestamp {
    if ms == 0 {
        Timestamp::now()
    } else {
        Timestamp::from_millis(ms)
    }
}

/// The protobuf form of a receipt.
pub fn receipt_to_proto(r: &Receipt) -> v1::Receipt {
    v1::Receipt {
        id: Bytes::copy_from_slice(&r.id.to_bytes()),
        partition: r.partition,
        offset: r.offset,
        duplicate: r.duplicate,
    }
}

/// A receipt from its protobuf form.
///
/// # Errors
/// [`Error::InvalidArgument`] for an id that is not 16 bytes.
pub fn receipt_from_proto(r: &v1::Receipt) -> Result<Receipt, Error> {
    let bytes: [u8; 16] =
        r.id.as_ref()
            .try_into()
            .map_err(|_| Error::InvalidArgument {
                name: "receipt id",
                reason: format!("must be 16 bytes, got {}", r.id.len()),
            })?;
    let mut out = Receipt::new(MessageId::from_bytes(bytes), r.partition, r.offset);
    out.duplicate = r.duplicate;
    Ok(out)
}

fn name_kind_str(k: NameKind) -> &'static str {
    match k {
        NameKind::Topic => "topic",
        NameKind::Pattern => "pattern",
        NameKind::Group => "group",
        _ => "header",
    }
}

fn name_kind_from(s: &str) -> NameKind {
    match s {
        "topic" => NameKind::Topic,
        "pattern" => NameKind::Pattern,
        "group" => NameKind::Group,
        _ => NameKind::Header,
    }
}

/// The protobuf form of a typed error.
pub fn error_to_proto(e: &Error) -> v1::ErrorDetail {
    let mut d = v1::ErrorDetail {
        message: e.to_string(),
        ..Default::default()
    };
    match e {
        Error::InvalidName { kind, name, reason } => {
            d.kind = Kind::InvalidName as i32;
            d.name_kind = name_kind_str(*kind).into();
            d.name = name.clone();
            d.reason = (*reason).into();
        }
        Error::MessageTooLarge { size, max } => {
            d.kind = Kind::MessageTooLarge as i32;
            d.size = *size as u64;
            d.max = *max as u64;
        }
        Error::TooManyHeaders { count, max } => {
            d.kind = Kind::TooManyHeaders as i32;
            d.size = *count as u64;
            d.max = *max as u64;
        }
        Error::HeadersTooLarge { size, max } => {
            d.kind = Kind::HeadersTooLarge as i32;
            d.size = *size as u64;
            d.max = *max as u64;
        }
        Error::UnknownTopic { topic } => {
            d.kind = Kind::UnknownTopic as i32;
            d.name = topic.clone();
        }
        Error::InvalidOffset {
            topic,
            partition,
            offset,
            start,
            end,
        } => {
            d.kind = Kind::InvalidOffset as i32;
            d.name = topic.clone();
            d.partition = *partition;
            d.offset = *offset;
            d.start = *start;
            d.end = *end;
        }
        Error::InvalidArgument { name, reason } => {
            d.kind = Kind::InvalidArgument as i32;
            d.name = (*name).into();
            d.reason = reason.clone();
        }
        Error::Unsupported { capability, .. } => {
            d.kind = Kind::Unsupported as i32;
            d.name = capability.as_str().into();
        }
        Error::Unavailable { .. } => d.kind = Kind::Unavailable as i32,
        Error::StorageFull { .. } => d.kind = Kind::StorageFull as i32,
        Error::Timeout { operation, after } => {
            d.kind = Kind::Timeout as i32;
            d.name = (*operation).into();
            d.after_ms = u64::try_from(after.as_millis()).unwrap_or(u64::MAX);
        }
        Error::Closed { what } => {
            d.kind = Kind::Closed as i32;
            d.reason = (*what).into();
        }
        Error::UnknownDelivery { id } => {
            d.kind = Kind::UnknownDelivery as i32;
            d.name = id.clone();
        }
        Error::Codec(_) => d.kind = Kind::Codec as i32,
        Error::ResourceExhausted { resource, limit } => {
            d.kind = Kind::ResourceExhausted as i32;
            d.name = (*resource).into();
            d.max = *limit;
        }
        _ => d.kind = Kind::Other as i32,
    }
    d
}

/// A `&'static str` equal to `s`, for error fields that are static in
/// `wharf-core`. Distinct strings are leaked once each (they come from a
/// small fixed set on the server); past 4096 a placeholder is returned.
pub fn intern(s: &str) -> &'static str {
    static SET: Mutex<Option<HashSet<&'static str>>> = Mutex::new(None);
    let mut guard = SET.lock().unwrap_or_else(|p| p.into_inner());
    let set = guard.get_or_insert_with(HashSet::new);
    if let Some(found) = set.get(s) {
        return found;
    }
    if set.len() >= 4096 {
        return "(detail omitted)";
    }
    let leaked: &'static str = Box::leak(s.to_owned().into_boxed_str());
    set.insert(leaked);
    leaked
}

/// The remote server's error, rebuilt as the same typed [`Error`].
pub fn error_from_proto(d: v1::ErrorDetail, backend: &'static str) -> Error {
    match Kind::try_from(d.kind).unwrap_or(Kind::Other) {
        Kind::InvalidName => Error::InvalidName {
            kind: name_kind_from(&d.name_kind),
            name: d.name,
            reason: intern(&d.reason),
        },
        Kind::MessageTooLarge => Error::MessageTooLarge {
            size: usize::try_from(d.size).unwrap_or(usize::MAX),
            max: usize::try_from(d.max).unwrap_or(usize::MAX),
        },
        Kind::TooManyHeaders => Error::TooManyHeaders {
            count: usize::try_from(d.size).unwrap_or(usize::MAX),
            max: usize::try_from(d.max).unwrap_or(usize::MAX),
        },
        Kind::HeadersTooLarge => Error::HeadersTooLarge {
            size: usize::try_from(d.size).unwrap_or(usize::MAX),
            max: usize::try_from(d.max).unwrap_or(usize::MAX),
        },
        Kind::UnknownTopic => Error::UnknownTopic { topic: d.name },
        Kind::InvalidOffset => Error::InvalidOffset {
            topic: d.name,
            partition: d.partition,
            offset: d.offset,
            start: d.start,
            end: d.end,
        },
        Kind::InvalidArgument => Error::InvalidArgument {
            name: intern(&d.name),
            reason: d.reason,
        },
        Kind::Unsupported => match Capability::ALL.iter().find(|c| c.as_str() == d.name) {
            Some(&capability) => Error::Unsupported {
                backend,
                capability,
            },
            None => Error::Backend {
                backend,
                source: d.message.into(),
            },
        },
        Kind::Unavailable => Error::Unavailable {
            backend,
            source: d.message.into(),
        },
        Kind::StorageFull => Error::StorageFull {
            backend,
            source: d.message.into(),
        },
        Kind::Timeout => Error::Timeout {
            operation: intern(&d.name),
            after: Duration::from_millis(d.after_ms),
        },
        Kind::Closed => Error::Closed {
            what: intern(&d.reason),
        },
        Kind::UnknownDelivery => Error::UnknownDelivery { id: d.name },
        Kind::Codec => Error::Codec(CodecError::Decode {
            content_type: "remote",
            source: d.message.into(),
        }),
        Kind::ResourceExhausted => Error::ResourceExhausted {
            resource: intern(&d.name),
            limit: d.max,
        },
        Kind::Other => Error::Backend {
            backend,
            source: d.message.into(),
        },
    }
}

/// The gRPC code a typed error maps to.
pub fn code_for(e: &Error) -> Code {
    match e {
        Error::InvalidName { .. }
        | Error::InvalidArgument { .. }
        | Error::InvalidOffset { .. }
        | Error::TooManyHeaders { .. }
        | Error::Codec(_) => Code::InvalidArgument,
        Error::MessageTooLarge { .. }
        | Error::HeadersTooLarge { .. }
        | Error::ResourceExhausted { .. }
        | Error::StorageFull { .. } => Code::ResourceExhausted,
        Error::UnknownTopic { .. } | Error::UnknownDelivery { .. } => Code::NotFound,
        Error::Unsupported { .. } => Code::Unimplemented,
        Error::Unavailable { .. } | Error::Closed { .. } => Code::Unavailable,
        Error::Timeout { .. } => Code::DeadlineExceeded,
        _ => Code::Internal,
    }
}

/// A gRPC status for `e`, with the typed error in its details.
pub fn status_for(e: &Error) -> Status {
    let detail = error_to_proto(e);
    Status::with_details(code_for(e), e.to_string(), detail.encode_to_vec().into())
}

/// The typed error in a status from a Wharf server; statuses without
/// details (transport failures, auth) become `Unavailable` or `Backend`.
pub fn error_from_status(s: &Status, backend: &'static str) -> Error {
    if !s.details().is_empty() {
        if let Ok(d) = v1::ErrorDetail::decode(s.details()) {
            return error_from_proto(d, backend);
        }
    }
    let source = format!("{}: {}", code_name(s.code()), s.message()).into();
    match s.code() {
        Code::Unavailable | Code::Unknown | Code::Cancelled => {
            Error::Unavailable { backend, source }
        }
        Code::ResourceExhausted | Code::InvalidArgument => Error::InvalidArgument {
            name: "request",
            reason: s.message().to_owned(),
        },
        _ => Error::Backend { backend, source },
    }
}

fn code_name(c: Code) -> &'static str {
    match c {
        Code::Unauthenticated => "unauthenticated",
        Code::PermissionDenied => "permission denied",
        Code::ResourceExhausted => "resource exhausted",
        Code::InvalidArgument => "invalid argument",
        Code::NotFound => "not found",
        Code::Unavailable => "unavailable",
        _ => "error",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_round_trips_through_proto() {
        let m = Message::builder()
            .key("k")
            .header("a", "1")
            .header("b", "2")
            .payload("hello")
            .timestamp(Timestamp::from_millis(42))
            .build();
        let back = message_from_proto(message_to_proto(&m)).expect("valid");
        assert_eq!(back, m);
    }

    #[test]
    fn a_full_disk_is_resource_exhausted_and_stays_a_retryable_storage_full_error() {
        let e = Error::StorageFull {
            backend: "broker",
            source: "no space left on device".into(),
        };
        let status = status_for(&e);
        assert_eq!(status.code(), Code::ResourceExhausted);
        let back = error_from_status(&status, "remote");
        assert!(matches!(back, Error::StorageFull { .. }), "{back:?}");
        assert!(back.is_transient());
        assert!(
            back.to_string().contains("no space left on device"),
            "{back}"
        );
    }

    #[test]
    fn typed_errors_survive_a_status_round_trip() {
        let cases = vec![
            Error::InvalidName {
                kind: NameKind::Group,
                name: "bad group".into(),
                reason: "may only contain [A-Za-z0-9_.-]",
            },
            Error::MessageTooLarge { size: 11, max: 10 },
            Error::TooManyHeaders { count: 9, max: 8 },
            Error::HeadersTooLarge { size: 70, max: 64 },
            Error::UnknownTopic { topic: "t".into() },
            Error::Closed { what: "broker" },
            Error::UnknownDelivery { id: "7".into() },
            Error::ResourceExhausted {
                resource: "consumer groups",
                limit: 3,
            },
        ];
        for e in cases {
            let back = error_from_status(&status_for(&e), "remote");
            assert_eq!(back.to_string(), e.to_string());
            assert_eq!(
                std::mem::discriminant(&back),
                std::mem::discriminant(&e),
                "{e}"
            );
        }
    }

    #[test]
    fn a_short_message_id_is_rejected() {
        let p = v1::Message {
            id: Bytes::from_static(&[1, 2, 3]),
            ..Default::default()
        };
        assert!(matches!(
            message_from_proto(p),
            Err(Error::InvalidArgument { name: "id", .. })
        ));
    }
}
