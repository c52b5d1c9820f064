//! [`DiskChunkCache`]: verified chunks kept in a local directory, bounded by size.
//!
//! A store whose bytes live far away (S3) serves a hot NAR from here instead of
//! fetching its chunks again. Each chunk is a file named by its BLAKE3 digest
//! (`ab/abcdef…`, decompressed bytes), written to a temporary name and renamed,
//! never synced: it is a cache, and every read hashes the file again before a
//! byte is handed out, so a torn or damaged file is a miss (and is removed),
//! never wrong bytes. What is in the directory is found again at start (file
//! sizes, and modification times for the order of eviction), so a restarted
//! daemon keeps its cache warm. Beyond the size bound the least recently used
//! chunks are removed; a chunk larger than an eighth of the bound is not kept,
//! so that one large read cannot flush the rest.

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use bytes::Bytes;

use crate::B3Digest;

/// Where a cached chunk's file is, how large it is, and when it was last used.
struct Entry {
    size: u64,
    tick: u64,
}

#[derive(Default)]
struct Index {
    entries: HashMap<B3Digest, Entry>,
    /// tick -> digest, oldest first.
    order: BTreeMap<u64, B3Digest>,
    bytes: u64,
    next_tick: u64,
}

impl Index {
    fn touch(&mut self, digest: &B3Digest) -> bool {
        let tick = self.next_tick;
        let Some(entry) = self.entries.get_mut(digest) else {
            return false;
        };
        self.order.remove(&entry.tick);
        entry.tick = tick;
        self.order.insert(tick, *digest);
        self.next_tick += 1;
        true
    }

    fn insert(&mut self, digest: B3Digest, size: u64) {
        if self.touch(&digest) {
            return;
        }
        let tick = self.next_tick;
        self.next_tick += 1;
        self.entries.insert(digest, Entry { size, tick });
        self.order.insert(tick, digest);
        self.bytes += size;
    }

    fn remove(&mut self, digest: &B3Digest) {
        if let Some(entry) = self.entries.remove(digest) {
            self.order.remove(&entry.tick);
            self.bytes -= entry.size;
        }
    }

    /// Removes the least recently used entries until at most `max` bytes remain;
    /// returns them, for their files to be removed.
    fn evict(&mut self, max: u64) -> Vec<B3Digest> {
        let mut out = Vec::new();
        while self.bytes > max {
            let Some((_, digest)) = self.order.pop_first() else {
                break;
            };
            if let Some(entry) = self.entries.remove(&digest) {
                self.bytes -= entry.size;
            }
            out.push(digest);
        }
        out
    }
}

/// Chunks cached on local disk; see the module documentation.
#[derive(Clone)]
pub struct DiskChunkCache {
    inner: Arc<Inner>,
}

struct Inner {
    dir: PathBuf,
    max_bytes: u64,
    index: Mutex<Index>,
    /// Chunks offered for writing in the background ([`DiskChunkCache::offer`]),
    /// and the bytes they hold.
    queue: Mutex<Option<std::sync::mpsc::Sender<(B3Digest, Bytes)>>>,
    queued: std::sync::atomic::AtomicUsize,
}

/// Bytes of chunks waiting to be written in the background; beyond it, offers
/// are dropped: a cold read of a large store offers everything it reads, faster
/// than a disk takes files, and queued bytes would grow with the read.
const MAX_QUEUED: usize = 16 << 20;

/// Cached chunks up to this size are read on the calling task.
const INLINE_READ: u64 = 16 << 10;

impl std::fmt::Debug for DiskChunkCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DiskChunkCache")
            .field("dir", &self.inner.dir)
            .field("max_bytes", &self.inner.max_bytes)
            .finish()
    }
}

