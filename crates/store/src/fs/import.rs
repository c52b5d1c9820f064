//! [`import_path`]: a tree on disk into blobs and directories, with its NAR hash.
//!
//! One blocking thread walks the tree in NAR order (entries sorted by name bytes)
//! and hashes every file as it goes: the bytes go into a `nar::Writer` over a
//! sha256 hasher (the NAR's sha256 and size, without a render afterwards) and into
//! BLAKE3 (the blob's digest), so every file's digest is known when the walk
//! leaves it. Then:
//! - a small file was read whole: its bytes go to an upload task, which skips
//!   them if the blob is stored already;
//! - a large file is hashed first, BLAKE3 on a reader thread while the walk
//!   computes the NAR's sha256, and uploaded (read a second time, by its upload
//!   task) only if the blob is not stored yet: importing a tree again reads each
//!   large file once and writes nothing.
//!
//! A directory is built as soon as the walk leaves it (its entries' digests are
//! all known then), so the walk holds only the open directories (depth x width).
//! Completed directories are stored once every upload started before them has
//! finished (a directory never becomes visible before the blobs it references),
//! through a putter that is committed every [`FLUSH_ENTRIES`] entries, so memory
//! does not grow with the number of files either.
//!
//! Uploads run concurrently, bounded in number and in bytes held; the walk waits
//! when the bounds are reached.

use std::collections::{HashMap, VecDeque};
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use cairn_castore::{
    B3Digest, BlobService, Directory, DirectoryService, Node, PathComponent, SymlinkTarget,
};
use cairn_nix::hash::{HashAlgo, Hasher, NixHash};
use cairn_nix::nar;
use futures::stream::FuturesUnordered;
use futures::{StreamExt, TryStreamExt};
use tokio::io::AsyncWriteExt;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};

use super::{Error, Progress, unsupported_kind};

/// Files up to this size are read whole and uploaded as one piece.
const SMALL_FILE: u64 = 1 << 20;
/// Memory the reads and the directories waiting to be stored may hold ahead of
/// the uploads, in KiB (the semaphore's unit).
const BUDGET_KIB: u32 = 32 * 1024;
/// What one large file's upload holds at most: its read buffer, the blob writer's
/// batch and that batch's compressed chunks.
const LARGE_FILE_KIB: u32 = 10 * 1024;
/// Bytes of a large file read at a time.
const BLOCK: usize = 2 << 20;
/// Blocks of a large file in the hashing pipeline (read, BLAKE3, sha256).
const BLOCKS: usize = 3;
/// Memory a completed directory is charged while it waits to be stored, per entry.
const ENTRY_BYTES: u64 = 192;
/// Directory entries held by one putter before it is committed and a new one
/// started: bounds the directories held in memory whatever the tree's size.
const FLUSH_ENTRIES: u64 = 8 * 1024;
/// Uploads in flight at once. Many, because a blob's durable commit waits for a
/// group commit: concurrent small files share one fsync, and on a disk with slow
/// fsync the import is bound by commits, not CPU. A small file's upload waits for
/// its commit without holding a thread (the embedded blob writer compresses a
/// blob of up to 8 KiB on the calling task and awaits the commit), so one in
/// flight costs its bytes (also bounded by [`BUDGET_KIB`]) and a future. Measured
/// on 300k small files into the embedded store (2 cores, load 4): 64 in flight
/// 74.6 s, 47 MB peak RSS; 512 in flight 34.6 s, 54 MB. On 100k (load 3, 4 runs
/// each, same minutes): 512 in flight 3.7-4.8 s, 4.4 s CPU, 28 MB; 2048 in flight
/// 2.6-4.7 s, 4.1 s CPU, 35 MB (fewer, larger group commits).
const MAX_UPLOADS: usize = 2048;
/// Small files handed to one upload task, which runs their uploads concurrently:
/// a task spawned from the walk's thread per file cost a spawn and a worker
/// wakeup each (7% of importing 100k small files). The walk hands over a partial
/// batch before it waits for anything.
const SPAWN_BATCH: usize = 32;

