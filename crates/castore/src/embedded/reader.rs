//! Verified blob reader with seek. Chunks are fetched, decompressed and checked
//! against their BLAKE3 digest on the process's decoding threads (one per core,
//! see [`Pool`]), in batches of consecutive chunks of about [`BATCH_BYTES`]
//! decoded back to back into one buffer (raw chunks stored back to back read with
//! one pread), [`WINDOW`] batches ahead of the reader, so decoding runs on every
//! core and overlaps with the caller's consumption. A chunk's bytes are handed out
//! only once it verified; a batch that fails part way hands out the chunks before
//! the failing one, then the error. A single-chunk blob's chunk digest is the
//! blob's digest, so it is verified whole.
//!
//! A blob's chunk list comes in segments of up to 1024 chunks with their pack
//! locations (see `format`), read (and verified) from the packs when the read
//! position or the read-ahead reaches them: a reader holds at most two, and reads
//! no chunk entry from the redb index (whose page cache would otherwise keep a
//! share of every large blob read).
//!
//! A decoded batch is shared, not copied: [`EmbeddedBlobReader::poll_next_bytes`]
//! hands out its verified bytes as [`Bytes`] slices of the batch buffer (a NAR
//! dump writes them to stdout straight from there), and `poll_read` copies from it.
//!
//! Memory: a batch's buffer goes back to the store's pool when the reader has
//! moved past it and the last slice handed out is dropped, and is reused for a
//! later batch, so a reader holds at most `WINDOW + 1` buffers of [`BATCH_CAP`]
//! bytes (plus those its caller keeps slices of) whatever the blob's size; the
//! pool keeps [`POOL_MAX`] at most ([`READER_MEMORY`] is that bound). A small
//! batch (a small file's only chunk, the first chunk after opening or seeking)
//! gets a buffer of its size instead, never pooled: a reader of a 4 KiB file
//! holds 4 KiB, not a full buffer. Allocating a buffer per chunk on the
//! decoding threads and freeing it on the reading thread made glibc's per-thread
//! arenas fragment: peak RSS grew with the bytes read (26 MB after 64 MiB, 42 MB
//! after 1 GiB).

use std::collections::VecDeque;
use std::io::{self, SeekFrom};
use std::ops::Range;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, Once, PoisonError, Weak};
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use std::future::Future;
use tokio::io::{AsyncRead, AsyncSeek, ReadBuf};
use tokio::sync::oneshot;

use super::format::{ChunkLoc, MAX_CHUNK, SegRef};
use super::rewrite::InUse;
use super::{EmbeddedError, EmbeddedStore, Inner, Layout, hex, read_segment};

/// Bytes of chunks decoded by one job (the first batch of a run is one chunk, so
/// the first bytes come early).
const BATCH_BYTES: u64 = 1 << 20;
/// Raw chunks stored back to back are read together up to about this many bytes
/// (fewer syscalls; the chunks just read are still in the cache when hashed).
const READ_RUN: u64 = 256 * 1024;
/// Batches decoded ahead of the read position.
const WINDOW: usize = 4;
/// Size of a batch buffer: a batch stops at the first chunk that reaches
/// [`BATCH_BYTES`], so it is at most one chunk longer.
const BATCH_CAP: usize = BATCH_BYTES as usize + MAX_CHUNK;
/// Batch buffers a store keeps for later readers (about 10 MiB).
const POOL_MAX: usize = 2 * (WINDOW + 1);
/// The most one reader holds: its current batch and [`WINDOW`] more (each in a
/// buffer of [`BATCH_CAP`] bytes), and [`SEGS_LOADED`] segments of at most
/// 64 KiB.
pub(crate) const READER_MEMORY: u64 =
    ((WINDOW + 1) * BATCH_CAP) as u64 + SEGS_LOADED as u64 * (64 << 10);
