//! A client that behaves as tvix-store's does, talking raw gRPC to cairn's server:
//! it encodes every `Directory` itself (hand-written protobuf encoding, sizes by
//! tvix's rule: 2 x direct entries + the child sizes), uploads blobs and then the
//! closure, and from then on uses its own digests only: every directory must come
//! back by them, byte for byte, and a PathInfo naming its own root digest must be
//! accepted. The same for a closure with sizes by the proto comment's rule.
//!
//! Nothing expected here comes from cairn's own model: digests are BLAKE3 of the
//! bytes this file encodes, and the NAR hash and store path come from the real Nix
//! (`nix-store --dump` and `--add` into a chroot store).
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use bytes::Bytes;
use cairn_castore::GrpcChannel as Channel;
use cairn_castore::proto as cproto;
use cairn_castore::proto::blob_service_client::BlobServiceClient;
use cairn_castore::proto::directory_service_client::DirectoryServiceClient;
use cairn_store::proto as sproto;
use cairn_store::proto::path_info_service_client::PathInfoServiceClient;
use cairn_testkit::pb::{ld, uint};
use prost::Message;
use sha2::Digest;

/// A tree as the client knows it.
enum Entry {
    File(Vec<u8>, bool),
    Link(Vec<u8>),
    Dir(BTreeMap<Vec<u8>, Entry>),
}

/// Which size rule the client follows.
#[derive(Clone, Copy)]
enum Rule {
    Tvix,
    ProtoComment,
}

/// An encoded directory with its digest.
struct Encoded {
    bytes: Vec<u8>,
    digest: [u8; 32],
}

/// Encodes the directory `entries` and, before it, every directory below it
/// (post-order: leaves first) into `closure`; collects file contents in `blobs`.
fn encode(
    entries: &BTreeMap<Vec<u8>, Entry>,
    rule: Rule,
    closure: &mut Vec<Encoded>,
    blobs: &mut Vec<Vec<u8>>,
) -> ([u8; 32], u64) {
    let (mut dirs, mut files, mut links) = (Vec::new(), Vec::new(), Vec::new());
    let mut child_sizes = 0;
    for (name, entry) in entries {
        let mut node = Vec::new();
        ld(1, name, &mut node);
        match entry {
            Entry::Dir(sub) => {
                let (digest, size) = encode(sub, rule, closure, blobs);
                ld(2, &digest, &mut node);
                uint(3, size, &mut node);
                child_sizes += size;
                ld(1, &node, &mut dirs);
            }
            Entry::File(content, executable) => {
                ld(2, blake3::hash(content).as_bytes(), &mut node);
                uint(3, content.len() as u64, &mut node);
                uint(4, u64::from(*executable), &mut node);
                blobs.push(content.clone());
                ld(2, &node, &mut files);
            }
            Entry::Link(target) => {
                ld(2, target, &mut node);
                ld(3, &node, &mut links);
            }
        }
    }
    let mut bytes = dirs;
    bytes.extend(files);
    bytes.extend(links);
    let n = entries.len() as u64;
    let size = match rule {
        Rule::Tvix => 2 * n + child_sizes,
        Rule::ProtoComment => n + child_sizes,
    };
    let digest = *blake3::hash(&bytes).as_bytes();
    closure.push(Encoded { bytes, digest });
    (digest, size)
}

/// A generated nested tree (deterministic), with duplicate subtrees, empty
/// directories, empty and executable files and symlinks.
fn generated(seed: u64, depth: u32) -> BTreeMap<Vec<u8>, Entry> {
    let mut state = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    let mut next = || {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        state >> 33
    };
    let mut out = BTreeMap::new();
    for i in 0..(next() % 6 + 1) {
        let content = format!("file {seed} {i} {}", next()).repeat((next() % 50) as usize);
        out.insert(
            format!("f{i}").into_bytes(),
            Entry::File(content.into_bytes(), next() % 3 == 0),
        );
    }
    out.insert(b"link".to_vec(), Entry::Link(b"../f0".to_vec()));
    out.insert(b"empty".to_vec(), Entry::Dir(BTreeMap::new()));
    if depth > 0 {
        for i in 0..(next() % 3 + 1) {
            out.insert(
                format!("d{i}").into_bytes(),
                Entry::Dir(generated(seed * 7 + i, depth - 1)),
            );
        }
        // The same subtree twice.
        out.insert(b"same-a".to_vec(), Entry::Dir(generated(99, depth - 1)));
        out.insert(b"same-b".to_vec(), Entry::Dir(generated(99, depth - 1)));
    }
    out
}

