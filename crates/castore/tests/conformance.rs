//! One suite of scenarios (every trait method, every rejection) run against every
//! backend: memory, the embedded store, PostgreSQL (directories), S3 blobs with their index in PostgreSQL, and the gRPC clients talking to the gRPC server (memory-backed)
//! over loopback TCP and over a unix socket. Adding a backend is one
//! `backend_suite!` line plus its constructor in `backends`.
#![allow(clippy::unwrap_used)]

use std::io::SeekFrom;
use std::sync::Arc;

use cairn_castore::{
    B3Digest, BlobService, Directory, DirectoryService, ErrorKind, Node, PathComponent,
    SymlinkTarget,
};
use futures::TryStreamExt;
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};

/// A backend under test; dropping it stops whatever serves it.
pub struct Backend {
    /// The blob service under test.
    pub blobs: Arc<dyn BlobService>,
    /// The directory service under test.
    pub dirs: Arc<dyn DirectoryService>,
    /// The server's address when the services are gRPC clients of a server.
    pub url: Option<String>,
    _guard: Option<Box<dyn Send>>,
}

mod backends {
    use super::*;
    use cairn_castore::blobservice::MemoryBlobService;
    use cairn_castore::directoryservice::MemoryDirectoryService;
    use cairn_testkit::loopback::{self, Server};

    pub async fn embedded() -> Backend {
        let dir = tempfile::tempdir().unwrap();
        let store = cairn_castore::embedded::EmbeddedStore::open(dir.path()).unwrap();
        Backend {
            blobs: Arc::new(store.clone()),
            dirs: Arc::new(store),
            url: None,
            _guard: Some(Box::new(dir)),
        }
    }

    pub async fn memory() -> Backend {
        Backend {
            blobs: Arc::new(MemoryBlobService::new()),
            dirs: Arc::new(MemoryDirectoryService::new()),
            url: None,
            _guard: None,
        }
    }

    /// Blobs in memory, directories in a fresh database of the test process's
    /// PostgreSQL server (cairn_testkit::postgres).
    pub async fn postgres() -> Backend {
        let url = cairn_testkit::postgres::server().database();
        Backend {
            blobs: Arc::new(MemoryBlobService::new()),
            dirs: cairn_castore::directory_service_from_addr(&url).unwrap(),
            url: None,
            _guard: None,
        }
    }

    /// Blobs in a fresh bucket of the test process's s3s-fs (cairn_testkit::s3)
    /// with their index in a fresh PostgreSQL database; directories in another.
    pub async fn s3() -> Backend {
        let index = cairn_testkit::postgres::server().database();
        let url = cairn_testkit::s3::server().blob_url(&index);
        Backend {
            blobs: cairn_castore::blob_service_from_addr(&url).unwrap(),
            dirs: cairn_castore::directory_service_from_addr(&index).unwrap(),
            url: None,
            _guard: None,
        }
    }

    async fn routes() -> tonic::service::Routes {
        cairn_castore::server::routes(
            Arc::new(MemoryBlobService::new()),
            Arc::new(MemoryDirectoryService::new()),
            &[],
        )
        .await
        .unwrap()
        .0
    }

    fn clients(server: Server) -> Backend {
        Backend {
            blobs: cairn_castore::blob_service_from_addr(&server.url).unwrap(),
            dirs: cairn_castore::directory_service_from_addr(&server.url).unwrap(),
            url: Some(server.url.clone()),
            _guard: Some(Box::new(server)),
        }
    }

    pub async fn grpc_tcp() -> Backend {
        let routes = routes().await;
        clients(
            loopback::tcp(|incoming| {
                cairn_castore::server::serve(routes, incoming, std::future::pending())
            })
            .await,
        )
    }

    pub async fn grpc_unix() -> Backend {
        let routes = routes().await;
        clients(
            loopback::unix("castore.sock", |incoming| {
                cairn_castore::server::serve(routes, incoming, std::future::pending())
            })
            .await,
        )
    }
}

use cairn_testkit::data::pseudo_random as data;

fn b3(bytes: &[u8]) -> B3Digest {
    B3Digest::from(*blake3::hash(bytes).as_bytes())
}

fn name(n: &str) -> PathComponent {
    PathComponent::try_from(n).unwrap()
}

