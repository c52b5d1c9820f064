//! The embedded persistent store: one data directory holding a redb index and
//! append-only pack files of compressed chunks.
//!
//! Layout of a data directory:
//! - `index.redb`: tables `chunks` (digest -> pack location, see [`format`]) of
//!   every visible chunk: a blob of one chunk, or a chunk of a committed blob;
//!   `blobs` (blob digest -> list of segments) for blobs of several chunks,
//!   a segment being up to 1024 chunks' (digest, location) stored in the packs;
//!   `segments` (segment digest -> pack location) for reuse;
//!   `directories` (digest -> pack location of the zstd-compressed canonical
//!   encoding); `packs` (pack id -> committed length). A small file or a directory
//!   thus costs its compressed bytes plus one index entry of 53 bytes: B-tree pages
//!   hold about twice their live data, so bulk stays in the packs.
//! - `packs/NNNNNNNN.pack`: chunk bytes back to back, zstd-compressed unless
//!   compression did not shrink them.
//!
//! Blobs are split by FastCDC (16 KiB min, 64 KiB average, 256 KiB max); a blob of
//! one chunk is stored under its own digest. A multi-chunk blob's chunks become
//! readable as blobs of their own when the blob commits (WIRE.md: chunk digests
//! answer Read and Stat).
//!
//! Visibility and crashes: a writer touches the index only when it closes: one
//! durable redb transaction records the blob's segment list and enters its chunks
//! in `chunks` (read back from the segments). Until then its chunks are only
//! bytes in a pack that no index entry refers to, never visible, and reused only
//! by itself; a writer dropped before close (or killed) leaves such bytes, cut off
//! when the store is next opened unless a later commit covers them (then punched
//! out at the next open). Garbage collection is in `gc` (its own module), pack
//! rewriting (moving live objects out of mostly dead packs) in `rewrite`. Before segments, chunks were staged in the index every 128
//! chunks, which kept a large blob's entries twice in redb's page cache. All
//! commits go through one committer thread that groups concurrent requests into one
//! transaction (group commit: one fsync for many writers) and fsyncs the packs a
//! durable commit refers to first.

pub(crate) mod format;
mod gc;
mod pack;
mod reader;
mod rewrite;
mod services;
pub(crate) mod writer;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::thread::JoinHandle;

use redb::{
    Database, Durability, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition,
};
use tokio::sync::oneshot;

use format::{BlobEntry, ChunkLoc, MAX_CHUNK, MAX_DIRECTORY, SegRef};
use pack::Packs;

pub use reader::EmbeddedBlobReader;
pub use rewrite::{RewriteOptions, RewriteReport};
pub use writer::EmbeddedBlobWriter;

const CHUNKS: TableDefinition<&[u8; 32], &[u8]> = TableDefinition::new("chunks");
const BLOBS: TableDefinition<&[u8; 32], &[u8]> = TableDefinition::new("blobs");
const SEGMENTS: TableDefinition<&[u8; 32], &[u8]> = TableDefinition::new("segments");
const DIRECTORIES: TableDefinition<&[u8; 32], &[u8]> = TableDefinition::new("directories");
/// Chunks a read found damaged (digest -> the location that failed), and the
/// blobs they belong to (digest -> empty): a write of the same content stores
/// it anew instead of deduplicating against it, and `has` says absent.
const DAMAGED: TableDefinition<&[u8; 32], &[u8]> = TableDefinition::new("damaged");
const PACKS: TableDefinition<u32, u64> = TableDefinition::new("packs");

/// Bytes of index pages redb keeps in memory. redb's default (1 GiB) lets the
/// cache grow with everything the process ever touched of the index, so a
/// long-running store's RSS grew with the store. Smaller costs small-object
/// speed (2026-11-26, load 7-13: 100k directories put/get 26%/36% slower with
/// 8 MiB than with 1 GiB, 100k 1 KiB blob reads 17% slower with 2 MiB). But the
/// cache fills to its size in any large import (26 MiB of pages after 300k
/// small files), so it sets a floor under a writer's peak RSS: `cairn import` of
/// 300k small files peaked at 47 MB with 64 MiB, 41 MB with 16 MiB, 31 MB with
/// 8 MiB (73.8 s, 80.3 s, 77.2 s: within noise, load 4). 16 MiB keeps an
/// import's RSS under 64 MB whatever its size.
const INDEX_CACHE: usize = 16 << 20;

/// A blob's chunks in order: (BLAKE3 digest, size in bytes).
pub type ChunkList = Vec<([u8; 32], u64)>;

/// Where a blob's bytes are.
pub(crate) enum Layout {
    /// One chunk, stored under the blob's digest.
    Single(ChunkLoc),
    /// Several chunks, each in `chunks` under its own digest (the format before
    /// segments).
    Chunked(ChunkList),
    /// Several chunks, listed with their locations by these segments.
    Segmented(Vec<SegRef>),
}

/// Errors of the embedded store.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EmbeddedError {
    /// A file system operation failed.
    #[error("{what} {path}: {source}")]
    Io {
        /// The operation.
        what: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The redb index failed.
    #[error("index database: {0}")]
    Db(#[source] Box<redb::Error>),
    /// Stored data failed a check: wrong hash, impossible length, unknown tag.
    #[error("corrupt store: {0}")]
    Corrupt(String),
    /// A grouped commit failed (the message of the underlying error).
    #[error("commit failed: {0}")]
    Commit(String),
    /// The store's committer thread is gone.
    #[error("store is closed")]
    Closed,
}

pub(crate) fn db_err<E: Into<redb::Error>>(e: E) -> EmbeddedError {
    EmbeddedError::Db(Box::new(e.into()))
}

/// What one writer asks the committer to record.
#[derive(Default)]
pub(crate) struct CommitReq {
    /// Chunks that become visible.
    chunks: Vec<([u8; 32], ChunkLoc)>,
    /// Per pack, the end of what the request's objects occupy there (beyond the
    /// locations listed: the chunks of a blob's segments).
    pack_ends: Vec<(u32, u64)>,
    blobs: Vec<([u8; 32], BlobEntry)>,
    directories: Vec<([u8; 32], ChunkLoc)>,
    /// Must be on disk when the reply arrives (otherwise only visible in-process).
    durable: bool,
    /// The writer's pin against pack rewrites, released once the commit is
    /// applied (`rewrite`).
    _in_use: Option<rewrite::InUse>,
}

type Reply = oneshot::Sender<Result<(), EmbeddedError>>;

struct Inner {
    db: Arc<Database>,
    packs: Arc<Packs>,
    tx: Option<mpsc::Sender<(CommitReq, Reply)>>,
    committer: Option<JoinHandle<()>>,
    dir: PathBuf,
    /// Batch buffers of finished readers, reused by later ones (see `reader`).
    read_bufs: Mutex<Vec<Vec<u8>>>,
    /// Whether the `damaged` table may hold anything: false in a healthy store,
    /// so `has` and the writers' dedup lookups skip it. Set when a read records
    /// damage; never cleared while open.
    maybe_damaged: AtomicBool,
    /// Garbage collection's lock against lookups, and the digests looked up.
    gc: gc::Tracker,
    /// Pack rewriting's packs being emptied, and the pins of writers and readers.
    rewrite: Arc<rewrite::State>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Closing the channel ends the committer; joining it releases the database
        // lock, so the same process can reopen the directory right after.
        self.tx.take();
        if let Some(h) = self.committer.take() {
            let _ = h.join();
        }
    }
}

