//! The NAR grammar as a sans-I/O state machine, shared by the sync and async readers.
//!
//! [`Grammar::step`] parses the bytes of one event from a buffer. It either returns
//! the event and how many bytes it consumed, or asks for more bytes without changing
//! any state (so the caller refills its buffer and calls again), or fails. File
//! contents are not parsed here: after a `File` event the caller streams the
//! contents itself, then calls `step` again, which checks the padding.

use super::{Error, ErrorKind, Limits, MAGIC, check_name, check_target, escape, padding_len};

/// Longest string accepted where a fixed token is expected (longest token is
/// "nix-archive-1", 13 bytes): enough to print what was found instead.
const MAX_TOKEN_LEN: u64 = 64;

/// An event found by [`Grammar::step`]; borrowed data is given as ranges.
#[derive(Debug)]
pub(crate) enum Step {
    Directory,
    /// The name is [`Grammar::last_name`].
    Entry,
    DirectoryEnd,
    File {
        executable: bool,
        size: u64,
    },
    /// The target is `buf[start..end]`.
    Symlink {
        start: usize,
        end: usize,
    },
    /// The root node is complete; the caller checks that the stream ends.
    End,
}

/// Why a step did not produce an event.
#[derive(Debug)]
pub(crate) enum Stop {
    /// The buffer ends inside the event; `at` is where the incomplete string starts.
    NeedMore {
        at: u64,
        expected: &'static str,
    },
    Fatal(Error),
}

impl From<Error> for Stop {
    fn from(e: Error) -> Self {
        Stop::Fatal(e)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Nothing read yet: magic, then the root node.
    Start,
    /// After an `Entry` event: the entry's node.
    Node,
    /// Inside a directory: an entry or the directory's end.
    Dir,
    /// After a symlink or directory end: close the enclosing entry, or end.
    AfterNode,
    /// After a file's contents: padding, ")", then as `AfterNode`.
    AfterContents {
        padding: u8,
    },
    Done,
}

/// The parser state: phase and one frame per open directory.
pub(crate) struct Grammar {
    phase: Phase,
    /// Last entry name of each open directory (empty: no entry yet; names are
    /// never empty). Reused allocations, each at most `max_name_len` bytes.
    names: Vec<Vec<u8>>,
    depth: usize,
    limits: Limits,
}

struct Cursor<'b> {
    buf: &'b [u8],
    pos: usize,
    base: u64,
}

impl<'b> Cursor<'b> {
    fn offset(&self) -> u64 {
        self.base + self.pos as u64
    }

    /// One string of at most `max` bytes, with its padding checked.
    fn string(
        &mut self,
        max: u64,
        what: &'static str,
        expected: &'static str,
    ) -> Result<&'b [u8], Stop> {
        let start = self.pos;
        let at = self.offset();
        let Some(header) = self.buf.get(start..start + 8) else {
            return Err(Stop::NeedMore { at, expected });
        };
        let mut len = [0u8; 8];
        len.copy_from_slice(header);
        let len = u64::from_le_bytes(len);
        if len > max {
            return Err(Error::invalid(at, ErrorKind::TooLong { what, len, max }).into());
        }
        // `len <= max`, and every max is a small usize.
        let len = len as usize;
        let body = start + 8;
        let end = body + len + padding_len(len as u64);
        let Some(bytes) = self.buf.get(body..end) else {
            return Err(Stop::NeedMore { at, expected });
        };
        if let Some(i) = bytes[len..].iter().position(|&b| b != 0) {
            let offset = self.base + (body + len + i) as u64;
            return Err(Error::invalid(offset, ErrorKind::BadPadding).into());
        }
        self.pos = end;
        Ok(&bytes[..len])
    }

    /// A fixed token, such as `b"("`; `expected` describes it for errors.
    fn token(&mut self, token: &[u8], expected: &'static str) -> Result<(), Stop> {
        let at = self.offset();
        let found = self.any_token(expected)?;
        if found != token {
            return Err(unexpected(at, expected, found));
        }
        Ok(())
    }

    fn any_token(&mut self, expected: &'static str) -> Result<&'b [u8], Stop> {
        let at = self.offset();
        self.string(MAX_TOKEN_LEN, "token", expected)
            .map_err(|e| match e {
                Stop::Fatal(Error::Invalid {
                    kind: ErrorKind::TooLong { len, .. },
                    ..
                }) => Error::invalid(
                    at,
                    ErrorKind::UnexpectedToken {
                        expected,
                        found: format!("a string of {len} bytes"),
                    },
                )
                .into(),
                e => e,
            })
    }

    /// A raw little-endian u64 (the contents size).
    fn u64(&mut self, expected: &'static str) -> Result<u64, Stop> {
        let at = self.offset();
        let Some(bytes) = self.buf.get(self.pos..self.pos + 8) else {
            return Err(Stop::NeedMore { at, expected });
        };
        let mut n = [0u8; 8];
        n.copy_from_slice(bytes);
        self.pos += 8;
        Ok(u64::from_le_bytes(n))
    }

    /// `n` zero bytes (the padding after file contents).
    fn padding(&mut self, n: usize) -> Result<(), Stop> {
        let at = self.offset();
        let Some(bytes) = self.buf.get(self.pos..self.pos + n) else {
            return Err(Stop::NeedMore {
                at,
                expected: "padding after file contents",
            });
        };
        if let Some(i) = bytes.iter().position(|&b| b != 0) {
            return Err(Error::invalid(at + i as u64, ErrorKind::BadPadding).into());
        }
        self.pos += n;
        Ok(())
    }
}

fn unexpected(at: u64, expected: &'static str, found: &[u8]) -> Stop {
    Error::invalid(
        at,
        ErrorKind::UnexpectedToken {
            expected,
            found: format!("\"{}\"", escape(found)),
        },
    )
    .into()
}

