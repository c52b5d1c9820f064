//! `render_from(offset)` gives exactly the suffix of Nix's NAR from `offset`: at
//! the start, inside headers, inside and around file contents (seeking inside
//! multi-chunk blobs), and at the end; past the end is an error.
#![allow(clippy::unwrap_used)]

mod nar_util;

use std::collections::BTreeSet;

use cairn_store::nar::{self, NarError};
use nar_util::*;
use tokio::io::AsyncReadExt;

/// Bytes compared after each offset (the whole suffix for every 8th offset).
const PREFIX: u64 = 70 * 1024;

fn offsets(nar: &[u8]) -> BTreeSet<u64> {
    let len = nar.len() as u64;
    let mut out: BTreeSet<u64> = (0..=len.min(300)).collect();
    out.extend(len.saturating_sub(300)..=len);
    out.extend((0..=50).map(|i| len * i / 50));
    for (i, (o, s)) in contents_ranges(nar).into_iter().enumerate() {
        if i % 60 == 0 || s > 60_000 {
            for off in [
                o - 1,
                o,
                o + 1,
                o + s / 2,
                o + s / 2 + 3,
                o + s - 1,
                o + s,
                o + s + 1,
            ] {
                out.insert(off.min(len));
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn render_from_is_the_suffix_of_nix_nar() {
    let base = tempfile::tempdir().unwrap();
    let mut checked = 0;
    for (what, path) in trees(base.path()) {
        let nix_nar = nix_dump(&path);
        let len = nix_nar.len() as u64;
        for b in backends() {
            let root = nar::ingest(&*b.blobs, &*b.dirs, &nix_nar[..])
                .await
                .unwrap()
                .root;
            for (i, off) in offsets(&nix_nar).into_iter().enumerate() {
                let ctx = format!("{what} on {}, offset {off} of {len}", b.name);
                let r = nar::render_from(b.blobs.clone(), b.dirs.clone(), root.clone(), off)
                    .await
                    .unwrap_or_else(|e| panic!("{ctx}: {e}"));
                let limit = if i % 8 == 0 { u64::MAX } else { PREFIX };
                let got = read_all(r.take(limit)).await.unwrap();
                let end = len.min(off.saturating_add(limit)) as usize;
                assert!(
                    got == nix_nar[off as usize..end],
                    "{ctx}: got {} bytes, they differ from Nix's",
                    got.len()
                );
                checked += 1;
            }
            for off in [len + 1, len + 4096, u64::MAX] {
                let err = nar::render_from(b.blobs.clone(), b.dirs.clone(), root.clone(), off)
                    .await
                    .err()
                    .unwrap_or_else(|| panic!("{what}: offset {off} past the end was accepted"));
                assert!(
                    matches!(err, NarError::OffsetPastEnd { offset, size } if offset == off && size == len),
                    "{what}: {err}"
                );
                assert_eq!(err.kind(), cairn_castore::ErrorKind::InvalidArgument);
            }
        }
    }
    assert!(checked > 1000, "only {checked} offsets checked");
}
