//! `cairn mount` against the real kernel FUSE: generated trees read through the
//! mount equal the originals (`nix-store --dump`, `diff -r`), reads at random
//! offsets and by 16 readers at once, a corrupted chunk gives EIO while the rest
//! reads, a mount of a daemon over gRPC survives the daemon's restart, SIGTERM
//! or an unmount from outside end the mount without leaving it behind, inodes
//! the kernel forgets are freed, and only `--allow-other` lets another user in.
//!
//! Needs `/dev/fuse`, root or `fusermount3` (Debian's `fuse3`), and Nix, which
//! `./test.sh` installs; without them these tests fail, they never skip.
#![allow(clippy::unwrap_used)]

use std::fs;
use std::io::ErrorKind;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod common;
use cairn_testkit::data::pseudo_random;
use common::mount::*;
use common::*;

/// `make_tree`'s tree with a multi-chunk file of pseudo-random bytes.
fn make_full_tree(root: &Path) -> Vec<u8> {
    make_tree(root);
    let big = pseudo_random(6 << 20, 7);
    write(&root.join("big"), &big, 0o644);
    big
}

/// Imports `paths` into `data`, returning their store paths' basenames.
fn import(data: &Path, paths: &[PathBuf]) -> Vec<String> {
    let mut args = vec!["import"];
    args.extend(paths.iter().map(|p| s(p)));
    text(ok(cairn_at(data, &args, None)))
        .lines()
        .map(|l| l.strip_prefix("/nix/store/").unwrap().to_owned())
        .collect()
}

#[test]
fn mounted_paths_dump_and_diff_as_the_originals() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("tree");
    make_full_tree(&root);
    let data = tmp.path().join("data");
    let roots = [
        "",
        "empty-file",
        "empty-dir",
        "exec-755",
        "big",
        "links/odd-target",
        "links/long-4095",
        "names",
        "deep",
    ];
    let originals: Vec<PathBuf> = roots.iter().map(|r| root.join(r)).collect();
    let names = import(&data, &originals);
    let mnt = tmp.path().join("mnt");
    let m = Mounted::start(&mnt, &["--data-dir", s(&data)]);

    for (original, name) in originals.iter().zip(&names) {
        let theirs = nix("nix-store", &["--dump", s(original)]);
        let ours = nix("nix-store", &["--dump", s(&m.path(name))]);
        assert!(ours == theirs, "nix-store --dump of {name} differs");
    }
    let diff = Command::new("diff")
        .args(["-r", "--no-dereference"])
        .arg(&root)
        .arg(m.path(&names[0]))
        .output()
        .unwrap();
    assert!(
        diff.status.success(),
        "diff -r found differences: {}{}",
        String::from_utf8_lossy(&diff.stdout),
        String::from_utf8_lossy(&diff.stderr)
    );

    // What stat says: Nix's modes and mtime, sizes, stable inodes.
    let tree = m.path(&names[0]);
    let meta = |p: &str| fs::symlink_metadata(tree.join(p)).unwrap();
    assert_eq!(meta("sizes/f4097").mode() & 0o7777, 0o444);
    assert_eq!(meta("sizes/f4097").len(), 4097);
    assert_eq!(meta("big").len(), 6 << 20);
    assert_eq!(meta("big").blocks(), (6 << 20) / 512);
    assert_eq!(meta("exec-100").mode() & 0o7777, 0o555);
    assert_eq!(meta("deep").mode() & 0o7777, 0o555);
    assert!(meta("deep").is_dir());
    assert!(meta("links/dangling").file_type().is_symlink());
    assert_eq!(meta("links/long-4095").len(), 4095);
    for p in ["", "big", "deep", "links/relative"] {
        assert_eq!(meta(p).mtime(), 1, "{p}");
    }
    assert_eq!(meta("big").ino(), meta("big").ino());
    assert_ne!(meta("big").ino(), meta("exec-755").ino());
    let target = fs::read_link(tree.join("links/odd-target")).unwrap();
    assert_eq!(target.as_os_str().as_bytes(), b"with space\nand newline");

    // Read-only.
    let err = fs::OpenOptions::new()
        .write(true)
        .open(tree.join("exec-755"))
        .unwrap_err();
    assert_eq!(err.raw_os_error(), Some(30), "{err}"); // EROFS
    assert!(fs::write(tree.join("new"), b"x").is_err());
    assert!(fs::create_dir(tree.join("newdir")).is_err());

    // The root is not listed without --list-root, and unknown names are absent.
    assert_eq!(fs::read_dir(&mnt).unwrap().count(), 0);
    let absent = "00000000000000000000000000000000-nothing";
    assert_eq!(
        fs::metadata(m.path(absent)).unwrap_err().kind(),
        ErrorKind::NotFound
    );
    assert_eq!(
        fs::metadata(m.path("not-a-store-path")).unwrap_err().kind(),
        ErrorKind::NotFound
    );
    // A registered hash with another name is not that path.
    let other_name = format!("{}-other", &names[1][..32]);
    assert_eq!(
        fs::metadata(m.path(&other_name)).unwrap_err().kind(),
        ErrorKind::NotFound
    );
    m.stop("-TERM");

    // With --list-root, ls lists every path.
    let m = Mounted::start(&mnt, &["--data-dir", s(&data), "--list-root"]);
    let mut listed: Vec<String> = fs::read_dir(&mnt)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    listed.sort();
    let mut want = names.clone();
    want.sort();
    assert_eq!(listed, want);
    m.stop("-TERM");
}

