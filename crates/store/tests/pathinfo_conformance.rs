//! One suite of scenarios run against every PathInfoService backend: memory, redb
//! in a data directory (next to the embedded castore), PostgreSQL, and the gRPC client talking
//! to the gRPC server (memory-backed) over loopback TCP and over a unix socket.
//! Adding a backend is one `backend_suite!` line plus its constructor in `backends`.
//!
//! Malformed messages cannot be built as a [`PathInfo`]; for gRPC backends they are
//! sent raw with the generated client and must come back `INVALID_ARGUMENT` naming
//! the field, for in-process backends the conversion must fail naming it.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::sync::Arc;

use bytes::Bytes;
use cairn_castore::GrpcChannel as Channel;
use cairn_castore::{
    B3Digest, BlobService, Directory, DirectoryService, ErrorKind, Node, PathComponent,
    SymlinkTarget,
};
use cairn_nix::hash::NixHash;
use cairn_nix::narinfo::ContentAddress;
use cairn_nix::signature::Signature;
use cairn_nix::store_path::{FileIngestionMethod, StorePath};
use cairn_store::pathinfo::{PathInfo, PathInfoService, path_info_service_from_addr};
use cairn_store::proto;
use cairn_store::proto::path_info_service_client::PathInfoServiceClient;
use futures::TryStreamExt;
use tokio::io::AsyncWriteExt;

/// A backend under test; dropping it stops whatever serves it.
pub struct Backend {
    blobs: Arc<dyn BlobService>,
    dirs: Arc<dyn DirectoryService>,
    pathinfos: Arc<dyn PathInfoService>,
    /// The raw client, for gRPC backends.
    raw: Option<PathInfoServiceClient<Channel>>,
    _guard: Option<Box<dyn Send>>,
}

mod backends {
    use super::*;

    use cairn_testkit::loopback::{self, Server};

    pub fn local(url: &str, guard: Option<Box<dyn Send>>) -> Backend {
        local_with(url, url, guard)
    }

    /// Blobs from `blob_url`, directories and path infos from `url`.
    fn local_with(blob_url: &str, url: &str, guard: Option<Box<dyn Send>>) -> Backend {
        let blobs = cairn_castore::blob_service_from_addr(blob_url).unwrap();
        let dirs = cairn_castore::directory_service_from_addr(url).unwrap();
        let pathinfos = path_info_service_from_addr(url, blobs.clone(), dirs.clone()).unwrap();
        Backend {
            blobs,
            dirs,
            pathinfos,
            raw: None,
            _guard: guard,
        }
    }

    pub async fn memory() -> Backend {
        local("memory://", None)
    }

    pub async fn embedded() -> Backend {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("redb://{}", dir.path().join("data").display());
        local(&url, Some(Box::new(dir)))
    }

    /// Blobs in memory; directories and path infos in a fresh database of the
    /// test process's PostgreSQL server (cairn_testkit::postgres).
    pub async fn postgres() -> Backend {
        let url = cairn_testkit::postgres::server().database();
        local_with("memory://", &url, None)
    }

    async fn routes() -> tonic::service::Routes {
        let blobs = cairn_castore::blob_service_from_addr("memory://").unwrap();
        let dirs = cairn_castore::directory_service_from_addr("memory://").unwrap();
        let pathinfos =
            path_info_service_from_addr("memory://", blobs.clone(), dirs.clone()).unwrap();
        cairn_store::pathinfo::routes(blobs, dirs, pathinfos)
            .await
            .unwrap()
            .0
    }

    fn clients(server: Server) -> Backend {
        let url = &server.url;
        let blobs = cairn_castore::blob_service_from_addr(url).unwrap();
        let dirs = cairn_castore::directory_service_from_addr(url).unwrap();
        let pathinfos = path_info_service_from_addr(url, blobs.clone(), dirs.clone()).unwrap();
        let channel = cairn_castore::GrpcAddr::parse(url)
            .unwrap()
            .unwrap()
            .channel()
            .unwrap();
        Backend {
            blobs,
            dirs,
            pathinfos,
            raw: Some(PathInfoServiceClient::new(channel)),
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
            loopback::unix("store.sock", |incoming| {
                cairn_castore::server::serve(routes, incoming, std::future::pending())
            })
            .await,
        )
    }
}

