//! The sync streaming NAR writer, and the state machine it shares with the async one.

use std::io::{self, Read, Write};

use super::{
    AlignedBuf, Error, ErrorKind, MAGIC, check_name, check_target, escape, padding_len, push_str,
};

/// Size of the buffer file contents are copied through.
pub(crate) const COPY_BUF_SIZE: usize = 256 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Nothing written: the magic, then the root node.
    Start,
    /// A node is expected (after an entry name).
    Node,
    /// Inside a directory: an entry or the directory's end.
    Dir,
    /// The root node is complete.
    Done,
    /// A write failed; the output is unusable.
    Failed,
}

/// What has been written so far; checks that calls form a valid NAR and produces
/// the framing bytes into a scratch buffer. Shared by [`Writer`] and
/// [`super::AsyncWriter`].
#[derive(Debug)]
pub(crate) struct State {
    phase: Phase,
    /// Last entry name written in each open directory (empty: none yet).
    names: Vec<Vec<u8>>,
    depth: usize,
    /// Bytes produced so far (including contents the caller copied).
    pub(crate) offset: u64,
}

impl State {
    pub(crate) fn new() -> Self {
        State {
            phase: Phase::Start,
            names: Vec::new(),
            depth: 0,
            offset: 0,
        }
    }

    fn usage(&self, message: &'static str) -> Error {
        if self.phase == Phase::Failed {
            return Error::Poisoned {
                offset: self.offset,
            };
        }
        Error::Usage {
            offset: self.offset,
            message,
        }
    }

    pub(crate) fn fail(&mut self) {
        self.phase = Phase::Failed;
    }

    fn begin_node(&mut self, out: &mut Vec<u8>) -> Result<(), Error> {
        match self.phase {
            Phase::Start => push_str(out, MAGIC),
            Phase::Node => {}
            _ => return Err(self.usage("a node must be the root or follow entry()")),
        }
        push_str(out, b"(");
        push_str(out, b"type");
        Ok(())
    }

    fn end_node(&mut self, out: &mut Vec<u8>) {
        push_str(out, b")");
        if self.depth == 0 {
            self.phase = Phase::Done;
        } else {
            // Closes the enclosing entry.
            push_str(out, b")");
            self.phase = Phase::Dir;
        }
    }

    pub(crate) fn file_header(
        &mut self,
        executable: bool,
        size: u64,
        out: &mut Vec<u8>,
    ) -> Result<(), Error> {
        self.begin_node(out)?;
        push_str(out, b"regular");
        if executable {
            push_str(out, b"executable");
            push_str(out, b"");
        }
        push_str(out, b"contents");
        out.extend_from_slice(&size.to_le_bytes());
        // Until the trailer, no other call is valid.
        self.phase = Phase::Failed;
        Ok(())
    }

    pub(crate) fn file_trailer(&mut self, size: u64, out: &mut Vec<u8>) {
        out.extend_from_slice(&[0u8; 8][..padding_len(size)]);
        self.end_node(out);
    }

    pub(crate) fn symlink(&mut self, target: &[u8], out: &mut Vec<u8>) -> Result<(), Error> {
        if let Err(reason) = check_target(target) {
            return Err(Error::invalid(
                self.offset,
                ErrorKind::InvalidTarget { reason },
            ));
        }
        self.begin_node(out)?;
        push_str(out, b"symlink");
        push_str(out, b"target");
        push_str(out, target);
        self.end_node(out);
        Ok(())
    }

    pub(crate) fn directory(&mut self, out: &mut Vec<u8>) -> Result<(), Error> {
        self.begin_node(out)?;
        push_str(out, b"directory");
        if self.names.len() == self.depth {
            self.names.push(Vec::new());
        }
        self.names[self.depth].clear();
        self.depth += 1;
        self.phase = Phase::Dir;
        Ok(())
    }

