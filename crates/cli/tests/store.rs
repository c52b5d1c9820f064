//! The store commands against the real Nix, run at test time on generated trees:
//! `cairn import` vs `nix-store --add` (into a chroot store), `cairn dump` vs
//! `nix-store --dump`, `cairn export` then `nix-hash`, `cairn add-nar`,
//! `cairn path-info --json` vs `nix path-info --json`, `ls`/`cat`, `verify` on a
//! corrupted data directory, the commands through a running daemon's socket, and a
//! crash test (kill -9 during imports, then verify).
//!
//! These tests need Nix (`nix-store`, `nix-hash`, `nix`; Debian's `nix-bin`, which
//! `./test.sh` installs) and fail when it is missing.
#![allow(clippy::unwrap_used)]

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

mod common;
use common::*;

/// Adds a multi-MiB file (several chunks, streamed) to `make_tree`'s tree.
fn make_full_tree(root: &Path) {
    make_tree(root);
    let mut big = data(5 << 20, 3);
    big[12345] = 0; // not periodic at the start
    write(&root.join("big"), &big, 0o644);
}

/// Sub-paths of `make_full_tree`'s tree to import on their own (one of each kind
/// of root node), with the whole tree first.
const ROOTS: &[&str] = &[
    "",
    "empty-file",
    "empty-dir",
    "exec-755",
    "group-x-only",
    "sizes/f9",
    "big",
    "links/relative",
    "links/dangling",
    "links/long-4095",
    "names",
    "deep",
];

#[test]
fn import_prints_the_paths_nix_store_add_prints() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("tree");
    make_full_tree(&root);
    let chroot = tmp.path().join("nix");
    let data = tmp.path().join("data");
    let paths: Vec<PathBuf> = ROOTS.iter().map(|r| root.join(r)).collect();
    let mut args = vec!["--store", s(&chroot), "--add"];
    args.extend(paths.iter().map(|p| s(p)));
    let theirs = text(nix("nix-store", &args));
    let mut args = vec!["import"];
    args.extend(paths.iter().map(|p| s(p)));
    let ours = text(ok(cairn_at(&data, &args, None)));
    assert_eq!(ours, theirs);
    assert_eq!(ours.lines().count(), ROOTS.len());

    // Again: the same paths, and nothing new stored. Every blob, chunk and
    // directory is appended to a pack, so the packs must not grow. (The redb
    // files' sizes are not compared: redb records its allocator state at every
    // clean close, so they change without any new entry.)
    let packs = data.join("packs");
    let size = dir_size(&packs);
    let again = text(ok(cairn_at(&data, &args, None)));
    assert_eq!(again, theirs);
    assert_eq!(dir_size(&packs), size, "a second import stored something");
}

#[test]
fn import_with_name_and_relative_paths() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("tree");
    fs::create_dir(&root).unwrap();
    fs::write(root.join("x"), b"x").unwrap();
    let chroot = tmp.path().join("nix");
    let data = tmp.path().join("data");
    // `nix-store --add` names a path by the argument's last component, as given
    // (`tree/.` is named ".").
    for arg in [
        format!("{}/", s(&root)),
        format!("{}/../tree", s(&root)),
        format!("{}/./", s(&root)),
    ] {
        let theirs = text(nix("nix-store", &["--store", s(&chroot), "--add", &arg]));
        let ours = text(ok(cairn_at(&data, &["import", &arg], None)));
        assert_eq!(ours, theirs, "{arg}");
    }
    // --name: the path `nix-store --add` gives a tree of that name.
    let named = tmp.path().join("other-name");
    fs::rename(&root, &named).unwrap();
    let theirs = text(nix(
        "nix-store",
        &["--store", s(&chroot), "--add", s(&named)],
    ));
    let ours = text(ok(cairn_at(
        &data,
        &["import", "--name", "other-name", s(&named)],
        None,
    )));
    assert_eq!(ours, theirs);
    // A name Nix refuses is refused before anything is read.
    let out = cairn_at(&data, &["import", "--name", "bad name", s(&named)], None);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("bad name"));
}

