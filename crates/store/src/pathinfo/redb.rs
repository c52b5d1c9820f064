//! [`RedbPathInfoService`]: path infos in `pathinfo.redb`, a redb file next to the
//! embedded castore's `index.redb` in the same data directory.
//!
//! Tables:
//! - `pathinfo`: store path digest (20 bytes) -> the canonical protobuf encoding of
//!   the `PathInfo` (as [`PathInfo`] converts it). Values are validated again when
//!   read, so a damaged file shows up as `Corrupt`, not as bad data.
//! - `nar_cache`: canonical protobuf encoding of a root `Node` with an empty name ->
//!   its NAR size (u64 little-endian) and SHA-256 (32 bytes), for CalculateNAR. A
//!   malformed value counts as absent (it is recomputed and overwritten).
//! - `pins`: store path digest -> empty: pinned paths (garbage collection's
//!   policies never remove them or their closures).
//! - `access`: store path digest -> unix seconds (u64) of its last access or
//!   upload, at [`ACCESS_GRAIN`]: noted in memory on every `get` and `put`, and
//!   written by the committer in one transaction every [`ACCESS_FLUSH`] (and
//!   when the file closes), only for paths whose recorded time is older by a
//!   grain: never a durable write per request. A kill loses at most the last
//!   interval's accesses, which only makes those paths look older.
//! - `referrers`: referenced path's digest ++ referrer's digest (40 bytes) ->
//!   empty, one row per reference of each entry, written and removed in the
//!   transactions that put, replace and delete entries: `referrers` (Nix's
//!   `queryReferrers`) is a range scan, not a walk of every entry. A file from
//!   before this table gets it built, complete, in one transaction when it
//!   opens. It costs bulk puts about half again their time (100k puts: 5.1 s
//!   → 7.6–8.4 s in `referrers_scale`), and saves 0.23 s per query at 100k.
//!
//! Writes go through one committer thread per open file, which groups whatever
//! writes are queued into one durable transaction (group commit): concurrent puts
//! share one fsync, and each put still returns only after the transaction holding
//! it is on disk. Within a group, writes apply in the order they were queued, so a
//! later put of the same path wins as it would one by one.

use std::collections::HashMap;
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError, Weak, mpsc};
use std::thread::JoinHandle;

use async_trait::async_trait;
use cairn_castore::{BlobService, DirectoryService, Error, Node};
use cairn_nix::store_path::StorePath;
use futures::stream::BoxStream;
use prost::Message;
use redb::{Database, ReadableDatabase, ReadableTable as _, TableDefinition};
use tokio::sync::oneshot;

use super::{PathInfo, PathInfoService, check_content, decode_stored, nar_cache_key};
use crate::proto;

const PATHINFO: TableDefinition<&[u8; 20], &[u8]> = TableDefinition::new("pathinfo");
const NAR_CACHE: TableDefinition<&[u8], &[u8]> = TableDefinition::new("nar_cache");
const PINS: TableDefinition<&[u8; 20], ()> = TableDefinition::new("pins");
const ACCESS: TableDefinition<&[u8; 20], u64> = TableDefinition::new("access");
/// Referenced path's digest ++ referrer's digest, for every reference of every
/// stored path: `referrers` is a range of it. Kept in the transactions that
/// change `pathinfo`; built from `pathinfo` when a file made before it opens.
const REFERRERS: TableDefinition<&[u8; 40], ()> = TableDefinition::new("referrers");

/// Access times are recorded to this precision (seconds).
pub const ACCESS_GRAIN: u64 = 3600;
/// Accesses noted in memory are written out this often.
pub const ACCESS_FLUSH: std::time::Duration = std::time::Duration::from_secs(60);

/// Accesses noted in memory, not written yet: digest -> unix seconds.
type Pending = Arc<Mutex<HashMap<[u8; 20], u64>>>;

/// The file's name inside the data directory.
pub const FILE_NAME: &str = "pathinfo.redb";

/// How many entries one read transaction of `list` fetches.
const LIST_BATCH: usize = 256;

/// redb's page cache for `pathinfo.redb` (its default is 1 GiB, and a
/// collection, which lists every path, would keep the whole file in memory,
/// and every page its deletes dirty: 50 MB at 100k paths). Hot narinfos are
/// served from `CachingPathInfoService` in front of it; the rest from the
/// OS's page cache.
const CACHE_BYTES: usize = 16 << 20;

/// At most this many writes share one transaction.
const MAX_GROUP: usize = 1024;