async fn put_blob(b: &Backend, content: &[u8]) -> B3Digest {
    let mut w = b.blobs.open_write().await;
    // Odd piece sizes, to cross every internal boundary.
    for piece in content.chunks(100_003) {
        w.write_all(piece).await.unwrap();
    }
    w.close().await.unwrap()
}

/// A channel to a gRPC backend's server, for calls below the client.
fn channel_of(b: &Backend) -> cairn_castore::GrpcChannel {
    let url = b.url.as_ref().expect("a gRPC backend");
    cairn_castore::GrpcAddr::parse(url)
        .unwrap()
        .unwrap()
        .channel()
        .unwrap()
}

async fn read_all(b: &Backend, digest: &B3Digest) -> Vec<u8> {
    let mut r = b.blobs.open_read(digest).await.unwrap().unwrap();
    let mut out = Vec::new();
    r.read_to_end(&mut out).await.unwrap();
    out
}

mod scenarios {
    use super::*;

    pub async fn blob_absent(b: &Backend) {
        let d = b3(b"not there");
        assert!(!b.blobs.has(&d).await.unwrap());
        assert!(b.blobs.open_read(&d).await.unwrap().is_none());
        assert!(b.blobs.chunks(&d).await.unwrap().is_none());
    }

    pub async fn blob_roundtrip(b: &Backend) {
        let d = put_blob(b, b"hello world").await;
        assert_eq!(d, b3(b"hello world"));
        assert!(b.blobs.has(&d).await.unwrap());
        assert_eq!(read_all(b, &d).await, b"hello world");
        assert_eq!(b.blobs.chunks(&d).await.unwrap(), Some(vec![]));
    }

    pub async fn blob_empty(b: &Backend) {
        let d = put_blob(b, b"").await;
        assert_eq!(
            d.to_string(),
            "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262"
        );
        assert!(b.blobs.has(&d).await.unwrap());
        assert_eq!(read_all(b, &d).await, b"");
    }

    pub async fn blob_large_seek_and_chunks(b: &Backend) {
        let content = data(5 << 20, 1);
        let d = put_blob(b, &content).await;
        assert_eq!(d, b3(&content));
        assert_eq!(read_all(b, &d).await, content);

        let mut r = b.blobs.open_read(&d).await.unwrap().unwrap();
        assert_eq!(r.seek(SeekFrom::Start(3_000_000)).await.unwrap(), 3_000_000);
        let mut buf = vec![0; 5000];
        r.read_exact(&mut buf).await.unwrap();
        assert_eq!(buf, content[3_000_000..3_005_000]);
        assert_eq!(r.seek(SeekFrom::Current(-10_000)).await.unwrap(), 2_995_000);
        r.read_exact(&mut buf).await.unwrap();
        assert_eq!(buf, content[2_995_000..3_000_000]);
        r.seek(SeekFrom::Start(content.len() as u64 - 10))
            .await
            .unwrap();
        let mut tail = Vec::new();
        r.read_to_end(&mut tail).await.unwrap();
        assert_eq!(tail, content[content.len() - 10..]);

        // Chunks, if any, are readable by their own digests and make up the blob.
        let chunks = b.blobs.chunks(&d).await.unwrap().unwrap();
        let mut joined = Vec::new();
        for c in &chunks {
            assert!(b.blobs.has(&c.digest).await.unwrap());
            let bytes = read_all(b, &c.digest).await;
            assert_eq!(bytes.len() as u64, c.size);
            assert_eq!(b3(&bytes), c.digest);
            joined.extend_from_slice(&bytes);
        }
        if !chunks.is_empty() {
            assert_eq!(joined, content);
        }
    }

    pub async fn blob_written_twice_and_concurrently(b: &Backend) {
        let content = data(300_000, 2);
        // Several at once, so that backends which group commits get the same
        // blob more than once in one group.
        let all = futures::future::join_all((0..8).map(|_| put_blob(b, &content))).await;
        let d1 = all[0];
        assert!(all.iter().all(|d| *d == d1), "{all:?}");
        assert_eq!(put_blob(b, &content).await, d1);
        assert_eq!(read_all(b, &d1).await, content);
    }

    pub async fn blob_dropped_writer_leaves_nothing(b: &Backend) {
        let content = data(2_000_000, 3);
        let mut w = b.blobs.open_write().await;
        w.write_all(&content).await.unwrap();
        drop(w);
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        let visible = b.blobs.has(&b3(&content)).await.unwrap();
        assert!(!visible, "a dropped writer's blob became visible");
    }

