//! The store layer's garbage collection rules (`cairn_store::gc`) on the
//! memory and redb backends: referrer protection, pins, `--max-age`, the LRU
//! order of `--max-size` (referrers first), dry runs, access times surviving
//! a restart.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use cairn_castore::blobservice::MemoryBlobService;
use cairn_castore::directoryservice::MemoryDirectoryService;
use cairn_castore::gc::{GcOptions, MemoryCollector};
use cairn_castore::{B3Digest, BlobService, Node};
use cairn_nix::store_path::StorePath;
use cairn_store::gc::{GcError, Policy};
use cairn_store::pathinfo::{MemoryPathInfoService, PathInfo, PathInfoService};
use tokio::io::AsyncWriteExt;

const NOW: GcOptions = GcOptions {
    grace: Duration::ZERO,
    dry_run: false,
    began: None,
};

struct Setup {
    collector: MemoryCollector,
    paths: MemoryPathInfoService,
}

fn setup() -> Setup {
    let collector = MemoryCollector {
        blobs: MemoryBlobService::new(),
        directories: MemoryDirectoryService::new(),
    };
    let paths = MemoryPathInfoService::new(
        Arc::new(collector.blobs.clone()),
        Arc::new(collector.directories.clone()),
    );
    Setup { collector, paths }
}

/// Registers path `n` (a file of `size` bytes) referencing `refs`.
async fn add(s: &Setup, n: u8, size: usize, refs: &[&StorePath]) -> StorePath {
    let data = vec![n; size];
    let mut w = s.collector.blobs.open_write().await;
    w.write_all(&data).await.unwrap();
    let digest = w.close().await.unwrap();
    let path = StorePath::new([n; 20], &format!("p{n}")).unwrap();
    s.paths
        .put(PathInfo {
            store_path: path.clone(),
            node: Node::File {
                digest,
                size: size as u64,
                executable: false,
            },
            references: refs.iter().map(|p| (*p).clone()).collect(),
            nar_size: size as u64,
            nar_sha256: [n; 32],
            signatures: vec![],
            deriver: None,
            ca: None,
        })
        .await
        .unwrap();
    path
}

/// Whether `p` is registered, asked without reading it (a read is an access).
async fn registered(s: &Setup, p: &StorePath) -> bool {
    use futures::TryStreamExt;
    let all: Vec<PathInfo> = s.paths.list().try_collect().await.unwrap();
    all.iter().any(|i| i.store_path == *p)
}

fn blob_of(n: u8, size: usize) -> B3Digest {
    B3Digest::of(&vec![n; size])
}

#[tokio::test]
async fn delete_refuses_while_a_referrer_stays_and_removes_content_after() {
    let s = setup();
    let lib = add(&s, 1, 100, &[]).await;
    let app = add(&s, 2, 100, &[&lib]).await;
    match cairn_store::gc::delete(&s.paths, &s.collector, std::slice::from_ref(&lib), NOW).await {
        Err(GcError::Referenced { path, referrers }) => {
            assert_eq!(path, lib.to_absolute());
            assert_eq!(referrers, vec![app.to_absolute()]);
        }
        other => panic!("{other:?}"),
    }
    assert!(registered(&s, &lib).await);
    // A dry run of the allowed delete removes nothing.
    let both = [lib.clone(), app.clone()];
    let dry = GcOptions {
        dry_run: true,
        ..NOW
    };
    let r = cairn_store::gc::delete(&s.paths, &s.collector, &both, dry)
        .await
        .unwrap();
    assert_eq!(r.paths.len(), 2);
    assert!(registered(&s, &lib).await && registered(&s, &app).await);
    assert!(s.collector.blobs.has(&blob_of(1, 100)).await.unwrap());
    // With the referrer, both go, and so does their content.
    let r = cairn_store::gc::delete(&s.paths, &s.collector, &both, NOW)
        .await
        .unwrap();
    assert_eq!(r.castore.blobs, 2);
    assert!(!registered(&s, &lib).await && !registered(&s, &app).await);
    assert!(!s.collector.blobs.has(&blob_of(1, 100)).await.unwrap());
    // Not registered (any more).
    assert!(matches!(
        cairn_store::gc::delete(&s.paths, &s.collector, &[lib], NOW).await,
        Err(GcError::NotFound(_))
    ));
}

