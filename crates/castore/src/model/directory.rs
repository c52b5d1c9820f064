//! [`Directory`]: a validated listing, its size, canonical encoding and digest.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use prost::Message;

use super::{DirectoryError, Node, NodeKind, PathComponent, SymlinkTarget};
use crate::{B3Digest, proto};

/// Entries one directory may hold unless the operator says otherwise: far more
/// than real trees have (a directory of a quarter million files is rare), few
/// enough that one directory's validation, storage and listing stay cheap (its
/// message is at most ~20 MiB). A directory of a million entries uploaded as a
/// 441 KB NAR would otherwise cost 400 MB and most of a minute.
pub const DEFAULT_MAX_DIRECTORY_ENTRIES: usize = 1 << 18;

static MAX_ENTRIES: AtomicUsize = AtomicUsize::new(DEFAULT_MAX_DIRECTORY_ENTRIES);

/// Sets how many entries one directory may hold in this process (the daemon's
/// `--max-directory-entries`); more is refused as it arrives.
pub fn set_max_directory_entries(limit: usize) {
    MAX_ENTRIES.store(limit, Ordering::Relaxed);
}

/// How many entries one directory may hold in this process.
pub fn max_directory_entries() -> usize {
    MAX_ENTRIES.load(Ordering::Relaxed)
}

/// A directory listing: entries by name, each a [`Node`]. Names are unique across
/// the three kinds by construction (one map), and the map keeps them in bytewise
/// order, which is the order of the canonical encoding.
///
/// Child directories carry the size they claim, which is kept as it is (it is part
/// of the encoding, hence of the digest); see the [module docs](super) for who
/// checks it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Directory {
    nodes: BTreeMap<PathComponent, Node>,
    /// Sum of the child directories' sizes as recorded in their entries.
    child_sizes: u64,
}

impl Directory {
    /// An empty directory.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds an entry; fails if the name is taken, the directory is full
    /// ([`max_directory_entries`]) or the size would overflow.
    pub fn add(&mut self, name: PathComponent, node: Node) -> Result<(), DirectoryError> {
        if self.nodes.contains_key(&name) {
            return Err(DirectoryError::DuplicateName(name));
        }
        let limit = max_directory_entries();
        if self.nodes.len() >= limit {
            return Err(DirectoryError::TooManyEntries { limit });
        }
        let child_sizes = match &node {
            Node::Directory { size, .. } => self.child_sizes.checked_add(*size),
            _ => Some(self.child_sizes),
        };
        // The larger of the two sizes (tvix's) must fit, so both do.
        let fits = child_sizes.filter(|c| {
            (self.nodes.len() as u64 + 1)
                .checked_mul(2)
                .and_then(|n| n.checked_add(*c))
                .is_some()
        });
        self.child_sizes = fits.ok_or_else(|| DirectoryError::SizeOverflow(name.clone()))?;
        self.nodes.insert(name, node);
        Ok(())
    }

    /// The entry called `name`.
    pub fn get(&self, name: &[u8]) -> Option<&Node> {
        // PathComponent orders like its bytes, so look up by a validated key; an
        // invalid name cannot be present.
        let key = PathComponent::try_from(name).ok()?;
        self.nodes.get(&key)
    }

    /// All entries, sorted by name.
    pub fn nodes(&self) -> impl ExactSizeIterator<Item = (&PathComponent, &Node)> {
        self.nodes.iter()
    }

    /// Entries that are directories: name, digest and size.
    pub fn directories(&self) -> impl Iterator<Item = (&PathComponent, &B3Digest, u64)> {
        self.nodes.iter().filter_map(|(name, node)| match node {
            Node::Directory { digest, size } => Some((name, digest, *size)),
            _ => None,
        })
    }

    /// Number of direct entries.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Whether there are no entries.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// The `size` a `DirectoryNode` pointing here carries by tvix's rule, which
    /// cairn emits: 2 x direct entries + the child directories' sizes as recorded
    /// here (0 for an empty directory, 2 for one holding a file). tvix-store and
    /// its continuation compute this, so the same tree gets the same digests.
    pub fn size(&self) -> u64 {
        // `add` checked that this fits.
        2 * self.nodes.len() as u64 + self.child_sizes
    }

    /// The size by the rule of the proto's comment (and of the seed's
    /// implementation): direct entries + the child directories' sizes as recorded
    /// here. Accepted on an edge from a client, never emitted.
    pub fn proto_size(&self) -> u64 {
        self.nodes.len() as u64 + self.child_sizes
    }

    /// Whether `size` on an edge pointing here is acceptable: either rule.
    pub fn accepts_size(&self, size: u64) -> bool {
        size == self.size() || size == self.proto_size()
    }