impl DiskChunkCache {
    /// The cache in `dir` (created if absent), holding at most `max_bytes`. Finds
    /// what an earlier process left there and removes its temporary files.
    pub fn open(dir: &Path, max_bytes: u64) -> io::Result<Self> {
        std::fs::create_dir_all(dir).map_err(|e| annotate(e, "create", dir))?;
        let mut found = Vec::new();
        for fan in std::fs::read_dir(dir).map_err(|e| annotate(e, "read", dir))? {
            let fan = fan?;
            if !fan.file_type()?.is_dir() {
                continue;
            }
            for file in std::fs::read_dir(fan.path())? {
                let file = file?;
                let name = file.file_name();
                let parsed = name.to_str().and_then(parse_hex);
                let meta = file.metadata()?;
                match parsed {
                    Some(digest) if meta.is_file() => {
                        let used = meta.modified().unwrap_or(std::time::UNIX_EPOCH);
                        found.push((used, digest, meta.len()));
                    }
                    // A temporary file of a write that did not finish.
                    _ => {
                        let _ = std::fs::remove_file(file.path());
                    }
                }
            }
        }
        found.sort();
        let mut index = Index::default();
        for (_, digest, size) in found {
            index.insert(digest, size);
        }
        let cache = DiskChunkCache {
            inner: Arc::new(Inner {
                dir: dir.to_owned(),
                max_bytes,
                index: Mutex::new(index),
                queue: Mutex::new(None),
                queued: std::sync::atomic::AtomicUsize::new(0),
            }),
        };
        let evicted = cache.lock().evict(max_bytes);
        for digest in evicted {
            let _ = std::fs::remove_file(cache.path(&digest));
        }
        Ok(cache)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Index> {
        self.inner
            .index
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn path(&self, digest: &B3Digest) -> PathBuf {
        let hex = digest.to_hex();
        self.inner.dir.join(&hex[..2]).join(hex)
    }

    /// Whether the chunk is cached (its file may still turn out damaged).
    pub fn contains(&self, digest: &B3Digest) -> bool {
        self.lock().entries.contains_key(digest)
    }

    /// Bytes cached now.
    pub fn len_bytes(&self) -> u64 {
        self.lock().bytes
    }

    /// The chunk's bytes if cached and intact. A file that does not hash to its
    /// name is removed and is a miss.
    pub async fn get(&self, digest: &B3Digest) -> Option<Bytes> {
        let size = {
            let mut index = self.lock();
            if !index.touch(digest) {
                return None;
            }
            index.entries.get(digest).map_or(0, |e| e.size)
        };
        // A small file is read and hashed in microseconds: here, not on a
        // blocking thread (one each made a hot read of many small files start
        // hundreds of threads).
        if size <= INLINE_READ {
            return self.get_blocking(digest);
        }
        let this = self.clone();
        let digest = *digest;
        tokio::task::spawn_blocking(move || this.get_blocking(&digest))
            .await
            .ok()
            .flatten()
    }

    fn get_blocking(&self, digest: &B3Digest) -> Option<Bytes> {
        let path = self.path(digest);
        match std::fs::read(&path) {
            Ok(bytes) if blake3::hash(&bytes).as_bytes() == digest.as_bytes() => {
                Some(Bytes::from(bytes))
            }
            Ok(_) => {
                tracing::warn!(path = %path.display(), "damaged chunk in the local cache; removed");
                self.lock().remove(digest);
                let _ = std::fs::remove_file(&path);
                None
            }
            Err(_) => {
                self.lock().remove(digest);
                None
            }
        }
    }

    /// Keeps `bytes` (verified by the caller to hash to `digest`) if the
    /// background writer has room for it, else forgets it; returns at once. One
    /// thread writes the offered chunks, so a burst of them costs neither
    /// threads nor memory beyond [`MAX_QUEUED`].
    pub fn offer(&self, digest: B3Digest, bytes: Bytes) {
        use std::sync::atomic::Ordering;
        let len = bytes.len();
        if self.contains(&digest) {
            return;
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
                while let Ok((digest, bytes)) = rx.recv() {
                    let Some(inner) = weak.upgrade() else { return };
                    let cache = DiskChunkCache { inner };
                    if let Err(e) = cache.put_blocking(&digest, &bytes) {
                        tracing::debug!(error = %e, "cannot write to the local chunk cache");
                    }
                    cache
                        .inner
                        .queued
                        .fetch_sub(bytes.len(), std::sync::atomic::Ordering::Relaxed);
                }
            });
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "cannot start the chunk cache's writer");
        }
        tx
    }

    /// Writes `bytes` (verified by the caller to hash to `digest`) unless it is
    /// held already or too large for the bound, then evicts down to the bound.
    fn put_blocking(&self, digest: &B3Digest, bytes: &[u8]) -> io::Result<()> {
        if bytes.len() as u64 > self.inner.max_bytes / 8 || self.contains(digest) {
            return Ok(());
        }
        let path = self.path(digest);
        let Some(parent) = path.parent() else {
            return Ok(());
        };
        std::fs::create_dir_all(parent)?;
        let mut tmp = tempfile::Builder::new()
            .prefix(".tmp")
            .tempfile_in(parent)?;
        io::Write::write_all(&mut tmp, bytes)?;
        tmp.persist(&path).map_err(|e| e.error)?;
        let evicted = {
            let mut index = self.lock();
            index.insert(*digest, bytes.len() as u64);
            index.evict(self.inner.max_bytes)
        };
        for digest in evicted {
            let _ = std::fs::remove_file(self.path(&digest));
        }
        Ok(())
    }
}

