//! Verified blob reader with seek. Chunks are fetched, decompressed and checked
//! against their BLAKE3 digest on blocking threads, in batches of about
//! [`BATCH_BYTES`] (one index read transaction each), [`WINDOW`] batches ahead of
//! the reader, so decoding runs on several cores and overlaps with the caller's
//! consumption. Bytes are only handed out from a chunk that verified; a
//! single-chunk blob's chunk digest is the blob's digest, so it is verified whole.

use std::collections::VecDeque;
use std::io::{self, SeekFrom};
use std::ops::Range;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use std::future::Future;
use tokio::io::{AsyncRead, AsyncSeek, ReadBuf};
use tokio::task::JoinHandle;

use super::format::ChunkLoc;
use super::{EmbeddedError, EmbeddedStore};

/// Bytes of chunks decoded by one blocking task (the first batch of a run is one
/// chunk, so the first bytes come early).
const BATCH_BYTES: u64 = 1 << 20;
/// Batches decoded ahead of the read position. Memory: WINDOW x (BATCH_BYTES + one
/// chunk) at most, whatever the blob's size.
const WINDOW: usize = 4;
/// A single-chunk blob this small is read inline rather than on a blocking thread:
/// a pread of a few KiB costs less than the hand-off.
const INLINE_MAX: u64 = 16 * 1024;

/// Corruption becomes `InvalidData`, so callers can tell it from I/O trouble.
fn to_io(e: EmbeddedError) -> io::Error {
    match e {
        EmbeddedError::Corrupt(_) => io::Error::new(io::ErrorKind::InvalidData, e),
        e => io::Error::other(e),
    }
}

type Fetch = JoinHandle<Result<Vec<Vec<u8>>, EmbeddedError>>;

/// Reads one blob from an [`EmbeddedStore`]; see the module doc.
pub struct EmbeddedBlobReader {
    store: EmbeddedStore,
    /// (digest, size) per chunk.
    chunks: Arc<[([u8; 32], u64)]>,
    /// Location of the only chunk of a single-chunk blob (known from opening it).
    single: Option<ChunkLoc>,
    /// Offset of each chunk's first byte.
    starts: Vec<u64>,
    total: u64,
    pos: u64,
    current: Option<(usize, Vec<u8>)>,
    /// Decoded chunks after `current`, in order.
    decoded: VecDeque<(usize, Vec<u8>)>,
    /// Batches being decoded, in order, each with the chunks it covers.
    inflight: VecDeque<(Range<usize>, Fetch)>,
    /// The first chunk no batch covers yet.
    next: usize,
}

impl EmbeddedBlobReader {
    pub(crate) fn new(
        store: EmbeddedStore,
        chunks: Vec<([u8; 32], u64)>,
        single: Option<ChunkLoc>,
    ) -> Self {
        let mut starts = Vec::with_capacity(chunks.len());
        let mut total = 0u64;
        for (_, s) in &chunks {
            starts.push(total);
            total += s;
        }
        EmbeddedBlobReader {
            store,
            chunks: chunks.into(),
            single,
            starts,
            total,
            pos: 0,
            current: None,
            decoded: VecDeque::new(),
            inflight: VecDeque::new(),
            next: 0,
        }
    }

    /// The blob's size.
    pub fn len(&self) -> u64 {
        self.total
    }

    /// Whether the blob is empty.
    pub fn is_empty(&self) -> bool {
        self.total == 0
    }

    /// Starts decoding the batch beginning at chunk `self.next`.
    fn spawn_batch(&mut self) {
        let first = self.next;
        let mut end = first + 1;
        if !self.inflight.is_empty() {
            let mut bytes = self.chunks[first].1;
            while end < self.chunks.len() && bytes < BATCH_BYTES {
                bytes += self.chunks[end].1;
                end += 1;
            }
        }
        self.next = end;
        let (store, chunks, single) = (self.store.clone(), self.chunks.clone(), self.single);
        let h = tokio::task::spawn_blocking(move || {
            let wanted = &chunks[first..end];
            let locs = match single {
                Some(loc) => vec![loc],
                None => {
                    let digests: Vec<[u8; 32]> = wanted.iter().map(|c| c.0).collect();
                    store.chunk_locs(&digests)?
                }
            };
            wanted
                .iter()
                .zip(&locs)
                .map(|((d, s), loc)| store.read_chunk_at(d, *s, loc))
                .collect()
        });
        self.inflight.push_back((first..end, h));
    }

    /// Forgets everything decoded or being decoded and restarts at chunk `idx`.
    fn restart(&mut self, idx: usize) {
        self.decoded.clear();
        // Dropping a handle detaches its task; its result is simply dropped.
        self.inflight.clear();
        self.next = idx;
    }

    /// Makes `current` hold chunk `idx`.
    fn poll_chunk(&mut self, cx: &mut Context<'_>, idx: usize) -> Poll<io::Result<()>> {
        if matches!(&self.current, Some((i, _)) if *i == idx) {
            return Poll::Ready(Ok(()));
        }
        if let (Some(loc), true) = (self.single, self.chunks[idx].1 <= INLINE_MAX) {
            let (d, s) = self.chunks[idx];
            let data = self.store.read_chunk_at(&d, s, &loc).map_err(to_io)?;
            self.current = Some((idx, data));
            return Poll::Ready(Ok(()));
        }
        loop {
            while self.decoded.front().is_some_and(|(i, _)| *i < idx) {
                self.decoded.pop_front();
            }
            match self.decoded.front() {
                Some((i, _)) if *i == idx => {
                    self.current = self.decoded.pop_front();
                    return Poll::Ready(Ok(()));
                }
                // A seek backwards.
                Some(_) => self.restart(idx),
                None => {}
            }
            if self
                .inflight
                .front()
                .is_some_and(|(r, _)| !r.contains(&idx))
                || (self.inflight.is_empty() && self.next != idx)
            {
                self.restart(idx);
            }
            while self.inflight.len() < WINDOW && self.next < self.chunks.len() {
                self.spawn_batch();
            }
            let Some((range, h)) = self.inflight.front_mut() else {
                return Poll::Ready(Err(io::Error::other("no chunk to read")));
            };
            let r = ready!(Pin::new(h).poll(cx));
            let first = range.start;
            self.inflight.pop_front();
            let data = r.map_err(io::Error::other)?.map_err(to_io)?;
            self.decoded
                .extend(data.into_iter().enumerate().map(|(k, d)| (first + k, d)));
        }
    }
}

impl AsyncRead for EmbeddedBlobReader {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let mut copied = false;
        // Fills the caller's buffer across chunks while they are decoded already.
        while this.pos < this.total && buf.remaining() > 0 {
            // The chunk holding pos: the last one starting at or before it.
            let idx = this.starts.partition_point(|&s| s <= this.pos) - 1;
            match this.poll_chunk(cx, idx) {
                Poll::Ready(Ok(())) => {}
                // What was copied is handed out; the next call waits or reports.
                _ if copied => break,
                other => return other,
            }
            let Some((_, data)) = &this.current else {
                return Poll::Ready(Err(io::Error::other("no current chunk")));
            };
            let off = (this.pos - this.starts[idx]) as usize;
            let n = buf.remaining().min(data.len() - off);
            buf.put_slice(&data[off..off + n]);
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
            SeekFrom::End(d) => self.total.checked_add_signed(d),
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
