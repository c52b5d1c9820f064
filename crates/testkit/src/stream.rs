//! Reading a byte stream the way a test of error handling needs it.

use std::io;

use tokio_stream::{Stream, StreamExt};

/// The stream's bytes up to its end or first error, that error, and the item the
/// stream gives after it (a stream that failed must keep failing, never end
/// cleanly as if the output were complete).
pub async fn drain<B: AsRef<[u8]>>(
    mut s: impl Stream<Item = io::Result<B>> + Unpin,
) -> (Vec<u8>, Option<io::Error>, Option<io::Result<B>>) {
    let mut out = Vec::new();
    while let Some(piece) = s.next().await {
        match piece {
            Ok(b) => out.extend_from_slice(b.as_ref()),
            Err(e) => return (out, Some(e), s.next().await),
        }
    }
    (out, None, None)
}
