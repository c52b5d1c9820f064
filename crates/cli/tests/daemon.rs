//! `cairn daemon` as a user runs it: the real binary on the embedded store in a
//! temporary data directory, spoken to by a gRPC client we did not write
//! (`tests/oracle/grpc_client.py`, schema learned through reflection), over TCP and
//! over the unix socket. A blob put before a SIGTERM must be there after a restart.
//!
//! The PathInfoService test (issue 4's proof) runs the same way against the real
//! Nix 2.8: PathInfo Put/Get/List of paths Nix added (`nix path-info --json` gives
//! the NAR hash, size and ca), CalculateNAR of a directory, file and symlink root
//! compared with `nix-store --dump` and `nix-hash`, malformed PathInfos rejected
//! with `INVALID_ARGUMENT` naming the field, and all of it still there after a
//! restart. Needs Nix and the test venv (`scripts/install-test-deps.sh`).
//!
//! FIXME: grpcio (C core 1.85) gets RST_STREAM (PROTOCOL_ERROR) over the unix
//! socket while TCP works. Cause (seen with GRPC_TRACE=http): for a `unix:` target
//! it sends `:authority: tmp%2Fdir%2Fcairn.sock`, and the `h2` crate under tonic
//! rejects an authority with `%` in the host as malformed (hyperium/h2#487). A
//! grpcio user can pass the channel option `grpc.default_authority=localhost`.
//! Until h2 accepts it, the socket is checked with cairn's own client.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::Command;

mod common;
use common::{Daemon, http_addr, stop_daemon as stop};

