//! The NAR (Nix ARchive) format: a strict streaming reader and a streaming writer,
//! each sync ([`std::io`]) and async ([`tokio::io`]).
//!
//! A NAR is a sequence of *strings*: a little-endian `u64` length, the bytes, then
//! zero bytes up to the next multiple of 8. The grammar, as Nix writes it:
//!
//! ```text
//! nar       = "nix-archive-1" node
//! node      = "(" "type" ( regular | symlink | directory ) ")"
//! regular   = "regular" [ "executable" "" ] "contents" CONTENTS
//! symlink   = "symlink" "target" TARGET
//! directory = "directory" { "entry" "(" "name" NAME "node" node ")" }
//! ```
//!
//! File contents are one string whose length is the file size; both the reader and
//! the writer stream it, so memory use never depends on file sizes.
//!
//! - [`Reader`] / [`AsyncReader`]: a pull parser yielding [`Event`]s. It accepts
//!   exactly the NARs Nix writes (the canonical form above) and nothing else, see
//!   [`ErrorKind`] for what it rejects. Nesting is tracked with an explicit stack,
//!   bounded by [`Limits::max_depth`]; no input makes it recurse or allocate more
//!   than the [`Limits`] allow.
//! - [`Writer`] / [`AsyncWriter`]: driven by the same events
//!   (`directory`, `entry`, `end_directory`, `file`, `symlink`), checking that
//!   entries come sorted and unique, so everything it writes the reader accepts.
//!
//! Reading a NAR and writing its events back gives the same bytes:
//!
//! ```
//! use cairn_nix::nar::{self, Reader, Writer};
//!
//! let mut w = Writer::new(Vec::new());
//! w.directory()?;
//! w.entry(b"hello")?;
//! w.file(false, 5, &mut &b"world"[..])?;
//! w.entry(b"link")?;
//! w.symlink(b"hello")?;
//! w.end_directory()?;
//! let bytes = w.finish()?;
//!
//! let mut copy = Writer::new(Vec::new());
//! nar::copy(&mut Reader::new(&bytes[..]), &mut copy)?;
//! assert_eq!(copy.finish()?, bytes);
//! # Ok::<(), nar::Error>(())
//! ```

use std::fmt;
use std::io;

mod async_reader;
mod async_writer;
mod grammar;
mod reader;
mod writer;

pub use async_reader::{AsyncContents, AsyncEvent, AsyncReader};
pub use async_writer::AsyncWriter;
pub use reader::{Contents, Event, Reader};
pub use writer::Writer;

/// The first string of every NAR.
pub const MAGIC: &[u8] = b"nix-archive-1";

/// Bounds the reader enforces, so that no input can make it use unbounded memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Deepest directory nesting accepted; the root directory is depth 1.
    pub max_depth: usize,
    /// Longest directory entry name, in bytes.
    pub max_name_len: usize,
    /// Longest symlink target, in bytes.
    pub max_target_len: usize,
}

impl Default for Limits {
    /// Depth 1024; names up to 1024 bytes (4 × Linux's `NAME_MAX`), symlink
    /// targets up to 4096 bytes (Linux's `PATH_MAX`).
    fn default() -> Self {
        Limits {
            max_depth: 1024,
            max_name_len: 1024,
            max_target_len: 4096,
        }
    }
}

/// An error from the NAR reader or writer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The underlying reader or writer failed.
    #[error("I/O error at NAR byte offset {offset}: {source}")]
    Io {
        /// Offset in the NAR stream where the failing operation started.
        offset: u64,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// The input is not a valid (canonical, strict) NAR, or the writer was asked to
    /// write something that would not be one.
    #[error("invalid NAR at byte offset {offset}: {kind}")]
    Invalid {
        /// Offset in the NAR stream of the offending string or byte.
        offset: u64,
        /// What is wrong.
        kind: ErrorKind,
    },
    /// The writer's methods were called in an order that does not form a NAR.
    #[error("NAR writer misuse at byte offset {offset}: {message}")]
    Usage {
        /// Bytes written so far.
        offset: u64,
        /// What was wrong with the call.
        message: &'static str,
    },
    /// A file's contents did not have the size given to the writer.
    #[error(
        "file contents at NAR byte offset {offset}: expected {expected} bytes, the reader gave {}",
        if *.actual > *.expected { "more".to_string() } else { actual.to_string() }
    )]
    ContentsSize {
        /// Offset in the NAR of the file's contents.
        offset: u64,
        /// The size declared up front.
        expected: u64,
        /// Bytes the reader yielded (declared size + 1 if it yielded more).
        actual: u64,
    },
    /// A previous call failed; the reader or writer is in an unknown state.
    #[error("NAR stream already failed at byte offset {offset}")]
    Poisoned {
        /// Offset at which the previous failure happened.
        offset: u64,
    },
}

