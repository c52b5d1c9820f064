//! The daemon against byte transcripts built here from the protocol as Nix's
//! sources define it (worker-protocol.hh, worker-protocol-connection.cc,
//! daemon.cc): the greeting for every client version 1.20–1.38, and operations
//! whose wire form changes with the version.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use cairn_nix::hash::{HashAlgo, NixHash};
use cairn_nix::signature::SigningKey;
use cairn_nix::store_path::StorePath;
use cairn_nix_daemon::{Config, NixDaemon};
use cairn_store::pathinfo::PathInfoService;
use sha2::Digest;
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

mod common;
use common::{file_nar, framed, s, u};

const MAGIC_1: u64 = 0x6e69_7863;
const MAGIC_2: u64 = 0x6478_696f;
const LAST: u64 = 0x616c_7473;
const ERROR: u64 = 0x6378_7470;
const READ: u64 = 0x6461_7461;

fn strings<I: IntoIterator<Item = S>, S: AsRef<[u8]>>(items: I) -> Vec<u8> {
    let items: Vec<S> = items.into_iter().collect();
    let mut out = u(items.len() as u64);
    for i in items {
        out.extend(s(i));
    }
    out
}

fn path(name: &str, seed: u8) -> StorePath {
    StorePath::new([seed; 20], name).unwrap()
}

struct Store {
    daemon: Arc<NixDaemon>,
    path_info: Arc<dyn PathInfoService>,
}

fn store(config: Config) -> Store {
    let blobs = cairn_castore::blob_service_from_addr("memory://").unwrap();
    let dirs = cairn_castore::directory_service_from_addr("memory://").unwrap();
    let path_info = cairn_store::pathinfo::path_info_service_from_addr(
        "memory://",
        blobs.clone(),
        dirs.clone(),
    )
    .unwrap();
    Store {
        daemon: Arc::new(NixDaemon::new(blobs, dirs, path_info.clone(), config)),
        path_info,
    }
}

struct Client {
    io: DuplexStream,
    version: u64,
    /// A message code read ahead (an error where STDERR_READ was expected).
    pushback: Option<u64>,
    server: tokio::task::JoinHandle<Result<(), cairn_nix_daemon::Error>>,
}

impl Client {
    /// Connects and runs the greeting as a client of `version` would, checking
    /// every byte the daemon sends.
    async fn connect(store: &Store, version: u64, trusted: bool) -> Client {
        let (mut io, server_io) = tokio::io::duplex(1 << 20);
        let daemon = store.daemon.clone();
        let server = tokio::spawn(async move {
            let (r, w) = tokio::io::split(server_io);
            daemon
                .serve_connection(r, w, trusted, std::future::pending())
                .await
        });
        io.write_all(&u(MAGIC_1)).await.unwrap();
        let mut c = Client {
            io,
            version,
            pushback: None,
            server,
        };
        c.expect(&[u(MAGIC_2), u(0x126)].concat()).await;
        c.send(&u(version)).await;
        let minor = version & 0xff;
        if minor >= 38 {
            c.send(&strings(["some-future-feature"])).await;
            c.expect(&u(0)).await;
        }
        let mut post = Vec::new();
        if minor >= 14 {
            post.extend(u(0));
        }
        if minor >= 11 {
            post.extend(u(0));
        }
        c.send(&post).await;
        if version < 0x115 {
            return c;
        }
        let mut expected = Vec::new();
        if minor >= 33 {
            expected.extend(s(format!("cairn {}", env!("CARGO_PKG_VERSION"))));
        }
        if minor >= 35 {
            expected.extend(u(if trusted { 1 } else { 2 }));
        }
        expected.extend(u(LAST));
        c.expect(&expected).await;
        c
    }

    async fn send(&mut self, bytes: &[u8]) {
        self.io.write_all(bytes).await.unwrap();
        self.io.flush().await.unwrap();
    }

    async fn read(&mut self, n: usize) -> Vec<u8> {
        let mut buf = vec![0u8; n];
        tokio::time::timeout(
            std::time::Duration::from_secs(10),
            self.io.read_exact(&mut buf),
        )
        .await
        .expect("the daemon answered in time")
        .unwrap();
        buf
    }

    async fn expect(&mut self, bytes: &[u8]) {
        let got = self.read(bytes.len()).await;
        assert_eq!(got, bytes, "protocol {:#x}", self.version);
    }

    async fn u64(&mut self) -> u64 {
        u64::from_le_bytes(self.read(8).await.try_into().unwrap())
    }

    async fn string(&mut self) -> String {
        let n = self.u64().await as usize;
        let data = self.read(n + (8 - n % 8) % 8).await;
        String::from_utf8(data[..n].to_vec()).unwrap()
    }

    /// Reads an error in the session's format and returns its message.
    async fn error(&mut self) -> String {
        let code = match self.pushback.take() {
            Some(code) => code,
            None => self.u64().await,
        };
        assert_eq!(code, ERROR, "protocol {:#x}", self.version);
        if self.version & 0xff >= 26 {
            assert_eq!(self.string().await, "Error");
            assert_eq!(self.u64().await, 0);
            assert_eq!(self.string().await, "Error");
            let msg = self.string().await;
            assert_eq!(self.u64().await, 0);
            assert_eq!(self.u64().await, 0);
            msg
        } else {
            let msg = self.string().await;
            assert_eq!(self.u64().await, 1);
            msg
        }
    }

    /// Adds a path with AddToStoreNar in the session's form (NAR tunnelled
    /// through STDERR_READ before 1.23, framed from 1.23), returning the daemon's
    /// first answer after the NAR.
    async fn add_nar(
        &mut self,
        p: &StorePath,
        nar: &[u8],
        refs: &[&StorePath],
        sigs: &[String],
        dont_check_sigs: bool,
    ) {
        let hash = hex(&sha2::Sha256::digest(nar));
        let mut req = add_nar_request(p, hash, refs, nar.len() as u64, sigs, dont_check_sigs);
        if self.version & 0xff >= 23 {
            req.extend(framed(nar, 1000));
            self.send(&req).await;
        } else {
            self.send(&req).await;
            let mut sent = 0;
            while sent < nar.len() {
                let msg = self.u64().await;
                if msg != READ {
                    // An error before the NAR was asked for.
                    self.pushback = Some(msg);
                    return;
                }
                let want = self.u64().await as usize;
                assert!(want <= nar.len() - sent, "asked past the declared NAR");
                let piece = &nar[sent..sent + want.min(777)];
                sent += piece.len();
                self.send(&s(piece)).await;
            }
        }
    }
}

