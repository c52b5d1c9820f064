//! Checking the bytes of one gRPC `Read` stream before they are handed out.
//!
//! A remote server is not trusted: bytes reach the caller only once they are known
//! to hash to what was asked for. A stream of at most [`HOLD`] bytes (most blobs: a
//! package is mostly small files) is held whole and checked against the digest
//! asked for. A longer stream of a whole blob pauses at [`HOLD`] bytes and fetches
//! the blob's chunk list; from then on every chunk is held until it hashes to its
//! listed digest, and the whole stream is still hashed so that the end checks the
//! list itself against the blob's digest. A long blob the server keeps in one piece
//! (no chunk list, or chunks too large to hold) cannot be checked in parts without
//! a verified-streaming encoding (bao): it is spooled to an unlinked temporary file
//! (in `$TMPDIR`) and handed out from there once its end was checked, so memory
//! stays bounded and nothing unchecked is ever handed out.

use std::collections::VecDeque;
use std::io;
use std::task::{Context, Poll, ready};

use bytes::{Bytes, BytesMut};
use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt};
use tokio::io::{AsyncRead, AsyncSeek, AsyncWrite, ReadBuf};

use super::ChunkMeta;
use crate::{B3Digest, Error, proto};

/// Bytes held before anything is handed out. Also bounds a chunk held for its check.
pub(super) const HOLD: u64 = 1 << 20;
/// A listed chunk larger than this is not held whole (bounded memory): a blob
/// listing one is spooled and handed out only after its end was checked.
const MAX_HELD_CHUNK: u64 = 16 << 20;
/// Size of one read from the spool file.
const SPOOL_READ: usize = 256 << 10;

pub(super) type StatFuture = BoxFuture<'static, Result<Option<Vec<ChunkMeta>>, Error>>;

fn corrupt(msg: String) -> io::Error {
    Error::Corrupt(msg).into_io()
}

fn spool_error(digest: &B3Digest, e: io::Error) -> io::Error {
    io::Error::new(
        e.kind(),
        format!(
            "blob {digest}: cannot spool it to a temporary file for its check \
             (set TMPDIR to a writable directory with room for it): {e}"
        ),
    )
}

enum Mode {
    /// Holding everything received, up to the limit.
    Hold { held: Vec<Bytes>, len: u64 },
    /// Waiting for the chunk list; the stream is not polled meanwhile, so the
    /// server's flow control bounds what waits in the transport.
    Listing { held: Vec<Bytes>, fut: StatFuture },
    /// Holding one chunk at a time until it hashes to its listed digest.
    Chunks {
        list: Vec<ChunkMeta>,
        idx: usize,
        hasher: Box<blake3::Hasher>,
        cur: Vec<Bytes>,
        cur_len: u64,
    },
    /// Writing everything received to a temporary file until the end is checked.
    Spool {
        file: tokio::fs::File,
        /// Received, not yet accepted by the file; the stream is not polled while
        /// any is left, so the file's speed bounds what waits in memory.
        unwritten: VecDeque<Bytes>,
        written: u64,
    },
    /// The end was checked: handing out the spooled bytes.
    Replay {
        file: tokio::fs::File,
        phase: Replay,
        /// Spooled bytes not handed out yet.
        left: u64,
    },
    /// Everything received was checked and moved to `ready`.
    Drained,
}

/// Where a replay of the spool file is.
#[derive(Clone, Copy)]
enum Replay {
    /// Waiting for the file's writes to complete.
    Flush,
    /// Waiting for the seek back to its start.
    Rewind,
    Read,
}

/// One `Read` stream of `digest` (a whole blob or one chunk), yielding only bytes
/// checked as the module doc describes; the end is an error if the stream does not
/// hash to `digest` or has the wrong size.
pub(super) struct Verified {
    stream: tonic::Streaming<proto::BlobChunk>,
    digest: B3Digest,
    /// Known for a chunk (from the chunk list), unknown for a whole blob.
    size: Option<u64>,
    hasher: Box<blake3::Hasher>,
    received: u64,
    mode: Mode,
    /// How to fetch the chunk list of a long stream; `None`: do not.
    lister: Option<Box<dyn FnOnce() -> StatFuture + Send>>,
    ready: VecDeque<Bytes>,
    /// The chunk list, once fetched (a reader seeking later can use it).
    listed: Option<Vec<ChunkMeta>>,
    done: bool,
    /// Once failed, every later poll fails the same way (after handing out what was
    /// checked before the failure): never a clean end after an error.
    failed: Option<(io::ErrorKind, String)>,
}

