//! `cairn daemon`'s binary cache as a user runs it: the real binary on the embedded
//! store, `--sign-key`, `--upload-token-file` and `--read-token-file`, spoken to by the real Nix 2.8
//! (`nix copy --to` with a netrc, `nix path-info`) and curl. An upload's NAR sent
//! before a SIGTERM is accepted with its narinfo after the restart, and registered
//! paths stay. Needs Nix and curl (`scripts/install-test-deps.sh`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};

use cairn_nix::narinfo::NarInfo;
use cairn_nix::signature::{SigningKey, VerifyingKey};

/// A running daemon, killed if the test fails before stopping it.
struct Daemon(Option<Child>, Option<std::thread::JoinHandle<String>>);

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// `cairn daemon` on `data` with its binary cache on a free port, and `extra`.
fn daemon_cmd(data: &Path, extra: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_cairn"));
    c.args([
        "daemon",
        "--listen",
        "127.0.0.1:0",
        "--http-listen",
        "127.0.0.1:0",
    ])
    .args(["--no-socket", "--data-dir"])
    .arg(data)
    .args(extra);
    c
}

/// Starts the daemon with its binary cache on a free port; returns its URL.
fn start(data: &Path, extra: &[&str]) -> (Daemon, String) {
    spawn(daemon_cmd(data, extra))
}

/// Starts the daemon `cmd` runs; returns its binary cache's URL.
fn spawn(mut cmd: Command) -> (Daemon, String) {
    let mut child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    stderr.read_line(&mut line).unwrap();
    let url = line
        .split_whitespace()
        .find(|w| w.starts_with("http://"))
        .map(|w| w.trim_end_matches(','))
        .unwrap_or_else(|| panic!("no http:// address in the daemon's first line: {line:?}"))
        .to_string();
    // The rest of stderr, for `stop` to return.
    let log = std::thread::spawn(move || {
        let mut rest = String::new();
        let _ = std::io::Read::read_to_string(&mut stderr, &mut rest);
        rest
    });
    (Daemon(Some(child), Some(log)), url)
}

/// Stops the daemon with SIGTERM; returns what it wrote to stderr after its first
/// line.
fn stop(mut daemon: Daemon) -> String {
    let mut child = daemon.0.take().unwrap();
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let exit = child.wait().unwrap();
    assert!(exit.success(), "daemon exited with {exit} after SIGTERM");
    daemon
        .1
        .take()
        .map(|t| t.join().unwrap())
        .unwrap_or_default()
}

fn ok(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?} (scripts/install-test-deps.sh): {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn nix(xdg: &Path, prog: &str) -> Command {
    cairn_testkit::nix::command(prog, xdg)
}

/// curl: HTTP status and body.
fn curl(args: &[&str]) -> (u16, String) {
    let out = ok(Command::new("curl")
        .args(["-sS", "-o", "-", "-w", "\n%{http_code}"])
        .args(args));
    let (body, code) = out.rsplit_once('\n').unwrap();
    (code.parse().unwrap(), body.to_owned())
}

#[test]
fn nix_copy_through_the_daemon_signed_with_a_token_and_across_restarts() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let xdg = t.join("xdg");
    let store = t.join("store");
    let store = store.to_str().unwrap();
    let data = t.join("data");
    let sk = SigningKey::from_seed("cairn-daemon-test-1", &[3; 32]).unwrap();
    let pk: VerifyingKey = sk.to_verifying_key();
    std::fs::write(t.join("sk"), sk.to_string()).unwrap();
    std::fs::write(t.join("token"), "tok3n\n").unwrap();
    let flags = [
        "--sign-key",
        t.join("sk").to_str().unwrap(),
        "--upload-token-file",
        t.join("token").to_str().unwrap(),
    ]
    .map(str::to_owned);
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();

    let mut paths = Vec::new();
    for name in ["one", "two"] {
        let src = t.join(name);
        std::fs::create_dir_all(src.join("d")).unwrap();
        std::fs::write(src.join("d/f"), format!("{name}\n")).unwrap();
        let p = ok(nix(&xdg, "nix-store")
            .args(["--store", store, "--add"])
            .arg(&src));
        paths.push(p.trim().to_owned());
    }
    let file_cache = t.join("file-cache");
    ok(nix(&xdg, "nix").args([
        "copy",
        "--store",
        store,
        "--to",
        &format!("file://{}?compression=xz", file_cache.display()),
        &paths[1],
    ]));

    let (daemon, url) = start(&data, &flags);
    let host = url
        .trim_start_matches("http://")
        .split(':')
        .next()
        .unwrap()
        .to_owned();
    std::fs::write(
        t.join("netrc"),
        format!("machine {host} login nix password tok3n\n"),
    )
    .unwrap();
    // nix copy --to with the token from a netrc.
    ok(nix(&xdg, "nix").args([
        "copy",
        "--option",
        "netrc-file",
        t.join("netrc").to_str().unwrap(),
        "--store",
        store,
        "--to",
        &url,
        &paths[0],
    ]));
    // The second path's NAR only, then a restart.
    let hash = |p: &str| p["/nix/store/".len().."/nix/store/".len() + 32].to_owned();
    let ni_text =
        std::fs::read_to_string(file_cache.join(format!("{}.narinfo", hash(&paths[1])))).unwrap();
    let nar_rel = ni_text
        .lines()
        .find_map(|l| l.strip_prefix("URL: "))
        .unwrap()
        .to_owned();
    let nar_file = file_cache.join(&nar_rel);
    let at = format!("@{}", nar_file.display());
    let (code, body) = curl(&[
        "-X",
        "PUT",
        "-H",
        "Authorization: Bearer tok3n",
        "--data-binary",
        &at,
        &format!("{url}/{nar_rel}"),
    ]);
    assert_eq!(code, 201, "{body}");
    stop(daemon);

    let (daemon, url) = start(&data, &flags);
    std::fs::write(t.join("ni"), &ni_text).unwrap();
    let at = format!("@{}", t.join("ni").display());
    let ni_url = format!("{url}/{}.narinfo", hash(&paths[1]));
    let (code, _) = curl(&["-X", "PUT", "--data-binary", &at, &ni_url]);
    assert_eq!(code, 401, "no token");
    let (code, body) = curl(&["-X", "PUT", "-u", "x:tok3n", "--data-binary", &at, &ni_url]);
    assert_eq!(code, 201, "{body}");

    // Both paths are there, described as in the source store, signed by the key.
    for p in &paths {
        let (code, text) = curl(&[&format!("{url}/{}.narinfo", hash(p))]);
        assert_eq!(code, 200);
        let ni = NarInfo::parse(&text).unwrap();
        assert_eq!(ni.verify(std::slice::from_ref(&pk)), 1, "{text}");
        let remote = ok(nix(&xdg, "nix").args(["path-info", "--store", &url, "--json", p]));
        let local = ok(nix(&xdg, "nix").args(["path-info", "--store", store, "--json", p]));
        let pick = |s: &str| {
            let v: serde_json::Value = serde_json::from_str(s).unwrap();
            let o = &v[0];
            (
                o["path"].clone(),
                o["narHash"].clone(),
                o["narSize"].clone(),
                o["references"].clone(),
                o["ca"].clone(),
            )
        };
        assert_eq!(pick(&remote), pick(&local));
    }
    // And they can be copied back out, contents checked by Nix.
    let fresh = t.join("fresh");
    ok(nix(&xdg, "nix").args([
        "copy",
        "--option",
        "trusted-public-keys",
        &pk.to_string(),
        "--from",
        &url,
        "--to",
        fresh.to_str().unwrap(),
        &paths[0],
        &paths[1],
    ]));
    ok(nix(&xdg, "nix").args([
        "store",
        "verify",
        "--store",
        fresh.to_str().unwrap(),
        "--no-trust",
        &paths[0],
        &paths[1],
    ]));
    stop(daemon);

    // --no-http: no binary cache.
    let mut child = Command::new(env!("CARGO_BIN_EXE_cairn"))
        .args([
            "daemon",
            "--listen",
            "127.0.0.1:0",
            "--no-http",
            "--no-socket",
            "--data-dir",
        ])
        .arg(&data)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let daemon = Daemon(Some(child), None);
    let mut line = String::new();
    stderr.read_line(&mut line).unwrap();
    std::thread::spawn(move || std::io::copy(&mut stderr, &mut std::io::sink()));
    assert!(line.contains("grpc+http://"), "{line}");
    assert!(!line.contains("binary cache"), "{line}");
    stop(daemon);
}

