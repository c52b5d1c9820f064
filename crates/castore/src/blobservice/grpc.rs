//! [`GrpcBlobService`]: a client of a `tvix.castore.v1.BlobService` server.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use async_trait::async_trait;
use bytes::{Buf, Bytes};
use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt};
use tokio::io::{AsyncRead, AsyncSeek, AsyncWrite, ReadBuf};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::PollSender;
use tonic::transport::Channel;

use super::{BlobReader, BlobService, BlobWriter, ChunkMeta};
use crate::proto::blob_service_client::BlobServiceClient;
use crate::upload::{Upload, upload};
use crate::{B3Digest, Error, proto};

/// Largest piece of blob data put in one gRPC message.
const MAX_PIECE: usize = 1 << 20;

/// Talks to a remote BlobService. Blobs stream both ways in pieces; nothing holds a
/// whole blob in memory.
#[derive(Clone)]
pub struct GrpcBlobService {
    client: BlobServiceClient<Channel>,
    channel: Channel,
}

impl GrpcBlobService {
    /// A client on `channel`.
    pub fn new(channel: Channel) -> Self {
        Self {
            client: BlobServiceClient::new(channel.clone())
                .max_decoding_message_size(crate::channel::MAX_DECODING_MESSAGE_SIZE),
            channel,
        }
    }

    /// Stat with the chunk list; `None` if absent.
    async fn stat(
        &self,
        digest: &B3Digest,
        send_chunks: bool,
    ) -> Result<Option<Vec<ChunkMeta>>, Error> {
        let request = proto::StatBlobRequest {
            digest: digest.to_bytes(),
            send_chunks,
            send_bao: false,
        };
        match self.client.clone().stat(request).await {
            Ok(response) => response
                .into_inner()
                .chunks
                .into_iter()
                .map(|c| {
                    let digest = B3Digest::try_from(&c.digest).map_err(|e| {
                        Error::Corrupt(format!("server sent a malformed chunk digest: {e}"))
                    })?;
                    Ok(ChunkMeta {
                        digest,
                        size: c.size,
                    })
                })
                .collect::<Result<Vec<_>, Error>>()
                .map(Some),
            Err(status) if status.code() == tonic::Code::NotFound => Ok(None),
            Err(status) => Err(Error::Remote(status)),
        }
    }
}

#[async_trait]
impl BlobService for GrpcBlobService {
    async fn has(&self, digest: &B3Digest) -> Result<bool, Error> {
        Ok(self.stat(digest, false).await?.is_some())
    }

    async fn open_read(&self, digest: &B3Digest) -> Result<Option<Box<dyn BlobReader>>, Error> {
        let Some(chunks) = self.stat(digest, true).await? else {
            return Ok(None);
        };
        Ok(Some(Box::new(GrpcBlobReader::new(
            self.client.clone(),
            *digest,
            chunks,
        ))))
    }

    async fn open_write(&self) -> Box<dyn BlobWriter> {
        Box::new(GrpcBlobWriter::new(self.channel.clone()))
    }

    async fn chunks(&self, digest: &B3Digest) -> Result<Option<Vec<ChunkMeta>>, Error> {
        self.stat(digest, true).await
    }
}

fn corrupt(msg: String) -> io::Error {
    Error::Corrupt(msg).into_io()
}

/// A piece of the blob fetched with one `Read` call: the whole blob, or one chunk.
struct Segment {
    digest: B3Digest,
    start: u64,
    /// Unknown for a blob stored as one piece until it was read to the end.
    size: Option<u64>,
}

type OpenFuture = BoxFuture<'static, Result<tonic::Streaming<proto::BlobChunk>, tonic::Status>>;

// One per open reader: its size does not matter, boxing would cost a pointer chase.
#[allow(clippy::large_enum_variant)]
enum ReadState {
    /// Nothing in flight; the next read opens the segment holding `pos`.
    Idle,
    Opening {
        seg: usize,
        skip: u64,
        fut: OpenFuture,
    },
    Streaming {
        seg: usize,
        /// Bytes still to drop from the start of the segment (after a seek).
        skip: u64,
        stream: tonic::Streaming<proto::BlobChunk>,
        hasher: Box<blake3::Hasher>,
        received: u64,
        buf: Bytes,
    },
    /// Everything read.
    Eof,
}

/// Reads a remote blob, verifying each segment against its digest as it ends (and
/// the whole blob, when read from the start without seeking). Seeking re-opens the
/// chunk holding the new position, so a chunked blob never re-reads from its start;
/// a blob stored as one piece is re-read and the bytes before the position dropped,
/// as they must be hashed to verify it.
struct GrpcBlobReader {
    client: BlobServiceClient<Channel>,
    digest: B3Digest,
    segments: Vec<Segment>,
    total: Option<u64>,
    pos: u64,
    /// Hash of everything handed out, while that is the blob from its start (not
    /// kept when the only segment is the blob itself: its own check is the same).
    whole: Option<blake3::Hasher>,
    state: ReadState,
}

