//! [`render`], [`render_from`], [`calculate`] and [`nar_size`].

use std::collections::HashMap;
use std::io::{self, SeekFrom};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes};
use cairn_castore::{B3Digest, BlobReader, BlobService, DirectoryService, Node};
use futures::StreamExt;
use futures::stream::BoxStream;
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
/// their open reader. Bounds the read-ahead memory to `BLOB_WINDOW` x this (4 MiB).
const SMALL_FILE: u64 = 64 * 1024;

/// A segment ready to be served.
enum Piece {
    Bytes(Bytes),
    Reader {
        digest: B3Digest,
        reader: Box<dyn BlobReader>,
        /// The file's size in the tree.
        size: u64,
        /// Bytes still to serve.
        remaining: u64,
    },
}

async fn load<S: Services>(svc: S, seg: Seg) -> Result<Piece, NarError> {
    let (digest, size, skip) = match seg {
        Seg::Bytes(b) => return Ok(Piece::Bytes(b)),
        Seg::Blob { digest, size, skip } => (digest, size, skip),
    };
    let read_err = |source| NarError::BlobRead { digest, source };
    let mut reader = svc
        .blobs()
        .open_read(&digest)
        .await?
        .ok_or(NarError::BlobNotFound { digest, size })?;
    if skip > 0 {
        reader.seek(SeekFrom::Start(skip)).await.map_err(read_err)?;
    }
    let want = size - skip;
    if want > SMALL_FILE {
        return Ok(Piece::Reader {
            digest,
            reader,
            size,
            remaining: want,
        });
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

/// The NAR as an `AsyncRead` over a stream of pieces.
struct Render<'a> {
    pieces: BoxStream<'a, Result<Piece, NarError>>,
    current: Option<Piece>,
    failed: bool,
}

impl<'a> Render<'a> {
    fn new<S: Services + 'a>(walker: Walker<'a, S>, svc: S) -> Self {
        Render {
            pieces: pieces(walker, svc),
            current: None,
            failed: false,
        }
    }

    fn fail(&mut self, e: NarError) -> Poll<io::Result<()>> {
        self.failed = true;
        self.current = None;
        Poll::Ready(Err(e.into_io()))
    }
}

impl AsyncRead for Render<'_> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if this.failed {
                return Poll::Ready(Err(io::Error::other(
                    "the NAR render failed earlier and cannot continue",
                )));
            }
            if out.remaining() == 0 {
                return Poll::Ready(Ok(()));
            }
            match &mut this.current {
                None => match ready!(this.pieces.as_mut().poll_next(cx)) {
                    None => return Poll::Ready(Ok(())),
                    Some(Ok(piece)) => this.current = Some(piece),
                    Some(Err(e)) => return this.fail(e),
                },
                Some(Piece::Bytes(bytes)) => {
                    let n = bytes.len().min(out.remaining());
                    out.put_slice(&bytes[..n]);
                    bytes.advance(n);
                    if bytes.is_empty() {
                        this.current = None;
                    }
                    if n > 0 {
                        return Poll::Ready(Ok(()));
                    }
                }
                Some(Piece::Reader {
                    digest,
                    reader,
                    size,
                    remaining,
                }) => {
                    let digest = *digest;
                    if *remaining == 0 {
                        // Past the size: the reader must end here (and verify).
                        let mut one = [0u8; 1];
                        let mut rb = ReadBuf::new(&mut one);
                        if let Err(source) = ready!(Pin::new(reader).poll_read(cx, &mut rb)) {
                            return this.fail(NarError::BlobRead { digest, source });
                        }
                        if !rb.filled().is_empty() {
                            let expected = *size;
                            return this.fail(NarError::BlobSize {
                                digest,
                                expected,
                                actual: expected + 1,
                                longer: true,
                            });
                        }
                        this.current = None;
                        continue;
                    }
                    let max = usize::try_from(*remaining)
                        .unwrap_or(usize::MAX)
                        .min(out.remaining());
                    let dst = out.initialize_unfilled_to(max);
                    let mut rb = ReadBuf::new(dst);
                    if let Err(source) = ready!(Pin::new(&mut *reader).poll_read(cx, &mut rb)) {
                        return this.fail(NarError::BlobRead { digest, source });
                    }
                    let n = rb.filled().len();
                    if n == 0 {
                        let expected = *size;
                        let actual = expected - *remaining;
                        return this.fail(NarError::BlobSize {
                            digest,
                            expected,
                            actual,
                            longer: false,
                        });
                    }
                    out.advance(n);
                    *remaining -= n as u64;
                    return Poll::Ready(Ok(()));
                }
            }
        }
    }
}

/// A NAR being rendered: an `AsyncRead` yielding exactly the bytes Nix writes for
/// the tree. Errors (a missing or corrupt blob or directory) are `io::Error`s
/// carrying a [`NarError`] ([`NarError::from_io`] recovers it); a render never ends
/// early with a clean end of file.
pub struct NarRenderer(Render<'static>);

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
