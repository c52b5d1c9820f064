//! [`HashingReader`]: SHA-256 and length of the bytes that pass through a reader.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use sha2::{Digest as _, Sha256};
use tokio::io::{AsyncRead, ReadBuf};

/// Hashes what is read through it (an upload's compressed bytes, for FileHash and
/// FileSize).
pub struct HashingReader<R> {
    inner: R,
    hasher: Option<Sha256>,
    len: u64,
}

impl<R> HashingReader<R> {
    /// Wraps `inner`; with `hash` false it only counts (an uncompressed upload's
    /// file hash is its NAR hash, which the ingestion computes anyway).
    pub fn new(inner: R, hash: bool) -> Self {
        Self {
            inner,
            hasher: hash.then(Sha256::new),
            len: 0,
        }
    }

    /// The SHA-256 (if hashing) and number of the bytes read so far.
    pub fn finish(self) -> (Option<[u8; 32]>, u64) {
        (self.hasher.map(|h| h.finalize().into()), self.len)
    }
}

impl<R: AsyncRead + Unpin> AsyncRead for HashingReader<R> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let res = Pin::new(&mut this.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = &res {
            let new = &buf.filled()[before..];
            if let Some(h) = &mut this.hasher {
                h.update(new);
            }
            this.len += new.len() as u64;
        }
        res
    }
}
