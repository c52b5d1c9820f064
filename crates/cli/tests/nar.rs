//! `cairn nar` against the real Nix, run at test time on trees generated here:
//! `cairn nar dump` vs `nix-store --dump`, `cairn nar hash` vs `nix-hash`,
//! `cairn nar ls` vs `nix nar ls`, `cairn nar restore` of Nix's NARs, and restore's
//! rejections of malformed NARs (leaving nothing behind).
//!
//! These tests need Nix (`nix-store`, `nix-hash`, `nix`; Debian's `nix-bin`, which
//! `./test.sh` installs) and fail when it is missing.
#![allow(clippy::unwrap_used)]

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use std::io::Write;

mod common;
use common::*;

fn assert_same_as_nix(path: &Path) {
    let theirs = nix("nix-store", &["--dump", s(path)]);
    let ours = ok(cairn(&["nar", "dump", s(path)], None));
    assert!(
        ours == theirs,
        "cairn nar dump differs from nix-store --dump for {}",
        path.display()
    );
    let theirs = nix("nix-hash", &["--type", "sha256", "--base32", s(path)]);
    let ours = ok(cairn(&["nar", "hash", s(path)], None));
    assert_eq!(
        String::from_utf8(ours).unwrap(),
        String::from_utf8(theirs).unwrap(),
        "{}",
        path.display()
    );
}

#[test]
fn dump_and_hash_match_nix_on_generated_tree() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("tree");
    make_tree(&root);
    assert_same_as_nix(&root);
    // Each kind of root node on its own.
    for p in [
        "empty-file",
        "empty-dir",
        "exec-755",
        "group-x-only",
        "sizes/f9",
        "links/relative",
        "links/dangling",
        "links/to-parent-dir",
        "links/long-4095",
        "names",
        "deep",
    ] {
        assert_same_as_nix(&root.join(p));
    }
}

#[test]
fn hash_prints_one_line_per_path_like_nix_hash() {
    let tmp = tempfile::tempdir().unwrap();
    fs::write(tmp.path().join("a"), b"a").unwrap();
    fs::write(tmp.path().join("b"), b"b").unwrap();
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    let theirs = nix("nix-hash", &["--type", "sha256", "--base32", s(&a), s(&b)]);
    assert_eq!(ok(cairn(&["nar", "hash", s(&a), s(&b)], None)), theirs);
}

#[test]
fn dump_matches_nix_on_10k_files() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("many");
    fs::create_dir(&root).unwrap();
    for i in 0..10_000 {
        let dir = root.join(format!("d{}", i % 37));
        if i < 37 {
            fs::create_dir(&dir).unwrap();
        }
        fs::write(dir.join(format!("f{i}")), data(i % 1500, i as u8)).unwrap();
    }
    assert_same_as_nix(&root);
}

#[test]
fn dump_matches_nix_on_a_64_mib_file() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("big");
    let mut f = fs::File::create(&path).unwrap();
    let chunk = data(1 << 20, 7);
    for i in 0..64u8 {
        let mut c = chunk.clone();
        c[0] = i; // every MiB differs
        f.write_all(&c).unwrap();
    }
    // An odd size, so the last chunk is partial and padding is needed.
    f.write_all(b"tail!").unwrap();
    drop(f);
    assert_same_as_nix(&path);
}

#[test]
fn restore_of_nix_nars_round_trips() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("tree");
    make_tree(&root);
    for p in [
        "tree",
        "tree/empty-file",
        "tree/exec-755",
        "tree/links/dangling",
        "tree/empty-dir",
    ] {
        let nar = nix("nix-store", &["--dump", s(&tmp.path().join(p))]);
        let ours = tmp.path().join(format!("ours-{}", p.replace('/', "_")));
        ok(cairn(&["nar", "restore", s(&ours)], Some(&nar)));
        let again = nix("nix-store", &["--dump", s(&ours)]);
        assert!(
            again == nar,
            "restore then nix-store --dump differs for {p}"
        );
        // Modes as nix-store --restore makes them.
        let theirs = tmp.path().join(format!("theirs-{}", p.replace('/', "_")));
        let out = run(
            Command::new("nix-store").args(["--restore", s(&theirs)]),
            Some(&nar),
        );
        assert!(out.status.success());
        assert_eq!(modes(&ours), modes(&theirs), "{p}");
    }
}