#[test]
fn import_refuses_a_fifo_naming_it() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("tree");
    fs::create_dir(&root).unwrap();
    fs::write(root.join("a"), b"a").unwrap();
    let fifo = root.join("pipe");
    assert!(
        Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap()
            .success()
    );
    let out = cairn_at(&tmp.path().join("data"), &["import", s(&root)], None);
    assert!(!out.status.success());
    assert!(out.stdout.is_empty());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(s(&fifo)) && err.contains("FIFO"), "{err}");
}

/// Imports `make_full_tree` and each of `ROOTS` into a fresh data directory and
/// Nix's chroot store; returns (tmp, tree root, data dir, chroot, store paths).
fn imported_tree() -> (tempfile::TempDir, PathBuf, PathBuf, PathBuf, Vec<String>) {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("tree");
    make_full_tree(&root);
    let chroot = tmp.path().join("nix");
    let data = tmp.path().join("data");
    let paths: Vec<PathBuf> = ROOTS.iter().map(|r| root.join(r)).collect();
    let mut args = vec!["--store", s(&chroot), "--add"];
    args.extend(paths.iter().map(|p| s(p)));
    let theirs = text(nix("nix-store", &args));
    let mut args = vec!["import"];
    args.extend(paths.iter().map(|p| s(p)));
    let ours = text(ok(cairn_at(&data, &args, None)));
    assert_eq!(ours, theirs);
    let store_paths = ours.lines().map(str::to_owned).collect();
    (tmp, root, data, chroot, store_paths)
}

#[test]
fn dump_and_export_match_nix() {
    let (tmp, root, data, _, store_paths) = imported_tree();
    for (rel, store_path) in ROOTS.iter().zip(&store_paths) {
        let src = root.join(rel);
        let theirs = nix("nix-store", &["--dump", s(&src)]);
        let ours = ok(cairn_at(&data, &["dump", store_path], None));
        assert!(
            ours == theirs,
            "cairn dump {store_path} differs from nix-store --dump {rel}"
        );

        let dest = tmp.path().join(format!("export-{}", rel.replace('/', "_")));
        ok(cairn_at(&data, &["export", store_path, s(&dest)], None));
        let hash = |p: &Path| text(nix("nix-hash", &["--type", "sha256", s(p)]));
        assert_eq!(hash(&dest), hash(&src), "export of {rel}");
        // And what Nix itself dumps of the exported tree is the same NAR.
        assert!(
            nix("nix-store", &["--dump", s(&dest)]) == theirs,
            "export of {rel}"
        );
    }
    // Export refuses an existing destination and changes nothing there.
    let dest = tmp.path().join("exists");
    fs::create_dir(&dest).unwrap();
    let out = cairn_at(&data, &["export", &store_paths[0], s(&dest)], None);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("already exists"));
    assert_eq!(fs::read_dir(&dest).unwrap().count(), 0);
    // Unknown paths are errors naming the path.
    let absent = "/nix/store/00000000000000000000000000000000-absent";
    for cmd in [
        &["dump", absent][..],
        &["path-info", absent],
        &["verify", absent],
    ] {
        let out = cairn_at(&data, cmd, None);
        assert!(!out.status.success(), "{cmd:?}");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains(absent),
            "{cmd:?}"
        );
    }
}

/// `nix path-info --json` minus `registrationTime` (a local database's field).
fn without_registration_time(json: &str) -> String {
    let mut out = String::new();
    let mut rest = json;
    while let Some(i) = rest.find(",\"registrationTime\":") {
        out.push_str(&rest[..i]);
        rest = &rest[i + ",\"registrationTime\":".len()..];
        rest = rest.trim_start_matches(|c: char| c.is_ascii_digit());
    }
    out.push_str(rest);
    out
}

