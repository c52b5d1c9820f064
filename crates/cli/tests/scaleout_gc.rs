//! Garbage collection of a store on S3 (s3s-fs) and PostgreSQL, both real
//! servers from the test kit: `cairn delete`, `cairn pin`, `cairn gc` with
//! the store's URLs; two daemons collecting with `--gc-interval` (one at a
//! time) while uploads go through one of them; `cairn gc` killed with SIGKILL
//! at random moments loses nothing live. Expected bytes come from
//! `nix-store --dump`. Needs PostgreSQL and s3s-fs (`scripts/install-test-deps.sh`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::cluster::Store;
use common::{Daemon, cairn, data, ok, text, write};

/// `cairn ARGS` on the store (its URLs as flags).
fn on(store: &Store, args: &[&str]) -> std::process::Output {
    let flags = store.flags();
    let mut all: Vec<&str> = args.to_vec();
    all.extend(flags.iter().map(String::as_str));
    cairn(&all, None)
}

/// A tree of a few files: `shared` files common to every tree of a test,
/// and `own` bytes of its own (several chunks when large).
fn tree(root: &Path, shared: usize, own: &[u8]) {
    std::fs::create_dir_all(root).unwrap();
    for i in 0..shared {
        write(
            &root.join(format!("shared-{i}")),
            &data(3000 + i * 5000, i as u8),
            0o644,
        );
    }
    write(&root.join("own"), own, 0o644);
}

fn nix_dump(path: &Path) -> Vec<u8> {
    common::nix("nix-store", &["--dump", path.to_str().unwrap()])
}

/// Imports `dir` into the store: its store path.
fn import(store: &Store, dir: &Path) -> String {
    text(ok(on(store, &["import", dir.to_str().unwrap()])))
        .trim()
        .to_owned()
}

fn pack_files(store: &Store) -> usize {
    let name = store
        .blobs
        .strip_prefix("s3://")
        .and_then(|r| r.split('?').next())
        .unwrap();
    let dir = cairn_testkit::s3::server().root().join(name).join("packs");
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter(|e| {
                !e.as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .contains(".s3s")
            })
            .count()
        })
        .unwrap_or(0)
}

#[test]
fn delete_pin_and_gc_on_s3_and_postgres() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::shared();
    let (ta, tb) = (tmp.path().join("a"), tmp.path().join("b"));
    // Nothing in common with b: its packs hold only its own content.
    tree(&ta, 0, &data(700_000, 41));
    tree(&tb, 3, &data(500, 42));
    let a = import(&store, &ta);
    let b = import(&store, &tb);
    let packs = pack_files(&store);
    assert_eq!(
        store.sql("SELECT count(*) FROM blob_packs"),
        packs.to_string()
    );

    let out = text(ok(on(&store, &["delete", "--grace", "0s", &a])));
    assert_eq!(out.trim(), a);
    assert_eq!(store.sql("SELECT count(*) FROM path_info"), "1");
    assert!(pack_files(&store) < packs, "a's packs went");
    assert_eq!(
        store.sql("SELECT count(*) FROM blob_packs"),
        pack_files(&store).to_string()
    );
    assert_eq!(ok(on(&store, &["dump", &b])), nix_dump(&tb));
    ok(on(&store, &["verify"]));

    // Pinned: --max-age keeps it; unpinned and not read since: gone.
    ok(on(&store, &["pin", &b]));
    assert_eq!(text(ok(on(&store, &["pins"]))).trim(), b);
    std::thread::sleep(Duration::from_millis(1100));
    let out = text(ok(on(&store, &["gc", "--max-age", "0s", "--grace", "0s"])));
    assert!(out.trim().is_empty(), "{out}");
    ok(on(&store, &["unpin", &b]));
    let dry = text(ok(on(
        &store,
        &["gc", "--dry-run", "--max-age", "0s", "--grace", "0s"],
    )));
    assert_eq!(dry.trim(), b);
    assert_eq!(store.sql("SELECT count(*) FROM path_info"), "1");
    let out = text(ok(on(&store, &["gc", "--max-age", "0s", "--grace", "0s"])));
    assert_eq!(out.trim(), b);
    for table in [
        "path_info",
        "directories",
        "blob_chunks",
        "blob_lists",
        "blob_packs",
    ] {
        assert_eq!(
            store.sql(&format!("SELECT count(*) FROM {table}")),
            "0",
            "{table}"
        );
    }
    assert_eq!(pack_files(&store), 0, "the bucket is empty");
}

/// A daemon whose stderr (its logs) is collected.
struct Logged {
    _daemon: Daemon,
    log: Arc<Mutex<String>>,
    socket: String,
}

fn daemon(store: &Store, dir: &Path, extra: &[&str]) -> Logged {
    let mut flags = store.flags();
    flags.extend(extra.iter().map(|s| s.to_string()));
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let mut child = common::daemon_command(dir, &flags)
        .env("RUST_LOG", "info")
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let log = Arc::new(Mutex::new(String::new()));
    let mut line = String::new();
    loop {
        line.clear();
        assert!(stderr.read_line(&mut line).unwrap() > 0, "daemon died");
        log.lock().unwrap().push_str(&line);
        if line.contains("serving") {
            break;
        }
    }
    let l2 = log.clone();
    std::thread::spawn(move || {
        for line in stderr.lines() {
            let Ok(line) = line else { return };
            l2.lock().unwrap().push_str(&line);
            l2.lock().unwrap().push('\n');
        }
    });
    Logged {
        _daemon: Daemon(Some(child)),
        log,
        socket: format!("grpc+unix://{}", dir.join("cairn.sock").display()),
    }
}

