//! [`PathInfo`]: the validated form of a protobuf `PathInfo`, and what is derived from
//! it for Nix (narinfo, fingerprint, `nix path-info --json`).

use bytes::Bytes;
use cairn_castore::{DirectoryError, Node};
use cairn_nix::hash::{HashAlgo, NixHash};
use cairn_nix::narinfo::{Compression, ContentAddress, FieldText, NarInfo};
use cairn_nix::signature::{KeyError, Signature};
use cairn_nix::store_path::{DIGEST_LEN, FileIngestionMethod, StorePath, StorePathError};

use crate::proto;
use crate::proto::nar_info::ca::Hash as CaHash;

/// What Nix knows about one store path, with its content as a castore root [`Node`].
///
/// A value of this type satisfies every rule WIRE.md sets for a protobuf `PathInfo`:
/// build it from raw protobuf with `PathInfo::try_from(proto)`. The one rule its
/// field types cannot carry (`nar_size` is not 0) is checked by
/// [`PathInfo::validate`], which every backend's `put` calls.
///
/// What is accepted follows tvix-store and Nix 2.8 (checked with `nix path-info`
/// against a `file://` cache): references may repeat and come in any order (Nix
/// keeps them as a set, so its views here are sorted and deduplicated; the order
/// given is kept on the wire); an all-zero `nar_sha256` is a well-formed hash (Nix
/// accepts such a narinfo and only fails when the NAR's hash does not match it).
/// A `nar_size` of 0 is refused: a NAR is never empty, and Nix rejects a narinfo
/// with `NarSize: 0` as corrupt (tvix-store does not check it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PathInfo {
    /// The store path (the root node's name on the wire).
    pub store_path: StorePath,
    /// The content.
    pub node: Node,
    /// Store paths this one refers to, in the order given (Nix's is sorted).
    pub references: Vec<StorePath>,
    /// Size of the path's NAR serialisation.
    pub nar_size: u64,
    /// SHA-256 of the path's NAR serialisation.
    pub nar_sha256: [u8; 32],
    /// Signatures of the path's fingerprint.
    pub signatures: Vec<Signature>,
    /// The `.drv` that built the path, if known.
    pub deriver: Option<StorePath>,
    /// How a content-addressed path was hashed.
    pub ca: Option<ContentAddress>,
}