#[test]
fn path_info_ls_and_cat_match_nix() {
    let (_tmp, _root, data, chroot, store_paths) = imported_tree();
    let store = s(&chroot);
    let mut args = vec!["path-info", "--json"];
    args.extend(store_paths.iter().map(String::as_str));
    let ours = text(ok(cairn_at(&data, &args, None)));
    let mut nix_args = vec!["path-info", "--json", "--store", store];
    nix_args.extend(store_paths.iter().map(String::as_str));
    let theirs = text(nix("nix", &nix_args));
    assert_eq!(ours, without_registration_time(&theirs));
    // Without --json: the paths.
    let ours = text(ok(cairn_at(
        &data,
        &args[..1]
            .iter()
            .chain(&args[2..])
            .copied()
            .collect::<Vec<_>>(),
        None,
    )));
    let mut nix_args = vec!["path-info", "--store", store];
    nix_args.extend(store_paths.iter().map(String::as_str));
    assert_eq!(ours, text(nix("nix", &nix_args)));

    let tree = &store_paths[0];
    let mut targets: Vec<String> = store_paths.clone();
    for sub in [
        "sizes",
        "sizes/f9",
        "links",
        "links/relative",
        "names",
        "empty-dir",
        "deep/0/1",
    ] {
        targets.push(format!("{tree}/{sub}"));
    }
    for target in &targets {
        for flags in [
            &[][..],
            &["-l"],
            &["-R"],
            &["-lR"],
            &["--json"],
            &["--json", "-R"],
        ] {
            let mut ours_args = vec!["ls"];
            ours_args.extend(flags);
            ours_args.push(target);
            let mut nix_args = vec!["store", "ls", "--store", store];
            nix_args.extend(flags);
            nix_args.push(target);
            assert_eq!(
                ok(cairn_at(&data, &ours_args, None)),
                nix("nix", &nix_args),
                "ls {flags:?} {target}"
            );
        }
    }
    for file in [
        "big",
        "sizes/f9",
        "sizes/f65537",
        "exec-755",
        "empty-file",
        "names/日本語",
    ] {
        let target = format!("{tree}/{file}");
        assert!(
            ok(cairn_at(&data, &["cat", &target], None))
                == nix("nix", &["store", "cat", "--store", store, &target]),
            "cat {file}"
        );
    }
    let out = cairn_at(&data, &["cat", &format!("{tree}/sizes")], None);
    assert!(!out.status.success());
    let out = cairn_at(&data, &["ls", &format!("{tree}/no/such")], None);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("does not exist"));
}

#[test]
fn add_nar_round_trips_nix_nars() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("tree");
    make_full_tree(&root);
    let chroot = tmp.path().join("nix");
    let data = tmp.path().join("data");
    for rel in ["", "big", "links/relative", "names"] {
        let src = root.join(rel);
        let nar = nix("nix-store", &["--dump", s(&src)]);
        let name = src.file_name().unwrap().to_str().unwrap();
        let theirs = text(nix("nix-store", &["--store", s(&chroot), "--add", s(&src)]));
        // From stdin and from a file.
        let ours = text(ok(cairn_at(
            &data,
            &["add-nar", "-", "--name", name],
            Some(&nar),
        )));
        assert_eq!(ours, theirs, "{rel}");
        let file = tmp.path().join("x.nar");
        fs::write(&file, &nar).unwrap();
        let ours = text(ok(cairn_at(
            &data,
            &["add-nar", s(&file), "--name", name],
            None,
        )));
        assert_eq!(ours, theirs, "{rel}");
        let dumped = ok(cairn_at(&data, &["dump", ours.trim_end()], None));
        assert!(dumped == nar, "{rel}");
    }
    // A truncated NAR is refused and registers nothing.
    let nar = nix("nix-store", &["--dump", s(&root)]);
    let out = cairn_at(
        &data,
        &["add-nar", "-", "--name", "cut"],
        Some(&nar[..nar.len() - 9]),
    );
    assert!(!out.status.success());
    assert!(out.stdout.is_empty());
    ok(cairn_at(&data, &["verify"], None));
}

