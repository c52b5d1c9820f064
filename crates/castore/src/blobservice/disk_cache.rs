//! [`DiskChunkCache`]: verified chunks kept in a local directory, bounded by size.
//!
//! A store whose bytes live far away (S3) serves a hot NAR from here instead of
//! fetching its chunks again. The cache is log-structured: chunks (decompressed,
//! each behind its digest and length) are appended by one writer thread to
//! segment files `seg-XXXXXXXX` of a sixteenth of the bound each, and an index
//! in memory maps a digest to its segment and offset. A read is one `pread` of
//! an open file and a BLAKE3 hash: a file per chunk cost an open, a read and a
//! close (about 60 µs) per small file, which made a hot NAR of many small files
//! ten times slower than the embedded store. Beyond the bound the oldest segment
//! is deleted whole; a chunk read from the older half of the segments is
//! appended again, so what is used stays (FIFO with reinsertion: close to LRU
//! without per-entry bookkeeping on disk). Nothing is synced: it is a cache, and
//! every read hashes the bytes again before one is handed out, so a torn or
//! damaged record is a miss (and is forgotten), never wrong bytes. A segment is
//! sealed with an index block when it is full or the cache is dropped; at start
//! the sealed segments' index blocks, and a scan of any unsealed one, find what
//! an earlier process cached, so a restarted daemon keeps its cache warm.

use std::collections::{BTreeMap, HashMap};
use std::fs::{File, OpenOptions};
use std::hash::{BuildHasherDefault, Hasher};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use bytes::Bytes;

use crate::B3Digest;

/// A record's header: the chunk's digest and its length (u32, little endian).
const HEADER: usize = 36;
/// An entry of a sealed segment's index block: digest, offset, length.
const INDEX_ENTRY: usize = 40;
/// The end of a sealed segment: index block offset (u64), entry count (u64),
/// [`MAGIC`].
const TRAILER: usize = 24;
const MAGIC: &[u8; 8] = b"cairnsg1";
/// Largest chunk kept (chunks are at most 256 KiB; this bounds what a damaged
/// header can make a scan believe).
const MAX_RECORD: u32 = 16 << 20;
/// Bytes of chunks waiting to be written in the background; beyond it, offers
/// are dropped: a cold read of a large store offers everything it reads, faster
/// than a disk may take it, and queued bytes would grow with the read.
const MAX_QUEUED: usize = 16 << 20;
/// Cached chunks up to this size are read on the calling task: a `pread` from
/// the page cache and a hash of a few KiB take microseconds.
const INLINE_READ: usize = 16 << 10;
/// Bytes of back-to-back chunks [`DiskChunkCache::get_many`] reads with one
/// read at most.
const SPAN_READ: u64 = 4 << 20;
/// Bytes the writer appends with one write.
const WRITE_BATCH: usize = 4 << 20;

/// Where a chunk is: segment id, offset of its bytes (after the header), length.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Loc {
    seg: u32,
    offset: u32,
    len: u32,
}

/// Keys are the first 16 bytes of BLAKE3 digests, uniformly distributed
/// already: hashing them again would only cost time. Two chunks sharing them
/// (never seen in practice) would make one of them a verified miss.
#[derive(Default)]
struct KeyHasher(u64);

impl Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }
    fn write_u128(&mut self, n: u128) {
        self.0 = n as u64;
    }
}

type Key = u128;

fn key(digest: &B3Digest) -> Key {
    let mut k = [0u8; 16];
    k.copy_from_slice(&digest.as_bytes()[..16]);
    u128::from_le_bytes(k)
}

struct Segment {
    file: Arc<File>,
    /// Bytes of the file (records, and the index block once sealed).
    bytes: u64,
}

#[derive(Default)]
struct State {
    index: HashMap<Key, Loc, BuildHasherDefault<KeyHasher>>,
    segments: BTreeMap<u32, Segment>,
    bytes: u64,
}

