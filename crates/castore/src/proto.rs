//! Generated `tvix.castore.v1` protobuf messages and tonic clients/servers (from
//! `protos/castore.proto`). Raw and unvalidated: convert to [`crate::model`] types
//! at the edge.
#![allow(missing_docs, clippy::all, clippy::unwrap_used)]

tonic::include_proto!("tvix.castore.v1");

/// Encoded `FileDescriptorSet` of `castore.proto`, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/castore_descriptor.bin"));
