//! The connection a subscription reads its streams on is Wharf's own
//! (RESP2, not the `redis` client's): it must authenticate, select the
//! database and reach a Unix socket as the URL says, and come back after
//! the server drops it. The first two run against a `redis-server` of their
//! own (a password on the shared one would break every other test); the
//! others against the shared server.

mod service;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use wharf_core::{Message, Publisher, StartPosition, SubscribeOptions, Subscriber};
use wharf_redis::{RedisBackend, RedisConfig};
use wharf_testkit::expect_delivery;

/// A `redis-server` started for one test, with no persistence; killed on
/// drop.
struct Server {
    child: Child,
    dir: std::path::PathBuf,
}

impl Server {
    /// Starts `redis-server` with `args`, or `None` (the test is skipped)
    /// when there is no such binary and services are not required.
    fn start(args: &[&str], ready: impl Fn(&Server) -> bool) -> Option<Server> {
        let dir = std::env::temp_dir().join(wharf_testkit::unique_name("wharf-redis-test"));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let child = match Command::new("redis-server")
            .args(["--save", "", "--appendonly", "no", "--dir"])
            .arg(&dir)
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
        {
            Ok(c) => c,
            Err(e) if std::env::var_os("WHARF_REQUIRE_SERVICES").is_some() => {
                panic!("redis-server: {e} (scripts/ensure-services.sh installs it)")
            }
            Err(e) => {
                eprintln!("skipped: redis-server: {e}");
                return None;
            }
        };
        let server = Server { child, dir };
        for _ in 0..100 {
            if ready(&server) {
                return Some(server);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("redis-server did not start");
    }

    fn socket(&self) -> std::path::PathBuf {
        self.dir.join("redis.sock")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A free TCP port on loopback (the kernel's pick, released for the server).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// Publishes three messages to a topic of `url`'s server, then reads them
/// back through a group (`XREADGROUP`) and a private subscription
/// (`XREAD`), both on the read connection; deletes the keys afterwards.
async fn round_trip(url: &str) {
    let backend =
        RedisBackend::connect(RedisConfig::new(url).key_prefix(wharf_testkit::unique_name("wr")))
            .await
            .expect("connect");
    let sent: Vec<Message> = (0..3).map(|i| Message::new(format!("m{i}"))).collect();
    for m in &sent {
        backend.publish("t", m.clone()).await.expect("publish");
    }
    let opts = SubscribeOptions::new("t").start(StartPosition::Earliest);
    for opts in [opts.clone().group("g"), opts] {
        let mut sub = backend.subscribe(opts).await.expect("subscribe");
        for m in &sent {
            let d = expect_delivery(&mut sub, "a delivery").await;
            assert_eq!(d.message().id(), m.id());
            assert_eq!(d.message().payload(), m.payload());
            d.ack().await.expect("ack");
        }
    }
    backend.delete_all().await.expect("delete_all");
}

/// Group `g` of topic `t`, from the earliest entry.
async fn group_g(b: &RedisBackend) -> wharf_core::Subscription {
    b.subscribe(
        SubscribeOptions::new("t")
            .group("g")
            .start(StartPosition::Earliest),
    )
    .await
    .expect("subscribe")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_authenticate_with_a_password_and_select_the_database() {
    let port = free_port().to_string();
    let Some(_server) = Server::start(&["--port", &port, "--requirepass", "s3cret"], |_| {
        std::net::TcpStream::connect(("127.0.0.1", port.parse().expect("port"))).is_ok()
    }) else {
        return;
    };
    // Database 3: a read connection that did not select it would find no
    // group there (NOGROUP) and deliver nothing.
    round_trip(&format!("redis://:s3cret@127.0.0.1:{port}/3")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_reach_a_unix_socket_as_an_acl_user() {
    let Some(server) = Server::start(
        &[
            "--port",
            "0",
            "--unixsocket",
            "redis.sock",
            "--unixsocketperm",
            "700",
            "--requirepass",
            "other",
            "--user",
            "wharf",
            "on",
            ">pw",
            "~*",
            "&*",
            "+@all",
        ],
        |s| s.socket().exists(),
    ) else {
        return;
    };
    let url = format!(
        "unix://{}?db=2&user=wharf&pass=pw",
        server.socket().display()
    );
    round_trip(&url).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_speak_resp2_when_the_url_asks_for_resp3() {
    // The backend's own connection speaks RESP3; the read connection
    // never sends HELLO, so its replies stay RESP2, which it reads.
    if service::namespace().await.is_none() {
        return;
    }
    round_trip(&format!("{}?protocol=resp3", service::url())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_connection_the_server_drops_is_replaced() {
    let Some(ns) = service::namespace().await else {
        return;
    };
    let b = &ns.backend;
    let mut admin = b.connection();
    let mut sub = group_g(b).await;
    let first = Message::new("before");
    b.publish("t", first.clone()).await.expect("publish");
    let d = expect_delivery(&mut sub, "a delivery").await;
    assert_eq!(d.message().id(), first.id());
    d.ack().await.expect("ack");

    // Kill the subscription's read connection, found by its name.
    let name = format!(" name={}:read:c-", ns.config.key_prefix_value());
    let list: String = redis::cmd("CLIENT")
        .arg("LIST")
        .query_async(&mut admin)
        .await
        .expect("CLIENT LIST");
    let ids: Vec<i64> = list
        .lines()
        .filter(|l| l.contains(&name))
        .map(|l| {
            l.split(' ')
                .find_map(|f| f.strip_prefix("id="))
                .and_then(|id| id.parse().ok())
                .expect("an id")
        })
        .collect();
    assert_eq!(ids.len(), 1, "one read connection named{name}: {list}");
    let killed: i64 = redis::cmd("CLIENT")
        .arg("KILL")
        .arg("ID")
        .arg(ids[0])
        .query_async(&mut admin)
        .await
        .expect("CLIENT KILL");
    assert_eq!(killed, 1);

    let second = Message::new("after");
    b.publish("t", second.clone()).await.expect("publish");
    let d = expect_delivery(&mut sub, "a delivery").await;
    assert_eq!(d.message().id(), second.id());
    d.ack().await.expect("ack");
}

/// An entry another client wrote, with no `id`, a binary payload, a header,
/// an unknown field and a key, reads through the group as a message with a
/// fresh id and the rest kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_entry_another_client_wrote_reads_with_what_it_has() {
    let Some(ns) = service::namespace().await else {
        return;
    };
    let b = &ns.backend;
    let key = format!("{}:s:t", ns.config.key_prefix_value());
    let mut conn = b.connection();
    let _: String = redis::cmd("XADD")
        .arg(&key)
        .arg("*")
        .arg("source")
        .arg("legacy")
        .arg("k")
        .arg(&b"\x00key"[..])
        .arg("h:trace")
        .arg("abc")
        .arg("p")
        .arg(&b"\xff\x00\r\n$5\r\n"[..])
        .query_async(&mut conn)
        .await
        .expect("XADD");
    let mut sub = group_g(b).await;
    let d = expect_delivery(&mut sub, "the foreign entry").await;
    let m = d.message();
    assert_eq!(m.payload().as_ref(), b"\xff\x00\r\n$5\r\n");
    assert_eq!(m.key().map(|k| k.as_ref()), Some(&b"\x00key"[..]));
    assert_eq!(m.headers().get("trace"), Some("abc"));
    assert_eq!(m.headers().len(), 1, "unknown fields are not headers");
    d.ack().await.expect("ack");
}