impl State {
    /// Whether `loc` is in the older half of the cache's capacity (more than
    /// half the bound was written after its segment): a hit there is appended
    /// again, or it would soon be evicted with its segment. Relative to the
    /// bound, not to what is held: in a cache far from full nothing is old (a
    /// hot read right after a cold one rewrote half of what it read).
    fn is_old(&self, loc: &Loc, segment_size: u64, max_bytes: u64) -> bool {
        self.segments.last_key_value().is_some_and(|(last, _)| {
            u64::from(last - loc.seg.min(*last)) * segment_size > max_bytes / 2
        })
    }

    /// Deletes the oldest segments (never `keep`, the one being written) until
    /// at most `max` bytes remain; returns their paths' ids, for the files to be
    /// removed outside the lock.
    fn evict(&mut self, max: u64, keep: Option<u32>) -> Vec<u32> {
        let mut gone = Vec::new();
        while self.bytes > max {
            let Some((&id, _)) = self.segments.first_key_value() else {
                break;
            };
            if Some(id) == keep {
                break;
            }
            if let Some(seg) = self.segments.remove(&id) {
                self.bytes -= seg.bytes;
            }
            gone.push(id);
        }
        if !gone.is_empty() {
            let first = self
                .segments
                .first_key_value()
                .map_or(u32::MAX, |(k, _)| *k);
            self.index.retain(|_, loc| loc.seg >= first);
        }
        gone
    }
}

/// The segment being appended to.
struct Open {
    id: u32,
    file: Arc<File>,
    len: u64,
    /// (digest, offset, length) of its records, for its index block.
    entries: Vec<([u8; 32], u32, u32)>,
}

struct Writer {
    open: Option<Open>,
    next_id: u32,
}

/// Chunks cached on local disk; see the module documentation.
#[derive(Clone)]
pub struct DiskChunkCache {
    inner: Arc<Inner>,
}

struct Inner {
    dir: PathBuf,
    max_bytes: u64,
    segment_size: u64,
    state: Mutex<State>,
    writer: Mutex<Writer>,
    /// Chunks offered for writing in the background ([`DiskChunkCache::offer`]),
    /// and the bytes they hold.
    queue: Mutex<Option<std::sync::mpsc::Sender<(B3Digest, Bytes)>>>,
    queued: AtomicUsize,
}

impl Drop for Inner {
    fn drop(&mut self) {
        let w = self
            .writer
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(open) = w.open.take()
            && let Err(e) = seal(&open)
        {
            tracing::debug!(error = %e, "cannot seal the local chunk cache's segment");
        }
    }
}

impl std::fmt::Debug for DiskChunkCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DiskChunkCache")
            .field("dir", &self.inner.dir)
            .field("max_bytes", &self.inner.max_bytes)
            .finish()
    }
}

fn segment_path(dir: &Path, id: u32) -> PathBuf {
    dir.join(format!("seg-{id:08x}"))
}

fn parse_segment_name(name: &str) -> Option<u32> {
    let hex = name.strip_prefix("seg-")?;
    if hex.len() != 8
        || !hex
            .bytes()
            .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c))
    {
        return None;
    }
    u32::from_str_radix(hex, 16).ok()
}

/// Appends the index block and trailer of a full (or last) segment.
fn seal(open: &Open) -> io::Result<()> {
    let mut block = Vec::with_capacity(open.entries.len() * INDEX_ENTRY + TRAILER);
    for (digest, offset, len) in &open.entries {
        block.extend_from_slice(digest);
        block.extend_from_slice(&offset.to_le_bytes());
        block.extend_from_slice(&len.to_le_bytes());
    }
    block.extend_from_slice(&open.len.to_le_bytes());
    block.extend_from_slice(&(open.entries.len() as u64).to_le_bytes());
    block.extend_from_slice(MAGIC);
    open.file.write_all_at(&block, open.len)
}

