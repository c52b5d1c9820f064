//! `cairn gc`, `cairn delete`, `cairn pin`/`unpin`/`pins` on the embedded
//! store, checked against the real Nix: what stays dumps byte-identical to
//! `nix-store --dump` of the tree it came from; the space test of issue 18 (8
//! releases, half deleted, the data directory within 15% of a store that only
//! held the other half); kill -9 during collections loses nothing live.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::fs;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::{cairn_at, nix, ok, run_and_kill, s, text};

/// Disk taken under `dir` (allocated blocks: punched holes count as freed).
fn disk_usage(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let mut total = 0;
    for e in fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        let m = fs::symlink_metadata(e.path()).unwrap();
        total += if m.is_dir() {
            disk_usage(&e.path())
        } else {
            m.blocks() * 512
        };
    }
    total
}

/// Text-like bytes (compressible, as source is), reproducible from `seed`.
fn text_bytes(len: usize, seed: u64) -> Vec<u8> {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz_(){};= \n";
    cairn_testkit::data::pseudo_random(len, seed)
        .into_iter()
        .map(|b| ALPHABET[b as usize % ALPHABET.len()])
        .collect()
}

/// Release `r` (0-based) of a generated source tree: 240 files in 12
/// directories; each release changes about a fifth of the files and adds 8.
fn release(root: &Path, r: u64) {
    fs::create_dir_all(root).unwrap();
    let files = 240 + 8 * r;
    for i in 0..files {
        // The releases (up to r) in which file i changed.
        let born = if i < 240 { 0 } else { (i - 240) / 8 };
        let version = (born..=r)
            .filter(|&k| k == born || (i * 31 + k * 17) % 5 == 0)
            .count() as u64;
        let len = 500 + (i * 7919) % 60_000;
        let dir = root.join(format!("src{}", i % 12));
        fs::create_dir_all(&dir).unwrap();
        fs::write(
            dir.join(format!("file{i}.rs")),
            text_bytes(len as usize, i * 1000 + version),
        )
        .unwrap();
    }
}

struct Releases {
    _tmp: tempfile::TempDir,
    trees: Vec<PathBuf>,
    tmp: PathBuf,
}

fn releases() -> Releases {
    let tmp = tempfile::tempdir().unwrap();
    let trees = (0..8)
        .map(|r| {
            let root = tmp.path().join(format!("release{r}"));
            release(&root, r);
            root
        })
        .collect();
    Releases {
        tmp: tmp.path().to_owned(),
        _tmp: tmp,
        trees,
    }
}

fn import(data: &Path, trees: &[PathBuf]) -> Vec<String> {
    let mut args = vec!["import"];
    args.extend(trees.iter().map(|t| s(t)));
    text(ok(cairn_at(data, &args, None)))
        .lines()
        .map(str::to_owned)
        .collect()
}

fn assert_dumps_like_nix(data: &Path, paths: &[String], trees: &[PathBuf]) {
    for (p, t) in paths.iter().zip(trees) {
        assert!(
            ok(cairn_at(data, &["dump", p], None)) == nix("nix-store", &["--dump", s(t)]),
            "{p} does not dump as {} does",
            t.display()
        );
    }
}