/// AddToStoreNar's request up to its NAR: path, no deriver, `hash` (hex),
/// references, registration time, `nar_size`, not ultimate, `sigs`, no CA, no
/// repair, `dont_check_sigs`.
fn add_nar_request(
    p: &StorePath,
    hash: String,
    refs: &[&StorePath],
    nar_size: u64,
    sigs: &[String],
    dont_check_sigs: bool,
) -> Vec<u8> {
    let mut req = u(39);
    req.extend(s(p.to_absolute()));
    req.extend(s(""));
    req.extend(s(hash));
    req.extend(strings(refs.iter().map(|r| r.to_absolute())));
    req.extend(u(0));
    req.extend(u(nar_size));
    req.extend(u(0));
    req.extend(strings(sigs));
    req.extend(s(""));
    req.extend(u(0));
    req.extend(u(dont_check_sigs.into()));
    req
}

/// IsValidPath of a path the store does not have: answered "no".
async fn still_in_step(c: &mut Client) {
    let mut req = u(1);
    req.extend(s(path("absent", 1).to_absolute()));
    c.send(&req).await;
    c.expect(&[u(LAST), u(0)].concat()).await;
}

/// `key`'s signature of the fingerprint of `p` with this NAR and no references.
fn sign(key: &SigningKey, p: &StorePath, nar: &[u8]) -> String {
    let fp = cairn_nix::signature::fingerprint(
        p,
        &NixHash::Sha256(sha2::Sha256::digest(nar).into()),
        nar.len() as u64,
        &[],
    );
    key.sign(fp.as_bytes()).to_string()
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|b| format!("{b:02x}")).collect()
}

const VERSIONS: std::ops::RangeInclusive<u64> = 0x115..=0x126;

#[tokio::test]
async fn greeting_for_every_version() {
    let st = store(Config::default());
    for v in VERSIONS {
        for trusted in [false, true] {
            let mut c = Client::connect(&st, v, trusted).await;
            // A first operation works: IsValidPath of an absent path.
            still_in_step(&mut c).await;
            drop(c.io);
            c.server.await.unwrap().unwrap();
        }
    }
}

#[tokio::test]
async fn newer_client_gets_our_version() {
    // A client newer than the daemon (1.40) speaks 1.38: features are exchanged.
    let st = store(Config::default());
    let mut c = Client::connect(&st, 0x128, true).await;
    c.version = 0x126;
    still_in_step(&mut c).await;
}

#[tokio::test]
async fn too_old_client_gets_a_clear_error() {
    let st = store(Config::default());
    let mut c = Client::connect(&st, 0x114, true).await;
    let msg = c.error().await;
    assert!(
        msg.contains("1.20 is too old") && msg.contains("1.21"),
        "{msg}"
    );
    let end = c.server.await.unwrap();
    assert!(end.is_err());
}

#[tokio::test]
async fn bad_magic_closes() {
    let st = store(Config::default());
    let (mut io, server_io) = tokio::io::duplex(4096);
    let daemon = st.daemon.clone();
    let server = tokio::spawn(async move {
        let (r, w) = tokio::io::split(server_io);
        daemon
            .serve_connection(r, w, true, std::future::pending())
            .await
    });
    io.write_all(&u(0x1234)).await.unwrap();
    let err = server.await.unwrap().unwrap_err();
    assert!(err.to_string().contains("protocol mismatch"), "{err}");
    let mut rest = Vec::new();
    io.read_to_end(&mut rest).await.unwrap();
    assert!(rest.is_empty());
}

/// Adds a path in each version's form, then reads it back with
/// QueryPathInfo, QueryValidPaths (the substitute flag from 1.27) and
/// NarFromPath; an absent path's NarFromPath is an error in the version's
/// format, after which the connection still serves.
#[tokio::test]
async fn add_and_query_in_every_version() {
    for v in VERSIONS {
        let st = store(Config::default());
        let mut c = Client::connect(&st, v, true).await;
        let p = path("hello", 7);
        let nar = file_nar(b"hello world\n");
        c.add_nar(&p, &nar, &[], &[], true).await;
        c.expect(&u(LAST)).await;

        let mut req = u(26);
        req.extend(s(p.to_absolute()));
        c.send(&req).await;
        let mut expected = u(LAST);
        expected.extend(u(1));
        expected.extend(s(""));
        expected.extend(s(hex(&sha2::Sha256::digest(&nar))));
        expected.extend(u(0));
        expected.extend(u(0));
        expected.extend(u(nar.len() as u64));
        expected.extend(u(0));
        expected.extend(u(0));
        expected.extend(s(""));
        c.expect(&expected).await;

        let mut req = u(31);
        req.extend(strings([p.to_absolute(), path("absent", 9).to_absolute()]));
        if v & 0xff >= 27 {
            req.extend(u(0));
        }
        c.send(&req).await;
        c.expect(&[u(LAST), strings([p.to_absolute()])].concat())
            .await;

        let mut req = u(38);
        req.extend(s(p.to_absolute()));
        c.send(&req).await;
        c.expect(&[u(LAST), nar.clone()].concat()).await;

        let mut req = u(38);
        req.extend(s(path("absent", 9).to_absolute()));
        c.send(&req).await;
        let msg = c.error().await;
        assert!(msg.contains("is not valid"), "{msg}");

        // QuerySubstitutablePathInfos: a path set before 1.22, a path -> CA map after.
        let mut req = u(30);
        if v & 0xff < 22 {
            req.extend(strings([p.to_absolute()]));
        } else {
            req.extend(u(1));
            req.extend(s(p.to_absolute()));
            req.extend(s(""));
        }
        c.send(&req).await;
        c.expect(&[u(LAST), u(0)].concat()).await;

        let mut req = u(29);
        req.extend(s(p.hash_part()));
        c.send(&req).await;
        c.expect(&[u(LAST), s(p.to_absolute())].concat()).await;
    }
}

#[tokio::test]
async fn builds_are_refused_with_nix_error_format() {
    for v in VERSIONS {
        let st = store(Config::default());
        let mut c = Client::connect(&st, v, true).await;
        let mut req = u(9);
        req.extend(strings([format!("{}!out", path("x.drv", 3).to_absolute())]));
        req.extend(u(0));
        c.send(&req).await;
        let msg = c.error().await;
        assert_eq!(msg, cairn_nix_daemon::NO_BUILDS);
        // Still in step.
        still_in_step(&mut c).await;
    }
}