/// [`EmbeddedStore::stats`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StoreStats {
    /// Chunks readable by digest: every blob of one chunk, and every chunk of
    /// the blobs of several.
    pub chunks: u64,
    /// Blobs of several chunks.
    pub chunked_blobs: u64,
    /// Directories.
    pub directories: u64,
    /// Disk taken by the pack files and the index (allocated blocks).
    pub disk_bytes: u64,
}

/// A data directory opened for reading and writing blobs and directories.
///
/// Cheap to clone; all clones share one index, one set of packs and one committer.
/// A data directory is opened by one process at a time (redb locks it).
#[derive(Clone)]
pub struct EmbeddedStore {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for EmbeddedStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedStore")
            .field("dir", &self.inner.dir)
            .finish()
    }
}

impl EmbeddedStore {
    /// Opens (creating if needed) the data directory `dir`, recovering from a crash:
    /// redb falls back to its last durable commit, and pack bytes past what that
    /// commit references are cut off.
    pub fn open(dir: impl AsRef<Path>) -> Result<Self, EmbeddedError> {
        let dir = dir.as_ref().to_owned();
        std::fs::create_dir_all(&dir).map_err(|source| EmbeddedError::Io {
            what: "create",
            path: dir.clone(),
            source,
        })?;
        let index = dir.join("index.redb");
        let mut builder = redb::Builder::new();
        builder.set_cache_size(INDEX_CACHE);
        let db = crate::redb_file::open_or_create(&index, builder).map_err(|source| {
            EmbeddedError::Io {
                what: "open",
                path: index.clone(),
                source,
            }
        })?;
        let txn = db.begin_write().map_err(db_err)?;
        txn.open_table(CHUNKS).map_err(db_err)?;
        txn.open_table(BLOBS).map_err(db_err)?;
        txn.open_table(SEGMENTS).map_err(db_err)?;
        txn.open_table(DIRECTORIES).map_err(db_err)?;
        let maybe_damaged = !txn
            .open_table(DAMAGED)
            .map_err(db_err)?
            .is_empty()
            .map_err(db_err)?;
        let committed = {
            let t = txn.open_table(PACKS).map_err(db_err)?;
            let mut m = HashMap::new();
            for e in t.iter().map_err(db_err)? {
                let (k, v) = e.map_err(db_err)?;
                m.insert(k.value(), v.value());
            }
            m
        };
        // Everything stored now was committed before now (the grace period's
        // clock: `gc`).
        gc::record_mark(&txn, gc::now_secs(), &committed)?;
        txn.commit().map_err(db_err)?;
        let packs = Arc::new(Packs::open(dir.join("packs"), &committed)?);
        // No writer exists yet, so every byte below a committed length that no
        // entry references is garbage (an aborted upload's, followed by a commit).
        match reclaim_unreferenced(&db, &packs) {
            Ok(0) => {}
            Ok(n) => tracing::info!(bytes = n, "gave back the space of unreferenced pack bytes"),
            Err(e) => tracing::warn!(error = %e, "cannot give back unreferenced pack bytes"),
        }
        let db = Arc::new(db);
        let (tx, rx) = mpsc::channel();
        let committer = {
            let (db, packs) = (db.clone(), packs.clone());
            std::thread::Builder::new()
                .name("cairn-committer".into())
                .spawn(move || committer(&db, &packs, rx))
                .map_err(|source| EmbeddedError::Io {
                    what: "spawn committer for",
                    path: dir.clone(),
                    source,
                })?
        };
        Ok(EmbeddedStore {
            inner: Arc::new(Inner {
                db,
                packs,
                tx: Some(tx),
                committer: Some(committer),
                dir,
                read_bufs: Mutex::new(Vec::new()),
                maybe_damaged: AtomicBool::new(maybe_damaged),
                gc: gc::Tracker::default(),
                rewrite: Arc::default(),
            }),
        })
    }

    /// Opens `dir` like [`EmbeddedStore::open`], or returns the handle this process
    /// already has open for it (redb allows one opener per data directory, and a
    /// blob and a directory service from the same URL share it).
    pub fn open_shared(dir: impl AsRef<Path>) -> Result<Self, EmbeddedError> {
        static OPEN: Mutex<Vec<(PathBuf, Weak<Inner>)>> = Mutex::new(Vec::new());
        let dir = dir.as_ref();
        std::fs::create_dir_all(dir).map_err(|source| EmbeddedError::Io {
            what: "create",
            path: dir.to_owned(),
            source,
        })?;
        let key = dir.canonicalize().map_err(|source| EmbeddedError::Io {
            what: "resolve",
            path: dir.to_owned(),
            source,
        })?;
        let mut open = OPEN.lock().unwrap_or_else(PoisonError::into_inner);
        open.retain(|(_, w)| w.strong_count() > 0);
        if let Some(inner) = open
            .iter()
            .find(|(p, _)| *p == key)
            .and_then(|(_, w)| w.upgrade())
        {
            return Ok(EmbeddedStore { inner });
        }
        let store = EmbeddedStore::open(&key)?;
        open.push((key, Arc::downgrade(&store.inner)));
        Ok(store)
    }

    /// What the store holds now, for monitoring: entry counts from the index
    /// (redb keeps each table's length, so this reads no entries) and the disk
    /// the packs and the index take. Blocking; costs one read transaction and a
    /// `stat` per pack file, not a walk of the store.
    pub fn stats(&self) -> Result<StoreStats, EmbeddedError> {
        let txn = self.inner.db.begin_read().map_err(db_err)?;
        let len = |t: TableDefinition<&[u8; 32], &[u8]>| -> Result<u64, EmbeddedError> {
            txn.open_table(t).map_err(db_err)?.len().map_err(db_err)
        };
        let mut disk_bytes = 0;
        for id in self.inner.packs.committed_lengths().into_keys() {
            disk_bytes += self.inner.packs.allocated(id)?;
        }
        let index = self.inner.dir.join("index.redb");
        disk_bytes += std::fs::metadata(&index)
            .map(|m| std::os::unix::fs::MetadataExt::blocks(&m) * 512)
            .map_err(|source| EmbeddedError::Io {
                what: "stat",
                path: index,
                source,
            })?;
        Ok(StoreStats {
            chunks: len(CHUNKS)?,
            chunked_blobs: len(BLOBS)?,
            directories: len(DIRECTORIES)?,
            disk_bytes,
        })
    }

