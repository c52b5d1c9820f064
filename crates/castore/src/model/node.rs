//! [`Node`]: what a directory entry points at. Names live outside nodes (as keys of a
//! [`crate::Directory`], or next to a root node in the store layer), so a node can be
//! moved under another name without being rebuilt.

use bytes::Bytes;

use super::{DirectoryError, NodeKind, PathComponent, SymlinkTarget};
use crate::{B3Digest, proto};

/// A directory entry's content: a directory, a file or a symlink.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Node {
    /// A directory, by the digest of its [`crate::Directory`] and its size (number of
    /// entries in the whole subtree, see [`crate::Directory::size`]).
    Directory {
        /// Digest of the directory's canonical encoding.
        digest: B3Digest,
        /// Entries in the whole subtree.
        size: u64,
    },
    /// A regular file, by the BLAKE3 digest of its contents.
    File {
        /// BLAKE3 digest of the contents.
        digest: B3Digest,
        /// Length of the contents in bytes.
        size: u64,
        /// Whether the executable bit is set.
        executable: bool,
    },
    /// A symbolic link.
    Symlink {
        /// Where it points.
        target: SymlinkTarget,
    },
}

impl Node {
    /// Which of the three kinds this is.
    pub fn kind(&self) -> NodeKind {
        match self {
            Node::Directory { .. } => NodeKind::Directory,
            Node::File { .. } => NodeKind::File,
            Node::Symlink { .. } => NodeKind::Symlink,
        }
    }

    /// The protobuf `Node` carrying this node under `name`. `name` is not checked:
    /// the store layer uses store path basenames, and current clients send an empty
    /// name for anonymous nodes.
    pub fn into_proto(self, name: Bytes) -> proto::Node {
        let node = match self {
            Node::Directory { digest, size } => {
                proto::node::Node::Directory(proto::DirectoryNode {
                    name,
                    digest: digest.into(),
                    size,
                })
            }
            Node::File {
                digest,
                size,
                executable,
            } => proto::node::Node::File(proto::FileNode {
                name,
                digest: digest.into(),
                size,
                executable,
            }),
            Node::Symlink { target } => proto::node::Node::Symlink(proto::SymlinkNode {
                name,
                target: target.into(),
            }),
        };
        proto::Node { node: Some(node) }
    }

    /// Validates a protobuf `Node` except for its name, which is returned as sent for
    /// the caller to check by its own rules (it may be empty).
    pub fn try_from_proto_unnamed(node: proto::Node) -> Result<(Bytes, Node), DirectoryError> {
        let label = |name: &Bytes| name.escape_ascii().to_string();
        match node.node {
            None => Err(DirectoryError::EmptyNode),
            Some(proto::node::Node::Directory(n)) => {
                let digest = B3Digest::try_from(&n.digest).map_err(|source| {
                    DirectoryError::InvalidDigest {
                        kind: NodeKind::Directory,
                        name: label(&n.name),
                        source,
                    }
                })?;
                Ok((
                    n.name,
                    Node::Directory {
                        digest,
                        size: n.size,
                    },
                ))
            }
            Some(proto::node::Node::File(n)) => {
                let digest = B3Digest::try_from(&n.digest).map_err(|source| {
                    DirectoryError::InvalidDigest {
                        kind: NodeKind::File,
                        name: label(&n.name),
                        source,
                    }
                })?;
                Ok((
                    n.name,
                    Node::File {
                        digest,
                        size: n.size,
                        executable: n.executable,
                    },
                ))
            }
            Some(proto::node::Node::Symlink(n)) => {
                let target = SymlinkTarget::try_from(n.target).map_err(|source| {
                    DirectoryError::InvalidTarget {
                        name: label(&n.name),
                        source,
                    }
                })?;
                Ok((n.name, Node::Symlink { target }))
            }
        }
    }

    /// Validates a protobuf `Node` including its name ([`PathComponent`] rules).
    pub fn try_from_proto(node: proto::Node) -> Result<(PathComponent, Node), DirectoryError> {
        let (name, node) = Self::try_from_proto_unnamed(node)?;
        let kind = node.kind();
        let name = PathComponent::try_from(name.clone()).map_err(|source| {
            DirectoryError::InvalidName {
                kind,
                name: name.escape_ascii().to_string(),
                source,
            }
        })?;
        Ok((name, node))
    }
}
