//! NARs over the content-addressed layer: rendering a root [`Node`] as the NAR Nix
//! would write for the same tree, and ingesting a NAR stream into blobs and
//! directories.
//!
//! - [`render`] / [`render_from`]: a [`NarRenderer`] (`AsyncRead`) producing the
//!   NAR byte-identical to `nix-store --dump`, in constant memory, fetching
//!   directories and opening blobs ahead of the reader (a bounded window) so that a
//!   render over gRPC is not bound by round trips. [`render_from`] starts at any
//!   byte offset without reading the blobs before it.
//! - [`calculate`]: the NAR's size and sha256 (what a `PathInfo` records).
//! - [`nar_size`]: the NAR's size from the directories alone, reading no blob.
//! - [`ingest`]: a NAR stream through the strict reader of `cairn-nix` into blobs
//!   (streamed, never a whole file in memory) and one all-or-nothing directory
//!   closure upload.
//!
//! - [`walk`]: every node of the tree with its path and NAR offset (for files, of
//!   the contents: Nix's `narOffset`), in NAR order, from the directories alone.
//!
//! The root's name never enters a NAR: a NAR is a node, and names belong to
//! directory entries only.

use cairn_castore::{B3Digest, DirectoryError, ErrorKind, NameError, TargetError};

mod ingest;
mod layout;
mod render;
mod segments;
mod walk;

pub use ingest::{Ingested, ingest, ingest_unhashed};
pub use render::{NarRenderer, calculate, nar_size, render, render_from};
pub use walk::{Entry, walk};

#[cfg(doc)]
use cairn_castore::Node;

