//! The gRPC server against a client we did not write: `tests/oracle/grpc_client.py`
//! (a generic grpcurl-like client that learns the schema through server
//! reflection). It lists the services over reflection v1 and v1alpha, puts and
//! reads a blob, puts a directory closure and gets it back recursively, checks
//! health, and sends every malformed input of WIRE.md, expecting the right status.
//!
//! Expected digests are computed here from hand-encoded protobuf bytes, not by the
//! code under test. Needs the test venv (`scripts/install-test-deps.sh`); fails
//! when it is missing.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use base64::Engine;
use cairn_castore::blobservice::MemoryBlobService;
use cairn_castore::directoryservice::MemoryDirectoryService;
use cairn_testkit::pb::{ld, uint};

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
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
        let out = cairn_testkit::oracle::client()
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

    fn call(&self, method: &str, messages: &[String]) -> Out {
        let mut args = vec!["call".to_string(), method.to_string()];
        for m in messages {
            args.push("-d".into());
            args.push(m.clone());
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.run(&args)
    }

    fn ok(&self, method: &str, messages: &[String]) -> String {
        let out = self.call(method, messages);
        assert!(out.ok, "{method} failed: {}", out.stderr);
        out.stdout
    }

    fn fails(&self, method: &str, messages: &[String], code: &str) -> String {
        let out = self.call(method, messages);
        assert!(!out.ok, "{method} {messages:?} succeeded: {}", out.stdout);
        assert!(
            out.stderr.contains(&format!("ERROR {code}")),
            "{method} {messages:?}: expected {code}, got {}",
            out.stderr
        );
        out.stderr
    }
}