/// A batch smaller than this gets a buffer of its own size (see `take_buf`).
const SMALL_BATCH: u64 = (BATCH_CAP / 4) as u64;
/// A single-chunk blob this small is read inline rather than on a decoding thread:
/// a pread of a few KiB costs less than the hand-off.
const INLINE_MAX: u64 = 16 * 1024;
/// Segments a reader keeps loaded: the one at the read position and the next,
/// which the read-ahead reaches first.
const SEGS_LOADED: usize = 2;

/// Corruption becomes `InvalidData`, so callers can tell it from I/O trouble.
fn to_io(e: EmbeddedError) -> io::Error {
    match e {
        EmbeddedError::Corrupt(_) => io::Error::new(io::ErrorKind::InvalidData, e),
        e => io::Error::other(e),
    }
}

/// One chunk of the blob.
#[derive(Clone, Copy)]
struct Chunk {
    digest: [u8; 32],
    size: u64,
    /// Where it is stored; `None` in a chunk list of the format before segments.
    loc: Option<ChunkLoc>,
}

/// A run of the blob's chunks held in memory: a loaded segment, or the whole
/// chunk list of a blob stored without segments.
struct Seg {
    /// Blob index of the first chunk.
    first: usize,
    chunks: Vec<Chunk>,
    /// Blob offset of each chunk's first byte, and of the run's end last.
    starts: Vec<u64>,
}

impl Seg {
    fn new(first: usize, start: u64, chunks: Vec<Chunk>) -> Self {
        let mut starts = Vec::with_capacity(chunks.len() + 1);
        let mut at = start;
        for c in &chunks {
            starts.push(at);
            at += c.size;
        }
        starts.push(at);
        Seg {
            first,
            chunks,
            starts,
        }
    }
}

/// Where a run of chunks starts in the blob, and how to load it.
struct Span {
    /// Blob index of its first chunk.
    first: usize,
    /// Blob offset of its first byte.
    start: u64,
    /// The segment to read; `None` for a run held from the start.
    seg: Option<SegRef>,
}

/// Verified bytes of consecutive chunks.
struct Batch {
    /// The chunks, by index in the blob.
    chunks: Range<usize>,
    /// Blob offsets of the first byte and of the end.
    start: u64,
    end: u64,
    /// Their bytes back to back, `end - start` of them.
    data: Bytes,
}

/// A batch buffer lent out as [`Bytes`]: back to the store's pool when the last
/// slice of it is dropped (if the store is still open and the pool not full).
struct Pooled {
    buf: Vec<u8>,
    len: usize,
    store: Weak<Inner>,
}