fn digest(i: u32) -> [u8; 20] {
    let mut d = [0u8; 20];
    d[..4].copy_from_slice(&i.to_be_bytes());
    d[19] = 0xa5;
    d
}

fn path(i: u32, name: &str) -> StorePath {
    StorePath::new(digest(i), name).unwrap()
}

async fn put_blob(b: &Backend, content: &[u8]) -> B3Digest {
    let mut w = b.blobs.open_write().await;
    w.write_all(content).await.unwrap();
    w.close().await.unwrap()
}

/// A directory holding one file, stored; its root node.
async fn put_tree(b: &Backend, content: &[u8]) -> Node {
    let blob = put_blob(b, content).await;
    let mut dir = Directory::new();
    dir.add(
        PathComponent::try_from("file").unwrap(),
        Node::File {
            digest: blob,
            size: content.len() as u64,
            executable: false,
        },
    )
    .unwrap();
    let size = dir.size();
    let digest = b.dirs.put(dir).await.unwrap();
    Node::Directory { digest, size }
}

/// `info` with content address `ca`, under the store path that address gives
/// (as `validate` requires).
fn with_ca(mut info: PathInfo, ca: ContentAddress) -> PathInfo {
    let name = info.store_path.name().to_owned();
    info.store_path = match &ca {
        ContentAddress::Text { sha256 } => {
            cairn_nix::store_path::make_text_path(&name, sha256, &info.references)
        }
        ContentAddress::Fixed { method, hash } => cairn_nix::store_path::make_fixed_output_path(
            *method,
            hash,
            &name,
            &info.references,
            false,
        ),
    }
    .unwrap();
    info.ca = Some(ca);
    info
}

/// A path info with every optional field set (its store path is the one its
/// content address gives, not `path(i, ..)`).
fn full_info(i: u32, node: Node) -> PathInfo {
    let info = PathInfo {
        store_path: path(i, "full-1.0"),
        node,
        references: vec![path(1000 + i, "dep-b"), path(2000 + i, "dep-a")],
        nar_size: 1234,
        nar_sha256: [i as u8; 32],
        signatures: vec![Signature::new("cache.example.org-1", [7; 64]).unwrap()],
        deriver: Some(path(3000 + i, "full-1.0.drv")),
        ca: None,
    };
    with_ca(
        info,
        ContentAddress::Fixed {
            method: FileIngestionMethod::Recursive,
            hash: NixHash::Sha256([9; 32]),
        },
    )
}

/// `info` made acceptable to a gRPC server, which checks what the local
/// backends leave to their callers: its NAR size and hash are its content's
/// (computed by the NAR renderer, checked against Nix in other tests), and its
/// references are registered (as bare symlink paths, returned).
async fn prepared(b: &Backend, mut info: PathInfo) -> (PathInfo, Vec<PathInfo>) {
    let (size, sha256) = cairn_store::nar::calculate(&*b.blobs, &*b.dirs, &info.node)
        .await
        .unwrap();
    info.nar_size = size;
    info.nar_sha256 = sha256;
    let mut deps = Vec::new();
    for r in info.references.clone() {
        if r == info.store_path || b.pathinfos.get(*r.digest()).await.unwrap().is_some() {
            continue;
        }
        let (size, sha256) = cairn_store::nar::calculate(&*b.blobs, &*b.dirs, &symlink())
            .await
            .unwrap();
        let dep = PathInfo {
            store_path: r,
            node: symlink(),
            references: vec![],
            nar_size: size,
            nar_sha256: sha256,
            signatures: vec![],
            deriver: None,
            ca: None,
        };
        b.pathinfos.put(dep.clone()).await.unwrap();
        deps.push(dep);
    }
    (info, deps)
}

/// A path info with every optional field empty.
fn bare_info(i: u32, node: Node) -> PathInfo {
    PathInfo {
        store_path: path(i, "bare"),
        node,
        references: vec![],
        nar_size: 120,
        nar_sha256: [1; 32],
        signatures: vec![],
        deriver: None,
        ca: None,
    }
}

