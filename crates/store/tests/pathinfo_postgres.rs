//! What the conformance suite does not cover of `PgPathInfoService`: damaged rows
//! are Corrupt errors (never a panic, never bad data), the NAR cache, and two
//! services on separate pools (two daemons) seeing each other's puts at once;
//! pins, access times and deletes; a path registered while a collection runs.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use cairn_castore::pg::Db;
use cairn_castore::{ErrorKind, Node, SymlinkTarget};
use cairn_nix::store_path::StorePath;
use cairn_store::pathinfo::{PathInfo, PathInfoService, PgPathInfoService};
use futures::TryStreamExt;

fn info(digest: u8, target: &str) -> PathInfo {
    PathInfo {
        store_path: StorePath::new([digest; 20], "pg-test").unwrap(),
        node: Node::Symlink {
            target: SymlinkTarget::try_from(target.as_bytes()).unwrap(),
        },
        references: vec![],
        nar_size: 100,
        nar_sha256: [1; 32],
        signatures: vec![],
        deriver: None,
        ca: None,
    }
}

/// A service on its own pool for `url` (as another daemon would have).
fn service(url: &str) -> PgPathInfoService {
    let blobs = cairn_castore::blob_service_from_addr("memory://").unwrap();
    let dirs = cairn_castore::directory_service_from_addr("memory://").unwrap();
    PgPathInfoService::new(Db::open(url).unwrap(), blobs, dirs)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damaged_rows_are_corrupt() {
    let url = cairn_testkit::postgres::server().database();
    let svc = service(&url);
    svc.put(info(1, "a")).await.unwrap();
    svc.put(info(2, "b")).await.unwrap();
    let raw = Db::open(&url).unwrap().client().await.unwrap();

    // Bytes that are no PathInfo.
    raw.execute(
        "UPDATE path_info SET info = '\\x0aff'::bytea WHERE digest = $1",
        &[&vec![1u8; 20]],
    )
    .await
    .unwrap();
    let err = svc.get([1; 20]).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Corrupt, "{err}");
    assert!(err.to_string().contains("path_info"), "{err}");
    let err = svc.list().try_collect::<Vec<_>>().await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Corrupt, "{err}");
    // Not indexed yet (as a row from before `refs`): referrers, which would
    // index it from those bytes, reports it and indexes nothing.
    raw.execute(
        "UPDATE path_info SET refs = NULL WHERE digest = $1",
        &[&vec![1u8; 20]],
    )
    .await
    .unwrap();
    let err = svc.referrers([9; 20]).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Corrupt, "{err}");
    let unindexed: i64 = raw
        .query_one("SELECT count(*) FROM path_info WHERE refs IS NULL", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(unindexed, 1);

    // A valid PathInfo under another path's digest.
    raw.execute(
        "UPDATE path_info SET info = (SELECT info FROM path_info WHERE digest = $2) WHERE digest = $1",
        &[&vec![1u8; 20], &vec![2u8; 20]],
    )
    .await
    .unwrap();
    let err = svc.get([1; 20]).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Corrupt, "{err}");
    assert!(err.to_string().contains("holds"), "{err}");

    // A put of the path repairs it (and indexes it).
    svc.put(info(1, "a")).await.unwrap();
    assert_eq!(svc.get([1; 20]).await.unwrap(), Some(info(1, "a")));
    assert_eq!(svc.referrers([9; 20]).await.unwrap(), vec![]);
    assert_eq!(svc.list().try_collect::<Vec<_>>().await.unwrap().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nar_cache_round_trip_and_damage() {
    let url = cairn_testkit::postgres::server().database();
    let svc = service(&url);
    let node = info(3, "n").node;
    assert_eq!(svc.cached_nar(&node).await.unwrap(), None);
    svc.remember_nar(&node, (42, [7; 32])).await.unwrap();
    svc.remember_nar(&node, (42, [7; 32])).await.unwrap();
    assert_eq!(svc.cached_nar(&node).await.unwrap(), Some((42, [7; 32])));
    let raw = Db::open(&url).unwrap().client().await.unwrap();
    raw.execute("UPDATE nar_cache SET nar_sha256 = '\\x01'::bytea", &[])
        .await
        .unwrap();
    // Malformed counts as absent, and remembering again repairs it.
    assert_eq!(svc.cached_nar(&node).await.unwrap(), None);
    svc.remember_nar(&node, (42, [7; 32])).await.unwrap();
    assert_eq!(svc.cached_nar(&node).await.unwrap(), Some((42, [7; 32])));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_daemons_see_each_others_puts() {
    let url = cairn_testkit::postgres::server().database();
    let (a, b) = (Arc::new(service(&url)), Arc::new(service(&url)));
    assert_eq!(b.get([4; 20]).await.unwrap(), None);
    a.put(info(4, "first")).await.unwrap();
    assert_eq!(b.get([4; 20]).await.unwrap(), Some(info(4, "first")));
    b.put(info(4, "second")).await.unwrap();
    assert_eq!(a.get([4; 20]).await.unwrap(), Some(info(4, "second")));
}

/// Pins, access times and deletes on PostgreSQL, as garbage collection uses
/// them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pins_access_times_and_deletes() {
    let url = cairn_testkit::postgres::server().database();
    let svc = service(&url);
    svc.put(info(1, "a")).await.unwrap();
    svc.put(info(2, "b")).await.unwrap();
    svc.set_pinned(&[[2; 20]], true).await.unwrap();
    assert_eq!(svc.pins().await.unwrap(), vec![[2u8; 20]]);
    // Another daemon sees the pin and the upload times.
    let other = service(&url);
    assert_eq!(other.pins().await.unwrap(), vec![[2u8; 20]]);
    let times = other.access_times().await.unwrap();
    assert_eq!(times.len(), 2, "{times:?}");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(times.values().all(|t| now.abs_diff(*t) < 60), "{times:?}");
    svc.set_pinned(&[[2; 20]], false).await.unwrap();
    assert!(svc.pins().await.unwrap().is_empty());
    svc.delete(&[[1; 20], [9; 20]]).await.unwrap();
    assert!(other.get([1; 20]).await.unwrap().is_none());
    assert!(other.get([2; 20]).await.unwrap().is_some());
}

/// A path registered after a collection read its roots (its root directory
/// old and untouched: `check_content` reads it, it does not build on it) is
/// found by the sweep, which keeps its content.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_path_registered_during_a_collection_keeps_its_content() {
    use cairn_castore::blobservice::{PgCollector, S3BlobService};
    use cairn_castore::directoryservice::PgDirectoryService;
    use cairn_castore::gc::{Collector, GcOptions};
    use cairn_castore::{BlobService, Directory, DirectoryService, PathComponent};
    use tokio::io::AsyncWriteExt;

    let db = cairn_testkit::postgres::server().database();
    let blobs = S3BlobService::from_url(&cairn_testkit::s3::server().blob_url(&db)).unwrap();
    let dirs = PgDirectoryService::from_url(&db).unwrap();
    let mut w = blobs.open_write().await;
    w.write_all(b"content of a path registered late")
        .await
        .unwrap();
    let b = w.close().await.unwrap();
    let mut dir = Directory::new();
    dir.add(
        PathComponent::try_from("f").unwrap(),
        Node::File {
            digest: b,
            size: 33,
            executable: false,
        },
    )
    .unwrap();
    let size = dir.size();
    let d = dirs.put(dir).await.unwrap();
    let paths = PgPathInfoService::new(
        Db::open_shared(&db).unwrap(),
        Arc::new(blobs.clone()),
        Arc::new(dirs.clone()),
    );
    let gc = PgCollector::new(&blobs, dirs.clone(), Some(PgPathInfoService::late_roots())).unwrap();
    let now = GcOptions {
        grace: std::time::Duration::ZERO,
        dry_run: false,
        began: None,
    };
    assert!(gc.begin().await.unwrap());
    // The roots were read (none); then the path comes.
    let mut late = info(7, "x");
    late.node = Node::Directory { digest: d, size };
    paths.put(late).await.unwrap();
    let r = gc.collect(vec![], now).await.unwrap();
    gc.end().await;
    assert_eq!((r.directories, r.blobs), (0, 0), "{r:?}");
    assert!(dirs.get(&d).await.unwrap().is_some());
    assert!(blobs.has(&b).await.unwrap());
    // Removed, the next collection takes its content.
    paths.delete(&[[7; 20]]).await.unwrap();
    let r = gc.collect(vec![], now).await.unwrap();
    assert_eq!((r.directories, r.blobs), (1, 1), "{r:?}");
}

