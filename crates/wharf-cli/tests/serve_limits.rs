//! What one client may send a real `wharf serve` and how long it may take:
//! header limits per message (HTTP and gRPC, typed errors, nothing stored,
//! other clients keep being answered), connection timeouts and the
//! connection cap, and a load of idle, slowloris and long-poll connections
//! during which `/healthz` keeps answering quickly.

mod common;

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use wharf_core::{Error, Message, Publisher};

/// The tests of this file run one at a time: two measure `/healthz`
/// latency, and no other test's servers and sockets may be charged to them
/// on a 2-core CI machine.
static HEAVY: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .expect("http client")
}

async fn stored(c: &reqwest::Client, base: &str, topic: &str) -> u64 {
    let t: Value = c
        .get(format!("{base}/v1/topics/{topic}"))
        .send()
        .await
        .expect("describe")
        .json()
        .await
        .expect("json");
    t["offsets"].as_array().map_or(0, |ps| {
        ps.iter()
            .map(|p| {
                p["end_offset"].as_u64().unwrap_or(0) - p["start_offset"].as_u64().unwrap_or(0)
            })
            .sum()
    })
}

/// The slowest `/healthz` answer while `busy` runs, sampling every 20 ms
/// on a connection of its own.
async fn slowest_healthz_during<F: std::future::Future>(
    base: &str,
    busy: F,
) -> (F::Output, Duration) {
    let c = http();
    let worst = std::cell::Cell::new(Duration::ZERO);
    let probe = async {
        loop {
            let t = Instant::now();
            let r = c
                .get(format!("{base}/healthz"))
                .send()
                .await
                .expect("healthz");
            assert_eq!(r.status().as_u16(), 200);
            worst.set(worst.get().max(t.elapsed()));
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    let out = tokio::select! {
        out = busy => out,
        () = probe => unreachable!("the probe loops until `busy` ends"),
    };
    (out, worst.get())
}

/// The attack: 100k headers in one HTTP publish took 22 s of a
/// worker (header by header, each insert scanning the rest) and froze
/// `/healthz`. Now it is refused at once with a typed 400, nothing stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_with_100k_headers_is_refused_quickly_and_healthz_keeps_answering() {
    let _one_at_a_time = HEAVY.lock().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let server = common::Server::start(dir.path(), None);
    let base = server.url();
    let c = http();
    let headers: serde_json::Map<String, Value> = (0..100_000)
        .map(|i| (format!("h{i}"), json!("v")))
        .collect();
    let body = json!({"payload": "x", "headers": headers});
    let publish = format!("{base}/v1/topics/limits.many/messages");
    let started = Instant::now();
    let ((status, err), worst) = slowest_healthz_during(&base, async {
        let r = c.post(&publish).json(&body).send().await.expect("publish");
        let status = r.status().as_u16();
        (status, r.json::<Value>().await.expect("JSON error"))
    })
    .await;
    let took = started.elapsed();
    assert_eq!(status, 400, "{err}");
    assert_eq!(err["error"]["code"], "too_many_headers", "{err}");
    assert!(took < Duration::from_secs(10), "refusing took {took:?}");
    assert!(
        worst < Duration::from_secs(2),
        "/healthz took up to {worst:?}"
    );

    // Header bytes over the limit: 413; at the limits: stored.
    let big = "v".repeat(70 * 1024);
    let r = c
        .post(&publish)
        .json(&json!({"payload": "x", "headers": {"big": big}}))
        .send()
        .await
        .expect("publish");
    assert_eq!(r.status().as_u16(), 413);
    let err: Value = r.json().await.expect("JSON error");
    assert_eq!(err["error"]["code"], "headers_too_large", "{err}");
    assert_eq!(stored(&c, &base, "limits.many").await, 0);
    let at_limit: serde_json::Map<String, Value> =
        (0..256).map(|i| (format!("h{i:03}"), json!("v"))).collect();
    let r = c
        .post(&publish)
        .json(&json!({"payload": "x", "headers": at_limit}))
        .send()
        .await
        .expect("publish");
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(stored(&c, &base, "limits.many").await, 1);
}

/// The same limits over gRPC, set by `wharf serve` flags: the client gets
/// the typed errors back (INVALID_ARGUMENT / RESOURCE_EXHAUSTED on the wire).
#[tokio::test]
async fn header_limits_set_by_flags_refuse_grpc_publishes_with_typed_errors() {
    let _one_at_a_time = HEAVY.lock().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let server = common::Server::start_with(
        dir.path(),
        None,
        "127.0.0.1:0",
        &["--max-headers", "4", "--max-header-bytes", "100"],
    );
    let client = wharf_client::Client::connect(&server.url(), None)
        .await
        .expect("connect");
    let with = |n: usize| {
        (0..n)
            .fold(Message::builder().payload("p"), |m, i| {
                m.header(format!("h{i}"), "v")
            })
            .build()
    };
    let err = client.publish("limits.grpc", with(5)).await.unwrap_err();
    assert!(
        matches!(err, Error::TooManyHeaders { count: 5, max: 4 }),
        "{err:?}"
    );
    let long = Message::builder()
        .payload("p")
        .header("h", "v".repeat(100))
        .build();
    let err = client.publish("limits.grpc", long).await.unwrap_err();
    assert!(
        matches!(
            err,
            Error::HeadersTooLarge {
                size: 101,
                max: 100
            }
        ),
        "{err:?}"
    );
    client
        .publish("limits.grpc", with(4))
        .await
        .expect("at the limit");
    let c = http();
    assert_eq!(stored(&c, &server.url(), "limits.grpc").await, 1);
    // HTTP shares the flags.
    let r = c
        .post(format!("{}/v1/topics/limits.grpc/messages", server.url()))
        .json(
            &json!({"payload": "x", "headers": {"a": "1", "b": "2", "c": "3", "d": "4", "e": "5"}}),
        )
        .send()
        .await
        .expect("publish");
    assert_eq!(r.status().as_u16(), 400);
}

// ---------- connection timeouts and the connection cap ----------

/// Starts a server with `toml` as its config file.
fn start_with_config(dir: &std::path::Path, toml: &str) -> common::Server {
    let cfg = dir.join("wharf.toml");
    std::fs::write(&cfg, toml).expect("write config");
    common::Server::start(&dir.join("data"), Some(&cfg))
}

/// Reads until the server closes the connection (EOF or reset); returns
/// how long that took and what was read, or `None` if it stayed open for
/// `patience`.
async fn closed_within(
    s: &mut tokio::net::TcpStream,
    patience: Duration,
) -> Option<(Duration, Vec<u8>)> {
    use tokio::io::AsyncReadExt;
    let started = Instant::now();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout_at((started + patience).into(), s.read(&mut buf)).await {
            Err(_) => return None,
            Ok(Ok(0) | Err(_)) => return Some((started.elapsed(), got)),
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
        }
    }
}

