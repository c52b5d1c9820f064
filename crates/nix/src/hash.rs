//! Nix's hashes: md5, sha1, sha256 and sha512 digests and their text forms.
//!
//! A [`NixHash`] is an algorithm plus a digest of exactly that algorithm's length (the
//! type cannot hold anything else). It parses every form Nix 2.x accepts:
//!
//! | form                   | example                         | parser                                  |
//! |------------------------|---------------------------------|-----------------------------------------|
//! | `algo:hex`             | `sha1:0beec7b5…`                | [`NixHash::parse_any_prefixed`]         |
//! | `algo:nixbase32`       | `sha256:1b8m03r6…`              | [`NixHash::parse_any_prefixed`]         |
//! | `algo:base64`          | `sha256:LCa0a2j/…=`             | [`NixHash::parse_any_prefixed`]         |
//! | SRI `algo-base64`      | `sha256-LCa0a2j/…=`             | [`NixHash::parse_sri`] (and the above)  |
//! | bare hex/nix32/base64  | `1b8m03r6…` with a known algo   | [`NixHash::parse_non_sri_unprefixed`]   |
//!
//! As in Nix, the encoding of a non-SRI hash is chosen by its length (hex, then
//! nixbase32, then base64), and the algorithm prefix wins over `-` when both
//! characters appear. [`NixHash::parse_any`] is Nix's `Hash::parseAny`: a prefix is
//! optional when the algorithm is known from context, and must agree with it.
//!
//! Deliberate strictness compared to Nix 2.8 (which never prints such strings): base64
//! must be canonical (standard alphabet, zero trailing bits, padding either complete
//! or, in SRI form only, absent). Nix's own base64 decoder skips newlines, stops at
//! the first `=` and ignores trailing bits.
//!
//! [`HashAlgo::hasher`] gives a streaming [`Hasher`] that implements
//! [`std::io::Write`]; [`HashingWriter`] hashes and counts what passes through to an
//! inner writer.
//!
//! ```
//! use cairn_nix::hash::{HashAlgo, NixHash};
//!
//! let h = HashAlgo::Sha256.digest(b"");
//! assert_eq!(h.to_nix32_prefixed(), "sha256:0mdqa9w1p6cmli6976v4wi0sw9r4p5prkj7lzfd1877wk11c9c73");
//! assert_eq!(h.to_sri(), "sha256-47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=");
//! assert_eq!(NixHash::parse_any_prefixed(&h.to_sri()).unwrap(), h);
//! assert_eq!(NixHash::parse_non_sri_unprefixed(&h.to_hex(), HashAlgo::Sha256).unwrap(), h);
//! ```

use std::fmt;
use std::io;
use std::str::FromStr;

use data_encoding::{BASE64, BASE64_NOPAD, DecodeKind};
use sha2::Digest as _;

use crate::nixbase32::{self, Nixbase32Error};

/// A hash algorithm Nix supports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum HashAlgo {
    /// MD5 (16 bytes).
    Md5,
    /// SHA-1 (20 bytes).
    Sha1,
    /// SHA-256 (32 bytes).
    Sha256,
    /// SHA-512 (64 bytes).
    Sha512,
}

impl HashAlgo {
    /// All algorithms, in Nix's order.
    pub const ALL: [HashAlgo; 4] = [
        HashAlgo::Md5,
        HashAlgo::Sha1,
        HashAlgo::Sha256,
        HashAlgo::Sha512,
    ];