#[tokio::test]
async fn untrusted_additions_need_a_trusted_signature() {
    let key = SigningKey::from_seed("test-1", &[5; 32]).unwrap();
    let st = store(Config {
        trusted_keys: vec![key.to_verifying_key()],
        ..Config::default()
    });
    let nar = file_nar(b"signed contents");
    let p = path("signed", 4);
    for v in [0x115u64, 0x122, 0x126] {
        let mut c = Client::connect(&st, v, false).await;
        // Unsigned (and asking to skip the check, which an untrusted client
        // may not): refused before the NAR is read.
        c.add_nar(&p, &nar, &[], &[], true).await;
        let msg = c.error().await;
        assert!(msg.contains("lacks a signature by a trusted key"), "{msg}");
        assert!(st.path_info.get(*p.digest()).await.unwrap().is_none());
    }
    let fp = cairn_nix::signature::fingerprint(
        &p,
        &NixHash::Sha256(sha2::Sha256::digest(&nar).into()),
        nar.len() as u64,
        &[],
    );
    let sig = key.sign(fp.as_bytes()).to_string();
    let mut c = Client::connect(&st, 0x126, false).await;
    c.add_nar(&p, &nar, &[], &[sig], false).await;
    c.expect(&u(LAST)).await;
    assert!(st.path_info.get(*p.digest()).await.unwrap().is_some());
}

#[tokio::test]
async fn wrong_hash_or_size_or_missing_reference_registers_nothing() {
    let st = store(Config::default());
    let nar = file_nar(b"contents");
    let p = path("checked", 5);
    // Declared hash of other bytes.
    let mut req = add_nar_request(
        &p,
        hex(&sha2::Sha256::digest(b"other")),
        &[],
        nar.len() as u64,
        &[],
        true,
    );
    req.extend(framed(&nar, 64));
    let mut c = Client::connect(&st, 0x126, true).await;
    c.send(&req).await;
    let msg = c.error().await;
    assert!(msg.contains("hash mismatch importing path"), "{msg}");
    assert!(st.path_info.get(*p.digest()).await.unwrap().is_none());
    // A reference that is not in the store.
    c.add_nar(&p, &nar, &[&path("missing", 6)], &[], true).await;
    let msg = c.error().await;
    assert!(msg.contains("is not valid"), "{msg}");
    assert!(st.path_info.get(*p.digest()).await.unwrap().is_none());
    // The connection is still in step.
    c.add_nar(&p, &nar, &[], &[], true).await;
    c.expect(&u(LAST)).await;
    assert!(st.path_info.get(*p.digest()).await.unwrap().is_some());
}

#[tokio::test]
async fn connection_dying_mid_nar_registers_nothing() {
    let st = store(Config::default());
    let mut c = Client::connect(&st, 0x126, true).await;
    let nar = file_nar(&vec![7u8; 300_000]);
    let p = path("cut", 8);
    let mut req = add_nar_request(
        &p,
        hex(&sha2::Sha256::digest(&nar)),
        &[],
        nar.len() as u64,
        &[],
        true,
    );
    let body = framed(&nar, 4096);
    req.extend(&body[..body.len() / 2]);
    c.send(&req).await;
    drop(c.io);
    assert!(c.server.await.unwrap().is_err());
    assert!(st.path_info.get(*p.digest()).await.unwrap().is_none());
}

/// AddMultipleToStore (1.32+): a count, then each path's info and NAR, all in
/// one framed stream; references among them resolve in order.
#[tokio::test]
async fn add_multiple_to_store() {
    let st = store(Config::default());
    let mut c = Client::connect(&st, 0x122, true).await; // 1.34, Nix 2.8
    let dep = path("dep", 10);
    let top = path("top", 11);
    let dep_nar = file_nar(b"dep");
    let top_nar = file_nar(dep.to_absolute().as_bytes());
    let mut inner = u(2);
    for (p, nar, refs) in [
        (&dep, &dep_nar, vec![]),
        (&top, &top_nar, vec![dep.to_absolute()]),
    ] {
        inner.extend(s(p.to_absolute()));
        inner.extend(s(""));
        inner.extend(s(hex(&sha2::Sha256::digest(nar))));
        inner.extend(strings(refs));
        inner.extend(u(0));
        inner.extend(u(nar.len() as u64));
        inner.extend(u(0));
        inner.extend(strings(Vec::<String>::new()));
        inner.extend(s(""));
        inner.extend(nar);
    }
    let mut req = u(44);
    req.extend(u(0));
    req.extend(u(1));
    req.extend(framed(&inner, 100));
    c.send(&req).await;
    c.expect(&u(LAST)).await;
    // QueryReferrers of dep: top.
    let mut req = u(6);
    req.extend(s(dep.to_absolute()));
    c.send(&req).await;
    c.expect(&[u(LAST), strings([top.to_absolute()])].concat())
        .await;
}

/// AddToStore (1.25+) with `fixed:r:sha256`, as `nix-store --add` sends it, and
/// flat, and AddTextToStore: the paths Nix computes for the same content.
#[tokio::test]
async fn add_to_store_content_addressed() {
    let st = store(Config::default());
    let mut c = Client::connect(&st, 0x122, false).await;
    let nar = file_nar(b"hello\n");
    let mut req = u(7);
    req.extend(s("hello.txt"));
    req.extend(s("fixed:r:sha256"));
    req.extend(u(0));
    req.extend(u(0));
    req.extend(framed(&nar, 10));
    c.send(&req).await;
    let expected = cairn_nix::store_path::make_fixed_output_path(
        cairn_nix::store_path::FileIngestionMethod::Recursive,
        &HashAlgo::Sha256.digest(&nar),
        "hello.txt",
        [],
        false,
    )
    .unwrap();
    c.expect(&u(LAST)).await;
    assert_eq!(c.string().await, expected.to_absolute());
    assert_eq!(c.string().await, ""); // deriver
    assert_eq!(c.string().await, hex(&sha2::Sha256::digest(&nar)));

    let st = store(Config::default());
    let mut c = Client::connect(&st, 0x126, false).await;
    let mut req = u(7);
    req.extend(s("flat"));
    req.extend(s("fixed:sha1"));
    req.extend(u(0));
    req.extend(u(0));
    req.extend(framed(b"flat bytes", 3));
    c.send(&req).await;
    let expected = cairn_nix::store_path::make_fixed_output_path(
        cairn_nix::store_path::FileIngestionMethod::Flat,
        &HashAlgo::Sha1.digest(b"flat bytes"),
        "flat",
        [],
        false,
    )
    .unwrap();
    c.expect(&u(LAST)).await;
    assert_eq!(c.string().await, expected.to_absolute());

    let mut c = Client::connect(&st, 0x115, false).await;
    let mut req = u(8);
    req.extend(s("t"));
    req.extend(s("text contents"));
    req.extend(u(0));
    c.send(&req).await;
    let expected =
        cairn_nix::store_path::make_text_path_for_content("t", b"text contents", []).unwrap();
    c.expect(&[u(LAST), s(expected.to_absolute())].concat())
        .await;
}