/// A client that connects and says nothing, one that sends its request
/// head a byte at a time (slowloris), and one that sends nothing on an
/// HTTP/2 connection after the preface are all closed once the
/// header-read timeout passes; before it they are still open.
#[tokio::test]
async fn silent_and_slowloris_connections_are_closed_after_the_header_read_timeout() {
    let _one_at_a_time = HEAVY.lock().await;
    use tokio::io::AsyncWriteExt;
    let dir = tempfile::tempdir().expect("temp dir");
    let server = start_with_config(dir.path(), "header_read_timeout_ms = 1500\n");
    let connect = || tokio::net::TcpStream::connect(server.addr.clone());
    let mut silent = connect().await.expect("connect");
    let mut h2 = connect().await.expect("connect");
    h2.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        .await
        .expect("preface");
    let mut slow = connect().await.expect("connect");
    let drip = tokio::spawn(async move {
        for b in
            b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: 0123456789012345678901234567890123456789"
        {
            if slow.write_all(&[*b]).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        closed_within(&mut slow, Duration::from_secs(30)).await
    });
    let s = closed_within(&mut silent, Duration::from_secs(30)).await;
    let (t, _) = s.expect("a silent connection stays open (no header-read timeout)");
    assert!(t >= Duration::from_millis(1000), "closed too early: {t:?}");
    let (_, _) = closed_within(&mut h2, Duration::from_secs(30))
        .await
        .expect("an HTTP/2 connection without requests stays open");
    let (t, _) = drip
        .await
        .expect("drip task")
        .expect("a slowloris connection stays open");
    assert!(t < Duration::from_secs(30));
    // The server still answers.
    let r = http()
        .get(format!("{}/healthz", server.url()))
        .send()
        .await
        .expect("healthz");
    assert_eq!(r.status().as_u16(), 200);
}

/// A request whose `Content-Length` promises more than arrives gets a 408
/// once the body-read timeout passes, and nothing is stored.
#[tokio::test]
async fn a_body_that_never_arrives_gets_408_after_the_body_read_timeout() {
    let _one_at_a_time = HEAVY.lock().await;
    use tokio::io::AsyncWriteExt;
    let dir = tempfile::tempdir().expect("temp dir");
    let server = start_with_config(dir.path(), "body_read_timeout_ms = 1500\n");
    let mut s = tokio::net::TcpStream::connect(server.addr.clone())
        .await
        .expect("connect");
    s.write_all(
        b"POST /v1/topics/limits.body/messages HTTP/1.1\r\nHost: x\r\n\
          Content-Type: application/json\r\nContent-Length: 100000\r\n\r\n{\"payload\":",
    )
    .await
    .expect("write");
    let (t, got) = closed_within(&mut s, Duration::from_secs(30))
        .await
        .expect("the request waits for ever for its body");
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(text.contains("body_timeout"), "{text}");
    assert!(
        t >= Duration::from_millis(1000),
        "answered too early: {t:?}"
    );
    let c = http();
    assert_eq!(stored(&c, &server.url(), "limits.body").await, 0);
}

/// An idle keep-alive connection is closed after the idle timeout; a long
/// poll and an SSE stream that outlast it are not cut (set by flags).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_close_but_long_polls_and_streams_outlast_the_idle_timeout() {
    let _one_at_a_time = HEAVY.lock().await;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = tempfile::tempdir().expect("temp dir");
    let server = common::Server::start_with(
        dir.path(),
        None,
        "127.0.0.1:0",
        &["--idle-timeout-ms", "1500"],
    );
    let base = server.url();

    // Keep-alive: one request, then silence.
    let mut s = tokio::net::TcpStream::connect(server.addr.clone())
        .await
        .expect("connect");
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("write");
    let mut buf = [0u8; 1024];
    let n = s.read(&mut buf).await.expect("response");
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    let (t, _) = closed_within(&mut s, Duration::from_secs(30))
        .await
        .expect("an idle keep-alive connection stays open");
    assert!(t >= Duration::from_millis(1000), "closed too early: {t:?}");

    // A long poll waiting 4 s answers (empty) after its wait, not cut at 1.5 s.
    let c = http();
    let started = Instant::now();
    let r = c
        .post(format!(
            "{base}/v1/topics/limits.idle/consume?group=g&wait_ms=4000"
        ))
        .send()
        .await
        .expect("long poll answered");
    assert_eq!(r.status().as_u16(), 200);
    assert!(started.elapsed() >= Duration::from_millis(3500));

    // An SSE stream quiet for 4 s still delivers what comes next.
    let mut events = c
        .get(format!("{base}/v1/topics/limits.idle/events?group=sse"))
        .send()
        .await
        .expect("SSE");
    tokio::time::sleep(Duration::from_secs(4)).await;
    let r = c
        .post(format!("{base}/v1/topics/limits.idle/messages"))
        .json(&json!({"payload": "after the quiet"}))
        .send()
        .await
        .expect("publish");
    assert_eq!(r.status().as_u16(), 200);
    let mut seen = String::new();
    while !seen.contains("after the quiet") {
        let chunk = tokio::time::timeout(Duration::from_secs(20), events.chunk())
            .await
            .expect("an event in time")
            .expect("stream open")
            .expect("a chunk, not the end: the quiet stream was cut");
        seen.push_str(&String::from_utf8_lossy(&chunk));
    }
}