/// What [`import_path`] stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Imported {
    /// The root node (its name is the caller's business).
    pub root: Node,
    /// Size of the tree's NAR in bytes.
    pub nar_size: u64,
    /// SHA-256 of the tree's NAR.
    pub nar_sha256: [u8; 32],
}

/// Imports the file, directory or symlink at `path` (a symlink is stored, not
/// followed) into `blobs` and `directories`, and returns its root node with the
/// size and sha256 of its NAR, as `nix-store --dump` would write it.
///
/// Files are uploaded in parallel; a directory is stored only after every blob and
/// directory below it. On error, what was stored stays (unreferenced: blobs, and
/// complete subtrees of directories) and the root directory is not stored.
/// `progress` counts files and bytes as they are read.
pub async fn import_path(
    blobs: Arc<dyn BlobService>,
    directories: &dyn DirectoryService,
    path: &Path,
    progress: Arc<Progress>,
) -> Result<Imported, Error> {
    let (events_tx, mut events) = mpsc::unbounded_channel();
    let abort = Arc::new(AtomicBool::new(false));
    let walker = Walker {
        handle: tokio::runtime::Handle::current(),
        blobs,
        budget: Arc::new(Semaphore::new(BUDGET_KIB as usize)),
        uploads: Arc::new(Semaphore::new(MAX_UPLOADS)),
        events: events_tx,
        abort: abort.clone(),
        progress,
        nar: nar::Writer::new(HashAlgo::Sha256.hasher()),
        jobs: 0,
        pending: Vec::with_capacity(SPAWN_BATCH),
    };
    let root_path = path.to_path_buf();
    let walk = tokio::task::spawn_blocking(move || walker.walk(&root_path));

    // Store directories as they become ready while the walk runs; the channel
    // closes when the walker and every upload task are done.
    let mut done = Watermark::default();
    let mut waiting: VecDeque<Completed> = VecDeque::new();
    let mut putter = Putter::new(directories, path);
    let mut first_error = None;
    while let Some(event) = events.recv().await {
        match event {
            Event::Uploaded(job, Ok(())) => done.mark(job),
            Event::Uploaded(_, Err(e)) => {
                abort.store(true, Ordering::Relaxed);
                first_error.get_or_insert(e);
            }
            Event::Directory(c) => waiting.push_back(c),
        }
        if first_error.is_some() {
            waiting.clear();
            continue;
        }
        while waiting.front().is_some_and(|c| c.after <= done.low) {
            let Some(c) = waiting.pop_front() else { break };
            if let Err(e) = putter.put(c.digest, c.directory).await {
                abort.store(true, Ordering::Relaxed);
                first_error.get_or_insert(e);
                waiting.clear();
                break;
            }
        }
    }
    let walked = walk.await.map_err(|e| Error::Task(e.to_string()))?;
    let walked = match (walked, first_error) {
        (Ok(walked), None) => walked,
        (Err(e), None) | (Ok(_), Some(e)) => return Err(e),
        // The walk stopped (or an upload saw its channel close) because of the
        // other's failure: report the cause.
        (Err(walk_err), Some(Error::Aborted)) => return Err(walk_err),
        (Err(_), Some(upload_err)) => return Err(upload_err),
    };
    if !waiting.is_empty() || done.low != walked.jobs {
        return Err(Error::Task(format!(
            "{} directories left unstored, {} of {} uploads confirmed",
            waiting.len(),
            done.low,
            walked.jobs
        )));
    }
    putter.flush().await?;
    Ok(Imported {
        root: walked.root,
        nar_size: walked.nar_size,
        nar_sha256: walked.nar_sha256,
    })
}

/// Uploads finished so far: every job below `low`, and those marked in `above`.
#[derive(Default)]
struct Watermark {
    low: usize,
    /// `above[i]`: job `low + i` finished.
    above: VecDeque<bool>,
}

