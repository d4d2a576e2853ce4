//! The connection a subscription reads its streams on (`XREADGROUP`,
//! `XREAD`), with a RESP2 reader of its own.
//!
//! Why not the `redis` client here: a profile of a group draining a backlog
//! put 41 % of the consumer's CPU in the client's general reply parser and
//! a quarter in malloc, free and memmove, because every field of every entry
//! becomes a `Value` holding its own `Vec`. This connection reads a reply
//! into one buffer, finds where it ends with a resumable scan (a reply
//! arriving in many reads is scanned once, not re-parsed per read), and
//! hands the whole reply to the decoder, which takes each entry's fields as
//! slices of it ([`read_reply`]). Only the key and payload are copied out,
//! so a message does not keep the reply's buffer alive.
//!
//! Commands are still built and encoded by the `redis` crate
//! ([`redis::Cmd::get_packed_command`]); the connection speaks RESP2 (it
//! never sends `HELLO`), authenticates and selects the database as the
//! backend's URL says, and is named `<prefix>:read:<consumer>` (`private`
//! for a subscription without a group). One command is on the wire at a time, so a reply
//! that takes longer than [`RESPONSE_TIMEOUT`] leaves the connection in an
//! unknown state: the caller drops it and connects again.

use bytes::{Bytes, BytesMut};
use redis::ConnectionAddr;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use wharf_core::{Error, Result};

use crate::config::RESPONSE_TIMEOUT;
use crate::error::{unexpected, RedisError};
use crate::wire::{self, Entry};

/// How much the read buffer grows by when a reply needs more.
const READ_CHUNK: usize = 64 * 1024;

trait Io: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Io for T {}

/// One whole reply, as read: the decoder takes it apart.
pub(crate) struct Reply {
    bytes: Bytes,
    /// The values three arrays deep: in an `XREAD`/`XREADGROUP` reply, its
    /// entries.
    entries: usize,
}

impl Reply {
    /// The entries of an `XREAD`/`XREADGROUP` reply, without decoding it.
    pub(crate) fn entries(&self) -> usize {
        self.entries
    }
}

/// A connection for stream reads (see the module docs).
pub(crate) struct ReadConn {
    io: Box<dyn Io>,
    buf: BytesMut,
    scan: Scan,
    /// A command was sent and its whole reply not yet read: set until the
    /// reply is read, so a query whose future was dropped half-way (or
    /// failed) leaves the connection refusing further queries instead of
    /// reading the old reply as the next one's.
    broken: bool,
}

impl ReadConn {
    /// Connects to the server `info` names, authenticates, selects its
    /// database and names the connection `name` (`CLIENT SETNAME`, so
    /// `CLIENT LIST` tells which subscription reads on it); all within
    /// [`RESPONSE_TIMEOUT`].
    pub(crate) async fn connect(info: &redis::ConnectionInfo, name: &str) -> Result<Self> {
        let connect = async {
            let io: Box<dyn Io> = match info.addr() {
                ConnectionAddr::Tcp(host, port) => {
                    let s = tokio::net::TcpStream::connect((host.as_str(), *port))
                        .await
                        .map_err(|e| io_error("connect", e))?;
                    s.set_nodelay(true).map_err(|e| io_error("connect", e))?;
                    Box::new(s)
                }
                #[cfg(unix)]
                ConnectionAddr::Unix(path) => Box::new(
                    tokio::net::UnixStream::connect(path)
                        .await
                        .map_err(|e| io_error("connect", e))?,
                ),
                other => {
                    return Err(Error::InvalidArgument {
                        name: "url",
                        reason: format!("subscriptions cannot connect to {other}"),
                    })
                }
            };
            let mut conn = ReadConn {
                io,
                buf: BytesMut::new(),
                scan: Scan::default(),
                broken: false,
            };
            let settings = info.redis_settings();
            if let Some(password) = settings.password() {
                let mut auth = redis::cmd("AUTH");
                if let Some(user) = settings.username() {
                    auth.arg(user);
                }
                auth.arg(password);
                conn.query_inner(&auth, "AUTH").await?.ok("AUTH")?;
            }
            if settings.db() != 0 {
                let mut select = redis::cmd("SELECT");
                select.arg(settings.db());
                conn.query_inner(&select, "SELECT").await?.ok("SELECT")?;
            }
            let mut set_name = redis::cmd("CLIENT");
            set_name.arg("SETNAME").arg(name);
            conn.query_inner(&set_name, "CLIENT SETNAME")
                .await?
                .ok("CLIENT SETNAME")?;
            Ok(conn)
        };
        tokio::time::timeout(RESPONSE_TIMEOUT, connect)
            .await
            .map_err(|_| Error::Timeout {
                operation: "connect",
                after: RESPONSE_TIMEOUT,
            })?
    }

