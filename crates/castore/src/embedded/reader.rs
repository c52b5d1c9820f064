//! Verified blob reader with seek. Chunks are fetched, decompressed and checked
//! against their BLAKE3 digest on blocking threads, [`PREFETCH`] chunks ahead of
//! the reader, so decoding overlaps with the caller's consumption. Bytes are only
//! handed out from a chunk that verified; a single-chunk blob's chunk digest is the
//! blob's digest, so it is verified whole.

use std::collections::VecDeque;
use std::io::{self, SeekFrom};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use std::future::Future;
use tokio::io::{AsyncRead, AsyncSeek, ReadBuf};
use tokio::task::JoinHandle;

use super::{EmbeddedError, EmbeddedStore};

/// Chunks decoded ahead of the read position (memory: PREFETCH x 256 KiB at most).
const PREFETCH: usize = 4;
/// Chunks this small are read inline rather than on a blocking thread: a pread of a
/// few KiB costs less than the hand-off.
const INLINE_MAX: u64 = 16 * 1024;

/// Corruption becomes `InvalidData`, so callers can tell it from I/O trouble.
fn to_io(e: EmbeddedError) -> io::Error {
    match e {
        EmbeddedError::Corrupt(_) => io::Error::new(io::ErrorKind::InvalidData, e),
        e => io::Error::other(e),
    }
}

type Fetch = JoinHandle<Result<Vec<u8>, EmbeddedError>>;

/// Reads one blob from an [`EmbeddedStore`]; see the module doc.
pub struct EmbeddedBlobReader {
    store: EmbeddedStore,
    /// (digest, size) per chunk.
    chunks: Arc<[([u8; 32], u64)]>,
    /// Offset of each chunk's first byte.
    starts: Vec<u64>,
    total: u64,
    pos: u64,
    current: Option<(usize, Vec<u8>)>,
    inflight: VecDeque<(usize, Fetch)>,
}

impl EmbeddedBlobReader {
    pub(crate) fn new(store: EmbeddedStore, chunks: Vec<([u8; 32], u64)>) -> Self {
        let mut starts = Vec::with_capacity(chunks.len());
        let mut total = 0u64;
        for (_, s) in &chunks {
            starts.push(total);
            total += s;
        }
        EmbeddedBlobReader {
            store,
            chunks: chunks.into(),
            starts,
            total,
            pos: 0,
            current: None,
            inflight: VecDeque::new(),
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

    fn spawn(&self, idx: usize) -> Fetch {
        let store = self.store.clone();
        let (d, s) = self.chunks[idx];
        tokio::task::spawn_blocking(move || store.read_chunk(&d, s))
    }

    /// Makes `current` hold chunk `idx`.
    fn poll_chunk(&mut self, cx: &mut Context<'_>, idx: usize) -> Poll<io::Result<()>> {
        if matches!(&self.current, Some((i, _)) if *i == idx) {
            return Poll::Ready(Ok(()));
        }
        let (d, s) = self.chunks[idx];
        if s <= INLINE_MAX && self.inflight.is_empty() {
            let data = self.store.read_chunk(&d, s).map_err(to_io)?;
            self.current = Some((idx, data));
            return Poll::Ready(Ok(()));
        }
        if self.inflight.front().map(|(i, _)| *i) != Some(idx) {
            // A seek moved us off the prefetched run: start over from idx.
            self.inflight.clear();
        }
        let mut next = self.inflight.back().map(|(i, _)| i + 1).unwrap_or(idx);
        while self.inflight.len() < PREFETCH && next < self.chunks.len() {
            let h = self.spawn(next);
            self.inflight.push_back((next, h));
            next += 1;
        }
        let Some((_, h)) = self.inflight.front_mut() else {
            return Poll::Ready(Err(io::Error::other("no chunk to read")));
        };
        let r = ready!(Pin::new(h).poll(cx));
        self.inflight.pop_front();
        let data = r.map_err(io::Error::other)?.map_err(to_io)?;
        self.current = Some((idx, data));
        Poll::Ready(Ok(()))
    }
}

impl AsyncRead for EmbeddedBlobReader {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.pos >= this.total || buf.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        // The chunk holding pos: the last one starting at or before it.
        let idx = this.starts.partition_point(|&s| s <= this.pos) - 1;
        ready!(this.poll_chunk(cx, idx))?;
        let Some((_, data)) = &this.current else {
            return Poll::Ready(Err(io::Error::other("no current chunk")));
        };
        let off = (this.pos - this.starts[idx]) as usize;
        let n = buf.remaining().min(data.len() - off);
        buf.put_slice(&data[off..off + n]);
        this.pos += n as u64;
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