impl Watermark {
    fn mark(&mut self, job: usize) {
        let Some(i) = job.checked_sub(self.low) else {
            return;
        };
        if self.above.len() <= i {
            self.above.resize(i + 1, false);
        }
        self.above[i] = true;
        while self.above.front() == Some(&true) {
            self.above.pop_front();
            self.low += 1;
        }
    }
}

/// Directories going to the directory service, committed every
/// [`FLUSH_ENTRIES`] entries. A closure put must be reachable from its root
/// (WIRE.md, as tvix checks), so a commit is one closure per complete subtree
/// held: the walk completes directories in post-order, so the held ones form a
/// forest whose trees are consecutive runs, each ending with its root. Later
/// closures reference committed ones as stored directories.
struct Putter<'a> {
    service: &'a dyn DirectoryService,
    path: &'a Path,
    /// Directories held, in the order the walk completed them.
    held: Vec<Directory>,
    /// The roots of the held forest: digest and where its run in `held` starts.
    roots: Vec<(B3Digest, usize)>,
    /// Entries held.
    entries: u64,
}

/// Closures committed at once when a flush holds several.
const CONCURRENT_COMMITS: usize = 16;

impl<'a> Putter<'a> {
    fn new(service: &'a dyn DirectoryService, path: &'a Path) -> Self {
        Putter {
            service,
            path,
            held: Vec::new(),
            roots: Vec::new(),
            entries: 0,
        }
    }

    async fn put(&mut self, digest: B3Digest, directory: Directory) -> Result<(), Error> {
        // Its children completed since the last flush are the last roots (post-
        // order). A root that is not its child but has the digest of one (an
        // identical subtree elsewhere) may be taken in too: the directory still
        // reaches it by that digest.
        let mut children: HashMap<B3Digest, usize> = HashMap::new();
        for (_, child, _) in directory.directories() {
            *children.entry(*child).or_default() += 1;
        }
        let mut start = self.held.len();
        while let Some((top, top_start)) = self.roots.last() {
            match children.get_mut(top) {
                Some(n) if *n > 0 => {
                    *n -= 1;
                    start = *top_start;
                    self.roots.pop();
                }
                _ => break,
            }
        }
        self.roots.push((digest, start));
        self.entries += directory.len() as u64 + 1;
        self.held.push(directory);
        if self.entries >= FLUSH_ENTRIES {
            self.flush().await?;
        }
        Ok(())
    }

    /// Commits every held tree as its own closure.
    async fn flush(&mut self) -> Result<(), Error> {
        self.entries = 0;
        let mut runs = Vec::with_capacity(self.roots.len());
        for (_, start) in self.roots.drain(..).rev() {
            runs.push(self.held.split_off(start));
        }
        let service = self.service;
        futures::stream::iter(runs)
            .map(|run| async move {
                let mut putter = service.put_multiple_start();
                for directory in run {
                    putter.put(directory).await?;
                }
                putter.close().await
            })
            .buffer_unordered(CONCURRENT_COMMITS)
            .try_for_each(|_| async { Ok(()) })
            .await
            .map_err(|e| Error::store(self.path, e))
    }
}

/// A directory the walk has left, to be stored once uploads `0..after` finished.
struct Completed {
    directory: Directory,
    digest: B3Digest,
    after: usize,
    /// Its share of the memory budget, released when it is stored.
    _budget: OwnedSemaphorePermit,
}

enum Event {
    /// Upload job `.0` ended.
    Uploaded(usize, Result<(), Error>),
    Directory(Completed),
}

/// What the walk found.
struct Walked {
    root: Node,
    nar_size: u64,
    nar_sha256: [u8; 32],
    /// Upload jobs started.
    jobs: usize,
}

/// An open directory of the walk.
struct Frame {
    dir: PathBuf,
    /// Its name in the parent (`None` for the root).
    name: Option<PathComponent>,
    /// Its entries still to visit, with their types as the directory listing gave
    /// them (`None`: to be looked up).
    names: std::vec::IntoIter<(std::ffi::OsString, Option<std::fs::FileType>)>,
    directory: Directory,
}

