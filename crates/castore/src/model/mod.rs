//! The validated Merkle DAG model: [`PathComponent`], [`SymlinkTarget`], [`Node`] and
//! [`Directory`]. Raw protobuf is turned into these types once, at the edge; a value
//! of these types satisfies every per-message rule of WIRE.md.
//!
//! One rule cannot be checked on a single message: a `DirectoryNode`'s `size` must
//! match the child it points at, by either of the two rules in WIRE.md
//! ([`Directory::size`], [`Directory::proto_size`]). A [`Directory`] therefore holds
//! child sizes as claimed; the directory services check them against the children
//! when a closure is put (see [`crate::directoryservice::ClosureValidator`]), so a
//! `Directory` read back from a service is consistent.

mod directory;
mod name;
mod node;

use std::fmt;

pub use directory::{
    DEFAULT_MAX_DIRECTORY_ENTRIES, Directory, max_directory_entries, set_max_directory_entries,
};
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
    /// A child directory's `size` is neither of the child's two sizes.
    #[error(
        "directory entry \"{name}\" -> {digest} has size {got}, expected {expected} (tvix's rule) or {proto} (the proto comment's rule)"
    )]
    WrongSize {
        /// The entry.
        name: PathComponent,
        /// The digest it references.
        digest: B3Digest,
        /// The size it claims.
        got: u64,
        /// The child's size by tvix's rule ([`Directory::size`]).
        expected: u64,
        /// The child's size by the proto comment's rule ([`Directory::proto_size`]).
        proto: u64,
    },
    /// More entries than this process accepts in one directory
    /// ([`max_directory_entries`]).
    #[error(
        "more than {limit} entries in one directory (the server's limit; its operator can raise --max-directory-entries)"
    )]
    TooManyEntries {
        /// The limit.
        limit: usize,
    },
    /// A directory of an uploaded closure that its root does not reach.
    #[error("directory {0} is not reachable from the closure's root (it would only be garbage)")]
    Unreachable(B3Digest),
}