use base64::Engine;

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn grpc(addr: &str, method: &str, messages: &[String]) -> (bool, String, String) {
    let mut cmd = cairn_testkit::oracle::client();
    cmd.arg("--proto-names").arg(addr).arg("call").arg(method);
    for m in messages {
        cmd.arg("-d").arg(m);
    }
    let out = cmd.output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Starts the daemon on a free port and returns it with its TCP address
/// (`host:port`, as the oracle client takes it).
fn start(data_dir: &Path) -> (Daemon, String) {
    let (daemon, addr, _) = start_with(data_dir, &[]);
    (daemon, addr)
}

/// [`start`] with more flags; also returns the daemon's first line.
fn start_with(data_dir: &Path, extra: &[&str]) -> (Daemon, String, String) {
    let (daemon, url, line) = common::start_daemon_with(data_dir, extra);
    let addr = url.trim_start_matches("grpc+http://").to_string();
    (daemon, addr, line)
}

#[test]
fn daemon_serves_the_embedded_store_and_keeps_it_across_restarts() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let (child, addr) = start(&data);

    let (ok, out, err) = grpc(&addr, "grpc.health.v1.Health/Check", &["{}".into()]);
    assert!(ok && out.contains("SERVING"), "{out} {err}");

    let content = b"kept across restarts\n".repeat(1000);
    let digest = blake3::hash(&content);
    let (ok, out, err) = grpc(
        &addr,
        "tvix.castore.v1.BlobService/Put",
        &[format!(r#"{{"data":"{}"}}"#, b64(&content))],
    );
    assert!(ok, "{err}");
    assert!(out.contains(&b64(digest.as_bytes())), "{out}");

    let absent = format!(r#"{{"digest":"{}"}}"#, b64(blake3::hash(b"no").as_bytes()));
    let (ok, _, err) = grpc(&addr, "tvix.castore.v1.BlobService/Stat", &[absent]);
    assert!(!ok && err.contains("ERROR NOT_FOUND"), "{err}");
    let (ok, _, err) = grpc(
        &addr,
        "tvix.castore.v1.BlobService/Stat",
        &[r#"{"digest":"AAAA"}"#.into()],
    );
    assert!(!ok && err.contains("ERROR INVALID_ARGUMENT"), "{err}");

    stop(child);
    assert!(
        !data.join("cairn.sock").exists(),
        "socket left behind after a graceful shutdown"
    );

    // Restart on the same data directory and read the blob back over TCP.
    let (child, addr) = start(&data);
    let (ok, out, err) = grpc(
        &addr,
        "tvix.castore.v1.BlobService/Read",
        &[format!(r#"{{"digest":"{}"}}"#, b64(digest.as_bytes()))],
    );
    assert!(ok, "{err}");
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

    // The unix socket serves the same store (through cairn's own gRPC client:
    // grpcio's C core resets unix-socket streams from this server, see the FIXME).
    let socket = format!("grpc+unix://{}", data.join("cairn.sock").display());
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let has = runtime.block_on(async {
        let blobs = cairn_castore::blob_service_from_addr(&socket).unwrap();
        let digest = cairn_castore::B3Digest::from(*digest.as_bytes());
        blobs.has(&digest).await
    });
    assert!(has.unwrap(), "blob not visible over {socket}");
    stop(child);
}

#[test]
fn daemon_refuses_a_bad_backend_url_with_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let out = common::daemon_command(tmp.path(), &["--blob-service-addr", "ftp://nowhere"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cannot open blob service ftp://nowhere")
            && err.contains("unsupported address"),
        "{err}"
    );
}

// ---------------------------------------------------------------------------------
// PathInfoService through the daemon, against the real Nix.

use cairn_testkit::nix::command as nix;

fn run(mut cmd: Command) -> Vec<u8> {
    cairn_testkit::nix::ok_bytes(&mut cmd)
}

/// What the real Nix says about one path it added to the chroot store `store`:
/// (`path`, `narHash` as base64 of the digest, `narSize`, `ca`).
struct NixInfo {
    path: String,
    nar_sha256_b64: String,
    nar_size: u64,
    ca: String,
}

fn nix_add(path: &Path, store: &Path, xdg: &Path) -> NixInfo {
    let mut add = nix("nix-store", xdg);
    add.arg("--store").arg(store).arg("--add").arg(path);
    let store_path = String::from_utf8(run(add)).unwrap().trim().to_owned();
    let mut info = nix("nix", xdg);
    info.args(["path-info", "--json", "--store"])
        .arg(store)
        .arg(&store_path);
    let json: serde_json::Value = serde_json::from_slice(&run(info)).unwrap();
    let info = &json[0];
    assert_eq!(info["path"], store_path.as_str());
    NixInfo {
        nar_sha256_b64: info["narHash"]
            .as_str()
            .unwrap()
            .strip_prefix("sha256-")
            .unwrap()
            .to_owned(),
        nar_size: info["narSize"].as_u64().unwrap(),
        ca: info["ca"].as_str().unwrap().to_owned(),
        path: store_path,
    }
}

/// `(size, sha256 in hex)` of the NAR of `path` by `nix-store --dump` and `nix-hash`.
fn nix_nar(path: &Path, xdg: &Path) -> (u64, String) {
    let mut dump = nix("nix-store", xdg);
    dump.arg("--dump").arg(path);
    let size = run(dump).len() as u64;
    let mut hash = nix("nix-hash", xdg);
    hash.args(["--type", "sha256"]).arg(path);
    let hex = String::from_utf8(run(hash)).unwrap().trim().to_owned();
    (size, hex)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unb64(s: &serde_json::Value) -> Vec<u8> {
    base64::engine::general_purpose::STANDARD
        .decode(s.as_str().unwrap_or_else(|| panic!("not a string: {s}")))
        .unwrap()
}

/// The 20 bytes behind a store path's hash part.
fn digest_of(store_path: &str) -> Vec<u8> {
    cairn_nix::store_path::StorePath::parse_absolute(store_path)
        .unwrap()
        .digest()
        .to_vec()
}

/// Calls `method` through the oracle client, expecting success; the JSON responses.
fn call_ok(addr: &str, method: &str, messages: &[String]) -> Vec<serde_json::Value> {
    let (ok, out, err) = grpc(addr, method, messages);
    assert!(ok, "{method} {messages:?} failed: {err}");
    out.lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Calls `method` expecting the status `code`; the error text.
fn call_fails(addr: &str, method: &str, message: &serde_json::Value, code: &str) -> String {
    let (ok, out, err) = grpc(addr, method, &[message.to_string()]);
    assert!(!ok, "{method} {message} succeeded: {out}");
    assert!(
        err.contains(&format!("ERROR {code}")),
        "{method} {message}: expected {code}, got {err}"
    );
    err
}

const PUT: &str = "tvix.store.v1.PathInfoService/Put";
const GET: &str = "tvix.store.v1.PathInfoService/Get";
const LIST: &str = "tvix.store.v1.PathInfoService/List";
const CALCULATE_NAR: &str = "tvix.store.v1.PathInfoService/CalculateNAR";

fn get(addr: &str, store_path: &str) -> serde_json::Value {
    let req = serde_json::json!({ "by_output_hash": b64(&digest_of(store_path)) });
    let mut out = call_ok(addr, GET, &[req.to_string()]);
    assert_eq!(out.len(), 1);
    out.remove(0)
}

/// Every PathInfo `List` streams, sorted by root node name.
fn list(addr: &str) -> Vec<serde_json::Value> {
    let mut all = call_ok(addr, LIST, &["{}".into()]);
    all.sort_by_key(|p| p["node"].to_string());
    all
}

/// `(nar_size, nar_sha256 in hex)` CalculateNAR gives for `node` (a protobuf-JSON
/// `Node`) with its name set to `name`.
fn calculate_nar(addr: &str, node: &serde_json::Value, name: &[u8]) -> (u64, String) {
    let mut node = node.clone();
    for kind in ["directory", "file", "symlink"] {
        if let Some(n) = node.get_mut(kind) {
            n["name"] = b64(name).into();
        }
    }
    let out = call_ok(addr, CALCULATE_NAR, &[node.to_string()]);
    let size = out[0]["nar_size"].as_str().unwrap().parse().unwrap();
    (size, hex(&unb64(&out[0]["nar_sha256"])))
}

#[test]
fn daemon_pathinfo_service_against_the_oracle_client_and_nix() {
    let tmp = tempfile::tempdir().unwrap();
    let xdg = tmp.path().join("xdg");
    let store = tmp.path().join("store");
    let data = tmp.path().join("data");

    // A tree with every kind of entry, and what Nix says about it and about one file.
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
    let tree_nix = nix_add(&tree, &store, &xdg);
    let run_nix = nix_add(&tree.join("sub/run"), &store, &xdg);

    let (daemon, addr) = start(&data);

    // Reflection (both versions) shows all services.
    for version in ["v1", "v1alpha"] {
        let out = cairn_testkit::oracle::client()
            .args(["--reflection", version, &addr, "list"])
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "list over {version}: {out:?}");
        for service in [
            "tvix.castore.v1.BlobService",
            "tvix.castore.v1.DirectoryService",
            "tvix.store.v1.PathInfoService",
            "grpc.health.v1.Health",
        ] {
            assert!(stdout.contains(service), "{version}: {stdout}");
        }
    }
    let health = call_ok(
        &addr,
        "grpc.health.v1.Health/Check",
        &[r#"{"service":"tvix.store.v1.PathInfoService"}"#.into()],
    );
    assert_eq!(health[0]["status"], "SERVING");

    // The tree's content goes in with `cairn import` (through the daemon's socket,
    // the daemon holding the data directory); it prints Nix's path.
    let out = Command::new(env!("CARGO_BIN_EXE_cairn"))
        .arg("import")
        .arg(&tree)
        .arg("--data-dir")
        .arg(&data)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), tree_nix.path);
    let imported = get(&addr, &tree_nix.path);
    let tree_node = imported["node"].clone();
    let tree_basename = tree_nix.path.strip_prefix("/nix/store/").unwrap();
    assert_eq!(
        unb64(&tree_node["directory"]["name"]),
        tree_basename.as_bytes()
    );

    // The file's content goes in with BlobService/Put of the oracle client.
    let run_content = std::fs::read(tree.join("sub/run")).unwrap();
    let put_blob = call_ok(
        &addr,
        "tvix.castore.v1.BlobService/Put",
        &[serde_json::json!({ "data": b64(&run_content) }).to_string()],
    );
    let run_digest = put_blob[0]["digest"].as_str().unwrap().to_owned();
    assert_eq!(run_digest, b64(blake3::hash(&run_content).as_bytes()));
    let run_basename = run_nix.path.strip_prefix("/nix/store/").unwrap();
    let run_node = serde_json::json!({ "file": {
        "name": b64(run_basename.as_bytes()),
        "digest": run_digest,
        "size": run_content.len().to_string(),
        "executable": true,
    }});

    // A file root with nothing optional but ca, put first: the tree references
    // it, and a reference must be registered before its referrer.
    let run_info = serde_json::json!({
        "node": run_node,
        "narinfo": {
            "nar_size": run_nix.nar_size.to_string(),
            "nar_sha256": run_nix.nar_sha256_b64,
            "ca": { "digest": run_nix.nar_sha256_b64 },
        },
    });
    let put = call_ok(&addr, PUT, &[run_info.to_string()]);
    assert_eq!(put, vec![run_info.clone()]);
    assert_eq!(get(&addr, &run_nix.path), run_info);
    // Then the tree's PathInfo with Nix's NAR hash and size and every other field
    // set but ca: a content address with this (made-up) reference would give
    // another store path, which the server refuses (see below).
    let ca_digest = unb64(&tree_nix.nar_sha256_b64.clone().into());
    assert_eq!(
        tree_nix.ca,
        format!(
            "fixed:r:sha256:{}",
            cairn_nix::nixbase32::encode(&ca_digest)
        )
    );
    let tree_info = serde_json::json!({
        "node": tree_node,
        "references": [b64(&digest_of(&run_nix.path))],
        "narinfo": {
            "nar_size": tree_nix.nar_size.to_string(),
            "nar_sha256": tree_nix.nar_sha256_b64,
            "signatures": [{ "name": "cache.example.org-1", "data": b64(&[5; 64]) }],
            "reference_names": [run_basename],
            "deriver": { "name": "tree.drv", "digest": b64(&[7; 20]) },
        },
    });
    let mut with_ca = tree_info.clone();
    // `type` NAR_SHA256 is 0, proto3's default: absent from the JSON.
    with_ca["narinfo"]["ca"] = serde_json::json!({ "digest": tree_nix.nar_sha256_b64 });
    let err = call_fails(&addr, PUT, &with_ca, "INVALID_ARGUMENT");
    assert!(err.contains("narinfo.ca"), "{err}");
    let put = call_ok(&addr, PUT, &[tree_info.to_string()]);
    assert_eq!(put, vec![tree_info.clone()]);
    assert_eq!(get(&addr, &tree_nix.path), tree_info);

    let mut expected_list = vec![tree_info.clone(), run_info.clone()];
    expected_list.sort_by_key(|p| p["node"].to_string());
    assert_eq!(list(&addr), expected_list);

    // Get: absent, malformed.
    call_fails(
        &addr,
        GET,
        &serde_json::json!({ "by_output_hash": b64(&[3; 20]) }),
        "NOT_FOUND",
    );
    for bad in [
        serde_json::json!({ "by_output_hash": b64(&[3; 19]) }),
        serde_json::json!({}),
    ] {
        call_fails(&addr, GET, &bad, "INVALID_ARGUMENT");
    }

    // Put: malformed PathInfos are INVALID_ARGUMENT naming the field; none is stored.
    let mut cases: Vec<(serde_json::Value, &str)> = Vec::new();
    let mut case = |field: &'static str, edit: &dyn Fn(&mut serde_json::Value)| {
        let mut v = tree_info.clone();
        edit(&mut v);
        cases.push((v, field));
    };
    case("node.name", &|v| {
        v["node"]["directory"]["name"] = b64(b"not-a-store-path").into()
    });
    case("node", &|v| v["node"] = serde_json::json!({}));
    case("node", &|v| {
        v["node"]["directory"]["digest"] = b64(blake3::hash(b"absent").as_bytes()).into()
    });
    case("references[0]", &|v| {
        v["references"][0] = b64(&[0; 19]).into()
    });
    case("narinfo.reference_names", &|v| {
        v["narinfo"]["reference_names"] = serde_json::json!([])
    });
    case("narinfo.reference_names[0]", &|v| {
        v["narinfo"]["reference_names"][0] = "22bgd045z0d4icpbc2yyz4gx48ak44la-hello".into()
    });
    case("narinfo.nar_sha256", &|v| {
        v["narinfo"]["nar_sha256"] = b64(&[1; 20]).into()
    });
    // 0 is proto3's default, so the field is simply absent.
    case("narinfo.nar_size", &|v| {
        v["narinfo"].as_object_mut().unwrap().remove("nar_size");
    });
    case("narinfo.signatures[0]", &|v| {
        v["narinfo"]["signatures"][0]["data"] = b64(&[0; 63]).into()
    });
    case("narinfo.deriver", &|v| {
        v["narinfo"]["deriver"]["digest"] = b64(&[0; 10]).into()
    });
    case("narinfo.ca.digest", &|v| {
        v["narinfo"]["ca"]["type"] = "FLAT_SHA1".into()
    });
    case("narinfo", &|v| {
        v.as_object_mut().unwrap().remove("narinfo");
    });
    // Well-formed, but not what the content is, or a reference not registered.
    case("narinfo.nar_sha256", &|v| {
        v["narinfo"]["nar_sha256"] = b64(&[1; 32]).into()
    });
    case("narinfo.nar_size", &|v| {
        v["narinfo"]["nar_size"] = "1".into()
    });
    case("references[0]", &|v| {
        v["references"][0] = b64(&[9; 20]).into();
        v["narinfo"]["reference_names"][0] =
            format!("{}-absent", cairn_nix::nixbase32::encode(&[9; 20])).into();
    });
    for (msg, field) in &cases {
        let err = call_fails(&addr, PUT, msg, "INVALID_ARGUMENT");
        assert!(err.contains(field), "{field}: {err}");
    }
    assert_eq!(list(&addr), expected_list);

    // CalculateNAR equals Nix's NAR for a directory (empty name or a name), a file
    // and a symlink root.
    let (tree_size, tree_hex) = nix_nar(&tree, &xdg);
    assert_eq!(
        (tree_size, tree_hex.clone()),
        (tree_nix.nar_size, hex(&ca_digest))
    );
    let tree_nar = (tree_size, tree_hex);
    for name in [&b""[..], tree_basename.as_bytes()] {
        assert_eq!(calculate_nar(&addr, &tree_node, name), tree_nar);
    }
    let run_nar = nix_nar(&tree.join("sub/run"), &xdg);
    assert_eq!(calculate_nar(&addr, &run_node, b""), run_nar);
    let link_node = serde_json::json!({ "symlink": { "target": b64(b"../hello") } });
    let link_nar = nix_nar(&tree.join("sub/link"), &xdg);
    assert_eq!(calculate_nar(&addr, &link_node, b""), link_nar);
    call_fails(
        &addr,
        CALCULATE_NAR,
        &serde_json::json!({ "directory": {
            "digest": b64(blake3::hash(b"absent").as_bytes()), "size": "0" } }),
        "NOT_FOUND",
    );
    call_fails(
        &addr,
        CALCULATE_NAR,
        &serde_json::json!({ "directory": { "digest": "AAAA", "size": "1" } }),
        "INVALID_ARGUMENT",
    );

    // After a graceful restart everything put is still there, and CalculateNAR
    // (answered from its cache this time) still agrees with Nix.
    stop(daemon);
    let (daemon, addr) = start(&data);
    assert_eq!(get(&addr, &tree_nix.path), tree_info);
    assert_eq!(get(&addr, &run_nix.path), run_info);
    assert_eq!(list(&addr), expected_list);
    assert_eq!(calculate_nar(&addr, &tree_node, b""), tree_nar);
    assert_eq!(calculate_nar(&addr, &run_node, b""), run_nar);
    stop(daemon);
}

/// `cairn import` of the three worked trees of WIRE.md gives the root digests and
/// sizes tvix computes for them (tvix's size rule, so the same tree gets the same
/// digests in cairn and tvix) and the store paths listed there; the daemon then
/// serves those root nodes, and every directory of the closures, by those digests.
#[test]
fn import_of_wire_trees_gives_tvix_digests() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().unwrap();
    let t1 = tmp.path().join("t1");
    std::fs::create_dir_all(t1.join("sub")).unwrap();
    std::fs::write(t1.join("a"), "hello\n").unwrap();
    std::os::unix::fs::symlink("a", t1.join("link")).unwrap();
    std::fs::write(t1.join("sub/b"), "world\n").unwrap();
    let t2 = tmp.path().join("t2");
    std::fs::create_dir_all(t2.join("d/d/d")).unwrap();
    std::fs::create_dir_all(t2.join("d/e")).unwrap();
    std::fs::write(t2.join("d/d/d/f"), "x").unwrap();
    let t3 = tmp.path().join("t3");
    std::fs::create_dir_all(t3.join("empty")).unwrap();
    std::fs::write(t3.join("f"), "").unwrap();
    std::fs::set_permissions(t3.join("f"), std::fs::Permissions::from_mode(0o755)).unwrap();

    // From WIRE.md: (tree, root digest, root size, store path).
    let expected = [
        (
            &t1,
            "eSENmoyWHN7tU6p05/QlopN4HMw9rfrW0XgVVrIQAz8=",
            8,
            "/nix/store/9sz2a5xb3xc6xaspcz4k7pmx7j25656p-t1",
        ),
        (
            &t2,
            "RhA22NC0ooO5xksXqLKrfnhU1oIX4Cf3L+0wNfDgebE=",
            10,
            "/nix/store/ip1d28sq3wn8m1qyn7hkc947zjd1v0qf-t2",
        ),
        (
            &t3,
            "+mD7M/ZjkNysAz44LO3lpuJ/kQfBHOFXO4mQliGOX3g=",
            4,
            "/nix/store/fiha6hgvpl851537lw8v3jslkn54idic-t3",
        ),
    ];
    let data = tmp.path().join("data");
    for (tree, _, _, path) in &expected {
        let out = Command::new(env!("CARGO_BIN_EXE_cairn"))
            .arg("import")
            .arg(tree)
            .env("CAIRN_DATA_DIR", &data)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), *path);
    }

    let (daemon, addr) = start(&data);
    for (_, digest, size, path) in &expected {
        let info = get(&addr, path);
        let node = &info["node"]["directory"];
        assert_eq!(node["digest"], *digest, "{path}: {info}");
        assert_eq!(node["size"], size.to_string(), "{path}: {info}");
        // The closure, root first: every directory is served under the digest of
        // the bytes served, and the root under tvix's digest.
        let dirs = call_ok(
            &addr,
            "tvix.castore.v1.DirectoryService/Get",
            &[serde_json::json!({ "digest": digest, "recursive": true }).to_string()],
        );
        assert!(!dirs.is_empty(), "{path}");
        for d in &dirs {
            for child in d["directories"].as_array().into_iter().flatten() {
                let one = call_ok(
                    &addr,
                    "tvix.castore.v1.DirectoryService/Get",
                    &[serde_json::json!({ "digest": child["digest"] }).to_string()],
                );
                assert_eq!(one.len(), 1, "{path}: {child}");
                assert!(dirs.contains(&one[0]), "{path}: {child}");
            }
        }
    }
    stop(daemon);
}

/// Who may write: the socket is the daemon user's only, a non-loopback --listen
/// with open writes is refused, and with --grpc-token-file TCP writes (and,
/// with --grpc-read-token-file, reads) need the token, which cairn's commands
/// send from --token-file; the socket needs none.
#[test]
fn daemon_access_control() {
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");

    let out = Command::new(env!("CARGO_BIN_EXE_cairn"))
        .args(["daemon", "--no-http", "--listen", "0.0.0.0:0", "--data-dir"])
        .arg(&data)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("non-loopback") && stderr.contains("--grpc-token-file"),
        "{stderr}"
    );

    let token = tmp.path().join("token");
    std::fs::write(&token, "s3cret\n").unwrap();
    let read_token = tmp.path().join("read-token");
    std::fs::write(&read_token, "r3ad\n").unwrap();
    let (daemon, addr, line) = start_with(
        &data,
        &[
            "--grpc-token-file",
            token.to_str().unwrap(),
            "--grpc-read-token-file",
            read_token.to_str().unwrap(),
        ],
    );
    assert!(line.contains("writes with the token"), "{line}");
    assert!(line.contains("uploads refused"), "{line}");
    let socket = data.join("cairn.sock");
    let meta = std::fs::metadata(&socket).unwrap();
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);

    let file = tmp.path().join("f");
    std::fs::write(&file, "some content").unwrap();
    let cairn = |args: &[&str], token: Option<&Path>| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_cairn"));
        c.args(args)
            .env("CAIRN_DATA_DIR", &data)
            .env_remove("CAIRN_TOKEN_FILE");
        if let Some(t) = token {
            c.env("CAIRN_TOKEN_FILE", t);
        }
        c.output().unwrap()
    };
    let store = format!("grpc+http://{addr}");
    let import = ["import", "--store", &store, file.to_str().unwrap()];
    let out = cairn(&import, None);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("need") && stderr.contains("token"),
        "{stderr}"
    );
    // The read token does not allow writes.
    assert!(!cairn(&import, Some(&read_token)).status.success());
    let out = cairn(&import, Some(&token));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let path = String::from_utf8(out.stdout).unwrap().trim().to_string();

    // Reads need a token too, either one.
    let info = ["path-info", "--store", &store, &path];
    assert!(!cairn(&info, None).status.success());
    assert!(cairn(&info, Some(&read_token)).status.success());
    assert!(cairn(&info, Some(&token)).status.success());
    // The oracle client without a token: UNAUTHENTICATED; health stays open.
    call_fails(
        &addr,
        "tvix.castore.v1.BlobService/Put",
        &serde_json::json!({ "data": b64(b"x") }),
        "UNAUTHENTICATED",
    );
    call_ok(&addr, "grpc.health.v1.Health/Check", &["{}".into()]);

    // Over the socket (the data directory's daemon), no token is needed.
    std::fs::write(&file, "other content").unwrap();
    let out = cairn(&["import", file.to_str().unwrap()], None);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stop(daemon);
}

