//! The PathInfoService server against a client we did not write:
//! `tests/oracle/grpc_client.py` (generic, schema from server reflection), and the
//! NAR hashes of the real Nix 2.8. It checks reflection and health, puts a PathInfo
//! Nix made (`nix-store --add` into a chroot store) and reads it back with Get and
//! List, asks CalculateNAR for a tree, a file and a symlink and compares with
//! `nix-store --dump | sha256`, and sends malformed requests expecting the status
//! WIRE.md names.
//!
//! Needs the test venv (`scripts/install-test-deps.sh`) and Nix; fails without them.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::Command;

use base64::Engine;
use cairn_castore::{B3Digest, BlobService, Directory, DirectoryService, Node, PathComponent};
use cairn_nix::store_path::StorePath;
use sha2::Digest;
use tokio::io::AsyncWriteExt;

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn python() -> PathBuf {
    let venv = std::env::var("CAIRN_TEST_VENV").unwrap_or_else(|_| "/opt/cairn-test-venv".into());
    let python = PathBuf::from(venv).join("bin/python");
    assert!(
        python.exists(),
        "{} is missing: run scripts/install-test-deps.sh (or set CAIRN_TEST_VENV)",
        python.display()
    );
    python
}

fn script() -> PathBuf {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/oracle/grpc_client.py");
    assert!(p.exists(), "{} is missing", p.display());
    p
}

struct Client {
    addr: String,
}

struct Out {
    ok: bool,
    stdout: String,
    stderr: String,
}

impl Client {
    fn run(&self, args: &[&str]) -> Out {
        let out = Command::new(python())
            .arg(script())
            .arg("--proto-names")
            .arg(&self.addr)
            .args(args)
            .output()
            .unwrap();
        Out {
            ok: out.status.success(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    fn call(&self, method: &str, message: &str) -> Out {
        self.run(&["call", method, "-d", message])
    }

    fn ok(&self, method: &str, message: &str) -> String {
        let out = self.call(method, message);
        assert!(out.ok, "{method} {message} failed: {}", out.stderr);
        // Compact, like the JSON written here (no value holds these sequences).
        out.stdout.replace("\": ", "\":").replace(", \"", ",\"")
    }

    fn fails(&self, method: &str, message: &str, code: &str) -> String {
        let out = self.call(method, message);
        assert!(!out.ok, "{method} {message} succeeded: {}", out.stdout);
        assert!(
            out.stderr.contains(&format!("ERROR {code}")),
            "{method} {message}: expected {code}, got {}",
            out.stderr
        );
        out.stderr
    }
}

fn nix(program: &str, xdg: &Path) -> Command {
    let mut c = Command::new(program);
    c.env("XDG_CACHE_HOME", xdg)
        .env(
            "NIX_CONFIG",
            "experimental-features = nix-command\nsandbox = false\nsubstituters =",
        )
        .env_remove("NIX_REMOTE");
    c
}

fn run(mut cmd: Command) -> Vec<u8> {
    let out = cmd.output().unwrap_or_else(|e| {
        panic!("cannot run {cmd:?}: {e}; this test needs the real Nix (apt-get install nix-bin)")
    });
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// `(size, sha256)` of the NAR the real Nix makes of `path`.
fn nix_nar(path: &Path, xdg: &Path) -> (u64, [u8; 32]) {
    let mut c = nix("nix-store", xdg);
    c.arg("--dump").arg(path);
    let nar = run(c);
    (nar.len() as u64, sha2::Sha256::digest(&nar).into())
}

/// Puts the file-system tree at `path` into the castore; its root node.
fn ingest<'a>(
    path: &'a Path,
    blobs: &'a dyn BlobService,
    dirs: &'a dyn DirectoryService,
) -> futures::future::BoxFuture<'a, Node> {
    Box::pin(async move {
        let meta = std::fs::symlink_metadata(path).unwrap();
        if meta.is_symlink() {
            let target = std::fs::read_link(path).unwrap();
            return Node::Symlink {
                target: target.as_os_str().as_encoded_bytes().try_into().unwrap(),
            };
        }
        if meta.is_file() {
            let content = std::fs::read(path).unwrap();
            let mut w = blobs.open_write().await;
            w.write_all(&content).await.unwrap();
            let digest = w.close().await.unwrap();
            return Node::File {
                digest,
                size: content.len() as u64,
                executable: std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o100
                    != 0,
            };
        }
        let mut dir = Directory::new();
        let mut entries: Vec<_> = std::fs::read_dir(path)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        entries.sort();
        for child in entries {
            let node = ingest(&child, blobs, dirs).await;
            let name = child.file_name().unwrap().as_encoded_bytes();
            dir.add(PathComponent::try_from(name).unwrap(), node)
                .unwrap();
        }
        let size = dir.size();
        let digest = dirs.put(dir).await.unwrap();
        Node::Directory { digest, size }
    })
}

fn node_json(node: &Node, name: &[u8]) -> String {
    match node {
        Node::Directory { digest, size } => format!(
            r#"{{"directory":{{"name":"{}","digest":"{}","size":"{size}"}}}}"#,
            b64(name),
            b64(digest.as_bytes())
        ),
        Node::File {
            digest,
            size,
            executable,
        } => format!(
            r#"{{"file":{{"name":"{}","digest":"{}","size":"{size}","executable":{executable}}}}}"#,
            b64(name),
            b64(digest.as_bytes())
        ),
        Node::Symlink { target } => format!(
            r#"{{"symlink":{{"name":"{}","target":"{}"}}}}"#,
            b64(name),
            b64(target.as_ref())
        ),
    }
}

fn calculate_nar(c: &Client, node: &Node, name: &[u8]) -> (u64, String) {
    let out = c.ok(
        "tvix.store.v1.PathInfoService/CalculateNAR",
        &node_json(node, name),
    );
    // {"nar_size":"872","nar_sha256":"..."}
    let size = out
        .split("\"nar_size\":\"")
        .nth(1)
        .unwrap()
        .split('"')
        .next()
        .unwrap();
    let sha = out
        .split("\"nar_sha256\":\"")
        .nth(1)
        .unwrap()
        .split('"')
        .next()
        .unwrap();
    (size.parse().unwrap(), sha.to_owned())
}

/// A PathInfo message as JSON, with every field given.
#[derive(Clone, Copy)]
struct Msg<'a> {
    node: &'a str,
    references: &'a [String],
    nar_size: u64,
    nar_sha256: &'a [u8],
    reference_names: &'a [String],
    signatures: &'a str,
    extra: &'a str,
}

impl Msg<'_> {
    fn json(&self) -> String {
        let list = |v: &[String]| {
            v.iter()
                .map(|s| format!("\"{s}\""))
                .collect::<Vec<_>>()
                .join(",")
        };
        format!(
            r#"{{"node":{},"references":[{}],"narinfo":{{"nar_size":"{}","nar_sha256":"{}","signatures":[{}],"reference_names":[{}]{}}}}}"#,
            self.node,
            list(self.references),
            self.nar_size,
            b64(self.nar_sha256),
            self.signatures,
            list(self.reference_names),
            self.extra
        )
    }
}

