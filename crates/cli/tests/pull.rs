//! Pull-through from upstream caches and `cairn copy` (issue 19), against a real
//! binary cache: a closure built by the real Nix in a chroot store, written by
//! `nix copy --to file://DIR?secret-key=…` (xz, Nix's default) with a key from
//! `nix key generate-secret`, served over HTTP by a static file server started
//! here (which logs every request, so upstream downloads can be counted, and can
//! be told to misbehave), and read as `file://DIR` too. Needs Nix and curl.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use cairn_nix::narinfo::NarInfo;
use cairn_nix::signature::{SigningKey, VerifyingKey};
use cairn_testkit::nix::{Nix, ok, ok_bytes};
use common::cluster::{copy_from_and_verify, curl, hash_part};
use common::{Daemon, daemon_command, first_line, http_addr};

/// The upstream: a closure [top, dep] and a larger content-addressed path, in
/// a binary cache signed by `upstream-1`.
struct Fixture {
    nix: Nix,
    top: String,
    dep: String,
    big: String,
    /// The cache directory.
    cache: PathBuf,
    /// `upstream-1`'s secret key (for tests that forge narinfos with it).
    upstream_sk: SigningKey,
    upstream_pk: String,
    /// cairn's own key: its narinfos are signed with it.
    cairn_sk: PathBuf,
    cairn_pk: VerifyingKey,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let nix = Nix::new();
        let [top, dep] = nix.build_closure("pull");
        let file = nix.path("big.bin");
        std::fs::write(&file, cairn_testkit::data::pseudo_random(6 << 20, 19)).unwrap();
        let big = nix.in_store("nix-store", &["--add", file.to_str().unwrap()]);
        let key = |name: &str| {
            let sk = nix.run("nix", &["key", "generate-secret", "--key-name", name]);
            let path = nix.path(&format!("{name}.sk"));
            std::fs::write(&path, &sk).unwrap();
            let pk = ok(nix
                .command("nix")
                .args(["key", "convert-secret-to-public"])
                .stdin(std::fs::File::open(&path).unwrap()));
            (path, sk, pk.trim().to_owned())
        };
        let (up_path, up_sk, upstream_pk) = key("upstream-1");
        let (cairn_sk, _, cairn_pk) = key("cairn-1");
        let cache = nix.path("cache");
        nix.in_store(
            "nix",
            &[
                "copy",
                "--to",
                &format!(
                    "file://{}?secret-key={}",
                    cache.display(),
                    up_path.display()
                ),
                &top,
                &big,
            ],
        );
        Fixture {
            top,
            dep,
            big,
            cache,
            upstream_sk: up_sk.trim().parse().unwrap(),
            upstream_pk,
            cairn_sk,
            cairn_pk: cairn_pk.parse().unwrap(),
            nix,
        }
    })
}

/// How the static server answers one URL path instead of serving its file.
#[derive(Clone)]
enum Override {
    /// These bytes.
    Body(Vec<u8>),
    /// The first half of the file, as if it were all.
    Truncated,
    /// The whole file's length announced, half of it sent, then the connection
    /// closed.
    CloseMidway,
    /// The file, 64 KiB every 20 ms.
    Slow,
    /// This status, no body.
    Status(u16),
    /// 404 the first time, then the file (an upstream that got the path
    /// meanwhile).
    NotFoundOnce,
}

/// A static file server on 127.0.0.1 over `root`, one thread per connection,
/// `Connection: close`.
struct Static {
    url: String,
    log: Arc<Mutex<Vec<String>>>,
    overrides: Arc<Mutex<HashMap<String, Override>>>,
}

impl Static {
    fn start(root: &Path) -> Static {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let log = Arc::new(Mutex::new(Vec::new()));
        let overrides = Arc::new(Mutex::new(HashMap::new()));
        let (root, l, o) = (root.to_owned(), log.clone(), overrides.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                let (root, l, o) = (root.clone(), l.clone(), o.clone());
                std::thread::spawn(move || {
                    let _ = answer(conn, &root, &l, &o);
                });
            }
        });
        Static {
            url,
            log,
            overrides,
        }
    }

    /// The GET requests for `path` so far.
    fn gets(&self, path: &str) -> usize {
        let want = format!("GET {path}");
        self.log
            .lock()
            .unwrap()
            .iter()
            .filter(|l| **l == want)
            .count()
    }

    fn requests(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }

    fn set(&self, path: &str, o: Override) {
        self.overrides.lock().unwrap().insert(path.to_owned(), o);
    }

    fn heal(&self) {
        self.overrides.lock().unwrap().clear();
    }
}

