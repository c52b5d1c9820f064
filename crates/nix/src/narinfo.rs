//! The `.narinfo` files of a binary cache: parse and render, byte-exact with Nix.
//!
//! A narinfo describes one store path: where its (compressed) NAR is, the NAR's hash
//! and size, its references, deriver, signatures and content address. Nix writes the
//! fields in a fixed order, each line `Key: value\n`:
//!
//! ```text
//! StorePath: /nix/store/s57i4ffs9d4hk5njbpz4n2520r99kcqa-fixture-top
//! URL: nar/17fkcnv9rxiyjh33dr5gc9l0cmm078nibp027v0bkyxxgas926yx.nar.xz
//! Compression: xz
//! FileHash: sha256:17fkcnv9rxiyjh33dr5gc9l0cmm078nibp027v0bkyxxgas926yx
//! FileSize: 888
//! NarHash: sha256:17fkcnv9rxiyjh33dr5gc9l0cmm078nibp027v0bkyxxgas926yx
//! NarSize: 888
//! References: 5r53cxahb49j2wx1mx7s1y39ghnrq5bj-fixture-dep
//! Deriver: f0b3bq1magm6pz6458zkycdv3cw27s52-fixture-top.drv
//! System: x86_64-linux
//! Sig: cache.example.org-1:blwFB5hy...
//! CA: fixed:r:sha256:0i5rcxyd7a1p816k32pnj9bcgph528rf0rij75biii1acfz4zgi6
//! ```
//!
//! `References: ` keeps its trailing space when the list is empty; `Deriver`,
//! `System`, `Sig` and `CA` are left out when absent; `Sig` repeats.
//! [`NarInfo`]'s [`Display`](fmt::Display) writes exactly this, so rendering a parsed
//! Nix narinfo gives back the same bytes.
//!
//! What is accepted follows Nix 2.8's `NarInfo` parser, stricter where Nix would
//! silently do something surprising:
//!
//! - required: `StorePath`, `URL`, `NarHash`, and a non-zero `NarSize` (as Nix);
//! - `Compression` defaults to `bzip2` when absent (as Nix), and is then written out;
//! - unknown keys are ignored (as Nix), but every line must still be `Key: value\n`;
//! - every field may appear once, `Sig` once per distinct signature (Nix lets a
//!   later line overwrite an earlier one);
//! - `FileHash` and `NarHash` must be SHA-256 (Nix asserts this when it writes one);
//!   like Nix, any of its hash forms is read (hex, nixbase32, base64, SRI), and
//!   written back as `sha256:<nix32>`; `CA` likewise takes hex, nixbase32 or base64;
//! - `Deriver: unknown-deriver` means no deriver (as Nix);
//! - `References` are basenames separated by single spaces, each at most once (Nix
//!   splits on runs of spaces and drops duplicates);
//! - no empty values except `References`; no `\r`, no empty lines, no missing final
//!   newline (Nix reads an empty line as part of the next key).
//!
//! Every error names the line (1-based) and the field.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::str::FromStr;

use crate::hash::{HashAlgo, HashError, NixHash};
use crate::signature::{self, KeyError, Signature, SigningKey, VerifyingKey};
use crate::store_path::{FileIngestionMethod, StorePath, StorePathError};

/// Why a narinfo was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NarInfoError {
    /// The last line has no terminating `\n`.
    #[error("narinfo line {line}: missing newline at end of file")]
    MissingNewline {
        /// 1-based line number.
        line: usize,
    },
    /// A line is not `Key: value`.
    #[error("narinfo line {line}: expected `Key: value`, found {text:?}")]
    MalformedLine {
        /// 1-based line number.
        line: usize,
        /// The start of the line (at most 80 bytes).
        text: String,
    },
    /// A field appears twice.
    #[error("narinfo line {line}: duplicate {field} (first on line {first})")]
    Duplicate {
        /// 1-based line number of the repetition.
        line: usize,
        /// The field.
        field: &'static str,
        /// 1-based line number of its first occurrence.
        first: usize,
    },
    /// A field's value is empty, or is not a valid value for the field.
    #[error("narinfo line {line}: invalid {field} {value:?}: {reason}")]
    InvalidValue {
        /// 1-based line number.
        line: usize,
        /// The field.
        field: &'static str,
        /// The value (at most 80 bytes).
        value: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A required field is absent.
    #[error("narinfo: missing required field {field}")]
    Missing {
        /// The field.
        field: &'static str,
    },
}

