//! Wharf's gRPC protocol, generated from `proto/wharf.proto` at build time
//! with `protox` (no system `protoc` needed).
//!
//! [`v1`] holds the messages and the tonic client and server for the
//! `wharf.v1.Wharf` service; [`FILE_DESCRIPTOR_SET`] is served by gRPC
//! reflection; [`codec::WharfCodec`] reports malformed protobuf as
//! `INVALID_ARGUMENT` rather than tonic's default `INTERNAL`;
//! [`publish::PublishBatch`] is the client's publish request, encoded
//! straight from `wharf-core` messages.

pub mod codec;
pub mod convert;
#[cfg(feature = "eventstore")]
pub mod eventstore;
pub mod frame;
pub mod publish;

/// The `wharf.v1` package: messages, `wharf_client::WharfClient` and `wharf_server::WharfServer`.
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod v1 {
    tonic::include_proto!("wharf.v1");
}

/// The encoded `FileDescriptorSet` of `wharf.proto`, for server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/wharf_descriptor.bin"));
