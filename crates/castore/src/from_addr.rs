//! Backends by URL: a `match` on the scheme.
//!
//! | URL | backend |
//! |---|---|
//! | `memory://` | [`MemoryBlobService`] / [`MemoryDirectoryService`] (for tests) |
//! | `grpc+http://host:port` | gRPC client over TCP |
//! | `grpc+https://host:port` | gRPC client over TLS ([`crate::tls`]) |
//! | `grpc+unix:///path` | gRPC client over a unix socket |
//! | `redb:///path/to/datadir` | the embedded persistent store ([`EmbeddedStore`]) in that data directory; blob and directory services of one URL share it |
//! | `postgres://user@host/db` or `postgresql://...` | directories only: [`PgDirectoryService`] on that database ([`crate::pg`] for the URL's parameters, plus `dir_cache`) |
//! | `s3://bucket/prefix?index=postgres://…&endpoint=…&region=…` | blobs only: [`S3BlobService`] (parameters in [`crate::blobservice::s3`]) |

use std::sync::Arc;

use crate::blobservice::{GrpcBlobService, MemoryBlobService, S3BlobService};
use crate::channel::GrpcAddr;
use crate::directoryservice::{GrpcDirectoryService, MemoryDirectoryService, PgDirectoryService};
use crate::embedded::EmbeddedStore;
use crate::{BlobService, DirectoryService, Error};

/// The embedded store of a `redb:///absolute/path` URL, or `None` for other schemes.
fn embedded(url: &str) -> Option<Result<EmbeddedStore, Error>> {
    let path = url.strip_prefix("redb://")?;
    if !path.starts_with('/') || path.len() < 2 {
        return Some(Err(Error::InvalidArgument(format!(
            "{url:?}: redb:// needs an absolute data directory path (redb:///path)"
        ))));
    }
    Some(EmbeddedStore::open_shared(path).map_err(Error::from))
}

fn unsupported(url: &str) -> Error {
    Error::InvalidArgument(format!(
        "{url:?}: unsupported address (expected memory://, redb:///path, grpc+http://host:port, grpc+https://host:port, grpc+unix:///path, s3://bucket?index=postgres://… for blobs, or postgres://user@host/db for directories)"
    ))
}

/// The blob service a URL names. gRPC clients connect on first use.
pub fn blob_service_from_addr(url: &str) -> Result<Arc<dyn BlobService>, Error> {
    if url == "memory://" {
        return Ok(Arc::new(MemoryBlobService::new()));
    }
    if let Some(store) = embedded(url) {
        return Ok(Arc::new(store?));
    }
    if url.starts_with("s3://") {
        return Ok(Arc::new(S3BlobService::from_url(url)?));
    }
    match GrpcAddr::parse(url) {
        Some(addr) => Ok(Arc::new(GrpcBlobService::new(addr?.channel()?))),
        None => Err(unsupported(url)),
    }
}

/// The directory service a URL names. gRPC clients connect on first use.
pub fn directory_service_from_addr(url: &str) -> Result<Arc<dyn DirectoryService>, Error> {
    if url == "memory://" {
        return Ok(Arc::new(MemoryDirectoryService::new()));
    }
    if let Some(store) = embedded(url) {
        return Ok(Arc::new(store?));
    }
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        return Ok(Arc::new(PgDirectoryService::from_url(url)?));
    }
    match GrpcAddr::parse(url) {
        Some(addr) => Ok(Arc::new(GrpcDirectoryService::new(addr?.channel()?))),
        None => Err(unsupported(url)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn accepted_and_rejected_urls() {
        let accepted = [
            "memory://",
            "grpc+http://127.0.0.1:8000",
            "grpc+http://localhost:1",
            "grpc+https://cache.example:443",
            "grpc+http://[::1]:65535",
            "grpc+unix:///run/cairn.sock",
        ];
        let tmp = tempfile::tempdir().expect("temporary directory");
        let redb = format!("redb://{}", tmp.path().join("data").display());
        for url in accepted.iter().copied().chain([redb.as_str()]) {
            assert!(blob_service_from_addr(url).is_ok(), "{url}");
            assert!(directory_service_from_addr(url).is_ok(), "{url}");
        }
        let rejected = [
            "",
            "memory",
            "memory:///x",
            "http://127.0.0.1:8000",
            "grpc+http://127.0.0.1",
            "grpc+http://127.0.0.1:0",
            "grpc+http://127.0.0.1:99999",
            "grpc+http://:8000",
            "grpc+http://host:80/path",
            "grpc+unix://relative/path",
            "grpc+unix://",
            "grpc+unix:///",
            "grpc+https://example.com",
            "grpc+https://example.com:443/path",
            "redis://localhost:6379",
            "redb://",
            "redb:///",
            "redb://relative/dir",
            "s3://bucket",
            "s3://bucket?index=postgres://db&credentials_file=/nonexistent/credentials",
        ];
        for url in rejected {
            let blob = blob_service_from_addr(url).err();
            let dir = directory_service_from_addr(url).err();
            assert!(
                matches!(blob, Some(Error::InvalidArgument(_))),
                "{url}: {blob:?}"
            );
            assert!(matches!(dir, Some(Error::InvalidArgument(_))), "{url}");
        }
    }
}