impl Grammar {
    pub(crate) fn new(limits: Limits) -> Self {
        Grammar {
            phase: Phase::Start,
            names: Vec::new(),
            depth: 0,
            limits,
        }
    }

    /// Number of directories currently open.
    pub(crate) fn depth(&self) -> usize {
        self.depth
    }

    /// Name of the entry of the last `Entry` event.
    pub(crate) fn last_name(&self) -> &[u8] {
        match self.depth.checked_sub(1) {
            Some(i) => &self.names[i],
            None => &[],
        }
    }

    /// Bytes one step may need: enough for the longest event with the longest name
    /// or target. Readers keep a buffer at least this large.
    pub(crate) fn max_step_len(limits: &Limits) -> usize {
        1024 + limits.max_name_len + limits.max_target_len
    }

    /// Parses the next event from `buf`, whose first byte is at stream offset `base`.
    /// Changes no state unless it returns `Ok`.
    pub(crate) fn step(&mut self, buf: &[u8], base: u64) -> Result<(usize, Step), Stop> {
        let mut c = Cursor { buf, pos: 0, base };
        let step = match self.phase {
            Phase::Start => {
                let at = c.offset();
                let magic = c.string(MAX_TOKEN_LEN, "magic", "\"nix-archive-1\"");
                match magic {
                    Ok(m) if m == MAGIC => {}
                    Err(Stop::NeedMore { at, expected }) => {
                        return Err(Stop::NeedMore { at, expected });
                    }
                    _ => return Err(Error::invalid(at, ErrorKind::BadMagic).into()),
                }
                self.node(&mut c)?
            }
            Phase::Node => self.node(&mut c)?,
            Phase::Dir => self.dir_item(&mut c)?,
            Phase::AfterNode => self.after_node(&mut c)?,
            Phase::AfterContents { padding } => {
                c.padding(padding as usize)?;
                c.token(b")", "\")\" after file contents")?;
                self.after_node(&mut c)?
            }
            Phase::Done => Step::End,
        };
        Ok((c.pos, step))
    }

    fn node(&mut self, c: &mut Cursor<'_>) -> Result<Step, Stop> {
        c.token(b"(", "\"(\" starting a node")?;
        c.token(b"type", "\"type\"")?;
        let at = c.offset();
        let kind = c.any_token("\"regular\", \"symlink\" or \"directory\"")?;
        match kind {
            b"regular" => {
                let at = c.offset();
                let executable = match c.any_token("\"executable\" or \"contents\"")? {
                    b"executable" => {
                        let at = c.offset();
                        let empty = c.any_token("\"\" after \"executable\"")?;
                        if !empty.is_empty() {
                            return Err(unexpected(at, "\"\" after \"executable\"", empty));
                        }
                        c.token(b"contents", "\"contents\"")?;
                        true
                    }
                    b"contents" => false,
                    other => {
                        return Err(unexpected(at, "\"executable\" or \"contents\"", other));
                    }
                };
                let size = c.u64("file size")?;
                self.phase = Phase::AfterContents {
                    padding: padding_len(size) as u8,
                };
                Ok(Step::File { executable, size })
            }
            b"symlink" => {
                c.token(b"target", "\"target\"")?;
                let at = c.offset();
                let target = c.string(
                    self.limits.max_target_len as u64,
                    "symlink target",
                    "symlink target",
                )?;
                let end = c.pos;
                let start = end - target.len() - padding_len(target.len() as u64);
                if let Err(reason) = check_target(target) {
                    return Err(Error::invalid(at, ErrorKind::InvalidTarget { reason }).into());
                }
                c.token(b")", "\")\" after symlink target")?;
                self.phase = Phase::AfterNode;
                Ok(Step::Symlink {
                    start,
                    end: start + target.len(),
                })
            }
            b"directory" => {
                if self.depth >= self.limits.max_depth {
                    return Err(Error::invalid(
                        at,
                        ErrorKind::TooDeep {
                            max: self.limits.max_depth,
                        },
                    )
                    .into());
                }
                if self.names.len() == self.depth {
                    self.names.push(Vec::new());
                }
                self.names[self.depth].clear();
                self.depth += 1;
                self.phase = Phase::Dir;
                Ok(Step::Directory)
            }
            other => Err(unexpected(
                at,
                "\"regular\", \"symlink\" or \"directory\"",
                other,
            )),
        }
    }

    fn dir_item(&mut self, c: &mut Cursor<'_>) -> Result<Step, Stop> {
        let at = c.offset();
        match c.any_token("\"entry\" or \")\"")? {
            b")" => {
                self.depth -= 1;
                self.phase = Phase::AfterNode;
                Ok(Step::DirectoryEnd)
            }
            b"entry" => {
                c.token(b"(", "\"(\" after \"entry\"")?;
                c.token(b"name", "\"name\"")?;
                let at = c.offset();
                let name = c.string(self.limits.max_name_len as u64, "entry name", "entry name")?;
                c.token(b"node", "\"node\"")?;
                if let Err(reason) = check_name(name) {
                    let name = escape(name);
                    return Err(Error::invalid(at, ErrorKind::InvalidName { name, reason }).into());
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
                    return Err(Error::invalid(at, kind).into());
                }
                prev.clear();
                prev.extend_from_slice(name);
                self.phase = Phase::Node;
                Ok(Step::Entry)
            }
            other => Err(unexpected(at, "\"entry\" or \")\"", other)),
        }
    }

    fn after_node(&mut self, c: &mut Cursor<'_>) -> Result<Step, Stop> {
        if self.depth == 0 {
            self.phase = Phase::Done;
            return Ok(Step::End);
        }
        c.token(b")", "\")\" closing the entry")?;
        self.dir_item(c)
    }
}
