//! The Nix daemon protocol's wire primitives: little-endian `u64`s, byte strings
//! padded to 8 bytes, lists of strings, the `STDERR_*` messages (errors in each
//! version's format), and the two ways a NAR or dump travels inside a
//! connection: framed (a run of `u64` length + bytes frames ended by an empty one,
//! protocol 1.23 and later) and tunnelled (the daemon asks for each piece with
//! `STDERR_READ`, 1.21–1.22).
//!
//! Readers are bounded: every string has a maximum length checked before anything
//! is allocated, a list a maximum count, and padding must be zeros (as Nix's
//! `readPadding` requires).

use std::io;

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// What a client sends first.
pub const WORKER_MAGIC_1: u64 = 0x6e69_7863;
/// What the daemon answers.
pub const WORKER_MAGIC_2: u64 = 0x6478_696f;

/// A log line for the client.
pub const STDERR_NEXT: u64 = 0x6f6c_6d67;
/// The daemon asks the client for up to `u64` bytes of its source.
pub const STDERR_READ: u64 = 0x6461_7461;
/// Data for the client's sink (unused by cairn).
pub const STDERR_WRITE: u64 = 0x6461_7416;
/// The operation's log ends; its result follows.
pub const STDERR_LAST: u64 = 0x616c_7473;
/// The operation failed; an error follows, and no result.
pub const STDERR_ERROR: u64 = 0x6378_7470;

/// A protocol version: major in the high byte, minor in the low one (1.38 is
/// `0x126`).
pub const fn version(major: u8, minor: u8) -> u64 {
    ((major as u64) << 8) | minor as u64
}

/// The minor part of a protocol version.
pub const fn minor(version: u64) -> u64 {
    version & 0xff
}

/// The major part of a protocol version.
pub const fn major(version: u64) -> u64 {
    (version >> 8) & 0xff
}

/// A version as Nix prints it (`1.34`).
pub fn version_text(version: u64) -> String {
    format!("{}.{}", major(version), minor(version))
}

/// Why a connection's request failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The connection broke (or ended): nothing more can be said on it.
    #[error("connection: {0}")]
    Io(#[from] io::Error),
    /// The client sent something that is not the protocol, or an argument the
    /// daemon cannot take; the rest of the request cannot be found in the
    /// stream. Reported to the client, then the connection is closed (as Nix's
    /// daemon does for an error before an operation's work began).
    #[error("{0}")]
    Protocol(String),
    /// The operation failed after its whole request was read: reported, and
    /// the connection serves the next operation.
    #[error("{0}")]
    Op(String),
    /// Already reported to the client; close the connection.
    #[error("{0}")]
    Reported(String),
}

impl Error {
    /// An operation's failure, from anything printable.
    pub fn op(msg: impl Into<String>) -> Self {
        Error::Op(msg.into())
    }

    /// A malformed request.
    pub fn protocol(msg: impl Into<String>) -> Self {
        Error::Protocol(msg.into())
    }
}

/// Bytes of zero padding after a string of `len` bytes.
pub fn padding(len: u64) -> usize {
    ((8 - len % 8) % 8) as usize
}

/// Reads one `u64`.
pub async fn read_u64<R: AsyncRead + Unpin>(r: &mut R) -> Result<u64, Error> {
    let mut b = [0u8; 8];
    r.read_exact(&mut b).await?;
    Ok(u64::from_le_bytes(b))
}

/// Reads a boolean (any non-zero `u64` is true, as Nix reads it).
pub async fn read_bool<R: AsyncRead + Unpin>(r: &mut R) -> Result<bool, Error> {
    Ok(read_u64(r).await? != 0)
}

/// Reads a byte string of at most `max` bytes, naming `what` if it is longer.
pub async fn read_bytes<R: AsyncRead + Unpin>(
    r: &mut R,
    max: usize,
    what: &str,
) -> Result<Vec<u8>, Error> {
    let len = read_u64(r).await?;
    if len > max as u64 {
        return Err(Error::protocol(format!(
            "{what}: {len} bytes, more than the {max} allowed"
        )));
    }
    // Grown as the bytes arrive: a length alone allocates nothing.
    let mut data = Vec::with_capacity((len as usize).min(64 * 1024));
    let got = (&mut *r).take(len).read_to_end(&mut data).await?;
    if (got as u64) < len {
        return Err(Error::Io(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!("{what}: the connection ended inside a string"),
        )));
    }
    read_padding(r, len, what).await?;
    Ok(data)
}

async fn read_padding<R: AsyncRead + Unpin>(r: &mut R, len: u64, what: &str) -> Result<(), Error> {
    let pad = padding(len);
    if pad > 0 {
        let mut z = [0u8; 8];
        r.read_exact(&mut z[..pad]).await?;
        if z[..pad].iter().any(|b| *b != 0) {
            return Err(Error::protocol(format!("{what}: non-zero padding")));
        }
    }
    Ok(())
}

