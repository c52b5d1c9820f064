//! [`GrpcPathInfoServer`]: the `tvix.store.v1.PathInfoService` gRPC service over any
//! [`PathInfoService`], and [`routes`] to serve it next to castore's services.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};

use cairn_castore::{BlobService, DirectoryService, Error, Node};
use futures::StreamExt;
use futures::future::BoxFuture;
use futures::stream::BoxStream;
use tonic::service::Routes;
use tonic::{Request, Response, Status};

use super::{PathInfo, PathInfoService};
use crate::proto;
use crate::proto::path_info_service_server::PathInfoServiceServer;

/// Computes a root node's NAR size and SHA-256; the default is
/// [`crate::nar::calculate`].
pub type NarCalculator = Arc<
    dyn Fn(
            Arc<dyn BlobService>,
            Arc<dyn DirectoryService>,
            Node,
        ) -> BoxFuture<'static, Result<(u64, [u8; 32]), Error>>
        + Send
        + Sync,
>;

/// How many CalculateNAR results the server remembers.
const NAR_CACHE_ENTRIES: usize = 4096;

/// Remembered CalculateNAR results, oldest evicted first.
#[derive(Default)]
struct NarCache {
    map: HashMap<Node, (u64, [u8; 32])>,
    order: VecDeque<Node>,
}

impl NarCache {
    fn get(&self, node: &Node) -> Option<(u64, [u8; 32])> {
        self.map.get(node).copied()
    }

    fn insert(&mut self, node: Node, value: (u64, [u8; 32])) {
        if self.map.insert(node.clone(), value).is_none() {
            self.order.push_back(node);
            while self.order.len() > NAR_CACHE_ENTRIES {
                if let Some(old) = self.order.pop_front() {
                    self.map.remove(&old);
                }
            }
        }
    }
}

/// Serves a [`PathInfoService`] (and CalculateNAR over the castore it checks content
/// against). Malformed requests are `INVALID_ARGUMENT` naming the field; absent
/// paths `NOT_FOUND`.
pub struct GrpcPathInfoServer {
    pathinfos: Arc<dyn PathInfoService>,
    blobs: Arc<dyn BlobService>,
    directories: Arc<dyn DirectoryService>,
    calculate: NarCalculator,
    cache: Mutex<NarCache>,
}

impl GrpcPathInfoServer {
    /// A server for `pathinfos`, computing NARs of content in `blobs`/`directories`.
    pub fn new(
        pathinfos: Arc<dyn PathInfoService>,
        blobs: Arc<dyn BlobService>,
        directories: Arc<dyn DirectoryService>,
    ) -> Self {
        Self::with_calculator(pathinfos, blobs, directories, Arc::new(default_calculator))
    }

    /// Like [`GrpcPathInfoServer::new`] with another NAR calculator (tests count
    /// calls through it).
    pub fn with_calculator(
        pathinfos: Arc<dyn PathInfoService>,
        blobs: Arc<dyn BlobService>,
        directories: Arc<dyn DirectoryService>,
        calculate: NarCalculator,
    ) -> Self {
        Self {
            pathinfos,
            blobs,
            directories,
            calculate,
            cache: Mutex::default(),
        }
    }
}

fn default_calculator(
    blobs: Arc<dyn BlobService>,
    directories: Arc<dyn DirectoryService>,
    node: Node,
) -> BoxFuture<'static, Result<(u64, [u8; 32]), Error>> {
    Box::pin(async move {
        crate::nar::calculate(blobs.as_ref(), directories.as_ref(), &node)
            .await
            .map_err(Error::from)
    })
}

impl GrpcPathInfoServer {
    /// The NAR size and SHA-256 of `node`: remembered in memory, or by the path
    /// info backend, or computed (reading and verifying every blob) and then
    /// remembered.
    async fn nar_of(&self, node: &Node) -> Result<(u64, [u8; 32]), Error> {
        let cached = self
            .cache
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(node);
        if let Some(v) = cached {
            return Ok(v);
        }
        let v = match self.pathinfos.cached_nar(node).await? {
            Some(v) => v,
            None => {
                let v =
                    (self.calculate)(self.blobs.clone(), self.directories.clone(), node.clone())
                        .await?;
                // The answer is right whether or not it could be kept.
                if let Err(e) = self.pathinfos.remember_nar(node, v).await {
                    tracing::warn!(error = %e, "cannot persist a CalculateNAR result");
                }
                v
            }
        };
        self.cache
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(node.clone(), v);
        Ok(v)
    }

