//! [`render`], [`render_from`], [`calculate`] and [`nar_size`].

use std::collections::HashMap;
use std::io::{self, SeekFrom};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use cairn_castore::{B3Digest, BlobService, BlobStream, DirectoryService, Node};
use futures::stream::BoxStream;
use futures::{Stream, StreamExt};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncSeekExt, ReadBuf};

use super::NarError;
use super::layout;
use super::segments::{Borrowed, Seg, Services, Shared, Walker, directory_len, get_directory};

/// Segments being loaded ahead of the reader: blobs opened (and small ones read)
/// concurrently, in order. A file is about two segments (framing, contents), so
/// this keeps ~32 blob reads in flight, which is what hides gRPC round trips.
const BLOB_WINDOW: usize = 64;
/// Files up to this size are read whole while ahead; larger ones are streamed from
/// their open blob stream. Bounds the read-ahead memory to `BLOB_WINDOW` x this
/// (4 MiB).
const SMALL_FILE: u64 = 64 * 1024;

/// A segment ready to be served.
enum Piece {
    Bytes(Bytes),
    Stream {
        digest: B3Digest,
        stream: BlobStream,
        /// The file's size in the tree.
        size: u64,
        /// Bytes still to serve.
        remaining: u64,
        /// Verified bytes received and not served yet.
        held: Bytes,
    },
}

async fn load<S: Services>(svc: S, seg: Seg) -> Result<Piece, NarError> {
    let (digest, size, skip) = match seg {
        Seg::Bytes(b) => return Ok(Piece::Bytes(b)),
        Seg::Blob { digest, size, skip } => (digest, size, skip),
    };
    let read_err = |source| NarError::BlobRead { digest, source };
    let want = size - skip;
    if want > SMALL_FILE {
        // Streamed: the store hands out its verified buffers, which a NAR dump
        // writes out without copying them.
        let stream = svc
            .blobs()
            .open_read_stream(&digest, skip)
            .await?
            .ok_or(NarError::BlobNotFound { digest, size })?;
        return Ok(Piece::Stream {
            digest,
            stream,
            size,
            remaining: want,
            held: Bytes::new(),
        });
    }
    let mut reader = svc
        .blobs()
        .open_read(&digest)
        .await?
        .ok_or(NarError::BlobNotFound { digest, size })?;
    if skip > 0 {
        reader.seek(SeekFrom::Start(skip)).await.map_err(read_err)?;
    }
    // Read to the end (one byte past the size at most): a verifying reader checks
    // the digest when it reaches the end, and a longer blob is caught.
    let mut data = Vec::with_capacity(want as usize);
    (&mut reader)
        .take(want + 1)
        .read_to_end(&mut data)
        .await
        .map_err(read_err)?;
    if data.len() as u64 != want {
        return Err(NarError::BlobSize {
            digest,
            expected: size,
            actual: skip + data.len() as u64,
            longer: data.len() as u64 > want,
        });
    }
    Ok(Piece::Bytes(data.into()))
}

fn pieces<'a, S: Services + 'a>(
    walker: Walker<'a, S>,
    svc: S,
) -> BoxStream<'a, Result<Piece, NarError>> {
    let segs = futures::stream::try_unfold(walker, |mut w| async move {
        Ok::<_, NarError>(w.next().await?.map(|seg| (seg, w)))
    });
    segs.map(move |seg| {
        let svc = svc.clone();
        async move { load(svc, seg?).await }
    })
    .buffered(BLOB_WINDOW)
    .boxed()
}

/// The NAR as bytes (an `AsyncRead`, or a stream of `Bytes`) over a stream of
/// pieces.
struct Render<'a> {
    pieces: BoxStream<'a, Result<Piece, NarError>>,
    current: Option<Piece>,
    failed: bool,
}

/// What the current piece gave.
enum Step {
    Bytes(Bytes),
    /// The piece is served whole (and its blob ended where the tree says).
    Done,
    Failed(NarError),
}