#[test]
fn oracle_grpc_client() {
    let tmp = tempfile::tempdir().unwrap();
    let xdg = tmp.path().join("xdg");

    // A tree with every kind of entry, and what Nix says about it.
    let tree = tmp.path().join("tree");
    std::fs::create_dir_all(tree.join("sub/empty")).unwrap();
    std::fs::write(tree.join("hello"), "hello\n").unwrap();
    std::fs::write(tree.join("sub/run"), "#!/bin/sh\necho hi\n").unwrap();
    std::fs::set_permissions(
        tree.join("sub/run"),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    std::fs::write(tree.join("sub/big"), vec![b'x'; 300_000]).unwrap();
    std::os::unix::fs::symlink("../hello", tree.join("sub/link")).unwrap();
    let mut add = nix("nix-store", &xdg);
    add.arg("--store")
        .arg(tmp.path().join("store"))
        .arg("--add")
        .arg(&tree);
    let store_path = String::from_utf8(run(add)).unwrap();
    let store_path = StorePath::parse_absolute(store_path.trim()).unwrap();
    let (tree_size, tree_sha) = nix_nar(&tree, &xdg);

    let rt = tokio::runtime::Runtime::new().unwrap();
    let blobs = cairn_castore::blob_service_from_addr("memory://").unwrap();
    let dirs = cairn_castore::directory_service_from_addr("memory://").unwrap();
    let pathinfos = cairn_store::pathinfo::path_info_service_from_addr(
        "memory://",
        blobs.clone(),
        dirs.clone(),
    )
    .unwrap();
    let (tree_node, file_node, link_node) = rt.block_on(async {
        (
            ingest(&tree, blobs.as_ref(), dirs.as_ref()).await,
            ingest(&tree.join("sub/run"), blobs.as_ref(), dirs.as_ref()).await,
            ingest(&tree.join("sub/link"), blobs.as_ref(), dirs.as_ref()).await,
        )
    });
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let port = listener.local_addr().unwrap().port();
    let (b, d, p) = (blobs.clone(), dirs.clone(), pathinfos.clone());
    let server = rt.spawn(async move {
        let (routes, _health) = cairn_store::pathinfo::routes(b, d, p).await.unwrap();
        let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
        cairn_castore::server::serve(routes, incoming, std::future::pending())
            .await
            .unwrap();
    });
    let c = Client {
        addr: format!("127.0.0.1:{port}"),
    };

    // Reflection (both versions) and health show all three services.
    for version in ["v1", "v1alpha"] {
        let out = c.run(&["--reflection", version, "list"]);
        assert!(out.ok, "list over {version}: {}", out.stderr);
        for service in [
            "tvix.castore.v1.BlobService",
            "tvix.castore.v1.DirectoryService",
            "tvix.store.v1.PathInfoService",
            "grpc.health.v1.Health",
        ] {
            assert!(out.stdout.contains(service), "{version}: {}", out.stdout);
        }
    }
    let out = c.ok(
        "grpc.health.v1.Health/Check",
        r#"{"service":"tvix.store.v1.PathInfoService"}"#,
    );
    assert!(out.contains("SERVING"), "{out}");

    // Put the PathInfo Nix made, Get it back, List it.
    let name = store_path.to_string();
    let dep = StorePath::from_basename("00bgd045z0d4icpbc2yyz4gx48ak44la-hello").unwrap();
    let sig_data = [5u8; 64];
    let ca = format!(
        r#","ca":{{"type":"NAR_SHA256","digest":"{}"}}"#,
        b64(&tree_sha)
    );
    let good_node = node_json(&tree_node, name.as_bytes());
    let refs = [b64(dep.digest())];
    let ref_names = [dep.to_string()];
    let sigs = format!(
        r#"{{"name":"cache.example.org-1","data":"{}"}}"#,
        b64(&sig_data)
    );
    let good = Msg {
        node: &good_node,
        references: &refs,
        nar_size: tree_size,
        nar_sha256: &tree_sha,
        reference_names: &ref_names,
        signatures: &sigs,
        extra: &ca,
    };
    let put = c.ok("tvix.store.v1.PathInfoService/Put", &good.json());
    for expected in [
        b64(name.as_bytes()),
        b64(tree_node_digest(&tree_node)),
        b64(dep.digest()),
        dep.to_string(),
        b64(&tree_sha),
        format!("\"nar_size\":\"{tree_size}\""),
        b64(&sig_data),
        "cache.example.org-1".into(),
    ] {
        assert!(put.contains(&expected), "{expected} not in {put}");
    }
    let by_hash = |h: &[u8]| format!(r#"{{"by_output_hash":"{}"}}"#, b64(h));
    let got = c.ok(
        "tvix.store.v1.PathInfoService/Get",
        &by_hash(store_path.digest()),
    );
    assert_eq!(got, put);
    let stored = rt
        .block_on(pathinfos.get(*store_path.digest()))
        .unwrap()
        .unwrap();
    assert_eq!(stored.store_path, store_path);
    assert_eq!(stored.nar_sha256, tree_sha);
    assert_eq!(stored.references, vec![dep.clone()]);
    assert_eq!(
        stored.ca.as_ref().map(ToString::to_string),
        Some(format!(
            "fixed:r:sha256:{}",
            cairn_nix::nixbase32::encode(&tree_sha)
        ))
    );

    // A second path (a file root, nothing optional); List has both.
    let file_name = "11bgd045z0d4icpbc2yyz4gx48ak44la-run";
    let file_json = node_json(&file_node, file_name.as_bytes());
    let second = Msg {
        node: &file_json,
        references: &[],
        nar_size: 1,
        nar_sha256: &[1; 32],
        reference_names: &[],
        signatures: "",
        extra: "",
    };
    c.ok("tvix.store.v1.PathInfoService/Put", &second.json());
    let list = c.ok("tvix.store.v1.PathInfoService/List", "{}");
    let lines: Vec<&str> = list.lines().collect();
    assert_eq!(lines.len(), 2, "{list}");
    assert!(lines.contains(&put.trim_end()), "{list}");
    assert!(list.contains(&b64(file_name.as_bytes())), "{list}");

    // Get: absent, malformed.
    c.fails(
        "tvix.store.v1.PathInfoService/Get",
        &by_hash(&[3; 20]),
        "NOT_FOUND",
    );
    for bad in [by_hash(&[3; 19]), by_hash(&[3; 32]), "{}".to_owned()] {
        c.fails(
            "tvix.store.v1.PathInfoService/Get",
            &bad,
            "INVALID_ARGUMENT",
        );
    }

    // Put: every malformed field, INVALID_ARGUMENT naming it; content not stored.
    let short_ref = [b64(&[0; 19])];
    let other_name = ["22bgd045z0d4icpbc2yyz4gx48ak44la-hello".to_owned()];
    let bad_name_node = node_json(&tree_node, b"not-a-store-path");
    let absent_node = node_json(
        &Node::Directory {
            digest: B3Digest::of(b"absent"),
            size: 0,
        },
        name.as_bytes(),
    );
    let bad_sig = format!(r#"{{"name":"k-1","data":"{}"}}"#, b64(&[0; 63]));
    let bad_ca = format!(
        r#","ca":{{"type":"FLAT_SHA1","digest":"{}"}}"#,
        b64(&tree_sha)
    );
    let bad_deriver = format!(
        r#","deriver":{{"name":"x.drv","digest":"{}"}}"#,
        b64(&[0; 10])
    );
    let cases: Vec<(Msg, &str)> = vec![
        (
            Msg {
                node: &bad_name_node,
                ..good
            },
            "node.name",
        ),
        (Msg { node: "{}", ..good }, "node"),
        (
            Msg {
                references: &short_ref,
                ..good
            },
            "references[0]",
        ),
        (
            Msg {
                reference_names: &[],
                ..good
            },
            "narinfo.reference_names",
        ),
        (
            Msg {
                reference_names: &other_name,
                ..good
            },
            "narinfo.reference_names[0]",
        ),
        (
            Msg {
                nar_sha256: &[0; 20],
                ..good
            },
            "narinfo.nar_sha256",
        ),
        (
            Msg {
                signatures: &bad_sig,
                ..good
            },
            "narinfo.signatures[0]",
        ),
        (
            Msg {
                extra: &bad_ca,
                ..good
            },
            "narinfo.ca.digest",
        ),
        (
            Msg {
                extra: &bad_deriver,
                ..good
            },
            "narinfo.deriver",
        ),
        (
            Msg {
                node: &absent_node,
                ..good
            },
            "node",
        ),
    ];
    for (msg, field) in cases {
        let err = c.fails(
            "tvix.store.v1.PathInfoService/Put",
            &msg.json(),
            "INVALID_ARGUMENT",
        );
        assert!(err.contains(field), "{field}: {err}");
    }
    let no_narinfo = format!(r#"{{"node":{good_node}}}"#);
    let err = c.fails(
        "tvix.store.v1.PathInfoService/Put",
        &no_narinfo,
        "INVALID_ARGUMENT",
    );
    assert!(err.contains("narinfo"), "{err}");
    assert_eq!(
        c.ok("tvix.store.v1.PathInfoService/List", "{}")
            .lines()
            .count(),
        2
    );

    // CalculateNAR equals Nix's NAR, with an empty name or a name; twice (cached).
    for n in [&b""[..], name.as_bytes(), &b""[..]] {
        assert_eq!(
            calculate_nar(&c, &tree_node, n),
            (tree_size, b64(&tree_sha)),
            "tree, name {n:?}"
        );
    }
    let (size, sha) = nix_nar(&tree.join("sub/run"), &xdg);
    assert_eq!(calculate_nar(&c, &file_node, b""), (size, b64(&sha)));
    let (size, sha) = nix_nar(&tree.join("sub/link"), &xdg);
    assert_eq!(calculate_nar(&c, &link_node, b"x"), (size, b64(&sha)));
    c.fails(
        "tvix.store.v1.PathInfoService/CalculateNAR",
        &node_json(
            &Node::Directory {
                digest: B3Digest::of(b"absent"),
                size: 0,
            },
            b"",
        ),
        "NOT_FOUND",
    );
    c.fails(
        "tvix.store.v1.PathInfoService/CalculateNAR",
        r#"{"directory":{"name":"","digest":"AAAA","size":"1"}}"#,
        "INVALID_ARGUMENT",
    );

    server.abort();
}

fn tree_node_digest(node: &Node) -> &[u8] {
    match node {
        Node::Directory { digest, .. } => digest.as_bytes(),
        _ => unreachable!(),
    }
}
