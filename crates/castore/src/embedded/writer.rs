//! Streaming blob writer: buffers up to [`BATCH`] bytes, then chunks, hashes,
//! compresses and appends them to a pack on a blocking thread while the caller's
//! `poll_write` waits. Memory per writer: the batch buffer, plus 40 bytes per chunk
//! of the blob's chunk list (0.06% of the blob's size).

use std::collections::HashSet;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::AsyncWrite;
use tokio::task::JoinHandle;

use super::format::{AVG_CHUNK, BlobEntry, ChunkLoc, MAX_CHUNK, MIN_CHUNK};
use super::{CommitReq, Compressor, EmbeddedError, EmbeddedStore};

/// Bytes buffered before a batch is processed.
const BATCH: usize = 4 * 1024 * 1024;
/// Index entries a writer holds before handing them to the committer (not durably).
const INDEX_BATCH: usize = 128;

struct Job {
    store: EmbeddedStore,
    buf: Vec<u8>,
    /// Leading bytes of `buf` already fed to `hasher` (the tail kept from the last batch).
    hashed: usize,
    hasher: blake3::Hasher,
    chunks: Vec<([u8; 32], u64)>,
    /// Chunks this writer stored and not yet committed, for dedup within the blob.
    mine: HashSet<[u8; 32]>,
    pending: Vec<([u8; 32], ChunkLoc)>,
    compressor: Compressor,
}

enum State {
    Idle(Box<Job>),
    Busy(JoinHandle<Result<Box<Job>, EmbeddedError>>),
    Closing(JoinHandle<Result<[u8; 32], EmbeddedError>>),
    Done([u8; 32]),
    Failed(String),
}

/// Writes one blob into an [`EmbeddedStore`]. Write the bytes with
/// [`AsyncWrite`], then [`EmbeddedBlobWriter::close`] returns the blob's BLAKE3
/// digest once it is durably stored. Dropped before close, it leaves nothing visible.
pub struct EmbeddedBlobWriter {
    state: State,
}

impl EmbeddedBlobWriter {
    pub(crate) fn new(store: EmbeddedStore) -> Self {
        EmbeddedBlobWriter {
            state: State::Idle(Box::new(Job {
                store,
                buf: Vec::new(),
                hashed: 0,
                hasher: blake3::Hasher::new(),
                chunks: Vec::new(),
                mine: HashSet::new(),
                pending: Vec::new(),
                compressor: Compressor::new(),
            })),
        }
    }

    fn poll_busy(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            match &mut self.state {
                State::Busy(h) => {
                    let r = ready!(Pin::new(h).poll(cx));
                    self.state = match r {
                        Ok(Ok(job)) => State::Idle(job),
                        Ok(Err(e)) => State::Failed(e.to_string()),
                        Err(e) => State::Failed(format!("blob writer task: {e}")),
                    };
                }
                State::Failed(m) => return Poll::Ready(Err(io::Error::other(m.clone()))),
                State::Closing(_) | State::Done(_) => {
                    return Poll::Ready(Err(io::Error::other("blob writer already closed")));
                }
                State::Idle(_) => return Poll::Ready(Ok(())),
            }
        }
    }

    /// Polls the blob to completion: processes what is buffered, commits the blob
    /// durably and returns its digest. Idempotent once done.
    pub fn poll_close_blob(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<[u8; 32]>> {
        loop {
            match &mut self.state {
                State::Busy(_) => ready!(self.poll_busy(cx))?,
                State::Idle(_) => {
                    let State::Idle(job) =
                        std::mem::replace(&mut self.state, State::Failed(String::new()))
                    else {
                        unreachable!("matched Idle above")
                    };
                    self.state = State::Closing(tokio::task::spawn_blocking(move || finish(job)));
                }
                State::Closing(h) => {
                    let r = ready!(Pin::new(h).poll(cx));
                    self.state = match r {
                        Ok(Ok(d)) => State::Done(d),
                        Ok(Err(e)) => State::Failed(e.to_string()),
                        Err(e) => State::Failed(format!("blob writer task: {e}")),
                    };
                }
                State::Done(d) => return Poll::Ready(Ok(*d)),
                State::Failed(m) => return Poll::Ready(Err(io::Error::other(m.clone()))),
            }
        }
    }

    /// Whether the blob was closed successfully already.
    pub fn is_closed(&self) -> bool {
        matches!(self.state, State::Done(_))
    }

    /// Finishes the blob and returns its BLAKE3 digest after it is durably stored.
    pub async fn close(&mut self) -> io::Result<[u8; 32]> {
        std::future::poll_fn(|cx| self.poll_close_blob(cx)).await
    }
}

