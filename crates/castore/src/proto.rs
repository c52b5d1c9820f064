//! Generated `tvix.castore.v1` protobuf messages and tonic clients/servers (from
//! `protos/castore.proto`). Raw and unvalidated: convert to [`crate::model`] types
//! at the edge.
#![allow(missing_docs, clippy::all, clippy::unwrap_used)]

tonic::include_proto!("tvix.castore.v1");

/// Encoded `FileDescriptorSet` of `castore.proto`, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/castore_descriptor.bin"));

/// The seed's `tvix.store.v1` BlobService and DirectoryService (from
/// `protos/seed.proto`): generated over the current message types, which are
/// the same on the wire, except Stat's reply [`seed::BlobMeta`].
pub mod seed {
    tonic::include_proto!("tvix.store.v1");

    /// Encoded `FileDescriptorSet` of `seed.proto`, for gRPC server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        include_bytes!(concat!(env!("OUT_DIR"), "/seed_descriptor.bin"));
}