/// At the connection cap a new connection waits (in the listen backlog)
/// until a slot frees — here when the silent connections holding every
/// slot reach the header-read timeout — and is then served.
#[tokio::test]
async fn at_the_connection_cap_a_new_connection_waits_for_a_free_slot() {
    let _one_at_a_time = HEAVY.lock().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let server = start_with_config(
        dir.path(),
        "max_connections = 20\nheader_read_timeout_ms = 2500\n",
    );
    let mut hogs = Vec::new();
    for _ in 0..20 {
        hogs.push(
            tokio::net::TcpStream::connect(server.addr.clone())
                .await
                .expect("connect"),
        );
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = Instant::now();
    let r = http()
        .get(format!("{}/healthz", server.url()))
        .send()
        .await
        .expect("served once a slot is free");
    assert_eq!(r.status().as_u16(), 200);
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(1500),
        "served past the cap after {waited:?}"
    );
    drop(hogs);
}

/// A TLS client that never finishes its handshake is dropped after the
/// TLS handshake timeout.
#[tokio::test]
async fn a_stalled_tls_handshake_is_closed_after_the_handshake_timeout() {
    let _one_at_a_time = HEAVY.lock().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()])
        .expect("self-signed certificate");
    let cert_path = dir.path().join("cert.pem");
    let key_path = dir.path().join("key.pem");
    std::fs::write(&cert_path, cert.cert.pem()).expect("write cert");
    std::fs::write(&key_path, cert.key_pair.serialize_pem()).expect("write key");
    let server = start_with_config(
        dir.path(),
        &format!(
            "tls_cert = {cert_path:?}\ntls_key = {key_path:?}\ntls_handshake_timeout_ms = 1500\n"
        ),
    );
    let mut s = tokio::net::TcpStream::connect(server.addr.clone())
        .await
        .expect("connect");
    let (t, _) = closed_within(&mut s, Duration::from_secs(30))
        .await
        .expect("a stalled TLS handshake stays open");
    assert!(t >= Duration::from_millis(1000), "closed too early: {t:?}");
}

