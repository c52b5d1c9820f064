//! Reading blobs from packs: every chunk checked against its digest before a byte
//! of it is handed out, adjacent chunks of one pack fetched with one ranged GET,
//! and a few such GETs in flight ahead of the reader.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures::stream::{self, BoxStream};
use futures::{FutureExt, StreamExt, TryStreamExt};
use tokio::io::{AsyncRead, AsyncSeek, ReadBuf};

use super::Inner;
use super::index::Loc;
use crate::blobservice::ChunkMeta;
use crate::{B3Digest, Error};

/// Chunks whose locations one index query fetches (about 64 MiB of blob).
const LOC_WINDOW: usize = 1024;
/// Largest ranged GET: chunks are coalesced up to this many stored bytes (and
/// runs of chunks read from the disk cache up to this many bytes): with
/// [`PREFETCH`] of them in flight, what one reader holds.
const MAX_GET: u64 = 4 << 20;
/// Fetched bytes checked on the reading task rather than a blocking thread.
const INLINE_CHECK: u64 = 64 << 10;
/// Bytes of a pack read around a small file that is not cached
/// ([`read_ahead`]).
const READ_AHEAD: u64 = 1 << 20;
/// Blobs of one chunk up to this size are read with their neighbours.
const READ_AHEAD_FILE: u64 = 64 << 10;
/// Ranged GETs in flight ahead of the reader.
const PREFETCH: usize = 4;
/// Chunks of the first GET after opening or seeking; each next GET may take four
/// times as many (up to [`MAX_GET`]): a ranged read of a few bytes fetches one
/// chunk, a sequential read soon fetches megabytes per request.
const FIRST_GET_CHUNKS: usize = 2;

/// A blob as the index describes it: its chunks in order (one, the blob itself,
/// for a blob stored as one chunk) and where each starts.
pub(super) struct Plan {
    pub digest: B3Digest,
    pub chunks: Vec<ChunkMeta>,
    /// Offset of each chunk in the blob, and the blob's size at the end.
    starts: Vec<u64>,
    /// The location of the one chunk of a blob stored as one, known already.
    single: Option<Loc>,
}

impl Plan {
    pub fn new(digest: B3Digest, chunks: Vec<ChunkMeta>, single: Option<Loc>) -> Self {
        let mut starts = Vec::with_capacity(chunks.len() + 1);
        let mut at = 0;
        starts.push(0);
        for c in &chunks {
            at += c.size;
            starts.push(at);
        }
        Plan {
            digest,
            chunks,
            starts,
            single,
        }
    }

    pub fn size(&self) -> u64 {
        self.starts.last().copied().unwrap_or(0)
    }

    /// The chunk holding byte `pos` (`chunks.len()` at or past the end).
    fn chunk_at(&self, pos: u64) -> usize {
        if pos >= self.size() {
            return self.chunks.len();
        }
        // starts[0] = 0 <= pos: the point is at least 1.
        self.starts.partition_point(|s| *s <= pos) - 1
    }
}

/// A read-ahead in flight, awaited by every reader that needs its window.
pub(super) type Flight =
    futures::future::Shared<futures::future::BoxFuture<'static, Result<(), String>>>;

/// What one step of a read fetches.
enum Group {
    /// A chunk found in the cache (checked when it was put there).
    Cached(Bytes),
    /// Chunks in the local disk cache (checked when read from there), read
    /// together on one blocking thread; their bytes.
    Disk(Vec<[u8; 32]>, u64),
    /// A small file's one chunk, read with its neighbours in the pack.
    ReadAhead([u8; 32], Loc),
    /// Chunks lying back to back in one pack: one ranged GET.
    Range {
        pack: Arc<str>,
        start: u64,
        end: u64,
        chunks: Vec<([u8; 32], Loc)>,
    },
}

fn corrupt(msg: String) -> io::Error {
    Error::Corrupt(msg).into_io()
}

