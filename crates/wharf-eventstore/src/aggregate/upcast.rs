//! Upcasting: a chain of [`Upcaster`]s, each turning one event type at one
//! schema version into a newer one, applied on read until none matches, so
//! an aggregate only ever decodes current events while the store keeps what
//! was written.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use bytes::Bytes;

use crate::aggregate::CodecError;
use crate::types::RecordedEvent;

/// An event as stored, before decoding: what upcasters work on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawEvent {
    /// The type name.
    pub event_type: String,
    /// The schema version.
    pub schema_version: u32,
    /// The payload.
    pub payload: Bytes,
}

impl RawEvent {
    /// A raw event.
    pub fn new(
        event_type: impl Into<String>,
        schema_version: u32,
        payload: impl Into<Bytes>,
    ) -> RawEvent {
        RawEvent {
            event_type: event_type.into(),
            schema_version,
            payload: payload.into(),
        }
    }
}

impl From<&RecordedEvent> for RawEvent {
    fn from(e: &RecordedEvent) -> RawEvent {
        RawEvent {
            event_type: e.event_type.clone(),
            schema_version: e.schema_version,
            payload: e.payload.clone(),
        }
    }
}

/// Turns events of one type at one schema version into a newer form: a
/// higher version of the same type, or another type.
pub trait Upcaster: Send + Sync + 'static {
    /// The type it accepts.
    fn event_type(&self) -> &str;
    /// The schema version it accepts.
    fn source_version(&self) -> u32;
    /// The newer event.
    ///
    /// # Errors
    /// [`CodecError`] when the payload cannot be converted.
    fn upcast(&self, event: RawEvent) -> Result<RawEvent, CodecError>;
}

type UpcastFn = dyn Fn(RawEvent) -> Result<RawEvent, CodecError> + Send + Sync;

struct FnUpcaster {
    event_type: String,
    from_version: u32,
    f: Box<UpcastFn>,
}

impl Upcaster for FnUpcaster {
    fn event_type(&self) -> &str {
        &self.event_type
    }
    fn source_version(&self) -> u32 {
        self.from_version
    }
    fn upcast(&self, event: RawEvent) -> Result<RawEvent, CodecError> {
        (self.f)(event)
    }
}

/// Most upcaster steps applied to one event (a guard against a chain that
/// cycles through types).
const MAX_STEPS: usize = 256;

/// A chain of upcasters, found by (type, version).
///
/// ```
/// use wharf_eventstore::aggregate::{RawEvent, Upcasters};
/// // v1 stored whole euros, v2 cents; v2 -> v3 renamed the field.
/// let up = Upcasters::new()
///     .with_json("Deposited", 1, |mut v| {
///         let euros = v["Deposited"]["amount"].as_u64().unwrap_or(0);
///         v["Deposited"] = serde_json::json!({ "cents_v2": euros * 100 });
///         Ok(v)
///     })
///     .with_json("Deposited", 2, |mut v| {
///         let cents = v["Deposited"]["cents_v2"].take();
///         v["Deposited"] = serde_json::json!({ "cents": cents });
///         Ok(v)
///     });
/// let old = RawEvent::new("Deposited", 1, r#"{"Deposited":{"amount":5}}"#);
/// let now = up.upcast(old)?;
/// assert_eq!(now.schema_version, 3);
/// assert_eq!(&now.payload[..], br#"{"Deposited":{"cents":500}}"#);
/// # Ok::<(), wharf_eventstore::aggregate::CodecError>(())
/// ```
#[derive(Clone, Default)]
pub struct Upcasters {
    by_key: HashMap<(String, u32), Arc<dyn Upcaster>>,
}

impl fmt::Debug for Upcasters {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut keys: Vec<_> = self.by_key.keys().collect();
        keys.sort();
        f.debug_struct("Upcasters").field("steps", &keys).finish()
    }
}

impl Upcasters {
    /// No upcasters.
    pub fn new() -> Upcasters {
        Upcasters::default()
    }