    /// Sends `req` to the committer; await the receiver.
    fn submit(&self, req: CommitReq) -> oneshot::Receiver<Result<(), EmbeddedError>> {
        // A commit of content stored already writes no new bytes, so its age
        // cannot tell a collection to keep it: recorded instead (`gc`).
        for (d, _) in &req.directories {
            self.inner.gc.note(d);
        }
        for (d, _) in &req.blobs {
            self.inner.gc.note(d);
        }
        let (reply, rx) = oneshot::channel();
        if let Some(tx) = &self.inner.tx {
            // On a send error the reply sender is dropped and the receiver sees it.
            let _ = tx.send((req, reply));
        }
        rx
    }

    /// A writer for a new blob: write its bytes, then `close` it for its digest.
    pub fn blob_writer(&self) -> EmbeddedBlobWriter {
        EmbeddedBlobWriter::new(self.clone())
    }

    /// Whether blob `digest` is stored (including chunks of stored blobs).
    pub fn has_blob(&self, digest: &[u8; 32]) -> Result<bool, EmbeddedError> {
        self.inner.gc.lookup_found(
            digest,
            || {
                let r = self.inner.db.begin_read().map_err(db_err)?;
                if self.maybe_damaged()
                    && r.open_table(DAMAGED)
                        .map_err(db_err)?
                        .get(digest)
                        .map_err(db_err)?
                        .is_some()
                {
                    // Damaged: to be written again.
                    return Ok(false);
                }
                let c = r.open_table(CHUNKS).map_err(db_err)?;
                if c.get(digest).map_err(db_err)?.is_some() {
                    return Ok(true);
                }
                let t = r.open_table(BLOBS).map_err(db_err)?;
                Ok(t.get(digest).map_err(db_err)?.is_some())
            },
            |b| *b,
        )
    }

    /// Where blob `digest`'s bytes are, in one read transaction.
    fn blob_layout(&self, digest: &[u8; 32]) -> Result<Option<Layout>, EmbeddedError> {
        let r = self.inner.db.begin_read().map_err(db_err)?;
        let c = r.open_table(CHUNKS).map_err(db_err)?;
        if let Some(v) = c.get(digest).map_err(db_err)? {
            return Ok(Some(Layout::Single(ChunkLoc::decode(
                v.value(),
                MAX_CHUNK,
            )?)));
        }
        let t = r.open_table(BLOBS).map_err(db_err)?;
        match t.get(digest).map_err(db_err)? {
            None => Ok(None),
            Some(v) => match BlobEntry::decode(v.value())? {
                BlobEntry::Chunked(list) => Ok(Some(Layout::Chunked(list))),
                BlobEntry::Segmented(segs) => Ok(Some(Layout::Segmented(segs))),
                BlobEntry::Single => Err(EmbeddedError::Corrupt(format!(
                    "blob {} has no chunk",
                    hex(digest)
                ))),
            },
        }
    }

    /// The locations of `digests`, in one read transaction.
    pub(crate) fn chunk_locs(&self, digests: &[[u8; 32]]) -> Result<Vec<ChunkLoc>, EmbeddedError> {
        let r = self.inner.db.begin_read().map_err(db_err)?;
        let t = r.open_table(CHUNKS).map_err(db_err)?;
        digests
            .iter()
            .map(|d| match t.get(d).map_err(db_err)? {
                None => Err(EmbeddedError::Corrupt(format!(
                    "chunk {} is missing",
                    hex(d)
                ))),
                Some(v) => ChunkLoc::decode(v.value(), MAX_CHUNK),
            })
            .collect()
    }

    /// The ordered (digest, size) chunks of blob `digest`: `None` if absent, empty
    /// if the blob is stored as a single chunk. Reads every segment of the blob:
    /// the list is as long as the blob (40 bytes per 64 KiB).
    pub fn blob_chunks(&self, digest: &[u8; 32]) -> Result<Option<ChunkList>, EmbeddedError> {
        let Some(layout) = self.blob_layout(digest)? else {
            return Ok(None);
        };
        Ok(Some(match layout {
            Layout::Single(_) => Vec::new(),
            Layout::Chunked(list) => list,
            Layout::Segmented(segs) => {
                let mut list = Vec::new();
                for s in &segs {
                    let chunks = read_segment(&self.inner.packs, s)?;
                    list.extend(chunks.iter().map(|(d, l)| (*d, u64::from(l.raw_len))));
                }
                list
            }
        }))
    }

    /// Drops what is damaged of blob `digest` from the index: every chunk of it
    /// that fails verification, and the blob's own entry if any did, so that
    /// writing the same content again stores it anew (a write of a chunk whose
    /// digest is indexed keeps the indexed copy). Returns the chunks dropped.
    /// Other blobs sharing a dropped chunk read as missing until it is written
    /// again.
    pub async fn drop_damaged(&self, digest: &[u8; 32]) -> Result<usize, EmbeddedError> {
        use tokio::io::AsyncReadExt;
        let chunks: Vec<[u8; 32]> = match self.blob_chunks(digest) {
            Ok(None) => return Ok(0),
            Ok(Some(list)) if list.is_empty() => vec![*digest],
            Ok(Some(list)) => list.into_iter().map(|(d, _)| d).collect(),
            // Its chunk list itself is damaged: only the blob's entry can go.
            Err(EmbeddedError::Corrupt(_)) => Vec::new(),
            Err(e) => return Err(e),
        };
        let mut bad = Vec::new();
        let mut seen = HashSet::new();
        let mut buf = Vec::new();
        for c in chunks {
            if !seen.insert(c) {
                continue;
            }
            let Some(mut r) = self.open_blob(&c)? else {
                continue;
            };
            buf.clear();
            match r.read_to_end(&mut buf).await {
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::InvalidData => bad.push(c),
                Err(e) => {
                    return Err(EmbeddedError::Io {
                        what: "read chunk of",
                        path: self.dir().to_owned(),
                        source: e,
                    });
                }
            }
        }
        let blob_damaged = !bad.is_empty() || seen.is_empty();
        if !blob_damaged {
            return Ok(0);
        }
        let txn = self.inner.db.begin_write().map_err(db_err)?;
        {
            let mut chunks = txn.open_table(CHUNKS).map_err(db_err)?;
            for c in &bad {
                chunks.remove(c).map_err(db_err)?;
            }
            let mut blobs = txn.open_table(BLOBS).map_err(db_err)?;
            blobs.remove(digest).map_err(db_err)?;
        }
        txn.commit().map_err(db_err)?;
        Ok(bad.len())
    }

    /// The size of blob `digest`, if stored.
    pub fn blob_size(&self, digest: &[u8; 32]) -> Result<Option<u64>, EmbeddedError> {
        Ok(self.blob_layout(digest)?.map(|l| match l {
            Layout::Single(loc) => u64::from(loc.raw_len),
            Layout::Chunked(list) => list.iter().map(|c| c.1).sum(),
            Layout::Segmented(segs) => segs.iter().map(|s| s.bytes).sum(),
        }))
    }