/// How a content-addressed path's contents were hashed (the narinfo `CA` field).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ContentAddress {
    /// `text:sha256:<nix32>`: a text file added with references to other paths
    /// (`builtins.toFile`, `.drv` files); always SHA-256 of the file's contents.
    Text {
        /// SHA-256 of the file.
        sha256: [u8; 32],
    },
    /// `fixed:<algo>:<nix32>` (flat: the file's bytes, as in `fetchurl` or
    /// `nix-store --add-fixed`) or `fixed:r:<algo>:<nix32>` (recursive: the NAR, as
    /// in `nix-store --add` and `source` paths).
    Fixed {
        /// Flat or recursive.
        method: FileIngestionMethod,
        /// The hash, of any algorithm.
        hash: NixHash,
    },
}

impl ContentAddress {
    /// The hash, whatever the method.
    pub fn hash(&self) -> NixHash {
        match self {
            Self::Text { sha256 } => NixHash::Sha256(*sha256),
            Self::Fixed { hash, .. } => *hash,
        }
    }
}

/// Why a `CA` value was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ContentAddressError {
    /// Neither `text:` nor `fixed:`.
    #[error("expected `text:` or `fixed:`")]
    UnknownPrefix,
    /// A `text:` address with another algorithm than SHA-256.
    #[error("a text content address must use sha256, not {0}")]
    TextNotSha256(HashAlgo),
    /// No `<algo>:` before the digest.
    #[error("expected `<algo>:<digest>`")]
    MissingAlgo,
    /// The algorithm or digest is invalid.
    #[error(transparent)]
    Hash(#[from] HashError),
}

impl FromStr for ContentAddress {
    type Err = ContentAddressError;

    /// Parses `text:sha256:…`, `fixed:<algo>:…` or `fixed:r:<algo>:…` as Nix's
    /// `parseContentAddress` does: the digest in hex, nixbase32 or base64 (not SRI).
    fn from_str(s: &str) -> Result<Self, ContentAddressError> {
        let algo_hash = |rest: &str| -> Result<NixHash, ContentAddressError> {
            let (algo, digest) = rest
                .split_once(':')
                .ok_or(ContentAddressError::MissingAlgo)?;
            let algo: HashAlgo = algo.parse()?;
            Ok(NixHash::parse_non_sri_unprefixed(digest, algo)?)
        };
        if let Some(rest) = s.strip_prefix("text:") {
            match algo_hash(rest)? {
                NixHash::Sha256(sha256) => Ok(Self::Text { sha256 }),
                other => Err(ContentAddressError::TextNotSha256(other.algo())),
            }
        } else if let Some(rest) = s.strip_prefix("fixed:") {
            let (method, rest) = match rest.strip_prefix("r:") {
                Some(rest) => (FileIngestionMethod::Recursive, rest),
                None => (FileIngestionMethod::Flat, rest),
            };
            Ok(Self::Fixed {
                method,
                hash: algo_hash(rest)?,
            })
        } else {
            Err(ContentAddressError::UnknownPrefix)
        }
    }
}

/// Prints Nix's `renderContentAddress`: the digest in nixbase32.
impl fmt::Display for ContentAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Text { .. } => write!(f, "text:{}", self.hash()),
            Self::Fixed {
                method: FileIngestionMethod::Flat,
                hash,
            } => write!(f, "fixed:{hash}"),
            Self::Fixed {
                method: FileIngestionMethod::Recursive,
                hash,
            } => write!(f, "fixed:r:{hash}"),
        }
    }
}

