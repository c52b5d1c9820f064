//! Helpers shared by the `cairn` integration tests: running commands and the real
//! Nix with the test settings, and generating trees with every case Nix must agree on.
// Each test file uses its own subset.
#![allow(dead_code, clippy::unwrap_used)]

pub mod ca;
pub mod cluster;
pub mod mount;

use std::fs;
use std::io::Write;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::Path;
use std::process::{Command, Output, Stdio};

/// Nix settings for tests: no sandbox, no substituters.
pub const NIX_CONFIG: &str = "experimental-features = nix-command\nsandbox = false\nsubstituters =";

/// `cairn ARGS`, with `stdin` fed from a thread.
pub fn cairn(args: &[&str], stdin: Option<&[u8]>) -> Output {
    run(Command::new(env!("CARGO_BIN_EXE_cairn")).args(args), stdin)
}

/// `cairn ARGS` on the data directory `data` (through `CAIRN_DATA_DIR`, as a user
/// would set it), with no other store settings from the environment.
pub fn cairn_at_cmd(data: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_cairn"));
    cmd.args(args)
        .env("CAIRN_DATA_DIR", data)
        .env_remove("CAIRN_STORE")
        .env_remove("BLOB_SERVICE_ADDR")
        .env_remove("DIRECTORY_SERVICE_ADDR")
        .env_remove("PATH_INFO_SERVICE_ADDR");
    cmd
}

/// [`cairn_at_cmd`] run to its end, with `stdin` fed from a thread.
pub fn cairn_at(data: &Path, args: &[&str], stdin: Option<&[u8]>) -> Output {
    run(&mut cairn_at_cmd(data, args), stdin)
}

pub fn run(cmd: &mut Command, stdin: Option<&[u8]>) -> Output {
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap_or_else(|e| {
        panic!(
            "cannot run {cmd:?}: {e}. Nix is required: install Debian's nix-bin (./test.sh does)"
        )
    });
    if let Some(input) = stdin {
        let mut pipe = child.stdin.take().unwrap();
        let input = input.to_vec();
        // A writer thread, so a child that fails early does not block us.
        std::thread::spawn(move || {
            let _ = pipe.write_all(&input);
        });
    }
    child.wait_with_output().unwrap()
}