#[test]
fn random_reads_and_sixteen_concurrent_readers() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    fs::create_dir(&src).unwrap();
    let files: Vec<Vec<u8>> = (0..4)
        .map(|i| pseudo_random((3 << 20) + i * 100_003, 100 + i as u64))
        .collect();
    for (i, f) in files.iter().enumerate() {
        write(&src.join(format!("f{i}")), f, 0o644);
    }
    let data = tmp.path().join("data");
    let name = import(&data, std::slice::from_ref(&src)).remove(0);
    let mnt = tmp.path().join("mnt");
    let m = Mounted::start(&mnt, &["--data-dir", s(&data)]);
    let dir = m.path(&name);

    // Random offsets and lengths, on a fresh mount (nothing in the page cache),
    // each read at its offset without reading from the start.
    let mut rng = 0x9e37_79b9_7f4a_7c15_u64;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let file = fs::File::open(dir.join("f0")).unwrap();
    for _ in 0..300 {
        let off = (next() % files[0].len() as u64) as usize;
        let len = (next() % (1 << 20)) as usize + 1;
        let mut buf = vec![0; len];
        let n = read_at_most(&file, &mut buf, off as u64);
        let want = &files[0][off..(off + len).min(files[0].len())];
        assert!(&buf[..n] == want, "read of {len} at {off} differs");
    }
    // Past the end: nothing.
    assert_eq!(read_at_most(&file, &mut [0; 10], files[0].len() as u64), 0);
    drop(file);

    // 16 readers at once: 8 on one file, 8 spread over the others, each reading
    // its file from a different starting point, wrapping around.
    std::thread::scope(|scope| {
        for t in 0..16usize {
            let (dir, files) = (&dir, &files);
            scope.spawn(move || {
                let i = if t < 8 { 1 } else { t % 4 };
                let want = &files[i];
                let f = fs::File::open(dir.join(format!("f{i}"))).unwrap();
                let start = t * 65_537 % want.len();
                let mut got = vec![0; want.len()];
                let mut off = start;
                while off < want.len() {
                    let end = (off + 200_000).min(want.len());
                    f.read_exact_at(&mut got[off..end], off as u64).unwrap();
                    off = end;
                }
                f.read_exact_at(&mut got[..start], 0).unwrap();
                assert!(&got == want, "reader {t} of f{i} got other bytes");
            });
        }
    });
    m.stop("-INT");
}

/// Reads into `buf` at `off` until it is full or the file ends; the bytes read.
fn read_at_most(file: &fs::File, buf: &mut [u8], off: u64) -> usize {
    let mut n = 0;
    while n < buf.len() {
        match file.read_at(&mut buf[n..], off + n as u64).unwrap() {
            0 => break,
            k => n += k,
        }
    }
    n
}

/// The largest file under `dir`.
fn largest_file(dir: &Path) -> PathBuf {
    let mut best = (0, PathBuf::new());
    for e in fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        let len = fs::metadata(&p).unwrap().len();
        if len > best.0 {
            best = (len, p);
        }
    }
    best.1
}

