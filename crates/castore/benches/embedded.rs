//! Throughput of the embedded store, in process: one large blob written and read
//! (default 1 GiB; `CAIRN_BENCH_BLOB_MIB` to change), 100k blobs of 1 KiB written
//! by 256 concurrent writers and read back, and a closure of 100k directories put
//! in one transaction and read back one by one; the large blob and the closure
//! are also written again (stored already: checked, not stored twice).
#![allow(missing_docs, clippy::unwrap_used)]

use std::time::{Duration, Instant};

use cairn_castore::embedded::EmbeddedStore;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use futures::StreamExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

include!("../examples/common/gen.rs");

async fn write_big(store: &EmbeddedStore, g: &Gen, seed: u64, len: u64) -> [u8; 32] {
    let mut w = store.blob_writer();
    let mut buf = vec![0u8; BLOCK];
    for i in 0..len / BLOCK as u64 {
        g.block(seed, i, &mut buf);
        w.write_all(&buf).await.unwrap();
    }
    w.close().await.unwrap()
}

async fn read_all(store: &EmbeddedStore, d: &[u8; 32]) -> u64 {
    let mut r = store.open_blob(d).unwrap().unwrap();
    let mut buf = vec![0u8; 1 << 20];
    let mut n = 0u64;
    loop {
        let k = r.read(&mut buf).await.unwrap();
        if k == 0 {
            return n;
        }
        n += k as u64;
    }
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn big_blob(c: &mut Criterion) {
    let mib: u64 = std::env::var("CAIRN_BENCH_BLOB_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1024);
    let len = mib << 20;
    let rt = rt();
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(dir.path()).unwrap();
    let g = Gen::new();
    let mut grp = c.benchmark_group("embedded_big_blob");
    grp.throughput(Throughput::Bytes(len))
        .sample_size(10)
        .warm_up_time(Duration::from_millis(1));
    let mut seed = 1000;
    grp.bench_function(format!("write_{mib}MiB"), |b| {
        b.iter_custom(|iters| {
            let mut t = Duration::ZERO;
            for _ in 0..iters {
                seed += 1; // new content every time: dedup would make it free
                let s = Instant::now();
                rt.block_on(write_big(&store, &g, seed, len));
                t += s.elapsed();
            }
            t
        })
    });
    let d = rt.block_on(write_big(&store, &g, 1, len));
    grp.bench_function(format!("read_{mib}MiB"), |b| {
        b.iter(|| assert_eq!(rt.block_on(read_all(&store, &d)), len))
    });
    // Content stored already: every chunk is found, and checked against its
    // stored copy before it is reused.
    grp.bench_function(format!("rewrite_{mib}MiB"), |b| {
        b.iter(|| assert_eq!(rt.block_on(write_big(&store, &g, 1, len)), d))
    });
    grp.finish();
}

fn small_blobs(c: &mut Criterion) {
    const N: u64 = 100_000;
    let rt = rt();
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(dir.path()).unwrap();
    let g = Gen::new();
    let mut grp = c.benchmark_group("embedded_100k_1KiB");
    grp.throughput(Throughput::Elements(N))
        .sample_size(10)
        .warm_up_time(Duration::from_millis(1));
    let write = |seed: u64| {
        let (store, g) = (&store, &g);
        rt.block_on(async move {
            futures::stream::iter(0..N)
                .map(|i| async move {
                    let mut buf = vec![0u8; 1024];
                    g.block(seed, i, &mut buf);
                    let mut w = store.blob_writer();
                    w.write_all(&buf).await.unwrap();
                    w.close().await.unwrap()
                })
                .buffer_unordered(256)
                .collect::<Vec<_>>()
                .await
        })
    };
    let mut seed = 5000;
    grp.bench_function("write", |b| {
        b.iter_custom(|iters| {
            let mut t = Duration::ZERO;
            for _ in 0..iters {
                seed += 1;
                let s = Instant::now();
                write(seed);
                t += s.elapsed();
            }
            t
        })
    });
    let digests = write(1);
    grp.bench_function("read", |b| {
        b.iter(|| {
            rt.block_on(async {
                for d in &digests {
                    assert_eq!(read_all(&store, d).await, 1024);
                }
            })
        })
    });
    grp.finish();
}

fn directories(c: &mut Criterion) {
    const N: u64 = 100_000;
    let rt = rt();
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(dir.path()).unwrap();
    // ~150 bytes each: the size of an encoded Directory with a few entries.
    let closure = |seed: u64| -> Vec<([u8; 32], Vec<u8>)> {
        (0..N)
            .map(|i| {
                let mut enc = vec![0u8; 150];
                enc[..8].copy_from_slice(&seed.to_le_bytes());
                enc[8..16].copy_from_slice(&i.to_le_bytes());
                (*blake3::hash(&enc).as_bytes(), enc)
            })
            .collect()
    };
    let mut grp = c.benchmark_group("embedded_100k_directories");
    grp.throughput(Throughput::Elements(N))
        .sample_size(10)
        .warm_up_time(Duration::from_millis(1));
    let mut seed = 0;
    grp.bench_function("put_closure", |b| {
        b.iter_custom(|iters| {
            let mut t = Duration::ZERO;
            for _ in 0..iters {
                seed += 1;
                let dirs = closure(seed);
                let s = Instant::now();
                rt.block_on(store.put_directories(dirs)).unwrap();
                t += s.elapsed();
            }
            t
        })
    });
    let dirs = closure(u64::MAX);
    let keys: Vec<[u8; 32]> = dirs.iter().map(|d| d.0).collect();
    rt.block_on(store.put_directories(dirs.clone())).unwrap();
    // Stored already: each is checked against its stored copy, nothing written.
    grp.bench_function("put_closure_again", |b| {
        b.iter(|| rt.block_on(store.put_directories(dirs.clone())).unwrap())
    });
    grp.bench_function("get_each", |b| {
        b.iter(|| {
            for k in &keys {
                assert!(store.get_directory(k).unwrap().is_some());
            }
        })
    });
    grp.finish();
}

criterion_group!(benches, big_blob, small_blobs, directories);
criterion_main!(benches);
