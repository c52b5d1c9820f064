//! Store paths: parsing, Nix's name rules, and computing them as Nix does.
//!
//! A [`StorePath`] is the basename `<32 nixbase32 chars>-<name>`: a 20-byte digest
//! and a validated name. It prints ([`Display`](std::fmt::Display)) as that basename;
//! [`StorePath::to_absolute`] adds the store directory ([`STORE_DIR`]).
//!
//! Name rules (Nix 2.8 `checkName`): 1 to 211 bytes, each in `[A-Za-z0-9+-._?=]`.
//! Nix 2.8 accepts names starting with `.` (even `.` and `..`; `builtins.toFile
//! ".foo"` works), so this crate does too; later Nix versions forbid `.` and `..`.
//! The hash part must be 32 nixbase32 characters. Stricter than Nix 2.8, which never
//! produces such paths but does not check: the 33rd character must be `-`, and
//! absolute paths are not canonicalised (`//`, `.`, `..` and trailing `/` are
//! rejected rather than resolved).
//!
//! Computation ([`make_store_path`], [`make_fixed_output_path`], [`make_text_path`])
//! follows Nix's `Store::makeStorePath` and friends byte for byte: the fingerprint
//! `type:sha256:<hex>:<store dir>:<name>` is hashed with SHA-256 and XOR-folded to 20
//! bytes. References are sorted by their absolute path, as in Nix's `StorePathSet`.
//! [`StoreDir`] does the same for another store directory.
//!
//! ```
//! use cairn_nix::hash::HashAlgo;
//! use cairn_nix::store_path::{self, FileIngestionMethod, StorePath};
//!
//! let p = StorePath::parse_absolute("/nix/store/00bgd045z0d4icpbc2yyz4gx48ak44la-net-tools-1.60_p20170221182432").unwrap();
//! assert_eq!(p.name(), "net-tools-1.60_p20170221182432");
//! assert_eq!(p.to_string(), "00bgd045z0d4icpbc2yyz4gx48ak44la-net-tools-1.60_p20170221182432");
//!
//! // `builtins.toFile "foo" "bar"`
//! let text = store_path::make_text_path_for_content("foo", b"bar", &[]).unwrap();
//! assert_eq!(text.to_absolute(), "/nix/store/vxjiwkjkn7x4079qvh1jkl5pn05j2aw0-foo");
//! ```

use std::cmp::Ordering;
use std::fmt;
use std::str::FromStr;

use crate::hash::{HashAlgo, NixHash};
use crate::nixbase32;

/// The default store directory.
pub const STORE_DIR: &str = "/nix/store";

/// Length of a store path's digest in bytes.
pub const DIGEST_LEN: usize = 20;

/// Length of a store path's hash part in nixbase32 characters.
pub const HASH_PART_LEN: usize = nixbase32::encoded_len(DIGEST_LEN);

/// Maximum length of a store path name.
pub const MAX_NAME_LEN: usize = 211;

/// Why a store path or name is invalid. Inputs quoted in errors are cut to 300
/// characters.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StorePathError {
    /// The basename is shorter than a hash part plus `-`.
    #[error("'{path}' is too short to be a valid store path")]
    TooShort {
        /// The input.
        path: String,
    },
    /// The hash part has a character outside the nixbase32 alphabet.
    #[error("store path '{path}' contains illegal base-32 character {byte:?} at offset {position}", byte = char::from(*.byte))]
    InvalidHashChar {
        /// The input.
        path: String,
        /// Offset of the character in the basename.
        position: usize,
        /// The character.
        byte: u8,
    },
    /// The character after the hash part is not `-`.
    #[error("store path '{path}' has no '-' after its hash part")]
    MissingDash {
        /// The input.
        path: String,
    },
    /// The name is empty.
    #[error("store path '{path}' has an empty name")]
    EmptyName {
        /// The input.
        path: String,
    },
    /// The name is longer than [`MAX_NAME_LEN`].
    #[error("store path '{path}' has a name longer than {MAX_NAME_LEN} characters")]
    NameTooLong {
        /// The input.
        path: String,
    },
    /// The name has a character outside `[A-Za-z0-9+-._?=]`.
    #[error("store path '{path}' contains illegal character {byte:?} at offset {position} of its name", byte = char::from(*.byte))]
    InvalidNameChar {
        /// The input.
        path: String,
        /// Offset of the byte in the name.
        position: usize,
        /// The byte.
        byte: u8,
    },
    /// An absolute path is not directly inside the store directory.
    #[error("path '{path}' is not in the Nix store '{store_dir}'")]
    NotInStore {
        /// The input.
        path: String,
        /// The store directory expected.
        store_dir: String,
    },
    /// A store directory that is not an absolute, canonical path.
    #[error(
        "invalid store directory '{store_dir}': must be absolute, without trailing '/', '//', '.' or '..'"
    )]
    InvalidStoreDir {
        /// The input.
        store_dir: String,
    },
    /// A fixed-output path other than recursive SHA-256 cannot have references.
    #[error("only recursive SHA-256 fixed-output paths can have references")]
    ReferencesNotAllowed,
}