    /// Opens blob `digest` for verified reading with seek, or `None` if absent.
    pub fn open_blob(
        &self,
        digest: &[u8; 32],
    ) -> Result<Option<EmbeddedBlobReader>, EmbeddedError> {
        // Before the layout: a rewrite waits for readers that may hold it.
        let pin = self.inner.rewrite.pin(true);
        Ok(self
            .blob_layout(digest)?
            .map(|l| EmbeddedBlobReader::new(self.clone(), *digest, l, pin)))
    }

    /// Reads chunk `digest` of `size` bytes stored at `loc` into `dst` (exactly
    /// `size` bytes long), decompressing it, and checks its BLAKE3 digest and size.
    /// On error `dst` holds unverified bytes: the caller must not hand them out.
    pub(crate) fn read_chunk_into(
        &self,
        digest: &[u8; 32],
        size: u64,
        loc: &ChunkLoc,
        dst: &mut [u8],
    ) -> Result<(), EmbeddedError> {
        if u64::from(loc.raw_len) != size || dst.len() as u64 != size {
            return Err(EmbeddedError::Corrupt(format!(
                "chunk {} has size {} where its blob says {size}",
                hex(digest),
                loc.raw_len
            )));
        }
        self.read_verified_into(loc, digest, "chunk", dst)
    }

    /// Reads the object at `loc`, decompresses it and checks it hashes to `digest`.
    fn read_verified(
        &self,
        loc: &ChunkLoc,
        digest: &[u8; 32],
        what: &str,
    ) -> Result<Vec<u8>, EmbeddedError> {
        // raw_len was bounded when the location was decoded, so is this buffer.
        let mut out = vec![0u8; loc.raw_len as usize];
        self.read_verified_into(loc, digest, what, &mut out)?;
        Ok(out)
    }

    fn read_verified_into(
        &self,
        loc: &ChunkLoc,
        digest: &[u8; 32],
        what: &str,
        dst: &mut [u8],
    ) -> Result<(), EmbeddedError> {
        read_object_into(&self.inner.packs, loc, digest, what, dst)
    }

    fn maybe_damaged(&self) -> bool {
        self.inner.maybe_damaged.load(Ordering::SeqCst)
    }

    /// Where chunk `digest` is stored, if it is (for dedup on write).
    pub(crate) fn find_chunk(&self, digest: &[u8; 32]) -> Result<Option<ChunkLoc>, EmbeddedError> {
        self.inner.gc.lookup_found(
            digest,
            || {
                let r = self.inner.db.begin_read().map_err(db_err)?;
                let t = r.open_table(CHUNKS).map_err(db_err)?;
                let Some(v) = t.get(digest).map_err(db_err)? else {
                    return Ok(None);
                };
                if self.maybe_damaged()
                    && r.open_table(DAMAGED)
                        .map_err(db_err)?
                        .get(digest)
                        .map_err(db_err)?
                        .is_some_and(|d| d.value() == v.value())
                {
                    // Stored, but damaged: the writer stores it anew.
                    return Ok(None);
                }
                let loc = ChunkLoc::decode(v.value(), MAX_CHUNK)?;
                // In a pack being rewritten: the writer stores its own copy.
                Ok((!self.inner.rewrite.draining(loc.pack)).then_some(loc))
            },
            Option::is_some,
        )
    }

    /// A read found chunk `chunk` of blob `blob` damaged at `loc`: recorded, so
    /// that writing the same content again replaces it (and `has` of either
    /// says absent until then). Reads of it stay errors until then.
    pub(crate) fn mark_damaged(&self, blob: &[u8; 32], chunk: &[u8; 32], loc: &ChunkLoc) {
        let mut marks = vec![(*chunk, loc.encode().to_vec())];
        if blob != chunk {
            marks.push((*blob, Vec::new()));
        }
        match self.record_damage(&marks) {
            Ok(()) => tracing::warn!(
                chunk = hex(chunk),
                blob = hex(blob),
                "damaged chunk: importing or uploading its content again replaces it"
            ),
            Err(e) => {
                tracing::warn!(chunk = hex(chunk), error = %e, "cannot record a damaged chunk")
            }
        }
    }

    /// A writer found the stored copy of `what` `digest` at `loc` not equal to
    /// the bytes it holds: recorded, so that its commit replaces the copy (the
    /// commit replaces an index entry only while it is recorded damaged).
    pub(crate) fn replacing_damaged(
        &self,
        what: &str,
        digest: &[u8; 32],
        loc: &ChunkLoc,
    ) -> Result<(), EmbeddedError> {
        tracing::warn!(
            digest = hex(digest),
            "stored copy of {what} is damaged: this write replaces it"
        );
        self.record_damage(&[(*digest, loc.encode().to_vec())])
    }

    /// Enters (digest, damaged location or empty) pairs in the `damaged` table.
    fn record_damage(&self, marks: &[([u8; 32], Vec<u8>)]) -> Result<(), EmbeddedError> {
        // Before the record: a lookup that sees the record must see the flag.
        self.inner.maybe_damaged.store(true, Ordering::SeqCst);
        let txn = self.inner.db.begin_write().map_err(db_err)?;
        {
            let mut t = txn.open_table(DAMAGED).map_err(db_err)?;
            for (d, v) in marks {
                t.insert(d, &v[..]).map_err(db_err)?;
            }
        }
        txn.commit().map_err(db_err)
    }

    /// Where the segment `digest` of a committed blob is stored, if any (a blob
    /// written again reuses its segments as it reuses its chunks).
    pub(crate) fn find_segment(
        &self,
        digest: &[u8; 32],
    ) -> Result<Option<ChunkLoc>, EmbeddedError> {
        self.inner.gc.lookup_found(
            digest,
            || {
                let r = self.inner.db.begin_read().map_err(db_err)?;
                let t = r.open_table(SEGMENTS).map_err(db_err)?;
                match t.get(digest).map_err(db_err)? {
                    Some(v) => ChunkLoc::decode(v.value(), format::MAX_SEGMENT)
                        .map(|l| (!self.inner.rewrite.draining(l.pack)).then_some(l)),
                    None => Ok(None),
                }
            },
            Option::is_some,
        )
    }

    /// The encoded Directory stored under `digest`, if any, verified to hash to it.
    pub fn get_directory(&self, digest: &[u8; 32]) -> Result<Option<Vec<u8>>, EmbeddedError> {
        // A path info's check reads its root directory: kept by a collection
        // running meanwhile.
        self.inner
            .gc
            .lookup_found(digest, || self.load_directory(digest), Option::is_some)
    }

    /// [`EmbeddedStore::get_directory`] without recording the lookup.
    fn load_directory(&self, digest: &[u8; 32]) -> Result<Option<Vec<u8>>, EmbeddedError> {
        match self.load_directory_once(digest) {
            // Moved by a pack rewrite between the lookup and the read.
            Err(EmbeddedError::Io { source, .. })
                if source.kind() == std::io::ErrorKind::NotFound =>
            {
                self.load_directory_once(digest)
            }
            r => r,
        }
    }

