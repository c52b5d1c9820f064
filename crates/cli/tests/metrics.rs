//! `cairn daemon`'s Prometheus metrics as an operator scrapes them: real traffic
//! (the real Nix's `nix copy --to http://`, curl, `cairn` commands over gRPC),
//! then `GET /metrics`, parsed by the Python `prometheus_client` package's
//! OpenMetrics parser, with exact counts asserted. Also where /metrics is served
//! (`--metrics-listen`, `--no-metrics`), a private cache's token on it, and
//! `--log-format json`. Needs Nix, curl and the test venv
//! (`scripts/install-test-deps.sh`).
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead as _, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};

use common::{start_daemon_with, stop_daemon};

/// The binary cache's address in the daemon's first line.
fn http_addr(line: &str) -> String {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix("http://"))
        .unwrap_or_else(|| panic!("no binary cache address in {line:?}"))
        .trim_end_matches(',')
        .to_string()
}

/// curl `args`: status and body.
fn curl(args: &[&str]) -> (u16, String) {
    let out = Command::new("curl")
        .args(["-sS", "-o", "-", "-w", "\n%{http_code}"])
        .args(args)
        .output()
        .unwrap();
    assert!(out.status.success(), "curl {args:?}: {out:?}");
    let out = String::from_utf8(out.stdout).unwrap();
    let (body, code) = out.rsplit_once('\n').unwrap();
    (code.parse().unwrap(), body.to_owned())
}

/// One scrape: (sample name, labels) -> value.
struct Scrape(BTreeMap<(String, BTreeMap<String, String>), f64>);

impl Scrape {
    /// The value of `name{labels}`, 0 if absent (a counter not yet created).
    fn get(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let labels = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        self.0
            .get(&(name.to_owned(), labels))
            .copied()
            .unwrap_or(0.0)
    }
}