impl GrpcBlobReader {
    fn new(client: BlobServiceClient<Channel>, digest: B3Digest, chunks: Vec<ChunkMeta>) -> Self {
        let (segments, total) = if chunks.is_empty() {
            (
                vec![Segment {
                    digest,
                    start: 0,
                    size: None,
                }],
                None,
            )
        } else {
            let mut start = 0u64;
            let mut segments = Vec::with_capacity(chunks.len());
            for c in chunks {
                segments.push(Segment {
                    digest: c.digest,
                    start,
                    size: Some(c.size),
                });
                start = start.saturating_add(c.size);
            }
            (segments, Some(start))
        };
        let one_piece = matches!(&segments[..], [only] if only.digest == digest);
        let whole = (!one_piece).then(blake3::Hasher::new);
        Self {
            client,
            digest,
            segments,
            total,
            pos: 0,
            whole,
            state: ReadState::Idle,
        }
    }

    /// The segment holding `pos` and the offset into it.
    fn locate(&self, pos: u64) -> (usize, u64) {
        let i = self
            .segments
            .partition_point(|s| s.start <= pos)
            .saturating_sub(1);
        (i, pos - self.segments[i].start)
    }
}

impl AsyncRead for GrpcBlobReader {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if out.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        let this = &mut *self;
        loop {
            match &mut this.state {
                ReadState::Eof => return Poll::Ready(Ok(())),
                ReadState::Idle => {
                    if this.total.is_some_and(|t| this.pos >= t) {
                        this.state = ReadState::Eof;
                        continue;
                    }
                    let (seg, skip) = this.locate(this.pos);
                    let mut client = this.client.clone();
                    let request = proto::ReadBlobRequest {
                        digest: this.segments[seg].digest.to_bytes(),
                    };
                    let fut = async move { Ok(client.read(request).await?.into_inner()) }.boxed();
                    this.state = ReadState::Opening { seg, skip, fut };
                }
                ReadState::Opening { seg, skip, fut } => {
                    let stream =
                        ready!(fut.poll_unpin(cx)).map_err(|s| Error::Remote(s).into_io())?;
                    this.state = ReadState::Streaming {
                        seg: *seg,
                        skip: *skip,
                        stream,
                        hasher: Box::default(),
                        received: 0,
                        buf: Bytes::new(),
                    };
                }
                ReadState::Streaming { buf, .. } if !buf.is_empty() => {
                    let n = buf.len().min(out.remaining());
                    out.put_slice(&buf[..n]);
                    if let Some(whole) = this.whole.as_mut() {
                        whole.update(&buf[..n]);
                    }
                    buf.advance(n);
                    this.pos += n as u64;
                    return Poll::Ready(Ok(()));
                }
                ReadState::Streaming {
                    seg,
                    skip,
                    stream,
                    hasher,
                    received,
                    buf,
                } => {
                    let segment = &this.segments[*seg];
                    match ready!(stream.poll_next_unpin(cx)) {
                        Some(Ok(piece)) => {
                            let data = piece.data;
                            hasher.update(&data);
                            *received += data.len() as u64;
                            if segment.size.is_some_and(|s| *received > s) {
                                return Poll::Ready(Err(corrupt(format!(
                                    "blob {}: server sent more than the {} bytes of chunk {}",
                                    this.digest,
                                    segment.size.unwrap_or_default(),
                                    segment.digest
                                ))));
                            }
                            let len = data.len() as u64;
                            if *skip >= len {
                                *skip -= len;
                            } else {
                                *buf = data.slice(*skip as usize..);
                                *skip = 0;
                            }
                        }
                        Some(Err(status)) => {
                            return Poll::Ready(Err(Error::Remote(status).into_io()));
                        }
                        None => {
                            let got = B3Digest::from(hasher.finalize());
                            if got != segment.digest {
                                return Poll::Ready(Err(corrupt(format!(
                                    "blob {}: server sent data hashing to {got} for {}",
                                    this.digest, segment.digest
                                ))));
                            }
                            if segment.size.is_some_and(|s| s != *received) {
                                return Poll::Ready(Err(corrupt(format!(
                                    "blob {}: chunk {} is {} bytes, not {}",
                                    this.digest,
                                    segment.digest,
                                    received,
                                    segment.size.unwrap_or_default()
                                ))));
                            }
                            let end = segment.start + *received;
                            if *seg + 1 < this.segments.len() {
                                this.state = ReadState::Idle;
                                continue;
                            }
                            this.total = Some(end);
                            if let Some(whole) = this.whole.take() {
                                let got = B3Digest::from(whole.finalize());
                                if got != this.digest {
                                    return Poll::Ready(Err(corrupt(format!(
                                        "blob {}: chunks concatenate to {got}",
                                        this.digest
                                    ))));
                                }
                            }
                            this.state = ReadState::Eof;
                        }
                    }
                }
            }
        }
    }
}

