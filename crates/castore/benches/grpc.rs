//! Throughput of the memory backends in process and of the gRPC client against the
//! gRPC server (memory-backed) over loopback TCP: one large blob written and read
//! (default 1 GiB; `CAIRN_BENCH_BLOB_MIB` to change), 100k blobs of 1 KiB
//! (`CAIRN_BENCH_SMALL_N`), and a closure of 100k directories
//! (`CAIRN_BENCH_DIRS`) put in one stream and read back recursively.
//! `CAIRN_BENCH_GRPC_EMBEDDED=DIR` backs the server's blobs with the embedded store in
//! DIR instead (chunked blobs, as a daemon serves them).
#![allow(missing_docs, clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use cairn_castore::blobservice::MemoryBlobService;
use cairn_castore::directoryservice::MemoryDirectoryService;
use cairn_castore::{B3Digest, BlobService, Directory, DirectoryService, Node, PathComponent};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use futures::{StreamExt, TryStreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

struct Backend {
    blobs: Arc<dyn BlobService>,
    dirs: Arc<dyn DirectoryService>,
}

fn memory() -> Backend {
    Backend {
        blobs: Arc::new(MemoryBlobService::new()),
        dirs: Arc::new(MemoryDirectoryService::new()),
    }
}

async fn grpc() -> Backend {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let blobs: Arc<dyn BlobService> = match std::env::var("CAIRN_BENCH_GRPC_EMBEDDED") {
        Ok(dir) => Arc::new(cairn_castore::embedded::EmbeddedStore::open(dir).unwrap()),
        Err(_) => Arc::new(MemoryBlobService::new()),
    };
    let (routes, _) =
        cairn_castore::server::routes(blobs, Arc::new(MemoryDirectoryService::new()), &[])
            .await
            .unwrap();
    tokio::spawn(async move {
        let incoming = cairn_castore::server::tcp_incoming(listener);
        cairn_castore::server::serve(routes, incoming, std::future::pending())
            .await
            .unwrap();
    });
    let url = format!("grpc+http://127.0.0.1:{port}");
    Backend {
        blobs: cairn_castore::blob_service_from_addr(&url).unwrap(),
        dirs: cairn_castore::directory_service_from_addr(&url).unwrap(),
    }
}

/// A 1 MiB block, varied per index so blobs differ.
fn block(seed: u64, i: u64, out: &mut [u8]) {
    let mut x = (seed ^ i.wrapping_mul(0x9E37_79B9_7F4A_7C15)) | 1;
    for chunk in out.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let n = chunk.len();
        chunk.copy_from_slice(&x.to_le_bytes()[..n]);
    }
}

async fn write_big(b: &Backend, seed: u64, mib: u64) -> B3Digest {
    let mut w = b.blobs.open_write().await;
    let mut buf = vec![0u8; 1 << 20];
    for i in 0..mib {
        block(seed, i, &mut buf);
        w.write_all(&buf).await.unwrap();
    }
    w.close().await.unwrap()
}

async fn read_all(b: &Backend, digest: &B3Digest) -> u64 {
    let mut r = b.blobs.open_read(digest).await.unwrap().unwrap();
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0;
    loop {
        let n = r.read(&mut buf).await.unwrap();
        if n == 0 {
            return total;
        }
        total += n as u64;
    }
}