/// One write for the committer.
enum Write {
    /// `pathinfo`: digest -> encoded PathInfo, with the digests of its
    /// references (for `referrers`).
    PathInfo([u8; 20], Vec<u8>, Vec<[u8; 20]>),
    /// `nar_cache`: encoded node -> size and SHA-256.
    NarCache(Vec<u8>, Vec<u8>),
    /// Removes a path (and its pin and access time).
    Delete([u8; 20]),
    /// Pins (true) or unpins a path.
    Pin([u8; 20], bool),
    /// Writes out the accesses noted so far.
    FlushAccess,
}

type Reply = oneshot::Sender<Result<(), String>>;

/// The open file and its committer; dropping it stops the committer and closes the
/// file (so the same process can open it again).
struct Db {
    db: Arc<Database>,
    tx: Option<mpsc::Sender<(Write, Reply)>>,
    committer: Option<JoinHandle<()>>,
    path: PathBuf,
    access: Pending,
}

impl Drop for Db {
    fn drop(&mut self) {
        // Closing the channel ends the committer once the queue is drained.
        self.tx.take();
        if let Some(h) = self.committer.take() {
            let _ = h.join();
        }
    }
}

impl Db {
    /// Queues `write` and waits until the transaction holding it is on disk.
    async fn write(&self, write: Write) -> Result<(), Error> {
        let (reply, done) = oneshot::channel();
        let closed = || {
            Error::storage(std::io::Error::other(format!(
                "{}: committer stopped",
                self.path.display()
            )))
        };
        self.tx
            .as_ref()
            .ok_or_else(closed)?
            .send((write, reply))
            .map_err(|_| closed())?;
        done.await.map_err(|_| closed())?.map_err(|e| {
            Error::storage(std::io::Error::other(format!(
                "{}: commit failed: {e}",
                self.path.display()
            )))
        })
    }
}

impl Db {
    /// Queues `writes` at once (so they share transactions) and waits for all.
    async fn write_all(&self, writes: impl Iterator<Item = Write>) -> Result<(), Error> {
        for r in futures::future::join_all(writes.map(|w| self.write(w))).await {
            r?;
        }
        Ok(())
    }
}

/// Takes the first queued write and whatever else is already queued behind it,
/// commits them in one durable transaction, then answers each.
fn committer(db: &Database, rx: mpsc::Receiver<(Write, Reply)>, access: &Pending) {
    let mut flushed = std::time::Instant::now();
    loop {
        if flushed.elapsed() >= ACCESS_FLUSH {
            if let Err(e) = flush_access(db, access) {
                tracing::warn!(error = %e, "{FILE_NAME}: cannot write access times");
            }
            flushed = std::time::Instant::now();
        }
        let first = match rx.recv_timeout(ACCESS_FLUSH) {
            Ok(first) => first,
            Err(mpsc::RecvTimeoutError::Timeout) => continue,
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        };
        let mut group = vec![first];
        while group.len() < MAX_GROUP {
            match rx.try_recv() {
                Ok(w) => group.push(w),
                Err(_) => break,
            }
        }
        let mut res = commit_group(db, &group).map_err(|e| e.to_string());
        if res.is_ok() && group.iter().any(|(w, _)| matches!(w, Write::FlushAccess)) {
            res = flush_access(db, access).map_err(|e| e.to_string());
            flushed = std::time::Instant::now();
        }
        for (_, reply) in group {
            let _ = reply.send(res.clone());
        }
    }
    if let Err(e) = flush_access(db, access) {
        tracing::warn!(error = %e, "{FILE_NAME}: cannot write access times");
    }
}

/// Writes the noted accesses whose recorded time is older by a grain, in one
/// transaction (none if there are none).
fn flush_access(db: &Database, access: &Pending) -> Result<(), redb::Error> {
    let pending = std::mem::take(&mut *access.lock().unwrap_or_else(PoisonError::into_inner));
    if pending.is_empty() {
        return Ok(());
    }
    let txn = db.begin_write()?;
    let mut changed = false;
    {
        let paths = txn.open_table(PATHINFO)?;
        let mut t = txn.open_table(ACCESS)?;
        for (d, at) in pending {
            let old = t.get(&d)?.map(|v| v.value()).unwrap_or(0);
            // A path deleted since its access was noted gets no record.
            if at >= old + ACCESS_GRAIN && paths.get(&d)?.is_some() {
                t.insert(&d, at)?;
                changed = true;
            }
        }
    }
    if changed {
        txn.commit()?;
    } else {
        txn.abort()?;
    }
    Ok(())
}

