//! Exit codes: a reader closing cairn's stdout early is not a failure, and nothing
//! else may pass for it. A daemon dying under an upload breaks the pipe of the
//! upload's socket; that must end `cairn import` and `cairn add-nar` with an error
//! on stderr and a non-zero exit, not with a quiet success that skips the rest.
#![allow(clippy::unwrap_used)]

use std::fs::{self, File};
use std::io::Read;
use std::path::Path;
use std::process::{Child, ExitStatus, Stdio};
use std::time::{Duration, Instant};

mod common;
use common::*;

/// Larger than this machine uploads in the time the test needs to see the upload
/// start and kill the daemon (it uploads a few hundred MiB/s).
const BIG: usize = 300 << 20;
/// Pack bytes the daemon must have stored before it is killed: the upload is
/// under way, and most of it still to come.
const UPLOAD_STARTED: u64 = 16 << 20;

/// Bytes in the daemon's pack files, 0 before the first exists.
fn pack_bytes(data: &Path) -> u64 {
    fs::read_dir(data.join("packs")).map_or(0, |dir| {
        dir.flatten()
            .filter_map(|e| e.metadata().ok())
            .map(|m| m.len())
            .sum()
    })
}

/// What is left in a child's output pipe, read to its end.
fn read_all(pipe: Option<impl Read>) -> String {
    let mut text = String::new();
    pipe.unwrap().read_to_string(&mut text).unwrap();
    text
}

/// Waits for `child` up to `limit`; kills it and fails if it does not end.
fn wait_at_most(child: &mut Child, limit: Duration, what: &str) -> ExitStatus {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what} did not end within {limit:?} of the daemon's death");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Runs `cairn ARGS` (stdin from `stdin`) through a daemon on a new data
/// directory, SIGKILLs the daemon once the upload is under way, and returns the
/// command's exit status, stdout and stderr.
fn kill_the_daemon_during(
    tmp: &Path,
    args: &[&str],
    stdin: Option<&Path>,
) -> (bool, String, String) {
    let data = tmp.join("data");
    let (mut daemon, _) = start_daemon(&data);
    let mut cmd = cairn_at_cmd(&data, args);
    cmd.stdin(match stdin {
        Some(p) => Stdio::from(File::open(p).unwrap()),
        None => Stdio::null(),
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    let start = Instant::now();
    while pack_bytes(&data) < UPLOAD_STARTED {
        if let Some(status) = child.try_wait().unwrap() {
            panic!(
                "cairn {args:?} ended ({status}) before the daemon stored {UPLOAD_STARTED} bytes"
            );
        }
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "the daemon stored no {UPLOAD_STARTED} bytes of cairn {args:?} in 2 minutes"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    let mut d = daemon.0.take().unwrap();
    d.kill().unwrap(); // SIGKILL
    d.wait().unwrap();
    let status = wait_at_most(&mut child, Duration::from_secs(60), "cairn");
    assert!(
        pack_bytes(&data) < BIG as u64,
        "the upload had finished when the daemon was killed: the test proves nothing"
    );
    let out = read_all(child.stdout.take());
    let err = read_all(child.stderr.take());
    (status.success(), out, err)
}

/// A file of [`BIG`] pseudo-random bytes (no chunk repeats, nothing compresses).
fn big_file(tmp: &Path) -> std::path::PathBuf {
    let big = tmp.join("big");
    fs::write(&big, cairn_testkit::data::pseudo_random(BIG, 15)).unwrap();
    big
}

#[test]
fn import_fails_loudly_when_the_daemon_dies_during_an_upload() {
    let tmp = tempfile::tempdir().unwrap();
    let big = big_file(tmp.path());
    let small = tmp.path().join("small");
    fs::write(&small, b"after the big one").unwrap();
    let (success, out, err) =
        kill_the_daemon_during(tmp.path(), &["import", s(&big), s(&small)], None);
    assert!(!success, "exit 0 after the daemon died; stderr: {err:?}");
    assert!(out.is_empty(), "printed {out:?}, though nothing was stored");
    assert!(
        err.starts_with("error: ") && err.contains(&format!("importing {}", s(&big))),
        "stderr: {err:?}"
    );
}

#[test]
fn add_nar_fails_loudly_when_the_daemon_dies_during_an_upload() {
    let tmp = tempfile::tempdir().unwrap();
    let big = big_file(tmp.path());
    let nar = tmp.path().join("big.nar");
    let status = cairn_at_cmd(&tmp.path().join("unused"), &["nar", "dump", s(&big)])
        .stdout(File::create(&nar).unwrap())
        .status()
        .unwrap();
    assert!(status.success());
    fs::remove_file(&big).unwrap();
    let (success, out, err) =
        kill_the_daemon_during(tmp.path(), &["add-nar", "-", "--name", "big"], Some(&nar));
    assert!(!success, "exit 0 after the daemon died; stderr: {err:?}");
    assert!(out.is_empty(), "printed {out:?}, though nothing was stored");
    assert!(
        err.starts_with("error: ") && err.contains("adding the NAR stdin"),
        "stderr: {err:?}"
    );
}

/// Runs `cairn ARGS`, reads 10 bytes of its stdout and closes it, as `| head -c 10`
/// does; returns its exit status and stderr.
fn head_c_10(data: &Path, args: &[&str]) -> (ExitStatus, String) {
    let mut child = cairn_at_cmd(data, args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = [0u8; 10];
    child.stdout.take().unwrap().read_exact(&mut first).unwrap();
    assert_eq!(&first, b"\r\0\0\0\0\0\0\0ni");
    let status = wait_at_most(&mut child, Duration::from_secs(60), "cairn");
    (status, read_all(child.stderr.take()))
}

#[test]
fn a_closed_stdout_ends_dump_quietly() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    // Far more than a pipe holds, so cairn is still writing when the pipe closes.
    let file = tmp.path().join("file");
    fs::write(&file, cairn_testkit::data::pseudo_random(8 << 20, 1)).unwrap();
    let path = text(ok(cairn_at(&data, &["import", s(&file)], None)));
    for args in [vec!["dump", path.trim_end()], vec!["nar", "dump", s(&file)]] {
        let (status, err) = head_c_10(&data, &args);
        assert!(status.success(), "cairn {args:?}: {status}, stderr {err:?}");
        assert_eq!(err, "", "cairn {args:?}");
    }
}
