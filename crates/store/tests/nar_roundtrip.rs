//! Nix's NAR of generated trees -> ingest -> render gives the same bytes; calculate
//! and nar_size agree with Nix (`nix-store --dump`, `nix-hash`), on the memory and
//! embedded backends.
#![allow(clippy::unwrap_used)]

mod nar_util;

use cairn_store::nar;
use nar_util::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nix_nar_ingest_render_roundtrip() {
    let base = tempfile::tempdir().unwrap();
    for (what, path) in trees(base.path()) {
        let nix_nar = nix_dump(&path);
        let nix_hex = nix_hash_hex(&path);
        assert_eq!(
            hex(&sha256(&nix_nar)),
            nix_hex,
            "{what}: nix-hash vs --dump"
        );
        for b in backends() {
            let ctx = format!("{what} on {}", b.name);
            let ingested = nar::ingest(&*b.blobs, &*b.dirs, &nix_nar[..])
                .await
                .unwrap_or_else(|e| panic!("{ctx}: ingest: {e}"));
            assert_eq!(ingested.nar_size, nix_nar.len() as u64, "{ctx}");
            assert_eq!(hex(&ingested.nar_sha256), nix_hex, "{ctx}");

            let rendered = read_all(nar::render(
                b.blobs.clone(),
                b.dirs.clone(),
                ingested.root.clone(),
            ))
            .await
            .unwrap_or_else(|e| panic!("{ctx}: render: {e}"));
            assert!(
                rendered == nix_nar,
                "{ctx}: rendered NAR differs from Nix's ({} vs {} bytes)",
                rendered.len(),
                nix_nar.len()
            );

            let (size, sha) = nar::calculate(&*b.blobs, &*b.dirs, &ingested.root)
                .await
                .unwrap();
            assert_eq!(size, nix_nar.len() as u64, "{ctx}");
            assert_eq!(hex(&sha), nix_hex, "{ctx}");
            assert_eq!(
                nar::nar_size(&*b.dirs, &ingested.root).await.unwrap(),
                nix_nar.len() as u64,
                "{ctx}"
            );
        }
    }
}