use std::future::Future;

impl AsyncWrite for EmbeddedBlobWriter {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        loop {
            ready!(this.poll_busy(cx))?;
            let State::Idle(job) = &mut this.state else {
                return Poll::Ready(Err(io::Error::other("blob writer in an impossible state")));
            };
            if job.buf.len() < BATCH {
                let n = data.len().min(BATCH - job.buf.len());
                job.buf.extend_from_slice(&data[..n]);
                return Poll::Ready(Ok(n));
            }
            let State::Idle(job) = std::mem::replace(&mut this.state, State::Failed(String::new()))
            else {
                unreachable!("matched Idle above")
            };
            this.state = State::Busy(tokio::task::spawn_blocking(move || process(job, false)));
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // Bytes are durable only at close; flush just waits for the running batch.
        match self.state {
            State::Busy(_) | State::Idle(_) => self.poll_busy(cx),
            _ => Poll::Ready(Ok(())),
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.poll_close_blob(cx).map_ok(|_| ())
    }
}

/// Cuts, hashes, compresses and appends every complete chunk in the buffer (all of
/// it when `last`), keeping the tail that may still grow.
fn process(mut job: Box<Job>, last: bool) -> Result<Box<Job>, EmbeddedError> {
    job.hasher.update(&job.buf[job.hashed..]);
    let mut cuts = Vec::new();
    let mut pos = 0;
    while job.buf.len() - pos >= MAX_CHUNK || (last && pos < job.buf.len()) {
        let rest = &job.buf[pos..];
        // Only a full MAX_CHUNK window (or the blob's end) makes the cut final.
        let window = &rest[..rest.len().min(MAX_CHUNK)];
        let (_, cut) = fastcdc::v2020::FastCDC::new(window, MIN_CHUNK, AVG_CHUNK, MAX_CHUNK)
            .cut(0, window.len());
        let cut = if cut == 0 { window.len() } else { cut };
        cuts.push(pos..pos + cut);
        pos += cut;
    }
    let digests: Vec<[u8; 32]> = cuts
        .iter()
        .map(|r| *blake3::hash(&job.buf[r.clone()]).as_bytes())
        .collect();
    let present = job.store.chunks_present(&digests)?;
    for ((r, d), present) in cuts.iter().zip(&digests).zip(present) {
        job.chunks.push((*d, r.len() as u64));
        if present || job.mine.contains(d) {
            continue;
        }
        let loc = job
            .compressor
            .store(&job.store.inner.packs, &job.buf[r.clone()])?;
        job.mine.insert(*d);
        job.pending.push((*d, loc));
    }
    job.buf.drain(..pos);
    job.hashed = job.buf.len();
    if !last && job.pending.len() >= INDEX_BATCH {
        let chunks = std::mem::take(&mut job.pending);
        job.store.submit_blocking(CommitReq {
            staged: chunks,
            ..Default::default()
        })?;
        // Staged chunks are found by chunks_present from now on.
        job.mine.clear();
    }
    Ok(job)
}

fn finish(job: Box<Job>) -> Result<[u8; 32], EmbeddedError> {
    let mut job = process(job, true)?;
    let digest = *job.hasher.finalize().as_bytes();
    let entry = if job.chunks.len() <= 1 {
        // Empty blob: nothing was chunked; store the empty chunk under its digest.
        if job.chunks.is_empty() {
            let present = job.store.chunks_present(&[digest])?;
            if !present[0] {
                let (pack, offset) = job.store.inner.packs.append(&[])?;
                job.pending.push((
                    digest,
                    ChunkLoc {
                        pack,
                        offset,
                        stored_len: 0,
                        raw_len: 0,
                        compressed: false,
                    },
                ));
            }
        }
        BlobEntry::Single
    } else {
        BlobEntry::Chunked(std::mem::take(&mut job.chunks))
    };
    let req = CommitReq {
        chunks: std::mem::take(&mut job.pending),
        blobs: vec![(digest, entry)],
        durable: true,
        ..Default::default()
    };
    job.store.submit_blocking(req)?;
    Ok(digest)
}
