//! `cairn daemon --tls-cert/--tls-key`: the binary cache over HTTPS to the real Nix
//! 2.8 (`nix copy --to https://`, substitution) and a rustls client, gRPC over TLS
//! to cairn's own `grpc+https://` client (trusted with --ca-file; refused with
//! the wrong CA or a host the certificate does not name), the certificate swapped
//! on SIGHUP while an open connection keeps working, idle handshakes that stall
//! no one, and the startup errors. Certificates are made here with rcgen.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::ca::Ca;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{cairn_at, s, start_daemon_with, stop_daemon};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};

/// Writes `text` to `dir/name`; returns the path as a string.
fn put(dir: &Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    s(&p).to_owned()
}

/// The binary cache's `host:port` in the daemon's first line (`https://ADDR`).
fn https_addr(line: &str) -> String {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix("https://"))
        .unwrap_or_else(|| panic!("no https:// binary cache address in {line:?}"))
        .trim_end_matches(',')
        .to_string()
}

/// A rustls client configuration trusting the CAs `cas` (PEM) only.
fn client_config(cas: &[&str]) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for pem in cas {
        roots
            .add(CertificateDer::from_pem_slice(pem.as_bytes()).unwrap())
            .unwrap();
    }
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(config)
}

type Tls = rustls::StreamOwned<rustls::ClientConnection, TcpStream>;

/// A finished TLS handshake with `addr` as `localhost`.
fn tls_connect(addr: &str, config: &Arc<rustls::ClientConfig>) -> Tls {
    let name = ServerName::try_from("localhost").unwrap();
    let conn = rustls::ClientConnection::new(config.clone(), name).unwrap();
    let sock = TcpStream::connect(addr).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut tls = rustls::StreamOwned::new(conn, sock);
    while tls.conn.is_handshaking() {
        tls.conn.complete_io(&mut tls.sock).unwrap();
    }
    tls
}

/// The certificate the server showed on `tls`, as base64 of its DER.
fn server_cert(tls: &Tls) -> String {
    base64_of(&tls.conn.peer_certificates().unwrap()[0])
}

/// The DER in `pem`, as `server_cert` gives it.
fn der_of_pem(pem: &str) -> String {
    base64_of(&CertificateDer::from_pem_slice(pem.as_bytes()).unwrap())
}

fn base64_of(der: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(der)
}

/// `GET path` on the keep-alive connection `tls`: status and body.
fn get(tls: &mut Tls, path: &str) -> (u16, String) {
    write!(tls, "GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n").unwrap();
    tls.flush().unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        tls.read_exact(&mut byte).unwrap();
        head.push(byte[0]);
    }
    let head = String::from_utf8(head).unwrap();
    let status = head[9..12].parse().unwrap();
    let len: usize = head
        .lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse().unwrap())
        })
        .unwrap_or_else(|| panic!("no content-length in {head:?}"));
    let mut body = vec![0; len];
    tls.read_exact(&mut body).unwrap();
    (status, String::from_utf8(body).unwrap())
}

/// The real Nix copies a path to the cache over HTTPS, trusting the test CA with
/// `NIX_SSL_CERT_FILE`, and substitutes it from there into another store; without
/// the CA it refuses the cache. cairn's own client reads the path back over
/// `grpc+https://`.
#[test]
fn nix_copies_and_substitutes_over_https() {
    let t = tempfile::tempdir().unwrap();
    let ca = Ca::new("cairn test CA");
    let (cert, key) = ca.issue(&["localhost", "127.0.0.1"]);
    let ca_file = put(t.path(), "ca.pem", &ca.pem);
    let cert_file = put(t.path(), "cert.pem", &cert);
    let key_file = put(t.path(), "key.pem", &key);
    let (daemon, grpc, line) = start_daemon_with(
        &t.path().join("data"),
        &[
            "--tls-cert",
            &cert_file,
            "--tls-key",
            &key_file,
            "--allow-anonymous-uploads",
        ],
    );
    assert!(grpc.starts_with("grpc+https://127.0.0.1:"), "{line}");
    let cache = format!("https://{}", https_addr(&line));

    let nix = cairn_testkit::nix::Nix::new();
    let src = nix.path("src");
    std::fs::create_dir_all(src.join("d")).unwrap();
    std::fs::write(src.join("d/f"), "over tls\n").unwrap();
    let path = nix.in_store("nix-store", &["--add", s(&src)]);
    // NIX_SSL_CERT_FILE: Nix 2.8's downloads do not take `--option
    // ssl-cert-file` (they fail verification with it), the variable they do.
    let with_ca = |mut cmd: Command| {
        cmd.env("NIX_SSL_CERT_FILE", &ca_file);
        cmd
    };
    cairn_testkit::nix::ok(
        with_ca(nix.command("nix"))
            .arg("copy")
            .arg("--store")
            .arg(nix.store())
            .args(["--to", &cache, &path]),
    );

    // Substituted into a fresh store (unsigned: the test trusts the cache).
    let other = nix.path("other");
    cairn_testkit::nix::ok(
        with_ca(nix.command("nix-store"))
            .args(["--option", "substituters", &cache])
            .args(["--option", "require-sigs", "false"])
            .arg("--store")
            .arg(&other)
            .args(["-r", &path]),
    );
    let f = other.join(path.trim_start_matches('/')).join("d/f");
    assert_eq!(std::fs::read_to_string(&f).unwrap(), "over tls\n");

    // Without the CA, Nix does not trust the cache.
    let out = cairn_testkit::nix::output(
        nix.command("nix")
            .env_remove("NIX_SSL_CERT_FILE")
            .args(["--option", "download-attempts", "1"])
            .args(["path-info", "--store", &cache, &path]),
    );
    assert!(!out.status.success(), "nix trusted an unknown CA");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("SSL") || err.contains("certificate"),
        "unexpected error: {err}"
    );

    // cairn over grpc+https (by 127.0.0.1, which the certificate names).
    let out = cairn_at(
        &t.path().join("elsewhere"),
        &["path-info", "--store", &grpc, "--ca-file", &ca_file, &path],
        None,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains(&path));
    stop_daemon(daemon);
}

