//! The Anxin gRPC protocol, package `anxin.v1`: messages and tonic stubs
//! generated at build time from `proto/anxin/v1/*.proto`, shared by `server`
//! and `loadtest`. Knows nothing of the cores or the store.

/// Generated code of package `anxin.v1`.
pub mod v1 {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("anxin.v1");
}

/// Encoded `FileDescriptorSet` of every Anxin proto, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/anxin_descriptor.bin"));

pub use v1::*;