/// Cuts an input to at most 300 characters for error messages.
fn quote(s: &[u8]) -> String {
    const MAX: usize = 300;
    let text = String::from_utf8_lossy(s);
    match text.char_indices().nth(MAX) {
        Some((i, _)) => format!("{}…", &text[..i]),
        None => text.into_owned(),
    }
}

/// Checks a store path name against Nix's rules. `path` is quoted in errors.
fn check_name(name: &[u8], path: &[u8]) -> Result<(), StorePathError> {
    if name.is_empty() {
        return Err(StorePathError::EmptyName { path: quote(path) });
    }
    if name.len() > MAX_NAME_LEN {
        return Err(StorePathError::NameTooLong { path: quote(path) });
    }
    if let Some(position) = name.iter().position(|&c| !is_name_char(c)) {
        return Err(StorePathError::InvalidNameChar {
            path: quote(path),
            position,
            byte: name[position],
        });
    }
    Ok(())
}

/// Whether `c` may appear in a store path name.
pub const fn is_name_char(c: u8) -> bool {
    matches!(c, b'0'..=b'9' | b'a'..=b'z' | b'A'..=b'Z' | b'+' | b'-' | b'.' | b'_' | b'?' | b'=')
}

/// Checks `name` against Nix's store path name rules.
pub fn validate_name(name: impl AsRef<[u8]>) -> Result<(), StorePathError> {
    check_name(name.as_ref(), name.as_ref())
}

/// A store path: a 20-byte digest and a name, printed as `<nix32 digest>-<name>`.
///
/// Ordered like Nix orders store paths (by the printed basename), so a sorted
/// collection of `StorePath`s is in the order Nix uses in fingerprints and path
/// computations.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct StorePath {
    digest: [u8; DIGEST_LEN],
    name: Box<str>,
}

impl StorePath {
    /// Builds a store path from its parts, checking the name.
    pub fn new(digest: [u8; DIGEST_LEN], name: &str) -> Result<StorePath, StorePathError> {
        check_name(name.as_bytes(), name.as_bytes())?;
        Ok(StorePath {
            digest,
            name: name.into(),
        })
    }

    /// Parses a basename, `<32 nix32 chars>-<name>`.
    pub fn from_basename(basename: impl AsRef<[u8]>) -> Result<StorePath, StorePathError> {
        let b = basename.as_ref();
        if b.len() < HASH_PART_LEN + 1 {
            return Err(StorePathError::TooShort { path: quote(b) });
        }
        let (hash_part, rest) = b.split_at(HASH_PART_LEN);
        let digest = nixbase32::decode_fixed::<DIGEST_LEN>(hash_part).map_err(|e| match e {
            nixbase32::Nixbase32Error::InvalidChar { position, byte } => {
                StorePathError::InvalidHashChar {
                    path: quote(b),
                    position,
                    byte,
                }
            }
            // 32 characters hold exactly 160 bits: only bad characters can fail.
            _ => unreachable!("nixbase32 of 20 bytes has no length or padding errors"),
        })?;
        if rest[0] != b'-' {
            return Err(StorePathError::MissingDash { path: quote(b) });
        }
        let name = &rest[1..];
        check_name(name, b)?;
        // check_name allows ASCII only.
        let name = std::str::from_utf8(name)
            .unwrap_or_else(|_| unreachable!("validated store path names are ASCII"));
        Ok(StorePath {
            digest,
            name: name.into(),
        })
    }

    /// Parses an absolute path `/nix/store/<basename>`.
    pub fn parse_absolute(path: impl AsRef<[u8]>) -> Result<StorePath, StorePathError> {
        StoreDir::default().parse_absolute(path)
    }

