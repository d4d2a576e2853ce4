//! A prost codec for tonic that rejects malformed protobuf with
//! `INVALID_ARGUMENT` (tonic's own codec says `INTERNAL`, which blames the
//! server for a client's bad bytes).

use std::marker::PhantomData;

use prost::Message;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::Status;

/// The codec every generated Wharf client and server uses.
#[derive(Debug)]
pub struct WharfCodec<T, U>(PhantomData<fn() -> (T, U)>);

impl<T, U> Default for WharfCodec<T, U> {
    fn default() -> Self {
        WharfCodec(PhantomData)
    }
}

impl<T, U> Codec for WharfCodec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = WharfEncoder<T>;
    type Decoder = WharfDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        WharfEncoder(PhantomData)
    }

    fn decoder(&mut self) -> Self::Decoder {
        WharfDecoder(PhantomData)
    }
}

/// Encodes prost messages.
#[derive(Debug)]
pub struct WharfEncoder<T>(PhantomData<fn() -> T>);

impl<T: Message> Encoder for WharfEncoder<T> {
    type Item = T;
    type Error = Status;

    fn encode(&mut self, item: T, buf: &mut EncodeBuf<'_>) -> Result<(), Status> {
        // tonic's buffer starts at 8 KiB: without the reserve a 130 KB
        // publish batch grows it five times, copying everything each time
        // (and the last doubling asks the allocator for an mmap). Then
        // `encode_raw` rather than `encode`, which would walk the message
        // once more for its length only to check a capacity that a growable
        // buffer always has (for a batch of 1000 messages, a pass over all
        // of them).
        buf.reserve(item.encoded_len());
        item.encode_raw(buf);
        Ok(())
    }
}

/// Decodes prost messages; bad bytes are `INVALID_ARGUMENT`.
#[derive(Debug)]
pub struct WharfDecoder<U>(PhantomData<fn() -> U>);

impl<U: Message + Default> Decoder for WharfDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        decode(buf).map(Some)
    }
}

/// Decodes one message from `buf`, as the server does for every request.
///
/// # Errors
/// `INVALID_ARGUMENT` naming the decode failure.
pub fn decode<U: Message + Default>(buf: impl prost::bytes::Buf) -> Result<U, Status> {
    U::decode(buf).map_err(|e| Status::invalid_argument(format!("malformed protobuf: {e}")))
}