    /// A client that resets its upload with `RST_STREAM(CANCEL)` (what tonic and
    /// hyper clients do when a call is dropped; tonic's server decoder takes it for
    /// the end of the stream) gets nothing stored. For gRPC backends.
    pub async fn blob_cancelled_upload_leaves_nothing(b: &Backend) {
        use cairn_castore::proto::{BlobChunk, blob_service_client::BlobServiceClient};
        let channel = channel_of(b);
        let content = data(2_000_000, 4);
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let mut request = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(rx));
        let cancel = request.cancellation_handle();
        let call = tokio::spawn(async move { BlobServiceClient::new(channel).put(request).await });
        for piece in content.chunks(1 << 20) {
            tx.send(BlobChunk {
                data: piece.to_vec().into(),
            })
            .await
            .unwrap();
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        cancel.cancel();
        let answer = call.await.unwrap();
        assert!(
            answer.is_err(),
            "a cancelled upload was answered {answer:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        assert!(
            !b.blobs.has(&b3(&content)).await.unwrap(),
            "a cancelled upload became visible"
        );
        drop(tx);
    }

    /// What tvix's client expects of Get for an absent directory: recursive, an
    /// empty stream with status OK; non-recursive, NOT_FOUND.
    pub async fn dir_absent_answers_as_tvix(b: &Backend) {
        use cairn_castore::proto::{
            GetDirectoryRequest, directory_service_client::DirectoryServiceClient,
            get_directory_request::ByWhat,
        };
        let channel = channel_of(b);
        let mut client = DirectoryServiceClient::new(channel);
        let request = |recursive| GetDirectoryRequest {
            by_what: Some(ByWhat::Digest(b3(b"absent").to_bytes())),
            recursive,
        };
        let mut stream = client.get(request(true)).await.unwrap().into_inner();
        assert_eq!(stream.message().await.unwrap(), None);
        let status = client.get(request(false)).await.unwrap_err();
        assert_eq!(status.code(), tonic::Code::NotFound, "{status:?}");
    }

    pub async fn blob_closed_writer_refuses_more(b: &Backend) {
        let mut w = b.blobs.open_write().await;
        w.write_all(b"x").await.unwrap();
        w.close().await.unwrap();
        assert!(w.close().await.is_err());
        assert!(w.write_all(b"y").await.is_err());
    }

    fn leaf() -> Directory {
        let mut d = Directory::new();
        d.add(
            name("file"),
            Node::File {
                digest: b3(b"hello world"),
                size: 11,
                executable: true,
            },
        )
        .unwrap();
        d
    }

    fn parent_of(children: &[(&str, &Directory, u64)]) -> Directory {
        let mut d = Directory::new();
        for (n, child, size) in children {
            d.add(
                name(n),
                Node::Directory {
                    digest: child.digest(),
                    size: *size,
                },
            )
            .unwrap();
        }
        d
    }

    /// Puts `closure` (leaves first) through one putter; the root digest.
    async fn put_closure(b: &Backend, closure: &[Directory]) -> B3Digest {
        let mut p = b.dirs.put_multiple_start();
        for d in closure {
            p.put(d.clone()).await.unwrap();
        }
        p.close().await.unwrap()
    }

    async fn closure_of(b: &Backend, root: &B3Digest) -> Vec<Directory> {
        b.dirs.get_recursive(root).try_collect().await.unwrap()
    }