    /// Adds an upcaster (replacing one registered for the same type and
    /// version).
    pub fn with(mut self, upcaster: impl Upcaster) -> Upcasters {
        let key = (upcaster.event_type().to_owned(), upcaster.source_version());
        self.by_key.insert(key, Arc::new(upcaster));
        self
    }

    /// Adds an upcaster from a function of the raw event.
    pub fn with_fn(
        self,
        event_type: impl Into<String>,
        from_version: u32,
        f: impl Fn(RawEvent) -> Result<RawEvent, CodecError> + Send + Sync + 'static,
    ) -> Upcasters {
        self.with(FnUpcaster {
            event_type: event_type.into(),
            from_version,
            f: Box::new(f),
        })
    }

    /// Adds an upcaster of a JSON payload: `f` rewrites the JSON value and
    /// the event moves to `from_version + 1` of the same type.
    pub fn with_json(
        self,
        event_type: impl Into<String>,
        from_version: u32,
        f: impl Fn(serde_json::Value) -> Result<serde_json::Value, CodecError> + Send + Sync + 'static,
    ) -> Upcasters {
        self.with_fn(event_type, from_version, move |e: RawEvent| {
            let v: serde_json::Value = serde_json::from_slice(&e.payload)?;
            let v = f(v)?;
            Ok(RawEvent {
                event_type: e.event_type,
                schema_version: e.schema_version + 1,
                payload: Bytes::from(serde_json::to_vec(&v)?),
            })
        })
    }

    /// True when no upcaster is registered.
    pub fn is_empty(&self) -> bool {
        self.by_key.is_empty()
    }

    /// Applies upcasters to `event` until none matches its type and
    /// version.
    ///
    /// # Errors
    /// What an upcaster returns; [`CodecError::UpcastLoop`] when a step
    /// returns an event of the same type at no higher version, or the
    /// chain exceeds 256 steps.
    pub fn upcast(&self, mut event: RawEvent) -> Result<RawEvent, CodecError> {
        if self.by_key.is_empty() {
            return Ok(event);
        }
        for _ in 0..MAX_STEPS {
            let key = (event.event_type.clone(), event.schema_version);
            let Some(u) = self.by_key.get(&key) else {
                return Ok(event);
            };
            let next = u.upcast(event)?;
            if next.event_type == key.0 && next.schema_version <= key.1 {
                return Err(CodecError::UpcastLoop {
                    event_type: key.0,
                    from_version: key.1,
                });
            }
            event = next;
        }
        Err(CodecError::UpcastLoop {
            event_type: event.event_type,
            from_version: event.schema_version,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_step_that_does_not_move_forward_is_refused() {
        let up = Upcasters::new().with_fn("A", 2, Ok);
        assert!(matches!(
            up.upcast(RawEvent::new("A", 2, "")),
            Err(CodecError::UpcastLoop { .. })
        ));
        // A cycle through types is cut off too.
        let up = Upcasters::new()
            .with_fn("A", 1, |e| Ok(RawEvent::new("B", 1, e.payload)))
            .with_fn("B", 1, |e| Ok(RawEvent::new("A", 1, e.payload)));
        assert!(matches!(
            up.upcast(RawEvent::new("A", 1, "")),
            Err(CodecError::UpcastLoop { .. })
        ));
    }

    #[test]
    fn a_chain_renames_and_raises_versions() {
        let up = Upcasters::new()
            .with_fn("Old", 1, |e| Ok(RawEvent::new("New", 1, e.payload)))
            .with_fn("New", 1, |e| Ok(RawEvent::new("New", 2, e.payload)));
        let out = up.upcast(RawEvent::new("Old", 1, "x")).unwrap();
        assert_eq!(out, RawEvent::new("New", 2, "x"));
        let untouched = up.upcast(RawEvent::new("Other", 1, "y")).unwrap();
        assert_eq!(untouched, RawEvent::new("Other", 1, "y"));
    }
}
