//! Writing blobs into packs: [`S3BlobWriter`] chunks, hashes and compresses like
//! the embedded store; small blobs go through the shared group committer, large
//! ones stream into a pack of their own by multipart upload.

use std::collections::{HashSet, VecDeque};
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Weak};
use std::task::{Context, Poll, ready};

use async_trait::async_trait;
use bytes::Bytes;
use futures::future::BoxFuture;
use object_store::{MultipartUpload, PutPayload};
use tokio::io::AsyncWrite;
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio::task::JoinHandle;

use super::Inner;
use super::index::{self, Row};
use crate::blobservice::{BlobWriter, ChunkMeta};
use crate::embedded::writer::chunk_cuts;
use crate::embedded::{Level, encode};
use crate::{B3Digest, Error, ErrorKind};

/// Bytes buffered before a batch is chunked (and, for a large blob, looked up in
/// the index and staged for its pack).
const BATCH: usize = 4 << 20;
/// Size of a multipart upload's parts (S3 wants at least 5 MiB but for the last).
pub(super) const PART: usize = 8 << 20;
/// Parts of one blob uploading at once.
const PARTS_IN_FLIGHT: usize = 2;
/// Group commits uploading at once; the next batch forms meanwhile.
const COMMITS_IN_FLIGHT: usize = 2;
/// Most stored bytes one group commit puts in its pack.
const MAX_GROUP_BYTES: usize = 16 << 20;
/// Most writers one group commit answers.
const MAX_GROUP: usize = 4096;
/// A blob of at most this many bytes is chunked and compressed by `close` on the
/// calling thread: a hop to a blocking thread costs more than the work.
const INLINE_CLOSE: usize = 8 << 10;

/// A chunk this writer stores: digest, raw length, and its stored bytes.
pub(super) struct NewChunk {
    digest: [u8; 32],
    raw_len: u32,
    compressed: bool,
    data: Bytes,
}

/// What a closing writer hands the group committer.
pub(super) struct Handoff {
    /// Chunks to store unless the index has them.
    chunks: Vec<NewChunk>,
    /// The chunk list of a blob of several chunks.
    list: Option<(B3Digest, Vec<ChunkMeta>)>,
    /// Chunks of it the index had already (checked again at commit).
    relied: Vec<[u8; 32]>,
    reply: oneshot::Sender<Result<(), (ErrorKind, String)>>,
}

impl Inner {
    /// Hands `h` to the group committer, starting it if it is not running (first
    /// use, or its runtime is gone).
    fn hand_off(self: &Arc<Self>, h: Handoff) {
        let mut tx = self
            .committer
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let h = match tx.as_ref() {
            Some(t) => match t.send(h) {
                Ok(()) => return,
                Err(mpsc::error::SendError(h)) => h,
            },
            None => h,
        };
        let (t, rx) = mpsc::unbounded_channel();
        tokio::spawn(committer(Arc::downgrade(self), rx));
        // The receiver was just made: the send cannot fail.
        let _ = t.send(h);
        *tx = Some(t);
    }
}

/// The group committer: takes every handoff waiting, stores their new chunks in
/// one pack with one PUT, indexes them all in one transaction, then answers them
/// all. Ends when the service is dropped (its sender with it).
async fn committer(inner: Weak<Inner>, mut rx: mpsc::UnboundedReceiver<Handoff>) {
    let slots = Arc::new(Semaphore::new(COMMITS_IN_FLIGHT));
    loop {
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        let Some(first) = rx.recv().await else {
            return;
        };
        let mut bytes: usize = first.chunks.iter().map(|c| c.data.len()).sum();
        let mut batch = vec![first];
        while bytes < MAX_GROUP_BYTES && batch.len() < MAX_GROUP {
            match rx.try_recv() {
                Ok(h) => {
                    bytes += h.chunks.iter().map(|c| c.data.len()).sum::<usize>();
                    batch.push(h);
                }
                Err(_) => break,
            }
        }
        let Some(inner) = inner.upgrade() else {
            return;
        };
        tokio::spawn(async move {
            let res = commit_group(&inner, &mut batch).await;
            inner
                .stats
                .group_commits
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            for h in batch {
                let _ = h.reply.send(res.as_ref().map(|_| ()).map_err(super::split));
            }
            drop(permit);
        });
    }
}

