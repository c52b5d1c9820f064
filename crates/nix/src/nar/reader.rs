//! The sync strict NAR reader.

use std::io::{self, Read};

use super::grammar::{Grammar, Step, Stop};
use super::{ALIGN, AlignedBuf, Error, ErrorKind, Limits};

/// Default read buffer: large enough that small-file NARs need few reads.
pub(crate) const BUF_SIZE: usize = 64 * 1024;

/// What the reader found next. Names and targets borrow from the reader.
#[derive(Debug)]
pub enum Event<'a, R> {
    /// Start of a directory node; its entries follow, then [`Event::DirectoryEnd`].
    Directory,
    /// A directory entry; the next event is its node. Names are checked: non-empty,
    /// not `.` or `..`, no `/` or NUL, strictly greater (bytewise) than the previous
    /// entry's.
    Entry {
        /// The entry's name.
        name: &'a [u8],
    },
    /// End of the innermost open directory.
    DirectoryEnd,
    /// A regular file. Read `contents` to get its bytes; contents not read are
    /// skipped by the next call to [`Reader::next`].
    File {
        /// Whether the file is executable.
        executable: bool,
        /// Its size in bytes.
        size: u64,
        /// Offset in the NAR of its first byte (Nix's `narOffset`).
        offset: u64,
        /// Its bytes.
        contents: Contents<'a, R>,
    },
    /// A symlink. The target is non-empty and contains no NUL byte.
    Symlink {
        /// Where it points.
        target: &'a [u8],
    },
}

/// Input buffer with stream offset tracking, shared by the sync and async readers.
pub(crate) struct Input {
    pub(crate) buf: AlignedBuf,
    pub(crate) pos: usize,
    pub(crate) end: usize,
    /// Stream offset of `buf[pos]`.
    pub(crate) offset: u64,
    pub(crate) eof: bool,
    /// Unread bytes of the current file's contents.
    pub(crate) remaining: u64,
    /// Offset of the first failure; every later call fails.
    pub(crate) failed: Option<u64>,
}

impl Input {
    pub(crate) fn new(limits: &Limits) -> Self {
        // Room for one step plus the alignment slack `compact` may add.
        let size = BUF_SIZE.max(Grammar::max_step_len(limits) + ALIGN);
        Input {
            buf: AlignedBuf::new(size),
            pos: 0,
            end: 0,
            offset: 0,
            eof: false,
            remaining: 0,
            failed: None,
        }
    }

    pub(crate) fn available(&self) -> &[u8] {
        &self.buf[self.pos..self.end]
    }

    pub(crate) fn consume(&mut self, n: usize) {
        self.pos += n;
        self.offset += n as u64;
    }

    /// Moves unread bytes to the front, so that the free space after them starts
    /// at an aligned offset (reads into it are faster, see [`AlignedBuf`]) and is
    /// nearly maximal.
    pub(crate) fn compact(&mut self) {
        let unread = self.end - self.pos;
        let to = (ALIGN - unread % ALIGN) % ALIGN;
        if self.pos != to {
            self.buf.copy_within(self.pos..self.end, to);
            self.pos = to;
            self.end = to + unread;
        }
    }

    pub(crate) fn fail(&mut self, e: Error) -> Error {
        self.failed = Some(e.offset());
        e
    }

    pub(crate) fn check_failed(&self) -> Result<(), Error> {
        match self.failed {
            Some(offset) => Err(Error::Poisoned { offset }),
            None => Ok(()),
        }
    }

    pub(crate) fn truncated_in_contents(&self) -> Error {
        Error::invalid(
            self.offset,
            ErrorKind::Truncated {
                expected: "file contents",
            },
        )
    }

    /// Takes up to `out.len()` bytes of file contents from the buffer.
    pub(crate) fn take_contents(&mut self, out: &mut [u8]) -> usize {
        let n = out
            .len()
            .min(self.end - self.pos)
            .min(usize::try_from(self.remaining).unwrap_or(usize::MAX));
        out[..n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
        self.consume(n);
        self.remaining -= n as u64;
        n
    }

    /// Skips buffered contents; returns whether contents remain to be read.
    pub(crate) fn skip_buffered_contents(&mut self) -> bool {
        let n = (self.end - self.pos).min(usize::try_from(self.remaining).unwrap_or(usize::MAX));
        self.consume(n);
        self.remaining -= n as u64;
        self.remaining > 0
    }
}

/// What one grammar step yielded, without borrows (so the loop can refill).
pub(crate) enum Outcome {
    Directory,
    Entry,
    DirectoryEnd,
    File {
        executable: bool,
        size: u64,
    },
    /// A symlink whose target is `buf[start..end]`.
    Symlink(usize, usize),
    /// The root node is complete.
    End,
}

impl Input {
    /// Runs one grammar step on the buffer. `Ok(None)`: need more input.
    pub(crate) fn try_step(&mut self, grammar: &mut Grammar) -> Result<Option<Outcome>, Error> {
        match grammar.step(self.available(), self.offset) {
            Ok((consumed, step)) => {
                let start = self.pos;
                self.consume(consumed);
                Ok(Some(match step {
                    Step::Symlink { start: s, end: e } => Outcome::Symlink(start + s, start + e),
                    Step::File { executable, size } => {
                        self.remaining = size;
                        Outcome::File { executable, size }
                    }
                    Step::Directory => Outcome::Directory,
                    Step::Entry => Outcome::Entry,
                    Step::DirectoryEnd => Outcome::DirectoryEnd,
                    Step::End => Outcome::End,
                }))
            }
            Err(Stop::NeedMore { at, expected }) => {
                if self.eof {
                    Err(Error::invalid(at, ErrorKind::Truncated { expected }))
                } else {
                    Ok(None)
                }
            }
            Err(Stop::Fatal(e)) => Err(e),
        }
    }

