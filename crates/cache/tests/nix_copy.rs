//! End-to-end: the real Nix 2.8 (`nix copy`, `nix path-info`, `nix store verify`)
//! against an in-process cairn binary cache on 127.0.0.1, and the uploads Nix would
//! never send (wrong hashes, truncated NARs, missing references, bad signatures,
//! wrong tokens), sent with curl; and the server's HTTP/1.1 at the byte level. These tests need Nix and curl and fail without
//! them (`scripts/install-test-deps.sh` installs both).
//!
//! The store paths come from one chroot store built once per test binary, as
//! `shared/oracle/cache_roundtrip.sh` does: a content-addressed path
//! (`nix-store --add`) and an input-addressed closure of two built paths.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use cairn_cache::{BinaryCache, CacheConfig, PendingUploads, Token};
use cairn_nix::signature::SigningKey;
use cairn_store::pathinfo::PathInfoService;
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::net::TcpStream;

const NIX_CONFIG: &str = "experimental-features = nix-command
sandbox = false
substituters =
narinfo-cache-negative-ttl = 0
narinfo-cache-positive-ttl = 0";

struct Fixture {
    _dir: tempfile::TempDir,
    root: PathBuf,
    store: String,
    /// Content-addressed: a directory with a file, an executable, a symlink,
    /// an empty file and a subdirectory.
    ca: String,
    /// Input-addressed, refers to `dep`.
    top: String,
    dep: String,
    /// Content-addressed paths whose root is not a directory: a file, an
    /// executable, an empty file, a symlink (its target with bytes Nix's JSON
    /// writer escapes, and one that is not UTF-8).
    roots: Vec<String>,
    /// `nix copy --to file://...?compression=none&write-nar-listing=true` of
    /// everything: Nix's own narinfos, NARs and listings.
    file_cache: PathBuf,
}

fn run(cmd: &mut Command) -> Output {
    cmd.output().unwrap_or_else(|e| {
        panic!("cannot run {cmd:?} (is Nix installed? scripts/install-test-deps.sh): {e}")
    })
}

fn ok(cmd: &mut Command) -> String {
    let out = run(cmd);
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// A Nix command with the test settings and its own narinfo disk cache.
fn nix(xdg: &Path, prog: &str) -> Command {
    let mut c = Command::new(prog);
    c.env("XDG_CACHE_HOME", xdg).env("NIX_CONFIG", NIX_CONFIG);
    c
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_owned();
        let xdg = root.join("xdg");
        let store = root.join("store").to_str().unwrap().to_owned();
        let src = root.join("src/demo");
        std::fs::create_dir_all(src.join("sub")).unwrap();
        std::fs::write(src.join("sub/file"), "hello\n").unwrap();
        std::fs::write(src.join("empty"), "").unwrap();
        std::fs::write(src.join("run"), "#!/bin/sh\n").unwrap();
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(src.join("run"), std::fs::Permissions::from_mode(0o755)).unwrap();
        std::os::unix::fs::symlink("sub/file", src.join("link")).unwrap();
        // Names Nix's JSON writer escapes.
        std::fs::write(src.join("quo\"te\tand\\back"), "x").unwrap();
        let ca = ok(nix(&xdg, "nix-store").args(["--store", &store, "--add"]).arg(&src))
            .trim()
            .to_owned();
        let single = root.join("src/roots");
        std::fs::create_dir_all(&single).unwrap();
        std::fs::write(single.join("file"), "hello\n").unwrap();
        std::fs::write(single.join("exec"), "#!/bin/sh\necho hi\n").unwrap();
        std::fs::set_permissions(single.join("exec"), std::fs::Permissions::from_mode(0o755))
            .unwrap();
        std::fs::write(single.join("empty"), "").unwrap();
        std::os::unix::fs::symlink("/nix/store/some/\"where\"\\x\t\u{1}", single.join("link"))
            .unwrap();
        {
            use std::os::unix::ffi::OsStrExt as _;
            let target = std::ffi::OsStr::from_bytes(b"not-utf8-\xff\xfe/\xc3\xa9");
            std::os::unix::fs::symlink(target, single.join("link-bytes")).unwrap();
        }
        let roots: Vec<String> = ["file", "exec", "empty", "link", "link-bytes"]
            .iter()
            .map(|n| {
                ok(nix(&xdg, "nix-store")
                    .args(["--store", &store, "--add"])
                    .arg(single.join(n)))
                .trim()
                .to_owned()
            })
            .collect();
        let expr = root.join("ia.nix");
        std::fs::write(
            &expr,
            r#"let
  mk = name: script: derivation { inherit name; system = builtins.currentSystem;
    builder = "/bin/sh"; PATH = "/usr/bin:/bin"; args = [ "-c" script ]; };
  dep = mk "cairn-cache-dep" "mkdir $out; echo dep > $out/file; ln -s file $out/link; head -c 300000 /dev/urandom > $out/big";
in mk "cairn-cache-top" "mkdir $out; echo ${dep}/file > $out/ref; ln -s ${dep} $out/dep"
"#,
        )
        .unwrap();
        let top = ok(nix(&xdg, "nix-build")
            .args(["--store", &store, "--option", "extra-sandbox-paths", "/bin /lib /lib64 /usr"])
            .arg("--no-out-link")
            .arg(&expr))
        .trim()
        .to_owned();
        let refs = ok(nix(&xdg, "nix-store").args(["--store", &store, "-q", "--references", &top]));
        let dep = refs.trim().to_owned();
        assert!(dep.ends_with("-cairn-cache-dep"), "references of top: {refs}");
        let file_cache = root.join("file-cache");
        ok(nix(&xdg, "nix").args([
            "copy",
            "--store",
            &store,
            "--to",
            &format!(
                "file://{}?compression=none&write-nar-listing=true",
                file_cache.display()
            ),
            &ca,
            &top,
        ]).args(&roots));
        Fixture {
            _dir: dir,
            root,
            store,
            ca,
            top,
            dep,
            roots,
            file_cache,
        }
    })
}

type Services = (
    Arc<dyn cairn_castore::BlobService>,
    Arc<dyn cairn_castore::DirectoryService>,
    Arc<dyn PathInfoService>,
);

struct Server {
    url: String,
    infos: Arc<dyn PathInfoService>,
    pending: PendingUploads,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Server {
    async fn start(config: CacheConfig) -> Server {
        Self::start_with(config, PendingUploads::in_memory().unwrap(), None).await
    }

    async fn start_with(
        config: CacheConfig,
        pending: PendingUploads,
        infos: Option<Services>,
    ) -> Server {
        let (blobs, dirs, infos) = infos.unwrap_or_else(|| {
            let blobs = cairn_castore::blob_service_from_addr("memory://").unwrap();
            let dirs = cairn_castore::directory_service_from_addr("memory://").unwrap();
            let infos = cairn_store::pathinfo::path_info_service_from_addr(
                "memory://",
                blobs.clone(),
                dirs.clone(),
            )
            .unwrap();
            (blobs, dirs, infos)
        });
        let cache = BinaryCache::new(blobs, dirs, infos.clone(), pending.clone(), config);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(cairn_cache::serve(listener, Arc::new(cache), async move {
            let _ = stopped.await;
        }));
        Server {
            url,
            infos,
            pending,
            stop: Some(stop),
            task,
        }
    }

    async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        self.task.await.unwrap().unwrap();
    }

    async fn has(&self, path: &str) -> bool {
        let sp = cairn_nix::store_path::StorePath::parse_absolute(path).unwrap();
        self.infos.get(*sp.digest()).await.unwrap().is_some()
    }
}

fn key() -> (SigningKey, String) {
    let sk = SigningKey::from_seed("cairn-test-1", &[42; 32]).unwrap();
    let pk = sk.to_verifying_key().to_string();
    (sk, pk)
}

