//! Malformed and truncated NARs: `ingest` fails with a specific error and no
//! directory of the tree becomes visible (blobs may stay; they are unreachable).
#![allow(clippy::unwrap_used)]

mod nar_util;

use cairn_castore::{B3Digest, DirectoryService, ErrorKind, Node};
use cairn_store::nar::{self, NarError};
use futures::TryStreamExt;
use nar_util::*;

/// Every directory digest of the tree `nar` holds, from a store it was ingested
/// into successfully.
async fn directory_digests(nar: &[u8]) -> Vec<B3Digest> {
    let b = memory();
    let root = nar::ingest(&*b.blobs, &*b.dirs, nar).await.unwrap().root;
    let Node::Directory { digest, .. } = root else {
        return vec![];
    };
    let dirs: Vec<_> = b.dirs.get_recursive(&digest).try_collect().await.unwrap();
    dirs.iter().map(|d| d.digest()).collect()
}

async fn assert_nothing_visible(dirs: &dyn DirectoryService, digests: &[B3Digest], ctx: &str) {
    for d in digests {
        assert!(
            dirs.get(d).await.unwrap().is_none(),
            "{ctx}: directory {d} is visible"
        );
    }
}

/// Nix's NAR of a tree with a bit of everything (nested and empty directories,
/// symlinks, small files and one streamed through a writer), small enough to
/// ingest hundreds of times.
fn medium_nar() -> Vec<u8> {
    let base = tempfile::tempdir().unwrap();
    let p = base.path().join("t");
    std::fs::create_dir(&p).unwrap();
    for d in ["a", "a/b", "a/b/c", "empty", "z"] {
        std::fs::create_dir(p.join(d)).unwrap();
    }
    for (i, f) in ["x", "a/y", "a/b/zz", "a/b/c/w", "z/1", "z/2", "z/3"]
        .iter()
        .enumerate()
    {
        file(&p.join(f), &bytes(i as u64, i * 37), i % 2 == 0);
    }
    file(&p.join("a/big"), &bytes(99, 600_000), false);
    std::os::unix::fs::symlink("a/b", p.join("link")).unwrap();
    nix_dump(&p)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncated_nar_is_rejected_and_stores_no_directory() {
    let nar = medium_nar();
    let digests = directory_digests(&nar).await;
    assert_eq!(digests.len(), 6, "the tree's directories");
    let len = nar.len();
    let mut cuts: Vec<usize> = (0..400).collect();
    cuts.extend((0..300).map(|i| len * i / 300));
    cuts.extend(len - 300..len);
    for b in backends() {
        for &cut in &cuts {
            let ctx = format!("{} truncated at {cut} of {len}", b.name);
            let err = nar::ingest(&*b.blobs, &*b.dirs, &nar[..cut])
                .await
                .err()
                .unwrap_or_else(|| panic!("{ctx}: accepted"));
            let msg = err.to_string();
            assert!(
                matches!(err, NarError::Nar(_)) && msg.contains("truncated"),
                "{ctx}: {msg}"
            );
            assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{ctx}: {msg}");
            let c: cairn_castore::Error = err.into();
            assert_eq!(c.kind(), ErrorKind::InvalidArgument, "{ctx}");
        }
        assert_nothing_visible(&*b.dirs, &digests, b.name).await;
        // The same store then takes the whole NAR.
        let ok = nar::ingest(&*b.blobs, &*b.dirs, &nar[..]).await.unwrap();
        assert_eq!(ok.nar_size, len as u64);
        assert!(b.dirs.get(&digests[0]).await.unwrap().is_some());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_framing_is_rejected_and_stores_no_directory() {
    let nar = medium_nar();
    let digests = directory_digests(&nar).await;
    let ranges = contents_ranges(&nar);
    let in_contents = |off: u64| ranges.iter().any(|(o, s)| off >= *o && off < o + s);
    let len = nar.len() as u64;
    // Framing bytes only: a changed content byte is just another valid NAR.
    let positions: Vec<u64> = (0..len)
        .step_by(5)
        .chain(len - 64..len)
        .filter(|&o| !in_contents(o))
        .collect();
    assert!(positions.len() > 100);
    let backends = backends();
    let (mut rejected, mut accepted) = (0, 0);
    for &pos in &positions {
        for flip in [0x01u8, 0x80] {
            let mut bad = nar.clone();
            bad[pos as usize] ^= flip;
            let ctx = format!("byte {pos} ^ {flip:#x}");
            // A changed name or target byte can still make a valid NAR: then it
            // must come back byte for byte (from a scratch store, so its
            // directories do not mix with the check below).
            let scratch = memory();
            if let Ok(ok) = nar::ingest(&*scratch.blobs, &*scratch.dirs, &bad[..]).await {
                let back = read_all(nar::render(
                    scratch.blobs.clone(),
                    scratch.dirs.clone(),
                    ok.root,
                ))
                .await
                .unwrap();
                assert!(back == bad, "{ctx}: accepted but renders differently");
                accepted += 1;
                continue;
            }
            rejected += 1;
            for b in &backends {
                let err = nar::ingest(&*b.blobs, &*b.dirs, &bad[..])
                    .await
                    .err()
                    .unwrap_or_else(|| panic!("{ctx} on {}: accepted", b.name));
                let NarError::Nar(inner) = &err else {
                    panic!("{ctx}: not a NAR error: {err}");
                };
                assert!(inner.kind().is_some(), "{ctx}: {err}");
                assert!(err.to_string().contains("byte offset"), "{ctx}: {err}");
                assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{ctx}: {err}");
            }
        }
    }
    assert!(
        rejected > 8 * accepted,
        "{rejected} rejected, {accepted} accepted"
    );
    for b in &backends {
        assert_nothing_visible(&*b.dirs, &digests, b.name).await;
    }
}

/// A NAR string.
fn s(out: &mut Vec<u8>, b: &[u8]) {
    out.extend_from_slice(&(b.len() as u64).to_le_bytes());
    out.extend_from_slice(b);
    out.resize(out.len().next_multiple_of(8), 0);
}

fn dir_nar(names: &[&[u8]]) -> Vec<u8> {
    let mut n = Vec::new();
    for t in [&b"nix-archive-1"[..], b"(", b"type", b"directory"] {
        s(&mut n, t);
    }
    for name in names {
        for t in [
            &b"entry"[..],
            b"(",
            b"name",
            name,
            b"node",
            b"(",
            b"type",
            b"symlink",
            b"target",
            b"x",
            b")",
            b")",
        ] {
            s(&mut n, t);
        }
    }
    s(&mut n, b")");
    n
}

#[tokio::test]
async fn specific_errors_for_invalid_nars() {
    let b = memory();
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("valid", dir_nar(&[b"a", b"b"]), ""),
        ("unsorted", dir_nar(&[b"b", b"a"]), "not sorted"),
        ("duplicate", dir_nar(&[b"a", b"a"]), "duplicate"),
        (
            "name of 256 bytes",
            dir_nar(&[&[b'n'; 256]]),
            "256 bytes long",
        ),
        ("dot-dot", dir_nar(&[b".."]), "invalid entry name"),
        ("slash", dir_nar(&[b"a/b"]), "invalid entry name"),
        (
            "trailing data",
            [dir_nar(&[b"a"]), vec![0; 8]].concat(),
            "trailing data",
        ),
        (
            "not a NAR",
            b"hello world, this is not a NAR at all".to_vec(),
            "nix-archive-1",
        ),
        ("empty input", vec![], "truncated"),
    ];
    for (what, input, expected) in cases {
        let got = nar::ingest(&*b.blobs, &*b.dirs, &input[..]).await;
        if expected.is_empty() {
            got.unwrap();
            continue;
        }
        let err = got.err().unwrap_or_else(|| panic!("{what}: accepted"));
        assert!(err.to_string().contains(expected), "{what}: {err}");
        assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{what}");
    }
}
