//! The gRPC length-prefixed message framing: the unary body of the publish
//! call that both ends read and write without tonic's codec machinery (the
//! server's `Publish` route, the client's publish), and [`HeaderScanner`],
//! which finds each message's header in a body as it streams in (the
//! server's size limit, checked before anything is decoded).

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
        .map(|b| announced_len([compressed, b[0], b[1], b[2], b[3]]) as usize)
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

/// The message length a header announces (its last four bytes, big-endian).
fn announced_len(header: [u8; GRPC_HEADER]) -> u32 {
    u32::from_be_bytes([header[1], header[2], header[3], header[4]])
}

/// A message header that announces more than the limit, found by
/// [`HeaderScanner::scan`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Oversized {
    /// Where the header starts in the chunk being scanned (0 when it began
    /// in an earlier chunk): the bytes before it belong to earlier messages.
    pub at: usize,
    /// The length the header announces.
    pub len: u32,
}

/// Finds the header of each gRPC message in a body as it arrives, chunk by
/// chunk, holding none of it: it remembers only how many bytes of the
/// current message are still to come (and the first bytes of a header
/// split across chunks), so the length of a message can be checked before
/// any of the message is read, let alone decoded.
///
/// ```
/// use wharf_proto::frame::{HeaderScanner, Oversized};
///
/// let mut scanner = HeaderScanner::new(4);
/// // A 3-byte message, then the first two bytes of a header…
/// assert_eq!(scanner.scan(&[0, 0, 0, 0, 3, b'a', b'b', b'c', 0, 0]), Ok(()));
/// // …whose rest announces 5 bytes, over the limit of 4.
/// assert_eq!(scanner.scan(&[0, 0, 5]), Err(Oversized { at: 0, len: 5 }));
/// ```
#[derive(Debug, Clone)]
pub struct HeaderScanner {
    max: usize,
    /// Bytes of the current message not yet seen.
    remaining: u64,
    /// The bytes of a header seen so far (`partial` of them).
    header: [u8; GRPC_HEADER],
    partial: usize,
}

impl HeaderScanner {
    /// A scanner for a body whose messages may be at most `max` bytes long.
    pub fn new(max: usize) -> Self {
        HeaderScanner {
            max,
            remaining: 0,
            header: [0; GRPC_HEADER],
            partial: 0,
        }
    }

    /// Reads the next `chunk` of the body: skips what belongs to the
    /// current message and checks each header that completes in it.
    ///
    /// # Errors
    /// [`Oversized`] for the first header announcing more than the limit
    /// (a message of exactly the limit is fine). The scanner is then spent:
    /// what follows is that message, which the caller does not read.
    pub fn scan(&mut self, chunk: &[u8]) -> Result<(), Oversized> {
        let mut pos = 0;
        while pos < chunk.len() {
            if self.remaining > 0 {
                let skip = usize::try_from(self.remaining)
                    .unwrap_or(usize::MAX)
                    .min(chunk.len() - pos);
                pos += skip;
                self.remaining -= skip as u64;
                continue;
            }
            let at = if self.partial == 0 { pos } else { 0 };
            let take = (GRPC_HEADER - self.partial).min(chunk.len() - pos);
            self.header[self.partial..self.partial + take].copy_from_slice(&chunk[pos..pos + take]);
            self.partial += take;
            pos += take;
            if self.partial == GRPC_HEADER {
                self.partial = 0;
                let len = announced_len(self.header);
                if len as usize > self.max {
                    return Err(Oversized { at, len });
                }
                self.remaining = u64::from(len);
            }
        }
        Ok(())
    }
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

    /// Frames of the given lengths (payload bytes all `7`).
    fn body(lens: &[u32]) -> Vec<u8> {
        let mut v = Vec::new();
        for &len in lens {
            v.push(0);
            v.extend_from_slice(&len.to_be_bytes());
            v.resize(v.len() + len as usize, 7);
        }
        v
    }

    /// Scans `data` cut into chunks of `step` bytes: the index of the
    /// chunk in which an oversized header was found, and what was reported.
    fn scan_in_chunks(data: &[u8], step: usize, max: usize) -> Result<(), (usize, Oversized)> {
        let mut s = HeaderScanner::new(max);
        for (i, chunk) in data.chunks(step).enumerate() {
            s.scan(chunk).map_err(|o| (i, o))?;
        }
        Ok(())
    }

    #[test]
    fn the_scanner_finds_every_header_however_the_body_is_cut() {
        let ok = body(&[0, 3, 10, 1, 10]);
        for step in 1..=ok.len() {
            assert_eq!(scan_in_chunks(&ok, step, 10), Ok(()), "step {step}");
        }
        // The fourth header announces one byte over the limit.
        let bad = body(&[3, 10, 0, 11, 2]);
        let header = (5 + 3) + (5 + 10) + 5;
        for step in 1..=bad.len() {
            // Found in the chunk holding the header's last byte, at its
            // start there, or at 0 if it began in an earlier chunk.
            let chunk = (header + GRPC_HEADER - 1) / step;
            let at = header.saturating_sub(chunk * step);
            assert_eq!(
                scan_in_chunks(&bad, step, 10),
                Err((chunk, Oversized { at, len: 11 })),
                "step {step}"
            );
        }
        // The largest length a header can announce, compressed or not.
        let mut huge = vec![1];
        huge.extend_from_slice(&u32::MAX.to_be_bytes());
        assert_eq!(
            HeaderScanner::new(10).scan(&huge),
            Err(Oversized {
                at: 0,
                len: u32::MAX
            })
        );
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
