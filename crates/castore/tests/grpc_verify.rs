//! The gRPC blob client verifies what a server sends: a server whose backend hands
//! out wrong bytes makes the read fail with `InvalidData` instead of returning them
//! as a clean end of file.
#![allow(clippy::unwrap_used)]

use std::io::Cursor;
use std::sync::Arc;

use async_trait::async_trait;
use cairn_castore::blobservice::MemoryBlobService;
use cairn_castore::directoryservice::MemoryDirectoryService;
use cairn_castore::{B3Digest, BlobReader, BlobService, BlobWriter, ChunkMeta, Error};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Stores like memory but reads back every blob with its first byte flipped.
struct Lying(MemoryBlobService);

#[async_trait]
impl BlobService for Lying {
    async fn has(&self, digest: &B3Digest) -> Result<bool, Error> {
        self.0.has(digest).await
    }
    async fn open_read(&self, digest: &B3Digest) -> Result<Option<Box<dyn BlobReader>>, Error> {
        let Some(mut r) = self.0.open_read(digest).await? else {
            return Ok(None);
        };
        let mut data = Vec::new();
        r.read_to_end(&mut data).await?;
        data[0] ^= 1;
        Ok(Some(Box::new(Cursor::new(data))))
    }
    async fn open_write(&self) -> Box<dyn BlobWriter> {
        self.0.open_write().await
    }
    async fn chunks(&self, digest: &B3Digest) -> Result<Option<Vec<ChunkMeta>>, Error> {
        self.0.chunks(digest).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_data_from_the_server_is_an_error() {
    let (routes, _) = cairn_castore::server::routes(
        Arc::new(Lying(MemoryBlobService::new())),
        Arc::new(MemoryDirectoryService::new()),
        &[],
    )
    .await
    .unwrap();
    let server = cairn_testkit::loopback::tcp(|incoming| {
        cairn_castore::server::serve(routes, incoming, std::future::pending())
    })
    .await;
    let blobs = cairn_castore::blob_service_from_addr(&server.url).unwrap();

    let content = vec![7u8; 3 << 20];
    let mut w = blobs.open_write().await;
    w.write_all(&content).await.unwrap();
    let digest = w.close().await.unwrap();
    assert_eq!(digest, B3Digest::from(*blake3::hash(&content).as_bytes()));

    let mut r = blobs.open_read(&digest).await.unwrap().unwrap();
    let mut out = Vec::new();
    let err = r.read_to_end(&mut out).await.unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidData, "{err}");
}