#[test]
fn a_corrupted_chunk_is_eio_and_the_rest_still_reads() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    fs::create_dir(&src).unwrap();
    let big = pseudo_random(4 << 20, 11);
    write(&src.join("big"), &big, 0o644);
    let data = tmp.path().join("data");
    // The big file first, alone: its chunks are then the start of the first pack.
    let big_name = import(&data, &[src.join("big")]).remove(0);
    let pack = largest_file(&data.join("packs"));
    let big_end = fs::metadata(&pack).unwrap().len() as usize;
    let small = pseudo_random(100_000, 12);
    write(&src.join("small"), &small, 0o755);
    let small_name = import(&data, &[src.join("small")]).remove(0);

    let mut bytes = fs::read(&pack).unwrap();
    bytes[big_end / 2] ^= 0x55;
    fs::write(&pack, &bytes).unwrap();

    let mnt = tmp.path().join("mnt");
    let m = Mounted::start(&mnt, &["--data-dir", s(&data)]);
    let err = fs::read(m.path(&big_name)).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(5), "reading a corrupt file: {err}"); // EIO
    // The chunks before the damage still read, and they are the right bytes.
    let f = fs::File::open(m.path(&big_name)).unwrap();
    let mut head = vec![0; 100_000];
    f.read_exact_at(&mut head, 0).unwrap();
    assert!(head[..] == big[..100_000]);
    drop(f);
    // Asked again, still EIO: never a short or wrong answer.
    let err = fs::read(m.path(&big_name)).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(5), "{err}");
    // Everything else is served.
    assert!(fs::read(m.path(&small_name)).unwrap() == small);
    m.stop("-TERM");
}

/// A file read once from start to end through a mount of a daemon is fetched
/// once: the kernel's read-ahead requests, which arrive at once and in any
/// order, are served by one blob reader, not by several that seek past each
/// other (each seek over gRPC a Stat and a Read per chunk, fetched and
/// verified again).
#[test]
fn a_file_read_through_a_mount_is_fetched_once() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    fs::create_dir(&src).unwrap();
    let content = pseudo_random(64 << 20, 77);
    write(&src.join("big"), &content, 0o644);
    let data = tmp.path().join("data");
    let name = import(&data, std::slice::from_ref(&src)).remove(0);
    let (daemon, url, line) = start_daemon_with(&data, &["--no-socket"]);
    let m = Mounted::start(&tmp.path().join("mnt"), &["--store", &url]);
    let reads = || {
        let out = Command::new("curl")
            .args(["-sSf", &format!("http://{}/metrics", http_addr(&line))])
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .filter(|l| l.starts_with("cairn_grpc_calls_total{") && l.contains("BlobService"))
            .filter(|l| l.contains("method=\"Read\"") || l.contains("method=\"Stat\""))
            .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
            .sum::<f64>()
    };
    let before = reads();
    assert!(fs::read(m.path(&name).join("big")).unwrap() == content);
    let calls = reads() - before;
    assert!(
        calls <= 4.0,
        "{calls} BlobService Read/Stat calls for one sequential read of one file"
    );
    m.stop("-TERM");
    stop_daemon(daemon);
}

/// Drops the kernel's unused dentries and inodes (`drop_caches`, as root or
/// through `sudo -n`, as `./test.sh` installs with).
fn drop_dentries() {
    if fs::write("/proc/sys/vm/drop_caches", "2").is_ok() {
        return;
    }
    let out = Command::new("sudo")
        .args(["-n", "sh", "-c", "echo 2 > /proc/sys/vm/drop_caches"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "dropping the kernel's dentries needs root or passwordless sudo: {out:?}"
    );
}

/// The kernel gives an inode's lookups back (`forget`) when it drops the inode
/// from its cache, and the mount then frees the entry: its table holds what the
/// kernel caches, not every name ever shown. Seen from outside: a name looked
/// up again after that gets a new inode number (they are never reused), where
/// a table that keeps every entry answers with the old one.
#[test]
fn names_the_kernel_forgets_are_freed_and_looked_up_anew() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    fs::create_dir_all(src.join("dir")).unwrap();
    write(&src.join("dir/file"), b"forgotten", 0o644);
    let data = tmp.path().join("data");
    let name = import(&data, std::slice::from_ref(&src)).remove(0);
    let m = Mounted::start(&tmp.path().join("mnt"), &["--data-dir", s(&data)]);
    let file = m.path(&name).join("dir/file");
    let first = fs::metadata(&file).unwrap().ino();
    // The forget is queued when the inode is evicted and handled by another
    // session thread than the next lookup: give it a moment, and retry.
    let mut again = first;
    for _ in 0..50 {
        drop_dentries();
        std::thread::sleep(Duration::from_millis(100));
        again = fs::metadata(&file).unwrap().ino();
        if again != first {
            break;
        }
    }
    assert_ne!(
        again, first,
        "the entry was kept after the kernel forgot it"
    );
    // Still the same content under the new number.
    assert_eq!(fs::read(&file).unwrap(), b"forgotten");
    m.stop("-TERM");
}

