//! Running `cairn daemon` as an operator does: a config file and
//! `--print-config`, readiness (store commands started together with the daemon
//! on a loaded machine never fail; systemd's `READY=1` and `STOPPING=1`), a
//! SIGTERM that lets requests in flight finish within `--shutdown-timeout`, and
//! the systemd unit under `contrib/`, checked by `systemd-analyze verify`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{
    cairn, cairn_at, daemon_command, first_line, http_addr, ok, start_daemon_with, stop_daemon,
    text,
};

fn curl(url: &str) -> String {
    let out = Command::new("curl")
        .args(["-s", "-w", "\n%{http_code}", url])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn config_file_sets_options_and_the_command_line_overrides_it() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let token = tmp.path().join("upload-token");
    std::fs::write(&token, "very-secret-token\n").unwrap();
    let config = tmp.path().join("cairn.toml");
    std::fs::write(
        &config,
        format!(
            "# a comment\ncache-priority = 7\nwant-mass-query = false\nupload-token-file = {:?}\nsign-key = []\nmax-nar-size = \"1G\"\n",
            token.display()
        ),
    )
    .unwrap();
    let cfg = config.to_str().unwrap();

    // The file's values are used...
    let (daemon, _, line) = start_daemon_with(&data, &["--config", cfg]);
    assert!(line.contains("uploads with the upload token"), "{line}");
    let info = curl(&format!("http://{}/nix-cache-info", http_addr(&line)));
    assert!(info.contains("Priority: 7\n"), "{info}");
    assert!(info.contains("WantMassQuery: 0\n"), "{info}");
    stop_daemon(daemon);
    // ...and the command line wins over them.
    let (daemon, _, line) = start_daemon_with(&data, &["--config", cfg, "--cache-priority", "9"]);
    let info = curl(&format!("http://{}/nix-cache-info", http_addr(&line)));
    assert!(info.contains("Priority: 9\n"), "{info}");
    stop_daemon(daemon);
    // gRPC and socket options too: no socket, and gRPC over TCP still serves.
    let sockless = tmp.path().join("sockless.toml");
    std::fs::write(&sockless, "no-socket = true\ngrpc-max-connections = 8\n").unwrap();
    let (daemon, grpc, line) = start_daemon_with(&data, &["--config", sockless.to_str().unwrap()]);
    assert!(!line.contains("grpc+unix://"), "{line}");
    assert!(!data.join("cairn.sock").exists());
    let file = tmp.path().join("file");
    std::fs::write(&file, b"through TCP").unwrap();
    let out = cairn(&["import", "--store", &grpc, file.to_str().unwrap()], None);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stop_daemon(daemon);

    // --print-config: the effective values, the token as its file, never its
    // contents; what it prints is a config file that gives the same again.
    let printed = text(ok(cairn(
        &[
            "daemon",
            "--config",
            cfg,
            "--http-listen",
            "127.0.0.1:9999",
            "--print-config",
        ],
        None,
    )));
    for want in [
        "cache-priority = 7\n",
        "want-mass-query = false\n",
        "http-listen = \"127.0.0.1:9999\"\n",
        "max-nar-size = \"1G\"\n",
        "no-socket = false\n",
        "# grpc-token-file = (unset)\n",
    ] {
        assert!(printed.contains(want), "{want:?} not in\n{printed}");
    }
    assert!(
        printed.contains(&format!("upload-token-file = {:?}", token.display())),
        "{printed}"
    );
    assert!(!printed.contains("very-secret-token"), "{printed}");
    let again = tmp.path().join("printed.toml");
    std::fs::write(&again, &printed).unwrap();
    let reprinted = text(ok(cairn(
        &[
            "daemon",
            "--config",
            again.to_str().unwrap(),
            "--print-config",
        ],
        None,
    )));
    assert_eq!(reprinted, printed);

    // Mistakes name the file, the line and the key, and start nothing.
    for (body, want) in [
        (
            "cache-priority = 1\nhttp-lisen = \"x\"\n",
            "line 2: http-lisen: unknown key",
        ),
        (
            "\nno-socket = 1\n",
            "line 2: no-socket: expected true or false",
        ),
        (
            "cache-priority = \"high\"\n",
            "line 1: cache-priority: invalid value 'high'",
        ),
        (
            "sign-key = {a = 1}\n",
            "line 1: sign-key: expected a string",
        ),
        ("cache-priority = \n", "line 1"),
    ] {
        std::fs::write(&config, body).unwrap();
        let out = cairn_at(&data, &["daemon", "--config", cfg], None);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{body:?} was accepted");
        assert!(err.contains(cfg) && err.contains(want), "{body:?}: {err}");
        assert!(!err.contains("serving"), "{err}");
    }
    let out = cairn(&["daemon", "--config", "/no/such/file.toml"], None);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("cannot read config file /no/such/file.toml"),
        "{err}"
    );
}