    fn load_directory_once(&self, digest: &[u8; 32]) -> Result<Option<Vec<u8>>, EmbeddedError> {
        let loc = {
            let r = self.inner.db.begin_read().map_err(db_err)?;
            let t = r.open_table(DIRECTORIES).map_err(db_err)?;
            match t.get(digest).map_err(db_err)? {
                None => return Ok(None),
                Some(v) => ChunkLoc::decode(v.value(), MAX_DIRECTORY)?,
            }
        };
        self.read_verified(&loc, digest, "directory").map(Some)
    }

    /// Where the Directory `digest` is stored, if it is.
    fn directory_loc(&self, digest: &[u8; 32]) -> Result<Option<ChunkLoc>, EmbeddedError> {
        self.inner.gc.lookup_found(
            digest,
            || {
                let r = self.inner.db.begin_read().map_err(db_err)?;
                let t = r.open_table(DIRECTORIES).map_err(db_err)?;
                match t.get(digest).map_err(db_err)? {
                    Some(v) => ChunkLoc::decode(v.value(), MAX_DIRECTORY)
                        .map(|l| (!self.inner.rewrite.draining(l.pack)).then_some(l)),
                    None => Ok(None),
                }
            },
            Option::is_some,
        )
    }

    /// Whether a Directory is stored under `digest`.
    pub fn has_directory(&self, digest: &[u8; 32]) -> Result<bool, EmbeddedError> {
        self.inner
            .gc
            .lookup_found(digest, || self.directory_stored(digest), |b| *b)
    }

    /// [`EmbeddedStore::has_directory`] without recording the lookup.
    fn directory_stored(&self, digest: &[u8; 32]) -> Result<bool, EmbeddedError> {
        let r = self.inner.db.begin_read().map_err(db_err)?;
        let t = r.open_table(DIRECTORIES).map_err(db_err)?;
        Ok(t.get(digest).map_err(db_err)?.is_some())
    }

    /// Stores already validated (digest, canonical encoding) Directories in one
    /// durable transaction: all become visible, or none.
    pub async fn put_directories(
        &self,
        dirs: Vec<([u8; 32], Vec<u8>)>,
    ) -> Result<(), EmbeddedError> {
        let store = self.clone();
        let req = tokio::task::spawn_blocking(move || store.pack_directories(dirs))
            .await
            .map_err(|e| EmbeddedError::Commit(format!("directory task: {e}")))??;
        self.submit(req).await.map_err(|_| EmbeddedError::Closed)?
    }

    /// Compresses and appends the Directories not stored yet.
    fn pack_directories(&self, dirs: Vec<([u8; 32], Vec<u8>)>) -> Result<CommitReq, EmbeddedError> {
        let pin = self.inner.rewrite.pin(false);
        let mut locs = Vec::with_capacity(dirs.len());
        for (d, bytes) in dirs {
            if bytes.len() > MAX_DIRECTORY {
                return Err(EmbeddedError::Commit(format!(
                    "directory {} of {} bytes exceeds {MAX_DIRECTORY}",
                    hex(&d),
                    bytes.len()
                )));
            }
            if let Some(old) = self.directory_loc(&d)? {
                if stored_equals(&self.inner.packs, &old, &bytes) {
                    continue;
                }
                self.replacing_damaged("directory", &d, &old)?;
            }
            locs.push((d, store_object(&self.inner.packs, &bytes)?));
        }
        Ok(CommitReq {
            directories: locs,
            durable: true,
            _in_use: Some(pin),
            ..Default::default()
        })
    }

    /// Closes the store and compacts its index (redb rewrites its pages densely and
    /// gives free space back to the file system); pack files are not touched. Takes
    /// time proportional to the index, so it is an explicit maintenance step, not
    /// part of every close. Fails if other handles to the store are still alive.
    pub fn close_and_compact(self) -> Result<(), EmbeddedError> {
        let mut inner = Arc::try_unwrap(self.inner)
            .map_err(|_| EmbeddedError::Commit("store still in use by other handles".into()))?;
        inner.tx.take();
        if let Some(h) = inner.committer.take() {
            h.join()
                .map_err(|_| EmbeddedError::Commit("committer thread panicked".into()))?;
        }
        let db = Arc::get_mut(&mut inner.db)
            .ok_or_else(|| EmbeddedError::Commit("index still in use".into()))?;
        while db.compact().map_err(db_err)? {}
        Ok(())
    }

    /// The data directory.
    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }
}

/// How an object is compressed, by what it is (measurements in docs/FORMATS.md,
/// "Compression").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Level {
    /// A whole object: a blob of one chunk (a small file) or a Directory. zstd
    /// level 9: source trees are mostly such objects, where the ratio decides the
    /// storage target and the time goes to commits, not compression.
    Whole,
    /// One chunk of a blob of several: zstd level 1, the fastest (a large blob's
    /// write speed is its compression speed), and on the measured data no larger
    /// than level 3.
    Chunk,
}

impl Level {
    /// The longest compressed form of `len` bytes worth keeping. A chunk of a
    /// large blob that zstd barely shrinks is kept raw (ZFS's rule: at least 1/8
    /// saved): every read would pay decompression, the main read cost, for a few
    /// percent of disk.
    fn max_stored(self, len: usize) -> usize {
        match self {
            Level::Whole => len.saturating_sub(1),
            Level::Chunk => len - len / 8,
        }
    }

    fn zstd(self) -> i32 {
        match self {
            Level::Whole => 9,
            Level::Chunk => 1,
        }
    }
}

/// Order-0 entropy (bits per byte, of a sample) above which a chunk is stored raw
/// without trying zstd: random or already compressed bytes. zstd would find
/// nothing in them and spend its time for it (level 6 ran at ~20 MB/s on random
/// input, level 3 at ~300 MB/s).
const RAW_ENTROPY: f64 = 7.9;

/// Objects shorter than this are always tried with zstd: the randomness test of
/// [`random_floor`] is not calibrated for them (the entropy of n random bytes is
/// far below 8 bits when n is not well above 256), and zstd is cheap on them.
const RAW_TEST_MIN: usize = 256;
/// Objects from this size on are judged by a sample, against [`RAW_ENTROPY`].
const RAW_SAMPLED: usize = 4096;

/// The order-0 entropy (bits per byte) above which `n` bytes (`RAW_TEST_MIN <=
/// n < RAW_SAMPLED`) count as random: five standard deviations below what `n`
/// uniformly random bytes show. That expectation falls short of 8 bits by
/// 255/(2n ln 2) (the plug-in estimate's bias, ~184/n) plus ~12000/n^2, and its
/// standard deviation is ~17/n (both measured over 5000 random objects of each
/// size from 256 to 4096 bytes). On 40,000 files of 64 B to 8 KiB from a Linux
/// install and a tokio source tree, no file zstd level 9 shrinks scored above it
/// (gzip, PNG and such did: 4118 of the 4141 zstd cannot shrink between 256 B
/// and 4 KiB, the rest small PNG and GIF images); source and text score 4.5 to 6.
fn random_floor(n: usize) -> f64 {
    let n = n as f64;
    8.0 - (184.0 + 5.0 * 17.0) / n - 12_000.0 / (n * n)
}

