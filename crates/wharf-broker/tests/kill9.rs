//! The real crash test: a child process (this same binary, re-executed)
//! publishes with `Durability::Always` and consumes in a queue-mode and a
//! stream-mode group, printing every acknowledged publish and every ack; the
//! parent `kill -9`s it at a random moment, reopens the broker and drains
//! both groups. Checked after every cycle:
//! - no acknowledged publish is lost: each is either acked by a group before
//!   the crash or delivered to it after the restart;
//! - a message acked before the crash is delivered again only if its ack was
//!   younger than the commit interval (plus scheduling slack) at the kill —
//!   the documented at-least-once window.
//!
//! Runs without the libtest harness so the child can be the same
//! executable. Cycles: 8 by default, `WHARF_BROKER_CRASH_CYCLES=n` for more.

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rand::Rng;
use wharf_broker::{Broker, TopicConfig};
use wharf_core::{
    Backend, GroupMode, Message, Publisher, StartPosition, SubscribeOptions, Subscriber,
};

const CHILD_DIR: &str = "WHARF_BROKER_KILL9_DIR";
const CHILD_CYCLE: &str = "WHARF_BROKER_KILL9_CYCLE";
const TOPIC: &str = "crash.orders";
/// The broker's commit interval in this test, and the slack allowed on top
/// of it for the commit itself and scheduling on a loaded 2-core machine.
const COMMIT: Duration = Duration::from_millis(100);
const SLACK: Duration = Duration::from_millis(500);

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn opts(group: &str, mode: GroupMode) -> SubscribeOptions {
    SubscribeOptions::new(TOPIC)
        .group(group)
        .mode(mode)
        .start(StartPosition::Earliest)
        .max_in_flight(64)
}

fn emit(line: String) {
    let out = std::io::stdout();
    let mut lock = out.lock();
    lock.write_all(line.as_bytes()).expect("stdout");
    lock.flush().expect("flush");
}

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

async fn child(dir: String, cycle: u64) {
    let b = open(Path::new(&dir)).await;
    b.create_topic(TOPIC, TopicConfig::default().partitions(3))
        .await
        .expect("create topic");
    for (group, mode) in [("q", GroupMode::Queue), ("s", GroupMode::Stream)] {
        let mut sub = b.subscribe(opts(group, mode)).await.expect("subscribe");
        tokio::spawn(async move {
            let mut n = 0u64;
            while let Some(d) = sub.next().await {
                let d = d.expect("delivery");
                let payload = String::from_utf8_lossy(d.message().payload()).into_owned();
                n += 1;
                if n.is_multiple_of(10) {
                    d.nack().await.expect("nack");
                    continue;
                }
                d.ack().await.expect("ack");
                emit(format!("A {group} {payload} {}\n", now_ms()));
            }
        });
    }
    let mut tasks = Vec::new();
    for p in 0..4u64 {
        let b = b.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0u64.. {
                let payload = format!("c{cycle}-p{p}-{i}");
                let m = Message::builder()
                    .key(format!("k{}", i % 7))
                    .payload(payload.clone())
                    .build();
                b.publish(TOPIC, m).await.expect("publish");
                emit(format!("P {payload}\n"));
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
}

#[derive(Default)]
struct Seen {
    published: HashSet<String>,
    acked: HashMap<&'static str, HashMap<String, u64>>,
}

fn run_cycle(dir: &Path, cycle: u64) -> (Seen, u64) {
    let exe = std::env::current_exe().expect("current exe");
    let mut child = Command::new(exe)
        .env(CHILD_DIR, dir)
        .env(CHILD_CYCLE, cycle.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn child");
    let stdout = child.stdout.take().expect("child stdout");
    let seen = Arc::new(Mutex::new(Seen::default()));
    let reader = {
        let seen = seen.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let parts: Vec<&str> = line.split_whitespace().collect();
                let mut s = seen.lock().unwrap();
                match parts.as_slice() {
                    ["P", p] => {
                        s.published.insert((*p).to_owned());
                    }
                    ["A", g, p, ms] => {
                        let g: &'static str = if *g == "q" { "q" } else { "s" };
                        s.acked
                            .entry(g)
                            .or_default()
                            .insert((*p).to_owned(), ms.parse().unwrap_or(0));
                    }
                    _ => {}
                }
            }
        })
    };
    let wait = rand::thread_rng().gen_range(400..1400);
    std::thread::sleep(Duration::from_millis(wait));
    let killed_at = now_ms();
    child.kill().expect("kill -9");
    child.wait().expect("reap child");
    reader.join().expect("reader thread");
    let seen = Arc::try_unwrap(seen)
        .ok()
        .expect("reader done")
        .into_inner()
        .unwrap();
    (seen, killed_at)
}

/// Drains a group after the crash, returning the payloads delivered.
async fn drain(b: &Broker, group: &str, mode: GroupMode) -> Vec<String> {
    let mut sub = b.subscribe(opts(group, mode)).await.expect("subscribe");
    let mut got = Vec::new();
    while let Ok(Some(d)) = tokio::time::timeout(Duration::from_millis(700), sub.next()).await {
        let d = d.expect("delivery after restart");
        got.push(String::from_utf8_lossy(d.message().payload()).into_owned());
        d.ack().await.expect("ack");
    }
    got
}

fn main() {
    if let (Ok(dir), Ok(cycle)) = (std::env::var(CHILD_DIR), std::env::var(CHILD_CYCLE)) {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(child(dir, cycle.parse().expect("cycle")));
        return;
    }
    let cycles: u64 = std::env::var("WHARF_BROKER_CRASH_CYCLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(8);
    let dir = tempfile::tempdir().expect("temp dir");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let (mut published, mut redelivered_after_ack, mut oldest) = (0usize, 0usize, 0u64);
    for cycle in 0..cycles {
        let (seen, killed_at) = run_cycle(dir.path(), cycle);
        assert!(
            !seen.published.is_empty(),
            "cycle {cycle}: child published nothing"
        );
        published += seen.published.len();
        rt.block_on(async {
            let b = open(dir.path()).await;
            for (group, mode) in [("q", GroupMode::Queue), ("s", GroupMode::Stream)] {
                let after: HashSet<String> = drain(&b, group, mode).await.into_iter().collect();
                let acked = seen.acked.get(group).cloned().unwrap_or_default();
                for p in &seen.published {
                    assert!(
                        acked.contains_key(p) || after.contains(p),
                        "cycle {cycle} group {group}: acknowledged publish {p} lost"
                    );
                }
                for p in after.iter().filter(|p| p.starts_with(&format!("c{cycle}-"))) {
                    if let Some(&ack_ms) = acked.get(p) {
                        redelivered_after_ack += 1;
                        oldest = oldest.max(killed_at.saturating_sub(ack_ms));
                        let window = (COMMIT + SLACK).as_millis() as u64;
                        assert!(
                            ack_ms + window >= killed_at,
                            "cycle {cycle} group {group}: {p} acked {} ms before the kill was delivered again",
                            killed_at - ack_ms
                        );
                    }
                }
            }
            b.close().await.expect("close");
        });
    }
    println!(
        "kill9: {cycles} cycles, {published} acknowledged publishes, none lost; \
         {redelivered_after_ack} acked messages redelivered, the oldest ack {oldest} ms before the kill"
    );
    println!("1 passed, 0 failed");
}
