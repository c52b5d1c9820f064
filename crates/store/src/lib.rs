//! cairn's store layer: turns the content-addressed layer into a Nix store.
//!
//! - [`pathinfo`]: the validated `PathInfo` (store path -> root node, references,
//!   NAR hash and size, signatures, deriver, CA), the `PathInfoService` trait, its
//!   backends (memory, embedded redb in the data directory, gRPC client) and the
//!   `tvix.store.v1` gRPC server.
//! - [`nar`]: rendering a root node as a NAR stream byte-identical to Nix's, and
//!   ingesting a NAR stream into blobs and directories.
//! - [`gc`]: garbage collection: explicit deletes, the `--max-age` and
//!   `--max-size` policies, pins, then the castore's collector.
//! - [`fs`]: importing a tree from the file system (with its NAR hash) and exporting one.
//! - [`lru`]: (re-exported from cairn-castore) the cost-bounded LRU map behind the in-memory caches of path infos
//!   and of the binary cache's rendered narinfos.
//!
//! Blobs and directories belong to `cairn-castore`, Nix's formats to `cairn-nix`;
//! this crate owns the mapping between them.

pub mod fs;
pub mod gc;
pub use cairn_castore::lru;
pub mod nar;
pub mod pathinfo;
pub mod proto;