    /// Nix's name: `md5`, `sha1`, `sha256` or `sha512`.
    pub const fn name(self) -> &'static str {
        match self {
            HashAlgo::Md5 => "md5",
            HashAlgo::Sha1 => "sha1",
            HashAlgo::Sha256 => "sha256",
            HashAlgo::Sha512 => "sha512",
        }
    }

    /// Parses Nix's name (exact, lowercase, as Nix's `parseHashType`).
    pub fn from_name(name: &str) -> Option<HashAlgo> {
        match name {
            "md5" => Some(HashAlgo::Md5),
            "sha1" => Some(HashAlgo::Sha1),
            "sha256" => Some(HashAlgo::Sha256),
            "sha512" => Some(HashAlgo::Sha512),
            _ => None,
        }
    }

    /// Length of a digest in bytes.
    pub const fn digest_len(self) -> usize {
        match self {
            HashAlgo::Md5 => 16,
            HashAlgo::Sha1 => 20,
            HashAlgo::Sha256 => 32,
            HashAlgo::Sha512 => 64,
        }
    }

    /// Length of a digest in lowercase hex.
    pub const fn hex_len(self) -> usize {
        self.digest_len() * 2
    }

    /// Length of a digest in nixbase32.
    pub const fn nix32_len(self) -> usize {
        nixbase32::encoded_len(self.digest_len())
    }

    /// Length of a digest in padded base64.
    pub const fn base64_len(self) -> usize {
        self.digest_len().div_ceil(3) * 4
    }

    /// A streaming hasher for this algorithm.
    pub fn hasher(self) -> Hasher {
        Hasher::new(self)
    }

    /// Hashes `data` in one go.
    pub fn digest(self, data: impl AsRef<[u8]>) -> NixHash {
        let mut h = self.hasher();
        h.update(data.as_ref());
        h.finalize()
    }
}

impl fmt::Display for HashAlgo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for HashAlgo {
    type Err = HashError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        HashAlgo::from_name(s).ok_or_else(|| HashError::UnknownAlgo { name: truncate(s) })
    }
}

/// A text encoding of a digest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HashEncoding {
    /// Lowercase hexadecimal (Nix's "base16").
    Hex,
    /// Nix's base-32 ([`nixbase32`]).
    Nix32,
    /// Standard base64 with padding.
    Base64,
}

/// A digest together with its algorithm. The digest always has the algorithm's
/// length: the variants hold fixed-size arrays.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum NixHash {
    /// An MD5 digest.
    Md5([u8; 16]),
    /// A SHA-1 digest.
    Sha1([u8; 20]),
    /// A SHA-256 digest.
    Sha256([u8; 32]),
    /// A SHA-512 digest.
    Sha512([u8; 64]),
}

/// Why a hash (or hash algorithm) could not be parsed.
///
/// Inputs quoted in errors are cut to 200 characters.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HashError {
    /// The algorithm name is not one of `md5`, `sha1`, `sha256`, `sha512`.
    #[error("unknown hash algorithm '{name}'")]
    UnknownAlgo {
        /// The name found.
        name: String,
    },
    /// The hash has no `algo:` or `algo-` prefix and no algorithm was given.
    #[error("hash '{input}' does not include a type, nor is the type otherwise known from context")]
    MissingAlgo {
        /// The input.
        input: String,
    },
    /// The prefix names a different algorithm than the one expected.
    #[error("hash '{input}' should have type '{expected}'")]
    AlgoMismatch {
        /// The input.
        input: String,
        /// The algorithm required by the caller.
        expected: HashAlgo,
        /// The algorithm in the prefix.
        found: HashAlgo,
    },
    /// The hash has a length that is none of hex, nixbase32 or base64 for its algorithm.
    #[error("hash '{input}' has wrong length for hash type '{algo}'")]
    WrongLength {
        /// The input (without prefix).
        input: String,
        /// The algorithm.
        algo: HashAlgo,
    },
    /// Not hexadecimal.
    #[error("invalid base-16 hash '{input}': invalid character at offset {position}")]
    InvalidHex {
        /// The input (without prefix).
        input: String,
        /// Offset of the first invalid character.
        position: usize,
    },
    /// Not nixbase32.
    #[error("invalid base-32 hash '{input}': {source}")]
    InvalidNix32 {
        /// The input (without prefix).
        input: String,
        /// What is wrong with it.
        source: Nixbase32Error,
    },
    /// Not canonical base64, or of the wrong length.
    #[error("invalid {form} hash '{input}': {reason}")]
    InvalidBase64 {
        /// The input (without prefix).
        input: String,
        /// `base-64` or `SRI`.
        form: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// An SRI hash was required but the input is not `algo-base64`.
    #[error("hash '{input}' is not SRI")]
    NotSri {
        /// The input.
        input: String,
    },
    /// A raw digest of the wrong length was given for an algorithm.
    #[error("digest of {len} bytes is not a valid {algo} digest ({} bytes)", algo.digest_len())]
    WrongDigestLength {
        /// The algorithm.
        algo: HashAlgo,
        /// The length given.
        len: usize,
    },
}