/// Modes of everything under `root` (relative path, mode), symlinks excluded.
fn modes(root: &Path) -> Vec<(PathBuf, u32)> {
    let mut out = Vec::new();
    let mut todo = vec![root.to_path_buf()];
    while let Some(p) = todo.pop() {
        let m = fs::symlink_metadata(&p).unwrap();
        if m.file_type().is_symlink() {
            continue;
        }
        out.push((
            p.strip_prefix(root).unwrap().to_path_buf(),
            m.permissions().mode() & 0o7777,
        ));
        if m.is_dir() {
            for e in fs::read_dir(&p).unwrap() {
                todo.push(e.unwrap().path());
            }
        }
    }
    out.sort();
    out
}

#[test]
fn ls_matches_nix_nar_ls() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("tree");
    make_tree(&root);
    for p in ["tree", "tree/exec-755", "tree/links/relative"] {
        let nar_path = tmp.path().join("x.nar");
        fs::write(
            &nar_path,
            nix("nix-store", &["--dump", s(&tmp.path().join(p))]),
        )
        .unwrap();
        let theirs = nix("nix", &["nar", "ls", "-R", "-l", s(&nar_path), "/"]);
        assert!(
            ok(cairn(&["nar", "ls", s(&nar_path)], None)) == theirs,
            "ls of {p}"
        );
        let theirs = nix("nix", &["nar", "ls", "-R", "--json", s(&nar_path), "/"]);
        let ours = ok(cairn(&["nar", "ls", "--json", s(&nar_path)], None));
        assert!(
            ours == theirs,
            "ls --json of {p}:\n{}\n{}",
            String::from_utf8_lossy(&ours),
            String::from_utf8_lossy(&theirs)
        );
        // From stdin too.
        let nar = fs::read(&nar_path).unwrap();
        assert_eq!(ok(cairn(&["nar", "ls", "--json", "-"], Some(&nar))), ours);
    }
}

#[test]
fn dump_refuses_fifos_and_sockets() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("d");
    fs::create_dir(&dir).unwrap();
    fs::write(dir.join("a"), b"a").unwrap();
    let fifo = dir.join("pipe");
    let st = Command::new("mkfifo").arg(&fifo).status().unwrap();
    assert!(st.success());
    for target in [&dir, &fifo] {
        let out = cairn(&["nar", "dump", s(target)], None);
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(&format!("{} is a FIFO", fifo.display())),
            "{err}"
        );
    }
    fs::remove_file(&fifo).unwrap();
    let sock = dir.join("sock");
    let _listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    let out = cairn(&["nar", "hash", s(&dir)], None);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("{} is a socket", sock.display())),
        "{err}"
    );
}

// ---- restore rejections -------------------------------------------------------

fn st(out: &mut Vec<u8>, x: &[u8]) {
    out.extend_from_slice(&(x.len() as u64).to_le_bytes());
    out.extend_from_slice(x);
    out.extend_from_slice(&[0u8; 8][..(8 - x.len() % 8) % 8]);
}

/// A directory NAR with a file per name (contents "hi"), not checked.
fn dir_nar(names: &[&[u8]]) -> Vec<u8> {
    let mut n = Vec::new();
    for t in [&b"nix-archive-1"[..], b"(", b"type", b"directory"] {
        st(&mut n, t);
    }
    for name in names {
        for t in [
            &b"entry"[..],
            b"(",
            b"name",
            name,
            b"node",
            b"(",
            b"type",
            b"regular",
            b"contents",
            b"hi",
            b")",
            b")",
        ] {
            st(&mut n, t);
        }
    }
    st(&mut n, b")");
    n
}

fn nested(depth: usize) -> Vec<u8> {
    let mut n = Vec::new();
    st(&mut n, b"nix-archive-1");
    for _ in 0..depth {
        for t in [
            &b"("[..],
            b"type",
            b"directory",
            b"entry",
            b"(",
            b"name",
            b"d",
            b"node",
        ] {
            st(&mut n, t);
        }
    }
    for t in [&b"("[..], b"type", b"directory", b")"] {
        st(&mut n, t);
    }
    for _ in 0..depth {
        st(&mut n, b")");
        st(&mut n, b")");
    }
    n
}