fn sigterm(child: &Child) {
    assert!(
        Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap()
            .success()
    );
}

/// Keeps every core busy until dropped, as a loaded machine would be.
struct Load(
    std::sync::Arc<std::sync::atomic::AtomicBool>,
    Vec<std::thread::JoinHandle<()>>,
);

impl Load {
    fn start() -> Self {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let n = std::thread::available_parallelism().map_or(2, |n| n.get()) * 2;
        let threads = (0..n)
            .map(|_| {
                let stop = stop.clone();
                std::thread::spawn(move || {
                    let mut x = 1u64;
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
                        std::hint::black_box(x);
                    }
                })
            })
            .collect();
        Load(stop, threads)
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.0.store(true, std::sync::atomic::Ordering::Relaxed);
        for t in self.1.drain(..) {
            let _ = t.join();
        }
    }
}

/// Store commands started together with the daemon, on a loaded machine, all
/// succeed: before the daemon locks the data directory they open it themselves
/// (and the daemon waits for them), after it they wait for its socket. The
/// daemon's "serving" line comes with systemd's READY=1, after every listener
/// is bound, and SIGTERM sends STOPPING=1.
#[test]
fn commands_racing_a_starting_daemon_never_fail() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let file = tmp.path().join("file");
    std::fs::write(&file, b"hello readiness").unwrap();
    let path = text(ok(cairn_at(
        &data,
        &["import", file.to_str().unwrap()],
        None,
    )));
    let path = path.trim();
    let notify_path = tmp.path().join("notify.sock");
    let notify = std::os::unix::net::UnixDatagram::bind(&notify_path).unwrap();
    notify
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let _load = Load::start();
    for round in 0..3 {
        let mut daemon = daemon_command(&data, &[])
            .env("NOTIFY_SOCKET", &notify_path)
            .spawn()
            .unwrap();
        let started = Instant::now();
        // Commands from the moment the daemon was started until well after it
        // is ready (its first line comes while they run).
        let mut runs = 0;
        while runs < 6 || started.elapsed() < Duration::from_secs(2) {
            let out = cairn_at(&data, &["dump", path], None);
            assert!(
                out.status.success(),
                "round {round}, run {runs}: dump: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            let out = cairn_at(&data, &["import", file.to_str().unwrap()], None);
            assert!(
                out.status.success(),
                "round {round}, run {runs}: import: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), path);
            runs += 1;
            assert!(
                runs < 200,
                "commands kept running for {:?}",
                started.elapsed()
            );
        }
        let line = first_line(&mut daemon);
        assert!(
            line.starts_with("cairn daemon: serving grpc+http://"),
            "{line}"
        );
        let mut buf = [0u8; 64];
        let n = notify.recv(&mut buf).expect("no READY=1 from the daemon");
        assert_eq!(&buf[..n], b"READY=1");
        // Ready means every listener is bound: the socket and both ports answer.
        assert!(data.join("cairn.sock").exists());
        assert!(curl(&format!("http://{}/nix-cache-info", http_addr(&line))).ends_with("200"));
        sigterm(&daemon);
        let n = notify
            .recv(&mut buf)
            .expect("no STOPPING=1 from the daemon");
        assert_eq!(&buf[..n], b"STOPPING=1");
        assert!(daemon.wait().unwrap().success());
        assert!(!data.join("cairn.sock").exists());
    }
}

/// A command that finds the data directory locked, with no daemon socket to
/// use, waits for the lock and then fails saying what holds it.
#[test]
fn a_locked_data_directory_is_waited_for_then_named() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    // A daemon without a socket holds the lock and offers no way in.
    let (daemon, _, _) = start_daemon_with(&data, &["--no-socket"]);
    let started = Instant::now();
    let out = cairn_at(&data, &["verify"], None);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        started.elapsed() >= Duration::from_secs(10),
        "gave up after {:?}",
        started.elapsed()
    );
    assert!(
        err.contains(&format!(
            "data directory {} stayed in use by another process",
            data.display()
        )),
        "{err}"
    );
    assert!(err.contains("cairn.sock"), "{err}");
    stop_daemon(daemon);
}