/// Cuts an input to at most 200 characters for error messages.
fn truncate(s: &str) -> String {
    const MAX: usize = 200;
    match s.char_indices().nth(MAX) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_owned(),
    }
}

impl NixHash {
    /// Builds a hash from an algorithm and a raw digest, which must have the
    /// algorithm's length.
    pub fn from_digest(algo: HashAlgo, digest: &[u8]) -> Result<NixHash, HashError> {
        let wrong = || HashError::WrongDigestLength {
            algo,
            len: digest.len(),
        };
        Ok(match algo {
            HashAlgo::Md5 => NixHash::Md5(digest.try_into().map_err(|_| wrong())?),
            HashAlgo::Sha1 => NixHash::Sha1(digest.try_into().map_err(|_| wrong())?),
            HashAlgo::Sha256 => NixHash::Sha256(digest.try_into().map_err(|_| wrong())?),
            HashAlgo::Sha512 => NixHash::Sha512(digest.try_into().map_err(|_| wrong())?),
        })
    }

    /// The algorithm.
    pub const fn algo(&self) -> HashAlgo {
        match self {
            NixHash::Md5(_) => HashAlgo::Md5,
            NixHash::Sha1(_) => HashAlgo::Sha1,
            NixHash::Sha256(_) => HashAlgo::Sha256,
            NixHash::Sha512(_) => HashAlgo::Sha512,
        }
    }

    /// The raw digest; its length is `self.algo().digest_len()`.
    pub fn digest(&self) -> &[u8] {
        match self {
            NixHash::Md5(d) => d,
            NixHash::Sha1(d) => d,
            NixHash::Sha256(d) => d,
            NixHash::Sha512(d) => d,
        }
    }

    /// Parses a hash that carries its algorithm: `algo:hex`, `algo:nix32`,
    /// `algo:base64` or SRI `algo-base64` (Nix's `Hash::parseAnyPrefixed`).
    pub fn parse_any_prefixed(s: &str) -> Result<NixHash, HashError> {
        match split_prefix(s)? {
            Some((algo, rest, is_sri)) => parse_rest(rest, algo, is_sri),
            None => Err(HashError::MissingAlgo { input: truncate(s) }),
        }
    }

    /// Parses a hash whose prefix is optional when `algo` is given; when both are
    /// present they must agree (Nix's `Hash::parseAny`).
    pub fn parse_any(s: &str, algo: Option<HashAlgo>) -> Result<NixHash, HashError> {
        match (split_prefix(s)?, algo) {
            (Some((found, rest, is_sri)), expected) => {
                if let Some(expected) = expected
                    && expected != found
                {
                    return Err(HashError::AlgoMismatch {
                        input: truncate(s),
                        expected,
                        found,
                    });
                }
                parse_rest(rest, found, is_sri)
            }
            (None, Some(algo)) => parse_rest(s, algo, false),
            (None, None) => Err(HashError::MissingAlgo { input: truncate(s) }),
        }
    }

    /// Parses an SRI hash, `algo-base64` (Nix's `Hash::parseSRI`).
    pub fn parse_sri(s: &str) -> Result<NixHash, HashError> {
        let (name, rest) = s
            .split_once('-')
            .ok_or_else(|| HashError::NotSri { input: truncate(s) })?;
        let algo = name.parse()?;
        parse_rest(rest, algo, true)
    }

