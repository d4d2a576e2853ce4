//! The command bus on the embedded broker: typed outputs and rejections
//! reach the sender; concurrent sends get their own answers; one handler
//! instance in the group handles each command however many run; a failed
//! (not rejected) command is not answered but retried by the router until
//! it is; a command nobody handles times out; a second handler for a
//! command type is refused.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use wharf_broker::Broker;
use wharf_core::Backend;
use wharf_router::command::{
    Command, CommandBus, CommandFailed, CommandHandlers, DuplicateHandler, SendError,
};
use wharf_router::{HandlerError, Router};

#[derive(Serialize, Deserialize, Clone, Debug)]
struct Withdraw {
    account: String,
    cents: u64,
}

#[derive(Serialize, Deserialize, Debug, PartialEq)]
enum Refused {
    InsufficientFunds { balance: u64 },
}

impl Command for Withdraw {
    const NAME: &'static str = "bank.withdraw";
    type Output = u64;
    type Rejection = Refused;
}

#[derive(Serialize, Deserialize, Clone, Debug)]
struct Ping(u32);

impl Command for Ping {
    const NAME: &'static str = "ops.ping";
    type Output = String;
    type Rejection = ();
}

async fn broker() -> (tempfile::TempDir, Arc<dyn Backend>) {
    let dir = tempfile::tempdir().expect("dir");
    let b = Broker::open(dir.path()).await.expect("broker");
    (dir, Arc::new(b))
}

/// A bank of one account per name, starting at 100 cents.
fn bank(handled: Arc<AtomicUsize>) -> CommandHandlers {
    let balances: Arc<Mutex<HashMap<String, u64>>> = Arc::default();
    CommandHandlers::new()
        .handle(move |w: Withdraw| {
            let balances = balances.clone();
            let handled = handled.clone();
            async move {
                handled.fetch_add(1, Ordering::SeqCst);
                let mut b = balances.lock().unwrap();
                let balance = b.entry(w.account).or_insert(100);
                if w.cents > *balance {
                    return Err(CommandFailed::Rejected(Refused::InsufficientFunds {
                        balance: *balance,
                    }));
                }
                *balance -= w.cents;
                Ok(*balance)
            }
        })
        .expect("first handler")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outputs_and_typed_rejections_reach_the_sender_and_concurrent_sends_get_their_own() {
    let (_dir, backend) = broker().await;
    let handled = Arc::new(AtomicUsize::new(0));
    let stop = CancellationToken::new();
    let running = tokio::spawn(
        bank(handled.clone())
            .register(Router::new(backend.clone()))
            .run(stop.clone()),
    );
    let bus = Arc::new(
        CommandBus::connect(backend.clone())
            .await
            .expect("bus")
            .timeout(Duration::from_secs(20)),
    );

    let w = |account: &str, cents| Withdraw {
        account: account.into(),
        cents,
    };
    assert_eq!(bus.send(&w("alice", 30)).await.expect("accepted"), 70);
    let refused = bus.send(&w("alice", 71)).await;
    assert!(
        matches!(
            refused,
            Err(SendError::Rejected(Refused::InsufficientFunds {
                balance: 70
            }))
        ),
        "{refused:?}"
    );

    // 40 accounts withdrawn from concurrently: each answer is its own.
    let sends: Vec<_> = (0..40u64)
        .map(|i| {
            let bus = bus.clone();
            tokio::spawn(async move {
                let got = bus
                    .send(&Withdraw {
                        account: format!("acct-{i}"),
                        cents: i,
                    })
                    .await;
                (i, got)
            })
        })
        .collect();
    for s in sends {
        let (i, got) = s.await.expect("task");
        assert_eq!(got.expect("accepted"), 100 - i, "account {i}");
    }
    assert_eq!(handled.load(Ordering::SeqCst), 42);
    stop.cancel();
    running.await.expect("task").expect("router");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_command_is_handled_by_one_instance_of_the_group() {
    let (_dir, backend) = broker().await;
    let stop = CancellationToken::new();
    let counts: Vec<Arc<AtomicUsize>> = (0..2).map(|_| Arc::new(AtomicUsize::new(0))).collect();
    let mut routers = Vec::new();
    for c in &counts {
        let c = c.clone();
        let handlers = CommandHandlers::new()
            .group("pinger")
            .handle(move |p: Ping| {
                let c = c.clone();
                async move {
                    c.fetch_add(1, Ordering::SeqCst);
                    Ok::<_, CommandFailed<()>>(format!("pong {}", p.0))
                }
            })
            .expect("handler");
        routers.push(tokio::spawn(
            handlers
                .register(Router::new(backend.clone()))
                .run(stop.clone()),
        ));
    }
    let bus = CommandBus::connect(backend.clone())
        .await
        .expect("bus")
        .timeout(Duration::from_secs(20));
    for i in 0..30 {
        assert_eq!(
            bus.send(&Ping(i)).await.expect("answered"),
            format!("pong {i}")
        );
    }
    let total: usize = counts.iter().map(|c| c.load(Ordering::SeqCst)).sum();
    assert_eq!(
        total, 30,
        "each command handled exactly once across the group"
    );
    stop.cancel();
    for r in routers {
        r.await.expect("task").expect("router");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_command_gets_no_answer_and_is_handled_again_until_it_succeeds() {
    let (_dir, backend) = broker().await;
    let attempts = Arc::new(AtomicUsize::new(0));
    let a = attempts.clone();
    let handlers = CommandHandlers::new()
        .handle(move |p: Ping| {
            let a = a.clone();
            async move {
                if a.fetch_add(1, Ordering::SeqCst) < 2 {
                    return Err(CommandFailed::Failed(HandlerError::retryable(
                        "the ledger is down",
                    )));
                }
                Ok(format!("pong {}", p.0))
            }
        })
        .expect("handler");
    let stop = CancellationToken::new();
    let running = tokio::spawn(
        handlers
            .register(Router::new(backend.clone()))
            .run(stop.clone()),
    );
    let bus = CommandBus::connect(backend.clone())
        .await
        .expect("bus")
        .timeout(Duration::from_secs(20));
    assert_eq!(
        bus.send(&Ping(7)).await.expect("answered at last"),
        "pong 7"
    );
    assert_eq!(attempts.load(Ordering::SeqCst), 3);
    stop.cancel();
    running.await.expect("task").expect("router");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_nobody_handles_times_out() {
    let (_dir, backend) = broker().await;
    let bus = CommandBus::connect(backend.clone())
        .await
        .expect("bus")
        .timeout(Duration::from_millis(300));
    let got = bus.send(&Ping(1)).await;
    assert!(
        matches!(got, Err(SendError::Timeout(d)) if d == Duration::from_millis(300)),
        "{got:?}"
    );
}

#[test]
fn a_second_handler_for_a_command_type_is_refused() {
    let first = CommandHandlers::new()
        .handle(|p: Ping| async move { Ok::<_, CommandFailed<()>>(p.0.to_string()) })
        .expect("first");
    let second = first.handle(|_: Ping| async move { Ok::<_, CommandFailed<()>>(String::new()) });
    let err: DuplicateHandler = second.expect_err("refused");
    assert_eq!(err.name, "ops.ping");
}