/// The largest file under `dir`.
fn largest_file(dir: &Path) -> PathBuf {
    let mut best = (0, PathBuf::new());
    for e in fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        let m = fs::metadata(&p).unwrap();
        if m.is_dir() {
            let f = largest_file(&p);
            let len = fs::metadata(&f).map(|m| m.len()).unwrap_or(0);
            if len > best.0 {
                best = (len, f);
            }
        } else if m.len() > best.0 {
            best = (m.len(), p);
        }
    }
    best.1
}

#[test]
fn verify_finds_a_corrupted_byte_and_names_the_path() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("tree");
    make_full_tree(&root);
    let data = tmp.path().join("data");
    // The big file first, alone: its chunks are then the start of the first pack.
    let big = text(ok(cairn_at(&data, &["import", s(&root.join("big"))], None)));
    let pack = largest_file(&data.join("packs"));
    let big_end = fs::metadata(&pack).unwrap().len();
    let paths: Vec<PathBuf> = ROOTS.iter().map(|r| root.join(r)).collect();
    let mut args = vec!["import"];
    args.extend(paths.iter().map(|p| s(p)));
    let out = text(ok(cairn_at(&data, &args, None)));
    let store_paths: Vec<String> = out.lines().map(str::to_owned).collect();
    assert_eq!(store_paths[6], big.trim_end());
    ok(cairn_at(&data, &["verify"], None));
    let mut args = vec!["verify"];
    args.extend(store_paths.iter().map(String::as_str));
    ok(cairn_at(&data, &args, None));

    // Flip a byte in the middle of the big file's chunks.
    let mut bytes = fs::read(&pack).unwrap();
    bytes[big_end as usize / 2] ^= 0x55;
    fs::write(&pack, &bytes).unwrap();

    let out = cairn_at(&data, &["verify"], None);
    assert!(!out.status.success(), "verify passed on a corrupted store");
    let err = String::from_utf8_lossy(&out.stderr);
    // The whole tree and the "big" path contain the file.
    assert!(err.contains(&store_paths[0]), "{err}");
    assert!(err.contains(&store_paths[6]), "{err}");
    // A path without that file still verifies.
    ok(cairn_at(&data, &["verify", &store_paths[1]], None));
    let out = cairn_at(&data, &["verify", &store_paths[6]], None);
    assert!(!out.status.success());

    // Dump fails naming the path, after writing less than the NAR: a prefix of
    // it (the bytes before the corrupt chunk), never a clean short NAR.
    let out = cairn_at(&data, &["dump", &store_paths[6]], None);
    assert!(!out.status.success(), "dump of a corrupted file succeeded");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&store_paths[6]), "{err}");
    let theirs = nix("nix-store", &["--dump", s(&root.join("big"))]);
    assert!(
        out.stdout.len() < theirs.len() && theirs.starts_with(&out.stdout),
        "dump wrote {} bytes that are not a strict prefix of the {}-byte NAR",
        out.stdout.len(),
        theirs.len()
    );

    // The reads that found the damaged chunk recorded it, so importing the
    // same content again replaces it instead of deduplicating against it: both
    // paths are whole again.
    assert_eq!(
        text(ok(cairn_at(&data, &["import", s(&root.join("big"))], None))).trim_end(),
        store_paths[6]
    );
    ok(cairn_at(&data, &["verify"], None));
    assert!(ok(cairn_at(&data, &["dump", &store_paths[6]], None)) == theirs);

    // --repair drops what is damaged and names the paths needing their content.
    // (Another of the big file's chunks, at the start of the first pack.)
    let mut bytes = fs::read(&pack).unwrap();
    bytes[big_end as usize / 4] ^= 0x55;
    fs::write(&pack, &bytes).unwrap();
    let out = cairn_at(&data, &["verify", "--repair"], None);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("1 damaged chunks dropped"), "{err}");
    let named: Vec<&str> = err
        .lines()
        .filter(|l| l.contains("needs its content again"))
        .collect();
    assert!(!named.is_empty(), "{err}");
    assert_eq!(named.len(), 2, "{err}");
    let mut args = vec!["import"];
    let paths: Vec<PathBuf> = ROOTS.iter().map(|r| root.join(r)).collect();
    args.extend(paths.iter().map(|p| s(p)));
    ok(cairn_at(&data, &args, None));
    ok(cairn_at(&data, &["verify"], None));
}

