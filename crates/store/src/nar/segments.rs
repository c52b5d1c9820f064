//! The NAR of a tree as a sequence of [`Seg`]ments: framing bytes, and file
//! contents by blob digest. The [`Walker`] produces them in NAR order, fetching
//! each directory's child directories ahead, and can start at any byte offset,
//! skipping whole subtrees by their lengths (computed from directories only).

use std::collections::{HashMap, VecDeque};

use bytes::{Bytes, BytesMut};
use cairn_castore::{B3Digest, BlobService, Directory, DirectoryService, Node, PathComponent};
use futures::StreamExt;
use futures::future::BoxFuture;
use futures::stream::FuturesOrdered;

use super::NarError;
use super::layout::{self, CLOSE_LEN, DIRECTORY_START_LEN};

/// Child directories fetched ahead per open directory.
const DIRECTORY_WINDOW: usize = 16;
/// Framing bytes gathered before they are handed on as one segment.
const FLUSH_LEN: usize = 64 * 1024;

/// The two services a render reads from, borrowed or shared.
pub(crate) trait Services: Clone + Send + Sync {
    fn blobs(&self) -> &dyn BlobService;
    fn directories(&self) -> &dyn DirectoryService;
}

/// Borrowed services (for [`super::calculate`]).
#[derive(Clone, Copy)]
pub(crate) struct Borrowed<'a> {
    pub(crate) blobs: &'a dyn BlobService,
    pub(crate) directories: &'a dyn DirectoryService,
}

impl Services for Borrowed<'_> {
    fn blobs(&self) -> &dyn BlobService {
        self.blobs
    }
    fn directories(&self) -> &dyn DirectoryService {
        self.directories
    }
}

/// Shared services (for a `'static` [`super::NarRenderer`]).
#[derive(Clone)]
pub(crate) struct Shared {
    pub(crate) blobs: std::sync::Arc<dyn BlobService>,
    pub(crate) directories: std::sync::Arc<dyn DirectoryService>,
}

impl Services for Shared {
    fn blobs(&self) -> &dyn BlobService {
        &*self.blobs
    }
    fn directories(&self) -> &dyn DirectoryService {
        &*self.directories
    }
}

/// A piece of the NAR.
#[derive(Debug)]
pub(crate) enum Seg {
    /// Framing (and symlink targets, names): ready bytes.
    Bytes(Bytes),
    /// A file's contents from byte `skip` on (no padding).
    Blob {
        digest: B3Digest,
        size: u64,
        skip: u64,
    },
}

type DirFuture<'a> = BoxFuture<'a, (B3Digest, Result<Option<Directory>, cairn_castore::Error>)>;

/// An open directory: its remaining entries, and its child directories being
/// fetched, in entry order.
struct Frame<'a> {
    entries: std::vec::IntoIter<(PathComponent, Node)>,
    fetches: FuturesOrdered<DirFuture<'a>>,
    unfetched: VecDeque<B3Digest>,
}

/// Produces the [`Seg`]s of a NAR, in order, from byte `skip` on.
pub(crate) struct Walker<'a, S> {
    svc: S,
    root: Option<Node>,
    stack: Vec<Frame<'a>>,
    buf: BytesMut,
    out: VecDeque<Seg>,
    /// Bytes still to drop before output starts.
    skip: u64,
    /// The offset asked for (for the error when it is past the end).
    start: u64,
    /// NAR offset of the next byte (emitted or skipped).
    pos: u64,
    /// Lengths of directory nodes by digest, filled while skipping.
    lengths: HashMap<B3Digest, u64>,
    done: bool,
}

