//! A bank, event-sourced, top to bottom, on one embedded broker and one
//! embedded event store in a directory:
//!
//! - an **aggregate** (`Account`: open, deposit, withdraw — never below
//!   zero) loaded by a `Repository` with a snapshot every 20 events;
//! - **commands** sent through the `CommandBus` to handlers behind the
//!   router, answered with the new balance or a typed refusal;
//! - a **projection** of the balances into redb, each batch and its
//!   checkpoint in one redb write transaction (so after a crash the read
//!   model holds each event's effect exactly once);
//! - the events published to the topic `bank.events` (`PublishToTopic`),
//!   where a router handler in the group `fraud-watch` flags large
//!   withdrawals.
//!
//! ```text
//! cargo run -p wharf --features router,eventstore --example bank
//! ```

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use redb::{ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use wharf::broker::Broker;
use wharf::eventstore::aggregate::{
    json, Aggregate, CodecError, DomainEvent, JsonSnapshots, Repository, RepositoryError,
};
use wharf::eventstore::projection::{Projection, ProjectionError, ProjectionRunner};
use wharf::eventstore::topic::{recorded_event, FileCheckpoint, PublishToTopic};
use wharf::eventstore::{EmbeddedStore, EventStore, GlobalFilter, Position, RecordedEvent};
use wharf::router::command::{Command, CommandBus, CommandFailed, CommandHandlers, SendError};
use wharf::router::{handler_fn, CancellationToken, HandlerError, Outcome, Request, Router};
use wharf::{Backend, StartPosition, SubscribeOptions};

// ---------- the domain: an account aggregate ----------

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
enum AccountEvent {
    Opened { owner: String },
    Deposited { cents: u64 },
    Withdrawn { cents: u64 },
}

impl DomainEvent for AccountEvent {
    fn event_type(&self) -> &'static str {
        match self {
            AccountEvent::Opened { .. } => "AccountOpened",
            AccountEvent::Deposited { .. } => "MoneyDeposited",
            AccountEvent::Withdrawn { .. } => "MoneyWithdrawn",
        }
    }
    fn encode(&self) -> Result<bytes::Bytes, CodecError> {
        json::encode(self)
    }
    fn decode(_type: &str, _version: u32, payload: &[u8]) -> Result<Self, CodecError> {
        json::decode(payload)
    }
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Account {
    open: bool,
    balance: u64,
}

#[derive(Debug, Clone)]
enum AccountCommand {
    Open(String),
    Deposit(u64),
    Withdraw(u64),
}

/// Why the bank refuses a command: typed, and sent back to the caller.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
enum Refusal {
    AlreadyOpen,
    NoSuchAccount,
    InsufficientFunds { balance: u64 },
    Unavailable(String),
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{self:?}")
    }
}
impl std::error::Error for Refusal {}

impl Aggregate for Account {
    const NAME: &'static str = "account";
    type Command = AccountCommand;
    type Event = AccountEvent;
    type Error = Refusal;

    fn handle(&self, command: AccountCommand) -> Result<Vec<AccountEvent>, Refusal> {
        match command {
            AccountCommand::Open(_) if self.open => Err(Refusal::AlreadyOpen),
            AccountCommand::Open(owner) => Ok(vec![AccountEvent::Opened { owner }]),
            _ if !self.open => Err(Refusal::NoSuchAccount),
            AccountCommand::Deposit(cents) => Ok(vec![AccountEvent::Deposited { cents }]),
            AccountCommand::Withdraw(cents) if cents > self.balance => {
                Err(Refusal::InsufficientFunds {
                    balance: self.balance,
                })
            }
            AccountCommand::Withdraw(cents) => Ok(vec![AccountEvent::Withdrawn { cents }]),
        }
    }

    fn apply(&mut self, event: &AccountEvent) {
        match event {
            AccountEvent::Opened { .. } => self.open = true,
            AccountEvent::Deposited { cents } => self.balance += cents,
            AccountEvent::Withdrawn { cents } => self.balance -= cents,
        }
    }
}

// ---------- the commands on the bus ----------

#[derive(Debug, Serialize, Deserialize)]
struct BankCommand {
    account: String,
    #[serde(flatten)]
    op: Op,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "op")]
