//! Garbage collection of castore content (`cairn_castore::gc`): what no root
//! reaches goes, what a root reaches stays readable, the grace period keeps
//! unregistered uploads, a dry run deletes nothing, lookups during a
//! collection keep what they found, and the embedded store gives the disk
//! back.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use cairn_castore::blobservice::MemoryBlobService;
use cairn_castore::directoryservice::MemoryDirectoryService;
use cairn_castore::embedded::EmbeddedStore;
use cairn_castore::gc::{Collector, GcOptions, MemoryCollector};
use cairn_castore::{B3Digest, BlobService, Directory, DirectoryService, Node, PathComponent};
use cairn_testkit::data::pseudo_random;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const NOW: GcOptions = GcOptions {
    grace: Duration::ZERO,
    dry_run: false,
    began: None,
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

fn file(d: B3Digest, size: usize) -> Node {
    Node::File {
        digest: d,
        size: size as u64,
        executable: false,
    }
}

/// A directory holding `files` as `f0`, `f1`, ...; stored, returned as a root node.
async fn put_dir(dirs: &dyn DirectoryService, files: &[(B3Digest, usize)]) -> Node {
    let mut dir = Directory::new();
    for (i, (d, n)) in files.iter().enumerate() {
        dir.add(
            PathComponent::try_from(format!("f{i}").as_str()).unwrap(),
            file(*d, *n),
        )
        .unwrap();
    }
    let size = dir.size();
    let digest = dirs.put(dir).await.unwrap();
    Node::Directory { digest, size }
}

fn du(dir: &std::path::Path) -> u64 {
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_sweeps_unreachable_keeps_reachable_and_gives_disk_back() {
    let tmp = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(tmp.path()).unwrap();
    let small = b"a small file".to_vec();
    let shared = pseudo_random(1 << 20, 1);
    // A large blob sharing its first MiB with one that goes.
    let mut kept_big = shared.clone();
    kept_big.extend(pseudo_random(1 << 20, 2));
    let mut dead_big = shared.clone();
    dead_big.extend(pseudo_random(8 << 20, 3));
    let s = put_blob(&store, &small).await;
    let k = put_blob(&store, &kept_big).await;
    let d = put_blob(&store, &dead_big).await;
    let dead_small = put_blob(&store, b"nobody points here").await;
    let root = put_dir(&store, &[(s, small.len()), (k, kept_big.len())]).await;
    let dead_dir = put_dir(&store, &[(dead_small, 18)]).await;
    let before = du(tmp.path());

    // Within the grace period nothing goes.
    let r = store
        .collect(vec![root.clone()], GcOptions::default())
        .await
        .unwrap();
    assert_eq!(r.blobs + r.directories + r.chunks, 0, "{r:?}");
    assert!(store.has(&d).await.unwrap());

    // A dry run counts but removes nothing.
    let dry = GcOptions {
        grace: Duration::ZERO,
        dry_run: true,
        began: None,
    };
    let r = store.collect(vec![root.clone()], dry).await.unwrap();
    assert_eq!(r.directories, 1, "{r:?}");
    assert_eq!(r.blobs, 2, "{r:?}");
    assert!(r.chunks > 100, "{r:?}");
    assert_eq!(r.disk_freed, 0);
    assert_eq!(read_blob(&store, &d).await.unwrap(), dead_big);
    assert!(store.has(&dead_small).await.unwrap());

    let r = store.collect(vec![root.clone()], NOW).await.unwrap();
    assert_eq!((r.directories, r.blobs), (1, 2), "{r:?}");
    assert!(!store.has(&d).await.unwrap());
    assert!(!store.has(&dead_small).await.unwrap());
    let Node::Directory { digest: dd, .. } = dead_dir else {
        unreachable!()
    };
    assert!(store.get(&dd).await.unwrap().is_none());
    // What the root reaches reads back whole, shared chunks included.
    assert_eq!(read_blob(&store, &s).await.unwrap(), small);
    assert_eq!(read_blob(&store, &k).await.unwrap(), kept_big);
    // The dead blob's own 8 MiB (incompressible) are given back.
    assert!(r.disk_freed >= 7 << 20, "{r:?}");
    let after = du(tmp.path());
    assert!(before - after >= 7 << 20, "du {before} -> {after}");

    // After a restart (holes punched, index rewritten), still whole.
    drop(store);
    let store = EmbeddedStore::open(tmp.path()).unwrap();
    assert_eq!(read_blob(&store, &k).await.unwrap(), kept_big);
    assert!(read_blob(&store, &d).await.is_none());
    // Writing the removed content again stores it anew.
    assert_eq!(put_blob(&store, &dead_big).await, d);
    assert_eq!(read_blob(&store, &d).await.unwrap(), dead_big);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_grace_keeps_an_unregistered_upload_and_what_it_reaches() {
    let tmp = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(tmp.path()).unwrap();
    let data = pseudo_random(300 << 10, 9);
    let b = put_blob(&store, &data).await;
    let dir = put_dir(&store, &[(b, data.len())]).await;
    // A tvix-style client put a blob and its directory, not the path info yet.
    let r = store.collect(vec![], GcOptions::default()).await.unwrap();
    assert_eq!(r, Default::default());
    assert_eq!(read_blob(&store, &b).await.unwrap(), data);
    // Once the grace period is over, and still unregistered: gone.
    let r = store.collect(vec![], NOW).await.unwrap();
    assert_eq!((r.directories, r.blobs), (1, 1), "{r:?}");
    let Node::Directory { digest, .. } = dir else {
        unreachable!()
    };
    assert!(store.get(&digest).await.unwrap().is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_lookup_by_a_client_keeps_old_content_it_builds_on() {
    let tmp = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(tmp.path()).unwrap();
    let data = pseudo_random(200 << 10, 4);
    let found = put_blob(&store, &data).await;
    let small = put_blob(&store, b"found by its writer").await;
    let other = put_blob(&store, b"unrelated and unreachable").await;
    // From here on, as in the daemon.
    store.track_lookups(Duration::from_secs(3600));
    // Old, unreachable content a client finds present, so does not upload
    // again (its directory and path info come next)...
    assert!(store.has(&found).await.unwrap());
    // ...or that a writer's dedup finds.
    assert_eq!(put_blob(&store, b"found by its writer").await, small);
    let r = store.collect(vec![], NOW).await.unwrap();
    assert_eq!(r.blobs, 1, "{r:?}");
    assert_eq!(read_blob(&store, &found).await.unwrap(), data);
    assert!(store.has(&small).await.unwrap());
    assert!(!store.has(&other).await.unwrap());
}

/// The daemon's race, made slow: a path is registered after a collection read
/// its roots, and the collection takes longer than the lookup record's
/// generations (a second each with no grace). Its content must survive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_content_of_a_path_registered_during_a_collection_is_kept() {
    let tmp = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(tmp.path()).unwrap();
    let data = pseudo_random(200 << 10, 11);
    let old = put_blob(&store, &data).await;
    let old_dir = put_dir(&store, &[(old, data.len())]).await;
    store.track_lookups(Duration::ZERO);
    // The collection begins and reads its roots: none.
    let epoch = store.begin();
    let opts = GcOptions {
        began: Some(epoch.began()),
        ..NOW
    };
    // Then a client builds on the old directory (its path info check looks
    // it up) and registers a path with it as root.
    let Node::Directory { digest, .. } = old_dir else {
        unreachable!()
    };
    assert!(store.get(&digest).await.unwrap().is_some());
    // Other writers' lookups, over more than two generations.
    for i in 0..3u8 {
        tokio::time::sleep(Duration::from_millis(1100)).await;
        put_blob(&store, &[i; 100]).await;
    }
    let r = store.collect(vec![], opts).await.unwrap();
    assert_eq!((r.directories, r.blobs), (0, 0), "{r:?}");
    assert_eq!(read_blob(&store, &old).await.unwrap(), data);
    drop(epoch);
    // The next collection, with the path gone again: swept.
    for i in 3..6u8 {
        tokio::time::sleep(Duration::from_millis(1100)).await;
        put_blob(&store, &[i; 100]).await;
    }
    let r = store.collect(vec![], NOW).await.unwrap();
    assert!(r.directories == 1 && r.blobs >= 1, "{r:?}");
    assert!(!store.has(&old).await.unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_reader_open_across_a_collection_errors_or_reads_right() {
    let tmp = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(tmp.path()).unwrap();
    let data = pseudo_random(4 << 20, 5);
    let d = put_blob(&store, &data).await;
    // The rewrite that deletes the emptied pack waits this long for the reader.
    store.set_rewrite(cairn_castore::embedded::RewriteOptions {
        below: 0.5,
        wait: Duration::from_secs(1),
    });
    let mut r = store.open_read(&d).await.unwrap().unwrap();
    let mut first = vec![0u8; 64 << 10];
    r.read_exact(&mut first).await.unwrap();
    store.collect(vec![], NOW).await.unwrap();
    let mut rest = Vec::new();
    match r.read_to_end(&mut rest).await {
        // Read ahead before the holes were punched: the right bytes.
        Ok(_) => {
            first.extend(rest);
            assert_eq!(first, data);
        }
        // Punched (zeros fail verification), or the pack deleted.
        Err(e) => assert!(
            e.kind() == std::io::ErrorKind::InvalidData || e.to_string().contains("rewritten"),
            "{e}"
        ),
    }
    assert!(!store.has(&d).await.unwrap());
}

#[tokio::test]
async fn memory_collector_follows_the_same_rules() {
    let c = MemoryCollector {
        blobs: MemoryBlobService::new(),
        directories: MemoryDirectoryService::new(),
    };
    let a = put_blob(&c.blobs, b"kept").await;
    let b = put_blob(&c.blobs, b"gone").await;
    let root = put_dir(&c.directories, &[(a, 4)]).await;
    let dead = put_dir(&c.directories, &[(b, 4)]).await;
    let r = c
        .collect(vec![root.clone()], GcOptions::default())
        .await
        .unwrap();
    assert_eq!(r, Default::default());
    let dry = GcOptions {
        grace: Duration::ZERO,
        dry_run: true,
        began: None,
    };
    let r = c.collect(vec![root.clone()], dry).await.unwrap();
    assert_eq!((r.directories, r.blobs), (1, 1));
    assert!(c.blobs.has(&b).await.unwrap());
    let r = c.collect(vec![root.clone()], NOW).await.unwrap();
    assert_eq!((r.directories, r.blobs), (1, 1));
    assert!(!c.blobs.has(&b).await.unwrap());
    assert!(c.blobs.has(&a).await.unwrap());
    let Node::Directory { digest, .. } = dead else {
        unreachable!()
    };
    assert!(c.directories.get(&digest).await.unwrap().is_none());
    // A root whose directory is missing: nothing is collected.
    let missing = Node::Directory {
        digest: B3Digest::of(b"not stored"),
        size: 1,
    };
    assert!(c.collect(vec![missing], NOW).await.is_err());
    assert!(c.blobs.has(&a).await.unwrap());
    // Written after the collection began (its roots read before): kept, with
    // no grace; the next collection takes it.
    let epoch = c.begin();
    let late = put_blob(&c.blobs, b"registered late").await;
    let opts = GcOptions {
        began: Some(epoch.began()),
        ..NOW
    };
    let r = c.collect(vec![root.clone()], opts).await.unwrap();
    assert_eq!(r.blobs, 0, "{r:?}");
    assert!(c.blobs.has(&late).await.unwrap());
    drop(epoch);
    let r = c.collect(vec![root], NOW).await.unwrap();
    assert_eq!(r.blobs, 1, "{r:?}");
}