/// A digest from its 64 lowercase hex digits (a cache file's name).
fn parse_hex(name: &str) -> Option<B3Digest> {
    if name.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, pair) in name.as_bytes().chunks(2).enumerate() {
        let s = std::str::from_utf8(pair).ok()?;
        if s.bytes().any(|c| c.is_ascii_uppercase()) {
            return None;
        }
        out[i] = u8::from_str_radix(s, 16).ok()?;
    }
    Some(B3Digest::from(out))
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

    fn chunk(i: u8, len: usize) -> (B3Digest, Bytes) {
        let bytes = Bytes::from(vec![i; len]);
        (B3Digest::from(*blake3::hash(&bytes).as_bytes()), bytes)
    }

    #[tokio::test]
    async fn keeps_verifies_evicts_and_survives_a_restart() {
        let tmp = tempfile::tempdir().unwrap();
        let cache = DiskChunkCache::open(tmp.path(), 1000).unwrap();
        let (a, a_bytes) = chunk(1, 100);
        let (b, b_bytes) = chunk(2, 100);
        assert_eq!(cache.get(&a).await, None);
        cache.put_blocking(&a, &a_bytes).unwrap();
        cache.put_blocking(&b, &b_bytes).unwrap();
        assert_eq!(cache.get(&a).await, Some(a_bytes.clone()));
        assert_eq!(cache.len_bytes(), 200);

        // Too large for the bound: not kept.
        let (big, big_bytes) = chunk(3, 200);
        cache.put_blocking(&big, &big_bytes).unwrap();
        assert_eq!(cache.get(&big).await, None);

        // Filling it evicts the least recently used: b (a was read after it).
        for i in 10..19 {
            let (d, bytes) = chunk(i, 100);
            cache.put_blocking(&d, &bytes).unwrap();
        }
        assert!(cache.len_bytes() <= 1000);
        assert_eq!(cache.get(&b).await, None);
        assert!(!cache.path(&b).exists(), "evicted file removed");

        // A damaged file is a miss and goes away.
        let (c, c_bytes) = chunk(18, 100);
        assert_eq!(cache.get(&c).await, Some(c_bytes));
        std::fs::write(cache.path(&c), b"not the chunk").unwrap();
        assert_eq!(cache.get(&c).await, None);
        assert!(!cache.path(&c).exists());

        // A leftover temporary file is removed; what was cached is found again.
        let leftover = cache.path(&a).with_file_name(".tmpXYZ");
        std::fs::write(&leftover, b"partial").unwrap();
        let before = cache.len_bytes();
        drop(cache);
        let cache = DiskChunkCache::open(tmp.path(), 1000).unwrap();
        assert!(!leftover.exists());
        assert_eq!(cache.len_bytes(), before);
        assert_eq!(cache.get(&a).await, Some(a_bytes));

        // Reopened with a smaller bound: trimmed to it.
        drop(cache);
        let cache = DiskChunkCache::open(tmp.path(), 300).unwrap();
        assert!(cache.len_bytes() <= 300, "{}", cache.len_bytes());
    }
}