/// A `DirectoryNode` or `FileNode` (name, digest, size) inside list `list`.
fn entry(list: u64, name: &[u8], digest: &[u8], size: u64, out: &mut Vec<u8>) {
    let mut node = Vec::new();
    ld(1, name, &mut node);
    ld(2, digest, &mut node);
    uint(3, size, &mut node);
    ld(list, &node, out);
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn blake3(bytes: &[u8]) -> Vec<u8> {
    blake3::hash(bytes).as_bytes().to_vec()
}

fn file_json(name: &[u8], digest: &[u8], size: u64) -> String {
    format!(
        r#"{{"name":"{}","digest":"{}","size":"{size}"}}"#,
        b64(name),
        b64(digest)
    )
}

fn dirnode_json(name: &[u8], digest: &[u8], size: u64) -> String {
    file_json(name, digest, size)
}

fn symlink_json(name: &[u8], target: &[u8]) -> String {
    format!(r#"{{"name":"{}","target":"{}"}}"#, b64(name), b64(target))
}

#[test]
fn oracle_grpc_client() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    // The health reporter lives as long as the server, as in the daemon.
    let (server, _health) = rt.block_on(async {
        let (routes, health) = cairn_castore::server::routes(
            Arc::new(MemoryBlobService::new()),
            Arc::new(MemoryDirectoryService::new()),
            &[],
        )
        .await
        .unwrap();
        let server = cairn_testkit::loopback::tcp(|incoming| {
            cairn_castore::server::serve(routes, incoming, std::future::pending())
        })
        .await;
        (server, health)
    });
    let c = Client {
        addr: server.tcp.unwrap().to_string(),
    };

    // Reflection, both versions.
    for version in ["v1", "v1alpha"] {
        let out = c.run(&["--reflection", version, "list"]);
        assert!(out.ok, "list over {version}: {}", out.stderr);
        for service in [
            "tvix.castore.v1.BlobService",
            "tvix.castore.v1.DirectoryService",
            "tvix.store.v1.BlobService",
            "tvix.store.v1.DirectoryService",
            "grpc.health.v1.Health",
        ] {
            assert!(out.stdout.contains(service), "{version}: {}", out.stdout);
        }
    }

    // Health.
    let out = c.ok("grpc.health.v1.Health/Check", &["{}".into()]);
    assert!(out.contains("SERVING"), "{out}");
    let out = c.ok(
        "grpc.health.v1.Health/Check",
        &[r#"{"service":"tvix.castore.v1.BlobService"}"#.into()],
    );
    assert!(out.contains("SERVING"), "{out}");

    // Blobs: put in two pieces, stat, read.
    let content = b"hello world";
    let digest = blake3(content);
    let out = c.ok(
        "tvix.castore.v1.BlobService/Put",
        &[
            format!(r#"{{"data":"{}"}}"#, b64(b"hello ")),
            format!(r#"{{"data":"{}"}}"#, b64(b"world")),
        ],
    );
    assert!(out.contains(&b64(&digest)), "{out}");
    c.ok(
        "tvix.castore.v1.BlobService/Stat",
        &[format!(
            r#"{{"digest":"{}","send_chunks":true}}"#,
            b64(&digest)
        )],
    );
    let out = c.ok(
        "tvix.castore.v1.BlobService/Read",
        &[format!(r#"{{"digest":"{}"}}"#, b64(&digest))],
    );
    let mut read = Vec::new();
    for line in out.lines() {
        let data = line.split('"').nth(3).unwrap_or("");
        read.extend(
            base64::engine::general_purpose::STANDARD
                .decode(data)
                .unwrap(),
        );
    }
    assert_eq!(read, content);

    let absent = format!(r#"{{"digest":"{}"}}"#, b64(&blake3(b"absent")));
    c.fails(
        "tvix.castore.v1.BlobService/Stat",
        std::slice::from_ref(&absent),
        "NOT_FOUND",
    );
    c.fails(
        "tvix.castore.v1.BlobService/Read",
        std::slice::from_ref(&absent),
        "NOT_FOUND",
    );
    let short = format!(r#"{{"digest":"{}"}}"#, b64(&[1; 31]));
    c.fails(
        "tvix.castore.v1.BlobService/Stat",
        std::slice::from_ref(&short),
        "INVALID_ARGUMENT",
    );
    c.fails(
        "tvix.castore.v1.BlobService/Read",
        std::slice::from_ref(&short),
        "INVALID_ARGUMENT",
    );

    // A closure: leaf { files: [file] }, root { directories: [sub -> leaf] }.
    let mut leaf_bytes = Vec::new();
    entry(2, b"file", &digest, 11, &mut leaf_bytes);
    let leaf_digest = blake3(&leaf_bytes);
    let mut root_bytes = Vec::new();
    entry(1, b"sub", &leaf_digest, 1, &mut root_bytes);
    let root_digest = blake3(&root_bytes);
    let leaf = format!(r#"{{"files":[{}]}}"#, file_json(b"file", &digest, 11));
    let root = format!(
        r#"{{"directories":[{}]}}"#,
        dirnode_json(b"sub", &leaf_digest, 1)
    );
    let out = c.ok(
        "tvix.castore.v1.DirectoryService/Put",
        &[leaf.clone(), root],
    );
    assert!(out.contains(&b64(&root_digest)), "{out}");
    let out = c.ok(
        "tvix.castore.v1.DirectoryService/Get",
        &[format!(
            r#"{{"digest":"{}","recursive":true}}"#,
            b64(&root_digest)
        )],
    );
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 2, "{out}");
    assert!(lines[0].contains("directories") && lines[0].contains(&b64(&leaf_digest)));
    assert!(lines[1].contains("files") && lines[1].contains(&b64(&digest)));
    c.fails(
        "tvix.castore.v1.DirectoryService/Get",
        &[format!(r#"{{"digest":"{}"}}"#, b64(&blake3(b"no dir")))],
        "NOT_FOUND",
    );
    // Recursive Get of an absent root: an empty stream, status OK (as tvix).
    let out = c.ok(
        "tvix.castore.v1.DirectoryService/Get",
        &[format!(
            r#"{{"digest":"{}","recursive":true}}"#,
            b64(&blake3(b"no dir"))
        )],
    );
    assert_eq!(out.trim(), "", "{out}");
    c.fails(
        "tvix.castore.v1.DirectoryService/Get",
        &[format!(r#"{{"digest":"{}"}}"#, b64(&[2; 33]))],
        "INVALID_ARGUMENT",
    );

    // tvix's size (2 per entry) is accepted too, and stored as sent: the digest
    // is that of the bytes with size 2, and Get gives them back.
    let tvix_parent = format!(
        r#"{{"directories":[{}]}}"#,
        dirnode_json(b"tvix", &leaf_digest, 2)
    );
    let mut as_sent = Vec::new();
    entry(1, b"tvix", &leaf_digest, 2, &mut as_sent);
    let out = c.ok("tvix.castore.v1.DirectoryService/Put", &[tvix_parent]);
    assert!(out.contains(&b64(&blake3(&as_sent))), "{out}");
    let out = c.ok(
        "tvix.castore.v1.DirectoryService/Get",
        &[format!(r#"{{"digest":"{}"}}"#, b64(&blake3(&as_sent)))],
    );
    assert!(out.contains(r#""size": "2""#), "{out}");

    // A directory the root does not reach: refused, naming it.
    let stray = format!(r#"{{"symlinks":[{}]}}"#, symlink_json(b"stray", b"t"));
    let mut stray_bytes = Vec::new();
    let mut link = Vec::new();
    ld(1, b"stray", &mut link);
    ld(2, b"t", &mut link);
    ld(3, &link, &mut stray_bytes);
    let stderr = c.fails(
        "tvix.castore.v1.DirectoryService/Put",
        &[stray, leaf.clone()],
        "INVALID_ARGUMENT",
    );
    assert!(
        stderr.contains(&hex(&blake3(&stray_bytes))) && stderr.contains("not reachable"),
        "{stderr}"
    );
    c.fails(
        "tvix.castore.v1.DirectoryService/Get",
        &[format!(r#"{{"digest":"{}"}}"#, b64(&blake3(&stray_bytes)))],
        "NOT_FOUND",
    );

    // The seed's services (package tvix.store.v1) on the same store, as its
    // documented session uses them: Put some bytes, get their BLAKE3 back, Read
    // and Stat them.
    let seed_content = b"seed bytes";
    let seed_digest = blake3(seed_content);
    let out = c.ok(
        "tvix.store.v1.BlobService/Put",
        &[format!(r#"{{"data":"{}"}}"#, b64(seed_content))],
    );
    assert!(out.contains(&b64(&seed_digest)), "{out}");
    let out = c.ok(
        "tvix.store.v1.BlobService/Read",
        &[format!(r#"{{"digest":"{}"}}"#, b64(&seed_digest))],
    );
    assert!(out.contains(&b64(seed_content)), "{out}");
    c.ok(
        "tvix.store.v1.BlobService/Stat",
        &[format!(
            r#"{{"digest":"{}","include_chunks":true}}"#,
            b64(&seed_digest)
        )],
    );
    c.fails(
        "tvix.store.v1.BlobService/Stat",
        std::slice::from_ref(&absent),
        "NOT_FOUND",
    );
    // What the castore service stored, the seed's reads, and back.
    let out = c.ok(
        "tvix.store.v1.BlobService/Read",
        &[format!(r#"{{"digest":"{}"}}"#, b64(&digest))],
    );
    assert!(out.contains(&b64(content)), "{out}");
    // The seed's Directory has string names and uint32 sizes (same encoding).
    let seed_leaf = format!(
        r#"{{"files":[{{"name":"file","digest":"{}","size":11}}]}}"#,
        b64(&digest)
    );
    let out = c.ok("tvix.store.v1.DirectoryService/Put", &[seed_leaf]);
    assert!(out.contains(&b64(&leaf_digest)), "{out}");
    let out = c.ok(
        "tvix.store.v1.DirectoryService/Get",
        &[format!(
            r#"{{"digest":"{}","recursive":true}}"#,
            b64(&root_digest)
        )],
    );
    assert_eq!(out.lines().count(), 2, "{out}");
    assert!(
        out.contains(r#""name": "sub""#) && out.contains(r#""name": "file""#),
        "{out}"
    );

    // Every malformed input of WIRE.md: INVALID_ARGUMENT, naming the problem.
    let files = |entries: &[String]| format!(r#"{{"files":[{}]}}"#, entries.join(","));
    let f = |name: &[u8]| file_json(name, &digest, 11);
    let long = vec![b'x'; 256];
    let bad: Vec<(String, &str)> = vec![
        (files(&[file_json(b"a", &[1; 31], 1)]), "digest"),
        (files(&[file_json(b"a", &[], 1)]), "digest"),
        (files(&[f(b"b"), f(b"a")]), "sorted"),
        (files(&[f(b"a"), f(b"a")]), "more than once"),
        (
            format!(
                r#"{{"files":[{}],"symlinks":[{}]}}"#,
                f(b"a"),
                symlink_json(b"a", b"t")
            ),
            "more than once",
        ),
        (
            format!(
                r#"{{"directories":[{}],"files":[{}]}}"#,
                dirnode_json(b"a", &leaf_digest, 1),
                f(b"a")
            ),
            "more than once",
        ),
        (files(&[f(b".")]), "name"),
        (files(&[f(b"..")]), "name"),
        (files(&[f(b"a/b")]), "name"),
        (files(&[f(b"a\0b")]), "name"),
        (files(&[f(b"")]), "name"),
        (files(&[f(&long)]), "name"),
        (
            format!(r#"{{"symlinks":[{}]}}"#, symlink_json(b"l", b"")),
            "target",
        ),
        (
            format!(r#"{{"symlinks":[{}]}}"#, symlink_json(b"l", b"a\0b")),
            "target",
        ),
        (
            format!(r#"{{"symlinks":[{}]}}"#, symlink_json(b"l", &[b'x'; 4096])),
            "target",
        ),
        (
            format!(
                r#"{{"directories":[{}]}}"#,
                dirnode_json(b"sub", &leaf_digest, 5)
            ),
            "size",
        ),
        (
            format!(
                r#"{{"directories":[{}]}}"#,
                dirnode_json(b"sub", &leaf_digest, 0)
            ),
            "size",
        ),
        (
            format!(
                r#"{{"directories":[{}]}}"#,
                dirnode_json(b"sub", &blake3(b"unknown"), 1)
            ),
            "neither sent",
        ),
    ];
    for (message, problem) in bad {
        let stderr = c.fails(
            "tvix.castore.v1.DirectoryService/Put",
            std::slice::from_ref(&message),
            "INVALID_ARGUMENT",
        );
        assert!(stderr.contains(problem), "{message}: {stderr}");
    }

    // A closure rejected at its last message leaves nothing of it visible.
    let other_leaf = format!(r#"{{"symlinks":[{}]}}"#, symlink_json(b"s", b"t"));
    let mut other_bytes = Vec::new();
    let mut link = Vec::new();
    ld(1, b"s", &mut link);
    ld(2, b"t", &mut link);
    ld(3, &link, &mut other_bytes);
    c.fails(
        "tvix.castore.v1.DirectoryService/Put",
        &[other_leaf, files(&[f(b"b"), f(b"a")])],
        "INVALID_ARGUMENT",
    );
    c.fails(
        "tvix.castore.v1.DirectoryService/Get",
        &[format!(r#"{{"digest":"{}"}}"#, b64(&blake3(&other_bytes)))],
        "NOT_FOUND",
    );

    // Bytes that are not a protobuf message: INVALID_ARGUMENT (tonic's default
    // would be INTERNAL), sent with curl as one gRPC frame (0, length, bytes).
    let frame = tempfile::NamedTempFile::new().unwrap();
    // Field 1, length-delimited, claiming 127 bytes where 1 follows.
    std::fs::write(frame.path(), [0, 0, 0, 0, 3, 0x0a, 0x7f, 0x01]).unwrap();
    for method in [
        "tvix.castore.v1.BlobService/Stat",
        "tvix.castore.v1.DirectoryService/Put",
        "tvix.store.v1.BlobService/Stat",
    ] {
        let out = std::process::Command::new("curl")
            .args([
                "-s",
                "-i",
                "--http2-prior-knowledge",
                "-H",
                "content-type: application/grpc",
                "-H",
                "te: trailers",
                "--data-binary",
            ])
            .arg(format!("@{}", frame.path().display()))
            .arg(format!("http://{}/{method}", c.addr))
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_lowercase();
        // 3 is INVALID_ARGUMENT.
        assert!(text.contains("grpc-status: 3"), "{method}: {text}");
        assert!(text.contains("malformed"), "{method}: {text}");
    }

    drop(server);
}
