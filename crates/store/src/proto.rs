//! Generated `tvix.store.v1` protobuf messages and tonic clients/servers (from
//! `protos/store.proto`; `tvix.castore.v1` types come from `cairn_castore::proto`).
//! Raw and unvalidated: convert to validated types at the edge.
#![allow(missing_docs, clippy::all, clippy::unwrap_used)]

tonic::include_proto!("tvix.store.v1");

/// Encoded `FileDescriptorSet` of `store.proto` (without its import
/// `castore.proto`, which `cairn_castore::proto::FILE_DESCRIPTOR_SET` holds), for
/// gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/store_descriptor.bin"));