impl Error {
    /// The byte offset in the NAR stream the error refers to.
    pub fn offset(&self) -> u64 {
        match self {
            Error::Io { offset, .. }
            | Error::Invalid { offset, .. }
            | Error::Usage { offset, .. }
            | Error::ContentsSize { offset, .. }
            | Error::Poisoned { offset } => *offset,
        }
    }

    /// What makes the NAR invalid, if that is the error.
    pub fn kind(&self) -> Option<&ErrorKind> {
        match self {
            Error::Invalid { kind, .. } => Some(kind),
            _ => None,
        }
    }

    /// Recovers the NAR error inside an I/O error returned by [`Contents`] or
    /// [`AsyncContents`]; any other I/O error becomes [`Error::Io`] at `offset`.
    pub fn from_io(source: io::Error, offset: u64) -> Self {
        match source.downcast::<Error>() {
            Ok(e) => e,
            Err(source) => Error::Io { offset, source },
        }
    }

    pub(crate) fn invalid(offset: u64, kind: ErrorKind) -> Self {
        Error::Invalid { offset, kind }
    }

    /// Converts to an [`io::Error`] (for `Read`/`Write` impls), keeping `self` as the
    /// inner error so callers can downcast back.
    pub(crate) fn into_io(self) -> io::Error {
        let kind = match &self {
            Error::Io { source, .. } => source.kind(),
            Error::Invalid {
                kind: ErrorKind::Truncated { .. },
                ..
            } => io::ErrorKind::UnexpectedEof,
            _ => io::ErrorKind::InvalidData,
        };
        io::Error::new(kind, self)
    }
}

/// Why a NAR is invalid.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The stream does not start with the `nix-archive-1` string.
    BadMagic,
    /// The stream ended inside the NAR.
    Truncated {
        /// What was being read.
        expected: &'static str,
    },
    /// A different token than the grammar allows here.
    UnexpectedToken {
        /// The token(s) allowed here.
        expected: &'static str,
        /// What was found, escaped and shortened for printing.
        found: String,
    },
    /// A string is longer than allowed here.
    TooLong {
        /// What the string is (name, symlink target, token).
        what: &'static str,
        /// Its declared length.
        len: u64,
        /// The limit.
        max: u64,
    },
    /// A padding byte after a string is not zero.
    BadPadding,
    /// A directory entry name that no file system path can have.
    InvalidName {
        /// The name, escaped.
        name: String,
        /// Why it is invalid.
        reason: &'static str,
    },
    /// Directory entries are not in strictly increasing byte order.
    NotSorted {
        /// The previous entry's name, escaped.
        previous: String,
        /// This entry's name, escaped.
        name: String,
    },
    /// Two entries of a directory have the same name.
    Duplicate {
        /// The name, escaped.
        name: String,
    },
    /// A symlink target that is empty or contains a NUL byte.
    InvalidTarget {
        /// Why it is invalid.
        reason: &'static str,
    },
    /// Directories nested deeper than [`Limits::max_depth`].
    TooDeep {
        /// The limit.
        max: usize,
    },
    /// Bytes follow the end of the root node.
    TrailingData,
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ErrorKind::BadMagic => write!(f, "not a NAR: it does not start with \"nix-archive-1\""),
            ErrorKind::Truncated { expected } => {
                write!(f, "truncated: the stream ends where {expected} should be")
            }
            ErrorKind::UnexpectedToken { expected, found } => {
                write!(f, "expected {expected}, found {found}")
            }
            ErrorKind::TooLong { what, len, max } => {
                write!(
                    f,
                    "{what} is {len} bytes long, more than the limit of {max}"
                )
            }
            ErrorKind::BadPadding => write!(f, "non-zero padding byte"),
            ErrorKind::InvalidName { name, reason } => {
                write!(f, "invalid entry name \"{name}\": {reason}")
            }
            ErrorKind::NotSorted { previous, name } => write!(
                f,
                "directory entries not sorted: \"{name}\" comes after \"{previous}\""
            ),
            ErrorKind::Duplicate { name } => write!(f, "duplicate directory entry \"{name}\""),
            ErrorKind::InvalidTarget { reason } => write!(f, "invalid symlink target: {reason}"),
            ErrorKind::TooDeep { max } => {
                write!(f, "directories nested deeper than the limit of {max}")
            }
            ErrorKind::TrailingData => write!(f, "trailing data after the end of the NAR"),
        }
    }
}