/// PUTs Nix's NAR of `tree` to the binary cache at `http` (uncompressed, named
/// by its hash); the answer's body and status code on the last line.
fn put_nar(nix: &cairn_testkit::nix::Nix, http: &str, tree: &Path) -> String {
    let nar = cairn_testkit::nix::ok_bytes(nix.command("nix-store").arg("--dump").arg(tree));
    let sha = cairn_nix::hash::HashAlgo::Sha256.digest(&nar).to_nix32();
    let file = nix.path("upload.nar");
    std::fs::write(&file, &nar).unwrap();
    let out = Command::new("curl")
        .args(["-s", "-w", "\n%{http_code}", "-X", "PUT", "--data-binary"])
        .arg(format!("@{}", file.display()))
        .arg(format!("http://{http}/nar/{sha}.nar"))
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The operator's limits refuse early, with 413 over HTTP and
/// RESOURCE_EXHAUSTED over gRPC, registering nothing: a directory of more
/// entries than --max-directory-entries (in a NAR upload and in a
/// DirectoryService.Put) and a NAR larger than --max-nar-size.
#[test]
fn daemon_limits() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let (daemon, addr, line) = start_with(
        &data,
        &[
            "--max-directory-entries",
            "100",
            "--max-nar-size",
            "1M",
            "--allow-anonymous-uploads",
        ],
    );
    let http = http_addr(&line);
    let nix = cairn_testkit::nix::Nix::new();
    let put_nar = |tree: &Path| put_nar(&nix, &http, tree);
    let wide = tmp.path().join("wide");
    std::fs::create_dir(&wide).unwrap();
    for i in 0..150 {
        std::fs::write(wide.join(format!("f{i}")), "x").unwrap();
    }
    let out = put_nar(&wide);
    assert!(out.ends_with("413"), "{out}");
    assert!(out.contains("more than 100 entries"), "{out}");
    let big = tmp.path().join("big");
    std::fs::write(&big, vec![0u8; 2 << 20]).unwrap();
    let out = put_nar(&big);
    assert!(out.ends_with("413"), "{out}");
    assert!(out.contains("--max-nar-size"), "{out}");
    // Within the limits: accepted.
    let small = tmp.path().join("small");
    std::fs::write(&small, "small").unwrap();
    let out = put_nar(&small);
    assert!(out.ends_with("201"), "{out}");

    let entries: Vec<serde_json::Value> = (0..150)
        .map(|i| {
            serde_json::json!({
                "name": b64(format!("f{i:03}").as_bytes()),
                "target": b64(b"t"),
            })
        })
        .collect();
    let err = call_fails(
        &addr,
        "tvix.castore.v1.DirectoryService/Put",
        &serde_json::json!({ "symlinks": entries }),
        "RESOURCE_EXHAUSTED",
    );
    assert!(err.contains("more than 100 entries"), "{err}");
    stop(daemon);
}