#[test]
fn commands_use_a_running_daemon_of_the_data_dir() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("tree");
    make_full_tree(&root);
    let chroot = tmp.path().join("nix");
    let data = tmp.path().join("data");
    let theirs = text(nix(
        "nix-store",
        &["--store", s(&chroot), "--add", s(&root)],
    ));
    let (daemon, addr) = start_daemon(&data);

    // The daemon holds the data directory's lock: these go through its socket.
    let ours = text(ok(cairn_at(&data, &["import", s(&root)], None)));
    assert_eq!(ours, theirs);
    let path = ours.trim_end();
    let nar = nix("nix-store", &["--dump", s(&root)]);
    assert!(ok(cairn_at(&data, &["dump", path], None)) == nar);
    ok(cairn_at(&data, &["verify"], None));
    let json = text(ok(cairn_at(&data, &["path-info", "--json", path], None)));
    let theirs_json = text(nix(
        "nix",
        &["path-info", "--json", "--store", s(&chroot), path],
    ));
    assert_eq!(json, without_registration_time(&theirs_json));

    // --store names the daemon explicitly, whatever the data directory.
    let other = tmp.path().join("other");
    let via_tcp = ["--store", addr.as_str()];
    let mut args = vec!["dump", path];
    args.extend(via_tcp);
    assert!(ok(cairn_at(&other, &args, None)) == nar);
    let dest = tmp.path().join("exported");
    let mut args = vec!["export", path, s(&dest)];
    args.extend(via_tcp);
    ok(cairn_at(&other, &args, None));
    assert_eq!(
        nix("nix-hash", &["--type", "sha256", s(&dest)]),
        nix("nix-hash", &["--type", "sha256", s(&root)])
    );
    let mut args = vec!["add-nar", "-", "--name", "from-nar"];
    args.extend(via_tcp);
    let added = text(ok(cairn_at(&other, &args, Some(&nar))));
    assert!(
        !other.exists(),
        "--store must not create the data directory"
    );

    stop_daemon(daemon);
    // Without the daemon, the data directory itself has everything it stored.
    let out = text(ok(cairn_at(
        &data,
        &["path-info", path, added.trim_end()],
        None,
    )));
    assert_eq!(out.lines().count(), 2);
    ok(cairn_at(&data, &["verify"], None));
}

