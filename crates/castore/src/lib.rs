//! cairn's content-addressed layer (being written): the BLAKE3 Merkle DAG of blobs
//! and directories, validated model types, the BlobService and DirectoryService
//! traits with their backends, and the `tvix.castore.v1` gRPC API.
pub mod embedded;
