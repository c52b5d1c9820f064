//! Pack rewriting of the embedded store (`EmbeddedStore::rewrite_packs`, run
//! by every collection): live blobs (of one chunk and of many, sharing chunks
//! with removed ones) and directories read back byte-identical after their
//! pack moved, the old pack file is deleted and the disk drops, the store
//! reopens whole; and a rewrite racing with uploads that deduplicate against
//! the moving chunks, and with readers, loses nothing and hands out no wrong
//! byte.
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use cairn_castore::embedded::{EmbeddedStore, RewriteOptions};
use cairn_castore::gc::{Collector, GcOptions};
use cairn_castore::{B3Digest, BlobService, Directory, DirectoryService, Node, PathComponent};
use cairn_testkit::data::pseudo_random;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const NOW: GcOptions = GcOptions {
    grace: Duration::ZERO,
    dry_run: false,
    began: None,
};

/// Punching only: collections that leave the packs to a rewrite of the test's own.
const NO_REWRITE: RewriteOptions = RewriteOptions {
    below: 0.0,
    wait: Duration::from_secs(5),
};

const REWRITE_ALL: RewriteOptions = RewriteOptions {
    below: 1.0,
    wait: Duration::from_secs(10),
};

async fn put_blob(blobs: &dyn BlobService, data: &[u8]) -> B3Digest {
    let mut w = blobs.open_write().await;
    w.write_all(data).await.unwrap();
    w.close().await.unwrap()
}

async fn read_blob(blobs: &dyn BlobService, d: &B3Digest) -> Option<Vec<u8>> {
    let mut r = blobs.open_read(d).await.unwrap()?;
    let mut out = Vec::new();
    r.read_to_end(&mut out).await.unwrap();
    Some(out)
}

/// A directory of `files` (`f0`, `f1`, ...), stored; its root node.
async fn put_dir(dirs: &dyn DirectoryService, files: &[(B3Digest, usize)]) -> Node {
    let mut dir = Directory::new();
    for (i, (d, n)) in files.iter().enumerate() {
        dir.add(
            PathComponent::try_from(format!("f{i}").as_str()).unwrap(),
            Node::File {
                digest: *d,
                size: *n as u64,
                executable: false,
            },
        )
        .unwrap();
    }
    let size = dir.size();
    let digest = dirs.put(dir).await.unwrap();
    Node::Directory { digest, size }
}

fn du(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let mut total = 0;
    for e in std::fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        let m = e.metadata().unwrap();
        total += if m.is_dir() {
            du(&e.path())
        } else {
            m.blocks() * 512
        };
    }
    total
}

