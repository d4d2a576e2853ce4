//! Aggregates on the embedded store: the property that a state loaded from
//! a snapshot plus the later events equals the state replayed from every
//! event (with upcasters — a version chain and a type rename — in the
//! chain and events of old schema versions mixed in), snapshots every N
//! events and the discarding of a snapshot of another schema version, the
//! bounded retry on conflict, and the given/when/then harness.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use proptest::prelude::*;
use serde::{Deserialize, Serialize};
use wharf_eventstore::aggregate::{
    json, Aggregate, AggregateTest, CodecError, DomainEvent, JsonSnapshots, RawEvent, Repository,
    RepositoryError, Upcasters, SNAPSHOT_VERSION_METADATA,
};
use wharf_eventstore::{
    AllSlice, AppendRequest, AppendResult, CurrentVersion, EmbeddedStore, EventData, EventStore,
    EventSubscription, ExpectedVersion, GlobalFilter, Limits, Position, ReadStream, RecordedEvent,
    StreamId, StreamInfo, StreamMetadata, SubscribeFrom,
};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
enum AccountEvent {
    Opened { owner: String },
    Deposited { cents: u64 },
    Withdrawn { cents: u64 },
    Renamed { owner: String },
}

impl DomainEvent for AccountEvent {
    fn event_type(&self) -> &'static str {
        match self {
            AccountEvent::Opened { .. } => "Opened",
            AccountEvent::Deposited { .. } => "Deposited",
            AccountEvent::Withdrawn { .. } => "Withdrawn",
            AccountEvent::Renamed { .. } => "Renamed",
        }
    }

    fn schema_version(&self) -> u32 {
        match self {
            AccountEvent::Deposited { .. } => 3,
            _ => 1,
        }
    }

    fn tags(&self) -> Vec<String> {
        vec!["bank".into()]
    }

    fn encode(&self) -> Result<bytes::Bytes, CodecError> {
        json::encode(self)
    }

    fn decode(event_type: &str, schema_version: u32, payload: &[u8]) -> Result<Self, CodecError> {
        let current = match event_type {
            "Deposited" => 3,
            "Opened" | "Withdrawn" | "Renamed" => 1,
            _ => 0,
        };
        if schema_version != current {
            return Err(CodecError::Unknown {
                event_type: event_type.into(),
                schema_version,
            });
        }
        json::decode(payload)
    }
}

/// The upcasters: Deposited v1 (whole euros) → v2 (`amount_cents`) → v3
/// (`cents`), and the old type `OwnerChanged` → `Renamed`.
fn upcasters() -> Upcasters {
    Upcasters::new()
        .with_json("Deposited", 1, |v| {
            let euros = v["Deposited"]["euros"].as_u64().unwrap_or(0);
            Ok(serde_json::json!({ "Deposited": { "amount_cents": euros * 100 } }))
        })
        .with_json("Deposited", 2, |v| {
            let cents = v["Deposited"]["amount_cents"].clone();
            Ok(serde_json::json!({ "Deposited": { "cents": cents } }))
        })
        .with_fn("OwnerChanged", 1, |e| {
            let v: serde_json::Value = serde_json::from_slice(&e.payload)?;
            let owner = v["OwnerChanged"]["owner"].clone();
            Ok(RawEvent::new(
                "Renamed",
                1,
                serde_json::to_vec(&serde_json::json!({ "Renamed": { "owner": owner } }))?,
            ))
        })
}

/// An order-sensitive state, so a replay that skips, repeats or reorders
/// an event shows.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Account {
    owner: String,
    balance: u64,
    history: u64,
}

#[derive(Debug, Clone)]
enum Command {
    Open(String),
    Deposit(u64),
    Withdraw(u64),
    Rename(String),
}

#[derive(Debug, thiserror::Error, PartialEq)]
enum Refused {
    #[error("already open")]
    AlreadyOpen,
    #[error("not open")]
    NotOpen,
    #[error("insufficient funds")]
    Insufficient,
}

