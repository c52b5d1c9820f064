//! [`GrpcBlobService`]: a client of a `tvix.castore.v1.BlobService` server.

use crate::GrpcChannel;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use async_trait::async_trait;
use bytes::{Buf, Bytes};
use futures::FutureExt;
use futures::future::BoxFuture;
use tokio::io::{AsyncRead, AsyncSeek, AsyncWrite, ReadBuf};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::PollSender;

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
    client: BlobServiceClient<GrpcChannel>,
    channel: GrpcChannel,
}

impl GrpcBlobService {
    /// A client on `channel`.
    pub fn new(channel: GrpcChannel) -> Self {
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
        stat(self.client.clone(), *digest, send_chunks).await
    }
}

/// Stat `digest`, with its chunk list if `send_chunks`; `None` if absent.
async fn stat(
    mut client: BlobServiceClient<GrpcChannel>,
    digest: B3Digest,
    send_chunks: bool,
) -> Result<Option<Vec<ChunkMeta>>, Error> {
    let request = proto::StatBlobRequest {
        digest: digest.to_bytes(),
        send_chunks,
        send_bao: false,
    };
    match client.stat(request).await {
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

#[async_trait]
impl BlobService for GrpcBlobService {
    async fn has(&self, digest: &B3Digest) -> Result<bool, Error> {
        Ok(self.stat(digest, false).await?.is_some())
    }

    async fn open_read(&self, digest: &B3Digest) -> Result<Option<Box<dyn BlobReader>>, Error> {
        // One `Read` of the whole blob: no Stat round trip first, and the server sends
        // it in pieces of up to 1 MiB instead of one call per (small) chunk. The
        // server answers NotFound before streaming anything.
        let request = proto::ReadBlobRequest {
            digest: digest.to_bytes(),
        };
        let stream = match self.client.clone().read(request).await {
            Ok(response) => response.into_inner(),
            Err(status) if status.code() == tonic::Code::NotFound => return Ok(None),
            Err(status) => return Err(Error::Remote(status)),
        };
        Ok(Some(Box::new(GrpcBlobReader::new(
            self.client.clone(),
            *digest,
            stream,
        ))))
    }

    async fn open_write(&self) -> Box<dyn BlobWriter> {
        Box::new(GrpcBlobWriter::new(self.channel.clone()))
    }

    async fn chunks(&self, digest: &B3Digest) -> Result<Option<Vec<ChunkMeta>>, Error> {
        self.stat(digest, true).await
    }

    /// What the server may send a stream ahead of its reader (the stream
    /// window), a message being decoded (our servers send pieces of
    /// `MAX_PIECE`), and the bytes held until checked.
    fn reader_memory(&self) -> u64 {
        u64::from(crate::channel::STREAM_WINDOW) + MAX_PIECE as u64 + super::verify::HOLD
    }
}

fn corrupt(msg: String) -> io::Error {
    Error::Corrupt(msg).into_io()
}

/// A piece of the blob fetched with one `Read` call: the whole blob, or one chunk.
struct Segment {
    digest: B3Digest,
    start: u64,
    /// Unknown for the whole blob until it was read to the end.
    size: Option<u64>,
}

type OpenFuture = BoxFuture<'static, Result<tonic::Streaming<proto::BlobChunk>, tonic::Status>>;
use super::verify::{StatFuture, Verified};

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
        stream: Verified,
        buf: Bytes,
    },
    /// Everything read.
    Eof,
}

/// A seek that needs the chunk list first (see [`GrpcBlobReader`]).
struct PendingSeek {
    position: io::SeekFrom,
    fut: StatFuture,
}

/// Reads a remote blob. Read from its start, the blob comes in one `Read` stream of
/// the whole blob, checked by [`Verified`] before bytes are handed out: a blob of up
/// to 1 MiB is held and checked whole; a longer one chunk by chunk against its chunk
/// list (fetched when the stream passes 1 MiB), with the whole checked at its end; a
/// longer one the server keeps in one piece is spooled to a temporary file until its
/// end was checked. A mismatch is an `InvalidData` error, never a clean end of file.
///
/// The first seek that moves the position fetches the chunk list (Stat) unless the
/// read fetched it already, and from then on reads the chunk holding the position,
/// each checked against its own digest before its bytes are handed out, so a chunked
/// blob never re-reads from its start; a blob stored as one piece is re-read and the
/// bytes before the position dropped, as they must be hashed to verify it.
struct GrpcBlobReader {
    client: BlobServiceClient<GrpcChannel>,
    digest: B3Digest,
    segments: Vec<Segment>,
    /// Whether `segments` came from the chunk list (fetched at the first seek).
    chunked: bool,
    total: Option<u64>,
    pos: u64,
    seek: Option<PendingSeek>,
    state: ReadState,
}