impl Verified {
    /// Checks `stream` against `digest` and `size`. `lister`, if given, fetches the
    /// chunk list of `digest` when the stream is longer than [`HOLD`].
    pub(super) fn new(
        stream: tonic::Streaming<proto::BlobChunk>,
        digest: B3Digest,
        size: Option<u64>,
        lister: Option<Box<dyn FnOnce() -> StatFuture + Send>>,
    ) -> Self {
        Self {
            stream,
            digest,
            size,
            hasher: Box::default(),
            received: 0,
            mode: Mode::Hold {
                held: Vec::new(),
                len: 0,
            },
            lister,
            ready: VecDeque::new(),
            listed: None,
            done: false,
            failed: None,
        }
    }

    /// Bytes received so far (the stream's length once it ended).
    pub(super) fn received(&self) -> u64 {
        self.received
    }

    /// The chunk list fetched while reading, if any (empty: stored as one piece).
    pub(super) fn take_listed(&mut self) -> Option<Vec<ChunkMeta>> {
        self.listed.take()
    }

    /// The next checked piece; `None` at the (checked) end.
    pub(super) fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Option<io::Result<Bytes>>> {
        loop {
            if let Some(b) = self.ready.pop_front() {
                return Poll::Ready(Some(Ok(b)));
            }
            if let Some((kind, msg)) = &self.failed {
                return Poll::Ready(Some(Err(io::Error::new(*kind, msg.clone()))));
            }
            if self.done {
                return Poll::Ready(None);
            }
            if let Err(e) = ready!(self.step(cx)) {
                self.failed = Some((e.kind(), e.to_string()));
            }
        }
    }