    /// The protobuf message: three sorted lists.
    pub fn to_proto(&self) -> proto::Directory {
        let mut out = proto::Directory::default();
        for (name, node) in &self.nodes {
            let name: Bytes = name.clone().into();
            match node {
                Node::Directory { digest, size } => out.directories.push(proto::DirectoryNode {
                    name,
                    digest: digest.to_bytes(),
                    size: *size,
                }),
                Node::File {
                    digest,
                    size,
                    executable,
                } => out.files.push(proto::FileNode {
                    name,
                    digest: digest.to_bytes(),
                    size: *size,
                    executable: *executable,
                }),
                Node::Symlink { target } => out.symlinks.push(proto::SymlinkNode {
                    name,
                    target: target.clone().into(),
                }),
            }
        }
        out
    }

    /// The canonical encoding: fields in number order, defaults omitted, no
    /// unknown fields (what prost emits for the message from [`Self::to_proto`]).
    pub fn encode(&self) -> Vec<u8> {
        self.to_proto().encode_to_vec()
    }

    /// BLAKE3 of the canonical encoding.
    pub fn digest(&self) -> B3Digest {
        B3Digest::of(&self.encode())
    }

    /// Decodes and validates a protobuf `Directory`.
    pub fn decode(bytes: &[u8]) -> Result<Self, DirectoryError> {
        Self::try_from(proto::Directory::decode(bytes)?)
    }
}

/// Checks that names in one list are strictly increasing.
fn check_sorted(
    kind: NodeKind,
    prev: &mut Option<PathComponent>,
    name: &PathComponent,
) -> Result<(), DirectoryError> {
    if let Some(p) = prev.as_ref() {
        if p == name {
            return Err(DirectoryError::DuplicateName(name.clone()));
        }
        if p > name {
            return Err(DirectoryError::Unsorted {
                kind,
                prev: p.clone(),
                name: name.clone(),
            });
        }
    }
    *prev = Some(name.clone());
    Ok(())
}

impl TryFrom<proto::Directory> for Directory {
    type Error = DirectoryError;

    /// Every per-message rule of WIRE.md: names, digests, targets, each list
    /// strictly sorted, names unique across the three lists.
    fn try_from(value: proto::Directory) -> Result<Self, Self::Error> {
        let mut dir = Directory::new();
        let name_of = |kind: NodeKind, name: Bytes| {
            PathComponent::try_from(name.clone()).map_err(|source| DirectoryError::InvalidName {
                kind,
                name: name.escape_ascii().to_string(),
                source,
            })
        };
        let digest_of = |kind: NodeKind, name: &PathComponent, digest: &Bytes| {
            B3Digest::try_from(digest).map_err(|source| DirectoryError::InvalidDigest {
                kind,
                name: name.to_string(),
                source,
            })
        };

        let mut prev = None;
        for n in value.directories {
            let name = name_of(NodeKind::Directory, n.name)?;
            check_sorted(NodeKind::Directory, &mut prev, &name)?;
            let digest = digest_of(NodeKind::Directory, &name, &n.digest)?;
            dir.add(
                name,
                Node::Directory {
                    digest,
                    size: n.size,
                },
            )?;
        }
        let mut prev = None;
        for n in value.files {
            let name = name_of(NodeKind::File, n.name)?;
            check_sorted(NodeKind::File, &mut prev, &name)?;
            let digest = digest_of(NodeKind::File, &name, &n.digest)?;
            dir.add(
                name,
                Node::File {
                    digest,
                    size: n.size,
                    executable: n.executable,
                },
            )?;
        }
        let mut prev = None;
        for n in value.symlinks {
            let name = name_of(NodeKind::Symlink, n.name)?;
            check_sorted(NodeKind::Symlink, &mut prev, &name)?;
            let target = SymlinkTarget::try_from(n.target).map_err(|source| {
                DirectoryError::InvalidTarget {
                    name: name.to_string(),
                    source,
                }
            })?;
            dir.add(name, Node::Symlink { target })?;
        }
        Ok(dir)
    }
}

impl From<&Directory> for proto::Directory {
    fn from(value: &Directory) -> Self {
        value.to_proto()
    }
}