/// curl: status code, body.
fn curl(args: &[&str]) -> (u16, Vec<u8>) {
    let out = run(Command::new("curl")
        .args(["-sS", "-o", "-", "-w", "\n%{http_code}"])
        .args(args));
    assert!(
        out.status.success(),
        "curl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut body = out.stdout;
    let nl = body.iter().rposition(|&b| b == b'\n').unwrap();
    let code = std::str::from_utf8(&body[nl + 1..])
        .unwrap()
        .parse()
        .unwrap();
    body.truncate(nl);
    (code, body)
}

fn put(url: &str, data: &Path, extra: &[&str]) -> (u16, String) {
    let mut args = vec!["-X", "PUT", "--data-binary"];
    let at = format!("@{}", data.display());
    args.push(&at);
    args.extend_from_slice(extra);
    args.push(url);
    let (code, body) = curl(&args);
    (code, String::from_utf8_lossy(&body).into_owned())
}

fn hash_part(path: &str) -> &str {
    &path["/nix/store/".len().."/nix/store/".len() + 32]
}

/// Nix's narinfo of `path` in the file cache, and its NAR file.
fn file_cache_entry(f: &Fixture, path: &str) -> (String, PathBuf) {
    let ni =
        std::fs::read_to_string(f.file_cache.join(format!("{}.narinfo", hash_part(path)))).unwrap();
    let url = ni.lines().find_map(|l| l.strip_prefix("URL: ")).unwrap();
    (ni.clone(), f.file_cache.join(url))
}

fn path_info_json(xdg: &Path, store: &str, path: &str) -> serde_json::Value {
    let out = ok(nix(xdg, "nix").args(["path-info", "--json", "-r", "--store", store, path]));
    let mut v: serde_json::Value = serde_json::from_str(&out).unwrap();
    // What a cache cannot know about a local store, and signatures (cairn adds its
    // own).
    for p in v.as_array_mut().unwrap() {
        let o = p.as_object_mut().unwrap();
        for k in [
            "registrationTime",
            "ultimate",
            "signatures",
            "downloadSize",
            "downloadHash",
            "url",
            "compression",
        ] {
            o.remove(k);
        }
    }
    v
}

#[tokio::test(flavor = "multi_thread")]
async fn nix_copy_to_and_from_each_compression() {
    let f = fixture();
    let (sk, pk) = key();
    // Every compression Nix 2.8's `nix copy --to` names its NAR files for.
    for compression in ["xz", "zstd", "bzip2", "br", "none"] {
        let xdg = tempfile::tempdir().unwrap();
        let xdg = xdg.path();
        let server = Server::start(CacheConfig {
            sign_keys: vec![sk.clone()],
            ..open_uploads()
        })
        .await;
        // With Nix's own listing uploads (which cairn reads and drops).
        let to = format!(
            "{}?compression={compression}&write-nar-listing=true",
            server.url
        );
        let (store, top, ca) = (f.store.clone(), f.top.clone(), f.ca.clone());
        let x = xdg.to_owned();
        tokio::task::spawn_blocking(move || {
            ok(nix(&x, "nix")
                .args(["copy", "--store", &store, "--to", &to, &top, &ca])
                .args(&f.roots));
        })
        .await
        .unwrap();
        assert!(server.has(&f.top).await && server.has(&f.dep).await && server.has(&f.ca).await);
        for p in &f.roots {
            assert!(server.has(p).await, "{p} ({compression})");
        }
        // Every uploaded NAR was claimed by its narinfo.
        assert_eq!(server.pending.len().await.unwrap(), 0, "{compression}");

        let (url, xdg2, store, top, ca, pk2) = (
            server.url.clone(),
            xdg.to_owned(),
            f.store.clone(),
            f.top.clone(),
            f.ca.clone(),
            pk.clone(),
        );
        let fresh = f.root.join(format!("fresh-{compression}"));
        tokio::task::spawn_blocking(move || {
            // Same metadata as the source store.
            assert_eq!(
                path_info_json(&xdg2, &url, &top),
                path_info_json(&xdg2, &store, &top)
            );
            for p in std::iter::once(&ca).chain(&f.roots) {
                assert_eq!(
                    path_info_json(&xdg2, &url, p),
                    path_info_json(&xdg2, &store, p)
                );
            }
            let fresh = fresh.to_str().unwrap();
            // Without cairn's key the input-addressed paths are refused ...
            let out = run(nix(&xdg2, "nix").args(["copy", "--from", &url, "--to", fresh, &top]));
            assert!(!out.status.success(), "unsigned copy accepted");
            // ... with it, accepted, and the contents verify.
            ok(nix(&xdg2, "nix")
                .args([
                    "copy",
                    "--option",
                    "trusted-public-keys",
                    &pk2,
                    "--from",
                    &url,
                    "--to",
                    fresh,
                    &top,
                    &ca,
                ])
                .args(&f.roots));
            ok(nix(&xdg2, "nix")
                .args([
                    "store",
                    "verify",
                    "--option",
                    "trusted-public-keys",
                    &pk2,
                    "--store",
                    fresh,
                    "-r",
                    &top,
                    &ca,
                ])
                .args(&f.roots));
            ok(nix(&xdg2, "nix").args([
                "store",
                "verify",
                "--trusted-public-keys",
                &pk2,
                "--store",
                &url,
                "-r",
                &top,
            ]));
            // The copy is the same as the source, byte for byte.
            let dump = |s: &str, p: &str| {
                run(nix(&xdg2, "nix").args(["store", "dump-path", "--store", s, p])).stdout
            };
            assert_eq!(dump(fresh, &top), dump(&store, &top));
            for p in std::iter::once(&ca).chain(&f.roots) {
                assert_eq!(dump(fresh, p), dump(&store, p), "{p}");
            }
        })
        .await
        .unwrap();
        server.stop().await;
    }
}

/// A cache that accepts uploads without a token (the default refuses them).
fn open_uploads() -> CacheConfig {
    CacheConfig {
        allow_anonymous_uploads: true,
        ..CacheConfig::default()
    }
}

/// Without an upload token or `allow_anonymous_uploads`, every upload is 403
/// saying how to enable uploads, `nix copy --to` fails, and nothing is stored.
#[tokio::test(flavor = "multi_thread")]
async fn uploads_are_refused_by_default() {
    let f = fixture();
    let server = Server::start(CacheConfig::default()).await;
    let url = server.url.clone();
    let ca = f.ca.clone();
    let store = f.store.clone();
    tokio::task::spawn_blocking(move || {
        let (ni, nar) = file_cache_entry(f, &ca);
        let nar_name = nar.file_name().unwrap().to_str().unwrap().to_owned();
        let (code, msg) = put(&format!("{url}/nar/{nar_name}"), &nar, &[]);
        assert_eq!(code, 403, "{msg}");
        assert!(
            msg.contains("--upload-token-file") && msg.contains("--allow-anonymous-uploads"),
            "{msg}"
        );
        let dir = tempfile::tempdir().unwrap();
        let ni_file = dir.path().join("ni");
        std::fs::write(&ni_file, ni.as_bytes()).unwrap();
        let (code, msg) = put(&format!("{url}/{}.narinfo", hash_part(&ca)), &ni_file, &[]);
        assert_eq!(code, 403, "{msg}");
        assert_eq!(
            curl(&["-I", &format!("{url}/{}.narinfo", hash_part(&ca))]).0,
            404
        );

        let xdg = tempfile::tempdir().unwrap();
        let out = run(nix(xdg.path(), "nix").args([
            "copy",
            "--store",
            &store,
            "--to",
            &format!("{url}?compression=none"),
            &ca,
        ]));
        assert!(!out.status.success(), "nix copy --to succeeded");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("403"), "{stderr}");
    })
    .await
    .unwrap();
    assert!(!server.has(&f.ca).await);
    assert_eq!(server.pending.len().await.unwrap(), 0);
    server.stop().await;
}

