//! The binary cache bench's two halves (driven by `bench/cache.sh`):
//!
//! - `cache_bench serve DATA_DIR PORT_FILE [SIGN_KEY_FILE]`: a cairn binary cache
//!   over the embedded store in DATA_DIR (`redb://`), on 127.0.0.1 (free port
//!   written to PORT_FILE), until killed; path infos cached in memory as `cairn
//!   daemon` does (NARINFO_CACHE=entries, 0 for none).
//! - `cache_bench narinfo URL SECONDS CONNECTIONS HASH...`: closed-loop keep-alive
//!   load on `GET /<hash>.narinfo` (hashes round-robin; each connection sends its
//!   next request when the last one's answer has arrived): the maximum
//!   requests/s, and p50/p99/max latency at that throughput, which with several
//!   connections is mostly the time a request waits behind the others.
//! - `cache_bench narinfo-rate URL SECONDS CONNECTIONS RATE HASH...`: open-loop
//!   load as wrk2 makes it: RATE requests/s in all, request `k` of a connection
//!   scheduled at a fixed time (connections staggered), and its latency measured
//!   from that scheduled time, not from when it was sent. A request that waits
//!   for the previous answer on its connection, or for a late timer, counts that
//!   wait, so a stall shows in the latency of every request it delayed
//!   (coordinated omission corrected). The connections are driven from
//!   GEN_THREADS (default 1) epoll loops with a timerfd each (see `open_loop`);
//!   how late a request went out whose connection was idle at its time is
//!   printed as `timer lag`.
//! - `cache_bench nar URL PATH CONNECTIONS ROUNDS`: each connection GETs the NAR
//!   at URL/PATH ROUNDS times over one keep-alive connection: aggregate MB/s.
//!
//! - `cache_bench inproc MIB`: memory services in this process, one path whose
//!   NAR is a MIB-MiB file of random bytes and 200 small paths; measures the store
//!   alone (render the NAR; get + sign + format a narinfo) and the same through
//!   HTTP on loopback, so that the HTTP layer's own cost shows as a ratio whatever
//!   the machine's load.
//!
//! The client is a minimal HTTP/1.1 client over one TCP connection (GET,
//! `Content-Length` bodies only), so that its own cost stays small.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod open_loop;

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

/// The value at quantile `q` of sorted nanoseconds, in microseconds.
fn quantile_us(sorted: &[u64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() as f64 * q) as usize).min(sorted.len() - 1)] as f64 / 1000.0
}

fn narinfo_rate(url: String, secs: u64, conns: usize, rate: f64, hashes: Vec<String>) {
    let threads = std::env::var("GEN_THREADS").map_or(1, |v| v.parse().unwrap());
    let load = open_loop::Load {
        addr: host_of(&url),
        secs,
        conns,
        rate,
        threads,
        paths: hashes.iter().map(|h| format!("/{h}.narinfo")).collect(),
    };
    let mut all = open_loop::run(&load);
    // The last requests may end after the schedule did: count until the last answer.
    let elapsed = all.end.saturating_sub(all.start) as f64 / 1e9;
    for v in [&mut all.latency, &mut all.service, &mut all.lag] {
        v.sort_unstable();
    }
    let l = &all.latency;
    println!(
        "narinfo open loop: {conns} connections ({threads} generator thread(s), epoll), target {rate:.0} req/s, done {:.0} req/s ({} requests in {elapsed:.1} s): latency from schedule p50 {:.0} us, p90 {:.0} us, p99 {:.0} us, p99.9 {:.0} us, max {:.0} us; service time p50 {:.0} us, p99 {:.0} us; timer lag p50 {:.0} us, p99 {:.0} us",
        l.len() as f64 / elapsed,
        l.len(),
        quantile_us(l, 0.5),
        quantile_us(l, 0.9),
        quantile_us(l, 0.99),
        quantile_us(l, 0.999),
        quantile_us(l, 1.0),
        quantile_us(&all.service, 0.5),
        quantile_us(&all.service, 0.99),
        quantile_us(&all.lag, 0.5),
        quantile_us(&all.lag, 0.99),
    );
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
    // As `cairn daemon` serves the embedded store. NARINFO_CACHE=0 measures without.
    let entries = std::env::var("NARINFO_CACHE").map_or(65_536, |v| v.parse().unwrap());
    let infos: Arc<dyn cairn_store::pathinfo::PathInfoService> = Arc::new(
        cairn_store::pathinfo::CachingPathInfoService::new(infos, entries),
    );
    // bench/cache.sh uploads with `nix copy --to`, on loopback.
    let mut config = cairn_cache::CacheConfig {
        allow_anonymous_uploads: true,
        ..Default::default()
    };
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
    cairn_cache::serve(listener, Arc::new(cache), std::future::pending())
        .await
        .unwrap();
}

fn nar_string(out: &mut Vec<u8>, s: &[u8]) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s);
    out.resize(out.len() + (8 - s.len() % 8) % 8, 0);
}

