//! Ingest and render through the gRPC clients of a castore server on loopback TCP:
//! a tree of many small files comes back byte-identical to Nix's NAR.
#![allow(clippy::unwrap_used)]

mod nar_util;

use cairn_store::nar;
use nar_util::*;
use tokio::io::AsyncReadExt;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_small_files_over_grpc() {
    let base = tempfile::tempdir().unwrap();
    let p = base.path().join("t");
    for d in 0..30 {
        let dir = p.join(format!("d{d:02}"));
        std::fs::create_dir_all(&dir).unwrap();
        for i in 0..100u64 {
            let n = d * 1000 + i;
            file(
                &dir.join(format!("f{i:03}")),
                &bytes(n, (n % 2000) as usize),
                i % 5 == 0,
            );
        }
    }
    file(&p.join("large"), &bytes(5, 2_500_000), false);
    std::os::unix::fs::symlink("d00/f000", p.join("link")).unwrap();
    let nix_nar = nix_dump(&p);

    let b = grpc().await;
    let ingested = nar::ingest(&*b.blobs, &*b.dirs, &nix_nar[..])
        .await
        .unwrap();
    assert_eq!(ingested.nar_size, nix_nar.len() as u64);
    assert_eq!(ingested.nar_sha256, sha256(&nix_nar));

    let rendered = read_all(nar::render(
        b.blobs.clone(),
        b.dirs.clone(),
        ingested.root.clone(),
    ))
    .await
    .unwrap();
    assert!(
        rendered == nix_nar,
        "rendered over gRPC differs from Nix's NAR"
    );
    let (size, sha) = nar::calculate(&*b.blobs, &*b.dirs, &ingested.root)
        .await
        .unwrap();
    assert_eq!((size, sha), (nix_nar.len() as u64, sha256(&nix_nar)));

    let ranges = contents_ranges(&nix_nar);
    for (o, s) in [ranges[1500], ranges[ranges.len() - 1]] {
        for off in [o + s / 2, o + s + 3] {
            let r = nar::render_from(b.blobs.clone(), b.dirs.clone(), ingested.root.clone(), off)
                .await
                .unwrap();
            let got = read_all(r.take(100_000)).await.unwrap();
            let end = nix_nar.len().min(off as usize + 100_000);
            assert!(
                got == nix_nar[off as usize..end],
                "render_from({off}) over gRPC"
            );
        }
    }
}