/// A flood of idle connections (bounded, on 127.0.0.1) on the binary cache and
/// on gRPC's TCP port takes no more than each listener's cap; imports through
/// the socket go on meanwhile, the idle ones are closed after the idle timeout,
/// and the cache answers again.
#[test]
fn idle_connection_flood_stalls_nothing() {
    use std::io::{Read, Write};
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let (daemon, addr, line) = start_with(
        &data,
        &[
            "--http-max-connections",
            "50",
            "--http-idle-timeout",
            "2",
            "--grpc-max-connections",
            "50",
        ],
    );
    let http = http_addr(&line);
    let mut flood = Vec::new();
    for target in [&http, &addr] {
        for _ in 0..300 {
            flood.push(std::net::TcpStream::connect(target).unwrap());
        }
    }
    // Imports through the socket while the flood holds its connections.
    for i in 0..3 {
        let file = tmp.path().join(format!("f{i}"));
        std::fs::write(&file, format!("during the flood {i}")).unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_cairn"))
            .arg("import")
            .arg(&file)
            .env("CAIRN_DATA_DIR", &data)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // The binary cache closes the idle ones after its idle timeout (and those
    // over its cap at once): every flood connection to it ends.
    let started = std::time::Instant::now();
    for conn in &mut flood[..300] {
        conn.set_read_timeout(Some(std::time::Duration::from_secs(10)))
            .unwrap();
        let mut byte = [0u8; 1];
        // Closed (EOF, or a reset for one closed at accept), not timed out.
        match conn.read(&mut byte) {
            Ok(0) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
            other => panic!("a flood connection is still open: {other:?}"),
        }
    }
    assert!(started.elapsed() < std::time::Duration::from_secs(10));
    drop(flood);
    let mut conn = std::net::TcpStream::connect(&http).unwrap();
    conn.write_all(b"GET /nix-cache-info HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut answer = String::new();
    conn.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    stop(daemon);
}

/// A tmpfs mounted for the test, unmounted when dropped.
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    fn mount(at: &Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(at).unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(at)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "this test mounts a tmpfs (as root): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Tmpfs(at.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// A full disk: uploads get 507 naming the data directory (Nix fails at once
/// instead of retrying a 500), the failed writes' space is given back, and once
/// space is freed writes work again without a restart.
#[test]
fn full_disk_then_space_freed_without_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let mnt = tmp.path().join("mnt");
    let _fs = Tmpfs::mount(&mnt, "48m");
    let data = mnt.join("data");
    let filler = mnt.join("filler");
    std::fs::write(&filler, vec![1u8; 24 << 20]).unwrap();
    let (daemon, _addr, line) = start_with(&data, &["--allow-anonymous-uploads"]);
    let http = http_addr(&line);
    let nix = cairn_testkit::nix::Nix::new();
    let put_nar = |seed: u64| {
        let file = tmp.path().join(format!("content-{seed}"));
        std::fs::write(&file, cairn_testkit::data::pseudo_random(6 << 20, seed)).unwrap();
        put_nar(&nix, &http, &file)
    };
    let packs_size = || -> u64 {
        std::fs::read_dir(data.join("packs"))
            .unwrap()
            .map(|e| e.unwrap().metadata().unwrap().len())
            .sum()
    };
    let mut full = None;
    for seed in 0..10 {
        let out = put_nar(seed);
        if !out.ends_with("201") {
            full = Some((seed, out));
            break;
        }
    }
    let (seed, out) = full.expect("the disk never filled up");
    assert!(out.ends_with("507"), "{out}");
    assert_eq!(out.matches("storage is full").count(), 1, "{out}");
    assert!(out.contains(data.to_str().unwrap()), "{out}");
    // An import through the daemon's socket fails too, loudly: a non-zero exit
    // with gRPC's RESOURCE_EXHAUSTED and the data directory, each said once.
    let file = tmp.path().join("import-me");
    std::fs::write(&file, cairn_testkit::data::pseudo_random(6 << 20, 200)).unwrap();
    let out = common::cairn_at(&data, &["import", file.to_str().unwrap()], None);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "import on a full disk succeeded: {err}"
    );
    assert!(
        out.stdout.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(err.contains("RESOURCE_EXHAUSTED"), "{err}");
    assert_eq!(err.matches("storage is full").count(), 1, "{err}");
    assert!(err.contains(data.to_str().unwrap()), "{err}");
    // The failed upload's bytes are given back (the committer cuts the retired
    // pack within about a second): the packs hold the committed uploads only.
    std::thread::sleep(std::time::Duration::from_millis(2500));
    let committed = packs_size();
    assert!(
        committed <= (seed + 1) * (6 << 20),
        "{committed} bytes in the packs"
    );
    // Space freed: the same upload now succeeds, without a restart.
    std::fs::remove_file(&filler).unwrap();
    let out = put_nar(seed);
    assert!(out.ends_with("201"), "{out}");
    let out = put_nar(100);
    assert!(out.ends_with("201"), "{out}");
    common::ok(common::cairn_at(
        &data,
        &["import", file.to_str().unwrap()],
        None,
    ));
    stop(daemon);
}