/// WIRE.md's `t1`, whose root tvix computes as the digest and size listed there.
fn wire_t1() -> BTreeMap<Vec<u8>, Entry> {
    let mut sub = BTreeMap::new();
    sub.insert(b"b".to_vec(), Entry::File(b"world\n".to_vec(), false));
    BTreeMap::from([
        (b"a".to_vec(), Entry::File(b"hello\n".to_vec(), false)),
        (b"link".to_vec(), Entry::Link(b"a".to_vec())),
        (b"sub".to_vec(), Entry::Dir(sub)),
    ])
}

fn write_tree(entries: &BTreeMap<Vec<u8>, Entry>, at: &Path) {
    use std::os::unix::ffi::OsStrExt;
    std::fs::create_dir(at).unwrap();
    for (name, entry) in entries {
        let path = at.join(std::ffi::OsStr::from_bytes(name));
        match entry {
            Entry::Dir(sub) => write_tree(sub, &path),
            Entry::File(content, executable) => {
                std::fs::write(&path, content).unwrap();
                let mode = if *executable { 0o755 } else { 0o644 };
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
            }
            Entry::Link(target) => {
                std::os::unix::fs::symlink(std::ffi::OsStr::from_bytes(target), &path).unwrap()
            }
        }
    }
}

async fn server() -> (cairn_testkit::loopback::Server, Channel) {
    let blobs = cairn_castore::blob_service_from_addr("memory://").unwrap();
    let dirs = cairn_castore::directory_service_from_addr("memory://").unwrap();
    let pathinfos = cairn_store::pathinfo::path_info_service_from_addr(
        "memory://",
        blobs.clone(),
        dirs.clone(),
    )
    .unwrap();
    let routes = cairn_store::pathinfo::routes(blobs, dirs, pathinfos)
        .await
        .unwrap()
        .0;
    let server = cairn_testkit::loopback::tcp(|incoming| {
        cairn_castore::server::serve(routes, incoming, std::future::pending())
    })
    .await;
    let channel = cairn_castore::GrpcAddr::parse(&server.url)
        .unwrap()
        .unwrap()
        .channel()
        .unwrap();
    (server, channel)
}

/// Uploads `tree` as tvix-store does and checks that the server serves it back
/// under the client's digests; returns the root's digest and size.
async fn upload_and_check(
    channel: &Channel,
    tree: &BTreeMap<Vec<u8>, Entry>,
    rule: Rule,
) -> ([u8; 32], u64) {
    let mut closure = Vec::new();
    let mut blobs = Vec::new();
    let (root, size) = encode(tree, rule, &mut closure, &mut blobs);

    let mut blob_client = BlobServiceClient::new(channel.clone());
    for content in blobs {
        let digest = *blake3::hash(&content).as_bytes();
        let piece = cproto::BlobChunk {
            data: Bytes::from(content),
        };
        let got = blob_client
            .put(futures::stream::iter([piece]))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(&got.digest[..], &digest[..]);
    }

    let mut dir_client = DirectoryServiceClient::new(channel.clone());
    let messages: Vec<cproto::Directory> = closure
        .iter()
        .map(|e| cproto::Directory::decode(&e.bytes[..]).unwrap())
        .collect();
    let got = dir_client
        .put(futures::stream::iter(messages))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(&got.root_digest[..], &root[..]);

    // Every directory by the client's own digest, byte for byte.
    for e in &closure {
        let request = cproto::GetDirectoryRequest {
            by_what: Some(cproto::get_directory_request::ByWhat::Digest(
                Bytes::copy_from_slice(&e.digest),
            )),
            recursive: false,
        };
        let mut stream = dir_client.get(request).await.unwrap().into_inner();
        let got = stream.message().await.unwrap().unwrap();
        assert_eq!(got.encode_to_vec(), e.bytes);
        assert_eq!(stream.message().await.unwrap(), None);
    }
    // And the closure from the root, each directory once.
    let request = cproto::GetDirectoryRequest {
        by_what: Some(cproto::get_directory_request::ByWhat::Digest(
            Bytes::copy_from_slice(&root),
        )),
        recursive: true,
    };
    let mut stream = dir_client.get(request).await.unwrap().into_inner();
    let mut served = Vec::new();
    while let Some(d) = stream.message().await.unwrap() {
        served.push(*blake3::hash(&d.encode_to_vec()).as_bytes());
    }
    let mut sent: Vec<[u8; 32]> = closure.iter().map(|e| e.digest).collect();
    sent.sort();
    sent.dedup();
    assert_eq!(served[0], root);
    served.sort();
    assert_eq!(served, sent);
    (root, size)
}

