//! The compressions of NAR files, by URL suffix, as Nix names them.

use std::pin::Pin;
use std::task::{Context, Poll, ready};

use async_compression::Level;
use async_compression::tokio::bufread::{BrotliDecoder, BzDecoder, ZstdDecoder};
use async_compression::tokio::write::{XzEncoder, ZstdEncoder};
use bytes::Bytes;
use tokio::io::{AsyncBufRead, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio_util::io::StreamReader;

/// NAR bytes handed to the compressor at a time. Each block is read whole
/// before it is compressed, so the compressor's input, and with it its output,
/// is the same on every request; compressing it holds a runtime thread about as
/// long as the reads of a 256 KiB buffer did.
const BLOCK: usize = 256 * 1024;

/// A NAR file's compression.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// `.nar`, `Compression: none`.
    None,
    /// `.nar.xz` (Nix's default for `nix copy --to`).
    Xz,
    /// `.nar.zst`.
    Zstd,
    /// `.nar.bz2` (what a narinfo without `Compression` means).
    Bzip2,
    /// `.nar.br`.
    Brotli,
}

impl Compression {
    /// Every compression, for tests and listings.
    pub const ALL: [Compression; 5] = [
        Compression::None,
        Compression::Xz,
        Compression::Zstd,
        Compression::Bzip2,
        Compression::Brotli,
    ];

    /// The narinfo `Compression:` value.
    pub fn name(self) -> &'static str {
        match self {
            Compression::None => "none",
            Compression::Xz => "xz",
            Compression::Zstd => "zstd",
            Compression::Bzip2 => "bzip2",
            Compression::Brotli => "br",
        }
    }

    /// What Nix appends to `.nar` in a NAR file's name.
    pub fn suffix(self) -> &'static str {
        match self {
            Compression::None => "",
            Compression::Xz => ".xz",
            Compression::Zstd => ".zst",
            Compression::Bzip2 => ".bz2",
            Compression::Brotli => ".br",
        }
    }

    /// The compression a narinfo `Compression:` value names.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.name() == name)
    }

    /// Splits `<stem>.nar<suffix>` into the stem and the compression.
    pub fn split_file_name(name: &str) -> Option<(&str, Self)> {
        // The longest suffix first would matter only if one were a prefix of
        // another after `.nar`; none is, so order does not.
        Self::ALL.into_iter().find_map(|c| {
            let stem = name.strip_suffix(c.suffix())?.strip_suffix(".nar")?;
            Some((stem, c))
        })
    }

    /// A reader decompressing `input`, stopping at the end of the first
    /// compressed stream (Nix writes one). Its output must be checked against
    /// the NAR's hash: the xz container's own check is skipped (see
    /// [`XzReader`]).
    pub fn decoder<'a, R: AsyncBufRead + Send + 'a>(
        self,
        input: R,
    ) -> Pin<Box<dyn AsyncRead + Send + 'a>> {
        match self {
            Compression::None => Box::pin(input),
            Compression::Xz => Box::pin(XzReader::new(Box::pin(input))),
            Compression::Zstd => Box::pin(ZstdDecoder::new(input)),
            Compression::Bzip2 => Box::pin(BzDecoder::new(input)),
            Compression::Brotli => Box::pin(BrotliDecoder::new(input)),
        }
    }

    /// A reader compressing `input` for a download, tuned for speed (the NAR is
    /// rendered per request, so compression time is paid per request); `None` for
    /// the compressions cairn does not serve (bzip2, brotli).
    ///
    /// The output is a function of `input`'s bytes alone (it is served as
    /// immutable): the compressor gets them in blocks of [`BLOCK`] bytes and is
    /// never flushed before the end. (A compressing reader flushes whenever its
    /// input is not ready, which made the bytes depend on the rendering's timing.)
    /// Memory stays at one block, one block's output and the compressor's window.
    pub fn encoder<'a, R: AsyncRead + Send + 'a>(
        self,
        input: R,
    ) -> Option<Pin<Box<dyn AsyncRead + Send + 'a>>> {
        match self {
            Compression::None => Some(Box::pin(input)),
            Compression::Zstd => Some(compressed(
                input,
                ZstdEncoder::with_quality(Vec::new(), Level::Precise(1)),
                ZstdEncoder::get_mut,
            )),
            Compression::Xz => Some(compressed(
                input,
                XzEncoder::with_quality(Vec::new(), Level::Precise(1)),
                XzEncoder::get_mut,
            )),
            Compression::Bzip2 | Compression::Brotli => None,
        }
    }
}