async fn commit_group(inner: &Arc<Inner>, batch: &mut [Handoff]) -> Result<(), Error> {
    let mut want: Vec<[u8; 32]> = batch
        .iter()
        .flat_map(|h| h.chunks.iter().map(|c| c.digest))
        .collect();
    want.sort_unstable();
    want.dedup();
    // A connection for the lookup and one for the commit, none held during the
    // upload between them: the pool serves the readers meanwhile.
    let existing = if want.is_empty() {
        HashSet::new()
    } else {
        index::existing(&mut inner.client().await?, &want).await?
    };
    let mut seen = HashSet::new();
    let mut rows: Vec<Row> = Vec::new();
    let mut parts = Vec::new();
    let mut offset = 0u64;
    let mut lists = Vec::new();
    let mut listed = HashSet::new();
    let mut relied: Vec<[u8; 32]> = existing.iter().copied().collect();
    for h in batch.iter_mut() {
        relied.append(&mut h.relied);
        for c in std::mem::take(&mut h.chunks) {
            if existing.contains(&c.digest) || !seen.insert(c.digest) {
                continue;
            }
            let len = c.data.len() as u64;
            rows.push((c.digest, offset, len as u32, c.raw_len, c.compressed));
            offset += len;
            parts.push(c.data);
        }
        // Two writers of the same blob can land in one batch; one statement
        // must not insert the same list twice.
        if let Some(l) = h.list.take().filter(|(d, _)| listed.insert(*d)) {
            lists.push(l);
        }
    }
    let name = (!rows.is_empty()).then(super::new_pack_name);
    if let Some(name) = &name {
        index::reserve_pack(&inner.client().await?, name).await?;
        inner.put(name, PutPayload::from_iter(parts)).await?;
    }
    relied.sort_unstable();
    relied.dedup();
    index::commit(
        &mut inner.client().await?,
        name.as_deref().map(|n| (n, offset)),
        &rows,
        &lists,
        &relied,
    )
    .await
}

/// A multipart upload of one large blob's pack.
struct Upload {
    inner: Arc<Inner>,
    name: String,
    /// `None` once completed or aborted.
    mp: Option<Box<dyn MultipartUpload>>,
    parts: VecDeque<JoinHandle<object_store::Result<()>>>,
    /// Bytes of the pack so far.
    len: u64,
    /// Index rows of its chunks.
    rows: Vec<Row>,
}

impl Drop for Upload {
    fn drop(&mut self) {
        // Not completed (writer dropped, or failed): abort it, so the bucket does
        // not keep its parts; what an abort misses is garbage for a later GC.
        let Some(mut mp) = self.mp.take() else {
            return;
        };
        let inner = self.inner.clone();
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                inner
                    .stats
                    .aborts
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let _ = mp.abort().await;
            });
        }
    }
}

struct Job {
    inner: Arc<Inner>,
    /// Bytes not chunked yet.
    buf: Vec<u8>,
    /// Leading bytes of `buf` already fed to `hasher`.
    hashed: usize,
    hasher: blake3::Hasher,
    /// The blob's digest when it is one chunk hashed as a whole.
    whole: Option<[u8; 32]>,
    /// The blob's chunks so far.
    list: Vec<ChunkMeta>,
    /// Chunks this writer stores (dedup within the blob).
    mine: HashSet<[u8; 32]>,
    /// Chunks the index had, so not stored again (checked at commit).
    relied: HashSet<[u8; 32]>,
    /// New chunks not in a part yet.
    staged: Vec<NewChunk>,
    staged_bytes: usize,
    upload: Option<Upload>,
}

fn encode_chunk(data: &[u8], digest: [u8; 32], level: Level) -> Result<NewChunk, Error> {
    let z = encode(data, level).map_err(|e| Error::Storage(Box::new(e)))?;
    let raw_len =
        u32::try_from(data.len()).map_err(|_| Error::InvalidArgument("chunk too large".into()))?;
    Ok(match z {
        Some(z) => NewChunk {
            digest,
            raw_len,
            compressed: true,
            data: Bytes::from(z),
        },
        None => NewChunk {
            digest,
            raw_len,
            compressed: false,
            data: Bytes::copy_from_slice(data),
        },
    })
}

