//! Path info: what Nix knows about a store path, mapped onto castore content.
//!
//! - [`PathInfo`]: the validated form of a protobuf `PathInfo` (WIRE.md,
//!   `tvix.store.v1`), with the narinfo, fingerprint and `nix path-info --json` views
//!   Nix clients need.
//! - [`PathInfoService`]: the storage trait, its contract in its doc, with backends:
//!   [`MemoryPathInfoService`], [`RedbPathInfoService`] (a `pathinfo.redb` next to the
//!   embedded castore in its data directory), [`PgPathInfoService`] (PostgreSQL,
//!   shared by several daemons) and [`GrpcPathInfoService`];
//!   [`path_info_service_from_addr`] picks one by URL.
//! - [`GrpcPathInfoServer`] and [`routes`]: the `tvix.store.v1.PathInfoService` gRPC
//!   server, and the one call that serves it together with castore's services.
//!
//! Errors are [`cairn_castore::Error`], so one status mapping covers all three
//! services: a malformed `PathInfo` is `InvalidArgument` naming the field, a
//! `PathInfo` whose content is not stored is `InvalidArgument` naming the missing
//! blob or directory.

mod caching;
mod grpc;
mod memory;
mod model;
mod postgres;
mod redb;
mod server;

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use cairn_castore::{BlobService, DirectoryService, Error, GrpcAddr, Node};
use cairn_nix::store_path::StorePath;
use futures::StreamExt as _;
use futures::stream::BoxStream;

pub use caching::CachingPathInfoService;
pub use grpc::GrpcPathInfoService;
pub use memory::MemoryPathInfoService;
pub use model::{PathInfo, PathInfoError};
pub use postgres::PgPathInfoService;
pub use redb::{FILE_NAME as REDB_FILE_NAME, RedbPathInfoService, compact_redb_file};
pub use server::{GrpcPathInfoServer, NarCalculator, routes};

/// Stores [`PathInfo`]s by the 20-byte digest of their store path.
///
/// Contract:
/// - `get` of an absent path is `Ok(None)`; what it returns is valid and has the
///   digest asked for.
/// - `put` stores `info` (replacing an earlier one for the same path) only if it is
///   valid ([`PathInfo::validate`], else `InvalidArgument` naming the field) and its
///   root node's content is present in the castore the service was built with: the
///   blob of a file root, the directory (and so, since directory closures are put
///   all-or-nothing, its closure) of a directory root; otherwise it fails with
///   `InvalidArgument` naming what is missing. It returns what was stored.
///   Once `put` returns, the entry survives a restart of a persistent backend.
/// - `list` streams every stored entry once, in no particular order, without
///   holding them all in memory (except the memory backend).
/// - `referrers` answers what `list` would: every stored entry referring to the
///   path, once put and until deleted or replaced by one that does not.
#[async_trait]
pub trait PathInfoService: Send + Sync {
    /// The entry for the store path with this digest.
    async fn get(&self, digest: [u8; 20]) -> Result<Option<PathInfo>, Error>;

    /// Validates that `info`'s content is present and stores it.
    async fn put(&self, info: PathInfo) -> Result<PathInfo, Error>;

    /// Every stored entry.
    fn list(&self) -> BoxStream<'static, Result<PathInfo, Error>>;

    /// The stored paths whose references include the path with this digest
    /// (itself too, if it refers to itself), in no particular order: Nix's
    /// `queryReferrers`. By default every entry is listed and looked at;
    /// backends with an index answer from it.
    async fn referrers(&self, digest: [u8; 20]) -> Result<Vec<StorePath>, Error> {
        let mut found = Vec::new();
        let mut all = self.list();
        while let Some(info) = all.next().await {
            let info = info?;
            if info.references.iter().any(|r| r.digest() == &digest) {
                found.push(info.store_path);
            }
        }
        Ok(found)
    }

    /// The NAR size and SHA-256 of `node` if this backend remembers them from an
    /// earlier [`PathInfoService::remember_nar`] (the gRPC server's CalculateNAR
    /// asks before rendering). Backends without a persistent cache keep the default:
    /// `Ok(None)`.
    async fn cached_nar(&self, node: &Node) -> Result<Option<(u64, [u8; 32])>, Error> {
        let _ = node;
        Ok(None)
    }