/// The blob's bytes from the start of chunk `first` on, chunk by chunk.
pub(super) fn chunks_from(
    inner: Arc<Inner>,
    plan: Arc<Plan>,
    first: usize,
) -> BoxStream<'static, io::Result<Bytes>> {
    let planner = inner.clone();
    let groups = async_stream::try_stream! {
        let mut per_get = FIRST_GET_CHUNKS;
        let mut i = first;
        while i < plan.chunks.len() {
            let end = (i + LOC_WINDOW).min(plan.chunks.len());
            let window = &plan.chunks[i..end];
            // Cached chunks need no location: a hot blob costs no index query.
            let cached: Vec<Option<Bytes>> =
                window.iter().map(|c| planner.cache_get(c.digest.as_bytes())).collect();
            let on_disk: Vec<bool> = window
                .iter()
                .zip(&cached)
                .map(|(c, hit)| hit.is_none() && planner.disk_has(c.digest.as_bytes()))
                .collect();
            let missing: Vec<[u8; 32]> = window
                .iter()
                .zip(&cached)
                .zip(&on_disk)
                .filter(|((_, hit), disk)| hit.is_none() && !**disk)
                .map(|((c, _), _)| *c.digest.as_bytes())
                .collect();
            let locs = match (&plan.single, missing.is_empty()) {
                (_, true) => Default::default(),
                (Some(loc), false) => [(*plan.digest.as_bytes(), loc.clone())].into(),
                (None, false) => planner.locations(&missing).await.map_err(Error::into_io)?,
            };
            let mut pending: Option<Group> = None;
            for ((c, hit), disk) in window.iter().zip(cached).zip(on_disk) {
                if let Some(b) = hit {
                    if let Some(g) = pending.take() {
                        yield g;
                    }
                    yield Group::Cached(b);
                    continue;
                }
                if disk {
                    if let Some(Group::Disk(run, bytes)) = &mut pending
                        && run.len() < per_get
                        && *bytes + c.size <= MAX_GET
                    {
                        run.push(*c.digest.as_bytes());
                        *bytes += c.size;
                        continue;
                    }
                    if let Some(g) = pending.take() {
                        yield g;
                        per_get = (per_get * 4).min(LOC_WINDOW);
                    }
                    pending = Some(Group::Disk(vec![*c.digest.as_bytes()], c.size));
                    continue;
                }
                let d = *c.digest.as_bytes();
                let loc = locs.get(&d).cloned().ok_or_else(|| {
                    corrupt(format!(
                        "chunk {} of blob {} is listed but not indexed",
                        c.digest, plan.digest
                    ))
                })?;
                if u64::from(loc.raw_len) != c.size {
                    Err(corrupt(format!(
                        "chunk {} of blob {} is listed with {} bytes, indexed with {}",
                        c.digest, plan.digest, c.size, loc.raw_len
                    )))?;
                }
                // Joins the pending GET if it lies right behind it in the same
                // pack. A chunk stored before it (a repeat within the blob, or
                // one an earlier blob stored) joins it too, fetched on its own
                // unless the cache has it by then: the run goes on after it.
                if let Some(Group::Range { pack, start, end, chunks }) = &mut pending {
                    let stored = u64::from(loc.stored_len);
                    if *pack == loc.pack && chunks.len() < per_get {
                        if *end == loc.offset && *end + stored - *start <= MAX_GET {
                            *end += stored;
                            chunks.push((d, loc));
                            continue;
                        }
                        if loc.offset + stored <= *end {
                            chunks.push((d, loc));
                            continue;
                        }
                    }
                }
                if plan.single.is_some() && c.size <= READ_AHEAD_FILE {
                    yield Group::ReadAhead(d, loc);
                    continue;
                }
                if let Some(g) = pending.take() {
                    yield g;
                    per_get = (per_get * 4).min(LOC_WINDOW);
                }
                pending = Some(Group::Range {
                    pack: loc.pack.clone(),
                    start: loc.offset,
                    end: loc.offset + u64::from(loc.stored_len),
                    chunks: vec![(d, loc)],
                });
            }
            if let Some(g) = pending.take() {
                yield g;
                per_get = (per_get * 4).min(LOC_WINDOW);
            }
            i = end;
        }
    };
    groups
        .map(move |g: io::Result<Group>| {
            let inner = inner.clone();
            async move {
                match g? {
                    Group::Cached(b) => Ok(vec![b]),
                    Group::Disk(run, _) => from_disk(&inner, run).await,
                    Group::ReadAhead(d, loc) => read_ahead(&inner, d, loc).await,
                    Group::Range {
                        pack,
                        start,
                        end,
                        chunks,
                    } => fetch(&inner, &pack, start, end, chunks).await,
                }
            }
        })
        .buffered(PREFETCH)
        .map_ok(|pieces| stream::iter(pieces.into_iter().map(Ok)))
        .try_flatten()
        .boxed()
}