/// A value that fits on a narinfo line: not empty, no control characters (so no
/// newline). Used for `URL` and `System`, which Nix keeps as free text.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct FieldText(String);

impl FieldText {
    /// The text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for FieldText {
    type Error = String;

    fn try_from(s: String) -> Result<Self, String> {
        if s.is_empty() {
            return Err("empty".to_owned());
        }
        if s.chars().any(char::is_control) {
            return Err("contains a control character".to_owned());
        }
        Ok(Self(s))
    }
}

impl FromStr for FieldText {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Self::try_from(s.to_owned())
    }
}

impl fmt::Display for FieldText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The compression of the file at `URL`: `none`, `xz`, `bzip2`, `zstd`, `br`, ...
///
/// Nix accepts any method name here and fails only when it cannot decompress; this
/// type accepts any name made of ASCII letters, digits and `.+-_`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Compression(String);

impl Compression {
    /// What Nix assumes when a narinfo has no `Compression` line.
    pub fn bzip2() -> Self {
        Self("bzip2".to_owned())
    }

    /// The method's name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for Compression {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s.is_empty() {
            return Err("empty".to_owned());
        }
        if !s
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._+-".contains(&b))
        {
            return Err("expected ASCII letters, digits, `.`, `+`, `-` or `_`".to_owned());
        }
        Ok(Self(s.to_owned()))
    }
}

impl fmt::Display for Compression {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A parsed narinfo. [`Display`](fmt::Display) renders it in Nix's format.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NarInfo {
    /// `StorePath`: the path described.
    pub store_path: StorePath,
    /// `URL`: where the (compressed) NAR is, usually relative to the cache root.
    pub url: FieldText,
    /// `Compression` of the file at `URL`.
    pub compression: Compression,
    /// `FileHash`: SHA-256 of the file at `URL`.
    pub file_hash: Option<NixHash>,
    /// `FileSize`: size of the file at `URL`.
    pub file_size: Option<u64>,
    /// `NarHash`: SHA-256 of the uncompressed NAR.
    pub nar_hash: NixHash,
    /// `NarSize`: size of the uncompressed NAR, never 0.
    pub nar_size: u64,
    /// `References`, in file order (Nix writes them sorted).
    pub references: Vec<StorePath>,
    /// `Deriver`: the `.drv` that built the path, if known.
    pub deriver: Option<StorePath>,
    /// `System` the path was built for (rare; Nix writes it only when known).
    pub system: Option<FieldText>,
    /// `Sig` lines, in file order (Nix writes them sorted; [`NarInfo::add_signature`]
    /// keeps that order).
    pub signatures: Vec<Signature>,
    /// `CA`: how a content-addressed path was hashed.
    pub ca: Option<ContentAddress>,
}

/// Keeps error messages bounded whatever the input.
fn excerpt(s: &str) -> String {
    let mut end = s.len().min(80);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_owned()
}

/// Nix writes sizes with `std::to_string`: plain decimal digits, no sign, no leading
/// zeros.
fn parse_size(s: &str) -> Result<u64, String> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err("expected a decimal number".to_owned());
    }
    if s.len() > 1 && s.starts_with('0') {
        return Err("leading zero".to_owned());
    }
    s.parse::<u64>()
        .map_err(|_| "does not fit in 64 bits".to_owned())
}

/// `NarHash` and `FileHash`: any form Nix's `Hash::parseAnyPrefixed` reads (Nix
/// writes `sha256:<nix32>`), but only SHA-256.
fn parse_sha256(s: &str) -> Result<NixHash, String> {
    let h: NixHash = s.parse().map_err(|e: HashError| e.to_string())?;
    if h.algo() != HashAlgo::Sha256 {
        return Err(format!("expected a sha256 hash, not {}", h.algo()));
    }
    Ok(h)
}