    /// Parses `/nix/store/<basename>` optionally followed by `/<subpath>`, returning
    /// the store path and the rest: empty, or starting with `/` (as Nix's
    /// `toStorePath`). The rest is not checked.
    ///
    /// ```
    /// use cairn_nix::store_path::StorePath;
    /// let (p, rest) = StorePath::parse_absolute_with_subpath(
    ///     "/nix/store/00bgd045z0d4icpbc2yyz4gx48ak44la-hello/bin/hello").unwrap();
    /// assert_eq!((p.name(), rest), ("hello", "/bin/hello"));
    /// ```
    pub fn parse_absolute_with_subpath(path: &str) -> Result<(StorePath, &str), StorePathError> {
        StoreDir::default().parse_absolute_with_subpath(path)
    }

    /// The digest.
    pub fn digest(&self) -> &[u8; DIGEST_LEN] {
        &self.digest
    }

    /// The name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The hash part, the digest in nixbase32 (32 characters).
    pub fn hash_part(&self) -> String {
        nixbase32::encode(&self.digest)
    }

    /// The absolute path in [`STORE_DIR`].
    pub fn to_absolute(&self) -> String {
        format!("{STORE_DIR}/{self}")
    }

    fn hash_part_bytes(&self) -> [u8; HASH_PART_LEN] {
        let mut buf = [0u8; HASH_PART_LEN];
        nixbase32::encode_into(&self.digest, &mut buf);
        buf
    }
}

impl fmt::Display for StorePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let hash = self.hash_part_bytes();
        // ASCII from the nixbase32 alphabet.
        let hash = std::str::from_utf8(&hash).map_err(|_| fmt::Error)?;
        write!(f, "{hash}-{}", self.name)
    }
}

impl fmt::Debug for StorePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "StorePath({self})")
    }
}

/// Parses a basename ([`StorePath::from_basename`]).
impl FromStr for StorePath {
    type Err = StorePathError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        StorePath::from_basename(s)
    }
}

impl PartialOrd for StorePath {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// Compares the printed basenames, as Nix does.
impl Ord for StorePath {
    fn cmp(&self, other: &Self) -> Ordering {
        if self.digest == other.digest {
            // Same hash part; the basename continues with '-' then the name.
            return self.name.cmp(&other.name);
        }
        self.hash_part_bytes().cmp(&other.hash_part_bytes())
    }
}

/// How a fixed-output path's content was hashed (Nix's `FileIngestionMethod`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FileIngestionMethod {
    /// The hash is of the file's bytes (`nix store add-file`, `fetchurl`).
    Flat,
    /// The hash is of the NAR serialisation (`nix-store --add`, `--recursive`).
    Recursive,
}

/// A store directory other than (or equal to) [`STORE_DIR`], for parsing and
/// computing paths of stores such as `/tmp/store/nix/store` built with
/// `--store 'local?store=…'`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct StoreDir(Box<str>);

impl Default for StoreDir {
    fn default() -> Self {
        StoreDir(STORE_DIR.into())
    }
}

impl fmt::Display for StoreDir {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl StoreDir {
    /// A store directory: an absolute path without trailing `/`, empty components,
    /// `.` or `..`.
    pub fn new(dir: &str) -> Result<StoreDir, StorePathError> {
        let ok = dir.len() > 1
            && dir.starts_with('/')
            && dir[1..]
                .split('/')
                .all(|c| !c.is_empty() && c != "." && c != "..");
        if ok {
            Ok(StoreDir(dir.into()))
        } else {
            Err(StorePathError::InvalidStoreDir {
                store_dir: quote(dir.as_bytes()),
            })
        }
    }

    /// The directory, e.g. `/nix/store`.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The absolute path of `path` in this directory.
    pub fn absolute(&self, path: &StorePath) -> String {
        format!("{}/{path}", self.0)
    }

    /// Parses `<store dir>/<basename>`.
    pub fn parse_absolute(&self, path: impl AsRef<[u8]>) -> Result<StorePath, StorePathError> {
        let path = path.as_ref();
        let basename = self.strip_dir(path)?;
        if basename.contains(&b'/') {
            return Err(StorePathError::NotInStore {
                path: quote(path),
                store_dir: self.0.to_string(),
            });
        }
        StorePath::from_basename(basename)
    }

