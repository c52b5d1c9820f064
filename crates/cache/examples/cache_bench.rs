//! The binary cache bench's two halves (driven by `bench/cache.sh`):
//!
//! - `cache_bench serve DATA_DIR PORT_FILE [SIGN_KEY_FILE]`: a cairn binary cache
//!   over the embedded store in DATA_DIR (`redb://`), on 127.0.0.1 (free port
//!   written to PORT_FILE), until killed.
//! - `cache_bench narinfo URL SECONDS CONNECTIONS HASH...`: keep-alive load on
//!   `GET /<hash>.narinfo` (hashes round-robin): requests/s, p50/p99/max latency.
//! - `cache_bench nar URL PATH CONNECTIONS ROUNDS`: each connection GETs the NAR
//!   at URL/PATH ROUNDS times over one keep-alive connection: aggregate MB/s.
//!
//! The client is a minimal HTTP/1.1 client over one TCP connection (GET,
//! `Content-Length` bodies only), so that its own cost stays small.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

struct Conn {
    r: BufReader<tokio::net::tcp::OwnedReadHalf>,
    w: tokio::net::tcp::OwnedWriteHalf,
    host: String,
    line: String,
}

impl Conn {
    async fn open(addr: &str) -> Conn {
        let s = TcpStream::connect(addr).await.unwrap();
        s.set_nodelay(true).unwrap();
        let (r, w) = s.into_split();
        Conn {
            r: BufReader::with_capacity(256 * 1024, r),
            w,
            host: addr.to_owned(),
            line: String::new(),
        }
    }

    /// GETs `path`; returns the status and the body length, reading the body into
    /// `sink` chunk by chunk (not kept).
    async fn get(&mut self, path: &str, sink: &mut [u8]) -> (u16, u64) {
        let req = format!("GET {path} HTTP/1.1\r\nHost: {}\r\n\r\n", self.host);
        self.w.write_all(req.as_bytes()).await.unwrap();
        self.line.clear();
        self.r.read_line(&mut self.line).await.unwrap();
        let status: u16 = self
            .line
            .split(' ')
            .nth(1)
            .expect("status line")
            .parse()
            .unwrap();
        let mut len = None;
        loop {
            self.line.clear();
            self.r.read_line(&mut self.line).await.unwrap();
            let l = self.line.trim_end();
            if l.is_empty() {
                break;
            }
            if let Some((k, v)) = l.split_once(':')
                && k.eq_ignore_ascii_case("content-length")
            {
                len = Some(v.trim().parse::<u64>().unwrap());
            }
        }
        let len = len.expect("this client needs Content-Length");
        let mut left = len;
        while left > 0 {
            let n = sink.len().min(left as usize);
            let got = self.r.read(&mut sink[..n]).await.unwrap();
            assert!(got > 0, "connection closed mid-body");
            left -= got as u64;
        }
        (status, len)
    }
}

fn host_of(url: &str) -> String {
    url.trim_start_matches("http://")
        .trim_end_matches('/')
        .to_owned()
}

async fn narinfo(url: String, secs: u64, conns: usize, hashes: Vec<String>) {
    let addr = host_of(&url);
    let hashes = Arc::new(hashes);
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut tasks = Vec::new();
    for c in 0..conns {
        let (addr, hashes) = (addr.clone(), hashes.clone());
        tasks.push(tokio::spawn(async move {
            let mut conn = Conn::open(&addr).await;
            let mut sink = vec![0u8; 64 * 1024];
            let mut lat = Vec::with_capacity(1 << 20);
            let mut i = c;
            while Instant::now() < deadline {
                let path = format!("/{}.narinfo", hashes[i % hashes.len()]);
                i += 1;
                let t = Instant::now();
                let (status, _) = conn.get(&path, &mut sink).await;
                lat.push(t.elapsed().as_nanos() as u64);
                assert_eq!(status, 200, "{path}");
            }
            lat
        }));
    }
    let start = Instant::now();
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    let elapsed = start.elapsed().as_secs_f64();
    all.sort_unstable();
    let pct = |p: f64| all[((all.len() as f64 * p) as usize).min(all.len() - 1)] as f64 / 1000.0;
    println!(
        "narinfo: {conns} connections, {} requests in {elapsed:.1} s: {:.0} req/s, latency p50 {:.0} us, p99 {:.0} us, max {:.0} us",
        all.len(),
        all.len() as f64 / elapsed,
        pct(0.50),
        pct(0.99),
        pct(1.0),
    );
}

async fn nar(url: String, path: String, conns: usize, rounds: usize) {
    let addr = host_of(&url);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..conns {
        let (addr, path) = (addr.clone(), path.clone());
        tasks.push(tokio::spawn(async move {
            let mut conn = Conn::open(&addr).await;
            let mut sink = vec![0u8; 256 * 1024];
            let mut total = 0;
            for _ in 0..rounds {
                let (status, len) = conn.get(&path, &mut sink).await;
                assert_eq!(status, 200);
                total += len;
            }
            total
        }));
    }
    let mut bytes = 0u64;
    for t in tasks {
        bytes += t.await.unwrap();
    }
    let s = start.elapsed().as_secs_f64();
    println!(
        "nar: {conns} connections x {rounds} downloads, {:.0} MiB in {s:.2} s: {:.0} MB/s aggregate",
        bytes as f64 / (1 << 20) as f64,
        bytes as f64 / s / 1e6
    );
}

async fn serve(data: String, port_file: String, key: Option<String>) {
    let url = format!("redb://{data}");
    let blobs = cairn_castore::blob_service_from_addr(&url).unwrap();
    let dirs = cairn_castore::directory_service_from_addr(&url).unwrap();
    let infos =
        cairn_store::pathinfo::path_info_service_from_addr(&url, blobs.clone(), dirs.clone())
            .unwrap();
    let mut config = cairn_cache::CacheConfig::default();
    if let Some(k) = key {
        config
            .sign_keys
            .push(std::fs::read_to_string(k).unwrap().trim().parse().unwrap());
    }
    let pending = cairn_cache::PendingUploads::open(std::path::Path::new(&data)).unwrap();
    let cache = cairn_cache::BinaryCache::new(blobs, dirs, infos, pending, config);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    std::fs::write(format!("{port_file}.tmp"), port.to_string()).unwrap();
    std::fs::rename(format!("{port_file}.tmp"), &port_file).unwrap();
    cairn_cache::serve(
        listener,
        cairn_cache::router(Arc::new(cache)),
        std::future::pending(),
    )
    .await
    .unwrap();
}

fn main() {
    let a: Vec<String> = std::env::args().skip(1).collect();
    let rt = tokio::runtime::Runtime::new().unwrap();
    match a.first().map(String::as_str) {
        Some("serve") if a.len() >= 3 => {
            rt.block_on(serve(a[1].clone(), a[2].clone(), a.get(3).cloned()))
        }
        Some("narinfo") if a.len() >= 5 => rt.block_on(narinfo(
            a[1].clone(),
            a[2].parse().unwrap(),
            a[3].parse().unwrap(),
            a[4..].to_vec(),
        )),
        Some("nar") if a.len() == 5 => rt.block_on(nar(
            a[1].clone(),
            a[2].clone(),
            a[3].parse().unwrap(),
            a[4].parse().unwrap(),
        )),
        _ => {
            eprintln!("usage: see the doc comment of crates/cache/examples/cache_bench.rs");
            std::process::exit(2);
        }
    }
}