fn commit_group(db: &Database, group: &[(Write, Reply)]) -> Result<(), redb::Error> {
    // Default durability: on disk when commit returns.
    let txn = db.begin_write()?;
    // Writing what is stored already (a re-import, a repeated upload) changes
    // nothing: a group of only such writes is not committed, so costs no fsync.
    // What it found was made durable by the commit that wrote it.
    let mut changed = false;
    {
        let mut pathinfo = txn.open_table(PATHINFO)?;
        let mut nar_cache = txn.open_table(NAR_CACHE)?;
        let mut pins = txn.open_table(PINS)?;
        let mut access = txn.open_table(ACCESS)?;
        let mut referrers = txn.open_table(REFERRERS)?;
        for (write, _) in group {
            let new = match write {
                Write::Delete(digest) => {
                    let old = pathinfo.remove(digest)?;
                    let a = match old {
                        Some(old) => {
                            unindex(&mut referrers, digest, old.value())?;
                            true
                        }
                        None => false,
                    };
                    let b = pins.remove(digest)?.is_some();
                    let c = access.remove(digest)?.is_some();
                    a || b || c
                }
                Write::Pin(digest, true) => pins.insert(digest, ())?.is_none(),
                Write::Pin(digest, false) => pins.remove(digest)?.is_some(),
                Write::FlushAccess => false,
                Write::PathInfo(digest, bytes, refs) => {
                    let same = pathinfo.get(digest)?.is_some_and(|v| v.value() == bytes);
                    if !same {
                        if let Some(old) = pathinfo.insert(digest, bytes.as_slice())? {
                            unindex(&mut referrers, digest, old.value())?;
                        }
                        index(&mut referrers, digest, refs)?;
                    }
                    !same
                }
                Write::NarCache(key, value) => {
                    let same = nar_cache
                        .get(key.as_slice())?
                        .is_some_and(|v| v.value() == value);
                    if !same {
                        nar_cache.insert(key.as_slice(), value.as_slice())?;
                    }
                    !same
                }
            };
            changed |= new;
        }
    }
    if changed {
        txn.commit()?;
    } else {
        txn.abort()?;
    }
    Ok(())
}

fn referrer_key(referenced: &[u8; 20], referrer: &[u8; 20]) -> [u8; 40] {
    let mut k = [0u8; 40];
    k[..20].copy_from_slice(referenced);
    k[20..].copy_from_slice(referrer);
    k
}

/// The digests of the references of a stored entry; none if it cannot be
/// decoded (a corrupt entry, reported by every read of it).
fn stored_references(digest: &[u8; 20], bytes: &[u8]) -> Vec<[u8; 20]> {
    match decode(digest, bytes) {
        Ok(info) => info.references.iter().map(|r| *r.digest()).collect(),
        Err(e) => {
            tracing::warn!(error = %e, "{FILE_NAME}: its references are not indexed");
            Vec::new()
        }
    }
}

/// Adds the `referrers` rows of `digest`'s entry, whose references are `refs`.
fn index(
    referrers: &mut redb::Table<&[u8; 40], ()>,
    digest: &[u8; 20],
    refs: &[[u8; 20]],
) -> Result<(), redb::Error> {
    for r in refs {
        referrers.insert(&referrer_key(r, digest), ())?;
    }
    Ok(())
}

/// Removes the `referrers` rows of the entry `bytes` stored for `digest`.
fn unindex(
    referrers: &mut redb::Table<&[u8; 40], ()>,
    digest: &[u8; 20],
    bytes: &[u8],
) -> Result<(), redb::Error> {
    for r in stored_references(digest, bytes) {
        referrers.remove(&referrer_key(&r, digest))?;
    }
    Ok(())
}

/// Path infos in a redb file; every `put` is durable when it returns, and
/// concurrent puts share a transaction (see the module documentation).
///
/// Cheap to clone. redb allows one opener of a file per process:
/// [`RedbPathInfoService::open_shared`] hands out the handle already open.
#[derive(Clone)]
pub struct RedbPathInfoService {
    db: Arc<Db>,
    blobs: Arc<dyn BlobService>,
    directories: Arc<dyn DirectoryService>,
}

fn storage<E: Into<redb::Error>>(e: E) -> Error {
    Error::storage(e.into())
}