/// The records of a segment left by an earlier process: from its index block if
/// it was sealed, else by walking its headers up to the first that cannot be
/// right (the torn end of a write).
fn read_segment(file: &File, file_len: u64) -> Vec<([u8; 32], u32, u32)> {
    let u32_at = |b: &[u8], at: usize| u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]);
    let u64_at = |b: &[u8], at: usize| {
        let mut x = [0u8; 8];
        x.copy_from_slice(&b[at..at + 8]);
        u64::from_le_bytes(x)
    };
    let mut trailer = [0u8; TRAILER];
    if file_len >= TRAILER as u64
        && file
            .read_exact_at(&mut trailer, file_len - TRAILER as u64)
            .is_ok()
        && &trailer[16..] == MAGIC
    {
        let (at, count) = (u64_at(&trailer, 0), u64_at(&trailer, 8));
        let block_len = count.checked_mul(INDEX_ENTRY as u64);
        if let Some(block_len) = block_len
            && at
                .checked_add(block_len)
                .and_then(|e| e.checked_add(TRAILER as u64))
                == Some(file_len)
        {
            let mut block = vec![0u8; block_len as usize];
            if file.read_exact_at(&mut block, at).is_ok() {
                return block
                    .chunks_exact(INDEX_ENTRY)
                    .filter_map(|e| {
                        let mut d = [0u8; 32];
                        d.copy_from_slice(&e[..32]);
                        let (offset, len) = (u32_at(e, 32), u32_at(e, 36));
                        (u64::from(offset) + u64::from(len) <= at).then_some((d, offset, len))
                    })
                    .collect();
            }
        }
    }
    let mut out = Vec::new();
    let mut at = 0u64;
    let mut header = [0u8; HEADER];
    while at + HEADER as u64 <= file_len && file.read_exact_at(&mut header, at).is_ok() {
        let len = u32_at(&header, 32);
        let start = at + HEADER as u64;
        if len == 0
            || len > MAX_RECORD
            || start + u64::from(len) > file_len
            || start > u64::from(u32::MAX)
        {
            break;
        }
        let mut d = [0u8; 32];
        d.copy_from_slice(&header[..32]);
        out.push((d, start as u32, len));
        at = start + u64::from(len);
    }
    out
}

fn verified(digest: &B3Digest, bytes: Vec<u8>) -> Option<Bytes> {
    (blake3::hash(&bytes).as_bytes() == digest.as_bytes()).then(|| Bytes::from(bytes))
}