enum Op {
    Open { owner: String },
    Deposit { cents: u64 },
    Withdraw { cents: u64 },
}

impl Command for BankCommand {
    const NAME: &'static str = "bank.account";
    /// The balance after the command.
    type Output = u64;
    type Rejection = Refusal;
}

// ---------- the read model: balances in redb, checkpoint in the same transaction ----------

const BALANCES: TableDefinition<&str, u64> = TableDefinition::new("balances");
const CHECKPOINTS: TableDefinition<&str, u64> = TableDefinition::new("checkpoints");

struct Balances {
    db: redb::Database,
    decode: Repository<Account>,
}

impl Balances {
    fn balance(&self, account: &str) -> Result<Option<u64>, Box<redb::Error>> {
        let tx = self.db.begin_read().map_err(|e| Box::new(e.into()))?;
        let table = match tx.open_table(BALANCES) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
            Err(e) => return Err(Box::new(e.into())),
        };
        let value = table.get(account).map_err(|e| Box::new(e.into()))?;
        Ok(value.map(|v| v.value()))
    }
}

#[async_trait::async_trait]
impl Projection for Balances {
    fn filter(&self) -> GlobalFilter {
        GlobalFilter::all().stream_prefix("account-")
    }

    async fn checkpoint(&self) -> Result<Position, ProjectionError> {
        let tx = self.db.begin_read()?;
        match tx.open_table(CHECKPOINTS) {
            Ok(t) => Ok(Position(t.get("balances")?.map_or(0, |v| v.value()))),
            Err(redb::TableError::TableDoesNotExist(_)) => Ok(Position::START),
            Err(e) => Err(e.into()),
        }
    }

    async fn apply(&self, events: &[RecordedEvent], next: Position) -> Result<(), ProjectionError> {
        let tx = self.db.begin_write()?;
        {
            let mut balances = tx.open_table(BALANCES)?;
            for e in events {
                let account = e.stream.as_str().trim_start_matches("account-");
                let now = balances.get(account)?.map_or(0, |v| v.value());
                let then = match self.decode.decode_event(e)? {
                    AccountEvent::Opened { .. } => now,
                    AccountEvent::Deposited { cents } => now + cents,
                    AccountEvent::Withdrawn { cents } => now - cents,
                };
                balances.insert(account, then)?;
            }
            tx.open_table(CHECKPOINTS)?
                .insert("balances", next.value())?;
        }
        tx.commit()?; // rows and checkpoint together
        Ok(())
    }