struct Walker {
    handle: tokio::runtime::Handle,
    blobs: Arc<dyn BlobService>,
    /// Memory held by reads not yet uploaded and directories not yet stored, in KiB.
    budget: Arc<Semaphore>,
    uploads: Arc<Semaphore>,
    events: mpsc::UnboundedSender<Event>,
    abort: Arc<AtomicBool>,
    progress: Arc<Progress>,
    nar: nar::Writer<Hasher>,
    jobs: usize,
    /// Small files read but not handed to an upload task yet.
    pending: Vec<SmallUpload>,
}

/// A small file read and hashed, to be uploaded with others by one task.
struct SmallUpload {
    job: usize,
    digest: B3Digest,
    bytes: Bytes,
    path: PathBuf,
    /// Its upload slot and memory, released when the upload ends.
    _permits: (OwnedSemaphorePermit, OwnedSemaphorePermit),
}

impl Walker {
    /// Walks the tree with an explicit stack, so depth is bounded by memory, not
    /// by the call stack.
    fn walk(mut self, root: &Path) -> Result<Walked, Error> {
        let mut stack = Vec::new();
        let root_node = match self.visit(root, None, None, &mut stack)? {
            Some(node) => node,
            None => loop {
                let Some(top) = stack.last_mut() else {
                    return Err(Error::Task("walk stack empty".into()));
                };
                match top.names.next() {
                    Some((name, ft)) => {
                        let path = top.dir.join(&name);
                        let component =
                            PathComponent::try_from(name.as_bytes()).map_err(|source| {
                                Error::Name {
                                    path: path.clone(),
                                    source,
                                }
                            })?;
                        self.nar
                            .entry(name.as_bytes())
                            .map_err(|e| nar_err(&path, e))?;
                        if let Some(node) =
                            self.visit(&path, Some(component.clone()), ft, &mut stack)?
                        {
                            add(&mut stack, component, node, &path)?;
                        }
                    }
                    None => {
                        let Some(frame) = stack.pop() else {
                            return Err(Error::Task("walk stack empty".into()));
                        };
                        self.nar
                            .end_directory()
                            .map_err(|e| nar_err(&frame.dir, e))?;
                        let node = self.complete(frame.directory)?;
                        match frame.name {
                            Some(name) if !stack.is_empty() => {
                                add(&mut stack, name, node, &frame.dir)?
                            }
                            _ => break node,
                        }
                    }
                }
            },
        };
        self.spawn_pending();
        let nar_size = self.nar.offset();
        let hash = self.nar.finish().map_err(|e| nar_err(root, e))?.finalize();
        let NixHash::Sha256(nar_sha256) = hash else {
            return Err(Error::Task("the NAR hasher is not sha256".into()));
        };
        Ok(Walked {
            root: root_node,
            nar_size,
            nar_sha256,
            jobs: self.jobs,
        })
    }

    /// Hands a directory the walk has left to the collector, to be stored after
    /// the uploads started so far, and returns its node.
    fn complete(&mut self, directory: Directory) -> Result<Node, Error> {
        let digest = directory.digest();
        let node = Node::Directory {
            digest,
            size: directory.size(),
        };
        let kib = (directory.len() as u64 * ENTRY_BYTES).div_ceil(1024) + 1;
        let budget = self.acquire(&self.budget.clone(), u32::try_from(kib).unwrap_or(u32::MAX))?;
        let completed = Completed {
            directory,
            digest,
            after: self.jobs,
            _budget: budget,
        };
        self.events
            .send(Event::Directory(completed))
            .map_err(|_| Error::Aborted)?;
        Ok(node)
    }