impl DiskChunkCache {
    /// The cache in `dir` (created if absent), holding at most `max_bytes`. Finds
    /// what an earlier process left there.
    pub fn open(dir: &Path, max_bytes: u64) -> io::Result<Self> {
        std::fs::create_dir_all(dir).map_err(|e| annotate(e, "create", dir))?;
        let mut found = BTreeMap::new();
        for entry in std::fs::read_dir(dir).map_err(|e| annotate(e, "read", dir))? {
            let entry = entry?;
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if let Some(id) = parse_segment_name(&name) {
                found.insert(id, entry.path());
            } else if name.len() == 2 && entry.file_type()?.is_dir() {
                // The layout of earlier versions, a file per chunk: a cache.
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
        let mut state = State::default();
        for (&id, path) in &found {
            let file = File::open(path)?;
            let len = file.metadata()?.len();
            for (digest, offset, len) in read_segment(&file, len) {
                let loc = Loc {
                    seg: id,
                    offset,
                    len,
                };
                state.index.insert(key(&B3Digest::from(digest)), loc);
            }
            state.bytes += len;
            state.segments.insert(
                id,
                Segment {
                    file: Arc::new(file),
                    bytes: len,
                },
            );
        }
        let next_id = found.keys().next_back().map_or(0, |id| id + 1);
        for id in state.evict(max_bytes, None) {
            let _ = std::fs::remove_file(segment_path(dir, id));
        }
        Ok(DiskChunkCache {
            inner: Arc::new(Inner {
                dir: dir.to_owned(),
                max_bytes,
                segment_size: (max_bytes / 16).clamp(1 << 20, 64 << 20),
                state: Mutex::new(state),
                writer: Mutex::new(Writer {
                    open: None,
                    next_id,
                }),
                queue: Mutex::new(None),
                queued: AtomicUsize::new(0),
            }),
        })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.inner
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether the chunk is cached (its bytes may still turn out damaged).
    pub fn contains(&self, digest: &B3Digest) -> bool {
        self.state().index.contains_key(&key(digest))
    }

    /// The size of the chunk if it is cached (its bytes may still turn out
    /// damaged).
    pub fn size_of(&self, digest: &B3Digest) -> Option<u64> {
        self.state()
            .index
            .get(&key(digest))
            .map(|l| u64::from(l.len))
    }

    /// Bytes on disk now (records and index blocks).
    pub fn len_bytes(&self) -> u64 {
        self.state().bytes
    }

    /// Where the chunk is, and whether a hit should append it again.
    fn locate(&self, digest: &B3Digest) -> Option<(Loc, Arc<File>, bool)> {
        let state = self.state();
        let loc = *state.index.get(&key(digest))?;
        let seg = state.segments.get(&loc.seg)?;
        Some((
            loc,
            seg.file.clone(),
            state.is_old(&loc, self.inner.segment_size, self.inner.max_bytes),
        ))
    }

    /// The chunk's bytes if cached and intact; a damaged record is forgotten.
    pub async fn get(&self, digest: &B3Digest) -> Option<Bytes> {
        let (loc, file, old) = self.locate(digest)?;
        let bytes = if loc.len as usize <= INLINE_READ {
            self.read(digest, loc, &file)
        } else {
            let this = self.clone();
            let d = *digest;
            tokio::task::spawn_blocking(move || this.read(&d, loc, &file))
                .await
                .ok()
                .flatten()
        }?;
        if old {
            self.offer(*digest, bytes.clone());
        }
        Some(bytes)
    }

    /// Several chunks at once (a run of a blob), read on one blocking thread:
    /// each `Some` if cached and intact. Chunks lying back to back in a segment
    /// (a blob cached in order) are read with one read into one buffer that
    /// their bytes are slices of: a `pread` per chunk into a zeroed buffer each
    /// spent more time zeroing and faulting in memory than hashing.
    pub async fn get_many(&self, digests: Vec<B3Digest>) -> Vec<Option<Bytes>> {
        let this = self.clone();
        let n = digests.len();
        tokio::task::spawn_blocking(move || this.get_many_blocking(&digests))
            .await
            .unwrap_or_else(|_| vec![None; n])
    }

    fn get_many_blocking(&self, digests: &[B3Digest]) -> Vec<Option<Bytes>> {
        let locs: Vec<Option<(Loc, bool)>> = {
            let state = self.state();
            let (size, max) = (self.inner.segment_size, self.inner.max_bytes);
            digests
                .iter()
                .map(|d| {
                    let loc = *state.index.get(&key(d))?;
                    Some((loc, state.is_old(&loc, size, max)))
                })
                .collect()
        };
        let mut out = vec![None; digests.len()];
        let mut i = 0;
        while i < digests.len() {
            let Some((first, _)) = locs[i] else {
                i += 1;
                continue;
            };
            let mut j = i + 1;
            let mut end = u64::from(first.offset) + u64::from(first.len);
            while let Some(Some((l, _))) = locs.get(j)
                && l.seg == first.seg
                && u64::from(l.offset) == end + HEADER as u64
                && end - u64::from(first.offset) < SPAN_READ
            {
                end = u64::from(l.offset) + u64::from(l.len);
                j += 1;
            }
            let span = self.read_span(first.seg, u64::from(first.offset), end);
            for k in i..j {
                let Some((loc, old)) = locs[k] else { continue };
                let at = (loc.offset - first.offset) as usize;
                let bytes = span
                    .as_ref()
                    .filter(|b| b.len() >= at + loc.len as usize)
                    .map(|b| b.slice(at..at + loc.len as usize))
                    .filter(|b| blake3::hash(b).as_bytes() == digests[k].as_bytes());
                match bytes {
                    Some(b) => {
                        if old {
                            self.offer(digests[k], b.clone());
                        }
                        out[k] = Some(b);
                    }
                    None => self.forget_damaged(&digests[k], loc),
                }
            }
            i = j;
        }
        out
    }

    /// Bytes `start..end` of segment `seg`, read through a handle of its own
    /// (`read_to_end` into reserved capacity needs no zeroing, unlike a
    /// `pread` into a buffer, which must be initialised first); `None` if the
    /// segment is gone (evicted) or shorter.
    fn read_span(&self, seg: u32, start: u64, end: u64) -> Option<Bytes> {
        use std::io::{Read, Seek, SeekFrom};
        let mut file = File::open(segment_path(&self.inner.dir, seg)).ok()?;
        file.seek(SeekFrom::Start(start)).ok()?;
        let len = end - start;
        let mut buf = Vec::with_capacity(len as usize);
        file.take(len).read_to_end(&mut buf).ok()?;
        (buf.len() as u64 == len).then(|| Bytes::from(buf))
    }

    /// Stops serving the chunk (garbage collection removed it from the store).
    /// Its bytes stay in their segment until it is deleted; a restart that
    /// reads the segment's index block may find it again, which only serves
    /// verified bytes of removed content to a reader that asks by digest.
    pub fn forget(&self, digest: &B3Digest) {
        self.state().index.remove(&key(digest));
    }

    /// Drops a record found damaged (if the index still points at it).
    fn forget_damaged(&self, digest: &B3Digest, loc: Loc) {
        tracing::warn!(dir = %self.inner.dir.display(), %digest, "damaged chunk in the local cache; forgotten");
        let mut state = self.state();
        if state.index.get(&key(digest)) == Some(&loc) {
            state.index.remove(&key(digest));
        }
    }

    fn read(&self, digest: &B3Digest, loc: Loc, file: &File) -> Option<Bytes> {
        let mut buf = vec![0u8; loc.len as usize];
        let got = file
            .read_exact_at(&mut buf, u64::from(loc.offset))
            .ok()
            .and_then(|()| verified(digest, buf));
        if got.is_none() {
            self.forget_damaged(digest, loc);
        }
        got
    }

    /// Keeps `bytes` (verified by the caller to hash to `digest`) if the
    /// background writer has room for it, else forgets it; returns at once. One
    /// thread writes the offered chunks, so a burst of them costs neither
    /// threads nor memory beyond [`MAX_QUEUED`].
    pub fn offer(&self, digest: B3Digest, bytes: Bytes) {
        let len = bytes.len();
        {
            let state = self.state();
            if state
                .index
                .get(&key(&digest))
                .is_some_and(|l| !state.is_old(l, self.inner.segment_size, self.inner.max_bytes))
            {
                return;
            }
        }
        if self.inner.queued.fetch_add(len, Ordering::Relaxed) + len > MAX_QUEUED {
            self.inner.queued.fetch_sub(len, Ordering::Relaxed);
            return;
        }
        let mut queue = self
            .inner
            .queue
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let tx = queue.get_or_insert_with(|| self.start_writer());
        if tx.send((digest, bytes)).is_err() {
            self.inner.queued.fetch_sub(len, Ordering::Relaxed);
            *queue = None;
        }
    }

    /// The background writer: holds the cache weakly, so it ends with it.
    fn start_writer(&self) -> std::sync::mpsc::Sender<(B3Digest, Bytes)> {
        let (tx, rx) = std::sync::mpsc::channel::<(B3Digest, Bytes)>();
        let weak = Arc::downgrade(&self.inner);
        let spawned = std::thread::Builder::new()
            .name("chunk-cache".into())
            .spawn(move || {
                while let Ok(first) = rx.recv() {
                    let mut batch = vec![first];
                    let mut bytes = batch[0].1.len();
                    while bytes < WRITE_BATCH {
                        let Ok(next) = rx.try_recv() else { break };
                        bytes += next.1.len();
                        batch.push(next);
                    }
                    let Some(inner) = weak.upgrade() else { return };
                    let cache = DiskChunkCache { inner };
                    if let Err(e) = cache.write(&batch) {
                        tracing::debug!(error = %e, "cannot write to the local chunk cache");
                    }
                    cache.inner.queued.fetch_sub(bytes, Ordering::Relaxed);
                }
            });
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "cannot start the chunk cache's writer");
        }
        tx
    }

    /// Appends the chunks (verified by the caller) that are not held already, in
    /// a young segment, or too large for the bound, then evicts down to the bound.
    fn write(&self, chunks: &[(B3Digest, Bytes)]) -> io::Result<()> {
        let mut w = self
            .inner
            .writer
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let mut buf = Vec::new();
        let mut pending: Vec<(B3Digest, Loc)> = Vec::new();
        for (digest, bytes) in chunks {
            let len = bytes.len() as u64;
            if len == 0 || len > self.inner.max_bytes / 8 || len > u64::from(MAX_RECORD) {
                continue;
            }
            {
                let state = self.state();
                let held = state.index.get(&key(digest)).is_some_and(|l| {
                    !state.is_old(l, self.inner.segment_size, self.inner.max_bytes)
                });
                if held || pending.iter().any(|(d, _)| d == digest) {
                    continue;
                }
            }
            let record = HEADER as u64 + len;
            let full = w.open.as_ref().is_none_or(|o| {
                let used = o.len + buf.len() as u64;
                used > 0 && used + record > self.inner.segment_size
            });
            if full {
                self.flush(&mut w, &mut buf, &mut pending)?;
                self.roll(&mut w)?;
            }
            let Some(open) = w.open.as_mut() else {
                continue;
            };
            let offset = open.len + buf.len() as u64 + HEADER as u64;
            buf.extend_from_slice(digest.as_bytes());
            buf.extend_from_slice(&(len as u32).to_le_bytes());
            buf.extend_from_slice(bytes);
            let loc = Loc {
                seg: open.id,
                offset: offset as u32,
                len: len as u32,
            };
            pending.push((*digest, loc));
        }
        self.flush(&mut w, &mut buf, &mut pending)
    }

    /// Writes the buffered records to the open segment, then makes them visible.
    fn flush(
        &self,
        w: &mut Writer,
        buf: &mut Vec<u8>,
        pending: &mut Vec<(B3Digest, Loc)>,
    ) -> io::Result<()> {
        let Some(open) = w.open.as_mut() else {
            return Ok(());
        };
        if buf.is_empty() {
            return Ok(());
        }
        let written = open.file.write_all_at(buf, open.len);
        let added = buf.len() as u64;
        buf.clear();
        if let Err(e) = written {
            pending.clear();
            return Err(e);
        }
        open.len += added;
        let id = open.id;
        let gone = {
            let mut state = self.state();
            for (digest, loc) in pending.drain(..) {
                open.entries.push((*digest.as_bytes(), loc.offset, loc.len));
                state.index.insert(key(&digest), loc);
            }
            if let Some(seg) = state.segments.get_mut(&id) {
                seg.bytes += added;
            }
            state.bytes += added;
            state.evict(self.inner.max_bytes, Some(id))
        };
        for id in gone {
            let _ = std::fs::remove_file(segment_path(&self.inner.dir, id));
        }
        Ok(())
    }

    /// Seals the open segment and opens the next.
    fn roll(&self, w: &mut Writer) -> io::Result<()> {
        if let Some(open) = w.open.take() {
            seal(&open)?;
            let index_bytes = (open.entries.len() * INDEX_ENTRY + TRAILER) as u64;
            let mut state = self.state();
            if let Some(seg) = state.segments.get_mut(&open.id) {
                seg.bytes += index_bytes;
                state.bytes += index_bytes;
            }
        }
        let id = w.next_id;
        let path = segment_path(&self.inner.dir, id);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)?;
        w.next_id += 1;
        let file = Arc::new(file);
        self.state().segments.insert(
            id,
            Segment {
                file: file.clone(),
                bytes: 0,
            },
        );
        w.open = Some(Open {
            id,
            file,
            len: 0,
            entries: Vec::new(),
        });
        Ok(())
    }
}