// ---------- load ----------

/// Raises this test process's soft open-files limit to its hard limit (the
/// load below holds over 3,000 sockets).
#[allow(unsafe_code)] // audited: libc calls on a plain struct, see SAFETY
fn raise_nofile() -> u64 {
    // SAFETY: getrlimit/setrlimit only read and write the plain struct given.
    let mut lim: libc::rlimit = unsafe { std::mem::zeroed() };
    assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) }, 0);
    lim.rlim_cur = lim.rlim_max;
    let _ = unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) };
    assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) }, 0);
    lim.rlim_cur
}

/// Resident memory of `pid` in bytes, from `/proc/<pid>/status`.
fn rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .expect("VmRSS")
        * 1024
}

/// `/healthz` answer times, probed every 50 ms from a thread of its own
/// (blocking socket, own connection) until `stop` is set.
fn probe_healthz(
    addr: String,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<Vec<Duration>> {
    std::thread::spawn(move || {
        use std::io::{Read, Write};
        let mut times = Vec::new();
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            let t = Instant::now();
            let mut s = std::net::TcpStream::connect(&addr).expect("probe connect");
            s.set_read_timeout(Some(Duration::from_secs(20)))
                .expect("timeout");
            s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                .expect("probe write");
            let mut got = Vec::new();
            s.read_to_end(&mut got).expect("probe read");
            assert!(
                got.starts_with(b"HTTP/1.1 200"),
                "{}",
                String::from_utf8_lossy(&got)
            );
            times.push(t.elapsed());
            std::thread::sleep(Duration::from_millis(50));
        }
        times
    })
}