    pub(crate) fn trailing_data(&self) -> Error {
        Error::invalid(self.offset, ErrorKind::TrailingData)
    }
}

/// A strict streaming NAR reader: a pull parser yielding [`Event`]s.
///
/// Accepts only canonical NARs, as Nix writes them; every error names what is wrong
/// and its byte offset. Memory use is bounded by [`Limits`], independent of file
/// sizes: file contents are streamed through [`Contents`]. After an error, every
/// further call fails with [`Error::Poisoned`].
pub struct Reader<R> {
    inner: R,
    input: Input,
    grammar: Grammar,
}

impl<R: Read> Reader<R> {
    /// A reader with the default [`Limits`]. It buffers its input itself.
    pub fn new(inner: R) -> Self {
        Self::with_limits(inner, Limits::default())
    }

    /// A reader with the given limits.
    pub fn with_limits(inner: R, limits: Limits) -> Self {
        Reader {
            inner,
            input: Input::new(&limits),
            grammar: Grammar::new(limits),
        }
    }

    /// Offset in the NAR of the next unread byte.
    pub fn offset(&self) -> u64 {
        self.input.offset
    }

    /// Number of directories currently open (the root directory is 1).
    pub fn depth(&self) -> usize {
        self.grammar.depth()
    }

    /// The underlying reader. It may have been read past the current position.
    pub fn into_inner(self) -> R {
        self.inner
    }

    /// The next event, or `None` after the root node once the input has ended.
    /// Checks that nothing follows the root node.
    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self) -> Result<Option<Event<'_, R>>, Error> {
        self.input.check_failed()?;
        match self.advance() {
            Ok(None) => Ok(None),
            Ok(Some(outcome)) => Ok(Some(match outcome {
                Outcome::Symlink(start, end) => Event::Symlink {
                    target: &self.input.buf[start..end],
                },
                Outcome::Directory => Event::Directory,
                Outcome::DirectoryEnd => Event::DirectoryEnd,
                Outcome::Entry => Event::Entry {
                    name: self.grammar.last_name(),
                },
                Outcome::File { executable, size } => Event::File {
                    executable,
                    size,
                    offset: self.input.offset,
                    contents: Contents { reader: self },
                },
                // `advance` turns the end into `None`.
                Outcome::End => return Ok(None),
            })),
            Err(e) => Err(self.input.fail(e)),
        }
    }

    fn advance(&mut self) -> Result<Option<Outcome>, Error> {
        if self.input.remaining > 0 {
            self.skip_contents()?;
        }
        loop {
            match self.input.try_step(&mut self.grammar)? {
                Some(Outcome::End) => {
                    if !self.input.available().is_empty() || self.fill()? > 0 {
                        return Err(self.input.trailing_data());
                    }
                    return Ok(None);
                }
                Some(outcome) => return Ok(Some(outcome)),
                None => {
                    self.fill()?;
                }
            }
        }
    }

    /// Reads more input into the buffer; returns the number of bytes read.
    fn fill(&mut self) -> Result<usize, Error> {
        self.input.compact();
        let end = self.input.end;
        loop {
            match self.inner.read(&mut self.input.buf[end..]) {
                Ok(n) => {
                    self.input.end += n;
                    if n == 0 {
                        self.input.eof = true;
                    }
                    return Ok(n);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(source) => {
                    return Err(Error::Io {
                        offset: self.input.offset + (end - self.input.pos) as u64,
                        source,
                    });
                }
            }
        }
    }

    fn skip_contents(&mut self) -> Result<(), Error> {
        while self.input.skip_buffered_contents() {
            if self.fill()? == 0 {
                return Err(self.input.truncated_in_contents());
            }
        }
        Ok(())
    }

    fn read_contents(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if self.input.remaining == 0 || out.is_empty() {
            return Ok(0);
        }
        if self.input.pos == self.input.end {
            if out.len() >= self.input.buf.len() {
                // Large reads bypass the buffer; never past the contents' end.
                let max = usize::try_from(self.input.remaining)
                    .unwrap_or(usize::MAX)
                    .min(out.len());
                let n = loop {
                    match self.inner.read(&mut out[..max]) {
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        r => break r?,
                    }
                };
                if n == 0 {
                    self.input.eof = true;
                    let e = self.input.truncated_in_contents();
                    return Err(self.input.fail(e).into_io());
                }
                self.input.offset += n as u64;
                self.input.remaining -= n as u64;
                return Ok(n);
            }
            let n = self.fill().map_err(Error::into_io)?;
            if n == 0 {
                let e = self.input.truncated_in_contents();
                return Err(self.input.fail(e).into_io());
            }
        }
        Ok(self.input.take_contents(out))
    }
}

/// The contents of a file in a NAR, exactly [`Contents::remaining`] more bytes.
/// A NAR that ends early gives an [`io::ErrorKind::UnexpectedEof`] error wrapping
/// an [`Error`].
#[derive(Debug)]
pub struct Contents<'a, R> {
    reader: &'a mut Reader<R>,
}

impl<R> Contents<'_, R> {
    /// Bytes not read yet.
    pub fn remaining(&self) -> u64 {
        self.reader.input.remaining
    }
}

impl<R: Read> Read for Contents<'_, R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        self.reader.read_contents(out)
    }
}

impl<R> std::fmt::Debug for Reader<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reader")
            .field("offset", &self.input.offset)
            .field("depth", &self.grammar.depth())
            .finish_non_exhaustive()
    }
}