/// `f` over `items`, on up to two threads (the blob's hash, if any, on a third).
fn par_map<T: Sync, R: Send>(items: &[T], f: impl Fn(&T) -> R + Sync) -> Vec<R> {
    if items.len() < 2 {
        return items.iter().map(&f).collect();
    }
    let (a, b) = items.split_at(items.len() / 2);
    std::thread::scope(|s| {
        let second = s.spawn(|| b.iter().map(&f).collect::<Vec<_>>());
        let mut out: Vec<R> = a.iter().map(&f).collect();
        match second.join() {
            Ok(rest) => out.extend(rest),
            Err(p) => std::panic::resume_unwind(p),
        }
        out
    })
}

/// Runs `f` on a blocking thread, or right here when `inline`.
async fn blocking<T: Send + 'static>(
    inline: bool,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, Error> {
    if inline {
        return Ok(f());
    }
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::Storage(format!("blob writer task: {e}").into()))
}

/// Chunks every complete chunk of the buffer (all of it when `last`); a large
/// blob's new chunks are staged for its pack, uploaded by the part.
async fn process(mut job: Box<Job>, last: bool) -> Result<Box<Job>, Error> {
    let small = last && job.list.is_empty();
    let inline = small && job.buf.len() <= INLINE_CLOSE;
    // Hash the chunks (and the blob) off the runtime.
    let (mut job, cuts, digests) = blocking(inline, move || {
        let cuts = chunk_cuts(&job.buf, last);
        let whole = small && cuts.len() == 1 && job.hashed == 0;
        let digests = {
            let job = &mut *job;
            let (buf, hashed, hasher) = (&job.buf, job.hashed, &mut job.hasher);
            std::thread::scope(|s| {
                if !whole && hashed < buf.len() {
                    s.spawn(move || hasher.update(&buf[hashed..]));
                }
                par_map(&cuts, |r| *blake3::hash(&buf[r.clone()]).as_bytes())
            })
        };
        if whole {
            job.whole = digests.first().copied();
        }
        (job, cuts, digests)
    })
    .await?;
    let pos = cuts.last().map_or(0, |r| r.end);
    // A large blob asks the index which chunks it has, once per batch; a small
    // one leaves that to the group committer, which asks for many blobs at once.
    let fresh: Vec<[u8; 32]> = digests
        .iter()
        .filter(|d| !job.mine.contains(*d))
        .copied()
        .collect();
    let known = if small || fresh.is_empty() {
        HashSet::new()
    } else {
        let mut client = job.inner.client().await?;
        index::existing(&mut client, &fresh).await?
    };
    job.relied.extend(known.iter().copied());
    let mut to_encode = Vec::new();
    for (r, d) in cuts.iter().zip(&digests) {
        job.list.push(ChunkMeta {
            digest: B3Digest::from(*d),
            size: r.len() as u64,
        });
        if !known.contains(d) && job.mine.insert(*d) {
            to_encode.push((r.clone(), *d));
        }
    }
    let level = if job.whole.is_some() {
        Level::Whole
    } else {
        Level::Chunk
    };
    let (mut job, encoded) = blocking(inline, move || {
        let encoded = par_map(&to_encode, |(r, d)| {
            encode_chunk(&job.buf[r.clone()], *d, level)
        });
        (job, encoded)
    })
    .await?;
    for c in encoded {
        let c = c?;
        job.staged_bytes += c.data.len();
        job.staged.push(c);
    }
    job.buf.drain(..pos);
    job.hashed = job.buf.len();
    if job.staged_bytes >= PART {
        flush_part(&mut job).await?;
    }
    Ok(job)
}