impl GrpcBlobReader {
    /// A reader of `digest` from its start, on the already opened whole-blob `stream`.
    fn new(
        client: BlobServiceClient<GrpcChannel>,
        digest: B3Digest,
        stream: tonic::Streaming<proto::BlobChunk>,
    ) -> Self {
        Self {
            client,
            digest,
            segments: vec![Segment {
                digest,
                start: 0,
                size: None,
            }],
            chunked: false,
            total: None,
            pos: 0,
            seek: None,
            state: ReadState::Idle,
        }
        .streaming(0, 0, stream)
    }

    /// Reads segment `seg` from `stream`, dropping its first `skip` bytes.
    fn streaming(
        mut self,
        seg: usize,
        skip: u64,
        stream: tonic::Streaming<proto::BlobChunk>,
    ) -> Self {
        self.state = self.stream_state(seg, skip, stream);
        self
    }

    fn stream_state(
        &self,
        seg: usize,
        skip: u64,
        stream: tonic::Streaming<proto::BlobChunk>,
    ) -> ReadState {
        let segment = &self.segments[seg];
        // A whole blob longer than the hold limit is checked chunk by chunk.
        let lister: Option<Box<dyn FnOnce() -> StatFuture + Send>> = match segment.size {
            None => {
                let (client, digest) = (self.client.clone(), self.digest);
                Some(Box::new(move || stat(client, digest, true).boxed()))
            }
            Some(_) => None,
        };
        ReadState::Streaming {
            seg,
            skip,
            stream: Verified::new(stream, segment.digest, segment.size, lister),
            buf: Bytes::new(),
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

    /// The position `position` names; `None` if it is relative to an unknown end.
    fn resolve(&self, position: io::SeekFrom) -> io::Result<Option<u64>> {
        let target = match position {
            io::SeekFrom::Start(n) => Some(n),
            io::SeekFrom::Current(d) => self.pos.checked_add_signed(d),
            io::SeekFrom::End(d) => match self.total {
                Some(t) => t.checked_add_signed(d),
                None => return Ok(None),
            },
        };
        target.map(Some).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                "seek to a negative or overflowing position",
            )
        })
    }

    /// Takes the chunk list from Stat as the segments to read from now on.
    fn install_chunks(&mut self, chunks: Option<Vec<ChunkMeta>>) -> io::Result<()> {
        let chunks = chunks.ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                format!("blob {} vanished from the server while open", self.digest),
            )
        })?;
        self.chunked = true;
        if chunks.is_empty() {
            // Stored as one piece: keep reading the whole blob.
            return Ok(());
        }
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
        if self.total.is_some_and(|t| t != start) {
            return Err(corrupt(format!(
                "blob {}: chunks add up to {start} bytes, not the {} read",
                self.digest,
                self.total.unwrap_or_default()
            )));
        }
        self.segments = segments;
        self.total = Some(start);
        Ok(())
    }

    fn move_to(&mut self, target: u64) {
        if target != self.pos {
            self.pos = target;
            self.state = ReadState::Idle;
        }
    }
}

impl AsyncRead for GrpcBlobReader {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        // A seek whose future was dropped before it completed still takes effect.
        if self.seek.is_some() {
            ready!(self.as_mut().poll_complete(cx))?;
        }
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
                    let (seg, skip) = (*seg, *skip);
                    this.state = this.stream_state(seg, skip, stream);
                }
                ReadState::Streaming { buf, .. } if !buf.is_empty() => {
                    let n = buf.len().min(out.remaining());
                    out.put_slice(&buf[..n]);
                    buf.advance(n);
                    this.pos += n as u64;
                    return Poll::Ready(Ok(()));
                }
                ReadState::Streaming {
                    seg,
                    skip,
                    stream,
                    buf,
                } => match ready!(stream.poll_next(cx)) {
                    Some(Ok(data)) => {
                        let len = data.len() as u64;
                        if *skip >= len {
                            *skip -= len;
                        } else {
                            *buf = data.slice(*skip as usize..);
                            *skip = 0;
                        }
                    }
                    Some(Err(e)) => return Poll::Ready(Err(e)),
                    None => {
                        let end = this.segments[*seg].start + stream.received();
                        let listed = stream.take_listed();
                        if *seg + 1 < this.segments.len() {
                            this.state = ReadState::Idle;
                            continue;
                        }
                        this.total = Some(end);
                        this.state = ReadState::Eof;
                        // Fetched while checking: later seeks need no Stat.
                        if !this.chunked && listed.is_some() {
                            this.install_chunks(listed)?;
                        }
                    }
                },
            }
        }
    }
}

