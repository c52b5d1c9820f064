//! Nix's NAR of generated trees -> ingest -> render gives the same bytes; calculate
//! and nar_size agree with Nix (`nix-store --dump`, `nix-hash`), on the memory and
//! embedded backends.
#![allow(clippy::unwrap_used)]

mod nar_util;

use cairn_castore::Node;
use cairn_store::nar;
use futures::TryStreamExt;
use nar_util::*;

/// Nodes in a NAR (root, and one per entry), by `cairn-nix`'s reader.
fn count_nodes(nar: &[u8]) -> usize {
    let mut reader = cairn_nix::nar::Reader::new(nar);
    let mut n = 1;
    while let Some(ev) = reader.next().unwrap() {
        if let cairn_nix::nar::Event::Entry { .. } = ev {
            n += 1;
        }
    }
    n
}

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
            // walk: the files' contents offsets and sizes as Nix's NAR has them, and
            // every node of the NAR once.
            let entries: Vec<nar::Entry> = nar::walk(&*b.dirs, ingested.root.clone())
                .try_collect()
                .await
                .unwrap();
            let files: Vec<(u64, u64)> = entries
                .iter()
                .filter_map(|e| match e.node {
                    Node::File { size, .. } => Some((e.nar_offset, size)),
                    _ => None,
                })
                .collect();
            assert_eq!(
                files,
                contents_ranges(&nix_nar),
                "{ctx}: walk's file offsets"
            );
            assert_eq!(
                entries.len(),
                count_nodes(&nix_nar),
                "{ctx}: walk's entries"
            );
            for e in &entries {
                if let Node::Symlink { target } = &e.node {
                    // A symlink node starts with "(" at its offset, its target 64 bytes on.
                    let at = e.nar_offset as usize;
                    assert_eq!(&nix_nar[at..at + 9], b"\x01\0\0\0\0\0\0\0(", "{ctx}");
                    let t = at + 64 + 8;
                    assert_eq!(
                        &nix_nar[t..t + target.as_bytes().len()],
                        target.as_bytes(),
                        "{ctx}"
                    );
                }
            }
            assert_eq!(
                nar::nar_size(&*b.dirs, &ingested.root).await.unwrap(),
                nix_nar.len() as u64,
                "{ctx}"
            );
        }
    }
}