#[test]
fn two_daemons_collect_in_turn_while_uploads_go_through_one() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::shared();
    let gc = ["--gc-interval", "1s", "--grace", "3s"];
    let d1 = daemon(&store, &tmp.path().join("d1"), &gc);
    let d2 = daemon(&store, &tmp.path().join("d2"), &gc);
    // Garbage: a path removed by hand, whose shared files the uploads below
    // store again (deduplicated against the old rows while collections run).
    let g = tmp.path().join("g");
    tree(&g, 6, &data(900_000, 7));
    let gp = text(ok(cairn(
        &["import", "--store", &d1.socket, g.to_str().unwrap()],
        None,
    )));
    store.sql(&format!(
        "DELETE FROM path_info WHERE digest = decode('{}', 'hex')",
        hex_digest(gp.trim())
    ));
    let start = Instant::now();
    let mut imported: Vec<(PathBuf, String)> = Vec::new();
    let mut i = 0usize;
    while start.elapsed() < Duration::from_secs(9) && i < 60 {
        let t = tmp.path().join(format!("t{i}"));
        tree(&t, 6, &data(40_000 + i, 100 + (i % 100) as u8));
        let p = text(ok(cairn(
            &["import", "--store", &d2.socket, t.to_str().unwrap()],
            None,
        )));
        imported.push((t, p.trim().to_owned()));
        i += 1;
    }
    assert!(imported.len() >= 3, "{} imports", imported.len());
    // The uploads are whole, read through the other daemon.
    for (t, p) in &imported {
        assert_eq!(
            ok(cairn(&["dump", "--store", &d1.socket, p], None)),
            nix_dump(t),
            "{p}"
        );
    }
    ok(cairn(&["verify", "--store", &d1.socket], None));
    let logs = [
        d1.log.lock().unwrap().clone(),
        d2.log.lock().unwrap().clone(),
    ];
    let done: usize = logs
        .iter()
        .map(|l| l.matches("garbage collection done").count())
        .sum();
    let skipped: usize = logs
        .iter()
        .map(|l| l.matches("skipped: another daemon is collecting").count())
        .sum();
    eprintln!(
        "{done} collections, {skipped} rounds skipped, {} imports",
        imported.len()
    );
    assert!(done >= 4, "collections ran: {logs:?}");
    // Both daemons collect, in turn.
    assert!(
        logs.iter().all(|l| l.contains("garbage collection done")),
        "{logs:?}"
    );
    // The garbage's own file went (its large blob's chunk list).
    assert_eq!(
        store.sql("SELECT count(*) FROM blob_lists"),
        "0",
        "{logs:?}"
    );
    // Nothing unreachable is left once the grace period is over.
    std::thread::sleep(Duration::from_secs(4));
    let dry = on(&store, &["gc", "--dry-run", "--grace", "3s"]);
    let err = String::from_utf8_lossy(&dry.stderr).to_string();
    if dry.status.success() {
        assert!(err.contains("would remove 0 paths"), "{err}");
        assert!(err.contains(" 0 directories, 0 blobs"), "{err}");
    } else {
        // A daemon was collecting at that moment.
        assert!(err.contains("another process is collecting"), "{err}");
    }
}

/// The 20-byte digest of a store path's hash part, in hex (for SQL).
fn hex_digest(path: &str) -> String {
    let name = path.strip_prefix("/nix/store/").unwrap();
    let digest = cairn_nix::nixbase32::decode(&name.as_bytes()[..32]).unwrap();
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn gc_killed_at_random_moments_loses_nothing_live() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::shared();
    let live = tmp.path().join("live");
    tree(&live, 4, &data(600_000, 9));
    let lp = import(&store, &live);
    let mut seed = 0x5eed_u64;
    let flags = store.flags();
    for round in 0..6u8 {
        // Garbage sharing files with the live path, and some of its own.
        let g = tmp.path().join(format!("g{round}"));
        tree(&g, 5, &data(300_000 + round as usize, 50 + round));
        let gp = import(&store, &g);
        store.sql(&format!(
            "DELETE FROM path_info WHERE digest = decode('{}', 'hex')",
            hex_digest(&gp)
        ));
        let mut args = vec!["gc", "--grace", "0s"];
        args.extend(flags.iter().map(String::as_str));
        let (_child, delay, _status) =
            common::run_and_kill(&tmp.path().join("data"), &args, &mut seed, 400);
        eprintln!("round {round}: killed after {delay} ms");
        assert_eq!(
            ok(on(&store, &["dump", &lp])),
            nix_dump(&live),
            "round {round}"
        );
    }
    ok(on(&store, &["gc", "--grace", "0s"]));
    ok(on(&store, &["verify"]));
    assert_eq!(ok(on(&store, &["dump", &lp])), nix_dump(&live));
    assert_eq!(store.sql("SELECT count(*) FROM path_info"), "1");
    // Objects a killed collection left without rows went too.
    assert_eq!(
        store.sql("SELECT count(*) FROM blob_packs"),
        pack_files(&store).to_string()
    );
}
