//! Wharf on MQTT 5, through the `rumqttc` client (its `v5` module).
//!
//! (Crate docs: filled in below.)

#![warn(missing_docs)]

mod backend;
mod config;
mod error;
mod subscription;
mod topics;
mod wire;

pub use backend::MqttBackend;
pub use config::MqttConfig;
pub use error::MqttError;