/// A closure of `n` directories, leaves first: each directory holds one file and
/// adopts the last 10 directories not yet adopted; the last one adopts the rest, so
/// everything is reachable from it.
fn closure(n: usize) -> Vec<Directory> {
    let mut out: Vec<Directory> = Vec::with_capacity(n);
    let mut orphans: Vec<usize> = Vec::new();
    for i in 0..n {
        let mut d = Directory::new();
        d.add(
            PathComponent::try_from("f").unwrap(),
            Node::File {
                digest: B3Digest::from([(i % 251) as u8; 32]),
                size: i as u64,
                executable: false,
            },
        )
        .unwrap();
        let adopt = if i + 1 == n {
            orphans.len()
        } else if orphans.len() >= 10 {
            10
        } else {
            0
        };
        for (k, c) in orphans
            .split_off(orphans.len() - adopt)
            .into_iter()
            .enumerate()
        {
            d.add(
                PathComponent::try_from(format!("d{k}").as_str()).unwrap(),
                Node::Directory {
                    digest: out[c].digest(),
                    size: out[c].size(),
                },
            )
            .unwrap();
        }
        orphans.push(i);
        out.push(d);
    }
    out
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mib = env("CAIRN_BENCH_BLOB_MIB", 1024);
    let small = env("CAIRN_BENCH_SMALL_N", 100_000);
    let ndirs = env("CAIRN_BENCH_DIRS", 100_000) as usize;
    let dirs = closure(ndirs);

    for (label, backend) in [("memory", memory()), ("grpc_loopback", rt.block_on(grpc()))] {
        let mut g = c.benchmark_group(format!("{label}_blob_{mib}MiB"));
        g.sample_size(10).measurement_time(Duration::from_secs(20));
        g.throughput(Throughput::Bytes(mib << 20));
        let digest = rt.block_on(write_big(&backend, 0, mib));
        // Rewrites the same content: a new blob per iteration would keep gigabytes
        // in the memory backends. Every byte is still sent, hashed and copied.
        g.bench_function("write", |b| {
            b.iter(|| assert_eq!(rt.block_on(write_big(&backend, 0, mib)), digest))
        });
        g.bench_function("read", |b| {
            b.iter(|| assert_eq!(rt.block_on(read_all(&backend, &digest)), mib << 20))
        });
        g.finish();

        let mut g = c.benchmark_group(format!("{label}_{small}x1KiB"));
        g.sample_size(10).measurement_time(Duration::from_secs(20));
        g.throughput(Throughput::Elements(small));
        let blobs = &backend.blobs;
        let write_small = |round: u64| async move {
            futures::stream::iter(0..small)
                .map(|i| async move {
                    let mut buf = [0u8; 1024];
                    block(round, i, &mut buf);
                    let mut w = blobs.open_write().await;
                    w.write_all(&buf).await.unwrap();
                    w.close().await.unwrap()
                })
                .buffer_unordered(64)
                .collect::<Vec<_>>()
                .await
        };
        let stored = rt.block_on(write_small(0));
        g.bench_function("write", |b| b.iter(|| rt.block_on(write_small(0))));
        g.bench_function("read", |b| {
            b.iter(|| {
                rt.block_on(
                    futures::stream::iter(&stored)
                        .map(|d| async move {
                            let mut r = blobs.open_read(d).await.unwrap().unwrap();
                            let mut out = Vec::with_capacity(1024);
                            r.read_to_end(&mut out).await.unwrap();
                            out.len()
                        })
                        .buffer_unordered(64)
                        .collect::<Vec<_>>(),
                )
            })
        });
        g.finish();

        let mut g = c.benchmark_group(format!("{label}_closure_{ndirs}_dirs"));
        g.sample_size(10).measurement_time(Duration::from_secs(20));
        g.throughput(Throughput::Elements(ndirs as u64));
        let put_all = || {
            rt.block_on(async {
                let mut p = backend.dirs.put_multiple_start();
                for d in &dirs {
                    p.put(d.clone()).await.unwrap();
                }
                p.close().await.unwrap()
            })
        };
        // Stored before any measurement, so that a filter may skip "put".
        let root = put_all();
        g.bench_function("put", |b| b.iter(|| assert_eq!(put_all(), root)));
        g.bench_function("get_recursive", |b| {
            b.iter(|| {
                let got: Vec<Directory> = rt
                    .block_on(backend.dirs.get_recursive(&root).try_collect())
                    .unwrap();
                assert_eq!(got.len(), ndirs);
            })
        });
        g.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