/// The chunks of a run from the local disk cache; any it lost or found damaged
/// since the run was planned, from S3.
async fn from_disk(inner: &Arc<Inner>, run: Vec<[u8; 32]>) -> io::Result<Vec<Bytes>> {
    let got = inner.disk_get_many(&run).await;
    let lost: Vec<[u8; 32]> = run
        .iter()
        .zip(&got)
        .filter(|(_, g)| g.is_none())
        .map(|(d, _)| *d)
        .collect();
    let mut refetched = std::collections::HashMap::new();
    if !lost.is_empty() {
        let locs = inner.locations(&lost).await.map_err(Error::into_io)?;
        for d in lost {
            let loc = locs.get(&d).cloned().ok_or_else(|| {
                corrupt(format!(
                    "chunk {} is listed but not indexed",
                    B3Digest::from(d)
                ))
            })?;
            let b = fetch_one(inner, d, loc).await?;
            if let Some(b) = b.into_iter().next() {
                refetched.insert(d, b);
            }
        }
    }
    run.iter()
        .zip(got)
        .map(|(d, g)| {
            g.or_else(|| refetched.get(d).cloned())
                .ok_or_else(|| corrupt(format!("chunk {} could not be read", B3Digest::from(*d))))
        })
        .collect()
}

/// A small file's chunk, not cached: the part of its pack around it
/// ([`READ_AHEAD`] bytes, aligned) is fetched, checked and cached whole, once
/// however many readers want it at the same time. A group commit writes the
/// files of an import back to back, so a NAR of many small files then costs a
/// ranged GET and an index query per window instead of per file (1.5 MB/s cold
/// before). A window that fails (a damaged neighbour, say) costs nothing but the
/// try: the file's own chunk is then fetched alone.
async fn read_ahead(inner: &Arc<Inner>, d: [u8; 32], loc: Loc) -> io::Result<Vec<Bytes>> {
    let window = (loc.pack.clone(), loc.offset / READ_AHEAD * READ_AHEAD);
    let fill = {
        let mut flights = inner
            .read_aheads
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        flights
            .entry(window.clone())
            .or_insert_with(|| {
                let weak = Arc::downgrade(inner);
                async move {
                    let Some(inner) = weak.upgrade() else {
                        return Err("the service is gone".to_owned());
                    };
                    let done = fill_window(&inner, &window.0, window.1).await;
                    inner
                        .read_aheads
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .remove(&window);
                    done.map_err(|e| e.to_string())
                }
                .boxed()
                .shared()
            })
            .clone()
    };
    if let Err(e) = fill.await {
        tracing::debug!(error = %e, pack = %loc.pack, "read-ahead failed; reading the chunk alone");
    }
    if let Some(b) = inner.cache_get(&d) {
        return Ok(vec![b]);
    }
    fetch_one(inner, d, loc).await
}

/// One chunk fetched alone, with a GET of its own stored bytes.
async fn fetch_one(inner: &Arc<Inner>, d: [u8; 32], loc: Loc) -> io::Result<Vec<Bytes>> {
    let (pack, start) = (loc.pack.clone(), loc.offset);
    let end = start + u64::from(loc.stored_len);
    fetch(inner, &pack, start, end, vec![(d, loc)]).await
}

/// Fetches, checks and caches the chunks the index places in `pack` at
/// `start..start + READ_AHEAD`.
async fn fill_window(inner: &Arc<Inner>, pack: &str, start: u64) -> io::Result<()> {
    let chunks = {
        let client = inner.client().await.map_err(Error::into_io)?;
        super::index::neighbours(&client, pack, start, start + READ_AHEAD)
            .await
            .map_err(Error::into_io)?
    };
    let (Some(first), Some(end)) = (
        chunks.first().map(|(_, l)| l.offset),
        chunks
            .iter()
            .map(|(_, l)| l.offset + u64::from(l.stored_len))
            .max(),
    ) else {
        return Ok(());
    };
    fetch(inner, pack, first, end, chunks).await.map(|_| ())
}

