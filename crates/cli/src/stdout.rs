//! Stdout for the commands, with its reader going away told apart from every other
//! failure.
//!
//! `cairn dump P | head -c 10` closes the pipe early: the next write to stdout
//! fails with EPIPE, and cairn stops quietly with success, as `cat` would. A broken
//! pipe anywhere else (a daemon's socket closing under an upload) is a failure that
//! must be reported, so the error kind alone cannot tell: the writers here mark
//! their own EPIPE with [`Closed`], and `main` exits quietly only for that mark.

use std::fmt;
use std::fs::File;
use std::io::{self, IoSlice, Write};
use std::os::fd::AsFd;

use anyhow::Context;

/// The mark on an EPIPE from a write to stdout: whoever read cairn's output
/// stopped reading.
#[derive(Debug)]
pub struct Closed;

impl fmt::Display for Closed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("stdout was closed by its reader")
    }
}

impl std::error::Error for Closed {}

/// A writer to stdout whose EPIPE errors carry [`Closed`].
pub struct Stdout<W>(W);

/// Stdout as a plain file: `io::Stdout` is line-buffered, and would scan all
/// output for newlines and split writes at them. For bulk output (NARs, files).
pub fn raw() -> anyhow::Result<Stdout<File>> {
    let fd = io::stdout()
        .as_fd()
        .try_clone_to_owned()
        .context("cannot use stdout")?;
    Ok(Stdout(File::from(fd)))
}

/// The process's line-buffered stdout, locked. For lines of text.
pub fn locked() -> Stdout<io::StdoutLock<'static>> {
    Stdout(io::stdout().lock())
}

fn mark(e: io::Error) -> io::Error {
    if e.kind() == io::ErrorKind::BrokenPipe {
        io::Error::new(io::ErrorKind::BrokenPipe, Closed)
    } else {
        e
    }
}

impl<W: Write> Write for Stdout<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.write(buf).map_err(mark)
    }

    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        self.0.write_vectored(bufs).map_err(mark)
    }

    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        self.0.write_all(buf).map_err(mark)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.0.flush().map_err(mark)
    }
}

/// Whether `err` is, or was caused by, a write to stdout after its reader left.
pub fn is_closed(err: &anyhow::Error) -> bool {
    err.chain().any(|cause| {
        // `io::Error` does not list its payload as its source: look inside.
        cause.is::<Closed>()
            || cause
                .downcast_ref::<io::Error>()
                .and_then(io::Error::get_ref)
                .is_some_and(|inner| inner.is::<Closed>())
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// A writer failing every call with the given kind.
    struct Failing(io::ErrorKind);

    impl Write for Failing {
        fn write(&mut self, _: &[u8]) -> io::Result<usize> {
            Err(self.0.into())
        }
        fn flush(&mut self) -> io::Result<()> {
            Err(self.0.into())
        }
    }

    #[test]
    fn only_a_broken_pipe_of_stdout_itself_is_closed() {
        let mut out = Stdout(Failing(io::ErrorKind::BrokenPipe));
        let err = anyhow::Error::new(out.write_all(b"x").unwrap_err()).context("writing");
        assert!(is_closed(&err));
        let err = anyhow::Error::new(out.flush().unwrap_err());
        assert!(is_closed(&err));
        // Through a `BufWriter` and an error type that keeps it as its source.
        let mut buffered = io::BufWriter::new(Stdout(Failing(io::ErrorKind::BrokenPipe)));
        buffered.write_all(b"x").unwrap();
        let err = buffered.flush().unwrap_err();
        let err = anyhow::Error::new(cairn_nix::nar::Error::from_io(err, 0));
        assert!(is_closed(&err), "{err:#}");

        // A broken pipe elsewhere (a socket to a daemon) is a failure.
        let err =
            anyhow::Error::new(io::Error::from(io::ErrorKind::BrokenPipe)).context("uploading");
        assert!(!is_closed(&err));
        let mut out = Stdout(Failing(io::ErrorKind::PermissionDenied));
        assert!(!is_closed(&out.write_all(b"x").unwrap_err().into()));
    }
}