/// Parses an exposition with the Python `prometheus_client` OpenMetrics parser
/// (strict: a malformed line, a missing `# EOF`, a counter sample without
/// `_total`... fail it).
fn parse(text: &str) -> Scrape {
    let venv = std::env::var("CAIRN_TEST_VENV").unwrap_or_else(|_| "/opt/cairn-test-venv".into());
    let script = r#"
import json, sys
from prometheus_client.openmetrics.parser import text_string_to_metric_families
out = []
for fam in text_string_to_metric_families(sys.stdin.read()):
    for s in fam.samples:
        out.append([s.name, s.labels, s.value])
print(json.dumps(out))
"#;
    let out = common::run(
        Command::new(format!("{venv}/bin/python3")).args(["-c", script]),
        Some(text.as_bytes()),
    );
    assert!(
        out.status.success(),
        "the exposition does not parse: {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    let samples: Vec<(String, BTreeMap<String, String>, f64)> =
        serde_json::from_slice(&out.stdout).unwrap();
    Scrape(samples.into_iter().map(|(n, l, v)| ((n, l), v)).collect())
}

/// GET `url` (a /metrics URL) and parse it.
fn scrape(url: &str) -> Scrape {
    let (code, body) = curl(&[url]);
    assert_eq!(code, 200, "{body}");
    parse(&body)
}

fn nix(xdg: &Path, prog: &str) -> Command {
    cairn_testkit::nix::command(prog, xdg)
}

/// Adds a small tree named `name` to the local Nix store `store`.
fn add_path(xdg: &Path, store: &str, t: &Path, name: &str) -> String {
    let src = t.join(name);
    std::fs::create_dir_all(src.join("d")).unwrap();
    std::fs::write(src.join("d/f"), format!("{name}\n")).unwrap();
    cairn_testkit::nix::ok(
        nix(xdg, "nix-store")
            .args(["--store", store, "--add"])
            .arg(&src),
    )
    .trim()
    .to_owned()
}

fn hash_part(path: &str) -> &str {
    &path["/nix/store/".len().."/nix/store/".len() + 32]
}

const REQUESTS: &str = "cairn_http_requests_total";
const GRPC_CALLS: &str = "cairn_grpc_calls_total";

#[test]
fn metrics_count_real_traffic() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let (xdg, store) = (t.join("xdg"), t.join("store"));
    let store = store.to_str().unwrap();
    let (daemon, grpc, line) = start_daemon_with(
        &t.join("data"),
        &["--allow-anonymous-uploads", "--no-socket"],
    );
    let http = http_addr(&line);
    let metrics = format!("http://{http}/metrics");

    // Two paths uploaded by the real Nix.
    let paths: Vec<String> = ["one", "two"]
        .iter()
        .map(|n| add_path(&xdg, store, t, n))
        .collect();
    cairn_testkit::nix::ok(
        nix(&xdg, "nix")
            .args(["copy", "--store", store, "--to"])
            .arg(format!("http://{http}"))
            .args(&paths),
    );
    let m0 = scrape(&metrics);
    for kind in ["nar", "narinfo"] {
        assert_eq!(
            m0.get("cairn_http_uploads_accepted_total", &[("kind", kind)]),
            2.0,
            "{kind}"
        );
    }
    assert_eq!(m0.get("cairn_store_paths", &[]), 2.0);
    assert!(m0.get("cairn_store_chunks", &[]) >= 2.0);
    assert!(m0.get("cairn_store_directories", &[]) >= 2.0);
    assert!(m0.get("cairn_store_disk_bytes", &[]) > 0.0);
    assert!(m0.get("cairn_http_received_bytes_total", &[]) > 0.0);

    // Narinfos: 5 on the fast path, 1 through hyper (Connection: close is not
    // the fast path's), and one 404.
    let ni_url = format!("http://{http}/{}.narinfo", hash_part(&paths[0]));
    let mut body_len = 0;
    for _ in 0..5 {
        let (code, body) = curl(&[&ni_url]);
        assert_eq!(code, 200);
        body_len += body.len() + 1;
    }
    let (code, _) = curl(&["-H", "Connection: close", &ni_url]);
    assert_eq!(code, 200);
    let (code, _) = curl(&[&format!("http://{http}/{}.narinfo", "0".repeat(32))]);
    assert_eq!(code, 404);
    let (code, _) = curl(&[&format!("http://{http}/nix-cache-info")]);
    assert_eq!(code, 200);

    // Refused uploads: a NAR under another file hash, a narinfo that is not one.
    let nar = cairn_testkit::nix::ok_bytes(nix(&xdg, "nix-store").arg("--dump").arg(t.join("one")));
    std::fs::write(t.join("nar"), &nar).unwrap();
    let wrong = "1".repeat(52);
    let (code, body) = curl(&[
        "-X",
        "PUT",
        "--data-binary",
        &format!("@{}", t.join("nar").display()),
        &format!("http://{http}/nar/{wrong}.nar"),
    ]);
    assert_eq!(code, 400, "{body}");
    let (code, body) = curl(&[
        "-X",
        "PUT",
        "--data-binary",
        "not a narinfo",
        &format!("http://{http}/{}.narinfo", "0".repeat(32)),
    ]);
    assert_eq!(code, 400, "{body}");

    // gRPC: a path info found and one not found, through `cairn path-info`.
    let info = |p: &str| common::cairn(&["path-info", "--store", &grpc, p], None);
    assert!(info(&paths[1]).status.success());
    assert!(
        !info(&format!("/nix/store/{}-nope", "0".repeat(32)))
            .status
            .success()
    );

    let m = scrape(&metrics);
    let d = |name: &str, labels: &[(&str, &str)]| m.get(name, labels) - m0.get(name, labels);
    assert_eq!(d(REQUESTS, &[("route", "narinfo"), ("status", "200")]), 6.0);
    assert_eq!(d(REQUESTS, &[("route", "narinfo"), ("status", "404")]), 1.0);
    assert_eq!(
        d(REQUESTS, &[("route", "nix-cache-info"), ("status", "200")]),
        1.0
    );
    assert_eq!(
        d(
            "cairn_http_request_duration_seconds_count",
            &[("route", "narinfo")]
        ),
        7.0
    );
    assert_eq!(
        d(REQUESTS, &[("route", "upload_nar"), ("status", "400")]),
        1.0
    );
    assert_eq!(
        d(REQUESTS, &[("route", "upload_narinfo"), ("status", "400")]),
        1.0
    );
    assert_eq!(
        d(
            "cairn_http_uploads_refused_total",
            &[("kind", "nar"), ("reason", "hash_mismatch")]
        ),
        1.0
    );
    assert_eq!(
        d(
            "cairn_http_uploads_refused_total",
            &[("kind", "narinfo"), ("reason", "bad_request")]
        ),
        1.0
    );
    // The first scrape is counted by the second.
    assert_eq!(d(REQUESTS, &[("route", "metrics"), ("status", "200")]), 1.0);
    assert!(d("cairn_http_sent_bytes_total", &[]) >= body_len as f64);
    assert!(d("cairn_http_received_bytes_total", &[]) >= nar.len() as f64);
    // Signed and formatted once, then kept.
    assert!(d("cairn_narinfo_render_cache_hits_total", &[]) >= 5.0);

    let pi = |code: &str| {
        d(
            GRPC_CALLS,
            &[
                ("service", "tvix.store.v1.PathInfoService"),
                ("method", "Get"),
                ("code", code),
            ],
        )
    };
    assert_eq!(pi("OK"), 1.0);
    assert_eq!(pi("NOT_FOUND"), 1.0);
    assert_eq!(
        d(
            "cairn_grpc_call_duration_seconds_count",
            &[
                ("service", "tvix.store.v1.PathInfoService"),
                ("method", "Get")
            ]
        ),
        2.0
    );
    // The path info cache saw every lookup: HTTP and gRPC share it.
    let lookups = m.get("cairn_path_info_cache_hits_total", &[])
        + m.get("cairn_path_info_cache_misses_total", &[]);
    assert!(lookups >= 9.0, "{lookups}");
    stop_daemon(daemon);
}