/// The load: 2,000 idle connections, 1,000 slowloris connections
/// (a header byte every half second) and 200 long polls on one group at
/// once. `/healthz` keeps answering within 100 ms, every long poll returns
/// within its wait, the idle and slowloris connections are closed by the
/// header-read timeout, and resident memory stays bounded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthz_stays_fast_under_idle_slowloris_and_long_poll_load() {
    let _one_at_a_time = HEAVY.lock().await;
    use tokio::io::AsyncWriteExt;
    let nofile = raise_nofile();
    assert!(
        nofile >= 4096,
        "the load needs 4096 open files, the limit is {nofile}"
    );
    let dir = tempfile::tempdir().expect("temp dir");
    let server = start_with_config(dir.path(), "header_read_timeout_ms = 4000\n");
    let pid = server.pid();
    let base = server.url();
    let rss_before = rss(pid);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let probe = probe_healthz(server.addr.clone(), stop.clone());
    let mut peak_rss = rss_before;

    let started = Instant::now();
    let mut idle = Vec::new();
    for _ in 0..2000 {
        idle.push(
            tokio::net::TcpStream::connect(server.addr.clone())
                .await
                .expect("idle connect"),
        );
    }
    let mut slow = Vec::new();
    for _ in 0..1000 {
        let mut s = tokio::net::TcpStream::connect(server.addr.clone())
            .await
            .expect("slowloris connect");
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ")
            .await
            .expect("slowloris head");
        slow.push(tokio::spawn(async move {
            // A byte every 500 ms until the server hangs up (at most 30 s).
            for _ in 0..60 {
                tokio::time::sleep(Duration::from_millis(500)).await;
                if s.write_all(b"a").await.is_err() {
                    return true;
                }
            }
            false
        }));
    }
    peak_rss = peak_rss.max(rss(pid));
    let c = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .pool_max_idle_per_host(0)
        .build()
        .expect("client");
    let polls: Vec<_> = (0..200)
        .map(|_| {
            let c = c.clone();
            let url = format!("{base}/v1/topics/load.lp/consume?group=g&wait_ms=2000");
            tokio::spawn(async move {
                let t = Instant::now();
                let r = c.post(url).send().await.expect("long poll");
                (r.status().as_u16(), t.elapsed())
            })
        })
        .collect();
    for p in polls {
        let (status, took) = p.await.expect("poll task");
        assert_eq!(status, 200);
        assert!(
            took < Duration::from_secs(12),
            "a 2 s long poll took {took:?}"
        );
    }
    peak_rss = peak_rss.max(rss(pid));

    // The idle connections are closed by the server (reads see EOF)...
    let closed = futures_util::future::join_all(
        idle.iter_mut()
            .map(|s| async move { closed_within(s, Duration::from_secs(30)).await.is_some() }),
    )
    .await;
    assert!(closed.iter().all(|c| *c), "idle connections left open");
    // ...and so are the slowloris ones (their writes fail).
    for s in slow {
        assert!(
            s.await.expect("slowloris task"),
            "a slowloris connection was never closed"
        );
    }
    peak_rss = peak_rss.max(rss(pid));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let times = probe.join().expect("probe thread");
    let worst = times.iter().max().copied().unwrap_or_default();
    let over: Vec<_> = times
        .iter()
        .filter(|t| **t > Duration::from_millis(100))
        .collect();
    eprintln!(
        "load: {} probes over {:?}, slowest {worst:?}, {} over 100 ms; RSS {} -> peak {} MiB",
        times.len(),
        started.elapsed(),
        over.len(),
        rss_before >> 20,
        peak_rss >> 20
    );
    assert!(times.len() >= 20, "too few probes: {}", times.len());
    // Within 100 ms throughout; a shared, loaded test machine may
    // deschedule a probe now and then, so 2% may be late, none by a second
    // (a dropped SYN, a frozen worker).
    assert!(
        over.len() * 50 <= times.len(),
        "/healthz over 100 ms: {over:?}"
    );
    assert!(worst < Duration::from_secs(1), "/healthz took {worst:?}");
    assert!(
        peak_rss < rss_before + (256 << 20),
        "RSS grew from {} to {} MiB",
        rss_before >> 20,
        peak_rss >> 20
    );
}