fn answer(
    conn: TcpStream,
    root: &Path,
    log: &Mutex<Vec<String>>,
    overrides: &Mutex<HashMap<String, Override>>,
) -> std::io::Result<()> {
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut first = String::new();
    reader.read_line(&mut first)?;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 || line == "\r\n" {
            break;
        }
    }
    let mut parts = first.split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    log.lock().unwrap().push(format!("{method} {path}"));
    let mut out = conn;
    let head = |out: &mut TcpStream, status: &str, len: usize| {
        write!(
            out,
            "HTTP/1.1 {status}\r\nContent-Length: {len}\r\nConnection: close\r\n\r\n"
        )
    };
    let o = {
        let mut o = overrides.lock().unwrap();
        let got = o.get(path).cloned();
        if let Some(Override::NotFoundOnce) = got {
            o.remove(path);
        }
        got
    };
    let file = if path.contains("..") {
        None
    } else {
        std::fs::read(root.join(path.trim_start_matches('/'))).ok()
    };
    let send = method == "GET";
    match (o, file) {
        (Some(Override::Status(code)), _) => head(&mut out, &format!("{code} Nope"), 0)?,
        (Some(Override::NotFoundOnce), _) => head(&mut out, "404 Not Found", 0)?,
        (Some(Override::Body(b)), _) => {
            head(&mut out, "200 OK", b.len())?;
            if send {
                out.write_all(&b)?;
            }
        }
        (_, None) => head(&mut out, "404 Not Found", 0)?,
        (Some(Override::Truncated), Some(f)) => {
            let half = &f[..f.len() / 2];
            head(&mut out, "200 OK", half.len())?;
            if send {
                out.write_all(half)?;
            }
        }
        (Some(Override::CloseMidway), Some(f)) => {
            head(&mut out, "200 OK", f.len())?;
            if send {
                out.write_all(&f[..f.len() / 2])?;
                out.flush()?;
                // Dropped: closed without the rest.
            }
        }
        (Some(Override::Slow), Some(f)) => {
            head(&mut out, "200 OK", f.len())?;
            if send {
                for c in f.chunks(64 * 1024) {
                    out.write_all(c)?;
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        }
        (None, Some(f)) => {
            head(&mut out, "200 OK", f.len())?;
            if send {
                out.write_all(&f)?;
            }
        }
    }
    out.flush()
}

/// A daemon pulling from `upstream` (more flags in `extra`), signing with
/// cairn's key: its binary cache's URL, and its data directory.
fn daemon(upstream: &str, extra: &[&str]) -> (Daemon, String, tempfile::TempDir) {
    let f = fixture();
    let data = tempfile::tempdir().unwrap();
    let mut flags = vec![
        "--upstream",
        upstream,
        "--upstream-trusted-key",
        &f.upstream_pk,
        "--sign-key",
        f.cairn_sk.to_str().unwrap(),
    ];
    flags.extend_from_slice(extra);
    let mut child = daemon_command(data.path(), &flags).spawn().unwrap();
    let line = first_line(&mut child);
    assert!(line.contains("pulling from"), "{line}");
    let http = format!("http://{}", http_addr(&line).trim_end_matches(','));
    (Daemon(Some(child)), http, data)
}

/// The upstream's narinfo of `path`, parsed.
fn upstream_narinfo(path: &str) -> NarInfo {
    let f = fixture();
    let text =
        std::fs::read_to_string(f.cache.join(format!("{}.narinfo", hash_part(path)))).unwrap();
    NarInfo::parse(&text).unwrap()
}

/// The URL of `path`'s NAR on the daemon at `http`, as `ni` (its upstream
/// narinfo) names it.
fn nar_url(http: &str, path: &str, ni: &NarInfo) -> String {
    format!(
        "{http}/nar/{}-{}.nar",
        hash_part(path),
        cairn_nix::nixbase32::encode(ni.nar_hash.digest())
    )
}

/// `nix-store --dump` of `path` in the fixture's store.
fn nix_dump(path: &str) -> Vec<u8> {
    let f = fixture();
    // The chroot store's file, dumped as a plain path.
    let physical = f.nix.store().join(path.trim_start_matches('/'));
    ok_bytes(f.nix.command("nix-store").arg("--dump").arg(physical))
}

/// Whether the data directory has `path` registered: through its daemon while
/// one runs (which pulls it, or waits for its pull running), else from the
/// store itself.
fn registered(data: &Path, path: &str) -> bool {
    common::cairn_at(data, &["path-info", path], None)
        .status
        .success()
}

/// Waits until the daemon at `http` has stored `n` pulled paths: a client that
/// streamed a pulled NAR may finish before the store has taken all of it.
fn wait_for_pulls(http: &str, n: u64) {
    let want = format!("cairn_upstream_pulls_total {n}\n");
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let (code, metrics) = curl(&[&format!("{http}/metrics")]);
        if code == 200 && metrics.contains(&want) {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no {want} within 60 s: {metrics}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The real Nix substitutes through cairn paths that only the upstream has
/// (`nix copy --from http://cairn` into a fresh store, cairn's key trusted,
/// `nix store verify`); each NAR was downloaded from upstream once, and a
/// second copy asks the upstream nothing. An absent path is a 404, asked of the
/// upstream once within the negative TTL.
#[test]
fn nix_substitutes_through_cairn() {
    let f = fixture();
    let up = Static::start(&f.cache);
    let (d, http, data) = daemon(&up.url, &[]);
    copy_from_and_verify(&f.nix, &http, &f.cairn_pk, &[&f.top]);
    for p in [&f.top, &f.dep] {
        let ni = upstream_narinfo(p);
        assert_eq!(up.gets(&format!("/{}", ni.url)), 1, "{:?}", up.requests());
    }
    let before = up.requests().len();
    copy_from_and_verify(&f.nix, &http, &f.cairn_pk, &[&f.top, &f.dep]);
    assert_eq!(up.requests().len(), before, "{:?}", up.requests());

    let absent = "/nix/store/00000000000000000000000000000000-absent";
    for _ in 0..3 {
        let (code, _) = curl(&[&format!("{http}/{}.narinfo", hash_part(absent))]);
        assert_eq!(code, 404);
    }
    assert_eq!(
        up.gets(&format!("/{}.narinfo", hash_part(absent))),
        1,
        "{:?}",
        up.requests()
    );
    // Counted at /metrics: two pulls (their NAR bytes), the absent path asked
    // of the upstream once and answered twice from the negative cache.
    wait_for_pulls(&http, 2);
    let (code, metrics) = curl(&[&format!("{http}/metrics")]);
    assert_eq!(code, 200);
    let nar_bytes = upstream_narinfo(&f.top).nar_size + upstream_narinfo(&f.dep).nar_size;
    for want in [
        "cairn_upstream_pulls_total 2\n".to_owned(),
        format!("cairn_upstream_nar_bytes_total {nar_bytes}\n"),
        "cairn_upstream_failures_total 0\n".to_owned(),
        "cairn_upstream_negative_cache_hits_total 2\n".to_owned(),
    ] {
        assert!(metrics.contains(&want), "{want} in {metrics}");
    }
    // A second cairn in front of this one, trusting its key: Nix's copy
    // through it asks the upstream nothing more.
    let cairn_pk = f.cairn_pk.to_string();
    let (d2, http2, _data2) = daemon(&http, &["--upstream-trusted-key", &cairn_pk]);
    copy_from_and_verify(&f.nix, &http2, &f.cairn_pk, &[&f.top, &f.dep]);
    assert_eq!(up.requests().len(), before + 1, "{:?}", up.requests());
    common::stop_daemon(d2);
    common::stop_daemon(d);
    assert!(registered(data.path(), &f.top));
    assert!(registered(data.path(), &f.dep));
}

/// With --prefetch-references, pulling a path pulls its references too,
/// before anyone asks for them.
#[test]
fn prefetch_references() {
    let f = fixture();
    let up = Static::start(&f.cache);
    let (d, http, _data) = daemon(&up.url, &["--prefetch-references"]);
    let ni = upstream_narinfo(&f.top);
    let (code, _) = curl(&[&format!("{http}/{}.narinfo", hash_part(&f.top))]);
    assert_eq!(code, 200);
    let url = nar_url(&http, &f.top, &ni);
    let (ok, bytes) = curl_nar(&url);
    assert!(ok && bytes == nix_dump(&f.top));
    let dep_nar = format!("/{}", upstream_narinfo(&f.dep).url);
    let mut waited = 0;
    while up.gets(&dep_nar) == 0 && waited < 100 {
        std::thread::sleep(Duration::from_millis(50));
        waited += 1;
    }
    assert_eq!(up.gets(&dep_nar), 1, "{:?}", up.requests());
    common::stop_daemon(d);
}

/// A `file://` upstream, through gRPC: `cairn dump` through the daemon's socket
/// pulls the path (Nix's bytes); `cairn copy --from` (with the upstream's key)
/// copies a closure into a store of its own, which `cairn verify` checks, and a
/// second run copies nothing; `cairn copy --to file://` writes a cache the real
/// Nix copies from, signatures checked.
#[test]
fn file_upstream_grpc_and_cairn_copy() {
    let f = fixture();
    let url = format!("file://{}", f.cache.display());
    let (d, _http, data) = daemon(&url, &[]);
    let dumped = common::ok(common::cairn_at(data.path(), &["dump", &f.big], None));
    assert!(
        dumped == nix_dump(&f.big),
        "cairn dump differs from nix-store --dump"
    );
    common::stop_daemon(d);

    let store = tempfile::tempdir().unwrap();
    let copy = |extra: &[&str]| {
        common::cairn_at(
            store.path(),
            &[&["copy", "--from", &url, &f.top][..], extra].concat(),
            None,
        )
    };
    // Without a trusted key: refused, nothing stored.
    let out = copy(&[]);
    assert!(!out.status.success());
    assert!(!registered(store.path(), &f.top));
    let out = copy(&[
        "--trusted-key",
        "other-1:rN0pEbSLPQ0Bp2+2h6aHEZSoVeMiULJLHbSQGYt8LG8=",
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no valid signature"), "{err}");
    assert!(!registered(store.path(), &f.top));
    let out = copy(&["--trusted-key", &f.upstream_pk]);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{err}");
    assert!(err.contains("copied 2 paths (0 already stored)"), "{err}");
    common::ok(common::cairn_at(
        store.path(),
        &["verify", &f.top, &f.dep],
        None,
    ));
    let out = copy(&["--trusted-key", &f.upstream_pk]);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(err.contains("copied 0 paths (2 already stored)"), "{err}");

    // And out again, as Nix writes caches.
    let out_cache = tempfile::tempdir().unwrap();
    let to = format!("file://{}", out_cache.path().join("c").display());
    common::ok(common::cairn_at(
        store.path(),
        &[
            "copy",
            "--to",
            &to,
            "--sign-key",
            f.cairn_sk.to_str().unwrap(),
            &f.top,
        ],
        None,
    ));
    copy_from_and_verify(&f.nix, &to, &f.cairn_pk, &[&f.top, &f.dep]);

    // And to a binary cache over HTTP taking uploads (a cairn daemon without
    // upstreams), references first.
    let target = tempfile::tempdir().unwrap();
    let (t, _, line) = common::start_daemon_with(
        target.path(),
        &[
            "--allow-anonymous-uploads",
            "--sign-key",
            f.cairn_sk.to_str().unwrap(),
        ],
    );
    let http = format!("http://{}", http_addr(&line).trim_end_matches(','));
    common::ok(common::cairn_at(
        store.path(),
        &["copy", "--to", &http, &f.top],
        None,
    ));
    copy_from_and_verify(&f.nix, &http, &f.cairn_pk, &[&f.top, &f.dep]);
    common::stop_daemon(t);
}

/// curl of a NAR from cairn: (exit status, bytes received).
fn curl_nar(url: &str) -> (bool, Vec<u8>) {
    let out = Command::new("curl")
        .args(["-sS", "-f", url])
        .output()
        .unwrap();
    (out.status.success(), out.stdout)
}

/// Refusals: a narinfo signed by an untrusted key, a tampered narinfo, a NAR
/// whose hash does not match its (validly signed) narinfo, a truncated NAR, an
/// upstream closing mid-stream, an upstream failing with 500: the client gets
/// an error (502, or a NAR response aborted short of its length), nothing is
/// registered, and once the upstream is healthy the same request succeeds. A
/// wrong `FileHash` (not signed) is no refusal: Nix does not check it either.
#[test]
fn refusals() {
    let f = fixture();
    let up = Static::start(&f.cache);
    let upstream = format!("{}?retries=1&timeout=5", up.url);
    let (d, http, data) = daemon(&upstream, &["--upstream-negative-ttl", "0"]);
    let ni = upstream_narinfo(&f.dep);
    let narinfo_url = format!("/{}.narinfo", hash_part(&f.dep));
    let nar_file = format!("/{}", ni.url);
    let nar_path = format!(
        "/nar/{}-{}.nar",
        hash_part(&f.dep),
        cairn_nix::nixbase32::encode(ni.nar_hash.digest())
    );
    let cairn_nar = format!("{http}{nar_path}");
    let good = nix_dump(&f.dep);
    assert!(ni.file_hash.is_some() && ni.file_size.is_some(), "{ni}");

    let mut untrusted = ni.clone();
    untrusted.signatures.clear();
    untrusted.sign(&SigningKey::from_seed("intruder-1", &[3; 32]).unwrap());
    let mut tampered = ni.clone();
    tampered.nar_size += 8;
    let cases: Vec<(&str, Override, &str)> = vec![
        (
            "untrusted key",
            Override::Body(untrusted.to_string().into_bytes()),
            &narinfo_url,
        ),
        (
            "tampered narinfo",
            Override::Body(tampered.to_string().into_bytes()),
            &narinfo_url,
        ),
        ("upstream failing", Override::Status(500), &narinfo_url),
    ];
    for (what, o, path) in cases {
        up.set(path, o);
        let (code, body) = curl(&[&format!("{http}{narinfo_url}")]);
        assert_eq!(code, 502, "{what}: {body}");
        up.heal();
    }

    // NAR failures: the narinfo is fine (or validly signed), the NAR is not.
    let other = upstream_narinfo(&f.top);
    let mut wrong_nar = ni.clone();
    wrong_nar.url = other.url.clone();
    wrong_nar.compression = other.compression.clone();
    wrong_nar.file_hash = other.file_hash;
    wrong_nar.file_size = other.file_size;
    wrong_nar.signatures.clear();
    wrong_nar.sign(&f.upstream_sk);
    // The same size, one byte different: only the hash can tell.
    let mut forged = good.clone();
    let at = forged.windows(4).position(|w| w == b"dep\n").unwrap();
    forged[at + 1] = b'a';
    let mut forged_ni = ni.clone();
    forged_ni.url = "nar/forged.nar".parse().unwrap();
    forged_ni.compression = "none".parse().unwrap();
    forged_ni.file_hash = None;
    forged_ni.file_size = None;
    forged_ni.signatures.clear();
    forged_ni.sign(&f.upstream_sk);
    // FileHash and FileSize are not in the signed fingerprint: the narinfo
    // stays validly signed, the compressed file no longer matches it.
    let mut wrong_file_hash = ni.clone();
    wrong_file_hash.file_hash = Some(cairn_nix::hash::NixHash::Sha256([7; 32]));
    let mut short_file_size = ni.clone();
    short_file_size.file_size = ni.file_size.map(|n| n - 1);
    let mut long_file_size = ni.clone();
    long_file_size.file_size = ni.file_size.map(|n| n + 1);
    let nar_cases: Vec<(&str, Vec<(String, Override)>)> = vec![
        (
            "file longer than FileSize",
            vec![(
                narinfo_url.clone(),
                Override::Body(short_file_size.to_string().into_bytes()),
            )],
        ),
        (
            "file shorter than FileSize",
            vec![(
                narinfo_url.clone(),
                Override::Body(long_file_size.to_string().into_bytes()),
            )],
        ),
        (
            "NAR hash mismatch",
            vec![(
                narinfo_url.clone(),
                Override::Body(wrong_nar.to_string().into_bytes()),
            )],
        ),
        (
            "NAR of the right size, another hash",
            vec![
                (
                    narinfo_url.clone(),
                    Override::Body(forged_ni.to_string().into_bytes()),
                ),
                ("/nar/forged.nar".to_owned(), Override::Body(forged)),
            ],
        ),
        (
            "truncated NAR",
            vec![(nar_file.clone(), Override::Truncated)],
        ),
        (
            "closed mid-stream",
            vec![(nar_file.clone(), Override::CloseMidway)],
        ),
    ];
    for (what, overrides) in nar_cases {
        for (p, o) in overrides {
            up.set(&p, o);
        }
        let (code, body) = curl(&[&format!("{http}{narinfo_url}")]);
        assert_eq!(code, 200, "{what}: {body}");
        let (ok, bytes) = curl_nar(&cairn_nar);
        assert!(!ok, "{what}: curl got a whole response");
        assert!(bytes.len() < good.len(), "{what}: {} bytes", bytes.len());
        up.heal();
    }
    // Healthy again: served whole, Nix's bytes.
    let (code, body) = curl(&[&format!("{http}{narinfo_url}")]);
    assert_eq!(code, 200, "{body}");
    let (ok, bytes) = curl_nar(&cairn_nar);
    assert!(
        ok && bytes == good,
        "healthy upstream: {} bytes",
        bytes.len()
    );
    // Through the daemon, the lookup waits for the pull's store to catch up
    // with the client; then from the store itself.
    assert!(registered(data.path(), &f.dep));
    common::stop_daemon(d);
    assert!(registered(data.path(), &f.dep));

    // FileHash is not signed and not checked (as in Nix): a wrong one does not
    // stop a NAR whose signed NarHash matches.
    let (d, http, data) = daemon(&upstream, &[]);
    up.set(
        &narinfo_url,
        Override::Body(wrong_file_hash.to_string().into_bytes()),
    );
    let (code, body) = curl(&[&format!("{http}{narinfo_url}")]);
    assert_eq!(code, 200, "{body}");
    let (ok, bytes) = curl_nar(&format!("{http}{nar_path}"));
    assert!(ok && bytes == good, "wrong FileHash: {} bytes", bytes.len());
    assert!(registered(data.path(), &f.dep));
    common::stop_daemon(d);
}

/// A daemon pulling from `up`, which serves the fixture's big path slowly
/// (about 2 s), its narinfo asked for already.
struct SlowBig {
    daemon: Daemon,
    http: String,
    data: tempfile::TempDir,
    ni: NarInfo,
    /// The big path's NAR on the daemon.
    nar_url: String,
}

impl SlowBig {
    fn start(up: &Static) -> SlowBig {
        let f = fixture();
        let ni = upstream_narinfo(&f.big);
        up.set(&format!("/{}", ni.url), Override::Slow);
        let (daemon, http, data) = self::daemon(&up.url, &[]);
        let (code, _) = curl(&[&format!("{http}/{}.narinfo", hash_part(&f.big))]);
        assert_eq!(code, 200);
        let nar_url = nar_url(&http, &f.big, &ni);
        SlowBig {
            daemon,
            http,
            data,
            ni,
            nar_url,
        }
    }
}

/// 16 clients fetching the same uncached NAR at once (the upstream slowed, so
/// they overlap): one upstream download, 16 times Nix's bytes.
#[test]
fn concurrent_clients_one_download() {
    let f = fixture();
    let up = Static::start(&f.cache);
    let slow = SlowBig::start(&up);
    let (d, url, ni) = (slow.daemon, slow.nar_url, slow.ni);
    let clients: Vec<_> = (0..16)
        .map(|_| {
            let url = url.clone();
            std::thread::spawn(move || curl_nar(&url))
        })
        .collect();
    let want = nix_dump(&f.big);
    for c in clients {
        let (ok, bytes) = c.join().unwrap();
        assert!(ok && bytes == want, "{} bytes", bytes.len());
    }
    assert_eq!(up.gets(&format!("/{}", ni.url)), 1, "{:?}", up.requests());
    common::stop_daemon(d);
}

/// A download from upstream outlives the client that started it, and a
/// SIGTERM meanwhile: the daemon lets it finish and register the path before
/// it exits (within --shutdown-timeout), rather than drop the work.
#[test]
fn a_shutdown_lets_a_running_download_finish() {
    let f = fixture();
    let up = Static::start(&f.cache);
    let SlowBig {
        daemon: d,
        http,
        data,
        ni,
        nar_url: url,
    } = SlowBig::start(&up);
    // The client gives up long before the slowed upstream is done (~2 s).
    let gave_up = Command::new("curl")
        .args(["-s", "-o", "/dev/null", "--max-time", "0.5", &url])
        .status()
        .unwrap();
    assert!(!gave_up.success(), "the slowed download took under 0.5 s");
    assert_eq!(up.gets(&format!("/{}", ni.url)), 1, "{:?}", up.requests());
    let (code, metrics) = curl(&[&format!("{http}/metrics")]);
    assert_eq!(code, 200);
    assert!(
        metrics.contains("cairn_upstream_pulls_total 0\n"),
        "the download ended before the shutdown: {metrics}"
    );
    common::stop_daemon(d);
    assert!(
        registered(data.path(), &f.big),
        "the download running at the shutdown registered nothing"
    );
    let out = common::cairn_at(data.path(), &["dump", &f.big], None);
    assert!(out.status.success(), "{out:?}");
    assert!(
        out.stdout == nix_dump(&f.big),
        "the pulled path's NAR differs"
    );
}

/// An https:// upstream (a cairn daemon serving TLS with a private CA, itself
/// pulling from the static server): trusted through --upstream-ca-file; without
/// it the certificate is refused and the client gets a 502.
#[test]
fn https_upstream_with_ca_file() {
    let f = fixture();
    let up = Static::start(&f.cache);
    let t = tempfile::tempdir().unwrap();
    let ca = common::ca::Ca::new("pull test CA");
    let (cert, key) = ca.issue(&["127.0.0.1"]);
    let put = |name: &str, text: &str| {
        let p = t.path().join(name);
        std::fs::write(&p, text).unwrap();
        p.to_str().unwrap().to_owned()
    };
    let (ca_file, cert_file, key_file) = (
        put("ca.pem", &ca.pem),
        put("cert.pem", &cert),
        put("key.pem", &key),
    );
    let data = t.path().join("tls");
    let mut child = daemon_command(
        &data,
        &[
            "--upstream",
            &up.url,
            "--upstream-trusted-key",
            &f.upstream_pk,
            "--sign-key",
            f.cairn_sk.to_str().unwrap(),
            "--tls-cert",
            &cert_file,
            "--tls-key",
            &key_file,
        ],
    )
    .spawn()
    .unwrap();
    let line = first_line(&mut child);
    let _tls_daemon = Daemon(Some(child));
    let https = line
        .split_whitespace()
        .find(|w| w.starts_with("https://"))
        .unwrap()
        .trim_end_matches(',')
        .to_owned();
    let cairn_pk = f.cairn_pk.to_string();
    let narinfo = format!("/{}.narinfo", hash_part(&f.dep));

    let (d, http, _data) = daemon(
        &format!("{https}?retries=0"),
        &["--upstream-trusted-key", &cairn_pk],
    );
    let (code, body) = curl(&[&format!("{http}{narinfo}")]);
    assert_eq!(code, 502, "{body}");
    common::stop_daemon(d);

    let (d, http, _data) = daemon(
        &https,
        &[
            "--upstream-trusted-key",
            &cairn_pk,
            "--upstream-ca-file",
            &ca_file,
        ],
    );
    copy_from_and_verify(&f.nix, &http, &f.cairn_pk, &[&f.dep]);
    common::stop_daemon(d);
}

/// Uploads keep working in front of an upstream: `nix copy --to` of a path
/// whose reference only the upstream has uploads that path alone (Nix finds
/// the reference's narinfo at cairn), its narinfo is accepted, and a fresh
/// store copies the whole closure back from cairn.
#[test]
fn uploads_with_references_upstream() {
    let f = fixture();
    let up = Static::start(&f.cache);
    let (d, http, _data) = daemon(&up.url, &["--allow-anonymous-uploads"]);
    let nixfile = f.nix.path("uses-dep.nix");
    std::fs::write(
        &nixfile,
        format!(
            r#"derivation {{ name = "uses-dep"; system = builtins.currentSystem;
  builder = "/bin/sh"; PATH = "/usr/bin:/bin";
  args = [ "-c" "echo ${{builtins.storePath "{}"}} > $out" ]; }}
"#,
            f.dep
        ),
    )
    .unwrap();
    let path = f.nix.build(&nixfile);
    f.nix.in_store("nix", &["copy", "--to", &http, &path]);
    let dep_nar = format!("/{}", upstream_narinfo(&f.dep).url);
    assert_eq!(up.gets(&dep_nar), 0, "{:?}", up.requests());
    copy_from_and_verify(&f.nix, &http, &f.cairn_pk, &[&path, &f.dep]);
    assert_eq!(up.gets(&dep_nar), 1, "{:?}", up.requests());
    common::stop_daemon(d);
}

/// Upstreams that fail are skipped: one refusing connections, one that never
/// answers (its timeout and retry), then the healthy one serves; the local
/// paths are served meanwhile without asking anyone.
#[test]
fn failing_upstreams_are_skipped() {
    let f = fixture();
    let up = Static::start(&f.cache);
    // Accepts connections (the kernel does, into the backlog) and never answers.
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let refused = TcpListener::bind("127.0.0.1:0").unwrap();
    let refused_url = format!("http://{}?retries=1", refused.local_addr().unwrap());
    drop(refused);
    let silent_url = format!(
        "http://{}?timeout=1&retries=1",
        silent.local_addr().unwrap()
    );
    let (d, http, _data) = daemon(
        &refused_url,
        &["--upstream", &silent_url, "--upstream", &up.url],
    );
    let started = std::time::Instant::now();
    copy_from_and_verify(&f.nix, &http, &f.cairn_pk, &[&f.dep]);
    let took = started.elapsed();
    assert!(took < Duration::from_secs(20), "{took:?}");
    // Stored now: served with no upstream asked, at once.
    let before = up.requests().len();
    let started = std::time::Instant::now();
    let (code, _) = curl(&[&format!("{http}/{}.narinfo", hash_part(&f.dep))]);
    assert_eq!(code, 200);
    assert!(started.elapsed() < Duration::from_millis(500));
    assert_eq!(up.requests().len(), before);
    common::stop_daemon(d);
}

/// A `HEAD` of a NAR only the upstream has answers as its `GET` would (200,
/// the NAR's length) from the narinfo alone: the upstream sees no NAR request
/// until the `GET`.
#[test]
fn head_of_upstream_nar_downloads_nothing() {
    let f = fixture();
    let up = Static::start(&f.cache);
    let (d, http, _data) = daemon(&up.url, &[]);
    let ni = upstream_narinfo(&f.big);
    let url = nar_url(&http, &f.big, &ni);
    let out = Command::new("curl")
        .args(["-sS", "-f", "-I", &url])
        .output()
        .unwrap();
    let head = String::from_utf8_lossy(&out.stdout).to_lowercase();
    assert!(out.status.success(), "{head}");
    assert!(
        head.contains(&format!("content-length: {}\r\n", ni.nar_size)),
        "{head}"
    );
    let nar_file = format!("/{}", ni.url);
    assert_eq!(up.gets(&nar_file), 0, "{:?}", up.requests());
    // A NAR hash the upstream does not have: 404.
    let other = format!("{http}/nar/{}-{}.nar", hash_part(&f.big), "0".repeat(52));
    let (code, _) = curl(&["-I", &other]);
    assert_eq!(code, 404);
    let (ok, bytes) = curl_nar(&url);
    assert!(ok && bytes == nix_dump(&f.big), "{} bytes", bytes.len());
    assert_eq!(up.gets(&nar_file), 1, "{:?}", up.requests());
    common::stop_daemon(d);
}

/// An upstream failing: a gRPC get through the daemon fails UNAVAILABLE
/// (not INTERNAL), saying so; an upstream that does not answer in time is a
/// 504 over HTTP, one answering 500 a 502.
#[test]
fn upstream_failures_are_unavailable() {
    let f = fixture();
    let up = Static::start(&f.cache);
    let upstream = format!("{}?retries=0", up.url);
    let (d, http, data) = daemon(&upstream, &["--upstream-negative-ttl", "0"]);
    let narinfo_url = format!("/{}.narinfo", hash_part(&f.dep));
    up.set(&narinfo_url, Override::Status(500));
    let out = common::cairn_at(data.path(), &["path-info", &f.dep], None);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("UNAVAILABLE"), "{err}");
    assert!(err.contains("upstreams could not provide it"), "{err}");
    let (code, body) = curl(&[&format!("{http}{narinfo_url}")]);
    assert_eq!(code, 502, "{body}");
    common::stop_daemon(d);

    // Accepts connections and never answers.
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let silent_url = format!(
        "http://{}?timeout=1&retries=0",
        silent.local_addr().unwrap()
    );
    let (d, http, _data) = daemon(&silent_url, &[]);
    let (code, body) = curl(&[&format!("{http}{narinfo_url}")]);
    assert_eq!(code, 504, "{body}");
    common::stop_daemon(d);
}

/// With --upstream-skip-uploads, the real Nix's `nix copy --to` of a path the
/// upstream has (it got it after cairn last asked) succeeds, and cairn asks
/// the upstream for its narinfo at the upload but stores nothing: the first
/// read pulls the NAR from the upstream. Without the option, the same upload
/// is stored (the read asks the upstream nothing).
#[test]
fn skip_uploads_the_upstream_has() {
    let f = fixture();
    for skip in [true, false] {
        let up = Static::start(&f.cache);
        let mut extra = vec!["--allow-anonymous-uploads"];
        if skip {
            extra.push("--upstream-skip-uploads");
        }
        let (d, http, _data) = daemon(&up.url, &extra);
        let narinfo_url = format!("/{}.narinfo", hash_part(&f.dep));
        let nar_file = format!("/{}", upstream_narinfo(&f.dep).url);
        // Absent upstream when Nix asks cairn whether it has the path, so Nix
        // uploads it.
        up.set(&narinfo_url, Override::NotFoundOnce);
        let xdg = tempfile::tempdir().unwrap();
        ok(cairn_testkit::nix::command("nix", xdg.path())
            .args(["copy", "--store"])
            .arg(f.nix.store())
            .args(["--to", &http, &f.dep]));
        let asked = up.gets(&narinfo_url);
        assert_eq!(asked, if skip { 2 } else { 1 }, "{:?}", up.requests());
        assert_eq!(up.gets(&nar_file), 0, "{:?}", up.requests());
        copy_from_and_verify(&f.nix, &http, &f.cairn_pk, &[&f.dep]);
        assert_eq!(
            up.gets(&nar_file),
            usize::from(skip),
            "skip {skip}: {:?}",
            up.requests()
        );
        common::stop_daemon(d);
    }
}