impl Aggregate for Account {
    const NAME: &'static str = "account";
    type Command = Command;
    type Event = AccountEvent;
    type Error = Refused;

    fn handle(&self, command: Command) -> Result<Vec<AccountEvent>, Refused> {
        let open = !self.owner.is_empty();
        match command {
            Command::Open(_) if open => Err(Refused::AlreadyOpen),
            Command::Open(owner) => Ok(vec![AccountEvent::Opened { owner }]),
            _ if !open => Err(Refused::NotOpen),
            Command::Deposit(0) => Ok(vec![]),
            Command::Deposit(cents) => Ok(vec![AccountEvent::Deposited { cents }]),
            Command::Withdraw(cents) if cents > self.balance => Err(Refused::Insufficient),
            Command::Withdraw(cents) => Ok(vec![AccountEvent::Withdrawn { cents }]),
            Command::Rename(owner) => Ok(vec![
                AccountEvent::Renamed { owner },
                AccountEvent::Deposited { cents: 1 },
            ]),
        }
    }

    fn apply(&mut self, event: &AccountEvent) {
        let x = match event {
            AccountEvent::Opened { owner } | AccountEvent::Renamed { owner } => {
                self.owner = owner.clone();
                owner.len() as u64 + 7
            }
            AccountEvent::Deposited { cents } => {
                self.balance += cents;
                *cents * 3 + 1
            }
            AccountEvent::Withdrawn { cents } => {
                self.balance -= cents;
                *cents * 5 + 2
            }
        };
        self.history = self.history.wrapping_mul(1_000_003).wrapping_add(x);
    }
}

/// One step of the property test: a command through the repository, or an
/// event of an old schema written straight to the stream (as older code
/// did), with the current event it stands for.
#[derive(Debug, Clone)]
enum Step {
    Command(Command),
    LegacyDepositEuros(u64),
    LegacyDepositCentsV2(u64),
    LegacyOwnerChanged(String),
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        3 => (1u64..500).prop_map(|c| Step::Command(Command::Deposit(c))),
        2 => (1u64..300).prop_map(|c| Step::Command(Command::Withdraw(c))),
        1 => "[a-z]{1,6}".prop_map(|o| Step::Command(Command::Rename(o))),
        1 => "[a-z]{1,6}".prop_map(|o| Step::Command(Command::Open(o))),
        1 => (1u64..20).prop_map(Step::LegacyDepositEuros),
        1 => (1u64..900).prop_map(Step::LegacyDepositCentsV2),
        1 => "[a-z]{1,6}".prop_map(Step::LegacyOwnerChanged),
    ]
}