#[test]
fn space_comes_back_after_deleting_half_the_releases() {
    let r = releases();
    let data = r.tmp.join("data");
    let paths = import(&data, &r.trees);
    // What `nix-store --add` would name them.
    for (p, t) in paths.iter().zip(&r.trees) {
        let name = t.file_name().unwrap().to_str().unwrap();
        assert!(p.ends_with(&format!("-{name}")), "{p}");
    }
    let full = disk_usage(&data);
    let path_info_size = || std::fs::metadata(data.join("pathinfo.redb")).unwrap().len();
    let path_info_before = path_info_size();
    // Holes punched only, first; then the packs rewritten.
    let mut args = vec!["delete", "--grace", "0s", "--rewrite-below", "0"];
    args.extend(paths[..4].iter().map(String::as_str));
    let out = cairn_at(&data, &args, None);
    let report = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{report}");
    assert!(report.contains("removed 4 paths"), "{report}");
    assert!(report.contains("freed"), "{report}");
    assert!(report.contains("index and path info compacted"), "{report}");
    // Deleted entries' pages are not kept in the file.
    assert!(
        path_info_size() < path_info_before,
        "pathinfo.redb {} bytes, {path_info_before} before the delete",
        path_info_size()
    );
    assert!(!report.contains("rewrote"), "{report}");
    let punched = disk_usage(&data);
    let out = cairn_at(
        &data,
        &["gc", "--grace", "0s", "--rewrite-below", "1"],
        None,
    );
    let report = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{report}");
    assert!(report.contains("deleted 1 pack files"), "{report}");
    assert!(!data.join("packs/00000000.pack").exists());
    let after = disk_usage(&data);
    assert!(
        after < punched,
        "{after} bytes after the rewrite, {punched} before"
    );

    let fresh = r.tmp.join("fresh");
    let kept = import(&fresh, &r.trees[4..]);
    assert_eq!(kept, paths[4..]);
    let only_half = disk_usage(&fresh);
    eprintln!(
        "8 releases: {full} bytes; 4 deleted, holes punched: {punched}; packs rewritten: {after}; a store of the 4 others: {only_half}"
    );
    assert!(
        after as f64 <= only_half as f64 * 1.15,
        "{after} bytes after gc, {only_half} in a store that only held the kept half"
    );
    ok(cairn_at(&data, &["verify"], None));
    assert_dumps_like_nix(&data, &paths[4..], &r.trees[4..]);
    for p in &paths[..4] {
        let out = cairn_at(&data, &["dump", p], None);
        assert!(!out.status.success(), "{p} still dumps");
    }
}