/// AddToStore before 1.25 (Nix 2.3's `nix-store --add`): name, fixed,
/// recursive, algorithm, then an unframed NAR; the reply is the path. The
/// daemon reads exactly the NAR, so the next request follows.
#[tokio::test]
async fn add_to_store_before_1_25() {
    let dir_nar = {
        let mut out = Vec::new();
        for part in [
            &b"nix-archive-1"[..],
            b"(",
            b"type",
            b"directory",
            b"entry",
            b"(",
            b"name",
            b")",
            b"node",
            b"(",
            b"type",
            b"regular",
            b"contents",
        ] {
            out.extend(s(part));
        }
        // A file whose contents look like NAR tokens, and a name ")" above.
        out.extend(s([s(")"), s(")")].concat()));
        for part in [")", ")", ")"] {
            out.extend(s(part));
        }
        out
    };
    let file_nar = file_nar(b"flat contents");
    for v in 0x115..=0x118u64 {
        let st = store(Config::default());
        let mut c = Client::connect(&st, v, false).await;
        let mut req = u(7);
        req.extend(s("tree"));
        req.extend(u(1));
        req.extend(u(1));
        req.extend(s("sha256"));
        req.extend(&dir_nar);
        c.send(&req).await;
        let expected = cairn_nix::store_path::make_fixed_output_path(
            cairn_nix::store_path::FileIngestionMethod::Recursive,
            &HashAlgo::Sha256.digest(&dir_nar),
            "tree",
            [],
            false,
        )
        .unwrap();
        c.expect(&[u(LAST), s(expected.to_absolute())].concat())
            .await;

        let mut req = u(7);
        req.extend(s("flat"));
        req.extend(u(1));
        req.extend(u(0));
        req.extend(s("sha1"));
        req.extend(&file_nar);
        c.send(&req).await;
        let expected = cairn_nix::store_path::make_fixed_output_path(
            cairn_nix::store_path::FileIngestionMethod::Flat,
            &HashAlgo::Sha1.digest(b"flat contents"),
            "flat",
            [],
            false,
        )
        .unwrap();
        c.expect(&[u(LAST), s(expected.to_absolute())].concat())
            .await;
        still_in_step(&mut c).await;
    }
}

/// The session and query operations without version differences in 1.34:
/// their exact answers, then AddSignatures (only by a trusted key for an
/// untrusted client), VerifyStore and QueryMissing.
#[tokio::test]
async fn other_operations() {
    let key = SigningKey::from_seed("test-1", &[9; 32]).unwrap();
    let other = SigningKey::from_seed("other-1", &[8; 32]).unwrap();
    let st = store(Config {
        trusted_keys: vec![key.to_verifying_key()],
        ..Config::default()
    });
    let mut c = Client::connect(&st, 0x122, true).await;
    let p = path("dep", 20);
    let nar = file_nar(b"dep");
    c.add_nar(&p, &nar, &[], &[], true).await;
    c.expect(&u(LAST)).await;
    let absent = path("absent", 21).to_absolute();
    let one = |op: u64, arg: &str| [u(op), s(arg)].concat();
    // SetOptions: 12 numbers and 1 override.
    let mut req = u(19);
    for _ in 0..12 {
        req.extend(u(0));
    }
    req.extend(u(1));
    req.extend(s("cores"));
    req.extend(s("4"));
    for (req, answer) in [
        (req, u(LAST)),
        (one(11, &p.to_absolute()), [u(LAST), u(1)].concat()), // AddTempRoot
        (one(12, "/home/x/result"), [u(LAST), u(1)].concat()), // AddIndirectRoot
        (u(13), [u(LAST), u(1)].concat()),                     // SyncWithGC
        (u(14), [u(LAST), u(0)].concat()),                     // FindRoots: none
        (u(34), [u(LAST), u(1)].concat()),                     // OptimiseStore
        (one(10, &p.to_absolute()), [u(LAST), u(1)].concat()), // EnsurePath
        (u(23), [u(LAST), strings([p.to_absolute()])].concat()), // QueryAllValidPaths
        (one(6, &p.to_absolute()), [u(LAST), u(0)].concat()),  // QueryReferrers: none
        (one(33, &p.to_absolute()), [u(LAST), u(0)].concat()), // QueryValidDerivers
        (one(43, "sha256:abc!out"), [u(LAST), u(0)].concat()), // QueryRealisation
        (one(21, &absent), [u(LAST), u(0)].concat()),          // QuerySubstitutablePathInfo
        (
            one(29, "00000000000000000000000000000000"),
            [u(LAST), s("")].concat(),
        ),
    ] {
        c.send(&req).await;
        c.expect(&answer).await;
    }
    // EnsurePath of an absent path: an error, the connection goes on.
    c.send(&one(10, &absent)).await;
    assert!(c.error().await.contains("is not valid"));

    // QueryMissing: an absent path is unknown, a present one is not missing,
    // an absent derivation is unknown.
    let mut req = u(40);
    req.extend(strings([
        p.to_absolute(),
        absent.clone(),
        format!("{}!out", path("x.drv", 22).to_absolute()),
    ]));
    c.send(&req).await;
    let mut unknown = vec![absent.clone(), path("x.drv", 22).to_absolute()];
    unknown.sort();
    c.expect(&[u(LAST), u(0), u(0), strings(unknown), u(0), u(0)].concat())
        .await;

    // VerifyStore with contents checked: no errors.
    c.send(&[u(35), u(1), u(0)].concat()).await;
    c.expect(&[u(LAST), u(0)].concat()).await;

    // AddSignatures from an untrusted client: a signature by the trusted key is
    // added, one by another key refused.
    let mut c = Client::connect(&st, 0x122, false).await;
    let fp = cairn_nix::signature::fingerprint(
        &p,
        &NixHash::Sha256(sha2::Sha256::digest(&nar).into()),
        nar.len() as u64,
        &[],
    );
    let bad = other.sign(fp.as_bytes()).to_string();
    c.send(&[u(37), s(p.to_absolute()), strings([&bad])].concat())
        .await;
    assert!(c.error().await.contains("not privileged"));
    let good = key.sign(fp.as_bytes()).to_string();
    c.send(&[u(37), s(p.to_absolute()), strings([&good])].concat())
        .await;
    c.expect(&[u(LAST), u(1)].concat()).await;
    let info = st.path_info.get(*p.digest()).await.unwrap().unwrap();
    assert_eq!(
        info.signatures
            .iter()
            .map(|s| s.to_string())
            .collect::<Vec<_>>(),
        [good]
    );
    // QueryPathInfo shows it.
    c.send(&one(26, &p.to_absolute())).await;
    c.expect(&u(LAST)).await;
    assert_eq!(c.u64().await, 1);
    for _ in 0..2 {
        c.string().await;
    }
    assert_eq!(c.u64().await, 0); // references
    c.u64().await;
    c.u64().await;
    c.u64().await;
    assert_eq!(c.u64().await, 1);
    assert_eq!(c.string().await, key.sign(fp.as_bytes()).to_string());
}

