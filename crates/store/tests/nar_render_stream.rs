//! `NarRenderer::into_stream` (what `cairn dump` writes from): the same bytes as
//! Nix's NAR on every backend, from any offset; over a corrupt embedded store, the
//! NAR up to exactly the corrupt chunk, then an error that stays: never a clean
//! short end.
#![allow(clippy::unwrap_used)]

mod nar_util;

use std::io;
use std::sync::Arc;

use cairn_castore::Node;
use cairn_store::nar::{self, NarError};
use cairn_testkit::stream::drain;
use nar_util::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_is_nix_nar_on_every_backend_and_from_offsets() {
    let base = tempfile::tempdir().unwrap();
    let mut all = backends();
    all.push(grpc().await);
    for (what, path) in trees(base.path()) {
        let nix_nar = nix_dump(&path);
        for b in &all {
            let ctx = format!("{what} on {}", b.name);
            let root = nar::ingest(&*b.blobs, &*b.dirs, &nix_nar[..])
                .await
                .unwrap_or_else(|e| panic!("{ctx}: ingest: {e}"))
                .root;
            let render = nar::render(b.blobs.clone(), b.dirs.clone(), root.clone());
            let (got, err, _) = drain(render.into_stream()).await;
            assert!(err.is_none(), "{ctx}: {err:?}");
            assert!(
                got == nix_nar,
                "{ctx}: streamed NAR differs from Nix's ({} vs {} bytes)",
                got.len(),
                nix_nar.len()
            );
            // Offsets in framing and inside file contents (a large file's blob
            // stream starts mid-blob).
            let len = nix_nar.len() as u64;
            let mut offsets = vec![1, len / 2, len - 1];
            offsets.extend(
                contents_ranges(&nix_nar)
                    .into_iter()
                    .filter(|&(_, size)| size > 64 * 1024)
                    .flat_map(|(off, size)| [off + 1, off + size / 2]),
            );
            for off in offsets {
                let render = nar::render_from(b.blobs.clone(), b.dirs.clone(), root.clone(), off)
                    .await
                    .unwrap_or_else(|e| panic!("{ctx} from {off}: {e}"));
                let (got, err, _) = drain(render.into_stream()).await;
                assert!(err.is_none(), "{ctx} from {off}: {err:?}");
                assert!(got == nix_nar[off as usize..], "{ctx}: from {off}");
            }
        }
    }
}

/// Flips a byte in the middle of the first place `needle` is stored in the packs
/// of the embedded store in `dir`.
fn corrupt_stored(dir: &std::path::Path, needle: &[u8]) {
    use std::os::unix::fs::FileExt;
    for e in std::fs::read_dir(dir.join("packs")).unwrap() {
        let path = e.unwrap().path();
        let data = std::fs::read(&path).unwrap();
        if let Some(at) = data.windows(needle.len()).position(|w| w == needle) {
            let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
            let at = (at + needle.len() / 2) as u64;
            f.write_all_at(&[data[at as usize] ^ 0x5a], at).unwrap();
            return;
        }
    }
    panic!("chunk not found in the packs");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_chunk_ends_the_stream_with_an_error_after_exactly_the_bytes_before_it() {
    let base = tempfile::tempdir().unwrap();
    let path = base.path().join("big");
    let contents = bytes(9, 6 << 20);
    file(&path, &contents, false);
    let nix_nar = nix_dump(&path);
    let (contents_at, _) = contents_ranges(&nix_nar)[0];
    for which in ["first", "middle", "last"] {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("redb://{}", dir.path().display());
        let blobs = cairn_castore::blob_service_from_addr(&url).unwrap();
        let dirs = cairn_castore::directory_service_from_addr(&url).unwrap();
        let root = nar::ingest(&*blobs, &*dirs, &nix_nar[..])
            .await
            .unwrap()
            .root;
        let Node::File { digest, .. } = &root else {
            panic!("a file's NAR ingests as a file");
        };
        let chunks = blobs.chunks(digest).await.unwrap().unwrap();
        assert!(chunks.len() > 40, "{} chunks", chunks.len());
        let k = match which {
            "first" => 0,
            "middle" => chunks.len() / 2,
            _ => chunks.len() - 1,
        };
        let start: u64 = chunks[..k].iter().map(|c| c.size).sum();
        let chunk = &contents[start as usize..(start + chunks[k].size) as usize];
        corrupt_stored(dir.path(), chunk);
        let want = &nix_nar[..(contents_at + start) as usize];

        let render = nar::render(Arc::clone(&blobs), Arc::clone(&dirs), root.clone());
        let (got, err, again) = drain(render.into_stream()).await;
        assert!(
            got == want,
            "{which} chunk: {} bytes handed out, {} before it",
            got.len(),
            want.len()
        );
        let err = NarError::from_io(err.unwrap_or_else(|| panic!("{which}: no error")));
        assert!(
            matches!(&err, NarError::BlobRead { source, .. } if source.kind() == io::ErrorKind::InvalidData),
            "{which}: {err}"
        );
        assert!(matches!(again, Some(Err(_))), "{which}: {again:?}");

        // Reading (the AsyncRead side) stops at the same byte.
        let mut r = nar::render(Arc::clone(&blobs), Arc::clone(&dirs), root.clone());
        let mut got = Vec::new();
        let mut buf = vec![0u8; 100_000];
        let err = loop {
            match tokio::io::AsyncReadExt::read(&mut r, &mut buf).await {
                Ok(0) => panic!("{which}: clean end after {} bytes", got.len()),
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e) => break e,
            }
        };
        assert!(got == want, "{which}: read {} of {}", got.len(), want.len());
        assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{which}: {err}");
    }
}