/// Registers `tree` (written to disk for Nix) under the client's root digest:
/// the store path and NAR hash are those the real Nix gives.
async fn register(
    channel: &Channel,
    tree: &BTreeMap<Vec<u8>, Entry>,
    name: &str,
    root: ([u8; 32], u64),
) {
    let nix = cairn_testkit::nix::Nix::new();
    let at = nix.path(name);
    write_tree(tree, &at);
    let store_path = nix.in_store("nix-store", &["--add", at.to_str().unwrap()]);
    let nar = cairn_testkit::nix::ok_bytes(nix.command("nix-store").arg("--dump").arg(&at));
    let nar_sha256: [u8; 32] = sha2::Sha256::digest(&nar).into();
    let basename = store_path.rsplit('/').next().unwrap().to_string();
    let info = sproto::PathInfo {
        node: Some(cproto::Node {
            node: Some(cproto::node::Node::Directory(cproto::DirectoryNode {
                name: Bytes::from(basename.clone().into_bytes()),
                digest: Bytes::copy_from_slice(&root.0),
                size: root.1,
            })),
        }),
        references: vec![],
        narinfo: Some(sproto::NarInfo {
            nar_size: nar.len() as u64,
            nar_sha256: Bytes::copy_from_slice(&nar_sha256),
            signatures: vec![],
            reference_names: vec![],
            deriver: None,
            ca: Some(sproto::nar_info::Ca {
                r#type: sproto::nar_info::ca::Hash::NarSha256 as i32,
                digest: Bytes::copy_from_slice(&nar_sha256),
            }),
        }),
    };
    let mut client = PathInfoServiceClient::new(channel.clone());
    let stored = client.put(info.clone()).await.unwrap().into_inner();
    assert_eq!(stored.node, info.node, "{basename}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tvix_rule_closures_are_served_by_the_clients_digests() {
    let (_server, channel) = server().await;
    let t1 = wire_t1();
    let root = upload_and_check(&channel, &t1, Rule::Tvix).await;
    // The client's encoding agrees with tvix's digest in WIRE.md.
    assert_eq!(
        base64::Engine::encode(&base64::engine::general_purpose::STANDARD, root.0),
        "eSENmoyWHN7tU6p05/QlopN4HMw9rfrW0XgVVrIQAz8="
    );
    assert_eq!(root.1, 8);
    register(&channel, &t1, "t1", root).await;

    for seed in 1..4 {
        let tree = generated(seed, 3);
        let root = upload_and_check(&channel, &tree, Rule::Tvix).await;
        register(&channel, &tree, &format!("gen-{seed}"), root).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proto_comment_rule_closures_are_served_unchanged() {
    let (_server, channel) = server().await;
    for seed in 1..3 {
        let tree = generated(seed, 3);
        let root = upload_and_check(&channel, &tree, Rule::ProtoComment).await;
        register(&channel, &tree, &format!("proto-{seed}"), root).await;
    }
    // The same trees by tvix's rule are other directories, stored beside them.
    let tree = generated(1, 3);
    upload_and_check(&channel, &tree, Rule::Tvix).await;
}
