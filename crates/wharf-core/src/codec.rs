//! Payload codecs: typed values to bytes and back.
//!
//! [`Json`] (serde) is built in; other formats (Protobuf, MessagePack) plug in
//! by implementing [`Codec`] for their own types.

use bytes::Bytes;
use serde::{de::DeserializeOwned, Serialize};

use crate::error::BoxError;

/// Failure to encode or decode a payload.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CodecError {
    /// The value could not be encoded.
    #[error("cannot encode payload as {content_type}: {source}")]
    Encode {
        /// The codec's content type.
        content_type: &'static str,
        /// The serializer's error.
        #[source]
        source: BoxError,
    },
    /// The bytes are not a valid value of the expected type.
    #[error("cannot decode {content_type} payload: {source}")]
    Decode {
        /// The codec's content type.
        content_type: &'static str,
        /// The deserializer's error.
        #[source]
        source: BoxError,
    },
}

/// Turns values of `T` into payload bytes and back.
pub trait Codec<T>: Send + Sync {
    /// MIME type written to the `content-type` header, e.g. `application/json`.
    fn content_type(&self) -> &'static str;

    /// Encodes `value`.
    ///
    /// # Errors
    /// [`CodecError::Encode`] if the value cannot be represented.
    fn encode(&self, value: &T) -> Result<Bytes, CodecError>;

    /// Decodes `bytes`.
    ///
    /// # Errors
    /// [`CodecError::Decode`] if the bytes are not a valid `T`.
    fn decode(&self, bytes: &[u8]) -> Result<T, CodecError>;
}

/// JSON via serde.
#[derive(Debug, Clone, Copy, Default)]
pub struct Json;

impl<T: Serialize + DeserializeOwned> Codec<T> for Json {
    fn content_type(&self) -> &'static str {
        "application/json"
    }

    fn encode(&self, value: &T) -> Result<Bytes, CodecError> {
        serde_json::to_vec(value)
            .map(Bytes::from)
            .map_err(|e| CodecError::Encode {
                content_type: "application/json",
                source: Box::new(e),
            })
    }

    fn decode(&self, bytes: &[u8]) -> Result<T, CodecError> {
        serde_json::from_slice(bytes).map_err(|e| CodecError::Decode {
            content_type: "application/json",
            source: Box::new(e),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_decode_of_garbage_is_a_decode_error() {
        let r: Result<Vec<u32>, _> = Json.decode(b"{not json");
        assert!(matches!(r, Err(CodecError::Decode { .. })));
    }

    #[test]
    fn json_round_trips() {
        let v = vec![1u32, 2, 3];
        let b = Json.encode(&v).unwrap();
        assert_eq!(&b[..], b"[1,2,3]");
        let back: Vec<u32> = Json.decode(&b).unwrap();
        assert_eq!(back, v);
    }
}