#[test]
fn read_token_file_makes_the_cache_private() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    std::fs::write(t.join("read"), "r34d\n").unwrap();
    std::fs::write(t.join("upload"), "upl0ad\n").unwrap();
    std::fs::write(t.join("empty"), " \n").unwrap();
    let arg = |name: &str| t.join(name).to_str().unwrap().to_owned();
    let (read, upload) = (arg("read"), arg("upload"));
    let (daemon, url) = start(
        &t.join("data"),
        &["--read-token-file", &read, "--upload-token-file", &upload],
    );
    for path in ["nix-cache-info", "00000000000000000000000000000000.narinfo"] {
        let u = format!("{url}/{path}");
        let (code, _) = curl(&[&u]);
        assert_eq!(code, 401, "{path} without a token");
        let (code, _) = curl(&["-u", "x:wrong", &u]);
        assert_eq!(code, 401, "{path} with a wrong token");
        let want = if path == "nix-cache-info" { 200 } else { 404 };
        for user in ["x:r34d", "x:upl0ad"] {
            let (code, _) = curl(&["-u", user, &u]);
            assert_eq!(code, want, "{path} as {user}");
        }
    }
    stop(daemon);

    // An empty token file is refused at start, saying which.
    let out = daemon_cmd(&t.join("data"), &["--read-token-file", &arg("empty")])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("read token file") && err.contains("is empty"),
        "{err}"
    );
}

#[test]
fn access_log_names_each_request() {
    let tmp = tempfile::tempdir().unwrap();
    let mut cmd = daemon_cmd(&tmp.path().join("data"), &[]);
    cmd.env("RUST_LOG", "cairn_cache::access=debug");
    let (daemon, url) = spawn(cmd);
    let missing = "/00000000000000000000000000000000.narinfo";
    // One request on the narinfo fast path, one through the router.
    assert_eq!(curl(&[&format!("{url}{missing}")]).0, 404);
    assert_eq!(curl(&[&format!("{url}/nix-cache-info")]).0, 200);
    let log = stop(daemon);
    let line = |path: &str| {
        log.lines()
            .find(|l| l.contains(&format!("path=\"{path}\"")))
            .unwrap_or_else(|| panic!("no access log line for {path}:\n{log}"))
            .to_owned()
    };
    let host = url.trim_start_matches("http://").split(':').next().unwrap();
    for (path, status) in [(missing, 404), ("/nix-cache-info", 200)] {
        let l = line(path);
        for want in [
            "cairn_cache::access".to_owned(),
            "method=\"GET\"".to_owned(),
            format!("status={status}"),
            format!("peer={host}:"),
        ] {
            assert!(l.contains(&want), "{want} not in {l:?}");
        }
        assert!(
            !l.contains('\x1b'),
            "colour codes in a log that is not a terminal: {l:?}"
        );
    }
}