/// Reads a UTF-8 string of at most `max` bytes.
pub async fn read_string<R: AsyncRead + Unpin>(
    r: &mut R,
    max: usize,
    what: &str,
) -> Result<String, Error> {
    String::from_utf8(read_bytes(r, max, what).await?)
        .map_err(|_| Error::protocol(format!("{what}: not UTF-8")))
}

/// Reads a list of at most `max_count` strings of at most `max_len` bytes each.
pub async fn read_strings<R: AsyncRead + Unpin>(
    r: &mut R,
    max_count: usize,
    max_len: usize,
    what: &str,
) -> Result<Vec<String>, Error> {
    let n = read_u64(r).await?;
    if n > max_count as u64 {
        return Err(Error::protocol(format!(
            "{what}: {n} entries, more than the {max_count} allowed"
        )));
    }
    // n <= max_count: fits; the reservation is bounded so that a large count
    // costs memory only as its entries arrive.
    let mut out = Vec::with_capacity((n as usize).min(1024));
    for _ in 0..n {
        out.push(read_string(r, max_len, what).await?);
    }
    Ok(out)
}

/// Writes one `u64`.
pub async fn write_u64<W: AsyncWrite + Unpin>(w: &mut W, v: u64) -> io::Result<()> {
    w.write_all(&v.to_le_bytes()).await
}

/// Writes a byte string with its length and padding.
pub async fn write_bytes<W: AsyncWrite + Unpin>(w: &mut W, data: &[u8]) -> io::Result<()> {
    write_u64(w, data.len() as u64).await?;
    w.write_all(data).await?;
    let pad = padding(data.len() as u64);
    if pad > 0 {
        w.write_all(&[0u8; 8][..pad]).await?;
    }
    Ok(())
}

/// Writes a list of strings.
pub async fn write_strings<W, I, S>(w: &mut W, items: I) -> io::Result<()>
where
    W: AsyncWrite + Unpin,
    I: IntoIterator<Item = S>,
    I::IntoIter: ExactSizeIterator,
    S: AsRef<[u8]>,
{
    let items = items.into_iter();
    write_u64(w, items.len() as u64).await?;
    for s in items {
        write_bytes(w, s.as_ref()).await?;
    }
    Ok(())
}

/// Writes `STDERR_ERROR` and the error in the format of protocol `version`:
/// from 1.26 on, Nix's serialised `Error` (type `Error`, level 0 = error, name,
/// message, no position, no traces); before, the message and an exit status
/// of 1.
pub async fn write_error<W: AsyncWrite + Unpin>(
    w: &mut W,
    version: u64,
    msg: &str,
) -> io::Result<()> {
    write_u64(w, STDERR_ERROR).await?;
    if minor(version) >= 26 {
        write_bytes(w, b"Error").await?;
        write_u64(w, 0).await?;
        write_bytes(w, b"Error").await?;
        write_bytes(w, msg.as_bytes()).await?;
        write_u64(w, 0).await?;
        write_u64(w, 0).await?;
    } else {
        write_bytes(w, msg.as_bytes()).await?;
        write_u64(w, 1).await?;
    }
    Ok(())
}

/// Largest piece read at once from a framed or tunnelled stream.
const PIECE: usize = 64 * 1024;

/// A framed stream inside a connection (Nix's `FramedSource`): frames of a `u64`
/// length and that many bytes (no padding), ended by an empty frame. Read as an
/// `AsyncRead` that never reads past what it hands out, so the connection can
/// go on after it (and the stream can hold several things back to back, as
/// `AddMultipleToStore`'s does); [`Framed::set_limit`] makes it end early, at a
/// declared size.
pub struct Framed<'a, R> {
    inner: &'a mut R,
    /// Bytes left in the current frame.
    remaining: u64,
    header: [u8; 8],
    header_len: usize,
    ended: bool,
    limit: Option<u64>,
}

impl<'a, R: AsyncRead + Unpin> Framed<'a, R> {
    /// The framed stream starting at the connection's next byte.
    pub fn new(inner: &'a mut R) -> Self {
        Framed {
            inner,
            remaining: 0,
            header: [0; 8],
            header_len: 0,
            ended: false,
            limit: None,
        }
    }

    /// Whether the empty frame that ends the stream was read.
    pub fn ended(&self) -> bool {
        self.ended
    }

    /// Ends reads after `limit` more bytes (`None`: at the stream's end).
    pub fn set_limit(&mut self, limit: Option<u64>) {
        self.limit = limit;
    }

    /// What is left of the limit.
    pub fn limit(&self) -> Option<u64> {
        self.limit
    }