/// The fields Nix knows, in the order it writes them.
const FIELDS: [&str; 12] = [
    "StorePath",
    "URL",
    "Compression",
    "FileHash",
    "FileSize",
    "NarHash",
    "NarSize",
    "References",
    "Deriver",
    "System",
    "Sig",
    "CA",
];

impl NarInfo {
    /// Parses a narinfo file's contents.
    pub fn parse(s: &str) -> Result<Self, NarInfoError> {
        let mut seen = [0usize; FIELDS.len()];
        let mut store_path = None;
        let mut url = None;
        let mut compression = None;
        let mut file_hash = None;
        let mut file_size = None;
        let mut nar_hash = None;
        let mut nar_size = None;
        let mut references = Vec::new();
        let mut deriver = None;
        let mut system = None;
        let mut signatures: Vec<Signature> = Vec::new();
        // Sets, so that a narinfo with very many references or signatures costs
        // linear, not quadratic, time.
        let mut seen_refs = HashSet::new();
        let mut sig_lines = HashMap::new();
        let mut ca = None;

        let mut rest = s;
        let mut line = 0;
        while !rest.is_empty() {
            line += 1;
            let Some((text, after)) = rest.split_once('\n') else {
                return Err(NarInfoError::MissingNewline { line });
            };
            rest = after;
            let malformed = || NarInfoError::MalformedLine {
                line,
                text: excerpt(text),
            };
            let (key, value) = text.split_once(": ").ok_or_else(malformed)?;
            if key.is_empty() || key.contains([':', ' ']) {
                return Err(malformed());
            }
            let Some(idx) = FIELDS.iter().position(|f| *f == key) else {
                // Unknown keys are ignored, as Nix does, so that fields added by newer
                // writers do not make a cache unreadable.
                continue;
            };
            let field = FIELDS[idx];
            let invalid = |reason: String| NarInfoError::InvalidValue {
                line,
                field,
                value: excerpt(value),
                reason,
            };
            if field != "Sig" {
                if seen[idx] != 0 {
                    return Err(NarInfoError::Duplicate {
                        line,
                        field,
                        first: seen[idx],
                    });
                }
                seen[idx] = line;
            }
            if value.is_empty() && field != "References" {
                return Err(invalid("empty".to_owned()));
            }
            if value.contains('\r') {
                return Err(invalid("contains a carriage return".to_owned()));
            }
            let store_path_err = |e: StorePathError| invalid(e.to_string());
            match field {
                "StorePath" => {
                    store_path = Some(StorePath::parse_absolute(value).map_err(store_path_err)?)
                }
                "URL" => url = Some(value.parse::<FieldText>().map_err(invalid)?),
                "Compression" => compression = Some(value.parse().map_err(invalid)?),
                "FileHash" => file_hash = Some(parse_sha256(value).map_err(invalid)?),
                "FileSize" => file_size = Some(parse_size(value).map_err(invalid)?),
                "NarHash" => nar_hash = Some(parse_sha256(value).map_err(invalid)?),
                "NarSize" => {
                    let n = parse_size(value).map_err(invalid)?;
                    if n == 0 {
                        return Err(invalid("must not be 0".to_owned()));
                    }
                    nar_size = Some(n);
                }
                "References" => {
                    if !value.is_empty() {
                        for r in value.split(' ') {
                            let r: StorePath = r.parse().map_err(|e: StorePathError| {
                                invalid(format!("reference {:?}: {e}", excerpt(r)))
                            })?;
                            if !seen_refs.insert(r.clone()) {
                                return Err(invalid(format!("duplicate reference {r}")));
                            }
                            references.push(r);
                        }
                    }
                }
                "Deriver" => {
                    if value != "unknown-deriver" {
                        deriver = Some(value.parse().map_err(store_path_err)?);
                    }
                }
                "System" => system = Some(value.parse::<FieldText>().map_err(invalid)?),
                "Sig" => {
                    let sig: Signature = value
                        .parse()
                        .map_err(|e: KeyError| invalid(e.to_string()))?;
                    if let Some(&first) = sig_lines.get(&sig) {
                        return Err(NarInfoError::Duplicate { line, field, first });
                    }
                    sig_lines.insert(sig.clone(), line);
                    signatures.push(sig);
                }
                "CA" => {
                    ca = Some(
                        value
                            .parse()
                            .map_err(|e: ContentAddressError| invalid(e.to_string()))?,
                    )
                }
                _ => unreachable!("every entry of FIELDS is matched"),
            }
        }

        Ok(Self {
            store_path: store_path.ok_or(NarInfoError::Missing { field: "StorePath" })?,
            url: url.ok_or(NarInfoError::Missing { field: "URL" })?,
            compression: compression.unwrap_or_else(Compression::bzip2),
            file_hash,
            file_size,
            nar_hash: nar_hash.ok_or(NarInfoError::Missing { field: "NarHash" })?,
            nar_size: nar_size.ok_or(NarInfoError::Missing { field: "NarSize" })?,
            references,
            deriver,
            system,
            signatures,
            ca,
        })
    }