fn symlink() -> Node {
    Node::Symlink {
        target: SymlinkTarget::try_from(&b"/somewhere/else"[..]).unwrap(),
    }
}

mod scenarios {
    use super::*;

    pub async fn get_absent(b: &Backend) {
        assert!(b.pathinfos.get(digest(77)).await.unwrap().is_none());
    }

    pub async fn put_get_each_root_kind(b: &Backend) {
        let tree = put_tree(b, b"hello").await;
        let blob = put_blob(b, b"a flat file").await;
        let file = Node::File {
            digest: blob,
            size: 11,
            executable: true,
        };
        let infos = [
            full_info(1, tree),
            bare_info(2, file),
            full_info(3, symlink()),
        ];
        for info in infos {
            let (info, _) = prepared(b, info).await;
            let stored = b.pathinfos.put(info.clone()).await.unwrap();
            assert_eq!(stored, info);
            let got = b.pathinfos.get(*info.store_path.digest()).await.unwrap();
            assert_eq!(got, Some(info));
        }
    }

    pub async fn put_every_ca_kind(b: &Backend) {
        use FileIngestionMethod::{Flat, Recursive};
        let cas = [
            ContentAddress::Text { sha256: [3; 32] },
            ContentAddress::Fixed {
                method: Flat,
                hash: NixHash::Md5([1; 16]),
            },
            ContentAddress::Fixed {
                method: Flat,
                hash: NixHash::Sha1([1; 20]),
            },
            ContentAddress::Fixed {
                method: Flat,
                hash: NixHash::Sha256([1; 32]),
            },
            ContentAddress::Fixed {
                method: Flat,
                hash: NixHash::Sha512([1; 64]),
            },
            ContentAddress::Fixed {
                method: Recursive,
                hash: NixHash::Md5([2; 16]),
            },
            ContentAddress::Fixed {
                method: Recursive,
                hash: NixHash::Sha1([2; 20]),
            },
            ContentAddress::Fixed {
                method: Recursive,
                hash: NixHash::Sha256([2; 32]),
            },
            ContentAddress::Fixed {
                method: Recursive,
                hash: NixHash::Sha512([2; 64]),
            },
        ];
        for (i, ca) in cas.into_iter().enumerate() {
            let (info, _) = prepared(b, with_ca(bare_info(100 + i as u32, symlink()), ca)).await;
            b.pathinfos.put(info.clone()).await.unwrap();
            let got = b.pathinfos.get(*info.store_path.digest()).await.unwrap();
            assert_eq!(got, Some(info));
        }
    }

    pub async fn put_replaces(b: &Backend) {
        let (first, _) = prepared(b, bare_info(5, symlink())).await;
        b.pathinfos.put(first.clone()).await.unwrap();
        let mut second = first.clone();
        second.signatures = vec![Signature::new("other-1", [3; 64]).unwrap()];
        b.pathinfos.put(second.clone()).await.unwrap();
        assert_eq!(b.pathinfos.get(digest(5)).await.unwrap(), Some(second));
        assert_eq!(
            b.pathinfos
                .list()
                .try_collect::<Vec<_>>()
                .await
                .unwrap()
                .len(),
            1
        );
    }

    pub async fn put_missing_content_rejected(b: &Backend) {
        let absent_dir = Node::Directory {
            digest: B3Digest::of(b"no such directory"),
            size: 1,
        };
        let absent_blob = Node::File {
            digest: B3Digest::of(b"no such blob"),
            size: 12,
            executable: false,
        };
        for (node, what) in [(absent_dir, "directory"), (absent_blob, "blob")] {
            let info = bare_info(9, node);
            let err = b.pathinfos.put(info).await.unwrap_err();
            assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{err}");
            assert!(err.to_string().contains(what), "{err}");
            assert!(b.pathinfos.get(digest(9)).await.unwrap().is_none());
        }
        // A directory whose child file is missing cannot be stored at all, so a
        // stored root directory always has its closure.
        let mut dir = Directory::new();
        dir.add(
            PathComponent::try_from("sub").unwrap(),
            Node::Directory {
                digest: B3Digest::of(b"missing child"),
                size: 0,
            },
        )
        .unwrap();
        assert!(b.dirs.put(dir).await.is_err());
    }