/// SIGTERM lets a request in flight finish (a slow NAR upload completes and is
/// answered), and --shutdown-timeout bounds the wait.
#[test]
fn sigterm_drains_requests_in_flight_within_the_timeout() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let file = tmp.path().join("content");
    std::fs::write(&file, cairn_testkit::data::pseudo_random(4 << 20, 1)).unwrap();
    let nar = tmp.path().join("upload.nar");
    std::fs::write(
        &nar,
        ok(cairn(&["nar", "dump", file.to_str().unwrap()], None)),
    )
    .unwrap();
    let sha = text(ok(cairn(&["nar", "hash", file.to_str().unwrap()], None)));
    let sha = sha.trim();
    let upload = |http: &str| -> Child {
        Command::new("curl")
            .args([
                "-s",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                "--limit-rate",
                "1M",
                "-X",
                "PUT",
                "--data-binary",
            ])
            .arg(format!("@{}", nar.display()))
            .arg(format!("http://{http}/nar/{sha}.nar"))
            .stdout(Stdio::piped())
            .spawn()
            .unwrap()
    };
    for (timeout, drained) in [("30", true), ("1", false)] {
        let mut daemon = daemon_command(
            &data,
            &["--allow-anonymous-uploads", "--shutdown-timeout", timeout],
        )
        .spawn()
        .unwrap();
        let line = first_line(&mut daemon);
        let client = upload(&http_addr(&line));
        std::thread::sleep(Duration::from_millis(1000));
        let stopping = Instant::now();
        sigterm(&daemon);
        let status = daemon.wait().unwrap();
        let took = stopping.elapsed();
        let answer = client.wait_with_output().unwrap();
        let code = String::from_utf8_lossy(&answer.stdout).into_owned();
        assert!(status.success(), "{status}");
        if drained {
            assert_eq!(code, "201", "the upload was not answered");
            assert!(took >= Duration::from_secs(2), "stopped after {took:?}");
        } else {
            // Cut off: no final answer (curl shows the 100 Continue it had, or 000).
            assert!(
                code == "000" || code == "100",
                "the upload was answered: {code}"
            );
            assert!(took < Duration::from_secs(3), "stopped after {took:?}");
        }
    }
}

/// The unit file under contrib/ passes `systemd-analyze verify` without a
/// warning (it reports unknown keys and bad values as warnings, with exit 0),
/// and the example config file is one `cairn daemon` reads.
#[test]
fn contrib_unit_and_config_are_valid() {
    let contrib = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../contrib");
    let unit = std::fs::read_to_string(contrib.join("cairn.service")).unwrap();
    assert!(
        unit.contains("ExecStart=/usr/local/bin/cairn daemon "),
        "{unit}"
    );
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("cairn.service");
    // verify checks that the program exists: the one under test.
    std::fs::write(
        &path,
        unit.replace("/usr/local/bin/cairn", env!("CARGO_BIN_EXE_cairn")),
    )
    .unwrap();
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&path)
        .output()
        .expect("systemd-analyze (Debian's systemd package; ./test.sh installs it)");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success() && said.trim().is_empty(), "{said}");

    let config = contrib.join("cairn.toml");
    let printed = text(ok(cairn(
        &[
            "daemon",
            "--config",
            config.to_str().unwrap(),
            "--print-config",
        ],
        None,
    )));
    assert!(
        printed.contains("http-listen = \"0.0.0.0:9000\"\n"),
        "{printed}"
    );
    assert!(
        printed.contains("listen = \"127.0.0.1:8000\"\n"),
        "{printed}"
    );
}