impl<'a, S: Services + 'a> Walker<'a, S> {
    pub(crate) fn new(svc: S, root: Node, offset: u64) -> Self {
        Walker {
            svc,
            root: Some(root),
            stack: Vec::new(),
            buf: BytesMut::with_capacity(FLUSH_LEN),
            out: VecDeque::new(),
            skip: offset,
            start: offset,
            pos: 0,
            lengths: HashMap::new(),
            done: false,
        }
    }

    /// Runs until the first segment at or after the start offset exists (doing all
    /// the skipping), so errors about the offset surface now.
    pub(crate) async fn prime(&mut self) -> Result<(), NarError> {
        if let Some(seg) = self.next().await? {
            self.out.push_front(seg);
        }
        Ok(())
    }

    /// The next segment, `None` after the last.
    pub(crate) async fn next(&mut self) -> Result<Option<Seg>, NarError> {
        loop {
            if let Some(seg) = self.out.pop_front() {
                return Ok(Some(seg));
            }
            if self.done {
                self.flush();
                if let Some(seg) = self.out.pop_front() {
                    return Ok(Some(seg));
                }
                if self.skip > 0 {
                    return Err(NarError::OffsetPastEnd {
                        offset: self.start,
                        size: self.pos,
                    });
                }
                return Ok(None);
            }
            if self.buf.len() >= FLUSH_LEN {
                self.flush();
                continue;
            }
            self.step().await?;
        }
    }

    fn flush(&mut self) {
        if !self.buf.is_empty() {
            self.out.push_back(Seg::Bytes(self.buf.split().freeze()));
        }
    }

    /// Appends framing, dropping what falls before the start offset.
    fn emit(&mut self, write: impl FnOnce(&mut BytesMut)) {
        if self.skip == 0 {
            let before = self.buf.len();
            write(&mut self.buf);
            self.pos += (self.buf.len() - before) as u64;
            return;
        }
        let mut scratch = BytesMut::new();
        write(&mut scratch);
        let len = scratch.len() as u64;
        self.pos += len;
        if self.skip >= len {
            self.skip -= len;
        } else {
            // skip < len, a usize
            self.buf.extend_from_slice(&scratch[self.skip as usize..]);
            self.skip = 0;
        }
    }

    fn emit_contents(&mut self, digest: B3Digest, size: u64) {
        self.pos += size;
        if self.skip >= size {
            self.skip -= size;
            return;
        }
        self.flush();
        self.out.push_back(Seg::Blob {
            digest,
            size,
            skip: self.skip,
        });
        self.skip = 0;
    }

    /// Emits a whole file or symlink node.
    fn emit_leaf(&mut self, node: Node) {
        match node {
            Node::File {
                digest,
                size,
                executable,
            } => {
                self.emit(|b| layout::put_file_start(b, executable, size));
                self.emit_contents(digest, size);
                self.emit(|b| layout::put_file_end(b, size));
            }
            Node::Symlink { target } => self.emit(|b| layout::put_symlink(b, target.as_bytes())),
            Node::Directory { .. } => unreachable_dir(),
        }
    }

    fn fetch(&self, digest: B3Digest) -> DirFuture<'a> {
        let svc = self.svc.clone();
        Box::pin(async move {
            let got = svc.directories().get(&digest).await;
            (digest, got)
        })
    }

    /// Opens a directory: emits its start and pushes its frame.
    fn open(&mut self, dir: Directory) {
        self.emit(layout::put_directory_start);
        let mut unfetched: VecDeque<B3Digest> = dir.directories().map(|(_, d, _)| *d).collect();
        let mut fetches = FuturesOrdered::new();
        while fetches.len() < DIRECTORY_WINDOW {
            let Some(d) = unfetched.pop_front() else {
                break;
            };
            fetches.push_back(self.fetch(d));
        }
        let entries: Vec<_> = dir
            .nodes()
            .map(|(name, node)| (name.clone(), node.clone()))
            .collect();
        self.stack.push(Frame {
            entries: entries.into_iter(),
            fetches,
            unfetched,
        });
    }

    /// The fetched child directory `digest` of the innermost frame.
    async fn take_fetched(&mut self, digest: B3Digest) -> Result<Directory, NarError> {
        let next = match self.stack.last_mut() {
            Some(frame) => frame.fetches.next().await,
            None => None,
        };
        let refill = self
            .stack
            .last_mut()
            .and_then(|frame| frame.unfetched.pop_front());
        if let Some(d) = refill {
            let fut = self.fetch(d);
            if let Some(frame) = self.stack.last_mut() {
                frame.fetches.push_back(fut);
            }
        }
        match next {
            Some((got, Ok(Some(dir)))) if got == digest => Ok(dir),
            Some((got, Ok(None))) if got == digest => Err(NarError::DirectoryNotFound { digest }),
            Some((got, Err(e))) if got == digest => Err(e.into()),
            // Fetches are queued in entry order, so this cannot happen; fetch directly
            // rather than trust a broken invariant.
            _ => get_directory(self.svc.directories(), digest).await,
        }
    }

    async fn step(&mut self) -> Result<(), NarError> {
        if let Some(root) = self.root.take() {
            self.emit(|b| layout::put_str(b, layout::MAGIC));
            match root {
                Node::Directory { digest, .. } => {
                    let dir = get_directory(self.svc.directories(), digest).await?;
                    self.open(dir);
                }
                leaf => {
                    self.emit_leaf(leaf);
                    self.done = true;
                }
            }
            return Ok(());
        }
        let next = match self.stack.last_mut() {
            Some(frame) => frame.entries.next(),
            None => {
                self.done = true;
                return Ok(());
            }
        };
        let Some((name, node)) = next else {
            self.stack.pop();
            self.emit(layout::put_close);
            if self.stack.is_empty() {
                self.done = true;
            } else {
                self.emit(layout::put_close);
            }
            return Ok(());
        };
        let dir = match &node {
            Node::Directory { digest, .. } => Some((*digest, self.take_fetched(*digest).await?)),
            _ => None,
        };
        if self.skip > 0 {
            let node_len = match (&dir, layout::leaf_len(&node)) {
                (_, Some(len)) => len,
                (Some((digest, dir)), None) => {
                    directory_len(self.svc.directories(), &mut self.lengths, *digest, dir).await?
                }
                (None, None) => unreachable_dir(),
            };
            let len = layout::entry_start_len(name.as_bytes().len() as u64) + node_len + CLOSE_LEN;
            if self.skip >= len {
                self.skip -= len;
                self.pos += len;
                return Ok(());
            }
        } else if !self.lengths.is_empty() {
            self.lengths = HashMap::new();
        }
        self.emit(|b| layout::put_entry_start(b, name.as_bytes()));
        match dir {
            Some((_, dir)) => self.open(dir),
            None => {
                self.emit_leaf(node);
                self.emit(layout::put_close);
            }
        }
        Ok(())
    }
}