fn io(what: &str, path: &Path, e: std::io::Error) -> Error {
    Error::Io(std::io::Error::new(
        e.kind(),
        format!("{what} {}: {e}", path.display()),
    ))
}

fn decode(digest: &[u8; 20], bytes: &[u8]) -> Result<PathInfo, Error> {
    decode_stored(FILE_NAME, digest, bytes)
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, Error> + Send + 'static,
) -> Result<T, Error> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::storage(std::io::Error::other(e.to_string())))?
}

impl RedbPathInfoService {
    /// Opens (creating if needed) `pathinfo.redb` in data directory `dir`; `put`
    /// checks content against `blobs` and `directories`.
    pub fn open(
        dir: impl AsRef<Path>,
        blobs: Arc<dyn BlobService>,
        directories: Arc<dyn DirectoryService>,
    ) -> Result<Self, Error> {
        let db = Arc::new(open_db(dir.as_ref())?);
        Ok(Self {
            db,
            blobs,
            directories,
        })
    }

    /// Like [`RedbPathInfoService::open`], but shares the database this process
    /// already has open for `dir` (a second `Database` on the same file fails).
    pub fn open_shared(
        dir: impl AsRef<Path>,
        blobs: Arc<dyn BlobService>,
        directories: Arc<dyn DirectoryService>,
    ) -> Result<Self, Error> {
        static OPEN: Mutex<Vec<(PathBuf, Weak<Db>)>> = Mutex::new(Vec::new());
        let dir = dir.as_ref();
        std::fs::create_dir_all(dir).map_err(|e| io("create", dir, e))?;
        let key = dir.canonicalize().map_err(|e| io("resolve", dir, e))?;
        let mut open = OPEN.lock().unwrap_or_else(PoisonError::into_inner);
        open.retain(|(_, w)| w.strong_count() > 0);
        let db = match open
            .iter()
            .find(|(p, _)| *p == key)
            .and_then(|(_, w)| w.upgrade())
        {
            Some(db) => db,
            None => {
                let db = Arc::new(open_db(&key)?);
                open.push((key, Arc::downgrade(&db)));
                db
            }
        };
        Ok(Self {
            db,
            blobs,
            directories,
        })
    }
}

/// Compacts `pathinfo.redb` of data directory `dir`, which must not be open in
/// any process (redb keeps the pages of deleted entries in its file until then);
/// a directory without one is left alone.
pub fn compact_redb_file(dir: &Path) -> Result<(), Error> {
    let path = dir.join(FILE_NAME);
    if !path.exists() {
        return Ok(());
    }
    let mut db = Database::open(&path).map_err(|e| io("open", &path, std::io::Error::other(e)))?;
    while db
        .compact()
        .map_err(|e| io("compact", &path, std::io::Error::other(e)))?
    {}
    Ok(())
}

fn open_db(dir: &Path) -> Result<Db, Error> {
    std::fs::create_dir_all(dir).map_err(|e| io("create", dir, e))?;
    let path = dir.join(FILE_NAME);
    let mut builder = Database::builder();
    builder.set_cache_size(CACHE_BYTES);
    let db = cairn_castore::redb_file::open_or_create(&path, builder)
        .map_err(|e| io("open", &path, e))?;
    // Tables are created once: a write at every open would change the file of a
    // store that is only read.
    let (missing, build_index) = {
        let txn = db.begin_read().map_err(storage)?;
        let build_index = txn.open_table(REFERRERS).is_err();
        let missing = txn.open_table(PATHINFO).is_err()
            || txn.open_table(NAR_CACHE).is_err()
            || txn.open_table(PINS).is_err()
            || txn.open_table(ACCESS).is_err();
        (missing || build_index, build_index)
    };
    if missing {
        let txn = db.begin_write().map_err(storage)?;
        let pathinfo = txn.open_table(PATHINFO).map_err(storage)?;
        txn.open_table(NAR_CACHE).map_err(storage)?;
        txn.open_table(PINS).map_err(storage)?;
        txn.open_table(ACCESS).map_err(storage)?;
        let mut referrers = txn.open_table(REFERRERS).map_err(storage)?;
        if build_index {
            // A file from before the index: built in the same transaction, so
            // the table exists only complete.
            let mut rows = 0u64;
            for e in pathinfo.iter().map_err(storage)? {
                let (k, v) = e.map_err(storage)?;
                let digest = *k.value();
                let refs = stored_references(&digest, v.value());
                index(&mut referrers, &digest, &refs).map_err(storage)?;
                rows += refs.len() as u64;
            }
            if rows > 0 {
                tracing::info!(rows, "{FILE_NAME}: built the referrers index");
            }
        }
        drop((pathinfo, referrers));
        txn.commit().map_err(storage)?;
    }
    let db = Arc::new(db);
    let (tx, rx) = mpsc::channel();
    let access = Pending::default();
    let committer = {
        let (db, access) = (db.clone(), access.clone());
        std::thread::Builder::new()
            .name("cairn-pathinfo-committer".into())
            .spawn(move || committer(&db, rx, &access))
            .map_err(|e| io("spawn the committer of", &path, e))?
    };
    Ok(Db {
        db,
        tx: Some(tx),
        committer: Some(committer),
        path,
        access,
    })
}

