//! The DirectoryService server.

use std::sync::Arc;

use futures::StreamExt;
use futures::stream::BoxStream;
use tonic::{Request, Response, Status, Streaming};

use crate::proto::directory_service_server::DirectoryService as GrpcDirectoryService;
use crate::proto::get_directory_request::ByWhat;
use crate::{B3Digest, Directory, DirectoryService, Error, proto};

/// Serves a [`DirectoryService`] as `tvix.castore.v1.DirectoryService`.
#[derive(Clone)]
pub struct GrpcDirectoryServer {
    directories: Arc<dyn DirectoryService>,
}

impl GrpcDirectoryServer {
    /// Serves `directories`.
    pub fn new(directories: Arc<dyn DirectoryService>) -> Self {
        Self { directories }
    }
}

#[tonic::async_trait]
impl GrpcDirectoryService for GrpcDirectoryServer {
    type GetStream = BoxStream<'static, Result<proto::Directory, Status>>;

    async fn get(
        &self,
        request: Request<proto::GetDirectoryRequest>,
    ) -> Result<Response<Self::GetStream>, Status> {
        let request = request.into_inner();
        let Some(ByWhat::Digest(digest)) = request.by_what else {
            return Err(Status::invalid_argument("by_what: no digest given"));
        };
        let digest = B3Digest::try_from(&digest).map_err(Error::from)?;
        if !request.recursive {
            return match self.directories.get(&digest).await? {
                Some(dir) => Ok(Response::new(
                    futures::stream::once(async move { Ok(dir.to_proto()) }).boxed(),
                )),
                None => Err(Error::NotFound {
                    what: "directory",
                    digest,
                }
                .into()),
            };
        }
        // An absent root is an empty stream with status OK: what tvix's server
        // answers, and its client reads a NOT_FOUND here as a failure rather than
        // as "absent".
        let mut stream =
            crate::directoryservice::get_recursive_owned(self.directories.clone(), digest);
        let first = match stream.next().await {
            Some(Err(Error::NotFound { digest: d, .. })) if d == digest => {
                return Ok(Response::new(futures::stream::empty().boxed()));
            }
            Some(first) => first?,
            None => return Ok(Response::new(futures::stream::empty().boxed())),
        };
        let rest = stream.map(|d| d.map(|d| d.to_proto()).map_err(Status::from));
        Ok(Response::new(
            futures::stream::once(async move { Ok(first.to_proto()) })
                .chain(rest)
                .boxed(),
        ))
    }

    async fn put(
        &self,
        request: Request<Streaming<proto::Directory>>,
    ) -> Result<Response<proto::PutDirectoryResponse>, Status> {
        let mut stream = request.into_inner();
        let mut putter = self.directories.put_multiple_start();
        let mut index = 0usize;
        // Any error returns early and drops the putter, which discards the closure.
        while let Some(message) = stream.next().await {
            let dir = Directory::try_from(message?)
                .map_err(|source| Error::InvalidDirectory { index, source })?;
            putter.put(dir).await?;
            index += 1;
        }
        let root = putter.close().await?;
        Ok(Response::new(proto::PutDirectoryResponse {
            root_digest: root.to_bytes(),
        }))
    }
}
