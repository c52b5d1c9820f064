//! [`HashingStream`]: SHA-256 and length of the chunks of a byte stream.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use futures::Stream;
use sha2::{Digest as _, Sha256};

/// Hashes the chunks that come out of it (an upload's compressed bytes, for
/// FileHash and FileSize). Hashing the body's chunks themselves, rather than
/// what a reader copies out of them, lets the upload be read through
/// `StreamReader` directly, with no buffer of its own in between (a copy of
/// every byte, and 256 KiB zeroed per upload).
pub struct HashingStream<S> {
    inner: S,
    hasher: Option<Sha256>,
    len: u64,
}

impl<S> HashingStream<S> {
    /// Wraps `inner`; with `hash` false it only counts (an uncompressed upload's
    /// file hash is its NAR hash, which the ingestion computes anyway).
    pub fn new(inner: S, hash: bool) -> Self {
        Self {
            inner,
            hasher: hash.then(Sha256::new),
            len: 0,
        }
    }

    /// The SHA-256 (if hashing) and number of the bytes that came out so far.
    pub fn finish(self) -> (Option<[u8; 32]>, u64) {
        (self.hasher.map(|h| h.finalize().into()), self.len)
    }
}

impl<S: Stream<Item = io::Result<Bytes>> + Unpin> Stream for HashingStream<S> {
    type Item = io::Result<Bytes>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        let item = ready!(Pin::new(&mut this.inner).poll_next(cx));
        if let Some(Ok(chunk)) = &item {
            if let Some(h) = &mut this.hasher {
                h.update(chunk);
            }
            this.len += chunk.len() as u64;
        }
        Poll::Ready(item)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use futures::StreamExt as _;

    use super::*;

    #[tokio::test]
    async fn hashes_and_counts_every_chunk() {
        let chunks = ["abc", "", "defgh"].map(|s| Ok(Bytes::from(s)));
        let mut s = HashingStream::new(futures::stream::iter(chunks), true);
        while s.next().await.is_some() {}
        let (h, n) = s.finish();
        // sha256("abcdefgh"), as `printf abcdefgh | sha256sum` gives it.
        let want = "9c56cc51b374c3ba189210d5b6d4bf57790d351c96c47c02190ecf1e430635ab";
        let got: String = h.unwrap().iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!((got.as_str(), n), (want, 8));
        let mut s = HashingStream::new(futures::stream::iter([Ok(Bytes::from("xy"))]), false);
        while s.next().await.is_some() {}
        assert_eq!(s.finish(), (None, 2));
    }
}