    /// Parses a bare hex, nixbase32 or base64 digest of a known algorithm, telling
    /// them apart by length (Nix's `Hash::parseNonSRIUnprefixed`).
    pub fn parse_non_sri_unprefixed(s: &str, algo: HashAlgo) -> Result<NixHash, HashError> {
        parse_rest(s, algo, false)
    }

    /// Encodes the digest alone.
    pub fn encode(&self, encoding: HashEncoding) -> String {
        match encoding {
            HashEncoding::Hex => hex_encode(self.digest()),
            HashEncoding::Nix32 => nixbase32::encode(self.digest()),
            HashEncoding::Base64 => BASE64.encode(self.digest()),
        }
    }

    /// Encodes as `algo:<encoded digest>` (Nix's `to_string(base, true)`).
    pub fn encode_prefixed(&self, encoding: HashEncoding) -> String {
        format!("{}:{}", self.algo(), self.encode(encoding))
    }

    /// Lowercase hex digest, no prefix.
    pub fn to_hex(&self) -> String {
        self.encode(HashEncoding::Hex)
    }

    /// Nixbase32 digest, no prefix.
    pub fn to_nix32(&self) -> String {
        self.encode(HashEncoding::Nix32)
    }

    /// Padded base64 digest, no prefix.
    pub fn to_base64(&self) -> String {
        self.encode(HashEncoding::Base64)
    }

    /// `algo:hex`.
    pub fn to_hex_prefixed(&self) -> String {
        self.encode_prefixed(HashEncoding::Hex)
    }

    /// `algo:nix32`, the form of narinfo's `NarHash` and `FileHash`.
    pub fn to_nix32_prefixed(&self) -> String {
        self.encode_prefixed(HashEncoding::Nix32)
    }

    /// SRI form, `algo-base64`.
    pub fn to_sri(&self) -> String {
        format!("{}-{}", self.algo(), self.to_base64())
    }
}

/// Prints `algo:nix32` ([`NixHash::to_nix32_prefixed`]).
impl fmt::Display for NixHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_nix32_prefixed())
    }
}

impl fmt::Debug for NixHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NixHash({})", self.to_hex_prefixed())
    }
}

/// Parses with [`NixHash::parse_any_prefixed`].
impl FromStr for NixHash {
    type Err = HashError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        NixHash::parse_any_prefixed(s)
    }
}

/// Splits `algo:rest` or `algo-rest`; `:` is looked for first, as in Nix. Returns
/// `None` when there is neither separator, and whether the form is SRI.
fn split_prefix(s: &str) -> Result<Option<(HashAlgo, &str, bool)>, HashError> {
    let (name, rest, is_sri) = if let Some((name, rest)) = s.split_once(':') {
        (name, rest, false)
    } else if let Some((name, rest)) = s.split_once('-') {
        (name, rest, true)
    } else {
        return Ok(None);
    };
    Ok(Some((name.parse()?, rest, is_sri)))
}

/// Nix's `Hash::Hash(rest, type, isSRI)`: the encoding is chosen by length.
fn parse_rest(rest: &str, algo: HashAlgo, is_sri: bool) -> Result<NixHash, HashError> {
    let bytes = rest.as_bytes();
    let digest: Vec<u8> = if !is_sri && bytes.len() == algo.hex_len() {
        hex_decode(bytes).map_err(|position| HashError::InvalidHex {
            input: truncate(rest),
            position,
        })?
    } else if !is_sri && bytes.len() == algo.nix32_len() {
        nixbase32::decode(bytes).map_err(|source| HashError::InvalidNix32 {
            input: truncate(rest),
            source,
        })?
    } else if is_sri || bytes.len() == algo.base64_len() {
        let form = if is_sri { "SRI" } else { "base-64" };
        let invalid = |reason: String| HashError::InvalidBase64 {
            input: truncate(rest),
            form,
            reason,
        };
        let unpadded_len = algo.digest_len().div_ceil(3) * 4
            - match algo.digest_len() % 3 {
                1 => 2,
                2 => 1,
                _ => 0,
            };
        let engine = if is_sri && bytes.len() == unpadded_len {
            &BASE64_NOPAD
        } else if bytes.len() == algo.base64_len() {
            &BASE64
        } else {
            return Err(invalid(format!(
                "expected {} base64 characters for a {} digest",
                algo.base64_len(),
                algo
            )));
        };
        engine.decode(bytes).map_err(|e| {
            invalid(match e.kind {
                DecodeKind::Trailing => {
                    format!("non-zero trailing bits at offset {}", e.position)
                }
                _ => format!("{} at offset {}", e.kind, e.position),
            })
        })?
    } else {
        return Err(HashError::WrongLength {
            input: truncate(rest),
            algo,
        });
    };
    NixHash::from_digest(algo, &digest)
}