fn pack_files(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir.join("packs"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    v.sort();
    v
}

/// Text-like bytes: compressible (stored zstd-compressed) yet unique per seed.
fn text(len: usize, seed: u64) -> Vec<u8> {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz_(){};= \n";
    pseudo_random(len, seed)
        .into_iter()
        .map(|b| ALPHABET[b as usize % ALPHABET.len()])
        .collect()
}

/// Every kept blob and directory of `kept` reads back as written.
async fn check(store: &EmbeddedStore, kept: &HashMap<B3Digest, Vec<u8>>, dirs: &[Node]) {
    for (d, data) in kept {
        assert!(
            read_blob(store, d).await.as_deref() == Some(&data[..]),
            "blob {d} does not read back"
        );
    }
    for n in dirs {
        let Node::Directory { digest, .. } = n else {
            unreachable!()
        };
        assert!(
            store.get(digest).await.unwrap().is_some(),
            "directory {digest} lost"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rewrite_moves_every_live_object_and_deletes_the_pack() {
    let tmp = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(tmp.path()).unwrap();
    store.set_rewrite(NO_REWRITE);
    let mut kept = HashMap::new();
    let mut dead = Vec::new();
    let mut roots = Vec::new();
    // Large blobs sharing their first 2 MiB (compressible and random chunks:
    // both stored forms move), small files, directories; most of it dies.
    let shared = text(2 << 20, 7);
    for i in 0..12u64 {
        let mut big = shared.clone();
        big.extend(if i % 2 == 0 {
            pseudo_random(3 << 20, 100 + i)
        } else {
            text(3 << 20, 100 + i)
        });
        let small = text(300 + i as usize * 97, 200 + i);
        let b = put_blob(&store, &big).await;
        let s = put_blob(&store, &small).await;
        let root = put_dir(&store, &[(b, big.len()), (s, small.len())]).await;
        if i % 4 == 0 {
            kept.insert(b, big);
            kept.insert(s, small);
            roots.push(root);
        } else {
            dead.push(b);
        }
    }
    let r = store.collect(roots.clone(), NOW).await.unwrap();
    assert_eq!((r.packs_deleted, r.bytes_moved), (0, 0), "{r:?}");
    let punched = du(tmp.path());
    assert_eq!(pack_files(tmp.path()), ["00000000.pack"]);

    store.set_rewrite(RewriteOptions {
        below: 0.5,
        wait: Duration::from_secs(10),
    });
    let r = store.rewrite_packs().unwrap();
    assert_eq!(r.packs_deleted, 1, "{r:?}");
    assert!(r.bytes_moved > 0, "{r:?}");
    // The one live pack is the new one; the old file is gone.
    assert_eq!(pack_files(tmp.path()), ["00000001.pack"]);
    check(&store, &kept, &roots).await;
    for d in &dead {
        assert!(!store.has(d).await.unwrap());
    }
    let rewritten = du(tmp.path());
    eprintln!("after the sweep {punched} bytes on disk, after the rewrite {rewritten}");
    assert!(rewritten < punched, "{rewritten} >= {punched}");
    // Nothing left to rewrite: a second run does nothing.
    let again = store.rewrite_packs().unwrap();
    assert_eq!(again, Default::default());

    // Reopened: nothing cut or punched that is live.
    drop(store);
    let store = EmbeddedStore::open(tmp.path()).unwrap();
    check(&store, &kept, &roots).await;
    assert_eq!(pack_files(tmp.path()), ["00000001.pack"]);
    // New writes deduplicate against the moved chunks and read back.
    let mut again = shared.clone();
    again.extend(text(1 << 20, 999));
    let d = put_blob(&store, &again).await;
    assert_eq!(read_blob(&store, &d).await.unwrap(), again);
    // A collection keeping only that blob removes what moved, the rewrite
    // then empties the new pack too.
    store.set_rewrite(REWRITE_ALL);
    let r = store
        .collect(
            vec![Node::File {
                digest: d,
                size: again.len() as u64,
                executable: false,
            }],
            NOW,
        )
        .await
        .unwrap();
    assert!(r.packs_deleted >= 1, "{r:?}");
    assert_eq!(read_blob(&store, &d).await.unwrap(), again);
    assert!(!pack_files(tmp.path()).contains(&"00000001.pack".to_owned()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rewrite_racing_uploads_and_reads_loses_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(tmp.path()).unwrap();
    store.set_rewrite(NO_REWRITE);
    let mut kept = HashMap::new();
    let mut roots = Vec::new();
    let base: Vec<Vec<u8>> = (0..6u64).map(|i| text(2 << 20, 10 + i)).collect();
    for (i, data) in base.iter().enumerate() {
        let d = put_blob(&store, data).await;
        // Dead: most of the pack.
        put_blob(&store, &pseudo_random(4 << 20, 50 + i as u64)).await;
        roots.push(Node::File {
            digest: d,
            size: data.len() as u64,
            executable: false,
        });
        kept.insert(d, data.clone());
    }
    store.collect(roots.clone(), NOW).await.unwrap();
    store.set_rewrite(RewriteOptions {
        below: 0.9,
        wait: Duration::from_secs(20),
    });

    let stop = Arc::new(AtomicBool::new(false));
    // Uploads whose chunks are mostly the kept blobs' (dedup against the
    // objects being moved), plus a new tail each.
    let uploads = {
        let (store, stop, base) = (store.clone(), stop.clone(), base.clone());
        tokio::spawn(async move {
            let mut done = Vec::new();
            let mut i = 0u64;
            while !stop.load(Ordering::SeqCst) || i < 4 {
                let mut data = base[i as usize % base.len()].clone();
                data.extend(text(200_000, 1000 + i));
                let small = text(500, 5000 + i);
                let d = put_blob(&store, &data).await;
                let s = put_blob(&store, &small).await;
                let dir = put_dir(&store, &[(d, data.len()), (s, small.len())]).await;
                done.push((d, data, s, small, dir));
                i += 1;
            }
            done
        })
    };
    // Readers of the kept blobs: every read that completes holds the right
    // bytes; one may fail once its pack is gone, never hand out others.
    let readers: Vec<_> = (0..2)
        .map(|k| {
            let (store, stop, kept) = (store.clone(), stop.clone(), kept.clone());
            tokio::spawn(async move {
                let (mut whole, mut failed) = (0, 0);
                while !stop.load(Ordering::SeqCst) {
                    for (d, data) in kept.iter().skip(k) {
                        let mut r = store.open_read(d).await.unwrap().unwrap();
                        let mut out = Vec::new();
                        match r.read_to_end(&mut out).await {
                            Ok(_) => {
                                assert!(out == *data, "a read of {d} handed out other bytes");
                                whole += 1;
                            }
                            Err(_) => failed += 1,
                        }
                    }
                }
                (whole, failed)
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut deleted = 0;
    for _ in 0..3 {
        let s = store.clone();
        let r = tokio::task::spawn_blocking(move || s.rewrite_packs())
            .await
            .unwrap()
            .unwrap();
        deleted += r.packs_deleted;
        if !pack_files(tmp.path()).contains(&"00000000.pack".to_owned()) {
            break;
        }
    }
    stop.store(true, Ordering::SeqCst);
    let done = uploads.await.unwrap();
    for r in readers {
        let (whole, failed) = r.await.unwrap();
        eprintln!("reader: {whole} whole reads, {failed} failed");
        assert!(whole > 0);
    }
    assert!(deleted >= 1, "no pack was deleted");
    assert!(!pack_files(tmp.path()).contains(&"00000000.pack".to_owned()));
    let mut dirs = Vec::new();
    for (d, data, s, small, dir) in done {
        kept.insert(d, data);
        kept.insert(s, small);
        dirs.push(dir);
    }
    check(&store, &kept, &dirs).await;
    drop(store);
    let store = EmbeddedStore::open(tmp.path()).unwrap();
    check(&store, &kept, &dirs).await;
}