/// The NAR of a single regular file with these contents.
fn file_nar(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() + 256);
    for t in [
        &b"nix-archive-1"[..],
        b"(",
        b"type",
        b"regular",
        b"contents",
    ] {
        nar_string(&mut out, t);
    }
    nar_string(&mut out, data);
    nar_string(&mut out, b")");
    out
}

async fn inproc(mib: usize) {
    use cairn_store::pathinfo::PathInfo;
    let blobs = cairn_castore::blob_service_from_addr("memory://").unwrap();
    let dirs = cairn_castore::directory_service_from_addr("memory://").unwrap();
    let infos = cairn_store::pathinfo::path_info_service_from_addr(
        "memory://",
        blobs.clone(),
        dirs.clone(),
    )
    .unwrap();
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    let data: Vec<u8> = (0..mib << 20)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    let mut hashes = Vec::new();
    let mut big = None;
    for i in 0..201 {
        let nar = if i == 0 {
            file_nar(&data)
        } else {
            file_nar(format!("path {i}\n").as_bytes())
        };
        let ing = cairn_store::nar::ingest(blobs.as_ref(), dirs.as_ref(), &nar[..])
            .await
            .unwrap();
        let digest = cairn_nix::hash::HashAlgo::Sha256.digest(format!("p{i}"));
        let sp = cairn_nix::store_path::StorePath::new(
            cairn_nix::store_path::compress_hash(digest.digest()),
            &format!("bench-{i}"),
        )
        .unwrap();
        let info = PathInfo {
            store_path: sp.clone(),
            node: ing.root,
            references: vec![],
            nar_size: ing.nar_size,
            nar_sha256: ing.nar_sha256,
            signatures: vec![],
            deriver: None,
            ca: None,
        };
        infos.put(info.clone()).await.unwrap();
        if i == 0 {
            big = Some(info);
        } else {
            hashes.push(sp.hash_part());
        }
    }
    let big = big.unwrap();
    let key: cairn_nix::signature::SigningKey =
        cairn_nix::signature::SigningKey::from_seed("bench-1", &[1; 32]).unwrap();

    // The store alone.
    let t = Instant::now();
    let mut r = cairn_store::nar::render(blobs.clone(), dirs.clone(), big.node.clone());
    let mut buf = vec![0u8; 256 * 1024];
    let mut n = 0u64;
    loop {
        let k = r.read(&mut buf).await.unwrap();
        if k == 0 {
            break;
        }
        n += k as u64;
    }
    let s = t.elapsed().as_secs_f64();
    println!(
        "store alone: render {:.0} MiB: {:.0} MB/s",
        n as f64 / 1048576.0,
        n as f64 / s / 1e6
    );
    let mut lat = Vec::new();
    let end = Instant::now() + Duration::from_secs(3);
    let mut i = 0;
    while Instant::now() < end {
        let t = Instant::now();
        let sp = cairn_nix::store_path::StorePath::from_basename(format!(
            "{}-x",
            hashes[i % hashes.len()]
        ))
        .unwrap();
        let info = infos.get(*sp.digest()).await.unwrap().unwrap();
        let mut ni = info.to_narinfo(
            "nar/x.nar".parse().unwrap(),
            "none".parse().unwrap(),
            Some(info.nar_hash()),
            Some(info.nar_size),
        );
        ni.sign(&key);
        std::hint::black_box(ni.to_string());
        lat.push(t.elapsed().as_nanos() as u64);
        i += 1;
    }
    lat.sort_unstable();
    println!(
        "store alone: narinfo get+sign+format p50 {:.0} us, p99 {:.0} us ({} done)",
        lat[lat.len() / 2] as f64 / 1000.0,
        lat[lat.len() * 99 / 100] as f64 / 1000.0,
        lat.len()
    );

    // The same through HTTP.
    let mut config = cairn_cache::CacheConfig::default();
    config.sign_keys.push(key);
    let cache = cairn_cache::BinaryCache::new(
        blobs,
        dirs,
        infos,
        cairn_cache::PendingUploads::in_memory().unwrap(),
        config,
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(cairn_cache::serve(
        listener,
        Arc::new(cache),
        std::future::pending(),
    ));
    narinfo(url.clone(), 3, 1, hashes.clone()).await;
    narinfo(url.clone(), 3, 8, hashes).await;
    let path = format!(
        "/nar/{}-{}.nar",
        big.store_path.hash_part(),
        cairn_nix::nixbase32::encode(&big.nar_sha256)
    );
    nar(url.clone(), path.clone(), 1, 2).await;
    nar(url, path, 16, 1).await;
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
        Some("narinfo-rate") if a.len() >= 6 => narinfo_rate(
            a[1].clone(),
            a[2].parse().unwrap(),
            a[3].parse().unwrap(),
            a[4].parse().unwrap(),
            a[5..].to_vec(),
        ),
        Some("inproc") if a.len() == 2 => rt.block_on(inproc(a[1].parse().unwrap())),
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
