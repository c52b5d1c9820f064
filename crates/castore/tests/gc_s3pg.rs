//! Garbage collection, one suite for every collector (memory, the embedded
//! store, S3 + PostgreSQL on the real servers of the test kit), then what only
//! the S3 + PostgreSQL collector has: objects gone from the bucket and rows
//! from the database, orphan packs, one collection at a time, a writer
//! building on old content while a collection runs, and a second daemon's
//! caches after a blob was removed and stored again.
#![allow(clippy::unwrap_used)]

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use cairn_castore::blobservice::{MemoryBlobService, PgCollector, S3BlobService};
use cairn_castore::directoryservice::{MemoryDirectoryService, PgDirectoryService};
use cairn_castore::embedded::EmbeddedStore;
use cairn_castore::gc::{Collector, GcOptions, MemoryCollector};
use cairn_castore::pg::Db;
use cairn_castore::{B3Digest, BlobService, Directory, DirectoryService, Node, PathComponent};
use cairn_testkit::data::pseudo_random;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const NOW: GcOptions = GcOptions {
    grace: Duration::ZERO,
    dry_run: false,
    began: None,
};

/// A store under test: its services and its collector.
struct Subject {
    blobs: Arc<dyn BlobService>,
    dirs: Arc<dyn DirectoryService>,
    gc: Arc<dyn Collector>,
    /// From here on, writers' lookups count for the sweep (the daemon's
    /// `track_lookups`; S3 + PostgreSQL: a collection's begin).
    begin: Box<dyn Fn() -> futures::future::BoxFuture<'static, ()> + Send + Sync>,
    /// Whether it keeps what writers found (the memory collector does not).
    tracks_lookups: bool,
    _tmp: Option<tempfile::TempDir>,
}

fn memory() -> Subject {
    let c = MemoryCollector {
        blobs: MemoryBlobService::new(),
        directories: MemoryDirectoryService::new(),
    };
    Subject {
        blobs: Arc::new(c.blobs.clone()),
        dirs: Arc::new(c.directories.clone()),
        gc: Arc::new(c),
        begin: Box::new(|| Box::pin(async {})),
        tracks_lookups: false,
        _tmp: None,
    }
}

fn embedded() -> Subject {
    let tmp = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(tmp.path()).unwrap();
    let s2 = store.clone();
    Subject {
        blobs: Arc::new(store.clone()),
        dirs: Arc::new(store.clone()),
        gc: Arc::new(store),
        begin: Box::new(move || {
            s2.track_lookups(Duration::from_secs(3600));
            Box::pin(async {})
        }),
        tracks_lookups: true,
        _tmp: Some(tmp),
    }
}

/// An S3 + PostgreSQL store on a fresh bucket and database.
struct Pg {
    blobs: S3BlobService,
    dirs: PgDirectoryService,
    gc: Arc<PgCollector>,
    url: String,
    db: String,
}

fn pg_on(db: &str, url: &str) -> Pg {
    let blobs = S3BlobService::from_url(url).unwrap();
    let dirs = PgDirectoryService::from_url(db).unwrap();
    let gc = Arc::new(PgCollector::new(&blobs, dirs.clone(), None).unwrap());
    Pg {
        blobs,
        dirs,
        gc,
        url: url.to_owned(),
        db: db.to_owned(),
    }
}

fn pg() -> Pg {
    let db = cairn_testkit::postgres::server().database();
    let url = cairn_testkit::s3::server().blob_url(&db);
    pg_on(&db, &url)
}

fn s3pg() -> Subject {
    let p = pg();
    let gc = p.gc.clone();
    Subject {
        blobs: Arc::new(p.blobs.clone()),
        dirs: Arc::new(p.dirs.clone()),
        gc: p.gc.clone(),
        begin: Box::new(move || {
            let gc = gc.clone();
            Box::pin(async move {
                assert!(gc.begin().await.unwrap());
            })
        }),
        tracks_lookups: true,
        _tmp: None,
    }
}

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

/// A directory holding `files` as `f0`, `f1`, ... (and `sub` if given).
async fn put_dir(
    dirs: &dyn DirectoryService,
    files: &[(B3Digest, usize)],
    sub: Option<Node>,
) -> Node {
    let mut dir = Directory::new();
    for (i, (d, n)) in files.iter().enumerate() {
        dir.add(
            PathComponent::try_from(format!("f{i}").as_str()).unwrap(),
            file(*d, *n),
        )
        .unwrap();
    }
    if let Some(sub) = sub {
        dir.add(PathComponent::try_from("sub").unwrap(), sub)
            .unwrap();
    }
    let size = dir.size();
    let digest = dirs.put(dir).await.unwrap();
    Node::Directory { digest, size }
}