fn legacy(step: &Step) -> Option<(EventData, AccountEvent)> {
    let (ty, version, json, current) = match step {
        Step::LegacyDepositEuros(e) => (
            "Deposited",
            1,
            serde_json::json!({ "Deposited": { "euros": e } }),
            AccountEvent::Deposited { cents: e * 100 },
        ),
        Step::LegacyDepositCentsV2(c) => (
            "Deposited",
            2,
            serde_json::json!({ "Deposited": { "amount_cents": c } }),
            AccountEvent::Deposited { cents: *c },
        ),
        Step::LegacyOwnerChanged(o) => (
            "OwnerChanged",
            1,
            serde_json::json!({ "OwnerChanged": { "owner": o } }),
            AccountEvent::Renamed { owner: o.clone() },
        ),
        Step::Command(_) => return None,
    };
    let data = EventData::new(ty, serde_json::to_vec(&json).unwrap()).with_schema_version(version);
    Some((data, current))
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn state_from_snapshot_and_tail_equals_state_from_full_replay(
        steps in proptest::collection::vec(step(), 1..80),
        every in 1u64..9,
    ) {
        rt().block_on(async {
            let store: Arc<dyn EventStore> = Arc::new(EmbeddedStore::in_memory().await.unwrap());
            let snap = Repository::<Account>::new(Arc::clone(&store))
                .upcasters(upcasters())
                .snapshot_every(every, JsonSnapshots::new(1));
            let full = Repository::<Account>::new(Arc::clone(&store)).upcasters(upcasters());
            let stream = snap.stream_id("acc").unwrap();
            // The model: the current events, folded.
            let mut model = Account::default();
            snap.execute("acc", Command::Open("o".into())).await.unwrap();
            model.apply(&AccountEvent::Opened { owner: "o".into() });
            let mut events = 1u64;
            for s in &steps {
                if let Some((data, current)) = legacy(s) {
                    store.append(&stream, ExpectedVersion::Any, vec![data]).await.unwrap();
                    model.apply(&current);
                    events += 1;
                    continue;
                }
                let Step::Command(c) = s else { unreachable!() };
                match snap.execute("acc", c.clone()).await {
                    Ok(done) => {
                        for e in &done.events {
                            model.apply(e);
                        }
                        events += done.events.len() as u64;
                        assert_eq!(done.state, model, "the state execute returns");
                    }
                    Err(RepositoryError::Rejected(_)) => {}
                    Err(e) => panic!("execute failed: {e}"),
                }
            }
            let a = snap.load("acc").await.unwrap();
            let b = full.load("acc").await.unwrap();
            assert_eq!(b.snapshot, None);
            assert_eq!(b.replayed as u64, events);
            assert_eq!(a.state, b.state, "snapshot + tail == full replay");
            assert_eq!(a.state, model, "== the model");
            assert_eq!(a.version, b.version);
            assert_eq!(a.version, CurrentVersion::Version(events - 1));
            if let Some(v) = a.snapshot {
                assert_eq!(a.replayed as u64, events - 1 - v, "only the tail was replayed");
            }
        });
    }
}

