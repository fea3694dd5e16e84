//! Generated protobuf types and gRPC services of the `ferrite.v1` package (see `proto/ferrite/v1`).
//!
//! The messages are always there; the gRPC clients and servers (`device_registry_server`, ...) only with the `grpc` feature.

/// The `ferrite.v1` package.
pub mod v1 {
    #![allow(clippy::all, missing_docs)]
    include!(concat!(env!("OUT_DIR"), "/ferrite.v1.rs"));
}

/// Every file of `proto/ferrite/v1` and its imports as an encoded `FileDescriptorSet`, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/ferrite_descriptor.bin"));

pub use prost;
pub use prost_types;
#[cfg(feature = "grpc")]
pub use tonic;