/// The directory variant never reaches the leaf paths (callers match it first).
fn unreachable_dir() -> ! {
    unreachable!("directory nodes are handled before leaf nodes")
}

pub(crate) async fn get_directory(
    directories: &dyn DirectoryService,
    digest: B3Digest,
) -> Result<Directory, NarError> {
    directories
        .get(&digest)
        .await?
        .ok_or(NarError::DirectoryNotFound { digest })
}

/// Length of the NAR node of `dir` (stored as `digest`), fetching the directories
/// below it one by one (no recursion; `lengths` remembers shared subtrees).
pub(crate) async fn directory_len(
    directories: &dyn DirectoryService,
    lengths: &mut HashMap<B3Digest, u64>,
    digest: B3Digest,
    dir: &Directory,
) -> Result<u64, NarError> {
    if let Some(len) = lengths.get(&digest) {
        return Ok(*len);
    }
    struct Open {
        digest: B3Digest,
        entries: Vec<(usize, Node)>,
        next: usize,
        acc: u64,
    }
    let open = |digest, dir: &Directory| Open {
        digest,
        entries: dir
            .nodes()
            .map(|(name, node)| (name.as_bytes().len(), node.clone()))
            .collect(),
        next: 0,
        acc: DIRECTORY_START_LEN,
    };
    let mut stack = vec![open(digest, dir)];
    loop {
        let Some(top) = stack.last_mut() else {
            unreachable!("the loop returns when the stack empties")
        };
        let Some((name_len, node)) = top.entries.get(top.next).cloned() else {
            let Some(done) = stack.pop() else {
                unreachable!("stack checked non-empty above")
            };
            let total = done.acc + CLOSE_LEN;
            lengths.insert(done.digest, total);
            match stack.last_mut() {
                None => return Ok(total),
                Some(parent) => parent.acc += total,
            }
            continue;
        };
        top.next += 1;
        top.acc += layout::entry_start_len(name_len as u64) + CLOSE_LEN;
        match (&node, layout::leaf_len(&node)) {
            (_, Some(len)) => top.acc += len,
            (Node::Directory { digest, .. }, None) => match lengths.get(digest) {
                Some(len) => top.acc += len,
                None => {
                    let child = get_directory(directories, *digest).await?;
                    stack.push(open(*digest, &child));
                }
            },
            _ => unreachable_dir(),
        }
    }
}
