//! Streaming blob writer: buffers up to [`BATCH`] bytes, then, on a blocking thread,
//! cuts them into chunks, hashes and compresses the chunks on all cores (one worker
//! per core, see [`workers`]) and appends them to a pack in order. While a batch is
//! processed, `poll_write` fills the next one (up to [`BATCH`] bytes more), so the
//! caller's own work on the stream (receiving it, parsing a NAR, hashing it with
//! SHA-256) overlaps the chunking instead of waiting for it: a 256 MiB NAR upload
//! spent about half its server time waiting so. The blob's chunk list is cut into
//! segments of [`SEG_CHUNKS`] chunks, each appended to the packs once full: memory
//! per writer is two batch buffers and a batch's compressed copy, one segment
//! (53 KiB) and 65 bytes per finished segment (per 64 MiB of blob).

use std::collections::HashMap;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::AsyncWrite;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use super::format::{
    AVG_CHUNK, BlobEntry, ChunkLoc, MAX_CHUNK, MIN_CHUNK, SEG_CHUNKS, SegRef, encode_segment,
};
use super::{
    CommitReq, EmbeddedError, EmbeddedStore, Level, append_encoded, encode, stored_equals,
};

/// Bytes buffered before a batch is processed.
const BATCH: usize = 4 * 1024 * 1024;
/// A blob of at most this many bytes, written in one batch, is compressed and
/// appended by `close` on the calling thread (zstd level 9 takes tens of
/// microseconds on it) instead of a blocking thread: a thread handoff costs more
/// than the work, and each blocking thread keeps its own zstd context.
const INLINE_CLOSE: usize = 8 * 1024;

struct Job {
    store: EmbeddedStore,
    buf: Vec<u8>,
    /// Leading bytes of `buf` already fed to `hasher` (the tail kept from the last batch).
    hashed: usize,
    hasher: blake3::Hasher,
    /// The blob's digest when it is one chunk hashed as a whole (then `hasher`
    /// was not fed: the chunk's digest is the blob's).
    whole: Option<[u8; 32]>,
    /// Chunks of the blob so far.
    count: u64,
    /// The segment being filled: the latest chunks and where they are stored.
    seg: Vec<([u8; 32], ChunkLoc)>,
    /// The blob's full segments, in order.
    segs: Vec<SegRef>,
    /// Chunks this writer stored in the current and the previous segment, for
    /// dedup within the blob (bounded: a chunk repeated further apart is stored
    /// again).
    mine: HashMap<[u8; 32], ChunkLoc>,
    mine_before: HashMap<[u8; 32], ChunkLoc>,
    /// Per pack this writer appended to, the end of its last append: the commit
    /// raises the packs' committed lengths to these.
    ends: HashMap<u32, u64>,
    /// Against pack rewrites, from the writer's start until its commit is
    /// applied: its chunks may name locations found for dedup.
    pin: Option<super::rewrite::InUse>,
}

enum State {
    Idle(Box<Job>),
    Busy(JoinHandle<Result<Box<Job>, EmbeddedError>>),
    /// Its last chunks are being processed (on a blocking thread).
    Closing(JoinHandle<Result<Closed, EmbeddedError>>),
    /// Its commit is queued: waited for without holding a thread, so many blobs can
    /// wait for one group commit cheaply.
    Committing([u8; 32], oneshot::Receiver<Result<(), EmbeddedError>>),
    Done([u8; 32]),
    /// The kind (a full disk stays recognisable) and message of the failure.
    Failed(io::ErrorKind, String),
}

/// Writes one blob into an [`EmbeddedStore`]. Write the bytes with
/// [`AsyncWrite`], then [`EmbeddedBlobWriter::close`] returns the blob's BLAKE3
/// digest once it is durably stored. Dropped before close, it leaves nothing visible.
pub struct EmbeddedBlobWriter {
    state: State,
    /// Bytes written while a batch is processed (at most [`BATCH`]); they follow
    /// the batch's unprocessed tail, and join it when the batch is done.
    next: Vec<u8>,
}

impl EmbeddedBlobWriter {
    pub(crate) fn new(store: EmbeddedStore) -> Self {
        let pin = Some(store.inner.rewrite.pin(false));
        EmbeddedBlobWriter {
            state: State::Idle(Box::new(Job {
                store,
                pin,
                buf: Vec::new(),
                hashed: 0,
                hasher: blake3::Hasher::new(),
                whole: None,
                count: 0,
                seg: Vec::new(),
                segs: Vec::new(),
                mine: HashMap::new(),
                mine_before: HashMap::new(),
                ends: HashMap::new(),
            })),
            next: Vec::new(),
        }
    }