#[test]
fn pins_delete_refusals_and_dry_runs() {
    let r = releases();
    let data = r.tmp.join("data");
    let paths = import(&data, &r.trees[..3]);
    ok(cairn_at(&data, &["pin", &paths[0]], None));
    assert_eq!(
        text(ok(cairn_at(&data, &["pins"], None))),
        format!("{}\n", paths[0])
    );
    // A pinned path is not deleted.
    let out = cairn_at(&data, &["delete", "--grace", "0s", &paths[0]], None);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("is pinned"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Nor by --max-age, which takes the others (they were never read since).
    std::thread::sleep(std::time::Duration::from_millis(2100));
    let before = disk_usage(&data);
    let dry = cairn_at(
        &data,
        &["gc", "--dry-run", "--max-age", "1s", "--grace", "0s"],
        None,
    );
    let dry_out = text(ok(dry));
    let mut expected = vec![paths[1].clone(), paths[2].clone()];
    expected.sort();
    let mut listed: Vec<String> = dry_out.lines().map(str::to_owned).collect();
    listed.sort();
    assert_eq!(listed, expected);
    // The dry run removed nothing.
    ok(cairn_at(&data, &["verify"], None));
    assert_dumps_like_nix(&data, &paths, &r.trees[..3]);
    assert!(disk_usage(&data) >= before);
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let out = cairn_at(&data, &["gc", "--max-age", "1s", "--grace", "0s"], None);
    let mut listed: Vec<String> = text(ok(out)).lines().map(str::to_owned).collect();
    listed.sort();
    assert_eq!(listed, expected);
    assert_dumps_like_nix(&data, &paths[..1], &r.trees[..1]);
    assert!(disk_usage(&data) < before);
    // Unpinned, it can go.
    ok(cairn_at(&data, &["unpin", &paths[0]], None));
    assert_eq!(text(ok(cairn_at(&data, &["pins"], None))), "");
    ok(cairn_at(&data, &["delete", &paths[0]], None));
    ok(cairn_at(&data, &["verify"], None));
    assert!(
        !cairn_at(&data, &["path-info", &paths[0]], None)
            .status
            .success()
    );
}

fn copy_dir(from: &Path, to: &Path) {
    let st = Command::new("cp")
        .args(["-a", "--sparse=always", s(from), s(to)])
        .status()
        .unwrap();
    assert!(st.success());
}

#[test]
fn kill_9_during_gc_loses_nothing_live() {
    let r = releases();
    let template = r.tmp.join("template");
    let paths = import(&template, &r.trees);
    let mut args = vec!["delete", "--grace", "0s"];
    args.extend(paths[..4].iter().map(String::as_str));
    // How long a whole run takes, to kill within it.
    let timing = r.tmp.join("timing");
    copy_dir(&template, &timing);
    let start = std::time::Instant::now();
    ok(cairn_at(&timing, &args, None));
    let full_ms = start.elapsed().as_millis().max(20) as u64;

    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let mut killed = 0;
    for round in 0..12 {
        let dir = r.tmp.join(format!("round{round}"));
        copy_dir(&template, &dir);
        let (_, delay, status) = run_and_kill(&dir, &args, &mut seed, full_ms);
        killed += usize::from(status.signal() == Some(9));
        // The store opens and verifies whole; what was to stay dumps as Nix.
        let out = cairn_at(&dir, &["verify"], None);
        assert!(
            out.status.success(),
            "round {round} (killed after {delay} ms): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_dumps_like_nix(&dir, &paths[4..], &r.trees[4..]);
        // A later collection finishes the job.
        ok(cairn_at(&dir, &["gc", "--grace", "0s"], None));
        let mut rest = vec!["delete", "--grace", "0s"];
        let left: Vec<String> = paths[..4]
            .iter()
            .filter(|p| cairn_at(&dir, &["path-info", p], None).status.success())
            .cloned()
            .collect();
        rest.extend(left.iter().map(String::as_str));
        if !left.is_empty() {
            ok(cairn_at(&dir, &rest, None));
        }
        ok(cairn_at(&dir, &["verify"], None));
        assert_dumps_like_nix(&dir, &paths[4..], &r.trees[4..]);
        fs::remove_dir_all(&dir).unwrap();
    }
    assert!(killed >= 3, "only {killed} rounds were killed mid-run");
}

#[test]
fn kill_9_during_pack_rewrite_loses_nothing_live() {
    let r = releases();
    let template = r.tmp.join("template");
    let paths = import(&template, &r.trees);
    let mut args = vec!["delete", "--grace", "0s", "--rewrite-below", "0"];
    args.extend(paths[..4].iter().map(String::as_str));
    ok(cairn_at(&template, &args, None));
    let rewrite = ["gc", "--grace", "0s", "--rewrite-below", "1"];
    let timing = r.tmp.join("timing");
    copy_dir(&template, &timing);
    let start = std::time::Instant::now();
    let out = ok(cairn_at(&timing, &rewrite, None));
    let full_ms = start.elapsed().as_millis().max(20) as u64;
    assert!(!timing.join("packs/00000000.pack").exists(), "{out:?}");
    let rewritten = disk_usage(&timing.join("packs"));

    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut killed = 0;
    for round in 0..12 {
        let dir = r.tmp.join(format!("round{round}"));
        copy_dir(&template, &dir);
        let (_, delay, status) = run_and_kill(&dir, &rewrite, &mut seed, full_ms);
        killed += usize::from(status.signal() == Some(9));
        let out = cairn_at(&dir, &["verify"], None);
        assert!(
            out.status.success(),
            "round {round} (killed after {delay} ms): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_dumps_like_nix(&dir, &paths[4..], &r.trees[4..]);
        // A later run finishes the job: the old pack goes, the packs take
        // what an uninterrupted rewrite leaves them (give or take copies
        // left by the killed run smaller than a hole worth punching).
        ok(cairn_at(&dir, &rewrite, None));
        ok(cairn_at(&dir, &["verify"], None));
        assert_dumps_like_nix(&dir, &paths[4..], &r.trees[4..]);
        assert!(!dir.join("packs/00000000.pack").exists(), "round {round}");
        let du = disk_usage(&dir.join("packs"));
        assert!(
            du <= rewritten + rewritten / 10 + (1 << 20),
            "round {round}: {du} bytes, {rewritten} after an uninterrupted rewrite"
        );
        fs::remove_dir_all(&dir).unwrap();
    }
    assert!(killed >= 3, "only {killed} rounds were killed mid-run");
}

/// `curl URL` into memory: (curl's exit code, HTTP status, body).
fn fetch(url: &str) -> (i32, String, Vec<u8>) {
    let out = Command::new("curl")
        .args(["-s", "-o", "-", "-w", "\n%{http_code}", url])
        .output()
        .unwrap();
    let mut body = out.stdout;
    let cut = body.iter().rposition(|&b| b == b'\n').unwrap_or(0);
    let code = String::from_utf8_lossy(&body[cut + 1..]).into_owned();
    body.truncate(cut);
    (out.status.code().unwrap_or(-1), code, body)
}

#[test]
fn daemon_collects_while_serving_and_uploading() {
    let r = releases();
    let data = r.tmp.join("data");
    let (daemon, _, line) = common::start_daemon_with(
        &data,
        &["--gc-interval", "1s", "--max-age", "4s", "--grace", "0s"],
    );
    let http = common::http_addr(&line);
    // Through the daemon's socket.
    let old = import(&data, &r.trees[..1]).remove(0);
    let old_nar = nix("nix-store", &["--dump", s(&r.trees[0])]);
    let hash = old.trim_start_matches("/nix/store/")[..32].to_owned();

    // A client streams the old path's NAR again and again while it ages out:
    // every complete 200 carries exactly Nix's bytes, until the narinfo is gone.
    let reader = {
        let http = http.clone();
        std::thread::spawn(move || {
            let (mut whole, mut failed) = (0, 0);
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
            while std::time::Instant::now() < deadline {
                let (_, code, info) = fetch(&format!("http://{http}/{hash}.narinfo"));
                if code == "404" {
                    return (whole, failed, true);
                }
                let info = String::from_utf8_lossy(&info).into_owned();
                let Some(url) = info.lines().find_map(|l| l.strip_prefix("URL: ")) else {
                    continue;
                };
                // The narinfo read counts as an access: wait past the age.
                std::thread::sleep(std::time::Duration::from_millis(1500));
                let (exit, code, body) = fetch(&format!("http://{http}/{url}"));
                if exit == 0 && code == "200" {
                    assert!(body == old_nar, "a 200 with other bytes than Nix's NAR");
                    whole += 1;
                } else {
                    failed += 1;
                }
            }
            (whole, failed, false)
        })
    };
    // Uploads racing the collections: each path printed is whole at once.
    for (i, t) in r.trees[1..].iter().enumerate() {
        let newest = import(&data, std::slice::from_ref(t)).remove(0);
        assert_dumps_like_nix(&data, std::slice::from_ref(&newest), &r.trees[i + 1..i + 2]);
    }
    // Reads within an hour of the upload do not move its access time (the
    // grain), so the old path ages out 4 s after its upload, read or not.
    let (whole, failed, gone) = reader.join().unwrap();
    assert!(
        gone,
        "the old path was never collected ({whole} reads, {failed} failed)"
    );
    assert!(whole >= 1, "no NAR was read whole before the collection");
    assert!(!cairn_at(&data, &["path-info", &old], None).status.success());
    // `cairn gc` does not run beside the daemon; the daemon runs them.
    let out = cairn_at(&data, &["gc"], None);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--gc-interval"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // What is left (through the daemon, then on its own) is whole.
    ok(cairn_at(&data, &["verify"], None));
    common::stop_daemon(daemon);
    ok(cairn_at(&data, &["verify"], None));
}