    /// Parses `<store dir>/<basename>[/<subpath>]`; see
    /// [`StorePath::parse_absolute_with_subpath`].
    pub fn parse_absolute_with_subpath<'a>(
        &self,
        path: &'a str,
    ) -> Result<(StorePath, &'a str), StorePathError> {
        let basename = self.strip_dir(path.as_bytes())?;
        let start = path.len() - basename.len();
        let end = basename
            .iter()
            .position(|&c| c == b'/')
            .map_or(path.len(), |i| start + i);
        let store_path = StorePath::from_basename(&path.as_bytes()[start..end])?;
        Ok((store_path, &path[end..]))
    }

    fn strip_dir<'a>(&self, path: &'a [u8]) -> Result<&'a [u8], StorePathError> {
        path.strip_prefix(self.0.as_bytes())
            .and_then(|rest| rest.strip_prefix(b"/"))
            .ok_or_else(|| StorePathError::NotInStore {
                path: quote(path),
                store_dir: self.0.to_string(),
            })
    }

    /// Nix's `Store::makeStorePath`: the path for `name` whose fingerprint is
    /// `<ty>:<inner hash as algo:hex>:<store dir>:<name>`.
    pub fn make_store_path(
        &self,
        ty: &str,
        inner: &NixHash,
        name: &str,
    ) -> Result<StorePath, StorePathError> {
        check_name(name.as_bytes(), name.as_bytes())?;
        let fingerprint = format!("{ty}:{}:{}:{name}", inner.to_hex_prefixed(), self.0);
        let full = HashAlgo::Sha256.digest(fingerprint.as_bytes());
        Ok(StorePath {
            digest: compress_hash(full.digest()),
            name: name.into(),
        })
    }

    /// Nix's `makeType`: `ty` followed by `:<absolute path>` for each reference in
    /// sorted order, and `:self` if asked.
    fn make_type<'a>(
        &self,
        ty: &str,
        references: impl IntoIterator<Item = &'a StorePath>,
        self_reference: bool,
    ) -> String {
        let mut refs: Vec<&StorePath> = references.into_iter().collect();
        refs.sort();
        refs.dedup();
        let mut s = ty.to_owned();
        for r in refs {
            s.push(':');
            s.push_str(&self.absolute(r));
        }
        if self_reference {
            s.push_str(":self");
        }
        s
    }

    /// Nix's `makeFixedOutputPath`. Recursive SHA-256 gives a `source` path, which
    /// may have references and a self-reference; any other combination gives an
    /// `output:out` path and must have neither.
    pub fn make_fixed_output_path<'a>(
        &self,
        method: FileIngestionMethod,
        hash: &NixHash,
        name: &str,
        references: impl IntoIterator<Item = &'a StorePath>,
        self_reference: bool,
    ) -> Result<StorePath, StorePathError> {
        if method == FileIngestionMethod::Recursive && hash.algo() == HashAlgo::Sha256 {
            let ty = self.make_type("source", references, self_reference);
            self.make_store_path(&ty, hash, name)
        } else {
            if self_reference || references.into_iter().next().is_some() {
                return Err(StorePathError::ReferencesNotAllowed);
            }
            let prefix = match method {
                FileIngestionMethod::Flat => "",
                FileIngestionMethod::Recursive => "r:",
            };
            let inner = HashAlgo::Sha256
                .digest(format!("fixed:out:{prefix}{}:", hash.to_hex_prefixed()).as_bytes());
            self.make_store_path("output:out", &inner, name)
        }
    }

    /// Nix's `makeTextPath`: the path of a text file (`builtins.toFile`,
    /// `writeText` derivations' `.drv`s) with SHA-256 `sha256` of its contents
    /// and the given references.
    pub fn make_text_path<'a>(
        &self,
        name: &str,
        sha256: &[u8; 32],
        references: impl IntoIterator<Item = &'a StorePath>,
    ) -> Result<StorePath, StorePathError> {
        let ty = self.make_type("text", references, false);
        self.make_store_path(&ty, &NixHash::Sha256(*sha256), name)
    }
}

/// Nix's `compressHash`: XOR-folds a digest to [`DIGEST_LEN`] bytes.
pub fn compress_hash(digest: &[u8]) -> [u8; DIGEST_LEN] {
    let mut out = [0u8; DIGEST_LEN];
    for (i, b) in digest.iter().enumerate() {
        out[i % DIGEST_LEN] ^= b;
    }
    out
}

/// [`StoreDir::make_store_path`] in [`STORE_DIR`].
pub fn make_store_path(ty: &str, inner: &NixHash, name: &str) -> Result<StorePath, StorePathError> {
    StoreDir::default().make_store_path(ty, inner, name)
}