    /// Sends `cmd` and reads its whole reply. An error reply is
    /// [`Error::Backend`]. After a failure, a timeout, or this future being
    /// dropped before it finished, every later query fails
    /// ([`Error::Unavailable`]): the caller connects again.
    pub(crate) async fn query(&mut self, cmd: &redis::Cmd, name: &'static str) -> Result<Reply> {
        let reply = tokio::time::timeout(RESPONSE_TIMEOUT, self.query_inner(cmd, name))
            .await
            .map_err(|_| Error::Timeout {
                operation: name,
                after: RESPONSE_TIMEOUT,
            })??;
        reply.server_error(name)?;
        Ok(reply)
    }

    async fn query_inner(&mut self, cmd: &redis::Cmd, name: &'static str) -> Result<Reply> {
        if self.broken {
            return Err(io_error(
                name,
                std::io::Error::other("an earlier read on this connection did not finish"),
            ));
        }
        self.broken = true;
        self.io
            .write_all(&cmd.get_packed_command())
            .await
            .map_err(|e| io_error(name, e))?;
        loop {
            match self.scan.advance(&self.buf) {
                Ok(Some(len)) => {
                    let entries = self.scan.entries;
                    self.scan = Scan::default();
                    let bytes = self.buf.split_to(len).freeze();
                    self.broken = false;
                    return Ok(Reply { bytes, entries });
                }
                Ok(None) => {}
                Err(detail) => return Err(unexpected(name, detail)),
            }
            self.buf.reserve(READ_CHUNK);
            let n = self
                .io
                .read_buf(&mut self.buf)
                .await
                .map_err(|e| io_error(name, e))?;
            if n == 0 {
                return Err(io_error(
                    name,
                    std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        "the server closed the connection",
                    ),
                ));
            }
        }
    }
}

impl Reply {
    /// An error reply (`-ERR …`) as [`Error::Backend`].
    fn server_error(&self, command: &'static str) -> Result<()> {
        match self.bytes.strip_prefix(b"-") {
            Some(line) => Err(Error::Backend {
                backend: crate::backend::NAME,
                source: Box::new(RedisError::Server {
                    command,
                    message: String::from_utf8_lossy(line.trim_ascii_end()).into_owned(),
                }),
            }),
            None => Ok(()),
        }
    }

    /// Success for a `+OK`; the server's error otherwise.
    fn ok(&self, command: &'static str) -> Result<()> {
        self.server_error(command)?;
        if self.bytes.starts_with(b"+") {
            Ok(())
        } else {
            Err(unexpected(command, String::from_utf8_lossy(&self.bytes)))
        }
    }
}

fn io_error(context: &'static str, source: std::io::Error) -> Error {
    Error::Unavailable {
        backend: crate::backend::NAME,
        source: Box::new(RedisError::Io { context, source }),
    }
}

/// Where a reply ends, found across reads: the scan keeps its place and the
/// arrays still open, so each byte is looked at once however the reply is
/// split. A value's header or a bulk string not yet whole is looked at
/// again when more bytes come.
#[derive(Default)]
struct Scan {
    /// Bytes of the reply scanned.
    pos: usize,
    /// Elements still to come of each open array, outermost first.
    open: Vec<usize>,
    /// Values begun at depth 3 (array in array in array).
    entries: usize,
}

