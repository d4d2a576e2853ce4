//! The transport-agnostic model every Wharf backend and the router share.
//!
//! Nothing in this crate does I/O or knows a concrete backend: it defines the
//! [`Message`], the [`Delivery`] a consumer settles, the object-safe
//! [`Publisher`] / [`Subscriber`] / [`Backend`] traits, the [`Capabilities`] a
//! backend declares, name validation, payload [`Codec`]s and the [`Error`]
//! type.
//!
//! ```
//! use wharf_core::{Message, Json, header};
//!
//! #[derive(serde::Serialize, serde::Deserialize, PartialEq, Debug)]
//! struct OrderCreated { id: u64 }
//!
//! let msg = Message::builder()
//!     .key("customer-7")
//!     .header("source", "web")
//!     .encode(&Json, &OrderCreated { id: 42 })?
//!     .build();
//! assert_eq!(msg.headers().get(header::CONTENT_TYPE), Some("application/json"));
//! let back: OrderCreated = msg.decode(&Json)?;
//! assert_eq!(back, OrderCreated { id: 42 });
//! # Ok::<(), wharf_core::Error>(())
//! ```

#![warn(missing_docs)]

mod backend;
mod capability;
mod codec;
pub mod dead_letter;
mod dedup;
mod delivery;
mod error;
pub mod header;
mod message;
pub mod name;
mod publish_source;
mod subscription;

pub use backend::{Backend, Limits, Publisher, Receipt, Subscriber};
pub use capability::{Capabilities, Capability};
pub use codec::{Codec, CodecError, Json};
pub use dead_letter::DeadLetter;
pub use dedup::DedupStore;
pub use delivery::{AckBatch, Acker, Delivery, DeliveryInfo, Settlement, Settler};
pub use error::{BoxError, Error, NameKind, Result};
pub use message::{
    HeaderIndex, Headers, Message, MessageBuilder, MessageId, Timestamp, MAX_PRIORITY,
};
pub use name::TopicPattern;
pub use publish_source::PublishSource;
pub use subscription::{DeliveryStream, GroupMode, StartPosition, SubscribeOptions, Subscription};