    async fn reset(&self) -> Result<(), ProjectionError> {
        let tx = self.db.begin_write()?;
        tx.delete_table(BALANCES)?;
        tx.delete_table(CHECKPOINTS)?;
        tx.commit()?;
        Ok(())
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    println!("data in {}", dir.path().display());
    let broker: Arc<dyn Backend> = Arc::new(Broker::open(dir.path().join("broker")).await?);
    let store: Arc<dyn EventStore> =
        Arc::new(EmbeddedStore::open(dir.path().join("events")).await?);
    let accounts =
        Repository::<Account>::new(store.clone()).snapshot_every(20, JsonSnapshots::new(1));

    // 1. The command handler, behind the router.
    let repo = accounts.clone();
    let handlers = CommandHandlers::new()
        .group("bank")
        .handle(move |c: BankCommand| {
            let repo = repo.clone();
            async move {
                let command = match c.op {
                    Op::Open { owner } => AccountCommand::Open(owner),
                    Op::Deposit { cents } => AccountCommand::Deposit(cents),
                    Op::Withdraw { cents } => AccountCommand::Withdraw(cents),
                };
                match repo.execute(&c.account, command).await {
                    Ok(done) => Ok(done.state.balance),
                    Err(RepositoryError::Rejected(r)) => Err(CommandFailed::Rejected(r)),
                    // The store is down or kept changing: let the router retry.
                    Err(e) => Err(CommandFailed::Failed(HandlerError::retryable(e))),
                }
            }
        })?;

    // 2. The events on a topic, and a handler watching them.
    let flagged = Arc::new(AtomicU64::new(0));
    let seen = flagged.clone();
    let fraud_watch = handler_fn(move |req: Request| {
        let seen = seen.clone();
        async move {
            let event = recorded_event(req.message()).map_err(HandlerError::permanent)?;
            if event.event_type == "MoneyWithdrawn" {
                let AccountEvent::Withdrawn { cents } =
                    json::decode(&event.payload).map_err(HandlerError::permanent)?
                else {
                    return Ok(Outcome::reject("not a withdrawal"));
                };
                if cents >= 50_000 {
                    println!("fraud-watch: {} withdrew {cents} cents", event.stream);
                    seen.fetch_add(1, Ordering::SeqCst);
                }
            }
            Ok::<_, HandlerError>(Outcome::Ack)
        }
    });
    let stop = CancellationToken::new();
    let router = handlers.register(Router::new(broker.clone())).route(
        SubscribeOptions::new("bank.events")
            .group("fraud-watch")
            .start(StartPosition::Earliest),
        fraud_watch,
    );
    let running = tokio::spawn(router.run(stop.clone()));

    // 3. The projections: balances into redb, events onto the topic.
    let balances = Arc::new(Balances {
        db: redb::Database::create(dir.path().join("balances.redb"))?,
        decode: accounts.clone(),
    });
    let runner = ProjectionRunner::new(store.clone());
    let read_model = runner.start("balances", balances.clone());
    let to_topic = runner.start(
        "bank-events",
        Arc::new(PublishToTopic::new(
            broker.clone(),
            "bank.events",
            FileCheckpoint::new(dir.path().join("bank-events.ckpt")),
        )),
    );

    // 4. Clients send commands.
    let bus = CommandBus::connect(broker.clone())
        .await?
        .timeout(Duration::from_secs(30));
    let send = |account: &str, op: Op| {
        let bus = &bus;
        let account = account.to_owned();
        async move { bus.send(&BankCommand { account, op }).await }
    };
    send(
        "alice",
        Op::Open {
            owner: "Alice".into(),
        },
    )
    .await?;
    send(
        "bob",
        Op::Open {
            owner: "Bob".into(),
        },
    )
    .await?;
    send("alice", Op::Deposit { cents: 100_000 }).await?;
    send("bob", Op::Deposit { cents: 2_500 }).await?;
    for _ in 0..30 {
        send("bob", Op::Withdraw { cents: 50 }).await?;
    }
    let alice = send("alice", Op::Withdraw { cents: 60_000 }).await?;
    println!("alice's balance: {alice}");
    match send("bob", Op::Withdraw { cents: 10_000 }).await {
        Err(SendError::Rejected(Refusal::InsufficientFunds { balance })) => {
            println!("bob may not overdraw: balance {balance}");
        }
        other => return Err(format!("expected a refusal, got {other:?}").into()),
    }
    match send("carol", Op::Deposit { cents: 1 }).await {
        Err(SendError::Rejected(Refusal::NoSuchAccount)) => println!("carol has no account"),
        other => return Err(format!("expected a refusal, got {other:?}").into()),
    }

    // 5. The read model catches up; it agrees with the aggregates.
    read_model.catch_up().await?;
    to_topic.catch_up().await?;
    for who in ["alice", "bob"] {
        let model = balances.balance(who)?;
        let aggregate = accounts.load(who).await?;
        println!(
            "{who}: read model {model:?}, aggregate {} (version {:?}, snapshot {:?} + {} events)",
            aggregate.state.balance, aggregate.version, aggregate.snapshot, aggregate.replayed
        );
        assert_eq!(model, Some(aggregate.state.balance));
    }
    assert_eq!(balances.balance("alice")?, Some(40_000));
    assert_eq!(balances.balance("bob")?, Some(1_000));

    // The fraud watcher sees the topic (asynchronously).
    for _ in 0..500 {
        if flagged.load(Ordering::SeqCst) > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        flagged.load(Ordering::SeqCst),
        1,
        "alice's withdrawal was flagged"
    );

    // 6. Shut down: projections, then the router (drains in-flight work).
    read_model.stop().await;
    to_topic.stop().await;
    stop.cancel();
    let report = running.await??;
    println!("router handled {} messages", report.handled());
    store.close().await?;
    Ok(())
}

// `cargo test` runs the example too (`test = true` in Cargo.toml).
#[test]
fn runs_to_completion() {
    main().expect("the example runs to completion");
}
