//! The compressions of NAR files, by URL suffix, as Nix names them.

use std::pin::Pin;

use async_compression::Level;
use async_compression::tokio::bufread::{BrotliDecoder, BzDecoder, XzDecoder, ZstdDecoder};
use async_compression::tokio::write::{XzEncoder, ZstdEncoder};
use bytes::Bytes;
use tokio::io::{AsyncBufRead, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
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
    /// compressed stream (Nix writes one).
    pub fn decoder<'a, R: AsyncBufRead + Send + 'a>(
        self,
        input: R,
    ) -> Pin<Box<dyn AsyncRead + Send + 'a>> {
        match self {
            Compression::None => Box::pin(input),
            Compression::Xz => Box::pin(XzDecoder::new(input)),
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

#[cfg(test)]
#[allow(clippy::unwrap_used)]
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
}