    /// Takes the next piece from the server (or the chunk list, or the end).
    fn step(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if let Mode::Listing { fut, .. } = &mut self.mode {
            let list = ready!(fut.poll_unpin(cx)).map_err(Error::into_io)?;
            let list = list.ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::NotFound,
                    format!("blob {} vanished from the server while read", self.digest),
                )
            })?;
            return Poll::Ready(self.install(list));
        }
        if let Mode::Spool {
            file,
            unwritten,
            written,
        } = &mut self.mode
        {
            while let Some(front) = unwritten.front_mut() {
                let n = ready!(std::pin::Pin::new(&mut *file).poll_write(cx, front))
                    .map_err(|e| spool_error(&self.digest, e))?;
                if n == 0 {
                    return Poll::Ready(Err(spool_error(
                        &self.digest,
                        io::ErrorKind::WriteZero.into(),
                    )));
                }
                *written += n as u64;
                let _ = front.split_to(n);
                if front.is_empty() {
                    unwritten.pop_front();
                }
            }
        }
        if let Mode::Replay { .. } = self.mode {
            return self.replay(cx);
        }
        Poll::Ready(match ready!(self.stream.poll_next_unpin(cx)) {
            Some(Ok(piece)) => {
                let data = piece.data;
                self.hasher.update(&data);
                self.received += data.len() as u64;
                match self.size.filter(|s| self.received > *s) {
                    Some(size) => Err(corrupt(format!(
                        "server sent more than the {size} bytes of {}",
                        self.digest
                    ))),
                    None => self.accept(data),
                }
            }
            Some(Err(status)) => Err(Error::Remote(status).into_io()),
            None => self.finish(),
        })
    }

    /// Takes a piece received from the server.
    fn accept(&mut self, mut data: Bytes) -> io::Result<()> {
        match &mut self.mode {
            Mode::Hold { held, len } => {
                *len += data.len() as u64;
                held.push(data);
                let limit = self.size.map_or(HOLD, |s| s.clamp(HOLD, MAX_HELD_CHUNK));
                if *len > limit {
                    let held = std::mem::take(held);
                    match self.lister.take() {
                        Some(lister) => {
                            self.mode = Mode::Listing {
                                held,
                                fut: lister(),
                            }
                        }
                        None => self.spool(held)?,
                    }
                }
            }
            Mode::Listing { .. } => {
                return Err(io::Error::other("blob stream polled while listing chunks"));
            }
            Mode::Chunks {
                list,
                idx,
                hasher,
                cur,
                cur_len,
            } => {
                while !data.is_empty() {
                    let Some(chunk) = list.get(*idx) else {
                        return Err(corrupt(format!(
                            "blob {}: server sent more bytes than its chunk list holds",
                            self.digest
                        )));
                    };
                    let take = (chunk.size - *cur_len).min(data.len() as u64) as usize;
                    let part = data.split_to(take);
                    hasher.update(&part);
                    *cur_len += take as u64;
                    cur.push(part);
                    if *cur_len == chunk.size {
                        let got = B3Digest::from(hasher.finalize());
                        if got != chunk.digest {
                            return Err(corrupt(format!(
                                "blob {}: chunk {} (bytes {}..) hashes to {got}",
                                self.digest,
                                chunk.digest,
                                self.received - data.len() as u64 - *cur_len
                            )));
                        }
                        self.ready.extend(cur.drain(..));
                        hasher.reset();
                        *cur_len = 0;
                        *idx += 1;
                    }
                }
            }
            Mode::Spool { unwritten, .. } => unwritten.push_back(data),
            Mode::Replay { .. } | Mode::Drained => {
                return Err(io::Error::other("blob stream polled after its end"));
            }
        }
        Ok(())
    }

    /// Switches to spooling, starting with what was held.
    fn spool(&mut self, held: Vec<Bytes>) -> io::Result<()> {
        let file = tempfile::tempfile().map_err(|e| spool_error(&self.digest, e))?;
        self.mode = Mode::Spool {
            file: tokio::fs::File::from_std(file),
            unwritten: held.into(),
            written: 0,
        };
        Ok(())
    }

    /// Hands out the spooled bytes of a checked stream.
    fn replay(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let Mode::Replay { file, phase, left } = &mut self.mode else {
            return Poll::Ready(Err(io::Error::other("replay outside of replay mode")));
        };
        let digest = self.digest;
        let mut file = std::pin::Pin::new(file);
        loop {
            match phase {
                Replay::Flush => {
                    ready!(file.as_mut().poll_flush(cx)).map_err(|e| spool_error(&digest, e))?;
                    file.as_mut()
                        .start_seek(io::SeekFrom::Start(0))
                        .map_err(|e| spool_error(&digest, e))?;
                    *phase = Replay::Rewind;
                }
                Replay::Rewind => {
                    ready!(file.as_mut().poll_complete(cx)).map_err(|e| spool_error(&digest, e))?;
                    *phase = Replay::Read;
                }
                Replay::Read if *left == 0 => {
                    self.mode = Mode::Drained;
                    self.done = true;
                    return Poll::Ready(Ok(()));
                }
                Replay::Read => {
                    let want = (*left).min(SPOOL_READ as u64) as usize;
                    let mut buf = BytesMut::zeroed(want);
                    let mut rb = ReadBuf::new(&mut buf);
                    ready!(file.as_mut().poll_read(cx, &mut rb))
                        .map_err(|e| spool_error(&digest, e))?;
                    let n = rb.filled().len();
                    if n == 0 {
                        return Poll::Ready(Err(spool_error(
                            &digest,
                            io::ErrorKind::UnexpectedEof.into(),
                        )));
                    }
                    buf.truncate(n);
                    *left -= n as u64;
                    self.ready.push_back(buf.freeze());
                    return Poll::Ready(Ok(()));
                }
            }
        }
    }

    /// Switches from `Listing` to checking chunks (or spooling, for a blob in one
    /// piece), and feeds it what was held.
    fn install(&mut self, list: Vec<ChunkMeta>) -> io::Result<()> {
        let held = match std::mem::replace(&mut self.mode, Mode::Drained) {
            Mode::Listing { held, .. } => held,
            _ => return Err(io::Error::other("chunk list installed twice")),
        };
        self.listed = Some(list.clone());
        let checkable =
            !list.is_empty() && list.iter().all(|c| c.size > 0 && c.size <= MAX_HELD_CHUNK);
        if !checkable {
            return self.spool(held);
        }
        self.mode = Mode::Chunks {
            list,
            idx: 0,
            hasher: Box::default(),
            cur: Vec::new(),
            cur_len: 0,
        };
        for piece in held {
            self.accept(piece)?;
        }
        Ok(())
    }

    /// The stream ended: checks the whole and releases what is still held (or starts
    /// handing out the spool).
    fn finish(&mut self) -> io::Result<()> {
        let got = B3Digest::from(self.hasher.finalize());
        if got != self.digest {
            return Err(corrupt(format!(
                "server sent data hashing to {got} for {}",
                self.digest
            )));
        }
        if let Some(size) = self.size.filter(|s| *s != self.received) {
            return Err(corrupt(format!(
                "{} is {size} bytes, but the server sent {}",
                self.digest, self.received
            )));
        }
        match std::mem::replace(&mut self.mode, Mode::Drained) {
            Mode::Hold { held, .. } => self.ready.extend(held),
            Mode::Chunks { list, idx, .. } if idx != list.len() => {
                return Err(corrupt(format!(
                    "blob {}: the stream ended in chunk {idx} of {}",
                    self.digest,
                    list.len()
                )));
            }
            // `step` polls the stream only once everything received was handed to
            // the file, so the end finds nothing unwritten.
            Mode::Spool {
                file,
                unwritten,
                written,
            } if unwritten.is_empty() => {
                self.mode = Mode::Replay {
                    file,
                    phase: Replay::Flush,
                    left: written,
                };
                return Ok(());
            }
            Mode::Spool { .. } => {
                return Err(io::Error::other(
                    "blob stream ended with bytes not yet spooled",
                ));
            }
            _ => {}
        }
        self.done = true;
        Ok(())
    }
}