/// Uploads the staged chunks as the next part of the blob's pack (starting its
/// multipart upload first if needed); waits while too many parts are in flight.
async fn flush_part(job: &mut Job) -> Result<(), Error> {
    if job.upload.is_none() {
        let name = super::new_pack_name();
        index::reserve_pack(&job.inner.client().await?, &name).await?;
        let mp = job.inner.create_multipart(&name).await?;
        job.upload = Some(Upload {
            inner: job.inner.clone(),
            name,
            mp: Some(mp),
            parts: VecDeque::new(),
            len: 0,
            rows: Vec::new(),
        });
    }
    let Some(up) = job.upload.as_mut() else {
        return Err(Error::Storage("multipart upload vanished".into()));
    };
    let mut pieces = Vec::with_capacity(job.staged.len());
    for c in job.staged.drain(..) {
        let len = c.data.len() as u64;
        up.rows
            .push((c.digest, up.len, len as u32, c.raw_len, c.compressed));
        up.len += len;
        pieces.push(c.data);
    }
    job.staged_bytes = 0;
    let Some(mp) = up.mp.as_mut() else {
        return Err(Error::Storage("multipart upload already finished".into()));
    };
    let payload = PutPayload::from_iter(pieces);
    let stats = &job.inner.stats;
    stats
        .parts
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    stats.put_bytes.fetch_add(
        payload.content_length() as u64,
        std::sync::atomic::Ordering::Relaxed,
    );
    let part = mp.put_part(payload);
    up.parts.push_back(tokio::spawn(part));
    while up.parts.len() > PARTS_IN_FLIGHT {
        wait_part(&job.inner, &up.name, up.parts.pop_front()).await?;
    }
    Ok(())
}

async fn wait_part(
    inner: &Inner,
    name: &str,
    part: Option<JoinHandle<object_store::Result<()>>>,
) -> Result<(), Error> {
    let Some(part) = part else { return Ok(()) };
    match part.await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(inner.s3_error("upload a part of", name, e)),
        Err(e) => Err(Error::Storage(format!("part upload task: {e}").into())),
    }
}

/// Finishes the blob: its last chunks, then its pack (a group commit, or the
/// completion of its multipart upload and its own transaction).
async fn finish(job: Box<Job>) -> Result<B3Digest, Error> {
    let mut job = process(job, true).await?;
    let digest = match job.whole {
        Some(d) => B3Digest::from(d),
        None => B3Digest::from(job.hasher.finalize()),
    };
    if job.list.is_empty() {
        // The empty blob: one empty chunk under its digest.
        job.staged.push(NewChunk {
            digest: *digest.as_bytes(),
            raw_len: 0,
            compressed: false,
            data: Bytes::new(),
        });
    }
    let list = (job.list.len() > 1).then(|| (digest, std::mem::take(&mut job.list)));
    let Some(mut up) = job.upload.take() else {
        let (reply, rx) = oneshot::channel();
        job.inner.clone().hand_off(Handoff {
            chunks: std::mem::take(&mut job.staged),
            list,
            relied: job.relied.iter().copied().collect(),
            reply,
        });
        return match rx.await {
            Ok(Ok(())) => Ok(digest),
            Ok(Err((kind, msg))) => Err(super::rebuild(kind, msg)),
            Err(_) => Err(Error::Storage("the group committer is gone".into())),
        };
    };
    if !job.staged.is_empty() {
        job.upload = Some(up);
        flush_part(&mut job).await?;
        let Some(u) = job.upload.take() else {
            return Err(Error::Storage("multipart upload vanished".into()));
        };
        up = u;
    }
    while let Some(part) = up.parts.pop_front() {
        wait_part(&job.inner, &up.name, Some(part)).await?;
    }
    let Some(mut mp) = up.mp.take() else {
        return Err(Error::Storage("multipart upload already finished".into()));
    };
    job.inner
        .stats
        .completes
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    if let Err(e) = mp.complete().await {
        // Not completed: give the parts back.
        up.mp = Some(mp);
        return Err(job
            .inner
            .s3_error("complete the multipart upload of", &up.name, e));
    }
    let mut client = job.inner.client().await?;
    let lists: Vec<_> = list.into_iter().collect();
    let relied: Vec<[u8; 32]> = job.relied.iter().copied().collect();
    index::commit(
        &mut client,
        Some((&up.name, up.len)),
        &up.rows,
        &lists,
        &relied,
    )
    .await?;
    Ok(digest)
}

