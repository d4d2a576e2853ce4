//! [`AggregateTest`]: given(events) / when(command) / then(events or
//! error) for an aggregate, in memory, with no store and no I/O.

use std::fmt::Debug;

use crate::aggregate::{Aggregate, DomainEvent, RawEvent, Upcasters};

/// A given/when/then test of an aggregate.
///
/// ```
/// use wharf_eventstore::aggregate::{json, Aggregate, AggregateTest, CodecError, DomainEvent};
///
/// #[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
/// enum Event { Opened, Closed }
/// impl DomainEvent for Event {
///     fn event_type(&self) -> &'static str { match self { Event::Opened => "Opened", Event::Closed => "Closed" } }
///     fn encode(&self) -> Result<bytes::Bytes, CodecError> { json::encode(self) }
///     fn decode(_: &str, _: u32, p: &[u8]) -> Result<Self, CodecError> { json::decode(p) }
/// }
/// #[derive(Default)]
/// struct Door { open: bool }
/// #[derive(Debug, thiserror::Error)]
/// #[error("already closed")]
/// struct AlreadyClosed;
/// impl Aggregate for Door {
///     const NAME: &'static str = "door";
///     type Command = ();
///     type Event = Event;
///     type Error = AlreadyClosed;
///     fn handle(&self, _: ()) -> Result<Vec<Event>, AlreadyClosed> {
///         if self.open { Ok(vec![Event::Closed]) } else { Err(AlreadyClosed) }
///     }
///     fn apply(&mut self, e: &Event) { self.open = *e == Event::Opened; }
/// }
///
/// let door = AggregateTest::<Door>::given([Event::Opened]).when(()).then([Event::Closed]);
/// assert!(!door.open);
/// AggregateTest::<Door>::given([Event::Opened, Event::Closed]).when(()).then_error();
/// ```
#[derive(Debug)]
pub struct AggregateTest<A> {
    state: A,
}

impl<A: Aggregate> AggregateTest<A> {
    /// An aggregate that has seen `events`.
    pub fn given(events: impl IntoIterator<Item = A::Event>) -> AggregateTest<A> {
        let mut state = A::default();
        for e in events {
            state.apply(&e);
        }
        AggregateTest { state }
    }

    /// A new aggregate.
    pub fn given_no_events() -> AggregateTest<A> {
        AggregateTest {
            state: A::default(),
        }
    }

    /// An aggregate that has seen `events` as stored — possibly of old
    /// schema versions — upcast with `upcasters` and decoded as the
    /// repository would.
    ///
    /// # Panics
    /// When an event does not upcast or decode (the test fails).
    #[track_caller]
    pub fn given_stored(
        upcasters: &Upcasters,
        events: impl IntoIterator<Item = RawEvent>,
    ) -> AggregateTest<A> {
        let mut state = A::default();
        for raw in events {
            let up = upcasters
                .upcast(raw.clone())
                .unwrap_or_else(|e| panic!("given event {raw:?} does not upcast: {e}"));
            let e = A::Event::decode(&up.event_type, up.schema_version, &up.payload)
                .unwrap_or_else(|e| panic!("given event {up:?} does not decode: {e}"));
            state.apply(&e);
        }
        AggregateTest { state }
    }

    /// Runs `command`.
    pub fn when(self, command: A::Command) -> WhenResult<A> {
        let result = self.state.handle(command);
        WhenResult {
            state: self.state,
            result,
        }
    }
}

/// What the command decided; assert it with [`WhenResult::then`] or
/// [`WhenResult::then_error`].
#[derive(Debug)]
pub struct WhenResult<A: Aggregate> {
    state: A,
    result: Result<Vec<A::Event>, A::Error>,
}

impl<A: Aggregate> WhenResult<A> {
    /// The raw outcome.
    pub fn result(&self) -> &Result<Vec<A::Event>, A::Error> {
        &self.result
    }

    /// Asserts the command produced exactly `expected`, and that each of
    /// them survives encode → decode unchanged; returns the state after
    /// applying them.
    ///
    /// # Panics
    /// When the command failed, produced other events, or an event does
    /// not round-trip through its codec.
    #[track_caller]
    pub fn then(self, expected: impl IntoIterator<Item = A::Event>) -> A
    where
        A::Event: PartialEq + Debug,
        A::Error: Debug,
    {
        let expected: Vec<A::Event> = expected.into_iter().collect();
        let events = match self.result {
            Ok(events) => events,
            Err(e) => panic!("expected events {expected:?}, the command failed: {e:?}"),
        };
        assert_eq!(events, expected, "the command's events");
        for e in &events {
            let payload = e
                .encode()
                .unwrap_or_else(|err| panic!("{e:?} does not encode: {err}"));
            let back = A::Event::decode(e.event_type(), e.schema_version(), &payload)
                .unwrap_or_else(|err| panic!("{e:?} does not decode: {err}"));
            assert_eq!(&back, e, "the event round-trips through its codec");
        }
        let mut state = self.state;
        for e in &events {
            state.apply(e);
        }
        state
    }

    /// Asserts the command failed and returns its error.
    ///
    /// # Panics
    /// When the command succeeded.
    #[track_caller]
    pub fn then_error(self) -> A::Error
    where
        A::Event: Debug,
    {
        match self.result {
            Ok(events) => panic!("expected a refusal, the command produced {events:?}"),
            Err(e) => e,
        }
    }
}
