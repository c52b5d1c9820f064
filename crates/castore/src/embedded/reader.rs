//! Verified blob reader with seek. Chunks are fetched, decompressed and checked
//! against their BLAKE3 digest on blocking threads, in batches of consecutive
//! chunks of about [`BATCH_BYTES`] decoded back to back into one buffer (one index
//! read transaction each), [`WINDOW`] batches ahead of the reader, so decoding runs
//! on several cores and overlaps with the caller's consumption. Bytes are only
//! handed out from a batch whose chunks all verified; a single-chunk blob's chunk
//! digest is the blob's digest, so it is verified whole.
//!
//! A blob's chunk list comes in segments of up to 1024 chunks with their pack
//! locations (see `format`), read (and verified) from the packs when the read
//! position or the read-ahead reaches them: a reader holds at most two, and reads
//! no chunk entry from the redb index (whose page cache would otherwise keep a
//! share of every large blob read).
//!
//! Memory: a consumed batch's buffer goes back to the reader and is reused for a
//! later batch, so a reader holds at most `WINDOW + 1` buffers of
//! [`BATCH_CAP`] bytes whatever the blob's size, and a finished reader leaves
//! them to the store for the next one ([`POOL_MAX`] at most). Allocating a buffer
//! per chunk on the blocking threads and freeing it on the reading thread made
//! glibc's per-thread arenas fragment: peak RSS grew with the bytes read (26 MB
//! after 64 MiB, 42 MB after 1 GiB).

use std::collections::VecDeque;
use std::io::{self, SeekFrom};
use std::ops::Range;
use std::pin::Pin;
use std::sync::{Arc, PoisonError};
use std::task::{Context, Poll, ready};

use std::future::Future;
use tokio::io::{AsyncRead, AsyncSeek, ReadBuf};
use tokio::task::JoinHandle;

use super::format::{ChunkLoc, MAX_CHUNK, SegRef};
use super::{EmbeddedError, EmbeddedStore, Layout, read_segment};

/// Bytes of chunks decoded by one blocking task (the first batch of a run is one
/// chunk, so the first bytes come early).
const BATCH_BYTES: u64 = 1 << 20;
/// Batches decoded ahead of the read position.
const WINDOW: usize = 4;
/// Size of a batch buffer: a batch stops at the first chunk that reaches
/// [`BATCH_BYTES`], so it is at most one chunk longer.
const BATCH_CAP: usize = BATCH_BYTES as usize + MAX_CHUNK;
/// Batch buffers a store keeps for later readers (about 10 MiB).
const POOL_MAX: usize = 2 * (WINDOW + 1);
/// A single-chunk blob this small is read inline rather than on a blocking thread:
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
    /// Their bytes back to back from the start; may be longer (a reused buffer).
    data: Vec<u8>,
}

type Fetch = JoinHandle<Result<Batch, EmbeddedError>>;

/// Reads one blob from an [`EmbeddedStore`]; see the module doc.
pub struct EmbeddedBlobReader {
    store: EmbeddedStore,
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
    /// Buffers of consumed batches, for the next batches.
    free: Vec<Vec<u8>>,
}

impl EmbeddedBlobReader {
    pub(crate) fn new(store: EmbeddedStore, digest: [u8; 32], layout: Layout) -> Self {
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
            spans,
            count,
            size,
            loaded,
            inline,
            pos: 0,
            current: None,
            inflight: VecDeque::new(),
            next: 0,
            free: Vec::new(),
        }
    }

    /// The blob's size.
    pub fn len(&self) -> u64 {
        self.size
    }

    /// Whether the blob is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
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
        if !self.inflight.is_empty() {
            let mut bytes = seg.chunks[lo].size;
            while hi < seg.chunks.len() && bytes < BATCH_BYTES {
                bytes += seg.chunks[hi].size;
                hi += 1;
            }
        }
        let end = seg.first + hi;
        self.next = end;
        let store = self.store.clone();
        let buf = self.take_buf();
        let h = tokio::task::spawn_blocking(move || {
            let data = decode_batch(&store, &seg.chunks[lo..hi], buf)?;
            Ok(Batch {
                chunks: first..end,
                start: seg.starts[lo],
                end: seg.starts[hi],
                data,
            })
        });
        self.inflight.push_back((first..end, h));
        Ok(())
    }

    /// Forgets everything being decoded and restarts at chunk `idx`.
    fn restart(&mut self, idx: usize) {
        // Dropping a handle detaches its task; its result (and buffer) is dropped.
        self.inflight.clear();
        self.next = idx;
    }

    /// Makes `current` hold chunk `idx`.
    fn poll_batch(&mut self, cx: &mut Context<'_>, idx: usize) -> Poll<io::Result<()>> {
        if matches!(&self.current, Some(b) if b.chunks.contains(&idx)) {
            return Poll::Ready(Ok(()));
        }
        if self.inline {
            let buf = match self.current.take() {
                Some(b) => b.data,
                None => self.take_buf(),
            };
            let seg = self.seg_of_chunk(idx)?;
            let data = decode_batch(&self.store, &seg.chunks[..], buf).map_err(to_io)?;
            self.current = Some(Batch {
                chunks: 0..1,
                start: 0,
                end: self.size,
                data,
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
            let batch = r.map_err(io::Error::other)?.map_err(to_io)?;
            if let Some(old) = self.current.take() {
                self.free.push(old.data);
            }
            let found = batch.chunks.contains(&idx);
            self.current = Some(batch);
            if found {
                return Poll::Ready(Ok(()));
            }
        }
    }

    /// A batch buffer: a free one of this reader's, the store's, or a new one,
    /// allocated at its full size once so that it never grows (growing doubles).
    fn take_buf(&mut self) -> Vec<u8> {
        if let Some(b) = self.free.pop() {
            return b;
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

impl Drop for EmbeddedBlobReader {
    fn drop(&mut self) {
        let mut pool = self
            .store
            .inner
            .read_bufs
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let mine = self
            .free
            .drain(..)
            .chain(self.current.take().map(|b| b.data));
        for b in mine {
            if pool.len() >= POOL_MAX {
                break;
            }
            pool.push(b);
        }
    }
}

/// Reads, decompresses and verifies chunks `wanted` back to back into `buf`,
/// grown if needed (a full-size buffer is not zeroed again). Chunks without a
/// location (chunk lists of the format before segments) are looked up in the index.
fn decode_batch(
    store: &EmbeddedStore,
    wanted: &[Chunk],
    mut buf: Vec<u8>,
) -> Result<Vec<u8>, EmbeddedError> {
    let locs = if wanted.iter().all(|c| c.loc.is_some()) {
        wanted.iter().filter_map(|c| c.loc).collect()
    } else {
        let digests: Vec<[u8; 32]> = wanted.iter().map(|c| c.digest).collect();
        store.chunk_locs(&digests)?
    };
    // Chunk sizes were bounded by MAX_CHUNK when the chunk list was decoded.
    let len: u64 = wanted.iter().map(|c| c.size).sum();
    let len = usize::try_from(len)
        .map_err(|_| EmbeddedError::Corrupt(format!("batch of {len} bytes")))?;
    if buf.len() < len {
        buf.resize(len, 0);
    }
    let mut off = 0;
    for (c, loc) in wanted.iter().zip(&locs) {
        let n = c.size as usize;
        store.read_chunk_into(&c.digest, c.size, loc, &mut buf[off..off + n])?;
        off += n;
    }
    Ok(buf)
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