impl RedbPathInfoService {
    /// How many paths are registered (redb keeps the table's length: no walk).
    /// Blocking.
    pub fn len(&self) -> Result<u64, Error> {
        use redb::ReadableTableMetadata as _;
        let txn = self.db.db.begin_read().map_err(storage)?;
        txn.open_table(PATHINFO)
            .map_err(storage)?
            .len()
            .map_err(storage)
    }

    /// Whether no path is registered. Blocking.
    pub fn is_empty(&self) -> Result<bool, Error> {
        Ok(self.len()? == 0)
    }
}

#[async_trait]
impl PathInfoService for RedbPathInfoService {
    async fn get(&self, digest: [u8; 20]) -> Result<Option<PathInfo>, Error> {
        let db = self.db.db.clone();
        blocking(move || {
            let txn = db.begin_read().map_err(storage)?;
            let table = txn.open_table(PATHINFO).map_err(storage)?;
            match table.get(&digest).map_err(storage)? {
                Some(v) => Ok(Some(decode(&digest, v.value())?)),
                None => Ok(None),
            }
        })
        .await
        .inspect(|found| {
            if found.is_some() {
                self.note_access(digest);
            }
        })
    }

    async fn referrers(&self, digest: [u8; 20]) -> Result<Vec<StorePath>, Error> {
        let db = self.db.db.clone();
        blocking(move || {
            let txn = db.begin_read().map_err(storage)?;
            let index = txn.open_table(REFERRERS).map_err(storage)?;
            let paths = txn.open_table(PATHINFO).map_err(storage)?;
            let (lo, hi) = (
                referrer_key(&digest, &[0; 20]),
                referrer_key(&digest, &[0xff; 20]),
            );
            let mut found = Vec::new();
            for e in index.range::<&[u8; 40]>(&lo..=&hi).map_err(storage)? {
                let (k, _) = e.map_err(storage)?;
                let mut referrer = [0u8; 20];
                referrer.copy_from_slice(&k.value()[20..]);
                if let Some(v) = paths.get(&referrer).map_err(storage)? {
                    found.push(decode(&referrer, v.value())?.store_path);
                }
            }
            Ok(found)
        })
        .await
    }

    fn note_access(&self, digest: [u8; 20]) {
        let now = super::now_secs();
        let mut pending = self
            .db
            .access
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        pending.insert(digest, now);
    }

    async fn access_times(&self) -> Result<HashMap<[u8; 20], u64>, Error> {
        self.db.write(Write::FlushAccess).await?;
        let db = self.db.db.clone();
        blocking(move || {
            let txn = db.begin_read().map_err(storage)?;
            let t = txn.open_table(ACCESS).map_err(storage)?;
            let mut m = HashMap::new();
            for e in t.iter().map_err(storage)? {
                let (k, v) = e.map_err(storage)?;
                m.insert(*k.value(), v.value());
            }
            Ok(m)
        })
        .await
    }

    async fn delete(&self, digests: &[[u8; 20]]) -> Result<(), Error> {
        self.db
            .write_all(digests.iter().map(|d| Write::Delete(*d)))
            .await
    }

    async fn pins(&self) -> Result<Vec<[u8; 20]>, Error> {
        let db = self.db.db.clone();
        blocking(move || {
            let txn = db.begin_read().map_err(storage)?;
            let t = txn.open_table(PINS).map_err(storage)?;
            let mut v = Vec::new();
            for e in t.iter().map_err(storage)? {
                v.push(*e.map_err(storage)?.0.value());
            }
            Ok(v)
        })
        .await
    }

    async fn set_pinned(&self, digests: &[[u8; 20]], pinned: bool) -> Result<(), Error> {
        self.db
            .write_all(digests.iter().map(|d| Write::Pin(*d, pinned)))
            .await
    }