/// Copies every event of `reader` to `writer`: for a valid NAR, the output is
/// byte-identical to the input. Does not call [`Writer::finish`].
pub fn copy<R: io::Read, W: io::Write>(
    reader: &mut Reader<R>,
    writer: &mut Writer<W>,
) -> Result<(), Error> {
    while let Some(event) = reader.next()? {
        match event {
            Event::Directory => writer.directory()?,
            Event::Entry { name } => writer.entry(name)?,
            Event::DirectoryEnd => writer.end_directory()?,
            Event::Symlink { target } => writer.symlink(target)?,
            Event::File {
                executable,
                size,
                mut contents,
                ..
            } => writer.file(executable, size, &mut contents)?,
        }
    }
    Ok(())
}

/// Alignment of I/O buffers.
pub(crate) const ALIGN: usize = 4096;

/// A zeroed byte buffer starting at a 4096-byte boundary. The kernel copies into
/// (and out of) page-aligned memory much faster on some CPUs: 256 KiB reads from the
/// page cache ran at 3.6 GB/s into an aligned buffer and 0.9 GB/s into one 16 bytes
/// off (AMD EPYC, Linux), which made an unaligned `nar dump` 2x slower than Nix.
pub(crate) struct AlignedBuf {
    mem: Vec<u8>,
    start: usize,
    len: usize,
}

impl AlignedBuf {
    pub(crate) fn new(len: usize) -> Self {
        let mem = vec![0; len + ALIGN];
        let start = (ALIGN - mem.as_ptr() as usize % ALIGN) % ALIGN;
        AlignedBuf { mem, start, len }
    }
}

impl std::ops::Deref for AlignedBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.mem[self.start..self.start + self.len]
    }
}

impl std::ops::DerefMut for AlignedBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        &mut self.mem[self.start..self.start + self.len]
    }
}

/// Zero bytes after a string of `len` bytes, up to the next multiple of 8.
pub(crate) fn padding_len(len: u64) -> usize {
    ((8 - (len % 8)) % 8) as usize
}

/// Appends one NAR string (length, bytes, padding) to `out`.
pub(crate) fn push_str(out: &mut Vec<u8>, s: &[u8]) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s);
    out.extend_from_slice(&[0u8; 8][..padding_len(s.len() as u64)]);
}

/// Printable form of untrusted bytes for error messages: escaped, at most ~64 chars.
pub(crate) fn escape(bytes: &[u8]) -> String {
    const MAX: usize = 64;
    let mut s: String = bytes
        .iter()
        .take(MAX)
        .flat_map(|b| std::ascii::escape_default(*b))
        .map(char::from)
        .collect();
    if bytes.len() > MAX {
        s.push_str(&format!("... ({} bytes)", bytes.len()));
    }
    s
}

/// Checks a directory entry name as Nix does when restoring; `Err` holds the reason.
pub(crate) fn check_name(name: &[u8]) -> Result<(), &'static str> {
    if name.is_empty() {
        Err("empty")
    } else if name == b"." || name == b".." {
        Err("\".\" and \"..\" are not allowed")
    } else if name.contains(&b'/') {
        Err("contains '/'")
    } else if name.contains(&0) {
        Err("contains a NUL byte")
    } else {
        Ok(())
    }
}

/// Checks a symlink target; `Err` holds the reason.
pub(crate) fn check_target(target: &[u8]) -> Result<(), &'static str> {
    if target.is_empty() {
        Err("empty")
    } else if target.contains(&0) {
        Err("contains a NUL byte")
    } else {
        Ok(())
    }
}