    /// Writes `path`'s node to the NAR and starts its upload. A directory is pushed
    /// on `stack` (its entries follow) and gives `None`. `listed` is its type as
    /// its directory's listing gave it (from the entry, without a stat on most
    /// file systems): a regular file is then opened without an lstat first.
    fn visit(
        &mut self,
        path: &Path,
        name: Option<PathComponent>,
        listed: Option<std::fs::FileType>,
        stack: &mut Vec<Frame>,
    ) -> Result<Option<Node>, Error> {
        if self.abort.load(Ordering::Relaxed) {
            return Err(Error::Aborted);
        }
        let io = |what| {
            move |source| Error::Io {
                what,
                path: path.to_path_buf(),
                source,
            }
        };
        if listed.is_some_and(|ft| ft.is_file()) {
            let f = std::fs::File::open(path).map_err(io("open"))?;
            let meta = f.metadata().map_err(io("stat"))?;
            if meta.is_file() {
                return self.file(path, f, &meta).map(Some);
            }
            // Replaced since the directory was listed: looked at afresh below.
        }
        let meta = std::fs::symlink_metadata(path).map_err(io("stat"))?;
        let ft = meta.file_type();
        if ft.is_file() {
            let f = std::fs::File::open(path).map_err(io("open"))?;
            let opened = f.metadata().map_err(io("stat"))?;
            if !opened.is_file() {
                return Err(Error::Changed {
                    path: path.to_path_buf(),
                    expected: meta.len(),
                });
            }
            return self.file(path, f, &opened).map(Some);
        }
        if ft.is_symlink() {
            let target = std::fs::read_link(path).map_err(io("read the symlink"))?;
            let bytes = target.as_os_str().as_bytes();
            let target = SymlinkTarget::try_from(bytes).map_err(|source| Error::Target {
                path: path.to_path_buf(),
                source,
            })?;
            self.nar.symlink(bytes).map_err(|e| nar_err(path, e))?;
            return Ok(Some(Node::Symlink { target }));
        }
        if ft.is_dir() {
            let mut names = Vec::new();
            for entry in std::fs::read_dir(path).map_err(io("read the directory"))? {
                let entry = entry.map_err(io("read the directory"))?;
                names.push((entry.file_name(), entry.file_type().ok()));
            }
            // NAR order: by name bytes, not by locale.
            names.sort_unstable_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
            self.nar.directory().map_err(|e| nar_err(path, e))?;
            stack.push(Frame {
                dir: path.to_path_buf(),
                name,
                names: names.into_iter(),
                directory: Directory::new(),
            });
            return Ok(None);
        }
        Err(Error::Unsupported {
            path: path.to_path_buf(),
            kind: unsupported_kind(ft).unwrap_or("of an unknown file type"),
        })
    }

    /// The regular file `f`, opened at `path`, with `meta` from its fstat.
    fn file(
        &mut self,
        path: &Path,
        mut f: std::fs::File,
        meta: &std::fs::Metadata,
    ) -> Result<Node, Error> {
        let io = |what| {
            move |source| Error::Io {
                what,
                path: path.to_path_buf(),
                source,
            }
        };
        let size = meta.len();
        let executable = meta.mode() & 0o100 != 0;
        self.progress.add_file();
        if size > SMALL_FILE {
            return self.large_file(path, f, size, executable);
        }

        let uploads = self.acquire(&self.uploads.clone(), 1)?;
        // Room for the bytes and the blob writer's copy of them.
        let kib = u32::try_from((2 * size).div_ceil(1024) + 1).unwrap_or(u32::MAX);
        let budget = self.acquire(&self.budget.clone(), kib)?;
        let buf = read_small(&mut f, size).map_err(io("read"))?;
        if buf.len() as u64 != size {
            return Err(Error::Changed {
                path: path.to_path_buf(),
                expected: size,
            });
        }
        self.nar
            .file(executable, size, &mut &buf[..])
            .map_err(|e| nar_err(path, e))?;
        self.progress.add_bytes(size);
        let digest = B3Digest::of(&buf);
        let job = self.next_job();
        self.pending.push(SmallUpload {
            job,
            digest,
            bytes: Bytes::from(buf),
            path: path.to_path_buf(),
            _permits: (budget, uploads),
        });
        if self.pending.len() >= SPAWN_BATCH {
            self.spawn_pending();
        }
        Ok(Node::File {
            digest,
            size,
            executable,
        })
    }

