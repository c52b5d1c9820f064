//! Shared by the NAR tests: trees on disk, Nix's NAR of them, and store backends.
#![allow(dead_code, clippy::unwrap_used)]

use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use cairn_castore::{BlobService, DirectoryService};

/// Runs a Nix command with the test settings; panics with a clear message if Nix is
/// missing (tests that need Nix fail, never skip).
pub fn nix(program: &str, args: &[&std::ffi::OsStr]) -> Vec<u8> {
    let cache = tempfile::tempdir().unwrap();
    let out = Command::new(program)
        .args(args)
        .env("XDG_CACHE_HOME", cache.path())
        .env(
            "NIX_CONFIG",
            "experimental-features = nix-command\nsandbox = false\nsubstituters =",
        )
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run {program} (the real Nix is required for this test): {e}")
        });
    assert!(
        out.status.success(),
        "{program} {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// `nix-store --dump PATH`.
pub fn nix_dump(path: &Path) -> Vec<u8> {
    nix("nix-store", &["--dump".as_ref(), path.as_os_str()])
}

/// `nix-hash --type sha256 PATH` (hex of the NAR's sha256).
pub fn nix_hash_hex(path: &Path) -> String {
    let out = nix(
        "nix-hash",
        &["--type".as_ref(), "sha256".as_ref(), path.as_os_str()],
    );
    String::from_utf8(out).unwrap().trim().to_string()
}

/// Deterministic pseudo-random bytes.
pub fn bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

pub fn file(path: &Path, contents: &[u8], executable: bool) {
    std::fs::write(path, contents).unwrap();
    let mode = if executable { 0o755 } else { 0o644 };
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// Named test trees in `base`: (name, path of the root).
pub fn trees(base: &Path) -> Vec<(&'static str, PathBuf)> {
    let mut out = Vec::new();

    let p = base.join("empty-file");
    file(&p, b"", false);
    out.push(("empty file", p));

    let p = base.join("exec-file");
    file(&p, &bytes(1, 13), true);
    out.push(("executable file", p));

    let p = base.join("symlink");
    symlink("/nix/store/somewhere/else", &p).unwrap();
    out.push(("symlink root", p));

    let p = base.join("big-file");
    file(&p, &bytes(2, 3 * 1024 * 1024 + 5), false);
    out.push(("multi-chunk file", p));

    let p = base.join("empty-dir");
    std::fs::create_dir(&p).unwrap();
    out.push(("empty directory", p));

    let p = base.join("mixed");
    std::fs::create_dir(&p).unwrap();
    for size in (0..=17).chain([63, 64, 65, 4095, 4096, 4097, 65535, 65536, 65537, 200_001]) {
        file(
            &p.join(format!("size-{size}")),
            &bytes(size as u64, size),
            false,
        );
        file(
            &p.join(format!("exec-{size}")),
            &bytes(size as u64 + 7, size),
            true,
        );
    }
    std::fs::create_dir(p.join("empty")).unwrap();
    std::fs::create_dir(p.join("sub")).unwrap();
    file(&p.join("sub/a"), b"a", false);
    symlink("sub", p.join("link-to-dir")).unwrap();
    symlink("does/not/exist", p.join("dangling")).unwrap();
    symlink("x".repeat(4000), p.join("long-target")).unwrap();
    symlink("../../..//.", p.join("dots")).unwrap();
    // Names with odd bytes, and the longest allowed name.
    for name in [
        &b"with space"[..],
        b"new\nline",
        b"\xff\xfe bytes",
        b"-dash",
        b"\xc3\xa9t\xc3\xa9",
        b"UPPER",
        b"a.b.c",
        &[b'n'; 255],
    ] {
        file(&p.join(std::ffi::OsStr::from_bytes(name)), name, false);
    }
    let mut deep = p.join("deep");
    for i in 0..40 {
        deep = deep.join(format!("d{i}"));
    }
    std::fs::create_dir_all(&deep).unwrap();
    file(&deep.join("bottom"), b"bottom", true);
    let many = p.join("many");
    std::fs::create_dir(&many).unwrap();
    for i in 0..1500 {
        file(
            &many.join(format!("f{i:05}")),
            &bytes(i, (i % 300) as usize),
            i % 7 == 0,
        );
    }
    file(&p.join("multi-chunk"), &bytes(3, 1_500_000), true);
    out.push(("mixed tree", p));

    out
}

/// A pair of services.
pub struct Backend {
    pub name: &'static str,
    pub blobs: Arc<dyn BlobService>,
    pub dirs: Arc<dyn DirectoryService>,
    _dir: Option<tempfile::TempDir>,
    _server: Option<AbortOnDrop>,
}

/// Stops a spawned server when dropped.
pub struct AbortOnDrop(pub tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// gRPC clients of a castore server (memory backends) on loopback TCP.
pub async fn grpc() -> Backend {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (routes, _) = cairn_castore::server::routes(
        Arc::new(cairn_castore::blobservice::MemoryBlobService::new()),
        Arc::new(cairn_castore::directoryservice::MemoryDirectoryService::new()),
        &[],
    )
    .await
    .unwrap();
    let task = tokio::spawn(async move {
        // Nagle on the server's small responses costs a delayed ACK (~40 ms) per blob
        // read; `serve` takes accepted streams as they are.
        let incoming = futures::StreamExt::map(
            tokio_stream::wrappers::TcpListenerStream::new(listener),
            |s| {
                s.inspect(|s| {
                    let _ = s.set_nodelay(true);
                })
            },
        );
        cairn_castore::server::serve(routes, incoming, std::future::pending())
            .await
            .unwrap();
    });
    let url = format!("grpc+http://127.0.0.1:{port}");
    Backend {
        name: "grpc",
        blobs: cairn_castore::blob_service_from_addr(&url).unwrap(),
        dirs: cairn_castore::directory_service_from_addr(&url).unwrap(),
        _dir: None,
        _server: Some(AbortOnDrop(task)),
    }
}

/// (offset, size) of every file's contents in a NAR, by `cairn-nix`'s reader.
pub fn contents_ranges(nar: &[u8]) -> Vec<(u64, u64)> {
    let mut reader = cairn_nix::nar::Reader::new(nar);
    let mut out = Vec::new();
    while let Some(ev) = reader.next().unwrap() {
        if let cairn_nix::nar::Event::File { offset, size, .. } = ev {
            out.push((offset, size));
        }
    }
    out
}

pub fn memory() -> Backend {
    Backend {
        name: "memory",
        blobs: Arc::new(cairn_castore::blobservice::MemoryBlobService::new()),
        dirs: Arc::new(cairn_castore::directoryservice::MemoryDirectoryService::new()),
        _dir: None,
        _server: None,
    }
}

pub fn embedded() -> Backend {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("redb://{}", dir.path().display());
    Backend {
        name: "embedded",
        blobs: cairn_castore::blob_service_from_addr(&url).unwrap(),
        dirs: cairn_castore::directory_service_from_addr(&url).unwrap(),
        _dir: Some(dir),
        _server: None,
    }
}

pub fn backends() -> Vec<Backend> {
    vec![memory(), embedded()]
}

pub fn sha256(data: &[u8]) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(data).into()
}

pub fn hex(data: &[u8]) -> String {
    data.iter().map(|b| format!("{b:02x}")).collect()
}

/// Reads a whole renderer.
pub async fn read_all(mut r: impl tokio::io::AsyncRead + Unpin) -> std::io::Result<Vec<u8>> {
    use tokio::io::AsyncReadExt;
    let mut out = Vec::new();
    r.read_to_end(&mut out).await?;
    Ok(out)
}
