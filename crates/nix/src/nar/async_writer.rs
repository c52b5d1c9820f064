//! The async streaming NAR writer: the same checks as [`super::Writer`].

use std::io;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::writer::{COPY_BUF_SIZE, State};
use super::{AlignedBuf, Error};

/// A streaming NAR writer over [`AsyncWrite`]; see [`super::Writer`] for the rules.
/// Give it a buffered `W` (such as [`tokio::io::BufWriter`]).
pub struct AsyncWriter<W> {
    w: W,
    state: State,
    scratch: Vec<u8>,
    buf: Option<AlignedBuf>,
}

impl<W: AsyncWrite + Unpin> AsyncWriter<W> {
    /// A writer that writes a NAR to `w`.
    pub fn new(w: W) -> Self {
        AsyncWriter {
            w,
            state: State::new(),
            scratch: Vec::with_capacity(512),
            buf: None,
        }
    }

    /// Bytes written so far.
    pub fn offset(&self) -> u64 {
        self.state.offset
    }

    /// The underlying writer.
    pub fn get_mut(&mut self) -> &mut W {
        &mut self.w
    }

    async fn emit(&mut self) -> Result<(), Error> {
        if let Err(source) = self.w.write_all(&self.scratch).await {
            self.state.fail();
            return Err(Error::Io {
                offset: self.state.offset,
                source,
            });
        }
        self.state.offset += self.scratch.len() as u64;
        self.scratch.clear();
        Ok(())
    }

    /// Starts a directory node; its entries follow.
    pub async fn directory(&mut self) -> Result<(), Error> {
        self.state.directory(&mut self.scratch)?;
        self.emit().await
    }

    /// Starts an entry of the current directory; exactly one node must follow.
    pub async fn entry(&mut self, name: &[u8]) -> Result<(), Error> {
        self.state.entry(name, &mut self.scratch)?;
        self.emit().await
    }

    /// Ends the innermost open directory.
    pub async fn end_directory(&mut self) -> Result<(), Error> {
        self.state.end_directory(&mut self.scratch)?;
        self.emit().await
    }

    /// Writes a symlink node.
    pub async fn symlink(&mut self, target: &[u8]) -> Result<(), Error> {
        self.state.symlink(target, &mut self.scratch)?;
        self.emit().await
    }

    /// Writes a regular file node of `size` bytes, copied from `contents`, which
    /// must yield exactly `size` bytes and then end.
    pub async fn file<R: AsyncRead + Unpin + ?Sized>(
        &mut self,
        executable: bool,
        size: u64,
        contents: &mut R,
    ) -> Result<(), Error> {
        self.state
            .file_header(executable, size, &mut self.scratch)?;
        self.emit().await?;
        if let Err(e) = self.copy_contents(size, contents).await {
            self.state.fail();
            return Err(e);
        }
        self.state.file_trailer(size, &mut self.scratch);
        self.emit().await
    }

    async fn copy_contents<R: AsyncRead + Unpin + ?Sized>(
        &mut self,
        size: u64,
        contents: &mut R,
    ) -> Result<(), Error> {
        let start = self.state.offset;
        let buf = self
            .buf
            .get_or_insert_with(|| AlignedBuf::new(COPY_BUF_SIZE));
        let mut left = size;
        let io_err = |source, offset| Error::Io { offset, source };
        while left > 0 {
            let want = usize::try_from(left).unwrap_or(usize::MAX).min(buf.len());
            let n = match contents.read(&mut buf[..want]).await {
                Ok(0) => {
                    return Err(Error::ContentsSize {
                        offset: start,
                        expected: size,
                        actual: size - left,
                    });
                }
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(io_err(e, self.state.offset)),
            };
            self.w
                .write_all(&buf[..n])
                .await
                .map_err(|e| io_err(e, self.state.offset))?;
            self.state.offset += n as u64;
            left -= n as u64;
        }
        let mut probe = [0u8; 1];
        loop {
            match contents.read(&mut probe).await {
                Ok(0) => return Ok(()),
                Ok(_) => {
                    return Err(Error::ContentsSize {
                        offset: start,
                        expected: size,
                        actual: size + 1,
                    });
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(io_err(e, self.state.offset)),
            }
        }
    }

    /// Checks that the NAR is complete, flushes and returns the underlying writer.
    /// Does not shut `W` down.
    pub async fn finish(mut self) -> Result<W, Error> {
        self.state.check_done()?;
        self.w.flush().await.map_err(|source| Error::Io {
            offset: self.state.offset,
            source,
        })?;
        Ok(self.w)
    }
}

impl<W> std::fmt::Debug for AsyncWriter<W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AsyncWriter")
            .field("state", &self.state)
            .finish_non_exhaustive()
    }
}