impl AsyncSeek for GrpcBlobReader {
    fn start_seek(mut self: Pin<&mut Self>, position: io::SeekFrom) -> io::Result<()> {
        if self.seek.is_some() {
            return Err(io::Error::other("blob seek while another is in progress"));
        }
        let target = self.resolve(position)?;
        if target == Some(self.pos) {
            return Ok(());
        }
        match target {
            Some(target) if self.chunked => {
                self.move_to(target);
                Ok(())
            }
            None if self.chunked => Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "seek from the end of a remote blob stored as one piece: size unknown",
            )),
            // First seek: fetch the chunk list so that a chunked blob is read from
            // the chunk holding the new position, not from its start.
            _ => {
                let fut = stat(self.client.clone(), self.digest, true).boxed();
                self.seek = Some(PendingSeek { position, fut });
                Ok(())
            }
        }
    }

    fn poll_complete(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<u64>> {
        let Some(pending) = self.seek.as_mut() else {
            return Poll::Ready(Ok(self.pos));
        };
        let result = ready!(pending.fut.poll_unpin(cx));
        let position = pending.position;
        self.seek = None;
        self.install_chunks(result.map_err(Error::into_io)?)?;
        let target = self.resolve(position)?.ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::Unsupported,
                "seek from the end of a remote blob stored as one piece: size unknown",
            )
        })?;
        self.move_to(target);
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
    /// What the task ended with, once a write found it gone; `close` returns it.
    ended: Option<Result<proto::PutBlobResponse, Error>>,
    hasher: blake3::Hasher,
    closed: bool,
}

impl GrpcBlobWriter {
    fn new(channel: GrpcChannel) -> Self {
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
            ended: None,
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

/// The upload task's outcome as the crate's result.
fn outcome(
    joined: Result<Result<proto::PutBlobResponse, tonic::Status>, tokio::task::JoinError>,
) -> Result<proto::PutBlobResponse, Error> {
    joined
        .map_err(|e| Error::Io(io::Error::other(e)))?
        .map_err(Error::from)
}

impl GrpcBlobWriter {
    /// The error for a write after the upload task stopped taking data: its own
    /// error (the server's answer, a dead connection), so that a caller that
    /// never gets to `close` still learns why.
    fn poll_ended(&mut self, cx: &mut Context<'_>) -> Poll<io::Error> {
        if let Some(task) = self.task.as_mut() {
            let joined = ready!(task.poll_unpin(cx));
            self.task = None;
            self.ended = Some(outcome(joined));
        }
        Poll::Ready(match &self.ended {
            Some(Err(e)) => io::Error::new(
                io::ErrorKind::BrokenPipe,
                format!("blob upload ended early: {e}"),
            ),
            _ => broken(),
        })
    }
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
        if ready!(self.tx.poll_reserve(cx)).is_err() {
            return self.poll_ended(cx).map(Err);
        }
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
        let response = match (self.task.take(), self.ended.take()) {
            (Some(task), _) => outcome(task.await)?,
            (None, Some(ended)) => ended?,
            (None, None) => {
                return Err(Error::Io(io::Error::other("blob upload task missing")));
            }
        };
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::io::SeekFrom;
    use std::sync::Arc;

    use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};

    use crate::blobservice::MemoryBlobService;
    use crate::directoryservice::MemoryDirectoryService;
    use crate::embedded::EmbeddedStore;
    use crate::{B3Digest, BlobService};

    /// A gRPC client of a server backed by `blobs`, on loopback TCP.
    async fn client(blobs: Arc<dyn BlobService>) -> Arc<dyn BlobService> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (routes, _) =
            crate::server::routes(blobs, Arc::new(MemoryDirectoryService::new()), &[])
                .await
                .unwrap();
        tokio::spawn(async move {
            let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
            crate::server::serve(routes, incoming, std::future::pending())
                .await
                .unwrap();
        });
        crate::blob_service_from_addr(&format!("grpc+http://127.0.0.1:{port}")).unwrap()
    }

    /// Bytes that do not repeat, so content-defined chunking cuts them into chunks.
    fn data(len: usize) -> Vec<u8> {
        cairn_testkit::data::pseudo_random(len, 1)
    }