    /// Remembers the NAR size and SHA-256 of `node` (a pure function of the node,
    /// content being addressed by digest). The default forgets it.
    async fn remember_nar(&self, node: &Node, nar: (u64, [u8; 32])) -> Result<(), Error> {
        let _ = (node, nar);
        Ok(())
    }

    /// Records that the path was read (its narinfo or NAR served, a gRPC
    /// get), for garbage collection's `--max-age` and `--max-size`. Must be
    /// cheap: backends note it in memory and write coarse times in batches,
    /// never once per request. `get` notes it itself; a cache in front of a
    /// backend calls this on its hits. The default forgets it.
    fn note_access(&self, digest: [u8; 20]) {
        let _ = digest;
    }

    /// The last access (or upload) time, in unix seconds, of every path the
    /// backend has one for, including those not written out yet.
    async fn access_times(&self) -> Result<HashMap<[u8; 20], u64>, Error> {
        Err(no_gc())
    }

    /// Removes the entries of these paths, durably (their content is left to
    /// the castore's collector). Absent paths are skipped.
    async fn delete(&self, digests: &[[u8; 20]]) -> Result<(), Error> {
        let _ = digests;
        Err(no_gc())
    }

    /// The pinned paths: garbage collection policies never remove them or
    /// their closures.
    async fn pins(&self) -> Result<Vec<[u8; 20]>, Error> {
        Err(no_gc())
    }

    /// Pins or unpins paths, durably.
    async fn set_pinned(&self, digests: &[[u8; 20]], pinned: bool) -> Result<(), Error> {
        let _ = (digests, pinned);
        Err(no_gc())
    }
}

/// What backends without garbage collection answer.
fn no_gc() -> Error {
    Error::InvalidArgument(
        "this path info service cannot delete, pin or report access times (garbage collection works on memory://, redb:// and postgres:// path info)".into(),
    )
}

/// Unix seconds now.
pub(crate) fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Checks what a backend's `put` must check before storing `info`: that it is
/// valid ([`PathInfo::validate`]) and that the content of its root node is in the
/// castore (a directory with a size its `size` may claim).
pub async fn check_content(
    info: &PathInfo,
    blobs: &dyn BlobService,
    directories: &dyn DirectoryService,
) -> Result<(), Error> {
    info.validate()
        .map_err(|e| Error::InvalidArgument(e.to_string()))?;
    match &info.node {
        Node::Directory { digest, size } => match directories.get(digest).await? {
            None => {
                return Err(Error::InvalidArgument(format!(
                    "node: directory {digest} of {} is not in the directory service",
                    info.store_path
                )));
            }
            Some(dir) if !dir.accepts_size(*size) => {
                return Err(Error::InvalidArgument(format!(
                    "node: size {size}, but directory {digest} has size {} (tvix's rule) or {} (the proto comment's)",
                    dir.size(),
                    dir.proto_size()
                )));
            }
            Some(_) => {}
        },
        Node::File { digest, .. } => {
            if !blobs.has(digest).await? {
                return Err(Error::InvalidArgument(format!(
                    "node: blob {digest} of {} is not in the blob service",
                    info.store_path
                )));
            }
        }
        Node::Symlink { .. } => {}
    }
    Ok(())
}

/// The key of a root node in a backend's NAR cache: its canonical protobuf
/// encoding with an empty name.
pub(crate) fn nar_cache_key(node: &Node) -> Vec<u8> {
    prost::Message::encode_to_vec(&node.clone().into_proto(bytes::Bytes::new()))
}