/// cairn's `grpc+https://` client: trusted with --ca-file (or CAIRN_CA_FILE),
/// writes from loopback accepted as over plain TCP (the access check still sees
/// the peer); refused, saying what to do, with another CA, without the CA, and by
/// an address the certificate does not name. A client that connects and sends
/// nothing stalls no one.
#[test]
fn grpc_over_tls_checks_the_certificate() {
    let t = tempfile::tempdir().unwrap();
    let ca = Ca::new("cairn test CA");
    let (cert, key) = ca.issue(&["localhost"]);
    let ca_file = put(t.path(), "ca.pem", &ca.pem);
    let other_ca = put(t.path(), "other-ca.pem", &Ca::new("another CA").pem);
    let cert_file = put(t.path(), "cert.pem", &cert);
    let key_file = put(t.path(), "key.pem", &key);
    let (daemon, grpc, line) = start_daemon_with(
        &t.path().join("data"),
        &["--tls-cert", &cert_file, "--tls-key", &key_file],
    );
    let port = grpc.rsplit_once(':').unwrap().1.to_owned();
    let by_name = format!("grpc+https://localhost:{port}");
    let by_ip = format!("grpc+https://127.0.0.1:{port}");
    assert_eq!(grpc, by_ip, "{line}");

    // Idle clients on both listeners, holding their handshakes open.
    let _idle_grpc = TcpStream::connect(format!("127.0.0.1:{port}")).unwrap();
    let _idle_http = TcpStream::connect(https_addr(&line)).unwrap();

    let src = t.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("f"), "hello tls\n").unwrap();
    let elsewhere = t.path().join("elsewhere");
    let start = Instant::now();
    let out = cairn_at(
        &elsewhere,
        &[
            "import",
            "--store",
            &by_name,
            "--ca-file",
            &ca_file,
            s(&src),
        ],
        None,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Well under the 10 s handshake limit that would free a blocked accept loop.
    assert!(
        start.elapsed() < Duration::from_secs(8),
        "{:?}",
        start.elapsed()
    );
    let path = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    assert!(path.starts_with("/nix/store/"), "{path}");

    // The CA from the environment, as CAIRN_TOKEN_FILE is.
    let out = common::run(
        common::cairn_at_cmd(
            &elsewhere,
            &["cat", "--store", &by_name, &format!("{path}/f")],
        )
        .env("CAIRN_CA_FILE", &ca_file),
        None,
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "hello tls\n",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // And the HTTPS cache answers while the idle ones still wait (well within
    // the 30 s header timeout that bounds the idle one's handshake).
    let start = Instant::now();
    let mut https = tls_connect(&https_addr(&line), &client_config(&[&ca.pem]));
    assert_eq!(get(&mut https, "/nix-cache-info").0, 200);
    assert!(
        start.elapsed() < Duration::from_secs(8),
        "{:?}",
        start.elapsed()
    );

    let fails = |args: &[&str], env_ca: Option<&str>| {
        let mut cmd = common::cairn_at_cmd(&elsewhere, args);
        cmd.env_remove("CAIRN_CA_FILE");
        if let Some(ca) = env_ca {
            cmd.env("CAIRN_CA_FILE", ca);
        }
        let out = common::run(&mut cmd, None);
        assert!(!out.status.success(), "{args:?} succeeded");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let cat = |store: &str| {
        [
            "cat".to_owned(),
            "--store".to_owned(),
            store.to_owned(),
            format!("{path}/f"),
        ]
    };
    let args = cat(&by_name);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    for (what, ca) in [("another CA", Some(other_ca.as_str())), ("no CA", None)] {
        let err = fails(&args, ca);
        assert!(
            err.contains("UnknownIssuer") && err.contains("--ca-file or CAIRN_CA_FILE"),
            "{what}: {err}"
        );
    }
    let args = cat(&by_ip);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let err = fails(&args, Some(&ca_file));
    assert!(
        err.contains("not valid for name") && err.contains("127.0.0.1"),
        "{err}"
    );
    assert!(
        err.contains("connect by a name or IP address it was issued for"),
        "{err}"
    );
    stop_daemon(daemon);
}

/// SIGHUP re-reads the certificate files: new connections get the new
/// certificate (of another CA), one opened before keeps working with the old; a
/// bad new certificate is refused and the current one kept.
#[test]
fn sighup_swaps_the_certificate_and_keeps_connections() {
    let t = tempfile::tempdir().unwrap();
    let (ca1, ca2) = (Ca::new("first CA"), Ca::new("second CA"));
    let (cert1, key1) = ca1.issue(&["localhost"]);
    let (cert2, key2) = ca2.issue(&["localhost"]);
    let cert_file = put(t.path(), "cert.pem", &cert1);
    let key_file = put(t.path(), "key.pem", &key1);
    let (mut daemon, _, line) = start_daemon_with(
        &t.path().join("data"),
        &["--tls-cert", &cert_file, "--tls-key", &key_file],
    );
    let addr = https_addr(&line);
    let both = client_config(&[&ca1.pem, &ca2.pem]);
    let mut before = tls_connect(&addr, &both);
    assert_eq!(server_cert(&before), der_of_pem(&cert1));
    assert_eq!(get(&mut before, "/nix-cache-info").0, 200);

    let pid = daemon.0.as_ref().unwrap().id().to_string();
    let hup = || {
        assert!(
            Command::new("kill")
                .args(["-HUP", &pid])
                .status()
                .unwrap()
                .success()
        )
    };
    // The key first: a handshake between the two writes would otherwise pair
    // them wrongly, which the reload refuses (and the old pair stays).
    put(t.path(), "key.pem", &key2);
    put(t.path(), "cert.pem", &cert2);
    hup();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let conn = tls_connect(&addr, &both);
        if server_cert(&conn) == der_of_pem(&cert2) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "still the old certificate after SIGHUP"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // Only the second CA is needed now.
    let mut after = tls_connect(&addr, &client_config(&[&ca2.pem]));
    assert_eq!(get(&mut after, "/nix-cache-info").0, 200);
    // The connection from before goes on, with its certificate.
    let (status, body) = get(&mut before, "/nix-cache-info");
    assert_eq!(status, 200);
    assert!(body.contains("StoreDir: /nix/store"), "{body}");
    assert_eq!(server_cert(&before), der_of_pem(&cert1));

    // A broken certificate file: refused on SIGHUP, the daemon keeps serving.
    put(t.path(), "cert.pem", "not a certificate\n");
    hup();
    std::thread::sleep(Duration::from_millis(500));
    let mut again = tls_connect(&addr, &both);
    assert_eq!(server_cert(&again), der_of_pem(&cert2));
    assert_eq!(get(&mut again, "/nix-cache-info").0, 200);
    assert!(daemon.0.as_mut().unwrap().try_wait().unwrap().is_none());
    stop_daemon(daemon);
}

/// Bad TLS flags stop the daemon at startup, naming the flag or file.
#[test]
fn tls_startup_errors() {
    let t = tempfile::tempdir().unwrap();
    let ca = Ca::new("cairn test CA");
    let (cert, key) = ca.issue(&["localhost"]);
    let (_, other_key) = ca.issue(&["localhost"]);
    let cert_file = put(t.path(), "cert.pem", &cert);
    let key_file = put(t.path(), "key.pem", &key);
    let other_key_file = put(t.path(), "other-key.pem", &other_key);
    let garbage = put(t.path(), "garbage.pem", "hello\n");
    let data = t.path().join("data");
    let daemon = |extra: &[&str]| {
        let mut args = vec![
            "daemon",
            "--listen",
            "127.0.0.1:0",
            "--http-listen",
            "127.0.0.1:0",
            "--no-socket",
        ];
        args.extend(extra);
        let out = cairn_at(&data, &args, None);
        assert!(!out.status.success(), "{extra:?} started");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let err = daemon(&["--tls-cert", &cert_file]);
    assert!(err.contains("--tls-key"), "{err}");
    let err = daemon(&["--tls-key", &key_file]);
    assert!(err.contains("--tls-cert"), "{err}");
    let err = daemon(&["--tls-cert", &garbage, "--tls-key", &key_file]);
    assert!(
        err.contains(&garbage) && err.contains("no certificate"),
        "{err}"
    );
    let err = daemon(&["--tls-cert", &cert_file, "--tls-key", &garbage]);
    assert!(
        err.contains(&garbage) && err.contains("no private key"),
        "{err}"
    );
    let err = daemon(&["--tls-cert", &cert_file, "--tls-key", &other_key_file]);
    assert!(
        err.contains(&other_key_file) && err.contains("does not belong to the certificate"),
        "{err}"
    );
    let missing = s(&t.path().join("missing.pem")).to_owned();
    let err = daemon(&["--tls-cert", &missing, "--tls-key", &key_file]);
    assert!(
        err.contains(&missing) && err.contains("cannot read"),
        "{err}"
    );
}