    /// What an HTTP upload's narinfo is checked for, for a path info put over
    /// gRPC: every reference is registered (or is the path itself), and the NAR
    /// hash and size are those of the content (its NAR rendered, which also
    /// checks each file node's size against its blob).
    async fn check_put(&self, info: &PathInfo) -> Result<(), Status> {
        for (i, r) in info.references.iter().enumerate() {
            if *r != info.store_path && self.pathinfos.get(*r.digest()).await?.is_none() {
                return Err(invalid(format!(
                    "references[{i}]: {} is not registered here (put the path info of every reference first)",
                    r.to_absolute()
                )));
            }
        }
        let (nar_size, nar_sha256) = self.nar_of(&info.node).await.map_err(|e| match e.kind() {
            cairn_castore::ErrorKind::Internal => Status::from(e),
            _ => invalid(format!("node: its content does not render as a NAR: {e}")),
        })?;
        if nar_size != info.nar_size {
            return Err(invalid(format!(
                "narinfo.nar_size: {}, but the NAR of the node's content has {nar_size} bytes",
                info.nar_size
            )));
        }
        if nar_sha256 != info.nar_sha256 {
            return Err(invalid(format!(
                "narinfo.nar_sha256: {}, but the NAR of the node's content has {}",
                cairn_nix::hash::NixHash::Sha256(info.nar_sha256).to_nix32_prefixed(),
                cairn_nix::hash::NixHash::Sha256(nar_sha256).to_nix32_prefixed(),
            )));
        }
        Ok(())
    }
}

fn invalid(e: impl std::fmt::Display) -> Status {
    Status::invalid_argument(e.to_string())
}

#[tonic::async_trait]
impl proto::path_info_service_server::PathInfoService for GrpcPathInfoServer {
    async fn get(
        &self,
        request: Request<proto::GetPathInfoRequest>,
    ) -> Result<Response<proto::PathInfo>, Status> {
        let digest = match request.into_inner().by_what {
            None => return Err(invalid("by_what: missing")),
            Some(proto::get_path_info_request::ByWhat::ByOutputHash(d)) => {
                <[u8; 20]>::try_from(d.as_ref()).map_err(|_| {
                    invalid(format!("by_output_hash: {} bytes, expected 20", d.len()))
                })?
            }
        };
        match self.pathinfos.get(digest).await? {
            Some(info) => Ok(Response::new(proto::PathInfo::from(&info))),
            None => Err(Status::not_found(format!(
                "path info {} not found",
                cairn_nix::nixbase32::encode(&digest)
            ))),
        }
    }

    async fn put(
        &self,
        request: Request<proto::PathInfo>,
    ) -> Result<Response<proto::PathInfo>, Status> {
        let info = PathInfo::try_from(request.into_inner()).map_err(invalid)?;
        info.validate().map_err(invalid)?;
        super::check_content(&info, self.blobs.as_ref(), self.directories.as_ref()).await?;
        self.check_put(&info).await?;
        let stored = self.pathinfos.put(info).await?;
        Ok(Response::new(proto::PathInfo::from(&stored)))
    }

    async fn calculate_nar(
        &self,
        request: Request<cairn_castore::proto::Node>,
    ) -> Result<Response<proto::CalculateNarResponse>, Status> {
        // The name does not enter the NAR: accept empty (current clients) or any.
        let (_, node) = Node::try_from_proto_unnamed(request.into_inner())
            .map_err(|e| invalid(format!("node: {e}")))?;
        let (nar_size, nar_sha256) = self.nar_of(&node).await?;
        Ok(Response::new(proto::CalculateNarResponse {
            nar_size,
            nar_sha256: bytes::Bytes::copy_from_slice(&nar_sha256),
        }))
    }

    type ListStream = BoxStream<'static, Result<proto::PathInfo, Status>>;

    async fn list(
        &self,
        _request: Request<proto::ListPathInfoRequest>,
    ) -> Result<Response<Self::ListStream>, Status> {
        let stream = self.pathinfos.list().map(|r| {
            r.map(|info| proto::PathInfo::from(&info))
                .map_err(Status::from)
        });
        Ok(Response::new(Box::pin(stream)))
    }
}