fn hex_encode(bytes: &[u8]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for &b in bytes {
        s.push(char::from(HEX[usize::from(b >> 4)]));
        s.push(char::from(HEX[usize::from(b & 0xf)]));
    }
    s
}

/// Decodes hex of either case (Nix accepts `A`-`F`); `Err` holds the offset of the
/// first bad character. The length must be even.
fn hex_decode(s: &[u8]) -> Result<Vec<u8>, usize> {
    fn digit(c: u8) -> Option<u8> {
        match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            b'A'..=b'F' => Some(c - b'A' + 10),
            _ => None,
        }
    }
    debug_assert!(s.len().is_multiple_of(2));
    s.chunks_exact(2)
        .enumerate()
        .map(|(i, pair)| {
            let hi = digit(pair[0]).ok_or(2 * i)?;
            let lo = digit(pair[1]).ok_or(2 * i + 1)?;
            Ok(hi << 4 | lo)
        })
        .collect()
}

/// A streaming hasher for any [`HashAlgo`]. Feed it with [`Hasher::update`] or
/// through [`std::io::Write`] (which never fails), then call [`Hasher::finalize`].
#[derive(Clone)]
pub struct Hasher(HasherInner);

#[derive(Clone)]
enum HasherInner {
    Md5(md5::Md5),
    Sha1(sha1::Sha1),
    Sha256(sha2::Sha256),
    Sha512(sha2::Sha512),
}

impl Hasher {
    /// A hasher for `algo`.
    pub fn new(algo: HashAlgo) -> Hasher {
        Hasher(match algo {
            HashAlgo::Md5 => HasherInner::Md5(md5::Md5::new()),
            HashAlgo::Sha1 => HasherInner::Sha1(sha1::Sha1::new()),
            HashAlgo::Sha256 => HasherInner::Sha256(sha2::Sha256::new()),
            HashAlgo::Sha512 => HasherInner::Sha512(sha2::Sha512::new()),
        })
    }

    /// The algorithm.
    pub fn algo(&self) -> HashAlgo {
        match self.0 {
            HasherInner::Md5(_) => HashAlgo::Md5,
            HasherInner::Sha1(_) => HashAlgo::Sha1,
            HasherInner::Sha256(_) => HashAlgo::Sha256,
            HasherInner::Sha512(_) => HashAlgo::Sha512,
        }
    }

    /// Adds `data` to the hash.
    pub fn update(&mut self, data: &[u8]) {
        match &mut self.0 {
            HasherInner::Md5(h) => h.update(data),
            HasherInner::Sha1(h) => h.update(data),
            HasherInner::Sha256(h) => h.update(data),
            HasherInner::Sha512(h) => h.update(data),
        }
    }

    /// The hash of everything added.
    pub fn finalize(self) -> NixHash {
        match self.0 {
            HasherInner::Md5(h) => NixHash::Md5(h.finalize().into()),
            HasherInner::Sha1(h) => NixHash::Sha1(h.finalize().into()),
            HasherInner::Sha256(h) => NixHash::Sha256(h.finalize().into()),
            HasherInner::Sha512(h) => NixHash::Sha512(h.finalize().into()),
        }
    }
}

impl fmt::Debug for Hasher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Hasher").field(&self.algo()).finish()
    }
}

