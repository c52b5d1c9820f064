//! The validated Merkle DAG model: [`PathComponent`], [`SymlinkTarget`], [`Node`] and
//! [`Directory`]. Raw protobuf is turned into these types once, at the edge; a value
//! of these types satisfies every per-message rule of WIRE.md.
//!
//! One rule cannot be checked on a single message: a `DirectoryNode`'s `size` must
//! match the child it points at. A [`Directory`] therefore holds child sizes as
//! claimed; the directory services check them against the children when a closure
//! is put (see [`crate::directoryservice::ClosureValidator`]), so a `Directory` read
//! back from a service is consistent.

mod directory;
mod name;
mod node;

use std::fmt;

pub use directory::Directory;
pub use name::{
    MAX_NAME_LEN, MAX_TARGET_LEN, NameError, PathComponent, SymlinkTarget, TargetError,
};
pub use node::Node;

use crate::{B3Digest, DigestLenError};

/// The three kinds of [`Node`], named as the lists of a protobuf `Directory`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum NodeKind {
    /// A `DirectoryNode`.
    Directory,
    /// A `FileNode`.
    File,
    /// A `SymlinkNode`.
    Symlink,
}

impl fmt::Display for NodeKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            NodeKind::Directory => "directory",
            NodeKind::File => "file",
            NodeKind::Symlink => "symlink",
        })
    }
}

/// Why a `Directory` or `Node` (or a closure of directories) is invalid. Each variant
/// names the offending entry; names are shown with non-printable bytes escaped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DirectoryError {
    /// An entry's name breaks the name rules.
    #[error("{kind} entry \"{name}\": invalid name: {source}")]
    InvalidName {
        /// List the entry is in.
        kind: NodeKind,
        /// The name, escaped.
        name: String,
        /// What is wrong with it.
        #[source]
        source: NameError,
    },
    /// An entry's digest is not 32 bytes.
    #[error("{kind} entry \"{name}\": invalid digest: {source}")]
    InvalidDigest {
        /// List the entry is in.
        kind: NodeKind,
        /// The name, escaped.
        name: String,
        /// What is wrong with it.
        #[source]
        source: DigestLenError,
    },
    /// A symlink's target breaks the target rules.
    #[error("symlink entry \"{name}\": invalid target: {source}")]
    InvalidTarget {
        /// The name, escaped.
        name: String,
        /// What is wrong with it.
        #[source]
        source: TargetError,
    },
    /// A list is not strictly sorted by name.
    #[error("{kind} entries are not sorted: \"{name}\" comes after \"{prev}\"")]
    Unsorted {
        /// Which list.
        kind: NodeKind,
        /// The entry before.
        prev: PathComponent,
        /// The entry out of order.
        name: PathComponent,
    },
    /// A name appears twice (in the same list or in two of the three lists).
    #[error("name \"{0}\" appears more than once")]
    DuplicateName(PathComponent),
    /// The sizes add up to more than `u64::MAX`.
    #[error("directory size overflows u64 at entry \"{0}\"")]
    SizeOverflow(PathComponent),
    /// A protobuf `Node` with none of the three kinds set.
    #[error("node has none of directory, file or symlink set")]
    EmptyNode,
    /// The bytes are not a protobuf `Directory`.
    #[error("cannot decode Directory: {0}")]
    Decode(#[from] prost::DecodeError),
    /// A child directory neither sent earlier in the same closure nor stored.
    #[error(
        "directory entry \"{name}\" references directory {digest}, which was neither sent before it nor is stored"
    )]
    UnknownReference {
        /// The entry.
        name: PathComponent,
        /// The digest it references.
        digest: B3Digest,
    },
    /// A child directory's `size` differs from the child's actual size.
    #[error(
        "directory entry \"{name}\" -> {digest} has size {got}, expected {expected} (or the legacy {legacy})"
    )]
    WrongSize {
        /// The entry.
        name: PathComponent,
        /// The digest it references.
        digest: B3Digest,
        /// The size it claims.
        got: u64,
        /// The size of the child.
        expected: u64,
        /// The size tvix-store's last release would compute (also accepted).
        legacy: u64,
    },
}