/// The [`PathInfo`] a backend stored for `digest` as protobuf `bytes`, validated
/// again: bytes that do not parse, do not validate or hold another path are
/// `Corrupt`, naming `source` (the file or table) and the entry.
pub(crate) fn decode_stored(
    source: &str,
    digest: &[u8; 20],
    bytes: &[u8],
) -> Result<PathInfo, Error> {
    let corrupt = |what: String| {
        Error::Corrupt(format!(
            "{source}: entry {}: {what}",
            cairn_nix::nixbase32::encode(digest)
        ))
    };
    let p = <crate::proto::PathInfo as prost::Message>::decode(bytes)
        .map_err(|e| corrupt(e.to_string()))?;
    let info = PathInfo::try_from(p).map_err(|e| corrupt(e.to_string()))?;
    if info.store_path.digest() != digest {
        return Err(corrupt(format!("holds {}", info.store_path)));
    }
    Ok(info)
}

fn unsupported(url: &str) -> Error {
    Error::InvalidArgument(format!(
        "{url:?}: unsupported path info address (expected memory://, redb:///path, grpc+http://host:port, grpc+https://host:port, grpc+unix:///path or postgres://user@host/db)"
    ))
}

/// The path info service a URL names:
///
/// | URL | backend |
/// |---|---|
/// | `memory://` | [`MemoryPathInfoService`] |
/// | `redb:///path/to/datadir` | [`RedbPathInfoService`] on `pathinfo.redb` in that directory (shared within the process) |
/// | `postgres://user@host/db`, `postgresql://...` | [`PgPathInfoService`] on that database (the process's pool for it; [`cairn_castore::pg`] for the parameters) |
/// | `grpc+http://host:port`, `grpc+unix:///path` | [`GrpcPathInfoService`] (connects on first use; the server checks content) |
///
/// `blobs` and `directories` are what `put` checks content against (unused by the
/// gRPC client).
pub fn path_info_service_from_addr(
    url: &str,
    blobs: Arc<dyn BlobService>,
    directories: Arc<dyn DirectoryService>,
) -> Result<Arc<dyn PathInfoService>, Error> {
    if url == "memory://" {
        return Ok(Arc::new(MemoryPathInfoService::new(blobs, directories)));
    }
    if let Some(path) = url.strip_prefix("redb://") {
        if !path.starts_with('/') || path.len() < 2 {
            return Err(Error::InvalidArgument(format!(
                "{url:?}: redb:// needs an absolute data directory path (redb:///path)"
            )));
        }
        return Ok(Arc::new(RedbPathInfoService::open_shared(
            path,
            blobs,
            directories,
        )?));
    }
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        return Ok(Arc::new(PgPathInfoService::from_url(
            url,
            blobs,
            directories,
        )?));
    }
    match GrpcAddr::parse(url) {
        Some(addr) => Ok(Arc::new(GrpcPathInfoService::new(addr?.channel()?))),
        None => Err(unsupported(url)),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn accepted_and_rejected_urls() {
        let blobs = cairn_castore::blob_service_from_addr("memory://").unwrap();
        let dirs = cairn_castore::directory_service_from_addr("memory://").unwrap();
        let tmp = tempfile::tempdir().unwrap();
        let redb = format!("redb://{}", tmp.path().join("data").display());
        for url in [
            "memory://",
            "grpc+http://127.0.0.1:8000",
            "grpc+http://[::1]:65535",
            "grpc+unix:///run/cairn.sock",
            "postgres://cairn@127.0.0.1:5432/cairn",
            "postgresql://cairn@/cairn?host=/run/postgresql",
            redb.as_str(),
            // The same data directory again: shared, not a second opener.
            redb.as_str(),
        ] {
            assert!(
                path_info_service_from_addr(url, blobs.clone(), dirs.clone()).is_ok(),
                "{url}"
            );
        }
        assert!(tmp.path().join("data/pathinfo.redb").exists());
        for url in [
            "",
            "memory",
            "memory:///x",
            "http://127.0.0.1:8000",
            "grpc+http://127.0.0.1",
            "grpc+unix://relative",
            "redb://",
            "redb:///",
            "redb://relative/dir",
            "sled:///tmp/x",
            "postgres://cairn@127.0.0.1/cairn?bogus=1",
        ] {
            let err = path_info_service_from_addr(url, blobs.clone(), dirs.clone()).err();
            assert!(
                matches!(err, Some(Error::InvalidArgument(_))),
                "{url}: {err:?}"
            );
        }
    }
}