/// GETs `start..end` of `pack` and returns its chunks, each decoded and checked;
/// a chunk outside that range comes from the cache or a GET of its own.
async fn fetch(
    inner: &Arc<Inner>,
    pack: &str,
    start: u64,
    end: u64,
    chunks: Vec<([u8; 32], Loc)>,
) -> io::Result<Vec<Bytes>> {
    let inside = |l: &Loc| l.offset >= start && l.offset + u64::from(l.stored_len) <= end;
    let data = if end > start && chunks.iter().any(|(_, l)| inside(l)) {
        inner
            .get_range(pack, start..end)
            .await
            .map_err(Error::into_io)?
    } else {
        Bytes::new()
    };
    if !data.is_empty() && data.len() as u64 != end - start {
        return Err(corrupt(format!(
            "pack {pack}: asked for bytes {start}..{end}, got {}",
            data.len()
        )));
    }
    // The chunks outside the range: from the cache (checked when put there), else
    // their stored bytes fetched one by one.
    let mut outside: Vec<Option<Bytes>> = Vec::with_capacity(chunks.len());
    let mut checked: Vec<Option<Bytes>> = Vec::with_capacity(chunks.len());
    for (d, l) in &chunks {
        if inside(l) {
            outside.push(None);
            checked.push(None);
        } else if let Some(hit) = inner.cache_get(d) {
            outside.push(None);
            checked.push(Some(hit));
        } else {
            let end = l.offset + u64::from(l.stored_len);
            let b = if end > l.offset {
                inner
                    .get_range(pack, l.offset..end)
                    .await
                    .map_err(Error::into_io)?
            } else {
                Bytes::new()
            };
            if b.len() != l.stored_len as usize {
                return Err(corrupt(format!(
                    "pack {pack}: asked for bytes {}..{end}, got {}",
                    l.offset,
                    b.len()
                )));
            }
            outside.push(Some(b));
            checked.push(None);
        }
    }
    let checker = inner.clone();
    let pack = pack.to_owned();
    let work = move || {
        let inner = checker;
        let mut out = Vec::with_capacity(chunks.len());
        for (((d, loc), own), hit) in chunks.into_iter().zip(outside).zip(checked) {
            if let Some(hit) = hit {
                out.push((d, hit));
                continue;
            }
            let stored = match own {
                Some(b) => b,
                // A copy, not a slice, of a chunk stored raw: a slice would keep
                // the whole GET buffer (a megabyte of a read-ahead window) alive
                // for as long as the memory cache keeps this chunk, which
                // counts only its own bytes.
                None if !loc.compressed && data.len() > loc.stored_len as usize => {
                    let at = (loc.offset - start) as usize;
                    Bytes::copy_from_slice(&data[at..at + loc.stored_len as usize])
                }
                None => {
                    let at = (loc.offset - start) as usize;
                    data.slice(at..at + loc.stored_len as usize)
                }
            };
            let raw = if loc.compressed {
                let mut raw = vec![0u8; loc.raw_len as usize];
                let n = crate::embedded::decode_into(&stored, &mut raw).map_err(|e| {
                    corrupt(format!(
                        "chunk {} in pack {pack} does not decompress: {e}",
                        B3Digest::from(d)
                    ))
                })?;
                if n != raw.len() {
                    return Err(corrupt(format!(
                        "chunk {} in pack {pack} decompresses to {n} bytes, not {}",
                        B3Digest::from(d),
                        raw.len()
                    )));
                }
                Bytes::from(raw)
            } else {
                stored
            };
            if blake3::hash(&raw).as_bytes() != &d {
                return Err(corrupt(format!(
                    "chunk {} in pack {pack} (bytes {}..{}) does not hash to its digest",
                    B3Digest::from(d),
                    loc.offset,
                    loc.offset + u64::from(loc.stored_len)
                )));
            }
            inner.cache_put(d, raw.clone());
            out.push((d, raw));
        }
        Ok::<_, io::Error>(out)
    };
    // A few KiB (a small file's chunk) are decoded and hashed in microseconds:
    // here, not on a blocking thread. Handing each to one made a cold read of
    // many small files start hundreds of threads.
    let checked = if end - start <= INLINE_CHECK {
        work()?
    } else {
        tokio::task::spawn_blocking(work)
            .await
            .map_err(|e| io::Error::other(format!("chunk check task: {e}")))??
    };
    let pieces = checked.iter().map(|(_, raw)| raw.clone()).collect();
    inner.disk_put(checked);
    Ok(pieces)
}