#[test]
fn a_mount_of_a_daemon_over_grpc_survives_its_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    fs::create_dir(&src).unwrap();
    let contents: Vec<Vec<u8>> = (0..3).map(|i| pseudo_random(2 << 20, 20 + i)).collect();
    for (i, c) in contents.iter().enumerate() {
        write(&src.join(format!("f{i}")), c, 0o644);
    }
    let data = tmp.path().join("data");
    let name = import(&data, std::slice::from_ref(&src)).remove(0);
    let (daemon, url) = start_daemon(&data);
    let addr = url.strip_prefix("grpc+http://").unwrap().to_owned();
    let mnt = tmp.path().join("mnt");
    let m = Mounted::start(&mnt, &["--store", &url]);
    let dir = m.path(&name);
    assert!(fs::read(dir.join("f0")).unwrap() == contents[0]);
    // The data directory's daemon serves a mount of it through its socket too.
    let by_socket = Mounted::start(&tmp.path().join("mnt2"), &["--data-dir", s(&data)]);
    assert!(fs::read(by_socket.path(&name).join("f2")).unwrap() == contents[2]);
    by_socket.stop("-TERM");

    stop_daemon(daemon);
    // During the gap a read fails (EIO), it does not hang or return other bytes.
    let err = fs::read(dir.join("f1")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(5), "{err}");

    // The daemon again, on the same address.
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_cairn"));
    cmd.args(["daemon", "--listen", &addr, "--http-listen", "127.0.0.1:0"])
        .arg("--data-dir")
        .arg(&data)
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    first_line(&mut child);
    let daemon = Daemon(Some(child));
    // The client reconnects on its own; give it a few seconds of backoff.
    let start = Instant::now();
    let f1 = loop {
        match fs::read(dir.join("f1")) {
            Ok(bytes) => break bytes,
            Err(e) if start.elapsed() < Duration::from_secs(15) => {
                assert_eq!(e.raw_os_error(), Some(5), "{e}");
                std::thread::sleep(Duration::from_millis(200));
            }
            Err(e) => panic!("reads did not resume after the restart: {e}"),
        }
    };
    assert!(f1 == contents[1]);
    assert!(fs::read(dir.join("f2")).unwrap() == contents[2]);
    m.stop("-TERM");
    stop_daemon(daemon);
}

/// A field of `/proc/PID/status` in kB (VmHWM: the peak RSS), in bytes.
fn status_bytes(pid: u32, field: &str) -> u64 {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with(field)).unwrap();
    let kb: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kb << 10
}

/// How much a mount's peak RSS may grow over what it held once mounted,
/// whatever is read: issue 20's target (128 MB in all) less what a release
/// build holds once mounted (~15 MB) and some room for a debug build's code.
const PEAK_GROWTH_MAX: u64 = 96 << 20;