#[test]
fn kill_9_during_imports_loses_nothing_printed() {
    let tmp = tempfile::tempdir().unwrap();
    let store_dir = tmp.path().join("data");
    // 8 trees of 300 small files and one 4 MiB file each, imported in one command.
    let mut roots = Vec::new();
    for t in 0..8u8 {
        let root = tmp.path().join(format!("t{t}"));
        fs::create_dir(&root).unwrap();
        for i in 0..300u32 {
            let dir = root.join(format!("d{}", i % 7));
            fs::create_dir_all(&dir).unwrap();
            let mut content = data((i as usize * 37) % 5000, t.wrapping_add(i as u8));
            content.extend_from_slice(&i.to_le_bytes());
            content.push(t);
            fs::write(dir.join(format!("f{i}")), content).unwrap();
        }
        let mut big = data(4 << 20, t);
        big[..8].copy_from_slice(&u64::from(t).to_le_bytes());
        fs::write(root.join("big"), big).unwrap();
        roots.push(root);
    }
    let mut args: Vec<&str> = vec!["import"];
    args.extend(roots.iter().map(|p| s(p)));

    // How long a full import takes, to kill within it.
    let start = std::time::Instant::now();
    let full = text(ok(cairn_at(&tmp.path().join("timing"), &args, None)));
    let full_ms = start.elapsed().as_millis().max(50) as u64;
    let expected: Vec<&str> = full.lines().collect();
    assert_eq!(expected.len(), roots.len());

    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    // Rounds killed before the end, and among them those that printed a path.
    let (mut interrupted, mut partial) = (0, 0);
    for round in 0..20 {
        use std::io::Read;
        // Odd rounds crash into the shared store again and again. A re-import there
        // stores little new and may finish before the kill, so even rounds start
        // from an empty store, which keeps the kills landing inside imports.
        let dir = if round % 2 == 0 {
            tmp.path().join(format!("fresh{round}"))
        } else {
            store_dir.clone()
        };
        let (mut child, delay, _) = run_and_kill(&dir, &args, &mut seed, full_ms);
        let mut printed = String::new();
        child
            .stdout
            .take()
            .unwrap()
            .read_to_string(&mut printed)
            .unwrap();
        // Every path printed is a prefix of the full run's output.
        let printed: Vec<&str> = printed.lines().collect();
        assert_eq!(printed[..], expected[..printed.len()], "round {round}");
        if printed.len() < expected.len() {
            interrupted += 1;
            partial += usize::from(!printed.is_empty());
        }
        // The store opens, verifies whole, and has every printed path complete.
        let out = cairn_at(&dir, &["verify"], None);
        assert!(
            out.status.success(),
            "round {round} (killed after {delay} ms): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        if !printed.is_empty() {
            let mut v = vec!["verify"];
            v.extend(&printed);
            ok(cairn_at(&dir, &v, None));
            let last = printed[printed.len() - 1];
            let i = printed.len() - 1;
            assert!(
                ok(cairn_at(&dir, &["dump", last], None))
                    == nix("nix-store", &["--dump", s(&roots[i])]),
                "round {round}: {last}"
            );
        }
        if dir != store_dir {
            fs::remove_dir_all(&dir).unwrap();
        }
    }
    // Kills must have hit imports in progress, or the test proves nothing.
    assert!(
        interrupted >= 5 && partial >= 2,
        "only {interrupted} rounds interrupted ({partial} after printing a path)"
    );
    // And a last, uninterrupted run completes on the crashed-into store.
    assert_eq!(text(ok(cairn_at(&store_dir, &args, None))), full);
    ok(cairn_at(&store_dir, &["verify"], None));
}

/// `cairn verify` also fails a path whose references are not in the store (a
/// substituter could not fetch its closure), naming them; other paths pass.
#[test]
fn verify_names_absent_references() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let file = tmp.path().join("f");
    fs::write(&file, "referrer").unwrap();
    let imported = text(ok(cairn_at(&data, &["import", s(&file)], None)));
    let imported = imported.trim();
    let absent = "/nix/store/00000000000000000000000000000000-absent";
    let referrer = "/nix/store/11111111111111111111111111111111-referrer";
    // Written in-process through the local backend, which leaves references to
    // its callers (the daemon's gRPC and HTTP puts check them).
    let url = format!("redb://{}", data.display());
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        let blobs = cairn_castore::blob_service_from_addr(&url).unwrap();
        let dirs = cairn_castore::directory_service_from_addr(&url).unwrap();
        let infos = cairn_store::pathinfo::path_info_service_from_addr(&url, blobs, dirs).unwrap();
        let p = cairn_nix::store_path::StorePath::parse_absolute(imported).unwrap();
        let mut info = infos.get(*p.digest()).await.unwrap().unwrap();
        info.store_path = cairn_nix::store_path::StorePath::parse_absolute(referrer).unwrap();
        info.references = vec![cairn_nix::store_path::StorePath::parse_absolute(absent).unwrap()];
        info.ca = None;
        infos.put(info).await.unwrap();
    });
    let out = cairn_at(&data, &["verify"], None);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(referrer) && err.contains(absent) && err.contains("not in the store"),
        "{err}"
    );
    assert!(!err.contains(&format!("'{imported}'")), "{err}");
    ok(cairn_at(&data, &["verify", imported], None));
}