    pub async fn malformed_rejected(b: &Backend) {
        let valid = proto::PathInfo::from(&full_info(1, symlink()));
        let mut cases: Vec<(&str, proto::PathInfo)> = Vec::new();
        let mut case = |label: &'static str, f: &dyn Fn(&mut proto::PathInfo)| {
            let mut p = valid.clone();
            f(&mut p);
            cases.push((label, p));
        };
        let set_name = |p: &mut proto::PathInfo, name: &'static [u8]| {
            if let Some(cairn_castore::proto::node::Node::Symlink(s)) =
                p.node.as_mut().unwrap().node.as_mut()
            {
                s.name = Bytes::from_static(name);
            }
        };
        case("node", &|p| p.node = None);
        case("node", &|p| {
            p.node = Some(cairn_castore::proto::Node { node: None })
        });
        case("node", &|p| {
            p.node = Some(cairn_castore::proto::Node {
                node: Some(cairn_castore::proto::node::Node::File(
                    cairn_castore::proto::FileNode {
                        name: Bytes::from_static(b"00000000000000000000000000000000-x"),
                        digest: Bytes::from_static(b"short"),
                        size: 1,
                        executable: false,
                    },
                )),
            })
        });
        case("node.name", &|p| set_name(p, b""));
        case("node.name", &|p| set_name(p, b"hello"));
        case("node.name", &|p| {
            set_name(p, b"00000000000000000000000000000000-")
        });
        case("node.name", &|p| {
            set_name(p, b"e0000000000000000000000000000000-x")
        });
        case("node.name", &|p| {
            set_name(p, b"00000000000000000000000000000000-a/b")
        });
        case("references[1]", &|p| {
            p.references[1] = Bytes::from_static(&[0; 19])
        });
        case("references[0]", &|p| {
            p.references[0] = Bytes::from_static(&[0; 32])
        });
        case("narinfo", &|p| p.narinfo = None);
        case("narinfo.reference_names", &|p| {
            narinfo(p).reference_names.pop();
        });
        case("narinfo.reference_names", &|p| {
            p.references.pop();
        });
        case("narinfo.reference_names[0]", &|p| {
            narinfo(p).reference_names[0] = "not-a-path".into()
        });
        case("narinfo.reference_names[1]", &|p| {
            // A valid basename, but of another digest than references[1].
            let other = narinfo(p).reference_names[0].clone();
            narinfo(p).reference_names[1] = other;
        });
        case("narinfo.nar_sha256", &|p| {
            narinfo(p).nar_sha256 = Bytes::from_static(&[0; 31])
        });
        case("narinfo.nar_sha256", &|p| {
            narinfo(p).nar_sha256 = Bytes::new()
        });
        case("narinfo.nar_size", &|p| narinfo(p).nar_size = 0);
        case("narinfo.signatures[0]", &|p| {
            narinfo(p).signatures[0].data = Bytes::from_static(&[0; 63])
        });
        case("narinfo.signatures[0]", &|p| {
            narinfo(p).signatures[0].name = String::new()
        });
        case("narinfo.signatures[0]", &|p| {
            narinfo(p).signatures[0].name = "has:colon".into()
        });
        case("narinfo.deriver", &|p| {
            narinfo(p).deriver.as_mut().unwrap().digest = Bytes::from_static(&[0; 21])
        });
        case("narinfo.deriver", &|p| {
            narinfo(p).deriver.as_mut().unwrap().name = String::new()
        });
        case("narinfo.deriver", &|p| {
            narinfo(p).deriver.as_mut().unwrap().name = "bad name".into()
        });
        case("narinfo.ca.type", &|p| {
            narinfo(p).ca.as_mut().unwrap().r#type = 9
        });
        case("narinfo.ca.type", &|p| {
            narinfo(p).ca.as_mut().unwrap().r#type = -1
        });
        case("narinfo.ca.digest", &|p| {
            narinfo(p).ca.as_mut().unwrap().digest = Bytes::from_static(&[0; 20])
        });
        case("narinfo.ca.digest", &|p| {
            // TEXT_SHA256 with an MD5-sized digest.
            let ca = narinfo(p).ca.as_mut().unwrap();
            ca.r#type = 4;
            ca.digest = Bytes::from_static(&[0; 16]);
        });
        case("narinfo.ca.digest", &|p| {
            // FLAT_SHA512 with a SHA-256-sized digest.
            narinfo(p).ca.as_mut().unwrap().r#type = 8;
        });

        assert!(PathInfo::try_from(valid.clone()).is_ok());
        for (field, p) in cases {
            match &b.raw {
                None => {
                    let err = PathInfo::try_from(p.clone()).unwrap_err();
                    assert!(err.to_string().starts_with(field), "{field}: {err}");
                }
                Some(client) => {
                    let status = client.clone().put(p.clone()).await.unwrap_err();
                    assert_eq!(
                        status.code(),
                        tonic::Code::InvalidArgument,
                        "{field}: {status:?}"
                    );
                    assert!(
                        status.message().starts_with(field),
                        "{field}: {}",
                        status.message()
                    );
                }
            }
        }
        // Nothing was stored.
        assert!(
            b.pathinfos
                .list()
                .try_collect::<Vec<_>>()
                .await
                .unwrap()
                .is_empty()
        );
    }

    /// A `PathInfo` built field by field, invalid in a way its types allow, is
    /// refused by `put` itself (for the gRPC client: by the server).
    pub async fn put_invalid_struct_rejected(b: &Backend) {
        let info = PathInfo {
            nar_size: 0,
            ..bare_info(6, symlink())
        };
        let err = b.pathinfos.put(info).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{err}");
        assert!(err.to_string().contains("narinfo.nar_size: 0"), "{err}");
        assert!(b.pathinfos.get(digest(6)).await.unwrap().is_none());
    }

    /// What tvix-store and Nix 2.8 accept is stored as given: references repeated
    /// and out of order (Nix keeps a set; `pathinfo_nix` checks its views), an
    /// all-zero NAR hash, a NAR size that is not 0 (the only size rule Nix has).
    /// A gRPC server checks the NAR hash and size against the content, so those
    /// two only locally.
    pub async fn put_accepts_what_nix_accepts(b: &Backend) {
        let mut info = full_info(7, symlink());
        info.references = vec![
            path(2007, "dep-a"),
            path(1007, "dep-b"),
            path(2007, "dep-a"),
        ];
        let ca = info.ca.clone().unwrap();
        let (mut info, _) = prepared(b, with_ca(info, ca)).await;
        let digest = *info.store_path.digest();
        if b.raw.is_none() {
            info.nar_sha256 = [0; 32];
            info.nar_size = 1;
        }
        assert_eq!(b.pathinfos.put(info.clone()).await.unwrap(), info);
        assert_eq!(b.pathinfos.get(digest).await.unwrap(), Some(info.clone()));
        if let Some(client) = &b.raw {
            let sent = proto::PathInfo::from(&info);
            let got = client.clone().put(sent.clone()).await.unwrap().into_inner();
            assert_eq!(got, sent);
        }
    }

    /// A content address must give the store path (every backend), and a root
    /// directory's size must be one of its two sizes; a gRPC server also checks
    /// the NAR hash and size against the content (which checks every file node's
    /// size against its blob) and that every reference is registered. Each
    /// refusal is INVALID_ARGUMENT naming the field, and registers nothing.
    pub async fn put_checked_against_content(b: &Backend) {
        let tree = put_tree(b, b"checked").await;
        let (good, _) = prepared(b, full_info(40, tree.clone())).await;
        let refuse = |info: PathInfo, field: &'static str| async move {
            let err = b.pathinfos.put(info.clone()).await.unwrap_err();
            assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{field}: {err}");
            assert!(err.to_string().contains(field), "{field}: {err}");
            assert!(
                b.pathinfos
                    .get(*info.store_path.digest())
                    .await
                    .unwrap()
                    .is_none()
            );
        };
        let mut other_path = good.clone();
        other_path.store_path = path(40, "full-1.0");
        refuse(other_path, "narinfo.ca").await;
        let mut wrong_ca = good.clone();
        wrong_ca.ca = Some(ContentAddress::Fixed {
            method: FileIngestionMethod::Flat,
            hash: NixHash::Sha256([9; 32]),
        });
        refuse(wrong_ca, "narinfo.ca").await;
        let Node::Directory { digest, size } = tree else {
            unreachable!()
        };
        let mut wrong_root_size = good.clone();
        wrong_root_size.node = Node::Directory {
            digest,
            size: size + 5,
        };
        refuse(wrong_root_size, "node: size").await;
        if b.raw.is_some() {
            let mut wrong_hash = good.clone();
            wrong_hash.nar_sha256[0] ^= 1;
            refuse(wrong_hash, "narinfo.nar_sha256").await;
            let mut wrong_size = good.clone();
            wrong_size.nar_size += 1;
            refuse(wrong_size, "narinfo.nar_size").await;
            let mut absent_ref = good.clone();
            absent_ref.references = vec![path(4040, "nowhere")];
            let absent_ref = with_ca(absent_ref, good.ca.clone().unwrap());
            refuse(absent_ref, "references[0]").await;
            // A file node claiming another size than its blob's.
            let blob = put_blob(b, b"twelve bytes").await;
            let (file, _) = prepared(
                b,
                bare_info(
                    41,
                    Node::File {
                        digest: blob,
                        size: 12,
                        executable: false,
                    },
                ),
            )
            .await;
            let mut wrong_file = file.clone();
            wrong_file.node = Node::File {
                digest: blob,
                size: 13,
                executable: false,
            };
            refuse(wrong_file, "node").await;
            b.pathinfos.put(file).await.unwrap();
        }
        b.pathinfos.put(good).await.unwrap();
    }

    /// Puts in flight at once (grouped into shared commits by the redb backend) all
    /// succeed and are all stored; one that fails does not fail the others.
    pub async fn concurrent_puts_all_stored(b: &Backend) {
        let mut infos = Vec::new();
        for i in 0..64 {
            infos.push(prepared(b, full_info(500 + i, symlink())).await.0);
        }
        let missing = bare_info(
            499,
            Node::File {
                digest: B3Digest::of(b"not stored"),
                size: 10,
                executable: false,
            },
        );
        let puts = infos.iter().cloned().map(|info| {
            let svc = b.pathinfos.clone();
            tokio::spawn(async move { svc.put(info).await })
        });
        let bad = {
            let svc = b.pathinfos.clone();
            tokio::spawn(async move { svc.put(missing).await })
        };
        for (put, info) in futures::future::join_all(puts)
            .await
            .into_iter()
            .zip(&infos)
        {
            assert_eq!(&put.unwrap().unwrap(), info);
        }
        assert!(bad.await.unwrap().is_err());
        for info in &infos {
            let got = b.pathinfos.get(*info.store_path.digest()).await.unwrap();
            assert_eq!(got.as_ref(), Some(info));
        }
        let listed: Vec<PathInfo> = b.pathinfos.list().try_collect().await.unwrap();
        // And the two references of each.
        assert_eq!(listed.len(), 64 * 3);
    }

    pub async fn get_malformed_request_rejected(b: &Backend) {
        let Some(client) = &b.raw else { return };
        use proto::get_path_info_request::ByWhat;
        for by_what in [
            None,
            Some(ByWhat::ByOutputHash(Bytes::new())),
            Some(ByWhat::ByOutputHash(Bytes::from_static(&[0; 19]))),
            Some(ByWhat::ByOutputHash(Bytes::from_static(&[0; 32]))),
        ] {
            let status = client
                .clone()
                .get(proto::GetPathInfoRequest {
                    by_what: by_what.clone(),
                })
                .await
                .unwrap_err();
            assert_eq!(status.code(), tonic::Code::InvalidArgument, "{by_what:?}");
        }
        let status = client
            .clone()
            .get(proto::GetPathInfoRequest {
                by_what: Some(ByWhat::ByOutputHash(Bytes::copy_from_slice(&digest(4242)))),
            })
            .await
            .unwrap_err();
        assert_eq!(status.code(), tonic::Code::NotFound);
    }

    /// `referrers` of a path: the stored entries referring to it (itself
    /// when it refers to itself), following puts that replace an entry.
    pub async fn referrers_follow_puts_and_replaces(b: &Backend) {
        let (a, c) = (path(10, "a"), path(11, "c"));
        let mut x = bare_info(20, symlink());
        x.references = vec![a.clone(), c.clone(), x.store_path.clone()];
        let mut y = bare_info(21, symlink());
        y.references = vec![a.clone()];
        let (x, _) = prepared(b, x).await;
        let (y, _) = prepared(b, y).await;
        b.pathinfos.put(x.clone()).await.unwrap();
        b.pathinfos.put(y.clone()).await.unwrap();
        let (xs, ys) = (x.store_path.to_string(), y.store_path.to_string());
        assert_eq!(referrers(b, &a).await, [xs.clone(), ys.clone()].into());
        assert_eq!(referrers(b, &c).await, [xs.clone()].into());
        assert_eq!(referrers(b, &x.store_path).await, [xs.clone()].into());
        assert_eq!(referrers(b, &y.store_path).await, BTreeSet::new());
        assert_eq!(referrers(b, &path(99, "absent")).await, BTreeSet::new());
        let mut x2 = x.clone();
        x2.references = vec![c.clone()];
        b.pathinfos.put(x2).await.unwrap();
        assert_eq!(referrers(b, &a).await, [ys.clone()].into());
        assert_eq!(referrers(b, &c).await, [xs.clone()].into());
        assert_eq!(referrers(b, &x.store_path).await, BTreeSet::new());
    }

    pub async fn list_many(b: &Backend) {
        assert!(
            b.pathinfos
                .list()
                .try_collect::<Vec<_>>()
                .await
                .unwrap()
                .is_empty()
        );
        let mut expected = BTreeSet::new();
        for i in 0..700 {
            let info = if i % 2 == 0 {
                full_info(i, symlink())
            } else {
                bare_info(i, symlink())
            };
            let (info, deps) = prepared(b, info).await;
            b.pathinfos.put(info.clone()).await.unwrap();
            for p in deps.iter().chain([&info]) {
                expected.insert(proto::PathInfo::from(p).encode_to_vec_sorted());
            }
        }
        let listed: Vec<PathInfo> = b.pathinfos.list().try_collect().await.unwrap();
        assert_eq!(listed.len(), 700 + 2 * 350);
        let got: BTreeSet<Vec<u8>> = listed
            .iter()
            .map(|i| proto::PathInfo::from(i).encode_to_vec_sorted())
            .collect();
        assert_eq!(got, expected);
    }
}

