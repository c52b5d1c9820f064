//! A daemon on S3 + PostgreSQL through outages of either: PostgreSQL stopped
//! while idle and restarted while busy, the S3 server stopped in the middle of
//! an upload. Each gives the client a clear error, nothing acknowledged is lost,
//! and the daemon recovers without a restart of its own. One test in this file:
//! it stops the servers of its own process.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use cairn_testkit::nix::{Nix, ok_bytes};
use common::cluster::{Setup, Store, copy_from_and_verify, copy_to, curl, hash_part};

/// Asks `url` until it answers 200 or `limit` passes; the status codes seen.
fn until_ok(url: &str, limit: Duration) -> Vec<u16> {
    let start = Instant::now();
    let mut seen = Vec::new();
    loop {
        let (code, _) = curl(&[url]);
        seen.push(code);
        if code == 200 || start.elapsed() > limit {
            return seen;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn outages_give_clear_errors_and_the_daemon_recovers() {
    let pg = cairn_testkit::postgres::server();
    let s3 = cairn_testkit::s3::server();
    let nix = Nix::new();
    let [top, dep] = nix.build_closure("outage");
    let setup = Setup::new();
    let store = Store::on(pg.database(), s3.bucket());
    let (_daemon, http, sock) = setup.daemon(&store, "d");
    copy_to(&nix, &setup, &nix.path("xdg"), &http, &[&top]);
    let narinfo = format!("{http}/{}.narinfo", hash_part(&top));

    // PostgreSQL stopped while the daemon is idle: a server error naming the
    // database, for HTTP and for a store command through the socket.
    pg.stop();
    let (code, body) = curl(&[&narinfo]);
    assert!((500..600).contains(&code), "{code}: {body}");
    assert!(body.contains("PostgreSQL"), "{body}");
    let out = common::cairn(&["path-info", "--store", &sock, &top], None);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("PostgreSQL"), "{stderr}");
    pg.start();
    let seen = until_ok(&narinfo, Duration::from_secs(15));
    assert_eq!(seen.last(), Some(&200), "{seen:?}");

    // Restarted while four clients keep asking: each gets answers again once it
    // is back, and what was stored is all there.
    let stop = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|s| {
        let clients: Vec<_> = (0..4)
            .map(|_| {
                s.spawn(|| {
                    let mut codes = Vec::new();
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        codes.push(curl(&[&narinfo]).0);
                    }
                    codes
                })
            })
            .collect();
        std::thread::sleep(Duration::from_millis(500));
        pg.stop();
        std::thread::sleep(Duration::from_millis(500));
        pg.start();
        let seen = until_ok(&narinfo, Duration::from_secs(15));
        assert_eq!(seen.last(), Some(&200), "{seen:?}");
        std::thread::sleep(Duration::from_millis(500));
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for c in clients {
            let codes = c.join().unwrap();
            assert!(
                codes.iter().all(|c| *c == 200 || (500..600).contains(c)),
                "{codes:?}"
            );
            assert_eq!(codes.last(), Some(&200), "{codes:?}");
        }
    });
    copy_from_and_verify(&nix, &http, &setup.pk, &[&top, &dep]);

    // The S3 server stopped while a NAR streams in: the upload fails with a
    // server error, and after the server is back the same upload succeeds.
    let big = nix.path("big");
    std::fs::create_dir(&big).unwrap();
    std::fs::write(
        big.join("data"),
        cairn_testkit::data::pseudo_random(32 << 20, 5),
    )
    .unwrap();
    let big_path = nix.in_store("nix-store", &["--add", big.to_str().unwrap()]);
    let nar = nix.path("big.nar");
    let nar_bytes = ok_bytes(nix.command("nix-store").arg("--dump").arg(&big));
    let sha = cairn_nix::hash::HashAlgo::Sha256
        .digest(&nar_bytes)
        .to_nix32();
    std::fs::write(&nar, nar_bytes).unwrap();
    let upload = Command::new("curl")
        .args(["-sS", "-o", "-", "-w", "\n%{http_code}", "-X", "PUT"])
        .args(["-H", "Authorization: Bearer upl0ad", "--limit-rate", "8M"])
        .arg("--data-binary")
        .arg(format!("@{}", nar.display()))
        .arg(format!("{http}/nar/{sha}.nar"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    s3.stop();
    let out = upload.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let code = text.rsplit('\n').next().unwrap_or("");
    assert!(
        code.starts_with('5'),
        "the upload failed with a server error: {text}"
    );
    s3.start();
    copy_to(&nix, &setup, &nix.path("xdg"), &http, &[&big_path]);
    copy_from_and_verify(&nix, &http, &setup.pk, &[&big_path, &top]);
}
