//! [`ingest`]: a NAR stream into blobs and directories.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use cairn_castore::{
    B3Digest, BlobService, Directory, DirectoryPutter, DirectoryService, Node, PathComponent,
    SymlinkTarget,
};
use cairn_nix::nar::{AsyncEvent, AsyncReader, Limits};
use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
use futures::{FutureExt, StreamExt};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt, ReadBuf};

use super::NarError;

/// Size of the buffer large files' contents are copied through.
const COPY_BUF: usize = 256 * 1024;
/// Files up to this size are read whole, hashed here and uploaded concurrently
/// (a store's per-blob commit or round trip would otherwise serialise them);
/// larger ones stream through one writer.
const SMALL_FILE: u64 = 256 * 1024;
/// Small-file uploads in flight at most.
const UPLOADS: usize = 64;
/// Bytes of small files held in flight at most.
const UPLOAD_BYTES: usize = 8 * 1024 * 1024;

/// Small files being uploaded: their bytes held until each is stored.
struct Uploads<'a> {
    blobs: &'a dyn BlobService,
    running: FuturesUnordered<BoxFuture<'a, Result<usize, NarError>>>,
    bytes: usize,
}

impl<'a> Uploads<'a> {
    /// Starts storing `data` (the contents of the file at `offset`) and returns its
    /// digest, computed here; the upload's own digest is checked against it.
    async fn start(&mut self, data: Vec<u8>, offset: u64) -> Result<B3Digest, NarError> {
        while !self.running.is_empty()
            && (self.running.len() >= UPLOADS || self.bytes + data.len() > UPLOAD_BYTES)
        {
            self.wait_one().await?;
        }
        let expected = B3Digest::from(blake3::hash(&data));
        let blobs = self.blobs;
        let len = data.len();
        self.bytes += len;
        self.running.push(Box::pin(async move {
            let write_err = |source| NarError::BlobWrite { offset, source };
            let mut writer = blobs.open_write().await;
            writer.write_all(&data).await.map_err(write_err)?;
            writer.flush().await.map_err(write_err)?;
            let returned = writer.close().await?;
            if returned != expected {
                return Err(NarError::DigestMismatch {
                    what: "blob",
                    expected,
                    returned,
                });
            }
            Ok(len)
        }));
        // Poll them now so their work starts (stores hand it to their own threads);
        // collect whatever has finished.
        while let Some(done) = self.running.next().now_or_never() {
            match done {
                Some(r) => self.bytes -= r?,
                None => break,
            }
        }
        Ok(expected)
    }

    async fn wait_one(&mut self) -> Result<(), NarError> {
        if let Some(r) = self.running.next().await {
            self.bytes -= r?;
        }
        Ok(())
    }

    async fn finish(&mut self) -> Result<(), NarError> {
        while !self.running.is_empty() {
            self.wait_one().await?;
        }
        Ok(())
    }
}

/// What [`ingest`] stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ingested {
    /// The tree's root node (its name is the store path's, chosen by the caller).
    pub root: Node,
    /// Length of the NAR in bytes.
    pub nar_size: u64,
    /// sha256 of the NAR.
    pub nar_sha256: [u8; 32],
}

/// Reads a NAR from `nar` and stores its tree: each file's contents as a blob,
/// streamed as the NAR is read (never a whole file in memory), and its directories
/// through one [`DirectoryService::put_multiple_start`] upload, leaves first.
///
/// The NAR is checked by `cairn-nix`'s strict reader (canonical form only, entry
/// names and symlink targets as castore allows them: names up to 255 bytes,
/// targets up to 4095). On any error (malformed or truncated NAR, failing
/// service) the directory upload is dropped, so no directory of the tree becomes
/// visible. Blobs written before the error stay: they are content-addressed and
/// unreachable without a directory referencing them.
///
/// Memory is bounded by the width of the directories open at once, not by file or
/// NAR sizes; the directory upload itself holds what the backend holds until it
/// commits (the in-process backends keep the closure's directories).
pub async fn ingest<R: AsyncRead + Unpin + Send>(
    blobs: &dyn BlobService,
    directories: &dyn DirectoryService,
    nar: R,
) -> Result<Ingested, NarError> {
    let (root, nar_size, sha) = store(blobs, directories, nar, Some(Sha256::new())).await?;
    Ok(Ingested {
        root,
        nar_size,
        nar_sha256: sha.map(Into::into).unwrap_or_default(),
    })
}

/// [`ingest`] for a caller that hashes the NAR itself as it feeds it: the
/// tree's root node and the NAR's length, without a second SHA-256 pass
/// (which costs about as much as chunking and BLAKE3 together).
pub async fn ingest_unhashed<R: AsyncRead + Unpin + Send>(
    blobs: &dyn BlobService,
    directories: &dyn DirectoryService,
    nar: R,
) -> Result<(Node, u64), NarError> {
    let (root, nar_size, _) = store(blobs, directories, nar, None).await?;
    Ok((root, nar_size))
}