/// The referrers of `p`, as strings.
async fn referrers(b: &Backend, p: &StorePath) -> BTreeSet<String> {
    let found = b.pathinfos.referrers(*p.digest()).await.unwrap();
    let set: BTreeSet<String> = found.iter().map(|p| p.to_string()).collect();
    assert_eq!(set.len(), found.len(), "each referrer once: {found:?}");
    set
}

fn narinfo(p: &mut proto::PathInfo) -> &mut proto::NarInfo {
    p.narinfo.as_mut().unwrap()
}

/// Encodings compare equal exactly when the messages are equal (prost encodes in
/// field order), which gives a set of `PathInfo`s without an `Ord` on them.
trait EncodeSorted {
    fn encode_to_vec_sorted(&self) -> Vec<u8>;
}
impl EncodeSorted for proto::PathInfo {
    fn encode_to_vec_sorted(&self) -> Vec<u8> {
        prost::Message::encode_to_vec(self)
    }
}

/// The redb backend keeps what was put across a reopen of its data directory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_persists_across_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("redb://{}", dir.path().join("data").display());
    let info = {
        let b = backends::local(&url, None);
        let tree = put_tree(&b, b"persistent").await;
        let info = full_info(1, tree);
        b.pathinfos.put(info.clone()).await.unwrap();
        b.pathinfos.put(bare_info(2, symlink())).await.unwrap();
        // Concurrent puts (one group commit or a few): all durable once returned.
        let puts = (100..150).map(|i| b.pathinfos.put(bare_info(i, symlink())));
        for put in futures::future::join_all(puts).await {
            put.unwrap();
        }
        info
    };
    // Everything was dropped: the files can be opened again (the lock is released).
    let blobs = cairn_castore::blob_service_from_addr(&url).unwrap();
    let dirs = cairn_castore::directory_service_from_addr(&url).unwrap();
    let pathinfos = path_info_service_from_addr(&url, blobs, dirs).unwrap();
    assert_eq!(
        pathinfos.get(*info.store_path.digest()).await.unwrap(),
        Some(info)
    );
    assert_eq!(
        pathinfos
            .list()
            .try_collect::<Vec<_>>()
            .await
            .unwrap()
            .len(),
        52
    );
    assert_eq!(
        pathinfos.get(digest(149)).await.unwrap(),
        Some(bare_info(149, symlink()))
    );
    assert!(dir.path().join("data/pathinfo.redb").exists());
}