fn annotate(e: io::Error, what: &str, dir: &Path) -> io::Error {
    io::Error::new(
        e.kind(),
        format!(
            "cannot {what} the chunk cache directory {}: {e}",
            dir.display()
        ),
    )
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn chunk(i: u32, len: usize) -> (B3Digest, Bytes) {
        let bytes: Bytes = (0..len)
            .map(|j| (i as usize * 7 + j) as u8)
            .collect::<Vec<_>>()
            .into();
        (B3Digest::from(*blake3::hash(&bytes).as_bytes()), bytes)
    }

    fn segments(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[tokio::test]
    async fn keeps_and_verifies() {
        let tmp = tempfile::tempdir().unwrap();
        let cache = DiskChunkCache::open(tmp.path(), 64 << 20).unwrap();
        let (a, a_bytes) = chunk(1, 100);
        let (b, b_bytes) = chunk(2, 40_000);
        assert_eq!(cache.get(&a).await, None);
        cache
            .write(&[(a, a_bytes.clone()), (b, b_bytes.clone())])
            .unwrap();
        assert_eq!(cache.get(&a).await, Some(a_bytes.clone()));
        assert_eq!(
            cache.get(&b).await,
            Some(b_bytes.clone()),
            "read on a blocking thread"
        );
        assert_eq!(cache.size_of(&b), Some(40_000));
        assert_eq!(
            cache.get_many(vec![b, a, chunk(3, 5).0]).await,
            vec![Some(b_bytes), Some(a_bytes), None]
        );
        assert_eq!(cache.len_bytes(), (2 * HEADER + 40_100) as u64);

        // Held already: not written again.
        cache.write(&[(a, chunk(1, 100).1)]).unwrap();
        assert_eq!(cache.len_bytes(), (2 * HEADER + 40_100) as u64);

        // A damaged record is a miss, and is forgotten.
        let (loc, file, _) = cache.locate(&a).unwrap();
        file.write_all_at(b"XX", u64::from(loc.offset) + 10)
            .unwrap();
        assert_eq!(cache.get(&a).await, None);
        assert!(!cache.contains(&a));
        assert!(cache.contains(&b));

        // Chunks back to back are read as one span; a damaged one among them
        // is a miss, the others are not.
        let run: Vec<_> = (10..14).map(|i| chunk(i, 5000)).collect();
        cache.write(&run).unwrap();
        let (loc, file, _) = cache.locate(&run[2].0).unwrap();
        file.write_all_at(b"YY", u64::from(loc.offset)).unwrap();
        let got = cache.get_many(run.iter().map(|(d, _)| *d).collect()).await;
        let want: Vec<Option<Bytes>> = run
            .iter()
            .enumerate()
            .map(|(i, (_, b))| (i != 2).then(|| b.clone()))
            .collect();
        assert_eq!(got, want);
        assert!(!cache.contains(&run[2].0));
    }

    #[tokio::test]
    async fn offered_chunks_are_written_in_the_background() {
        let tmp = tempfile::tempdir().unwrap();
        let cache = DiskChunkCache::open(tmp.path(), 64 << 20).unwrap();
        let chunks: Vec<_> = (0..50).map(|i| chunk(i, 1000 + i as usize)).collect();
        for (d, b) in &chunks {
            cache.offer(*d, b.clone());
        }
        for _ in 0..500 {
            if chunks.iter().all(|(d, _)| cache.contains(d)) {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        for (d, b) in &chunks {
            assert_eq!(cache.get(d).await.as_ref(), Some(b));
        }
    }

    #[tokio::test]
    async fn evicts_whole_segments_and_keeps_what_is_used() {
        let tmp = tempfile::tempdir().unwrap();
        // 1 MiB segments (the smallest), 4 MiB in all.
        let cache = DiskChunkCache::open(tmp.path(), 4 << 20).unwrap();
        let chunks: Vec<_> = (0..80).map(|i| chunk(i, 100_000)).collect();
        let (hot, hot_bytes) = chunks[0].clone();
        for (i, c) in chunks.iter().enumerate() {
            cache.write(std::slice::from_ref(c)).unwrap();
            // Read all along: in an old segment it is appended again.
            if i % 5 == 4 {
                assert_eq!(cache.get(&hot).await, Some(hot_bytes.clone()), "after {i}");
                for _ in 0..500 {
                    if cache.inner.queued.load(Ordering::Relaxed) == 0 {
                        break;
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
                }
            }
            assert!(cache.len_bytes() <= 4 << 20, "{} bytes", cache.len_bytes());
        }
        assert!(!cache.contains(&chunks[1].0), "the oldest evicted");
        assert!(cache.contains(&chunks[79].0));
        assert_eq!(cache.get(&hot).await, Some(hot_bytes));
        let on_disk: u64 = segments(tmp.path())
            .iter()
            .map(|n| std::fs::metadata(tmp.path().join(n)).unwrap().len())
            .sum();
        assert_eq!(
            on_disk,
            cache.len_bytes(),
            "evicted segments' files are gone"
        );
        assert!(
            segments(tmp.path()).len() <= 5,
            "{:?}",
            segments(tmp.path())
        );
    }

    #[tokio::test]
    async fn a_restarted_cache_finds_sealed_and_unsealed_segments() {
        let tmp = tempfile::tempdir().unwrap();
        let chunks: Vec<_> = (0..30).map(|i| chunk(i, 100_000)).collect();
        {
            // 1 MiB segments: ten chunks each.
            let cache = DiskChunkCache::open(tmp.path(), 16 << 20).unwrap();
            for c in &chunks {
                cache.write(std::slice::from_ref(c)).unwrap();
            }
            // Dropped: its last segment is sealed too.
        }
        let names = segments(tmp.path());
        assert_eq!(names.len(), 3, "{names:?}");
        let cache = DiskChunkCache::open(tmp.path(), 64 << 20).unwrap();
        for (d, b) in &chunks {
            assert_eq!(cache.get(d).await.as_ref(), Some(b));
        }
        let before = cache.len_bytes();
        drop(cache);

        // A crash leaves a segment without its index block, and maybe a torn
        // record at its end: it is scanned, up to the torn record.
        let last = tmp.path().join(names.last().unwrap());
        let len = std::fs::metadata(&last).unwrap().len();
        let f = OpenOptions::new().write(true).open(&last).unwrap();
        f.set_len(len - TRAILER as u64 - 1000).unwrap();
        drop(f);
        let cache = DiskChunkCache::open(tmp.path(), 64 << 20).unwrap();
        assert!(cache.len_bytes() < before);
        for (d, b) in &chunks[..29] {
            assert_eq!(cache.get(d).await.as_ref(), Some(b));
        }
        assert!(
            !cache.contains(&chunks[29].0),
            "the torn record is not found"
        );

        // Reopened with a smaller bound: trimmed to it; an old-layout
        // directory (a file per chunk) is removed.
        drop(cache);
        std::fs::create_dir(tmp.path().join("ab")).unwrap();
        let cache = DiskChunkCache::open(tmp.path(), 1 << 20).unwrap();
        assert!(cache.len_bytes() <= 1 << 20, "{}", cache.len_bytes());
        assert!(!tmp.path().join("ab").exists());
    }
}