impl AsRef<[u8]> for Pooled {
    fn as_ref(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

impl Drop for Pooled {
    fn drop(&mut self) {
        if let Some(inner) = self.store.upgrade() {
            let mut pool = inner
                .read_bufs
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            // Only full-size buffers: a small one would grow (and double).
            if pool.len() < POOL_MAX && self.buf.len() == BATCH_CAP {
                pool.push(std::mem::take(&mut self.buf));
            }
        }
    }
}

/// The first `len` bytes of `buf`, shared; `buf` goes back to `store`'s pool.
fn share(store: &EmbeddedStore, buf: Vec<u8>, len: usize) -> Bytes {
    Bytes::from_owner(Pooled {
        buf,
        len,
        store: Arc::downgrade(&store.inner),
    })
}

/// A batch's verified chunks (maybe none), and why the chunk after them could not
/// be read if they are not all it was to cover.
type Fetch = oneshot::Receiver<(Batch, Option<EmbeddedError>)>;

/// A job for the decoding threads.
type Job = Box<dyn FnOnce() + Send>;

/// The threads that decode batches, shared by every reader in the process: one
/// per core, taking jobs in the order they were queued. Decoding is CPU work
/// (BLAKE3 of bytes mostly in the page cache): more threads than cores only
/// time-slice the batches, so later ones finish while the one the reader waits for
/// is preempted and a core idles (tokio's blocking pool, a thread per job, kept
/// two cores 1.5 busy on a 1 GiB read).
struct Pool {
    jobs: Mutex<VecDeque<Job>>,
    queued: Condvar,
    /// Threads started; with none, jobs run on the caller's thread.
    threads: AtomicUsize,
}

static POOL: Pool = Pool {
    jobs: Mutex::new(VecDeque::new()),
    queued: Condvar::new(),
    threads: AtomicUsize::new(0),
};

impl Pool {
    /// The pool, its threads started on first use.
    fn get() -> &'static Pool {
        static START: Once = Once::new();
        START.call_once(|| {
            let want = std::thread::available_parallelism().map_or(2, |n| n.get().clamp(2, 16));
            let started = (0..want)
                .filter(|i| {
                    std::thread::Builder::new()
                        .name(format!("cairn-read-{i}"))
                        .spawn(|| POOL.work())
                        .is_ok()
                })
                .count();
            if started < want {
                tracing::warn!(started, want, "could not start every blob decoding thread");
            }
            POOL.threads.store(started, Ordering::Relaxed);
        });
        &POOL
    }

    fn work(&self) {
        loop {
            let job = {
                let mut jobs = self.jobs.lock().unwrap_or_else(PoisonError::into_inner);
                loop {
                    if let Some(job) = jobs.pop_front() {
                        break job;
                    }
                    jobs = self
                        .queued
                        .wait(jobs)
                        .unwrap_or_else(PoisonError::into_inner);
                }
            };
            // A job that panics drops its result's sender: its reader gets an error.
            let _ = std::panic::catch_unwind(AssertUnwindSafe(job));
        }
    }

    /// Queues `f`; its result comes through the receiver. A job whose receiver is
    /// dropped before it starts (a reader that seeked or went away) is skipped.
    fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> oneshot::Receiver<T> {
        let (tx, rx) = oneshot::channel();
        let job = move || {
            if !tx.is_closed() {
                let _ = tx.send(f());
            }
        };
        if self.threads.load(Ordering::Relaxed) == 0 {
            job();
        } else {
            self.jobs
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push_back(Box::new(job));
            self.queued.notify_one();
        }
        rx
    }
}

/// Reads one blob from an [`EmbeddedStore`]; see the module doc.
pub struct EmbeddedBlobReader {
    store: EmbeddedStore,
    /// The blob's digest (a damaged chunk is recorded against it).
    digest: [u8; 32],
    /// The blob's runs of chunks, in order.
    spans: Vec<Span>,
    /// Chunks in the blob.
    count: usize,
    /// The blob's size.
    size: u64,
    /// Runs in memory, most recently loaded last.
    loaded: Vec<Arc<Seg>>,
    /// A single-chunk blob small enough to read inline.
    inline: bool,
    pos: u64,
    /// The batch holding the last bytes handed out.
    current: Option<Batch>,
    /// Batches being decoded, in order, each with the chunks it covers.
    inflight: VecDeque<(Range<usize>, Fetch)>,
    /// The first chunk no batch covers yet.
    next: usize,
    /// Keeps a pack rewrite from deleting the packs this reader's locations
    /// name, for a while (`rewrite`).
    _pin: InUse,
}

impl EmbeddedBlobReader {
    pub(crate) fn new(store: EmbeddedStore, digest: [u8; 32], layout: Layout, pin: InUse) -> Self {
        let whole = |chunks: Vec<Chunk>| {
            let seg = Seg::new(0, 0, chunks);
            let (count, size) = (seg.chunks.len(), seg.starts.last().copied().unwrap_or(0));
            let span = Span {
                first: 0,
                start: 0,
                seg: None,
            };
            (vec![span], count, size, vec![Arc::new(seg)])
        };
        let mut inline = false;
        let (spans, count, size, loaded) = match layout {
            Layout::Single(loc) => {
                inline = u64::from(loc.raw_len) <= INLINE_MAX;
                whole(vec![Chunk {
                    digest,
                    size: u64::from(loc.raw_len),
                    loc: Some(loc),
                }])
            }
            Layout::Chunked(list) => whole(
                list.into_iter()
                    .map(|(digest, size)| Chunk {
                        digest,
                        size,
                        loc: None,
                    })
                    .collect(),
            ),
            Layout::Segmented(segs) => {
                let (mut first, mut start) = (0usize, 0u64);
                let mut spans = Vec::with_capacity(segs.len());
                for s in segs {
                    spans.push(Span {
                        first,
                        start,
                        seg: Some(s),
                    });
                    first += s.chunks as usize;
                    start += s.bytes;
                }
                (spans, first, start, Vec::new())
            }
        };
        EmbeddedBlobReader {
            store,
            digest,
            spans,
            count,
            size,
            loaded,
            inline,
            pos: 0,
            current: None,
            inflight: VecDeque::new(),
            next: 0,
            _pin: pin,
        }
    }