    /// Reads and drops the rest of the stream (as Nix's `FramedSource` does when
    /// an operation fails part way), returning how many bytes were left.
    pub async fn drain(&mut self) -> io::Result<u64> {
        self.limit = None;
        let mut buf = vec![0u8; PIECE];
        let mut dropped = 0;
        loop {
            let n = self.read(&mut buf).await?;
            if n == 0 {
                return Ok(dropped);
            }
            dropped += n as u64;
        }
    }
}

impl<R: AsyncRead + Unpin> AsyncRead for Framed<'_, R> {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        use std::task::Poll;
        let this = self.get_mut();
        loop {
            if this.ended || this.limit == Some(0) || buf.remaining() == 0 {
                return Poll::Ready(Ok(()));
            }
            if this.remaining == 0 {
                while this.header_len < 8 {
                    let mut hb = tokio::io::ReadBuf::new(&mut this.header[this.header_len..]);
                    std::task::ready!(std::pin::Pin::new(&mut *this.inner).poll_read(cx, &mut hb))?;
                    let n = hb.filled().len();
                    if n == 0 {
                        return Poll::Ready(Err(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            "the connection ended inside a framed stream",
                        )));
                    }
                    this.header_len += n;
                }
                this.header_len = 0;
                this.remaining = u64::from_le_bytes(this.header);
                if this.remaining == 0 {
                    this.ended = true;
                }
                continue;
            }
            let mut max = this.remaining.min(buf.remaining() as u64);
            if let Some(l) = this.limit {
                max = max.min(l);
            }
            // max <= buf.remaining(): fits in usize
            let mut sub = tokio::io::ReadBuf::new(buf.initialize_unfilled_to(max as usize));
            std::task::ready!(std::pin::Pin::new(&mut *this.inner).poll_read(cx, &mut sub))?;
            let n = sub.filled().len();
            if n == 0 {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the connection ended inside a framed stream",
                )));
            }
            buf.advance(n);
            this.remaining -= n as u64;
            if let Some(l) = &mut this.limit {
                *l -= n as u64;
            }
            return Poll::Ready(Ok(()));
        }
    }
}

/// A stream the daemon pulls from the client with `STDERR_READ` (Nix's
/// `TunnelSource`, protocol 1.21–1.22): each request names the most bytes
/// wanted, the client answers with a string of at most that many. At most
/// `limit` bytes are asked for in all, so a client is never asked past the end
/// of the NAR it declared.
pub struct Tunnel<'a, R, W> {
    from: &'a mut R,
    to: &'a mut W,
    limit: u64,
}

impl<'a, R, W> Tunnel<'a, R, W>
where
    R: AsyncRead + Unpin + Send,
    W: AsyncWrite + Unpin + Send,
{
    /// A tunnel asking for at most `limit` bytes.
    pub fn new(from: &'a mut R, to: &'a mut W, limit: u64) -> Self {
        Tunnel { from, to, limit }
    }

    /// The next piece, `None` once `limit` bytes came or the client sent an
    /// empty answer.
    pub async fn piece(&mut self) -> io::Result<Option<Bytes>> {
        if self.limit == 0 {
            return Ok(None);
        }
        let want = self.limit.min(PIECE as u64);
        write_u64(self.to, STDERR_READ).await?;
        write_u64(self.to, want).await?;
        self.to.flush().await?;
        // want <= PIECE: fits in usize
        let data = read_bytes(self.from, want as usize, "STDERR_READ answer")
            .await
            .map_err(|e| match e {
                Error::Io(e) => e,
                other => io::Error::new(io::ErrorKind::InvalidData, other.to_string()),
            })?;
        if data.is_empty() {
            self.limit = 0;
            return Ok(None);
        }
        self.limit -= data.len() as u64;
        Ok(Some(Bytes::from(data)))
    }

    /// The stream's data as an `AsyncRead`.
    pub fn reader(&mut self) -> impl AsyncRead + Send + Unpin + '_ {
        let pieces = futures::stream::unfold(Some(self), |t| async move {
            let t = t?;
            match t.piece().await {
                Ok(Some(b)) => Some((Ok(b), Some(t))),
                Ok(None) => None,
                Err(e) => Some((Err(e), None)),
            }
        });
        tokio_util::io::StreamReader::new(Box::pin(pieces))
    }
}

/// Longest NAR string that is not file contents (a name is at most 255 bytes,
/// a symlink target 4095 in castore).
const MAX_NAR_TOKEN: u64 = 4096;