impl AsyncSeek for GrpcBlobReader {
    fn start_seek(mut self: Pin<&mut Self>, position: io::SeekFrom) -> io::Result<()> {
        let target = match position {
            io::SeekFrom::Start(n) => Some(n),
            io::SeekFrom::Current(d) => self.pos.checked_add_signed(d),
            io::SeekFrom::End(d) => match self.total {
                Some(t) => t.checked_add_signed(d),
                None => {
                    return Err(io::Error::new(
                        io::ErrorKind::Unsupported,
                        "seek from the end of a remote blob stored as one piece: size unknown",
                    ));
                }
            },
        };
        let target = target.ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                "seek to a negative or overflowing position",
            )
        })?;
        if target != self.pos {
            self.pos = target;
            self.whole = None;
            self.state = ReadState::Idle;
        }
        Ok(())
    }

    fn poll_complete(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<u64>> {
        Poll::Ready(Ok(self.pos))
    }
}

enum Piece {
    Data(Bytes),
    Finish,
}

/// Streams a blob to the server as it is written. The `Put` call runs in a task fed
/// through a channel; the stream ends cleanly only on [`BlobWriter::close`]. A writer
/// dropped before that makes the stream fail (see [`crate::upload`]), so the server
/// stores nothing; the task then ends with the server's answer.
struct GrpcBlobWriter {
    tx: PollSender<Piece>,
    task: Option<JoinHandle<Result<proto::PutBlobResponse, tonic::Status>>>,
    hasher: blake3::Hasher,
    closed: bool,
}

impl GrpcBlobWriter {
    fn new(channel: Channel) -> Self {
        let (tx, mut rx) = mpsc::channel::<Piece>(8);
        let body = async_stream::stream! {
            while let Some(piece) = rx.recv().await {
                match piece {
                    Piece::Data(data) => yield Upload::Item(proto::BlobChunk { data }),
                    Piece::Finish => return,
                }
            }
            // Sender gone without Finish: the writer was dropped.
            yield Upload::Abandon;
        };
        let task = tokio::spawn(upload(
            channel,
            "tvix.castore.v1.BlobService",
            "Put",
            "/tvix.castore.v1.BlobService/Put",
            body,
        ));
        Self {
            tx: PollSender::new(tx),
            task: Some(task),
            hasher: blake3::Hasher::new(),
            closed: false,
        }
    }
}

fn broken() -> io::Error {
    io::Error::new(
        io::ErrorKind::BrokenPipe,
        "blob upload ended early; close() reports why",
    )
}

impl AsyncWrite for GrpcBlobWriter {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.closed {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "blob writer closed",
            )));
        }
        if data.is_empty() {
            return Poll::Ready(Ok(0));
        }
        ready!(self.tx.poll_reserve(cx)).map_err(|_| broken())?;
        let n = data.len().min(MAX_PIECE);
        self.tx
            .send_item(Piece::Data(Bytes::copy_from_slice(&data[..n])))
            .map_err(|_| broken())?;
        self.hasher.update(&data[..n]);
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[async_trait]
impl BlobWriter for GrpcBlobWriter {
    async fn close(&mut self) -> Result<B3Digest, Error> {
        if self.closed {
            return Err(Error::Io(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "blob writer closed",
            )));
        }
        self.closed = true;
        let sent = futures::future::poll_fn(|cx| self.tx.poll_reserve(cx))
            .await
            .is_ok()
            && self.tx.send_item(Piece::Finish).is_ok();
        let task = self
            .task
            .take()
            .ok_or_else(|| Error::Io(io::Error::other("blob upload task missing")))?;
        let response = task.await.map_err(|e| Error::Io(io::Error::other(e)))??;
        if !sent {
            return Err(Error::Io(broken()));
        }
        let remote = B3Digest::try_from(&response.digest)
            .map_err(|e| Error::Corrupt(format!("server answered a malformed digest: {e}")))?;
        let local = B3Digest::from(self.hasher.finalize());
        if remote != local {
            return Err(Error::Corrupt(format!(
                "server stored {remote}, but the data written hashes to {local}"
            )));
        }
        Ok(local)
    }
}
