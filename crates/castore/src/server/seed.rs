//! The seed's `tvix.store.v1.BlobService` and `tvix.store.v1.DirectoryService`
//! (WIRE.md, "the seed's package names"), served by the current servers: their
//! messages are the current ones on the wire, except Stat's reply.

use tonic::{Request, Response, Status, Streaming};

use super::{GrpcBlobServer, GrpcDirectoryServer};
use crate::proto;
use crate::proto::blob_service_server::BlobService as _;
use crate::proto::directory_service_server::DirectoryService as _;
use crate::proto::seed;

/// `tvix.store.v1.BlobService` over a [`GrpcBlobServer`].
pub struct SeedBlobServer(pub GrpcBlobServer);

/// `tvix.store.v1.DirectoryService` over a [`GrpcDirectoryServer`].
pub struct SeedDirectoryServer(pub GrpcDirectoryServer);

#[tonic::async_trait]
impl seed::blob_service_server::BlobService for SeedBlobServer {
    async fn stat(
        &self,
        request: Request<proto::StatBlobRequest>,
    ) -> Result<Response<seed::BlobMeta>, Status> {
        let reply = self.0.stat(request).await?.into_inner();
        Ok(Response::new(seed::BlobMeta {
            chunks: reply
                .chunks
                .into_iter()
                .map(|c| seed::blob_meta::ChunkMeta {
                    digest: c.digest,
                    // Chunks are at most 256 KiB; the seed's field is a uint32.
                    size: u32::try_from(c.size).unwrap_or(u32::MAX),
                })
                .collect(),
            inline_bao: reply.bao,
        }))
    }

    type ReadStream = <GrpcBlobServer as proto::blob_service_server::BlobService>::ReadStream;

    async fn read(
        &self,
        request: Request<proto::ReadBlobRequest>,
    ) -> Result<Response<Self::ReadStream>, Status> {
        self.0.read(request).await
    }

    async fn put(
        &self,
        request: Request<Streaming<proto::BlobChunk>>,
    ) -> Result<Response<proto::PutBlobResponse>, Status> {
        self.0.put(request).await
    }
}

#[tonic::async_trait]
impl seed::directory_service_server::DirectoryService for SeedDirectoryServer {
    type GetStream =
        <GrpcDirectoryServer as proto::directory_service_server::DirectoryService>::GetStream;

    async fn get(
        &self,
        request: Request<proto::GetDirectoryRequest>,
    ) -> Result<Response<Self::GetStream>, Status> {
        self.0.get(request).await
    }

    async fn put(
        &self,
        request: Request<Streaming<proto::Directory>>,
    ) -> Result<Response<proto::PutDirectoryResponse>, Status> {
        self.0.put(request).await
    }
}