/// The address of `--metrics-listen` in the daemon's first line.
fn metrics_addr(line: &str) -> String {
    line.split_whitespace()
        .filter_map(|w| w.strip_prefix("http://"))
        .find_map(|w| w.strip_suffix("/metrics"))
        .unwrap_or_else(|| panic!("no metrics address in {line:?}"))
        .to_string()
}

#[test]
fn metrics_where_served_and_private_cache() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();

    // Their own listener: not on the cache's.
    let (daemon, _, line) = start_daemon_with(
        &t.join("a"),
        &["--no-socket", "--metrics-listen", "127.0.0.1:0"],
    );
    let own = metrics_addr(&line);
    let http = http_addr(&line);
    assert_eq!(curl(&[&format!("http://{http}/metrics")]).0, 404);
    let m = scrape(&format!("http://{own}/metrics"));
    assert_eq!(m.get("cairn_store_paths", &[]), 0.0);
    assert_eq!(
        m.get(REQUESTS, &[("route", "metrics"), ("status", "404")]),
        1.0,
        "the cache's 404 for /metrics is counted"
    );
    stop_daemon(daemon);

    // --no-metrics: nowhere.
    let (daemon, _, line) = start_daemon_with(&t.join("b"), &["--no-socket", "--no-metrics"]);
    assert_eq!(
        curl(&[&format!("http://{}/metrics", http_addr(&line))]).0,
        404
    );
    stop_daemon(daemon);

    // A private cache: its read token for /metrics too.
    std::fs::write(t.join("read"), "r34d\n").unwrap();
    let read = t.join("read");
    let (daemon, _, line) = start_daemon_with(
        &t.join("c"),
        &["--no-socket", "--read-token-file", read.to_str().unwrap()],
    );
    let url = format!("http://{}/metrics", http_addr(&line));
    assert_eq!(curl(&[&url]).0, 401);
    assert_eq!(curl(&["-H", "Authorization: Bearer wrong", &url]).0, 401);
    let (code, body) = curl(&["-H", "Authorization: Bearer r34d", &url]);
    assert_eq!(code, 200, "{body}");
    let m = parse(&body);
    assert_eq!(
        m.get(REQUESTS, &[("route", "metrics"), ("status", "401")]),
        2.0
    );
    stop_daemon(daemon);
}

#[test]
fn json_logs() {
    let tmp = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_cairn"))
        .args(["--log-format", "json", "daemon", "--listen", "127.0.0.1:0"])
        .args(["--http-listen", "127.0.0.1:0", "--no-socket", "--data-dir"])
        .arg(tmp.path())
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut found = None;
    for _ in 0..20 {
        let mut line = String::new();
        if stderr.read_line(&mut line).unwrap() == 0 {
            break;
        }
        if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line)
            && v["fields"]["message"] == "serving"
        {
            found = Some(v);
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    let v = found.expect("no JSON \"serving\" event on stderr");
    assert_eq!(v["level"], "INFO");
    assert!(
        v["fields"]["tcp_addr"]
            .as_str()
            .unwrap()
            .starts_with("127.0.0.1:")
    );
}