    pub async fn dir_absent(b: &Backend) {
        let d = b3(b"no dir");
        assert!(b.dirs.get(&d).await.unwrap().is_none());
        let err = b
            .dirs
            .get_recursive(&d)
            .try_collect::<Vec<_>>()
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::NotFound, "{err}");
    }

    pub async fn dir_put_get(b: &Backend) {
        let leaf = leaf();
        let digest = b.dirs.put(leaf.clone()).await.unwrap();
        assert_eq!(digest, leaf.digest());
        assert_eq!(b.dirs.get(&digest).await.unwrap(), Some(leaf.clone()));
        let empty = b.dirs.put(Directory::new()).await.unwrap();
        assert_eq!(
            empty.to_string(),
            "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262"
        );
        // A parent of stored children can be put alone.
        let parent = parent_of(&[("a", &leaf, 2), ("e", &Directory::new(), 0)]);
        assert_eq!(b.dirs.put(parent.clone()).await.unwrap(), parent.digest());
        // tvix's rule: 2 x two entries plus the leaf's 2.
        assert_eq!(parent.size(), 6);
    }

    pub async fn dir_closure_recursive(b: &Backend) {
        let leaf = leaf();
        let mut mid = parent_of(&[("leaf", &leaf, 2)]);
        mid.add(
            name("link"),
            Node::Symlink {
                target: SymlinkTarget::try_from("../x").unwrap(),
            },
        )
        .unwrap();
        // leaf is reachable twice: directly and through mid.
        let root = parent_of(&[("again", &leaf, 2), ("mid", &mid, 6)]);
        let closure = [leaf.clone(), mid.clone(), root.clone()];
        assert_eq!(put_closure(b, &closure).await, root.digest());
        let got = closure_of(b, &root.digest()).await;
        // Root first, breadth-first, each digest once.
        assert_eq!(got, vec![root.clone(), leaf.clone(), mid.clone()]);
        assert_eq!(b.dirs.get(&mid.digest()).await.unwrap(), Some(mid));
    }

    async fn rejected_closure(b: &Backend, closure: Vec<Directory>) -> cairn_castore::Error {
        let mut p = b.dirs.put_multiple_start();
        let mut result = Ok(());
        for d in &closure {
            result = p.put(d.clone()).await;
            if result.is_err() {
                break;
            }
        }
        let err = match result {
            Err(e) => e,
            Ok(()) => p.close().await.unwrap_err(),
        };
        assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{err}");
        drop(p);
        for d in &closure {
            assert!(
                b.dirs.get(&d.digest()).await.unwrap().is_none(),
                "{d:?} visible"
            );
        }
        err
    }

    pub async fn dir_unknown_reference_rejects_all(b: &Backend) {
        let mut sub = Directory::new();
        sub.add(
            name("x"),
            Node::Symlink {
                target: SymlinkTarget::try_from("y").unwrap(),
            },
        )
        .unwrap();
        let unknown = parent_of(&[("never-sent", &sub, 2)]);
        rejected_closure(b, vec![leaf(), unknown]).await;
    }

    pub async fn dir_wrong_size_rejects_all(b: &Backend) {
        let leaf = leaf();
        // tvix's rule: 2; the proto comment's: 1; anything else is wrong.
        for size in [0, 3, 7] {
            let err =
                rejected_closure(b, vec![leaf.clone(), parent_of(&[("l", &leaf, size)])]).await;
            assert!(
                err.to_string()
                    .contains(&format!("has size {size}, expected 2")),
                "{err}"
            );
        }
    }

    pub async fn dir_empty_closure_rejected(b: &Backend) {
        let mut p = b.dirs.put_multiple_start();
        let err = p.close().await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{err}");
    }

    /// A closure with sizes by either rule, even mixed, is stored as sent and
    /// served back unchanged under the client's own digests.
    pub async fn dir_either_size_rule_stored_as_sent(b: &Backend) {
        let leaf = leaf();
        // The proto comment's rule throughout: mid has 1 entry + leaf's 1.
        let proto_mid = parent_of(&[("l", &leaf, 1)]);
        let proto_root = parent_of(&[("m", &proto_mid, 2)]);
        // tvix's rule throughout: mid has 2 x 1 + leaf's 2.
        let tvix_mid = parent_of(&[("l", &leaf, 2)]);
        let tvix_root = parent_of(&[("m", &tvix_mid, 4)]);
        // Mixed edges: proto_mid by tvix's rule (2 x 1 + its recorded 1), tvix_mid
        // by the proto comment's (1 + its recorded 2).
        let mixed_root = parent_of(&[("a", &proto_mid, 3), ("b", &tvix_mid, 3)]);
        for (mid, root) in [
            (vec![proto_mid.clone()], &proto_root),
            (vec![tvix_mid.clone()], &tvix_root),
            (vec![proto_mid.clone(), tvix_mid.clone()], &mixed_root),
        ] {
            let mut closure = vec![leaf.clone()];
            closure.extend(mid.iter().cloned());
            closure.push(root.clone());
            assert_eq!(put_closure(b, &closure).await, root.digest());
            let got = closure_of(b, &root.digest()).await;
            let mut want = vec![root.clone()];
            want.extend(mid);
            want.push(leaf.clone());
            assert_eq!(got, want);
            for d in &got {
                assert_eq!(
                    b.dirs.get(&d.digest()).await.unwrap().map(|d| d.encode()),
                    Some(d.encode())
                );
            }
        }
    }

    pub async fn dir_either_size_of_stored_child(b: &Backend) {
        let leaf = leaf();
        let mid = parent_of(&[("l", &leaf, 2)]);
        put_closure(b, &[leaf.clone(), mid.clone()]).await;
        // The stored mid by tvix's rule (4) and by the proto comment's (3).
        let root = parent_of(&[("m", &mid, 4), ("n", &mid, 3)]);
        assert_eq!(b.dirs.put(root.clone()).await.unwrap(), root.digest());
        assert_eq!(b.dirs.get(&root.digest()).await.unwrap(), Some(root));
        // 2 is neither.
        let err = b.dirs.put(parent_of(&[("m", &mid, 2)])).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{err}");
    }

    /// A directory the root does not reach is refused (naming it) and nothing
    /// of the closure is stored; a reference to a stored directory is fine.
    pub async fn dir_unreachable_rejected(b: &Backend) {
        let leaf = leaf();
        let stray = parent_of(&[("l", &leaf, 2)]);
        let root = parent_of(&[("x", &leaf, 2)]);
        let err = rejected_closure(b, vec![leaf.clone(), stray.clone(), root.clone()]).await;
        let msg = err.to_string();
        assert!(msg.contains(&stray.digest().to_string()), "{msg}");
        assert!(msg.contains("not reachable"), "{msg}");
        // The root sent first and again last does not make the rest reachable.
        rejected_closure(b, vec![leaf.clone(), stray.clone(), leaf.clone()]).await;

        b.dirs.put(leaf.clone()).await.unwrap();
        assert_eq!(b.dirs.put(root.clone()).await.unwrap(), root.digest());
    }

    pub async fn dir_dropped_putter_leaves_nothing(b: &Backend) {
        let leaf = leaf();
        let mut p = b.dirs.put_multiple_start();
        p.put(leaf.clone()).await.unwrap();
        drop(p);
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        let visible = b.dirs.get(&leaf.digest()).await.unwrap().is_some();
        assert!(!visible, "a dropped putter's directory became visible");
    }
}

