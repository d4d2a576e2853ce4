//! The poison pill, for real: a consumer process (this binary, re-executed)
//! uses the embedded broker and `abort()`s whenever it receives one
//! particular message. Each process death must count as a failed delivery
//! attempt, so after `max_deliveries` deaths the next process finds the
//! message in the dead-letter topic instead of dying again — and the
//! messages that sat unseen in the dying consumer's buffer are not charged
//! for its deaths.
//!
//! Two consumers: one that works on the message for a few commit intervals
//! before it dies (counted by the group's periodic commit), and one that
//! dies the instant it gets it (counted because a partition's first
//! delivery after a start is committed before it is handed out). Runs
//! without the libtest harness so the child can be the same executable.

use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use wharf_broker::Broker;
use wharf_core::{
    header, Backend, Message, Publisher, StartPosition, SubscribeOptions, Subscriber,
};

const CHILD_DIR: &str = "WHARF_BROKER_POISON_DIR";
const CHILD_DELAY: &str = "WHARF_BROKER_POISON_DELAY_MS";
const TOPIC: &str = "poison.orders";
const MAX_DELIVERIES: u32 = 3;
const COMMIT: Duration = Duration::from_millis(50);

async fn open(dir: &Path) -> Broker {
    let mut last = None;
    for _ in 0..100 {
        match Broker::builder().commit_interval(COMMIT).open(dir).await {
            Ok(b) => return b,
            Err(e) => last = Some(e),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("open broker: {last:?}");
}

/// The consumer: acks everything but `poison`, on which it works for
/// `delay` and then aborts. Exits normally once nothing has come for a second.
async fn child(dir: String, delay: Duration) {
    let b = open(Path::new(&dir)).await;
    let mut sub = b
        .subscribe(
            SubscribeOptions::new(TOPIC)
                .group("billing")
                .start(StartPosition::Earliest)
                .max_deliveries(MAX_DELIVERIES),
        )
        .await
        .expect("subscribe");
    while let Ok(Some(d)) = tokio::time::timeout(Duration::from_secs(1), sub.next()).await {
        let d = d.expect("delivery");
        let payload = String::from_utf8_lossy(d.message().payload()).into_owned();
        println!("got {payload} attempt {}", d.info().attempt);
        if payload == "poison" {
            tokio::time::sleep(delay).await;
            std::process::abort();
        }
        d.ack().await.expect("ack");
    }
    drop(sub);
    b.close().await.expect("close");
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    if let Ok(dir) = std::env::var(CHILD_DIR) {
        let ms: u64 = std::env::var(CHILD_DELAY)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        rt.block_on(child(dir, Duration::from_millis(ms)));
        return;
    }
    // Dies a few commit intervals after receiving it, behind a message
    // that is handled fine.
    let slow = poison_pill(&rt, COMMIT * 6, &["before", "poison", "after-1", "after-2"]);
    // Dies at once; the poison is the first message of its partition.
    let instant = poison_pill(&rt, Duration::ZERO, &["poison", "after-1", "after-2"]);
    println!("poison: the message reached the DLQ after {slow} and {instant} consumer deaths");
    println!("2 passed, 0 failed");
}

/// Publishes `payloads`, runs consumers that abort `delay` after receiving
/// `poison` until one exits normally, and checks the outcome; returns the
/// number of consumer deaths.
fn poison_pill(rt: &tokio::runtime::Runtime, delay: Duration, payloads: &[&'static str]) -> u32 {
    let dir = tempfile::tempdir().expect("temp dir");
    rt.block_on(async {
        let b = open(dir.path()).await;
        let msgs = payloads.iter().map(|&p| Message::new(p)).collect();
        b.publish_batch(TOPIC, msgs).await.expect("publish");
        b.close().await.expect("close");
    });
    let exe = std::env::current_exe().expect("current exe");
    let mut deaths = 0;
    let mut seen = Vec::new();
    loop {
        let out = Command::new(&exe)
            .env(CHILD_DIR, dir.path())
            .env(CHILD_DELAY, delay.as_millis().to_string())
            .output()
            .expect("run consumer");
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        seen.extend(stdout.lines().map(str::to_owned));
        if out.status.success() {
            break;
        }
        assert_eq!(
            out.status.signal(),
            Some(6),
            "the consumer should die by abort: {:?}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        deaths += 1;
        assert!(
            deaths <= MAX_DELIVERIES + 2,
            "the poison message keeps killing consumers: {seen:?}"
        );
    }
    assert_eq!(
        deaths, MAX_DELIVERIES,
        "one death per delivery attempt, then the DLQ: {seen:?}"
    );
    let poison: Vec<&String> = seen
        .iter()
        .filter(|l| l.starts_with("got poison"))
        .collect();
    let want: Vec<String> = (1..=MAX_DELIVERIES)
        .map(|a| format!("got poison attempt {a}"))
        .collect();
    assert_eq!(
        poison,
        want.iter().collect::<Vec<_>>(),
        "attempts count across deaths"
    );
    for &m in payloads.iter().filter(|&&p| p != "poison") {
        let got: Vec<&String> = seen
            .iter()
            .filter(|l| l.starts_with(&format!("got {m} ")))
            .collect();
        assert_eq!(
            got,
            vec![&format!("got {m} attempt 1")],
            "{m}: delivered once, on its first attempt (never charged for the deaths): {seen:?}"
        );
    }
    rt.block_on(async {
        let b = open(dir.path()).await;
        let mut dlq = b
            .subscribe(
                SubscribeOptions::new(format!("dlq.{TOPIC}"))
                    .group("ops")
                    .start(StartPosition::Earliest),
            )
            .await
            .expect("subscribe dlq");
        let d = tokio::time::timeout(Duration::from_secs(10), dlq.next())
            .await
            .expect("a dead letter")
            .expect("open")
            .expect("delivery");
        assert_eq!(&d.message().payload()[..], b"poison");
        assert_eq!(
            d.message().headers().get(header::ATTEMPTS),
            Some(MAX_DELIVERIES.to_string().as_str())
        );
        d.ack().await.expect("ack");
        assert!(
            tokio::time::timeout(Duration::from_millis(500), dlq.next())
                .await
                .is_err(),
            "only the poison message is dead-lettered"
        );
        drop(dlq);
        b.close().await.expect("close");
    });
    deaths
}
