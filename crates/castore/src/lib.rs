//! cairn's content-addressed layer: the BLAKE3 Merkle DAG of the tvix-store design.
//!
//! - [`B3Digest`] names everything: a blob by BLAKE3 of its bytes, a [`Directory`] by
//!   BLAKE3 of its canonical protobuf encoding.
//! - [`model`](crate::model): validated [`PathComponent`], [`SymlinkTarget`], [`Node`]
//!   and [`Directory`], built once from raw protobuf ([`proto`]) at the edge.
//! - [`BlobService`] and [`DirectoryService`]: the storage traits, their contracts in
//!   their docs, with backends: memory, the embedded persistent store, and gRPC
//!   clients; [`from_addr`] picks one by URL.
//! - [`gc`]: garbage collection: what given roots reach, the grace period, and
//!   the collectors of the memory and embedded backends.
//! - [`server`]: the `tvix.castore.v1` gRPC services over any backend, also served
//!   under the seed's `tvix.store.v1` names.
//!
//! This crate never sees a store path, a NAR or a narinfo: those belong to the store
//! layer above it (and Nix's formats to `cairn-nix`). Names here are opaque bytes
//! following the directory-entry rules only.
//!
//! ```
//! use cairn_castore::{Directory, Node, PathComponent, B3Digest};
//!
//! let mut dir = Directory::new();
//! dir.add(
//!     PathComponent::try_from("hello").unwrap(),
//!     Node::File { digest: B3Digest::of(b"hi"), size: 2, executable: false },
//! ).unwrap();
//! assert_eq!(dir.size(), 2); // tvix's rule: 2 per entry
//! assert_eq!(Directory::decode(&dir.encode()).unwrap(), dir);
//! ```

pub mod auth;
pub mod blobservice;
mod channel;
pub mod codec;
mod digest;
pub mod directoryservice;
pub mod embedded;
mod error;
pub mod from_addr;
pub mod gc;
pub mod lru;
pub mod model;
pub mod pg;
pub mod proto;
mod redact;
pub mod redb_file;
pub mod server;
pub mod tls;
mod upload;

pub use blobservice::{BlobReader, BlobService, BlobStream, BlobWriter, ChunkMeta};
pub use channel::{GrpcAddr, GrpcChannel, MAX_DECODING_MESSAGE_SIZE, set_client_token};
pub use digest::{B3Digest, DIGEST_LEN, DigestLenError};
pub use directoryservice::{DirectoryPutter, DirectoryService};
pub use error::{Error, ErrorKind, storage_full};
pub use from_addr::{blob_service_from_addr, directory_service_from_addr};
pub use model::{
    Directory, DirectoryError, NameError, Node, NodeKind, PathComponent, SymlinkTarget, TargetError,
};
pub use redact::redacted;