/// Many files read at once through a mount of a daemon: the mount keeps a
/// blob stream per file on its one gRPC connection. With the client's
/// connection window at two streams' worth, what the daemon had sent to the
/// streams not being read filled it, and every read stalled for good (in D
/// state; this test hung without the fix). Then everything reads whole.
/// Memory: the readers of all these files share the mount's read budget, so its
/// peak RSS grows by less than [`PEAK_GROWTH_MAX`], through the daemon and on
/// the data directory (with limits per reader only, 20 partial readers of
/// 32 MiB files peaked at 206 MB and 333 MB in a release build; bounded, 59 MB
/// and 80 MB).
#[test]
fn many_files_read_at_once_through_a_daemon_never_stall() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    fs::create_dir(&src).unwrap();
    let mut want = Vec::new();
    for i in 0..20u64 {
        let content = pseudo_random(12 << 20, 40 + i);
        want.push(blake3::hash(&content));
        write(&src.join(format!("f{i}")), &content, 0o644);
    }
    let data = tmp.path().join("data");
    let (daemon, _) = start_daemon(&data);
    let name = import(&data, std::slice::from_ref(&src)).remove(0);
    let m = Mounted::start(&tmp.path().join("mnt"), &["--data-dir", s(&data)]);
    // 1 MiB in 128 KiB reads (as `dd bs=128k count=8`), of every file at once,
    // at `offset`; then each file whole, hashed.
    let read_all_at_once = |dir: &Path, offset: Option<u64>| {
        let (tx, rx) = std::sync::mpsc::channel();
        for i in 0..20usize {
            let (tx, f) = (tx.clone(), dir.join(format!("f{i}")));
            std::thread::spawn(move || {
                let r = (|| -> std::io::Result<Option<blake3::Hash>> {
                    let mut file = fs::File::open(&f)?;
                    let mut buf = vec![0; 128 << 10];
                    let mut h = blake3::Hasher::new();
                    if let Some(off) = offset {
                        std::io::Seek::seek(&mut file, std::io::SeekFrom::Start(off))?;
                        for _ in 0..8 {
                            std::io::Read::read_exact(&mut file, &mut buf)?;
                        }
                        return Ok(None);
                    }
                    loop {
                        match std::io::Read::read(&mut file, &mut buf)? {
                            0 => return Ok(Some(h.finalize())),
                            n => {
                                h.update(&buf[..n]);
                            }
                        }
                    }
                })();
                let _ = tx.send((i, r));
            });
        }
        for _ in 0..20 {
            match rx.recv_timeout(Duration::from_secs(120)) {
                Ok((i, r)) => {
                    if let Some(got) = r.unwrap() {
                        assert_eq!(got, want[i], "f{i}");
                    }
                }
                // Dropping the mount (killing it) ends the stalled reads.
                Err(_) => panic!("reads through the mount stalled ({offset:?})"),
            }
        }
    };
    let rss = |m: &Mounted| status_bytes(m.child.as_ref().unwrap().id(), "VmRSS:");
    let peak_within = |m: &Mounted, mounted: u64, what: &str| {
        let peak = status_bytes(m.child.as_ref().unwrap().id(), "VmHWM:");
        let (peak_mb, mounted_mb) = (peak >> 20, mounted >> 20);
        eprintln!("{what}: peak RSS {peak_mb} MB, {mounted_mb} MB once mounted");
        assert!(
            peak < mounted + PEAK_GROWTH_MAX,
            "{what}: peak RSS {peak_mb} MB, {mounted_mb} MB once mounted"
        );
    };
    let mounted = rss(&m);
    let dir = m.path(&name);
    read_all_at_once(&dir, Some(0));
    read_all_at_once(&dir, Some(5 << 20));
    peak_within(&m, mounted, "partial reads through the daemon");
    read_all_at_once(&dir, None);
    peak_within(&m, mounted, "whole reads through the daemon");
    m.stop("-TERM");
    stop_daemon(daemon);

    // On the data directory itself: the embedded store's readers.
    let m = Mounted::start(&tmp.path().join("mnt"), &["--data-dir", s(&data)]);
    let mounted = rss(&m);
    let dir = m.path(&name);
    read_all_at_once(&dir, Some(0));
    read_all_at_once(&dir, Some(5 << 20));
    peak_within(&m, mounted, "partial reads of the data directory");
    m.stop("-TERM");
}

#[test]
fn sigterm_or_an_unmount_from_outside_ends_the_mount() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let src = tmp.path().join("x");
    fs::write(&src, b"x").unwrap();
    let name = import(&data, std::slice::from_ref(&src)).remove(0);
    let mnt = tmp.path().join("mnt");

    let m = Mounted::start(&mnt, &["--data-dir", s(&data)]);
    assert_eq!(fs::read(m.path(&name)).unwrap(), b"x");
    m.stop("-TERM");
    assert!(!is_mounted(&mnt), "a stale mount after SIGTERM");
    assert!(fs::read(mnt.join(&name)).is_err());

    // Unmounted from outside: the process notices and exits.
    let mut m = Mounted::start(&mnt, &["--data-dir", s(&data)]);
    assert_eq!(fs::read(m.path(&name)).unwrap(), b"x");
    let out = Command::new("fusermount3")
        .arg("-u")
        .arg(&mnt)
        .output()
        .expect("fusermount3 (Debian's fuse3) is needed");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut child = m.child.take().unwrap();
    let exit = wait_for(&mut child, Duration::from_secs(20));
    assert!(
        exit.success(),
        "cairn mount exited with {exit} after an unmount"
    );
    assert!(!is_mounted(&mnt));
}

#[test]
fn only_the_mounting_user_reads_unless_allow_other() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().unwrap();
    // Other users must reach the mount point.
    fs::set_permissions(tmp.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let data = tmp.path().join("data");
    let src = tmp.path().join("x");
    fs::write(&src, b"for everyone").unwrap();
    let name = import(&data, std::slice::from_ref(&src)).remove(0);
    let mnt = tmp.path().join("mnt");
    let as_nobody = |m: &Mounted| {
        Command::new("runuser")
            .args(["-u", "nobody", "--", "cat"])
            .arg(m.path(&name))
            .output()
            .unwrap()
    };

    let m = Mounted::start(&mnt, &["--data-dir", s(&data)]);
    let out = as_nobody(&m);
    assert!(
        !out.status.success(),
        "another user read a mount without --allow-other"
    );
    m.stop("-TERM");

    let m = Mounted::start(&mnt, &["--data-dir", s(&data), "--allow-other"]);
    let out = as_nobody(&m);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.stdout, b"for everyone");
    m.stop("-TERM");
}
