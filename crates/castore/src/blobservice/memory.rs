//! [`MemoryBlobService`]: blobs in a hash map, for tests.

use std::collections::HashMap;
use std::io::Cursor;
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};
use std::time::Instant;

use async_trait::async_trait;
use bytes::Bytes;
use tokio::io::AsyncWrite;

use super::{BlobReader, BlobService, BlobWriter, ChunkMeta};
use crate::{B3Digest, Error};

/// Blob digest -> (bytes, when last written): the time is the grace period's
/// clock for [`crate::gc::MemoryCollector`].
pub(crate) type Map = Arc<RwLock<HashMap<B3Digest, (Bytes, Instant)>>>;

/// Keeps every blob in memory as one piece (no chunking).
#[derive(Clone, Default)]
pub struct MemoryBlobService {
    blobs: Map,
}

impl MemoryBlobService {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn get(&self, digest: &B3Digest) -> Result<Option<Bytes>, Error> {
        let map = self
            .blobs
            .read()
            .map_err(|_| Error::Storage("blob map lock poisoned".into()))?;
        Ok(map.get(digest).map(|(b, _)| b.clone()))
    }

    /// The map itself, for the collector.
    pub(crate) fn written(&self) -> Map {
        self.blobs.clone()
    }
}

#[async_trait]
impl BlobService for MemoryBlobService {
    async fn has(&self, digest: &B3Digest) -> Result<bool, Error> {
        Ok(self.get(digest)?.is_some())
    }

    async fn open_read(&self, digest: &B3Digest) -> Result<Option<Box<dyn BlobReader>>, Error> {
        Ok(self
            .get(digest)?
            .map(|b| Box::new(Cursor::new(b)) as Box<dyn BlobReader>))
    }

    async fn open_write(&self) -> Box<dyn BlobWriter> {
        Box::new(MemoryBlobWriter {
            blobs: self.blobs.clone(),
            buf: Some((Vec::new(), blake3::Hasher::new())),
        })
    }

    async fn chunks(&self, digest: &B3Digest) -> Result<Option<Vec<ChunkMeta>>, Error> {
        Ok(self.get(digest)?.map(|_| Vec::new()))
    }
}

struct MemoryBlobWriter {
    blobs: Map,
    /// `None` once closed.
    buf: Option<(Vec<u8>, blake3::Hasher)>,
}

fn closed() -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::BrokenPipe, "blob writer already closed")
}

impl AsyncWrite for MemoryBlobWriter {
    fn poll_write(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.buf.as_mut() {
            None => Poll::Ready(Err(closed())),
            Some((buf, hasher)) => {
                buf.extend_from_slice(data);
                hasher.update(data);
                Poll::Ready(Ok(data.len()))
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[async_trait]
impl BlobWriter for MemoryBlobWriter {
    async fn close(&mut self) -> Result<B3Digest, Error> {
        let (buf, hasher) = self.buf.take().ok_or_else(|| Error::Io(closed()))?;
        let digest = B3Digest::from(hasher.finalize());
        let mut map = self
            .blobs
            .write()
            .map_err(|_| Error::Storage("blob map lock poisoned".into()))?;
        // Written again: its grace period starts again.
        map.entry(digest)
            .and_modify(|e| e.1 = Instant::now())
            .or_insert_with(|| (Bytes::from(buf), Instant::now()));
        Ok(digest)
    }
}