/// Runs a Nix command with the test settings; panics with its stderr on failure.
pub fn nix(program: &str, args: &[&str]) -> Vec<u8> {
    let cache = tempfile::tempdir().unwrap();
    let out = run(
        Command::new(program)
            .args(args)
            .env("XDG_CACHE_HOME", cache.path())
            .env("NIX_CONFIG", NIX_CONFIG),
        None,
    );
    assert!(
        out.status.success(),
        "{program} {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

pub fn ok(out: Output) -> Vec<u8> {
    assert!(
        out.status.success(),
        "cairn failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

pub fn text(out: Vec<u8>) -> String {
    String::from_utf8(out).unwrap()
}

pub fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

pub fn write(path: &Path, data: &[u8], mode: u32) {
    fs::write(path, data).unwrap();
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

/// Deterministic bytes that are not all alike, so misplaced data shows.
pub fn data(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

/// A tree with every kind of node and the odd cases Nix must agree on.
pub fn make_tree(root: &Path) {
    fs::create_dir(root).unwrap();
    // Files of every size around the 8-byte padding and the copy buffers' sizes.
    let sizes = fs::create_dir(root.join("sizes"))
        .map(|()| root.join("sizes"))
        .unwrap();
    let mut lens: Vec<usize> = (0..=17).collect();
    lens.extend([
        63, 64, 65, 4095, 4096, 4097, 65535, 65536, 65537, 262143, 262144, 262145,
    ]);
    for len in lens {
        write(&sizes.join(format!("f{len}")), &data(len, len as u8), 0o644);
    }
    fs::write(root.join("empty-file"), b"").unwrap();
    fs::create_dir(root.join("empty-dir")).unwrap();
    // Executable means the owner's x bit, nothing else.
    write(&root.join("exec-755"), b"#!/bin/sh\n", 0o755);
    write(&root.join("exec-700"), b"x", 0o700);
    write(&root.join("exec-100"), b"x", 0o500);
    write(&root.join("group-x-only"), b"x", 0o654);
    write(&root.join("other-x-only"), b"x", 0o645);
    write(&root.join("empty-exec"), b"", 0o755);
    // Symlinks of all kinds.
    let l = root.join("links");
    fs::create_dir(&l).unwrap();
    symlink("../exec-755", l.join("relative")).unwrap();
    symlink("/etc/passwd", l.join("absolute")).unwrap();
    symlink("nowhere/at/all", l.join("dangling")).unwrap();
    symlink("..", l.join("to-parent-dir")).unwrap();
    symlink(".", l.join("to-self-dir")).unwrap();
    symlink("to-loop-b", l.join("to-loop-a")).unwrap();
    symlink("to-loop-a", l.join("to-loop-b")).unwrap();
    symlink("x".repeat(1000), l.join("long-1000")).unwrap();
    symlink("y/".repeat(2047) + "z", l.join("long-4095")).unwrap();
    symlink("with space\nand newline", l.join("odd-target")).unwrap();
    // Names that sort differently bytewise than by locale, and odd but legal ones.
    let n = root.join("names");
    fs::create_dir(&n).unwrap();
    for name in [
        "A",
        "a",
        "B",
        "b",
        "_",
        "-",
        ".x",
        "..x",
        "...",
        "x.",
        "with space",
        " lead",
        "trail ",
        "new\nline",
        "tab\there",
        "ünïcödé",
        "日本語",
        "emoji-🦀",
        "Z",
        "~",
        "#",
        "'quote'",
        "\"dq\"",
        "back\\slash",
    ] {
        fs::write(n.join(name), name.as_bytes()).unwrap();
    }
    use std::os::unix::ffi::OsStrExt;
    fs::write(
        n.join(std::ffi::OsStr::from_bytes(b"non-utf8-\xff\xfe")),
        b"raw",
    )
    .unwrap();
    fs::write(n.join("n".repeat(255)), b"longest name").unwrap();
    // Deep nesting.
    let mut deep = root.join("deep");
    for i in 0..200 {
        deep = deep.join(format!("{}", i % 10));
    }
    fs::create_dir_all(&deep).unwrap();
    fs::write(deep.join("bottom"), b"deep down").unwrap();
}

/// A running daemon, killed if the test fails before stopping it.
pub struct Daemon(pub Option<std::process::Child>);

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Starts `cairn daemon` on `data` and a free port; returns it with its TCP address.
pub fn start_daemon(data: &Path) -> (Daemon, String) {
    let (daemon, url, _) = start_daemon_with(data, &[]);
    (daemon, url)
}

/// [`start_daemon`] with more flags; also returns the daemon's first line (which
/// names its addresses and who may write).
pub fn start_daemon_with(data: &Path, extra: &[&str]) -> (Daemon, String, String) {
    let mut child = daemon_command(data, extra).spawn().unwrap();
    let line = first_line(&mut child);
    // grpc+https:// when the daemon serves TLS (--tls-cert).
    let url = line
        .split_whitespace()
        .find(|w| w.starts_with("grpc+http://") || w.starts_with("grpc+https://"))
        .unwrap_or_else(|| panic!("no address in the daemon's first line: {line:?}"))
        .to_string();
    (Daemon(Some(child)), url, line)
}

/// `cairn daemon` on `data` and free ports, with `extra` flags, not started:
/// stderr piped (for [`first_line`]), no store settings from the environment.
pub fn daemon_command(data: &Path, extra: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_cairn"));
    cmd.args([
        "daemon",
        "--listen",
        "127.0.0.1:0",
        "--http-listen",
        "127.0.0.1:0",
        "--data-dir",
    ])
    .arg(data)
    .args(extra)
    .env_remove("BLOB_SERVICE_ADDR")
    .env_remove("DIRECTORY_SERVICE_ADDR")
    .env_remove("PATH_INFO_SERVICE_ADDR")
    .stdout(Stdio::null())
    .stderr(Stdio::piped());
    cmd
}

/// Waits for a daemon's first line (it is ready then, and the line names its
/// addresses) and keeps its stderr drained, so it never blocks on a full pipe.
pub fn first_line(child: &mut std::process::Child) -> String {
    use std::io::{BufRead, BufReader};
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    stderr.read_line(&mut line).unwrap();
    std::thread::spawn(move || std::io::copy(&mut stderr, &mut std::io::sink()));
    line
}

/// The binary cache's address in the daemon's first line.
pub fn http_addr(line: &str) -> String {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix("http://"))
        .unwrap_or_else(|| panic!("no binary cache address in {line:?}"))
        .to_string()
}

/// Stops the daemon with SIGTERM; it must exit successfully.
pub fn stop_daemon(mut daemon: Daemon) {
    let mut child = daemon.0.take().unwrap();
    let pid = child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let exit = child.wait().unwrap();
    assert!(exit.success(), "daemon exited with {exit} after SIGTERM");
}

/// Bytes under `dir`, recursively.
pub fn dir_size(dir: &Path) -> u64 {
    let mut total = 0;
    for e in fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        let m = fs::symlink_metadata(e.path()).unwrap();
        if m.is_dir() {
            total += dir_size(&e.path());
        } else {
            total += m.len();
        }
    }
    total
}

/// Tiny deterministic PRNG (xorshift), so the crash tests need no dependency.
pub fn next_rand(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

/// Starts `cairn ARGS` on data directory `data` (stdout piped, stderr
/// dropped), SIGKILLs it after a random delay below `within_ms` (drawn from
/// `seed`), and waits for it: the child (its stdout still to read), the
/// delay, and how it ended.
pub fn run_and_kill(
    data: &Path,
    args: &[&str],
    seed: &mut u64,
    within_ms: u64,
) -> (std::process::Child, u64, std::process::ExitStatus) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_cairn"))
        .args(args)
        .env("CAIRN_DATA_DIR", data)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let delay = next_rand(seed) % within_ms;
    std::thread::sleep(std::time::Duration::from_millis(delay));
    let _ = child.kill(); // SIGKILL
    let status = child.wait().unwrap();
    (child, delay, status)
}
