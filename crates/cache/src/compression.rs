//! The compressions of NAR files, by URL suffix, as Nix names them.

use std::pin::Pin;

use async_compression::Level;
use async_compression::tokio::bufread::{
    BrotliDecoder, BzDecoder, XzDecoder, XzEncoder, ZstdDecoder, ZstdEncoder,
};
use tokio::io::{AsyncBufRead, AsyncRead, BufReader};

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
    pub fn encoder<'a, R: AsyncRead + Send + 'a>(
        self,
        input: R,
    ) -> Option<Pin<Box<dyn AsyncRead + Send + 'a>>> {
        let input = BufReader::with_capacity(256 * 1024, input);
        match self {
            Compression::None => Some(Box::pin(input)),
            Compression::Zstd => Some(Box::pin(ZstdEncoder::with_quality(
                input,
                Level::Precise(1),
            ))),
            Compression::Xz => Some(Box::pin(XzEncoder::with_quality(input, Level::Precise(1)))),
            Compression::Bzip2 | Compression::Brotli => None,
        }
    }
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