    /// Waits for the batch being processed, if any; the bytes written meanwhile
    /// then join the job's buffer.
    fn poll_busy(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            match &mut self.state {
                State::Busy(h) => {
                    let r = ready!(Pin::new(h).poll(cx));
                    self.state = match r {
                        Ok(Ok(mut job)) => {
                            // The tail is under MAX_CHUNK bytes and the buffer keeps
                            // its capacity: one copy of the next batch, no allocation.
                            job.buf.extend_from_slice(&self.next);
                            self.next.clear();
                            State::Idle(job)
                        }
                        Ok(Err(e)) => failed(&e),
                        Err(e) => {
                            State::Failed(io::ErrorKind::Other, format!("blob writer task: {e}"))
                        }
                    };
                }
                State::Failed(k, m) => return Poll::Ready(Err(io::Error::new(*k, m.clone()))),
                State::Closing(_) | State::Committing(..) | State::Done(_) => {
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
                    let State::Idle(job) = std::mem::replace(
                        &mut self.state,
                        State::Failed(io::ErrorKind::Other, String::new()),
                    ) else {
                        unreachable!("matched Idle above")
                    };
                    self.state = if job.count == 0 && job.buf.len() <= INLINE_CLOSE {
                        committing(finish(job))
                    } else {
                        State::Closing(tokio::task::spawn_blocking(move || finish(job)))
                    };
                }
                State::Closing(h) => {
                    let r = ready!(Pin::new(h).poll(cx));
                    self.state = match r {
                        Ok(r) => committing(r),
                        Err(e) => {
                            State::Failed(io::ErrorKind::Other, format!("blob writer task: {e}"))
                        }
                    };
                }
                State::Committing(d, rx) => {
                    let r = ready!(Pin::new(rx).poll(cx));
                    self.state = match r {
                        Ok(Ok(())) => State::Done(*d),
                        Ok(Err(e)) => failed(&e),
                        Err(_) => {
                            State::Failed(io::ErrorKind::Other, EmbeddedError::Closed.to_string())
                        }
                    };
                }
                State::Done(d) => return Poll::Ready(Ok(*d)),
                State::Failed(k, m) => return Poll::Ready(Err(io::Error::new(*k, m.clone()))),
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
            if matches!(this.state, State::Busy(_)) {
                match this.poll_busy(cx) {
                    Poll::Ready(r) => r?,
                    // Still processing: the bytes go to the next batch while it
                    // has room (the waker is registered for the batch's end).
                    Poll::Pending if this.next.len() < BATCH => {
                        if this.next.capacity() == 0 {
                            this.next.reserve_exact(BATCH);
                        }
                        let n = data.len().min(BATCH - this.next.len());
                        this.next.extend_from_slice(&data[..n]);
                        return Poll::Ready(Ok(n));
                    }
                    Poll::Pending => return Poll::Pending,
                }
            }
            ready!(this.poll_busy(cx))?;
            let State::Idle(job) = &mut this.state else {
                return Poll::Ready(Err(io::Error::other("blob writer in an impossible state")));
            };
            if job.buf.len() < BATCH {
                let n = data.len().min(BATCH - job.buf.len());
                job.buf.extend_from_slice(&data[..n]);
                return Poll::Ready(Ok(n));
            }
            let State::Idle(job) = std::mem::replace(
                &mut this.state,
                State::Failed(io::ErrorKind::Other, String::new()),
            ) else {
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

/// Threads that hash and compress the chunks of one batch: one per core.
fn workers() -> usize {
    static N: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *N.get_or_init(|| std::thread::available_parallelism().map_or(1, |n| n.get().min(16)))
}

/// A chunk after the parallel stage: its digest, and where it is stored already
/// or its encoding (`None`: store raw).
type Encoded = ([u8; 32], Result<ChunkLoc, Option<Vec<u8>>>);

/// Hashes every chunk `cuts` of `buf`, and compresses those not stored yet (or
/// stored damaged), on up to [`workers`] threads taking chunks in turn. Also feeds `whole` (the blob's
/// hasher, `None` when the one chunk is the whole blob) with `new_bytes` on one of
/// them.
fn hash_and_encode(
    store: &EmbeddedStore,
    buf: &[u8],
    cuts: &[std::ops::Range<usize>],
    whole: Option<&mut blake3::Hasher>,
    new_bytes: std::ops::Range<usize>,
    level: Level,
) -> Result<Vec<Encoded>, EmbeddedError> {
    let one = |r: &std::ops::Range<usize>| -> Result<Encoded, EmbeddedError> {
        let data = &buf[r.clone()];
        let d = *blake3::hash(data).as_bytes();
        if let Some(loc) = store.find_chunk(&d)? {
            if stored_equals(&store.inner.packs, &loc, data) {
                return Ok((d, Ok(loc)));
            }
            store.replacing_damaged("chunk", &d, &loc)?;
        }
        Ok((d, Err(encode(data, level)?)))
    };
    let n = workers().min(cuts.len());
    let mut whole = whole;
    if n <= 1 {
        if let Some(h) = whole {
            h.update(&buf[new_bytes]);
        }
        return cuts.iter().map(one).collect();
    }
    let next = std::sync::atomic::AtomicUsize::new(0);
    let run = || -> Result<Vec<(usize, Encoded)>, EmbeddedError> {
        let mut out = Vec::new();
        loop {
            let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let Some(r) = cuts.get(i) else {
                return Ok(out);
            };
            out.push((i, one(r)?));
        }
    };
    let parts: Vec<Result<Vec<(usize, Encoded)>, EmbeddedError>> = std::thread::scope(|s| {
        let helpers: Vec<_> = (1..n).map(|_| s.spawn(run)).collect();
        // The blob's hash is sequential: this thread does it, then joins in.
        if let Some(h) = whole.take() {
            h.update(&buf[new_bytes]);
        }
        let mut parts = vec![run()];
        for h in helpers {
            parts
                .push(h.join().unwrap_or_else(|_| {
                    Err(EmbeddedError::Commit("chunk worker panicked".into()))
                }));
        }
        parts
    });
    let mut slots: Vec<Option<Encoded>> = (0..cuts.len()).map(|_| None).collect();
    for part in parts {
        for (i, e) in part? {
            slots[i] = Some(e);
        }
    }
    slots
        .into_iter()
        .map(|e| e.ok_or_else(|| EmbeddedError::Commit("chunk left unprocessed".into())))
        .collect()
}

/// The FastCDC chunks of `buf` (16/64/256 KiB) whose cuts are final: every chunk
/// followed by a full [`MAX_CHUNK`] window, and all of `buf` when it ends the
/// blob (`last`). The S3 blob service cuts with it too, so both stores chunk a
/// blob alike.
pub(crate) fn chunk_cuts(buf: &[u8], last: bool) -> Vec<std::ops::Range<usize>> {
    let mut cuts = Vec::new();
    let mut pos = 0;
    while buf.len() - pos >= MAX_CHUNK || (last && pos < buf.len()) {
        let rest = &buf[pos..];
        // Only a full MAX_CHUNK window (or the blob's end) makes the cut final.
        let window = &rest[..rest.len().min(MAX_CHUNK)];
        let (_, cut) = fastcdc::v2020::FastCDC::new(window, MIN_CHUNK, AVG_CHUNK, MAX_CHUNK)
            .cut(0, window.len());
        let cut = if cut == 0 { window.len() } else { cut };
        cuts.push(pos..pos + cut);
        pos += cut;
    }
    cuts
}

/// Cuts, hashes, compresses and appends every complete chunk in the buffer (all of
/// it when `last`), keeping the tail that may still grow.
fn process(mut job: Box<Job>, last: bool) -> Result<Box<Job>, EmbeddedError> {
    let cuts = chunk_cuts(&job.buf, last);
    let pos = cuts.last().map_or(0, |r| r.end);
    // The whole blob is one chunk when its last batch is its first and is not cut:
    // then the chunk's digest is the blob's, and the blob is not hashed again.
    let whole = last && job.count == 0 && cuts.len() == 1;
    let one_chunk = whole && job.hashed == 0;
    let level = if whole { Level::Whole } else { Level::Chunk };
    let job_ref = &mut *job;
    let encoded = hash_and_encode(
        &job_ref.store,
        &job_ref.buf,
        &cuts,
        (!one_chunk).then_some(&mut job_ref.hasher),
        job_ref.hashed..job_ref.buf.len(),
        level,
    )?;
    if one_chunk {
        job.whole = encoded.first().map(|(d, _)| *d);
    }
    // Appended in blob order, so a blob's chunks lie in a pack front to back.
    for (r, (d, enc)) in cuts.iter().zip(encoded) {
        let known = job
            .mine
            .get(&d)
            .or_else(|| job.mine_before.get(&d))
            .copied();
        let loc = match (enc, known) {
            (Ok(loc), _) => loc,
            (Err(_), Some(loc)) => {
                // Kept for the next segment too: a run of repeats is stored once.
                job.mine.insert(d, loc);
                loc
            }
            (Err(enc), None) => {
                let loc =
                    append_encoded(&job.store.inner.packs, &job.buf[r.clone()], enc.as_deref())?;
                job.mine.insert(d, loc);
                note_end(&mut job.ends, &loc);
                loc
            }
        };
        job.count += 1;
        job.seg.push((d, loc));
        if job.seg.len() >= SEG_CHUNKS {
            flush_segment(&mut job)?;
        }
    }
    job.buf.drain(..pos);
    job.hashed = job.buf.len();
    Ok(job)
}

fn note_end(ends: &mut HashMap<u32, u64>, loc: &ChunkLoc) {
    let end = loc.offset + u64::from(loc.stored_len);
    let e = ends.entry(loc.pack).or_insert(0);
    *e = (*e).max(end);
}

/// Appends the segment being filled to the packs and records its reference.
fn flush_segment(job: &mut Job) -> Result<(), EmbeddedError> {
    if job.seg.is_empty() {
        return Ok(());
    }
    let bytes = encode_segment(&job.seg);
    let digest = *blake3::hash(&bytes).as_bytes();
    let stored = match job.store.find_segment(&digest)? {
        Some(loc) if stored_equals(&job.store.inner.packs, &loc, &bytes) => Some(loc),
        Some(loc) => {
            job.store.replacing_damaged("segment", &digest, &loc)?;
            None
        }
        None => None,
    };
    let loc = match stored {
        Some(loc) => loc,
        None => {
            let encoded = encode(&bytes, Level::Chunk)?;
            let loc = append_encoded(&job.store.inner.packs, &bytes, encoded.as_deref())?;
            note_end(&mut job.ends, &loc);
            loc
        }
    };
    job.segs.push(SegRef {
        digest,
        loc,
        chunks: job.seg.len() as u32,
        bytes: job.seg.iter().map(|(_, l)| u64::from(l.raw_len)).sum(),
    });
    job.seg.clear();
    job.mine_before = std::mem::take(&mut job.mine);
    Ok(())
}

/// A blob whose chunks are all appended: its digest, and the durable commit that
/// makes it visible, submitted by `committing`.
struct Closed {
    digest: [u8; 32],
    store: EmbeddedStore,
    req: CommitReq,
}

/// Submits the commit of a blob that `finish` prepared.
fn committing(r: Result<Closed, EmbeddedError>) -> State {
    match r {
        Ok(c) => State::Committing(c.digest, c.store.submit(c.req)),
        Err(e) => failed(&e),
    }
}

fn finish(job: Box<Job>) -> Result<Closed, EmbeddedError> {
    let mut job = process(job, true)?;
    let digest = match job.whole {
        Some(d) => d,
        None => *job.hasher.finalize().as_bytes(),
    };
    let mut chunks = Vec::new();
    let entry = if job.count <= 1 {
        if job.count == 1 {
            // The blob's one chunk, under its digest (which is the blob's).
            chunks = std::mem::take(&mut job.seg);
        } else if job.store.find_chunk(&digest)?.is_none() {
            // Empty blob: nothing was chunked; store the empty chunk under its digest.
            let (pack, offset) = job.store.inner.packs.append(&[])?;
            let loc = ChunkLoc {
                pack,
                offset,
                stored_len: 0,
                raw_len: 0,
                compressed: false,
            };
            note_end(&mut job.ends, &loc);
            chunks.push((digest, loc));
        }
        BlobEntry::Single
    } else {
        flush_segment(&mut job)?;
        BlobEntry::Segmented(std::mem::take(&mut job.segs))
    };
    let req = CommitReq {
        chunks,
        blobs: vec![(digest, entry)],
        pack_ends: job.ends.drain().collect(),
        durable: true,
        _in_use: job.pin.take(),
        ..Default::default()
    };
    Ok(Closed {
        digest,
        store: job.store,
        req,
    })
}

/// A failed writer's state: the error's message, and `StorageFull` as its kind
/// when a full disk caused it (so callers can answer 507 / RESOURCE_EXHAUSTED).
fn failed(e: &EmbeddedError) -> State {
    let kind = if crate::storage_full(e) {
        io::ErrorKind::StorageFull
    } else {
        io::ErrorKind::Other
    };
    State::Failed(kind, e.to_string())
}