/// `input` through `encoder`, a compressor writing into a `Vec` (`output` gives
/// it), block by block; see [`Compression::encoder`].
fn compressed<'a, R, E>(
    input: R,
    mut encoder: E,
    output: fn(&mut E) -> &mut Vec<u8>,
) -> Pin<Box<dyn AsyncRead + Send + 'a>>
where
    R: AsyncRead + Send + 'a,
    E: AsyncWrite + Unpin + Send + 'a,
{
    let stream = async_stream::try_stream! {
        let mut input = Box::pin(input);
        let mut block = vec![0u8; BLOCK];
        loop {
            let mut filled = 0;
            while filled < BLOCK {
                match input.read(&mut block[filled..]).await? {
                    0 => break,
                    n => filled += n,
                }
            }
            // Writing into a `Vec` never waits: each write compresses at once.
            encoder.write_all(&block[..filled]).await?;
            let end = filled < BLOCK;
            if end {
                encoder.shutdown().await?;
            }
            let out = std::mem::take(output(&mut encoder));
            if !out.is_empty() {
                yield Bytes::from(out);
            }
            if end {
                break;
            }
        }
    };
    let stream: Pin<Box<dyn futures::Stream<Item = std::io::Result<Bytes>> + Send + 'a>> =
        Box::pin(stream);
    Box::pin(StreamReader::new(stream))
}

/// Memory an xz stream may make its decoder allocate (its dictionary, mostly).
/// Nix's presets use at most 64 MiB; a header asking for more is refused
/// rather than trusted.
const XZ_MEMORY_LIMIT: u64 = 256 << 20;

/// xz decompression of the first stream of `inner`, without the container's
/// integrity check (CRC64 by default): every caller hashes the decompressed NAR
/// and checks it against the NarHash its narinfo names, which covers the same
/// bytes, and the check cost 13% of a pulled path's CPU.
struct XzReader<R> {
    inner: R,
    /// `Ok(None)` after the stream's end: later reads are its end of file.
    /// `Err` if liblzma could not set up (then every read says so).
    stream: Result<Option<liblzma::stream::Stream>, liblzma::stream::Error>,
}

impl<R> XzReader<R> {
    fn new(inner: R) -> Self {
        let stream = liblzma::stream::Stream::new_stream_decoder(
            XZ_MEMORY_LIMIT,
            liblzma::stream::IGNORE_CHECK,
        )
        .map(Some);
        Self { inner, stream }
    }
}

fn xz_error(e: liblzma::stream::Error) -> std::io::Error {
    let message = match e {
        liblzma::stream::Error::MemLimit => {
            format!(
                "xz: the stream needs more than {XZ_MEMORY_LIMIT} bytes of memory to decompress"
            )
        }
        e => format!("xz: {e}"),
    };
    std::io::Error::new(std::io::ErrorKind::InvalidData, message)
}