fn dir_digest(n: &Node) -> B3Digest {
    match n {
        Node::Directory { digest, .. } => *digest,
        _ => unreachable!(),
    }
}

/// The shared suite: what no root reaches goes (after the grace period),
/// what a root reaches stays readable, a dry run removes nothing, and what a
/// writer finds after the collection began stays.
async fn suite(name: &str, s: Subject) {
    let (blobs, dirs) = (s.blobs.as_ref(), s.dirs.as_ref());
    let shared = pseudo_random(1 << 20, 1);
    let mut big_live = shared.clone();
    big_live.extend(pseudo_random(600 << 10, 2));
    let mut big_dead = shared.clone();
    big_dead.extend(pseudo_random(600 << 10, 3));
    let small_live = b"a small live file".to_vec();
    let small_dead = b"a small dead file".to_vec();
    let bl = put_blob(blobs, &big_live).await;
    let bd = put_blob(blobs, &big_dead).await;
    let sl = put_blob(blobs, &small_live).await;
    let sd = put_blob(blobs, &small_dead).await;
    let sub = put_dir(dirs, &[(sl, small_live.len())], None).await;
    let root = put_dir(dirs, &[(bl, big_live.len())], Some(sub.clone())).await;
    let dead_sub = put_dir(dirs, &[(sd, small_dead.len())], None).await;
    let dead = put_dir(dirs, &[(bd, big_dead.len())], Some(dead_sub.clone())).await;

    // Within the grace period: nothing goes.
    let r =
        s.gc.collect(vec![root.clone()], GcOptions::default())
            .await
            .unwrap();
    assert_eq!((r.directories, r.blobs), (0, 0), "{name}: {r:?}");
    // Dry: counted, nothing removed.
    let dry = GcOptions {
        grace: Duration::ZERO,
        dry_run: true,
        began: None,
    };
    let r = s.gc.collect(vec![root.clone()], dry).await.unwrap();
    assert_eq!((r.directories, r.blobs), (2, 2), "{name}: {r:?}");
    assert!(blobs.has(&bd).await.unwrap(), "{name}");
    assert!(
        dirs.get(&dir_digest(&dead)).await.unwrap().is_some(),
        "{name}"
    );

    let r = s.gc.collect(vec![root.clone()], NOW).await.unwrap();
    assert_eq!((r.directories, r.blobs), (2, 2), "{name}: {r:?}");
    assert!(r.stored_bytes > 0, "{name}: {r:?}");
    for d in [bd, sd] {
        assert!(!blobs.has(&d).await.unwrap(), "{name}: {d} stays");
    }
    for d in [dead, dead_sub] {
        assert!(dirs.get(&dir_digest(&d)).await.unwrap().is_none(), "{name}");
    }
    assert_eq!(read_blob(blobs, &bl).await.unwrap(), big_live, "{name}");
    assert_eq!(read_blob(blobs, &sl).await.unwrap(), small_live, "{name}");
    assert!(
        dirs.get(&dir_digest(&sub)).await.unwrap().is_some(),
        "{name}"
    );
    // The shared chunks stayed with the live blob; the dead blob stored
    // again is whole.
    assert_eq!(put_blob(blobs, &big_dead).await, bd, "{name}");
    assert_eq!(read_blob(blobs, &bd).await.unwrap(), big_dead, "{name}");

    // Unregistered now (no root): kept within the grace period, then gone.
    let r = s.gc.collect(vec![], GcOptions::default()).await.unwrap();
    assert_eq!((r.directories, r.blobs), (0, 0), "{name}: {r:?}");
    let r = s.gc.collect(vec![], NOW).await.unwrap();
    assert_eq!(r.directories, 2, "{name}: {r:?}");
    assert!(!blobs.has(&bl).await.unwrap(), "{name}");

    if !s.tracks_lookups {
        return;
    }
    // Old, unreachable content a writer finds after the collection began
    // stays with what it reaches; the rest goes.
    let found = pseudo_random(200 << 10, 4);
    let f = put_blob(blobs, &found).await;
    let again = put_blob(blobs, b"found by its writer").await;
    let other = put_blob(blobs, b"unrelated and unreachable").await;
    let kept_dir = put_dir(dirs, &[(f, found.len())], None).await;
    (s.begin)().await;
    assert!(blobs.has(&f).await.unwrap());
    assert_eq!(put_blob(blobs, b"found by its writer").await, again);
    // A new directory built on the stored one (as a client uploads a tree
    // whose subtree is stored already).
    let top = put_dir(dirs, &[], Some(kept_dir.clone())).await;
    let r = s.gc.collect(vec![], NOW).await.unwrap();
    assert_eq!(r.blobs, 1, "{name}: {r:?}");
    assert_eq!(read_blob(blobs, &f).await.unwrap(), found, "{name}");
    assert!(blobs.has(&again).await.unwrap(), "{name}");
    assert!(!blobs.has(&other).await.unwrap(), "{name}");
    drop(top);
    assert!(
        dirs.get(&dir_digest(&kept_dir)).await.unwrap().is_some(),
        "{name}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_collector_conformance() {
    suite("memory", memory()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_collector_conformance() {
    suite("embedded", embedded()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3pg_collector_conformance() {
    suite("s3+pg", s3pg()).await;
}

/// The bucket's pack objects (files of s3s-fs).
fn packs(url: &str) -> Vec<PathBuf> {
    let name = url
        .strip_prefix("s3://")
        .and_then(|r| r.split('?').next())
        .unwrap();
    let dir = cairn_testkit::s3::server().root().join(name).join("packs");
    let mut out: Vec<PathBuf> = std::fs::read_dir(&dir)
        .map(|rd| rd.map(|e| e.unwrap().path()).collect())
        .unwrap_or_default();
    out.retain(|p| !p.to_string_lossy().contains(".s3s"));
    out.sort();
    out
}

async fn count(db: &str, table: &str) -> i64 {
    let c = Db::open(db).unwrap().client().await.unwrap();
    c.query_one(&format!("SELECT count(*) FROM {table}"), &[])
        .await
        .unwrap()
        .get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn objects_leave_the_bucket_and_rows_the_database() {
    let p = pg();
    // A large blob in a pack of its own (multipart), small ones in a group
    // commit's pack, a directory.
    let big = pseudo_random(9 << 20, 11);
    let b = put_blob(&p.blobs, &big).await;
    let s = put_blob(&p.blobs, b"small and dead").await;
    let d = put_dir(&p.dirs, &[(b, big.len()), (s, 14)], None).await;
    let keep = put_blob(&p.blobs, b"small and live").await;
    let before = packs(&p.url);
    assert_eq!(before.len(), 3, "{before:?}");
    assert!(count(&p.db, "blob_chunks").await > 10);

    let r = p.gc.collect(vec![file(keep, 14)], NOW).await.unwrap();
    assert_eq!((r.directories, r.blobs), (1, 2), "{r:?}");
    assert!(r.chunks > 10, "{r:?}");
    let after = packs(&p.url);
    assert_eq!(after.len(), 1, "{after:?}");
    assert!(r.disk_freed > 9 << 20, "{r:?}");
    assert_eq!(count(&p.db, "blob_chunks").await, 1);
    assert_eq!(count(&p.db, "blob_lists").await, 0);
    assert_eq!(count(&p.db, "directories").await, 0);
    assert_eq!(count(&p.db, "blob_packs").await, 1);
    assert!(p.dirs.get(&dir_digest(&d)).await.unwrap().is_none());
    assert_eq!(
        read_blob(&p.blobs, &keep).await.unwrap(),
        b"small and live".to_vec()
    );
    assert_eq!(p.gc.disk_bytes().unwrap(), {
        let c = Db::open(&p.db).unwrap().client().await.unwrap();
        let n: i64 = c
            .query_one("SELECT sum(size)::bigint FROM blob_packs", &[])
            .await
            .unwrap()
            .get(0);
        n as u64
    });

    // A pack object no row names (a writer killed between its upload and
    // its index, before packs were entered first) goes once it is older
    // than the grace period.
    let stray = after[0].with_file_name("0123456789abcdef0123456789abcdef");
    std::fs::write(&stray, b"stray bytes").unwrap();
    let r =
        p.gc.collect(vec![file(keep, 14)], GcOptions::default())
            .await
            .unwrap();
    assert_eq!(r.disk_freed, 0, "young: {r:?}");
    assert!(stray.exists());
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let r = p.gc.collect(vec![file(keep, 14)], NOW).await.unwrap();
    assert_eq!(r.disk_freed, 11, "{r:?}");
    assert!(!stray.exists());
    assert_eq!(packs(&p.url).len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_collection_at_a_time_and_other_daemons_read_what_was_stored_again() {
    let p = pg();
    // A second daemon on the same store, without a chunk cache (so its reads
    // go by the index and the bucket).
    let url2 = format!("{}&cache_size=0", p.url);
    let p2 = pg_on(&p.db, &url2);
    assert!(p.gc.begin().await.unwrap());
    assert!(
        !p2.gc.begin().await.unwrap(),
        "a second collector waits its turn"
    );
    let err = p2.gc.collect(vec![], NOW).await.unwrap_err();
    assert!(err.to_string().contains("another process"), "{err}");
    p.gc.end().await;
    assert!(p2.gc.begin().await.unwrap());
    p2.gc.end().await;

    let data = b"stored, read, removed, stored again".to_vec();
    let d = put_blob(&p.blobs, &data).await;
    assert_eq!(read_blob(&p2.blobs, &d).await.unwrap(), data);
    p.gc.collect(vec![], NOW).await.unwrap();
    assert!(!p2.blobs.has(&d).await.unwrap());
    // Stored again, in another pack: the other daemon reads it from there.
    assert_eq!(put_blob(&p.blobs, &data).await, d);
    assert_eq!(read_blob(&p2.blobs, &d).await.unwrap(), data);
}

/// Writers through another service (daemon) build on old content while
/// collections run back to back: every blob a writer closed and every
/// directory it stored afterwards is whole (an upload may fail cleanly and be
/// retried, never succeed and lose bytes).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writers_racing_collections_lose_nothing_they_were_told_is_stored() {
    let p = pg();
    let p2 = pg_on(&p.db, &p.url);
    let grace = GcOptions {
        grace: Duration::from_secs(2),
        dry_run: false,
        began: None,
    };
    // Old content nothing reaches: the writers store the same bytes again.
    let olds: Vec<Vec<u8>> = (0..20u64)
        .map(|i| pseudo_random(20_000 + i as usize * 7_000, 100 + i))
        .collect();
    for o in &olds {
        put_blob(&p.blobs, o).await;
    }
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let gc = p.gc.clone();
    let stop2 = stop.clone();
    // What the writers stored so far is registered, as a path's root would be
    // (unregistered, it would rightly go once older than the grace period,
    // which a slow machine's loop outlasts).
    let registered: Arc<std::sync::Mutex<Vec<Node>>> = Arc::default();
    let roots = registered.clone();
    let collector = tokio::spawn(async move {
        let mut rounds = 0;
        let mut removed = 0;
        while !stop2.load(std::sync::atomic::Ordering::Relaxed) {
            let now = roots.lock().unwrap().clone();
            removed += gc.collect(now, grace).await.unwrap().blobs;
            rounds += 1;
        }
        (rounds, removed)
    });
    let mut stored = Vec::new();
    let mut retries = 0;
    for round in 0..30u64 {
        let o = &olds[(round % 20) as usize];
        let mut data = o.clone();
        data.extend(pseudo_random(70_000, 1000 + round));
        let (a, b) = loop {
            match (try_put(&p2.blobs, o).await, try_put(&p2.blobs, &data).await) {
                (Ok(a), Ok(b)) => break (a, b),
                (a, b) => {
                    for e in [a.err(), b.err()].into_iter().flatten() {
                        assert!(e.contains("upload again"), "{e}");
                    }
                    retries += 1;
                }
            }
        };
        let n = put_dir(&p2.dirs, &[(a, o.len()), (b, data.len())], None).await;
        registered.lock().unwrap().push(n.clone());
        stored.push((n, a, o.clone(), b, data));
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (rounds, removed) = collector.await.unwrap();
    eprintln!("{rounds} collections removed {removed} blobs; {retries} uploads retried");
    assert!(rounds >= 2, "{rounds} collections ran");
    // A collection with every stored directory as a root finds them all
    // (a missing directory would fail it) and keeps their blobs.
    let roots: Vec<Node> = stored.iter().map(|(n, ..)| n.clone()).collect();
    p.gc.collect(roots, NOW).await.unwrap();
    for (n, a, o, b, data) in &stored {
        let dir = p2
            .dirs
            .get(&dir_digest(n))
            .await
            .unwrap()
            .expect("directory");
        assert_eq!(dir.nodes().count(), 2);
        assert_eq!(&read_blob(&p.blobs, a).await.unwrap(), o);
        assert_eq!(&read_blob(&p.blobs, b).await.unwrap(), data);
    }
}

async fn try_put(blobs: &dyn BlobService, data: &[u8]) -> Result<B3Digest, String> {
    let mut w = blobs.open_write().await;
    w.write_all(data).await.map_err(|e| e.to_string())?;
    w.close().await.map_err(|e| e.to_string())
}