/// Why a protobuf `PathInfo` is invalid. Each variant names the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PathInfoError {
    /// `node` is not set.
    #[error("node: missing")]
    MissingNode,
    /// `node` is malformed (empty oneof, bad digest, bad symlink target).
    #[error("node: {0}")]
    InvalidNode(#[source] DirectoryError),
    /// `node`'s name is not a store path basename.
    #[error("node.name {name:?}: not a store path basename: {source}")]
    InvalidNodeName {
        /// The name sent, escaped.
        name: String,
        /// Why.
        #[source]
        source: StorePathError,
    },
    /// An entry of `references` is not 20 bytes.
    #[error("references[{index}]: {len} bytes, expected {DIGEST_LEN}")]
    InvalidReferenceDigest {
        /// Position in `references`.
        index: usize,
        /// Its length.
        len: usize,
    },
    /// `narinfo` is not set.
    #[error("narinfo: missing")]
    MissingNarInfo,
    /// `references` and `narinfo.reference_names` differ in length.
    #[error("narinfo.reference_names: {names} entries, but references has {references}")]
    ReferenceCount {
        /// Entries in `references`.
        references: usize,
        /// Entries in `narinfo.reference_names`.
        names: usize,
    },
    /// An entry of `narinfo.reference_names` is not a store path basename.
    #[error("narinfo.reference_names[{index}] {name:?}: not a store path basename: {source}")]
    InvalidReferenceName {
        /// Position.
        index: usize,
        /// The name sent (cut to 300 bytes).
        name: String,
        /// Why.
        #[source]
        source: StorePathError,
    },
    /// An entry of `narinfo.reference_names` does not have the digest of the
    /// `references` entry at the same position.
    #[error(
        "narinfo.reference_names[{index}] {name:?} does not match references[{index}] ({digest})"
    )]
    ReferenceMismatch {
        /// Position.
        index: usize,
        /// The name.
        name: String,
        /// The digest in `references`, in nixbase32.
        digest: String,
    },
    /// `narinfo.nar_sha256` is not 32 bytes.
    #[error("narinfo.nar_sha256: {0} bytes, expected 32")]
    InvalidNarSha256(usize),
    /// `narinfo.nar_size` is 0.
    #[error(
        "narinfo.nar_size: 0, but a NAR is never empty (Nix rejects a narinfo with NarSize 0 as corrupt)"
    )]
    EmptyNar,
    /// An entry of `narinfo.signatures` has a bad key name or is not 64 bytes.
    #[error("narinfo.signatures[{index}]: {reason}")]
    InvalidSignature {
        /// Position.
        index: usize,
        /// Why.
        reason: String,
    },
    /// `narinfo.deriver` is not a valid store path.
    #[error("narinfo.deriver: {0}")]
    InvalidDeriver(String),
    /// `narinfo.ca.type` is not a known value.
    #[error("narinfo.ca.type: unknown value {0}")]
    UnknownCaType(i32),
    /// `narinfo.ca.digest` does not have the length of `narinfo.ca.type`'s algorithm.
    #[error("narinfo.ca.digest: {len} bytes, but {ty} needs {expected}")]
    InvalidCaDigest {
        /// The type's name.
        ty: &'static str,
        /// Length sent.
        len: usize,
        /// Length of the algorithm's digests.
        expected: usize,
    },
    /// `narinfo.ca` would give another store path than the path info's (Nix
    /// refuses to substitute such a path).
    #[error("narinfo.ca: {ca} with these references gives {expected}, not the store path {got}")]
    CaMismatch {
        /// The content address, as Nix prints it.
        ca: String,
        /// The path it gives.
        expected: String,
        /// The path claimed.
        got: String,
    },
    /// `narinfo.ca` with these references gives no store path at all (a flat or
    /// non-SHA-256 fixed output cannot have references).
    #[error("narinfo.ca: {ca} cannot be the address of a path with references: {reason}")]
    CaImpossible {
        /// The content address, as Nix prints it.
        ca: String,
        /// Why.
        reason: String,
    },
    /// A narinfo's `NarHash` is not SHA-256 (only for [`PathInfo::from_narinfo`]).
    #[error("NarHash: {0} hash, expected sha256")]
    NarHashNotSha256(HashAlgo),
}

/// Keeps error messages bounded whatever the input.
fn excerpt(s: &str) -> String {
    let mut end = s.len().min(300);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_owned()
}