impl<R: AsyncBufRead + Unpin> AsyncRead for XzReader<R> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        use liblzma::stream::{Action, Status};
        let this = self.get_mut();
        loop {
            if buf.remaining() == 0 {
                return Poll::Ready(Ok(()));
            }
            let stream = match this.stream.as_mut() {
                Ok(Some(stream)) => stream,
                Ok(None) => return Poll::Ready(Ok(())),
                Err(e) => return Poll::Ready(Err(xz_error(*e))),
            };
            let input = ready!(Pin::new(&mut this.inner).poll_fill_buf(cx))?;
            let end_of_input = input.is_empty();
            let action = if end_of_input {
                Action::Finish
            } else {
                Action::Run
            };
            let (in_before, out_before) = (stream.total_in(), stream.total_out());
            let status = stream.process(input, buf.initialize_unfilled(), action);
            let consumed = (stream.total_in() - in_before) as usize;
            let produced = (stream.total_out() - out_before) as usize;
            Pin::new(&mut this.inner).consume(consumed);
            buf.advance(produced);
            match status {
                Err(e) if end_of_input => {
                    return Poll::Ready(Err(std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        format!("the xz stream ends early ({e})"),
                    )));
                }
                Err(e) => return Poll::Ready(Err(xz_error(e))),
                Ok(Status::StreamEnd) => {
                    this.stream = Ok(None);
                    return Poll::Ready(Ok(()));
                }
                Ok(_) if produced > 0 => return Poll::Ready(Ok(())),
                Ok(_) if end_of_input => {
                    return Poll::Ready(Err(std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        "the xz stream ends early",
                    )));
                }
                Ok(_) if consumed == 0 => {
                    return Poll::Ready(Err(std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        "xz: the decoder makes no progress",
                    )));
                }
                // Input taken (headers, or a block's start) but nothing out yet.
                Ok(_) => {}
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn file_names() {
        let h = "0f8hj6j4c64b13ncpyx3pcwak3h3gx2p92ynyd9f4w6kd3sv0mas";
        for c in Compression::ALL {
            let name = format!("{h}.nar{}", c.suffix());
            assert_eq!(Compression::split_file_name(&name), Some((h, c)));
            assert_eq!(Compression::from_name(c.name()), Some(c));
        }
        assert_eq!(Compression::split_file_name("x.nar.gz"), None);
        assert_eq!(Compression::split_file_name("x.narinfo"), None);
        assert_eq!(Compression::from_name("gzip"), None);
    }

    fn xz(data: &[u8], check: liblzma::stream::Check) -> Vec<u8> {
        let mut enc = liblzma::stream::Stream::new_easy_encoder(6, check).unwrap();
        let mut out = Vec::with_capacity(data.len() + 1024);
        let status = enc
            .process_vec(data, &mut out, liblzma::stream::Action::Finish)
            .unwrap();
        assert_eq!(status, liblzma::stream::Status::StreamEnd);
        out
    }

    async fn unxz(file: &[u8]) -> (std::io::Result<Vec<u8>>, usize) {
        let mut input = file;
        // Borrowed, so that what the decoder left unread can be counted.
        let unread = &mut input;
        let mut out = Vec::new();
        let r = Compression::Xz
            .decoder(unread)
            .read_to_end(&mut out)
            .await
            .map(|_| out);
        (r, input.len())
    }

    fn sample() -> Vec<u8> {
        (0..300_000u32)
            .flat_map(|i| (i % 251).to_le_bytes())
            .collect()
    }

    /// Whatever its check (CRC64 is Nix's, via liblzma's default), the stream
    /// decodes to its input and stops at its end, leaving what follows unread.
    #[tokio::test]
    async fn xz_decodes_the_first_stream_whatever_its_check() {
        use liblzma::stream::Check;
        let data = sample();
        for check in [Check::None, Check::Crc32, Check::Crc64, Check::Sha256] {
            let mut file = xz(&data, check);
            file.extend_from_slice(b"after");
            let (out, left) = unxz(&file).await;
            assert_eq!(out.unwrap(), data, "{check:?}");
            assert_eq!(left, 5, "{check:?}");
        }
    }

    /// A stream cut anywhere is an error, never a clean short output.
    #[tokio::test]
    async fn xz_cut_short_is_an_error() {
        let file = xz(&sample(), liblzma::stream::Check::Crc64);
        for cut in [
            0,
            1,
            12,
            24,
            file.len() / 2,
            file.len() - 13,
            file.len() - 1,
        ] {
            let (out, _) = unxz(&file[..cut]).await;
            let e = out.expect_err("a truncated stream must fail");
            assert_eq!(
                e.kind(),
                std::io::ErrorKind::UnexpectedEof,
                "cut at {cut}: {e}"
            );
        }
    }

    /// Garbage, and a block whose dictionary would need more than the limit,
    /// are refused with what is wrong.
    #[tokio::test]
    async fn xz_refuses_garbage_and_huge_dictionaries() {
        let (out, _) = unxz(b"this is not xz at all, not even its magic").await;
        assert_eq!(out.unwrap_err().kind(), std::io::ErrorKind::InvalidData);

        // Stream header (12 bytes), then the block header: size, flags,
        // LZMA2's filter id and property size, the dictionary size code, padding,
        // CRC32. Code 40 asks for a 4 GiB dictionary.
        let mut file = xz(b"small", liblzma::stream::Check::Crc64);
        assert_eq!(&file[12..17], &[0x02, 0x00, 0x21, 0x01, file[16]]);
        file[16] = 40;
        let crc = crc32(&file[12..20]);
        file[20..24].copy_from_slice(&crc.to_le_bytes());
        let (out, _) = unxz(&file).await;
        let e = out.unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::InvalidData);
        assert!(e.to_string().contains("more than 268435456 bytes"), "{e}");
    }

    fn crc32(data: &[u8]) -> u32 {
        let mut crc = !0u32;
        for &b in data {
            crc ^= u32::from(b);
            for _ in 0..8 {
                crc = if crc & 1 == 1 {
                    (crc >> 1) ^ 0xEDB8_8320
                } else {
                    crc >> 1
                };
            }
        }
        !crc
    }
}
