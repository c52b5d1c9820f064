//! `cairn daemon` as a user runs it: the real binary on the embedded store in a
//! temporary data directory, spoken to by a gRPC client we did not write
//! (`tests/oracle/grpc_client.py`, schema learned through reflection), over TCP and
//! over the unix socket. A blob put before a SIGTERM must be there after a restart.
//!
//! FIXME: grpcio (C core 1.85) gets RST_STREAM (PROTOCOL_ERROR) over the unix
//! socket while TCP works. Cause (seen with GRPC_TRACE=http): for a `unix:` target
//! it sends `:authority: tmp%2Fdir%2Fcairn.sock`, and the `h2` crate under tonic
//! rejects an authority with `%` in the host as malformed (hyperium/h2#487). A
//! grpcio user can pass the channel option `grpc.default_authority=localhost`.
//! Until h2 accepts it, the socket is checked with cairn's own client.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use base64::Engine;

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

fn grpc(addr: &str, method: &str, messages: &[String]) -> (bool, String, String) {
    let script =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/oracle/grpc_client.py");
    let mut cmd = Command::new(python());
    cmd.arg(script)
        .arg("--proto-names")
        .arg(addr)
        .arg("call")
        .arg(method);
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

/// A running daemon, killed if the test fails before stopping it.
struct Daemon(Option<Child>);

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Starts the daemon on a free port and returns it with its TCP address.
fn start(data_dir: &Path) -> (Daemon, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_cairn"))
        .args([
            "daemon",
            "--listen",
            "127.0.0.1:0",
            "--http-listen",
            "127.0.0.1:0",
            "--data-dir",
        ])
        .arg(data_dir)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    stderr.read_line(&mut line).unwrap();
    let addr = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("grpc+http://"))
        .unwrap_or_else(|| panic!("no address in the daemon's first line: {line:?}"))
        .to_string();
    // Keep draining stderr so the daemon never blocks on a full pipe.
    std::thread::spawn(move || std::io::copy(&mut stderr, &mut std::io::sink()));
    (Daemon(Some(child)), addr)
}

fn stop(mut daemon: Daemon) {
    let mut child = daemon.0.take().unwrap();
    let pid = child.id().to_string();
    let status = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    assert!(status.success());
    let exit = child.wait().unwrap();
    assert!(exit.success(), "daemon exited with {exit} after SIGTERM");
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
    let out = Command::new(env!("CARGO_BIN_EXE_cairn"))
        .args([
            "daemon",
            "--listen",
            "127.0.0.1:0",
            "--http-listen",
            "127.0.0.1:0",
            "--data-dir",
        ])
        .arg(tmp.path())
        .args(["--blob-service-addr", "ftp://nowhere"])
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