/// `referrers` answers from the `refs` index. Rows written before that column
/// existed (NULL there) are indexed from their `info` by the first
/// `referrers`, or by a put of the same entry, which changes nothing else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn referrers_come_from_an_index_that_older_rows_join() {
    let url = cairn_testkit::postgres::server().database();
    let svc = service(&url);
    let dep = |d: u8| StorePath::new([d; 20], "dep").unwrap();
    let mut a = info(11, "a");
    a.references = vec![dep(1)];
    let mut b = info(12, "b");
    b.references = vec![dep(1), dep(2)];
    let mut c = info(13, "c");
    c.references = vec![c.store_path.clone()];
    for i in [&a, &b, &c] {
        svc.put(i.clone()).await.unwrap();
    }
    let referrers = |d: [u8; 20]| {
        let svc = svc.clone();
        async move {
            let mut found: Vec<String> = svc
                .referrers(d)
                .await
                .unwrap()
                .iter()
                .map(|p| p.to_string())
                .collect();
            found.sort();
            found
        }
    };
    let names = |infos: &[&PathInfo]| {
        let mut v: Vec<String> = infos.iter().map(|i| i.store_path.to_string()).collect();
        v.sort();
        v
    };
    assert_eq!(referrers([1; 20]).await, names(&[&a, &b]));
    assert_eq!(referrers([2; 20]).await, names(&[&b]));
    assert_eq!(referrers([13; 20]).await, names(&[&c]));
    assert!(referrers([11; 20]).await.is_empty());

    // As if written before the index: found all the same, and indexed.
    let raw = Db::open(&url).unwrap().client().await.unwrap();
    let unindexed = || async {
        raw.query_one("SELECT count(*) FROM path_info WHERE refs IS NULL", &[])
            .await
            .unwrap()
            .get::<_, i64>(0)
    };
    raw.execute("UPDATE path_info SET refs = NULL", &[])
        .await
        .unwrap();
    assert_eq!(unindexed().await, 3);
    assert_eq!(referrers([1; 20]).await, names(&[&a, &b]));
    assert_eq!(unindexed().await, 0);
    assert_eq!(referrers([2; 20]).await, names(&[&b]));

    // A put of the same entry fills in its refs, and leaves updated_at.
    let updated = || async {
        raw.query_one(
            "SELECT updated_at::text FROM path_info WHERE digest = $1",
            &[&vec![11u8; 20]],
        )
        .await
        .unwrap()
        .get::<_, String>(0)
    };
    let before = updated().await;
    raw.execute(
        "UPDATE path_info SET refs = NULL WHERE digest = $1",
        &[&vec![11u8; 20]],
    )
    .await
    .unwrap();
    svc.put(a.clone()).await.unwrap();
    assert_eq!(unindexed().await, 0);
    assert_eq!(updated().await, before);
    assert_eq!(referrers([1; 20]).await, names(&[&a, &b]));

    // The lookup can use the index (the planner may prefer a scan of so few
    // rows, so scans are turned off for the question).
    raw.batch_execute("SET enable_seqscan = off").await.unwrap();
    let plan: Vec<String> = raw
        .query(
            "EXPLAIN SELECT digest, info FROM path_info WHERE refs @> ARRAY[$1::bytea]",
            &[&vec![1u8; 20]],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(
        plan.iter().any(|l| l.contains("path_info_by_reference")),
        "{plan:#?}"
    );
}