/// Uploads `paths` with `nix copy --to` (no compression).
async fn upload(server: &Server, paths: &[&str]) {
    let f = fixture();
    let mut args = vec![
        "copy".to_owned(),
        "--store".into(),
        f.store.clone(),
        "--to".into(),
        format!("{}?compression=none", server.url),
    ];
    args.extend(paths.iter().map(|p| p.to_string()));
    let xdg = tempfile::tempdir().unwrap();
    let x = xdg.path().to_owned();
    tokio::task::spawn_blocking(move || ok(nix(&x, "nix").args(&args)))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn listing_range_and_downloads() {
    let f = fixture();
    let server = Server::start(open_uploads()).await;
    let mut paths = vec![f.ca.as_str(), f.top.as_str()];
    paths.extend(f.roots.iter().map(String::as_str));
    upload(&server, &paths).await;
    let url = server.url.clone();
    tokio::task::spawn_blocking(move || {
        let xdg = tempfile::tempdir().unwrap();
        let dump = |p: &str| {
            run(nix(xdg.path(), "nix").args(["store", "dump-path", "--store", &f.store, p])).stdout
        };
        // The fixture's other roots are what they should be, as Nix lists them.
        let wants: [&[u8]; 5] = [
            b"{\"type\":\"regular\",\"size\":6,\"narOffset\":",
            b"{\"type\":\"regular\",\"size\":18,\"executable\":true,\"narOffset\":",
            b"{\"type\":\"regular\",\"size\":0,\"narOffset\":",
            b"{\"type\":\"symlink\",\"target\":\"/nix/store/some/\\\"where\\\"\\\\x\\t\\u0001\"}",
            b"{\"type\":\"symlink\",\"target\":\"not-utf8-\xff\xfe/\xc3\xa9\"}",
        ];
        for (path, want) in f.roots.iter().zip(wants) {
            let nix_ls =
                std::fs::read(f.file_cache.join(format!("{}.ls", hash_part(path)))).unwrap();
            let prefix = [&b"{\"version\":1,\"root\":"[..], want].concat();
            assert!(
                nix_ls.starts_with(&prefix),
                "{path}: {}",
                String::from_utf8_lossy(&nix_ls)
            );
        }
        // Directory roots, then the others (whose listing is the root's object
        // alone).
        for path in [&f.ca, &f.top, &f.dep].into_iter().chain(&f.roots) {
            let h = hash_part(path);
            // .ls: byte-identical to Nix's write-nar-listing.
            let (code, ls) = curl(&[&format!("{url}/{h}.ls")]);
            assert_eq!(code, 200);
            let nix_ls = std::fs::read(f.file_cache.join(format!("{h}.ls"))).unwrap();
            // Bytes, not text: a symlink target need not be UTF-8.
            assert!(
                ls == nix_ls,
                "{path}: cairn's .ls\n{}\nNix's\n{}",
                String::from_utf8_lossy(&ls),
                String::from_utf8_lossy(&nix_ls)
            );
            let (code, ni) = curl(&[&format!("{url}/{h}.narinfo")]);
            assert_eq!(code, 200);
            let ni = String::from_utf8(ni).unwrap();
            let nar_url = ni.lines().find_map(|l| l.strip_prefix("URL: ")).unwrap();
            let nar = dump(path);
            // Whole, identity.
            let (code, body) = curl(&[&format!("{url}/{nar_url}")]);
            assert_eq!((code, body.len()), (200, nar.len()));
            assert!(body == nar);
            // Ranges: inside, to the end, the last bytes.
            let n = nar.len();
            for (spec, want) in [
                (format!("{}-{}", n / 3, n / 2), &nar[n / 3..=n / 2]),
                (format!("{}-", n - 100), &nar[n - 100..]),
                ("-10".to_owned(), &nar[n - 10..]),
            ] {
                let (code, body) = curl(&[
                    "-H",
                    &format!("Range: bytes={spec}"),
                    &format!("{url}/{nar_url}"),
                ]);
                assert_eq!(code, 206, "{spec}");
                assert!(body == want, "range {spec} of {path}");
            }
            let (code, _) = curl(&[
                "-H",
                &format!("Range: bytes={n}-"),
                &format!("{url}/{nar_url}"),
            ]);
            assert_eq!(code, 416);
            // zstd and xz by URL.
            for (ext, tool) in [("zst", "zstd"), ("xz", "xz")] {
                let (code, body) = curl(&[&format!("{url}/{nar_url}.{ext}")]);
                assert_eq!(code, 200);
                let tmp = f.root.join(format!("dl-{h}.{ext}"));
                std::fs::write(&tmp, &body).unwrap();
                let out = run(Command::new(tool).arg("-dc").arg(&tmp));
                assert!(out.status.success(), "{tool} -dc");
                assert!(out.stdout == nar, "{ext} download of {path}");
            }
            // A NAR URL with another hash is absent.
            let other = nar_url.replace(
                &nar_url[nar_url.len() - 10..nar_url.len() - 4],
                "0000000000",
            );
            assert_eq!(curl(&[&format!("{url}/{other}")]).0, 404);
        }
        let (code, info) = curl(&[&format!("{url}/nix-cache-info")]);
        assert_eq!(code, 200);
        assert_eq!(
            String::from_utf8(info).unwrap(),
            "StoreDir: /nix/store\nWantMassQuery: 1\nPriority: 40\n"
        );
        assert_eq!(curl(&[&format!("{url}/{}.narinfo", "0".repeat(32))]).0, 404);
        assert_eq!(curl(&[&format!("{url}/nonsense")]).0, 404);
    })
    .await
    .unwrap();
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn rejected_uploads_register_nothing() {
    let f = fixture();
    let server = Server::start(open_uploads()).await;
    let url = server.url.clone();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_owned();
    let (ca, dep, top) = (f.ca.clone(), f.dep.clone(), f.top.clone());
    let zst = {
        use tokio::io::AsyncReadExt as _;
        let bytes = std::fs::read(file_cache_entry(f, &ca).1).unwrap();
        let mut out = Vec::new();
        async_compression::tokio::bufread::ZstdEncoder::new(&bytes[..])
            .read_to_end(&mut out)
            .await
            .unwrap();
        out
    };
    tokio::task::spawn_blocking(move || {
        let (ni, nar) = file_cache_entry(f, &ca);
        let nar_name = nar.file_name().unwrap().to_str().unwrap().to_owned();
        let ni_url = format!("{url}/{}.narinfo", hash_part(&ca));
        let write = |name: &str, data: &[u8]| {
            let p = d.join(name);
            std::fs::write(&p, data).unwrap();
            p
        };

        // narinfo before its NAR.
        let (code, msg) = put(&ni_url, &write("ni", ni.as_bytes()), &[]);
        assert_eq!(code, 400, "{msg}");
        assert!(msg.contains("has not been uploaded"), "{msg}");

        // A truncated NAR, named by its own hash (so only the truncation is wrong).
        let bytes = std::fs::read(&nar).unwrap();
        let cut = &bytes[..bytes.len() - 24];
        let cut_hash = cairn_nix::hash::HashAlgo::Sha256.digest(cut).to_nix32();
        let (code, msg) = put(
            &format!("{url}/nar/{cut_hash}.nar"),
            &write("cut", cut),
            &[],
        );
        assert_eq!(code, 400, "{msg}");
        assert!(msg.contains("NAR"), "{msg}");
        assert_eq!(curl(&["-I", &format!("{url}/nar/{cut_hash}.nar")]).0, 404);

        // A NAR whose bytes do not match the hash in its name.
        let (code, msg) = put(&format!("{url}/nar/{nar_name}"), &write("cut2", cut), &[]);
        assert_eq!(code, 400, "{msg}");
        // A whole, valid NAR under another file's name (uncompressed, so its
        // file hash is its NAR hash).
        let other = "1".repeat(52);
        let (code, msg) = put(&format!("{url}/nar/{other}.nar"), &nar, &[]);
        assert_eq!(code, 400, "{msg}");
        assert!(msg.contains("SHA-256"), "{msg}");
        assert_eq!(curl(&["-I", &format!("{url}/nar/{other}.nar")]).0, 404);

        // Data after the NAR.
        let mut long = bytes.clone();
        long.extend_from_slice(&[0; 8]);
        let long_hash = cairn_nix::hash::HashAlgo::Sha256.digest(&long).to_nix32();
        let (code, msg) = put(
            &format!("{url}/nar/{long_hash}.nar"),
            &write("long", &long),
            &[],
        );
        assert_eq!(code, 400, "{msg}");

        // Compressed: the file hash is of the bytes as sent. Named by the NAR's
        // hash instead, refused; with bytes after the compressed stream, refused;
        // named right, accepted.
        let sha = |b: &[u8]| cairn_nix::hash::HashAlgo::Sha256.digest(b).to_nix32();
        let put_zst = |hash: String, data: &[u8]| {
            put(
                &format!("{url}/nar/{hash}.nar.zst"),
                &write("zst", data),
                &[],
            )
        };
        let (code, msg) = put_zst(sha(&bytes), &zst);
        assert_eq!(code, 400, "{msg}");
        assert!(msg.contains("SHA-256"), "{msg}");
        let mut zst_long = zst.clone();
        zst_long.extend_from_slice(b"xx");
        let (code, msg) = put_zst(sha(&zst_long), &zst_long);
        assert_eq!(code, 400, "{msg}");
        assert!(
            msg.contains("after the end of the compressed stream"),
            "{msg}"
        );
        let (code, msg) = put_zst(sha(&zst), &zst);
        assert_eq!(code, 201, "{msg}");

        // The real NAR: accepted (but not served under its file hash, by GET
        // or HEAD: see head_and_get_agree).
        let (code, msg) = put(&format!("{url}/nar/{nar_name}"), &nar, &[]);
        assert_eq!(code, 201, "{msg}");

        // Wrong NarHash, wrong NarSize, wrong StorePath for the URL.
        let nar_hash_line = ni.lines().find(|l| l.starts_with("NarHash: ")).unwrap();
        let bad_hash = ni.replace(
            nar_hash_line,
            &format!("NarHash: sha256:{}", "1".repeat(52)),
        );
        let (code, msg) = put(&ni_url, &write("ni", bad_hash.as_bytes()), &[]);
        assert_eq!(code, 400, "{msg}");
        assert!(msg.contains("NarHash"), "{msg}");
        let size_line = ni.lines().find(|l| l.starts_with("NarSize: ")).unwrap();
        let bad_size = ni.replace(size_line, "NarSize: 8");
        let (code, msg) = put(&ni_url, &write("ni", bad_size.as_bytes()), &[]);
        assert_eq!(code, 400, "{msg}");
        let other_url = format!("{url}/{}.narinfo", hash_part(&dep));
        let (code, msg) = put(&other_url, &write("ni", ni.as_bytes()), &[]);
        assert_eq!(code, 400, "{msg}");
        assert!(msg.contains("does not match the URL"), "{msg}");
        let (code, msg) = put(&ni_url, &write("ni", b"StorePath: nonsense\n"), &[]);
        assert_eq!(code, 400, "{msg}");
        // A CA that gives another store path than StorePath.
        let ca_line = ni.lines().find(|l| l.starts_with("CA: ")).unwrap();
        // (Flat with the NAR's hash: only the path it gives is wrong.)
        let bad_ca = ni.replace(ca_line, &ca_line.replace("fixed:r:", "fixed:"));
        let (code, msg) = put(&ni_url, &write("ni", bad_ca.as_bytes()), &[]);
        assert_eq!(code, 400, "{msg}");
        assert!(msg.contains("CA and StorePath disagree"), "{msg}");
        for p in [&ca, &dep] {
            assert_eq!(curl(&[&format!("{url}/{}.narinfo", hash_part(p))]).0, 404);
        }

        // An oversized narinfo: 413.
        let huge = format!("{ni}{}", "X-Pad: x\n".repeat(600_000));
        let (code, msg) = put(&ni_url, &write("huge", huge.as_bytes()), &[]);
        assert_eq!(code, 413, "{msg}");

        // A missing reference: top's NAR uploaded, its dependency not.
        let (top_ni, top_nar) = file_cache_entry(f, &top);
        let top_nar_name = top_nar.file_name().unwrap().to_str().unwrap().to_owned();
        assert_eq!(
            put(&format!("{url}/nar/{top_nar_name}"), &top_nar, &[]).0,
            201
        );
        let (code, msg) = put(
            &format!("{url}/{}.narinfo", hash_part(&top)),
            &write("ni", top_ni.as_bytes()),
            &[],
        );
        assert_eq!(code, 400, "{msg}");
        assert!(msg.contains("is not in this cache"), "{msg}");
        assert_eq!(
            curl(&[&format!("{url}/{}.narinfo", hash_part(&top))]).0,
            404
        );

        // The right narinfo is accepted, and its NAR served.
        let (code, msg) = put(&ni_url, &write("ni", ni.as_bytes()), &[]);
        assert_eq!(code, 201, "{msg}");
        assert_eq!(curl(&[&ni_url]).0, 200);
    })
    .await
    .unwrap();
    assert!(!server.has(&f.top).await);
    assert!(server.has(&f.ca).await);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn trusted_keys_and_tokens() {
    let f = fixture();
    let (sk, pk) = key();
    let other = SigningKey::from_seed("other-1", &[7; 32]).unwrap();
    let server = Server::start(CacheConfig {
        trusted_keys: vec![pk.parse().unwrap()],
        upload_token: Token::new("t0ken"),
        ..open_uploads()
    })
    .await;
    let url = server.url.clone();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_owned();
    let ca = f.ca.clone();
    let top = f.top.clone();
    tokio::task::spawn_blocking(move || {
        let (ni, nar) = file_cache_entry(f, &ca);
        let nar_name = nar.file_name().unwrap().to_str().unwrap().to_owned();
        let ni_url = format!("{url}/{}.narinfo", hash_part(&ca));
        let nar_url = format!("{url}/nar/{nar_name}");
        let write = |name: &str, data: &[u8]| {
            let p = d.join(name);
            std::fs::write(&p, data).unwrap();
            p
        };
        // Wrong or missing token: 401, nothing stored.
        assert_eq!(put(&nar_url, &nar, &[]).0, 401);
        assert_eq!(
            put(&nar_url, &nar, &["-H", "Authorization: Bearer wrong"]).0,
            401
        );
        assert_eq!(put(&nar_url, &nar, &["-u", "nix:wrong"]).0, 401);
        assert_eq!(curl(&["-I", &nar_url]).0, 404);
        // Right token (Basic, as from a netrc).
        assert_eq!(put(&nar_url, &nar, &["-u", "nix:t0ken"]).0, 201);
        let auth = ["-H", "Authorization: Bearer t0ken"];

        let parsed = cairn_nix::narinfo::NarInfo::parse(&ni).unwrap();
        // Unsigned, and signed by an untrusted key: 403.
        let (code, msg) = put(&ni_url, &write("ni", ni.as_bytes()), &auth);
        assert_eq!(code, 403, "{msg}");
        let mut by_other = parsed.clone();
        by_other.sign(&other);
        let (code, msg) = put(
            &ni_url,
            &write("ni", by_other.to_string().as_bytes()),
            &auth,
        );
        assert_eq!(code, 403, "{msg}");
        // A signature under the trusted key's name that does not verify.
        let mut forged = parsed.clone();
        let mut wrong = parsed.clone();
        wrong.nar_size += 1;
        forged.add_signature(sk.sign(wrong.fingerprint().as_bytes()));
        let (code, msg) = put(&ni_url, &write("ni", forged.to_string().as_bytes()), &auth);
        assert_eq!(code, 403, "{msg}");
        assert_eq!(curl(&[&ni_url]).0, 404);
        // Signed by the trusted key: accepted; the token is still needed.
        let mut signed = parsed.clone();
        signed.sign(&sk);
        let signed_file = write("ni", signed.to_string().as_bytes());
        assert_eq!(put(&ni_url, &signed_file, &[]).0, 401);
        let (code, msg) = put(&ni_url, &signed_file, &auth);
        assert_eq!(code, 201, "{msg}");
        let (code, served) = curl(&[&ni_url]);
        assert_eq!(code, 200);
        assert!(
            String::from_utf8(served)
                .unwrap()
                .contains(&signed.signatures[0].to_string())
        );

        // nix copy with a netrc: the wrong password fails, the right one works.
        let xdg = tempfile::tempdir().unwrap();
        let host = url
            .trim_start_matches("http://")
            .split(':')
            .next()
            .unwrap()
            .to_owned();
        for (password, good) in [("nope", false), ("t0ken", true)] {
            let netrc = write(
                "netrc",
                format!("machine {host} login nix password {password}\n").as_bytes(),
            );
            let out = run(nix(xdg.path(), "nix").args([
                "copy",
                "--option",
                "netrc-file",
                netrc.to_str().unwrap(),
                "--option",
                "secret-key-files",
                "",
                "--store",
                &f.store,
                "--to",
                &url,
                &top,
            ]));
            // Built paths are unsigned, so even the right token is refused by the
            // trusted-key check (403), which shows the token passed.
            let err = String::from_utf8_lossy(&out.stderr).into_owned();
            assert!(!out.status.success());
            if good {
                assert!(err.contains("403"), "{err}");
            } else {
                assert!(err.contains("401"), "{err}");
            }
        }
    })
    .await
    .unwrap();
    assert!(!server.has(&f.top).await && !server.has(&f.dep).await);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn pending_upload_survives_restart() {
    let f = fixture();
    let data = tempfile::tempdir().unwrap();
    let blobs = cairn_castore::blob_service_from_addr("memory://").unwrap();
    let dirs = cairn_castore::directory_service_from_addr("memory://").unwrap();
    let infos = cairn_store::pathinfo::path_info_service_from_addr(
        "memory://",
        blobs.clone(),
        dirs.clone(),
    )
    .unwrap();
    let services = (blobs, dirs, infos);
    let (ni, nar) = file_cache_entry(f, &f.ca);
    let nar_name = nar.file_name().unwrap().to_str().unwrap().to_owned();

    let server = Server::start_with(
        open_uploads(),
        PendingUploads::open(data.path()).unwrap(),
        Some(services.clone()),
    )
    .await;
    let url = server.url.clone();
    let n = nar.clone();
    let code =
        tokio::task::spawn_blocking(move || put(&format!("{url}/nar/{nar_name}"), &n, &[]).0)
            .await
            .unwrap();
    assert_eq!(code, 201);
    assert_eq!(server.pending.len().await.unwrap(), 1);
    server.stop().await;

    let server = Server::start_with(
        open_uploads(),
        PendingUploads::open(data.path()).unwrap(),
        Some(services),
    )
    .await;
    let url = server.url.clone();
    let ni_file = data.path().join("ni");
    std::fs::write(&ni_file, &ni).unwrap();
    let h = hash_part(&f.ca).to_owned();
    let (code, msg) =
        tokio::task::spawn_blocking(move || put(&format!("{url}/{h}.narinfo"), &ni_file, &[]))
            .await
            .unwrap();
    assert_eq!(code, 201, "{msg}");
    assert!(server.has(&f.ca).await);
    assert!(server.pending.is_empty().await.unwrap());
    server.stop().await;
}

/// curl's exit code and the HTTP status it saw, for downloads expected to fail.
fn curl_status(args: &[&str]) -> (i32, String) {
    let out = run(Command::new("curl")
        .args(["-sS", "-o", "/dev/null", "-w", "%{http_code}"])
        .args(args));
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

/// A cache over memory services serving one path, `00…0-{name}`: a directory
/// of `entries` in order, each a file whose contents are stored (`Some`) or a
/// 1 MiB file whose blob never was (`None`). Its NarHash is a dummy; its NarSize
/// is returned.
async fn serve_with_missing_blob(name: &str, entries: &[(&str, Option<&[u8]>)]) -> (Server, u64) {
    serve_entries(name, entries, "memory://").await
}

/// The `URL:` of the narinfo of [`serve_entries`]'s path.
fn served_nar_url(url: &str) -> String {
    let (code, ni) = curl(&[&format!("{url}/{}.narinfo", "0".repeat(32))]);
    assert_eq!(code, 200);
    let ni = String::from_utf8(ni).unwrap();
    ni.lines()
        .find_map(|l| l.strip_prefix("URL: "))
        .unwrap()
        .to_string()
}

/// [`serve_with_missing_blob`] on the blob and directory services of `addr`.
async fn serve_entries(name: &str, entries: &[(&str, Option<&[u8]>)], addr: &str) -> (Server, u64) {
    use cairn_castore::{B3Digest, Directory, Node, PathComponent};
    let blobs = cairn_castore::blob_service_from_addr(addr).unwrap();
    let dirs = cairn_castore::directory_service_from_addr(addr).unwrap();
    let infos = cairn_store::pathinfo::path_info_service_from_addr(
        "memory://",
        blobs.clone(),
        dirs.clone(),
    )
    .unwrap();
    let mut dir = Directory::new();
    for (entry, contents) in entries {
        let (digest, size) = match contents {
            Some(c) => {
                let mut w = blobs.open_write().await;
                tokio::io::AsyncWriteExt::write_all(&mut w, c)
                    .await
                    .unwrap();
                (w.close().await.unwrap(), c.len() as u64)
            }
            None => (B3Digest::of(b"never stored"), 1 << 20),
        };
        let node = Node::File {
            digest,
            size,
            executable: false,
        };
        dir.add(PathComponent::try_from(*entry).unwrap(), node)
            .unwrap();
    }
    let size = dir.size();
    let root = Node::Directory {
        digest: dirs.put(dir).await.unwrap(),
        size,
    };
    let nar_size = cairn_store::nar::nar_size(dirs.as_ref(), &root)
        .await
        .unwrap();
    let basename = format!("{}-{name}", "0".repeat(32));
    infos
        .put(cairn_store::pathinfo::PathInfo {
            store_path: cairn_nix::store_path::StorePath::from_basename(&basename).unwrap(),
            node: root,
            references: vec![],
            nar_size,
            nar_sha256: [1; 32],
            signatures: vec![],
            deriver: None,
            ca: None,
        })
        .await
        .unwrap();
    let server = Server::start_with(
        open_uploads(),
        PendingUploads::in_memory().unwrap(),
        Some((blobs, dirs, infos)),
    )
    .await;
    (server, nar_size)
}

#[tokio::test(flavor = "multi_thread")]
async fn missing_blob_aborts_the_download() {
    // A directory whose first file is stored and whose second (1 MiB) is not.
    let (server, _) =
        serve_with_missing_blob("broken", &[("a", Some(b"present\n")), ("b", None)]).await;
    let url = server.url.clone();
    tokio::task::spawn_blocking(move || {
        let nar_url = served_nar_url(&url);
        let nar_url = nar_url.as_str();
        // Identity (Content-Length), a range from the start of the missing file's
        // neighbourhood, and zstd (chunked): every one is a failed transfer for
        // curl, never a complete response.
        for args in [
            vec![format!("{url}/{nar_url}")],
            vec![
                "-H".into(),
                "Range: bytes=100-".into(),
                format!("{url}/{nar_url}"),
            ],
            vec![format!("{url}/{nar_url}.zst")],
        ] {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let (exit, status) = curl_status(&args);
            assert_ne!(exit, 0, "{args:?} ended cleanly with status {status}");
        }
    })
    .await
    .unwrap();
    server.stop().await;
}

/// `.nar.zst` and `.nar.xz` are served `immutable`, so a client or proxy may keep
/// whichever copy it got: every request must get the same bytes, however the
/// NAR's rendering (blobs decoded on other threads) happens to be timed.
#[tokio::test(flavor = "multi_thread")]
async fn compressed_nars_are_the_same_bytes_every_time() {
    // The embedded store, whose reads finish on its decoding threads: the
    // compressor sees the NAR arrive in pieces at varying times.
    let data = tempfile::tempdir().unwrap();
    let addr = format!("redb://{}", data.path().display());
    let files: Vec<(String, Vec<u8>)> = (0..4u64)
        .map(|i| {
            let mut contents = cairn_testkit::data::pseudo_random(2 << 20, i);
            // Some of it compressible, so that the compressed stream is not
            // just the input stored.
            contents.extend(b"compressible ".repeat(80_000 * (i as usize + 1)));
            (format!("f{i}"), contents)
        })
        .collect();
    let entries: Vec<(&str, Option<&[u8]>)> = files
        .iter()
        .map(|(n, c)| (n.as_str(), Some(c.as_slice())))
        .collect();
    let (server, nar_size) = serve_entries("compressed", &entries, &addr).await;
    let url = server.url.clone();
    tokio::task::spawn_blocking(move || {
        let nar_url = served_nar_url(&url);
        let nar_url = nar_url.as_str();
        let (code, nar) = curl(&[&format!("{url}/{nar_url}")]);
        assert_eq!(code, 200);
        assert_eq!(nar.len() as u64, nar_size);
        let dir = tempfile::tempdir().unwrap();
        for (ext, tool) in [("zst", "zstd"), ("xz", "xz")] {
            let file_url = format!("{url}/{nar_url}.{ext}");
            let get = || {
                let (code, body) = curl(&[&file_url]);
                assert_eq!(code, 200, "{file_url}");
                body
            };
            let first = get();
            let file = dir.path().join(format!("nar.{ext}"));
            std::fs::write(&file, &first).unwrap();
            let out = run(Command::new(tool).arg("-dc").arg(&file));
            assert!(out.status.success(), "{tool} -dc");
            assert!(out.stdout == nar, "the {ext} download is not the NAR");
            // One at a time, then four at once (and the other requests of this
            // loop and of other tests load the machine meanwhile).
            for round in 0..3 {
                assert!(
                    get() == first,
                    "{ext} request {round} differs from the first"
                );
            }
            let together: Vec<Vec<u8>> = std::thread::scope(|scope| {
                let handles: Vec<_> = (0..4).map(|_| scope.spawn(get)).collect();
                handles.into_iter().map(|h| h.join().unwrap()).collect()
            });
            for (i, body) in together.iter().enumerate() {
                assert!(
                    *body == first,
                    "concurrent {ext} request {i} differs from the first ({} vs {} bytes)",
                    body.len(),
                    first.len()
                );
            }
        }
    })
    .await
    .unwrap();
    server.stop().await;
}

/// The status line and headers (names lowercased; `date`, and `transfer-encoding`
/// which hyper leaves out of `HEAD` answers as RFC 9110 allows, left out) curl
/// saw, and the number of body bytes it received.
fn curl_head(method: &str, url: &str, extra: &[&str]) -> (Vec<(String, String)>, u64) {
    let mut cmd = Command::new("curl");
    cmd.args([
        "-sS",
        "-o",
        "/dev/null",
        "-D",
        "-",
        "-w",
        "%{size_download}",
    ]);
    if method == "HEAD" {
        // -I, not -X HEAD: curl then expects no body whatever the headers say.
        cmd.arg("-I");
    }
    let out = run(cmd.args(extra).arg(url));
    assert!(out.status.success(), "curl {method} {url}: {out:?}");
    let text = String::from_utf8(out.stdout).unwrap();
    let (head, size) = text.rsplit_once("\r\n\r\n").unwrap();
    let mut lines = head.split("\r\n");
    let mut headers = vec![("status".to_owned(), lines.next().unwrap().to_owned())];
    for l in lines {
        let (k, v) = l.split_once(':').unwrap();
        let k = k.to_ascii_lowercase();
        if k != "date" && k != "transfer-encoding" {
            headers.push((k, v.trim().to_owned()));
        }
    }
    headers.sort();
    (headers, size.parse().unwrap())
}

#[tokio::test(flavor = "multi_thread")]
async fn head_and_get_agree() {
    let f = fixture();
    let server = Server::start(open_uploads()).await;
    upload(&server, &[&f.ca]).await;
    // A NAR uploaded without its narinfo: pending, under its file hash.
    let (_, dep_nar) = file_cache_entry(f, &f.dep);
    let pending = format!(
        "{}/nar/{}",
        server.url,
        dep_nar.file_name().unwrap().to_str().unwrap()
    );
    let url = server.url.clone();
    tokio::task::spawn_blocking(move || {
        assert_eq!(put(&pending, &dep_nar, &[]).0, 201);
        let h = hash_part(&f.ca);
        let (_, ni) = curl(&[&format!("{url}/{h}.narinfo")]);
        let ni = String::from_utf8(ni).unwrap();
        let nar = ni.lines().find_map(|l| l.strip_prefix("URL: ")).unwrap();
        let wrong_hash = nar.replace(&nar[nar.len() - 10..nar.len() - 4], "0000000000");
        let absent = "0".repeat(32);
        let cases: Vec<(String, Option<&str>)> = vec![
            ("nix-cache-info".into(), None),
            (format!("{h}.narinfo"), None),
            (format!("{absent}.narinfo"), None),
            ("x.narinfo".into(), None),
            (format!("{h}.ls"), None),
            (format!("{absent}.ls"), None),
            (nar.into(), None),
            (nar.into(), Some("bytes=10-99")),
            (nar.into(), Some("bytes=-5")),
            (nar.into(), Some("bytes=99999999-")),
            (format!("{nar}.zst"), None),
            (format!("{nar}.xz"), None),
            (format!("{nar}.bz2"), None),
            (format!("{nar}.br"), None),
            (wrong_hash, None),
            (
                pending.trim_start_matches(&format!("{url}/")).to_owned(),
                None,
            ),
            (format!("nar/{}.nar.xz", "1".repeat(52)), None),
            ("nar/nonsense".into(), None),
            ("nonsense".into(), None),
        ];
        for (path, range) in cases {
            let r = range.map(|r| format!("Range: {r}"));
            let extra: Vec<&str> = r.iter().flat_map(|r| ["-H", r.as_str()]).collect();
            let u = format!("{url}/{path}");
            let (get, got) = curl_head("GET", &u, &extra);
            let (head, _) = curl_head("HEAD", &u, &extra);
            assert_eq!(head, get, "HEAD and GET of {path} {range:?}");
            if let Some((_, len)) = get.iter().find(|(k, _)| k == "content-length") {
                assert_eq!(len.parse::<u64>().unwrap(), got, "GET {path} {range:?}");
            }
            let status = &get.iter().find(|(k, _)| k == "status").unwrap().1;
            // What a client or proxy may keep: NARs and listings forever (their
            // URL names their content), a narinfo an hour (it can gain
            // signatures).
            if status.contains(" 200") || status.contains(" 206") {
                let want = if path == "nix-cache-info" {
                    "public, max-age=300"
                } else if path.ends_with(".narinfo") {
                    "public, max-age=3600"
                } else {
                    "public, max-age=31536000, immutable"
                };
                let cc = get.iter().find(|(k, _)| k == "cache-control");
                assert_eq!(cc.map(|(_, v)| v.as_str()), Some(want), "{path} {range:?}");
            }
            let is_pending = path.len() == "nar/".len() + 52 + ".nar".len();
            if is_pending {
                assert!(status.contains(" 404"), "{path}: {status}");
            }
        }
    })
    .await
    .unwrap();
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn unclaimed_uploads_expire_when_the_cache_starts() {
    let f = fixture();
    let data = tempfile::tempdir().unwrap();
    let (_, nar) = file_cache_entry(f, &f.ca);
    let nar_name = nar.file_name().unwrap().to_str().unwrap().to_owned();
    let server = Server::start_with(
        open_uploads(),
        PendingUploads::open(data.path()).unwrap(),
        None,
    )
    .await;
    let url = server.url.clone();
    let code =
        tokio::task::spawn_blocking(move || put(&format!("{url}/nar/{nar_name}"), &nar, &[]).0)
            .await
            .unwrap();
    assert_eq!(code, 201);
    server.stop().await;
    // Ages are whole seconds.
    tokio::time::sleep(std::time::Duration::from_millis(2100)).await;
    let kept = Server::start_with(
        CacheConfig {
            pending_max_age: std::time::Duration::from_secs(60),
            ..open_uploads()
        },
        PendingUploads::open(data.path()).unwrap(),
        None,
    )
    .await;
    assert_eq!(kept.pending.len().await.unwrap(), 1);
    kept.stop().await;
    let server = Server::start_with(
        CacheConfig {
            pending_max_age: std::time::Duration::from_secs(1),
            ..open_uploads()
        },
        PendingUploads::open(data.path()).unwrap(),
        None,
    )
    .await;
    assert!(server.pending.is_empty().await.unwrap());
    server.stop().await;
}

/// A secret key made by Nix, named `name`, in `dir`.
fn nix_key(xdg: &Path, dir: &Path, name: &str) -> PathBuf {
    let file = dir.join(format!("{name}.key"));
    let k = ok(nix(xdg, "nix").args(["key", "generate-secret", "--key-name", name]));
    std::fs::write(&file, k).unwrap();
    file
}

/// A chroot store in `dir` with the fixture's `ca`, `top` (and so `dep`) and
/// `roots`, each signed by Nix with `key`: the store, and the paths named.
fn signed_store(xdg: &Path, dir: &Path, key: &Path) -> (String, Vec<String>) {
    let f = fixture();
    let store = dir.join("store").to_str().unwrap().to_owned();
    let mut paths = vec![f.ca.clone(), f.top.clone()];
    paths.extend(f.roots.iter().cloned());
    ok(nix(xdg, "nix")
        .args([
            "copy",
            "--no-check-sigs",
            "--store",
            &f.store,
            "--to",
            &store,
        ])
        .args(&paths));
    ok(nix(xdg, "nix")
        .args(["store", "sign", "-r", "--store", &store, "--key-file"])
        .arg(key)
        .args(&paths));
    (store, paths)
}

/// cairn's narinfo is Nix's, byte for byte, signatures included: what `nix copy
/// --to file://...?secret-key=K` writes, from a store whose paths already carry
/// another key's signature, is what cairn signing with K serves after `nix copy
/// --to` it from that store, but for the `URL` line (cairn names a NAR file by
/// store path and NAR hash, Nix by file hash). Both keys are made by Nix.
#[tokio::test(flavor = "multi_thread")]
async fn narinfo_text_is_nixs() {
    let f = fixture();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_owned();
    let xdg = d.join("xdg");
    let stored_key = nix_key(&xdg, &d, "stored-1");
    let cache_key = nix_key(&xdg, &d, "cairn-cache-1");
    let sk: SigningKey = std::fs::read_to_string(&cache_key)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    // A store of its own, whose paths get the stored-1 signature.
    let (store, mut paths) = signed_store(&xdg, &d, &stored_key);
    let signed = d.join("signed");
    ok(nix(&xdg, "nix")
        .args(["copy", "--store", &store, "--to"])
        .arg(format!(
            "file://{}?compression=none&secret-key={}",
            signed.display(),
            cache_key.display()
        ))
        .args(&paths));

    let server = Server::start(CacheConfig {
        sign_keys: vec![sk],
        ..open_uploads()
    })
    .await;
    let url = server.url.clone();
    tokio::task::spawn_blocking(move || {
        ok(nix(&xdg, "nix")
            .args(["copy", "--store", &store, "--to"])
            .arg(format!("{url}?compression=none"))
            .args(&paths));
        let without_url = |text: &str| -> String {
            text.lines()
                .map(|l| if l.starts_with("URL: ") { "URL: -" } else { l })
                .map(|l| format!("{l}\n"))
                .collect()
        };
        paths.push(f.dep.clone());
        for p in &paths {
            let h = hash_part(p);
            let nix_text = std::fs::read_to_string(signed.join(format!("{h}.narinfo"))).unwrap();
            // Both signatures, so that their order is checked too.
            assert_eq!(
                nix_text.lines().filter(|l| l.starts_with("Sig: ")).count(),
                2,
                "{nix_text}"
            );
            let (code, ours) = curl(&[&format!("{url}/{h}.narinfo")]);
            assert_eq!(code, 200, "{p}");
            let ours = String::from_utf8(ours).unwrap();
            assert_eq!(without_url(&ours), without_url(&nix_text), "{p}");
            assert!(ours.ends_with('\n') && nix_text.ends_with('\n'));
        }
    })
    .await
    .unwrap();
    server.stop().await;
}

/// With `--trusted-key` and an upload token, `nix copy --to` (token from a
/// netrc) of paths Nix signed with the trusted key is accepted, closure and
/// all; the same paths signed with another key are refused with 403 and nothing
/// is registered. Keys and signatures made by Nix.
#[tokio::test(flavor = "multi_thread")]
async fn nix_signed_uploads_with_a_trusted_key() {
    let f = fixture();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_owned();
    let xdg = d.join("xdg");
    let trusted = nix_key(&xdg, &d, "trusted-1");
    let public = ok(nix(&xdg, "nix")
        .args(["key", "convert-secret-to-public"])
        .stdin(std::fs::File::open(&trusted).unwrap()));
    let untrusted = nix_key(&xdg, &d, "untrusted-1");
    let (good_store, paths) = signed_store(&xdg, &d.join("good"), &trusted);
    let (bad_store, _) = signed_store(&xdg, &d.join("bad"), &untrusted);
    let server = Server::start(CacheConfig {
        trusted_keys: vec![public.trim().parse().unwrap()],
        upload_token: Token::new("t0ken"),
        ..open_uploads()
    })
    .await;
    let url = server.url.clone();
    let host = url
        .trim_start_matches("http://")
        .split(':')
        .next()
        .unwrap()
        .to_owned();
    let netrc = d.join("netrc");
    std::fs::write(&netrc, format!("machine {host} login nix password t0ken\n")).unwrap();
    let copy = move |store: &str| {
        run(nix(&xdg, "nix")
            .args(["copy", "--option", "netrc-file"])
            .arg(&netrc)
            .args(["--store", store, "--to", &url])
            .args(&paths))
    };
    let out = tokio::task::spawn_blocking({
        let copy = copy.clone();
        move || copy(&bad_store)
    })
    .await
    .unwrap();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success() && err.contains("403"), "{err}");
    for p in [&f.ca, &f.top, &f.dep].into_iter().chain(&f.roots) {
        assert!(!server.has(p).await, "{p} registered");
    }
    let out = tokio::task::spawn_blocking(move || copy(&good_store))
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for p in [&f.ca, &f.top, &f.dep].into_iter().chain(&f.roots) {
        assert!(server.has(p).await, "{p} not registered");
    }
    server.stop().await;
}

/// A `Range` is answered without rendering the NAR from its start: with the
/// first file's blob missing from the store, the bytes after it are still
/// served, and they are those of Nix's NAR of the same tree (`nix-store --dump`;
/// the missing file's contents do not matter, only its size), while the whole
/// NAR fails.
#[tokio::test(flavor = "multi_thread")]
async fn range_does_not_render_what_comes_before() {
    let dir = tempfile::tempdir().unwrap();
    let tree = dir.path().join("tree");
    std::fs::create_dir(&tree).unwrap();
    std::fs::write(tree.join("a"), vec![0u8; 1 << 20]).unwrap();
    std::fs::write(tree.join("b"), b"present\n").unwrap();
    let xdg = dir.path().join("xdg");
    let nar = run(nix(&xdg, "nix-store").arg("--dump").arg(&tree)).stdout;
    assert!(nar.len() > 1 << 20, "nix-store --dump: {} bytes", nar.len());

    let (server, nar_size) =
        serve_with_missing_blob("tail", &[("a", None), ("b", Some(b"present\n"))]).await;
    assert_eq!(nar_size, nar.len() as u64);
    let url = server.url.clone();
    tokio::task::spawn_blocking(move || {
        let (code, ni) = curl(&[&format!("{url}/{}.narinfo", "0".repeat(32))]);
        assert_eq!(code, 200);
        let ni = String::from_utf8(ni).unwrap();
        let nar_url = format!(
            "{url}/{}",
            ni.lines().find_map(|l| l.strip_prefix("URL: ")).unwrap()
        );
        // The last 200 bytes: `b`'s entry and the closing of the NAR, all after
        // the contents of `a` (the last 248 bytes are).
        let n = nar.len();
        for spec in [format!("{}-", n - 200), "-200".to_owned()] {
            let (code, body) = curl(&["-H", &format!("Range: bytes={spec}"), &nar_url]);
            assert_eq!(code, 206, "{spec}");
            assert!(body == nar[n - 200..], "range {spec}");
        }
        let (exit, status) = curl_status(&[&nar_url]);
        assert_ne!(exit, 0, "whole NAR ended cleanly with status {status}");
    })
    .await
    .unwrap();
    server.stop().await;
}

/// Counts the bytes written to blobs through it.
struct CountingBlobs {
    inner: Arc<dyn cairn_castore::BlobService>,
    written: Arc<std::sync::atomic::AtomicU64>,
}

struct CountingWriter {
    inner: Box<dyn cairn_castore::BlobWriter>,
    written: Arc<std::sync::atomic::AtomicU64>,
}

impl tokio::io::AsyncWrite for CountingWriter {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let r = std::pin::Pin::new(&mut self.inner).poll_write(cx, buf);
        if let std::task::Poll::Ready(Ok(n)) = &r {
            self.written
                .fetch_add(*n as u64, std::sync::atomic::Ordering::SeqCst);
        }
        r
    }
    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[async_trait::async_trait]
impl cairn_castore::BlobWriter for CountingWriter {
    async fn close(&mut self) -> Result<cairn_castore::B3Digest, cairn_castore::Error> {
        self.inner.close().await
    }
}

#[async_trait::async_trait]
impl cairn_castore::BlobService for CountingBlobs {
    async fn has(&self, d: &cairn_castore::B3Digest) -> Result<bool, cairn_castore::Error> {
        self.inner.has(d).await
    }
    async fn open_read(
        &self,
        d: &cairn_castore::B3Digest,
    ) -> Result<Option<Box<dyn cairn_castore::BlobReader>>, cairn_castore::Error> {
        self.inner.open_read(d).await
    }
    async fn open_write(&self) -> Box<dyn cairn_castore::BlobWriter> {
        Box::new(CountingWriter {
            inner: self.inner.open_write().await,
            written: self.written.clone(),
        })
    }
    async fn chunks(
        &self,
        d: &cairn_castore::B3Digest,
    ) -> Result<Option<Vec<cairn_castore::ChunkMeta>>, cairn_castore::Error> {
        self.inner.chunks(d).await
    }
}

/// An uploaded NAR is ingested as it arrives, not after the whole body: with
/// half of a 64 MiB NAR (made by `nix-store --dump`) sent, most of that half
/// has already been written to the blob service; the rest then completes the
/// upload (201).
#[tokio::test(flavor = "multi_thread")]
async fn uploads_are_ingested_as_they_stream() {
    use std::sync::atomic::{AtomicU64, Ordering};
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let dir = tempfile::tempdir().unwrap();
    let xdg = dir.path().join("xdg");
    let file = dir.path().join("big");
    let mut x = 0x2545_f491_4f6c_dd1du64;
    let data: Vec<u8> = (0..64 << 20)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    std::fs::write(&file, &data).unwrap();
    drop(data);
    let nar = run(nix(&xdg, "nix-store").arg("--dump").arg(&file)).stdout;
    let nar_file = dir.path().join("big.nar");
    std::fs::write(&nar_file, &nar).unwrap();
    let file_hash = ok(nix(&xdg, "nix-hash")
        .args(["--type", "sha256", "--flat", "--base32"])
        .arg(&nar_file));

    let written = Arc::new(AtomicU64::new(0));
    let blobs: Arc<dyn cairn_castore::BlobService> = Arc::new(CountingBlobs {
        inner: cairn_castore::blob_service_from_addr("memory://").unwrap(),
        written: written.clone(),
    });
    let dirs = cairn_castore::directory_service_from_addr("memory://").unwrap();
    let infos = cairn_store::pathinfo::path_info_service_from_addr(
        "memory://",
        blobs.clone(),
        dirs.clone(),
    )
    .unwrap();
    let server = Server::start_with(
        open_uploads(),
        PendingUploads::in_memory().unwrap(),
        Some((blobs, dirs, infos)),
    )
    .await;
    let addr = server.url.trim_start_matches("http://").to_owned();
    let mut tcp = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let half = nar.len() / 2;
    tcp.write_all(
        format!(
            "PUT /nar/{}.nar HTTP/1.1\r\nHost: {addr}\r\nContent-Length: {}\r\n\r\n",
            file_hash.trim(),
            nar.len()
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    tcp.write_all(&nar[..half]).await.unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while written.load(Ordering::SeqCst) < (half as u64) / 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "{} of the {half} bytes sent reached the blob service",
            written.load(Ordering::SeqCst)
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    tcp.write_all(&nar[half..]).await.unwrap();
    let mut answer = vec![0u8; 4096];
    let n = tcp.read(&mut answer).await.unwrap();
    let answer = String::from_utf8_lossy(&answer[..n]).into_owned();
    assert!(answer.starts_with("HTTP/1.1 201"), "{answer}");
    assert_eq!(written.load(Ordering::SeqCst), 64 << 20);
    drop(tcp);
    server.stop().await;
}

/// `nix-cache-info` as configured, and read by Nix: a cache configured for
/// another store directory is refused by `nix path-info` for that reason.
#[tokio::test(flavor = "multi_thread")]
async fn configured_cache_info_is_what_nix_reads() {
    let f = fixture();
    let mut cache_info = cairn_nix::cache_info::CacheInfo::new("/other/store").unwrap();
    cache_info.want_mass_query = Some(false);
    cache_info.priority = Some(10);
    let server = Server::start(CacheConfig {
        cache_info,
        ..open_uploads()
    })
    .await;
    let url = server.url.clone();
    tokio::task::spawn_blocking(move || {
        let (code, text) = curl(&[&format!("{url}/nix-cache-info")]);
        assert_eq!(code, 200);
        assert_eq!(
            String::from_utf8(text).unwrap(),
            "StoreDir: /other/store\nWantMassQuery: 0\nPriority: 10\n"
        );
        let xdg = tempfile::tempdir().unwrap();
        let out = run(nix(xdg.path(), "nix").args(["path-info", "--store", &url, &f.ca]));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{err}");
        assert!(
            err.contains("is for Nix stores with prefix '/other/store'"),
            "{err}"
        );
    })
    .await
    .unwrap();
    server.stop().await;
}

// The server at the byte level, with raw TCP clients: narinfo requests answered
// by its own HTTP/1.1 path say byte for byte what hyper says for the same request
// (on a connection handed over to hyper), pipelined and split requests, and the
// graceful shutdown of connections on either path.

/// A server signing with [`key`], with the fixture's closure uploaded: the hash
/// parts of its paths.
async fn raw_server() -> (Server, Vec<String>) {
    let f = fixture();
    let mut config = open_uploads();
    config.sign_keys.push(key().0);
    let s = Server::start(config).await;
    let paths = [&f.top, &f.dep, &f.ca];
    upload(&s, &paths.map(String::as_str)).await;
    let hashes = paths.iter().map(|p| hash_part(p).to_owned()).collect();
    (s, hashes)
}

impl Server {
    fn addr(&self) -> &str {
        self.url.trim_start_matches("http://")
    }

    async fn connect(&self) -> Client {
        Client(BufReader::new(
            TcpStream::connect(self.addr()).await.unwrap(),
        ))
    }

    /// Asks the server to stop; returns its result within `within`.
    async fn stop_within(&mut self, within: Duration) -> Option<std::io::Result<()>> {
        let _ = self.stop.take().unwrap().send(());
        tokio::time::timeout(within, &mut self.task)
            .await
            .ok()
            .map(|r| r.unwrap())
    }
}

struct Client(BufReader<TcpStream>);

/// One response: the head (the `date` header's value blanked) and the body.
#[derive(Debug, PartialEq, Eq)]
struct Answer {
    head: String,
    body: String,
}

impl Client {
    async fn send(&mut self, bytes: &str) {
        self.0.get_mut().write_all(bytes.as_bytes()).await.unwrap();
    }

    /// Reads one response; `head_request` if it answers a `HEAD` (no body).
    async fn answer(&mut self, head_request: bool) -> Answer {
        let mut head = String::new();
        let mut len = 0;
        loop {
            let mut line = String::new();
            let n = tokio::time::timeout(Duration::from_secs(10), self.0.read_line(&mut line))
                .await
                .expect("no answer within 10 s")
                .unwrap();
            assert!(n > 0, "connection closed within a response: {head:?}");
            let lower = line.to_ascii_lowercase();
            if let Some(v) = lower.strip_prefix("content-length:") {
                len = v.trim().parse().unwrap();
            }
            if lower.starts_with("date:") {
                line = "date: -\r\n".into();
            }
            head.push_str(&line);
            if line == "\r\n" {
                break;
            }
        }
        let mut body = vec![0; if head_request { 0 } else { len }];
        self.0.read_exact(&mut body).await.unwrap();
        Answer {
            head,
            body: String::from_utf8(body).unwrap(),
        }
    }

    /// Whether the server closed the connection (within 10 s).
    async fn closed(&mut self) -> bool {
        let mut b = [0u8; 1];
        matches!(
            tokio::time::timeout(Duration::from_secs(10), self.0.read(&mut b)).await,
            Ok(Ok(0) | Err(_))
        )
    }
}

fn get(path: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: cache\r\nAccept: */*\r\n\r\n")
}

fn head(path: &str) -> String {
    format!("HEAD {path} HTTP/1.1\r\nHost: cache\r\n\r\n")
}

const MISSING: &str = "/00000000000000000000000000000000.narinfo";

/// The answers of the fast path are compared with hyper's, which must have been
/// the one answering after `/nix-cache-info`.
#[tokio::test(flavor = "multi_thread")]
async fn narinfo_answers_are_those_of_hyper() {
    let (mut s, hashes) = raw_server().await;
    let found = format!("/{}.narinfo", hashes[0]);
    let requests = [
        (get(&found), false),
        (head(&found), true),
        (get(MISSING), false),
        (head(MISSING), true),
    ];
    let mut fast = s.connect().await;
    let mut hyper = s.connect().await;
    hyper.send(&get("/nix-cache-info")).await;
    let info = hyper.answer(false).await;
    assert!(info.body.contains("StoreDir: /nix/store\n"), "{info:?}");
    for (req, is_head) in &requests {
        fast.send(req).await;
        let a = fast.answer(*is_head).await;
        hyper.send(req).await;
        let b = hyper.answer(*is_head).await;
        assert_eq!(a, b, "{req:?}");
    }
    // What was compared is what a narinfo request must get.
    fast.send(&get(&found)).await;
    let a = fast.answer(false).await;
    assert!(a.head.starts_with("HTTP/1.1 200 OK\r\n"), "{a:?}");
    assert!(a.head.contains("content-type: text/x-nix-narinfo\r\n"));
    assert!(
        a.body
            .starts_with(&format!("StorePath: /nix/store/{}-", hashes[0])),
        "{a:?}"
    );
    assert!(a.body.contains("\nSig: cairn-test-1:"), "{a:?}");
    fast.send(&get(MISSING)).await;
    assert!(fast.answer(false).await.head.starts_with("HTTP/1.1 404 "));
    assert!(matches!(
        s.stop_within(Duration::from_secs(10)).await,
        Some(Ok(()))
    ));
}

/// Several requests in one write are answered in order, across the handover
/// to hyper in the middle; a request split across writes waits for its end.
#[tokio::test(flavor = "multi_thread")]
async fn pipelined_and_split_requests() {
    let (mut s, hashes) = raw_server().await;
    let path = |i: usize| format!("/{}.narinfo", hashes[i]);
    let mut c = s.connect().await;
    let batch = [
        get(&path(0)),
        head(&path(1)),
        get(MISSING),
        get(&path(2)),
        get("/nix-cache-info"),
        get(&path(1)),
    ]
    .concat();
    c.send(&batch).await;
    let expect = [
        (false, "200", Some(0)),
        (true, "200", None),
        (false, "404", None),
        (false, "200", Some(2)),
        (false, "200", None),
        (false, "200", Some(1)),
    ];
    for (is_head, status, hash) in expect {
        let a = c.answer(is_head).await;
        assert!(a.head.starts_with(&format!("HTTP/1.1 {status} ")), "{a:?}");
        if let Some(i) = hash {
            assert!(a.body.contains(&hashes[i]), "{a:?}");
        }
    }

    let mut c = s.connect().await;
    let req = get(&path(2));
    let (a, b) = req.split_at(20);
    c.send(a).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    c.send(b).await;
    let a = c.answer(false).await;
    assert!(a.body.contains(&hashes[2]), "{a:?}");
    assert!(matches!(
        s.stop_within(Duration::from_secs(10)).await,
        Some(Ok(()))
    ));
}

/// On shutdown, idle connections on both paths are closed and the server
/// returns; a narinfo request begun is answered first.
#[tokio::test(flavor = "multi_thread")]
async fn shutdown_closes_both_paths() {
    let (mut s, hashes) = raw_server().await;
    let req = get(&format!("/{}.narinfo", hashes[0]));
    let mut fast = s.connect().await;
    fast.send(&req).await;
    fast.answer(false).await;
    let mut hyper = s.connect().await;
    hyper.send(&get("/nix-cache-info")).await;
    hyper.answer(false).await;
    // Half a request sent.
    let mut fast_busy = s.connect().await;
    fast_busy.send(&req[..10]).await;
    tokio::time::sleep(Duration::from_millis(50)).await;

    let _ = s.stop.take().unwrap().send(());
    assert!(fast.closed().await);
    assert!(hyper.closed().await);
    assert!(!s.task.is_finished());
    fast_busy.send(&req[10..]).await;
    assert!(
        fast_busy
            .answer(false)
            .await
            .head
            .starts_with("HTTP/1.1 200 ")
    );
    assert!(fast_busy.closed().await);
    let done = tokio::time::timeout(Duration::from_secs(10), &mut s.task).await;
    assert!(matches!(done, Ok(Ok(Ok(())))), "{done:?}");
    // And no longer listening.
    assert!(TcpStream::connect(s.addr()).await.is_err());
}

#[tokio::test(flavor = "multi_thread")]
async fn private_cache_needs_a_token_to_read() {
    let f = fixture();
    let (sk, pk) = key();
    let server = Server::start(CacheConfig {
        sign_keys: vec![sk],
        upload_token: Token::new("upl0ad"),
        read_token: Token::new("r3ad"),
        ..open_uploads()
    })
    .await;
    let url = server.url.clone();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_owned();
    let (store, top, root) = (f.store.clone(), f.top.clone(), f.root.clone());
    let uploaded = tokio::task::spawn_blocking(move || {
        let xdg = d.join("xdg");
        let host = url.trim_start_matches("http://").split(':').next().unwrap();
        let netrc = |password: &str| {
            let p = d.join(format!("netrc-{password}"));
            std::fs::write(
                &p,
                format!("machine {host} login nix password {password}\n"),
            )
            .unwrap();
            p.to_str().unwrap().to_owned()
        };
        let copy_to = |password: &str| {
            let mut c = nix(&xdg, "nix");
            c.args([
                "copy",
                "--option",
                "netrc-file",
                &netrc(password),
                "--store",
                &store,
                "--to",
                &url,
                &top,
            ]);
            c
        };
        // The read token reads but cannot upload.
        let out = run(&mut copy_to("r3ad"));
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(!out.status.success() && err.contains("401"), "{err}");
        // The upload token reads too: `nix copy --to` first asks what the cache has.
        ok(&mut copy_to("upl0ad"));

        let (code, ni) = curl(&[
            "-u",
            "nix:r3ad",
            &format!("{url}/{}.narinfo", hash_part(&top)),
        ]);
        assert_eq!(code, 200);
        let ni = String::from_utf8(ni).unwrap();
        let nar = ni.lines().find_map(|l| l.strip_prefix("URL: ")).unwrap();
        let missing = "00000000000000000000000000000000";
        // Every read, the fast path's narinfo included, and even a URL the cache
        // does not have: 401 with a Basic challenge, unless a token that may read
        // comes with it.
        for (path, found) in [
            ("nix-cache-info".to_owned(), 200),
            (format!("{}.narinfo", hash_part(&top)), 200),
            (nar.to_owned(), 200),
            (format!("{}.ls", hash_part(&top)), 200),
            (format!("{missing}.narinfo"), 404),
            ("nope".to_owned(), 404),
        ] {
            let u = format!("{url}/{path}");
            for (auth, code) in [
                (vec![], 401),
                (vec!["-H", "Authorization: Bearer wrong"], 401),
                (vec!["-u", "nix:wrong"], 401),
                (vec!["-H", "Authorization: Bearer r3ad"], found),
                (vec!["-u", "nix:r3ad"], found),
                (vec!["-u", "nix:upl0ad"], found),
            ] {
                for method in [&[][..], &["-I"][..]] {
                    let args: Vec<&str> = auth.iter().chain(method).copied().chain([&*u]).collect();
                    let (got, body) = curl(&args);
                    assert_eq!(got, code, "{args:?}");
                    if code == 401 && !method.is_empty() {
                        let head = String::from_utf8_lossy(&body).to_lowercase();
                        assert!(
                            head.contains("www-authenticate: basic realm=\"cairn\""),
                            "{args:?}: {head}"
                        );
                    }
                }
            }
        }

        // A substituter without the token gets nothing; with it in a netrc, the
        // closure, signed by the cache's key.
        let fresh = root.join("fresh-private");
        let fresh = fresh.to_str().unwrap();
        let copy_from = |netrc_file: &str| {
            let mut c = nix(&xdg, "nix");
            c.args([
                "copy",
                "--option",
                "netrc-file",
                netrc_file,
                "--option",
                "trusted-public-keys",
                &pk,
                "--from",
                &url,
                "--to",
                fresh,
                &top,
            ]);
            c
        };
        // (Nix 2.8 takes a 401 for a cache it cannot use, so the path has no
        // substituter.)
        let in_fresh = format!("{fresh}{top}");
        let out = run(&mut copy_from("/dev/null"));
        assert!(!out.status.success());
        assert!(!Path::new(&in_fresh).exists());
        ok(&mut copy_from(&netrc("r3ad")));
        assert!(Path::new(&in_fresh).exists());
        ok(nix(&xdg, "nix").args([
            "store",
            "verify",
            "--option",
            "trusted-public-keys",
            &pk,
            "--store",
            fresh,
            "-r",
            &top,
        ]));
        top
    })
    .await
    .unwrap();
    assert!(server.has(&uploaded).await);
    server.stop().await;
}