/// Errors of NAR rendering and ingestion.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NarError {
    /// The NAR being ingested is malformed or truncated, or could not be read.
    #[error("reading the NAR: {0}")]
    Nar(#[from] cairn_nix::nar::Error),
    /// A NAR entry name the content-addressed layer cannot hold.
    #[error("NAR entry name after byte offset {offset}: {source}")]
    Name {
        /// Offset in the NAR of the entry.
        offset: u64,
        /// Why the name is refused.
        #[source]
        source: NameError,
    },
    /// A NAR symlink target the content-addressed layer cannot hold.
    #[error("NAR symlink target after byte offset {offset}: {source}")]
    Target {
        /// Offset in the NAR of the symlink node.
        offset: u64,
        /// Why the target is refused.
        #[source]
        source: TargetError,
    },
    /// A directory of the NAR could not be built (a size overflow).
    #[error("NAR directory ending at byte offset {offset}: {source}")]
    Directory {
        /// Offset in the NAR where the problem was found.
        offset: u64,
        /// The problem.
        #[source]
        source: DirectoryError,
    },
    /// A blob the tree references is not stored.
    #[error("blob {digest} (file of {size} bytes) not found")]
    BlobNotFound {
        /// The missing blob.
        digest: B3Digest,
        /// The file size the tree records.
        size: u64,
    },
    /// A directory the tree references is not stored.
    #[error("directory {digest} not found")]
    DirectoryNotFound {
        /// The missing directory.
        digest: B3Digest,
    },
    /// A blob's length differs from the file size its directory records.
    #[error("blob {digest} is {} bytes long where the tree says {expected}", if *.longer { "more than".to_string() } else { .actual.to_string() })]
    BlobSize {
        /// The blob.
        digest: B3Digest,
        /// The size the tree records.
        expected: u64,
        /// Bytes read (when shorter).
        actual: u64,
        /// Whether the blob had more bytes than expected.
        longer: bool,
    },
    /// Reading a blob failed (corruption is an `InvalidData` error from the
    /// verifying reader).
    #[error("reading blob {digest}: {source}")]
    BlobRead {
        /// The blob being read.
        digest: B3Digest,
        /// The reader's error.
        #[source]
        source: std::io::Error,
    },
    /// Writing a blob failed.
    #[error("writing the blob of the file at NAR byte offset {offset}: {source}")]
    BlobWrite {
        /// Offset in the NAR of the file's contents.
        offset: u64,
        /// The writer's error.
        #[source]
        source: std::io::Error,
    },
    /// A store handed back a different digest than the data has.
    #[error("{what}: the store returned digest {returned}, expected {expected}")]
    DigestMismatch {
        /// What was stored.
        what: &'static str,
        /// The digest computed here.
        expected: B3Digest,
        /// The digest the store returned.
        returned: B3Digest,
    },
    /// [`render_from`] was asked for an offset past the end of the NAR.
    #[error("offset {offset} is past the end of the NAR ({size} bytes)")]
    OffsetPastEnd {
        /// The offset asked for.
        offset: u64,
        /// The NAR's size.
        size: u64,
    },
    /// The blob or directory service failed.
    #[error(transparent)]
    Store(#[from] cairn_castore::Error),
}

impl NarError {
    /// Recovers a `NarError` carried inside an `io::Error` (as [`NarRenderer`]
    /// returns them); any other I/O error becomes [`cairn_castore::Error::Io`].
    pub fn from_io(e: std::io::Error) -> Self {
        match e.downcast::<NarError>() {
            Ok(e) => e,
            Err(e) => NarError::Store(cairn_castore::Error::Io(e)),
        }
    }

    /// The kind of failure: malformed NAR input is `InvalidArgument`, a missing
    /// blob or directory `NotFound`, data that does not match its tree `Corrupt`.
    pub fn kind(&self) -> ErrorKind {
        match self {
            NarError::Nar(cairn_nix::nar::Error::Io { source, .. }) => io_kind(source),
            NarError::Directory {
                source: cairn_castore::DirectoryError::TooManyEntries { .. },
                ..
            } => ErrorKind::ResourceExhausted,
            NarError::Nar(_)
            | NarError::Name { .. }
            | NarError::Target { .. }
            | NarError::Directory { .. }
            | NarError::OffsetPastEnd { .. } => ErrorKind::InvalidArgument,
            NarError::BlobNotFound { .. } | NarError::DirectoryNotFound { .. } => {
                ErrorKind::NotFound
            }
            NarError::BlobSize { .. } | NarError::DigestMismatch { .. } => ErrorKind::Corrupt,
            NarError::BlobRead { source, .. } | NarError::BlobWrite { source, .. } => {
                io_kind(source)
            }
            NarError::Store(e) => e.kind(),
        }
    }

    /// Into an `io::Error` for `AsyncRead`, with the kind matching [`Self::kind`]
    /// and `self` inside for [`Self::from_io`].
    pub(crate) fn into_io(self) -> std::io::Error {
        use std::io::ErrorKind as K;
        let kind = match self.kind() {
            ErrorKind::NotFound => K::NotFound,
            ErrorKind::InvalidArgument => K::InvalidInput,
            ErrorKind::ResourceExhausted => K::FileTooLarge,
            ErrorKind::Corrupt => K::InvalidData,
            ErrorKind::Internal | ErrorKind::Unavailable => K::Other,
        };
        std::io::Error::new(kind, self)
    }
}

/// The kind of an I/O error from a castore reader or writer (which may carry a
/// castore error inside).
fn io_kind(e: &std::io::Error) -> ErrorKind {
    if cairn_castore::storage_full(e) {
        return ErrorKind::ResourceExhausted;
    }
    if let Some(inner) = e.get_ref() {
        if let Some(c) = inner.downcast_ref::<cairn_castore::Error>() {
            return c.kind();
        }
        if let Some(n) = inner.downcast_ref::<NarError>() {
            return n.kind();
        }
    }
    match e.kind() {
        std::io::ErrorKind::InvalidData => ErrorKind::Corrupt,
        std::io::ErrorKind::InvalidInput => ErrorKind::InvalidArgument,
        std::io::ErrorKind::FileTooLarge => ErrorKind::ResourceExhausted,
        std::io::ErrorKind::NotFound => ErrorKind::NotFound,
        _ => ErrorKind::Internal,
    }
}

impl From<NarError> for cairn_castore::Error {
    /// Malformed NAR -> `InvalidArgument`, missing blob or directory -> `NotFound`,
    /// data not matching its tree -> `Corrupt`; service errors pass through.
    fn from(e: NarError) -> Self {
        match e {
            NarError::Store(e) => e,
            NarError::BlobNotFound { digest, .. } => cairn_castore::Error::NotFound {
                what: "blob",
                digest,
            },
            NarError::DirectoryNotFound { digest } => cairn_castore::Error::NotFound {
                what: "directory",
                digest,
            },
            other => match other.kind() {
                ErrorKind::InvalidArgument => {
                    cairn_castore::Error::InvalidArgument(other.to_string())
                }
                ErrorKind::Corrupt => cairn_castore::Error::Corrupt(other.to_string()),
                ErrorKind::ResourceExhausted => cairn_castore::Error::Io(std::io::Error::new(
                    std::io::ErrorKind::FileTooLarge,
                    other,
                )),
                ErrorKind::NotFound => cairn_castore::Error::Io(std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    other,
                )),
                ErrorKind::Internal | ErrorKind::Unavailable => {
                    cairn_castore::Error::storage(other)
                }
            },
        }
    }
}