/// The redb backend's referrers index: rows go with deleted entries, and a
/// file from before the index gets it built when it opens.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_referrers_index_deletes_and_builds() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("redb://{}", dir.path().join("data").display());
    let open = || backends::local(&url, None);
    let a = path(10, "a");
    let (x, y) = {
        let b = open();
        let mut x = bare_info(20, symlink());
        x.references = vec![a.clone()];
        let mut y = bare_info(21, symlink());
        y.references = vec![a.clone()];
        let (x, _) = prepared(&b, x).await;
        let (y, _) = prepared(&b, y).await;
        b.pathinfos.put(x.clone()).await.unwrap();
        b.pathinfos.put(y.clone()).await.unwrap();
        b.pathinfos.delete(&[digest(20)]).await.unwrap();
        assert_eq!(referrers(&b, &a).await, [y.store_path.to_string()].into());
        // Put again without the reference: nothing of the deleted entry's
        // index rows is left to name it.
        let mut unrelated = x.clone();
        unrelated.references = vec![];
        b.pathinfos.put(unrelated).await.unwrap();
        assert_eq!(referrers(&b, &a).await, [y.store_path.to_string()].into());
        (x, y)
    };
    // The index dropped, as in a file written before it existed.
    {
        let db = redb::Database::open(dir.path().join("data/pathinfo.redb")).unwrap();
        let txn = db.begin_write().unwrap();
        let index: redb::TableDefinition<&[u8; 40], ()> = redb::TableDefinition::new("referrers");
        assert!(txn.delete_table(index).unwrap());
        txn.commit().unwrap();
    }
    let b = open();
    assert_eq!(referrers(&b, &a).await, [y.store_path.to_string()].into());
    b.pathinfos.put(x.clone()).await.unwrap();
    assert_eq!(
        referrers(&b, &a).await,
        [x.store_path.to_string(), y.store_path.to_string()].into()
    );
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
            one_test!($make, get_absent);
            one_test!($make, put_get_each_root_kind);
            one_test!($make, put_every_ca_kind);
            one_test!($make, put_replaces);
            one_test!($make, put_missing_content_rejected);
            one_test!($make, malformed_rejected);
            one_test!($make, put_invalid_struct_rejected);
            one_test!($make, concurrent_puts_all_stored);
            one_test!($make, put_accepts_what_nix_accepts);
            one_test!($make, put_checked_against_content);
            one_test!($make, get_malformed_request_rejected);
            one_test!($make, list_many);
            one_test!($make, referrers_follow_puts_and_replaces);
        }
    };
}

backend_suite!(memory, crate::backends::memory);
backend_suite!(embedded, crate::backends::embedded);
backend_suite!(grpc_tcp, crate::backends::grpc_tcp);
backend_suite!(grpc_unix, crate::backends::grpc_unix);
backend_suite!(postgres, crate::backends::postgres);
