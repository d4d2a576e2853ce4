//! Building blocks for adapter crates (`wharf-nats`, `wharf-redis`): the
//! runtime pieces every adapter on a client library needs the same way, kept
//! out of `wharf-core` because they run on tokio.
//!
//! - [`InFlight`]: the deliveries a subscription has handed out, by token,
//!   with the subscription's in-flight slots and a lease keeper per delivery.
//! - [`ChannelStream`]: the [`DeliveryStream`](wharf_core::DeliveryStream)
//!   of a subscription whose reader task sends deliveries down a channel.
//! - [`at_most_once`]: a non-durable mode's acker (settling only frees a
//!   slot) and its stream over the client's own message stream.
//!
//! Nothing here names a backend or does I/O of its own: the adapter supplies
//! its backend name, its client's stream and how to decode what it reads.

#![warn(missing_docs)]

pub mod at_most_once;
mod channel;
mod in_flight;

pub use channel::{ChannelStream, DeliverySender};
pub use in_flight::InFlight;
