//! Durable puts per second into the redb PathInfoService (`pathinfo.redb` in a data
//! directory on the real disk, under the system temp dir), with 1 and with 16 puts
//! in flight: what `nix copy --to http://` of many small paths costs in path info
//! writes. Each put must be on disk when it returns, so with one in flight every
//! put pays an fsync; with 16, group commit lets concurrent puts share one.
//! Root nodes are symlinks, so no castore content is needed.
#![allow(missing_docs, clippy::unwrap_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use cairn_castore::{Node, SymlinkTarget};
use cairn_nix::store_path::StorePath;
use cairn_store::pathinfo::{PathInfo, PathInfoService, RedbPathInfoService};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use futures::StreamExt;

/// Puts per measured iteration.
const PUTS: u64 = 64;

fn info(i: u64) -> PathInfo {
    let mut digest = [0u8; 20];
    digest[..8].copy_from_slice(&i.to_be_bytes());
    digest[19] = 0x5a;
    PathInfo {
        store_path: StorePath::new(digest, "bench-path-1.0").unwrap(),
        node: Node::Symlink {
            target: SymlinkTarget::try_from(&b"/nix/store/target"[..]).unwrap(),
        },
        references: vec![StorePath::new([7; 20], "glibc-2.40").unwrap()],
        nar_size: 1234,
        nar_sha256: [3; 32],
        signatures: vec![],
        deriver: None,
        ca: None,
    }
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let blobs = cairn_castore::blob_service_from_addr("memory://").unwrap();
    let dirs = cairn_castore::directory_service_from_addr("memory://").unwrap();
    let svc: Arc<dyn PathInfoService> =
        Arc::new(RedbPathInfoService::open(dir.path(), blobs, dirs).unwrap());
    let mut next = 0u64;

    let mut g = c.benchmark_group("pathinfo_redb_put");
    g.throughput(Throughput::Elements(PUTS));
    g.sample_size(10);
    g.measurement_time(Duration::from_secs(10));
    for in_flight in [1usize, 16] {
        g.bench_function(format!("in_flight_{in_flight}"), |b| {
            b.iter_custom(|iters| {
                let start = Instant::now();
                for _ in 0..iters {
                    let first = next;
                    next += PUTS;
                    rt.block_on(
                        futures::stream::iter(first..first + PUTS)
                            .map(|i| {
                                let svc = svc.clone();
                                async move { svc.put(info(i)).await.unwrap() }
                            })
                            .buffer_unordered(in_flight)
                            .count(),
                    );
                }
                start.elapsed()
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