impl<'a> Render<'a> {
    fn new<S: Services + 'a>(walker: Walker<'a, S>, svc: S) -> Self {
        Render {
            pieces: pieces(walker, svc),
            current: None,
            failed: false,
        }
    }

    fn fail(&mut self, e: NarError) -> io::Error {
        self.failed = true;
        self.current = None;
        e.into_io()
    }

    /// The next bytes of the NAR, `max` (> 0) at most, without a copy; `None` at
    /// the end. After an error, every call fails.
    fn poll_bytes(&mut self, cx: &mut Context<'_>, max: usize) -> Poll<Option<io::Result<Bytes>>> {
        loop {
            if self.failed {
                return Poll::Ready(Some(Err(io::Error::other(
                    "the NAR render failed earlier and cannot continue",
                ))));
            }
            let Some(piece) = &mut self.current else {
                match ready!(self.pieces.as_mut().poll_next(cx)) {
                    None => return Poll::Ready(None),
                    Some(Ok(piece)) => self.current = Some(piece),
                    Some(Err(e)) => return Poll::Ready(Some(Err(self.fail(e)))),
                }
                continue;
            };
            let step = match piece {
                Piece::Bytes(bytes) if bytes.is_empty() => Step::Done,
                Piece::Bytes(bytes) => Step::Bytes(bytes.split_to(max.min(bytes.len()))),
                Piece::Stream {
                    digest,
                    stream,
                    size,
                    remaining,
                    held,
                } => {
                    let (digest, expected) = (*digest, *size);
                    if held.is_empty() {
                        // Past the size too: the stream must end here (and verify).
                        match ready!(stream.poll_next_unpin(cx)) {
                            Some(Ok(b)) => {
                                *held = b;
                                continue;
                            }
                            Some(Err(source)) => {
                                Step::Failed(NarError::BlobRead { digest, source })
                            }
                            None if *remaining == 0 => Step::Done,
                            None => Step::Failed(NarError::BlobSize {
                                digest,
                                expected,
                                actual: expected - *remaining,
                                longer: false,
                            }),
                        }
                    } else if *remaining == 0 {
                        Step::Failed(NarError::BlobSize {
                            digest,
                            expected,
                            actual: expected + 1,
                            longer: true,
                        })
                    } else {
                        let left = usize::try_from(*remaining).unwrap_or(usize::MAX);
                        let n = held.len().min(max).min(left);
                        *remaining -= n as u64;
                        Step::Bytes(held.split_to(n))
                    }
                }
            };
            match step {
                Step::Bytes(b) => return Poll::Ready(Some(Ok(b))),
                Step::Done => self.current = None,
                Step::Failed(e) => return Poll::Ready(Some(Err(self.fail(e)))),
            }
        }
    }
}

impl AsyncRead for Render<'_> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if out.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        match ready!(self.get_mut().poll_bytes(cx, out.remaining())) {
            None => Poll::Ready(Ok(())),
            Some(Ok(b)) => {
                out.put_slice(&b);
                Poll::Ready(Ok(()))
            }
            Some(Err(e)) => Poll::Ready(Err(e)),
        }
    }
}

/// A NAR being rendered: an `AsyncRead` yielding exactly the bytes Nix writes for
/// the tree (or the same bytes as a stream: [`NarRenderer::into_stream`]). Errors (a
/// missing or corrupt blob or directory) are `io::Error`s carrying a [`NarError`]
/// ([`NarError::from_io`] recovers it); a render never ends early with a clean end
/// of file, and after an error every read fails.
pub struct NarRenderer(Render<'static>);

impl NarRenderer {
    /// The NAR as a stream of [`Bytes`]: the same bytes and errors as reading it,
    /// with the store's verified buffers of large files handed out as they are
    /// rather than copied into the caller's buffer.
    pub fn into_stream(mut self) -> impl Stream<Item = io::Result<Bytes>> + Send + Unpin {
        futures::stream::poll_fn(move |cx| self.0.poll_bytes(cx, usize::MAX))
    }
}

impl AsyncRead for NarRenderer {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_read(cx, buf)
    }
}

impl std::fmt::Debug for NarRenderer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NarRenderer").finish_non_exhaustive()
    }
}

/// Renders the NAR of `root`. Directories are fetched and blobs opened ahead of
/// the reader in a bounded window (a few dozen files, at most ~4 MiB read ahead),
/// so memory does not grow with the tree or its files.
pub fn render(
    blobs: Arc<dyn BlobService>,
    directories: Arc<dyn DirectoryService>,
    root: Node,
) -> NarRenderer {
    let svc = Shared { blobs, directories };
    NarRenderer(Render::new(Walker::new(svc.clone(), root, 0), svc))
}

/// Renders the NAR of `root` from byte `offset` on: the bytes of [`render`]'s
/// output after its first `offset`. Subtrees and files before the offset are
/// skipped by their lengths, computed from the directories alone, and the file
/// straddling the offset is read from there by seeking its blob. Fails (before
/// returning) if `offset` is past the end or a directory before it is missing.
pub async fn render_from(
    blobs: Arc<dyn BlobService>,
    directories: Arc<dyn DirectoryService>,
    root: Node,
    offset: u64,
) -> Result<NarRenderer, NarError> {
    let svc = Shared { blobs, directories };
    let mut walker = Walker::new(svc.clone(), root, offset);
    // Run the skipping part now, so an offset past the end is an error here.
    walker.prime().await?;
    Ok(NarRenderer(Render::new(walker, svc)))
}

/// The NAR's size and sha256, by rendering it.
pub async fn calculate(
    blobs: &dyn BlobService,
    directories: &dyn DirectoryService,
    root: &Node,
) -> Result<(u64, [u8; 32]), NarError> {
    let svc = Borrowed { blobs, directories };
    let mut render = Render::new(Walker::new(svc, root.clone(), 0), svc);
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    let mut size = 0u64;
    loop {
        let n = render.read(&mut buf).await.map_err(NarError::from_io)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        size += n as u64;
    }
    Ok((size, hasher.finalize().into()))
}

/// The NAR's size, from the directories alone (no blob is read).
pub async fn nar_size(directories: &dyn DirectoryService, root: &Node) -> Result<u64, NarError> {
    let node_len = match (root, layout::leaf_len(root)) {
        (_, Some(len)) => len,
        (Node::Directory { digest, .. }, None) => {
            let dir = get_directory(directories, *digest).await?;
            directory_len(directories, &mut HashMap::new(), *digest, &dir).await?
        }
        _ => unreachable!("leaf_len is None only for directories"),
    };
    Ok(layout::MAGIC_LEN + node_len)
}