    /// The blob's size.
    pub fn len(&self) -> u64 {
        self.size
    }

    /// Moves the read position to `pos` (past the end: nothing more to read), as
    /// seeking there does.
    pub fn set_position(&mut self, pos: u64) {
        self.pos = pos;
    }

    /// Whether the blob is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The verified bytes from the read position to the end of the batch holding
    /// it, without a copy (a slice of the batch buffer), and moves the position
    /// past them; `None` at the end of the blob. An error leaves the position
    /// where it was: nothing past bytes that failed their check is handed out.
    pub fn poll_next_bytes(&mut self, cx: &mut Context<'_>) -> Poll<Option<io::Result<Bytes>>> {
        if self.pos >= self.size {
            return Poll::Ready(None);
        }
        let idx = match self.chunk_at(self.pos) {
            Ok(idx) => idx,
            Err(e) => return Poll::Ready(Some(Err(e))),
        };
        if let Err(e) = ready!(self.poll_batch(cx, idx)) {
            return Poll::Ready(Some(Err(e)));
        }
        let Some(b) = &self.current else {
            return Poll::Ready(Some(Err(io::Error::other("no current batch"))));
        };
        let off = (self.pos - b.start) as usize;
        let bytes = b.data.slice(off..);
        self.pos = b.end;
        Poll::Ready(Some(Ok(bytes)))
    }

    /// The run holding span `i`, loaded from the packs if it is not in memory.
    fn load(&mut self, i: usize) -> io::Result<Arc<Seg>> {
        let span = &self.spans[i];
        if let Some(s) = self.loaded.iter().find(|s| s.first == span.first) {
            return Ok(s.clone());
        }
        let Some(seg) = span.seg else {
            return Err(io::Error::other("chunk run not in memory"));
        };
        // A segment is at most 53 KiB: read on the caller's thread, once per
        // 1024 chunks.
        let chunks = read_segment(&self.store.inner.packs, &seg).map_err(to_io)?;
        let chunks = chunks
            .into_iter()
            .map(|(digest, loc)| Chunk {
                digest,
                size: u64::from(loc.raw_len),
                loc: Some(loc),
            })
            .collect();
        let s = Arc::new(Seg::new(span.first, span.start, chunks));
        if self.loaded.len() >= SEGS_LOADED {
            self.loaded.remove(0);
        }
        self.loaded.push(s.clone());
        Ok(s)
    }

    /// The run holding chunk `idx`.
    fn seg_of_chunk(&mut self, idx: usize) -> io::Result<Arc<Seg>> {
        let i = self
            .spans
            .partition_point(|s| s.first <= idx)
            .saturating_sub(1);
        self.load(i)
    }

    /// The index of the chunk holding blob offset `pos` (below the blob's size).
    fn chunk_at(&mut self, pos: u64) -> io::Result<usize> {
        let i = self
            .spans
            .partition_point(|s| s.start <= pos)
            .saturating_sub(1);
        let seg = self.load(i)?;
        // The last chunk starting at or before pos.
        Ok(seg.first + seg.starts.partition_point(|&s| s <= pos).saturating_sub(1))
    }

