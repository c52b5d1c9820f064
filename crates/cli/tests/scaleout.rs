//! Several `cairn daemon`s on one store: blobs in S3 (s3s-fs, real HTTP with
//! SigV4), directories, path info and pending uploads in PostgreSQL (Debian's),
//! both real servers on loopback that the test kit starts and stops. What one
//! daemon stores the other serves at once, to the real Nix on both ends;
//! concurrent uploads of one path through two daemons both succeed; a daemon
//! killed with SIGKILL mid-upload leaves the store consistent and the other
//! daemon serving. Needs Nix, curl, PostgreSQL and s3s-fs
//! (`scripts/install-test-deps.sh`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::Command;

use cairn_nix::narinfo::NarInfo;
use cairn_testkit::nix::{Nix, ok_bytes};
use common::cluster::{Setup, Store, copy_from_and_verify, copy_to, curl, described, hash_part};

/// `nix copy --to` through one daemon is served by the other at once (narinfo,
/// signed with the key both have, and NAR), copied back into a fresh store by
/// Nix with the signature checked; `cairn import` through one daemon's socket
/// and `cairn dump` through the other's give `nix-store --dump`'s bytes.
#[test]
fn what_one_daemon_stores_the_other_serves() {
    let nix = Nix::new();
    let [top, dep] = nix.build_closure("scaleout");
    let setup = Setup::new();
    let store = Store::shared();
    let (_d1, http1, sock1) = setup.daemon(&store, "d1");
    let (_d2, http2, sock2) = setup.daemon(&store, "d2");

    copy_to(&nix, &setup, &nix.path("xdg"), &http1, &[&top]);
    let theirs = nix.run(
        "nix",
        &["path-info", "--store", &http2, "--json", &top, &dep],
    );
    let ours = nix.in_store("nix", &["path-info", "--json", &top, &dep]);
    assert_eq!(described(&theirs), described(&ours));
    for p in [&top, &dep] {
        let (code, text) = curl(&[&format!("{http2}/{}.narinfo", hash_part(p))]);
        assert_eq!(code, 200, "{text}");
        let ni = NarInfo::parse(&text).unwrap();
        assert_eq!(ni.verify(std::slice::from_ref(&setup.pk)), 1, "{text}");
    }
    copy_from_and_verify(&nix, &http2, &setup.pk, &[&top, &dep]);

    // Each daemon's /metrics counts its own requests to the bucket: the
    // uploads through one, the reads of the NARs through the other.
    let s3_requests = |http: &str, op: &str| {
        let (code, text) = curl(&[&format!("{http}/metrics")]);
        assert_eq!(code, 200, "{text}");
        let line = format!("cairn_s3_requests_total{{op=\"{op}\"}} ");
        text.lines()
            .find_map(|l| l.strip_prefix(&line))
            .unwrap_or_else(|| panic!("no {line} in /metrics:\n{text}"))
            .trim()
            .parse::<u64>()
            .unwrap()
    };
    assert!(s3_requests(&http1, "PutObject") >= 1);
    assert!(s3_requests(&http2, "GetObject") >= 1);
    assert_eq!(s3_requests(&http2, "PutObject"), 0);

    let tree = nix.path("tree");
    common::make_tree(&tree);
    let imported = common::text(common::ok(common::cairn(
        &["import", "--store", &sock1, tree.to_str().unwrap()],
        None,
    )));
    let dumped = common::ok(common::cairn(
        &["dump", "--store", &sock2, imported.trim()],
        None,
    ));
    let want = ok_bytes(nix.command("nix-store").arg("--dump").arg(&tree));
    assert!(
        dumped == want,
        "cairn dump through the other daemon differs"
    );
}

