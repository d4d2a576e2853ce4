//! The gRPC length-prefixed message framing of a unary body, for the
//! publish call that both ends read and write without tonic's codec
//! machinery (the server's `Publish` route, the client's publish).

use bytes::{BufMut, Bytes};

/// The gRPC message header: compression flag and big-endian length.
pub const GRPC_HEADER: usize = 5;

/// Why a unary body is not one uncompressed gRPC message.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum FrameError {
    /// The body is empty.
    Missing,
    /// Fewer than five bytes: no complete header.
    TruncatedHeader,
    /// The compression flag is set (Wharf sends and accepts identity only).
    Compressed,
    /// The header announces more than `max` bytes.
    TooLarge {
        /// The limit.
        max: usize,
    },
    /// The body holds less or more than the one message its header announces.
    NotOneMessage,
}

impl std::fmt::Display for FrameError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FrameError::Missing => f.write_str("missing gRPC message"),
            FrameError::TruncatedHeader => f.write_str("truncated gRPC message header"),
            FrameError::Compressed => f.write_str("compressed messages are not supported"),
            FrameError::TooLarge { max } => {
                write!(f, "message larger than the limit of {max} bytes")
            }
            FrameError::NotOneMessage => f.write_str("the body is not exactly one gRPC message"),
        }
    }
}

impl std::error::Error for FrameError {}

/// The message of a unary body that holds exactly one uncompressed gRPC
/// message of at most `max` bytes (a slice of `data`, no copy).
///
/// # Errors
/// [`FrameError`] naming what is wrong with the framing.
pub fn unary_message(data: &Bytes, max: usize) -> Result<Bytes, FrameError> {
    let Some((&compressed, rest)) = data.split_first() else {
        return Err(FrameError::Missing);
    };
    let len = rest
        .get(..4)
        .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize)
        .ok_or(FrameError::TruncatedHeader)?;
    if compressed != 0 {
        return Err(FrameError::Compressed);
    }
    if len > max {
        return Err(FrameError::TooLarge { max });
    }
    if data.len() != GRPC_HEADER + len {
        return Err(FrameError::NotOneMessage);
    }
    Ok(data.slice(GRPC_HEADER..))
}

/// Writes the header of an uncompressed message of `len` bytes.
///
/// # Errors
/// [`FrameError::TooLarge`] when `len` does not fit the header's 32 bits.
pub fn put_header(buf: &mut impl BufMut, len: usize) -> Result<(), FrameError> {
    let len = u32::try_from(len).map_err(|_| FrameError::TooLarge {
        max: u32::MAX as usize,
    })?;
    buf.put_u8(0);
    buf.put_u32(len);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn framed(flag: u8, len: u32, body: &[u8]) -> Bytes {
        let mut v = vec![flag];
        v.extend_from_slice(&len.to_be_bytes());
        v.extend_from_slice(body);
        Bytes::from(v)
    }

    #[test]
    fn a_framed_message_reads_back_as_a_slice() {
        let mut buf = Vec::new();
        put_header(&mut buf, 3).unwrap();
        buf.extend_from_slice(b"abc");
        let data = Bytes::from(buf);
        let m = unary_message(&data, 10).unwrap();
        assert_eq!(&m[..], b"abc");
        assert_eq!(m.as_ptr(), data[GRPC_HEADER..].as_ptr(), "no copy");
        assert_eq!(&unary_message(&framed(0, 0, b""), 0).unwrap()[..], b"");
    }

    #[test]
    fn bad_framing_is_named() {
        assert_eq!(unary_message(&Bytes::new(), 10), Err(FrameError::Missing));
        assert_eq!(
            unary_message(&Bytes::from_static(&[0, 0, 0]), 10),
            Err(FrameError::TruncatedHeader)
        );
        assert_eq!(
            unary_message(&framed(1, 3, b"abc"), 10),
            Err(FrameError::Compressed)
        );
        assert_eq!(
            unary_message(&framed(0, 11, &[0; 11]), 10),
            Err(FrameError::TooLarge { max: 10 })
        );
        assert_eq!(
            unary_message(&framed(0, 3, b"ab"), 10),
            Err(FrameError::NotOneMessage)
        );
        assert_eq!(
            unary_message(&framed(0, 3, b"abcd"), 10),
            Err(FrameError::NotOneMessage)
        );
    }
}