    /// A large file: hashed in one pass (BLAKE3 on a reader thread, the NAR's
    /// sha256 here), then uploaded by a task of its own unless stored already.
    fn large_file(
        &mut self,
        path: &Path,
        file: std::fs::File,
        size: u64,
        executable: bool,
    ) -> Result<Node, Error> {
        let (digest, file) = std::thread::scope(|s| {
            let (full_tx, full_rx) = std::sync::mpsc::sync_channel::<Vec<u8>>(BLOCKS);
            let (free_tx, free_rx) = std::sync::mpsc::sync_channel::<Vec<u8>>(BLOCKS);
            for _ in 0..BLOCKS {
                let _ = free_tx.send(Vec::new());
            }
            let progress = &self.progress;
            let reader = s.spawn(move || read_and_hash(file, size, free_rx, full_tx, progress));
            let mut source = Blocks {
                full: full_rx,
                free: free_tx,
                current: Vec::new(),
                pos: 0,
            };
            let written = self.nar.file(executable, size, &mut source);
            // Ends the reader if it is still waiting for a free block.
            drop(source);
            let read = reader
                .join()
                .map_err(|_| Error::Task("file reader thread panicked".into()))?;
            let (digest, file) = read.map_err(|source| Error::Io {
                what: "read",
                path: path.to_path_buf(),
                source,
            })?;
            written.map_err(|e| nar_err(path, e))?;
            Ok::<_, Error>((B3Digest::from(*digest.as_bytes()), file))
        })?;
        let node = Node::File {
            digest,
            size,
            executable,
        };
        let blobs = self.blobs.clone();
        let stored = self
            .handle
            .block_on(async move { blobs.has(&digest).await });
        if stored.map_err(|e| Error::store(path, e))? {
            self.progress.add_stored();
            return Ok(node);
        }

        let uploads = self.acquire(&self.uploads.clone(), 1)?;
        let budget = self.acquire(&self.budget.clone(), LARGE_FILE_KIB)?;
        let job = self.next_job();
        let blobs = self.blobs.clone();
        let events = self.events.clone();
        let progress = self.progress.clone();
        let path = path.to_path_buf();
        let handle = self.handle.clone();
        let abort = self.abort.clone();
        self.handle.spawn_blocking(move || {
            let r = handle.block_on(upload_file(&*blobs, file, size, digest, &path, &abort));
            drop((budget, uploads));
            if r.is_ok() {
                progress.add_stored();
            }
            let _ = events.send(Event::Uploaded(job, r));
        });
        Ok(node)
    }

    fn next_job(&mut self) -> usize {
        let job = self.jobs;
        self.jobs += 1;
        job
    }

    /// Starts one task that uploads the pending small files concurrently.
    fn spawn_pending(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        let batch = std::mem::replace(&mut self.pending, Vec::with_capacity(SPAWN_BATCH));
        let blobs = self.blobs.clone();
        let events = self.events.clone();
        let progress = self.progress.clone();
        self.handle.spawn(async move {
            let mut uploads: FuturesUnordered<_> = batch
                .into_iter()
                .map(|u| {
                    let (blobs, events, progress) = (&blobs, &events, &progress);
                    async move {
                        let r = upload_small(&**blobs, u.digest, &u.bytes, &u.path).await;
                        let job = u.job;
                        // Frees its memory and upload slot before it is reported.
                        drop(u);
                        if r.is_ok() {
                            progress.add_stored();
                        }
                        let _ = events.send(Event::Uploaded(job, r));
                    }
                })
                .collect();
            while uploads.next().await.is_some() {}
        });
    }