    /// Starts decoding the batch beginning at chunk `self.next` (it stays within
    /// one run).
    fn spawn_batch(&mut self) -> io::Result<()> {
        let first = self.next;
        let seg = self.seg_of_chunk(first)?;
        let lo = first - seg.first;
        let mut hi = lo + 1;
        let mut bytes = seg.chunks[lo].size;
        if !self.inflight.is_empty() {
            while hi < seg.chunks.len() && bytes < BATCH_BYTES {
                bytes += seg.chunks[hi].size;
                hi += 1;
            }
        }
        let end = seg.first + hi;
        self.next = end;
        let store = self.store.clone();
        let digest = self.digest;
        let buf = self.take_buf(bytes);
        let h = Pool::get().run(move || {
            let d = decode_batch(&store, &digest, &seg.chunks[lo..hi], buf);
            let start = seg.starts[lo];
            let batch = Batch {
                chunks: first..first + d.chunks,
                start,
                end: start + d.bytes as u64,
                data: share(&store, d.buf, d.bytes),
            };
            (batch, d.error)
        });
        self.inflight.push_back((first..end, h));
        Ok(())
    }

    /// Forgets everything being decoded and restarts at chunk `idx`.
    fn restart(&mut self, idx: usize) {
        // A dropped receiver skips its job if it has not started; the buffer of a
        // batch already decoded goes back to the pool.
        self.inflight.clear();
        self.next = idx;
    }

    /// Makes `current` hold chunk `idx`.
    fn poll_batch(&mut self, cx: &mut Context<'_>, idx: usize) -> Poll<io::Result<()>> {
        if matches!(&self.current, Some(b) if b.chunks.contains(&idx)) {
            return Poll::Ready(Ok(()));
        }
        if self.inline {
            let buf = self.take_buf(self.size);
            let seg = self.seg_of_chunk(idx)?;
            let d = decode_batch(&self.store, &self.digest, &seg.chunks[..], buf);
            if let Some(e) = d.error {
                return Poll::Ready(Err(to_io(e)));
            }
            self.current = Some(Batch {
                chunks: 0..1,
                start: 0,
                end: self.size,
                data: share(&self.store, d.buf, d.bytes),
            });
            return Poll::Ready(Ok(()));
        }
        loop {
            if self
                .inflight
                .front()
                .is_some_and(|(r, _)| !r.contains(&idx))
                || (self.inflight.is_empty() && self.next != idx)
            {
                self.restart(idx);
            }
            while self.inflight.len() < WINDOW && self.next < self.count {
                self.spawn_batch()?;
            }
            let Some((_, h)) = self.inflight.front_mut() else {
                return Poll::Ready(Err(io::Error::other("no chunk to read")));
            };
            let r = ready!(Pin::new(h).poll(cx));
            self.inflight.pop_front();
            let (batch, error) =
                r.map_err(|_| io::Error::other("a blob decoding thread failed"))?;
            let found = batch.chunks.contains(&idx);
            if !batch.chunks.is_empty() {
                self.current = Some(batch);
            }
            if found {
                // A batch that failed part way hands out the chunks verified before
                // the failure; reading on reaches the failed chunk, which is read
                // (and fails) again.
                return Poll::Ready(Ok(()));
            }
            if let Some(e) = error {
                return Poll::Ready(Err(to_io(e)));
            }
        }
    }