    /// What a signature of this path signs: see [`signature::fingerprint`].
    pub fn fingerprint(&self) -> String {
        signature::fingerprint(
            &self.store_path,
            &self.nar_hash,
            self.nar_size,
            &self.references,
        )
    }

    /// Adds `sig` where Nix would put it: Nix keeps signatures in a sorted set of
    /// strings. Returns false (and changes nothing) if it is already there.
    pub fn add_signature(&mut self, sig: Signature) -> bool {
        if self.signatures.contains(&sig) {
            return false;
        }
        let text = sig.to_string();
        let at = self
            .signatures
            .iter()
            .position(|s| s.to_string() > text)
            .unwrap_or(self.signatures.len());
        self.signatures.insert(at, sig);
        true
    }

    /// Signs this path with `key` and adds the signature (as `nix store sign` does).
    pub fn sign(&mut self, key: &SigningKey) {
        let sig = key.sign(self.fingerprint().as_bytes());
        self.add_signature(sig);
    }

    /// How many of the signatures are valid signatures by one of `keys`; Nix trusts
    /// a path when this is at least `sigs-needed` (default 1). Two signatures by the
    /// same key count once.
    pub fn verify(&self, keys: &[VerifyingKey]) -> usize {
        let fp = self.fingerprint();
        let mut good: HashSet<&str> = HashSet::new();
        for sig in &self.signatures {
            if !good.contains(sig.name()) && keys.iter().any(|k| k.verify(fp.as_bytes(), sig)) {
                good.insert(sig.name());
            }
        }
        good.len()
    }
}

impl FromStr for NarInfo {
    type Err = NarInfoError;
    fn from_str(s: &str) -> Result<Self, NarInfoError> {
        Self::parse(s)
    }
}

impl fmt::Display for NarInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "StorePath: {}", self.store_path.to_absolute())?;
        writeln!(f, "URL: {}", self.url)?;
        writeln!(f, "Compression: {}", self.compression)?;
        if let Some(h) = &self.file_hash {
            writeln!(f, "FileHash: {h}")?;
        }
        if let Some(n) = self.file_size {
            writeln!(f, "FileSize: {n}")?;
        }
        writeln!(f, "NarHash: {}", self.nar_hash)?;
        writeln!(f, "NarSize: {}", self.nar_size)?;
        f.write_str("References: ")?;
        for (i, r) in self.references.iter().enumerate() {
            if i > 0 {
                f.write_str(" ")?;
            }
            write!(f, "{r}")?;
        }
        f.write_str("\n")?;
        if let Some(d) = &self.deriver {
            writeln!(f, "Deriver: {d}")?;
        }
        if let Some(s) = &self.system {
            writeln!(f, "System: {s}")?;
        }
        for s in &self.signatures {
            writeln!(f, "Sig: {s}")?;
        }
        if let Some(ca) = &self.ca {
            writeln!(f, "CA: {ca}")?;
        }
        Ok(())
    }
}