    /// Waits for `n` permits, giving up when the import is aborted. Hands the
    /// pending small files to an upload task before it waits: their permits may
    /// be the ones it waits for.
    fn acquire(&mut self, sem: &Arc<Semaphore>, n: u32) -> Result<OwnedSemaphorePermit, Error> {
        let n = n.min(BUDGET_KIB);
        // Usually there is room: no timer, no trip through the runtime.
        if let Ok(permit) = sem.clone().try_acquire_many_owned(n) {
            return Ok(permit);
        }
        self.spawn_pending();
        let sem = sem.clone();
        let abort = self.abort.clone();
        self.handle.block_on(async move {
            loop {
                let wait = sem.clone().acquire_many_owned(n);
                // Re-check the abort flag now and then: a failed upload task releases
                // its permits, so the wait ends anyway, but not always promptly.
                match tokio::time::timeout(std::time::Duration::from_millis(200), wait).await {
                    Ok(Ok(permit)) => return Ok(permit),
                    Ok(Err(_)) => return Err(Error::Aborted),
                    Err(_) if abort.load(Ordering::Relaxed) => return Err(Error::Aborted),
                    Err(_) => {}
                }
            }
        })
    }
}

/// Reads the regular file `f` of `size` (<= [`SMALL_FILE`]) bytes, asking for one
/// byte more so that a file that grew is noticed. A read that returns less than
/// asked for counts as the end of the file, which on a regular file it is, so
/// the usual last read that returns 0 (one syscall per file) is not made.
fn read_small(f: &mut std::fs::File, size: u64) -> std::io::Result<Vec<u8>> {
    let want = usize::try_from(size + 1).unwrap_or(usize::MAX);
    let mut buf = vec![0u8; want];
    let mut n = 0;
    while n < want {
        match f.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => {
                n += k;
                if n < want && n as u64 >= size {
                    // Short of the extra byte: the file ends at its size.
                    break;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    buf.truncate(n);
    Ok(buf)
}

/// Adds `node` to the innermost open directory.
fn add(stack: &mut [Frame], name: PathComponent, node: Node, path: &Path) -> Result<(), Error> {
    let Some(top) = stack.last_mut() else {
        return Err(Error::Task("walk stack empty".into()));
    };
    top.directory.add(name, node).map_err(|source| {
        Error::store(
            path,
            cairn_castore::Error::InvalidDirectory { index: 0, source },
        )
    })
}

/// The reader thread of a large file: reads it in blocks of [`BLOCK`] bytes (and
/// at most one byte past `size`, so a file that grew is noticed), feeds them to
/// BLAKE3 and passes them on. Gives the file back for its upload.
fn read_and_hash(
    mut file: std::fs::File,
    size: u64,
    free: std::sync::mpsc::Receiver<Vec<u8>>,
    full: std::sync::mpsc::SyncSender<Vec<u8>>,
    progress: &Progress,
) -> std::io::Result<(blake3::Hash, std::fs::File)> {
    let mut hasher = blake3::Hasher::new();
    let mut left = size + 1;
    'blocks: while left > 0 {
        // The consumer stopped (it failed, or the file ended early for it).
        let Ok(mut buf) = free.recv() else { break };
        let want = usize::try_from(left).unwrap_or(BLOCK).min(BLOCK);
        buf.resize(want, 0);
        let mut n = 0;
        let mut eof = false;
        while n < want {
            match file.read(&mut buf[n..]) {
                Ok(0) => {
                    eof = true;
                    break;
                }
                Ok(k) => n += k,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        buf.truncate(n);
        left -= n as u64;
        if n > 0 {
            hasher.update(&buf);
            progress.add_bytes(n as u64);
            if full.send(buf).is_err() {
                break 'blocks;
            }
        }
        if eof {
            break;
        }
    }
    Ok((hasher.finalize(), file))
}

/// The blocks of [`read_and_hash`] as a `Read`, for the NAR writer.
struct Blocks {
    full: std::sync::mpsc::Receiver<Vec<u8>>,
    free: std::sync::mpsc::SyncSender<Vec<u8>>,
    current: Vec<u8>,
    pos: usize,
}

impl Read for Blocks {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        if self.pos == self.current.len() {
            let Ok(next) = self.full.recv() else {
                // The reader ended: end of file (or its error, reported by it).
                return Ok(0);
            };
            let done = std::mem::replace(&mut self.current, next);
            self.pos = 0;
            let _ = self.free.send(done);
        }
        let n = out.len().min(self.current.len() - self.pos);
        out[..n].copy_from_slice(&self.current[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

fn nar_err(path: &Path, e: nar::Error) -> Error {
    match e {
        nar::Error::ContentsSize { expected, .. } => Error::Changed {
            path: path.to_path_buf(),
            expected,
        },
        nar::Error::Io { source, .. } => Error::Io {
            what: "read",
            path: path.to_path_buf(),
            source,
        },
        other => Error::Io {
            what: "serialise",
            path: path.to_path_buf(),
            source: std::io::Error::other(other),
        },
    }
}

async fn upload_small(
    blobs: &dyn BlobService,
    digest: B3Digest,
    bytes: &[u8],
    path: &Path,
) -> Result<(), Error> {
    let store_err = |source| Error::store(path, source);
    if blobs.has(&digest).await.map_err(store_err)? {
        return Ok(());
    }
    let mut w = blobs.open_write().await;
    w.write_all(bytes).await.map_err(|source| Error::Io {
        what: "upload",
        path: path.to_path_buf(),
        source,
    })?;
    let got = w.close().await.map_err(store_err)?;
    if got != digest {
        return Err(Error::DigestMismatch {
            path: path.to_path_buf(),
            want: digest,
            got,
        });
    }
    Ok(())
}

/// Uploads a large file, read again from its start (on a blocking thread: the
/// reads block). It must hash to `digest`, as it did when it was first read.
async fn upload_file(
    blobs: &dyn BlobService,
    mut file: std::fs::File,
    size: u64,
    digest: B3Digest,
    path: &Path,
    abort: &AtomicBool,
) -> Result<(), Error> {
    let io = |what| {
        move |source| Error::Io {
            what,
            path: path.to_path_buf(),
            source,
        }
    };
    file.seek(SeekFrom::Start(0)).map_err(io("seek"))?;
    let mut w = blobs.open_write().await;
    let mut buf = vec![0u8; BLOCK];
    let mut left = size;
    while left > 0 {
        if abort.load(Ordering::Relaxed) {
            // Dropping the writer leaves nothing visible.
            return Err(Error::Aborted);
        }
        let want = usize::try_from(left).unwrap_or(BLOCK).min(BLOCK);
        let n = file.read(&mut buf[..want]).map_err(io("read"))?;
        if n == 0 {
            return Err(Error::Changed {
                path: path.to_path_buf(),
                expected: size,
            });
        }
        w.write_all(&buf[..n]).await.map_err(io("upload"))?;
        left -= n as u64;
    }
    let got = w.close().await.map_err(|e| Error::store(path, e))?;
    if got != digest {
        // The file changed between the hashing read and this one.
        return Err(Error::Changed {
            path: path.to_path_buf(),
            expected: size,
        });
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::read_small;

    #[test]
    fn read_small_reads_to_size_and_notices_growth() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        let bytes: Vec<u8> = (0..5000u32).map(|i| (i * 7) as u8).collect();
        std::fs::write(&p, &bytes).unwrap();
        let open = || std::fs::File::open(&p).unwrap();
        assert_eq!(read_small(&mut open(), 5000).unwrap(), bytes);
        // Larger than its recorded size (it grew): one byte more comes back.
        assert_eq!(read_small(&mut open(), 4000).unwrap(), &bytes[..4001]);
        // Smaller (it shrank): what there is.
        assert_eq!(read_small(&mut open(), 6000).unwrap(), bytes);
        std::fs::write(&p, b"").unwrap();
        assert!(read_small(&mut open(), 0).unwrap().is_empty());
        std::fs::write(&p, b"x").unwrap();
        assert_eq!(read_small(&mut open(), 0).unwrap(), b"x");
    }
}