    /// A buffer for a batch of `bytes`: for a small one (a small file, the first
    /// chunk after opening or seeking) one of its size, so that many readers of
    /// small files hold what they read and not a full buffer each; else a free
    /// one of the store's, or a new one, allocated at its full size once so that
    /// it never grows (growing doubles).
    fn take_buf(&mut self, bytes: u64) -> Vec<u8> {
        if bytes < SMALL_BATCH {
            // Sizes are bounded by MAX_CHUNK here.
            return vec![0; bytes as usize];
        }
        let pooled = self
            .store
            .inner
            .read_bufs
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop();
        pooled.unwrap_or_else(|| vec![0; BATCH_CAP])
    }
}

/// What [`decode_batch`] made of a run of chunks.
struct Decoded {
    buf: Vec<u8>,
    /// Chunks verified, from the first: their bytes lead `buf`.
    chunks: usize,
    /// Their bytes.
    bytes: usize,
    /// Why the chunk after them could not be read, if they are not all of them.
    error: Option<EmbeddedError>,
}

/// Reads, decompresses and verifies chunks `wanted` back to back into `buf`,
/// grown if needed (a full-size buffer is not zeroed again), up to the first that
/// fails. Chunks without a location (chunk lists of the format before segments)
/// are looked up in the index.
fn decode_batch(
    store: &EmbeddedStore,
    blob: &[u8; 32],
    wanted: &[Chunk],
    mut buf: Vec<u8>,
) -> Decoded {
    let mut done = Decoded {
        buf: Vec::new(),
        chunks: 0,
        bytes: 0,
        error: None,
    };
    // Chunk sizes were bounded by MAX_CHUNK when the chunk list was decoded.
    let len: u64 = wanted.iter().map(|c| c.size).sum();
    let Ok(len) = usize::try_from(len) else {
        done.error = Some(EmbeddedError::Corrupt(format!("batch of {len} bytes")));
        return done;
    };
    if buf.len() < len {
        buf.resize(len, 0);
    }
    done.buf = buf;
    let locs = if wanted.iter().all(|c| c.loc.is_some()) {
        wanted.iter().filter_map(|c| c.loc).collect()
    } else {
        let digests: Vec<[u8; 32]> = wanted.iter().map(|c| c.digest).collect();
        match store.chunk_locs(&digests) {
            Ok(locs) => locs,
            Err(e) => {
                done.error = Some(e);
                return done;
            }
        }
    };
    while done.chunks < wanted.len() {
        let i = done.chunks;
        let (c, loc) = (&wanted[i], &locs[i]);
        let at = done.bytes;
        if loc.compressed || u64::from(loc.raw_len) != c.size {
            let n = c.size as usize;
            if let Err(e) = store.read_chunk_into(&c.digest, c.size, loc, &mut done.buf[at..at + n])
            {
                if matches!(e, EmbeddedError::Corrupt(_)) {
                    store.mark_damaged(blob, &c.digest, loc);
                }
                done.error = Some(e);
                return done;
            }
            done.chunks += 1;
            done.bytes += n;
            continue;
        }
        // Raw chunks stored back to back (as a blob's new chunks are) are read
        // with one pread, then each is checked.
        let mut j = i + 1;
        let mut run = c.size;
        while j < wanted.len()
            && run < READ_RUN
            && !locs[j].compressed
            && locs[j].pack == loc.pack
            && locs[j].offset == loc.offset + run
            && u64::from(locs[j].raw_len) == wanted[j].size
        {
            run += wanted[j].size;
            j += 1;
        }
        let dst = &mut done.buf[at..at + run as usize];
        if let Err(e) = store.inner.packs.read_exact(loc.pack, loc.offset, dst) {
            done.error = Some(e);
            return done;
        }
        let mut off = 0;
        for (k, c) in wanted[i..j].iter().enumerate() {
            let n = c.size as usize;
            if blake3::hash(&dst[off..off + n]).as_bytes() != &c.digest {
                store.mark_damaged(blob, &c.digest, &locs[i + k]);
                done.error = Some(EmbeddedError::Corrupt(format!(
                    "chunk {} does not hash to its digest",
                    hex(&c.digest)
                )));
                return done;
            }
            off += n;
            done.chunks += 1;
            done.bytes += n;
        }
    }
    done
}

impl AsyncRead for EmbeddedBlobReader {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let total = this.len();
        let mut copied = false;
        // Fills the caller's buffer across batches while they are decoded already.
        while this.pos < total && buf.remaining() > 0 {
            let idx = match this.chunk_at(this.pos) {
                Ok(idx) => idx,
                Err(_) if copied => break,
                Err(e) => return Poll::Ready(Err(e)),
            };
            match this.poll_batch(cx, idx) {
                Poll::Ready(Ok(())) => {}
                // What was copied is handed out; the next call waits or reports.
                _ if copied => break,
                other => return other,
            }
            let Some(b) = &this.current else {
                return Poll::Ready(Err(io::Error::other("no current batch")));
            };
            let off = (this.pos - b.start) as usize;
            let n = buf.remaining().min((b.end - this.pos) as usize);
            buf.put_slice(&b.data[off..off + n]);
            this.pos += n as u64;
            copied = true;
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncSeek for EmbeddedBlobReader {
    fn start_seek(mut self: Pin<&mut Self>, position: SeekFrom) -> io::Result<()> {
        let new = match position {
            SeekFrom::Start(p) => Some(p),
            SeekFrom::End(d) => self.len().checked_add_signed(d),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
        };
        match new {
            Some(p) => {
                self.pos = p;
                Ok(())
            }
            None => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "seek before the start of the blob",
            )),
        }
    }