async fn store<R: AsyncRead + Unpin + Send>(
    blobs: &dyn BlobService,
    directories: &dyn DirectoryService,
    nar: R,
    hasher: Option<Sha256>,
) -> Result<(Node, u64, Option<sha2::digest::Output<Sha256>>), NarError> {
    let limits = Limits {
        max_name_len: cairn_castore::model::MAX_NAME_LEN,
        max_target_len: cairn_castore::model::MAX_TARGET_LEN,
        ..Limits::default()
    };
    let mut input = Hashing { inner: nar, hasher };
    let mut reader = AsyncReader::with_limits(&mut input, limits);
    // Started at the first directory: a NAR of a single file or symlink opens no
    // upload (over gRPC, a stream) at all.
    let mut putter: Option<Box<dyn DirectoryPutter + '_>> = None;
    let mut stack: Vec<(Option<PathComponent>, Directory)> = Vec::new();
    let mut name: Option<PathComponent> = None;
    let mut root: Option<Node> = None;
    let mut root_directory: Option<B3Digest> = None;
    // Allocated at the first large file: zeroing 256 KiB was a tenth of the
    // server's time for a NAR of one small file (`nix copy` of small paths).
    let mut buf = Vec::new();
    let mut uploads = Uploads {
        blobs,
        running: FuturesUnordered::new(),
        bytes: 0,
    };

    loop {
        let at = reader.offset();
        let (entry, node) = match reader.next().await? {
            None => break,
            Some(AsyncEvent::Directory) => {
                stack.push((name.take(), Directory::new()));
                continue;
            }
            Some(AsyncEvent::Entry { name: n }) => {
                let n = PathComponent::try_from(n)
                    .map_err(|source| NarError::Name { offset: at, source })?;
                name = Some(n);
                continue;
            }
            Some(AsyncEvent::Symlink { target }) => {
                let target = SymlinkTarget::try_from(target)
                    .map_err(|source| NarError::Target { offset: at, source })?;
                (name.take(), Node::Symlink { target })
            }
            Some(AsyncEvent::File {
                executable,
                size,
                offset,
                mut contents,
            }) => {
                let read_err = |e| NarError::Nar(cairn_nix::nar::Error::from_io(e, offset));
                let digest = if size <= SMALL_FILE {
                    // size <= SMALL_FILE: fits in usize
                    let mut data = Vec::with_capacity(size as usize);
                    contents.read_to_end(&mut data).await.map_err(read_err)?;
                    uploads.start(data, offset).await?
                } else {
                    let mut writer = blobs.open_write().await;
                    let write_err = |source| NarError::BlobWrite { offset, source };
                    buf.resize(COPY_BUF, 0);
                    loop {
                        let n = contents.read(&mut buf).await.map_err(read_err)?;
                        if n == 0 {
                            break;
                        }
                        writer.write_all(&buf[..n]).await.map_err(write_err)?;
                    }
                    writer.flush().await.map_err(write_err)?;
                    writer.close().await?
                };
                (
                    name.take(),
                    Node::File {
                        digest,
                        size,
                        executable,
                    },
                )
            }
            Some(AsyncEvent::DirectoryEnd) => {
                let offset = reader.offset();
                let Some((entry, dir)) = stack.pop() else {
                    // The reader only ends directories it started.
                    return Err(NarError::Nar(cairn_nix::nar::Error::Usage {
                        offset,
                        message: "directory end without a directory",
                    }));
                };
                let digest = dir.digest();
                let size = dir.size();
                putter
                    .get_or_insert_with(|| directories.put_multiple_start())
                    .put(dir)
                    .await?;
                if stack.is_empty() {
                    root_directory = Some(digest);
                }
                (entry, Node::Directory { digest, size })
            }
        };
        match (stack.last_mut(), entry) {
            (Some((_, parent)), Some(entry)) => {
                parent
                    .add(entry, node)
                    .map_err(|source| NarError::Directory {
                        offset: reader.offset(),
                        source,
                    })?
            }
            (None, None) => root = Some(node),
            // The reader gives every node inside a directory an entry name first,
            // and the root none.
            _ => {
                return Err(NarError::Nar(cairn_nix::nar::Error::Usage {
                    offset: reader.offset(),
                    message: "node without an entry name inside a directory",
                }));
            }
        }
    }
    let nar_size = reader.offset();
    drop(reader);
    let Some(root) = root else {
        return Err(NarError::Nar(cairn_nix::nar::Error::Usage {
            offset: nar_size,
            message: "the NAR ended without a root node",
        }));
    };
    // Every blob is stored before any directory referencing it can be.
    uploads.finish().await?;
    if let (Some(expected), Some(putter)) = (root_directory, putter.as_mut()) {
        let returned = putter.close().await?;
        if returned != expected {
            return Err(NarError::DigestMismatch {
                what: "root directory",
                expected,
                returned,
            });
        }
    }
    Ok((root, nar_size, input.hasher.map(Sha256::finalize)))
}

/// Hashes everything read through it (if it has a hasher).
struct Hashing<R> {
    inner: R,
    hasher: Option<Sha256>,
}

impl<R: AsyncRead + Unpin> AsyncRead for Hashing<R> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let res = Pin::new(&mut this.inner).poll_read(cx, buf);
        if let (Poll::Ready(Ok(())), Some(hasher)) = (&res, this.hasher.as_mut()) {
            hasher.update(&buf.filled()[before..]);
        }
        res
    }
}