#[tokio::test]
async fn pins_keep_a_closure_from_max_age_and_refuse_delete() {
    let s = setup();
    let lib = add(&s, 1, 100, &[]).await;
    let app = add(&s, 2, 100, &[&lib]).await;
    let loose = add(&s, 3, 100, &[]).await;
    s.paths.set_pinned(&[*app.digest()], true).await.unwrap();
    assert_eq!(s.paths.pins().await.unwrap(), vec![*app.digest()]);
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let policy = Policy {
        max_age: Some(Duration::from_secs(1)),
        castore: NOW,
        ..Default::default()
    };
    let r = cairn_store::gc::run(&s.paths, &s.collector, &policy, &|_| {})
        .await
        .unwrap();
    assert_eq!(r.paths, vec![loose.clone()]);
    assert!(registered(&s, &app).await && registered(&s, &lib).await);
    assert!(!registered(&s, &loose).await);
    assert!(matches!(
        cairn_store::gc::delete(&s.paths, &s.collector, &[app.clone(), lib.clone()], NOW).await,
        Err(GcError::Pinned(_))
    ));
    // Unpinned, the closure ages out like any other, referrer first.
    s.paths.set_pinned(&[*app.digest()], false).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let r = cairn_store::gc::run(&s.paths, &s.collector, &policy, &|_| {})
        .await
        .unwrap();
    assert_eq!(r.paths, vec![app, lib]);
}

#[tokio::test]
async fn max_age_keeps_what_was_read_recently_and_what_a_recent_path_references() {
    let s = setup();
    let old_lib = add(&s, 1, 100, &[]).await;
    let old = add(&s, 2, 100, &[]).await;
    let read = add(&s, 3, 100, &[]).await;
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let _new = add(&s, 4, 100, &[&old_lib]).await;
    // A narinfo served, a gRPC get: an access.
    s.paths.get(*read.digest()).await.unwrap();
    let policy = Policy {
        max_age: Some(Duration::from_secs(1)),
        castore: NOW,
        ..Default::default()
    };
    let dry = Policy {
        castore: GcOptions {
            dry_run: true,
            ..NOW
        },
        ..policy.clone()
    };
    let r = cairn_store::gc::run(&s.paths, &s.collector, &dry, &|_| {})
        .await
        .unwrap();
    assert_eq!(r.paths, vec![old.clone()]);
    assert!(registered(&s, &old).await);
    let r = cairn_store::gc::run(&s.paths, &s.collector, &policy, &|_| {})
        .await
        .unwrap();
    assert_eq!(r.paths, vec![old.clone()]);
    assert!(!registered(&s, &old).await);
    assert!(registered(&s, &old_lib).await && registered(&s, &read).await);
}

#[tokio::test]
async fn max_size_removes_least_recently_used_referrers_first() {
    let s = setup();
    // Accessed in this order, a second apart: x oldest.
    let x = add(&s, 1, 1000, &[]).await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let y = add(&s, 2, 1000, &[]).await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let z = add(&s, 3, 1000, &[&x]).await;
    let size = |limit| Policy {
        max_size: Some(limit),
        castore: NOW,
        ..Default::default()
    };
    // x is the oldest, but z references it: y goes first.
    let r = cairn_store::gc::run(&s.paths, &s.collector, &size(2000), &|_| {})
        .await
        .unwrap();
    assert_eq!(r.paths, vec![y.clone()]);
    assert!(r.disk_after <= 2000, "{r:?}");
    // Then z, and x only after it.
    let r = cairn_store::gc::run(&s.paths, &s.collector, &size(1000), &|_| {})
        .await
        .unwrap();
    assert_eq!(r.paths, vec![z.clone()]);
    assert!(registered(&s, &x).await);
    let r = cairn_store::gc::run(&s.paths, &s.collector, &size(0), &|_| {})
        .await
        .unwrap();
    assert_eq!(r.paths, vec![x]);
    assert_eq!(r.disk_after, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redb_pins_deletes_and_access_times_survive_a_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let blobs: Arc<dyn BlobService> = Arc::new(MemoryBlobService::new());
    let dirs = Arc::new(MemoryDirectoryService::new());
    let info = |n: u8| PathInfo {
        store_path: StorePath::new([n; 20], "p").unwrap(),
        node: Node::Symlink {
            target: cairn_castore::SymlinkTarget::try_from(&b"x"[..]).unwrap(),
        },
        references: vec![],
        nar_size: 10,
        nar_sha256: [n; 32],
        signatures: vec![],
        deriver: None,
        ca: None,
    };
    let before = {
        let svc = cairn_store::pathinfo::RedbPathInfoService::open(
            tmp.path(),
            blobs.clone(),
            dirs.clone(),
        )
        .unwrap();
        svc.put(info(1)).await.unwrap();
        svc.put(info(2)).await.unwrap();
        svc.set_pinned(&[[1; 20]], true).await.unwrap();
        svc.delete(&[[2; 20]]).await.unwrap();
        let times = svc.access_times().await.unwrap();
        assert!(times.contains_key(&[1; 20]));
        assert!(!times.contains_key(&[2; 20]));
        times
    };
    let svc = cairn_store::pathinfo::RedbPathInfoService::open(tmp.path(), blobs, dirs).unwrap();
    assert_eq!(svc.pins().await.unwrap(), vec![[1; 20]]);
    assert!(svc.get([2; 20]).await.unwrap().is_none());
    assert_eq!(svc.access_times().await.unwrap(), before);
}