    async fn put(&self, info: PathInfo) -> Result<PathInfo, Error> {
        check_content(&info, self.blobs.as_ref(), self.directories.as_ref()).await?;
        let bytes = proto::PathInfo::from(&info).encode_to_vec();
        let digest = *info.store_path.digest();
        let refs = info.references.iter().map(|r| *r.digest()).collect();
        self.db.write(Write::PathInfo(digest, bytes, refs)).await?;
        self.note_access(digest);
        Ok(info)
    }

    async fn cached_nar(&self, node: &Node) -> Result<Option<(u64, [u8; 32])>, Error> {
        let db = self.db.db.clone();
        let key = nar_cache_key(node);
        blocking(move || {
            let txn = db.begin_read().map_err(storage)?;
            let table = txn.open_table(NAR_CACHE).map_err(storage)?;
            let Some(v) = table.get(key.as_slice()).map_err(storage)? else {
                return Ok(None);
            };
            let v = v.value();
            match (v.get(..8), v.get(8..)) {
                (Some(size), Some(sha)) if v.len() == 40 => {
                    let mut size_le = [0u8; 8];
                    size_le.copy_from_slice(size);
                    let mut sha256 = [0u8; 32];
                    sha256.copy_from_slice(sha);
                    Ok(Some((u64::from_le_bytes(size_le), sha256)))
                }
                _ => {
                    tracing::warn!(
                        len = v.len(),
                        "{FILE_NAME}: malformed nar_cache value, recomputing"
                    );
                    Ok(None)
                }
            }
        })
        .await
    }

    async fn remember_nar(&self, node: &Node, nar: (u64, [u8; 32])) -> Result<(), Error> {
        let key = nar_cache_key(node);
        let mut value = Vec::with_capacity(40);
        value.extend_from_slice(&nar.0.to_le_bytes());
        value.extend_from_slice(&nar.1);
        self.db.write(Write::NarCache(key, value)).await
    }

    fn list(&self) -> BoxStream<'static, Result<PathInfo, Error>> {
        let db = self.db.db.clone();
        Box::pin(async_stream::try_stream! {
            let mut after: Option<[u8; 20]> = None;
            loop {
                let db = db.clone();
                let batch = blocking(move || {
                    let txn = db.begin_read().map_err(storage)?;
                    let table = txn.open_table(PATHINFO).map_err(storage)?;
                    let start = match &after {
                        Some(k) => Bound::Excluded(k),
                        None => Bound::Unbounded,
                    };
                    let mut batch = Vec::with_capacity(LIST_BATCH);
                    for entry in table
                        .range::<&[u8; 20]>((start, Bound::Unbounded))
                        .map_err(storage)?
                        .take(LIST_BATCH)
                    {
                        let (k, v) = entry.map_err(storage)?;
                        let digest = k.value();
                        batch.push((*digest, decode(digest, v.value())));
                    }
                    Ok(batch)
                })
                .await?;
                let done = batch.len() < LIST_BATCH;
                for (digest, info) in batch {
                    after = Some(digest);
                    yield info?;
                }
                if done {
                    break;
                }
            }
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use cairn_castore::SymlinkTarget;
    use cairn_nix::store_path::StorePath;

    fn info(target: &str) -> PathInfo {
        PathInfo {
            store_path: StorePath::new([9; 20], "same").unwrap(),
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

    /// Two puts of one path queued back to back (so most likely in one group):
    /// the later one wins, as it would one after the other; and it is on disk.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn later_put_of_a_path_wins_within_a_group() {
        let tmp = tempfile::tempdir().unwrap();
        let blobs = cairn_castore::blob_service_from_addr("memory://").unwrap();
        let dirs = cairn_castore::directory_service_from_addr("memory://").unwrap();
        {
            let svc = RedbPathInfoService::open(tmp.path(), blobs.clone(), dirs.clone()).unwrap();
            for round in 0..20 {
                let (first, second) = (
                    info(&format!("first{round}")),
                    info(&format!("second{round}")),
                );
                let (a, b) = futures::join!(svc.put(first), svc.put(second.clone()));
                a.unwrap();
                b.unwrap();
                assert_eq!(svc.get([9; 20]).await.unwrap(), Some(second));
            }
        }
        let svc = RedbPathInfoService::open(tmp.path(), blobs, dirs).unwrap();
        assert_eq!(svc.get([9; 20]).await.unwrap(), Some(info("second19")));
    }
}