    fn poll_complete(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<u64>> {
        Poll::Ready(Ok(self.pos))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use futures::StreamExt;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;
    use crate::blobservice::MemoryBlobService;
    use crate::embedded::tests::{put, random};
    use crate::{B3Digest, BlobService};
    use cairn_testkit::stream::drain;

    /// Text-like bytes, stored compressed.
    fn text(seed: u64, len: usize) -> Vec<u8> {
        random(seed, len).iter().map(|b| b'a' + b % 4).collect()
    }

    /// Reads with `read` until the end or an error; the error, and what the next
    /// read gives.
    async fn read_until_error(
        r: &mut EmbeddedBlobReader,
    ) -> (Vec<u8>, Option<io::Error>, Option<io::Result<usize>>) {
        let mut out = Vec::new();
        let mut buf = vec![0u8; 50_000];
        loop {
            match r.read(&mut buf).await {
                Ok(0) => return (out, None, None),
                Ok(n) => out.extend_from_slice(&buf[..n]),
                Err(e) => return (out, Some(e), Some(r.read(&mut buf).await)),
            }
        }
    }

    /// The stream from any offset is the blob's bytes from there, the same as the
    /// default stream over a reader (the memory backend's), for blobs stored
    /// inline, in one chunk, raw and compressed in many chunks and segments.
    #[tokio::test]
    async fn stream_from_any_offset_is_the_blob_from_there() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(dir.path()).unwrap();
        let memory = MemoryBlobService::new();
        let blobs = [
            Vec::new(),
            random(1, 5),
            random(2, 12_000),
            random(3, 200_000),
            random(4, 5 << 20),
            text(5, 3 << 20),
        ];
        for bytes in &blobs {
            let d = B3Digest::from(put(&store, bytes).await);
            let mut w = memory.open_write().await;
            w.write_all(bytes).await.unwrap();
            assert_eq!(w.close().await.unwrap(), d);
            let len = bytes.len() as u64;
            for offset in [
                0,
                1,
                len / 3,
                len / 2 + 77_777,
                len.saturating_sub(1),
                len,
                len + 10,
            ] {
                let want = &bytes[(offset.min(len)) as usize..];
                for (name, svc) in [
                    ("embedded", &store as &dyn BlobService),
                    ("memory", &memory as &dyn BlobService),
                ] {
                    let s = svc.open_read_stream(&d, offset).await.unwrap().unwrap();
                    let (got, err, _) = drain(s).await;
                    assert!(err.is_none(), "{name} {len} @{offset}: {err:?}");
                    assert!(got == want, "{name}: blob of {len} from {offset}");
                }
            }
        }
        let absent = B3Digest::from([7u8; 32]);
        assert!(store.open_read_stream(&absent, 0).await.unwrap().is_none());
        assert!(memory.open_read_stream(&absent, 0).await.unwrap().is_none());
    }

    /// A corrupt chunk anywhere in the read-ahead (the first, one in a batch
    /// decoded ahead, the last): the stream and `read` hand out exactly the bytes
    /// before it, then an `InvalidData` error, and fail again if asked for more:
    /// never a clean end.
    #[tokio::test]
    async fn corrupt_chunk_ahead_hands_out_exactly_the_bytes_before_it() {
        let bytes = random(6, 6 << 20);
        let n_chunks = {
            let dir = tempfile::tempdir().unwrap();
            let store = EmbeddedStore::open(dir.path()).unwrap();
            let d = put(&store, &bytes).await;
            store.blob_chunks(&d).unwrap().unwrap().len()
        };
        assert!(n_chunks > 40, "{n_chunks} chunks");
        for k in [0, 1, n_chunks / 2, n_chunks / 2 + 1, n_chunks - 1] {
            let dir = tempfile::tempdir().unwrap();
            let store = EmbeddedStore::open(dir.path()).unwrap();
            let d = put(&store, &bytes).await;
            let chunks = store.blob_chunks(&d).unwrap().unwrap();
            let start: u64 = chunks[..k].iter().map(|c| c.1).sum();
            let loc = store.find_chunk(&chunks[k].0).unwrap().unwrap();
            assert!(!loc.compressed);
            flip(&store, loc.pack, loc.offset + u64::from(loc.raw_len) / 2);
            let want = &bytes[..start as usize];

            let s = store
                .open_read_stream(&B3Digest::from(d), 0)
                .await
                .unwrap()
                .unwrap();
            let (got, err, again) = drain(s).await;
            assert!(
                got == want,
                "stream, chunk {k}: {} bytes of {start}",
                got.len()
            );
            let err = err.unwrap_or_else(|| panic!("stream, chunk {k}: no error"));
            assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{err}");
            assert!(
                matches!(again, Some(Err(_))),
                "stream, chunk {k}: {again:?}"
            );

            let mut r = store.open_blob(&d).unwrap().unwrap();
            let (got, err, again) = read_until_error(&mut r).await;
            assert!(
                got == want,
                "read, chunk {k}: {} bytes of {start}",
                got.len()
            );
            let err = err.unwrap_or_else(|| panic!("read, chunk {k}: no error"));
            assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{err}");
            assert!(matches!(again, Some(Err(_))), "read, chunk {k}: {again:?}");

            // From an offset past the corrupt chunk, all is there.
            let after = start + chunks[k].1;
            let s = store
                .open_read_stream(&B3Digest::from(d), after)
                .await
                .unwrap()
                .unwrap();
            let (got, err, _) = drain(s).await;
            assert!(err.is_none(), "after chunk {k}: {err:?}");
            assert!(got == bytes[after as usize..], "after chunk {k}");
        }
    }

    /// Flips the byte at `offset` of pack `id`.
    fn flip(store: &EmbeddedStore, id: u32, offset: u64) {
        use std::os::unix::fs::FileExt;
        let path = store.dir().join("packs").join(format!("{id:08}.pack"));
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .unwrap();
        let mut b = [0u8];
        f.read_exact_at(&mut b, offset).unwrap();
        b[0] ^= 0x5a;
        f.write_all_at(&b, offset).unwrap();
    }

    /// Many readers at once share the decoding threads: each gets its own blob,
    /// also when some are dropped half way (their queued jobs are skipped).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_readers_share_the_decoding_threads() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(dir.path()).unwrap();
        let mut blobs = Vec::new();
        for i in 0..8u64 {
            let bytes = random(100 + i, (1 << 20) + i as usize * 300_000);
            let d = B3Digest::from(put(&store, &bytes).await);
            blobs.push((d, bytes));
        }
        let mut tasks = Vec::new();
        for (i, (d, bytes)) in blobs.into_iter().enumerate() {
            let store = store.clone();
            tasks.push(tokio::spawn(async move {
                let mut s = store.open_read_stream(&d, 0).await.unwrap().unwrap();
                if i % 3 == 0 {
                    // Takes one piece and drops the stream with batches queued.
                    let first = s.next().await.unwrap().unwrap();
                    assert!(bytes.starts_with(&first));
                    return;
                }
                let (got, err, _) = drain(s).await;
                assert!(err.is_none(), "{err:?}");
                assert!(got == bytes, "blob {i}");
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
    }
}
