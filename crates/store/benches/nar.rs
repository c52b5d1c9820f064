//! Throughput of NAR ingest and render, in process, on the memory and embedded
//! backends: one large file (default 256 MiB; `CAIRN_BENCH_NAR_MIB` to change) and
//! 10k small files (0..4 KiB, 100 directories; also through the gRPC clients of a
//! memory-backed server on loopback TCP). Each ingest goes into a fresh store
//! (so the embedded store really compresses and writes every chunk); renders read
//! a store ingested once. File bytes are pseudo-random (incompressible).
#![allow(missing_docs, clippy::unwrap_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use cairn_castore::{BlobService, DirectoryService, Node};
use cairn_nix::nar::Writer;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// Deterministic incompressible bytes.
fn fill(seed: u64, buf: &mut [u8]) {
    let mut x = seed.wrapping_mul(0x9E3779B97F4A7C15) | 1;
    for chunk in buf.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let b = x.to_le_bytes();
        chunk.copy_from_slice(&b[..chunk.len()]);
    }
}

fn big_nar(len: u64) -> Vec<u8> {
    let mut data = vec![0u8; len as usize];
    fill(7, &mut data);
    let mut w = Writer::new(Vec::with_capacity(len as usize + 200));
    w.file(false, len, &mut &data[..]).unwrap();
    w.finish().unwrap()
}

fn small_nar() -> Vec<u8> {
    let mut w = Writer::new(Vec::new());
    let mut buf = vec![0u8; 4096];
    w.directory().unwrap();
    for d in 0..100u64 {
        w.entry(format!("d{d:03}").as_bytes()).unwrap();
        w.directory().unwrap();
        for f in 0..100u64 {
            let n = d * 100 + f;
            let size = ((n * 2654435761) % 4096) as usize;
            fill(n, &mut buf[..size]);
            w.entry(format!("f{f:03}").as_bytes()).unwrap();
            w.file(n % 9 == 0, size as u64, &mut &buf[..size]).unwrap();
        }
        w.end_directory().unwrap();
    }
    w.end_directory().unwrap();
    w.finish().unwrap()
}

struct Backend {
    blobs: Arc<dyn BlobService>,
    dirs: Arc<dyn DirectoryService>,
    _dir: Option<tempfile::TempDir>,
    _server: Option<Server>,
}

struct Server(tokio::task::JoinHandle<()>);

impl Drop for Server {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn backend(rt: &tokio::runtime::Runtime, kind: &str) -> Backend {
    match kind {
        "grpc" => rt.block_on(async {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let port = listener.local_addr().unwrap().port();
            let (routes, _) = cairn_castore::server::routes(
                Arc::new(cairn_castore::blobservice::MemoryBlobService::new()),
                Arc::new(cairn_castore::directoryservice::MemoryDirectoryService::new()),
                &[],
            )
            .await
            .unwrap();
            let task = tokio::spawn(async move {
                // Without TCP_NODELAY on the accepted streams (which `serve` leaves as
                // they are), each small blob read waits ~40 ms for a delayed ACK.
                let incoming = futures::StreamExt::map(
                    tokio_stream::wrappers::TcpListenerStream::new(listener),
                    |s| {
                        s.inspect(|s| {
                            let _ = s.set_nodelay(true);
                        })
                    },
                );
                cairn_castore::server::serve(routes, incoming, std::future::pending())
                    .await
                    .unwrap();
            });
            let url = format!("grpc+http://127.0.0.1:{port}");
            Backend {
                blobs: cairn_castore::blob_service_from_addr(&url).unwrap(),
                dirs: cairn_castore::directory_service_from_addr(&url).unwrap(),
                _dir: None,
                _server: Some(Server(task)),
            }
        }),
        "memory" => Backend {
            blobs: Arc::new(cairn_castore::blobservice::MemoryBlobService::new()),
            dirs: Arc::new(cairn_castore::directoryservice::MemoryDirectoryService::new()),
            _dir: None,
            _server: None,
        },
        _ => {
            let dir = tempfile::tempdir().unwrap();
            let url = format!("redb://{}", dir.path().display());
            Backend {
                blobs: cairn_castore::blob_service_from_addr(&url).unwrap(),
                dirs: cairn_castore::directory_service_from_addr(&url).unwrap(),
                _dir: Some(dir),
                _server: None,
            }
        }
    }
}

async fn ingest(b: &Backend, nar: &[u8]) -> Node {
    cairn_store::nar::ingest(&*b.blobs, &*b.dirs, nar)
        .await
        .unwrap()
        .root
}

fn bench_nar(c: &mut Criterion, name: &str, nar: &[u8], kinds: &[&str]) {
    let rt = rt();
    for &kind in kinds {
        let mut grp = c.benchmark_group(format!("nar_{name}_{kind}"));
        grp.throughput(Throughput::Bytes(nar.len() as u64))
            .sample_size(10)
            .warm_up_time(Duration::from_millis(1))
            .measurement_time(Duration::from_secs(15));
        grp.bench_function("ingest", |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let store = backend(&rt, kind);
                    let t = Instant::now();
                    rt.block_on(ingest(&store, nar));
                    total += t.elapsed();
                }
                total
            })
        });
        let store = backend(&rt, kind);
        let root = rt.block_on(ingest(&store, nar));
        grp.bench_function("render", |b| {
            b.iter(|| {
                rt.block_on(async {
                    let mut r = cairn_store::nar::render(
                        store.blobs.clone(),
                        store.dirs.clone(),
                        root.clone(),
                    );
                    let n = tokio::io::copy(&mut r, &mut tokio::io::sink())
                        .await
                        .unwrap();
                    assert_eq!(n, nar.len() as u64);
                })
            })
        });
        grp.finish();
    }
}

fn large_file(c: &mut Criterion) {
    let mib: u64 = std::env::var("CAIRN_BENCH_NAR_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256);
    bench_nar(
        c,
        "large_file",
        &big_nar(mib << 20),
        &["memory", "embedded"],
    );
}

fn small_files(c: &mut Criterion) {
    bench_nar(
        c,
        "10k_files",
        &small_nar(),
        &["memory", "embedded", "grpc"],
    );
}

criterion_group!(benches, large_file, small_files);
criterion_main!(benches);