/// Two `nix copy --to` of the same closure at once, one through each daemon:
/// both succeed, and the store holds each path once.
#[test]
fn concurrent_uploads_of_one_path_through_two_daemons() {
    let nix = Nix::new();
    let [top, dep] = nix.build_closure("concurrent");
    let setup = Setup::new();
    let store = Store::shared();
    let (_d1, http1, _) = setup.daemon(&store, "d1");
    let (_d2, http2, _) = setup.daemon(&store, "d2");
    std::thread::scope(|s| {
        for (i, http) in [&http1, &http2].into_iter().enumerate() {
            let (nix, setup, top) = (&nix, &setup, &top);
            s.spawn(move || {
                // Nix's own cache is a SQLite file: one per client.
                let xdg = nix.path(&format!("xdg-{i}"));
                copy_to(nix, setup, &xdg, http, &[top]);
            });
        }
    });
    assert_eq!(store.sql("SELECT count(*) FROM path_info"), "2");
    for http in [&http1, &http2] {
        copy_from_and_verify(&nix, http, &setup.pk, &[&top, &dep]);
    }
}

/// A daemon killed with SIGKILL while a large NAR streams in: the other daemon
/// keeps serving what was stored, the killed upload registered nothing, and
/// the same upload through the other daemon then succeeds; restarted, the
/// killed daemon serves it too.
#[test]
fn a_daemon_killed_mid_upload_leaves_the_store_consistent() {
    let nix = Nix::new();
    let [top, dep] = nix.build_closure("killed");
    let setup = Setup::new();
    let store = Store::shared();
    let (mut d1, http1, _) = setup.daemon(&store, "d1");
    let (_d2, http2, sock2) = setup.daemon(&store, "d2");
    copy_to(&nix, &setup, &nix.path("xdg"), &http1, &[&top]);

    // A 16 MiB file of pseudo-random bytes, added to the Nix store, sent as its
    // NAR at 4 MiB/s through d1, which is killed after a second and a half.
    let big = nix.path("big");
    std::fs::create_dir(&big).unwrap();
    std::fs::write(
        big.join("data"),
        cairn_testkit::data::pseudo_random(16 << 20, 17),
    )
    .unwrap();
    let big_path = nix.in_store("nix-store", &["--add", big.to_str().unwrap()]);
    let nar = nix.path("big.nar");
    std::fs::write(
        &nar,
        ok_bytes(nix.command("nix-store").arg("--dump").arg(&big)),
    )
    .unwrap();
    let sha = cairn_nix::hash::HashAlgo::Sha256
        .digest(std::fs::read(&nar).unwrap())
        .to_nix32();
    let put = |http: &str, rate: Option<&str>| {
        let mut cmd = Command::new("curl");
        cmd.args(["-sS", "-o", "/dev/null", "-w", "%{http_code}", "-X", "PUT"])
            .args(["-H", "Authorization: Bearer upl0ad", "--data-binary"])
            .arg(format!("@{}", nar.display()))
            .arg(format!("{http}/nar/{sha}.nar"));
        if let Some(rate) = rate {
            cmd.args(["--limit-rate", rate]);
        }
        cmd
    };
    let mut upload = put(&http1, Some("4M"))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let mut child = d1.0.take().unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
    let status = upload.wait().unwrap();
    assert!(!status.success(), "the upload to the killed daemon failed");

    // d2 serves on, and nothing of the killed upload is registered.
    copy_from_and_verify(&nix, &http2, &setup.pk, &[&top, &dep]);
    let (code, _) = curl(&[&format!("{http2}/{}.narinfo", hash_part(&big_path))]);
    assert_eq!(code, 404);
    let verify = common::cairn(&["verify", "--store", &sock2], None);
    assert!(
        verify.status.success(),
        "{}",
        String::from_utf8_lossy(&verify.stderr)
    );

    // The same path through d2 now, then the restarted d1 serves it too.
    copy_to(&nix, &setup, &nix.path("xdg"), &http2, &[&big_path]);
    let (_d1, http1, _) = setup.daemon(&store, "d1");
    copy_from_and_verify(&nix, &http1, &setup.pk, &[&big_path, &top]);
}