/// VerifyStore reports, as STDERR_NEXT lines, each path referring to one the
/// store lacks and (checking contents) each whose NAR no longer matches its
/// path info, then answers that errors were found; a sound store answers 0.
#[tokio::test]
async fn verify_store_reports_missing_references_and_modified_contents() {
    const NEXT: u64 = 0x6f6c_6d67;
    let st = store(Config::default());
    let mut c = Client::connect(&st, 0x122, true).await;
    let dep = path("dep", 30);
    c.add_nar(&dep, &file_nar(b"dep"), &[], &[], true).await;
    c.expect(&u(LAST)).await;
    let top = path("top", 31);
    c.add_nar(&top, &file_nar(b"top"), &[&dep], &[], true).await;
    c.expect(&u(LAST)).await;
    c.send(&[u(35), u(1), u(0)].concat()).await;
    c.expect(&[u(LAST), u(0)].concat()).await;

    // Registered past the daemon's checks: a path whose reference is gone,
    // and one whose NAR hash is not its content's.
    let good = st.path_info.get(*dep.digest()).await.unwrap().unwrap();
    let mut broken = good.clone();
    broken.store_path = path("broken", 32);
    broken.references = vec![dep.clone(), path("missing", 33)];
    st.path_info.put(broken).await.unwrap();
    let mut modified = good.clone();
    modified.store_path = path("modified", 34);
    modified.nar_sha256 = [0; 32];
    st.path_info.put(modified).await.unwrap();

    let mut verify = async |contents: u64| {
        c.send(&[u(35), u(contents), u(0)].concat()).await;
        let mut lines = Vec::new();
        loop {
            match c.u64().await {
                NEXT => lines.push(c.string().await),
                LAST => break,
                other => panic!("unexpected message {other:#x}"),
            }
        }
        lines.sort();
        (lines, c.u64().await)
    };
    let missing = format!(
        "path '{}' refers to the invalid path '{}'\n",
        path("broken", 32).to_absolute(),
        path("missing", 33).to_absolute()
    );
    assert_eq!(verify(0).await, (vec![missing.clone()], 1));
    let changed = format!(
        "path '{}' was modified! expected hash '{}', got '{}'\n",
        path("modified", 34).to_absolute(),
        NixHash::Sha256([0; 32]).to_nix32_prefixed(),
        NixHash::Sha256(good.nar_sha256).to_nix32_prefixed()
    );
    let mut both = vec![missing, changed];
    both.sort();
    assert_eq!(verify(1).await, (both, 1));
}

/// AddMultipleToStore whose framed stream ends before the paths it counts:
/// reported, nothing of the missing path registered, and the connection goes on.
#[tokio::test]
async fn add_multiple_cut_short_is_reported() {
    let st = store(Config::default());
    let mut c = Client::connect(&st, 0x126, true).await;
    let mut req = u(44);
    req.extend(u(0));
    req.extend(u(1));
    req.extend(framed(&[u(2), s(path("p", 30).to_absolute())].concat(), 7));
    c.send(&req).await;
    let msg = c.error().await;
    assert!(msg.contains("ended early"), "{msg}");
    still_in_step(&mut c).await;
    assert!(st.path_info.get([30; 20]).await.unwrap().is_none());
}

/// BuildPathsWithResults (1.34+) of a path that is already valid: one
/// KeyedBuildResult, AlreadyValid, with the fields of the version (1.34: times
/// and an empty builtOutputs; 1.37+: also the two absent CPU times).
#[tokio::test]
async fn build_results_of_valid_paths() {
    for (v, zeros) in [(0x122u64, 5), (0x124, 5), (0x125, 7), (0x126, 7)] {
        let st = store(Config::default());
        let mut c = Client::connect(&st, v, true).await;
        let p = path("valid", 40);
        c.add_nar(&p, &file_nar(b"v"), &[], &[], true).await;
        c.expect(&u(LAST)).await;
        c.send(&[u(46), strings([p.to_absolute()]), u(0)].concat())
            .await;
        let mut expected = [u(LAST), u(1), s(p.to_absolute()), u(2), s("")].concat();
        for _ in 0..zeros {
            expected.extend(u(0));
        }
        c.expect(&expected).await;
        still_in_step(&mut c).await;
    }
}

/// The fields of an `UnkeyedValidPathInfo` as Nix's daemon writes them
/// (`ValidPathInfo::write` without the path, format 16 and later): deriver,
/// NAR hash (hex), references, registration time (cairn records none),
/// NAR size, ultimate, signatures, content address.
fn unkeyed(deriver: &str, nar: &[u8], refs: &[String], sigs: &[String], ca: &str) -> Vec<u8> {
    [
        s(deriver),
        s(hex(&sha2::Sha256::digest(nar))),
        strings(refs),
        u(0),
        u(nar.len() as u64),
        u(0),
        strings(sigs),
        s(ca),
    ]
    .concat()
}