impl Scan {
    /// `Some(len)` once a whole reply is in `buf[..len]`.
    fn advance(&mut self, buf: &[u8]) -> std::result::Result<Option<usize>, String> {
        loop {
            let rest = &buf[self.pos..];
            let Some(nl) = rest.iter().position(|&b| b == b'\n') else {
                return Ok(None);
            };
            if nl < 2 || rest[nl - 1] != b'\r' {
                return Err(format!("a malformed line at byte {}", self.pos));
            }
            let (kind, line) = (rest[0], &rest[1..nl - 1]);
            let header = nl + 1;
            let whole = match kind {
                b'+' | b'-' | b':' => header,
                b'$' => match length(line)? {
                    None => header,
                    Some(n) => {
                        let need = n
                            .checked_add(header + 2)
                            .ok_or("a bulk string longer than memory")?;
                        if rest.len() < need {
                            return Ok(None);
                        }
                        if &rest[need - 2..need] != b"\r\n" {
                            return Err(format!("a bulk string without CRLF at byte {}", self.pos));
                        }
                        need
                    }
                },
                b'*' => {
                    if self.open.len() == 3 {
                        self.entries += 1;
                    }
                    match length(line)? {
                        Some(n) if n > 0 => {
                            if self.open.len() >= 32 {
                                return Err("arrays nested more than 32 deep".into());
                            }
                            self.pos += header;
                            self.open.push(n);
                            continue;
                        }
                        _ => header,
                    }
                }
                other => return Err(format!("a value of type {:?}", other as char)),
            };
            if kind != b'*' && self.open.len() == 3 {
                self.entries += 1;
            }
            self.pos += whole;
            // A value is complete: so is every array it was the last of.
            loop {
                let Some(left) = self.open.last_mut() else {
                    return Ok(Some(self.pos));
                };
                *left -= 1;
                if *left > 0 {
                    break;
                }
                self.open.pop();
            }
        }
    }
}

/// A bulk string's or array's length: `None` for nil (negative).
fn length(line: &[u8]) -> std::result::Result<Option<usize>, String> {
    let n: i64 = std::str::from_utf8(line)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("a length of {:?}", String::from_utf8_lossy(line)))?;
    if n < 0 {
        return Ok(None);
    }
    usize::try_from(n)
        .map(Some)
        .map_err(|_| format!("a length of {n}, more than memory"))
}

/// One value of a whole reply.
enum Val<'a> {
    /// An array's length (`None`: the nil array).
    Array(Option<usize>),
    /// A bulk or simple string, or an integer's text (`None`: nil).
    Str(Option<&'a [u8]>),
    /// An error reply's text.
    Err(&'a [u8]),
}

/// Reads the values of a whole reply (one that [`Scan`] found the end of)
/// in order.
struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn next(&mut self) -> std::result::Result<Val<'a>, String> {
        let rest = &self.buf[self.pos..];
        let nl = rest
            .iter()
            .position(|&b| b == b'\n')
            .filter(|&nl| nl >= 2)
            .ok_or("a truncated reply")?;
        let (kind, line) = (rest[0], &rest[1..nl - 1]);
        self.pos += nl + 1;
        Ok(match kind {
            b'+' | b':' => Val::Str(Some(line)),
            b'-' => Val::Err(line),
            b'$' => match length(line)? {
                None => Val::Str(None),
                Some(n) => {
                    let s = self
                        .buf
                        .get(self.pos..)
                        .and_then(|rest| rest.get(..n))
                        .ok_or("a truncated bulk string")?;
                    self.pos += n + 2;
                    Val::Str(Some(s))
                }
            },
            b'*' => Val::Array(length(line)?),
            other => return Err(format!("a value of type {:?}", other as char)),
        })
    }

    fn string(&mut self) -> std::result::Result<&'a [u8], String> {
        match self.next()? {
            Val::Str(Some(s)) => Ok(s),
            _ => Err("a string expected".into()),
        }
    }

    /// The first element, a string, of a two-element array; `not_a_pair`
    /// otherwise.
    fn pair_head(&mut self, not_a_pair: &str) -> std::result::Result<String, String> {
        if !matches!(self.next()?, Val::Array(Some(2))) {
            return Err(not_a_pair.into());
        }
        Ok(String::from_utf8_lossy(self.string()?).into_owned())
    }

    /// The next value if it is a string; anything else is stepped over
    /// whole.
    fn string_or_skip(&mut self) -> std::result::Result<Option<&'a [u8]>, String> {
        let mut left = match self.next()? {
            Val::Str(s) => return Ok(s),
            Val::Array(Some(n)) => n,
            Val::Array(None) | Val::Err(_) => 0,
        };
        while left > 0 {
            left -= 1;
            if let Val::Array(Some(n)) = self.next()? {
                left += n;
            }
        }
        Ok(None)
    }
}