macro_rules! one_test {
    ($make:path, $scenario:ident) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $scenario() {
            let backend = $make().await;
            scenarios::$scenario(&backend).await;
        }
    };
}

macro_rules! backend_suite {
    ($name:ident, $make:path) => {
        mod $name {
            use super::*;
            one_test!($make, blob_absent);
            one_test!($make, blob_roundtrip);
            one_test!($make, blob_empty);
            one_test!($make, blob_large_seek_and_chunks);
            one_test!($make, blob_written_twice_and_concurrently);
            one_test!($make, blob_dropped_writer_leaves_nothing);
            one_test!($make, blob_closed_writer_refuses_more);
            one_test!($make, dir_absent);
            one_test!($make, dir_put_get);
            one_test!($make, dir_closure_recursive);
            one_test!($make, dir_unknown_reference_rejects_all);
            one_test!($make, dir_wrong_size_rejects_all);
            one_test!($make, dir_empty_closure_rejected);
            one_test!($make, dir_either_size_rule_stored_as_sent);
            one_test!($make, dir_either_size_of_stored_child);
            one_test!($make, dir_unreachable_rejected);
            one_test!($make, dir_dropped_putter_leaves_nothing);
        }
    };
}

backend_suite!(memory, crate::backends::memory);
backend_suite!(embedded, crate::backends::embedded);
backend_suite!(grpc_tcp, crate::backends::grpc_tcp);
backend_suite!(grpc_unix, crate::backends::grpc_unix);
backend_suite!(postgres, crate::backends::postgres);
backend_suite!(s3, crate::backends::s3);

/// Scenarios of a client talking to the server directly, for gRPC backends only.
macro_rules! server_suite {
    ($name:ident, $make:path) => {
        mod $name {
            use super::*;
            one_test!($make, blob_cancelled_upload_leaves_nothing);
            one_test!($make, dir_absent_answers_as_tvix);
        }
    };
}

server_suite!(grpc_tcp_server, crate::backends::grpc_tcp);
server_suite!(grpc_unix_server, crate::backends::grpc_unix);