/// A `ValidPathInfo` as a client sends it inside AddMultipleToStore's stream:
/// (and AddToStoreNar's request): the path, then the unkeyed fields.
fn keyed_info(p: &StorePath, deriver: &str, nar: &[u8], refs: &[String]) -> Vec<u8> {
    [s(p.to_absolute()), unkeyed(deriver, nar, refs, &[], "")].concat()
}

/// Nix's content address text of a fixed-output or text hash
/// (`renderContentAddress`: the method, then the hash in base 32 with its type).
fn ca_text(prefix: &str, hash: &NixHash) -> String {
    format!("{prefix}{}", hash.to_nix32_prefixed())
}

/// The operations that first appear in a protocol version after 1.21, with that
/// version: Nix's client (`remote-store.cc`) sends them only to a daemon of at
/// least that version.
fn introduced(op: u64) -> u64 {
    match op {
        41 => 22, // QueryDerivationOutputMap
        43 => 27, // QueryRealisation
        44 => 32, // AddMultipleToStore
        46 => 34, // BuildPathsWithResults
        _ => 21,
    }
}

/// Every operation issue 21 lists, in every protocol version 1.21–1.38 that
/// Nix's client sends it in, with the exact bytes of the request and of the
/// answer (or the error in the version's format). The request forms that change
/// with the version, from Nix's sources:
/// - AddToStoreNar: NAR tunnelled by STDERR_READ before 1.23, framed from 1.23;
/// - AddToStore: name, fixed, recursive, algorithm and an unframed NAR before
///   1.25; name, content-address method, references, repair and a framed dump
///   from 1.25, answered with the whole path info;
/// - QueryValidPaths: the substitute flag from 1.27;
/// - QuerySubstitutablePathInfos: a path set before 1.22, a path -> CA map after;
/// - derived paths (BuildPaths, QueryMissing): before 1.30 a bare `.drv` path
///   means all its outputs (`parsePathWithOutputs`), from 1.30 the file itself;
/// - errors: message and status before 1.26, the structured `Error` from 1.26;
/// - BuildPathsWithResults' BuildResult: 1.34 fields plus CPU times from 1.37.
#[tokio::test]
async fn every_operation_in_every_version() {
    let key = SigningKey::from_seed("test-1", &[12; 32]).unwrap();
    for v in VERSIONS {
        let minor = v & 0xff;
        let st = store(Config {
            trusted_keys: vec![key.to_verifying_key()],
            ..Config::default()
        });
        let mut c = Client::connect(&st, v, true).await;
        let version = format!("protocol {v:#x}");

        // The fixture: dep, a .drv (AddTextToStore) whose output "out" is top,
        // and top (referring to dep, derived by the .drv), all in the
        // version's AddToStoreNar form.
        let dep = path("dep", 50);
        let top = path("top", 51);
        let dep_nar = file_nar(b"dep contents");
        let top_nar = file_nar(dep.to_absolute().as_bytes());
        c.add_nar(&dep, &dep_nar, &[], &[], true).await;
        c.expect(&u(LAST)).await;
        let drv_text = format!(
            "Derive([(\"out\",\"{}\",\"\",\"\")],[],[],\"x86_64-linux\",\"/bin/sh\",[],[(\"out\",\"{}\")])",
            top.to_absolute(),
            top.to_absolute()
        );
        let drv =
            cairn_nix::store_path::make_text_path_for_content("top.drv", drv_text.as_bytes(), [])
                .unwrap();
        c.send(&[u(8), s("top.drv"), s(&drv_text), u(0)].concat())
            .await;
        c.expect(&[u(LAST), s(drv.to_absolute())].concat()).await;
        // A second .drv whose output is not in the store.
        let lone_text = format!(
            "Derive([(\"out\",\"{absent}\",\"\",\"\")],[],[],\"x86_64-linux\",\"/bin/sh\",[],[])",
            absent = path("absent", 52).to_absolute()
        );
        let lone =
            cairn_nix::store_path::make_text_path_for_content("lone.drv", lone_text.as_bytes(), [])
                .unwrap();
        c.send(&[u(8), s("lone.drv"), s(&lone_text), u(0)].concat())
            .await;
        c.expect(&[u(LAST), s(lone.to_absolute())].concat()).await;
        // AddToStoreNar with a deriver.
        let mut req = u(39);
        req.extend(keyed_info(
            &top,
            &drv.to_absolute(),
            &top_nar,
            &[dep.to_absolute()],
        ));
        req.extend(u(0)); // repair
        req.extend(u(1)); // dontCheckSigs
        if minor >= 23 {
            req.extend(framed(&top_nar, 100));
            c.send(&req).await;
        } else {
            c.send(&req).await;
            let mut sent = 0;
            while sent < top_nar.len() {
                assert_eq!(c.u64().await, READ, "{version}");
                let want = c.u64().await as usize;
                let piece = &top_nar[sent..(sent + want).min(top_nar.len())];
                sent += piece.len();
                c.send(&s(piece)).await;
            }
        }
        c.expect(&u(LAST)).await;

        let absent = path("absent", 52).to_absolute();
        let one = |op: u64, arg: &str| [u(op), s(arg)].concat();
        let top_info = unkeyed(&drv.to_absolute(), &top_nar, &[dep.to_absolute()], &[], "");
        let mut all = vec![
            dep.to_absolute(),
            top.to_absolute(),
            drv.to_absolute(),
            lone.to_absolute(),
        ];
        all.sort();
        let mut set_options = u(19);
        for _ in 0..12 {
            set_options.extend(u(0));
        }
        set_options.extend(u(1));
        set_options.extend(s("cores"));
        set_options.extend(s("4"));
        let mut sub_infos = u(30);
        if minor < 22 {
            sub_infos.extend(strings([&absent]));
        } else {
            sub_infos.extend([u(1), s(&absent), s("")].concat());
        }
        // QueryValidPaths, without and with the substitute flag from 1.27.
        let valid_paths = |substitute: u64| {
            let mut req = u(31);
            req.extend(strings([dep.to_absolute(), absent.clone()]));
            if minor >= 27 {
                req.extend(u(substitute));
            }
            req
        };
        // The .drv as a derived path: from 1.30 "!*" for all its outputs; before,
        // the bare path means the same.
        let drv_all = if minor >= 30 {
            format!("{}!*", drv.to_absolute())
        } else {
            drv.to_absolute()
        };
        let mut missing = u(40);
        missing.extend(strings([
            top.to_absolute(),
            absent.clone(),
            format!("{}!out", drv.to_absolute()),
            drv_all.clone(),
            lone.to_absolute(),
            format!("{}!out", path("x.drv", 53).to_absolute()),
        ]));
        // The bare lone.drv: before 1.30 its outputs, to build; after, the file,
        // which is valid.
        let will_build = if minor < 30 {
            strings([lone.to_absolute()])
        } else {
            u(0)
        };
        let mut unknown = vec![absent.clone(), path("x.drv", 53).to_absolute()];
        unknown.sort();

        let cases: Vec<(u64, &str, Vec<u8>, Vec<u8>)> = vec![
            (
                1,
                "IsValidPath",
                one(1, &top.to_absolute()),
                [u(LAST), u(1)].concat(),
            ),
            (1, "IsValidPath", one(1, &absent), [u(LAST), u(0)].concat()),
            (
                3,
                "HasSubstitutes",
                one(3, &absent),
                [u(LAST), u(0)].concat(),
            ),
            (
                31,
                "QueryValidPaths",
                valid_paths(0),
                [u(LAST), strings([dep.to_absolute()])].concat(),
            ),
            (
                31,
                "QueryValidPaths",
                valid_paths(1),
                [u(LAST), strings([dep.to_absolute()])].concat(),
            ),
            (
                26,
                "QueryPathInfo",
                one(26, &top.to_absolute()),
                [u(LAST), u(1), top_info.clone()].concat(),
            ),
            (
                26,
                "QueryPathInfo",
                one(26, &absent),
                [u(LAST), u(0)].concat(),
            ),
            (
                29,
                "QueryPathFromHashPart",
                one(29, &top.hash_part()),
                [u(LAST), s(top.to_absolute())].concat(),
            ),
            (
                29,
                "QueryPathFromHashPart",
                one(29, &path("absent", 52).hash_part()),
                [u(LAST), s("")].concat(),
            ),
            (
                23,
                "QueryAllValidPaths",
                u(23),
                [u(LAST), strings(&all)].concat(),
            ),
            (
                6,
                "QueryReferrers",
                one(6, &dep.to_absolute()),
                [u(LAST), strings([top.to_absolute()])].concat(),
            ),
            (
                6,
                "QueryReferrers",
                one(6, &top.to_absolute()),
                [u(LAST), u(0)].concat(),
            ),
            (
                33,
                "QueryValidDerivers",
                one(33, &top.to_absolute()),
                [u(LAST), strings([drv.to_absolute()])].concat(),
            ),
            (
                33,
                "QueryValidDerivers",
                one(33, &dep.to_absolute()),
                [u(LAST), u(0)].concat(),
            ),
            (
                40,
                "QueryMissing",
                missing,
                [u(LAST), will_build, u(0), strings(&unknown), u(0), u(0)].concat(),
            ),
            (
                30,
                "QuerySubstitutablePathInfos",
                sub_infos,
                [u(LAST), u(0)].concat(),
            ),
            (
                21,
                "QuerySubstitutablePathInfo",
                one(21, &absent),
                [u(LAST), u(0)].concat(),
            ),
            (
                32,
                "QuerySubstitutablePaths",
                [u(32), strings([&absent])].concat(),
                [u(LAST), u(0)].concat(),
            ),
            (
                41,
                "QueryDerivationOutputMap",
                one(41, &drv.to_absolute()),
                [u(LAST), u(1), s("out"), s(top.to_absolute())].concat(),
            ),
            (
                43,
                "QueryRealisation",
                one(43, &format!("sha256:{}!out", "0".repeat(64))),
                [u(LAST), u(0)].concat(),
            ),
            (
                38,
                "NarFromPath",
                one(38, &top.to_absolute()),
                [u(LAST), top_nar.clone()].concat(),
            ),
            (19, "SetOptions", set_options, u(LAST)),
            (
                11,
                "AddTempRoot",
                one(11, &top.to_absolute()),
                [u(LAST), u(1)].concat(),
            ),
            (
                12,
                "AddIndirectRoot",
                one(12, "/home/u/result"),
                [u(LAST), u(1)].concat(),
            ),
            (
                10,
                "EnsurePath",
                one(10, &top.to_absolute()),
                [u(LAST), u(1)].concat(),
            ),
            (13, "SyncWithGC", u(13), [u(LAST), u(1)].concat()),
            (14, "FindRoots", u(14), [u(LAST), u(0)].concat()),
            (34, "OptimiseStore", u(34), [u(LAST), u(1)].concat()),
            (
                35,
                "VerifyStore",
                [u(35), u(1), u(0)].concat(),
                [u(LAST), u(0)].concat(),
            ),
            (
                9,
                "BuildPaths",
                [u(9), strings([top.to_absolute(), drv_all.clone()]), u(0)].concat(),
                [u(LAST), u(1)].concat(),
            ),
        ];
        for (op, name, req, answer) in cases {
            if minor < introduced(op) {
                continue;
            }
            c.send(&req).await;
            let got = c.read(answer.len()).await;
            assert_eq!(got, answer, "{name} in {version}");
        }

        // BuildPathsWithResults of valid targets: one KeyedBuildResult each,
        // AlreadyValid, builtOutputs giving the .drv's output.
        if minor >= introduced(46) {
            c.send(&[u(46), strings([drv_all.clone()]), u(0)].concat())
                .await;
            let mut head = [u(LAST), u(1), s(&drv_all), u(2), s("")].concat();
            for _ in 0..(if minor >= 37 { 6 } else { 4 }) {
                head.extend(u(0));
            }
            head.extend(u(1));
            c.expect(&head).await;
            let id = c.string().await;
            assert!(id.ends_with("!out"), "{id}");
            let realisation = c.string().await;
            assert!(
                realisation.contains(&format!("\"outPath\":\"{}-top\"", top.hash_part())),
                "{realisation}"
            );
        }

        // Builds that need a builder: Nix's error in the version's format, and
        // the connection goes on.
        let x_drv = format!("{}!out", path("x.drv", 53).to_absolute());
        let mut build_derivation = [u(36), s(path("x.drv", 53).to_absolute())].concat();
        build_derivation.extend(u(1));
        for f in [
            top.to_absolute(),
            String::new(),
            String::new(),
            "out".into(),
        ] {
            build_derivation.extend(s(f));
        }
        build_derivation.extend(strings([dep.to_absolute()]));
        for f in ["x86_64-linux", "/bin/sh"] {
            build_derivation.extend(s(f));
        }
        build_derivation.extend(strings(["-c", "true"]));
        build_derivation.extend([u(1), s("out"), s(top.to_absolute())].concat());
        build_derivation.extend(u(0));
        // BuildPaths of the bare lone.drv: its outputs before 1.30, the valid
        // file itself from 1.30.
        let lone_build = [u(9), strings([lone.to_absolute()]), u(0)].concat();
        if minor >= 30 {
            c.send(&lone_build).await;
            c.expect(&[u(LAST), u(1)].concat()).await;
        }
        let mut refused = vec![
            (9, [u(9), strings([&x_drv]), u(0)].concat()),
            (36, build_derivation),
        ];
        if minor < 30 {
            refused.push((9, lone_build));
        }
        if minor >= introduced(46) {
            refused.push((46, [u(46), strings([&x_drv]), u(0)].concat()));
        }
        for (op, req) in refused {
            c.send(&req).await;
            let msg = c.error().await;
            assert_eq!(msg, cairn_nix_daemon::NO_BUILDS, "op {op} in {version}");
        }
        still_in_step(&mut c).await;

        // EnsurePath and NarFromPath of an absent path: errors, in step after.
        for op in [10, 38] {
            c.send(&one(op, &absent)).await;
            let msg = c.error().await;
            assert!(msg.contains("is not valid"), "op {op} in {version}: {msg}");
        }

        // AddSignatures: a signature by the trusted key.
        let sig = sign(&key, &dep, &dep_nar);
        c.send(&[u(37), s(dep.to_absolute()), strings([&sig])].concat())
            .await;
        c.expect(&[u(LAST), u(1)].concat()).await;
        c.send(&one(26, &dep.to_absolute())).await;
        c.expect(&[u(LAST), u(1), unkeyed("", &dep_nar, &[], &[sig], "")].concat())
            .await;

        // AddToStore in the version's form: recursive (a NAR), flat (the file's
        // bytes; before 1.25 the NAR of the file), and text (from 1.25).
        let contents = format!("added in {version}\n");
        let nar = file_nar(contents.as_bytes());
        let r_hash = HashAlgo::Sha256.digest(&nar);
        let f_hash = HashAlgo::Sha1.digest(contents.as_bytes());
        let fixed = |method, hash: &NixHash, name: &str| {
            cairn_nix::store_path::make_fixed_output_path(method, hash, name, [], false)
                .unwrap()
                .to_absolute()
        };
        let recursive = fixed(
            cairn_nix::store_path::FileIngestionMethod::Recursive,
            &r_hash,
            "r",
        );
        let flat = fixed(
            cairn_nix::store_path::FileIngestionMethod::Flat,
            &f_hash,
            "f",
        );
        if minor >= 25 {
            let add = |name: &str, method: &str, refs: &[String], dump: &[u8]| {
                [
                    u(7),
                    s(name),
                    s(method),
                    strings(refs),
                    u(0),
                    framed(dump, 5),
                ]
                .concat()
            };
            c.send(&add("r", "fixed:r:sha256", &[], &nar)).await;
            c.expect(
                &[
                    u(LAST),
                    s(&recursive),
                    unkeyed("", &nar, &[], &[], &ca_text("fixed:r:", &r_hash)),
                ]
                .concat(),
            )
            .await;
            c.send(&add("f", "fixed:sha1", &[], contents.as_bytes()))
                .await;
            c.expect(
                &[
                    u(LAST),
                    s(&flat),
                    unkeyed("", &nar, &[], &[], &ca_text("fixed:", &f_hash)),
                ]
                .concat(),
            )
            .await;
            let text_hash = HashAlgo::Sha256.digest(contents.as_bytes());
            let text =
                cairn_nix::store_path::make_text_path_for_content("t", contents.as_bytes(), [&dep])
                    .unwrap();
            c.send(&add(
                "t",
                "text:sha256",
                &[dep.to_absolute()],
                contents.as_bytes(),
            ))
            .await;
            c.expect(
                &[
                    u(LAST),
                    s(text.to_absolute()),
                    unkeyed(
                        "",
                        &nar,
                        &[dep.to_absolute()],
                        &[],
                        &ca_text("text:", &text_hash),
                    ),
                ]
                .concat(),
            )
            .await;
        } else {
            c.send(&[u(7), s("r"), u(1), u(1), s("sha256"), nar.clone()].concat())
                .await;
            c.expect(&[u(LAST), s(&recursive)].concat()).await;
            c.send(&[u(7), s("f"), u(1), u(0), s("sha1"), nar.clone()].concat())
                .await;
            c.expect(&[u(LAST), s(&flat)].concat()).await;
            // Not fixed: Nix's compatibility rule makes it recursive SHA-256.
            c.send(&[u(7), s("r"), u(0), u(0), s("md5"), nar.clone()].concat())
                .await;
            c.expect(&[u(LAST), s(&recursive)].concat()).await;
        }

        // AddTextToStore (what clients before 1.25 send for text files; Nix's
        // daemon still serves it).
        let text =
            cairn_nix::store_path::make_text_path_for_content("note", contents.as_bytes(), [&dep])
                .unwrap();
        c.send(&[u(8), s("note"), s(&contents), strings([dep.to_absolute()])].concat())
            .await;
        c.expect(&[u(LAST), s(text.to_absolute())].concat()).await;

        // AddMultipleToStore (1.32+): two paths, the second referring to the
        // first, in one framed stream.
        if minor >= introduced(44) {
            let a = path("multi-a", 54);
            let b = path("multi-b", 55);
            let a_nar = file_nar(b"a");
            let b_nar = file_nar(a.to_absolute().as_bytes());
            let inner = [
                u(2),
                keyed_info(&a, "", &a_nar, &[]),
                a_nar.clone(),
                keyed_info(&b, "", &b_nar, &[a.to_absolute()]),
                b_nar.clone(),
            ]
            .concat();
            c.send(&[u(44), u(0), u(1), framed(&inner, 33)].concat())
                .await;
            c.expect(&u(LAST)).await;
            c.send(&one(6, &a.to_absolute())).await;
            c.expect(&[u(LAST), strings([b.to_absolute()])].concat())
                .await;
        }
        still_in_step(&mut c).await;
        drop(c.io);
        c.server.await.unwrap().unwrap();
    }
}