async fn snapshot_versions(store: &dyn EventStore, stream: &StreamId) -> Vec<u64> {
    store
        .read_stream(&stream.snapshot_of(), ReadStream::forwards())
        .await
        .map(|evs| {
            evs.iter()
                .map(|e| {
                    e.metadata_value(SNAPSHOT_VERSION_METADATA)
                        .unwrap()
                        .parse()
                        .unwrap()
                })
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test]
async fn snapshots_are_written_every_n_events_and_used_and_another_schema_version_is_discarded() {
    let store: Arc<dyn EventStore> = Arc::new(EmbeddedStore::in_memory().await.unwrap());
    let repo =
        Repository::<Account>::new(Arc::clone(&store)).snapshot_every(10, JsonSnapshots::new(1));
    repo.execute("a", Command::Open("ann".into()))
        .await
        .unwrap();
    for _ in 0..12 {
        // Rename writes two events, so the count passes multiples of 10
        // between appends as well as on them.
        repo.execute("a", Command::Rename("bo".into()))
            .await
            .unwrap();
    }
    let stream = repo.stream_id("a").unwrap();
    // 25 events: the appends ending at versions 10 (count 11 passes 10)
    // and 20 (count 21 passes 20).
    assert_eq!(snapshot_versions(&*store, &stream).await, vec![10, 20]);
    let loaded = repo.load("a").await.unwrap();
    assert_eq!(loaded.snapshot, Some(20));
    assert_eq!(loaded.replayed, 4);
    assert_eq!(loaded.version, CurrentVersion::Version(24));
    // A repository whose snapshots have another schema version replays.
    let v2 =
        Repository::<Account>::new(Arc::clone(&store)).snapshot_every(10, JsonSnapshots::new(2));
    let replayed = v2.load("a").await.unwrap();
    assert_eq!(replayed.snapshot, None);
    assert_eq!(replayed.replayed, 25);
    assert_eq!(replayed.state, loaded.state);
    // System streams stay out of global reads by default.
    let page = store
        .read_all(Position::START, &GlobalFilter::all(), 1000)
        .await
        .unwrap();
    assert_eq!(page.events.len(), 25);
    let with_system = store
        .read_all(Position::START, &GlobalFilter::all().include_system(), 1000)
        .await
        .unwrap();
    assert_eq!(with_system.events.len(), 27);
}

#[tokio::test]
async fn a_rejected_command_stores_nothing_and_a_new_aggregate_loads_as_default() {
    let store: Arc<dyn EventStore> = Arc::new(EmbeddedStore::in_memory().await.unwrap());
    let repo = Repository::<Account>::new(Arc::clone(&store));
    let fresh = repo.load("nobody").await.unwrap();
    assert_eq!(fresh.state, Account::default());
    assert_eq!(fresh.version, CurrentVersion::NoStream);
    assert!(matches!(
        repo.execute("x", Command::Deposit(5)).await,
        Err(RepositoryError::Rejected(Refused::NotOpen))
    ));
    repo.execute("x", Command::Open("x".into())).await.unwrap();
    assert!(matches!(
        repo.execute("x", Command::Withdraw(5)).await,
        Err(RepositoryError::Rejected(Refused::Insufficient))
    ));
    let none = repo.execute("x", Command::Deposit(0)).await.unwrap();
    assert!(none.appended.is_none());
    assert_eq!(
        repo.load("x").await.unwrap().version,
        CurrentVersion::Version(0)
    );
    // Tags of the domain events are stored.
    let e = store
        .read_stream(&repo.stream_id("x").unwrap(), ReadStream::forwards())
        .await
        .unwrap();
    assert_eq!(e[0].tags, vec!["bank".to_string()]);
}

/// A store that appends a concurrent deposit to the stream before each of
/// the first `interfere` appends it forwards: the repository's expected
/// version is then stale.
struct Interfering {
    inner: EmbeddedStore,
    interfere: AtomicU32,
}

#[async_trait]
impl EventStore for Interfering {
    fn limits(&self) -> Limits {
        self.inner.limits()
    }
    async fn append_with(&self, request: AppendRequest) -> wharf_eventstore::Result<AppendResult> {
        let left = self.interfere.load(Ordering::SeqCst);
        if left > 0 && !request.stream.is_system() {
            self.interfere.store(left - 1, Ordering::SeqCst);
            let e = AccountEvent::Deposited { cents: 1000 };
            let data = EventData::new(e.event_type(), e.encode().unwrap()).with_schema_version(3);
            self.inner
                .append(&request.stream, ExpectedVersion::Any, vec![data])
                .await?;
        }
        self.inner.append_with(request).await
    }
    async fn read_stream(
        &self,
        stream: &StreamId,
        options: ReadStream,
    ) -> wharf_eventstore::Result<Vec<RecordedEvent>> {
        self.inner.read_stream(stream, options).await
    }
    async fn read_all(
        &self,
        from: Position,
        filter: &GlobalFilter,
        max_count: usize,
    ) -> wharf_eventstore::Result<AllSlice> {
        self.inner.read_all(from, filter, max_count).await
    }
    async fn subscribe(
        &self,
        from: SubscribeFrom,
        filter: GlobalFilter,
    ) -> wharf_eventstore::Result<EventSubscription> {
        self.inner.subscribe(from, filter).await
    }
    async fn stream_info(&self, stream: &StreamId) -> wharf_eventstore::Result<StreamInfo> {
        self.inner.stream_info(stream).await
    }
    async fn set_stream_metadata(
        &self,
        stream: &StreamId,
        metadata: StreamMetadata,
    ) -> wharf_eventstore::Result<Position> {
        self.inner.set_stream_metadata(stream, metadata).await
    }
    async fn delete_stream(
        &self,
        stream: &StreamId,
        expected: ExpectedVersion,
    ) -> wharf_eventstore::Result<Position> {
        self.inner.delete_stream(stream, expected).await
    }
    async fn tombstone_stream(
        &self,
        stream: &StreamId,
        expected: ExpectedVersion,
    ) -> wharf_eventstore::Result<Position> {
        self.inner.tombstone_stream(stream, expected).await
    }
    async fn list_streams(
        &self,
        prefix: &str,
        after: Option<&StreamId>,
        max_count: usize,
    ) -> wharf_eventstore::Result<Vec<StreamId>> {
        self.inner.list_streams(prefix, after, max_count).await
    }
    async fn head(&self) -> wharf_eventstore::Result<Position> {
        self.inner.head().await
    }
    async fn close(&self) -> wharf_eventstore::Result<()> {
        self.inner.close().await
    }
}

#[tokio::test]
async fn a_conflict_reloads_and_retries_the_command_a_bounded_number_of_times() {
    let store = Arc::new(Interfering {
        inner: EmbeddedStore::in_memory().await.unwrap(),
        interfere: AtomicU32::new(0),
    });
    let repo = Repository::<Account>::new(store.clone()).max_attempts(3);
    repo.execute("r", Command::Open("r".into())).await.unwrap();
    repo.execute("r", Command::Deposit(100)).await.unwrap();
    // Two concurrent deposits land before our appends: the third attempt,
    // decided on a state that includes both, succeeds.
    store.interfere.store(2, Ordering::SeqCst);
    let done = repo.execute("r", Command::Withdraw(50)).await.unwrap();
    assert_eq!(done.attempts, 3);
    assert_eq!(done.state.balance, 2050);
    // Three interfering writes: every attempt conflicts; the command gives
    // up with a typed error and stores nothing of its own.
    store.interfere.store(3, Ordering::SeqCst);
    match repo.execute("r", Command::Withdraw(1)).await {
        Err(RepositoryError::Conflict { stream, attempts }) => {
            assert_eq!(stream.as_str(), "account-r");
            assert_eq!(attempts, 3);
        }
        other => panic!("expected Conflict, got {other:?}"),
    }
    let loaded = repo.load("r").await.unwrap();
    assert_eq!(loaded.state.balance, 5050, "only the interfering deposits");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_commands_on_one_aggregate_all_land_through_retries() {
    let store: Arc<dyn EventStore> = Arc::new(EmbeddedStore::in_memory().await.unwrap());
    let repo = Repository::<Account>::new(store).max_attempts(50);
    repo.execute("c", Command::Open("c".into())).await.unwrap();
    let mut tasks = Vec::new();
    for i in 1..=8u64 {
        let repo = repo.clone();
        tasks.push(tokio::spawn(async move {
            for _ in 0..5 {
                repo.execute("c", Command::Deposit(i)).await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let loaded = repo.load("c").await.unwrap();
    assert_eq!(loaded.state.balance, 5 * (1..=8).sum::<u64>());
    assert_eq!(loaded.version, CurrentVersion::Version(40));
}

#[test]
fn given_when_then_harness_with_stored_events_of_old_schemas() {
    let state = AggregateTest::<Account>::given_stored(
        &upcasters(),
        [
            RawEvent::new("Opened", 1, r#"{"Opened":{"owner":"ann"}}"#),
            RawEvent::new("Deposited", 1, r#"{"Deposited":{"euros":2}}"#),
            RawEvent::new("OwnerChanged", 1, r#"{"OwnerChanged":{"owner":"bo"}}"#),
        ],
    )
    .when(Command::Withdraw(150))
    .then([AccountEvent::Withdrawn { cents: 150 }]);
    assert_eq!((state.owner.as_str(), state.balance), ("bo", 50));
    let refused = AggregateTest::<Account>::given([AccountEvent::Opened { owner: "a".into() }])
        .when(Command::Withdraw(1))
        .then_error();
    assert_eq!(refused, Refused::Insufficient);
    AggregateTest::<Account>::given_no_events()
        .when(Command::Open("z".into()))
        .then([AccountEvent::Opened { owner: "z".into() }]);
}

#[test]
#[should_panic(expected = "the command's events")]
fn the_harness_fails_on_other_events() {
    AggregateTest::<Account>::given_no_events()
        .when(Command::Open("z".into()))
        .then([AccountEvent::Opened { owner: "y".into() }]);
}