    pub(crate) fn entry(&mut self, name: &[u8], out: &mut Vec<u8>) -> Result<(), Error> {
        if self.phase != Phase::Dir {
            return Err(self.usage("entry() outside a directory"));
        }
        if let Err(reason) = check_name(name) {
            let name = escape(name);
            return Err(Error::invalid(
                self.offset,
                ErrorKind::InvalidName { name, reason },
            ));
        }
        let prev = &mut self.names[self.depth - 1];
        if name <= prev.as_slice() {
            let kind = if name == prev.as_slice() {
                ErrorKind::Duplicate { name: escape(name) }
            } else {
                ErrorKind::NotSorted {
                    previous: escape(prev),
                    name: escape(name),
                }
            };
            return Err(Error::invalid(self.offset, kind));
        }
        prev.clear();
        prev.extend_from_slice(name);
        push_str(out, b"entry");
        push_str(out, b"(");
        push_str(out, b"name");
        push_str(out, name);
        push_str(out, b"node");
        self.phase = Phase::Node;
        Ok(())
    }

    pub(crate) fn end_directory(&mut self, out: &mut Vec<u8>) -> Result<(), Error> {
        if self.phase != Phase::Dir {
            return Err(self.usage("end_directory() without an open directory"));
        }
        self.depth -= 1;
        self.end_node(out);
        Ok(())
    }

    pub(crate) fn check_done(&self) -> Result<(), Error> {
        if self.phase != Phase::Done {
            return Err(self.usage("finish() before the root node is complete"));
        }
        Ok(())
    }
}

/// A streaming NAR writer over [`Write`], driven by node events.
///
/// Call [`file`](Writer::file), [`symlink`](Writer::symlink) or
/// [`directory`](Writer::directory) for the root; inside a directory, call
/// [`entry`](Writer::entry) (names strictly increasing, bytewise) followed by one
/// node each, then [`end_directory`](Writer::end_directory). Finally
/// [`finish`](Writer::finish). Calls in any other order, unsorted, duplicate or
/// invalid names, and file contents that are not exactly the declared size are
/// errors; after an error the writer is unusable.
///
/// The writer issues many small writes: give it a buffered `W` (such as
/// [`io::BufWriter`]) unless `W` buffers by itself. File contents are copied
/// through a fixed 256 KiB buffer, never held whole in memory.
pub struct Writer<W> {
    w: W,
    state: State,
    scratch: Vec<u8>,
    buf: Option<AlignedBuf>,
}

impl<W: Write> Writer<W> {
    /// A writer that writes a NAR to `w`.
    pub fn new(w: W) -> Self {
        Writer {
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

    fn emit(&mut self) -> Result<(), Error> {
        if let Err(source) = self.w.write_all(&self.scratch) {
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
    pub fn directory(&mut self) -> Result<(), Error> {
        self.state.directory(&mut self.scratch)?;
        self.emit()
    }

    /// Starts an entry of the current directory; exactly one node must follow.
    pub fn entry(&mut self, name: &[u8]) -> Result<(), Error> {
        self.state.entry(name, &mut self.scratch)?;
        self.emit()
    }

    /// Ends the innermost open directory.
    pub fn end_directory(&mut self) -> Result<(), Error> {
        self.state.end_directory(&mut self.scratch)?;
        self.emit()
    }

    /// Writes a symlink node.
    pub fn symlink(&mut self, target: &[u8]) -> Result<(), Error> {
        self.state.symlink(target, &mut self.scratch)?;
        self.emit()
    }

    /// Writes a regular file node of `size` bytes, copied from `contents`, which
    /// must yield exactly `size` bytes and then end.
    pub fn file<R: Read + ?Sized>(
        &mut self,
        executable: bool,
        size: u64,
        contents: &mut R,
    ) -> Result<(), Error> {
        self.state
            .file_header(executable, size, &mut self.scratch)?;
        self.emit()?;
        if let Err(e) = self.copy_contents(size, contents) {
            self.state.fail();
            return Err(e);
        }
        self.state.file_trailer(size, &mut self.scratch);
        self.emit()
    }

    fn copy_contents<R: Read + ?Sized>(
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
            let n = match contents.read(&mut buf[..want]) {
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
                .map_err(|e| io_err(e, self.state.offset))?;
            self.state.offset += n as u64;
            left -= n as u64;
        }
        // The reader must end here: a file that grew while being read is an error.
        let mut probe = [0u8; 1];
        loop {
            match contents.read(&mut probe) {
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
    pub fn finish(mut self) -> Result<W, Error> {
        self.state.check_done()?;
        self.w.flush().map_err(|source| Error::Io {
            offset: self.state.offset,
            source,
        })?;
        Ok(self.w)
    }
}

impl<W> std::fmt::Debug for Writer<W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Writer")
            .field("state", &self.state)
            .finish_non_exhaustive()
    }
}
