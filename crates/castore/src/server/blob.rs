//! The BlobService server.

use std::sync::Arc;

use futures::StreamExt;
use futures::stream::BoxStream;
use tokio::io::AsyncWriteExt;
use tokio_util::io::ReaderStream;
use tonic::{Request, Response, Status, Streaming};

use super::MAX_BLOB_MESSAGE;
use crate::proto::blob_service_server::BlobService as GrpcBlobService;
use crate::{B3Digest, BlobService, Error, proto};

/// Serves a [`BlobService`] as `tvix.castore.v1.BlobService`.
#[derive(Clone)]
pub struct GrpcBlobServer {
    blobs: Arc<dyn BlobService>,
}

impl GrpcBlobServer {
    /// Serves `blobs`.
    pub fn new(blobs: Arc<dyn BlobService>) -> Self {
        Self { blobs }
    }
}

fn not_found(digest: B3Digest) -> Status {
    Error::NotFound {
        what: "blob",
        digest,
    }
    .into()
}

#[tonic::async_trait]
impl GrpcBlobService for GrpcBlobServer {
    async fn stat(
        &self,
        request: Request<proto::StatBlobRequest>,
    ) -> Result<Response<proto::StatBlobResponse>, Status> {
        let request = request.into_inner();
        let digest = B3Digest::try_from(&request.digest).map_err(Error::from)?;
        // The chunk list doubles as the existence check; without it, `has` is an
        // index lookup where the chunk list means reading every segment of a
        // large blob.
        let chunks = if request.send_chunks {
            let Some(chunks) = self.blobs.chunks(&digest).await? else {
                return Err(not_found(digest));
            };
            chunks
                .into_iter()
                .map(|c| proto::stat_blob_response::ChunkMeta {
                    digest: c.digest.to_bytes(),
                    size: c.size,
                })
                .collect()
        } else if self.blobs.has(&digest).await? {
            Vec::new()
        } else {
            return Err(not_found(digest));
        };
        // No bao outboard is kept; WIRE.md sends it only "when available".
        Ok(Response::new(proto::StatBlobResponse {
            chunks,
            bao: Default::default(),
        }))
    }

    type ReadStream = BoxStream<'static, Result<proto::BlobChunk, Status>>;

    async fn read(
        &self,
        request: Request<proto::ReadBlobRequest>,
    ) -> Result<Response<Self::ReadStream>, Status> {
        let digest = B3Digest::try_from(&request.into_inner().digest).map_err(Error::from)?;
        let Some(reader) = self.blobs.open_read(&digest).await? else {
            return Err(not_found(digest));
        };
        let stream = ReaderStream::with_capacity(reader, MAX_BLOB_MESSAGE).map(|piece| {
            piece
                .map(|data| proto::BlobChunk { data })
                .map_err(|e| Status::from(Error::Io(e)))
        });
        Ok(Response::new(stream.boxed()))
    }

    async fn put(
        &self,
        request: Request<Streaming<proto::BlobChunk>>,
    ) -> Result<Response<proto::PutBlobResponse>, Status> {
        let mut stream = request.into_inner();
        let mut writer = self.blobs.open_write().await;
        // Any stream error (a cancelled or broken upload) returns early and drops the
        // writer, which discards everything received.
        while let Some(piece) = stream.next().await {
            let piece = piece?;
            writer.write_all(&piece.data).await.map_err(Error::Io)?;
        }
        let digest = writer.close().await?;
        Ok(Response::new(proto::PutBlobResponse {
            digest: digest.to_bytes(),
        }))
    }
}