    async fn put(blobs: &Arc<dyn BlobService>, content: &[u8]) -> B3Digest {
        let mut w = blobs.open_write().await;
        w.write_all(content).await.unwrap();
        let d = w.close().await.unwrap();
        assert_eq!(d, B3Digest::from(*blake3::hash(content).as_bytes()));
        d
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn seeks_in_a_chunked_blob_read_chunks() {
        let dir = tempfile::tempdir().unwrap();
        let blobs = client(Arc::new(EmbeddedStore::open(dir.path()).unwrap())).await;
        let content = data(5 << 20);
        let d = put(&blobs, &content).await;
        let chunks = blobs.chunks(&d).await.unwrap().unwrap();
        assert!(chunks.len() > 1, "{} chunks", chunks.len());

        let mut r = blobs.open_read(&d).await.unwrap().unwrap();
        let mut all = Vec::new();
        r.read_to_end(&mut all).await.unwrap();
        assert!(all == content);

        // From the end before anything was read: the size comes from the chunk list.
        let mut r = blobs.open_read(&d).await.unwrap().unwrap();
        let end = content.len() as u64;
        assert_eq!(r.seek(SeekFrom::End(-10)).await.unwrap(), end - 10);
        let mut tail = Vec::new();
        r.read_to_end(&mut tail).await.unwrap();
        assert_eq!(tail, content[content.len() - 10..]);

        // Part of the whole-blob stream read, then seeks both ways.
        let mut r = blobs.open_read(&d).await.unwrap().unwrap();
        let mut buf = vec![0; 5000];
        r.read_exact(&mut buf).await.unwrap();
        assert_eq!(buf, content[..5000]);
        assert_eq!(r.seek(SeekFrom::Start(3_000_000)).await.unwrap(), 3_000_000);
        r.read_exact(&mut buf).await.unwrap();
        assert_eq!(buf, content[3_000_000..3_005_000]);
        assert_eq!(r.seek(SeekFrom::Current(-10_000)).await.unwrap(), 2_995_000);
        r.read_exact(&mut buf).await.unwrap();
        assert_eq!(buf, content[2_995_000..3_000_000]);
        let mut rest = Vec::new();
        r.read_to_end(&mut rest).await.unwrap();
        assert!(rest == content[3_000_000..]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn seek_from_the_end_of_a_one_piece_blob_needs_its_size() {
        let blobs = client(Arc::new(MemoryBlobService::new())).await;
        let content = data(3 << 20);
        let d = put(&blobs, &content).await;
        assert_eq!(blobs.chunks(&d).await.unwrap().unwrap().len(), 0);

        let mut r = blobs.open_read(&d).await.unwrap().unwrap();
        let err = r.seek(SeekFrom::End(-10)).await.unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::Unsupported, "{err}");
        // The failed seek left the reader where it was.
        let mut all = Vec::new();
        r.read_to_end(&mut all).await.unwrap();
        assert!(all == content);

        // Read to the end, the size is known: re-read from the start and skipped.
        let end = content.len() as u64;
        assert_eq!(r.seek(SeekFrom::End(-10)).await.unwrap(), end - 10);
        let mut tail = Vec::new();
        r.read_to_end(&mut tail).await.unwrap();
        assert_eq!(tail, content[content.len() - 10..]);
    }

    /// Serves every blob with the byte at `at` flipped, as a corrupt or hostile
    /// server would; chunk lists are the real ones unless `one_chunk` is set, which
    /// lists a blob of that size as a single chunk (itself).
    struct Flipping {
        inner: Arc<dyn BlobService>,
        at: usize,
        one_chunk: Option<u64>,
    }

    #[async_trait::async_trait]
    impl BlobService for Flipping {
        async fn has(&self, digest: &B3Digest) -> Result<bool, crate::Error> {
            self.inner.has(digest).await
        }
        async fn open_read(
            &self,
            digest: &B3Digest,
        ) -> Result<Option<Box<dyn crate::BlobReader>>, crate::Error> {
            let Some(mut r) = self.inner.open_read(digest).await? else {
                return Ok(None);
            };
            let mut all = Vec::new();
            r.read_to_end(&mut all).await.unwrap();
            if let Some(b) = all.get_mut(self.at) {
                *b ^= 1;
            }
            Ok(Some(Box::new(std::io::Cursor::new(all))))
        }
        async fn open_write(&self) -> Box<dyn crate::BlobWriter> {
            self.inner.open_write().await
        }
        async fn chunks(
            &self,
            digest: &B3Digest,
        ) -> Result<Option<Vec<crate::ChunkMeta>>, crate::Error> {
            match self.one_chunk {
                Some(size) => Ok(Some(vec![crate::ChunkMeta {
                    digest: *digest,
                    size,
                }])),
                None => self.inner.chunks(digest).await,
            }
        }
    }

    /// Everything a reader hands out before it fails (or ends).
    async fn read_until_error(
        r: &mut Box<dyn crate::BlobReader>,
    ) -> (Vec<u8>, Option<std::io::Error>) {
        let mut got = Vec::new();
        let mut buf = vec![0; 64 << 10];
        loop {
            match r.read(&mut buf).await {
                Ok(0) => return (got, None),
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e) => return (got, Some(e)),
            }
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_corrupt_short_blob_hands_out_nothing() {
        let inner: Arc<dyn BlobService> = Arc::new(MemoryBlobService::new());
        let content = data(900_000);
        let d = put(&inner, &content).await;
        let blobs = client(Arc::new(Flipping {
            inner,
            at: 899_000,
            one_chunk: None,
        }))
        .await;
        let mut r = blobs.open_read(&d).await.unwrap().unwrap();
        let (got, err) = read_until_error(&mut r).await;
        let err = err.expect("a corrupt blob must fail");
        assert_eq!(err.kind(), std::io::ErrorKind::InvalidData, "{err}");
        assert_eq!(got.len(), 0, "bytes handed out before the check");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_corrupt_long_blob_hands_out_only_checked_chunks() {
        let dir = tempfile::tempdir().unwrap();
        let inner: Arc<dyn BlobService> = Arc::new(EmbeddedStore::open(dir.path()).unwrap());
        let content = data(5 << 20);
        let d = put(&inner, &content).await;
        let chunks = inner.chunks(&d).await.unwrap().unwrap();
        let at = 3_000_000;
        // The corrupt chunk starts where the bytes handed out must stop.
        let mut start = 0;
        for c in &chunks {
            if start + c.size > at as u64 {
                break;
            }
            start += c.size;
        }
        assert!(start > 1 << 20, "test needs chunks past the hold limit");
        let blobs = client(Arc::new(Flipping {
            inner,
            at,
            one_chunk: None,
        }))
        .await;
        let mut r = blobs.open_read(&d).await.unwrap().unwrap();
        let (got, err) = read_until_error(&mut r).await;
        let err = err.expect("a corrupt blob must fail");
        assert_eq!(err.kind(), std::io::ErrorKind::InvalidData, "{err}");
        assert_eq!(
            got.len() as u64,
            start,
            "handed out up to the corrupt chunk"
        );
        assert!(got == content[..start as usize]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_corrupt_long_blob_in_one_piece_hands_out_nothing() {
        let inner: Arc<dyn BlobService> = Arc::new(MemoryBlobService::new());
        let content = data(3 << 20);
        let d = put(&inner, &content).await;
        for at in [10, (2 << 20) + 7, content.len() - 1] {
            let blobs = client(Arc::new(Flipping {
                inner: inner.clone(),
                at,
                one_chunk: None,
            }))
            .await;
            let mut r = blobs.open_read(&d).await.unwrap().unwrap();
            let (got, err) = read_until_error(&mut r).await;
            // No chunk list: spooled, and nothing handed out before the end's check.
            let err = err.expect("a corrupt blob must fail, never end cleanly");
            assert_eq!(err.kind(), std::io::ErrorKind::InvalidData, "{err}");
            assert_eq!(
                got.len(),
                0,
                "bytes handed out before the check (flip at {at})"
            );
            // And it stays failed.
            let mut buf = [0u8; 16];
            assert!(r.read(&mut buf).await.is_err());
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_corrupt_blob_listed_as_a_chunk_too_large_to_hold_hands_out_nothing() {
        let inner: Arc<dyn BlobService> = Arc::new(MemoryBlobService::new());
        let content = data(17 << 20);
        let d = put(&inner, &content).await;
        let size = content.len() as u64;
        let flipped = client(Arc::new(Flipping {
            inner: inner.clone(),
            at: 16 << 20,
            one_chunk: Some(size),
        }))
        .await;
        let mut r = flipped.open_read(&d).await.unwrap().unwrap();
        let (got, err) = read_until_error(&mut r).await;
        let err = err.expect("a corrupt blob must fail, never end cleanly");
        assert_eq!(err.kind(), std::io::ErrorKind::InvalidData, "{err}");
        assert_eq!(got.len(), 0, "bytes handed out before the check");

        // The same listing over intact bytes reads back whole.
        let intact = client(Arc::new(Flipping {
            inner,
            at: usize::MAX,
            one_chunk: Some(size),
        }))
        .await;
        let mut r = intact.open_read(&d).await.unwrap().unwrap();
        let (got, err) = read_until_error(&mut r).await;
        assert!(err.is_none(), "{err:?}");
        assert!(got == content);
    }
}