/// Whether `data` looks incompressible. From [`RAW_SAMPLED`] bytes on: the byte
/// histogram of up to 8192 bytes sampled evenly across it is almost flat. Random
/// bytes repeated within one chunk are misjudged and stored raw (across chunks,
/// dedup catches repeats): it costs space, never correctness. A smaller object
/// (a small file) is judged on all its bytes against what random bytes of its
/// length show ([`random_floor`]): level 9 took most of the CPU of importing
/// small random files.
fn looks_incompressible(data: &[u8]) -> bool {
    if data.len() < RAW_TEST_MIN {
        return false;
    }
    if data.len() < RAW_SAMPLED {
        return entropy(data.iter()) > random_floor(data.len());
    }
    let step = (data.len() / 8192).max(1);
    entropy(data.iter().step_by(step)) > RAW_ENTROPY
}

/// Order-0 entropy in bits per byte of the (non-empty) bytes `sample`:
/// log2(n) - sum(c log2 c)/n over the byte counts c, with c log2 c from a table
/// for the counts of small objects (a log2 per byte value was 2% of importing
/// small files).
fn entropy<'a>(sample: impl Iterator<Item = &'a u8>) -> f64 {
    static XLOG2X: std::sync::OnceLock<Vec<f32>> = std::sync::OnceLock::new();
    let table = XLOG2X.get_or_init(|| {
        (0..RAW_SAMPLED as u32)
            .map(|c| {
                if c == 0 {
                    0.0
                } else {
                    c as f32 * (c as f32).log2()
                }
            })
            .collect()
    });
    let mut hist = [0u32; 256];
    let mut n = 0u32;
    for b in sample {
        hist[usize::from(*b)] += 1;
        n += 1;
    }
    let sum: f64 = hist
        .iter()
        .map(|&c| match table.get(c as usize) {
            Some(v) => f64::from(*v),
            None => f64::from(c) * f64::from(c).log2(),
        })
        .sum();
    let n = f64::from(n);
    n.log2() - sum / n
}

/// zstd compression contexts not in use. A thread that compresses takes one and
/// puts it back (its level set per object): creating one per object costs more
/// than compressing a small one, and a writer's worker threads live for one batch
/// only, so contexts per thread were built (about 1 MiB each) for every 4 MiB.
static ZSTD: Mutex<Vec<zstd::bulk::Compressor<'static>>> = Mutex::new(Vec::new());
/// Contexts kept in [`ZSTD`]: more than the threads that compress at once.
const ZSTD_KEPT: usize = 32;