impl From<Directory> for proto::Directory {
    fn from(value: Directory) -> Self {
        value.to_proto()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::NameError;

    fn name(n: &str) -> Bytes {
        Bytes::copy_from_slice(n.as_bytes())
    }

    fn file(n: &str) -> proto::FileNode {
        proto::FileNode {
            name: name(n),
            digest: Bytes::from_static(&[1; 32]),
            size: 3,
            executable: false,
        }
    }

    fn dirnode(n: &str, size: u64) -> proto::DirectoryNode {
        proto::DirectoryNode {
            name: name(n),
            digest: Bytes::from_static(&[2; 32]),
            size,
        }
    }

    fn link(n: &str, target: &str) -> proto::SymlinkNode {
        proto::SymlinkNode {
            name: name(n),
            target: name(target),
        }
    }

    #[test]
    fn empty_directory_digest() {
        let d = Directory::new();
        assert_eq!(d.encode(), Vec::<u8>::new());
        assert_eq!(
            d.digest().to_string(),
            "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262"
        );
        assert_eq!(d.size(), 0);
        assert_eq!(d.proto_size(), 0);
    }

    #[test]
    fn canonical_encoding_matches_hand_encoded_bytes() {
        // Directory { files: [FileNode { name: "a", digest: [1;32], size: 3,
        // executable: true }], symlinks: [SymlinkNode { name: "l", target: "t" }] },
        // encoded by hand from the protobuf wire format.
        let mut file = vec![0x0a, 0x01, b'a', 0x12, 0x20];
        file.extend_from_slice(&[1; 32]);
        file.extend_from_slice(&[0x18, 0x03, 0x20, 0x01]);
        let mut expected = vec![0x12, file.len() as u8];
        expected.extend_from_slice(&file);
        expected.extend_from_slice(&[0x1a, 0x06, 0x0a, 0x01, b'l', 0x12, 0x01, b't']);

        let mut d = Directory::new();
        d.add(
            PathComponent::try_from("l").unwrap(),
            Node::Symlink {
                target: SymlinkTarget::try_from("t").unwrap(),
            },
        )
        .unwrap();
        d.add(
            PathComponent::try_from("a").unwrap(),
            Node::File {
                digest: B3Digest::from([1; 32]),
                size: 3,
                executable: true,
            },
        )
        .unwrap();
        assert_eq!(d.encode(), expected);
        assert_eq!(d.digest(), B3Digest::from(blake3::hash(&expected)));
        assert_eq!(Directory::decode(&expected).unwrap(), d);
        assert_eq!(d.size(), 4);
        assert_eq!(d.proto_size(), 2);
    }

    #[test]
    fn size_counts_entries_and_subtrees() {
        let d = Directory::try_from(proto::Directory {
            directories: vec![dirnode("d", 5), dirnode("e", 0)],
            files: vec![file("f")],
            symlinks: vec![link("s", "x")],
        })
        .unwrap();
        // The recorded child sizes count, whichever rule produced them.
        assert_eq!(d.size(), 2 * 4 + 5);
        assert_eq!(d.proto_size(), 4 + 5);
        assert!(d.accepts_size(13) && d.accepts_size(9));
        assert!(!d.accepts_size(10) && !d.accepts_size(0));
    }

    #[test]
    fn rejections() {
        let reject = |d: proto::Directory| Directory::try_from(d).unwrap_err();
        assert!(matches!(
            reject(proto::Directory {
                files: vec![file("b"), file("a")],
                ..Default::default()
            }),
            DirectoryError::Unsorted {
                kind: NodeKind::File,
                ..
            }
        ));
        assert!(matches!(
            reject(proto::Directory {
                files: vec![file("a"), file("a")],
                ..Default::default()
            }),
            DirectoryError::DuplicateName(_)
        ));
        assert!(matches!(
            reject(proto::Directory {
                directories: vec![dirnode("a", 0)],
                symlinks: vec![link("a", "x")],
                ..Default::default()
            }),
            DirectoryError::DuplicateName(_)
        ));
        for bad in [".", "..", "a/b", "a\0", ""] {
            assert!(
                matches!(
                    reject(proto::Directory {
                        files: vec![file(bad)],
                        ..Default::default()
                    }),
                    DirectoryError::InvalidName { .. }
                ),
                "{bad:?}"
            );
        }
        let long = "x".repeat(256);
        assert!(matches!(
            reject(proto::Directory {
                symlinks: vec![link(&long, "x")],
                ..Default::default()
            }),
            DirectoryError::InvalidName {
                source: NameError::TooLong(256),
                ..
            }
        ));
        for bad in ["", "a\0b"] {
            assert!(matches!(
                reject(proto::Directory {
                    symlinks: vec![link("l", bad)],
                    ..Default::default()
                }),
                DirectoryError::InvalidTarget { .. }
            ));
        }
        let mut short = file("a");
        short.digest = Bytes::from_static(&[0; 31]);
        assert!(matches!(
            reject(proto::Directory {
                files: vec![short],
                ..Default::default()
            }),
            DirectoryError::InvalidDigest { .. }
        ));
        assert!(matches!(
            reject(proto::Directory {
                directories: vec![dirnode("a", u64::MAX), dirnode("b", 1)],
                ..Default::default()
            }),
            DirectoryError::SizeOverflow(_)
        ));
        // The sum fits but tvix's size (2 x entries on top) does not.
        assert!(matches!(
            reject(proto::Directory {
                directories: vec![dirnode("a", u64::MAX - 1)],
                ..Default::default()
            }),
            DirectoryError::SizeOverflow(_)
        ));
    }

    #[test]
    fn error_messages_name_the_entry() {
        let e = Directory::try_from(proto::Directory {
            files: vec![file("a\0")],
            ..Default::default()
        })
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "file entry \"a\\x00\": invalid name: name contains NUL at byte 1"
        );
    }
}
