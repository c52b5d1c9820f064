//! [`BlobService`]: storage of blobs (file contents) by their BLAKE3 digest.

mod disk_cache;
mod grpc;
mod memory;
pub mod s3;
mod verify;

use std::io::SeekFrom;

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use tokio::io::{AsyncRead, AsyncSeek, AsyncSeekExt, AsyncWrite};
use tokio_util::io::ReaderStream;

pub use disk_cache::DiskChunkCache;
pub use grpc::GrpcBlobService;
pub use memory::MemoryBlobService;
pub use s3::{LateRoots, PgCollector, S3BlobService};

use crate::{B3Digest, Error};

/// One chunk of a blob stored in several chunks: its digest and length.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChunkMeta {
    /// BLAKE3 of the chunk's bytes; the chunk itself is readable as a blob by it.
    pub digest: B3Digest,
    /// Length of the chunk in bytes.
    pub size: u64,
}

/// A blob's contents, readable from any offset. Seeking does not read the skipped
/// bytes where the backend can avoid it (chunked blobs seek to the right chunk).
pub trait BlobReader: AsyncRead + AsyncSeek + Send + Unpin {}

impl<T: AsyncRead + AsyncSeek + Send + Unpin + ?Sized> BlobReader for T {}

/// A blob's bytes as a stream of pieces (see [`BlobService::open_read_stream`]).
pub type BlobStream = BoxStream<'static, std::io::Result<Bytes>>;

/// Size of the pieces [`BlobService::open_read_stream`] reads from a reader by default
/// (below glibc's mmap threshold, so a piece is not an mmap and munmap each).
const STREAM_PIECE: usize = 64 * 1024;

/// A blob being written. Nothing becomes visible until [`BlobWriter::close`] returns
/// its digest; a writer dropped before that leaves nothing behind.
#[async_trait]
pub trait BlobWriter: AsyncWrite + Send + Unpin {
    /// Finishes the blob and returns the BLAKE3 digest of everything written. After
    /// this the blob is readable; writing again or closing again is an error.
    async fn close(&mut self) -> Result<B3Digest, Error>;
}

/// Blob storage by BLAKE3 digest.
///
/// Contract for every backend (checked by `tests/conformance.rs`):
/// - An absent blob is `Ok(false)` / `Ok(None)`, never an error.
/// - Reads are verified: a reader never hands out bytes that do not belong to the
///   blob asked for; corruption is an `InvalidData` error, never a clean end of file.
/// - Writing the same content twice stores it once; concurrent writers of the same
///   content are safe.
/// - [`BlobService::chunks`] is `Some(vec![])` for a blob stored as one piece, and
///   otherwise lists the chunks in order; each chunk digest answers
///   [`BlobService::has`] and [`BlobService::open_read`] itself.
#[async_trait]
pub trait BlobService: Send + Sync {
    /// Whether the blob (or chunk) is stored.
    async fn has(&self, digest: &B3Digest) -> Result<bool, Error>;

    /// A reader for the blob (or chunk), or `None` if it is not stored.
    async fn open_read(&self, digest: &B3Digest) -> Result<Option<Box<dyn BlobReader>>, Error>;

    /// The blob's bytes from `offset` on as a stream of pieces, or `None` if it is
    /// not stored. The same guarantees as a reader's: every piece is verified before
    /// it is handed out, and corruption is an `InvalidData` error, never an early
    /// end. Backends that verify into buffers of their own hand the pieces out
    /// without a copy; by default they are read from [`BlobService::open_read`].
    async fn open_read_stream(
        &self,
        digest: &B3Digest,
        offset: u64,
    ) -> Result<Option<BlobStream>, Error> {
        let Some(mut reader) = self.open_read(digest).await? else {
            return Ok(None);
        };
        let seek = async move {
            if offset > 0 {
                reader.seek(SeekFrom::Start(offset)).await?;
            }
            Ok::<_, std::io::Error>(ReaderStream::with_capacity(reader, STREAM_PIECE))
        };
        Ok(Some(futures::stream::once(seek).try_flatten().boxed()))
    }

    /// A writer for a new blob.
    async fn open_write(&self) -> Box<dyn BlobWriter>;

    /// The blob's chunks (empty when stored as one piece), or `None` if it is not
    /// stored.
    async fn chunks(&self, digest: &B3Digest) -> Result<Option<Vec<ChunkMeta>>, Error>;

    /// What the backend counted of its own work since it was opened (requests
    /// to remote storage, local cache hits), for the daemon's metrics. None by
    /// default.
    fn counters(&self) -> Vec<BackendCounter> {
        Vec::new()
    }

    /// The most memory one of this backend's readers holds on its own whatever
    /// the blob's size (its read-ahead, network data it buffered, a chunk being
    /// checked), not counting the caller's buffers: what a caller that keeps
    /// many readers open (`cairn mount`) budgets for each. 8 MiB by default.
    fn reader_memory(&self) -> u64 {
        8 << 20
    }
}

/// A count a blob backend keeps of its own work ([`BlobService::counters`]),
/// served as a Prometheus counter `cairn_<name>_total`; counters of one name
/// with different labels form one family.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackendCounter {
    /// The metric's name, without the `cairn_` prefix and `_total` suffix.
    pub name: &'static str,
    /// The metric's help text (the same for every counter of a name).
    pub help: &'static str,
    /// The label telling this counter from the others of its name, if any.
    pub label: Option<(&'static str, &'static str)>,
    /// The count.
    pub value: u64,
}

#[async_trait]
impl<T: BlobService + ?Sized> BlobService for std::sync::Arc<T> {
    async fn has(&self, digest: &B3Digest) -> Result<bool, Error> {
        (**self).has(digest).await
    }
    async fn open_read(&self, digest: &B3Digest) -> Result<Option<Box<dyn BlobReader>>, Error> {
        (**self).open_read(digest).await
    }
    async fn open_read_stream(
        &self,
        digest: &B3Digest,
        offset: u64,
    ) -> Result<Option<BlobStream>, Error> {
        (**self).open_read_stream(digest, offset).await
    }
    async fn open_write(&self) -> Box<dyn BlobWriter> {
        (**self).open_write().await
    }
    async fn chunks(&self, digest: &B3Digest) -> Result<Option<Vec<ChunkMeta>>, Error> {
        (**self).chunks(digest).await
    }
    fn counters(&self) -> Vec<BackendCounter> {
        (**self).counters()
    }
    fn reader_memory(&self) -> u64 {
        (**self).reader_memory()
    }
}