/// castore's routes (blob and directory services, reflection describing all of
/// `tvix.castore.v1` and `tvix.store.v1`, health) plus the PathInfoService server,
/// reported SERVING: everything `cairn daemon` serves, in one call.
pub async fn routes(
    blobs: Arc<dyn BlobService>,
    directories: Arc<dyn DirectoryService>,
    pathinfos: Arc<dyn PathInfoService>,
) -> Result<(Routes, tonic_health::server::HealthReporter), Error> {
    let (routes, reporter) = cairn_castore::server::routes(
        blobs.clone(),
        directories.clone(),
        &[crate::proto::FILE_DESCRIPTOR_SET],
    )
    .await?;
    reporter
        .set_serving::<PathInfoServiceServer<GrpcPathInfoServer>>()
        .await;
    let server = PathInfoServiceServer::new(GrpcPathInfoServer::new(pathinfos, blobs, directories))
        .max_decoding_message_size(cairn_castore::MAX_DECODING_MESSAGE_SIZE);
    Ok((routes.add_service(server), reporter))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use bytes::Bytes;
    use cairn_castore::B3Digest;
    use cairn_castore::blobservice::MemoryBlobService;
    use cairn_castore::directoryservice::MemoryDirectoryService;

    use super::*;
    use crate::pathinfo::MemoryPathInfoService;
    use crate::proto::path_info_service_server::PathInfoService as _;

    /// CalculateNAR computes once per root node, whatever name the node comes with,
    /// and does not cache failures.
    #[tokio::test]
    async fn calculate_nar_is_cached_per_node() {
        let blobs: Arc<dyn BlobService> = Arc::new(MemoryBlobService::new());
        let dirs: Arc<dyn DirectoryService> = Arc::new(MemoryDirectoryService::new());
        let calls = Arc::new(AtomicUsize::new(0));
        let counter = calls.clone();
        let calculate: NarCalculator = Arc::new(move |_, _, node: Node| {
            counter.fetch_add(1, Ordering::SeqCst);
            Box::pin(async move {
                match node {
                    Node::File { size, .. } if size > 0 => Ok((size * 2, [size as u8; 32])),
                    _ => Err(Error::InvalidArgument("refused".into())),
                }
            })
        });
        let server = GrpcPathInfoServer::with_calculator(
            Arc::new(MemoryPathInfoService::new(blobs.clone(), dirs.clone())),
            blobs,
            dirs,
            calculate,
        );
        let file = |size: u64| Node::File {
            digest: B3Digest::of(b"x"),
            size,
            executable: false,
        };
        for (name, node, expected_calls) in [
            ("", file(7), 1),
            ("00bgd045z0d4icpbc2yyz4gx48ak44la-a", file(7), 1),
            ("other", file(7), 1),
            ("", file(8), 2),
            ("", file(7), 2),
        ] {
            let response = server
                .calculate_nar(Request::new(node.clone().into_proto(Bytes::from(name))))
                .await
                .unwrap()
                .into_inner();
            let Node::File { size, .. } = node else {
                unreachable!()
            };
            assert_eq!(response.nar_size, size * 2);
            assert_eq!(response.nar_sha256.as_ref(), &[size as u8; 32]);
            assert_eq!(
                calls.load(Ordering::SeqCst),
                expected_calls,
                "{name} {size}"
            );
        }
        for _ in 0..2 {
            let status = server
                .calculate_nar(Request::new(file(0).into_proto(Bytes::new())))
                .await
                .unwrap_err();
            assert_eq!(status.code(), tonic::Code::InvalidArgument);
        }
        assert_eq!(calls.load(Ordering::SeqCst), 4);
        let status = server
            .calculate_nar(Request::new(cairn_castore::proto::Node { node: None }))
            .await
            .unwrap_err();
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        assert!(status.message().starts_with("node"), "{}", status.message());
    }

    /// With the redb backend, a result survives a restart of the server.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn calculate_nar_persists_with_redb() {
        let tmp = tempfile::tempdir().unwrap();
        let blobs: Arc<dyn BlobService> = Arc::new(MemoryBlobService::new());
        let dirs: Arc<dyn DirectoryService> = Arc::new(MemoryDirectoryService::new());
        let node = Node::File {
            digest: B3Digest::of(b"z"),
            size: 3,
            executable: true,
        };
        let calls = Arc::new(AtomicUsize::new(0));
        let server = || {
            let counter = calls.clone();
            let calculate: NarCalculator = Arc::new(move |_, _, _| {
                counter.fetch_add(1, Ordering::SeqCst);
                Box::pin(async { Ok((1234, [42; 32])) })
            });
            let pathinfos =
                crate::pathinfo::RedbPathInfoService::open(tmp.path(), blobs.clone(), dirs.clone())
                    .unwrap();
            GrpcPathInfoServer::with_calculator(
                Arc::new(pathinfos),
                blobs.clone(),
                dirs.clone(),
                calculate,
            )
        };
        for round in 0..2 {
            let s = server();
            for name in ["", "x"] {
                let r = s
                    .calculate_nar(Request::new(node.clone().into_proto(Bytes::from(name))))
                    .await
                    .unwrap()
                    .into_inner();
                assert_eq!((r.nar_size, r.nar_sha256.as_ref()), (1234, &[42; 32][..]));
            }
            assert_eq!(calls.load(Ordering::SeqCst), 1, "round {round}");
        }
    }

    /// The cache stays bounded: the oldest entries go first.
    #[test]
    fn nar_cache_is_bounded() {
        let mut cache = NarCache::default();
        let node = |i: u64| Node::File {
            digest: B3Digest::of(b"y"),
            size: i,
            executable: false,
        };
        for i in 0..(NAR_CACHE_ENTRIES as u64 + 10) {
            cache.insert(node(i), (i, [0; 32]));
        }
        assert_eq!(cache.map.len(), NAR_CACHE_ENTRIES);
        assert_eq!(cache.order.len(), NAR_CACHE_ENTRIES);
        assert!(cache.get(&node(9)).is_none());
        assert_eq!(cache.get(&node(10)), Some((10, [0; 32])));
    }
}