#[test]
fn restore_rejects_malformed_nars_and_leaves_nothing() {
    let good = dir_nar(&[b"a", b"b"]);
    let mut bad_padding = good.clone();
    let pos = good.len() - 16 * 3 - 3; // a padding byte of the last "hi"
    assert_eq!(bad_padding[pos], 0);
    bad_padding[pos] = 0xff;
    let mut trailing = good.clone();
    trailing.extend_from_slice(b"\0\0\0\0\0\0\0\0");
    let cases: Vec<(&str, Vec<u8>, String)> = vec![
        (
            "unsorted",
            dir_nar(&[b"b", b"a"]),
            "directory entries not sorted: \"a\" comes after \"b\"".into(),
        ),
        (
            "duplicate",
            dir_nar(&[b"a", b"a"]),
            "duplicate directory entry \"a\"".into(),
        ),
        (
            "dotdot",
            dir_nar(&[b".."]),
            "invalid entry name \"..\"".into(),
        ),
        ("dot", dir_nar(&[b"."]), "invalid entry name \".\"".into()),
        (
            "empty",
            dir_nar(&[b""]),
            "invalid entry name \"\": empty".into(),
        ),
        ("slash", dir_nar(&[b"a/b"]), "contains '/'".into()),
        ("nul", dir_nar(&[b"a\0b"]), "contains a NUL byte".into()),
        (
            "padding",
            bad_padding,
            format!("at byte offset {pos}: non-zero padding byte"),
        ),
        (
            "truncated",
            good[..good.len() - 20].to_vec(),
            "truncated".into(),
        ),
        (
            "truncated-in-contents",
            good[..good.len() - 16 * 3 - 7].to_vec(),
            "truncated: the stream ends where file contents should be".into(),
        ),
        (
            "trailing",
            trailing,
            format!("at byte offset {}: trailing data", good.len()),
        ),
        (
            "too-deep",
            nested(1100),
            "nested deeper than the limit of 1024".into(),
        ),
        (
            "not-a-nar",
            b"hello world, not a NAR".to_vec(),
            "not a NAR".into(),
        ),
        ("empty-input", Vec::new(), "truncated".into()),
    ];
    for (name, nar, expected) in cases {
        let tmp = tempfile::tempdir().unwrap();
        let dest = tmp.path().join("out");
        let out = cairn(&["nar", "restore", s(&dest)], Some(&nar));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{name}: accepted");
        assert!(
            err.contains(&expected),
            "{name}: expected {expected:?} in {err}"
        );
        assert!(
            !dest.exists() && fs::symlink_metadata(&dest).is_err(),
            "{name}: {} exists",
            dest.display()
        );
        let left: Vec<_> = fs::read_dir(tmp.path()).unwrap().collect();
        assert!(left.is_empty(), "{name}: left behind {left:?}");
    }
    // The good one is accepted (the cases above fail for the stated reason only).
    let tmp = tempfile::tempdir().unwrap();
    ok(cairn(
        &["nar", "restore", s(&tmp.path().join("out"))],
        Some(&good),
    ));
    assert_eq!(fs::read(tmp.path().join("out/b")).unwrap(), b"hi");
    // nix-store --restore accepts nested(1100) and unsorted entries; we must not.
    ok(cairn(
        &["nar", "restore", s(&tmp.path().join("deep"))],
        Some(&nested(1000)),
    ));
}

#[test]
fn restore_refuses_an_existing_path() {
    let tmp = tempfile::tempdir().unwrap();
    let dest = tmp.path().join("exists");
    fs::create_dir(&dest).unwrap();
    fs::write(dest.join("keep"), b"keep").unwrap();
    let out = cairn(&["nar", "restore", s(&dest)], Some(&dir_nar(&[b"a"])));
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("already exists"));
    assert_eq!(fs::read(dest.join("keep")).unwrap(), b"keep");
    assert!(!dest.join("a").exists());
}