impl io::Write for Hasher {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.update(buf);
        Ok(buf.len())
    }

    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        self.update(buf);
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A writer that hashes and counts every byte it passes on to `inner`.
///
/// Only bytes the inner writer accepted are hashed, so the hash matches what was
/// written even after a short write or an error.
#[derive(Debug)]
pub struct HashingWriter<W> {
    inner: W,
    hasher: Hasher,
    len: u64,
}

impl<W> HashingWriter<W> {
    /// Wraps `inner`, hashing with `algo`.
    pub fn new(inner: W, algo: HashAlgo) -> Self {
        HashingWriter {
            inner,
            hasher: algo.hasher(),
            len: 0,
        }
    }

    /// Bytes written so far.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether nothing was written yet.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The inner writer.
    pub fn get_ref(&self) -> &W {
        &self.inner
    }

    /// Returns the inner writer, the hash and the number of bytes written.
    pub fn finish(self) -> (W, NixHash, u64) {
        (self.inner, self.hasher.finalize(), self.len)
    }
}

impl<W: io::Write> io::Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        // A writer reporting more than it was given is broken; never index past buf.
        let n = n.min(buf.len());
        self.hasher.update(&buf[..n]);
        self.len += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::io::Write as _;

    #[test]
    fn lengths() {
        assert_eq!(HashAlgo::Md5.base64_len(), 24);
        assert_eq!(HashAlgo::Sha1.base64_len(), 28);
        assert_eq!(HashAlgo::Sha256.base64_len(), 44);
        assert_eq!(HashAlgo::Sha512.base64_len(), 88);
        assert_eq!(HashAlgo::Sha512.nix32_len(), 103);
    }

    #[test]
    fn known_digests() {
        // `printf abc | sha1sum` etc.
        assert_eq!(
            HashAlgo::Sha1.digest("abc").to_hex(),
            "a9993e364706816aba3e25717850c26c9cd0d89d"
        );
        assert_eq!(
            HashAlgo::Md5.digest("abc").to_hex(),
            "900150983cd24fb0d6963f7d28e17f72"
        );
    }

    #[test]
    fn hashing_writer() {
        let mut w = HashingWriter::new(Vec::new(), HashAlgo::Sha256);
        w.write_all(b"a").unwrap();
        w.write_all(b"bc").unwrap();
        let (buf, h, n) = w.finish();
        assert_eq!(buf, b"abc");
        assert_eq!(n, 3);
        assert_eq!(
            h.to_hex(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn parse_errors() {
        assert!(matches!(
            NixHash::parse_any_prefixed("sha3:00"),
            Err(HashError::UnknownAlgo { .. })
        ));
        assert!(matches!(
            NixHash::parse_any_prefixed("00"),
            Err(HashError::MissingAlgo { .. })
        ));
        assert!(matches!(
            NixHash::parse_any("md5:900150983cd24fb0d6963f7d28e17f72", Some(HashAlgo::Sha1)),
            Err(HashError::AlgoMismatch { .. })
        ));
        assert!(matches!(
            NixHash::parse_any_prefixed("md5:900150983cd24fb0d6963f7d28e17f7"),
            Err(HashError::WrongLength { .. })
        ));
        assert!(matches!(
            NixHash::parse_any_prefixed("md5:900150983cd24fb0d6963f7d28e17f7g"),
            Err(HashError::InvalidHex { position: 31, .. })
        ));
        assert!(matches!(
            NixHash::parse_any_prefixed("md5-kAFQmDzST7DWlj99KOF/cg"),
            Ok(NixHash::Md5(_))
        ));
        assert!(matches!(
            NixHash::parse_any_prefixed("md5-kAFQmDzST7DWlj99KOF/ch=="),
            Err(HashError::InvalidBase64 { .. })
        ));
        assert!(matches!(
            NixHash::parse_sri("md5:kAFQmDzST7DWlj99KOF/cg=="),
            Err(HashError::NotSri { .. } | HashError::UnknownAlgo { .. })
        ));
    }
}