fn ca_from_proto(ca: &proto::nar_info::Ca) -> Result<ContentAddress, PathInfoError> {
    let ty = CaHash::try_from(ca.r#type).map_err(|_| PathInfoError::UnknownCaType(ca.r#type))?;
    let (method, algo) = match ty {
        CaHash::NarSha256 => (Some(FileIngestionMethod::Recursive), HashAlgo::Sha256),
        CaHash::NarSha1 => (Some(FileIngestionMethod::Recursive), HashAlgo::Sha1),
        CaHash::NarSha512 => (Some(FileIngestionMethod::Recursive), HashAlgo::Sha512),
        CaHash::NarMd5 => (Some(FileIngestionMethod::Recursive), HashAlgo::Md5),
        CaHash::TextSha256 => (None, HashAlgo::Sha256),
        CaHash::FlatSha1 => (Some(FileIngestionMethod::Flat), HashAlgo::Sha1),
        CaHash::FlatMd5 => (Some(FileIngestionMethod::Flat), HashAlgo::Md5),
        CaHash::FlatSha256 => (Some(FileIngestionMethod::Flat), HashAlgo::Sha256),
        CaHash::FlatSha512 => (Some(FileIngestionMethod::Flat), HashAlgo::Sha512),
    };
    let hash =
        NixHash::from_digest(algo, &ca.digest).map_err(|_| PathInfoError::InvalidCaDigest {
            ty: ty.as_str_name(),
            len: ca.digest.len(),
            expected: algo.digest_len(),
        })?;
    Ok(match (method, hash) {
        (Some(method), hash) => ContentAddress::Fixed { method, hash },
        (None, NixHash::Sha256(sha256)) => ContentAddress::Text { sha256 },
        // Only TEXT_SHA256 has no method, and its digest was parsed as SHA-256.
        (None, other) => {
            return Err(PathInfoError::InvalidCaDigest {
                ty: ty.as_str_name(),
                len: other.digest().len(),
                expected: 32,
            });
        }
    })
}

fn ca_to_proto(ca: &ContentAddress) -> proto::nar_info::Ca {
    use FileIngestionMethod::{Flat, Recursive};
    let hash = ca.hash();
    let ty = match ca {
        ContentAddress::Text { .. } => CaHash::TextSha256,
        ContentAddress::Fixed { method, hash } => match (method, hash.algo()) {
            (Recursive, HashAlgo::Sha256) => CaHash::NarSha256,
            (Recursive, HashAlgo::Sha1) => CaHash::NarSha1,
            (Recursive, HashAlgo::Sha512) => CaHash::NarSha512,
            (Recursive, HashAlgo::Md5) => CaHash::NarMd5,
            (Flat, HashAlgo::Sha256) => CaHash::FlatSha256,
            (Flat, HashAlgo::Sha1) => CaHash::FlatSha1,
            (Flat, HashAlgo::Sha512) => CaHash::FlatSha512,
            (Flat, HashAlgo::Md5) => CaHash::FlatMd5,
        },
    };
    proto::nar_info::Ca {
        r#type: ty as i32,
        digest: Bytes::copy_from_slice(hash.digest()),
    }
}

impl TryFrom<proto::PathInfo> for PathInfo {
    type Error = PathInfoError;

    /// Checks every rule of WIRE.md's `tvix.store.v1` section.
    fn try_from(p: proto::PathInfo) -> Result<Self, PathInfoError> {
        let node = p.node.ok_or(PathInfoError::MissingNode)?;
        let (name, node) =
            Node::try_from_proto_unnamed(node).map_err(PathInfoError::InvalidNode)?;
        let store_path =
            StorePath::from_basename(&name).map_err(|source| PathInfoError::InvalidNodeName {
                name: excerpt(&name.escape_ascii().to_string()),
                source,
            })?;

        let mut digests = Vec::with_capacity(p.references.len());
        for (index, r) in p.references.iter().enumerate() {
            let d: [u8; DIGEST_LEN] =
                r.as_ref()
                    .try_into()
                    .map_err(|_| PathInfoError::InvalidReferenceDigest {
                        index,
                        len: r.len(),
                    })?;
            digests.push(d);
        }

        let narinfo = p.narinfo.ok_or(PathInfoError::MissingNarInfo)?;
        if narinfo.reference_names.len() != digests.len() {
            return Err(PathInfoError::ReferenceCount {
                references: digests.len(),
                names: narinfo.reference_names.len(),
            });
        }
        let mut references = Vec::with_capacity(digests.len());
        for (index, (name, digest)) in narinfo.reference_names.iter().zip(&digests).enumerate() {
            let path = StorePath::from_basename(name).map_err(|source| {
                PathInfoError::InvalidReferenceName {
                    index,
                    name: excerpt(name),
                    source,
                }
            })?;
            if path.digest() != digest {
                return Err(PathInfoError::ReferenceMismatch {
                    index,
                    name: excerpt(name),
                    digest: cairn_nix::nixbase32::encode(digest),
                });
            }
            references.push(path);
        }

        let nar_sha256: [u8; 32] = narinfo
            .nar_sha256
            .as_ref()
            .try_into()
            .map_err(|_| PathInfoError::InvalidNarSha256(narinfo.nar_sha256.len()))?;

        if narinfo.nar_size == 0 {
            return Err(PathInfoError::EmptyNar);
        }

        let mut signatures = Vec::with_capacity(narinfo.signatures.len());
        for (index, s) in narinfo.signatures.iter().enumerate() {
            let bytes: [u8; 64] =
                s.data
                    .as_ref()
                    .try_into()
                    .map_err(|_| PathInfoError::InvalidSignature {
                        index,
                        reason: format!("data: {} bytes, expected 64", s.data.len()),
                    })?;
            let sig = Signature::new(&s.name, bytes).map_err(|e: KeyError| {
                PathInfoError::InvalidSignature {
                    index,
                    reason: format!("name: {}", excerpt(&e.to_string())),
                }
            })?;
            signatures.push(sig);
        }

        let deriver = match &narinfo.deriver {
            None => None,
            Some(d) => {
                let digest: [u8; DIGEST_LEN] = d.digest.as_ref().try_into().map_err(|_| {
                    PathInfoError::InvalidDeriver(format!(
                        "digest: {} bytes, expected {DIGEST_LEN}",
                        d.digest.len()
                    ))
                })?;
                let path = StorePath::new(digest, &d.name).map_err(|e| {
                    PathInfoError::InvalidDeriver(format!("name: {}", excerpt(&e.to_string())))
                })?;
                Some(path)
            }
        };

        let ca = narinfo.ca.as_ref().map(ca_from_proto).transpose()?;

        Ok(PathInfo {
            store_path,
            node,
            references,
            nar_size: narinfo.nar_size,
            nar_sha256,
            signatures,
            deriver,
            ca,
        })
    }
}

impl From<&PathInfo> for proto::PathInfo {
    fn from(p: &PathInfo) -> Self {
        proto::PathInfo {
            node: Some(
                p.node
                    .clone()
                    .into_proto(Bytes::from(p.store_path.to_string())),
            ),
            references: p
                .references
                .iter()
                .map(|r| Bytes::copy_from_slice(r.digest()))
                .collect(),
            narinfo: Some(proto::NarInfo {
                nar_size: p.nar_size,
                nar_sha256: Bytes::copy_from_slice(&p.nar_sha256),
                signatures: p
                    .signatures
                    .iter()
                    .map(|s| proto::nar_info::Signature {
                        name: s.name().to_owned(),
                        data: Bytes::copy_from_slice(s.bytes()),
                    })
                    .collect(),
                reference_names: p.references.iter().map(|r| r.to_string()).collect(),
                deriver: p.deriver.as_ref().map(|d| proto::StorePath {
                    name: d.name().to_owned(),
                    digest: Bytes::copy_from_slice(d.digest()),
                }),
                ca: p.ca.as_ref().map(ca_to_proto),
            }),
        }
    }
}

impl From<PathInfo> for proto::PathInfo {
    fn from(p: PathInfo) -> Self {
        proto::PathInfo::from(&p)
    }
}

/// Appends `s` as a JSON string, quoted and escaped as Nix's JSON writer does.
fn json_string(out: &mut String, s: &str) {
    let mut quoted = Vec::with_capacity(s.len() + 2);
    cairn_nix::json::push_string(&mut quoted, s.as_bytes());
    // Escaping UTF-8 input adds only ASCII, so this is never lossy.
    out.push_str(&String::from_utf8_lossy(&quoted));
}

impl PathInfo {
    /// Checks the rules the field types do not enforce (a `PathInfo` built field by
    /// field rather than converted from protobuf): `nar_size` is not 0, and a
    /// content address gives exactly this store path (with these references; one
    /// naming the path itself is a self-reference), as Nix checks before it
    /// substitutes a path.
    pub fn validate(&self) -> Result<(), PathInfoError> {
        if self.nar_size == 0 {
            return Err(PathInfoError::EmptyNar);
        }
        if let Some(ca) = &self.ca {
            let others: Vec<&StorePath> = self
                .references
                .iter()
                .filter(|r| **r != self.store_path)
                .collect();
            let self_reference = others.len() != self.references.len();
            let name = self.store_path.name();
            let expected = match ca {
                ContentAddress::Text { sha256 } if !self_reference => {
                    cairn_nix::store_path::make_text_path(name, sha256, others)
                }
                ContentAddress::Text { .. } => Err(StorePathError::ReferencesNotAllowed),
                ContentAddress::Fixed { method, hash } => {
                    cairn_nix::store_path::make_fixed_output_path(
                        *method,
                        hash,
                        name,
                        others,
                        self_reference,
                    )
                }
            };
            match expected {
                Ok(p) if p == self.store_path => {}
                Ok(p) => {
                    return Err(PathInfoError::CaMismatch {
                        ca: ca.to_string(),
                        expected: p.to_absolute(),
                        got: self.store_path.to_absolute(),
                    });
                }
                Err(e) => {
                    return Err(PathInfoError::CaImpossible {
                        ca: ca.to_string(),
                        reason: e.to_string(),
                    });
                }
            }
        }
        Ok(())
    }

    /// The NAR hash as a [`NixHash`].
    pub fn nar_hash(&self) -> NixHash {
        NixHash::Sha256(self.nar_sha256)
    }

    /// The path info a narinfo describes, with `node` as its content (what ingesting
    /// the narinfo's NAR gave). `URL`, `Compression`, `FileHash`, `FileSize` and
    /// `System` describe the cache's file, not the path, and are dropped.
    pub fn from_narinfo(narinfo: &NarInfo, node: Node) -> Result<PathInfo, PathInfoError> {
        let nar_sha256 = match narinfo.nar_hash {
            NixHash::Sha256(d) => d,
            other => return Err(PathInfoError::NarHashNotSha256(other.algo())),
        };
        let info = PathInfo {
            store_path: narinfo.store_path.clone(),
            node,
            references: narinfo.references.clone(),
            nar_size: narinfo.nar_size,
            nar_sha256,
            signatures: narinfo.signatures.clone(),
            deriver: narinfo.deriver.clone(),
            ca: narinfo.ca.clone(),
        };
        info.validate()?;
        Ok(info)
    }

    /// The references sorted and without duplicates, as Nix keeps them (a
    /// `std::set<StorePath>`).
    pub fn sorted_references(&self) -> Vec<StorePath> {
        let mut refs = self.references.clone();
        refs.sort();
        refs.dedup();
        refs
    }

    /// The signatures sorted by their text and without duplicates, as Nix keeps
    /// them (a `std::set<std::string>`).
    pub fn sorted_signatures(&self) -> Vec<Signature> {
        let mut sigs: Vec<(String, &Signature)> =
            self.signatures.iter().map(|s| (s.to_string(), s)).collect();
        sigs.sort_by(|a, b| a.0.cmp(&b.0));
        sigs.dedup_by(|a, b| a.0 == b.0);
        sigs.into_iter().map(|(_, s)| s.clone()).collect()
    }

    /// What a signature of this path signs:
    /// `1;<path>;sha256:<nix32>;<nar size>;<references, sorted, comma-separated>`.
    pub fn fingerprint(&self) -> String {
        cairn_nix::signature::fingerprint(
            &self.store_path,
            &self.nar_hash(),
            self.nar_size,
            &self.references,
        )
    }

    /// The narinfo a binary cache serves for this path, with the NAR file at `url`
    /// compressed with `compression`; `file_hash`/`file_size` describe that file when
    /// known. References and signatures are in Nix's (sorted) order.
    pub fn to_narinfo(
        &self,
        url: FieldText,
        compression: Compression,
        file_hash: Option<NixHash>,
        file_size: Option<u64>,
    ) -> NarInfo {
        NarInfo {
            store_path: self.store_path.clone(),
            url,
            compression,
            file_hash,
            file_size,
            nar_hash: self.nar_hash(),
            nar_size: self.nar_size,
            references: self.sorted_references(),
            deriver: self.deriver.clone(),
            system: None,
            signatures: self.sorted_signatures(),
            ca: self.ca.clone(),
        }
    }

    /// This path as one element of the array `nix path-info --json` (Nix 2.8)
    /// prints: `path`, `narHash` (SRI), `narSize`, `references` (absolute, sorted),
    /// `ca` if any, `deriver` if any, `signatures` if any (sorted), in that order
    /// and without whitespace. Nix's `registrationTime` and `ultimate` describe a
    /// local store's database and are not part of a `PathInfo`.
    pub fn to_json(&self) -> String {
        let mut out = String::from("{\"path\":");
        json_string(&mut out, &self.store_path.to_absolute());
        out.push_str(",\"narHash\":");
        json_string(&mut out, &self.nar_hash().to_sri());
        out.push_str(&format!(",\"narSize\":{}", self.nar_size));
        out.push_str(",\"references\":[");
        for (i, r) in self.sorted_references().iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            json_string(&mut out, &r.to_absolute());
        }
        out.push(']');
        if let Some(ca) = &self.ca {
            out.push_str(",\"ca\":");
            json_string(&mut out, &ca.to_string());
        }
        if let Some(d) = &self.deriver {
            out.push_str(",\"deriver\":");
            json_string(&mut out, &d.to_absolute());
        }
        let sigs = self.sorted_signatures();
        if !sigs.is_empty() {
            out.push_str(",\"signatures\":[");
            for (i, s) in sigs.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                json_string(&mut out, &s.to_string());
            }
            out.push(']');
        }
        out.push('}');
        out
    }
}