/// Copies one NAR that arrives unframed inside the connection (`AddToStore`
/// before 1.25) from `from` to `to`, reading exactly its bytes and nothing
/// after: the strings are followed far enough (parentheses, and which string
/// is a value: the one after `type`, `name`, `target`, `executable` or
/// `contents`) to know where the NAR ends; the strict NAR reader downstream
/// checks the rest. More than `max` bytes is an error. Returns the NAR's length.
pub async fn copy_unframed_nar<R, W>(from: &mut R, to: &mut W, max: u64) -> Result<u64, Error>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut total = 0u64;
    let mut depth = 0u64;
    // The magic is the first string, a value like any other.
    let mut value = true;
    let mut contents = false;
    let mut first = true;
    let mut buf = vec![0u8; PIECE];
    loop {
        let len = read_u64(from).await?;
        let padded = len
            .checked_add(padding(len) as u64)
            .ok_or_else(|| Error::protocol("NAR string length overflows"))?;
        total = total.saturating_add(8).saturating_add(padded);
        if total > max {
            return Err(Error::protocol(format!(
                "the NAR is larger than the {max} bytes allowed"
            )));
        }
        write_u64(to, len).await?;
        if contents {
            contents = false;
            let mut left = padded;
            while left > 0 {
                // min with PIECE: fits in usize
                let n = left.min(PIECE as u64) as usize;
                from.read_exact(&mut buf[..n]).await?;
                to.write_all(&buf[..n]).await?;
                left -= n as u64;
            }
            continue;
        }
        if len > MAX_NAR_TOKEN {
            return Err(Error::protocol(format!(
                "NAR string of {len} bytes where a name, target or keyword belongs"
            )));
        }
        // padded <= MAX_NAR_TOKEN + 7: fits
        let token = &mut buf[..padded as usize];
        from.read_exact(token).await?;
        to.write_all(token).await?;
        // len <= padded: fits
        let token = &token[..len as usize];
        if first {
            first = false;
            if token != b"nix-archive-1" {
                return Err(Error::protocol("not a NAR: no nix-archive-1 magic"));
            }
        }
        if value {
            value = false;
            continue;
        }
        match token {
            b"(" => depth += 1,
            b")" => {
                depth = depth
                    .checked_sub(1)
                    .ok_or_else(|| Error::protocol("NAR closes more than it opened"))?;
                if depth == 0 {
                    to.flush().await?;
                    return Ok(total);
                }
            }
            b"contents" => contents = true,
            b"type" | b"name" | b"target" | b"executable" => value = true,
            _ => {}
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn strings_are_padded_and_bounded() {
        let mut out = Vec::new();
        write_bytes(&mut out, b"hello").await.unwrap();
        assert_eq!(out, b"\x05\0\0\0\0\0\0\0hello\0\0\0");
        let mut r = &out[..];
        assert_eq!(read_string(&mut r, 5, "s").await.unwrap(), "hello");
        let mut r = &out[..];
        let err = read_string(&mut r, 4, "s").await.unwrap_err();
        assert!(err.to_string().contains("more than the 4 allowed"), "{err}");
        let mut bad = out.clone();
        bad[15] = 1;
        let err = read_string(&mut &bad[..], 5, "s").await.unwrap_err();
        assert!(err.to_string().contains("non-zero padding"), "{err}");
        let mut empty = Vec::new();
        write_bytes(&mut empty, b"").await.unwrap();
        assert_eq!(empty, [0u8; 8]);
    }

    #[tokio::test]
    async fn framed_stream_ends_at_the_empty_frame() {
        let mut input = Vec::new();
        for frame in [&b"abc"[..], b"defgh"] {
            input.extend((frame.len() as u64).to_le_bytes());
            input.extend(frame);
        }
        input.extend(0u64.to_le_bytes());
        input.extend(b"after");
        let mut r = &input[..];
        let mut framed = Framed::new(&mut r);
        let mut data = Vec::new();
        framed.read_to_end(&mut data).await.unwrap();
        assert_eq!(data, b"abcdefgh");
        assert!(framed.ended());
        assert_eq!(r, b"after");
    }

    #[tokio::test]
    async fn errors_in_each_format() {
        let mut new = Vec::new();
        write_error(&mut new, version(1, 26), "boom").await.unwrap();
        let mut expected = STDERR_ERROR.to_le_bytes().to_vec();
        for part in [
            &b"\x05\0\0\0\0\0\0\0Error\0\0\0"[..],
            &[0u8; 8],
            b"\x05\0\0\0\0\0\0\0Error\0\0\0",
            b"\x04\0\0\0\0\0\0\0boom\0\0\0\0",
            &[0u8; 8],
            &[0u8; 8],
        ] {
            expected.extend(part);
        }
        assert_eq!(new, expected);
        let mut old = Vec::new();
        write_error(&mut old, version(1, 25), "boom").await.unwrap();
        let mut expected = STDERR_ERROR.to_le_bytes().to_vec();
        expected.extend(b"\x04\0\0\0\0\0\0\0boom\0\0\0\0");
        expected.extend(1u64.to_le_bytes());
        assert_eq!(old, expected);
    }
}