/// [`StoreDir::make_fixed_output_path`] in [`STORE_DIR`].
///
/// ```
/// use cairn_nix::hash::NixHash;
/// use cairn_nix::store_path::{make_fixed_output_path, FileIngestionMethod};
/// let h: NixHash = "sha256:0mdqa9w1p6cmli6976v4wi0sw9r4p5prkj7lzfd1877wk11c9c73".parse().unwrap();
/// let p = make_fixed_output_path(FileIngestionMethod::Flat, &h, "empty", [], false).unwrap();
/// assert_eq!(p.to_absolute(), "/nix/store/1q82x5ah029adc0r5p06p3ivlzzh3hss-empty");
/// ```
pub fn make_fixed_output_path<'a>(
    method: FileIngestionMethod,
    hash: &NixHash,
    name: &str,
    references: impl IntoIterator<Item = &'a StorePath>,
    self_reference: bool,
) -> Result<StorePath, StorePathError> {
    StoreDir::default().make_fixed_output_path(method, hash, name, references, self_reference)
}

/// [`StoreDir::make_text_path`] in [`STORE_DIR`].
pub fn make_text_path<'a>(
    name: &str,
    sha256: &[u8; 32],
    references: impl IntoIterator<Item = &'a StorePath>,
) -> Result<StorePath, StorePathError> {
    StoreDir::default().make_text_path(name, sha256, references)
}

/// The path `builtins.toFile name contents` gets (with `references` from the
/// contents' string context), in [`STORE_DIR`].
pub fn make_text_path_for_content<'a>(
    name: &str,
    contents: &[u8],
    references: impl IntoIterator<Item = &'a StorePath>,
) -> Result<StorePath, StorePathError> {
    let NixHash::Sha256(digest) = HashAlgo::Sha256.digest(contents) else {
        unreachable!("HashAlgo::Sha256 yields a Sha256 hash")
    };
    make_text_path(name, &digest, references)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn parse_errors() {
        let h = "00bgd045z0d4icpbc2yyz4gx48ak44la";
        assert!(matches!(
            StorePath::from_basename(h),
            Err(StorePathError::TooShort { .. })
        ));
        assert!(matches!(
            StorePath::from_basename(format!("{h}-")),
            Err(StorePathError::EmptyName { .. })
        ));
        assert!(matches!(
            StorePath::from_basename(format!("{h}Xfoo")),
            Err(StorePathError::MissingDash { .. })
        ));
        assert!(matches!(
            StorePath::from_basename(format!("{h}-a b")),
            Err(StorePathError::InvalidNameChar {
                position: 1,
                byte: b' ',
                ..
            })
        ));
        assert!(matches!(
            StorePath::from_basename("e0bgd045z0d4icpbc2yyz4gx48ak44la-x"),
            Err(StorePathError::InvalidHashChar {
                position: 0,
                byte: b'e',
                ..
            })
        ));
        assert!(StorePath::from_basename(format!("{h}-{}", "a".repeat(211))).is_ok());
        assert!(matches!(
            StorePath::from_basename(format!("{h}-{}", "a".repeat(212))),
            Err(StorePathError::NameTooLong { .. })
        ));
        assert!(matches!(
            StorePath::parse_absolute(format!("/nix/store/{h}-x/y")),
            Err(StorePathError::NotInStore { .. })
        ));
        assert!(matches!(
            StorePath::parse_absolute(format!("/nix/store//{h}-x")),
            Err(StorePathError::NotInStore { .. })
        ));
    }

    #[test]
    fn subpath() {
        let h = "00bgd045z0d4icpbc2yyz4gx48ak44la";
        let path = format!("/nix/store/{h}-x");
        let (p, rest) = StorePath::parse_absolute_with_subpath(&path).unwrap();
        assert_eq!((p.name(), rest), ("x", ""));
        let path = format!("/nix/store/{h}-x/");
        let (_, rest) = StorePath::parse_absolute_with_subpath(&path).unwrap();
        assert_eq!(rest, "/");
    }

    #[test]
    fn store_dir() {
        assert!(StoreDir::new("/a/b").is_ok());
        for bad in ["", "/", "a", "/a/", "/a//b", "/a/./b", "/a/.."] {
            assert!(StoreDir::new(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn compress() {
        let mut d = [0u8; 32];
        d[0] = 1;
        d[20] = 3;
        d[31] = 0xff;
        let c = compress_hash(&d);
        assert_eq!(c[0], 2);
        assert_eq!(c[11], 0xff);
    }
}
