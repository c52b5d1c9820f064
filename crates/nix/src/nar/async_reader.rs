//! The async strict NAR reader: the same grammar and checks as [`super::Reader`].

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, ReadBuf};

use super::grammar::Grammar;
use super::reader::{Input, Outcome};
use super::{Error, Limits};

/// What the [`AsyncReader`] found next; see [`super::Event`] for the meaning of each.
#[derive(Debug)]
pub enum AsyncEvent<'a, R> {
    /// Start of a directory node.
    Directory,
    /// A directory entry; the next event is its node.
    Entry {
        /// The entry's name, checked as for [`super::Event::Entry`].
        name: &'a [u8],
    },
    /// End of the innermost open directory.
    DirectoryEnd,
    /// A regular file; unread contents are skipped by the next `next()`.
    File {
        /// Whether the file is executable.
        executable: bool,
        /// Its size in bytes.
        size: u64,
        /// Offset in the NAR of its first byte (Nix's `narOffset`).
        offset: u64,
        /// Its bytes.
        contents: AsyncContents<'a, R>,
    },
    /// A symlink.
    Symlink {
        /// Where it points: non-empty, no NUL.
        target: &'a [u8],
    },
}

/// A strict streaming NAR reader over an [`AsyncRead`]; see [`super::Reader`].
pub struct AsyncReader<R> {
    inner: R,
    input: Input,
    grammar: Grammar,
}

impl<R: AsyncRead + Unpin> AsyncReader<R> {
    /// A reader with the default [`Limits`]. It buffers its input itself.
    pub fn new(inner: R) -> Self {
        Self::with_limits(inner, Limits::default())
    }

    /// A reader with the given limits.
    pub fn with_limits(inner: R, limits: Limits) -> Self {
        AsyncReader {
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
    pub async fn next(&mut self) -> Result<Option<AsyncEvent<'_, R>>, Error> {
        self.input.check_failed()?;
        match self.advance().await {
            Ok(outcome) => Ok(match outcome {
                Outcome::Symlink(start, end) => Some(AsyncEvent::Symlink {
                    target: &self.input.buf[start..end],
                }),
                Outcome::Directory => Some(AsyncEvent::Directory),
                Outcome::DirectoryEnd => Some(AsyncEvent::DirectoryEnd),
                Outcome::Entry => Some(AsyncEvent::Entry {
                    name: self.grammar.last_name(),
                }),
                Outcome::File { executable, size } => Some(AsyncEvent::File {
                    executable,
                    size,
                    offset: self.input.offset,
                    contents: AsyncContents { reader: self },
                }),
                Outcome::End => None,
            }),
            Err(e) => Err(self.input.fail(e)),
        }
    }

    async fn advance(&mut self) -> Result<Outcome, Error> {
        while self.input.remaining > 0 {
            if !self.input.skip_buffered_contents() {
                break;
            }
            if self.fill().await? == 0 {
                return Err(self.input.truncated_in_contents());
            }
        }
        loop {
            match self.input.try_step(&mut self.grammar)? {
                Some(Outcome::End) => {
                    if !self.input.available().is_empty() || self.fill().await? > 0 {
                        return Err(self.input.trailing_data());
                    }
                    return Ok(Outcome::End);
                }
                Some(outcome) => return Ok(outcome),
                None => {
                    self.fill().await?;
                }
            }
        }
    }

    async fn fill(&mut self) -> Result<usize, Error> {
        std::future::poll_fn(|cx| self.poll_fill(cx)).await
    }

    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<Result<usize, Error>> {
        self.input.compact();
        let end = self.input.end;
        let mut rb = ReadBuf::new(&mut self.input.buf[end..]);
        match ready!(Pin::new(&mut self.inner).poll_read(cx, &mut rb)) {
            Ok(()) => {
                let n = rb.filled().len();
                self.input.end += n;
                if n == 0 {
                    self.input.eof = true;
                }
                Poll::Ready(Ok(n))
            }
            Err(source) => Poll::Ready(Err(Error::Io {
                offset: self.input.offset + (end - self.input.pos) as u64,
                source,
            })),
        }
    }

    fn poll_contents(
        &mut self,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.input.remaining == 0 || out.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        if self.input.pos == self.input.end {
            if out.remaining() >= self.input.buf.len() {
                // Large reads bypass the buffer; never past the contents' end.
                let max = usize::try_from(self.input.remaining)
                    .unwrap_or(usize::MAX)
                    .min(out.remaining());
                let dst = out.initialize_unfilled_to(max);
                let mut rb = ReadBuf::new(dst);
                ready!(Pin::new(&mut self.inner).poll_read(cx, &mut rb))?;
                let n = rb.filled().len();
                if n == 0 {
                    self.input.eof = true;
                    let e = self.input.truncated_in_contents();
                    return Poll::Ready(Err(self.input.fail(e).into_io()));
                }
                out.advance(n);
                self.input.offset += n as u64;
                self.input.remaining -= n as u64;
                return Poll::Ready(Ok(()));
            }
            let n = ready!(self.poll_fill(cx)).map_err(Error::into_io)?;
            if n == 0 {
                let e = self.input.truncated_in_contents();
                return Poll::Ready(Err(self.input.fail(e).into_io()));
            }
        }
        let n = (self.input.end - self.input.pos)
            .min(out.remaining())
            .min(usize::try_from(self.input.remaining).unwrap_or(usize::MAX));
        let n = self.input.take_contents(out.initialize_unfilled_to(n));
        out.advance(n);
        Poll::Ready(Ok(()))
    }
}

/// The contents of a file in a NAR read by an [`AsyncReader`].
#[derive(Debug)]
pub struct AsyncContents<'a, R> {
    reader: &'a mut AsyncReader<R>,
}

impl<R> AsyncContents<'_, R> {
    /// Bytes not read yet.
    pub fn remaining(&self) -> u64 {
        self.reader.input.remaining
    }
}

impl<R: AsyncRead + Unpin> AsyncRead for AsyncContents<'_, R> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.get_mut().reader.poll_contents(cx, buf)
    }
}

impl<R> std::fmt::Debug for AsyncReader<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AsyncReader")
            .field("offset", &self.input.offset)
            .field("depth", &self.grammar.depth())
            .finish_non_exhaustive()
    }
}
