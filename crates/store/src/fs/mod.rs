//! Import from and export to the file system.
//!
//! - [`import_path`]: a file, directory or symlink on disk into blobs and
//!   directories, with the sha256 and size of its NAR (what Nix needs to name it as
//!   a content-addressed store path), reading each file once.
//! - [`export`]: a root node back onto disk, at a new path, atomically.
//!
//! Only regular files, directories and symlinks exist in this model (and in a NAR);
//! FIFOs, sockets and device files are refused with the path named. A file is
//! executable when its owner may execute it, as in a NAR.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

mod export;
mod import;

pub use export::{export, rename_new};
pub use import::{Imported, import_path};

/// Errors of [`import_path`] and [`export`]; each names the path concerned.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A file system operation failed.
    #[error("cannot {what} {}: {source}", path.display())]
    Io {
        /// The operation ("read", "open", "create", ...).
        what: &'static str,
        /// The path.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A FIFO, socket or device file, which a NAR cannot hold.
    #[error(
        "{} is {kind}: a store path can only hold regular files, directories and symlinks; \
         remove it or import a path that does not contain it",
        path.display()
    )]
    Unsupported {
        /// The path.
        path: PathBuf,
        /// What it is ("a FIFO (named pipe)", ...).
        kind: &'static str,
    },
    /// A name the store cannot hold (in practice only possible on exotic file systems).
    #[error("{}: invalid name: {source}", path.display())]
    Name {
        /// The path.
        path: PathBuf,
        /// Why.
        #[source]
        source: cairn_castore::NameError,
    },
    /// A symlink whose target the store cannot hold (empty or over 4095 bytes).
    #[error("{}: invalid symlink target: {source}", path.display())]
    Target {
        /// The path.
        path: PathBuf,
        /// Why.
        #[source]
        source: cairn_castore::TargetError,
    },
    /// A file changed size while it was being imported.
    #[error(
        "{}: the file changed while being read (expected {expected} bytes); import it \
         again when it is not being written to",
        path.display()
    )]
    Changed {
        /// The path.
        path: PathBuf,
        /// Size when the import started.
        expected: u64,
    },
    /// The path to export to exists already.
    #[error(
        "{} already exists: export only creates new paths; remove it or choose another path",
        path.display()
    )]
    Exists {
        /// The path.
        path: PathBuf,
    },
    /// A blob read back has another size than its node says.
    #[error("{}: blob {digest} has {actual} bytes, the node says {expected}", path.display())]
    SizeMismatch {
        /// Where it was being written.
        path: PathBuf,
        /// The blob.
        digest: cairn_castore::B3Digest,
        /// Size in the node.
        expected: u64,
        /// Bytes the blob service returned.
        actual: u64,
    },
    /// The blob service stored other bytes than were sent (its digest differs).
    #[error("{}: the blob service stored {got} for contents with digest {want}", path.display())]
    DigestMismatch {
        /// The file.
        path: PathBuf,
        /// BLAKE3 of the bytes read.
        want: cairn_castore::B3Digest,
        /// Digest the service returned.
        got: cairn_castore::B3Digest,
    },
    /// The blob or directory service failed.
    #[error("{}: {source}", path.display())]
    Store {
        /// The path being imported or exported.
        path: PathBuf,
        /// The service's error (boxed: it is large).
        #[source]
        source: Box<cairn_castore::Error>,
    },
    /// The import was stopped because another part of it failed.
    #[error("import aborted")]
    Aborted,
    /// A worker task failed (panicked or was cancelled).
    #[error("import task failed: {0}")]
    Task(String),
}

impl Error {
    fn store(path: &std::path::Path, source: cairn_castore::Error) -> Self {
        Error::Store {
            path: path.to_path_buf(),
            source: Box::new(source),
        }
    }
}

/// Counts of what an import has read so far, updated as it goes: poll it from
/// another thread to show progress.
#[derive(Debug, Default)]
pub struct Progress {
    files: AtomicU64,
    bytes: AtomicU64,
    stored: AtomicU64,
}

impl Progress {
    /// A progress counter at zero.
    pub fn new() -> Self {
        Self::default()
    }

    /// Regular files read so far.
    pub fn files(&self) -> u64 {
        self.files.load(Ordering::Relaxed)
    }

    /// Bytes of file contents read so far.
    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    /// Regular files whose contents the blob service has stored so far.
    pub fn stored(&self) -> u64 {
        self.stored.load(Ordering::Relaxed)
    }

    fn add_file(&self) {
        self.files.fetch_add(1, Ordering::Relaxed);
    }

    fn add_bytes(&self, n: u64) {
        self.bytes.fetch_add(n, Ordering::Relaxed);
    }

    fn add_stored(&self) {
        self.stored.fetch_add(1, Ordering::Relaxed);
    }
}

/// What a file system entry that cannot be stored is, for [`Error::Unsupported`];
/// `None` for the three supported kinds.
fn unsupported_kind(ft: std::fs::FileType) -> Option<&'static str> {
    use std::os::unix::fs::FileTypeExt;
    if ft.is_file() || ft.is_dir() || ft.is_symlink() {
        None
    } else if ft.is_fifo() {
        Some("a FIFO (named pipe)")
    } else if ft.is_socket() {
        Some("a socket")
    } else if ft.is_block_device() {
        Some("a block device")
    } else if ft.is_char_device() {
        Some("a character device")
    } else {
        Some("of an unknown file type")
    }
}

#[cfg(test)]
mod tests;