/// Decodes an `XREAD`/`XREADGROUP` reply into each stream key with its
/// entries, in reply order (nil — nothing within BLOCK — is no entries).
/// Each entry is made by [`wire::entry_of`], as one the `redis` client
/// parsed is by [`wire::entry`].
pub(crate) fn read_reply(
    reply: &Reply,
    command: &'static str,
) -> Result<Vec<(String, Vec<Entry>)>> {
    decode_read(&reply.bytes).map_err(|detail| unexpected(command, detail))
}

fn decode_read(buf: &[u8]) -> std::result::Result<Vec<(String, Vec<Entry>)>, String> {
    let mut c = Cursor { buf, pos: 0 };
    let streams = match c.next()? {
        Val::Array(Some(n)) => n,
        Val::Array(None) | Val::Str(None) => return Ok(Vec::new()),
        Val::Err(e) => return Err(String::from_utf8_lossy(e).into_owned()),
        Val::Str(Some(s)) => return Err(format!("{:?}", String::from_utf8_lossy(s))),
    };
    let mut out = Vec::with_capacity(streams);
    for _ in 0..streams {
        let key = c.pair_head("a stream that is not [key, entries]")?;
        let n = match c.next()? {
            Val::Array(Some(n)) => n,
            _ => 0,
        };
        let mut entries = Vec::with_capacity(n);
        for _ in 0..n {
            let id = c.pair_head("an entry that is not [id, fields]")?;
            let fields = match c.next()? {
                Val::Array(Some(f)) if f % 2 == 0 => f / 2,
                _ => return Err(format!("fields of {id}")),
            };
            let mut pairs = Vec::with_capacity(fields);
            for _ in 0..fields {
                // A field that is not a string is skipped, as the client
                // path does.
                if let (Some(name), Some(value)) = (c.string_or_skip()?, c.string_or_skip()?) {
                    pairs.push((name, value));
                }
            }
            entries.push(wire::entry_of(id, pairs));
        }
        out.push((key, entries));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use wharf_core::Message;

    /// `values` as RESP2: a `&str` as a bulk string, a `Vec` as an array.
    enum V {
        S(Vec<u8>),
        A(Vec<V>),
        Nil,
    }

    fn encode(v: &V, out: &mut Vec<u8>) {
        match v {
            V::S(s) => {
                out.extend_from_slice(format!("${}\r\n", s.len()).as_bytes());
                out.extend_from_slice(s);
                out.extend_from_slice(b"\r\n");
            }
            V::A(items) => {
                out.extend_from_slice(format!("*{}\r\n", items.len()).as_bytes());
                for i in items {
                    encode(i, out);
                }
            }
            V::Nil => out.extend_from_slice(b"*-1\r\n"),
        }
    }

    fn entry(id: &str, msg: &Message) -> V {
        let mut f = Vec::new();
        for (n, v) in wire::fields(msg) {
            f.push(V::S(n));
            f.push(V::S(v.to_vec()));
        }
        V::A(vec![V::S(id.into()), V::A(f)])
    }

    /// Scans `bytes` fed in pieces of `step` bytes.
    fn scan_in_steps(bytes: &[u8], step: usize) -> Option<(usize, usize)> {
        let mut scan = Scan::default();
        let mut fed = 0;
        loop {
            fed = (fed + step).min(bytes.len());
            if let Some(len) = scan.advance(&bytes[..fed]).expect("well formed") {
                return Some((len, scan.entries));
            }
            if fed == bytes.len() {
                return None;
            }
        }
    }

    fn reply(bytes: &[u8]) -> Reply {
        let (len, entries) = scan_in_steps(bytes, bytes.len()).expect("whole");
        Reply {
            bytes: Bytes::copy_from_slice(&bytes[..len]),
            entries,
        }
    }

    #[test]
    fn a_read_reply_split_anywhere_is_found_whole_once_and_counted() {
        let (a, b) = (
            Message::builder()
                .key("k\r\n")
                .header("h", "v")
                .payload("p\r\n$3\r\n")
                .build(),
            Message::new(vec![0u8; 300]),
        );
        let read = V::A(vec![
            V::A(vec![
                V::S(b"s:a".to_vec()),
                V::A(vec![entry("1-0", &a), entry("1-1", &b)]),
            ]),
            V::A(vec![V::S(b"s:b".to_vec()), V::A(vec![entry("2-0", &a)])]),
        ]);
        let mut bytes = Vec::new();
        encode(&read, &mut bytes);
        let whole = bytes.len();
        // What follows the reply (the next one) is not part of it.
        bytes.extend_from_slice(b"+OK\r\n");
        for step in 1..=whole {
            assert_eq!(scan_in_steps(&bytes, step), Some((whole, 3)), "step {step}");
        }
        let decoded = read_reply(&reply(&bytes), "XREADGROUP").expect("decodes");
        assert_eq!(decoded.len(), 2);
        let (key, entries) = &decoded[0];
        assert_eq!(key, "s:a");
        assert_eq!(entries[0].id, "1-0");
        assert_eq!(entries[0].message, a);
        assert_eq!(entries[1].message, b);
        assert_eq!(decoded[1].0, "s:b");
        assert_eq!(decoded[1].1[0].id, "2-0");
        assert_eq!(decoded[1].1[0].message, a);
    }

    #[test]
    fn a_nil_reply_is_no_entries() {
        for nil in [&b"*-1\r\n"[..], b"$-1\r\n", b"*0\r\n"] {
            let r = reply(nil);
            assert_eq!(r.entries(), 0);
            assert!(read_reply(&r, "XREAD").expect("nil").is_empty());
        }
    }

    #[test]
    fn an_error_reply_is_the_servers_error() {
        let r = reply(b"-NOGROUP No such key or consumer group\r\n");
        let err = r.server_error("XREADGROUP").expect_err("an error reply");
        assert!(err.to_string().contains("NOGROUP No such key"), "{err}");
        assert!(reply(b"+OK\r\n").ok("AUTH").is_ok());
        assert!(reply(b":1\r\n").ok("AUTH").is_err());
    }

    #[test]
    fn fields_that_are_not_strings_are_skipped_and_their_entry_kept() {
        let msg = Message::new("body");
        let V::A(mut e) = entry("5-0", &msg) else {
            unreachable!()
        };
        let V::A(mut f) = e.pop().expect("fields") else {
            unreachable!()
        };
        f.push(V::A(vec![
            V::S(b"x".to_vec()),
            V::A(vec![V::S(b"y".to_vec())]),
        ]));
        f.push(V::Nil);
        e.push(V::A(f));
        let read = V::A(vec![V::A(vec![V::S(b"s".to_vec()), V::A(vec![V::A(e)])])]);
        let mut bytes = Vec::new();
        encode(&read, &mut bytes);
        let decoded = read_reply(&reply(&bytes), "XREAD").expect("decodes");
        assert_eq!(decoded[0].1[0].message, msg);
    }

    /// A query dropped after sending (its reply not read) leaves the
    /// connection refusing the next query, rather than taking the late
    /// reply as the next one's.
    #[tokio::test]
    async fn a_query_dropped_half_way_leaves_the_connection_refusing_queries() {
        use tokio::io::AsyncReadExt as _;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let server = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.expect("accept");
            // Name the connection; then take the first command and answer
            // it only late.
            let mut buf = [0u8; 256];
            let _ = s.read(&mut buf).await;
            let _ = s.write_all(b"+OK\r\n").await;
            let _ = s.read(&mut buf).await;
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            let _ = s.write_all(b"*-1\r\n").await;
            let _ = s.read(&mut buf).await;
            let _ = s.write_all(b"*-1\r\n").await;
            s
        });
        let info = redis::Client::open(format!("redis://127.0.0.1:{port}"))
            .expect("url")
            .get_connection_info()
            .clone();
        let mut conn = ReadConn::connect(&info, "n").await.expect("connect");
        let mut cmd = redis::cmd("XREAD");
        cmd.arg("STREAMS").arg("k").arg("0");
        {
            let q = conn.query(&cmd, "XREAD");
            tokio::pin!(q);
            // Polled until the command is sent and it waits for the reply.
            assert!(futures_util::FutureExt::now_or_never(q.as_mut()).is_none());
        }
        let err = conn.query(&cmd, "XREAD").await.err().expect("refused");
        assert!(matches!(err, Error::Unavailable { .. }), "{err:?}");
        drop(server);
    }

    #[test]
    fn malformed_input_is_an_error_not_a_panic() {
        for bad in [
            &b"?x\r\n"[..],
            b"$abc\r\n",
            b"*1\n",
            b"$3\r\nabcde\r\n",
            b"\r\n",
        ] {
            let mut scan = Scan::default();
            assert!(
                scan.advance(bad).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        // Whole as far as the scan can tell, but not a read reply.
        for odd in [
            &b"*1\r\n:5\r\n"[..],
            b"*1\r\n*2\r\n$1\r\nk\r\n*1\r\n*1\r\n$1\r\nx\r\n",
        ] {
            assert!(read_reply(&reply(odd), "XREAD").is_err());
        }
    }

    proptest::proptest! {
        /// Any bytes, fed in any pieces: the scan and the decoder return
        /// or fail, never panic, and a scan that finds an end finds it
        /// inside what it was given.
        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..200), step in 1usize..50) {
            let mut scan = Scan::default();
            let mut fed = 0;
            while fed < bytes.len() {
                fed = (fed + step).min(bytes.len());
                match scan.advance(&bytes[..fed]) {
                    Ok(Some(len)) => {
                        proptest::prop_assert!(len <= fed);
                        let _ = decode_read(&bytes[..len]);
                        break;
                    }
                    Ok(None) => {}
                    Err(_) => break,
                }
            }
        }

        /// Messages with any key, headers and payload read back as they
        /// were written, however the reply is split.
        #[test]
        fn entries_round_trip(
            msgs in proptest::collection::vec(
                (
                    proptest::option::of(proptest::collection::vec(proptest::prelude::any::<u8>(), 0..20)),
                    proptest::collection::vec(("[a-z]{1,5}", "[ -~]{0,8}"), 0..3),
                    proptest::collection::vec(proptest::prelude::any::<u8>(), 0..64),
                ),
                0..8,
            ),
            step in 1usize..300,
        ) {
            let msgs: Vec<Message> = msgs
                .into_iter()
                .map(|(key, headers, payload)| {
                    let mut b = Message::builder().payload(payload);
                    if let Some(k) = key {
                        b = b.key(k);
                    }
                    for (n, v) in headers {
                        b = b.header(n, v);
                    }
                    b.build()
                })
                .collect();
            let entries = msgs
                .iter()
                .enumerate()
                .map(|(i, m)| entry(&format!("1-{i}"), m))
                .collect();
            let mut bytes = Vec::new();
            encode(&V::A(vec![V::A(vec![V::S(b"s".to_vec()), V::A(entries)])]), &mut bytes);
            let (len, n) = scan_in_steps(&bytes, step).expect("whole");
            proptest::prop_assert_eq!((len, n), (bytes.len(), msgs.len()));
            let decoded = read_reply(&reply(&bytes), "XREAD").expect("decodes");
            let got: Vec<&Message> = decoded[0].1.iter().map(|e| &e.message).collect();
            proptest::prop_assert_eq!(got, msgs.iter().collect::<Vec<_>>());
        }
    }
}