/// The blob's bytes from `offset` on.
pub(super) fn stream_from(
    inner: Arc<Inner>,
    plan: Arc<Plan>,
    offset: u64,
) -> BoxStream<'static, io::Result<Bytes>> {
    let first = plan.chunk_at(offset);
    let mut skip = offset.saturating_sub(plan.starts[first]) as usize;
    chunks_from(inner, plan, first)
        .try_filter_map(move |b: Bytes| {
            let piece = if skip >= b.len() {
                skip -= b.len();
                None
            } else {
                let p = b.slice(skip..);
                skip = 0;
                Some(p)
            };
            futures::future::ready(Ok(piece))
        })
        .boxed()
}

/// A reader of one blob of an [`super::S3BlobService`]: seeks without fetching
/// what it skips; reads ahead while read sequentially.
pub struct S3BlobReader {
    inner: Arc<Inner>,
    plan: Arc<Plan>,
    pos: u64,
    /// The bytes from `pos` on, once a read asked for them.
    stream: Option<BoxStream<'static, io::Result<Bytes>>>,
    /// Checked bytes at `pos` not handed out yet.
    cur: Bytes,
    /// Once failed, every later read fails the same way.
    failed: Option<(io::ErrorKind, String)>,
}

impl S3BlobReader {
    pub(super) fn new(inner: Arc<Inner>, plan: Arc<Plan>) -> Self {
        S3BlobReader {
            inner,
            plan,
            pos: 0,
            stream: None,
            cur: Bytes::new(),
            failed: None,
        }
    }
}

impl AsyncRead for S3BlobReader {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        loop {
            if let Some((kind, msg)) = &this.failed {
                return Poll::Ready(Err(io::Error::new(*kind, msg.clone())));
            }
            if !this.cur.is_empty() {
                let n = this.cur.len().min(buf.remaining());
                buf.put_slice(&this.cur.split_to(n));
                this.pos += n as u64;
                return Poll::Ready(Ok(()));
            }
            if this.pos >= this.plan.size() || buf.remaining() == 0 {
                return Poll::Ready(Ok(()));
            }
            let stream = this.stream.get_or_insert_with(|| {
                stream_from(this.inner.clone(), this.plan.clone(), this.pos)
            });
            match futures::ready!(stream.poll_next_unpin(cx)) {
                Some(Ok(b)) => this.cur = b,
                Some(Err(e)) => this.failed = Some((e.kind(), e.to_string())),
                None => {
                    this.failed = Some((
                        io::ErrorKind::InvalidData,
                        format!(
                            "blob {} ended at byte {} of {}",
                            this.plan.digest,
                            this.pos,
                            this.plan.size()
                        ),
                    ))
                }
            }
        }
    }
}

impl AsyncSeek for S3BlobReader {
    fn start_seek(mut self: Pin<&mut Self>, position: io::SeekFrom) -> io::Result<()> {
        let size = self.plan.size();
        let target = match position {
            io::SeekFrom::Start(p) => Some(p),
            io::SeekFrom::End(d) => size.checked_add_signed(d),
            io::SeekFrom::Current(d) => self.pos.checked_add_signed(d),
        };
        let target = target.ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                "seek before the start of the blob",
            )
        })?;
        if target != self.pos {
            let ahead = target - self.pos.min(target);
            if target > self.pos && (ahead as usize) < self.cur.len() {
                // Within the bytes at hand: no new stream.
                let _ = self.cur.split_to(ahead as usize);
            } else {
                self.cur = Bytes::new();
                self.stream = None;
            }
            self.pos = target;
        }
        Ok(())
    }

    fn poll_complete(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<u64>> {
        Poll::Ready(Ok(self.pos))
    }
}