/// Runs `f` with a zstd context at `level`.
fn with_compressor<T>(
    level: Level,
    f: impl FnOnce(&mut zstd::bulk::Compressor<'static>) -> T,
) -> Result<T, EmbeddedError> {
    let pooled = ZSTD.lock().unwrap_or_else(PoisonError::into_inner).pop();
    let mut c = match pooled {
        Some(c) => c,
        None => zstd::bulk::Compressor::new(level.zstd())
            .map_err(|e| EmbeddedError::Commit(format!("zstd compressor: {e}")))?,
    };
    c.set_compression_level(level.zstd())
        .map_err(|e| EmbeddedError::Commit(format!("zstd level: {e}")))?;
    let out = f(&mut c);
    let mut pool = ZSTD.lock().unwrap_or_else(PoisonError::into_inner);
    if pool.len() < ZSTD_KEPT {
        pool.push(c);
    }
    Ok(out)
}

thread_local! {
    static UNZSTD: std::cell::RefCell<Option<zstd::bulk::Decompressor<'static>>> =
        const { std::cell::RefCell::new(None) };
    /// Compressed bytes of the object being read (at most 257 KiB for a chunk).
    static PACK_BUF: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// `data` zstd-compressed, or `None` when it is to be stored raw (compression
/// would not shrink it, or it looks incompressible).
pub(crate) fn encode(data: &[u8], level: Level) -> Result<Option<Vec<u8>>, EmbeddedError> {
    if data.is_empty() || looks_incompressible(data) {
        return Ok(None);
    }
    let z = with_compressor(level, |c| c.compress(data))?
        .map_err(|e| EmbeddedError::Commit(format!("zstd compress: {e}")))?;
    Ok((z.len() <= level.max_stored(data.len())).then_some(z))
}

/// Decompresses `stored` into `dst` (which it must fit); returns the bytes written.
pub(crate) fn decode_into(stored: &[u8], dst: &mut [u8]) -> std::io::Result<usize> {
    UNZSTD.with(|cell| {
        let mut cell = cell.borrow_mut();
        let d = match &mut *cell {
            Some(d) => d,
            None => cell.insert(zstd::bulk::Decompressor::new()?),
        };
        d.decompress_to_buffer(stored, dst)
    })
}

/// Appends `data`, stored as `encoded` (from [`encode`]), to the packs.
pub(crate) fn append_encoded(
    packs: &Packs,
    data: &[u8],
    encoded: Option<&[u8]>,
) -> Result<ChunkLoc, EmbeddedError> {
    let (stored, compressed) = match encoded {
        Some(z) => (z, true),
        None => (data, false),
    };
    let too_big = |_| EmbeddedError::Commit(format!("object of {} bytes too large", data.len()));
    let stored_len = u32::try_from(stored.len()).map_err(too_big)?;
    let raw_len = u32::try_from(data.len()).map_err(too_big)?;
    let (pack, offset) = packs.append(stored)?;
    Ok(ChunkLoc {
        pack,
        offset,
        stored_len,
        raw_len,
        compressed,
    })
}

/// Compresses `data` (a whole object) if that pays and appends it to the packs.
pub(crate) fn store_object(packs: &Packs, data: &[u8]) -> Result<ChunkLoc, EmbeddedError> {
    let z = encode(data, Level::Whole)?;
    append_encoded(packs, data, z.as_deref())
}

/// Reads the object at `loc` into `dst` (exactly `loc.raw_len` bytes long):
/// raw bytes straight from the pack, compressed ones through a per-thread
/// buffer; then checks that `dst` hashes to `digest`.
pub(crate) fn read_object_into(
    packs: &Packs,
    loc: &ChunkLoc,
    digest: &[u8; 32],
    what: &str,
    dst: &mut [u8],
) -> Result<(), EmbeddedError> {
    if dst.len() != loc.raw_len as usize {
        return Err(EmbeddedError::Corrupt(format!(
            "{what} {} of {} bytes read into a buffer of {}",
            hex(digest),
            loc.raw_len,
            dst.len()
        )));
    }
    if loc.compressed {
        PACK_BUF.with(|cell| {
            let mut stored = cell.borrow_mut();
            packs.read_into(loc.pack, loc.offset, loc.stored_len as usize, &mut stored)?;
            let n = decode_into(&stored, dst).map_err(|e| {
                EmbeddedError::Corrupt(format!("{what} {} does not decompress: {e}", hex(digest)))
            })?;
            if stored.capacity() > 2 * MAX_CHUNK {
                // A large Directory's buffer is not kept for the thread's life.
                *stored = Vec::new();
            }
            if n != dst.len() {
                return Err(EmbeddedError::Corrupt(format!(
                    "{what} {} decompresses to {n} bytes, not {}",
                    hex(digest),
                    dst.len()
                )));
            }
            Ok(())
        })?;
    } else {
        packs.read_exact(loc.pack, loc.offset, dst)?;
    }
    if blake3::hash(dst).as_bytes() != digest {
        return Err(EmbeddedError::Corrupt(format!(
            "{what} {} does not hash to its digest",
            hex(digest)
        )));
    }
    Ok(())
}

thread_local! {
    /// A stored copy's decompressed bytes, compared with what a writer holds.
    static RAW_BUF: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Whether the object stored at `loc` holds exactly `data`, which the caller
/// hashed to the object's digest. A write checks this before it dedups against
/// a stored copy, so that it never builds on a damaged one: a comparison, which
/// costs less than hashing the copy again.
pub(crate) fn stored_equals(packs: &Packs, loc: &ChunkLoc, data: &[u8]) -> bool {
    if loc.raw_len as usize != data.len() {
        return false;
    }
    if !loc.compressed {
        return RAW_BUF.with(|cell| {
            let mut raw = cell.borrow_mut();
            raw.resize(data.len(), 0);
            packs.read_exact(loc.pack, loc.offset, &mut raw).is_ok() && raw[..] == *data
        });
    }
    PACK_BUF.with(|stored| {
        RAW_BUF.with(|raw| {
            let (mut stored, mut raw) = (stored.borrow_mut(), raw.borrow_mut());
            if packs
                .read_into(loc.pack, loc.offset, loc.stored_len as usize, &mut stored)
                .is_err()
            {
                return false;
            }
            raw.resize(data.len(), 0);
            let same = matches!(decode_into(&stored, &mut raw), Ok(n) if n == data.len())
                && raw[..] == *data;
            if stored.capacity() > 2 * MAX_CHUNK {
                *stored = Vec::new();
            }
            if raw.capacity() > 2 * MAX_CHUNK {
                *raw = Vec::new();
            }
            same
        })
    })
}

/// The (digest, location) chunks of segment `seg`, read from the packs and
/// verified against its digest.
pub(crate) fn read_segment(
    packs: &Packs,
    seg: &SegRef,
) -> Result<Vec<([u8; 32], ChunkLoc)>, EmbeddedError> {
    // raw_len was bounded by MAX_SEGMENT when the reference was decoded.
    let mut buf = vec![0u8; seg.loc.raw_len as usize];
    read_object_into(packs, &seg.loc, &seg.digest, "segment", &mut buf)?;
    format::decode_segment(&buf, seg)
}

pub(crate) fn hex(d: &[u8; 32]) -> String {
    d.iter().map(|b| format!("{b:02x}")).collect()
}

/// Punches holes in every pack where nothing the index refers to lies
/// ([`rewrite::used_ranges`]), below its committed length; returns the bytes
/// of disk given back. Only safe while no writer runs: an uncommitted
/// writer's bytes may lie below another's commit. An unreadable segment stops
/// the reclaim: what it names is unknown, so nothing may be punched.
fn reclaim_unreferenced(db: &Database, packs: &Packs) -> Result<u64, EmbeddedError> {
    let mut used = rewrite::used_ranges(&db.begin_read().map_err(db_err)?, packs, |_| true)?;
    // Holes smaller than a page give nothing back.
    const MIN_HOLE: u64 = 64 << 10;
    let mut total = 0;
    for (id, len) in packs.committed_lengths() {
        let mut ranges = used.remove(&id).unwrap_or_default();
        rewrite::merge(&mut ranges);
        let mut at = 0u64;
        let mut gaps = Vec::new();
        for (start, end) in ranges.into_iter().chain([(len, len)]) {
            if start > at + MIN_HOLE {
                gaps.push((at, start - at));
            }
            at = at.max(end);
        }
        if gaps.is_empty() {
            continue;
        }
        let before = packs.allocated(id)?;
        for (offset, n) in gaps {
            packs.punch(id, offset, n)?;
        }
        total += before.saturating_sub(packs.allocated(id)?);
    }
    Ok(total)
}

/// Groups whatever requests are queued into one redb transaction; durable if any
/// request asks for it, after fsyncing every pack written since the last durable one.
fn committer(db: &Database, packs: &Packs, rx: mpsc::Receiver<(CommitReq, Reply)>) {
    let mut unsynced: HashSet<u32> = HashSet::new();
    // The open recorded one.
    let mut last_mark = gc::now_secs();
    loop {
        // Between commits: give back the space of failed writes, and stop
        // syncing packs that failed (a commit referring to them fails by itself).
        for id in packs.reclaim() {
            unsynced.remove(&id);
        }
        unsynced.retain(|p| !packs.is_failed(*p));
        let first = match rx.recv_timeout(std::time::Duration::from_secs(1)) {
            Ok(first) => first,
            Err(mpsc::RecvTimeoutError::Timeout) => continue,
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        };
        let mut batch = vec![first];
        while batch.len() < 4096 {
            match rx.try_recv() {
                Ok(r) => batch.push(r),
                Err(_) => break,
            }
        }
        let res = commit_batch(db, packs, &batch, &mut unsynced, &mut last_mark);
        for (_, reply) in batch {
            let _ = reply.send(match &res {
                Ok(()) => Ok(()),
                Err(e) => Err(EmbeddedError::Commit(e.to_string())),
            });
        }
    }
}

fn commit_batch(
    db: &Database,
    packs: &Packs,
    batch: &[(CommitReq, Reply)],
    unsynced: &mut HashSet<u32>,
    last_mark: &mut u64,
) -> Result<(), EmbeddedError> {
    let durable = batch.iter().any(|(r, _)| r.durable);
    // A rewrite deletes a pack only once no writer that could hold a
    // location in it is left (`rewrite`): this only guards that rule.
    for (r, _) in batch {
        let segs = r.blobs.iter().flat_map(|(_, e)| match e {
            BlobEntry::Segmented(segs) => &segs[..],
            _ => &[],
        });
        let named = r.chunks.iter().chain(&r.directories).map(|(_, l)| l.pack);
        if let Some(p) = named
            .chain(segs.map(|s| s.loc.pack))
            .chain(r.pack_ends.iter().map(|(p, _)| *p))
            .find(|p| packs.is_gone(*p))
        {
            return Err(EmbeddedError::Commit(format!(
                "a write refers to pack {p}, deleted by a pack rewrite"
            )));
        }
    }
    // The batch's small objects may still sit in the pack buffer: written out
    // before segments are read back below and before the syncs.
    packs.flush()?;
    let mut pack_ends: HashMap<u32, u64> = HashMap::new();
    for (r, _) in batch {
        let segs = r.blobs.iter().flat_map(|(_, e)| match e {
            BlobEntry::Segmented(segs) => &segs[..],
            _ => &[],
        });
        let locs = r.chunks.iter().chain(&r.directories).map(|(_, l)| l);
        let ends = locs
            .chain(segs.map(|s| &s.loc))
            .map(|loc| (loc.pack, loc.offset + u64::from(loc.stored_len)))
            .chain(r.pack_ends.iter().copied());
        for (pack, end) in ends {
            let e = pack_ends.entry(pack).or_insert(0);
            *e = (*e).max(end);
            unsynced.insert(pack);
        }
    }
    if durable {
        for p in unsynced.iter() {
            packs.sync(*p)?;
        }
    }
    let mut txn = db.begin_write().map_err(db_err)?;
    if !durable {
        txn.set_durability(Durability::None).map_err(db_err)?;
    }
    {
        let mut chunks = txn.open_table(CHUNKS).map_err(db_err)?;
        let mut blobs = txn.open_table(BLOBS).map_err(db_err)?;
        let mut dirs = txn.open_table(DIRECTORIES).map_err(db_err)?;
        let mut pt = txn.open_table(PACKS).map_err(db_err)?;
        for (&p, &end) in &pack_ends {
            let old = pt.get(p).map_err(db_err)?.map(|v| v.value()).unwrap_or(0);
            if end > old {
                pt.insert(p, end).map_err(db_err)?;
            }
        }
        let mut segments = txn.open_table(SEGMENTS).map_err(db_err)?;
        let mut damaged = txn.open_table(DAMAGED).map_err(db_err)?;
        // Almost always empty: then no write pays for a lookup in it.
        let any_damaged = !damaged.is_empty().map_err(db_err)?;
        for (r, _) in batch {
            for (d, loc) in &r.chunks {
                // A concurrent writer may have stored the same chunk: keep the
                // first, unless a read found that one damaged.
                let stored = chunks.get(d).map_err(db_err)?.map(|v| v.value().to_vec());
                match stored {
                    None => {
                        chunks.insert(d, &loc.encode()[..]).map_err(db_err)?;
                        if any_damaged {
                            damaged.remove(d).map_err(db_err)?;
                        }
                    }
                    Some(_) if !any_damaged => {}
                    Some(_) => replace_damaged(&mut chunks, &mut damaged, d, loc)?,
                }
            }
            for (d, entry) in &r.blobs {
                if matches!(entry, BlobEntry::Single) && r.chunks.iter().any(|(c, _)| c == d) {
                    // Its one chunk, under its digest, was entered just above (or
                    // was there): nothing more to look up for a small file.
                    continue;
                }
                if any_damaged {
                    // Written again after a read found it damaged: no longer absent.
                    damaged.remove(d).map_err(db_err)?;
                }
                // Stored already, the same way (its chunks found intact where they
                // are, or written again where they were damaged), or differently:
                // by a concurrent writer, or over damage, which this writer's
                // segments avoid. A new entry always lists intact, durable chunks,
                // so it replaces a different one.
                let encoded = entry.encode();
                if blobs
                    .get(d)
                    .map_err(db_err)?
                    .is_some_and(|v| v.value() == &encoded[..])
                {
                    continue;
                }
                // The chunks that must be visible for this blob, one segment (or
                // the one chunk) at a time: a 4 GiB blob has 65536.
                match entry {
                    BlobEntry::Single => publish(&mut chunks, d, None, d)?,
                    BlobEntry::Chunked(list) => {
                        for (c, _) in list {
                            publish(&mut chunks, c, None, d)?;
                        }
                    }
                    BlobEntry::Segmented(segs) => {
                        for s in segs {
                            for (c, loc) in read_segment(packs, s)? {
                                if any_damaged {
                                    replace_damaged(&mut chunks, &mut damaged, &c, &loc)?;
                                }
                                publish(&mut chunks, &c, Some(&loc), d)?;
                            }
                            if segments.get(&s.digest).map_err(db_err)?.is_none() {
                                segments
                                    .insert(&s.digest, &s.loc.encode()[..])
                                    .map_err(db_err)?;
                            } else if any_damaged {
                                replace_damaged(&mut segments, &mut damaged, &s.digest, &s.loc)?;
                            }
                        }
                    }
                }
                if !matches!(entry, BlobEntry::Single) {
                    blobs.insert(d, &encoded[..]).map_err(db_err)?;
                }
            }
            for (d, loc) in &r.directories {
                if dirs.get(d).map_err(db_err)?.is_none() {
                    dirs.insert(d, &loc.encode()[..]).map_err(db_err)?;
                } else if any_damaged {
                    replace_damaged(&mut dirs, &mut damaged, d, loc)?;
                }
            }
        }
    }
    let now = gc::now_secs();
    if durable && now >= *last_mark + gc::MARK_EVERY {
        let mut lengths = packs.committed_lengths();
        for (&p, &end) in &pack_ends {
            let e = lengths.entry(p).or_insert(0);
            *e = (*e).max(end);
        }
        gc::record_mark(&txn, now, &lengths)?;
        *last_mark = now;
    }
    txn.commit().map_err(db_err)?;
    for (p, end) in pack_ends {
        packs.committed(p, end);
    }
    if durable {
        unsynced.clear();
    }
    Ok(())
}

/// Points object `c` (a chunk, segment or directory) at `loc` if its indexed
/// location is one found damaged (a segment written again lists the chunk's
/// new location).
fn replace_damaged(
    chunks: &mut redb::Table<&[u8; 32], &[u8]>,
    damaged: &mut redb::Table<&[u8; 32], &[u8]>,
    c: &[u8; 32],
    loc: &ChunkLoc,
) -> Result<(), EmbeddedError> {
    let Some(old) = chunks.get(c).map_err(db_err)?.map(|v| v.value().to_vec()) else {
        return Ok(());
    };
    let bad = damaged
        .get(c)
        .map_err(db_err)?
        .is_some_and(|v| v.value() == &old[..]);
    if bad && old != loc.encode() {
        chunks.insert(c, &loc.encode()[..]).map_err(db_err)?;
        damaged.remove(c).map_err(db_err)?;
    }
    Ok(())
}

/// Makes chunk `c` of blob `blob` visible at `loc` unless it is visible already
/// (stored by an earlier blob, or by this one further up).
fn publish(
    chunks: &mut redb::Table<&[u8; 32], &[u8]>,
    c: &[u8; 32],
    loc: Option<&ChunkLoc>,
    blob: &[u8; 32],
) -> Result<(), EmbeddedError> {
    if chunks.get(c).map_err(db_err)?.is_some() {
        return Ok(());
    }
    let loc = loc.ok_or_else(|| {
        EmbeddedError::Corrupt(format!(
            "chunk {} of blob {} is not stored",
            hex(c),
            hex(blob)
        ))
    })?;
    chunks.insert(c, &loc.encode()[..]).map_err(db_err)?;
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests;