enum State {
    Idle(Box<Job>),
    /// A batch is being processed.
    Busy(JoinHandle<Result<Box<Job>, Error>>),
    Closing(BoxFuture<'static, Result<B3Digest, Error>>),
    Done(B3Digest),
    Failed(ErrorKind, String),
}

fn failed(e: Error) -> State {
    let (kind, msg) = super::split(&e);
    State::Failed(kind, msg)
}

/// A failed writer's error, again, for each call that finds it failed.
fn io_error(kind: ErrorKind, msg: &str) -> io::Error {
    super::rebuild(kind, msg.to_owned()).into_io()
}

/// Writes one blob into an [`super::S3BlobService`]. Nothing is visible before
/// [`BlobWriter::close`] returns: then its bytes are in the bucket and its index
/// rows committed. Dropped before that, it leaves nothing visible.
pub struct S3BlobWriter {
    state: State,
    /// Bytes written while a batch is processed (at most [`BATCH`]).
    next: Vec<u8>,
}

impl S3BlobWriter {
    pub(super) fn new(inner: Arc<Inner>) -> Self {
        S3BlobWriter {
            state: State::Idle(Box::new(Job {
                inner,
                buf: Vec::new(),
                hashed: 0,
                hasher: blake3::Hasher::new(),
                whole: None,
                list: Vec::new(),
                mine: HashSet::new(),
                relied: HashSet::new(),
                staged: Vec::new(),
                staged_bytes: 0,
                upload: None,
            })),
            next: Vec::new(),
        }
    }

    fn poll_busy(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            match &mut self.state {
                State::Busy(h) => {
                    let r = ready!(Pin::new(h).poll(cx));
                    self.state = match r {
                        Ok(Ok(mut job)) => {
                            job.buf.extend_from_slice(&self.next);
                            self.next.clear();
                            State::Idle(job)
                        }
                        Ok(Err(e)) => failed(e),
                        Err(e) => {
                            State::Failed(ErrorKind::Internal, format!("blob writer task: {e}"))
                        }
                    };
                }
                State::Failed(k, m) => return Poll::Ready(Err(io_error(*k, m))),
                State::Closing(_) | State::Done(_) => {
                    return Poll::Ready(Err(io::Error::other("blob writer already closed")));
                }
                State::Idle(_) => return Poll::Ready(Ok(())),
            }
        }
    }

    fn poll_close_blob(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<B3Digest>> {
        loop {
            match &mut self.state {
                State::Busy(_) => ready!(self.poll_busy(cx))?,
                State::Idle(_) => {
                    let State::Idle(job) = std::mem::replace(
                        &mut self.state,
                        State::Failed(ErrorKind::Internal, String::new()),
                    ) else {
                        unreachable!("matched Idle above")
                    };
                    self.state = State::Closing(Box::pin(finish(job)));
                }
                State::Closing(f) => {
                    self.state = match ready!(f.as_mut().poll(cx)) {
                        Ok(d) => State::Done(d),
                        Err(e) => failed(e),
                    };
                }
                State::Done(d) => return Poll::Ready(Ok(*d)),
                State::Failed(k, m) => return Poll::Ready(Err(io_error(*k, m))),
            }
        }
    }
}

impl AsyncWrite for S3BlobWriter {
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
                    Poll::Pending if this.next.len() < BATCH => {
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
                State::Failed(ErrorKind::Internal, String::new()),
            ) else {
                unreachable!("matched Idle above")
            };
            this.state = State::Busy(tokio::spawn(process(job, false)));
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.state {
            State::Busy(_) | State::Idle(_) => self.poll_busy(cx),
            _ => Poll::Ready(Ok(())),
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.poll_close_blob(cx).map_ok(|_| ())
    }
}

#[async_trait]
impl BlobWriter for S3BlobWriter {
    async fn close(&mut self) -> Result<B3Digest, Error> {
        if matches!(self.state, State::Done(_)) {
            return Err(Error::InvalidArgument("blob writer already closed".into()));
        }
        if let State::Failed(kind, msg) = &self.state {
            return Err(super::rebuild(*kind, msg.clone()));
        }
        std::future::poll_fn(|cx| self.poll_close_blob(cx))
            .await
            .map_err(|e| match &self.state {
                State::Failed(kind, msg) => super::rebuild(*kind, msg.clone()),
                _ => Error::Io(e),
            })
    }
}
